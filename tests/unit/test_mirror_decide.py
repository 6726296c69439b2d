"""The mirror's decisions (spegel/mirror/decide.py): claim order, whom to follow, holder order, hedging, resume."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spegel.mirror import decide
from spegel.routing.base import Holder, KeyState


def claimant(name: str, since: float | None) -> Holder:
    return Holder(f"{name}:5000", KeyState.IN_PROGRESS, since=since, peer=name)


# Claims as nodes make them: several at the same time (ties broken by name), a few downloads without a claim.
claim_sets = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=3),
    st.one_of(st.none(), st.sampled_from([0.0, 0.001, 0.002, 0.5])),
    min_size=1,
    max_size=12,
)


def views(claims: dict[str, float | None]) -> dict[str, list[Holder]]:
    """What each node's router lists after the settle when every claim is visible: everyone but itself."""
    return {name: [claimant(o, s) for o, s in claims.items() if o != name] for name in claims}


@settings(deadline=None)  # the machine is shared: time is not what these test
@given(claim_sets)
def test_claim_order_is_total_and_the_same_on_every_node(claims: dict[str, float | None]) -> None:
    holders = [claimant(name, since) for name, since in claims.items()]
    keys = [decide.claim_order(h) for h in holders]
    assert len(set(keys)) == len(keys)  # total: no two claimants tie
    assert sorted(holders, key=decide.claim_order) == sorted(reversed(holders), key=decide.claim_order)


@settings(deadline=None)  # the machine is shared: time is not what these test
@given(claim_sets)
def test_exactly_one_claimant_goes_upstream_and_none_follows_a_later_one(claims: dict[str, float | None]) -> None:
    claimed = {name: since for name, since in claims.items() if since is not None}
    if not claimed:
        return
    upstream = []
    for name, found in views(claims).items():
        if claims[name] is None:
            continue  # a download under way without a claim does not ask
        mine = (claims[name], name)
        decision = decide.after_claim(found, mine, retries=3)
        if isinstance(decision, decide.Miss):
            upstream.append(name)
        else:
            assert decision.hedge_delay == math.inf  # following a claim never hedges past the one ahead
            assert all(decide.claim_order(h) < mine for h in decision.holders)
    unclaimed_downloads = any(since is None for since in claims.values())
    assert len(upstream) == (0 if unclaimed_downloads else 1)
    if upstream:
        assert upstream[0] == min(claimed, key=lambda n: (claimed[n], n))


@settings(deadline=None)  # the machine is shared: time is not what these test
@given(claim_sets)
def test_each_claimant_follows_the_one_just_before_it(claims: dict[str, float | None]) -> None:
    ordered = sorted((decide.claim_order(claimant(n, s)), n) for n, s in claims.items())
    for (key, name), (_, before) in zip(ordered[1:], ordered, strict=False):
        if claims[name] is None:
            continue
        decision = decide.after_claim(views(claims)[name], key, retries=3)
        assert isinstance(decision, decide.Follow)
        assert decision.holders[0].peer == before


@settings(deadline=None)  # the machine is shared: time is not what these test
@given(claim_sets, st.data())
def test_a_partial_view_never_makes_a_node_wait_on_a_later_one(
    claims: dict[str, float | None], data: st.DataObject
) -> None:
    """Announcements may be late: each node sees any subset of the others. The follow graph stays acyclic."""
    follows: dict[str, list[str]] = {}
    for name, found in views(claims).items():
        if claims[name] is None:
            continue
        seen = data.draw(st.lists(st.sampled_from(found), unique=True) if found else st.just([]))
        decision = decide.after_claim(seen, (claims[name], name), retries=3)
        follows[name] = [h.peer for h in decision.holders] if isinstance(decision, decide.Follow) else []
    position = {n: decide.claim_order(claimant(n, s)) for n, s in claims.items()}
    for name, targets in follows.items():
        assert all(position[t] < position[name] for t in targets)


def test_complete_holders_come_before_claimants_and_retries_bound_the_list() -> None:
    found = [claimant("a", 1.0), Holder("c:5000"), claimant("b", 2.0), claimant("z", 9.0)]
    decision = decide.after_claim(found, (5.0, "m"), retries=3)
    assert isinstance(decision, decide.Follow)
    assert [h.address for h in decision.holders] == ["c:5000", "b:5000", "a:5000"]
    assert decide.after_claim(found, (5.0, "m"), retries=1) == decide.Follow((Holder("c:5000"),), math.inf)


