"""Harness of the registry HTTP and fuzz tests: a test image in an OCI layout, served by the real CLI.

`serve_test_registry(base)` (the `served_registry` fixture in conftest.py, one per test module) runs
`spegel registry --store oci-layout:DIR` as a user runs it
(`benchmark.daemons.Spegel`), on free loopback ports, with default registry `docker.io`. The layout holds:

- `docker.io/library/app:1.0` → an OCI manifest (config, a small layer, a big layer, an empty layer);
- `docker.io/library/app:multi` → an OCI index of that manifest;
- `ghcr.io/team/tool:2.0` → the same manifest under another registry (served only with `?ns=ghcr.io`).

A canary file with a unique token lies beside the layout directory and inside it (outside `blobs/`): no
response may ever contain that token.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmark.daemons import Spegel
from spegel.oci import mediatypes
from spegel.oci.digest import Digest
from spegel.oci.manifest import REF_NAME_ANNOTATION, Descriptor
from spegel.store.layout import write_layout

BIG_SIZE = 64 << 20  # far larger than loopback socket buffers plus one read, for the early-close tests
SMALL_SIZE = 3000


@dataclass(frozen=True)
class LayoutImage:
    root: Path
    canary: bytes
    config: bytes
    small: bytes
    big: bytes
    manifest: bytes
    index: bytes

    @property
    def empty(self) -> bytes:
        return b""

    def digest(self, data: bytes) -> Digest:
        return Digest.of(data)

    def path_of(self, data: bytes) -> Path:
        return self.root / "blobs" / "sha256" / Digest.of(data).hex


def build_test_image(base: Path) -> LayoutImage:
    """Write the test layout under `base/store/layout` and the canaries; return what it holds."""
    rng = random.Random(20261128)
    root = base / "store" / "layout"
    canary = b"CANARY-" + os.urandom(16).hex().encode()
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    small, big = rng.randbytes(SMALL_SIZE), rng.randbytes(BIG_SIZE)

    def describe(media_type: str, data: bytes, ref: str | None = None) -> Descriptor:
        annotations = {REF_NAME_ANNOTATION: ref} if ref else {}
        return Descriptor(media_type, Digest.of(data), len(data), annotations)

    layers = [describe(mediatypes.OCI_LAYER, data) for data in (small, big, b"")]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": describe(mediatypes.OCI_CONFIG, config).to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": [describe(mediatypes.OCI_MANIFEST, manifest).to_json()],
        }
    ).encode()
    blobs = {Digest.of(data): data for data in (config, small, big, b"", manifest, index)}
    write_layout(
        root,
        blobs,
        [
            describe(mediatypes.OCI_MANIFEST, manifest, "docker.io/library/app:1.0"),
            describe(mediatypes.OCI_INDEX, index, "docker.io/library/app:multi"),
            describe(mediatypes.OCI_MANIFEST, manifest, "ghcr.io/team/tool:2.0"),
        ],
    )
    for place in (base / "canary", base / "store" / "canary", root / "canary", root / "blobs" / "canary"):
        place.write_bytes(canary)
    return LayoutImage(root, canary, config, small, big, manifest, index)


@dataclass(frozen=True)
class RawResponse:
    """An HTTP/1.1 answer as read off the socket: status (None when nothing came), headers, de-chunked body."""

    status: int | None
    headers: dict[str, str]
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> RawResponse:
        """Parse the final answer in `data`, skipping interim (1xx) answers such as `100 Continue`."""
        end = final_head_end(data)
        if end < 0:
            return cls(None, {}, data)
        head, body = data[: end - 4], data[end:]
        while head.startswith(b"HTTP/1.1 1"):
            head = head.partition(b"\r\n\r\n")[2]
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return cls(None, {}, data)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = _dechunk(body)
        return cls(int(parts[1]), headers, body)


def final_head_end(data: bytes) -> int:
    """Where the body of the final (non-1xx) answer in `data` starts; -1 while its head is incomplete."""
    offset = 0
    while (end := data.find(b"\r\n\r\n", offset)) >= 0:
        if not data.startswith(b"HTTP/1.1 1", offset):
            return end + 4
        offset = end + 4
    return -1


def _dechunk(data: bytes) -> bytes:
    out, rest = bytearray(), data
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16) if sep else 0
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


@dataclass
class ServedRegistry:
    image: LayoutImage
    daemon: Spegel
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.daemon.url

    @property
    def metrics_url(self) -> str:
        return f"http://{self.daemon.metrics_addr}/metrics"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.daemon.registry_addr.rpartition(":")
        return host, int(port)

    def connect(self) -> socket.socket:
        return socket.create_connection(self.host_port, timeout=10)

    def raw_exchange(self, request: bytes, *, head: bool = False, limit: int = 4 << 20) -> RawResponse:
        """Send `request` bytes exactly as given on a new connection and read one answer: the headers, then
        the body as framed (Content-Length, chunked, else until the server closes), at most `limit` body
        bytes; for a HEAD request (`head`), whatever arrives within 0.2 s after the headers (it must be
        nothing). Bounded: 10 s in all."""
        deadline = time.monotonic() + 10
        received = bytearray()
        with self.connect() as sock:
            sock.sendall(request)

            def more(wait: float = 10.0) -> bool:
                sock.settimeout(max(0.01, min(wait, deadline - time.monotonic())))
                try:
                    data = sock.recv(1 << 16)
                except (TimeoutError, ConnectionError):
                    return False
                received.extend(data)
                return bool(data)

            while (body_start := final_head_end(bytes(received))) < 0:
                if not more():
                    return RawResponse.parse(bytes(received))
            headers = RawResponse.parse(bytes(received)).headers
            if head:
                while more(0.2):
                    pass
            elif "content-length" in headers and headers["content-length"].isdigit():
                want = min(int(headers["content-length"]), limit)
                while len(received) - body_start < want and more():
                    pass
            else:
                chunked = headers.get("transfer-encoding", "").lower() == "chunked"
                while not (chunked and received.endswith(b"0\r\n\r\n")) and len(received) - body_start < limit:
                    if not more():
                        break
        return RawResponse.parse(bytes(received))

    def access_records(self) -> list[dict[str, object]]:
        return [r for r in self.daemon.log_records() if r.get("logger") == "spegel.access"]

    def error_records(self) -> list[dict[str, object]]:
        """Log records at error level or above, and any line that is not a JSON record (e.g. a traceback)."""
        bad: list[dict[str, object]] = []
        for line in self.daemon.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                bad.append({"line": line})
                continue
            if not isinstance(record, dict) or record.get("level") in ("error", "critical"):
                bad.append(record if isinstance(record, dict) else {"line": line})
        return bad


@contextmanager
def serve_test_registry(base: Path) -> Iterator[ServedRegistry]:
    """Build the test layout under `base` and serve it; stop the server (by PID) on exit."""
    image = build_test_image(base)
    with (
        Spegel.registry(f"oci-layout:{image.root}", base / "spegel.log") as daemon,
        httpx.Client(timeout=30) as client,
    ):
        assert isinstance(daemon, Spegel)
        yield ServedRegistry(image, daemon, client)
