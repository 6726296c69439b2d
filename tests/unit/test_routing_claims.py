"""The claim order: one owner per key (rendezvous hashing) and its `ClaimBook`."""

from __future__ import annotations

import collections
import math

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


def claim(book: ClaimBook, key: str, claimant: str, now: float, since: float = math.inf) -> list[str]:
    """A claim whose place is final at once (no window, or after it)."""
    assert book.claim(key, claimant, now, since) == now
    return book.ahead(key, claimant, now)


def test_claimants_are_told_who_came_before_them_and_keep_their_place() -> None:
    book = ClaimBook(window=0)
    assert claim(book, "k", "a", 0.0) == []
    assert claim(book, "k", "b", 0.1) == ["a"]
    assert claim(book, "k", "c", 0.2) == ["a", "b"]
    assert claim(book, "k", "b", 0.3) == ["a"]  # a second claim keeps the first place
    assert claim(book, "other", "c", 0.3) == []  # keys are ordered apart


def test_claims_in_the_first_window_are_placed_by_claim_time_then_later_ones_as_they_arrive() -> None:
    book = ClaimBook(window=0.1)
    assert book.claim("k", "b", 10.0, since=5.02) == pytest.approx(10.1)  # arrives first, claimed second
    assert book.claim("k", "a", 10.05, since=5.01) == pytest.approx(10.1)
    assert book.claim("k", "c", 10.06, since=5.00) == pytest.approx(10.1)
    with pytest.raises(ValueError):
        book.ahead("k", "a", 10.09)  # not final yet
    assert [book.ahead("k", name, 10.1) for name in "cab"] == [[], ["c"], ["c", "a"]]
    assert claim(book, "k", "d", 10.2, since=4.0) == ["c", "a", "b"]  # after the window: by arrival
    assert claim(book, "k", "a", 10.3) == ["c"]


def test_a_key_is_forgotten_hold_seconds_after_its_last_claim() -> None:
    book = ClaimBook(hold=10.0, window=0)
    claim(book, "k", "a", 0.0)
    claim(book, "k", "b", 9.0)  # extends the record
    assert claim(book, "k", "c", 18.0) == ["a", "b"]
    assert claim(book, "k", "d", 28.5) == []  # 10.5 s after the last claim: a new order
    assert len(book) == 1


def test_the_book_is_bounded_in_entries_and_claimants() -> None:
    book = ClaimBook(window=0, max_entries=3, max_claimants=2)
    for i in range(5):
        claim(book, f"k{i}", "a", float(i))
    assert len(book) == 3
    assert claim(book, "k0", "b", 5.0) == []  # k0 was dropped (least recently claimed): b comes first now
    claim(book, "k4", "b", 6.0)  # 4 entries: the least recently claimed key goes
    assert len(book) == 2 and claim(book, "k4", "c", 7.0) == ["a", "b"]  # beyond max_claimants: told all, not kept
    assert claim(book, "k4", "d", 8.0) == ["a", "b"]
    with pytest.raises(ValueError):
        ClaimBook(hold=0)


@given(st.lists(st.tuples(st.sampled_from(MEMBERS), st.floats(0, 1)), min_size=1, max_size=60))
def test_every_claimant_sees_a_prefix_of_one_order(claims: list[tuple[str, float]]) -> None:
    book = ClaimBook(window=0.25)
    finals = {}
    for i, (name, since) in enumerate(claims):  # arriving over [0, 1): the first 0.25 s is the window
        finals[name] = book.claim("k", name, i / len(claims), since)
    answers = {name: book.ahead("k", name, 1.0) for name in finals}
    order = [*max(answers.values(), key=len), max(answers, key=lambda n: len(answers[n]))]
    assert sorted(order) == sorted(finals)
    for name, ahead in answers.items():
        assert ahead == order[: order.index(name)]


def test_placed_keeps_positions_and_leaves_out_unknown_claimants() -> None:
    addresses = {"a": "10.0.0.1:5000", "c": "10.0.0.3:5000"}
    order = placed(["a", "b", "c"], addresses.get)
    assert order.position == 3
    assert order.ahead == (
        Holder("10.0.0.1:5000", KeyState.IN_PROGRESS, since=0.0, peer="a"),
        Holder("10.0.0.3:5000", KeyState.IN_PROGRESS, since=2.0, peer="c"),
    )
    assert [h.since for h in order.ahead] == [0.0, 2.0] and [h.peer for h in order.ahead] == ["a", "c"]
