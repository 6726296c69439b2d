"""The announcement protocol's messages and framing (pure, no I/O).

Each node writes to each of its overlay links (`spegel.routing.overlay`) on one long-lived stream
(`ANNOUNCE_PROTOCOL`), as length-prefixed frames: a 4-byte big-endian length, then a UTF-8 JSON object. A message
names its origin (a peer id) and its place among the origin's messages (`Sequence`), so that it can be passed on
from node to node. Three kinds:

- `State`: everything the origin holds, its registry address, its listen addresses and the peers it is linked to.
  The origin sends it on every new link and periodically; a node sends an origin's state when a link asks for
  it. The receiver replaces what it knew of the origin.
- `Delta`: keys the origin added (or whose state changed) and withdrew, its links when they changed, and the
  peers it found gone (`Departure`, each with the last message the origin had of it).
- `Want`: the origins whose state the sender asks this link for (it missed messages of theirs). Not passed on.
- `Have`: the last message the sender has of every origin it knows, sent on a new link; the link asks for the
  states it lacks with a `Want`. Not passed on.

A key entry is `[key, state]`, then the available byte count and the claim time when known; a tag's key carries
the digest of its manifest appended (`registry/repository:tag@sha256:...`). Frames are bounded: at most
`MAX_FRAME` bytes, `MAX_ENTRIES` keys (added or withdrawn), links, departures, wants and haves each, a State at most
`MAX_STATE_KEYS` keys; `split` cuts a larger Delta into consecutive ones that mean the same.
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
from spegel.routing.overlay import Sequence

ANNOUNCE_PROTOCOL = "/spegel/announce/2.0.0"
CLAIM_PROTOCOL = "/spegel/claim/1.0.0"
MAX_FRAME = 8 * 1024 * 1024
MAX_ENTRIES = 10_000  # keys added, keys withdrawn, links, departures, wants: each at most this many per frame
MAX_STATE_KEYS = 50_000
MAX_ADDRS = 16  # listen addresses of one peer
MAX_TEXT = 1024  # a registry address, a multiaddr, a peer id
_LENGTH = struct.Struct(">I")
_STATES = {"c": KeyState.COMPLETE, "p": KeyState.IN_PROGRESS}
_CODES = {state: code for code, state in _STATES.items()}


class ProtocolError(Exception):
    """A frame or message that does not follow the announcement protocol."""


@dataclass(frozen=True)
class Departure:
    """A peer its reporter found gone, and the last message of it the reporter had."""

    peer_id: str
    sequence: Sequence


@dataclass(frozen=True)
class State:
    origin: str
    sequence: Sequence
    registry: str
    listen: tuple[str, ...]
    links: tuple[str, ...]
    keys: tuple[Announcement, ...]


@dataclass(frozen=True)
class Delta:
    origin: str
    sequence: Sequence
    added: tuple[Announcement, ...] = ()
    withdrawn: tuple[str, ...] = ()
    links: tuple[str, ...] | None = None  # the origin's links, when they changed
    gone: tuple[Departure, ...] = ()


@dataclass(frozen=True)
class Want:
    origins: tuple[str, ...]


@dataclass(frozen=True)
class Have:
    """The last message the sender has of each of `origins` (those that changed lately)."""

    origins: tuple[tuple[str, Sequence], ...]


Message = State | Delta | Want | Have


def encode(message: Message) -> bytes:
    """One frame holding `message`."""
    body: dict[str, object]
    if isinstance(message, Want):
        return _frame({"type": "want", "origins": list(message.origins)})
    if isinstance(message, Have):
        entries = [[origin, sequence.incarnation, sequence.number] for origin, sequence in message.origins]
        return _frame({"type": "have", "origins": entries})
    if isinstance(message, State):
        body = {
            "type": "state",
            "registry": message.registry,
            "listen": list(message.listen),
            "links": list(message.links),
            "keys": [_encode_announcement(a) for a in message.keys],
        }
    else:
        body = {
            "type": "delta",
            "add": [_encode_announcement(a) for a in message.added],
            "del": list(message.withdrawn),
            "gone": [[g.peer_id, g.sequence.incarnation, g.sequence.number] for g in message.gone],
        }
        if message.links is not None:
            body["links"] = list(message.links)
    body["origin"] = message.origin
    body["seq"] = [message.sequence.incarnation, message.sequence.number]
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


def framed(body: bytes) -> bytes:
    """The frame of a frame body `FrameDecoder` gave (to pass it on as it came)."""
    return _LENGTH.pack(len(body)) + body


def _body(data: bytes, kind: str | None = None) -> dict[str, object]:
    """The JSON object in a frame body, of type `kind` when given."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, nesting beyond the stack
        raise ProtocolError(f"frame is not usable JSON: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise ProtocolError("message is not an object")
    if kind is not None and body.get("type") != kind:
        raise ProtocolError(f"expected a {kind} message, got {_short(body.get('type'))}")
    return body


def split(delta: Delta, entries: int = MAX_ENTRIES) -> list[Delta]:
    """`delta` as consecutive deltas (numbered on from its sequence) of at most `entries` keys added and withdrawn
    each, meaning the same in order."""
    if len(delta.added) <= entries and len(delta.withdrawn) <= entries:
        return [delta]
    added = [delta.added[i : i + entries] for i in range(0, len(delta.added), entries)] or [()]
    withdrawn = [delta.withdrawn[i : i + entries] for i in range(0, len(delta.withdrawn), entries)]
    parts: list[tuple[tuple[Announcement, ...], tuple[str, ...]]] = [(chunk, ()) for chunk in added]
    parts += [((), chunk) for chunk in withdrawn]
    first = delta.sequence
    return [
        Delta(
            delta.origin,
            Sequence(first.incarnation, first.number + i),
            add,
            withdraw,
            delta.links if i == 0 else None,
            delta.gone if i == 0 else (),
        )
        for i, (add, withdraw) in enumerate(parts)
    ]


def decode(data: bytes) -> Message:
    """The message in one frame body (without the length prefix)."""
    body = _body(data)
    kind = body.get("type")
    try:
        if kind == "want":
            return Want(tuple(_text(origin) for origin in _list(body["origins"])))
        if kind == "have":
            return Have(tuple(_origin_sequence(entry) for entry in _list(body["origins"])))
        if kind == "state":
            return State(
                origin=_text(body["origin"]),
                sequence=_sequence(body["seq"]),
                registry=_text(body["registry"]),
                listen=tuple(_text(a) for a in _list(body["listen"], MAX_ADDRS)),
                links=tuple(_text(peer) for peer in _list(body["links"])),
                keys=tuple(_decode_announcement(a) for a in _list(body["keys"], MAX_STATE_KEYS)),
            )
        if kind == "delta":
            links = body.get("links")
            return Delta(
                origin=_text(body["origin"]),
                sequence=_sequence(body["seq"]),
                added=tuple(_decode_announcement(a) for a in _list(body["add"])),
                withdrawn=tuple(_key(k) for k in _list(body["del"])),
                links=None if links is None else tuple(_text(peer) for peer in _list(links)),
                gone=tuple(Departure(*_origin_sequence(g)) for g in _list(body["gone"])),
            )
    except KeyError as exc:
        raise ProtocolError(f"{kind} message lacks {exc}") from None
    raise ProtocolError(f"unknown message type {_short(kind)}")


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
    """This node's changes not yet announced, coalesced: the last word on each key wins; departures and whether the
    links changed accumulate."""

    _changes: dict[str, Announcement | None] = field(default_factory=dict)
    _gone: dict[str, Departure] = field(default_factory=dict)
    links_changed: bool = False

    def add(self, announcements: Iterable[Announcement]) -> None:
        for item in announcements:
            self._changes[item.key] = item

    def withdraw(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._changes[key] = None

    def depart(self, departure: Departure) -> None:
        self._gone[departure.peer_id] = departure

    def clear(self) -> None:
        """Forget the pending key and link changes (a full State is about to carry them); departures stay."""
        self._changes.clear()
        self.links_changed = False

    def __bool__(self) -> bool:
        return bool(self._changes or self._gone or self.links_changed)

    def take(self, origin: str, sequence: Sequence, links: Iterable[str]) -> Delta:
        """The pending changes as one Delta of `origin` numbered `sequence` (with `links` if they changed); nothing
        is pending afterwards."""
        added = tuple(item for item in self._changes.values() if item is not None)
        withdrawn = tuple(key for key, item in self._changes.items() if item is None)
        gone = tuple(self._gone.values())[:MAX_ENTRIES]
        delta = Delta(origin, sequence, added, withdrawn, tuple(links) if self.links_changed else None, gone)
        self._changes.clear()
        for departure in gone:  # more than a frame holds wait for the next delta
            del self._gone[departure.peer_id]
        self.links_changed = False
        return delta


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


def _sequence(raw: object) -> Sequence:
    if not isinstance(raw, list) or len(raw) != 2 or not all(_counter(part) for part in raw):
        raise ProtocolError(f"bad sequence {_short(raw)}")
    return Sequence(raw[0], raw[1])


def _counter(raw: object) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 2**63


def _origin_sequence(raw: object) -> tuple[str, Sequence]:
    """`[origin, incarnation, number]`, as a departure and a `Have` entry are written."""
    if not isinstance(raw, list) or len(raw) != 3:
        raise ProtocolError(f"bad origin and sequence {_short(raw)}")
    return _text(raw[0]), _sequence(raw[1:])


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
