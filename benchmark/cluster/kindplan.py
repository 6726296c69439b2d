"""The kind backend's plan (pure, no I/O): its names, the files it writes (kind's cluster configuration with
containerd patched like the netns nodes, hosts.toml per mode, a kustomization of `deploy/` per mirror mode,
the pull DaemonSet), and parsers for what kind, Docker, crictl and the kubelet print. `kind.py` runs it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
from pathlib import Path

from benchmark.scenario import MIRROR_MODES, ImageShape, Scenario, repository_name
from spegel import hostsconfig

CLUSTER_NAME = "spegel-bench"
DOCKER_NETWORK = "kind"  # the Docker network kind puts its nodes on
REGISTRY_PORT = 5000
UPSTREAM_NAME = "spegel-bench-upstream"
CACHE_NAME = "spegel-bench-cache"
UPSTREAM_HOST = f"{UPSTREAM_NAME}:{REGISTRY_PORT}"  # the upstream registry container on the `kind` network
CACHE_HOST = f"{CACHE_NAME}:{REGISTRY_PORT}"  # the pull-through cache container
REGISTRY_IMAGE = "registry:2"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_BASE = REPO_ROOT / "deploy" / "kustomize" / "base"
ROUTER_PSK = DEPLOY_BASE / "router.psk"  # the cluster secret the base's secretGenerator reads (never committed)
MIRROR_IMAGE = "spegel:bench"
MIRROR_NAMESPACE = "spegel"  # from deploy/kustomize/base
CERTS_D = "/etc/containerd/certs.d"
CONTENT_ROOT = "/var/lib/containerd/io.containerd.content.v1.content"
WORKLOAD_NAME = "spegel-bench-pull"
WORKLOAD_NAMESPACE = "default"
PULL_LABEL = "spegel-bench/pull"  # workers with this label run a workload pod

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PULLED = re.compile(r'^Successfully pulled image "(?P<image>[^"]+)" in (?P<duration>[0-9.a-zµ]+)')
_PUBLISHED = re.compile(r"^127\.0\.0\.1:(\d+)$")


# --- configuration ---


def render_kind_config(scenario: Scenario) -> str:
    """kind's cluster configuration: N workers whose containerd reads registry hosts from certs.d."""
    cluster = scenario.cluster
    patch = (
        '[plugins."io.containerd.cri.v1.images".registry]\n'
        f'  config_path = "{CERTS_D}"\n'
        '[plugins."io.containerd.transfer.v1.local"]\n'
        f'  config_path = "{CERTS_D}"\n'
        f"  max_concurrent_downloads = {cluster.max_concurrent_downloads}\n"
        f"  concurrent_layer_fetch_buffer = {cluster.chunk_size}\n"
    )
    return (
        "kind: Cluster\n"
        "apiVersion: kind.x-k8s.io/v1alpha4\n"
        f"name: {CLUSTER_NAME}\n"
        "containerdConfigPatches:\n"
        "  - |-\n" + "".join(f"    {line}\n" for line in patch.splitlines()) + "nodes:\n"
        "  - role: control-plane\n" + "  - role: worker\n" * cluster.nodes
    )


def render_hosts(mode: str) -> dict[str, str]:
    """Directory name -> hosts.toml for `mode` (mirror modes: the DaemonSet's init container adds the mirror)."""
    server = f"http://{UPSTREAM_HOST}"
    if mode == "proxy":
        return {UPSTREAM_HOST: hostsconfig.render_hosts(server, [f"http://{CACHE_HOST}"])}
    return {UPSTREAM_HOST: hostsconfig.render_toml({"server": server})}


def hosts_commands(node: str, mode: str) -> list[tuple[list[str], str | None]]:
    """(argv, stdin) that make `node`'s certs.d hold exactly `mode`'s hosts.toml files: everything there before
    (an earlier mode's files, a mirror's `_backup`) is removed first. containerd reads hosts.toml per pull."""
    commands: list[tuple[list[str], str | None]] = [
        (["docker", "exec", node, "sh", "-c", f"mkdir -p {CERTS_D} && find {CERTS_D} -mindepth 1 -delete"], None)
    ]
    for host, text in render_hosts(mode).items():
        directory = shlex.quote(f"{CERTS_D}/{host}")
        script = f"mkdir -p {directory} && cat > {directory}/{hostsconfig.HOSTS_FILE}"
        commands.append((["docker", "exec", "-i", node, "sh", "-c", script], text))
    return commands


