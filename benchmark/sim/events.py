"""The simulator's event loop (pure): actions scheduled at simulated times, run in time order.

Ties run in the order they were scheduled. A cancelled event is skipped when its time comes (cancelling is
O(1); the heap keeps it until then).
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
from collections.abc import Callable

# Objects allocated between two young-generation garbage collections while events run (Python's default is 700):
# at 1,000 nodes the collector took ~20 % of the CPU time of a storm, and found ~300 cycles.
GC_THRESHOLD = 200_000


class Event:
    """A scheduled action; `cancel()` before its time and it never runs."""

    __slots__ = ("action", "cancelled", "time")

    def __init__(self, time: float, action: Callable[[], None]) -> None:
        self.time, self.action, self.cancelled = time, action, False

    def cancel(self) -> None:
        self.cancelled = True


class Simulation:
    """Simulated time (`now`, seconds from 0) and the events still to run."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events_run = 0
        self._stopped = False
        self._queue: list[tuple[float, int, Event]] = []
        self._order = itertools.count()

    def at(self, time: float, action: Callable[[], None]) -> Event:
        """Run `action` at `time` (not before `now`)."""
        if not time >= self.now:
            raise ValueError(f"cannot schedule at {time!r}, before now ({self.now})")
        event = Event(time, action)
        heapq.heappush(self._queue, (time, next(self._order), event))
        return event

    def after(self, delay: float, action: Callable[[], None]) -> Event:
        return self.at(self.now + delay, action)

    def stop(self) -> None:
        """Make `run` return after the event running now (the events left stay scheduled)."""
        self._stopped = True

    def run(self, until: float = math.inf) -> None:
        """Run events in time order until none is left, the next is later than `until` (then `now` is
        `until`), or `stop()`."""
        queue = self._queue
        self._stopped = False
        thresholds = gc.get_threshold()
        gc.set_threshold(GC_THRESHOLD, *thresholds[1:])  # a run makes millions of objects, hardly any cycles
        try:
            while queue and queue[0][0] <= until and not self._stopped:
                time, _, event = heapq.heappop(queue)
                if event.cancelled:
                    continue
                self.now = time
                self.events_run += 1
                event.action()
        finally:
            gc.set_threshold(*thresholds)
        if not self._stopped and math.isfinite(until):
            self.now = max(self.now, until)
