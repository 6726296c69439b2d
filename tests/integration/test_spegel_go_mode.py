"""The `spegel-go` benchmark mode's plumbing, with a stand-in for the Spegel (Go) binary (it records its
arguments and answers 404): every node's containerd gets the stand-in's hosts.toml, every node runs its
`registry` with the node's containerd and the other nodes as static bootstrap peers (ids matching their keys),
pulls fall back to the upstream, and CPU and RSS of the stand-in are recorded like our mirror's."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark import spegelgo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

STANDIN = Path(__file__).with_name("spegel_go_standin.py")

SCENARIO = """
name = "standin"
repetitions = 1
modes = ["spegel-go"]
phases = ["create", "update"]
pull_timeout = "2min"
[cluster]
nodes = 3
upstream_bandwidth = "200Mbit"
node_bandwidth = "400Mbit"
chunk_size = "1MiB"
[[images]]
name = "2MiB-2"
size = "2MiB"
layers = 2
[create]
jitter = "0ms"
"""


def _seed(pem: str) -> bytes:
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)[-32:]


@pytest.mark.slow
@pytest.mark.root
def test_spegel_go_mode_runs_the_given_binary_on_every_node(tmp_path: Path) -> None:
    scenario, out, work = tmp_path / "standin.toml", tmp_path / "out", tmp_path / "work"
    scenario.write_text(SCENARIO)
    argv = [sys.executable, "-m", "benchmark", "run", str(scenario), "--out", str(out), "--workdir", str(work)]
    env = {**os.environ, spegelgo.ENVIRONMENT: str(STANDIN)}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    pulls = pd.read_csv(out / "data" / "pulls.csv")
    assert len(pulls) == 2 * 3 and pulls["ok"].all() and set(pulls["mode"]) == {"spegel-go"}  # fell back on 404
    usage = pd.read_csv(out / "data" / "usage.csv")
    mirrors = usage[usage["process"] == "spegel-go"]
    assert sorted(mirrors["node"]) == ["n0", "n1", "n2"] and (mirrors["peak_rss_bytes"] > 0).all()

    nodes = sorted(p for p in (work / "runs" / "2MiB-2-spegel-go-rep0").iterdir() if p.is_dir())
    mesh = json.loads((work / "runs" / "2MiB-2-spegel-go-rep0" / "mesh.json").read_text())
    assert mesh["lagging"] == {}  # waited for, as for our mirror: every node connected to every other
    ids = {node.name: spegelgo.peer_id(_seed((node / "spegel-data" / "private.key").read_text())) for node in nodes}
    for node in nodes:
        args = json.loads((node / "spegel-data" / "standin-registry.json").read_text())
        assert args[args.index("--containerd-content-path") + 1] == str(
            node / "root" / "io.containerd.content.v1.content"
        )
        assert args[args.index("--containerd-sock") + 1].endswith("containerd.sock")
        assert args[args.index("--bootstrap-kind") + 1] == "static"
        peers = args[args.index("--static-bootstrap-peers") + 1 :]
        assert sorted(p.rsplit("/", 1)[1] for p in peers) == sorted(v for k, v in ids.items() if k != node.name)
        configuration = json.loads((node / "certs.d" / "standin-configuration.json").read_text())
        mirror = args[args.index("--registry-addr") + 1]
        assert configuration[configuration.index("--mirror-targets") + 1] == f"http://{mirror}"
    assert "spegel-go" in (out / "README.md").read_text()
