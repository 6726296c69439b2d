"""The daemon launchers start real processes that answer, and stop them by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from benchmark.daemons import Containerd, Daemon, DaemonError, Registry, Spegel, free_port, parse_access_line
from benchmark.images import ImageSpec, build, push
from spegel.store.layout import write_layout
from tests.support.processes import alive


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_containerd_answers_and_stops(tmp_path: Path) -> None:
    daemon = Containerd(tmp_path / "c", chunk_size=1 << 20, max_concurrent_downloads=4)
    with daemon:
        assert "2.1" in daemon.ctr("version").stdout
        config = daemon.config_path.read_text()
        assert "concurrent_layer_fetch_buffer = 1048576" in config
        assert str(daemon.hosts_dir) in config
        plugins = daemon.ctr("plugins", "ls").stdout
        assert "io.containerd.nri.v1" not in plugins
        assert any(line.split()[:2] == ["io.containerd.grpc.v1", "cri"] for line in plugins.splitlines())
        assert daemon.content_root == daemon.root / "io.containerd.content.v1.content"
        pid, state = daemon.pid, daemon.state
    assert not alive(pid)
    assert not state.exists()


def test_registry_answers_and_logs_access(tmp_path: Path) -> None:
    with Registry(tmp_path / "r") as registry:
        assert httpx.get(f"{registry.url}/v2/").status_code == 200
        assert httpx.get(f"{registry.url}/v2/nothing/manifests/here").status_code == 404
        pid = registry.pid
        entries = registry.access_log()
    assert ("/v2/nothing/manifests/here", 404) in [(e.path, e.status) for e in entries]
    assert not alive(pid)


def test_access_line_parsing() -> None:
    line = '127.0.0.1 - - [28/Nov/2026:07:00:24 +0000] "GET /v2/a/blobs/x?ns=b HTTP/1.1" 206 1048576 "" "ua"'
    entry = parse_access_line(line)
    assert entry is not None
    assert (entry.method, entry.path, entry.status, entry.bytes) == ("GET", "/v2/a/blobs/x?ns=b", 206, 1048576)
    assert parse_access_line('time="..." level=info msg="response completed"') is None


def test_spegel_registry_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "layout").mkdir()
    write_layout(tmp_path / "layout", {}, [])
    with Spegel.registry(f"oci-layout:{tmp_path / 'layout'}", tmp_path / "spegel.log") as spegel:
        assert httpx.get(f"{spegel.url}/v2/").status_code == 200
        assert httpx.get(f"http://{spegel.metrics_addr}/metrics").status_code == 200
        pid = spegel.pid
    assert not alive(pid)
    assert spegel.process is not None and spegel.process.returncode in (0, -signal.SIGTERM)


def test_daemon_that_dies_reports_its_log(tmp_path: Path) -> None:
    daemon = Spegel.registry("oci-layout:/nonexistent", tmp_path / "bad.log")
    with pytest.raises(DaemonError, match="exited with status 2"):
        daemon.__enter__()


@pytest.mark.slow
@pytest.mark.root
def test_containerd_in_a_network_namespace(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    netns = f"spegel-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        with Containerd(tmp_path / "c", netns=netns) as daemon:
            assert os.readlink(f"/proc/{daemon.pid}/exe") == os.path.realpath(daemon.binary)
            assert os.readlink(f"/proc/{daemon.pid}/ns/net") != os.readlink("/proc/self/ns/net")
            assert "2.1" in daemon.ctr("version").stdout
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


async def test_registry_proxy_mode_pulls_through(tmp_path: Path, upstream_registry: Registry) -> None:
    image = build(ImageSpec((10_000,), seed=501))
    async with httpx.AsyncClient() as client:
        await push(image, client, upstream_registry.url, "cached/img", "v1")
    with Registry(tmp_path / "proxy", proxy_remote_url=upstream_registry.url) as proxy:
        layer = image.platforms[0].layers[0]
        response = httpx.get(f"{proxy.url}/v2/cached/img/blobs/{layer.digest}")
        assert response.status_code == 200
        assert response.content == image.read_blob(layer.digest)
    assert any(e.path.endswith(str(layer.digest)) and e.method == "GET" for e in upstream_registry.access_log())


class _Stubborn(Daemon):
    """A process that ignores SIGTERM."""

    name = "stubborn"

    def command(self) -> list[str]:
        return ["sh", "-c", "trap '' TERM; echo started; while :; do sleep 1; done"]

    def ready(self) -> bool:
        return "started" in self.log_tail()


def test_a_process_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    daemon = _Stubborn(tmp_path / "stubborn.log")
    daemon.start()
    try:
        daemon.wait_ready(timeout=10)
        pid = daemon.pid
    finally:
        code = daemon.stop(grace=0.5)
    assert code == -signal.SIGKILL
    assert not alive(pid)