def test_after_lookup_claims_only_a_get_in_claim_mode_without_a_complete_holder() -> None:
    in_progress, complete = [claimant("a", 1.0)], [Holder("c:5000")]
    assert decide.after_lookup([], head=False, claims=True, hedge_delay=0.02) == decide.CLAIM
    assert decide.after_lookup(in_progress, head=False, claims=True, hedge_delay=0.02) == decide.CLAIM
    assert decide.after_lookup(complete, head=False, claims=True, hedge_delay=0.02) == decide.Follow(
        tuple(complete), 0.02, claim_on_failure=True
    )
    assert decide.after_lookup([], head=True, claims=True, hedge_delay=0.02) == decide.Miss(claim=False)
    assert decide.after_lookup([], head=False, claims=False, hedge_delay=0.02) == decide.Miss(claim=False)
    assert decide.after_lookup(in_progress, head=True, claims=True, hedge_delay=0.02) == decide.Follow(
        tuple(in_progress), 0.02, claim_on_failure=False
    )
    assert decide.unclaimed([], 0.02) == decide.Miss(claim=True)
    assert decide.unclaimed(in_progress, 0.02) == decide.Follow(tuple(in_progress), 0.02, claim_on_failure=True)


def test_complete_holders_come_first_then_least_loaded_then_most_available() -> None:
    holders = [
        Holder("a:1", KeyState.IN_PROGRESS, available=10),
        Holder("b:1", KeyState.IN_PROGRESS, available=500),
        Holder("c:1"),
        Holder("d:1"),
    ]
    ordered = decide.order_holders(holders, {"c:1": 2, "d:1": 0})
    assert [h.address for h in ordered] == ["d:1", "c:1", "b:1", "a:1"]


def test_equal_holders_are_spread_by_the_rotation() -> None:
    holders = [Holder("a:1"), Holder("b:1"), Holder("c:1")]
    firsts = [decide.order_holders(holders, {}, rotation)[0].address for rotation in range(6)]
    assert firsts == ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1"]
    assert decide.order_holders(holders, {"b:1": 1}, 1)[0].address == "c:1"


@settings(deadline=None)  # the machine is shared: time is not what these test
@given(st.lists(st.integers(0, 5), min_size=1, max_size=8), st.integers(0, 20))
def test_holder_order_is_a_permutation_with_the_least_loaded_complete_holder_first(
    loads: list[int], rotation: int
) -> None:
    holders = [Holder(f"h{i}:1") for i in range(len(loads))]
    load = {h.address: n for h, n in zip(holders, loads, strict=True)}
    ordered = decide.order_holders(holders, load, rotation)
    assert sorted(h.address for h in ordered) == sorted(load)
    assert [load[h.address] for h in ordered] == sorted(loads)


def test_resume_skips_the_holders_that_failed() -> None:
    holders = [Holder("a:1"), Holder("b:1"), Holder("c:1")]
    assert decide.resume_candidates(holders, {"a:1", "c:1"}) == [Holder("b:1")]
    assert decide.resume_candidates(holders, {"a:1", "b:1", "c:1"}) == []


def test_hedge_delay_is_the_clamped_p80_once_there_are_enough_samples() -> None:
    tracker = decide.LatencyTracker(initial=0.02, minimum=0.002, maximum=0.5)
    assert tracker.hedge_delay() == 0.02
    for ms in range(1, 11):  # 1..10 ms
        tracker.observe(ms / 1000)
    assert tracker.hedge_delay() == 0.008
    for _ in range(200):
        tracker.observe(3.0)
    assert tracker.hedge_delay() == 0.5
    assert decide.hedge_delay([0.0001] * 20, 0.02, 0.002, 0.5) == 0.002


