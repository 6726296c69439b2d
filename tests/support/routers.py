"""A `Router` for tests of what advertises: it records every call and keeps the resulting key states."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from spegel.routing.base import Holder, KeyState


@dataclass(frozen=True)
class Call:
    """One router call: wall-clock time (time.time()), `advertise` or `withdraw`, keys, state, claim time."""

    at: float
    kind: str
    keys: tuple[str, ...]
    state: KeyState | None
    since: float | None = None


class RecordingRouter:
    """A `Router` that records every call with its wall-clock time and keeps the resulting key states.

    `wait_for(predicate)` waits (bounded by the caller's cancel scope) until the state satisfies `predicate`.
    """

    def __init__(self) -> None:
        self.name = "recording"
        self.calls: list[Call] = []
        self.state: dict[str, KeyState] = {}
        self._changed = trio.Event()

    async def advertise(
        self,
        keys: Iterable[str],
        state: KeyState = KeyState.COMPLETE,
        available: int | None = None,
        since: float | None = None,
    ) -> None:
        self._record(Call(time.time(), "advertise", tuple(keys), state, since))
        self.state.update(dict.fromkeys(self.calls[-1].keys, state))

    async def withdraw(self, keys: Iterable[str]) -> None:
        self._record(Call(time.time(), "withdraw", tuple(keys), None))
        for key in self.calls[-1].keys:
            self.state.pop(key, None)

    async def lookup(self, key: str, count: int, timeout: float) -> list[Holder]:
        return []

    def ready(self) -> bool:
        return True

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[dict[str, KeyState]], bool]) -> None:
        while not predicate(self.state):
            await self._changed.wait()

    def first(self, kind: str, key: str, state: KeyState | None = None) -> Call | None:
        """The first call of `kind` that names `key` (with `state`, when given)."""
        for call in self.calls:
            if call.kind == kind and key in call.keys and (state is None or call.state is state):
                return call
        return None
