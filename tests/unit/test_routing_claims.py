"""The claim order: one owner per key (rendezvous hashing) and its `ClaimBook`."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spegel.routing.base import Holder, KeyState
from spegel.routing.claims import ClaimBook, owner, placed

MEMBERS = [f"node-{i}" for i in range(12)]


def test_the_owner_is_the_same_whatever_order_the_members_come_in() -> None:
    for i in range(50):
        key = f"sha256:{i:064x}"
        assert owner(key, MEMBERS) == owner(key, list(reversed(MEMBERS))) == owner(key, set(MEMBERS))
    assert owner("sha256:" + "0" * 64, []) is None


def test_keys_spread_over_the_members_and_a_leaving_member_moves_only_its_own() -> None:
    keys = [f"sha256:{i:064x}" for i in range(1200)]
    before = {key: owner(key, MEMBERS) for key in keys}
    counts = collections.Counter(before.values())
    assert set(counts) == set(MEMBERS) and min(counts.values()) > 50  # 100 each on average
    after = {key: owner(key, MEMBERS[1:]) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert moved and all(before[key] == MEMBERS[0] for key in moved)


def test_claimants_are_told_who_came_before_them_and_keep_their_place() -> None:
    book = ClaimBook()
    assert book.claim("k", "a", 0.0) == []
    assert book.claim("k", "b", 0.1) == ["a"]
    assert book.claim("k", "c", 0.2) == ["a", "b"]
    assert book.claim("k", "b", 0.3) == ["a"]  # a second claim keeps the first place
    assert book.claim("other", "c", 0.3) == []  # keys are ordered apart


def test_a_key_is_forgotten_hold_seconds_after_its_last_claim() -> None:
    book = ClaimBook(hold=10.0)
    book.claim("k", "a", 0.0)
    book.claim("k", "b", 9.0)  # extends the record
    assert book.claim("k", "c", 18.0) == ["a", "b"]
    assert book.claim("k", "d", 28.5) == []  # 10.5 s after the last claim: a new order
    assert len(book) == 1


def test_the_book_is_bounded_in_entries_and_claimants() -> None:
    book = ClaimBook(max_entries=3, max_claimants=2)
    for i in range(5):
        book.claim(f"k{i}", "a", float(i))
    assert len(book) == 3
    assert book.claim("k0", "b", 5.0) == []  # k0 was dropped (least recently claimed): b comes first now
    book.claim("k4", "b", 6.0)  # 4 entries: the least recently claimed key goes
    assert len(book) == 2 and book.claim("k4", "c", 7.0) == ["a", "b"]  # beyond max_claimants: told all, not kept
    assert book.claim("k4", "d", 8.0) == ["a", "b"]
    with pytest.raises(ValueError):
        ClaimBook(hold=0)


@given(st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=60))
def test_every_claimant_sees_a_prefix_of_one_order(claimants: list[str]) -> None:
    book = ClaimBook()
    answers = {name: book.claim("k", name, float(t)) for t, name in enumerate(claimants)}
    first_seen = list(dict.fromkeys(claimants))
    for name, ahead in answers.items():
        assert ahead == first_seen[: first_seen.index(name)]


def test_placed_keeps_positions_and_leaves_out_unknown_claimants() -> None:
    addresses = {"a": "10.0.0.1:5000", "c": "10.0.0.3:5000"}
    order = placed(["a", "b", "c"], addresses.get)
    assert order.position == 3
    assert order.ahead == (
        Holder("10.0.0.1:5000", KeyState.IN_PROGRESS, since=0.0, peer="a"),
        Holder("10.0.0.3:5000", KeyState.IN_PROGRESS, since=2.0, peer="c"),
    )
    assert [h.since for h in order.ahead] == [0.0, 2.0] and [h.peer for h in order.ahead] == ["a", "c"]
