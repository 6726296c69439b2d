"""How fast the containerd watcher advertises, per mode, and what watching costs (run: `python -m benchmark.watcher_bench`).

Placeholder: the measurement follows. `RecordingRouter` is shared with the integration tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from spegel.routing.base import Holder, KeyState


@dataclass(frozen=True)
class Call:
    """One router call: wall-clock time (time.time()), `advertise` or `withdraw`, keys, state."""

    at: float
    kind: str
    keys: tuple[str, ...]
    state: KeyState | None


class RecordingRouter:
    """A `Router` that records every call with its wall-clock time and keeps the resulting key states.

    `wait_for(predicate)` waits (bounded by the caller's cancel scope) until the state satisfies `predicate`.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.state: dict[str, KeyState] = {}
        self._changed = trio.Event()

    async def advertise(self, keys: Iterable[str], state: KeyState = KeyState.COMPLETE) -> None:
        keys = tuple(keys)
        self.calls.append(Call(time.time(), "advertise", keys, state))
        self.state.update(dict.fromkeys(keys, state))
        self._notify()

    async def withdraw(self, keys: Iterable[str]) -> None:
        keys = tuple(keys)
        self.calls.append(Call(time.time(), "withdraw", keys, None))
        for key in keys:
            self.state.pop(key, None)
        self._notify()

    async def lookup(self, key: str, count: int, timeout: float) -> list[Holder]:
        return []

    def ready(self) -> bool:
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate) -> None:
        while not predicate(self.state):
            await self._changed.wait()

    def first(self, kind: str, key: str, state: KeyState | None = None) -> Call | None:
        """The first call of `kind` that names `key` (with `state`, when given)."""
        for call in self.calls:
            if call.kind == kind and key in call.keys and (state is None or call.state is state):
                return call
        return None
