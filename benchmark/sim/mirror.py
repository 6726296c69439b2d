"""One node's mirror in the simulator: the decisions are `spegel.mirror.decide`'s, the I/O is simulated.

`MirrorNode.open(digest, offset, answer)` is containerd asking its own mirror for a blob from `offset` on. As
in `MirrorBackend.blob`: look the blob up (`Router.lookup`, ordered by `decide.order_holders` with this
node's open requests per peer), `decide.after_lookup`; on CLAIM announce the claim and have the key's owner place
it (`routing.ClaimOwners`), then `decide.after_claim` over the complete holders listed and the claimants ahead
(`routing.after_owner`); when the owner's answer does not come within `claim_timeout` (or with `ordered` off, the
design before the owner), wait the settle, look again and `decide.after_claim` over the claims seen; on `Follow`
ask the holders staggered by the hedge delay, the next when one fails; on `Miss` answer None (404) after claiming
when told to. A complete holder answers after a round trip; an in-progress holder once its download has bytes on
disk, and fails after `inflight_wait` without.
`transfer(...)` then moves the bytes from the holder that answered.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from benchmark.sim.network import PeerTransfer
from benchmark.sim.routing import after_owner
from benchmark.sim.world import World
from spegel.mirror import decide
from spegel.mirror.backend import CLAIMANTS_SEEN, MirrorOptions
from spegel.routing.base import Holder

DEFAULTS = MirrorOptions()
# Every node pulls one image per phase, all of one repository (as a rolling update pulls a new tag): claims are
# ranked by when a node's requests for it began (`decide.PullStarts`), as in `MirrorBackend`.
REPOSITORY = "sim"


@dataclass(frozen=True)
class MirrorConfig:
    claims: bool  # --advertise inflight: downloads are claimed and shared while in progress
    resolve_retries: int = DEFAULTS.resolve_retries
    ordered: bool = True  # claims are placed by the key's owner (Router.order_claim); False: the settle alone
    led: bool = True  # a node led in the pull defers its first claims and ranks claims by their time (PullStarts)
    claim_timeout: float = DEFAULTS.claim_timeout
    settle: float = DEFAULTS.miss_settle
    inflight_wait: float = DEFAULTS.inflight_wait
    claimants_seen: int = CLAIMANTS_SEEN  # after the settle (an owner's answer is read with every holder listed)
    fanout: int = DEFAULTS.follow_fanout
    chain: int = DEFAULTS.follow_chain


@dataclass(frozen=True)
class PeerAnswer:
    """A holder answered (complete, or a download in progress with bytes on disk): the mirror copies from it."""

    holder: int


class MirrorNode:
    def __init__(self, world: World, node: int, name: str, config: MirrorConfig, address_of: dict[str, int]) -> None:
        self.world, self.node, self.name, self.config = world, node, name, config
        self.address_of = address_of
        self.load: dict[str, int] = {}
        self.latency = decide.LatencyTracker()
        self.claimed: dict[str, float] = {}
        self.pulls = decide.PullStarts()
        self.misses = decide.MissOrder()
        self._held: dict[int, Callable[[PeerAnswer | None], None]] = {}  # 404s waiting for their turn, by ticket
        self._rotation = itertools.count()

    # --- a request ---

    def open(self, digest: str, answer: Callable[[PeerAnswer | None], None]) -> None:
        self.pulls.started(REPOSITORY, self.world.sim.now)
        ticket = self.misses.ask(REPOSITORY) if self.config.claims else None
        self.world.sim.after(self.world.timing.lookup, lambda: self._looked(digest, answer, ticket))

    def _looked(
        self,
        digest: str,
        answer: Callable[[PeerAnswer | None], None],
        ticket: int | None,
        deadline: float | None = None,
    ) -> None:
        holders = self._lookup(digest, self.config.resolve_retries)
        hedge = self.latency.hedge_delay()
        decision = decide.after_lookup(holders, head=False, claims=self.config.claims, hedge_delay=hedge)
        if isinstance(decision, decide.Claim):
            now = self.world.sim.now
            deadline = now + self.config.claim_timeout if deadline is None else deadline
            led = self.config.led and self.pulls.led(REPOSITORY)
            if decide.defer_claim(holders, led) and now < deadline:
                wait = min(decide.DEFER_POLL, deadline - now)
                self.world.sim.after(wait, lambda: self._looked(digest, answer, ticket, deadline))
                return
            rank = self._rank()
            if self.config.ordered:  # placed first, then announced (as `MirrorBackend._claim`)
                timeout = self.config.claim_timeout
                self.world.owners.order(
                    self.node, digest, rank, timeout, lambda ahead: self._placed(digest, rank, ahead, answer, ticket)
                )
            else:
                since = self._claim(digest, rank)
                self.world.sim.after(self.config.settle, lambda: self._settled(digest, since, answer, ticket))
            return
        self._decided(decision, digest, answer, ticket)

    def _placed(
        self,
        digest: str,
        since: float,
        ahead: list[str] | None,
        answer: Callable[[PeerAnswer | None], None],
        ticket: int | None,
    ) -> None:
        """The owner placed this node's claim after `ahead` (None: it did not answer in time, so the settle); the
        claim is announced now."""
        since = self._claim(digest, since)
        if ahead is None:
            self.world.sim.after(self.config.settle, lambda: self._settled(digest, since, answer, ticket))
            return
        config, router = self.config, self.world.router
        next(self._rotation)  # as the mirror's lookup of the complete holders would have
        complete = router.complete_last(self.world.sim.now, self.node, digest, config.resolve_retries)
        options = {"retries": config.resolve_retries, "fanout": config.fanout, "chain": config.chain}
        decision = after_owner(complete, ahead, lambda place: router.placed(ahead[place], place), **options)
        self._decided(decision, digest, answer, ticket)

    def _settled(
        self, digest: str, since: float, answer: Callable[[PeerAnswer | None], None], ticket: int | None
    ) -> None:
        """After the settle: `decide.after_claim` over the claims this node sees, its own at `since`."""
        mine, config, router = (since, self.name), self.config, self.world.router
        options = {"retries": config.resolve_retries, "fanout": config.fanout, "chain": config.chain}
        if config.claimants_seen >= len(router.names):  # every claimant listed: the same decision, faster
            next(self._rotation)  # as `_lookup` would have
            decision = router.after_claim(self.world.sim.now, self.node, digest, mine, **options)
        else:
            decision = decide.after_claim(self._lookup(digest, config.claimants_seen), mine, **options)
        self._decided(decision, digest, answer, ticket)

    def _decided(
        self,
        decision: decide.Follow | decide.Miss,
        digest: str,
        answer: Callable[[PeerAnswer | None], None],
        ticket: int | None,
    ) -> None:
        """As `MirrorBackend` once a request is decided: note whether this node is the blob's first claimant."""
        self.pulls.decided(REPOSITORY, first=isinstance(decision, decide.Miss))
        self._act(decision, digest, answer, ticket)

    def _rank(self) -> float:
        now = self.world.sim.now
        return self.pulls.rank(REPOSITORY, now) if self.config.led else self.pulls.started(REPOSITORY, now)

    def _lookup(self, digest: str, count: int) -> list[Holder]:
        found = self.world.router.lookup(self.world.sim.now, self.node, digest, count)
        return decide.order_holders(found, self.load, next(self._rotation))

    def _claim(self, digest: str, since: float) -> float:
        """Announce this node's download of `digest` in progress (once), ranked at `since`; the claim's rank."""
        if digest not in self.claimed:
            self.claimed[digest] = since
            self.world.router.announce(self.world.sim.now, self.node, digest, complete=False, since=since)
        return self.claimed[digest]

    def _act(
        self,
        decision: decide.Follow | decide.Miss,
        digest: str,
        answer: Callable[[PeerAnswer | None], None],
        ticket: int | None = None,
    ) -> None:
        """Carry out `decision`. A 404 of a request with a `ticket` waits for its turn (`decide.MissOrder`);
        without one (after every holder failed), it is answered at once."""
        if isinstance(decision, decide.Follow):
            if ticket is not None:
                self._answer_misses(self.misses.decided(REPOSITORY, ticket, miss=False))
            _Attempts(self, decision, digest, answer).next()
            return
        self.world.counters.requests_miss += 1
        if decision.claim and self.config.claims:
            self._claim(digest, self._rank())
        if ticket is None:
            self.world.sim.after(self.world.timing.rtt, lambda: answer(None))
            return
        self._held[ticket] = answer
        self._answer_misses(self.misses.decided(REPOSITORY, ticket, miss=True))

    def _answer_misses(self, tickets: list[int]) -> None:
        for ticket in tickets:
            answer = self._held.pop(ticket)
            self.world.sim.after(self.world.timing.rtt, lambda answer=answer: answer(None))

    # --- the bytes ---

    def transfer(
        self, answer: PeerAnswer, digest: str, start: int, end: int, on_done: Callable[[], None]
    ) -> PeerTransfer:
        """Bytes `start..end-1` of `digest` from the holder that answered, into this node."""
        world, holder = self.world, answer.holder
        address = world.router.addresses[holder]
        source = world.downloads[holder, digest]
        self.load[address] = self.load.get(address, 0) + 1
        in_progress = not source.complete

        def done() -> None:
            self.load[address] -= 1
            world.counters.bytes_peer += end - start
            world.counters.requests_peer += 1
            if in_progress:
                world.counters.bytes_inflight += end - start
            on_done()

        return PeerTransfer(
            world.sim,
            world.uplinks[holder],
            world.downlinks[self.node],
            source,
            start,
            end - start,
            done,
            world.timing.poll,
        )


