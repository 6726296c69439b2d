"""The announcement protocol's frames and messages: round trips, coalescing, and bad input."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spegel.routing.base import KeyState
from spegel.routing.index import Announcement
from spegel.routing.libp2p import messages
from spegel.routing.libp2p.messages import (
    Delta,
    FrameDecoder,
    PeerRecord,
    PendingChanges,
    ProtocolError,
    State,
    decode,
    encode,
    split,
)

DIGEST = "sha256:" + "ab" * 32
keys = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="@"), min_size=1, max_size=40)
tags = st.builds(
    lambda repo, tag, digest: Announcement(f"example.com/{repo}:{tag}", digest=f"sha256:{digest:064x}"),
    st.from_regex(r"[a-z0-9]{1,10}(/[a-z0-9]{1,10})?", fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}", fullmatch=True),
    st.integers(min_value=0, max_value=2**256 - 1),
)
announcements = tags | st.builds(
    lambda key, partial, available, since: (
        Announcement(key, KeyState.IN_PROGRESS, available, since) if partial else Announcement(key)
    ),
    keys,
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
    st.lists(keys, max_size=5).map(tuple),
    st.lists(peer_records, max_size=2).map(tuple),
)


@settings(deadline=None)
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
        b'{"type": "delta", "add": [["k\\n", "c"]], "del": []}',
        b'{"type": "delta", "add": [["' + b"k" * 513 + b'", "c"]], "del": []}',
        b'{"type": "delta", "add": [["a.io/b:c@sha256:nothex", "c"]], "del": []}',
        b'{"type": "delta", "add": [], "del": ["k"], "peers": [["id", ["/ip4/1.2.3.4/tcp/1"] ]]}'.replace(
            b'["/ip4/1.2.3.4/tcp/1"]', b"[" + b",".join([b'"/ip4/1.2.3.4/tcp/1"'] * 17) + b"]"
        ),
        b'{"type": "delta", "add": [], "del": [' + b",".join([b'"k"'] * 10_001) + b"]}",
        b'{"type": "state", "registry": "' + b"a" * 1025 + b'", "listen": [], "peers": [], "keys": []}',
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


def test_a_tag_carries_the_digest_of_its_manifest() -> None:
    tag = Announcement("docker.io/library/nginx:latest", digest=DIGEST)
    frame = encode(Delta(added=(tag,)))
    assert f"nginx:latest@{DIGEST}".encode() in frame
    assert decode(frame[4:]) == Delta(added=(tag,))


@settings(deadline=None)
@given(st.lists(announcements, max_size=30), st.lists(keys, max_size=30), st.integers(min_value=1, max_value=7))
def test_split_keeps_the_meaning_within_the_entry_limit(added: list, withdrawn: list, entries: int) -> None:
    peers = (PeerRecord("p", ("/ip4/10.0.0.1/tcp/5001",)),)
    state = State("10.0.0.1:5000", (), peers, tuple(added))
    first, *rest = split(state, entries)
    assert first == State("10.0.0.1:5000", (), peers, tuple(added[:entries]))
    assert all(isinstance(m, Delta) and not m.withdrawn and not m.peers for m in rest)
    assert [a for m in rest for a in m.added] == added[entries:]

    delta = Delta(tuple(added), tuple(withdrawn), peers)
    parts = split(delta, entries)
    assert all(len(m.added) <= entries and len(m.withdrawn) <= entries for m in parts)
    assert [a for m in parts for a in m.added] == added
    assert [k for m in parts for k in m.withdrawn] == withdrawn
    assert [p for m in parts for p in m.peers] == list(peers)


def test_claim_frames_round_trip_and_refuse_the_wrong_kind() -> None:
    key = "sha256:" + "ab" * 32
    (body,) = list(_frames(messages.encode_claim(key, 1796197891.75)))
    assert messages.decode_claim(body) == (key, 1796197891.75)
    (body,) = list(_frames(messages.encode_ahead(["peer-a", "peer-b"])))
    assert messages.decode_ahead(body) == ("peer-a", "peer-b")
    claims = (b'{"type":"claim","key":"k"}', b'{"type":"claim","key":"k","since":"1"}', b'{"type":"claim","since":1}')
    for bad in (b"[]", b'{"type":"ahead","peers":[]}', b'{"type":"claim","key":"","since":1}', b"\xff", *claims):
        with pytest.raises(ProtocolError):
            messages.decode_claim(bad)
    for bad in (b'{"type":"claim","key":"k"}', b'{"type":"ahead","peers":"x"}', b'{"type":"ahead","peers":[1]}'):
        with pytest.raises(ProtocolError):
            messages.decode_ahead(bad)


def _frames(data: bytes) -> list[bytes]:
    decoder = FrameDecoder()
    decoder.feed(data)
    return list(decoder.frames())
