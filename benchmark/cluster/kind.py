"""The `kind` cluster backend (placeholder until its configuration generator lands): stops with a clear message."""

from __future__ import annotations

from pathlib import Path

from benchmark.cluster.base import ClusterError
from benchmark.scenario import Scenario


class KindCluster:
    def __init__(self, scenario: Scenario, directory: Path) -> None:
        self.scenario, self.directory = scenario, directory

    def __enter__(self) -> KindCluster:
        raise ClusterError('the kind backend is not available yet: use backend = "netns"')

    def __exit__(self, *exc: object) -> None:
        pass
