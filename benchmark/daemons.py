"""Real daemons for the tests and the benchmark: containerd 2.1, the CNCF distribution registry, and `spegel`.

Each daemon is a context manager: entering starts one process and waits (bounded in time) until it answers;
leaving stops exactly that process, by its PID: SIGTERM, then SIGKILL after a grace period. Processes run in
their own session, so a terminal's Ctrl-C reaches only the Python process, whose `KeyboardInterrupt` unwinds
the `with` blocks and stops every daemon in order. A daemon that dies or does not answer in time raises
`DaemonError` with the tail of its log, after it has been stopped.

To start several daemons concurrently, call `start()` on each, then `wait_ready()` on each, and `stop()` in a
`finally` (or enter them in a `contextlib.ExitStack`: `start()` is idempotent).

A daemon may run inside a network namespace (`netns=`): its command is prefixed with `ip netns exec NS`, which
execs the daemon, so the PID is still the daemon's. Readiness probes run from the caller's namespace, so the
address a daemon listens on must be reachable from it (the benchmark's namespaces are routed from the host).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from spegel.store.containerd.client import ContainerdClient

# scripts/bootstrap.sh unpacks Debian's containerd (>= 2.1) there ($SPEGEL_CACHE/containerd -> containerd-<version>).
CONTAINERD_BIN = str(Path(os.environ.get("SPEGEL_CACHE", "/var/cache/spegel-py")) / "containerd/usr/bin/containerd")
REGISTRY_BIN = "/usr/bin/docker-registry"
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.05


def containerd_version(binary: str | None = None) -> str:
    """`containerd --version` of `binary` (default: the one `Containerd` runs), or why it cannot say."""
    binary = binary or os.environ.get("SPEGEL_CONTAINERD_BIN") or CONTAINERD_BIN
    try:
        result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return result.stdout.strip() or f"unavailable (exit {result.returncode})"


class DaemonError(RuntimeError):
    """A daemon could not be started, died, or did not answer in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now and that no one else is handed a moment later.

    The kernel gives outgoing connections and port-0 binds ports from its ephemeral range, so a port picked
    there can be taken by any dial before the daemon binds it. The pick is therefore random from the ports
    just below that range, skipping the ones this process handed out already, and checked by a bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _ephemeral_low()
    if low - 1024 < _PICK_SPAN // 4:  # almost every port is ephemeral here: take the kernel's pick
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return sock.getsockname()[1]
    for _ in range(200):
        port = random.randrange(max(1024, low - _PICK_SPAN), low)
        if port in _handed_out:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise DaemonError(f"no free TCP port on {host} below {low}")


_PICK_SPAN = 12000  # how many ports below the ephemeral range free_port picks from
_handed_out: set[int] = set()