@settings(deadline=None, max_examples=60)
@given(st.integers(2, 200), st.integers(1, 8))
def test_a_fanout_tree_gives_every_claimant_at_most_fanout_followers_and_log_depth(nodes: int, fanout: int) -> None:
    """Every node sees every claim: the followers form a `fanout`-ary tree over the claim order, rooted at the
    first claimant (the only one that goes upstream)."""
    claims = [claimant(f"n{i:03d}", i * 0.001) for i in range(nodes)]
    parent: dict[str, str] = {}
    for me in claims:
        decision = decide.after_claim(
            [c for c in claims if c is not me], decide.claim_order(me), retries=3, fanout=fanout
        )
        if isinstance(decision, decide.Follow):
            parent[me.peer] = decision.holders[0].peer
            assert all(decide.claim_order(h) < decide.claim_order(me) for h in decision.holders)
    assert len(parent) == nodes - 1  # all but the first follow someone
    children: dict[str, int] = {}
    for p in parent.values():
        children[p] = children.get(p, 0) + 1
    assert max(children.values()) <= fanout
    depth = 0
    for name in parent:
        hops = 0
        while name in parent:
            name, hops = parent[name], hops + 1
        depth = max(depth, hops)
    assert depth <= (nodes - 1 if fanout == 1 else math.ceil(math.log(nodes * (fanout - 1) + 1, fanout)))


def test_fanout_one_is_the_chain_and_fanout_must_be_positive() -> None:
    found = [claimant("a", 1.0), claimant("b", 2.0), claimant("c", 3.0)]
    chain, tree = (decide.after_claim(found, (4.0, "d"), retries=3, fanout=k) for k in (1, 2))
    assert isinstance(chain, decide.Follow) and isinstance(tree, decide.Follow)
    assert [h.peer for h in chain.holders] == ["c", "b", "a"]  # the claimant just before, then the others
    assert [h.peer for h in tree.holders] == ["b", "c", "a"]  # d is 4th: its parent in a binary tree is b
    with pytest.raises(ValueError):
        decide.after_claim(found, (4.0, "d"), retries=3, fanout=0)


def test_a_pull_keeps_the_time_of_its_first_request_while_requests_keep_coming() -> None:
    pulls = decide.PullStarts(idle=10.0)
    assert pulls.started("team/app", 100.0) == 100.0
    assert pulls.started("team/app", 108.0) == 100.0  # within the idle time of the last request
    assert pulls.started("team/app", 117.0) == 100.0  # 9 s after the last one: still the same pull
    assert pulls.started("team/other", 118.0) == 118.0  # each repository has its own pull
    assert pulls.started("team/app", 130.0) == 130.0  # 13 s idle: a new pull
    assert pulls.started("team/app", 129.0) == 130.0  # a request timed before the last one changes nothing


def test_pull_starts_keep_the_most_recently_asked_repositories() -> None:
    pulls = decide.PullStarts(idle=60.0, max_entries=2)
    pulls.started("a", 1.0)
    pulls.started("b", 2.0)
    pulls.started("a", 3.0)  # a is now the most recent
    pulls.started("c", 4.0)  # b is dropped
    assert (pulls.started("a", 5.0), pulls.started("b", 6.0)) == (1.0, 6.0)


def test_a_node_is_led_in_a_pull_once_a_blob_comes_from_peers_and_it_is_first_for_none() -> None:
    pulls = decide.PullStarts(idle=10.0)
    pulls.started("team/app", 100.0)
    assert not pulls.led("team/app") and pulls.rank("team/app", 100.5) == 100.0  # ranked by the pull's start
    pulls.decided("team/app", first=False)  # the config comes from a peer
    assert pulls.led("team/app")
    assert pulls.rank("team/app", 101.0) == 101.0  # ranked by the claim's time: behind the leader's claims
    assert not pulls.led("team/other")  # each repository has its own pull
    pulls.decided("team/app", first=True)  # once it is a first claimant, it leads too
    assert not pulls.led("team/app") and pulls.rank("team/app", 102.0) == 100.0
    pulls.started("team/app", 113.0)  # 11 s idle: a new pull, led by no one yet
    assert not pulls.led("team/app")


