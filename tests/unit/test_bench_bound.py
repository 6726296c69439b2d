"""The bounds and the unit parsers the scenarios and reports rely on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmark.bound import lower_bound, no_sharing_bound, payload_rate
from benchmark.units import format_rate, format_size, parse_duration, parse_rate, parse_size

MiB = 1 << 20


def test_the_issues_measured_scenario() -> None:
    """128 MiB to 8 nodes, U = 50 Mbit/s, B = 400 Mbit/s: the P2P bound is ~22.5 s, no sharing ~180 s."""
    size, upstream, node = 128 * MiB, payload_rate(50e6), payload_rate(400e6)
    assert lower_bound(size, 8, upstream, node) == pytest.approx(22.4, abs=0.2)
    assert no_sharing_bound(size, 8, upstream) == pytest.approx(179.3, abs=0.5)


def test_each_term_can_dominate() -> None:
    assert lower_bound(100, 2, upstream=1, node=1000) == 100  # S/U
    assert lower_bound(100, 2, upstream=1000, node=1) == 100  # S/B
    # With equal upload and download B per node, N*S/(U+N*B) < S/B: the aggregate term never dominates.
    assert lower_bound(100, 1000, upstream=10, node=0.5) == 200


@given(
    size=st.floats(0, 1e12),
    nodes=st.integers(1, 10_000),
    upstream=st.floats(1e-3, 1e12),
    node=st.floats(1e-3, 1e12),
)
def test_sharing_never_beats_the_bound_and_never_loses_to_no_sharing(
    size: float, nodes: int, upstream: float, node: float
) -> None:
    bound = lower_bound(size, nodes, upstream, node)
    assert bound >= size / upstream * (1 - 1e-12)
    assert bound >= size / node * (1 - 1e-12)
    if node >= upstream:  # nodes at least as fast as upstream: sharing can only help
        assert bound <= no_sharing_bound(size, nodes, upstream) * (1 + 1e-12)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_bounds_refuse_non_positive_rates(bad: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        lower_bound(1, 1, bad, 1)
    with pytest.raises(ValueError, match="must be positive"):
        no_sharing_bound(1, 1, bad)
    with pytest.raises(ValueError, match="must be positive"):
        lower_bound(1, 0, 1, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1234", 1234), (99, 99), ("10MB", 10**7), ("32MiB", 32 * MiB), ("1.5 GiB", 3 * (1 << 29)), ("0", 0)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("50Mbit", 5e7), ("400mbit/s", 4e8), ("1Gbit", 1e9), ("2.5kbit", 2500), (1000, 1000)]
)
def test_parse_rate(text: str, expected: float) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("20ms", 0.02), ("2s", 2), ("1.5", 1.5), ("1min", 60), (0, 0)])
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        (parse_size, "12 parsecs"),
        (parse_size, "-3MB"),
        (parse_size, "MB"),
        (parse_size, True),
        (parse_rate, "0Mbit"),
        (parse_rate, "50MB/s"),
        (parse_duration, "soon"),
        (parse_duration, -1),
    ],
)
def test_bad_quantities_raise_value_error(parser, text) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="invalid"):
        parser(text)


def test_formatting() -> None:
    assert format_size(128 * MiB) == "128 MiB"
    assert format_size(512) == "512 B"
    assert format_rate(5e7) == "50 Mbit/s"
