"""docs/operations.md documents every flag of the real CLI, and every metric the mirror exports."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from spegel.cli import build_parser
from spegel.metrics import Metrics

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def _section(command: str) -> str:
    start = DOC.index(f"### `spegel {command}`")
    end = DOC.find("\n#", start + 1)
    return DOC[start : end if end >= 0 else None]


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_flag_is_in_its_commands_table(command: str) -> None:
    section = _section(command)
    flags = [
        option
        for action in _commands()[command]._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--log-level")
    ]
    missing = [option for option in flags if f"`{option}`" not in section]
    assert not missing, f"docs/operations.md, `spegel {command}` lacks {missing}"


def test_every_metric_is_described() -> None:
    metrics = Metrics()
    metrics.export_advertised({})
    standard = ("process_", "python_")  # the client library's collectors, named in one sentence
    names = {metric.name for metric in metrics.registry.collect() if not metric.name.startswith(standard)}
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", DOC, re.MULTILINE))
    exported = {name + "_total" if f"{name}_total" in documented else name for name in names}
    assert exported <= documented, exported - documented