def test_a_manifest_asked_for_after_the_pull_s_blobs_begins_the_next_pull() -> None:
    pulls = decide.PullStarts(idle=60.0)
    pulls.started("team/app", 100.0, manifest=True)  # resolving the tag
    assert pulls.started("team/app", 100.1, manifest=True) == 100.0  # the platform's manifest: the same pull
    pulls.started("team/app", 100.2)  # the config
    pulls.decided("team/app", first=False)  # from a peer: led
    assert pulls.started("team/app", 101.0) == 100.0 and pulls.led("team/app")  # a layer: still the same pull
    assert pulls.started("team/app", 105.0, manifest=True) == 105.0  # the next image: a pull of its own
    assert not pulls.led("team/app")  # led by no one yet
    assert pulls.started("team/app", 105.1) == 105.0


def test_a_leader_is_the_config_s_first_claimant() -> None:
    pulls = decide.PullStarts()
    pulls.started("team/app", 5.0)
    pulls.decided("team/app", first=True)  # the config: this node downloads it upstream
    pulls.decided("team/app", first=False)  # a layer another node claimed first
    assert not pulls.led("team/app")
    pulls.decided("gone/app", first=False)  # a pull it does not know of: nothing to note
    assert not pulls.led("gone/app")


@pytest.mark.parametrize(
    "holders, led, defers",
    [
        ([], True, True),  # nobody has claimed it: the leader will
        ([], False, False),  # a leader (or a node in no pull) claims at once
        ([Holder("b:5000", KeyState.IN_PROGRESS, since=1.0, peer="b")], True, False),  # someone claimed: claim behind
        ([Holder("b:5000")], True, False),
    ],
)
def test_a_led_node_defers_only_the_claims_nobody_made_yet(holders: list[Holder], led: bool, defers: bool) -> None:
    assert decide.defer_claim(holders, led) is defers


@pytest.mark.parametrize("idle, entries", [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_pull_starts_refuse_bounds_that_keep_nothing(idle: float, entries: int) -> None:
    with pytest.raises(ValueError):
        decide.PullStarts(idle=idle, max_entries=entries)


def test_a_404_waits_for_the_earlier_requests_of_its_pull() -> None:
    order = decide.MissOrder()
    first, second, third = (order.ask("team/app") for _ in range(3))
    other = order.ask("team/other")
    assert order.decided("team/app", third, miss=True) == []  # first and second are undecided
    assert order.decided("team/other", other, miss=True) == [other]  # another pull: its own order
    assert order.decided("team/app", second, miss=True) == []  # still behind first
    assert order.decided("team/app", first, miss=False) == [second, third]  # following peers is never held
    assert len(order) == 0  # nothing in progress is kept


def test_a_404_is_sent_at_once_when_every_earlier_request_is_decided() -> None:
    order = decide.MissOrder()
    first, second = order.ask("p"), order.ask("p")
    assert order.decided("p", first, miss=True) == [first]  # a later request never holds an earlier one back
    assert order.decided("p", first, miss=True) == []  # decided once
    assert order.decided("p", second, miss=True) == [second]


def test_a_request_that_is_gone_holds_no_404_back() -> None:
    order = decide.MissOrder()
    cancelled, waiting = order.ask("p"), order.ask("p")
    assert order.decided("p", waiting, miss=True) == []
    assert order.forget("p", cancelled) == [waiting]
    assert order.forget("p", waiting) == [] and len(order) == 0
    held_then_gone = order.ask("p")
    later = order.ask("p")
    order.decided("p", later, miss=True)
    order.forget("p", later)  # the held 404's client went away
    assert order.decided("p", held_then_gone, miss=True) == [held_then_gone]
    assert len(order) == 0


@settings(deadline=None)  # the machine is shared: time is not what these test
@given(st.permutations(range(6)), st.lists(st.booleans(), min_size=6, max_size=6))
def test_404s_go_out_in_request_order_and_none_is_lost(decided_in: list[int], misses: list[bool]) -> None:
    order = decide.MissOrder()
    tickets = [order.ask("p") for _ in range(6)]
    sent: list[int] = []
    decided: set[int] = set()
    for index in decided_in:
        released = order.decided("p", tickets[index], miss=misses[index])
        decided.add(index)
        for ticket in released:  # every earlier request was decided when a 404 goes out
            assert all(i in decided for i in range(tickets.index(ticket)))
        sent += released
    assert sent == [t for t, miss in zip(tickets, misses, strict=True) if miss]  # all of them, in order
    assert len(order) == 0
