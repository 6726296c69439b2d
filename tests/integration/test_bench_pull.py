"""`measure.pull` against a real containerd: a pull that fails is a record with `ok=False`, never an exception
(one failed pull must not end a benchmark run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark.cluster.base import Node
from benchmark.daemons import Containerd, Registry
from benchmark.measure import pull


async def test_a_pull_containerd_answers_not_found_is_recorded_as_failed(
    tmp_path: Path, upstream_registry: Registry, containerd_factory: Callable[..., Containerd]
) -> None:
    containerd = containerd_factory()
    node = Node(0, "n0", "127.0.0.1", containerd)
    record: dict[str, Any] = await pull(node, f"{upstream_registry.address}/bench/none:missing", timeout=60)
    assert record["ok"] is False and "not found" in record["error"]
    assert record["node"] == "n0" and record["end"] >= record["start"]
