"""The announcement protocol's messages and framing (pure, no I/O).

Each node writes its own announcements to every peer on one long-lived stream (`ANNOUNCE_PROTOCOL`), as
length-prefixed frames: a 4-byte big-endian length, then a UTF-8 JSON object. Two kinds of message:

- `State`: everything the sender holds, its registry address, its listen addresses and the peers it knows
  (peer exchange). Sent first on every stream and again periodically; the receiver replaces what it knew.
- `Delta`: keys added (or changed state) and keys withdrawn since the previous message, and peers the sender
  has newly met (so a node that joins is introduced to everyone at once, not at the next `State`).

A key entry is `[key, state]`, then the available byte count and the claim time when known; a tag's key carries
the digest of its manifest appended (`registry/repository:tag@sha256:...`). Frames are bounded: at most
`MAX_FRAME` bytes and `MAX_ENTRIES` keys (added or withdrawn), peers and addresses each; `split` cuts a larger
message into a sequence that means the same (a `State`'s remaining keys follow in `Delta`s).
Any malformed or oversized frame raises `ProtocolError`; the reader then drops the stream, never the process.

The claim protocol (`CLAIM_PROTOCOL`, `spegel.routing.claims`) uses the same frames on a short stream: the
claimant sends `{"type": "claim", "key": KEY, "since": CLAIM_TIME}`, the key's owner answers
`{"type": "ahead", "peers": [...]}`, the peer ids of the claimants before it, first first.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from spegel.routing.base import KeyState
from spegel.routing.index import Announcement
from spegel.routing.keys import MAX_KEY_LENGTH, InvalidKey, split_tag_digest, with_digest

ANNOUNCE_PROTOCOL = "/spegel/announce/1.0.0"
CLAIM_PROTOCOL = "/spegel/claim/1.0.0"
MAX_FRAME = 4 * 1024 * 1024
MAX_ENTRIES = 10_000  # keys added, keys withdrawn, peers: each at most this many per frame
MAX_ADDRS = 16  # listen addresses of one peer
MAX_TEXT = 1024  # a registry address, a multiaddr, a peer id
_LENGTH = struct.Struct(">I")
_STATES = {"c": KeyState.COMPLETE, "p": KeyState.IN_PROGRESS}
_CODES = {state: code for code, state in _STATES.items()}


class ProtocolError(Exception):
    """A frame or message that does not follow the announcement protocol."""


@dataclass(frozen=True)
class PeerRecord:
    """A peer as known to the sender: its id (base58) and dialable multiaddrs (without `/p2p`)."""

    peer_id: str
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class State:
    registry: str
    listen: tuple[str, ...]
    peers: tuple[PeerRecord, ...]
    keys: tuple[Announcement, ...]


@dataclass(frozen=True)
class Delta:
    added: tuple[Announcement, ...] = ()
    withdrawn: tuple[str, ...] = ()
    peers: tuple[PeerRecord, ...] = ()


Message = State | Delta


def encode(message: Message) -> bytes:
    """One frame holding `message`."""
    if isinstance(message, State):
        body: dict[str, object] = {
            "type": "state",
            "registry": message.registry,
            "listen": list(message.listen),
            "peers": [[p.peer_id, list(p.addrs)] for p in message.peers],
            "keys": [_encode_announcement(a) for a in message.keys],
        }
    else:
        body = {
            "type": "delta",
            "add": [_encode_announcement(a) for a in message.added],
            "del": list(message.withdrawn),
            "peers": [[p.peer_id, list(p.addrs)] for p in message.peers],
        }
    return _frame(body)


def encode_claim(key: str, since: float) -> bytes:
    """The frame of a claim of `key` made at wall-clock time `since`."""
    return _frame({"type": "claim", "key": key, "since": since})


def decode_claim(data: bytes) -> tuple[str, float]:
    """The key a claim frame body names, and when it was claimed."""
    body = _body(data, "claim")
    since = body.get("since")
    if isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since):
        raise ProtocolError(f"bad claim time {_short(since)}")
    return _key(body.get("key")), float(since)


def encode_ahead(peers: Iterable[str]) -> bytes:
    """The frame of an owner's answer: the peer ids of the claimants ahead, first first."""
    return _frame({"type": "ahead", "peers": list(peers)})


def decode_ahead(data: bytes) -> tuple[str, ...]:
    """The peer ids an owner's answer names (at most `MAX_ENTRIES`)."""
    return tuple(_text(peer) for peer in _list(_body(data, "ahead").get("peers")))


