"""Installs are reproducible: constraints.txt pins every package this test environment holds (nox installs every
session under it), and names each once."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def pins() -> dict[str, str]:
    lines = [line for line in CONSTRAINTS.read_text().splitlines() if line and not line.startswith("#")]
    pairs = [line.split("==") for line in lines]
    assert all(len(pair) == 2 for pair in pairs), "one `name==version` per line"
    names = [_name(name) for name, _ in pairs]
    assert len(names) == len(set(names)), "each package once"
    return {_name(name): version for name, version in pairs}


def test_every_installed_package_is_pinned_at_its_version() -> None:
    pinned = pins()
    installed = {_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed.pop("spegel", None)  # this repository, installed editable
    wrong = {name: (version, pinned.get(name)) for name, version in installed.items() if pinned.get(name) != version}
    assert not wrong, f"installed (version, pinned) not matching constraints.txt: {wrong}"


def test_unused_dependencies_are_gone() -> None:
    assert "pyarrow" not in pins()
