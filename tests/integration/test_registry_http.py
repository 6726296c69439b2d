"""The registry over real HTTP: every answer and error path, HEAD, ranges, `?ns=`, health, metrics, and what
happens when clients close early. The server is the real `spegel registry` CLI on a test layout
(`served_registry` in conftest.py), one per module."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from registry_harness import BIG_SIZE, SMALL_SIZE, ServedRegistry

from spegel.oci import mediatypes
from spegel.oci.digest import Digest

API_VERSION = ("docker-distribution-api-version", "registry/2.0")
UNKNOWN = Digest.of(b"not in the store")


@pytest.fixture(scope="module")
def reg(served_registry: ServedRegistry) -> ServedRegistry:
    return served_registry


def blob_url(reg: ServedRegistry, data: bytes, repository: str = "library/app") -> str:
    return f"{reg.url}/v2/{repository}/blobs/{Digest.of(data)}"


def manifest_url(reg: ServedRegistry, reference: str, repository: str = "library/app") -> str:
    return f"{reg.url}/v2/{repository}/manifests/{reference}"


def oci_error_code(response: httpx.Response | None = None, body: bytes | None = None) -> str:
    obj = json.loads(response.content if response is not None else body or b"")
    (entry,) = obj["errors"]
    assert set(entry) <= {"code", "message", "detail"} and entry["message"]
    return entry["code"]


def comparable(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != "date"}


# --- content ---------------------------------------------------------------------------------------------


def test_api_base(reg: ServedRegistry) -> None:
    for method in ("GET", "HEAD"):
        for path in ("/v2/", "/v2"):
            response = reg.client.request(method, reg.url + path)
            assert response.status_code == 200
            assert response.headers.get(API_VERSION[0]) == API_VERSION[1]


def test_manifest_by_tag_and_digest(reg: ServedRegistry) -> None:
    image = reg.image
    for reference in ("1.0", str(Digest.of(image.manifest))):
        response = reg.client.get(manifest_url(reg, reference))
        assert response.status_code == 200
        assert response.content == image.manifest
        assert response.headers["content-type"] == mediatypes.OCI_MANIFEST
        assert response.headers["content-length"] == str(len(image.manifest))
        assert response.headers["docker-content-digest"] == str(Digest.of(image.manifest))
        assert "content-encoding" not in response.headers


def test_index_by_tag(reg: ServedRegistry) -> None:
    response = reg.client.get(manifest_url(reg, "multi"))
    assert response.status_code == 200
    assert response.content == reg.image.index
    assert response.headers["content-type"] == mediatypes.OCI_INDEX
    assert response.headers["docker-content-digest"] == str(Digest.of(reg.image.index))


@pytest.mark.parametrize("which", ["config", "small", "empty"])
def test_blob_get(reg: ServedRegistry, which: str) -> None:
    data = getattr(reg.image, which)
    response = reg.client.get(blob_url(reg, data))
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["docker-content-digest"] == str(Digest.of(data))
    assert response.headers["accept-ranges"] == "bytes"
    assert "content-range" not in response.headers


def test_big_blob_streams_whole_and_digest_correct(reg: ServedRegistry) -> None:
    hasher, size = hashlib.sha256(), 0
    with reg.client.stream("GET", blob_url(reg, reg.image.big)) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(BIG_SIZE)
        for chunk in response.iter_raw():
            hasher.update(chunk)
            size += len(chunk)
    assert size == BIG_SIZE
    assert f"sha256:{hasher.hexdigest()}" == str(Digest.of(reg.image.big))


@pytest.mark.parametrize(
    "path",
    [
        "/v2/library/app/manifests/1.0",
        "/v2/library/app/manifests/multi",
        f"/v2/library/app/manifests/{Digest.of(b'x')}",  # 404: errors too must agree
        "/v2/Bad/manifests/1.0",
        "/v2/",
    ],
)
def test_head_answers_get_headers_without_body_manifests(reg: ServedRegistry, path: str) -> None:
    get = reg.client.get(reg.url + path)
    head = reg.client.head(reg.url + path)
    assert head.status_code == get.status_code
    assert comparable(head.headers) == comparable(get.headers)
    assert head.content == b""


@pytest.mark.parametrize("which", ["config", "small", "big", "empty"])
def test_head_answers_get_headers_without_body_blobs(reg: ServedRegistry, which: str) -> None:
    url = blob_url(reg, getattr(reg.image, which))
    with reg.client.stream("GET", url) as get:
        get_headers, get_status = comparable(get.headers), get.status_code
    head = reg.client.head(url)
    assert head.status_code == get_status == 200
    assert comparable(head.headers) == get_headers
    assert head.content == b""


@pytest.mark.parametrize(
    "path",
    [f"/v2/library/app/blobs/{UNKNOWN}", "/v2/Bad/manifests/1.0", "/v2/a/tags/list", "/v2/", "/livez", "/readyz", "/x"],
)
def test_head_sends_no_body_and_keeps_the_connection_usable(reg: ServedRegistry, path: str) -> None:
    """A body after a HEAD answer desynchronises HTTP/1.1: the next request on the connection would hang."""
    raw = reg.raw_exchange(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), head=True)
    assert raw.status is not None and raw.body == b""
    with httpx.Client(timeout=5, limits=httpx.Limits(max_connections=1)) as client:
        for _ in range(3):
            assert client.head(reg.url + path).content == b""
            assert client.get(manifest_url(reg, "1.0")).content == reg.image.manifest


def test_head_ignores_range(reg: ServedRegistry) -> None:
    """RFC 9110 §14.2: Range is defined for GET only; a HEAD gets the whole representation's headers."""
    head = reg.client.head(blob_url(reg, reg.image.small), headers={"Range": "bytes=0-9"})
    assert head.status_code == 200
    assert head.headers["content-length"] == str(SMALL_SIZE)
    assert "content-range" not in head.headers