def _frame(body: dict[str, object]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _LENGTH.pack(len(data)) + data


def _body(data: bytes, kind: str | None = None) -> dict[str, object]:
    """The JSON object in a frame body, of type `kind` when given."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("message is not an object")
    if kind is not None and body.get("type") != kind:
        raise ProtocolError(f"expected a {kind} message, got {_short(body.get('type'))}")
    return body


def split(message: Message, entries: int = MAX_ENTRIES) -> list[Message]:
    """`message` as messages of at most `entries` keys (and withdrawals) each, meaning the same in order."""
    if isinstance(message, State):
        first = State(message.registry, message.listen, message.peers, message.keys[:entries])
        return [
            first,
            *(Delta(added=message.keys[i : i + entries]) for i in range(entries, len(message.keys), entries)),
        ]
    if len(message.added) <= entries and len(message.withdrawn) <= entries:
        return [message]
    added = [message.added[i : i + entries] for i in range(0, len(message.added), entries)] or [()]
    withdrawn = [message.withdrawn[i : i + entries] for i in range(0, len(message.withdrawn), entries)]
    deltas: list[Message] = [Delta(added=chunk) for chunk in added]
    deltas += [Delta(withdrawn=chunk) for chunk in withdrawn]
    deltas[0] = Delta(added[0], (), message.peers)
    return deltas


def decode(data: bytes) -> Message:
    """The message in one frame body (without the length prefix)."""
    body = _body(data)
    kind = body.get("type")
    try:
        if kind == "state":
            return State(
                registry=_text(body["registry"]),
                listen=tuple(_text(a) for a in _list(body["listen"], MAX_ADDRS)),
                peers=tuple(_decode_peer(p) for p in _list(body["peers"])),
                keys=tuple(_decode_announcement(a) for a in _list(body["keys"])),
            )
        if kind == "delta":
            return Delta(
                added=tuple(_decode_announcement(a) for a in _list(body["add"])),
                withdrawn=tuple(_key(k) for k in _list(body["del"])),
                peers=tuple(_decode_peer(p) for p in _list(body.get("peers", []))),
            )
    except KeyError as exc:
        raise ProtocolError(f"{kind} message lacks {exc}") from None
    raise ProtocolError(f"unknown message type {kind!r}")


class FrameDecoder:
    """Splits a byte stream into frame bodies. Feed bytes as they arrive, then iterate `frames()`."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> Iterator[bytes]:
        """The complete frame bodies received so far; raises ProtocolError for an oversized frame."""
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > self._max_frame:
                raise ProtocolError(f"frame of {length} bytes exceeds the {self._max_frame}-byte limit")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                return
            body = bytes(self._buffer[_LENGTH.size : end])
            del self._buffer[:end]
            yield body

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)


@dataclass
class PendingChanges:
    """Changes not yet sent to one peer, coalesced: the last word on each key (and on each peer) wins."""

    _changes: dict[str, Announcement | None] = field(default_factory=dict)
    _peers: dict[str, PeerRecord] = field(default_factory=dict)

    def add(self, announcements: Iterable[Announcement]) -> None:
        for item in announcements:
            self._changes[item.key] = item

    def withdraw(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._changes[key] = None

    def introduce(self, peer: PeerRecord) -> None:
        self._peers[peer.peer_id] = peer

    def clear(self) -> None:
        """Forget the pending key changes (a full State is about to carry them); introductions stay."""
        self._changes.clear()

    def __bool__(self) -> bool:
        return bool(self._changes or self._peers)

    def take(self) -> Delta:
        """The pending changes as one Delta; nothing is pending afterwards."""
        added = tuple(item for item in self._changes.values() if item is not None)
        withdrawn = tuple(key for key, item in self._changes.items() if item is None)
        peers = tuple(self._peers.values())
        self._changes.clear()
        self._peers.clear()
        return Delta(added, withdrawn, peers)


def _encode_announcement(item: Announcement) -> list[object]:
    """`[key, state]`, then `available` (null when unknown) and `since`, when either is known."""
    entry: list[object] = [with_digest(item.key, item.digest), _CODES[item.state]]
    if item.available is not None or item.since is not None:
        entry.append(item.available)
    if item.since is not None:
        entry.append(item.since)
    return entry


def _decode_announcement(raw: object) -> Announcement:
    if not isinstance(raw, list) or len(raw) not in (2, 3, 4):
        raise ProtocolError(f"bad key entry {_short(raw)}")
    state = _STATES.get(raw[1]) if isinstance(raw[1], str) else None
    if state is None:
        raise ProtocolError(f"bad key state {_short(raw[1])}")
    available = raw[2] if len(raw) >= 3 else None
    if available is not None and (not isinstance(available, int) or isinstance(available, bool) or available < 0):
        raise ProtocolError(f"bad available byte count {_short(available)}")
    since = raw[3] if len(raw) == 4 else None
    if since is not None and (
        not isinstance(since, int | float) or isinstance(since, bool) or not 0 <= since < math.inf
    ):
        raise ProtocolError(f"bad claim time {_short(since)}")
    try:
        key, digest = split_tag_digest(_key(raw[0]))
    except InvalidKey as exc:
        raise ProtocolError(str(exc)) from None
    return Announcement(key, state, available, since, digest)


def _decode_peer(raw: object) -> PeerRecord:
    if not isinstance(raw, list) or len(raw) != 2:
        raise ProtocolError(f"bad peer entry {_short(raw)}")
    return PeerRecord(_text(raw[0]), tuple(_text(a) for a in _list(raw[1], MAX_ADDRS)))


def _key(raw: object) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_KEY_LENGTH or not raw.isprintable():
        raise ProtocolError(f"bad key {_short(raw)}")
    return raw


def _text(raw: object) -> str:
    if not isinstance(raw, str) or len(raw) > MAX_TEXT:
        raise ProtocolError(f"expected text, got {_short(raw)}")
    return raw


def _list(raw: object, limit: int = MAX_ENTRIES) -> list[object]:
    if not isinstance(raw, list):
        raise ProtocolError(f"expected a list, got {_short(raw)}")
    if len(raw) > limit:
        raise ProtocolError(f"list of {len(raw)} entries exceeds the limit of {limit}")
    return raw


def _short(raw: object) -> str:
    """`raw` for an error message, cut short (a peer's junk can be megabytes)."""
    text = repr(raw)
    return text if len(text) <= 100 else text[:100] + "..."
