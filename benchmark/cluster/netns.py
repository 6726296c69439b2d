"""The `netns` cluster: N nodes in network namespaces on one bridge, shaped with tc, each a real containerd.

Entering the cluster (as root) builds the network of `netplan` and starts the upstream registry (CNCF
distribution) in its own namespace. `start_nodes(mode, run_dir)` then starts, for one run, a fresh
containerd per node (multipart fetch on, hosts.toml written by `spegel configuration`), plus per mode:
- `upstream`: nothing else; containerd pulls from the upstream registry;
- `proxy`: a distribution pull-through cache in the `cache` namespace is every node's mirror;
- `image` / `layer` / `inflight`: `spegel registry --store containerd --advertise MODE` on every node, its
  own containerd's mirror, peers bootstrapped statically (log level: `$SPEGEL_BENCH_LOG_LEVEL`, default info);
- `spegel-go`: the same with the real Spegel (Go) binary given as `spegel_go_binary`: its own `configuration`
  writes hosts.toml, its `registry` runs on every node (`benchmark.spegelgo`).

Everything created is recorded as it is created (namespaces, the bridge, daemons by PID) and removed on leave
(success, error, Ctrl-C: a SIGTERM or SIGHUP is turned into KeyboardInterrupt while the cluster is up).
Only names with this run's prefix are ever deleted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

from benchmark import spegelgo
from benchmark.cluster import base, netplan
from benchmark.cluster.base import (
    COMMAND_TIMEOUT,
    ClusterError,
    Node,
    ProcessUsage,
    process_usage,
    restore_signals,
    trap_signals,
)
from benchmark.cluster.kindplan import ensure_router_psk
from benchmark.daemons import (
    READY_TIMEOUT,
    Containerd,
    Daemon,
    DaemonError,
    Registry,
    Spegel,
    configuration_args,
    spegel_command,
)
from benchmark.scenario import MIRROR_MODES, PEER_MODES, ClusterSpec
from spegel import hostsconfig

log = logging.getLogger("benchmark.netns")

REGISTRY_PORT = 5000
MIRROR_PORT = 5000
METRICS_PORT = 9090
ROUTER_PORT = 5001
STATE_FILE = "cluster.json"
MESH_FILE = "mesh.json"  # in the run directory: how long the router mesh took to form
MESH_TIMEOUT = 60.0  # seconds to wait for every router to connect to every other one


def ready_timeout(nodes: int) -> float:
    """Seconds one daemon may take to answer when `nodes` nodes start at once on a machine of few cores."""
    return READY_TIMEOUT + 3.0 * nodes


def run(argv: list[str], timeout: float = COMMAND_TIMEOUT) -> str:
    """Run one command (`base.run`); raise `ClusterError` with its stderr when it fails."""
    return base.run(argv, timeout, hint="install iproute2")


def check_environment(latency: float) -> None:
    """Root, `ip`, `tc` and the kernel's HTB (and netem when latency is asked for), or a `ClusterError`."""
    if os.geteuid() != 0:
        raise ClusterError(
            "the netns cluster needs root (it creates network namespaces and tc qdiscs): run as root, "
            "or use the kind backend"
        )
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise ClusterError(f"{tool} not found: install iproute2")
    if latency > 0 and not _kernel_has("sch_netem"):
        raise ClusterError(
            f"latency {latency * 1000:g} ms needs the netem qdisc, which this kernel lacks: set cluster.latency = 0"
        )


