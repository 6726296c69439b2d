"""Pure decisions of the mirror: which tags may be shared, and when to hedge a slow peer. No I/O."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable

from spegel.routing.base import Holder, KeyState


class RegistryFilters:
    """Regular expressions on `registry/repository:tag`; a matching tag is neither served nor advertised."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self._patterns = [re.compile(p) for p in patterns]

    def excludes(self, tag_key: str) -> bool:
        return any(p.search(tag_key) for p in self._patterns)


class LatencyTracker:
    """Recent time-to-first-byte samples of peer requests; `hedge_delay()` is their p80, clamped.

    A second request is hedged to another holder when the first has not answered within that delay.
    """

    def __init__(self, initial: float = 0.02, minimum: float = 0.002, maximum: float = 0.5, window: int = 200) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._initial, self._minimum, self._maximum = initial, minimum, maximum

    def observe(self, seconds: float) -> None:
        self._samples.append(seconds)

    def hedge_delay(self) -> float:
        if len(self._samples) < 10:
            return self._initial
        ordered = sorted(self._samples)
        p80 = ordered[int(0.8 * (len(ordered) - 1))]
        return min(self._maximum, max(self._minimum, p80))


def order_holders(holders: Iterable[Holder], load: dict[str, int], rotation: int = 0) -> list[Holder]:
    """Complete holders before in-progress ones; within each, least loaded first, then the most bytes
    available; remaining ties take the router's order rotated by `rotation`, so that successive requests
    (each with the next rotation) spread over equal holders."""
    listed = list(holders)
    count = len(listed) or 1
    keyed = [
        ((h.state is not KeyState.COMPLETE, load.get(h.address, 0), -(h.available or 0), (i - rotation) % count), h)
        for i, h in enumerate(listed)
    ]
    keyed.sort(key=lambda item: item[0])
    return [holder for _, holder in keyed]
