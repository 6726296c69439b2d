"""The announcement protocol's frames and messages: round trips, coalescing, and bad input."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spegel.routing.base import KeyState
from spegel.routing.index import Announcement
from spegel.routing.libp2p.messages import (
    Delta,
    FrameDecoder,
    PeerRecord,
    PendingChanges,
    ProtocolError,
    State,
    decode,
    encode,
)

announcements = st.builds(
    lambda key, partial, available, since: (
        Announcement(key, KeyState.IN_PROGRESS, available, since) if partial else Announcement(key)
    ),
    st.text(min_size=1, max_size=40),
    st.booleans(),
    st.none() | st.integers(min_value=0, max_value=2**50),
    st.none() | st.floats(min_value=0, max_value=4e9),
)
peer_records = st.builds(PeerRecord, st.text(max_size=10), st.lists(st.text(max_size=20), max_size=2).map(tuple))
states = st.builds(
    State,
    registry=st.text(max_size=30),
    listen=st.lists(st.text(max_size=30), max_size=3).map(tuple),
    peers=st.lists(peer_records, max_size=3).map(tuple),
    keys=st.lists(announcements, max_size=5).map(tuple),
)
deltas = st.builds(
    Delta,
    st.lists(announcements, max_size=5).map(tuple),
    st.lists(st.text(min_size=1), max_size=5).map(tuple),
    st.lists(peer_records, max_size=2).map(tuple),
)


@given(st.lists(states | deltas, min_size=1, max_size=4), st.integers(min_value=1, max_value=50))
def test_round_trip_through_any_split(messages: list, chunk: int) -> None:
    wire = b"".join(encode(m) for m in messages)
    decoder = FrameDecoder()
    got = []
    for start in range(0, len(wire), chunk):
        decoder.feed(wire[start : start + chunk])
        got.extend(decode(frame) for frame in decoder.frames())
    assert got == messages
    assert decoder.pending == 0


def test_oversized_frame_is_refused() -> None:
    decoder = FrameDecoder(max_frame=10)
    decoder.feed(b"\x00\x00\x00\x0b" + b"x" * 11)
    with pytest.raises(ProtocolError, match="exceeds"):
        list(decoder.frames())


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe",
        b"not json",
        b"[]",
        b'{"type": "nope"}',
        b'{"type": "delta", "add": []}',
        b'{"type": "delta", "add": [["k", "x"]], "del": []}',
        b'{"type": "delta", "add": [["k", "p", -1]], "del": []}',
        b'{"type": "delta", "add": [["k", "p", true]], "del": []}',
        b'{"type": "delta", "add": [["k", "p", null, -1.5]], "del": []}',
        b'{"type": "delta", "add": [["k", "p", null, "now"]], "del": []}',
        b'{"type": "delta", "add": [["k", "p", null, Infinity]], "del": []}',
        b'{"type": "delta", "add": [["k", "p", null, 1, 2]], "del": []}',
        b'{"type": "delta", "add": [["", "c"]], "del": []}',
        b'{"type": "delta", "add": "k", "del": []}',
        b'{"type": "delta", "add": [], "del": [1]}',
        b'{"type": "state", "registry": 5, "listen": [], "peers": [], "keys": []}',
        b'{"type": "state", "registry": "a:1", "listen": [], "peers": [["id"]], "keys": []}',
    ],
)
def test_bad_messages_raise_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(body)


def test_pending_changes_coalesce_last_word_wins() -> None:
    pending = PendingChanges()
    assert not pending
    pending.add([Announcement("a", KeyState.IN_PROGRESS, 5), Announcement("b")])
    pending.withdraw(["a", "c"])
    pending.add([Announcement("c")])
    assert pending
    assert pending.take() == Delta(added=(Announcement("b"), Announcement("c")), withdrawn=("a",))
    assert not pending
    assert pending.take() == Delta()


def test_pending_introductions_survive_a_full_state() -> None:
    pending = PendingChanges()
    pending.add([Announcement("k")])
    pending.introduce(PeerRecord("p", ("/ip4/10.0.0.1/tcp/5001",)))
    pending.introduce(PeerRecord("p", ("/ip4/10.0.0.2/tcp/5001",)))
    pending.clear()
    assert pending
    assert pending.take() == Delta(peers=(PeerRecord("p", ("/ip4/10.0.0.2/tcp/5001",)),))
