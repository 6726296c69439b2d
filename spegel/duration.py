"""Go's duration grammar (`time.ParseDuration`), the one every duration flag and setting of spegel takes."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds of a Go duration: `20ms`, `1.5s`, `1m30s`, `2h`, `0` (a leading `+` allowed).

    Raises `ValueError` for anything else, including negative durations and numbers without a unit.
    """
    body = text.removeprefix("+")
    if body == "0":
        return 0.0
    position, seconds = 0, 0.0
    while position < len(body) and (match := _PART.match(body, position)):
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not body or position != len(body):
        raise ValueError(f"invalid duration {text!r}: want a Go duration such as 20ms, 1s or 1m30s")
    return seconds
