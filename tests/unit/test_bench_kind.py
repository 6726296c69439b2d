"""The kind backend: its generated configuration, its parsers (kubelet events, /proc/net/dev, kubectl and
crictl JSON), its clear refusal on this machine, and the commands its live path runs.

No Docker engine runs here (and there is no kind binary), so the live path is checked against stand-ins:
small `kind`, `docker` and `kubectl` scripts written into tmp_path, first on PATH, that log their argv (and
stdin) and print canned output. They check the command sequence (what is created, what is removed on every
way out, what a run applies and deletes) and that a run's records come out of the kubelet's events; they
cannot show that real kind, Docker or Kubernetes behave as the canned output says.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from benchmark import report
from benchmark.cluster import kind, kindplan
from benchmark.cluster.base import ClusterError
from benchmark.kindrun import KindRunner, pulled_records, stale_pods, waiting_reason
from benchmark.progress import Progress
from benchmark.runner import Recorder, build_images, write_meta
from benchmark.scenario import RunKey, from_dict

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
    config = yaml.safe_load(kindplan.render_kind_config(SCENARIO))
    assert config["kind"] == "Cluster" and config["name"] == kindplan.CLUSTER_NAME
    roles = [n["role"] for n in config["nodes"]]
    assert roles == ["control-plane", "worker", "worker", "worker"]
    # no shared host directory: each node keeps its own certs.d (written per mode with docker exec)
    assert not any("extraMounts" in n for n in config["nodes"])
    patch = tomllib.loads(config["containerdConfigPatches"][0])
    transfer = patch["plugins"]["io.containerd.transfer.v1.local"]
    assert transfer["concurrent_layer_fetch_buffer"] == 2 << 20 and transfer["max_concurrent_downloads"] == 5
    assert patch["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == "/etc/containerd/certs.d"


def test_hosts_per_mode() -> None:
    upstream = tomllib.loads(kindplan.render_hosts("upstream")[kindplan.UPSTREAM_HOST])
    assert upstream == {"server": f"http://{kindplan.UPSTREAM_HOST}"}
    proxy = tomllib.loads(kindplan.render_hosts("proxy")[kindplan.UPSTREAM_HOST])
    assert list(proxy["host"]) == [f"http://{kindplan.CACHE_HOST}"]


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
    assert workload["spec"]["template"]["spec"]["nodeSelector"] == {kindplan.PULL_LABEL: "true"}
    container = workload["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{kindplan.UPSTREAM_HOST}/bench/big-image:update"


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
    assert spec["containers"][0]["image"] == kindplan.MIRROR_IMAGE
    assert f"--mirrored-registries=http://{kindplan.UPSTREAM_HOST}" in spec["initContainers"][0]["args"]


def test_kustomization_refuses_modes_without_a_mirror(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runs no mirror"):
        kindplan.render_kustomization("proxy", tmp_path)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('Successfully pulled image "r:5000/bench/a:create" in 3.412s (3.412s including waiting)', 3.412),
        ('Successfully pulled image "r/a:v2" in 523ms (523ms including waiting). Image size: 10 bytes.', 0.523),
        ('Successfully pulled image "r/a:v2" in 1m2.5s (1m2.5s including waiting)', 62.5),
    ],
)
def test_pulled_events(message: str, expected: float) -> None:
    parsed = kindplan.parse_pulled_event(message)
    assert parsed is not None and parsed[1] == pytest.approx(expected)


@pytest.mark.parametrize("message", ['Pulling image "x"', 'Successfully pulled image "x" in soon', ""])
def test_other_events_are_ignored(message: str) -> None:
    assert kindplan.parse_pulled_event(message) is None


@pytest.mark.parametrize("text", ["", "5", "1x", "1s2"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        kindplan.parse_go_duration(text)


@pytest.mark.skipif(shutil.which("kind") is not None, reason="kind is installed here")
def test_entering_without_kind_stops_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="needs kind") as info, kind.KindCluster(SCENARIO, tmp_path / "kind"):
        pass
    assert str(tmp_path / "kind") in str(info.value)
    assert (tmp_path / "kind" / "kind-config.yaml").exists()


# --- pure parsers ---


def _sys_counter(interface: str, name: str) -> int:
    return int(Path(f"/sys/class/net/{interface}/statistics/{name}").read_text())


def test_net_dev_parser_on_this_machines_own_table() -> None:
    interfaces = sorted(os.listdir("/sys/class/net"))
    before = {i: (_sys_counter(i, "rx_bytes"), _sys_counter(i, "tx_bytes")) for i in interfaces}
    text = Path("/proc/self/net/dev").read_text()
    after = {i: (_sys_counter(i, "rx_bytes"), _sys_counter(i, "tx_bytes")) for i in interfaces}
    parsed = kindplan.parse_net_dev(text)
    assert sorted(parsed) == interfaces and "lo" in parsed
    for interface, (received, sent) in parsed.items():  # the right columns: between two reads of the kernel's
        assert before[interface][0] <= received <= after[interface][0]
        assert before[interface][1] <= sent <= after[interface][1]
    assert kindplan.transmitted_bytes(text) == sum(sent for name, (_, sent) in parsed.items() if name != "lo")


@pytest.mark.parametrize(
    "text", ["", "eth0: 1 2 3", "Inter-|\n face |bytes\n  eth0: 1 2 x 4 5 6 7 8 9 10 11 12 13 14 15 16", "a|\nbytes\nx"]
)
def test_net_dev_parser_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError):
        kindplan.parse_net_dev(text)


def test_hosts_swap_per_mode() -> None:
    for mode in ("upstream", "proxy", "layer"):
        (clear, clear_input), *writes = kindplan.hosts_commands("spegel-bench-worker2", mode)
        assert clear[:3] == ["docker", "exec", "spegel-bench-worker2"] and clear_input is None
        assert "find /etc/containerd/certs.d -mindepth 1 -delete" in clear[-1]  # an earlier mode's files go
        ((argv, text),) = writes
        assert argv[:4] == ["docker", "exec", "-i", "spegel-bench-worker2"]
        assert argv[-1].endswith(f"cat > /etc/containerd/certs.d/{kindplan.UPSTREAM_HOST}/hosts.toml")
        hosts = tomllib.loads(text or "")
        assert hosts["server"] == f"http://{kindplan.UPSTREAM_HOST}"
        assert list(hosts.get("host", {})) == ([f"http://{kindplan.CACHE_HOST}"] if mode == "proxy" else [])


def test_worker_nodes_in_kinds_numbering() -> None:
    listed = (
        "spegel-bench-worker10\nspegel-bench-control-plane\nspegel-bench-worker2\nother-worker\nspegel-bench-worker"
    )
    workers = [f"spegel-bench-worker{n}" for n in ["", *map(str, range(2, 11))]]
    assert kindplan.worker_nodes("\n".join([*workers[2:9], listed])) == workers


def test_published_port_and_image_ids() -> None:
    assert kindplan.parse_published_port("127.0.0.1:49153\n") == 49153
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        kindplan.parse_published_port("0.0.0.0:49153\n")
    images = {
        "images": [
            {"id": "sha256:a", "repoTags": [f"{kindplan.UPSTREAM_HOST}/bench/x:create"], "repoDigests": []},
            {"id": "sha256:b", "repoTags": [], "repoDigests": [f"{kindplan.UPSTREAM_HOST}/bench/x@sha256:1"]},
            {"id": "sha256:c", "repoTags": ["docker.io/library/spegel:bench"], "repoDigests": None},
        ]
    }
    assert kindplan.bench_image_ids(json.dumps(images)) == ["sha256:a", "sha256:b"]


REF = f"{kindplan.UPSTREAM_HOST}/bench/big-image:create"
OTHER_REF = f"{kindplan.UPSTREAM_HOST}/bench/big-image:update"


def _pod(uid: str, node: str | None, image: str, waiting: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "pull", "image": image}]}
    if node is not None:
        spec["nodeName"] = node
    status = {"containerStatuses": [{"name": "pull", "state": {"waiting": waiting}}]} if waiting else {}
    return {"metadata": {"name": f"pod-{uid}", "namespace": "default", "uid": uid}, "spec": spec, "status": status}


def _event(
    uid: str, reference: str, duration: str, when: str, host: str = "", reason: str = "Pulled", message: str = ""
) -> dict[str, Any]:
    """An event as `kubectl get events -o json` prints the kubelet's (legacy recorder: no eventTime)."""
    text = message or f'Successfully pulled image "{reference}" in {duration} ({duration} including waiting)'
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"pod-{uid}.17a", "namespace": "default", "creationTimestamp": when},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": f"pod-{uid}",
            "namespace": "default",
            "uid": uid,
            "fieldPath": "spec.containers{pull}",
        },
        "reason": reason,
        "message": text,
        "source": {"component": "kubelet", "host": host},
        "firstTimestamp": when,
        "lastTimestamp": when,
        "eventTime": None,
        "count": 1,
        "type": "Normal",
        "reportingComponent": "kubelet",
        "reportingInstance": host,
    }