def _ephemeral_low(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """The first port of the kernel's ephemeral range (32768, Linux's default, when it cannot be read)."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of live process `pid` so far, from /proc (OSError once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": utime is 11
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    """Peak RSS in bytes (VmHWM) of live process `pid`, from /proc; 0 when not listed (OSError once it is gone)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def free_address(host: str = "127.0.0.1") -> str:
    """`HOST:PORT` with a free port (IPv6 hosts bracketed)."""
    port = free_port(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_answers(url: str, timeout: float = 1.0) -> bool:
    """True when a GET of `url` returns 200."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class Daemon:
    """One long-running process with a log file; subclasses say how to build its command and probe it."""

    name = "daemon"

    def __init__(self, log_path: Path, netns: str | None = None) -> None:
        self.log_path = Path(log_path)
        self.netns = netns
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The daemon's argv (without the `ip netns exec` prefix)."""
        raise NotImplementedError

    def ready(self) -> bool:
        """True once the daemon answers; called repeatedly until it does."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Write whatever the daemon needs before it starts (configuration, directories)."""

    def cleanup(self) -> None:
        """Remove what `prepare` made that must not outlive the process (called after it has stopped)."""

    @property
    def pid(self) -> int:
        if self.process is None:
            raise DaemonError(f"{self.name} is not started")
        return self.process.pid

    def start(self) -> None:
        """Launch the process (no-op when already started). Does not wait for it to answer."""
        if self.process is not None:
            return
        self.prepare()
        argv = self.command()
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            except OSError as exc:
                self.cleanup()
                raise DaemonError(f"cannot start {self.name} ({argv[0]}): {exc}") from None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until `ready()` holds; on death or timeout stop the daemon and raise `DaemonError`."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None:
                raise DaemonError(f"{self.name} is not started")
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise DaemonError(f"{self.name} exited with status {code}:\n{self.log_tail()}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonError(f"{self.name} did not answer within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """Stop the process by PID (SIGTERM, SIGKILL after `grace` s) and return its exit status. Idempotent."""
        process, code = self.process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=grace)
                except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
                    # too slow, or a second Ctrl-C while waiting: never leave the process behind
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    process.wait(timeout=grace)
                    if isinstance(exc, KeyboardInterrupt):
                        self.cleanup()
                        raise
            code = process.returncode
        self.cleanup()
        return code

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Daemon:
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Containerd(Daemon):
    """A containerd 2.1 instance with its own root, state and sockets, configured for image pulls.

    Layout under `base_dir`: `config.toml`, `containerd.log`, `root/`. State and the sockets live in a short
    temporary directory (unix socket paths are limited to 108 bytes), removed when the daemon stops.
    Configuration: version 3, NRI disabled, `snapshotter` for CRI and the transfer service, registry hosts
    from `hosts_dir` (CRI `config_path` and the transfer service's), multipart layer fetch with `chunk_size`
    byte chunks (0 turns it off) and `max_concurrent_downloads`.
    The binary is `binary`, else `$SPEGEL_CONTAINERD_BIN`, else the containerd of the bootstrap cache;
    `ctr` is taken from the same directory.
    """

    name = "containerd"

    def __init__(
        self,
        base_dir: Path,
        hosts_dir: Path | None = None,
        *,
        chunk_size: int = 0,
        max_concurrent_downloads: int = 3,
        snapshotter: str = "native",
        netns: str | None = None,
        binary: str | None = None,
    ) -> None:
        base_dir = Path(base_dir)
        super().__init__(base_dir / "containerd.log", netns)
        self.base_dir = base_dir
        self.hosts_dir = Path(hosts_dir) if hosts_dir is not None else base_dir / "certs.d"
        self.chunk_size = chunk_size
        self.max_concurrent_downloads = max_concurrent_downloads
        self.snapshotter = snapshotter
        self.binary = binary or os.environ.get("SPEGEL_CONTAINERD_BIN") or CONTAINERD_BIN
        self.root = base_dir / "root"
        self.config_path = base_dir / "config.toml"
        self._state: Path | None = None

    @property
    def state(self) -> Path:
        if self._state is None:
            raise DaemonError("containerd is not started")
        return self._state

    @property
    def socket(self) -> Path:
        return self.state / "containerd.sock"

    @property
    def content_root(self) -> Path:
        return self.root / "io.containerd.content.v1.content"

    @property
    def ctr_binary(self) -> str:
        return str(Path(self.binary).with_name("ctr"))

    def ctr_command(self, *args: str, namespace: str = "k8s.io") -> list[str]:
        """argv of a `ctr` call against this instance."""
        return [self.ctr_binary, "--address", str(self.socket), "--namespace", namespace, *args]

    async def pull(self, reference: str, timeout: float = 120) -> str:
        """Pull `reference` as the kubelet does (CRI PullImage); returns the image id."""
        async with ContainerdClient(str(self.socket)) as client:
            return await client.pull_image(reference, timeout=timeout)

    def ctr(self, *args: str, namespace: str = "k8s.io", timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `ctr` against this instance; raises `DaemonError` with its output when it fails."""
        argv = self.ctr_command(*args, namespace=namespace)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"ctr {' '.join(args)} did not finish within {timeout:.0f} s") from None
        if result.returncode != 0:
            raise DaemonError(f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def render_config(self) -> str:
        """The containerd config.toml (version 3) for this instance."""
        q = json.dumps  # TOML basic strings are JSON strings for the paths we write
        return f"""version = 3
root = {q(str(self.root))}
state = {q(str(self.state))}
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = {q(str(self.socket))}

[ttrpc]
  address = {q(str(self.socket) + ".ttrpc")}

[plugins."io.containerd.cri.v1.images"]
  snapshotter = {q(self.snapshotter)}
  max_concurrent_downloads = {self.max_concurrent_downloads}
  concurrent_layer_fetch_buffer = {self.chunk_size}

[plugins."io.containerd.cri.v1.images".registry]
  config_path = {q(str(self.hosts_dir))}

[plugins."io.containerd.transfer.v1.local"]
  max_concurrent_downloads = {self.max_concurrent_downloads}
  concurrent_layer_fetch_buffer = {self.chunk_size}
  config_path = {q(str(self.hosts_dir))}

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux"
  snapshotter = {q(self.snapshotter)}
"""

    def prepare(self) -> None:
        if not os.access(self.binary, os.X_OK):
            raise DaemonError(f"no containerd binary at {self.binary} (run scripts/bootstrap.sh)")
        self._state = Path(tempfile.mkdtemp(prefix="spegel-ctrd-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render_config())

    def command(self) -> list[str]:
        return [self.binary, "--config", str(self.config_path)]

    def ready(self) -> bool:
        if not self.socket.exists():
            return False
        argv = [self.ctr_binary, "--address", str(self.socket), "--timeout", "2s", "version"]
        try:
            return subprocess.run(argv, capture_output=True, timeout=5, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def cleanup(self) -> None:
        if self._state is not None and (self.process is None or self.process.poll() is not None):
            shutil.rmtree(self._state, ignore_errors=True)


class Registry(Daemon):
    """The CNCF distribution registry (`docker-registry serve CONFIG`), storage under `base_dir/storage`.

    `proxy_remote_url` makes it a pull-through cache of that registry. Its log (`base_dir/registry.log`) holds
    the access log in combined format, read with `read_access_log`.
    """

    name = "registry"

    def __init__(
        self,
        base_dir: Path,
        address: str | None = None,
        *,
        proxy_remote_url: str | None = None,
        netns: str | None = None,
        binary: str = REGISTRY_BIN,
    ) -> None:
        base_dir = Path(base_dir)
        super().__init__(base_dir / "registry.log", netns)
        self.base_dir = base_dir
        self.address = address or free_address()
        self.proxy_remote_url = proxy_remote_url
        self.binary = binary
        self.storage = base_dir / "storage"
        self.config_path = base_dir / "config.yml"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def render_config(self) -> str:
        """The registry's configuration (JSON, which is YAML)."""
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.address},
        }
        if self.proxy_remote_url is not None:
            config["proxy"] = {"remoteurl": self.proxy_remote_url}
        return json.dumps(config, indent=2)

    def prepare(self) -> None:
        if not os.access(self.binary, os.X_OK):
            raise DaemonError(f"no registry binary at {self.binary} (Debian package docker-registry)")
        self.storage.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render_config())

    def command(self) -> list[str]:
        return [self.binary, "serve", str(self.config_path)]

    def ready(self) -> bool:
        return http_answers(f"{self.url}/v2/")

    def access_log(self) -> list[AccessEntry]:
        return read_access_log(self.log_path)


