"""The mirror's decisions as pure functions: no I/O, no clock, no randomness (sans-I/O).

Inputs are plain values: what a request is (HEAD or GET), the holders the router found (state COMPLETE or
IN_PROGRESS, claim time, router name), this node's own claim (time, name), the open requests per peer (load),
and time samples. Outputs say what to do. `MirrorBackend` (the real mirror) and the cluster simulator
(`benchmark/sim/`) call these same functions, so a change here is a change of both.

A blob request from this node's containerd that no local content answers goes through:
1. `after_lookup(holders, ...)`: CLAIM when claims are on, it is a GET and no holder has the blob complete;
   else `Follow` the holders (best first, hedged) or `Miss` (404: containerd goes upstream). A claim that no
   other node has made yet waits while this node is led in the pull (`defer_claim`).
2. after a claim and the settle: `after_claim(found, mine, ...)`: `Follow` the claimants ahead of this node in
   claim order (no hedging), or `Miss` when none is ahead (this node is the first claimant: it goes upstream).
3. `resume_candidates(holders, failed)`: after a transfer broke, which holders may resume it.
A claim is ranked by when this node began pulling the blob's repository (`PullStarts.rank`), not by the claim's own
time, until the node is led in the pull.
The 404s of one pull are answered in the order containerd asked (`MissOrder`).
`order_holders` picks which holder serves each request (chunks go to the least loaded); `hedge_delay` says
when a second holder is asked.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from spegel.routing.base import Holder, KeyState

ClaimKey = tuple[float, str]  # (claim time, router name): the order every node agrees on


@dataclass(frozen=True)
class Claim:
    """Announce this node's download of the blob (a claim), wait the settle, look again, then `after_claim`."""


@dataclass(frozen=True)
class Follow:
    """Ask `holders` in this order; the next one when the previous fails, or when `hedge_delay` seconds pass
    without an answer (math.inf: only on failure). When all fail, answer as `Miss(claim=claim_on_failure)`."""

    holders: tuple[Holder, ...]
    hedge_delay: float
    claim_on_failure: bool = False


@dataclass(frozen=True)
class Miss:
    """Answer 404 (containerd falls back to upstream at once); first claim the download when `claim` (so that
    peers asking next follow this node instead of going upstream too)."""

    claim: bool = False


CLAIM = Claim()


def claim_order(holder: Holder) -> ClaimKey:
    """A holder's place in claim order: by claim time, then router name; a download announced without a claim
    (already under way) comes before every claim."""
    return (-math.inf if holder.since is None else holder.since, holder.peer)


def after_lookup(holders: Sequence[Holder], *, head: bool, claims: bool, hedge_delay: float) -> Claim | Follow | Miss:
    """What to do with a blob request that this node cannot serve from its own store, given the `holders` the
    router found (best first). `claims`: in-progress downloads are shared (inflight mode). A HEAD never starts
    a download, so it never claims."""
    claiming = claims and not head
    if claiming and not any(h.state is KeyState.COMPLETE for h in holders):
        return CLAIM
    if not holders:
        return Miss(claim=claiming)
    return Follow(tuple(holders), hedge_delay, claim_on_failure=claiming)


def unclaimed(holders: Sequence[Holder], hedge_delay: float) -> Follow | Miss:
    """The claim was not made (the download is already advertised without one): follow `holders` as they are,
    hedged; when all fail, answer 404 and claim then."""
    if not holders:
        return Miss(claim=True)
    return Follow(tuple(holders), hedge_delay, claim_on_failure=True)


DEFER_POLL = 0.05  # seconds between the lookups of a deferred claim (`defer_claim`)


def defer_claim(holders: Sequence[Holder], led: bool) -> bool:
    """Whether a claim that would make this node the blob's first claimant waits (up to the claim timeout, looking
    again every `DEFER_POLL`) for another node to claim the blob first: while nobody holds or claims it (`holders`
    is empty) and this node is `led` in the pull (`PullStarts.led`).

    The claims of one blob reach its owner over up to a second or more in a storm on a busy machine, longer than the
    owner's first window, so the first claimant of each layer would be whoever's claim came first, and an image
    could have several. That can starve one of them: the requests a node follows peers for hold its containerd's
    download slots (`max_concurrent_downloads`) until the peers' downloads end, and after a 404 containerd's
    upstream request joins the back of that queue (`reports/scale-12-long`, rep 0: a layer's first claimant had
    all its slots waiting on another first claimant for 46 s; the nodes that followed it gave up after the
    in-flight wait and fetched the layer upstream again). containerd fetches an image's config before its layers,
    so every node's config claim is placed before any of its layer claims: the config's first claimant leads the
    pull, asks for every layer at once and is led by no one; the nodes it leads wait for a layer's first claim
    and follow it."""
    return led and not holders


