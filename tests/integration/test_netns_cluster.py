"""The netns cluster on this machine: it comes up, nodes pull through CRI, and everything is torn down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from benchmark.cluster.base import ClusterError
from benchmark.cluster.netns import NetnsCluster, check_environment
from benchmark.images import ImageSpec, build, push
from benchmark.measure import pull
from benchmark.scenario import ClusterSpec
from tests.support.processes import alive

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

SCENARIOS = Path(__file__).parents[2] / "scenarios"


def _namespaces() -> set[str]:
    return {
        line.split()[0]
        for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
        if line
    }


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.parametrize("mode", ["upstream", "proxy"])
async def test_two_nodes_come_up_pull_and_go_down(tmp_path: Path, mode: str) -> None:
    image = build(ImageSpec((1 << 20, 1 << 20), "gzip", seed=21), tmp_path / "cache")
    spec = ClusterSpec(nodes=2, upstream_bandwidth=200e6, node_bandwidth=400e6, chunk_size=1 << 20)
    cluster = NetnsCluster(spec, tmp_path / "work")
    with cluster:
        ours = {ep.netns for ep in cluster.net.endpoints}
        assert ours <= _namespaces()
        assert cluster.registry_host.startswith("198.1")
        async with httpx.AsyncClient(timeout=30) as client:
            await push(image, client, cluster.upstream_url, "bench/t", "v1")
        nodes = cluster.start_nodes(mode, tmp_path / "work" / "run")
        pids = [n.containerd.pid for n in nodes]
        before = cluster.upstream_bytes()
        results = [await pull(node, f"{cluster.registry_host}/bench/t:v1", timeout=120) for node in nodes]
        assert [r["ok"] for r in results] == [True, True], results
        sent = cluster.upstream_bytes() - before
        # upstream: every node fetched the image over the upstream link; proxy: at least once (via the cache)
        assert sent >= (2 if mode == "upstream" else 1) * image.size
        with pytest.raises(ClusterError, match="exists"):
            cluster.start_nodes(mode, tmp_path / "work" / "run")
        usage = cluster.stop_nodes()
        assert {u.process for u in usage} >= {"containerd"} and all(u.peak_rss_bytes > 0 for u in usage)
        assert not any(alive(pid) for pid in pids)
    assert not ours & _namespaces()
    assert cluster.upstream is None
    assert not (tmp_path / "work" / "upstream" / "storage").exists()
    assert (tmp_path / "work" / "upstream" / "registry.log").exists()  # logs stay


@pytest.mark.root
def test_latency_without_netem_is_refused_clearly() -> None:
    if os.path.exists("/sys/module/sch_netem"):
        pytest.skip("this kernel has netem")
    with pytest.raises(ClusterError, match="netem"):
        check_environment(latency=0.005)


def _run_ci_scenario(out: Path, workdir: Path) -> list[str]:
    """The command that runs scenarios/ci.toml on the netns cluster, writing its report to `out`."""
    return [
        sys.executable,
        "-m",
        "benchmark",
        "run",
        str(SCENARIOS / "ci.toml"),
        "--out",
        str(out),
        "--workdir",
        str(workdir),
    ]


@pytest.mark.slow
@pytest.mark.root
def test_ci_scenario_end_to_end_writes_data_and_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = subprocess.run(
        _run_ci_scenario(out, tmp_path / "work"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pulls = pd.read_csv(out / "data" / "pulls.csv")
    assert len(pulls) == 3 * 2 * 2 + 1 and pulls["ok"].all()  # modes x (create, update) x nodes + 1 advertise
    assert set(pulls["mode"]) == {"upstream", "proxy", "inflight"}
    events = pd.read_csv(out / "data" / "events.csv")
    assert {"ingest", "commit"} <= set(events["event"]) and (events[events["event"] == "commit"]["layer"] >= 0).any()
    traffic = pd.read_csv(out / "data" / "traffic.csv").set_index(["mode", "phase"])
    assert (traffic.loc[["upstream", "proxy"], "upstream_bytes"] > 0).all()
    assert traffic.loc[("inflight", "update"), "bytes_peer"] > 0  # the second node got the new image from the first
    visibility = pd.read_csv(out / "data" / "visibility.csv")
    assert len(visibility) == 2 and visibility["visible"].notna().all()  # 1 observer x 2 layers
    assert (visibility["answered"] - visibility["visible"] == visibility["rtt"]).all()  # sent, then answered
    readme = (out / "README.md").read_text()
    assert "## Pull times" in readme and "pull_times.png" in readme and "## Advertisement latency" in readme
    assert (out / "pull_times.png").stat().st_size > 1000


_HOLD_CLUSTER = """
import sys, time
from pathlib import Path
from benchmark.cluster.netns import NetnsCluster
from benchmark.scenario import ClusterSpec
cluster = NetnsCluster(ClusterSpec(nodes=2, upstream_bandwidth=1e8, node_bandwidth=1e8), Path(sys.argv[1]))
cluster.__enter__()
cluster.start_nodes("inflight", Path(sys.argv[1]) / "run")
print(cluster.prefix, flush=True)
time.sleep(120)
"""


@pytest.mark.slow
@pytest.mark.root
def test_cleanup_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_CLUSTER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as holder:  # leaving closes its pipe and waits
        try:
            assert holder.stdout is not None
            prefix = holder.stdout.readline().strip()
            assert prefix, "the cluster did not come up"
        finally:
            holder.kill()
    left = {n for n in _namespaces() if n.startswith(prefix + "-")}
    assert len(left) == 4  # upstream, cache, 2 nodes: nobody tore them down
    state = (tmp_path / "cluster.json").read_text()
    pids = [int(p) for p in json.loads(state)["processes"]]
    assert len(pids) == 5 and all(alive(p) for p in pids)  # upstream, 2 containerd, 2 spegel
    result = subprocess.run(
        [sys.executable, "-m", "benchmark", "cleanup", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert not {n for n in _namespaces() if n.startswith(prefix + "-")}
    for pid in pids:  # killed; reap is by init, so allow a moment
        for _ in range(50):
            if not alive(pid) or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"process {pid} still runs")
    assert subprocess.run([sys.executable, "-m", "benchmark", "cleanup", str(tmp_path / "none")]).returncode == 1


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_tears_everything_down(tmp_path: Path, sig: signal.Signals) -> None:
    work = tmp_path / "work"
    runner = subprocess.Popen(
        _run_ci_scenario(tmp_path / "out", work),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stderr is not None
        for line in runner.stderr:  # bounded: the run ends by itself within a minute
            if ": create" in line:
                break
        time.sleep(0.3)
        state = json.loads((work / "cluster.json").read_text())
        assert state["processes"], "nothing was running"
        runner.send_signal(sig)
        _, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 130, err[-2000:]
    assert "interrupted; the cluster is torn down" in err
    assert not {n for n in _namespaces() if n.startswith(state["prefix"] + "-")}
    assert not any(alive(int(pid)) for pid in state["processes"])
