"""The announcement overlay (`spegel.routing.overlay`): which message of an origin a node takes as new, as a gap or as
old (`Origins.accept`), forgetting a departed origin, whom each node links to (`targets`), and whom a node passes an
origin's messages on to (`Origins.children`): along a spanning tree of the overlay rooted at the origin, so that
every node receives each message exactly once when the nodes' views agree."""

from __future__ import annotations

import hashlib
import random
from collections import Counter, deque
from collections.abc import Collection, Mapping
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from spegel.routing.overlay import MAX_ORIGINS, Origins, Sequence, Verdict, targets

START = 1796197891000000000  # an incarnation: a start time in ns
LATER = START + 60_000_000_000  # the same node restarted a minute later


# Accepting messages.


def test_the_first_full_message_of_an_origin_is_new() -> None:
    origins = Origins("me")
    assert origins.accept("a", Sequence(START, 7), full=True) is Verdict.NEW
    assert origins.known["a"].sequence == Sequence(START, 7)


def test_partial_messages_are_gaps_until_the_whole_state_comes_even_at_the_same_number() -> None:
    origins = Origins("me")
    assert origins.accept("a", Sequence(START, 3), full=False) is Verdict.GAP
    assert origins.accept("a", Sequence(START, 4), full=False) is Verdict.GAP  # still no whole state
    assert not origins.known["a"].whole and origins.lacks("a", Sequence(START, 4))
    assert origins.accept("a", Sequence(START, 4), full=True) is Verdict.NEW  # a link's copy of its state
    assert origins.known["a"].whole and not origins.lacks("a", Sequence(START, 4))
    assert origins.accept("a", Sequence(START, 4), full=True) is Verdict.OLD
    assert origins.accept("a", Sequence(START, 5), full=False) is Verdict.NEW


def test_each_direct_successor_is_new() -> None:
    origins = Origins("me")
    origins.accept("a", Sequence(START, 0), full=True)
    assert [origins.accept("a", Sequence(START, n), full=False) for n in (1, 2, 3)] == [Verdict.NEW] * 3


def test_a_message_that_skips_numbers_is_a_gap_and_the_count_goes_on_from_it() -> None:
    origins = Origins("me")
    origins.accept("a", Sequence(START, 0), full=True)
    assert origins.accept("a", Sequence(START, 2), full=False) is Verdict.GAP
    assert origins.accept("a", Sequence(START, 3), full=False) is Verdict.GAP  # the state is still incomplete
    assert origins.accept("a", Sequence(START, 1), full=False) is Verdict.OLD  # the skipped one, arriving late
    assert origins.known["a"].sequence == Sequence(START, 3)


def test_a_full_state_that_skips_numbers_is_new() -> None:
    origins = Origins("me")
    origins.accept("a", Sequence(START, 0), full=True)
    assert origins.accept("a", Sequence(START, 9), full=True) is Verdict.NEW


def test_a_duplicate_or_older_message_is_old_and_moves_nothing() -> None:
    origins = Origins("me")
    origins.accept("a", Sequence(START, 5), full=True)
    for number, full in [(5, False), (5, True), (4, False), (0, True)]:
        assert origins.accept("a", Sequence(START, number), full) is Verdict.OLD
    assert origins.accept("a", Sequence(START - 1, 10**9), full=True) is Verdict.OLD  # an earlier incarnation
    assert origins.known["a"].sequence == Sequence(START, 5)
    assert origins.accept("a", Sequence(START, 6), full=False) is Verdict.NEW


def test_a_new_incarnation_is_new_with_its_state_and_a_gap_with_a_delta() -> None:
    told_state, told_delta = Origins("me"), Origins("me")
    for origins in (told_state, told_delta):
        origins.accept("a", Sequence(START, 40), full=True)
    assert told_state.accept("a", Sequence(LATER, 0), full=True) is Verdict.NEW
    assert told_delta.accept("a", Sequence(LATER, 0), full=False) is Verdict.GAP
    assert told_delta.accept("a", Sequence(LATER, 1), full=True) is Verdict.NEW
    fresh = Origins("me")
    fresh.accept("a", Sequence(START, 0), full=True)
    assert fresh.accept("a", Sequence(LATER, 1), full=False) is Verdict.GAP  # the restarted node's number 1


def test_messages_of_this_node_itself_are_old() -> None:
    origins = Origins("me")
    assert origins.accept("me", Sequence(START, 0), full=True) is Verdict.OLD
    assert origins.accept("me", Sequence(START, 1), full=False) is Verdict.OLD
    assert "me" not in origins.known


def test_origins_beyond_the_limit_are_ignored_until_one_is_forgotten() -> None:
    origins = Origins("me")
    for number in range(MAX_ORIGINS):
        origins.accept(f"peer-{number}", Sequence(START, 0), full=True)
    assert origins.accept("late", Sequence(START, 0), full=True) is Verdict.OLD
    assert "late" not in origins.known and len(origins.known) == MAX_ORIGINS
    assert origins.accept("peer-0", Sequence(START, 1), full=False) is Verdict.NEW  # the known ones go on
    assert origins.forget("peer-0")
    assert origins.accept("late", Sequence(START, 0), full=True) is Verdict.NEW