@dataclass(frozen=True)
class AccessEntry:
    """One request of a combined-format access log."""

    method: str
    path: str
    status: int
    bytes: int


_COMBINED = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)')


def parse_access_line(line: str) -> AccessEntry | None:
    """The request of one combined-format log line, or None for any other line."""
    match = _COMBINED.match(line)
    if match is None:
        return None
    method, path, status, size = match.groups()
    return AccessEntry(method, path, int(status), 0 if size == "-" else int(size))


def read_access_log(path: Path) -> list[AccessEntry]:
    """Every request logged so far in a combined-format access log (other lines are skipped)."""
    with open(path, errors="replace") as log:
        return [entry for line in log if (entry := parse_access_line(line)) is not None]


def spegel_command() -> list[str]:
    """How a user runs `spegel`: the installed console script beside this interpreter, else `python -m spegel`."""
    script = Path(sys.executable).with_name("spegel")
    return [str(script)] if script.exists() else [sys.executable, "-m", "spegel"]


def configuration_args(hosts_dir: Path, registry_url: str, mirror_url: str) -> list[str]:
    """`spegel configuration` arguments (the same flags in ours and in Spegel's Go binary): containerd's
    hosts.toml for `registry_url` pointing at `mirror_url`."""
    return [
        "configuration",
        "--containerd-registry-config-path",
        str(hosts_dir),
        "--mirrored-registries",
        registry_url,
        "--mirror-targets",
        mirror_url,
    ]


