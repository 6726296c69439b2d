"""Shared fixtures: free addresses, and real daemons started per test and stopped by PID afterwards.

- `free_addr`: a function returning a free loopback `HOST:PORT`.
- `upstream_registry`: a started CNCF distribution registry (`benchmark.daemons.Registry`).
- `containerd_factory`: starts containerd 2.1 instances (`benchmark.daemons.Containerd`) with the given options.
- `spegel_registry_factory`: starts `spegel registry --store STORE` processes (`benchmark.daemons.Spegel`).

Every daemon writes its log under the test's `tmp_path`; a failing start raises `DaemonError` with its tail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmark.daemons import Containerd, Registry, Spegel, containerd_version, free_address


def pytest_report_header() -> str:
    """The containerd the tests run (recorded with every test result)."""
    return f"containerd: {containerd_version()}"


@pytest.fixture
def free_addr() -> Callable[[], str]:
    return free_address


@pytest.fixture
def upstream_registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "upstream") as registry:
        yield registry


@pytest.fixture
def containerd_factory(tmp_path: Path) -> Iterator[Callable[..., Containerd]]:
    """`factory(name="containerd", **options)` starts a `Containerd` under `tmp_path/name` and returns it."""
    with contextlib.ExitStack() as stack:

        def start(name: str = "containerd", **options: Any) -> Containerd:
            return stack.enter_context(Containerd(tmp_path / name, **options))

        yield start


@pytest.fixture
def spegel_registry_factory(tmp_path: Path) -> Iterator[Callable[..., Spegel]]:
    """`factory(store, name="spegel", extra=())` starts `spegel registry --store STORE` on free addresses."""
    with contextlib.ExitStack() as stack:

        def start(store: str, name: str = "spegel", extra: tuple[str, ...] = ()) -> Spegel:
            daemon = Spegel.registry(store, tmp_path / f"{name}.log", extra=extra)
            return stack.enter_context(daemon)

        yield start
