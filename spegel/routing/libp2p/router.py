"""The libp2p router: a holder index fed by direct announcement streams, backed by Kademlia provider records.

The fast path: every node links to a bounded number of others (`--router-degree` targets of its own, plus those
that pick it; see `spegel.routing.overlay`) and keeps one announcement stream open on each link
(`messages.ANNOUNCE_PROTOCOL`). It writes its own changes there, a burst of advertisements as one `Delta`, and its
whole `State` every `refresh` seconds (anti-entropy, and it keeps its entries alive everywhere); it passes the
messages of every other origin on along that origin's shortest-path tree over the overlay, so each message reaches
every node once; a new link first gets the node's state and the last message it has of every origin (the
peer asks for the states it lacks). Receivers keep a
`HolderIndex`; entries an origin stops refreshing expire after `ttl`. Lookups read the index (no I/O) and fall
back to the DHT only when it knows no holder, within the caller's timeout (the DHT search itself runs on in the
background: see workarounds). Bootstrapping to one node is enough: its states name every member, and each node
then dials its own targets and closes its bootstrap link.

Peers are untrusted (the private network key keeps strangers out; see docs/operations.md, Security): a peer's
registry address and the multiaddrs it passes on are checked (`addresses.PeerAddressPolicy`) before any connection
is made to them, and the host refuses every other dial; a peer holds at most `max_keys_per_peer` keys in the index;
a linked peer that disconnects, does not come back within `peer_grace` seconds and cannot be dialled then is
forgotten, keys and address, and every node is told so (`Departure`). A registry address or multiaddr passed on
by a relay (not announced by the origin itself on a link) must be in the peer networks or on a known cluster host.

The DHT: complete keys are provided (one key at a time, in the background, at most `provide_rate` a second, each
no sooner than `provide_delay` after it was advertised) and republished every `ttl / 2`; records expire `ttl`
after their last republish, so a vanished node ages out of both.
A node holding more than `provide_rate * ttl / 2` keys cannot keep all of them in the DHT: the announcement index
carries everything, the DHT is the backup for connected peers the index has not heard from.

`open_libp2p_router` runs it all; everything stops when its context exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.tools.anyio_service import background_trio_service

from spegel.routing import claims, overlay
from spegel.routing.base import ClaimOrder, Holder, KeyState
from spegel.routing.index import Announcement, HolderIndex, announcements, withdrawals
from spegel.routing.keys import key_multihash
from spegel.routing.libp2p import messages
from spegel.routing.libp2p.addresses import AddressRefused, IPAddress, Network, PeerAddressPolicy, with_host_multiaddr
from spegel.routing.libp2p.bootstrap import BootstrapError, Bootstrapper, backoff_delays
from spegel.routing.libp2p.host import build_host, close_host, connected_ips, learn_peer_id, restrict_dials
from spegel.routing.libp2p.workarounds import (
    DetachedCalls,
    quiet_dht_eof_warnings,
    relax_dht_server_limits,
    set_provider_record_ttl,
)
from spegel.routing.overlay import Sequence

log = logging.getLogger("spegel.routing")

ANNOUNCE = TProtocol(messages.ANNOUNCE_PROTOCOL)
CLAIM = TProtocol(messages.CLAIM_PROTOCOL)
CLAIM_REQUEST_LIMIT = 4096  # bytes of a claim frame: one key
CLAIM_READ_TIMEOUT = 5.0
SILENT_OWNER_SKIP = 30.0  # seconds a peer that did not answer a claim is not chosen as an owner
DIAL_TIMEOUT = 5.0
_KINDS: dict[type, str] = {
    messages.State: "state",
    messages.Delta: "delta",
    messages.Want: "want",
    messages.Have: "have",
}  # message type -> its label in the frame counters
WRITE_TIMEOUT = 10.0
READ_CHUNK = 256 * 1024
MAX_CONCURRENT_DIALS = 8
MAX_LINK_QUEUE = 32 * 1024 * 1024  # bytes queued for one link: beyond, the link starts over with the states
CHURN_WINDOW = 10.0  # seconds without a change after which the overlay graph counts as settled
HAVE_GRACE = 2.0  # seconds a newer message a link has may take to arrive along the tree before it is asked for
SETTLE_LINK = 5.0  # seconds a link this node dialled is kept at least (its states get through)
DIAL_RETRY = 10.0  # seconds before a target that could not be dialled is tried again
IDLE_CONNECTION = 30.0  # seconds a connection that is not a link is kept unused
PEERSTORE_TTL = 3600  # seconds an origin's listen addresses stay in the host's peer store
MAX_DHT_SEARCHES = 16
DHT_SEARCH_BOUND = 30.0
DHT_SEARCH_COUNT = 20


@dataclass(frozen=True)
class RouterSettings:
    """How the router runs. `refresh` (full State to every peer) defaults to a third of `ttl`; `rejoin` is how
    often bootstrap repeats (while unlinked); `networks` are the peer networks (see `addresses`); a linked peer is
    checked `peer_grace` seconds after it disconnects; `degree` is how many peers a node picks to link to. A complete
    key is provided in the DHT `provide_delay` seconds after it is advertised, not at once: every node has it from
    the announcement, and the walk a provide makes costs every peer it reaches CPU, which in a pull storm is the CPU
    the announcements need (a 12-node storm spent ~40 % of its mirrors' CPU in provides made while the image was
    still arriving; with a 30 s delay, the provides of the manifest and config, on disk in the first seconds,
    doubled the mirrors' CPU 30-38 s into a 44 s storm: reports/scale-12-provide)."""

    listen: multiaddr.Multiaddr
    key_pair: KeyPair
    bootstrapper: Bootstrapper
    psk: str | None = None
    ttl: float = 600.0
    refresh: float | None = None
    rejoin: float = 60.0
    dht: bool = True
    provide_rate: float = 1.0
    provide_delay: float = 120.0
    networks: tuple[Network, ...] = ()
    max_keys_per_peer: int = 50_000
    peer_grace: float = 10.0
    degree: int = 8

    @property
    def refresh_interval(self) -> float:
        return self.refresh if self.refresh is not None else self.ttl / 3

    @property
    def republish_interval(self) -> float:
        """DHT records are republished at half their TTL (a provide walks the DHT: costlier than a State)."""
        return self.ttl / 2

    @property
    def add_provider_limit(self) -> int:
        """ADD_PROVIDER messages one peer may send this node's DHT per 10 s: three times what a peer providing at
        `provide_rate` sends."""
        return max(10, math.ceil(3 * 10 * self.provide_rate))


class _Link:
    """One overlay link: the frames still to be written to the peer, in order."""

    def __init__(self, initiated: bool) -> None:
        self.initiated = initiated  # this node dialled it (and may close it when it is no longer a target)
        self.opened = trio.current_time()
        self.queue: deque[bytes] = deque()
        self.queued = 0  # bytes
        self.overflowed = False
        self.wake = trio.Event()
        self.cancel_scope = trio.CancelScope()

    def put(self, frame: bytes) -> None:
        """Queue `frame`; past `MAX_LINK_QUEUE` bytes the queue is dropped and the link starts over (the peer gets
        every origin's state again)."""
        if self.queued + len(frame) > MAX_LINK_QUEUE:
            self.overflowed = True
        else:
            self.queue.append(frame)
            self.queued += len(frame)
        self.wake.set()

    def restart(self, frames: Iterable[bytes]) -> None:
        """Drop what is queued and queue `frames` instead (a new stream starts with the states)."""
        self.queue.clear()
        self.queued = 0
        self.overflowed = False
        for frame in frames:
            self.put(frame)

    def take(self) -> bytes:
        frames = b"".join(self.queue)
        self.queue.clear()
        self.queued = 0
        return frames


class _ConnectionEvents(INotifee):
    """A swarm notifee that forwards (dis)connections to the router's task."""

    def __init__(self, send: trio.MemorySendChannel[tuple[bool, ID]]) -> None:
        self._send = send

    async def connected(self, network: object, conn: INetConn) -> None:
        await self._send.send((True, conn.muxed_conn.peer_id))

    async def disconnected(self, network: object, conn: INetConn) -> None:
        await self._send.send((False, conn.muxed_conn.peer_id))

    async def opened_stream(self, network: object, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: object, stream: INetStream) -> None:
        pass

    async def listen(self, network: object, addr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: object, addr: multiaddr.Multiaddr) -> None:
        pass


class Libp2pRouter:
    """A `Router` (see `spegel.routing.base`) on a running libp2p host. Made by `open_libp2p_router`."""

    def __init__(
        self,
        host: IHost,
        dht: KadDHT | None,
        settings: RouterSettings,
        registry_address: str,
        nursery: trio.Nursery,
    ) -> None:
        self.host = host
        self.peer_id = host.get_id()
        self.name = str(self.peer_id)
        self.dht = dht
        self._settings = settings
        self._registry_address = registry_address
        self._nursery = nursery
        self.index = HolderIndex(settings.ttl, settings.max_keys_per_peer)
        self.addresses = PeerAddressPolicy(settings.networks)
        self.origins = overlay.Origins(self.name)
        self.gaps = 0  # messages that skipped numbers of their origin (its state was asked for)
        self.frames = {"new": 0, "old": 0, "passed_on": 0, "want": 0, "have": 0}  # messages received and passed on
        # frames received by kind, and the CPU spent handling them (decoding, applying, passing on)
        self.handled = dict.fromkeys(_KINDS.values(), 0)
        self.handling_seconds = dict.fromkeys(_KINDS.values(), 0.0)
        self._sequence = Sequence(time.time_ns(), 0)
        self._pending = messages.PendingChanges()
        self._flush_wake = trio.Event()
        self._graph_version = -1
        self._graph_changed = -math.inf  # trio time the overlay graph last changed, as this node sees it
        self._snapshots: dict[str, tuple[Sequence, bytes]] = {}  # origin -> its state frame, at that sequence
        self._wanted: dict[str, float] = {}  # origin -> when its state was last asked for
        self._spoke_in_churn = False  # this node announced something while the overlay graph was changing
        self._lacking: dict[str, tuple[ID, Sequence, float]] = {}  # origin -> a link that has newer, what, since
        self._bootstrap_addrs: set[str] = set()  # the last bootstrap candidates (without /p2p): always dialable
        self._departed: dict[ID, float] = {}  # peers whose link went and that are not checked yet: when
        self._held: dict[str, Announcement] = {}
        self._links: dict[ID, _Link] = {}
        self._peer_addrs: dict[str, tuple[str, ...]] = {}  # origin -> its dialable listen multiaddrs
        self._dialing: set[ID] = set()
        self._dial_failed: dict[ID, float] = {}  # targets whose last dial failed: when to try again
        self.settled = False  # linked to every target and to no other peer it dialled
        self._targets: tuple[frozenset[str], frozenset[ID]] = (frozenset(), frozenset())  # members -> targets
        self._used: dict[ID, float] = {}  # connections that are not links: when last used
        self._probed: dict[str, ID] = {}  # bootstrap addresses without /p2p: who answered there last time
        self._dial_limiter = trio.CapacityLimiter(MAX_CONCURRENT_DIALS)
        self._alone = False
        self._changed = trio.Event()
        self._to_provide: dict[str, float] = {}  # key -> when it may be provided (trio clock)
        self._provide_wake = trio.Event()
        self._searches = DetachedCalls[list[PeerInfo]](nursery, MAX_DHT_SEARCHES, DHT_SEARCH_BOUND, [])
        self.claim_book = claims.ClaimBook()  # the claims of the keys this node owns
        self._silent_owners: dict[str, float] = {}  # peer -> until when it is not chosen as an owner

    # The Router contract.

    async def advertise(
        self,
        keys: Iterable[str],
        state: KeyState = KeyState.COMPLETE,
        available: int | None = None,
        since: float | None = None,
    ) -> None:
        items = announcements(keys, state, available, since)
        for item in items:
            key_multihash(item.key)  # refuse bad keys before anything is announced
        for item in items:
            self._held[item.key] = item
            if item.state is KeyState.COMPLETE:
                self._to_provide.setdefault(item.key, trio.current_time() + self._settings.provide_delay)
        self._pending.add(items)
        self._flush_wake.set()
        self._provide_wake.set()
        await trio.lowlevel.checkpoint()

    async def withdraw(self, keys: Iterable[str]) -> None:
        keys = withdrawals(keys, self._held)
        for key in keys:
            del self._held[key]
            self._to_provide.pop(key, None)
        self._pending.withdraw(keys)
        self._flush_wake.set()
        await trio.lowlevel.checkpoint()

    async def lookup(self, key: str, count: int, timeout: float) -> list[Holder]:
        """See `Router.lookup`. Answers from the index without yielding to other tasks; only when the index knows no
        holder and may be incomplete (a linked peer has not been heard from) does it wait for the DHT."""
        now = trio.current_time()
        deadline = now + timeout
        holders = self.index.lookup(key, count, now, preferred=self._link_names())
        if holders or self.dht is None or count <= 0 or self._index_complete(now):
            return holders
        try:
            multihash = key_multihash(key)
        except ValueError:
            return []
        store = self.dht.provider_store
        providers = await self._searches.wait(key, lambda: store.find_providers(multihash, DHT_SEARCH_COUNT), deadline)
        for info in providers:
            address = self.index.address(str(info.peer_id))
            if info.peer_id != self.peer_id and address is not None:
                holders.append(Holder(address, peer=str(info.peer_id)))
        return holders[:count]

    async def order_claim(self, key: str, timeout: float, since: float) -> ClaimOrder | None:
        """See `Router.order_claim`. The owner is chosen among this node and every member of the overlay whose
        registry address is known (`claims.owner`), leaving out for `SILENT_OWNER_SKIP` seconds a peer that failed to
        answer a claim (a frozen node costs one claim timeout, not one per blob it owns); when it is this node,
        the claim is recorded here without I/O, else the owner is asked directly (a connection of its own when the
        owner is not a link)."""
        now = trio.current_time()
        members = [
            name
            for name in self.origins.known
            if self.index.address(name) is not None and self._silent_owners.get(name, -math.inf) <= now
        ]
        owner = claims.owner(key, [self.name, *members])
        if owner == self.name or owner is None:
            ahead: tuple[str, ...] | list[str] | None = await claims.take_place(self.claim_book, key, self.name, since)
        else:
            ahead = None
            with trio.move_on_after(timeout):
                try:
                    ahead = await self._ask_owner(ID.from_base58(owner), key, since)
                except Exception as exc:  # the owner broke off, or answered nonsense
                    log.debug("claim of %s with %s failed: %s", key, owner, exc)
            if ahead is None:
                now = trio.current_time()
                self._silent_owners = {p: t for p, t in self._silent_owners.items() if t > now}
                self._silent_owners[owner] = now + SILENT_OWNER_SKIP
        if ahead is None:
            return None
        return claims.placed(ahead, self.index.address)

    async def _ask_owner(self, owner: ID, key: str, since: float) -> tuple[str, ...]:
        self._used[owner] = trio.current_time()
        stream = await self.host.new_stream(owner, [CLAIM])
        try:
            await stream.write(messages.encode_claim(key, since))
            return messages.decode_ahead(await _read_frame(stream, messages.MAX_FRAME))
        finally:
            await _reset(stream)

    async def _answer_claim(self, stream: INetStream) -> None:
        """Record the claim `stream`'s peer makes (for itself only: the peer is who the connection proves it is)
        and answer with the claimants ahead of it."""
        claimant = stream.muxed_conn.peer_id
        self._used[claimant] = trio.current_time()
        try:
            with trio.fail_after(CLAIM_READ_TIMEOUT):
                key, since = messages.decode_claim(await _read_frame(stream, CLAIM_REQUEST_LIMIT))
            key_multihash(key)  # refuse keys that are not Spegel's
            ahead = await claims.take_place(self.claim_book, key, str(claimant), since)
            with trio.fail_after(WRITE_TIMEOUT):
                await stream.write(messages.encode_ahead(ahead))
            await stream.close()
        except (messages.ProtocolError, ValueError) as exc:
            log.warning("refusing a claim from %s: %s", claimant, exc)
            await _reset(stream)
        except Exception as exc:
            log.debug("claim stream from %s ended: %s", claimant, exc)
            await _reset(stream)

    def ready(self) -> bool:
        if self._alone:
            return True
        return any(self.index.address(str(peer)) is not None for peer in self._links)

    # Introspection.

    def connected_peers(self) -> list[ID]:
        return list(self.host.get_connected_peers())

    def linked_peers(self) -> list[ID]:
        return list(self._links)

    def listen_addrs(self) -> list[str]:
        """This node's dialable multiaddrs, each with `/p2p/<id>`."""
        return [str(addr) for addr in self.host.get_addrs()]

    async def wait_changed(self) -> None:
        """Return at the next change of the holder index (any peer's announcement)."""
        await self._changed.wait()

    # Background tasks.

    def start(self, events: trio.MemoryReceiveChannel[tuple[bool, ID]]) -> None:
        restrict_dials(self.host, self._may_dial)
        self.host.set_stream_handler(ANNOUNCE, self._receive)
        self.host.set_stream_handler(CLAIM, self._answer_claim)
        self._nursery.start_soon(self._follow_connections, events)
        self._nursery.start_soon(self._bootstrap)
        self._nursery.start_soon(self._flush)
        self._nursery.start_soon(self._refresh)
        self._nursery.start_soon(self._maintain)
        self._nursery.start_soon(self._settle)
        self._nursery.start_soon(self._expire)
        if self.dht is not None:
            self._nursery.start_soon(self._provide)

    # This node's own announcements.

    def _next_sequence(self) -> Sequence:
        self._sequence = Sequence(self._sequence.incarnation, self._sequence.number + 1)
        return self._sequence

    async def _flush(self) -> None:
        """Announce this node's pending changes, a burst of them as one message."""
        while True:
            await self._flush_wake.wait()
            self._flush_wake = trio.Event()
            await trio.lowlevel.checkpoint()  # let the rest of a burst of advertisements arrive
            self._flush_now()

    def _flush_now(self) -> None:
        """Send the pending changes to every link now (as one Delta, split when large)."""
        if not self._pending:
            return
        first = Sequence(self._sequence.incarnation, self._sequence.number + 1)
        parts = messages.split(self._pending.take(self.name, first, self._link_names()))
        self._sequence = parts[-1].sequence
        self._announce(b"".join(map(messages.encode, parts)))

    def _announce(self, frame: bytes) -> None:
        """Send `frame`, a message of this node's, to every link."""
        if trio.current_time() - self._graph_changed < CHURN_WINDOW:
            self._spoke_in_churn = True
        for link in self._links.values():
            link.put(frame)

    async def _refresh(self) -> None:
        """Announce this node's whole state every refresh interval: it keeps its entries alive everywhere (they
        expire `ttl` after the last message) and repairs whatever was lost."""
        while True:
            await trio.sleep(self._settings.refresh_interval * random.uniform(0.9, 1.1))
            self._flush_now()
            self._pending.clear()
            self._announce(self._own_state(self._next_sequence()))

    def _own_state(self, sequence: Sequence) -> bytes:
        """The frame of this node's whole state as of `sequence` (nothing may be pending): at most
        `MAX_STATE_KEYS` keys and as many as fit in a frame; the rest are left out, with a warning."""
        keys = tuple(self._held.values())[: messages.MAX_STATE_KEYS]
        listen = tuple(str(addr) for addr in self.host.get_transport_addrs())
        while True:
            state = messages.State(self.name, sequence, self._registry_address, listen, self._link_names(), keys)
            try:
                return messages.encode(state)
            except messages.ProtocolError:
                log.warning("%d keys do not fit in one state message: announcing %d", len(keys), len(keys) // 2)
                keys = keys[: len(keys) // 2]

    # Links.

    def _link_names(self) -> tuple[str, ...]:
        return tuple(str(peer) for peer in self._links)

    def _add_link(self, peer: ID, initiated: bool) -> None:
        if peer in self._links or peer == self.peer_id or self._nursery.cancel_scope.cancel_called:
            return  # linked already, or the router is stopping
        link = self._links[peer] = _Link(initiated)
        self._used.pop(peer, None)
        self._links_changed()
        self._nursery.start_soon(self._send, peer, link)

    def _drop_link(self, peer: ID) -> _Link | None:
        link = self._links.pop(peer, None)
        if link is not None:
            link.cancel_scope.cancel()
            self._links_changed()
        return link

    def _links_changed(self) -> None:
        self.origins.changed()
        self._note_graph()
        self._pending.links_changed = True
        self._flush_wake.set()

    def _snapshot_frames(self) -> list[bytes]:
        """What a new link gets first: this node's state, then the last message it has of every origin it knows
        (the link asks for the states it lacks)."""
        self._flush_now()
        known = [(origin, record.sequence) for origin, record in self.origins.known.items() if record.whole]
        return [self._own_state(self._sequence), *self._have_frames(known)]

    @staticmethod
    def _have_frames(entries: list[tuple[str, Sequence]]) -> list[bytes]:
        step = messages.MAX_ENTRIES
        return [messages.encode(messages.Have(tuple(entries[i : i + step]))) for i in range(0, len(entries), step)]

    def _state_of(self, origin: str) -> bytes | None:
        """The frame of `origin`'s whole state: this node's own, or an origin's as this node has it."""
        if origin == self.name:
            self._flush_now()
            return self._own_state(self._sequence)
        return self._snapshot(origin)

    def _snapshot(self, origin: str) -> bytes | None:
        """The frame of `origin`'s whole state as this node has it (None when it has no usable address for it)."""
        record = self.origins.known.get(origin)
        registry = self.index.address(origin)
        if record is None or registry is None or not record.whole:
            return None
        cached = self._snapshots.get(origin)
        if cached is not None and cached[0] == record.sequence:
            return cached[1]
        keys = tuple(self.index.announced(origin))[: messages.MAX_STATE_KEYS]
        state = messages.State(
            origin, record.sequence, registry, self._peer_addrs.get(origin, ()), tuple(record.links), keys
        )
        try:
            frame = messages.encode(state)
        except messages.ProtocolError:
            return None
        self._snapshots[origin] = (record.sequence, frame)
        return frame

    async def _send(self, peer: ID, link: _Link) -> None:
        """Keep an announcement stream to `peer` and write the link's frames to it, until the link is dropped."""
        delays = backoff_delays(first=0.5, cap=10.0)
        with link.cancel_scope:
            while self._links.get(peer) is link:
                try:
                    await self._send_session(peer, link)
                except Exception as exc:  # the stream broke (or the queue overflowed); reopen while linked
                    log.debug("announce stream to %s ended: %s", peer, exc)
                await trio.sleep(next(delays))

    async def _send_session(self, peer: ID, link: _Link) -> None:
        with trio.fail_after(DIAL_TIMEOUT):
            stream = await self.host.new_stream(peer, [ANNOUNCE])
        try:
            link.restart(self._snapshot_frames())
            while True:
                if link.overflowed:
                    raise RuntimeError(f"more than {MAX_LINK_QUEUE} bytes queued")
                if not link.queue:
                    link.wake = trio.Event()
                    await link.wake.wait()
                    continue
                with trio.fail_after(WRITE_TIMEOUT):
                    await stream.write(link.take())
        finally:
            await _reset(stream)

    async def _receive(self, stream: INetStream) -> None:
        """Apply the announcements `stream`'s peer writes and pass them on, until it closes or breaks the protocol.
        A peer that opens an announcement stream is linked to (this node writes back on a stream of its own)."""
        peer = stream.muxed_conn.peer_id
        remote = stream.get_remote_address()
        remote_ip = remote[0] if remote else None
        self._add_link(peer, initiated=False)
        decoder = messages.FrameDecoder()
        refused = 0
        try:
            while data := await stream.read(READ_CHUNK):
                decoder.feed(data)
                for frame in decoder.frames():
                    refused_now = self._handle(peer, remote_ip, frame)
                    if refused_now and not refused:
                        log.warning("%s announces more than %d keys: refusing the rest", peer, self.index.max_keys)
                    refused += refused_now
        except messages.ProtocolError as exc:
            log.warning("dropping announcements from %s: %s", peer, exc)
        except Exception as exc:
            log.debug("announce stream from %s ended: %s", peer, exc)
        finally:
            await _reset(stream)

    def _handle(self, peer: ID, remote_ip: str | None, body: bytes) -> int:
        """Handle one frame (`body`, as `FrameDecoder` gives it) from linked `peer`: answer a Want; apply a message
        new from its origin and pass it on along the origin's tree. Returns how many keys were refused (the
        origin's limit). Counts the frame and its CPU time by kind (`handled`, `handling_seconds`)."""
        started = time.process_time()
        message = messages.decode(body)
        kind = _KINDS[type(message)]
        try:
            return self._handle_message(peer, remote_ip, body, message)
        finally:
            self.handled[kind] += 1
            self.handling_seconds[kind] += time.process_time() - started

    def _handle_message(self, peer: ID, remote_ip: str | None, body: bytes, message: messages.Message) -> int:
        if isinstance(message, messages.Want):
            self.frames["want"] += 1
            link = self._links.get(peer)
            snapshots = [self._state_of(origin) for origin in message.origins] if link is not None else []
            for snapshot in snapshots:
                if link is not None and snapshot is not None:
                    link.put(snapshot)
            return 0
        if isinstance(message, messages.Have):
            self.frames["have"] += 1
            self._heard_of(peer, message)
            return 0
        origin = message.origin
        if origin not in self.origins.known:
            _peer_id(origin)  # a new origin must be a peer id: it may become a target to dial, or a claim's owner
        verdict = self.origins.accept(origin, message.sequence, isinstance(message, messages.State))
        if verdict is overlay.Verdict.OLD:
            self.frames["old"] += 1
            return 0
        self.frames["new"] += 1
        direct = origin == str(peer)
        frame = messages.framed(body)
        if direct and isinstance(message, messages.State):
            message, frame = self._resolved(message, remote_ip, frame)
        refused = self._apply(message, remote_ip if direct else None)
        if verdict is overlay.Verdict.GAP:
            self.gaps += 1
            self._want(peer, [origin])
        self._pass_on(origin, str(peer), frame)
        self._changed.set()
        self._changed = trio.Event()
        return refused

    def _resolved(self, state: messages.State, remote_ip: str | None, frame: bytes) -> tuple[messages.State, bytes]:
        """`state` (sent by its origin itself, from `remote_ip`) with unspecified hosts replaced by that IP, and its
        frame: whoever it is passed on to cannot tell the origin's IP."""
        registry = state.registry
        with contextlib.suppress(AddressRefused):  # else refused again, with a warning, where it is applied
            registry = self.addresses.registry_address(state.registry, remote_ip)
        listen = tuple(with_host_multiaddr(addr, remote_ip) for addr in state.listen)
        if registry == state.registry and listen == state.listen:
            return state, frame
        state = dataclasses.replace(state, registry=registry, listen=listen)
        return state, messages.encode(state)

    def _apply(self, message: messages.State | messages.Delta, seen_ip: str | None) -> int:
        """Apply `message` (from its origin itself, at `seen_ip`, or passed on: None) to the index and the overlay;
        returns how many keys were refused."""
        now = trio.current_time()
        origin = message.origin
        if isinstance(message, messages.State):
            known = self._known_ips()
            try:
                self.index.set_address(origin, self.addresses.registry_address(message.registry, seen_ip, known))
            except AddressRefused as exc:
                if self.index.address(origin) is None:
                    log.warning("ignoring the registry address of %s: %s", origin, exc)
            addrs = tuple(addr for addr in message.listen if self.addresses.may_dial(addr, known))
            if addrs and self._peer_addrs.get(origin) != addrs:
                self._peer_addrs[origin] = addrs
                with contextlib.suppress(Exception):
                    multiaddrs = [multiaddr.Multiaddr(addr) for addr in addrs]
                    self.host.get_peerstore().add_addrs(ID.from_base58(origin), multiaddrs, PEERSTORE_TTL)
            self.origins.set_links(origin, message.links)
            refused = self.index.replace(origin, message.keys, now)
        else:
            refused = self.index.update(origin, message.added, now)
            self.index.remove(origin, message.withdrawn)
            if message.links is not None:
                self.origins.set_links(origin, message.links)
            for departure in message.gone:
                self._gone_elsewhere(departure)
        self._note_graph()
        return refused

    def _pass_on(self, origin: str, sender: str, frame: bytes) -> None:
        """Queue `frame` (a message of `origin` from `sender`) to the links below this node in `origin`'s tree."""
        names = {str(peer): link for peer, link in self._links.items()}
        for name in self.origins.children(origin, names.keys()):
            if name not in (sender, origin):
                names[name].put(frame)
                self.frames["passed_on"] += 1

    def _note_graph(self) -> None:
        if self.origins.version != self._graph_version:
            self._graph_version = self.origins.version
            self._graph_changed = trio.current_time()

    def _want(self, peer: ID, origins: Iterable[str]) -> None:
        """Ask `peer` for the whole state of `origins` (each at most once a second)."""
        now = trio.current_time()
        link = self._links.get(peer)
        wanted = [origin for origin in origins if self._wanted.get(origin, -math.inf) <= now - 1.0]
        if link is None or not wanted:
            return
        if len(self._wanted) + len(wanted) > overlay.MAX_ORIGINS:
            self._wanted.clear()
        self._wanted.update(dict.fromkeys(wanted, now))
        link.put(messages.encode(messages.Want(tuple(wanted))))

    async def _settle(self) -> None:
        """Once a second: ask for the states that links have newer than this node (`_want_lacking`); and once the
        overlay graph has not changed for `CHURN_WINDOW` s, if this node announced anything while it changed, send an
        empty message with its next number: a node that a tree computed from a stale view left out sees the gap and
        asks for this node's state."""
        while True:
            await trio.sleep(1.0)
            self._want_lacking()
            if self._spoke_in_churn and trio.current_time() - self._graph_changed >= CHURN_WINDOW:
                self._spoke_in_churn = False
                self._announce(messages.encode(messages.Delta(self.name, self._next_sequence())))

    def _heard_of(self, peer: ID, have: messages.Have) -> None:
        """`peer` has the messages `have` names: ask it at once for the states of origins unknown here; newer
        messages of known ones are usually on their way along the tree, so ask only if they still lack them
        `HAVE_GRACE` s later (`_want_lacking`)."""
        unknown = []
        now = trio.current_time()
        for origin, sequence in have.origins:
            if not self.origins.lacks(origin, sequence):
                continue
            if origin in self.origins.known:
                if len(self._lacking) < overlay.MAX_ORIGINS:
                    self._lacking[origin] = (peer, sequence, now)
            else:
                unknown.append(origin)
        self._want(peer, unknown)

    def _want_lacking(self) -> None:
        now = trio.current_time()
        due: dict[ID, list[str]] = {}
        for origin, (peer, sequence, since) in list(self._lacking.items()):
            if now - since < HAVE_GRACE:
                continue
            del self._lacking[origin]
            if self.origins.lacks(origin, sequence):
                due.setdefault(peer, []).append(origin)
        for peer, origins in due.items():
            self._want(peer, origins)

    # Departures.

    def _gone_elsewhere(self, departure: messages.Departure) -> None:
        """Another node found `departure`'s peer gone: forget it unless it is linked here or heard from since."""
        name = departure.peer_id
        if name == self.name or name in self._link_names():
            return
        if self.origins.forget(name, departure.sequence):
            self._forget(name)

    def _forget(self, name: str) -> None:
        self._peer_addrs.pop(name, None)
        self._snapshots.pop(name, None)
        self.index.remove_peer(name)
        self._note_graph()
        self._changed.set()
        self._changed = trio.Event()

    async def _follow_connections(self, events: trio.MemoryReceiveChannel[tuple[bool, ID]]) -> None:
        async for connected, peer in events:
            if connected:
                self._departed.pop(peer, None)
                if peer not in self._links:
                    self._used.setdefault(peer, trio.current_time())
                if self.dht is not None:
                    self._nursery.start_soon(partial(self.dht.add_peer, peer, skip_server_mode_check=True))
            elif not self.host.get_network().get_connections(peer):
                self._used.pop(peer, None)
                if self._drop_link(peer) is not None:
                    left = self._departed[peer] = trio.current_time()
                    self._nursery.start_soon(self._check_departure, peer, left)

    async def _check_departure(self, peer: ID, left: float) -> None:
        """`peer`'s link went at `left`: `peer_grace` s later, unless it is back or heard from, dial it once; when
        that fails too, forget it and tell every node it is gone (with the last message of it heard here)."""
        await trio.sleep_until(left + self._settings.peer_grace)
        name = str(peer)
        if self._departed.get(peer) != left:
            return
        del self._departed[peer]
        if peer in self._links or self.index.heard_since(name, left):
            return
        addrs = [multiaddr.Multiaddr(addr) for addr in self._peer_addrs.get(name, ())]
        if addrs:
            try:
                await self._connect(peer, addrs)
                return  # still there (it closed the link, or the link broke): the idle connection goes later
            except Exception as exc:
                log.debug("%s is gone: %s", name, exc)
        record = self.origins.known.get(name)
        if record is not None and self.origins.forget(name, record.sequence):
            self._pending.depart(messages.Departure(name, record.sequence))
            self._flush_wake.set()
        self._forget(name)

    # The overlay's shape.

    async def _maintain(self) -> None:
        """Every second: dial the targets this node is not linked to; once all are linked, close the links it
        dialled that are no longer targets (bootstrap links among them); close connections that are not links and
        were not used for `IDLE_CONNECTION` s (claims to owners, dials to check a departure, the DHT's)."""
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            wanted = self._wanted_links()
            for peer in wanted - self._links.keys() - self._dialing:
                if self._dial_failed.get(peer, -math.inf) <= now:
                    addrs = [multiaddr.Multiaddr(addr) for addr in self._peer_addrs[str(peer)]]
                    self._dialing.add(peer)
                    self._nursery.start_soon(self._dial, peer, addrs)
            extra = [peer for peer, link in self._links.items() if link.initiated and peer not in wanted]
            self.settled = wanted <= self._links.keys() and not extra
            if wanted <= self._links.keys():
                for peer in extra:
                    if now - self._links[peer].opened > SETTLE_LINK:
                        self._nursery.start_soon(self._unlink, peer)
            for peer, used in list(self._used.items()):
                if peer not in self._links and peer not in self._dialing and now - used > IDLE_CONNECTION:
                    del self._used[peer]
                    self._nursery.start_soon(self._disconnect, peer)

    def _wanted_links(self) -> frozenset[ID]:
        """The overlay's targets of this node among the members it can dial (computed again only when they
        change: it hashes every member)."""
        members = frozenset(name for name in self.origins.known if name in self._peer_addrs)
        if members != self._targets[0]:
            chosen = overlay.targets(self.name, members, self._settings.degree)
            self._targets = (members, frozenset(ID.from_base58(name) for name in chosen))
        return self._targets[1]

    async def _dial(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        try:
            await self._connect(peer, addrs)
            self._add_link(peer, initiated=True)
            self._dial_failed.pop(peer, None)
        except Exception as exc:
            log.debug("cannot dial %s: %s", peer, exc)
            self._dial_failed[peer] = trio.current_time() + DIAL_RETRY
        finally:
            self._dialing.discard(peer)

    async def _connect(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        """Connect to `peer` at `addrs` (a few dials at a time, each within `DIAL_TIMEOUT`); raises when it fails."""
        async with self._dial_limiter:
            with trio.fail_after(DIAL_TIMEOUT):
                await self.host.connect(PeerInfo(peer, addrs))

    async def _unlink(self, peer: ID) -> None:
        if self._drop_link(peer) is not None:
            await self._disconnect(peer)

    async def _disconnect(self, peer: ID) -> None:
        with trio.move_on_after(DIAL_TIMEOUT):
            try:
                await self.host.disconnect(peer)
            except Exception as exc:
                log.debug("closing the connection to %s: %s", peer, exc)

    async def _bootstrap(self) -> None:
        """Link to the bootstrap candidates in one order every node shares (sorted by address), until one link is
        made: every node then reaches the first candidate that answers, whose states name every member, whom
        `_maintain` links to. Retry with backoff until linked. Then, every `rejoin` s, link to each candidate that no
        known member listens at (a node that started apart, or a part of the cluster that formed apart, is joined);
        with no link left, start over."""
        delays = backoff_delays()
        while True:
            try:
                candidates = sorted(await self._settings.bootstrapper.candidates(), key=str)
            except BootstrapError as exc:
                log.warning("bootstrap: %s", exc)
                candidates = None
            if candidates is not None:
                self._bootstrap_addrs = {str(_without_peer_id(addr)) for addr in candidates}
                linked = bool(self._links)
                others: list[bool] = []
                for addr in self._strangers(candidates) if linked else candidates:
                    await self._bootstrap_dial(addr, others)
                    if self._links and not linked:
                        break
                if not linked:
                    self._alone = not any(others)
                if self._links or self._alone:
                    await trio.sleep(self._settings.rejoin)
                    delays = backoff_delays()
                    continue
            await trio.sleep(next(delays))

    def _strangers(self, candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        """The candidates no known member (nor this node) listens at."""
        known = {addr for addrs in self._peer_addrs.values() for addr in addrs}
        known.update(str(addr) for addr in self.host.get_transport_addrs())
        return [addr for addr in candidates if str(_without_peer_id(addr)) not in known]

    async def _bootstrap_dial(self, addr: multiaddr.Multiaddr, others: list[bool]) -> None:
        """Link to the node at `addr`; appends to `others` whether it may be another node than this one."""
        try:
            peer_text = addr.get_peer_id()
            if peer_text is None:
                known = self._probed.get(str(addr))
                if known == self.peer_id or (known is not None and known in self._links):
                    others.append(known != self.peer_id)
                    return
                peer = self._probed[str(addr)] = await learn_peer_id(self.host, addr, DIAL_TIMEOUT)
                target = addr
            else:
                peer = ID.from_base58(peer_text)
                target = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer_text}"))
            others.append(peer != self.peer_id)
            if peer == self.peer_id or peer in self._links:
                return
            with trio.fail_after(DIAL_TIMEOUT):
                await self.host.connect(PeerInfo(peer, [target]))
            self._add_link(peer, initiated=True)
        except Exception as exc:
            others.append(True)
            log.debug("bootstrap dial %s failed: %s", addr, exc)

    async def _expire(self) -> None:
        """Forget the origins not heard from within the TTL (their entries no longer count)."""
        while True:
            await trio.sleep(min(self._settings.ttl / 4, 60.0))
            now = trio.current_time()
            silent = [name for name in self.origins.known if not self.index.heard(name, now)]
            for name in silent:
                self.origins.forget(name)
                self._forget(name)
            if self.index.expire(now):
                self._changed.set()
                self._changed = trio.Event()

    async def _provide(self) -> None:
        """Provide complete keys in the DHT one at a time, each once it is due (`provide_delay` after it was
        advertised), at most `provide_rate` a second (a provide walks the DHT and costs every peer it reaches CPU);
        re-queue all of them, due at once, every republish interval."""
        assert self.dht is not None
        store = self.dht.provider_store
        next_republish = trio.current_time() + self._settings.republish_interval
        while True:
            due = min(self._to_provide.values(), default=math.inf)
            if due > trio.current_time():
                self._provide_wake = trio.Event()
                with trio.move_on_at(min(due, next_republish)):
                    await self._provide_wake.wait()  # a key advertised since: it may be due sooner (delay 0)
            now = trio.current_time()
            if now >= next_republish:
                next_republish = now + self._settings.republish_interval
                for held, item in self._held.items():
                    if item.state is KeyState.COMPLETE:
                        self._to_provide[held] = min(self._to_provide.get(held, now), now)
            first = min(self._to_provide, key=self._to_provide.__getitem__, default=None)
            if first is None or self._to_provide[first] > now:
                continue
            key = first
            del self._to_provide[key]
            multihash = key_multihash(key)
            pace = now + 1 / self._settings.provide_rate
            with trio.move_on_after(30):
                try:
                    await store.provide(multihash)
                except Exception as exc:
                    log.debug("provide %s failed: %s", key, exc)
            # We republish on our schedule; keep the library's own 22 h republish loop out of it.
            store.providing_keys.discard(multihash)
            await trio.sleep_until(pace)

    def _may_dial(self, addr: multiaddr.Multiaddr) -> bool:
        """Whether this node dials `addr`: a bootstrap candidate, or passing the address policy (see `addresses`)."""
        return str(_without_peer_id(addr)) in self._bootstrap_addrs or self.addresses.may_dial(
            str(addr), self._known_ips()
        )

    def _known_ips(self) -> set[IPAddress]:
        """Hosts known to be in the cluster: the bootstrap candidates' and those of open connections."""
        known = connected_ips(self.host)
        for addr in self._bootstrap_addrs:
            try:
                known.add(self.addresses.dial_ip(addr))
            except AddressRefused:
                continue
        return known

    def _index_complete(self, now: float) -> bool:
        """Whether every linked peer is heard from (a vanished peer, still in the DHT routing table for up to an
        hour, must not send every miss to the DHT)."""
        return all(self.index.heard(str(peer), now) for peer in self._links)


@asynccontextmanager
async def open_libp2p_router(settings: RouterSettings, registry_address: str) -> AsyncIterator[Libp2pRouter]:
    """Start a host listening on `settings.listen`, the DHT and the router's tasks; stop them all on exit.

    `registry_address` is this node's registry (`host:port`) as announced to peers; an unspecified host
    (`0.0.0.0:5000`) is replaced by each peer with the address it sees this node connect from.
    """
    host = build_host(settings.key_pair, settings.psk)
    send, receive = trio.open_memory_channel[tuple[bool, ID]](1024)
    host.get_network().register_notifee(_ConnectionEvents(send))
    async with host.run([settings.listen]):
        dht = None
        if settings.dht:
            set_provider_record_ttl(settings.ttl)
            quiet_dht_eof_warnings()
            dht = KadDHT(host, DHTMode.SERVER)
            relax_dht_server_limits(dht, settings.add_provider_limit)
        try:
            async with trio.open_nursery() as nursery:
                if dht is not None:
                    await nursery.start(_run_service, dht)
                router = Libp2pRouter(host, dht, settings, registry_address, nursery)
                router.start(receive)
                try:
                    yield router
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await close_host(host)


async def _run_service(service: KadDHT, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with background_trio_service(service):
        task_status.started()
        await trio.sleep_forever()


async def _read_frame(stream: INetStream, limit: int) -> bytes:
    """The body of the first frame `stream` sends (at most `limit` bytes); ProtocolError when it ends first."""
    decoder = messages.FrameDecoder(limit)
    while data := await stream.read(READ_CHUNK):
        decoder.feed(data)
        for frame in decoder.frames():
            return frame
    raise messages.ProtocolError("the stream ended before a whole frame")


async def _reset(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        await stream.reset()


def _peer_id(text: str) -> ID:
    """The peer id `text` names; ProtocolError when it names none."""
    try:
        return ID.from_base58(text)
    except Exception:
        raise messages.ProtocolError(f"origin {text[:100]!r} is not a peer id") from None


def _without_peer_id(addr: multiaddr.Multiaddr) -> multiaddr.Multiaddr:
    peer = addr.get_peer_id()
    return addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}")) if peer else addr
