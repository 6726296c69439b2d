"""The `kind` backend: a kind cluster (Kubernetes in Docker), configured the way the netns nodes are.

What this module does everywhere: generate the configuration under `DIR` (the report's `kind/`):
- `kind-config.yaml`: one control-plane and N workers; containerd patched like the netns nodes (registry
  hosts from `/etc/containerd/certs.d`, multipart layer fetch with the scenario's chunk size), and that
  directory mounted from `DIR/certs.d` so that each mode's hosts.toml can be swapped between runs;
- `certs.d-<mode>/`: the hosts.toml each mode needs (plain-HTTP upstream; the pull-through cache as mirror);
- `mirror-<mode>/kustomization.yaml`: the project's manifests (`deploy/kustomize/base`) with
  `--advertise=<mode>` and the upstream registry mirrored over plain HTTP;
- `workload-<phase>.yaml`: the DaemonSet whose pods make every node pull the phase's image, as
  spegel-org/benchmark does (rolling update 20 % at a time); pull durations come from the kubelet's
  `Pulled` events (`parse_pulled_event`).

Running it needs `kind`, `kubectl` and a Docker daemon; where one is missing, entering the cluster raises
`ClusterError` naming it, after the configuration has been written (so it can be inspected or used by hand).
Bandwidth shaping is not applied on kind: Docker's bridge runs at host speed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from benchmark.cluster.base import ClusterError
from benchmark.scenario import MIRROR_MODES, Scenario, repository_name
from spegel import hostsconfig

CLUSTER_NAME = "spegel-bench"
UPSTREAM_HOST = "spegel-bench-upstream:5000"  # the upstream registry container on the `kind` Docker network
CACHE_HOST = "spegel-bench-cache:5000"  # the pull-through cache container
DEPLOY_BASE = Path(__file__).resolve().parents[2] / "deploy" / "kustomize" / "base"
MIRROR_IMAGE = "spegel:bench"

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PULLED = re.compile(r'^Successfully pulled image "(?P<image>[^"]+)" in (?P<duration>[0-9.a-zµ]+)')


def render_kind_config(scenario: Scenario, certs_dir: Path) -> str:
    """kind's cluster configuration: N workers whose containerd reads registry hosts from `certs_dir`."""
    cluster = scenario.cluster
    patch = (
        '[plugins."io.containerd.cri.v1.images".registry]\n'
        '  config_path = "/etc/containerd/certs.d"\n'
        '[plugins."io.containerd.transfer.v1.local"]\n'
        '  config_path = "/etc/containerd/certs.d"\n'
        f"  max_concurrent_downloads = {cluster.max_concurrent_downloads}\n"
        f"  concurrent_layer_fetch_buffer = {cluster.chunk_size}\n"
    )
    worker = (
        "  - role: worker\n"
        "    extraMounts:\n"
        f"      - hostPath: {certs_dir}\n"
        "        containerPath: /etc/containerd/certs.d\n"
    )
    return (
        "kind: Cluster\n"
        "apiVersion: kind.x-k8s.io/v1alpha4\n"
        f"name: {CLUSTER_NAME}\n"
        "containerdConfigPatches:\n"
        "  - |-\n" + "".join(f"    {line}\n" for line in patch.splitlines()) + "nodes:\n"
        "  - role: control-plane\n" + worker * cluster.nodes
    )


def render_hosts(mode: str) -> dict[str, str]:
    """Directory name -> hosts.toml for `mode` (mirror modes: the DaemonSet's init container adds the mirror)."""
    server = f"http://{UPSTREAM_HOST}"
    if mode == "proxy":
        return {UPSTREAM_HOST: hostsconfig.render_hosts(server, [f"http://{CACHE_HOST}"])}
    return {UPSTREAM_HOST: hostsconfig.render_toml({"server": server})}


def render_kustomization(mode: str, directory: Path) -> str:
    """A kustomization in `directory` deploying the project's manifests with `--advertise=<mode>`."""
    if mode not in MIRROR_MODES:
        raise ValueError(f"mode {mode!r} runs no mirror")
    base = os.path.relpath(DEPLOY_BASE, directory)
    name, tag = MIRROR_IMAGE.split(":")
    return (
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n"
        f"  - {base}\n"
        "images:\n"
        "  - name: spegel\n"
        f"    newName: {name}\n"
        f"    newTag: {tag}\n"
        "patches:\n"
        "  - target:\n"
        "      kind: DaemonSet\n"
        "      name: spegel\n"
        "    patch: |-\n"
        "      - op: add\n"
        "        path: /spec/template/spec/containers/0/args/-\n"
        f"        value: --advertise={mode}\n"
        "      - op: add\n"
        "        path: /spec/template/spec/initContainers/0/args/-\n"
        f"        value: --mirrored-registries=http://{UPSTREAM_HOST}\n"
        "      - op: add\n"
        "        path: /spec/template/spec/initContainers/0/args/-\n"
        "        value: --prepend-existing\n"
    )


