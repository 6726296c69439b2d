"""What the benchmark runner needs from a cluster, and the helpers every backend shares.

A cluster is a context manager: entering builds it (network, upstream registry), leaving tears everything
down, also after an error or Ctrl-C. `start_nodes(mode, run_dir)` gives a fresh set of nodes (empty content
stores) configured for `mode`; `stop_nodes()` stops them and returns what each process used.

Shared by both backends: `run` (one command, bounded, failure as `ClusterError`) and `trap_signals` /
`restore_signals` (SIGTERM and SIGHUP become KeyboardInterrupt while a cluster is up, so teardown runs).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from benchmark.daemons import Containerd, Spegel, cpu_seconds, peak_rss

COMMAND_TIMEOUT = 30.0


class ClusterError(RuntimeError):
    """The cluster cannot be built or used here; the message says why and what to do."""


@dataclass
class Node:
    """A running node: its containerd and (in mirror modes) its `spegel registry`."""

    index: int
    name: str
    address: str
    containerd: Containerd
    mirror: Spegel | None = None


@dataclass(frozen=True)
class ProcessUsage:
    """CPU seconds (user + system) and peak resident memory of one process over its life."""

    node: str
    process: str
    cpu_seconds: float
    peak_rss_bytes: int


class Cluster(Protocol):
    registry_host: str  # HOST:PORT of the upstream registry, as images are named
    upstream_url: str  # the upstream registry's URL, reachable from the benchmark process

    def start_nodes(self, mode: str, run_dir: Path) -> list[Node]: ...

    def stop_nodes(self) -> list[ProcessUsage]: ...

    def upstream_bytes(self) -> int:
        """Bytes the upstream registry has sent so far on the wire (a counter: take differences)."""
        ...

    def upstream_log_bytes(self) -> int:
        """Body bytes the upstream registry has logged as sent so far (a counter: take differences)."""
        ...


def process_usage(pid: int, node: str, process: str) -> ProcessUsage | None:
    """CPU time and peak RSS (VmHWM) of a live process from /proc; None when it is gone."""
    try:
        return ProcessUsage(node, process, cpu_seconds(pid), peak_rss(pid))
    except OSError:
        return None


def run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, *, stdin: str | None = None, hint: str = "") -> str:
    """Run one command (with `stdin` as its input, if given) and return its stdout; raise `ClusterError` with
    its stderr when it fails, does not finish within `timeout` seconds, or is not installed (then `hint`, e.g.
    "install iproute2", ends the message)."""
    argv = list(argv)
    try:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ClusterError(f"{argv[0]} not found" + (f": {hint}" if hint else "")) from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def trap_signals() -> dict[int, object]:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt (so a cluster's teardown runs); returns the previous
    handlers for `restore_signals`. Outside the main thread it changes nothing."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old: dict[int, object] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
            old[sig] = signal.signal(sig, interrupt)
    return old


def restore_signals(old: dict[int, object]) -> None:
    """Put back the handlers `trap_signals` replaced (and forget them)."""
    for sig, handler in old.items():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(sig, handler)  # type: ignore[arg-type]
    old.clear()
