"""The `kind` backend: a kind cluster (Kubernetes in Docker), configured the way the netns nodes are.

Configuration, written under `DIR` (the report's `kind/`) before anything runs (pure renderers below):
- `kind-config.yaml`: one control-plane and N workers, containerd patched like the netns nodes (registry hosts
  from `/etc/containerd/certs.d`, multipart layer fetch with the scenario's chunk size; this needs a node
  image with containerd 2.1 or later);
- `certs.d-<mode>/`: the hosts.toml each mode needs (plain-HTTP upstream; the pull-through cache as mirror),
  for reading: the runner writes the same files into every node (`hosts_commands`);
- `mirror-<mode>/kustomization.yaml`: the project's manifests (`deploy/kustomize/base`) with
  `--advertise=<mode>` and the upstream registry mirrored over plain HTTP;
- `workload-<image>-<phase>.yaml`: the DaemonSet whose pods make the workers pull the phase's image
  (`render_workload`; `benchmark/kindrun.py` says how it is rolled out).

Entering `KindCluster` (needs `kind`, `kubectl` and a running Docker daemon; where one is missing it raises
`ClusterError` naming it, after the configuration has been written, so it can be inspected or used by hand):
1. refuses when a kind cluster of its name exists; in mirror modes, builds `spegel:bench` from `deploy/Containerfile`;
2. `kind create cluster` with the config and its own kubeconfig (`DIR/kubeconfig`: the user's current
   kubectl context is not touched);
3. starts the upstream registry (`registry:2`, CNCF distribution) on the `kind` Docker network as
   `spegel-bench-upstream`, its port published on 127.0.0.1 (`upstream_url`, where the images are pushed);
4. in mirror modes, `kind load docker-image spegel:bench`.
The pull-through cache (`spegel-bench-cache`, distribution with `REGISTRY_PROXY_REMOTEURL`) is started per
`proxy` run (`start_cache`) and removed in `reset`, so every proxy run starts cold as on netns.

Everything created is recorded as it is created (the cluster once the name was found free; each container
through the `--cidfile` Docker writes as soon as the container exists) and leaving removes exactly that:
`docker rm -f <id>` of each container, `kind delete cluster`; also after an error or Ctrl-C (SIGTERM and
SIGHUP become KeyboardInterrupt while the cluster is up). Images (`spegel:bench`, `registry:2`) and the
`kind` Docker network stay. Every command has a timeout; a failing one raises `ClusterError` with its stderr.

Design choices, against the first plan: hosts.toml is written into each node with `docker exec` instead of a
host directory mounted into all nodes (one directory shared by all nodes would let each node's mirror init
container overwrite the others' mirror address, and the files the mirror writes as root could not be swapped
by a non-root benchmark). Upstream bytes are the upstream container's transmitted bytes from its own
`/proc/net/dev` read with `docker exec` (works with a remote or rootless Docker, whose container PIDs are not
in this machine's /proc). The upstream's access log is its `docker logs` (distribution logs requests to
stdout), so `upstream_log_bytes` is measured on kind too. Bandwidth shaping is not applied on kind: Docker's
bridge runs at host speed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmark.cluster.base import ClusterError, restore_signals, run, trap_signals
from benchmark.daemons import http_answers, parse_access_line
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
MIRROR_IMAGE = "spegel:bench"
MIRROR_NAMESPACE = "spegel"  # from deploy/kustomize/base
CERTS_D = "/etc/containerd/certs.d"
CONTENT_ROOT = "/var/lib/containerd/io.containerd.content.v1.content"
WORKLOAD_NAME = "spegel-bench-pull"
WORKLOAD_NAMESPACE = "default"
PULL_LABEL = "spegel-bench/pull"  # workers with this label run a workload pod

BUILD_TIMEOUT = 1800.0
CREATE_TIMEOUT = 600.0
LOAD_TIMEOUT = 600.0
WAIT_TIMEOUT = 300.0  # rollouts, deletions, a registry container's start (image pull included)
READY_TIMEOUT = 30.0  # a started registry answering /v2/

log = logging.getLogger("benchmark.kind")

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PULLED = re.compile(r'^Successfully pulled image "(?P<image>[^"]+)" in (?P<duration>[0-9.a-zµ]+)')
_PUBLISHED = re.compile(r"^127\.0\.0\.1:(\d+)$")


# --- configuration (pure) ---


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


def write_configuration(scenario: Scenario, directory: Path, registry_host: str = UPSTREAM_HOST) -> None:
    """Write every file the kind backend uses under `directory` (see the module docstring)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kind-config.yaml").write_text(render_kind_config(scenario))
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
            (directory / workload_file(shape, phase)).write_text(render_workload(reference))


# --- parsers (pure) ---


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