def _events(*items: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": list(items), "metadata": {"resourceVersion": ""}}


def test_pulled_events_become_pull_records() -> None:
    pods = _events(_pod("u1", "w1", REF), _pod("u2", "w2", REF), _pod("u3", None, REF), _pod("u4", "w3", REF))
    events = _events(
        _event("u1", REF, "3.5s", "2024-05-01T10:00:10Z", host="w1"),
        _event("u2", REF, "1m2.5s", "2024-05-01T10:01:05Z"),  # no source.host: the pod's node
        _event("u1", REF, "", "2024-05-01T10:00:09Z", reason="Pulling", message=f'Pulling image "{REF}"'),
        _event("u4", OTHER_REF, "2s", "2024-05-01T10:00:09Z", host="w3"),  # another image
        _event("u1", REF, "", "2024-05-01T10:00:20Z", message=f'Container image "{REF}" already present on machine'),
        _event("old", REF, "9s", "2024-05-01T09:00:00Z", host="w2"),  # a pod of an earlier run
        _event("u3", REF, "1s", "2024-05-01T10:00:11Z", host="w4"),  # unscheduled pod: the event's host
    )
    found = pulled_records(events, pods, REF, ["w1", "w2", "w3", "w4", "w5"])
    assert sorted(found) == ["w1", "w2", "w4"]  # w3 pulled another image, w5 nothing
    end = 1714557610.0  # 2024-05-01T10:00:10Z
    assert found["w1"] == {"node": "w1", "start": end - 3.5, "end": end, "duration": 3.5, "ok": True, "error": ""}
    assert found["w2"]["duration"] == pytest.approx(62.5) and found["w2"]["end"] == end + 55
    assert pulled_records(events, pods, REF, ["w1"]).keys() == {"w1"}


def test_stale_pods_and_waiting_reasons() -> None:
    waiting = {"reason": "ErrImagePull", "message": "connection refused"}
    pods = _events(_pod("u1", "w1", OTHER_REF), _pod("u2", "w2", REF, waiting), _pod("u3", "w3", OTHER_REF))
    assert stale_pods(pods, ["w1", "w2"], REF) == ["pod-u1"]
    assert waiting_reason(pods, "w2", REF) == "ErrImagePull: connection refused"
    assert waiting_reason(pods, "w1", REF) == "no pod of the image on the node"


# --- the live path, against stand-ins for kind, docker and kubectl ---

FAKE_TOOL = r"""
import json, os, sys
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
line = " ".join([tool, *args])
stdin = sys.stdin.read() if tool == "docker" and args[:2] == ["exec", "-i"] else None
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"argv": [tool, *args], "stdin": stdin}) + "\n")
fail = os.environ.get("FAKE_FAIL")
if fail and fail in line:
    sys.stderr.write(f"fake {tool}: {fail} broke\n")
    sys.exit(1)
canned = os.environ["FAKE_DIR"]

def show(name, default=""):
    path = os.path.join(canned, name)
    sys.stdout.write(open(path).read() if os.path.exists(path) else default)

if tool == "kind" and args[:2] == ["get", "clusters"]:
    show("clusters.txt")
elif tool == "kind" and args[:2] == ["get", "nodes"]:
    name = args[args.index("--name") + 1]
    print(f"{name}-control-plane")
    for n in range(int(os.environ["FAKE_WORKERS"])):
        print(f"{name}-worker{n + 1 if n else ''}")
elif tool == "docker" and args[0] == "run":
    name = args[args.index("--name") + 1]
    with open(args[args.index("--cidfile") + 1], "w") as cidfile:
        cidfile.write(f"cid-{name}")
    print(f"cid-{name}")
elif tool == "docker" and args[0] == "port":
    print(f"127.0.0.1:{os.environ['FAKE_PORT']}")
elif tool == "docker" and args[0] == "exec" and "crictl" in args and "images" in args:
    show("crictl-images.json", '{"images": []}')
elif tool == "docker" and args[0] == "exec" and args[-1] == "/proc/net/dev":
    sys.stdout.write(open("/proc/self/net/dev").read())
elif tool == "docker" and args[0] == "logs":
    show("upstream.log")
elif tool == "kubectl" and "get" in args and "events" in args:
    show("events.json", '{"items": []}')
elif tool == "kubectl" and "get" in args and "pods" in args:
    show("pods-" + args[args.index("-n") + 1] + ".json", '{"items": []}')
elif tool == "kubectl" and "--raw" in args:
    show("metrics.txt")
"""


class Fakes:
    """The stand-ins' log and canned output."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log = directory / "log.jsonl"

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line)["argv"] for line in self.log.read_text().splitlines()]

    def stdins(self) -> list[str | None]:
        return [json.loads(line)["stdin"] for line in self.log.read_text().splitlines()]

    def lines(self) -> list[str]:
        return [" ".join(argv) for argv in self.calls()]

    def removals(self) -> list[str]:
        return [line for line in self.lines() if line.startswith(("docker rm", "kind delete"))]

    def can(self, name: str, content: str | dict[str, Any]) -> None:
        (self.directory / "canned" / name).write_text(content if isinstance(content, str) else json.dumps(content))


class _V2(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/v2/" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    """`kind`, `docker` and `kubectl` stand-ins first on PATH; the published registry port is a local HTTP
    server answering /v2/ (the only address anything here talks to is 127.0.0.1)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kind", "docker", "kubectl"):
        script = bin_dir / tool
        script.write_text(f"#!{sys.executable}\n{FAKE_TOOL}")
        script.chmod(0o755)
    (tmp_path / "canned").mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _V2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "log.jsonl"))
    monkeypatch.setenv("FAKE_DIR", str(tmp_path / "canned"))
    monkeypatch.setenv("FAKE_PORT", str(server.server_address[1]))
    monkeypatch.setenv("FAKE_WORKERS", "2")
    try:
        yield Fakes(tmp_path)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