class _Attempts:
    """`first_success` over simulated holders: the next starts when the previous fails or the hedge delay
    passes; the first answer wins."""

    def __init__(
        self, mirror: MirrorNode, follow: decide.Follow, digest: str, answer: Callable[[PeerAnswer | None], None]
    ) -> None:
        self.mirror, self.follow, self.digest, self.answer = mirror, follow, digest, answer
        self.started = 0
        self.running = 0
        self.finished = False
        self.opened_at = mirror.world.sim.now

    def next(self) -> None:
        follow, sim = self.follow, self.mirror.world.sim
        if self.finished:
            return
        if self.started >= len(follow.holders):
            if self.running == 0:
                self._fail()
            return
        holder = follow.holders[self.started]
        self.started += 1
        self.running += 1
        self._ask(holder)
        if self.started < len(follow.holders) and math.isfinite(follow.hedge_delay):
            count = self.started
            sim.after(follow.hedge_delay, lambda: self.next() if self.started == count else None)

    def _ask(self, holder: Holder) -> None:
        world = self.mirror.world
        node = self.mirror.address_of[holder.address]
        source = world.downloads.get((node, self.digest))
        rtt = world.timing.rtt
        if source is not None and source.complete:
            world.sim.after(rtt, lambda: self._answered(node))
            return
        wait = self.mirror.config.inflight_wait if source is not None else 1.0  # IngestSource.appear_wait
        state = {"open": True}

        def bytes_there() -> None:
            if state["open"]:
                state["open"] = False
                world.sim.after(rtt, lambda: self._answered(node))

        def gave_up() -> None:
            if state["open"]:
                state["open"] = False
                self._failed()

        if source is not None:
            source.when_bytes(bytes_there)
        if state["open"]:
            world.sim.after(wait + rtt, gave_up)

    def _answered(self, node: int) -> None:
        self.running -= 1
        if self.finished:
            return
        self.finished = True
        self.mirror.latency.observe(self.mirror.world.sim.now - self.opened_at)
        self.answer(PeerAnswer(node))

    def _failed(self) -> None:
        self.running -= 1
        if self.finished:
            return
        self.next()

    def _fail(self) -> None:
        self.finished = True
        miss = decide.Miss(claim=self.follow.claim_on_failure)
        self.mirror._act(miss, self.digest, self.answer)
