"""Parsing the quantities scenarios are written in: sizes (`32MiB`, `10MB`), rates (`50Mbit`) and durations.

Pure functions. Each raises `ValueError` with the offending text when it cannot parse; numbers alone are
bytes, bits per second and seconds respectively.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z/]*)\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip
_RATE_UNITS = {"": 1, "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "m": 60.0, "min": 60.0}


def _split(text: str | int | float, what: str) -> tuple[float, str]:
    if isinstance(text, bool):
        raise ValueError(f"invalid {what} {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"invalid {what} {text!r}: negative")
        return float(text), ""
    match = _NUMBER.match(str(text))
    if match is None:
        raise ValueError(f"invalid {what} {str(text)[:100]!r}")
    return float(match[1]), match[2].lower()


def parse_size(text: str | int) -> int:
    """Bytes: `1234`, `10MB` (10^6), `32MiB` (2^20), ... ."""
    value, unit = _split(text, "size")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: unknown unit {unit!r} (B, kB, MB, GB, KiB, MiB, GiB)")
    return round(value * _SIZE_UNITS[unit])


def parse_rate(text: str | int | float) -> float:
    """Bits per second: `50Mbit`, `400mbit/s`, `1Gbit`; must be > 0."""
    value, unit = _split(text, "rate")
    unit = unit.removesuffix("/s").removesuffix("ps")
    if unit not in _RATE_UNITS:
        raise ValueError(f"invalid rate {text!r}: unknown unit {unit!r} (bit, kbit, mbit, gbit)")
    if value <= 0:
        raise ValueError(f"invalid rate {text!r}: must be positive")
    return value * _RATE_UNITS[unit]


def parse_duration(text: str | int | float) -> float:
    """Seconds: `1.5`, `20ms`, `2s`, `1min`."""
    value, unit = _split(text, "duration")
    if unit not in _DURATION_UNITS:
        raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r} (us, ms, s, min)")
    return value * _DURATION_UNITS[unit]


def format_size(size: float) -> str:
    """`134217728` -> `128 MiB` (binary units, at most one decimal)."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(size) >= factor:
            return f"{size / factor:.4g} {unit}"
    return f"{size:.0f} B"


def format_rate(bits_per_second: float) -> str:
    """`5e7` -> `50 Mbit/s`."""
    for unit, factor in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits_per_second >= factor:
            return f"{bits_per_second / factor:.4g} {unit}"
    return f"{bits_per_second:.0f} bit/s"