def ensure_router_psk(path: Path = ROUTER_PSK) -> Path:
    """A private network key at `path`: the one there, else a new one (as `openssl rand -hex 32 > path` makes)."""
    if not path.exists():
        path.write_text(secrets.token_hex(32) + "\n")
    return path


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


def render_workload(reference: str, name: str = WORKLOAD_NAME) -> str:
    """The DaemonSet whose pods pull `reference` on the workers labelled `PULL_LABEL=true`.

    `OnDelete`: a changed image reaches a node only when the runner deletes that node's pod, batch by batch
    (see `benchmark/kindrun.py` for why not RollingUpdate). The synthetic images hold no program: the
    container fails after the pull, which is all that is measured.
    """
    return (
        "apiVersion: apps/v1\n"
        "kind: DaemonSet\n"
        "metadata:\n"
        f"  name: {name}\n"
        f"  namespace: {WORKLOAD_NAMESPACE}\n"
        "spec:\n"
        "  selector:\n"
        "    matchLabels:\n"
        f"      app: {name}\n"
        "  updateStrategy:\n"
        "    type: OnDelete\n"
        "  template:\n"
        "    metadata:\n"
        "      labels:\n"
        f"        app: {name}\n"
        "    spec:\n"
        "      nodeSelector:\n"
        f'        {PULL_LABEL}: "true"\n'
        "      terminationGracePeriodSeconds: 0\n"
        "      containers:\n"
        "        - name: pull\n"
        f"          image: {reference}\n"
        "          imagePullPolicy: IfNotPresent\n"
    )


def workload_file(shape: ImageShape, phase: str) -> str:
    """The file name of the workload that pulls `shape`'s image of `phase`."""
    return f"workload-{repository_name(shape).rsplit('/', 1)[-1]}-{phase}.yaml"


# --- parsers ---


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


def parse_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """Interface -> (received bytes, transmitted bytes) from the text of /proc/net/dev; ValueError when the
    text is not that table."""
    lines = text.splitlines()
    if len(lines) < 2 or "|" not in lines[0] or "bytes" not in lines[1]:
        raise ValueError(f"not /proc/net/dev: {text[:80]!r}")
    counters = {}
    for line in lines[2:]:
        name, _, numbers = line.partition(":")
        fields = numbers.split()
        if not _ or len(fields) < 16 or not all(f.isdigit() for f in fields):
            raise ValueError(f"bad /proc/net/dev line {line!r}")
        counters[name.strip()] = (int(fields[0]), int(fields[8]))
    return counters


def transmitted_bytes(net_dev: str) -> int:
    """Bytes sent on every interface but loopback, from the text of /proc/net/dev."""
    return sum(sent for name, (_, sent) in parse_net_dev(net_dev).items() if name != "lo")


def parse_published_port(text: str) -> int:
    """The host port of `docker port CONTAINER 5000/tcp` output published on 127.0.0.1."""
    for line in text.splitlines():
        match = _PUBLISHED.match(line.strip())
        if match:
            return int(match[1])
    raise ValueError(f"no port published on 127.0.0.1 in {text.strip()!r}")


def worker_nodes(kind_nodes: str, cluster: str = CLUSTER_NAME) -> list[str]:
    """The worker names in `kind get nodes` output, in kind's numbering (worker, worker2, ..., worker10)."""
    pattern = re.compile(rf"{re.escape(cluster)}-worker(\d*)")
    matched = [(int(m[1] or 1), m[0]) for name in kind_nodes.split() if (m := pattern.fullmatch(name))]
    return [name for _, name in sorted(matched)]


def bench_image_ids(crictl_images: str, registry_host: str = UPSTREAM_HOST) -> list[str]:
    """IDs of the images named under `registry_host` in `crictl images -o json` output (what a run pulled)."""
    ids = []
    for image in json.loads(crictl_images).get("images") or []:
        names = [*(image.get("repoTags") or []), *(image.get("repoDigests") or [])]
        if any(name.startswith(f"{registry_host}/") for name in names):
            ids.append(image["id"])
    return ids