# --- the cluster ---


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
    """The kind backend (see the module docstring). `with KindCluster(scenario, directory) as cluster:` gives a
    cluster with the upstream registry up; `KindRunner` (benchmark/kindrun.py) runs the scenario on it."""

    def __init__(self, scenario: Scenario, directory: Path, repo_root: Path = REPO_ROOT) -> None:
        self.scenario = scenario
        self.directory = Path(directory).resolve()
        self.repo_root = Path(repo_root)
        self.workers: list[str] = []
        self.upstream_id: str | None = None
        self.cache_id: str | None = None
        self._upstream_port: int | None = None
        self._cluster_created = False
        self._cidfiles: list[Path] = []  # one per container started and not yet removed
        self._old_handlers: dict[int, object] = {}

    @property
    def registry_host(self) -> str:
        return UPSTREAM_HOST

    @property
    def upstream_url(self) -> str:
        if self._upstream_port is None:
            raise ClusterError("the cluster is not up")
        return f"http://127.0.0.1:{self._upstream_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def mirrors(self) -> bool:
        return any(mode in MIRROR_MODES for mode in self.scenario.modes)

    # --- lifecycle ---

    def __enter__(self) -> KindCluster:
        write_configuration(self.scenario, self.directory)
        missing = missing_tools()
        if missing:
            raise ClusterError(
                f"the kind backend needs {', '.join(missing)}, missing here; its configuration is in "
                f'{self.directory}. Use backend = "netns" on this machine.'
            )
        self._old_handlers = trap_signals()
        try:
            self._bring_up()
        except BaseException as exc:
            problems = self.close()
            if problems and isinstance(exc, ClusterError):
                raise ClusterError(f"{exc}; and tearing down failed: {'; '.join(problems)}") from None
            for problem in problems:
                log.warning("tearing down the kind cluster: %s", problem)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        problems = self.close()
        if problems and exc is None:
            raise ClusterError(f"tearing down the kind cluster failed: {'; '.join(problems)}")
        for problem in problems:  # an exception is on its way out: say what is left beside it
            log.warning("tearing down the kind cluster: %s", problem)

    def _bring_up(self) -> None:
        if CLUSTER_NAME in run(["kind", "get", "clusters"]).split():
            raise ClusterError(
                f"a kind cluster named {CLUSTER_NAME} exists already (left by a killed run?); it is not ours to "
                f"delete: kind delete cluster --name {CLUSTER_NAME}"
            )
        if self.mirrors:
            containerfile = self.repo_root / "deploy" / "Containerfile"
            build = ["docker", "build", "-f", str(containerfile), "-t", MIRROR_IMAGE, str(self.repo_root)]
            run(build, BUILD_TIMEOUT)
        self._cluster_created = True  # from here on, a cluster of this name is ours (also a half-made one)
        create = ["kind", "create", "cluster", "--config", str(self.directory / "kind-config.yaml")]
        run([*create, "--kubeconfig", str(self.kubeconfig), "--wait", "5m"], CREATE_TIMEOUT)
        self.workers = worker_nodes(run(["kind", "get", "nodes", "--name", CLUSTER_NAME]))
        if len(self.workers) != self.scenario.cluster.nodes:
            raise ClusterError(f"kind made workers {self.workers}, expected {self.scenario.cluster.nodes}")
        self.upstream_id, self._upstream_port = self._start_registry(UPSTREAM_NAME, {})
        if self.mirrors:
            run(["kind", "load", "docker-image", MIRROR_IMAGE, "--name", CLUSTER_NAME], LOAD_TIMEOUT)

    def close(self) -> list[str]:
        """Remove every container started and the cluster if this object created it; idempotent. Returns what
        could not be removed (never raises)."""
        problems = []
        for cidfile in reversed(list(self._cidfiles)):
            try:
                self._remove_container(cidfile)
            except ClusterError as exc:
                problems.append(str(exc))
        if self._cluster_created:
            delete = ["kind", "delete", "cluster", "--name", CLUSTER_NAME, "--kubeconfig", str(self.kubeconfig)]
            try:
                run(delete, CREATE_TIMEOUT)
                self._cluster_created = False
            except ClusterError as exc:
                problems.append(str(exc))
        self.upstream_id = self.cache_id = None
        self._upstream_port = None
        restore_signals(self._old_handlers)
        return problems

    def _start_registry(self, name: str, env: dict[str, str]) -> tuple[str, int]:
        """Start distribution as container `name` on the kind network, port published on 127.0.0.1; wait until
        it answers. Returns (container ID, host port)."""
        cidfile = self.directory / f"{name}.cid"
        cidfile.unlink(missing_ok=True)  # docker refuses an existing cidfile
        self._cidfiles.append(cidfile)  # teardown removes the container whose ID docker writes there, if any
        argv = ["docker", "run", "-d", "--cidfile", str(cidfile), "--name", name, "--network", DOCKER_NETWORK]
        argv += ["-p", f"127.0.0.1::{REGISTRY_PORT}"]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        try:
            run([*argv, REGISTRY_IMAGE], WAIT_TIMEOUT)
        except ClusterError as exc:
            raise ClusterError(f"{exc} (a container named {name} left by a killed run? docker rm -f {name})") from None
        container = self._container_id(cidfile)
        try:
            port = parse_published_port(run(["docker", "port", container, f"{REGISTRY_PORT}/tcp"]))
        except ValueError as exc:
            raise ClusterError(f"registry container {name}: {exc}") from None
        deadline = time.monotonic() + READY_TIMEOUT
        while not http_answers(f"http://127.0.0.1:{port}/v2/"):
            if time.monotonic() > deadline:
                logs = run(["docker", "logs", "--tail", "20", container])
                raise ClusterError(f"registry container {name} did not answer within {READY_TIMEOUT:.0f} s: {logs}")
            time.sleep(0.2)
        return container, port

    def _container_id(self, cidfile: Path) -> str:
        try:
            container = cidfile.read_text().strip()
        except OSError:
            container = ""
        if not container:
            raise ClusterError(f"docker run wrote no container ID to {cidfile}")
        return container

    def _remove_container(self, cidfile: Path) -> None:
        if cidfile.exists() and cidfile.read_text().strip():
            run(["docker", "rm", "-f", cidfile.read_text().strip()], WAIT_TIMEOUT)
        cidfile.unlink(missing_ok=True)
        self._cidfiles.remove(cidfile)

    # --- per run ---

    def kubectl(self, *args: str, timeout: float = WAIT_TIMEOUT) -> str:
        """stdout of `kubectl` on this cluster (its own kubeconfig)."""
        return run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], timeout)

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        """`kubectl ... -o json` parsed; a ClusterError when it is not JSON."""
        out = self.kubectl(*args, "-o", "json")
        try:
            return json.loads(out)
        except ValueError:
            raise ClusterError(f"kubectl {' '.join(args)} printed no JSON: {out[:200]!r}") from None

    def set_hosts(self, mode: str) -> None:
        """Make every worker's containerd use `mode`'s hosts.toml (from its next pull on)."""
        for node in self.workers:
            for argv, stdin in hosts_commands(node, mode):
                run(argv, stdin=stdin)

    def start_cache(self) -> None:
        """Start a fresh pull-through cache of the upstream (one per `proxy` run)."""
        env = {"REGISTRY_PROXY_REMOTEURL": f"http://{UPSTREAM_HOST}"}
        self.cache_id, _ = self._start_registry(CACHE_NAME, env)

    def deploy_mirror(self, mode: str) -> None:
        """Apply `mirror-<mode>` and wait until the mirror runs on every node."""
        self.kubectl("apply", "-k", str(self.directory / f"mirror-{mode}"))
        self.kubectl("-n", MIRROR_NAMESPACE, "rollout", "status", "ds/spegel", f"--timeout={WAIT_TIMEOUT:.0f}s")

    def reset(self, mode: str) -> None:
        """Leave the cluster as a run found it: no workload, no mirror, no cache, and none of the images pulled
        from the upstream on any worker (nor a partial download), so the next run starts cold. Pods are
        waited for (foreground deletion) so that the mirror's preStop cleanup has run."""
        wait = ["--ignore-not-found", "--cascade=foreground", "--wait", f"--timeout={WAIT_TIMEOUT:.0f}s"]
        self.kubectl("-n", WORKLOAD_NAMESPACE, "delete", "daemonset", WORKLOAD_NAME, *wait)
        self.kubectl("label", "nodes", *self.workers, f"{PULL_LABEL}-")
        if mode in MIRROR_MODES:
            self.kubectl("delete", "-k", str(self.directory / f"mirror-{mode}"), *wait)
        for cidfile in [c for c in self._cidfiles if c.name.startswith(CACHE_NAME)]:
            self._remove_container(cidfile)
            self.cache_id = None
        for node in self.workers:
            ids = bench_image_ids(run(["docker", "exec", node, "crictl", "images", "-o", "json"]))
            if ids:
                run(["docker", "exec", node, "crictl", "rmi", *ids], WAIT_TIMEOUT)
            run(["docker", "exec", node, "sh", "-c", f"rm -rf {CONTENT_ROOT}/ingest/*"])

    # --- measurements ---

    def upstream_bytes(self) -> int:
        """Bytes the upstream container has sent so far on its interfaces (framing included)."""
        if self.upstream_id is None:
            raise ClusterError("the cluster is not up")
        text = run(["docker", "exec", self.upstream_id, "cat", "/proc/net/dev"])
        try:
            return transmitted_bytes(text)
        except ValueError as exc:
            raise ClusterError(f"upstream container: {exc}") from None

    def upstream_log_bytes(self) -> int:
        """Body bytes the upstream's access log (its `docker logs`) says it sent so far."""
        if self.upstream_id is None:
            raise ClusterError("the cluster is not up")
        logs = run(["docker", "logs", self.upstream_id], WAIT_TIMEOUT)
        return sum(entry.bytes for line in logs.splitlines() if (entry := parse_access_line(line)) is not None)