LIVE = from_dict(
    {
        "name": "live",
        "modes": ["upstream", "proxy", "layer"],
        "phases": ["create", "update"],
        "pull_timeout": "300ms",
        "cluster": {"nodes": 2, "backend": "kind"},
        "images": [{"name": "Big Image", "size": "64KiB", "layers": 2}],
    }
)
WORKERS = ["spegel-bench-worker", "spegel-bench-worker2"]
THE_CLUSTER_AND_UPSTREAM = ["docker rm -f cid-spegel-bench-upstream", "kind delete cluster --name spegel-bench"]


def test_bringing_up_and_leaving_removes_what_it_made(fakes: Fakes, tmp_path: Path) -> None:
    directory = tmp_path / "kind"
    with kind.KindCluster(LIVE, directory) as cluster:
        lines = fakes.lines()
        assert cluster.workers == WORKERS
        assert cluster.upstream_url == f"http://127.0.0.1:{os.environ['FAKE_PORT']}"
        assert fakes.removals() == []
    containerfile = kindplan.REPO_ROOT / "deploy" / "Containerfile"
    config, kubeconfig = directory.resolve() / "kind-config.yaml", directory.resolve() / "kubeconfig"
    expected_in_order = [
        "kind get clusters",
        f"docker build -f {containerfile} -t spegel:bench {kindplan.REPO_ROOT}",
        f"kind create cluster --config {config} --kubeconfig {kubeconfig} --wait 5m",
        "kind get nodes --name spegel-bench",
        f"docker run -d --cidfile {directory.resolve() / 'spegel-bench-upstream.cid'} --name spegel-bench-upstream "
        "--network kind -p 127.0.0.1::5000 registry:2",
        "kind load docker-image spegel:bench --name spegel-bench",
    ]
    positions = [lines.index(line) for line in expected_in_order]
    assert positions == sorted(positions)
    assert [line.split(" --kubeconfig")[0] for line in fakes.removals()] == THE_CLUSTER_AND_UPSTREAM
    assert not (directory / "spegel-bench-upstream.cid").exists()


