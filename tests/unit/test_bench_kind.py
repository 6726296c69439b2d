"""The kind backend's generated configuration, the kubelet event parser, and its clear refusal here."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from benchmark.cluster import kind
from benchmark.cluster.base import ClusterError
from benchmark.scenario import from_dict

SCENARIO = from_dict(
    {
        "name": "k",
        "modes": ["upstream", "proxy", "inflight", "layer"],
        "phases": ["create", "update"],
        "cluster": {"nodes": 3, "backend": "kind", "chunk_size": "2MiB", "max_concurrent_downloads": 5},
        "images": [{"name": "Big Image", "size": "1MiB"}],
    }
)


def test_kind_config_patches_containerd() -> None:
    config = yaml.safe_load(kind.render_kind_config(SCENARIO))
    assert config["kind"] == "Cluster" and config["name"] == kind.CLUSTER_NAME
    roles = [n["role"] for n in config["nodes"]]
    assert roles == ["control-plane", "worker", "worker", "worker"]
    # no shared host directory: each node keeps its own certs.d (written per mode with docker exec)
    assert not any("extraMounts" in n for n in config["nodes"])
    patch = tomllib.loads(config["containerdConfigPatches"][0])
    transfer = patch["plugins"]["io.containerd.transfer.v1.local"]
    assert transfer["concurrent_layer_fetch_buffer"] == 2 << 20 and transfer["max_concurrent_downloads"] == 5
    assert patch["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == "/etc/containerd/certs.d"


def test_hosts_per_mode() -> None:
    upstream = tomllib.loads(kind.render_hosts("upstream")[kind.UPSTREAM_HOST])
    assert upstream == {"server": f"http://{kind.UPSTREAM_HOST}"}
    proxy = tomllib.loads(kind.render_hosts("proxy")[kind.UPSTREAM_HOST])
    assert list(proxy["host"]) == [f"http://{kind.CACHE_HOST}"]


def test_written_configuration(tmp_path: Path) -> None:
    kind.write_configuration(SCENARIO, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "certs.d-inflight",
        "certs.d-layer",
        "certs.d-proxy",
        "certs.d-upstream",
        "kind-config.yaml",
        "mirror-inflight",
        "mirror-layer",
        "workload-big-image-create.yaml",
        "workload-big-image-update.yaml",
    ]
    workload = yaml.safe_load((tmp_path / "workload-big-image-update.yaml").read_text())
    assert workload["kind"] == "DaemonSet"
    assert workload["spec"]["updateStrategy"] == {"type": "OnDelete"}  # the runner rolls it batch by batch
    assert workload["spec"]["template"]["spec"]["nodeSelector"] == {kind.PULL_LABEL: "true"}
    container = workload["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{kind.UPSTREAM_HOST}/bench/big-image:update"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_mirror_kustomization_renders_the_projects_manifests_with_the_mode(tmp_path: Path) -> None:
    kind.write_configuration(SCENARIO, tmp_path)
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / "mirror-layer")], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    (daemonset,) = [d for d in documents if d["kind"] == "DaemonSet"]
    spec = daemonset["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    assert args[-1] == "--advertise=layer"  # the last --advertise wins
    assert spec["containers"][0]["image"] == kind.MIRROR_IMAGE
    assert f"--mirrored-registries=http://{kind.UPSTREAM_HOST}" in spec["initContainers"][0]["args"]


def test_kustomization_refuses_modes_without_a_mirror(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runs no mirror"):
        kind.render_kustomization("proxy", tmp_path)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('Successfully pulled image "r:5000/bench/a:create" in 3.412s (3.412s including waiting)', 3.412),
        ('Successfully pulled image "r/a:v2" in 523ms (523ms including waiting). Image size: 10 bytes.', 0.523),
        ('Successfully pulled image "r/a:v2" in 1m2.5s (1m2.5s including waiting)', 62.5),
    ],
)
def test_pulled_events(message: str, expected: float) -> None:
    parsed = kind.parse_pulled_event(message)
    assert parsed is not None and parsed[1] == pytest.approx(expected)


@pytest.mark.parametrize("message", ['Pulling image "x"', 'Successfully pulled image "x" in soon', ""])
def test_other_events_are_ignored(message: str) -> None:
    assert kind.parse_pulled_event(message) is None


@pytest.mark.parametrize("text", ["", "5", "1x", "1s2"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        kind.parse_go_duration(text)


@pytest.mark.skipif(shutil.which("kind") is not None, reason="kind is installed here")
def test_entering_without_kind_stops_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="needs kind") as info, kind.KindCluster(SCENARIO, tmp_path / "kind"):
        pass
    assert str(tmp_path / "kind") in str(info.value)
    assert (tmp_path / "kind" / "kind-config.yaml").exists()
