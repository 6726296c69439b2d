"""What the benchmark runner needs from a cluster, and the helpers every backend shares.

A cluster is a context manager: entering builds it (network, upstream registry), leaving tears everything
down, also after an error or Ctrl-C. `start_nodes(mode, run_dir)` gives a fresh set of nodes (empty content
stores) configured for `mode`; `stop_nodes()` stops them and returns what each process used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from benchmark.daemons import Containerd, Spegel


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
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0], utime/stime are 11, 12
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return ProcessUsage(node, process, cpu, peak)
