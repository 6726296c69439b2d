"""The announcement protocol's frames and messages (State, Delta, Want, each State and Delta naming its origin and
sequence): round trips through any chunking of the stream, bad input refused with ProtocolError, the coalescing of
pending changes, splitting a large Delta, and the claim frames."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spegel.routing.base import KeyState
from spegel.routing.index import Announcement
from spegel.routing.keys import MAX_KEY_LENGTH
from spegel.routing.libp2p import messages
from spegel.routing.libp2p.messages import (
    MAX_ADDRS,
    MAX_ENTRIES,
    MAX_STATE_KEYS,
    MAX_TEXT,
    Delta,
    Departure,
    FrameDecoder,
    Message,
    PendingChanges,
    ProtocolError,
    State,
    Want,
    decode,
    encode,
    split,
)
from spegel.routing.overlay import Sequence

DIGEST = "sha256:" + "ab" * 32
COUNTER_LIMIT = 2**63  # a sequence's parts are below this

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
peer_ids = st.text(max_size=20)
counters = st.integers(min_value=0, max_value=COUNTER_LIMIT - 1)
sequences = st.builds(Sequence, counters, counters)
departures = st.builds(Departure, peer_ids, sequences)
peer_lists = st.lists(peer_ids, max_size=3).map(tuple)
states = st.builds(
    State,
    origin=peer_ids,
    sequence=sequences,
    registry=st.text(max_size=30),
    listen=st.lists(st.text(max_size=30), max_size=3).map(tuple),
    links=peer_lists,
    keys=st.lists(announcements, max_size=5).map(tuple),
)
deltas = st.builds(
    Delta,
    origin=peer_ids,
    sequence=sequences,
    added=st.lists(announcements, max_size=5).map(tuple),
    withdrawn=st.lists(keys, max_size=5).map(tuple),
    links=st.none() | peer_lists,
    gone=st.lists(departures, max_size=3).map(tuple),
)
wants = st.builds(Want, st.lists(peer_ids, max_size=4).map(tuple))


@settings(deadline=None)
@given(st.lists(states | deltas | wants, min_size=1, max_size=4), st.integers(min_value=1, max_value=50))
def test_messages_round_trip_through_any_chunking_of_the_stream(sent: list[Message], chunk: int) -> None:
    wire = b"".join(encode(m) for m in sent)
    decoder = FrameDecoder()
    got: list[Message] = []
    for start in range(0, len(wire), chunk):
        decoder.feed(wire[start : start + chunk])
        got.extend(decode(frame) for frame in decoder.frames())
    assert got == sent
    assert decoder.pending == 0


def test_a_delta_with_no_links_differs_from_one_linked_to_nobody() -> None:
    unchanged = Delta("peer-a", Sequence(1, 2))
    alone = Delta("peer-a", Sequence(1, 2), links=())
    assert decode(encode(unchanged)[4:]) == unchanged
    assert decode(encode(alone)[4:]) == alone


def test_an_oversized_frame_is_refused() -> None:
    decoder = FrameDecoder(max_frame=10)
    decoder.feed(b"\x00\x00\x00\x0b" + b"x" * 11)
    with pytest.raises(ProtocolError, match="exceeds"):
        list(decoder.frames())


# Valid bodies that the bad cases below change in one field (MISSING: the field left out).
MISSING = object()
VALID_STATE: dict[str, object] = {
    "type": "state",
    "origin": "peer-a",
    "seq": [1796197891000000000, 0],
    "registry": "10.0.0.1:5000",
    "listen": ["/ip4/10.0.0.1/tcp/5001"],
    "links": ["peer-b"],
    "keys": [["k", "c"]],
}
VALID_DELTA: dict[str, object] = {
    "type": "delta",
    "origin": "peer-a",
    "seq": [1796197891000000000, 1],
    "add": [["k", "p", 10, 1796197891.5]],
    "del": ["j"],
    "links": ["peer-b"],
    "gone": [["peer-c", 1796197890000000000, 7]],
}
VALID_WANT: dict[str, object] = {"type": "want", "origins": ["peer-a"]}


def _changed(valid: dict[str, object], changes: dict[str, object]) -> bytes:
    """`valid` with `changes` (a trailing underscore dropped from a name: `del_` is `del`) as a frame body."""
    body = {**valid, **{name.removesuffix("_"): value for name, value in changes.items()}}
    return json.dumps({name: value for name, value in body.items() if value is not MISSING}).encode()


def state(**changes: object) -> bytes:
    return _changed(VALID_STATE, changes)


def delta(**changes: object) -> bytes:
    return _changed(VALID_DELTA, changes)


def want(**changes: object) -> bytes:
    return _changed(VALID_WANT, changes)


def test_the_valid_bodies_the_bad_cases_start_from_decode() -> None:
    assert isinstance(decode(state()), State)
    assert decode(delta()) == Delta(
        "peer-a",
        Sequence(1796197891000000000, 1),
        (Announcement("k", KeyState.IN_PROGRESS, 10, 1796197891.5),),
        ("j",),
        ("peer-b",),
        (Departure("peer-c", Sequence(1796197890000000000, 7)),),
    )
    unchanged_links = decode(delta(links=MISSING))
    assert isinstance(unchanged_links, Delta) and unchanged_links.links is None
    assert decode(want()) == Want(("peer-a",))


def _bad(case: str, body: bytes) -> object:
    return pytest.param(body, id=case)


BAD_MESSAGES = [
    # Not a message at all.
    _bad("not utf-8", b"\xff\xfe"),
    _bad("not json", b"not json"),
    _bad("not an object", b"[]"),
    _bad("unknown type", b'{"type": "nope"}'),
    _bad("no type", delta(type=MISSING)),
    # Key entries.
    _bad("delta without del", delta(del_=MISSING)),
    _bad("delta without add", delta(add=MISSING)),
    _bad("unknown key state", delta(add=[["k", "x"]])),
    _bad("key state not text", delta(add=[["k", 1]])),
    _bad("negative available", delta(add=[["k", "p", -1]])),
    _bad("available a bool", delta(add=[["k", "p", True]])),
    _bad("available a float", delta(add=[["k", "p", 1.5]])),
    _bad("negative claim time", delta(add=[["k", "p", None, -1.5]])),
    _bad("claim time text", delta(add=[["k", "p", None, "now"]])),
    _bad("claim time infinite", delta(add=[["k", "p", None, float("inf")]])),
    _bad("claim time NaN", delta(add=[["k", "p", None, float("nan")]])),
    _bad("claim time a bool", delta(add=[["k", "p", None, True]])),
    _bad("entry of five", delta(add=[["k", "p", None, 1, 2]])),
    _bad("entry of one", delta(add=[["k"]])),
    _bad("entry not a list", delta(add=["k"])),
    _bad("empty key", delta(add=[["", "c"]])),
    _bad("add not a list", delta(add="k")),
    _bad("withdrawn key a number", delta(del_=[1])),
    _bad("withdrawn key empty", delta(del_=[""])),
    _bad("key with a newline", delta(add=[["k\n", "c"]])),
    _bad("key too long", delta(add=[["k" * (MAX_KEY_LENGTH + 1), "c"]])),
    _bad("tag with a bad digest", delta(add=[["a.io/b:c@sha256:nothex", "c"]])),
    _bad("state key bad", state(keys=[["k", "x"]])),
    # State fields.
    _bad("registry a number", state(registry=5)),
    _bad("registry too long", state(registry="a" * (MAX_TEXT + 1))),
    _bad("state without registry", state(registry=MISSING)),
    _bad("state without listen", state(listen=MISSING)),
    _bad("state without links", state(links=MISSING)),
    _bad("state without keys", state(keys=MISSING)),
    _bad("listen address a number", state(listen=[5])),
    _bad("listen not a list", state(listen="/ip4/10.0.0.1/tcp/5001")),
    _bad("state link a number", state(links=[5])),
    _bad("state links null", state(links=None)),
    _bad("delta links not a list", delta(links="peer-b")),
    _bad("delta link too long", delta(links=["p" * (MAX_TEXT + 1)])),
    # Origin.
    _bad("state without origin", state(origin=MISSING)),
    _bad("delta without origin", delta(origin=MISSING)),
    _bad("origin a number", delta(origin=5)),
    _bad("origin null", state(origin=None)),
    _bad("origin too long", delta(origin="p" * (MAX_TEXT + 1))),
    # Sequence.
    _bad("state without seq", state(seq=MISSING)),
    _bad("delta without seq", delta(seq=MISSING)),
    _bad("negative incarnation", delta(seq=[-1, 0])),
    _bad("negative number", delta(seq=[1, -1])),
    _bad("seq of bools", delta(seq=[True, False])),
    _bad("seq number a bool", state(seq=[1, True])),
    _bad("seq of floats", delta(seq=[1.0, 2.0])),
    _bad("seq of text", delta(seq=["1", "2"])),
    _bad("seq a number", delta(seq=5)),
    _bad("seq an object", delta(seq={"incarnation": 1, "number": 2})),
    _bad("seq null", state(seq=None)),
    _bad("seq of one", delta(seq=[1])),
    _bad("seq of three", delta(seq=[1, 2, 3])),
    _bad("seq empty", state(seq=[])),
    _bad("incarnation too large", delta(seq=[COUNTER_LIMIT, 0])),
    _bad("number too large", state(seq=[0, COUNTER_LIMIT])),
    _bad("number far too large", delta(seq=[0, 10**30])),
    # Departures.
    _bad("delta without gone", delta(gone=MISSING)),
    _bad("gone not a list", delta(gone="peer-c")),
    _bad("gone null", delta(gone=None)),
    _bad("departure not a list", delta(gone=["peer-c"])),
    _bad("departure of two", delta(gone=[["peer-c", 1]])),
    _bad("departure of four", delta(gone=[["peer-c", 1, 2, 3]])),
    _bad("departure with a seq list", delta(gone=[["peer-c", [1, 2]]])),
    _bad("departed peer a number", delta(gone=[[5, 1, 2]])),
    _bad("departed peer too long", delta(gone=[["p" * (MAX_TEXT + 1), 1, 2]])),
    _bad("departure negative", delta(gone=[["peer-c", 1, -2]])),
    _bad("departure a bool", delta(gone=[["peer-c", False, 2]])),
    _bad("departure too large", delta(gone=[["peer-c", COUNTER_LIMIT, 2]])),
    # Want.
    _bad("want without origins", want(origins=MISSING)),
    _bad("want origins not a list", want(origins="peer-a")),
    _bad("wanted origin a number", want(origins=[5])),
    # Oversized lists.
    _bad("too many added", delta(add=[["k", "c"]] * (MAX_ENTRIES + 1))),
    _bad("too many withdrawn", delta(del_=["k"] * (MAX_ENTRIES + 1))),
    _bad("too many delta links", delta(links=["p"] * (MAX_ENTRIES + 1))),
    _bad("too many state links", state(links=["p"] * (MAX_ENTRIES + 1))),
    _bad("too many departures", delta(gone=[["p", 1, 2]] * (MAX_ENTRIES + 1))),
    _bad("too many wants", want(origins=["p"] * (MAX_ENTRIES + 1))),
    _bad("too many listen addresses", state(listen=["/ip4/1.2.3.4/tcp/1"] * (MAX_ADDRS + 1))),
    _bad("too many state keys", state(keys=[["k", "c"]] * (MAX_STATE_KEYS + 1))),
]


@pytest.mark.parametrize("body", BAD_MESSAGES)
def test_bad_messages_raise_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(body)


def test_lists_at_their_limit_are_accepted() -> None:
    full = decode(delta(add=[["k", "c"]] * MAX_ENTRIES, gone=[["p", 1, 2]] * MAX_ENTRIES))
    assert isinstance(full, Delta) and len(full.added) == len(full.gone) == MAX_ENTRIES
    last = decode(state(seq=[COUNTER_LIMIT - 1, COUNTER_LIMIT - 1]))
    assert isinstance(last, State) and last.sequence == Sequence(COUNTER_LIMIT - 1, COUNTER_LIMIT - 1)


def test_pending_changes_coalesce_last_word_wins() -> None:
    pending = PendingChanges()
    assert not pending
    pending.add([Announcement("a", KeyState.IN_PROGRESS, 5), Announcement("b")])
    pending.withdraw(["a", "c"])
    pending.add([Announcement("c"), Announcement("b", KeyState.IN_PROGRESS, 7)])
    assert pending
    taken = pending.take("me", Sequence(3, 9), ["peer-b"])
    assert taken == Delta(
        "me", Sequence(3, 9), added=(Announcement("b", KeyState.IN_PROGRESS, 7), Announcement("c")), withdrawn=("a",)
    )
    assert not pending
    assert pending.take("me", Sequence(3, 10), ["peer-b"]) == Delta("me", Sequence(3, 10))


def test_pending_departures_survive_a_full_state_and_the_last_report_of_a_peer_wins() -> None:
    pending = PendingChanges()
    pending.add([Announcement("k")])
    pending.depart(Departure("gone", Sequence(1, 2)))
    pending.depart(Departure("gone", Sequence(1, 5)))
    pending.depart(Departure("left", Sequence(4, 0)))
    pending.links_changed = True
    pending.clear()  # a State carries the keys and links; departures are only ever in a Delta
    assert pending and not pending.links_changed
    assert pending.take("me", Sequence(1, 1), ["peer-b"]) == Delta(
        "me", Sequence(1, 1), gone=(Departure("gone", Sequence(1, 5)), Departure("left", Sequence(4, 0)))
    )
    assert not pending


def test_pending_changes_carry_the_links_only_when_they_changed() -> None:
    pending = PendingChanges()
    pending.add([Announcement("k")])
    assert pending.take("me", Sequence(1, 1), ["peer-b"]).links is None
    pending.links_changed = True
    assert pending  # a change of links alone is worth a Delta
    assert pending.take("me", Sequence(1, 2), ["peer-b", "peer-c"]) == Delta(
        "me", Sequence(1, 2), links=("peer-b", "peer-c")
    )
    assert not pending.links_changed and not pending
    pending.links_changed = True
    assert pending.take("me", Sequence(1, 3), []).links == ()  # linked to nobody now: an empty list, not "unchanged"


def test_a_tag_carries_the_digest_of_its_manifest() -> None:
    tag = Announcement("docker.io/library/nginx:latest", digest=DIGEST)
    message = Delta("peer-a", Sequence(1, 1), added=(tag,))
    frame = encode(message)
    assert f"nginx:latest@{DIGEST}".encode() in frame
    assert decode(frame[4:]) == message
    snapshot = State("peer-a", Sequence(1, 0), "10.0.0.1:5000", (), (), (tag,))
    assert decode(encode(snapshot)[4:]) == snapshot


def _apply(held: dict[str, Announcement], message: Delta) -> None:
    """`message` applied as a receiver does: additions, then withdrawals."""
    held.update((item.key, item) for item in message.added)
    for key in message.withdrawn:
        held.pop(key, None)


@settings(deadline=None)
@given(
    st.lists(announcements, max_size=30),
    st.lists(keys, max_size=30),
    st.none() | peer_lists,
    st.lists(departures, max_size=3).map(tuple),
    sequences.filter(lambda s: s.number < COUNTER_LIMIT - 100),
    st.integers(min_value=1, max_value=7),
)
def test_split_keeps_the_meaning_within_the_entry_limit_and_numbers_the_parts_on(
    added: list[Announcement],
    withdrawn: list[str],
    links: tuple[str, ...] | None,
    gone: tuple[Departure, ...],
    sequence: Sequence,
    entries: int,
) -> None:
    whole = Delta("peer-a", sequence, tuple(added), tuple(withdrawn), links, gone)
    parts = split(whole, entries)
    if len(added) <= entries and len(withdrawn) <= entries:
        assert parts == [whole]
    assert all(len(m.added) <= entries and len(m.withdrawn) <= entries for m in parts)
    assert [m.origin for m in parts] == ["peer-a"] * len(parts)
    assert [m.sequence for m in parts] == [
        Sequence(sequence.incarnation, sequence.number + i) for i in range(len(parts))
    ]
    assert (parts[0].links, parts[0].gone) == (links, gone)
    assert all(m.links is None and m.gone == () for m in parts[1:])
    assert [a for m in parts for a in m.added] == added
    assert [k for m in parts for k in m.withdrawn] == withdrawn
    in_one = {"unrelated": Announcement("unrelated")}
    in_parts = dict(in_one)
    _apply(in_one, whole)
    for part in parts:
        _apply(in_parts, part)
    assert in_parts == in_one


def test_split_makes_a_delta_too_large_to_decode_into_parts_that_decode() -> None:
    added = tuple(Announcement(f"sha256:{i:064x}") for i in range(MAX_ENTRIES + 1))
    whole = Delta("peer-a", Sequence(1, 5), added, withdrawn=("gone-key",))
    with pytest.raises(ProtocolError):
        decode(encode(whole)[4:])
    parts = split(whole)
    assert [decode(encode(part)[4:]) for part in parts] == parts
    assert [part.sequence for part in parts] == [
        Sequence(1, 5),
        Sequence(1, 6),
        Sequence(1, 7),
    ]  # 10000, 1, 1 withdrawn


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
