"""The announcement overlay (pure): whom a node links to, and whom it passes each origin's messages on to.

Every node links to a bounded number of others (`targets`: its successor on a hash ring, so the overlay is
connected, and the `degree - 1` members with the highest rendezvous score with it), not to every node: links and
connections per node stay bounded as the cluster grows. Links are two-way, and each node tells every other which
peers it is linked to (its announcements carry the list), so every node knows the whole overlay graph: the links
both ends list.

An announcement goes from its origin to every node along the origin's shortest-path tree over that graph: a node
passes a message of origin O on to the links whose parent in O's tree it is (`children`). Every node sends each
message on at most once per link, and when the views agree each node receives it once, so the cost of one
announcement per node does not grow with the cluster. In a full mesh (clusters of up to `degree + 1` nodes) the
tree is a star: the origin sends to everyone and nobody passes anything on, as before the overlay. While the
graph changes, views differ and a tree computed from a stale view can leave a node out; once the graph settles,
every origin that announced something meanwhile sends one more (empty) message, and a node that missed one sees
the gap.

Every origin numbers its messages (`Sequence`: an incarnation, the wall-clock time it started, and a counter);
a node applies and passes on only messages newer than the last one it has of that origin (`Origins.accept`).
Links are ordered streams and a node passes messages on in the order it first received them, so each origin's
messages reach every node in order; a message that skips numbers (links changed under it) is a `GAP`, and the
receiver asks the sender for the origin's whole state.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from spegel.routing.claims import rendezvous_score

MAX_ORIGINS = 65_536  # origins a node keeps: announcements of more are ignored


@dataclass(frozen=True, order=True)
class Sequence:
    """Where a message stands among its origin's: incarnation (start time, ns) first, then the counter."""

    incarnation: int
    number: int


class Verdict(enum.Enum):
    NEW = "new"  # the next message of its origin: apply it and pass it on
    GAP = "gap"  # newer, but messages before it are missing: apply it, pass it on, and ask for the whole state
    OLD = "old"  # seen already (or older): drop it


@dataclass
class Origin:
    """What a node knows of one origin: the last message's sequence, and the peers it says it is linked to."""

    sequence: Sequence
    whole: bool = False  # its whole state is here: a State, and no gap since
    links: frozenset[str] = frozenset()


@dataclass
class Origins:
    """The origins a node has heard of, and the overlay graph their link lists make."""

    me: str
    known: dict[str, Origin] = field(default_factory=dict)
    version: int = 0  # changes whenever the graph does
    departed: dict[str, Sequence] = field(default_factory=dict)  # forgotten origins: the last message they had
    _trees: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)  # origin -> (version, parents)

    def accept(self, origin: str, sequence: Sequence, full: bool) -> Verdict:
        """Record a message of `origin` numbered `sequence` (`full`: it carries the whole state) and say what to do
        with it. A full state is never a gap, and is new also at the last number when the whole state is not here
        (the last message was a gap); a partial one is a gap when it is not the direct successor of the last, or
        the whole state is not here."""
        if origin == self.me:
            return Verdict.OLD
        record = self.known.get(origin)
        if record is None:
            gone = self.departed.get(origin)
            if len(self.known) >= MAX_ORIGINS or (gone is not None and sequence <= gone):
                return Verdict.OLD  # too many, or a late message of a departed origin
            self.departed.pop(origin, None)
            self.known[origin] = Origin(sequence, whole=full)
            self.version += 1
            return Verdict.NEW if full else Verdict.GAP
        if full and not record.whole and sequence >= record.sequence:
            record.sequence, record.whole = sequence, True
            return Verdict.NEW
        if sequence <= record.sequence:
            return Verdict.OLD
        successor = sequence == Sequence(record.sequence.incarnation, record.sequence.number + 1)
        record.sequence = sequence
        record.whole = full or (successor and record.whole)
        return Verdict.NEW if record.whole else Verdict.GAP

    def lacks(self, origin: str, sequence: Sequence) -> bool:
        """Whether a message of `origin` numbered `sequence` would be new here (a departed origin's old ones are
        not)."""
        if origin == self.me:
            return False
        record = self.known.get(origin)
        if record is None:
            gone = self.departed.get(origin)
            return gone is None or sequence > gone
        return sequence > record.sequence or not record.whole

    def set_links(self, origin: str, links: Iterable[str]) -> None:
        """`origin` says it is linked to `links` (an origin not `accept`ed first is ignored)."""
        record = self.known.get(origin) if origin != self.me else None
        if record is None:
            return
        links = frozenset(links) - {origin}
        if links != record.links:
            record.links = links
            self.version += 1

    def forget(self, origin: str, upto: Sequence | None = None) -> bool:
        """Forget `origin` (it left), unless a message newer than `upto` was heard from it since; returns whether
        it was forgotten. Messages of it up to the last one heard are refused from then on (late copies)."""
        record = self.known.get(origin)
        if record is None or (upto is not None and record.sequence > upto):
            return False
        del self.known[origin]
        if len(self.departed) >= MAX_ORIGINS:
            self.departed.clear()
        self.departed[origin] = record.sequence
        self._trees.pop(origin, None)
        self.version += 1
        return True

    def changed(self) -> None:
        """This node's own links changed (part of the graph too)."""
        self.version += 1

    def children(self, origin: str, my_links: Collection[str]) -> list[str]:
        """The links of this node that receive `origin`'s messages from it: those whose parent in `origin`'s
        shortest-path tree is this node, and those the tree does not reach (unknown yet, or linked by links only one
        end lists so far: they may get a message twice, never not at all)."""
        parents = self._tree(origin, my_links)
        return [link for link in my_links if link != origin and parents.get(link, self.me) == self.me]

    def _tree(self, origin: str, my_links: Collection[str]) -> dict[str, str]:
        """Each node's parent in `origin`'s shortest-path tree (ties: the lowest name), for this graph version."""
        cached = self._trees.get(origin)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        graph = self._graph(my_links)
        parents: dict[str, str] = {}
        if origin in graph:
            depth = {origin: 0}
            queue = deque([origin])
            while queue:
                node = queue.popleft()
                for neighbour in sorted(graph[node]):
                    if neighbour not in depth:
                        depth[neighbour] = depth[node] + 1
                        parents[neighbour] = node
                        queue.append(neighbour)
        if len(self._trees) >= MAX_ORIGINS:
            self._trees.clear()
        self._trees[origin] = (self.version, parents)
        return parents

    def _graph(self, my_links: Collection[str]) -> dict[str, set[str]]:
        """The overlay as this node knows it: the links both ends say they hold (a link only one end lists may not
        carry anything yet, or any more)."""
        lists = {name: record.links for name, record in self.known.items()}
        lists[self.me] = frozenset(my_links)
        return {name: {other for other in links if name in lists.get(other, ())} for name, links in lists.items()}


def ring_position(member: str) -> bytes:
    return hashlib.sha256(member.encode()).digest()


def targets(me: str, members: Iterable[str], degree: int) -> list[str]:
    """The members `me` links to: its successor on the hash ring (so that the overlay is connected), then the
    `degree - 1` others with the highest rendezvous score with `me`. All of them when there are at most `degree`."""
    others = sorted({member for member in members if member != me}, key=ring_position)
    if len(others) <= degree:
        return others
    mine = ring_position(me)
    successor = next((member for member in others if ring_position(member) > mine), others[0])
    ranked = sorted(
        (member for member in others if member != successor),
        key=lambda member: rendezvous_score(me, member),
        reverse=True,
    )
    return [successor, *ranked[: degree - 1]]
