"""The registry's HTTP connections against misbehaving clients, with the real `spegel registry` CLI and real sockets:
idle, half-closed and non-reading clients are dropped after the timeouts and leave nothing behind (open fds
and RSS printed), `Connection: close` is honoured, the connection bound holds under a low fd limit while the
probes on the metrics port still answer, and SIGTERM stops the process within 5 s whatever clients do."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from registry_harness import BIG_SIZE, LayoutImage, build_test_image

from benchmark.daemons import Spegel
from spegel.oci.digest import Digest

SHORT = ["--http-keep-alive-timeout", "3s", "--http-send-timeout", "3s"]


class LimitedSpegel(Spegel):
    """`spegel registry` started under `prlimit --nofile=N:N` (a file-descriptor limit of N)."""

    nofile = 0

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--", *super().command()]


@contextmanager
def registry(tmp_path: Path, extra: list[str], nofile: int | None = None) -> Iterator[tuple[Spegel, LayoutImage]]:
    image = build_test_image(tmp_path)
    daemon = Spegel.registry(f"oci-layout:{image.root}", tmp_path / "spegel.log", extra=extra)
    if nofile is not None:
        daemon.__class__ = LimitedSpegel
        assert isinstance(daemon, LimitedSpegel)
        daemon.nofile = nofile
    with daemon:
        yield daemon, image


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def connect(daemon: Spegel) -> socket.socket:
    host, _, port = daemon.registry_addr.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a non-reading client holds little
    return sock


def blob_request(image: LayoutImage, extra: str = "") -> bytes:
    return f"GET /v2/library/app/blobs/{Digest.of(image.big)} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def read_until_closed(sock: socket.socket, timeout: float) -> bytes | None:
    """What the server sends until it closes the connection (a reset counts as closed); None if it is still
    open after `timeout` seconds. Keeps at most 64 KiB of what it reads."""
    received, deadline = bytearray(), time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            return bytes(received)
        except TimeoutError:
            return None
        if not data:
            return bytes(received)
        received += data[: max(0, (64 << 10) - len(received))]
    return None


def test_idle_half_closed_and_non_reading_clients_are_dropped_and_leave_nothing(tmp_path: Path) -> None:
    with registry(tmp_path, SHORT) as (daemon, image), ExitStack() as clients:
        with httpx.Client() as client:  # warm up: one blob served whole, then the connection closed
            assert client.get(f"{daemon.url}/v2/library/app/blobs/{Digest.of(image.big)}").status_code == 200
        fds_before, rss_before = open_fds(daemon.pid), rss_mib(daemon.pid)
        socks, fds_peak, rss_peak = [], fds_before, rss_before
        for i in range(150):  # each asks at once: the timeouts count from the connection's start
            sock = clients.enter_context(connect(daemon))
            socks.append(sock)
            fds_peak, rss_peak = max(fds_peak, open_fds(daemon.pid)), max(rss_peak, rss_mib(daemon.pid))
            if i % 3 == 0:  # asked once and stays idle
                sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            elif i % 3 == 1:  # never reads a 64 MiB body
                sock.sendall(blob_request(image))
            elif i % 6 == 2:  # half a request head, then nothing
                sock.sendall(b"GET /v2/ HTTP/1.1\r\nHos")
            else:  # a whole request, then its sending side closed
                sock.sendall(blob_request(image))
                sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        assert wait_for(lambda: open_fds(daemon.pid) <= fds_before, 15), f"{open_fds(daemon.pid)} fds open"
        took = time.monotonic() - started
        fds_after, rss_after = open_fds(daemon.pid), rss_mib(daemon.pid)
        print(
            f"\n150 clients, timeouts 3 s: open fds {fds_before} -> {fds_peak} -> {fds_after} (after {took:.1f} s);"
            f" RSS {rss_before:.1f} -> {rss_peak:.1f} -> {rss_after:.1f} MiB"
        )
        assert all(read_until_closed(sock, 5) is not None for sock in socks)
        assert rss_peak - rss_before < 16 and rss_after - rss_before < 16
        assert httpx.get(f"{daemon.url}/v2/").status_code == 200


def test_connection_close_and_keep_alive(tmp_path: Path) -> None:
    with registry(tmp_path, []) as (daemon, _), connect(daemon) as sock:  # keep-alive timeout 30 s
        for _ in range(3):  # keep-alive: one connection answers request after request
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\n{}"):  # the API base's whole answer
                answer += sock.recv(1 << 16)
            assert answer.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_until_closed(sock, 2)
        assert answer is not None and answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer.lower()
        with connect(daemon) as old:  # HTTP/1.0 without keep-alive: closed after the answer
            old.sendall(b"GET /v2/ HTTP/1.0\r\n\r\n")
            answer = read_until_closed(old, 2)
            assert answer is not None and answer.startswith(b"HTTP/1.1 200 ")


def test_connection_bound_keeps_probes_and_blobs_answering_under_a_low_fd_limit(tmp_path: Path) -> None:
    """120 descriptors: the registry port holds at most (120 - 64) / 2 = 28 connections; 80 idle clients do
    not starve the probes (metrics port) nor, once the idle ones time out, a blob GET; nothing answers 5xx."""
    extra = ["--http-keep-alive-timeout", "2s"]
    with registry(tmp_path, extra, nofile=120) as (daemon, image), ExitStack() as clients:
        for _ in range(80):
            clients.enter_context(connect(daemon))
        assert wait_for(lambda: open_fds(daemon.pid) >= 28, 5)
        with httpx.Client(timeout=5) as client:
            for path in ("/livez", "/readyz", "/metrics"):
                assert client.get(f"http://{daemon.metrics_addr}{path}").status_code == 200
            print(f"\nnofile 120, 80 idle clients: server fds {open_fds(daemon.pid)}")
            assert open_fds(daemon.pid) < 120
            blob = client.get(f"{daemon.url}/v2/library/app/blobs/{Digest.of(image.big)}", timeout=20)
            assert blob.status_code == 200 and blob.content == image.big
    assert "Too many open files" not in daemon.log_path.read_text()


def test_sigterm_stops_within_5_s_whatever_clients_do(tmp_path: Path) -> None:
    with registry(tmp_path, []) as (daemon, image), ExitStack() as clients:  # timeouts 30 s: clients stuck
        for i in range(60):
            sock = clients.enter_context(connect(daemon))
            sock.sendall(blob_request(image) if i % 2 else b"GET /v2/ HTTP/1.1\r\nHo")
        assert wait_for(lambda: open_fds(daemon.pid) >= 60, 5)
        assert daemon.process is not None
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.wait(timeout=10)
        took = time.monotonic() - started
        print(f"\nSIGTERM with 60 stuck clients: exited {daemon.process.returncode} after {took:.2f} s")
        assert took <= 5 and daemon.process.returncode == 0


@pytest.mark.parametrize("extra", ["Range: bytes=0-\r\n", ""])
def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(tmp_path: Path, extra: str) -> None:
    with registry(tmp_path, SHORT) as (daemon, image), connect(daemon) as sock:
        sock.sendall(blob_request(image, extra))
        sock.recv(1024)  # the head and a little body, then nothing read
        started = time.monotonic()

        def blob_records() -> list[dict[str, object]]:
            return [r for r in daemon.access_log() if str(r.get("path", "")).startswith("/v2/library/app/blobs")]

        assert wait_for(lambda: bool(blob_records()), 10)  # logged when the request ends
        print(f"\nnon-reading client dropped after {time.monotonic() - started:.1f} s")
        assert int(blob_records()[-1]["bytes"]) < BIG_SIZE  # type: ignore[call-overload]
        assert read_until_closed(sock, 10) is not None


def test_malformed_http_is_answered_with_an_oci_error_and_closed(tmp_path: Path) -> None:
    big_head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 << 10) + b"\r\n\r\n"
    with registry(tmp_path, []) as (daemon, _):
        for request, status in ((b"NOT HTTP AT ALL\r\n\r\n", 400), (big_head, 431)):
            with connect(daemon) as sock:
                sock.sendall(request)
                answer = read_until_closed(sock, 5)
            assert answer is not None and answer.startswith(b"HTTP/1.1 %d " % status), answer
            assert b"content-type: application/json" in answer and b'"errors"' in answer
        assert httpx.get(f"{daemon.url}/v2/").status_code == 200