def claims_ahead(found: Iterable[Holder], mine: ClaimKey) -> list[Holder]:
    """The holders a claimant may follow: complete ones first, then the in-progress ones before `mine` in claim
    order, nearest first. Never a later claimant, so no two nodes wait on each other."""
    ahead = [h for h in found if h.state is KeyState.COMPLETE or claim_order(h) < mine]
    ahead.sort(key=claim_order, reverse=True)
    ahead.sort(key=lambda h: h.state is not KeyState.COMPLETE)  # stable: complete first, then nearest
    return ahead


def after_claim(
    found: Iterable[Holder], mine: ClaimKey, *, retries: int, fanout: int = 1, chain: int = 0
) -> Follow | Miss:
    """This node claimed the blob at `mine` and, after the settle, the router lists `found`. Every node applies
    one order, so the first claimant alone gets `Miss` (it goes upstream) and every later one follows a
    claimant ahead of it. With the claimants ahead numbered 0 (the first) to r - 1, it follows the one at
    (r - 1) // k, its parent in a k-ary tree laid over the claim order: k = 1 (the claimant just before it,
    a chain) while the claimants it sees, itself included, are at most `chain`; k = `fanout` beyond (the
    last node waits behind about log_k(N) hops instead of N - 1). Complete holders come first; the other
    claimants ahead, nearest first, are fallbacks (up to `retries` holders in all, asked only if the parent
    fails: no hedging, which would undo the tree). A node that sees fewer claimants than there are still
    follows one ahead of it: no cycle, only a less even tree."""
    if fanout < 1:
        raise ValueError(f"fanout must be at least 1, got {fanout}")
    listed = list(found)
    ahead = claims_ahead(listed, mine)
    complete = [h for h in ahead if h.state is KeyState.COMPLETE]
    claimants = ahead[len(complete) :]  # nearest first
    if claimants:
        seen = 1 + sum(1 for h in listed if h.state is not KeyState.COMPLETE)
        k = 1 if seen <= chain else fanout
        parent = claimants[len(claimants) - 1 - (len(claimants) - 1) // k]
        claimants.remove(parent)
        claimants.insert(0, parent)
    chosen = (complete + claimants)[:retries]
    if not chosen:
        return Miss(claim=False)
    return Follow(tuple(chosen), math.inf)


def order_holders(holders: Iterable[Holder], load: dict[str, int], rotation: int = 0) -> list[Holder]:
    """Which holder serves a request: complete holders before in-progress ones; within each, least loaded
    first (`load`: requests open per address), then the most bytes available; remaining ties take the
    router's order rotated by `rotation`, so that successive requests (each with the next rotation) spread
    over equal holders."""
    listed = list(holders)
    count = len(listed) or 1
    keyed = [
        ((h.state is not KeyState.COMPLETE, load.get(h.address, 0), -(h.available or 0), (i - rotation) % count), h)
        for i, h in enumerate(listed)
    ]
    keyed.sort(key=lambda item: item[0])
    return [holder for _, holder in keyed]


def resume_candidates(holders: Iterable[Holder], failed: Collection[str]) -> list[Holder]:
    """Who may resume a broken transfer: the holders whose address has not failed it yet (to be ordered by
    `order_holders`)."""
    return [h for h in holders if h.address not in failed]


def hedge_delay(samples: Sequence[float], initial: float, minimum: float, maximum: float) -> float:
    """When to ask a second holder: the p80 of recent time-to-first-byte `samples`, clamped to
    [minimum, maximum]; `initial` until there are 10 samples."""
    if len(samples) < 10:
        return initial
    ordered = sorted(samples)
    p80 = ordered[int(0.8 * (len(ordered) - 1))]
    return min(maximum, max(minimum, p80))


class LatencyTracker:
    """Recent time-to-first-byte samples of peer requests (a window); `hedge_delay()` per `hedge_delay`."""

    def __init__(self, initial: float = 0.02, minimum: float = 0.002, maximum: float = 0.5, window: int = 200) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._initial, self._minimum, self._maximum = initial, minimum, maximum

    def observe(self, seconds: float) -> None:
        self._samples.append(seconds)

    def hedge_delay(self) -> float:
        return hedge_delay(self._samples, self._initial, self._minimum, self._maximum)


class PullStarts:
    """When this node's containerd began pulling each repository: the time of its first request for the
    repository, kept while requests for it keep coming and forgotten `idle` seconds after the last one or at the
    next image's first manifest request (the next pull starts anew, `started`). At most `max_entries` repositories
    are kept (the least recently asked for go first).

    Claims are ranked by it (the `since` of `claim_order`; the claim owner's first window): every claim of one pull
    carries the same time, so the owners of an image's layers, each ordering the claims that reach it together,
    put the same node first for every layer. That node downloads the whole image upstream, and every other node
    waits only on nodes ranked before it. Ranked by each claim's own time, a different node came first per layer,
    and each first claimant's download slots in containerd (`max_concurrent_downloads`) could all be taken by
    waits on the other first claimants: a cycle that only the followers' wait limit broke."""

    def __init__(self, idle: float = 60.0, max_entries: int = 1024) -> None:
        if idle <= 0 or max_entries < 1:
            raise ValueError("idle and max_entries must be positive")
        self.idle, self.max_entries = idle, max_entries
        self._pulls: OrderedDict[str, _Pull] = OrderedDict()  # by repository, least recently asked for first

    def started(self, repository: str, now: float, *, manifest: bool = False) -> float:
        """Note a request for `repository` at `now` (for a `manifest`, or else a blob); returns when its pull
        began. A request begins a new pull after `idle` seconds without one, and so does a manifest asked for
        after the pull's blobs: containerd fetches an image's manifests before any of its blobs, so that is the
        next image's pull (a node led in one pull is not led in the next, see `defer_claim`)."""
        pull = self._pulls.pop(repository, None)
        if pull is None or now - pull.last > self.idle or (manifest and pull.blobs):
            pull = _Pull(start=now, last=now)
        pull.last = max(pull.last, now)
        pull.blobs = pull.blobs or not manifest
        self._pulls[repository] = pull
        while len(self._pulls) > self.max_entries:
            self._pulls.popitem(last=False)
        return pull.start

    def decided(self, repository: str, first: bool) -> None:
        """A GET of a blob of `repository`'s current pull was decided: this node is its `first` claimant (it
        downloads it upstream), or not (it gets it from peers)."""
        pull = self._pulls.get(repository)
        if pull is not None:
            pull.firsts += first
            pull.behind += not first

    def led(self, repository: str) -> bool:
        """Whether another node leads this node's current pull of `repository`: some of its blobs come from peers,
        and this node is the first claimant of none (see `defer_claim`). containerd asks for the config first, so
        this is known before any layer is asked for: the config's first claimant leads."""
        pull = self._pulls.get(repository)
        return pull is not None and pull.behind > 0 and pull.firsts == 0

    def rank(self, repository: str, now: float) -> float:
        """The rank (claim time) of a claim of a blob of `repository` made at `now`: when the pull began, or `now`
        when the node is `led`, so that an owner that places it together with the leader's claim puts the
        leader first (a led node's pull may have begun earlier; its config claim reached the owner later)."""
        start = self.started(repository, now)
        return now if self.led(repository) else start


@dataclass
class _Pull:
    start: float  # the first request's time
    last: float  # the latest request's time
    firsts: int = 0  # blobs of this pull this node is the first claimant of
    behind: int = 0  # blobs of this pull it gets from peers
    blobs: bool = False  # whether a blob of this pull was asked for


class MissOrder:
    """Answers the 404s of each pull in the order its requests came.

    containerd's download slots (`max_concurrent_downloads`) are one first-in-first-out queue, and after a 404
    from its mirror, its request to the upstream joins the back of that queue. It unpacks the layers in order,
    so a first layer that downloads last holds every unpack until the end. The decisions of a pull's requests
    come in any order (each waits for its own claim's owner), so the 404s are held back: one is answered only
    once every request of the same pull (`key`) that came before it is decided. Decisions to follow peers are
    not held. A request takes a ticket when it comes (`ask`); `decided` and `forget` return the tickets whose
    404 may be sent now, first first. Holds only the requests in progress."""

    def __init__(self) -> None:
        self._next = 0
        self._undecided: dict[str, set[int]] = {}
        self._held: dict[str, list[int]] = {}  # misses decided, waiting for earlier requests; ascending

    def __len__(self) -> int:
        """The pulls with a request in progress."""
        return len(self._undecided.keys() | self._held.keys())

    def ask(self, key: str) -> int:
        """A request of pull `key` came: its ticket."""
        ticket = self._next
        self._next += 1
        self._undecided.setdefault(key, set()).add(ticket)
        return ticket

    def decided(self, key: str, ticket: int, miss: bool) -> list[int]:
        """The request `ticket` is decided: a 404 (`miss`) or not. Returns the held 404s that may be sent now."""
        undecided = self._undecided.get(key, set())
        if ticket not in undecided:
            return []
        undecided.discard(ticket)
        if miss:
            self._held.setdefault(key, []).append(ticket)
            self._held[key].sort()
        return self._release(key)

    def forget(self, key: str, ticket: int) -> list[int]:
        """The request `ticket` is gone (answered, failed or cancelled): it holds back no 404 any more."""
        self._undecided.get(key, set()).discard(ticket)
        held = self._held.get(key, [])
        if ticket in held:
            held.remove(ticket)
        return self._release(key)

    def _release(self, key: str) -> list[int]:
        undecided = self._undecided.get(key, set())
        first_undecided = min(undecided, default=None)
        held = self._held.get(key, [])
        cut = len(held) if first_undecided is None else sum(1 for t in held if t < first_undecided)
        released, self._held[key] = held[:cut], held[cut:]
        if not self._held[key]:
            del self._held[key]
        if not undecided:
            self._undecided.pop(key, None)
        return released
