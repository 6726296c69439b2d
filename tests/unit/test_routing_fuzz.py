"""Fuzzing what a peer can send: announcement frames (well-formed, near-misses and junk, split anywhere) into the
decoder, the address checks, the overlay's origins and the holder index, as the router applies them. Nothing but
ProtocolError may come out, and nothing grows past its bound: the decoder's buffer, each origin's keys in the index
(a peer sends messages of other origins too: the ones it passes on).
The number of cases tried is printed (`pytest -s`)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from spegel.routing.base import KeyState
from spegel.routing.index import Announcement, HolderIndex
from spegel.routing.libp2p.addresses import AddressRefused, PeerAddressPolicy
from spegel.routing.libp2p.messages import (
    MAX_FRAME,
    Delta,
    Departure,
    FrameDecoder,
    ProtocolError,
    State,
    Want,
    decode,
    encode,
)
from spegel.routing.overlay import Origins, Sequence, Verdict

MAX_KEYS = 20
CASES = 500
PEER_IP = "10.0.0.7"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
valid_keys = st.sampled_from(["sha256:" + "a" * 64, "example.com/app:v1", "example.com/app:v1@sha256:" + "b" * 64])
keys = valid_keys | st.from_regex(r"sha256:[0-9a-f]{1,8}", fullmatch=True) | st.text(max_size=30)
entries = st.lists(
    st.one_of(
        st.tuples(valid_keys | keys, st.just("c")).map(list),
        st.tuples(valid_keys | keys, st.sampled_from(["c", "p", "x"])).map(list),
        st.tuples(keys, st.just("p"), st.integers(-1, 2**40), st.floats(-1, 1e10)).map(list),
        json_values,
    ),
    max_size=MAX_KEYS * 2,
)
addresses = st.sampled_from(
    [":5000", f"{PEER_IP}:5000", "10.0.0.8:5000", "127.0.0.1:18888/internal/admin?token=x#", "[::]:5000", "x"]
) | st.text(max_size=30)
multiaddrs = st.sampled_from(
    [f"/ip4/{PEER_IP}/tcp/5001", "/ip4/10.9.9.9/tcp/5001", "/dns4/evil/tcp/1", "/ip4/0.0.0.0/tcp/5001"]
) | st.text(max_size=30)
origins = st.sampled_from(["rogue", "rogue", "rogue", "other"]) | st.text(max_size=12)
counters = st.sampled_from([0, 1, 2, 2**63 - 1]) | st.integers(-1, 2**64)
raw_sequences = st.lists(counters, min_size=2, max_size=2) | json_values
links = st.lists(origins, max_size=3)
gone = st.lists(st.tuples(origins, counters, counters).map(list) | json_values, max_size=3)
states = st.fixed_dictionaries(
    {
        "type": st.just("state"),
        "origin": origins,
        "seq": raw_sequences,
        "registry": addresses,
        "listen": st.lists(multiaddrs, max_size=3),
        "links": links,
    },
    optional={"keys": entries},
)
deltas = st.fixed_dictionaries(
    {
        "type": st.just("delta"),
        "origin": origins,
        "seq": raw_sequences,
        "add": entries,
        "del": st.lists(keys, max_size=MAX_KEYS),
        "gone": gone,
    },
    optional={"links": links},
)
wants = st.fixed_dictionaries({"type": st.just("want"), "origins": st.lists(origins, max_size=3) | json_values})
announcements = st.builds(
    lambda number, tag, partial, available: Announcement(
        f"example.com/app:t{number}" if tag else f"sha256:{number:064x}",
        KeyState.IN_PROGRESS if partial and not tag else KeyState.COMPLETE,
        available if partial and not tag else None,
        digest=f"sha256:{number:064x}" if tag else None,
    ),
    st.integers(0, 2**256 - 1),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**40),
)
sequences = st.builds(Sequence, st.integers(0, 3), st.integers(0, 5))
well_formed = st.one_of(
    st.builds(
        State,
        origins,
        sequences,
        st.sampled_from([":5000", f"{PEER_IP}:5000", "0.0.0.0:5000"]) | addresses,
        st.lists(multiaddrs, max_size=3).map(tuple),
        st.lists(origins, max_size=3).map(tuple),
        st.lists(announcements, max_size=MAX_KEYS * 3).map(tuple),
    ),
    st.builds(
        Delta,
        origins,
        sequences,
        st.lists(announcements, max_size=MAX_KEYS * 3).map(tuple)
        | st.lists(announcements, min_size=MAX_KEYS).map(tuple),
        st.lists(valid_keys, max_size=5).map(tuple),
        st.none() | st.lists(origins, max_size=3).map(tuple),
        st.lists(st.builds(Departure, origins, sequences), max_size=2).map(tuple),
    ),
    st.builds(Want, st.lists(origins, max_size=3).map(tuple)),
)
bodies = st.one_of(
    well_formed.map(lambda m: encode(m)[4:]),
    well_formed.map(lambda m: encode(m)[4:]),
    states.map(lambda m: json.dumps(m).encode()),
    deltas.map(lambda m: json.dumps(m).encode()),
    wants.map(lambda m: json.dumps(m).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


def framed(body: bytes, lie: int) -> bytes:
    """`body` with its length prefix, `lie` bytes off (0: honest)."""
    return max(0, len(body) + lie).to_bytes(4, "big") + body


def apply(origins: Origins, index: HolderIndex, policy: PeerAddressPolicy, body: bytes, now: float) -> None:
    """One frame body from the peer "rogue" as the router handles it (see Libp2pRouter._handle and _apply): a
    message is applied to its origin's entries, only when new from that origin, and the registry address taken only
    from the origin itself."""
    message = decode(body)
    if isinstance(message, Want):
        return
    full = isinstance(message, State)
    if origins.accept(message.origin, message.sequence, full) is Verdict.OLD:
        return
    seen_ip = PEER_IP if message.origin == "rogue" else None
    if isinstance(message, State):
        with contextlib.suppress(AddressRefused):  # the router keeps the keys of an origin whose address it refuses
            index.set_address(message.origin, policy.registry_address(message.registry, seen_ip))
        for addr in message.listen:
            policy.may_dial(addr, set())
        origins.set_links(message.origin, message.links)
        index.replace(message.origin, message.keys, now)
    else:
        index.update(message.origin, message.added, now)
        index.remove(message.origin, message.withdrawn)
        if message.links is not None:
            origins.set_links(message.origin, message.links)
        for departure in message.gone:
            if departure.peer_id != "me" and origins.forget(departure.peer_id, departure.sequence):
                index.remove_peer(departure.peer_id)


def test_announcement_frames_from_a_hostile_peer() -> None:
    tried = {"cases": 0, "frames": 0, "refused": 0, "keys": 0}

    @settings(max_examples=CASES, deadline=None)
    @given(
        st.lists(st.tuples(bodies, st.sampled_from([0] * 12 + [-1, 1, 2**31])), min_size=1, max_size=6),
        st.integers(min_value=1, max_value=64),
    )
    def run(frames: list[tuple[bytes, int]], chunk: int) -> None:
        tried["cases"] += 1
        wire = b"".join(framed(body, lie) for body, lie in frames)
        decoder, index, policy = FrameDecoder(), HolderIndex(ttl=10, max_keys=MAX_KEYS), PeerAddressPolicy()
        origins = Origins("me")
        try:
            for start in range(0, len(wire), chunk):
                decoder.feed(wire[start : start + chunk])
                assert decoder.pending <= MAX_FRAME + 4 + chunk
                for body in decoder.frames():
                    tried["frames"] += 1
                    apply(origins, index, policy, body, now=float(tried["frames"]))
                    assert all(index.holds(origin) <= MAX_KEYS for origin in index.known_peers())
        except ProtocolError:
            tried["refused"] += 1  # the router drops the stream: nothing else happens
        tried["keys"] = max([tried["keys"], *(index.holds(origin) for origin in index.known_peers())])
        held = index.lookup("example.com/app:v1", 5, now=float(tried["frames"]))
        assert all(h.address == f"{PEER_IP}:5000" and h.state in KeyState for h in held)

    run()
    print(
        f"fuzz: {tried['cases']} cases, {tried['frames']} frames decoded, {tried['refused']} streams dropped, "
        f"at most {tried['keys']} keys held (limit {MAX_KEYS})"
    )
    assert tried["cases"] >= CASES // 2


def test_a_frame_announcing_many_keys_holds_at_most_the_limit() -> None:
    """The growth bound on its own: a peer's keys stay at the limit however many frames it sends."""
    index = HolderIndex(ttl=10, max_keys=MAX_KEYS)
    decoder = FrameDecoder()
    for number in range(5):
        added = [[f"sha256:{number * 1000 + i:064x}", "c"] for i in range(1000)]
        body: dict[str, Any] = {
            "type": "delta",
            "origin": "rogue",
            "seq": [1, number],
            "add": added,
            "del": [],
            "gone": [],
        }
        decoder.feed(framed(json.dumps(body).encode(), 0))
    for frame in decoder.frames():
        message = decode(frame)
        assert isinstance(message, Delta)
        index.update("rogue", message.added, now=0)
    assert index.holds("rogue") == MAX_KEYS and index.refused == 5 * 1000 - MAX_KEYS
