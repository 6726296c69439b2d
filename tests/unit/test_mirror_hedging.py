"""`first_success` (hedged attempts) on trio's mock clock: whatever happens — a winner, every attempt failing,
the caller cancelled at any moment — every response an attempt opened is closed exactly once and the load
counters are back to zero."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from spegel.mirror.peers import PeerError, first_success


@dataclass
class Ledger:
    """What the attempts opened and what was closed; `load` counts like `PeerClient.load` (+1 from the request
    until its response is closed)."""

    load: dict[str, int] = field(default_factory=dict)
    opened: list[FakeResponse] = field(default_factory=list)

    def audit(self) -> None:
        assert [r.name for r in self.opened if r.closes != 1] == [], "every response must be closed exactly once"
        assert {name: n for name, n in self.load.items() if n} == {}, "load counters must be back to zero"


@dataclass
class FakeResponse:
    name: str
    ledger: Ledger
    closes: int = 0

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()  # a real close awaits the connection pool: cancellable
        self.closes += 1
        self.ledger.load[self.name] -= 1


UNWIND = 0.0003  # a cancelled request takes this long to give its connection back


def attempt(
    ledger: Ledger, name: str, delay: float, fails: bool = False, gate: trio.Event | None = None
) -> Callable[[], Awaitable[FakeResponse]]:
    """An attempt shaped like `PeerClient.open_blob`: counted from the start, uncounted when it fails or is
    cancelled before its response exists. It answers after `delay`, or when `gate` is set."""

    async def run() -> FakeResponse:
        ledger.load[name] = ledger.load.get(name, 0) + 1
        try:
            await (gate.wait() if gate is not None else trio.sleep(delay))
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(UNWIND)
            ledger.load[name] -= 1
            raise
        if fails:
            ledger.load[name] -= 1
            raise PeerError(f"{name} failed")
        response = FakeResponse(name, ledger)
        ledger.opened.append(response)
        return response

    return run


async def discard(response: FakeResponse) -> None:
    await response.aclose()


# (attempts as (name, delay, fails), hedge delay): a slow first holder overtaken by a hedge, one that fails
# fast, several answering at the same instant, and all failing. Delays are off the sweep's grid below.
SCENARIOS = {
    "hedge_wins": ([("a", 0.0301, False), ("b", 0.0121, False), ("c", 0.0501, False)], 0.010),
    "first_fails": ([("a", 0.0051, True), ("b", 0.0201, False), ("c", 0.0201, False)], 0.010),
    "same_instant": ([("a", 0.0201, False), ("b", 0.0101, False), ("c", 0.0001, False)], 0.010),
    "all_fail": ([("a", 0.0051, True), ("b", 0.0151, True), ("c", 0.0201, True)], 0.010),
}


def make_attempts(ledger: Ledger, scenario: str) -> tuple[list[Callable[[], Awaitable[FakeResponse]]], float]:
    specs, hedge_delay = SCENARIOS[scenario]
    return [attempt(ledger, name, delay, fails) for name, delay, fails in specs], hedge_delay


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_uncancelled_paths_close_every_loser(scenario: str, autojump_clock: trio.testing.MockClock) -> None:
    ledger = Ledger()
    attempts, hedge_delay = make_attempts(ledger, scenario)
    try:
        winner = await first_success(attempts, hedge_delay, discard)
    except PeerError:
        assert scenario == "all_fail"
    else:
        assert scenario != "all_fail"
        assert winner.closes == 0 and winner in ledger.opened
        await winner.aclose()  # the caller owns the winner
    ledger.audit()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_caller_cancelled_at_any_moment_leaks_nothing(
    scenario: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The caller's deadline swept over the race in 0.1 ms steps: before any answer, while hedges run, while
    the losers unwind after a winner was chosen (the winner held at nursery exit), and while they are closed."""
    for tenths in range(0, 600):
        ledger = Ledger()
        attempts, hedge_delay = make_attempts(ledger, scenario)
        winner = None
        with trio.move_on_after(tenths / 10000), contextlib.suppress(PeerError):
            winner = await first_success(attempts, hedge_delay, discard)
        if winner is not None:
            await winner.aclose()
        ledger.audit()


async def test_a_cancelled_caller_closes_an_answer_already_in_the_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The answer arrives and the caller is cancelled in the same step, before `first_success` takes the answer
    from its channel: the answer must be closed, not left to hold the peer's load counter."""
    ledger = Ledger()
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        caller = trio.CancelScope()

        async def call() -> None:
            with caller:
                await first_success([attempt(ledger, "a", 0, gate=gate)], 1.0, discard)
            assert caller.cancelled_caught

        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()  # the attempt is scheduled to answer ...
        caller.cancel()  # ... and the caller cancelled before it runs
    assert [r.name for r in ledger.opened] == ["a"]
    ledger.audit()
