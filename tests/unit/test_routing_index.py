"""The holder index: announcements, snapshots, withdrawal, expiry and ranking."""

import pytest

from spegel.routing.base import Holder, KeyState
from spegel.routing.index import Announcement, HolderIndex, announcements, withdrawals

DONE = KeyState.COMPLETE
PART = KeyState.IN_PROGRESS


def index_with(*peers: str, ttl: float = 10.0) -> HolderIndex:
    index = HolderIndex(ttl)
    for peer in peers:
        index.set_address(peer, f"{peer}:5000")
    return index


def test_update_and_lookup() -> None:
    index = index_with("a", "b")
    index.update("a", [Announcement("k1"), Announcement("k2")], now=0)
    index.update("b", [Announcement("k1")], now=0)
    assert index.lookup("k1", 5, now=1) == [Holder("a:5000"), Holder("b:5000")]
    assert [h.peer for h in index.lookup("k1", 5, now=1)] == ["a", "b"]  # each holder's router name
    index.update("b", [Announcement("k9", KeyState.IN_PROGRESS, None, 12.5)], now=1)
    assert [h.since for h in index.lookup("k9", 5, now=1)] == [12.5]  # claim times kept with the state
    assert index.lookup("k2", 5, now=1) == [Holder("a:5000")]
    assert index.lookup("k3", 5, now=1) == []
    assert index.lookup("k1", 1, now=1) == [Holder("a:5000")]
    assert index.lookup("k1", 0, now=1) == []


def test_exclude_self_and_unknown_address() -> None:
    index = index_with("a")
    index.update("a", [Announcement("k")], now=0)
    index.update("nameless", [Announcement("k")], now=0)
    assert index.lookup("k", 5, now=0, exclude="a") == []
    assert index.lookup("k", 5, now=0) == [Holder("a:5000")]


def test_complete_first_then_most_bytes_then_preferred() -> None:
    index = index_with("a", "b", "c", "d")
    index.update("a", [Announcement("k", PART, 10)], now=0)
    index.update("b", [Announcement("k", PART, 500)], now=0)
    index.update("c", [Announcement("k", DONE)], now=0)
    index.update("d", [Announcement("k", DONE)], now=0)
    assert index.lookup("k", 4, now=0) == [
        Holder("c:5000"),
        Holder("d:5000"),
        Holder("b:5000", PART, 500),
        Holder("a:5000", PART, 10),
    ]
    assert index.lookup("k", 1, now=0, preferred={"d"}) == [Holder("d:5000")]


def test_state_changes_on_reannounce_and_complete_drops_available() -> None:
    index = index_with("a")
    index.update("a", [Announcement("k", PART, 7)], now=0)
    assert index.lookup("k", 1, now=0) == [Holder("a:5000", PART, 7)]
    index.update("a", [Announcement("k", DONE, 99)], now=0)
    assert index.lookup("k", 1, now=0) == [Holder("a:5000", DONE, None)]


def test_remove_and_forget() -> None:
    index = index_with("a", "b")
    index.update("a", [Announcement("k1"), Announcement("k2")], now=0)
    index.update("b", [Announcement("k1")], now=0)
    index.remove("a", ["k1", "never-held"])
    index.remove("stranger", ["k1"])
    assert index.lookup("k1", 5, now=0) == [Holder("b:5000")]
    index.forget("a")
    assert index.lookup("k2", 5, now=0) == []
    assert index.holds("a") == 0


def test_replace_is_a_full_snapshot() -> None:
    index = index_with("a")
    index.update("a", [Announcement("old"), Announcement("kept")], now=0)
    index.replace("a", [Announcement("kept"), Announcement("new")], now=0)
    assert index.lookup("old", 1, now=0) == []
    assert index.lookup("kept", 1, now=0) == [Holder("a:5000")]
    assert index.holds("a") == 2


def test_a_peers_entries_count_while_it_is_heard_from() -> None:
    index = index_with("a", "b", ttl=10)
    index.update("a", [Announcement("k")], now=0)
    index.update("b", [Announcement("k"), Announcement("old")], now=0)
    index.update("b", [Announcement("new")], now=8)  # hearing from b keeps all of b's entries alive
    assert index.lookup("k", 5, now=9.9) == [Holder("a:5000"), Holder("b:5000")]
    assert index.lookup("k", 5, now=10) == [Holder("b:5000")]
    assert index.lookup("old", 5, now=17) == [Holder("b:5000")]
    assert index.expire(now=10) == 1
    assert index.holds("a") == 0
    index.touch("b", now=15)
    assert index.heard("b", now=24.9) and not index.heard("b", now=25) and not index.heard("never", now=0)
    assert index.expire(now=24) == 0
    assert index.expire(now=25) == 3
    assert index.lookup("k", 5, now=25) == []


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HolderIndex(0)


def test_a_peer_holds_at_most_max_keys() -> None:
    index = HolderIndex(ttl=10, max_keys=3)
    index.set_address("a", "a:5000")
    assert index.update("a", [Announcement(f"k{i}") for i in range(5)], now=0) == 2
    assert index.holds("a") == 3 and index.refused == 2
    assert index.update("a", [Announcement("k0", KeyState.IN_PROGRESS, 1)], now=0) == 0  # a held key may change
    assert index.replace("a", [Announcement(f"n{i}") for i in range(4)], now=0) == 1
    assert index.holds("a") == 3 and index.refused == 3
    index.remove("a", ["n0"])
    assert index.update("a", [Announcement("n3")], now=0) == 0


def test_a_tag_holder_carries_the_announced_digest() -> None:
    index = index_with("a")
    index.update("a", [Announcement("example.com/app:v1", digest="sha256:" + "1" * 64)], now=0)
    [holder] = index.lookup("example.com/app:v1", 1, now=0)
    assert holder.digest == "sha256:" + "1" * 64


def test_remove_peer_drops_its_address_too() -> None:
    index = index_with("a", "b")
    index.update("a", [Announcement("k")], now=0)
    assert index.known_peers() == {"a", "b"}
    index.remove_peer("a")
    assert index.known_peers() == {"b"} and index.address("a") is None and index.lookup("k", 1, now=0) == []


def test_withdrawing_a_tag_named_with_an_older_digest_keeps_it() -> None:
    old, new = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    held = {item.key: item for item in announcements([f"example.com/app:v1@{new}", "sha256:x"], KeyState.COMPLETE)}
    assert withdrawals([f"example.com/app:v1@{old}"], held) == []
    assert withdrawals([f"example.com/app:v1@{new}", "example.com/app:v1", "sha256:x", "gone"], held) == [
        "example.com/app:v1",
        "sha256:x",
    ]


def test_heard_since() -> None:
    index = index_with("a")
    assert not index.heard_since("a", 0)
    index.touch("a", now=5)
    assert index.heard_since("a", 4) and not index.heard_since("a", 5)