def render_workload(reference: str, name: str = "spegel-bench-pull") -> str:
    """The DaemonSet that makes every worker pull `reference` (rolling updates 20 % at a time).

    The synthetic images hold no program: the container fails after the pull, which is all that is measured.
    """
    return (
        "apiVersion: apps/v1\n"
        "kind: DaemonSet\n"
        "metadata:\n"
        f"  name: {name}\n"
        "  namespace: default\n"
        "spec:\n"
        "  selector:\n"
        "    matchLabels:\n"
        f"      app: {name}\n"
        "  updateStrategy:\n"
        "    type: RollingUpdate\n"
        "    rollingUpdate:\n"
        "      maxUnavailable: 20%\n"
        "  template:\n"
        "    metadata:\n"
        "      labels:\n"
        f"        app: {name}\n"
        "    spec:\n"
        "      containers:\n"
        "        - name: pull\n"
        f"          image: {reference}\n"
        "          imagePullPolicy: IfNotPresent\n"
    )


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration (`1m2.5s`, `523ms`); raises ValueError when it is not one."""
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"invalid Go duration {text!r}")
    return sum(float(number) * _GO_UNITS[unit] for number, unit in parts)


def parse_pulled_event(message: str) -> tuple[str, float] | None:
    """(image, seconds) from a kubelet `Pulled` event message, or None for any other message."""
    match = _PULLED.match(message)
    if match is None:
        return None
    try:
        return match["image"], parse_go_duration(match["duration"])
    except ValueError:
        return None


def write_configuration(scenario: Scenario, directory: Path, registry_host: str = UPSTREAM_HOST) -> None:
    """Write every file the kind backend uses under `directory` (see the module docstring)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kind-config.yaml").write_text(render_kind_config(scenario, directory / "certs.d"))
    for mode in scenario.modes:
        for host, text in render_hosts(mode).items():
            hosts_dir = directory / f"certs.d-{mode}" / host
            hosts_dir.mkdir(parents=True, exist_ok=True)
            (hosts_dir / hostsconfig.HOSTS_FILE).write_text(text)
        if mode in MIRROR_MODES:
            kustomize_dir = directory / f"mirror-{mode}"
            kustomize_dir.mkdir(exist_ok=True)
            (kustomize_dir / "kustomization.yaml").write_text(render_kustomization(mode, kustomize_dir))
    for phase in scenario.phases:
        for shape in scenario.images:
            reference = f"{registry_host}/{repository_name(shape)}:{phase}"
            slug = repository_name(shape).rsplit("/", 1)[-1]
            (directory / f"workload-{slug}-{phase}.yaml").write_text(render_workload(reference))


def missing_tools() -> list[str]:
    """What the kind backend needs and this machine lacks: `kind`, `kubectl`, a running Docker daemon."""
    missing = [tool for tool in ("kind", "kubectl", "docker") if shutil.which(tool) is None]
    if "docker" not in missing:
        try:
            answered = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            answered = False
        if not answered:
            missing.append("a running Docker daemon")
    return missing


class KindCluster:
    """The kind backend. Entering writes the configuration, then stops with `ClusterError` when a tool is
    missing. Running pulls on kind (cluster creation, kubectl apply, kubelet events) is not implemented."""

    def __init__(self, scenario: Scenario, directory: Path) -> None:
        self.scenario = scenario
        self.directory = Path(directory)

    def __enter__(self) -> KindCluster:
        write_configuration(self.scenario, self.directory)
        missing = missing_tools()
        if missing:
            raise ClusterError(
                f"the kind backend needs {', '.join(missing)}, missing here; its configuration is in "
                f'{self.directory}. Use backend = "netns" on this machine.'
            )
        raise ClusterError(
            f"running scenarios on kind is not implemented yet; the configuration is in {self.directory} "
            "(kind create cluster --config kind-config.yaml; kubectl apply -k mirror-<mode>)"
        )

    def __exit__(self, *exc: object) -> None:
        pass
