"""The physical bounds a distribution of one image to N nodes is measured against (pure).

An image of `size` bytes goes to `nodes` nodes; the upstream registry sends at most `upstream` bytes/s and
each node receives and sends at most `node` bytes/s. With perfect sharing (fluid model, Kumar & Ross 2006)
no node can finish before `max(S/U, S/B, N*S/(U + N*B))`; when every node downloads from upstream
(no sharing) the last one finishes no earlier than `N*S/U`.

Rates here are payload rates. A link shaped at R bit/s carries about `GOODPUT * R / 8` bytes/s of HTTP
payload over TCP (measured on this machine: 95.8 %), see `payload_rate`.
"""

from __future__ import annotations

GOODPUT = 0.958


def payload_rate(bits_per_second: float) -> float:
    """Bytes/s of TCP payload a link shaped at `bits_per_second` carries."""
    _positive(bits_per_second=bits_per_second)
    return GOODPUT * bits_per_second / 8


def payload_bytes(wire_bytes: float) -> float:
    """The TCP payload in `wire_bytes` counted on a link with its framing (a tc counter): the same `GOODPUT`
    share the rates of the bounds use, so that upstream bytes and bounds are both in payload (NaN stays NaN:
    a phase with no traffic record)."""
    return GOODPUT * wire_bytes


def lower_bound(size: float, nodes: int, upstream: float, node: float) -> float:
    """Seconds until the last of `nodes` nodes can hold `size` bytes: max(S/U, S/B, N*S/(U + N*B))."""
    _positive(upstream=upstream, node=node, nodes=nodes)
    _non_negative(size=size)
    return max(size / upstream, size / node, nodes * size / (upstream + nodes * node))


def no_sharing_bound(size: float, nodes: int, upstream: float) -> float:
    """Seconds until the last node holds the image when every node downloads it from upstream: N*S/U."""
    _positive(upstream=upstream, nodes=nodes)
    _non_negative(size=size)
    return nodes * size / upstream


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


def _non_negative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must not be negative, got {value!r}")