# Forgetting and links.


def test_a_departed_origin_is_forgotten_unless_heard_from_after_the_report() -> None:
    origins = Origins("me")
    origins.accept("a", Sequence(START, 5), full=True)
    assert not origins.forget("a", Sequence(START, 4))  # the reporter had 4; 5 came since
    assert "a" in origins.known
    assert origins.forget("a", Sequence(START, 5))
    assert "a" not in origins.known
    origins.accept("b", Sequence(LATER, 0), full=True)
    assert not origins.forget("b", Sequence(START, 99))  # it restarted after the report
    assert origins.forget("b")  # no sequence: unconditionally
    assert not origins.forget("never-heard", Sequence(START, 0))


def test_links_are_kept_only_for_accepted_origins_and_change_the_version_only_when_they_change() -> None:
    origins = Origins("me")
    origins.set_links("a", ["b"])
    origins.set_links("me", ["b"])
    assert origins.known == {} and origins.version == 0
    origins.accept("a", Sequence(START, 0), full=True)
    assert origins.version == 1  # a new node in the graph
    origins.set_links("a", ["b", "a", "c"])
    assert origins.known["a"].links == {"b", "c"}  # not linked to itself
    assert origins.version == 2
    origins.set_links("a", ["c", "b"])
    origins.accept("a", Sequence(START, 1), full=False)
    assert origins.version == 2
    origins.set_links("a", ["c"])
    assert origins.version == 3
    origins.changed()
    assert origins.version == 4


def test_late_copies_of_a_departed_origin_do_not_bring_it_back() -> None:
    origins = Origins("me")
    origins.accept("a", Sequence(START, 4), full=True)
    assert origins.forget("a", Sequence(START, 4))
    assert origins.accept("a", Sequence(START, 3), full=False) is Verdict.OLD
    assert origins.accept("a", Sequence(START, 4), full=True) is Verdict.OLD
    assert "a" not in origins.known
    assert origins.accept("a", Sequence(LATER, 0), full=True) is Verdict.NEW  # it came back


def test_forgetting_an_origin_takes_it_out_of_the_graph() -> None:
    origins = Origins("b")
    _hear(origins, {"a": ["b", "c"], "c": ["a"]})
    assert origins.children("a", ["a", "c"]) == []  # c is the origin's own link
    origins.forget("c")
    assert origins.children("a", ["a", "c"]) == ["c"]  # now unknown to the graph: passed on, to be safe


# Targets.


def _names(count: int, prefix: str = "node-") -> list[str]:
    return [f"{prefix}{number}" for number in range(count)]


def _ring_successor(me: str, members: Collection[str]) -> str:
    """The member right after `me` clockwise on the ring of SHA-256 positions (wrapping around)."""
    mine = hashlib.sha256(me.encode()).digest()

    def clockwise(member: str) -> tuple[bool, bytes]:
        position = hashlib.sha256(member.encode()).digest()
        return position <= mine, position

    return min((member for member in members if member != me), key=clockwise)


def test_a_node_links_to_every_other_when_there_are_at_most_degree() -> None:
    members = _names(5)
    for degree in (4, 5, 9):
        chosen = targets("node-0", members, degree)
        assert sorted(chosen) == members[1:]
    assert sorted(targets("outsider", members, 5)) == members
    assert targets("node-0", ["node-0"], 3) == []


def test_a_node_links_to_exactly_degree_others_including_its_ring_successor() -> None:
    for count in (3, 10, 50):
        members = _names(count)
        for degree in range(1, min(count - 1, 9)):
            for me in members[:5]:
                chosen = targets(me, members, degree)
                assert len(chosen) == len(set(chosen)) == degree
                assert me not in chosen and set(chosen) <= set(members)
                assert _ring_successor(me, members) in chosen


def test_targets_do_not_depend_on_the_order_or_repetition_of_members() -> None:
    members = _names(30)
    shuffled = members * 2
    random.Random(7).shuffle(shuffled)
    for me in members[:5]:
        assert targets(me, shuffled, 4) == targets(me, members, 4) == targets(me, list(reversed(members)), 4)


@settings(deadline=None, max_examples=60)
@given(st.integers(min_value=2, max_value=60), st.integers(min_value=1, max_value=8), st.text(max_size=4))
def test_the_targets_of_all_nodes_make_a_connected_overlay(count: int, degree: int, prefix: str) -> None:
    members = _names(count, prefix + "/")
    links = _overlay(members, degree)
    reached = {members[0]}
    queue = deque([members[0]])
    while queue:
        for neighbour in links[queue.popleft()] - reached:
            reached.add(neighbour)
            queue.append(neighbour)
    assert reached == set(members)


# Passing messages on.


def _overlay(members: list[str], degree: int) -> dict[str, set[str]]:
    """Each member's links when every member links to its `targets`: links go both ways."""
    links: dict[str, set[str]] = {member: set() for member in members}
    for member in members:
        for target in targets(member, members, degree):
            links[member].add(target)
            links[target].add(member)
    return links