@pytest.mark.parametrize(
    ("failing", "removed"),
    [
        ("kind load", THE_CLUSTER_AND_UPSTREAM),  # after the upstream started
        ("docker run", THE_CLUSTER_AND_UPSTREAM[1:]),  # no container was made
        ("kind create", THE_CLUSTER_AND_UPSTREAM[1:]),  # a half-made cluster of our name is ours
        ("docker build", []),  # before anything was made
    ],
)
def test_a_failing_step_removes_exactly_what_was_made(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, removed: list[str]
) -> None:
    monkeypatch.setenv("FAKE_FAIL", failing)
    with pytest.raises(ClusterError, match=f"{failing}.* failed: fake .*broke"), kind.KindCluster(LIVE, tmp_path):
        pass
    assert [line.split(" --kubeconfig")[0] for line in fakes.removals()] == removed


def test_an_interrupt_removes_what_was_made(fakes: Fakes, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), kind.KindCluster(LIVE, tmp_path) as cluster:
        cluster.start_cache()
        raise KeyboardInterrupt
    removals = [line.split(" --kubeconfig")[0] for line in fakes.removals()]
    assert removals == ["docker rm -f cid-spegel-bench-cache", *THE_CLUSTER_AND_UPSTREAM]


def test_a_cluster_of_that_name_is_left_alone(fakes: Fakes, tmp_path: Path) -> None:
    fakes.can("clusters.txt", "kind\nspegel-bench\n")
    with pytest.raises(ClusterError, match="exists already"), kind.KindCluster(LIVE, tmp_path):
        pass
    assert not any(line.startswith("kind create") for line in fakes.lines())
    assert fakes.removals() == []


