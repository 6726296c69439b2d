"""The `kind` backend: a kind cluster (Kubernetes in Docker), configured the way the netns nodes are.

Configuration, written under `DIR` (the report's `kind/`) before anything runs (rendered by the pure `kindplan.py`):
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
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmark.cluster.base import ClusterError, restore_signals, run, trap_signals
from benchmark.cluster.kindplan import (
    CACHE_NAME,
    CLUSTER_NAME,
    CONTENT_ROOT,
    DOCKER_NETWORK,
    MIRROR_IMAGE,
    MIRROR_NAMESPACE,
    PULL_LABEL,
    REGISTRY_IMAGE,
    REGISTRY_PORT,
    REPO_ROOT,
    UPSTREAM_HOST,
    UPSTREAM_NAME,
    WORKLOAD_NAME,
    WORKLOAD_NAMESPACE,
    bench_image_ids,
    ensure_router_psk,
    hosts_commands,
    parse_published_port,
    render_hosts,
    render_kind_config,
    render_kustomization,
    render_workload,
    transmitted_bytes,
    worker_nodes,
    workload_file,
)
from benchmark.daemons import http_answers, parse_access_line
from benchmark.scenario import MIRROR_MODES, Scenario, repository_name
from spegel import hostsconfig

BUILD_TIMEOUT = 1800.0
CREATE_TIMEOUT = 600.0
LOAD_TIMEOUT = 600.0
WAIT_TIMEOUT = 300.0  # rollouts, deletions, a registry container's start (image pull included)
READY_TIMEOUT = 30.0  # a started registry answering /v2/

log = logging.getLogger("benchmark.kind")


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
            ensure_router_psk()
            (kustomize_dir / "kustomization.yaml").write_text(render_kustomization(mode, kustomize_dir))
    for phase in scenario.phases:
        for shape in scenario.images:
            reference = f"{registry_host}/{repository_name(shape)}:{phase}"
            (directory / workload_file(shape, phase)).write_text(render_workload(reference))


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
