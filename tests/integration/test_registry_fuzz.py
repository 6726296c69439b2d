"""Fuzzing the whole request path of the real server (hypothesis): methods, odd paths (`..`, %-encoding,
long names, control characters), queries, Range and other headers, sent as raw bytes so that no client
library normalises them. Every request must get an answer below 500 with no canary bytes (a file beside and
inside the layout, outside `blobs/`), and the server must log no error and keep running."""

from __future__ import annotations

import urllib.parse

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from registry_harness import ServedRegistry

from spegel.oci.digest import Digest

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "G3T"]


def segments(reg: ServedRegistry) -> st.SearchStrategy[str]:
    image = reg.image
    known = [str(Digest.of(data)) for data in (image.small, image.config, image.manifest, image.index, b"")]
    canary_digest = str(Digest.of(image.canary))
    literal = st.sampled_from(
        [
            "v2",
            "library",
            "app",
            "team",
            "tool",
            "manifests",
            "blobs",
            "uploads",
            "tags",
            "list",
            "1.0",
            "multi",
            "2.0",
            "latest",
            "..",
            ".",
            "",
            "canary",
            "%2e%2e",
            "%2E%2E%2F",
            "..%2f..%2fcanary",
            "%00",
            "%0a",
            "%ff",
            "sha256:",
            "sha256:..",
            "sha256:../../canary",
            "sha512:" + "0" * 128,
            canary_digest,
            canary_digest.upper(),
            *known,
            *(k + "%00" for k in known),
            *(k.replace(":", "%3A") for k in known),
            "a" * 300,
            "A" * 64,
            "livez",
            "readyz",
            "metrics",
        ]
    )
    odd = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#% "), max_size=20)
    encoded = st.binary(max_size=12).map(lambda b: urllib.parse.quote_from_bytes(b, safe=""))
    return st.one_of(literal, literal, odd, encoded)


@st.composite
def requests(draw: st.DrawFn, reg: ServedRegistry) -> tuple[str, bytes]:
    method = draw(st.sampled_from(METHODS))
    if draw(st.booleans()):  # shaped like a content request: name parts, manifests|blobs, reference
        name = draw(st.lists(segments(reg), min_size=1, max_size=3))
        kind = draw(st.sampled_from(["manifests", "blobs"]))
        path = f"/v2/{'/'.join(name)}/{kind}/{draw(segments(reg))}"
    else:
        parts = draw(st.lists(segments(reg), max_size=8))
        path = draw(st.sampled_from(["/v2/", "/v2/", "/", "//", "/v2//", "/v2/../"])) + "/".join(parts)
    query = draw(
        st.one_of(
            st.just(""),
            st.sampled_from(["ns=docker.io", "ns=ghcr.io", "ns=", "ns=..", "ns=%00", "ns=a/b", "ns=" + "x" * 300]),
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#% "), max_size=30),
        )
    )
    target = path + ("?" + query if query else "")
    headers = []
    if draw(st.booleans()):
        headers.append(
            "Range: "
            + draw(
                st.one_of(
                    st.sampled_from(["bytes=0-", "bytes=0-0", "bytes=-1", "bytes=5-1", "bytes=0-1,2-3", "bytes=x"]),
                    st.from_regex(r"\Abytes=[0-9,-]{0,30}\Z"),
                    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
                )
            )
        )
    for name, values in (
        ("Accept-Encoding", ["gzip", "gzip, deflate, zstd", "*", "identity;q=0"]),
        ("If-Range", ['"sha256:x"', "junk", ""]),
        ("X-Spegel-Mirrored", ["true", "TRUE", "false", "1"]),
        ("Accept", ["*/*", "application/vnd.oci.image.index.v1+json", "text/html"]),
        ("Content-Length", ["0", "5"]),
        ("Expect", ["100-continue"]),
        ("Transfer-Encoding", ["chunked"]),
    ):
        if draw(st.integers(0, 4)) == 0:
            headers.append(f"{name}: {draw(st.sampled_from(values))}")
    body = b""
    if any(h.startswith("Content-Length: 5") for h in headers) and not any(h.startswith("Transfer") for h in headers):
        body = b"hello"
    elif any(h.startswith("Transfer-Encoding") for h in headers) and not any(
        h.startswith("Content-L") for h in headers
    ):
        body = b"5\r\nhello\r\n0\r\n\r\n"
    request = f"{method} {target} HTTP/1.1\r\nHost: registry.test\r\n" + "".join(h + "\r\n" for h in headers)
    return method, request.encode("latin-1") + b"\r\n" + body


def test_fuzz_whole_request_path(served_registry: ServedRegistry) -> None:
    reg = served_registry
    answered: list[int] = []

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
    @given(requests(reg))
    def one_request(method_and_request: tuple[str, bytes]) -> None:
        method, request = method_and_request
        response = reg.raw_exchange(request, head=method == "HEAD", limit=1 << 20)
        assert response.status is not None, f"no answer to {request!r}"
        assert response.status < 500, f"{response.status} for {request!r}: {response.body[:300]!r}"
        assert reg.image.canary not in response.body, f"canary served for {request!r}"
        if method == "HEAD":
            assert response.body == b"", f"body on a HEAD answer to {request!r}"
        answered.append(response.status)

    one_request()
    assert len(answered) >= 100
    assert {200, 400, 404} <= set(answered), sorted(set(answered))
    assert reg.daemon.process is not None and reg.daemon.process.poll() is None, "the server died"
    assert reg.error_records() == []


def test_traversal_targets_never_reach_files_outside_blobs(served_registry: ServedRegistry) -> None:
    """Explicit traversal attempts, each answered with an error and never with the canary."""
    reg = served_registry
    canary = str(Digest.of(reg.image.canary))
    for target in [
        "/v2/../../canary",
        "/v2/../canary",
        "/../canary",
        "/canary",
        "/v2/library/app/blobs/../../canary",
        "/v2/library/app/blobs/sha256:../../../canary",
        "/v2/library/app/blobs/%2e%2e/%2e%2e/canary",
        "/v2/library/app/blobs/..%2f..%2f..%2fcanary",
        "/v2/library/app/manifests/..%2f..%2fcanary",
        f"/v2/library/app/blobs/{canary}",
        f"/v2/library/app/manifests/{canary}",
        "/v2/library/app/blobs/sha256:%2e%2e%2f%2e%2e%2fcanary",
    ]:
        response = reg.raw_exchange(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert response.status in (400, 404), (target, response.status)
        assert reg.image.canary not in response.body