def _hear(origins: Origins, links: Mapping[str, Collection[str]]) -> None:
    """`origins` has the state of each node in `links`, which says it is linked to its links."""
    for node, its_links in links.items():
        origins.accept(node, Sequence(START, 0), full=True)
        origins.set_links(node, its_links)


def _forwarding(links: Mapping[str, Collection[str]], origin: str) -> dict[str, list[str]]:
    """Whom each node passes `origin`'s messages on to, every node knowing the whole overlay."""
    forwarding = {}
    for node, its_links in links.items():
        view = Origins(node)
        _hear(view, {other: other_links for other, other_links in links.items() if other != node})
        forwarding[node] = view.children(origin, sorted(its_links))
    return forwarding


def _line(*nodes: str, closed: bool = False) -> dict[str, set[str]]:
    links: dict[str, set[str]] = {node: set() for node in nodes}
    pairs = list(pairwise(nodes)) + ([(nodes[-1], nodes[0])] if closed else [])
    for left, right in pairs:
        links[left].add(right)
        links[right].add(left)
    return links


def test_in_a_full_mesh_only_the_origin_sends() -> None:
    members = _names(6)
    mesh = _overlay(members, degree=8)
    assert all(links == set(members) - {member} for member, links in mesh.items())
    for origin in members:
        forwarding = _forwarding(mesh, origin)
        assert sorted(forwarding.pop(origin)) == sorted(set(members) - {origin})
        assert all(children == [] for children in forwarding.values())


def test_on_a_line_messages_go_along_it_away_from_the_origin() -> None:
    line = _line("a", "b", "c", "d")
    assert _forwarding(line, "a") == {"a": ["b"], "b": ["c"], "c": ["d"], "d": []}
    assert _forwarding(line, "d") == {"a": [], "b": ["a"], "c": ["b"], "d": ["c"]}
    assert _forwarding(line, "b") == {"a": [], "b": ["a", "c"], "c": ["d"], "d": []}


def test_on_a_ring_messages_go_both_ways_and_the_far_node_has_one_parent() -> None:
    ring = _line("a", "b", "c", "d", "e", "f", closed=True)
    # d is as far from a through c as through e: the tie goes to the lower name, c.
    assert _forwarding(ring, "a") == {"a": ["b", "f"], "b": ["c"], "c": ["d"], "d": [], "e": [], "f": ["e"]}


def test_links_the_graph_does_not_know_are_passed_messages_but_never_the_origin() -> None:
    origins = Origins("b")
    _hear(origins, {"a": ["b"]})
    assert origins.children("a", ["a", "x"]) == ["x"]
    assert origins.children("unheard-of", ["a", "x"]) == ["a", "x"]
    assert origins.children("a", ["a"]) == []


def test_children_follow_this_nodes_own_links_once_it_says_they_changed() -> None:
    origins = Origins("b")
    _hear(origins, {"a": ["b", "x"], "x": ["a", "c"], "c": ["x", "b"]})
    assert origins.children("a", ["a"]) == []
    origins.changed()  # b links to c too: c is now as near to a through b as through x, and b < x
    assert origins.children("a", ["a", "c"]) == ["c"]


def test_a_link_only_one_end_lists_carries_no_tree_and_its_node_gets_messages_from_every_neighbour() -> None:
    """a-b-c: c also links to b and to d, but d does not say so (yet): d is not in a's tree, so c and b, its
    linked neighbours, both pass a's messages to it; once d lists b only b does (b < c)."""
    origins = Origins("c")
    _hear(origins, {"a": ["b"], "b": ["a", "c", "d"], "d": []})
    assert origins.children("a", ["b", "d"]) == ["d"]
    origins.set_links("d", ["b", "c"])
    assert origins.children("a", ["b", "d"]) == []


@settings(deadline=None, max_examples=60)
@given(
    st.integers(min_value=2, max_value=40),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=0),
    st.text(max_size=3),
)
def test_an_origins_messages_reach_every_node_exactly_once_along_a_spanning_tree(
    count: int, degree: int, pick: int, prefix: str
) -> None:
    members = _names(count, prefix + "/")
    origin = members[pick % count]
    links = _overlay(members, degree)
    forwarding = _forwarding(links, origin)

    parents: dict[str, list[str]] = {member: [] for member in members}
    for node, children in forwarding.items():
        assert set(children) <= links[node] - {origin}
        for child in children:
            parents[child].append(node)
    assert parents.pop(origin) == []
    assert all(len(node_parents) == 1 for node_parents in parents.values())

    received: Counter[str] = Counter()
    queue = deque((origin, child) for child in forwarding[origin])
    while queue:
        sender, node = queue.popleft()
        received[node] += 1
        if received[node] == 1:  # a node passes on only what is new to it, never back to the sender or origin
            queue.extend((node, child) for child in forwarding[node] if child not in (sender, origin))
    assert received == Counter(set(members) - {origin})