def _kernel_has(module: str) -> bool:
    if Path(f"/sys/module/{module}").exists():
        return True
    try:
        return subprocess.run(["modprobe", "-q", module], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False


def _used_subnets() -> set[ipaddress.IPv4Network]:
    """The /24s of 198.18.0.0/15 that some address or route on this machine already uses."""
    used = set()
    for line in run(["ip", "-4", "-o", "addr", "show"]).splitlines() + run(["ip", "-4", "route", "show"]).splitlines():
        for word in line.split():
            with contextlib.suppress(ValueError):
                net = ipaddress.ip_network(word.split("/")[0] + "/24", strict=False)
                if net.subnet_of(netplan.NETWORK):  # type: ignore[arg-type]
                    used.add(net)
    return used  # type: ignore[return-value]


class NetnsCluster:
    """The netns backend of `Cluster`. Use as `with NetnsCluster(spec, workdir) as cluster:`."""

    def __init__(
        self, spec: ClusterSpec, workdir: Path, prefix: str | None = None, spegel_go_binary: Path | None = None
    ) -> None:
        self.spec = spec
        self.spegel_go_binary = spegel_go_binary
        self.workdir = Path(workdir)
        self.prefix = prefix or "sb" + secrets.token_hex(2)
        self.plan: netplan.NetPlan | None = None
        self.upstream: Registry | None = None
        self.nodes: list[Node] = []
        self._node_daemons: list[tuple[str, str, Daemon]] = []
        self._network_made = False
        self._old_handlers: dict[int, object] = {}

    # --- addresses ---

    @property
    def net(self) -> netplan.NetPlan:
        if self.plan is None:
            raise ClusterError("the cluster is not up")
        return self.plan

    @property
    def registry_host(self) -> str:
        return f"{self.net.upstream.address}:{REGISTRY_PORT}"

    @property
    def upstream_url(self) -> str:
        return f"http://{self.registry_host}"

    @property
    def cache_url(self) -> str:
        return f"http://{self.net.cache.address}:{REGISTRY_PORT}"

    # --- lifecycle ---

    def __enter__(self) -> NetnsCluster:
        check_environment(self.spec.latency)
        self._old_handlers = trap_signals()
        try:
            self._build_network()
            self.upstream = Registry(self.workdir / "upstream", self.registry_host, netns=self.net.upstream.netns)
            self.upstream.start()
            self._save_state()
            self.upstream.wait_ready()
        except DaemonError as exc:
            self.close()
            raise ClusterError(f"the upstream registry did not start: {exc}") from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process, delete the upstream's storage and every namespace and link of this run (logs
        stay). Idempotent; never raises."""
        with contextlib.suppress(Exception):
            self.stop_nodes()
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                self.upstream.stop()
            shutil.rmtree(self.upstream.storage, ignore_errors=True)  # the images are cached elsewhere
            self.upstream = None
        if self._network_made and self.plan is not None:
            for argv in netplan.teardown_commands(self.plan):
                subprocess.run(argv, capture_output=True, check=False, timeout=COMMAND_TIMEOUT)
            self._network_made = False
        restore_signals(self._old_handlers)

    def _build_network(self) -> None:
        used = _used_subnets()
        free = [s for s in netplan.subnets() if s not in used]
        if not free:
            raise ClusterError("no free /24 left in 198.18.0.0/15")
        subnet = free[secrets.randbelow(len(free))]
        spec = self.spec
        self.plan = netplan.make_plan(
            self.prefix, subnet, spec.nodes, spec.upstream_bandwidth, spec.node_bandwidth, spec.latency
        )
        self._save_state()
        self._network_made = True  # from the first command on, teardown has something to remove
        for argv in netplan.setup_commands(self.plan):
            run(argv)

    def _save_state(self) -> None:
        """Record in `workdir/cluster.json` what exists now (names, and PIDs with their command lines as
        /proc shows them), so that `cleanup` can remove it if this process is killed before it can."""
        if self.plan is None:
            return
        daemons = [self.upstream, *(d for _, _, d in self._node_daemons)]
        processes = {}
        for daemon in daemons:
            if daemon is not None and daemon.process is not None and daemon.process.poll() is None:
                processes[str(daemon.pid)] = "\0".join(daemon.command()) + "\0"
        state = {
            "prefix": self.prefix,
            "subnet": str(self.plan.subnet),
            "namespaces": [e.netns for e in self.plan.endpoints],
            "bridge": self.plan.bridge,
            "processes": processes,
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=1))

    # --- nodes ---

    def start_nodes(self, mode: str, run_dir: Path) -> list[Node]:
        """Fresh nodes for one run in `mode` (stopping the previous ones); logs and content under `run_dir`."""
        run_dir = Path(run_dir)
        if run_dir.exists():
            raise ClusterError(f"{run_dir} exists: every run needs fresh nodes")
        self.stop_nodes()
        started: list[Daemon] = []
        try:
            if mode == "proxy":
                cache = Registry(
                    run_dir / "cache",
                    f"{self.net.cache.address}:{REGISTRY_PORT}",
                    proxy_remote_url=self.upstream_url,
                    netns=self.net.cache.netns,
                )
                self._node_daemons.append(("cache", "registry", cache))
                started.append(cache)
            for i, ep in enumerate(self.net.nodes):
                base = run_dir / ep.name
                hosts_dir = base / "certs.d"
                self._write_hosts(mode, hosts_dir, ep.address)
                containerd = Containerd(
                    base,
                    hosts_dir,
                    chunk_size=self.spec.chunk_size,
                    max_concurrent_downloads=self.spec.max_concurrent_downloads,
                    netns=ep.netns,
                )
                node = Node(i, ep.name, ep.address, containerd)
                self._node_daemons.append((ep.name, "containerd", containerd))
                started.append(containerd)
                self.nodes.append(node)
            for daemon in started:
                daemon.start()
            self._save_state()
            for daemon in started:
                daemon.wait_ready(ready_timeout(len(self.nodes)))
            mirrors: list[Spegel] = []
            if mode in MIRROR_MODES:
                mirrors = [self._mirror(node, mode, run_dir) for node in self.nodes]
            elif mode == spegelgo.MODE:
                mirrors = self._spegel_go_mirrors(run_dir)
            if mirrors:
                for mirror in mirrors:
                    mirror.start()
                self._save_state()
                for mirror in mirrors:
                    mirror.wait_ready(ready_timeout(len(self.nodes)))
            if mode in MIRROR_MODES:
                self._wait_for_overlay(mirrors, run_dir / MESH_FILE)
            elif mode in PEER_MODES:  # Spegel (Go) listens on the same router port
                self._wait_for_mesh(run_dir / MESH_FILE)
        except DaemonError as exc:
            self.stop_nodes()
            raise ClusterError(f"starting the nodes for mode {mode} failed: {exc}") from None
        except BaseException:
            self.stop_nodes()
            raise
        return self.nodes

    def _wait_for_overlay(self, mirrors: list[Spegel], record: Path) -> None:
        """Wait until every mirror knows every other node and holds the overlay links it picks (its
        `spegel_router_members` and `spegel_router_settled` gauges); a lagging node is recorded with both."""
        want = len(mirrors) - 1
        by_node = {node.name: mirror for node, mirror in zip(self.nodes, mirrors, strict=True)}

        def lag(node: Node) -> list[float] | None:
            try:
                members = by_node[node.name].metric("spegel_router_members")
                settled = by_node[node.name].metric("spegel_router_settled")
            except httpx.HTTPError:
                members, settled = 0.0, 0.0
            return [members, settled] if members < want or settled < 1 else None

        self._wait_for_routers(record, lag, "router overlay not settled (node: members, settled)")

    def _wait_for_mesh(self, record: Path) -> None:
        """Wait until every mirror has a router connection to every other node (Spegel's full mesh); a lagging node
        is recorded with how many peers it lacks."""
        addresses = {ep.address for ep in self.net.nodes}
        endpoints = {ep.name: ep for ep in self.net.nodes}

        def lag(node: Node) -> int | None:
            ep = endpoints[node.name]
            out = run(["ip", "netns", "exec", ep.netns, "ss", "-Htn", "state", "established"])
            lacking = addresses - {ep.address} - netplan.connected_peers(out, ROUTER_PORT)
            return len(lacking) or None

        self._wait_for_routers(record, lag, "router mesh incomplete (node: peers missing)")

    def _wait_for_routers(self, record: Path, lag: Callable[[Node], object | None], what: str) -> None:
        """Wait (at most `MESH_TIMEOUT` s) until `lag` is None for every node, as in a cluster whose nodes have been
        up for a while: a rollout that starts while the routers still connect measures them, not the mirror. Writes
        to `record` (JSON) how long it took and, when it gave up, what `lag` said of each lagging node."""
        started = time.monotonic()
        while True:
            lagging = {node.name: found for node in self.nodes if (found := lag(node)) is not None}
            waited = time.monotonic() - started
            if not lagging or waited > MESH_TIMEOUT:
                record.write_text(json.dumps({"seconds": round(waited, 2), "lagging": lagging}))
                if lagging:
                    log.warning("%s after %.0f s: %s", what, waited, lagging)
                return
            time.sleep(0.2)

    def _mirror(self, node: Node, mode: str, run_dir: Path) -> Spegel:
        ep = self.net.nodes[node.index]
        peers = ",".join(f"/ip4/{o.address}/tcp/{ROUTER_PORT}" for o in self.net.nodes if o.name != ep.name)
        router = ["--router", "libp2p", "--router-addr", f"{ep.address}:{ROUTER_PORT}"]
        router += ["--data-dir", str(run_dir / ep.name / "spegel-data")]
        router += ["--router-psk-file", str(ensure_router_psk(run_dir / "router.psk"))]  # as deployed: a cluster key
        router += ["--bootstrap-kind", "static", "--static-bootstrap-peers", peers]
        extra = ["--advertise", mode, "--log-level", os.environ.get("SPEGEL_BENCH_LOG_LEVEL", "info")]
        extra += ["--containerd-sock", str(node.containerd.socket)]
        extra += ["--containerd-content-path", str(node.containerd.content_root)]
        mirror = Spegel.registry(
            "containerd",
            run_dir / ep.name / "spegel.log",
            registry_addr=f"{ep.address}:{MIRROR_PORT}",
            metrics_addr=f"{ep.address}:{METRICS_PORT}",
            extra=extra,
            router=router,
            netns=ep.netns,
        )
        node.mirror = mirror
        self._node_daemons.append((ep.name, "spegel", mirror))
        return mirror

    def _spegel_go_mirrors(self, run_dir: Path) -> list[Spegel]:
        """The real Spegel's `registry` on every node, each bootstrapped statically from all the others."""
        binary = self._spegel_go()
        addresses = [
            spegelgo.NodeAddresses(
                f"{ep.address}:{MIRROR_PORT}",
                f"{ep.address}:{METRICS_PORT}",
                f"{ep.address}:{ROUTER_PORT}",
                spegelgo.write_identity(run_dir / ep.name / "spegel-data"),
            )
            for ep in self.net.nodes
        ]
        mirrors = []
        for node, own in zip(self.nodes, addresses, strict=True):
            ep = self.net.nodes[node.index]
            args = spegelgo.registry_args(
                own,
                [other for other in addresses if other is not own],
                containerd_sock=node.containerd.socket,
                content_path=node.containerd.content_root,
                data_dir=run_dir / ep.name / "spegel-data",
                registry_url=self.upstream_url,
            )
            mirror = Spegel(
                args,
                run_dir / ep.name / "spegel-go.log",
                ready_url=f"http://{own.registry_addr}/readyz",
                netns=ep.netns,
                program=binary,
            )
            mirror.registry_addr, mirror.metrics_addr = own.registry_addr, own.metrics_addr
            node.mirror = mirror
            self._node_daemons.append((ep.name, spegelgo.MODE, mirror))
            mirrors.append(mirror)
        return mirrors

    def _spegel_go(self) -> Path:
        if self.spegel_go_binary is None:
            raise ClusterError(f"mode {spegelgo.MODE} needs the Spegel binary (--spegel-go-binary)")
        return self.spegel_go_binary

    def _write_hosts(self, mode: str, hosts_dir: Path, node_address: str) -> None:
        """containerd's hosts.toml for `mode`: as a user would, with `spegel configuration` (Spegel's own in
        `spegel-go`; upstream only: just the registry's plain-HTTP server)."""
        if mode == "upstream":
            directory = hosts_dir / self.registry_host
            directory.mkdir(parents=True, exist_ok=True)
            (directory / hostsconfig.HOSTS_FILE).write_text(hostsconfig.render_toml({"server": self.upstream_url}))
            return
        target = self.cache_url if mode == "proxy" else f"http://{node_address}:{MIRROR_PORT}"
        program = [str(self._spegel_go())] if mode == spegelgo.MODE else spegel_command()
        run([*program, *configuration_args(hosts_dir, self.upstream_url, target)])

    def stop_nodes(self) -> list[ProcessUsage]:
        """Stop this run's processes (mirrors first, then containerd, then the cache), delete their content
        (logs stay), and return what each process used."""
        usage = []
        for node, process, daemon in reversed(self._node_daemons):
            if daemon.process is not None and daemon.process.poll() is None:
                measured = process_usage(daemon.pid, node, process)
                if measured is not None:
                    usage.append(measured)
            daemon.stop()
            if isinstance(daemon, Containerd | Registry):  # their content is not data: free the disk
                shutil.rmtree(daemon.root if isinstance(daemon, Containerd) else daemon.storage, ignore_errors=True)
        self._node_daemons.clear()
        self.nodes = []
        self._save_state()
        return usage

    # --- measurements ---

    def upstream_log_bytes(self) -> int:
        """Body bytes the upstream registry's access log says it sent so far (overcounts: containerd closes
        open-ended chunk requests before the logged size is sent)."""
        if self.upstream is None:
            raise ClusterError("the cluster is not up")
        return sum(entry.bytes for entry in self.upstream.access_log())

    def upstream_bytes(self) -> int:
        """Bytes the upstream has sent through its shaper so far (tc class counter, with framing)."""
        ep = self.net.upstream
        out = run(["ip", "netns", "exec", ep.netns, "tc", "-s", "class", "show", "dev", netplan.INNER_IF])
        try:
            return netplan.class_bytes(out)
        except ValueError:
            raise ClusterError(f"no HTB class on the upstream's {netplan.INNER_IF}: {out[:300]}") from None


def cleanup(workdir: Path) -> list[str]:
    """Remove what a killed run left behind, from its `workdir/cluster.json`: processes that still run the
    recorded command line (SIGKILL), then the run's namespaces and bridge (only names with its prefix).
    Returns what was removed."""
    try:
        state = json.loads((Path(workdir) / STATE_FILE).read_text())
        prefix, names = state["prefix"], [*state["namespaces"], state["bridge"]]
        processes = dict(state["processes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"{workdir} holds no readable {STATE_FILE} ({exc}): nothing known to clean up") from None
    removed = []
    for pid, cmdline in processes.items():
        try:
            running = Path(f"/proc/{int(pid)}/cmdline").read_text(errors="replace")
            # the daemon's own command line ends the running one: after `ip netns exec NS` (not yet replaced by
            # the daemon) or an interpreter (a script's shebang); it names this run's own paths
            if not running.endswith(cmdline):
                continue  # gone, and the PID now belongs to someone else
            os.kill(int(pid), signal.SIGKILL)
            removed.append(f"process {pid}")
        except (OSError, ValueError):
            continue
    for name in names:
        if not str(name).startswith(f"{prefix}-"):
            continue
        kind = "link" if name == state["bridge"] else "netns"
        argv = ["ip", "link", "delete", name] if kind == "link" else ["ip", "netns", "delete", name]
        if subprocess.run(argv, capture_output=True, check=False, timeout=COMMAND_TIMEOUT).returncode == 0:
            removed.append(f"{kind} {name}")
    return removed