def configure_mirror(hosts_dir: Path, registry_url: str, mirror_url: str) -> None:
    """Point containerd's hosts.toml for `registry_url` at `mirror_url`, as a user does: `spegel configuration`."""
    argv = [*spegel_command(), *configuration_args(hosts_dir, registry_url, mirror_url)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise DaemonError(f"spegel configuration failed: {result.stderr.strip()}")


class Spegel(Daemon):
    """A `spegel` CLI process (`spegel ARGS...`, exactly the command line a user runs) with its log.

    `ready_url` is probed until it answers 200 (for `spegel registry`: `http://REGISTRY_ADDR/readyz`); without
    it the daemon is ready as soon as it runs. `program` runs another Spegel (the Go one: `benchmark/spegelgo.py`)
    instead of ours.
    """

    name = "spegel"
    registry_addr = ""  # set by `registry()`
    metrics_addr = ""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        ready_url: str | None = None,
        netns: str | None = None,
        program: Path | None = None,
    ) -> None:
        super().__init__(log_path, netns)
        self.args = list(args)
        self.ready_url = ready_url
        self.program = program
        if program is not None:
            self.name = program.name

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample of this `spegel registry`'s /metrics (0 when absent); httpx.HTTPError when it does not answer."""
        text = httpx.get(f"http://{self.metrics_addr}/metrics", timeout=5).text
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if _same_sample(key, want):
                total += float(value)
        return total

    @classmethod
    def registry(
        cls,
        store: str,
        log_path: Path,
        *,
        registry_addr: str | None = None,
        metrics_addr: str | None = None,
        extra: Sequence[str] = (),
        router: Sequence[str] | None = None,
        netns: str | None = None,
    ) -> Spegel:
        """`spegel registry --store STORE` on the given (default: free loopback) addresses. `router` holds the
        router flags; None runs without a router (`--router none`: local content only)."""
        registry_addr = registry_addr or free_address()
        metrics_addr = metrics_addr or free_address()
        args = ["registry", "--store", store, "--registry-addr", registry_addr, "--metrics-addr", metrics_addr]
        args += ["--router", "none"] if router is None else list(router)
        daemon = cls([*args, *extra], log_path, ready_url=f"http://{registry_addr}/readyz", netns=netns)
        daemon.registry_addr, daemon.metrics_addr = registry_addr, metrics_addr
        return daemon

    @property
    def url(self) -> str:
        return f"http://{self.registry_addr}"

    def command(self) -> list[str]:
        return [*([str(self.program)] if self.program else spegel_command()), *self.args]

    def ready(self) -> bool:
        return self.ready_url is None or http_answers(self.ready_url)

    def access_log(self) -> list[dict[str, Any]]:
        """The access-log records (logger `spegel.access`: method, path, query, range, status, bytes, seconds)."""
        return [r for r in self.log_records() if r.get("logger") == "spegel.access"]

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (non-JSON lines are skipped)."""
        records = []
        with open(self.log_path, errors="replace") as log:
            for line in log:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        records.append(record)
        return records


@dataclass
class LoopbackNode:
    """One node on loopback: a containerd and its `spegel registry` (containerd store, libp2p router)."""

    name: str
    containerd: Containerd
    mirror: Spegel
    router_addr: str

    async def pull(self, reference: str, timeout: float = 120) -> str:
        return await self.containerd.pull(reference, timeout)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample of the mirror's /metrics (0 when absent)."""
        return self.mirror.metric(name, labels)


def _same_sample(key: str, want: str) -> bool:
    if "{" not in want:
        return key == want
    name, _, labels = key.partition("{")
    want_name, _, want_labels = want.partition("{")
    return name == want_name and set(labels.rstrip("}").split(",")) == set(want_labels.rstrip("}").split(","))


def start_loopback_node(
    stack: contextlib.ExitStack,
    base: Path,
    registry_url: str,
    bootstrap: LoopbackNode | None,
    *,
    chunk_size: int = 1 << 20,
    mirror_flags: Sequence[str] = (),
) -> LoopbackNode:
    """Start a node under `base` whose containerd mirrors `registry_url` through its own `spegel registry`
    (hosts.toml by `spegel configuration`), bootstrapping from `bootstrap` (None: the first node). Both daemons
    are stopped when `stack` closes."""
    containerd = stack.enter_context(Containerd(base / "containerd", chunk_size=chunk_size))
    registry_addr, router_addr = free_address(), free_address()
    configure_mirror(containerd.hosts_dir, registry_url, f"http://{registry_addr}")
    host, port = (bootstrap.router_addr if bootstrap else router_addr).split(":")
    router = [
        "--router",
        "libp2p",
        "--router-addr",
        router_addr,
        "--data-dir",
        str(base / "data"),
        "--static-bootstrap-peers",
        f"/ip4/{host}/tcp/{port}",
    ]
    flags = [
        "--containerd-sock",
        str(containerd.socket),
        "--containerd-content-path",
        str(containerd.content_root),
        "--containerd-config-path",
        str(containerd.config_path),
        "--containerd-registry-config-path",
        str(containerd.hosts_dir),
        *mirror_flags,
    ]
    mirror = Spegel.registry("containerd", base / "spegel.log", registry_addr=registry_addr, router=router, extra=flags)
    return LoopbackNode(base.name, containerd, stack.enter_context(mirror), router_addr)
