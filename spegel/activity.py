"""What this node is doing now, for the debug page: blob transfers running and just finished, recent misses.

Pure bookkeeping, no I/O; every collection is bounded. `Transfer.peer` is read when shown, so a transfer that
resumes from another holder shows the holder it streams from now.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

RECENT = 50  # finished transfers and misses kept


@dataclass
class Transfer:
    digest: str
    source: str  # local, peer, inflight (see spegel.metrics.SOURCES)
    peer_of: Callable[[], str | None]  # the holder streamed from now (None: this node)
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    ended: float | None = None

    @property
    def peer(self) -> str | None:
        return self.peer_of()

    def seconds(self, now: float | None = None) -> float:
        end = self.ended if self.ended is not None else (time.monotonic() if now is None else now)
        return max(end - self.started, 1e-9)

    def rate(self, now: float | None = None) -> float:
        """Bytes per second so far."""
        return self.sent / self.seconds(now)


@dataclass(frozen=True)
class Miss:
    path: str
    registry: str
    mirrored: bool  # asked by a peer (this node's own store only) rather than by containerd
    at: float  # wall-clock time


class Activity:
    def __init__(self) -> None:
        self._ids = itertools.count()
        self.running: dict[int, Transfer] = {}
        self.finished: deque[Transfer] = deque(maxlen=RECENT)
        self.misses: deque[Miss] = deque(maxlen=RECENT)

    def start(self, digest: str, source: str, peer_of: Callable[[], str | None]) -> int:
        """Record a transfer beginning; returns its handle for `sent` and `end`."""
        handle = next(self._ids)
        self.running[handle] = Transfer(digest, source, peer_of)
        return handle

    def sent(self, handle: int, count: int) -> None:
        transfer = self.running.get(handle)
        if transfer is not None:
            transfer.sent += count

    def end(self, handle: int) -> None:
        transfer = self.running.pop(handle, None)
        if transfer is not None:
            transfer.ended = time.monotonic()
            self.finished.append(transfer)

    def last_finished(self, digest: str) -> Transfer | None:
        """The transfer of `digest` that ended last, if still remembered."""
        return next((t for t in reversed(self.finished) if t.digest == digest), None)

    def missed(self, path: str, registry: str, mirrored: bool) -> None:
        self.misses.append(Miss(path, registry, mirrored, time.time()))
