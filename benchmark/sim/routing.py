"""The router as the mirrors see it: who announced which blob, and when each announcement becomes visible on
each other node.

An announcement made at time t is visible on node o from t + d(announcement, o), where d is drawn once per
(announcement, observer) pair from the announce -> visible distribution the router benchmark measured
(`benchmark.router_bench`: a log-normal through its p50 and p95, cut at its p99.9). A lookup answers like
`spegel.routing.index.Index.lookup`: the latest visible state of each other node, complete holders first,
then the most bytes available, then by router name, at most `count`.

Draws are a hash of (seed, announcement, observer): reproducible, and none is made for pairs never asked
about. Announcements older than the cut are visible everywhere and are kept in sorted lists, so a lookup
costs the recent announcements (vectorised) plus `count`.
"""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass

import numpy as np

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
    """The announcements of one key, in time order, and the state every node sees for the old ones."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.times: list[float] = []
        self.nodes: list[int] = []
        self.complete: list[bool] = []
        self.since: list[float | None] = []
        self.settled = 0  # announcements before this index are visible everywhere
        self.complete_nodes: set[int] = set()  # settled complete holders
        self.complete_sorted: list[tuple[str, int]] = []  # the same as (name, node), sorted
        self.claims: dict[int, float | None] = {}  # settled in-progress holders -> claim time
        self.claims_sorted: list[tuple[str, int]] = []


class Router:
    """Announcements of every node and what each node's lookups see (see the module docstring)."""

    def __init__(self, names: list[str], addresses: list[str], delays: DelayModel, seed: int = 0) -> None:
        self.names, self.addresses, self.seed = names, addresses, seed
        self._table = delays.table()
        self.cut = float(self._table[-1])
        self._books: dict[str, _Book] = {}
        self._next_id = 0
        self._holders: dict[tuple[int, bool, float | None], Holder] = {}

    def announce(self, now: float, node: int, key: str, complete: bool, since: float | None = None) -> None:
        """`node` holds `key` (complete, or in progress claimed at `since`) from `now` on."""
        book = self._books.setdefault(key, _Book())
        book.ids.append(self._next_id)
        self._next_id += 1
        book.times.append(now)
        book.nodes.append(node)
        book.complete.append(complete)
        book.since.append(since)

    def lookup(self, now: float, observer: int, key: str, count: int) -> list[Holder]:
        """What `observer`'s router answers at `now` for `key` (see the module docstring)."""
        book = self._books.get(key)
        if book is None or count <= 0:
            return []
        self._settle(book, now - self.cut)
        complete: set[int] = set()
        claims: dict[int, float | None] = {}
        end = bisect.bisect_right(book.times, now, lo=book.settled)
        if end > book.settled:
            ids = np.array(book.ids[book.settled : end])
            delays = self._table[(uniforms(self.seed, ids, observer) * len(self._table)).astype(np.int64)]
            seen = np.array(book.times[book.settled : end]) + delays <= now
            for i in np.nonzero(seen)[0].tolist():
                j = book.settled + i
                if book.complete[j]:
                    complete.add(book.nodes[j])
                else:
                    claims[book.nodes[j]] = book.since[j]
        names = self.names
        skip = {observer}
        ranked = _first(book.complete_sorted, skip, count)
        ranked = sorted({*ranked, *(n for n in complete - skip)}, key=lambda n: (names[n], n))[:count]
        holders = [self._holder(n, True, None) for n in ranked]
        if len(holders) < count:
            skip |= complete | book.complete_nodes
            wanted = count - len(holders)
            window = {n: since for n, since in claims.items() if n not in skip}
            ranked = _first(book.claims_sorted, skip | set(window), wanted)
            ranked = sorted([*ranked, *window], key=lambda n: (names[n], n))[:wanted]
            holders += [self._holder(n, False, window[n] if n in window else book.claims[n]) for n in ranked]
        return holders

    def _holder(self, node: int, complete: bool, since: float | None) -> Holder:
        key = (node, complete, since)
        holder = self._holders.get(key)
        if holder is None:
            state = KeyState.COMPLETE if complete else KeyState.IN_PROGRESS
            holder = Holder(self.addresses[node], state, None, since, self.names[node])
            self._holders[key] = holder
        return holder

    def _settle(self, book: _Book, before: float) -> None:
        while book.settled < len(book.times) and book.times[book.settled] <= before:
            j = book.settled
            node = book.nodes[j]
            entry = (self.names[node], node)
            if book.complete[j]:
                if node in book.claims:
                    del book.claims[node]
                    book.claims_sorted.remove(entry)
                if node not in book.complete_nodes:
                    book.complete_nodes.add(node)
                    bisect.insort(book.complete_sorted, entry)
            elif node not in book.complete_nodes:
                if node not in book.claims:
                    bisect.insort(book.claims_sorted, entry)
                book.claims[node] = book.since[j]
            book.settled += 1


def _first(entries: list[tuple[str, int]], skip: set[int], count: int) -> list[int]:
    """The first `count` nodes of sorted `entries` not in `skip`."""
    found: list[int] = []
    for _, node in entries:
        if len(found) == count:
            break
        if node not in skip:
            found.append(node)
    return found