# --- ranges ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, SMALL_SIZE - 1),
        ("bytes=-10", SMALL_SIZE - 10, SMALL_SIZE - 1),
        ("bytes=2999-5000", 2999, 2999),
        ("bytes=0-", 0, SMALL_SIZE - 1),
        ("bytes=-99999", 0, SMALL_SIZE - 1),
    ],
)
def test_single_range_is_206(reg: ServedRegistry, header: str, start: int, end: int) -> None:
    response = reg.client.get(blob_url(reg, reg.image.small), headers={"Range": header})
    assert response.status_code == 206
    assert response.content == reg.image.small[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{SMALL_SIZE}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["docker-content-digest"] == str(Digest.of(reg.image.small))


@pytest.mark.parametrize("header", ["bytes=3000-", "bytes=3000-3001", "bytes=99999-", "bytes=-0"])
def test_unsatisfiable_range_is_416(reg: ServedRegistry, header: str) -> None:
    response = reg.client.get(blob_url(reg, reg.image.small), headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{SMALL_SIZE}"
    assert oci_error_code(response) == "RANGE_INVALID"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=0-0, -1", "bytes=5-1", "bytes=x", "items=0-1", "bytes="])
def test_multi_or_invalid_range_is_200_whole(reg: ServedRegistry, header: str) -> None:
    response = reg.client.get(blob_url(reg, reg.image.small), headers={"Range": header})
    assert response.status_code == 200
    assert response.content == reg.image.small
    assert "content-range" not in response.headers


@pytest.mark.parametrize("header", ["bytes=0-3", "bytes=-1", "bytes=99999-", "bytes=0-1,2-3"])
def test_range_on_a_manifest_is_200_whole(reg: ServedRegistry, header: str) -> None:
    response = reg.client.get(manifest_url(reg, "1.0"), headers={"Range": header})
    assert response.status_code == 200
    assert response.content == reg.image.manifest
    assert "content-range" not in response.headers


def test_range_on_an_empty_blob_is_200_empty(reg: ServedRegistry) -> None:
    response = reg.client.get(blob_url(reg, b""), headers={"Range": "bytes=0-"})
    assert response.status_code == 200
    assert response.content == b""


def test_if_range(reg: ServedRegistry) -> None:
    url = blob_url(reg, reg.image.small)
    etag = reg.client.head(url).headers["etag"]
    matching = reg.client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert matching.status_code == 206
    assert matching.content == reg.image.small[:10]
    stale = reg.client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"sha256:other"'})
    assert stale.status_code == 200
    assert stale.content == reg.image.small


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_ranges_return_exactly_those_bytes(reg: ServedRegistry, data: st.DataObject) -> None:
    blob = data.draw(st.sampled_from([reg.image.small, reg.image.big]), label="blob")
    size = len(blob)
    kind = data.draw(st.sampled_from(["closed", "open", "suffix"]), label="kind")
    if kind == "suffix":
        n = data.draw(st.integers(1, size + 10), label="n")
        header, start, end = f"bytes=-{n}", max(0, size - n), size - 1
    else:
        start = data.draw(st.integers(0, size - 1), label="start")
        if kind == "open":
            # open-ended: read only up to 64 KiB of the answer, as containerd reads one chunk and closes
            header, end = f"bytes={start}-", size - 1
        else:
            end = start + data.draw(st.integers(0, 1 << 20), label="length")
            header, end = f"bytes={start}-{end}", min(end, size - 1)
    with reg.client.stream("GET", blob_url(reg, blob), headers={"Range": header}) as response:
        assert response.status_code == 206
        assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert int(response.headers["content-length"]) == end - start + 1
        want = min(end - start + 1, 64 << 10) if kind == "open" else end - start + 1
        received = bytearray()
        for chunk in response.iter_raw():
            received += chunk
            if len(received) >= want:
                break
    assert bytes(received[:want]) == blob[start : start + want]
    if kind != "open":
        assert len(received) == want


# --- errors ----------------------------------------------------------------------------------------------


def test_unknown_blob_is_404_blob_unknown(reg: ServedRegistry) -> None:
    response = reg.client.get(f"{reg.url}/v2/library/app/blobs/{UNKNOWN}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert oci_error_code(response) == "BLOB_UNKNOWN"
    head = reg.client.head(f"{reg.url}/v2/library/app/blobs/{UNKNOWN}")
    assert (head.status_code, head.content) == (404, b"")


@pytest.mark.parametrize("reference", ["nope", str(UNKNOWN), "2.0"])
def test_unknown_manifest_is_404_manifest_unknown(reg: ServedRegistry, reference: str) -> None:
    response = reg.client.get(manifest_url(reg, reference))
    assert response.status_code == 404
    assert oci_error_code(response) == "MANIFEST_UNKNOWN"


def test_blob_digest_as_manifest_is_not_a_manifest(reg: ServedRegistry) -> None:
    """A stored blob that is not a manifest is not served as one."""
    response = reg.client.get(manifest_url(reg, str(Digest.of(reg.image.small))))
    assert response.status_code == 404
    assert oci_error_code(response) == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/Library/app/manifests/1.0", "NAME_INVALID"),
        ("/v2/library//app/manifests/1.0", "NAME_INVALID"),
        ("/v2/library/app_/blobs/" + str(UNKNOWN), "NAME_INVALID"),
        ("/v2/" + "a" * 256 + "/manifests/1.0", "NAME_INVALID"),
        ("/v2/library/app/manifests/.hidden", "TAG_INVALID"),
        ("/v2/library/app/manifests/" + "t" * 129, "TAG_INVALID"),
        ("/v2/library/app/manifests/sha256:abc", "DIGEST_INVALID"),
        ("/v2/library/app/blobs/latest", "DIGEST_INVALID"),
        ("/v2/library/app/blobs/sha256:" + "A" * 64, "DIGEST_INVALID"),
        ("/v2/library/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", "DIGEST_INVALID"),
    ],
)
def test_malformed_requests_are_400(reg: ServedRegistry, path: str, code: str) -> None:
    response = reg.client.get(reg.url + path)
    assert response.status_code == 400
    assert oci_error_code(response) == code
    assert "content-encoding" not in response.headers


@pytest.mark.parametrize("path", ["/v2/library/app/tags/list", "/v2/_catalog", "/v2/library/app/blobs/uploads/"])
def test_unsupported_api_paths_are_404(reg: ServedRegistry, path: str) -> None:
    response = reg.client.get(reg.url + path)
    assert response.status_code == 404
    assert oci_error_code(response) == "UNSUPPORTED"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/v2/", "/v2/library/app/manifests/1.0", "/v2/library/app/blobs/uploads/"])
def test_write_methods_are_405(reg: ServedRegistry, method: str, path: str) -> None:
    response = reg.client.request(method, reg.url + path, content=b"{}")
    assert response.status_code == 405
    assert oci_error_code(response) == "UNSUPPORTED"
    # nothing was written: the manifest is unchanged
    assert reg.client.get(manifest_url(reg, "1.0")).content == reg.image.manifest


def test_no_content_encoding_even_when_gzip_is_offered(reg: ServedRegistry) -> None:
    headers = {"Accept-Encoding": "gzip, deflate, zstd"}
    for url, body in (
        (blob_url(reg, reg.image.config), reg.image.config),
        (blob_url(reg, reg.image.small), reg.image.small),
        (manifest_url(reg, "1.0"), reg.image.manifest),
    ):
        response = reg.client.get(url, headers=headers)
        assert "content-encoding" not in response.headers
        assert response.content == body
    error = reg.client.get(f"{reg.url}/v2/library/app/blobs/{UNKNOWN}", headers=headers)
    assert "content-encoding" not in error.headers


# --- ?ns= ------------------------------------------------------------------------------------------------


def test_ns_selects_the_registry(reg: ServedRegistry) -> None:
    other = manifest_url(reg, "2.0", "team/tool")
    assert reg.client.get(other, params={"ns": "ghcr.io"}).content == reg.image.manifest
    assert reg.client.get(other).status_code == 404  # default registry docker.io has no team/tool:2.0
    assert reg.client.get(other, params={"ns": "docker.io"}).status_code == 404
    mine = manifest_url(reg, "1.0")
    assert reg.client.get(mine).status_code == 200  # default registry
    assert reg.client.get(mine, params={"ns": "docker.io"}).status_code == 200
    assert reg.client.get(mine, params={"ns": "ghcr.io"}).status_code == 404
    with_port = reg.client.get(mine, params={"ns": "127.0.0.1:5000"})  # a registry with a port is valid
    assert with_port.status_code == 404
    assert oci_error_code(with_port) == "MANIFEST_UNKNOWN"


def test_blobs_are_served_under_any_registry(reg: ServedRegistry) -> None:
    response = reg.client.get(blob_url(reg, reg.image.small, "team/tool"), params={"ns": "ghcr.io"})
    assert response.content == reg.image.small


@pytest.mark.parametrize("ns", ["", "bad_registry", "a/b", "-x.io", "x.io:port"])
def test_invalid_ns_is_400_name_invalid(reg: ServedRegistry, ns: str) -> None:
    response = reg.client.get(manifest_url(reg, "1.0"), params={"ns": ns})
    assert response.status_code == 400
    assert oci_error_code(response) == "NAME_INVALID"


# --- health and metrics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
def test_health(reg: ServedRegistry, path: str) -> None:
    response = reg.client.get(reg.url + path)
    assert response.status_code == 200
    assert response.text == "ok\n"


def metric_samples(reg: ServedRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = reg.client.get(reg.metrics_url).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll `condition()` every 20 ms until it holds or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_metrics_count_requests_by_handler_method_code(reg: ServedRegistry) -> None:
    before = metric_samples(reg)
    for _ in range(3):
        reg.client.get(blob_url(reg, reg.image.small), headers={"Range": "bytes=0-99"})
    for _ in range(2):
        reg.client.head(manifest_url(reg, "1.0"))
    reg.client.get(f"{reg.url}/v2/library/app/blobs/{UNKNOWN}")
    reg.client.get(reg.url + "/livez")

    def counted() -> bool:
        after = metric_samples(reg)

        def delta(name: str, **labels: str) -> float:
            return sample(after, name, **labels) - sample(before, name, **labels)

        count = "http_request_duration_seconds_count"
        return (
            delta(count, handler="blob", method="GET", code="206") == 3
            and delta(count, handler="manifest", method="HEAD", code="200") == 2
            and delta(count, handler="blob", method="GET", code="404") == 1
            and delta(count, handler="health", method="GET", code="200") >= 1
            and delta("http_response_size_bytes_sum", handler="blob", method="GET", code="206") == 300
            and delta("http_response_size_bytes_sum", handler="manifest", method="HEAD", code="200") == 0
        )

    assert wait_for(counted)
    after = metric_samples(reg)
    assert sample(after, "http_requests_inflight", handler="blob") == 0
    assert reg.client.get(reg.metrics_url).headers["content-type"].startswith("text/plain")


# --- clients that close early ----------------------------------------------------------------------------


def blob_fds(reg: ServedRegistry, data: bytes) -> int:
    """How many of the server's file descriptors are open on the blob file of `data`."""
    target = os.path.realpath(reg.image.path_of(data))
    count = 0
    for fd in Path(f"/proc/{reg.daemon.pid}/fd").iterdir():
        try:
            if os.readlink(fd) == target:
                count += 1
        except OSError:
            continue  # closed while we looked
    return count


def open_fds(reg: ServedRegistry) -> int:
    return len(os.listdir(f"/proc/{reg.daemon.pid}/fd"))


def aborted_get(reg: ServedRegistry, probe: str, read: int, rng_header: str = "bytes=0-") -> None:
    """GET the big blob with `Range: rng_header`, read `read` bytes of the answer, then close the socket."""
    path = f"/v2/library/app/blobs/{Digest.of(reg.image.big)}?probe={probe}"
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nRange: {rng_header}\r\n\r\n".encode()
    with reg.connect() as sock:
        sock.sendall(request)
        received = 0
        while received < read:
            data = sock.recv(min(1 << 16, read - received))
            if not data:
                break
            received += len(data)


def access_record(reg: ServedRegistry, probe: str) -> dict[str, object] | None:
    for record in reg.access_records():
        if record.get("query") == f"probe={probe}":
            return record
    return None


def test_early_close_stops_sending(reg: ServedRegistry) -> None:
    """containerd reads one chunk of an open-ended range and closes: the server must stop at once, not push
    the rest of the blob (64 MiB) into a dead socket."""
    probe = f"early-{time.monotonic_ns()}"
    aborted_get(reg, probe, read=256 << 10)
    assert wait_for(lambda: access_record(reg, probe) is not None)
    record = access_record(reg, probe)
    assert record is not None
    assert record["status"] == 206
    sent = record["bytes"]
    assert isinstance(sent, int)
    assert 256 << 10 <= sent < BIG_SIZE // 4, f"server sent {sent} bytes after the client closed"
    assert wait_for(lambda: blob_fds(reg, reg.image.big) == 0), "blob file still open after the client left"


def test_no_fd_leak_after_many_aborted_requests(reg: ServedRegistry) -> None:
    reg.client.close()  # our own keep-alive connections must not count
    reg.client = httpx.Client(timeout=30)
    assert wait_for(lambda: blob_fds(reg, reg.image.big) == 0)
    baseline = open_fds(reg)
    probes = []
    for i in range(40):
        probe = f"leak-{i}-{time.monotonic_ns()}"
        probes.append(probe)
        # close right after sending, after the headers, and in the middle of the body; some mid-blob ranges
        start = (i * 7919 * 4096) % (BIG_SIZE // 2)
        aborted_get(reg, probe, read=(0, 512, 1 << 20)[i % 3], rng_header=f"bytes={start}-")
    assert wait_for(lambda: all(access_record(reg, p) is not None for p in probes), timeout=30)
    assert wait_for(lambda: blob_fds(reg, reg.image.big) == 0), "blob file descriptors leaked"
    assert wait_for(lambda: open_fds(reg) <= baseline), f"fds: {open_fds(reg)} after, {baseline} before"
    total = sum(int(record["bytes"]) for p in probes if (record := access_record(reg, p)) is not None)  # type: ignore[call-overload]
    assert total < 40 * BIG_SIZE // 8, f"{total} bytes sent to 40 clients that each read at most 1 MiB"


def test_server_logged_no_errors(reg: ServedRegistry) -> None:
    """Last in this module: nothing above (bad requests and aborted transfers included) logged an error."""
    assert reg.daemon.process is not None and reg.daemon.process.poll() is None
    assert reg.error_records() == []