def test_a_failing_teardown_is_reported(fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ClusterError, match=r"tearing down.*kind delete cluster"), kind.KindCluster(LIVE, tmp_path):
        monkeypatch.setenv("FAKE_FAIL", "kind delete")
    assert [line.split(" --kubeconfig")[0] for line in fakes.removals()] == THE_CLUSTER_AND_UPSTREAM


def _workload_pods(phase_pods: dict[str, tuple[str, str]], waiting: dict[str, str]) -> dict[str, Any]:
    """The workload's pods; the update pod on the second worker waits with `waiting`."""
    items = [_pod(uid, node, ref, waiting if uid == "u2-update" else None) for uid, (node, ref) in phase_pods.items()]
    return _events(*items)


def test_a_run_records_pulls_from_kubelet_events_and_leaves_the_cluster_clean(fakes: Fakes, tmp_path: Path) -> None:
    create, update = (f"{kindplan.UPSTREAM_HOST}/bench/big-image:{phase}" for phase in ("create", "update"))
    w1, w2 = WORKERS
    pods = {"u1-create": (w1, create), "u2-create": (w2, create), "u1-update": (w1, update), "u2-update": (w2, update)}
    fakes.can("pods-default.json", _workload_pods(pods, {"reason": "ErrImagePull", "message": "i/o timeout"}))
    fakes.can(
        "events.json",
        _events(
            _event("u1-create", create, "2.5s", "2024-05-01T10:00:10Z", host=w1),
            _event("u2-create", create, "3s", "2024-05-01T10:00:11Z", host=w2),
            _event("u1-update", update, "500ms", "2024-05-01T10:01:00Z", host=w1),  # w2 never pulls the update
            _event("gone", create, "7s", "2024-05-01T09:00:00Z", host=w2),  # a pod of an earlier run
        ),
    )
    fakes.can("pods-spegel.json", {"items": [{"metadata": {"name": "spegel-a"}}, {"metadata": {"name": "spegel-b"}}]})
    metrics = '# TYPE spegel_mirror_bytes_total counter\nspegel_mirror_bytes_total{source="peer"} 1024\n'
    fakes.can("metrics.txt", metrics)
    fakes.can("crictl-images.json", {"images": [{"id": "sha256:c1", "repoTags": [create]}]})
    fakes.can("upstream.log", '172.18.0.3 - - [01/May/2024:10:00:00 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "containerd"\n')
    out = tmp_path / "out"
    images = build_images(LIVE, tmp_path / "images")
    recorder = Recorder(out)
    with open(os.devnull, "w") as quiet, kind.KindCluster(LIVE, out / "kind") as cluster:
        runner = KindRunner(LIVE, cluster, images, recorder, Progress(1, quiet), poll_interval=0.01)
        start = len(fakes.calls())
        trio.run(runner.run_one, RunKey("Big Image", "layer", 0))
        run_lines = fakes.lines()[start:]
    recorder.flush()

    pulls = {(r["phase"], r["node"]): r for r in recorder.rows["pulls"]}
    assert set(pulls) == {("create", w1), ("create", w2), ("update", w1), ("update", w2)}
    assert pulls["create", w1]["duration"] == 2.5 and pulls["create", w1]["end"] == 1714557610.0
    assert pulls["create", w2]["duration"] == 3.0 and pulls["create", w2]["ok"]
    assert pulls["update", w1]["ok"] and pulls["update", w1]["batch"] == 0 and pulls["update", w2]["batch"] == 1
    assert not pulls["update", w2]["ok"] and "ErrImagePull: i/o timeout" in pulls["update", w2]["error"]
    assert {r["run"] for r in recorder.rows["pulls"]} == {"Big Image/layer/rep0"}
    traffic = recorder.rows["traffic"]
    assert [t["phase"] for t in traffic] == ["create", "update"]
    assert all(t["upstream_log_bytes"] == 0 and t["upstream_bytes"] >= 0 and t["bytes_peer"] == 0 for t in traffic)

    kubectl = [line.split(" ", 3)[3] for line in run_lines if line.startswith("kubectl")]  # after --kubeconfig X
    directory = (out / "kind").resolve()
    label = "label nodes {} spegel-bench/pull=true --overwrite"
    in_order = [
        f"apply -k {directory / 'mirror-layer'}",
        "-n spegel rollout status ds/spegel --timeout=300s",
        f"apply -f {directory / 'workload-big-image-create.yaml'}",
        label.format(f"{w1} {w2}"),
        f"apply -f {directory / 'workload-big-image-update.yaml'}",
        "-n default delete pod --wait=false pod-u1-create",
        label.format(w1),
        "-n default delete pod --wait=false pod-u2-create",
        label.format(w2),
        "-n default delete daemonset spegel-bench-pull --ignore-not-found --cascade=foreground --wait --timeout=300s",
        f"label nodes {w1} {w2} spegel-bench/pull-",
        f"delete -k {directory / 'mirror-layer'} --ignore-not-found --cascade=foreground --wait --timeout=300s",
    ]
    positions = [kubectl.index(line) for line in in_order]
    assert positions == sorted(positions)
    hosts_written = [line for line in run_lines if line.startswith("docker exec -i")]
    assert [line.split()[3] for line in hosts_written] == WORKERS  # every worker got the mode's hosts.toml
    assert run_lines.index(hosts_written[-1]) < run_lines.index(
        f"kubectl --kubeconfig {directory / 'kubeconfig'} {in_order[0]}"
    )
    for node in WORKERS:  # cold for the next run: the pulled images and partial downloads are gone
        assert f"docker exec {node} crictl rmi sha256:c1" in run_lines
        assert f"docker exec {node} sh -c rm -rf {kindplan.CONTENT_ROOT}/ingest/*" in run_lines
    assert not any("spegel:bench" in line for line in run_lines)  # the mirror image stays

    write_meta(out, LIVE, images, started=0.0, finished=1.0)
    readme = report.build(out)  # the report is built from the kind run's tables unchanged
    assert "layer" in readme.read_text()


def test_a_proxy_run_gets_a_fresh_cache_removed_afterwards(fakes: Fakes, tmp_path: Path) -> None:
    with kind.KindCluster(LIVE, tmp_path / "kind") as cluster:
        cluster.set_hosts("proxy")
        cluster.start_cache()
        assert cluster.cache_id == "cid-spegel-bench-cache"
        cluster.reset("proxy")
        assert fakes.removals() == ["docker rm -f cid-spegel-bench-cache"]
    run_cache = [line for line in fakes.lines() if line.startswith("docker run") and "spegel-bench-cache" in line]
    assert len(run_cache) == 1 and f"REGISTRY_PROXY_REMOTEURL=http://{kindplan.UPSTREAM_HOST}" in run_cache[0]
    written = [stdin for stdin in fakes.stdins() if stdin]
    assert len(written) == 2 and all(f'"http://{kindplan.CACHE_HOST}"' in text for text in written)
    assert [line.split(" --kubeconfig")[0] for line in fakes.removals()] == [
        "docker rm -f cid-spegel-bench-cache",
        *THE_CLUSTER_AND_UPSTREAM,
    ]
