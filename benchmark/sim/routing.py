"""The router as the mirrors see it: who announced which blob, and when each announcement becomes visible on
each other node.

An announcement made at time t is visible on node o from t + d(announcement, o), where d is drawn once per
(announcement, observer) pair from the announce -> visible distribution the router benchmark measured
(`benchmark.router_bench`: a log-normal through its p50 and p95, cut at its p99.9). A lookup answers like
`spegel.routing.index.Index.lookup`: the latest visible state of each other node, complete holders first,
then the most bytes available, then by router name, at most `count`.

Draws are a hash of (seed, announcement, observer): reproducible, and none is made for pairs never asked
about. Announcements older than the cut are visible everywhere and are kept in sorted lists, so a lookup
costs the recent announcements (vectorised) plus `count`. A claimant's decision over every claimant
(`Router.after_claim`) costs arrays over the nodes instead of a holder per claimant.

Claims are also ordered by each key's owner (`ClaimOwners`, as `spegel.routing.claims`), and `after_owner` is the
decision a claimant makes from the owner's answer, making holders only for the claimants it picks.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from benchmark.sim.events import Simulation
from spegel.mirror.decide import ClaimKey, Follow, Miss
from spegel.routing import claims
from spegel.routing.base import Holder, KeyState

# benchmark.router_bench, README (every node its own process, full mesh, 2 cores): nodes -> (p50, p95) seconds.
ROUTER_BENCH = {10: (0.007, 0.019), 30: (0.0186, 0.0466)}
TABLE_POINTS = 1024
CUT = 0.999


@dataclass(frozen=True)
class DelayModel:
    """Announce -> visible delays: log-normal with this median and p95, cut at its `CUT` quantile."""

    median: float
    p95: float

    @classmethod
    def for_nodes(cls, nodes: int, measured: dict[int, tuple[float, float]] = ROUTER_BENCH) -> DelayModel:
        """The measured distribution for `nodes`, interpolated in log(nodes) between measured sizes; outside
        them, the nearest measured size (a router whose cost per node does not grow with the cluster)."""
        sizes = sorted(measured)
        if nodes <= sizes[0]:
            return cls(*measured[sizes[0]])
        if nodes >= sizes[-1]:
            return cls(*measured[sizes[-1]])
        upper = next(s for s in sizes if s >= nodes)
        lower = max(s for s in sizes if s <= nodes)
        if upper == lower:
            return cls(*measured[upper])
        w = math.log(nodes / lower) / math.log(upper / lower)
        (m0, p0), (m1, p1) = measured[lower], measured[upper]
        return cls(m0 ** (1 - w) * m1**w, p0 ** (1 - w) * p1**w)

    @classmethod
    def fit(cls, ages: np.ndarray, visible: np.ndarray) -> DelayModel:
        """The log-normal most likely to give `visible` (whether a claim was visible to a node that looked when
        the claim was `ages` seconds old), by a grid search over median and spread."""
        z = statistics.NormalDist()
        ages = np.maximum(np.asarray(ages, dtype=float), 1e-6)
        seen = np.asarray(visible, dtype=bool)
        best, best_likelihood = cls(0.0, 0.0), -math.inf
        for median in np.exp(np.linspace(math.log(0.001), math.log(5.0), 50)):
            for sigma in np.linspace(0.1, 2.5, 25):
                p = np.array([z.cdf(v) for v in (np.log(ages) - math.log(median)) / sigma])
                p = np.clip(p, 1e-9, 1 - 1e-9)
                likelihood = float(np.sum(np.where(seen, np.log(p), np.log(1 - p))))
                if likelihood > best_likelihood:
                    best, best_likelihood = cls(float(median), float(median * math.exp(1.6449 * sigma))), likelihood
        return best

    def table(self) -> np.ndarray:
        """Quantiles 0 .. CUT of the distribution, `TABLE_POINTS` evenly spaced in probability."""
        if self.median <= 0:
            return np.zeros(TABLE_POINTS)
        sigma = math.log(self.p95 / self.median) / statistics.NormalDist().inv_cdf(0.95)
        normal = statistics.NormalDist()
        points = [normal.inv_cdf(min(CUT, max(1e-9, (i + 0.5) / TABLE_POINTS * CUT))) for i in range(TABLE_POINTS)]
        return np.array([self.median * math.exp(sigma * z) for z in points])


def uniforms(seed: int, ids: np.ndarray, observer: int) -> np.ndarray:
    """One number in [0, 1) per (seed, id, observer): splitmix64 of the three."""
    with np.errstate(over="ignore"):
        x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64((seed << 32) + observer + 1)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class _Book:
    """The announcements of one key, in time order (arrays that grow), and the state every node sees for the
    old ones (settled: visible everywhere)."""

    def __init__(self, nodes: int) -> None:
        self.size = 0
        self.ids = np.empty(16, dtype=np.int64)
        self.times = np.empty(16)
        self.nodes = np.empty(16, dtype=np.int64)
        self.complete = np.empty(16, dtype=bool)
        self.order = np.empty(16)  # a claim's time in claim order (-inf: announced without one)
        self.since: list[float | None] = []
        self.settled = 0  # announcements before this index are visible everywhere
        self.complete_nodes = np.zeros(nodes, dtype=bool)  # settled complete holders
        self.complete_ranks: list[int] = []  # their ranks (`Router.rank`), sorted
        self.claims: dict[int, float | None] = {}  # settled in-progress holders -> claim time
        self.claim_order = np.full(nodes, np.nan)  # the same, in claim order; nan: no settled claim
        self.claim_ranks: list[int] = []

    def append(self, id_: int, time: float, node: int, complete: bool, since: float | None) -> None:
        if self.size == len(self.ids):
            for name in ("ids", "times", "nodes", "complete", "order"):
                array = getattr(self, name)
                setattr(self, name, np.concatenate([array, np.empty_like(array)]))
        i = self.size
        self.ids[i], self.times[i], self.nodes[i], self.complete[i] = id_, time, node, complete
        self.order[i] = -math.inf if since is None else since
        self.since.append(since)
        self.size += 1


@dataclass
class _Window:
    """What one observer sees of a key's announcements that are not settled yet: the nodes whose completion it
    sees (sorted, unique), and the nodes whose claim it sees (sorted, unique) with the index of the latest."""

    complete: np.ndarray
    claimants: np.ndarray
    claims: np.ndarray


class Router:
    """Announcements of every node and what each node's lookups see (see the module docstring). Node names
    and addresses are unique."""

    def __init__(self, names: list[str], addresses: list[str], delays: DelayModel, seed: int = 0) -> None:
        if len(set(names)) != len(names) or len(set(addresses)) != len(addresses):
            raise ValueError("router names and addresses must be unique")
        self.names, self.addresses, self.seed = names, addresses, seed
        self._table = delays.table()
        self.cut = float(self._table[-1])
        self._books: dict[str, _Book] = {}
        self._next_id = 0
        self._holders: dict[tuple[int, bool, float | None], Holder] = {}
        self._by_rank = sorted(range(len(names)), key=lambda n: names[n])  # nodes in name order
        self._sorted_names = [names[n] for n in self._by_rank]
        self.rank = np.empty(len(names), dtype=np.int64)  # a node's place in name order
        self.rank[self._by_rank] = np.arange(len(names))
        self._node_of = {name: node for node, name in enumerate(names)}

    def announce(self, now: float, node: int, key: str, complete: bool, since: float | None = None) -> None:
        """`node` holds `key` (complete, or in progress claimed at `since`) from `now` on (`now` never goes
        back)."""
        book = self._books.get(key)
        if book is None:
            book = self._books[key] = _Book(len(self.names))
        book.append(self._next_id, now, node, complete, since)
        self._next_id += 1

    def lookup(self, now: float, observer: int, key: str, count: int) -> list[Holder]:
        """What `observer`'s router answers at `now` for `key` (see the module docstring); lookups come with
        `now` never going back."""
        book = self._books.get(key)
        if book is None or count <= 0:
            return []
        window = self._window(book, now, observer)
        by_rank = self._by_rank
        ranks = self.rank[window.complete[window.complete != observer]]
        ranked = _first(book.complete_ranks, by_rank, lambda n: n == observer, count)
        ranked = sorted({*ranked, *np.sort(ranks)[:count].tolist()})[:count]
        holders = [self._holder(by_rank[r], True, None) for r in ranked]
        if len(holders) < count:
            wanted = count - len(holders)
            shown = ~book.complete_nodes[window.claimants] & ~np.isin(window.claimants, window.complete)
            shown &= window.claimants != observer
            claimants, claims = window.claimants[shown], window.claims[shown]
            excluded = np.zeros(len(self.names), dtype=bool)
            excluded[window.complete] = True
            excluded[claimants] = True  # listed with the claim this observer sees, not the settled one
            excluded[observer] = True
            ranked = _first(book.claim_ranks, by_rank, lambda n: bool(excluded[n]), wanted)
            nearest = np.argsort(self.rank[claimants])[:wanted]
            since = {int(self.rank[claimants[i]]): book.since[claims[i]] for i in nearest}
            ranked = sorted([*ranked, *since])[:wanted]
            holders += [
                self._holder(by_rank[r], False, since[r] if r in since else book.claims[by_rank[r]]) for r in ranked
            ]
        return holders

    def after_claim(
        self, now: float, observer: int, key: str, mine: ClaimKey, *, retries: int, fanout: int, chain: int
    ) -> Follow | Miss:
        """`decide.after_claim(lookup(now, observer, key, count), mine, ...)` for any `count` of at least the
        number of nodes (nothing left out), in any order of the holders: the same decision, without making a
        holder of every claimant (the list's order does not matter, as names are unique). `observer`'s own
        name is `mine[1]`."""
        if fanout < 1:
            raise ValueError(f"fanout must be at least 1, got {fanout}")
        book = self._books.get(key)
        if book is None:
            return Miss(claim=False)
        window = self._window(book, now, observer)
        complete = self._complete(book, window, observer)
        order = book.claim_order.copy()
        order[window.claimants] = book.order[window.claims]
        claiming = ~np.isnan(order) & ~complete
        claiming[observer] = False
        complete_ranks = np.sort(self.rank[complete])[::-1][:retries]  # claim_order puts them in name order
        chosen = [self._holder(self._by_rank[r], True, None) for r in complete_ranks.tolist()]
        if len(chosen) < retries:
            since, name = mine
            mine_rank = bisect.bisect_left(self._sorted_names, name)
            ahead = np.nonzero(claiming & ((order < since) | ((order == since) & (self.rank < mine_rank))))[0]
            if len(ahead):
                ahead = ahead[np.lexsort((self.rank[ahead], order[ahead]))]  # claim order, the first first
                k = 1 if 1 + int(np.count_nonzero(claiming)) <= chain else fanout
                parent = (len(ahead) - 1) // k
                nearest = (i for i in range(len(ahead) - 1, -1, -1) if i != parent)
                for i in [parent, *itertools.islice(nearest, retries)][: retries - len(chosen)]:
                    node = int(ahead[i])
                    found = np.searchsorted(window.claimants, node)
                    if found < len(window.claimants) and window.claimants[found] == node:
                        claimed = book.since[window.claims[found]]
                    else:
                        claimed = book.claims[node]
                    chosen.append(self._holder(node, False, claimed))
        if not chosen:
            return Miss(claim=False)
        return Follow(tuple(chosen), math.inf)

    def complete_last(self, now: float, observer: int, key: str, count: int) -> list[Holder]:
        """The last `count` in name order of the complete holders of `key` that `observer` sees at `now` (itself
        left out), the last first: the complete holders `decide.claims_ahead` puts first when every one is listed
        (they have no claim time)."""
        book = self._books.get(key)
        if book is None or count <= 0:
            return []
        complete = self._complete(book, self._window(book, now, observer), observer)
        ranks = np.sort(self.rank[complete])[::-1][:count]
        return [self._holder(self._by_rank[r], True, None) for r in ranks.tolist()]

    def placed(self, name: str, place: int) -> Holder:
        """The holder `claims.placed` makes of the claimant `name` at `place` in its key's claim order."""
        return Holder(self.addresses[self._node_of[name]], KeyState.IN_PROGRESS, since=float(place), peer=name)

    def _complete(self, book: _Book, window: _Window, observer: int) -> np.ndarray:
        """Per node: whether `observer` sees it hold the key complete (never `observer` itself)."""
        complete = book.complete_nodes.copy()
        complete[window.complete] = True
        complete[observer] = False
        return complete

    def _window(self, book: _Book, now: float, observer: int) -> _Window:
        """Settle what is older than the cut, then what `observer` sees of the rest at `now`."""
        self._settle(book, now - self.cut)
        start = book.settled
        end = start + int(np.searchsorted(book.times[start : book.size], now, side="right"))
        if end == start:
            return _Window(_NONE, _NONE, _NONE)
        delays = self._table[(uniforms(self.seed, book.ids[start:end], observer) * len(self._table)).astype(np.int64)]
        seen = np.nonzero(book.times[start:end] + delays <= now)[0] + start
        done = book.complete[seen]
        claims = seen[~done][::-1]  # the latest first
        claimants, first = np.unique(book.nodes[claims], return_index=True)
        return _Window(np.unique(book.nodes[seen[done]]), claimants, claims[first])

    def _holder(self, node: int, complete: bool, since: float | None) -> Holder:
        key = (node, complete, since)
        holder = self._holders.get(key)
        if holder is None:
            state = KeyState.COMPLETE if complete else KeyState.IN_PROGRESS
            holder = Holder(self.addresses[node], state, None, since, self.names[node])
            self._holders[key] = holder
        return holder

    def _settle(self, book: _Book, before: float) -> None:
        start = book.settled
        end = start + int(np.searchsorted(book.times[start : book.size], before, side="right"))
        for j in range(start, end):
            node = int(book.nodes[j])
            rank = int(self.rank[node])
            if book.complete[j]:
                if node in book.claims:
                    del book.claims[node]
                    book.claim_order[node] = np.nan
                    book.claim_ranks.remove(rank)
                if not book.complete_nodes[node]:
                    book.complete_nodes[node] = True
                    bisect.insort(book.complete_ranks, rank)
            elif not book.complete_nodes[node]:
                if node not in book.claims:
                    bisect.insort(book.claim_ranks, rank)
                book.claims[node] = book.since[j]
                book.claim_order[node] = book.order[j]
        book.settled = end


_NONE = np.empty(0, dtype=np.int64)


def after_owner(
    complete: Sequence[Holder],
    ahead: Sequence[str],
    claimant: Callable[[int], Holder],
    *,
    retries: int,
    fanout: int,
    chain: int,
) -> Follow | Miss:
    """What `MirrorBackend._claim` decides when the key's owner placed this node's claim after the claimants
    `ahead` (first first; each has an address, none is this node): `decide.after_claim(complete + [claimant(place)
    for every place], (len(ahead), name), ...)`, where `claimant(place)` is the holder `claims.placed` makes of
    `ahead[place]` (`Router.placed`) and `complete` are the complete holders listed (no claim time), the last in
    name order first, all of them or at least `retries` (`Router.complete_last`; the simulated mirrors announce no
    download without a claim). The same decision, with holders made only for the claimants chosen."""
    if fanout < 1:
        raise ValueError(f"fanout must be at least 1, got {fanout}")
    chosen = list(complete[:retries])
    if ahead and len(chosen) < retries:
        k = 1 if 1 + len(ahead) <= chain else fanout  # every claimant listed is one ahead, and this node
        parent = (len(ahead) - 1) // k
        nearest = (place for place in range(len(ahead) - 1, -1, -1) if place != parent)
        chosen += [claimant(place) for place in [parent, *itertools.islice(nearest, retries)][: retries - len(chosen)]]
    if not chosen:
        return Miss(claim=False)
    return Follow(tuple(chosen), math.inf)


# Offsets the seed of the claim messages' delays, so that they are drawn apart from the announcements' delays.
CLAIM_SEED = 1 << 20


class ClaimOwners:
    """Claims ordered by each key's owner, as the libp2p router's `order_claim` does when every node is a connected
    member: the owner of a key is `claims.owner(key, names)`, whose `claims.ClaimBook` records claimants in the
    order their claims reach it. A node's claim of a key it owns is answered at once. Another node's claim reaches
    the owner after a one-way delay and the answer comes back after a second one, each drawn from the announce ->
    visible distribution (a message through a loaded node's event loop, as an announcement is: an assumption, the
    claim's round trip was not measured apart), reproducibly per message. An answer later than the claimant's
    `timeout` is lost (the claimant falls back; the owner has recorded the claim all the same)."""

    def __init__(self, sim: Simulation, names: list[str], delays: DelayModel, seed: int = 0) -> None:
        self.sim, self.names, self.seed = sim, names, seed + CLAIM_SEED
        self._table = delays.table()
        self._books: dict[int, claims.ClaimBook] = {}
        self._owners: dict[str, int] = {}
        self._node_of = {name: node for node, name in enumerate(names)}
        self._messages = 0
        self.asked = 0  # claims sent to an owner (not the claimant itself)
        self.late = 0  # of which answered after the claimant's timeout

    def owner(self, key: str) -> int:
        node = self._owners.get(key)
        if node is None:
            name = claims.owner(key, self.names)
            assert name is not None  # a cluster has nodes
            node = self._owners[key] = self._node_of[name]
        return node

    def order(
        self, node: int, key: str, since: float, timeout: float, answer: Callable[[list[str] | None], None]
    ) -> None:
        """`node` claims `key` now, its claim made at `since`: `answer(the claimants ahead of it, first first)` when
        the owner's answer comes (the owner answers once the claim's place is final: `ClaimBook.claim`), or
        `answer(None)` after `timeout` when it comes later."""
        owner, name = self.owner(key), self.names[node]
        book = self._book(owner)
        there, back = (0.0, 0.0) if owner == node else (self._delay(owner), self._delay(node))
        self.asked += owner != node
        lost = there + back > timeout  # late whatever the owner's wait
        if lost:
            self.late += 1
            self.sim.after(timeout, lambda: answer(None))

        def arrived() -> None:
            wait = book.claim(key, name, self.sim.now, since) - self.sim.now
            if lost:
                return
            if there + wait + back > timeout:
                self.late += 1
                self.sim.after(timeout - there, lambda: answer(None))
                return
            self.sim.after(wait, lambda: self._reply(book.ahead(key, name, self.sim.now), back, answer))

        if owner == node:
            arrived()
        else:
            self.sim.after(there, arrived)

    def _reply(self, ahead: list[str], delay: float, answer: Callable[[list[str] | None], None]) -> None:
        if delay:
            self.sim.after(delay, lambda: answer(ahead))
        else:
            answer(ahead)

    def _book(self, node: int) -> claims.ClaimBook:
        book = self._books.get(node)
        if book is None:
            book = self._books[node] = claims.ClaimBook()
        return book

    def _delay(self, receiver: int) -> float:
        self._messages += 1
        draw = uniforms(self.seed, np.array([self._messages]), receiver)[0]
        return float(self._table[int(draw * len(self._table))])


def _first(ranks: list[int], by_rank: list[int], skip: Callable[[int], bool], count: int) -> list[int]:
    """The first `count` of sorted `ranks` whose node (`by_rank[rank]`) is not to `skip`."""
    found: list[int] = []
    for rank in ranks:
        if len(found) == count:
            break
        if not skip(by_rank[rank]):
            found.append(rank)
    return found
