"""The libp2p router: a holder index fed by direct announcement streams, backed by Kademlia provider records.

The fast path: every node keeps one announcement stream open to every peer it is connected to and writes its
own changes there (`messages.ANNOUNCE_PROTOCOL`): a full `State` first (the state exchange on join) and again
every `refresh` seconds (anti-entropy, and it keeps the peer's entries alive), `Delta`s in between, coalesced
per peer so a burst of advertisements becomes one message. Receivers keep a `HolderIndex`; entries a peer stops
refreshing expire after `ttl`. `State` also carries peer exchange (the peers the sender knows), so bootstrapping
to one node yields a full mesh. Lookups read the index (no I/O) and fall back to the DHT only when it knows no
holder, within the caller's timeout (the DHT search itself runs on in the background: see workarounds).

Peers are untrusted (the private network key keeps strangers out; see docs/operations.md, Security): a peer's
registry address and the multiaddrs it passes on are checked (`addresses.PeerAddressPolicy`) before any connection
is made to them, and the host refuses every other dial; a peer holds at most `max_keys_per_peer` keys in the index;
a peer that disconnects and does not come back within `peer_grace` seconds is forgotten, keys and address.

The DHT: complete keys are provided (one key at a time, in the background, at most `provide_rate` a second, each
no sooner than `provide_delay` after it was advertised) and republished every `ttl / 2`; records expire `ttl`
after their last republish, so a vanished node ages out of both.
A node holding more than `provide_rate * ttl / 2` keys cannot keep all of them in the DHT: the announcement index
carries everything, the DHT is the backup for connected peers the index has not heard from.

`open_libp2p_router` runs it all; everything stops when its context exits.
"""

from __future__ import annotations

import logging
import math
import random
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

from spegel.routing import claims
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

log = logging.getLogger("spegel.routing")

ANNOUNCE = TProtocol(messages.ANNOUNCE_PROTOCOL)
CLAIM = TProtocol(messages.CLAIM_PROTOCOL)
CLAIM_REQUEST_LIMIT = 4096  # bytes of a claim frame: one key
CLAIM_READ_TIMEOUT = 5.0
SILENT_OWNER_SKIP = 30.0  # seconds a peer that did not answer a claim is not chosen as an owner
DIAL_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
READ_CHUNK = 256 * 1024
MAX_CONCURRENT_DIALS = 8
MAX_PENDING_DIALS = 64  # peers learnt from peer exchange and not dialled yet: more are ignored until the next State
MAX_DHT_SEARCHES = 16
DHT_SEARCH_BOUND = 30.0
DHT_SEARCH_COUNT = 20


@dataclass(frozen=True)
class RouterSettings:
    """How the router runs. `refresh` (full State to every peer) defaults to a third of `ttl`; `rejoin` is how
    often bootstrap repeats; `networks` are the peer networks (see `addresses`); a peer's entries go
    `peer_grace` seconds after it disconnects. A complete key is provided in the DHT `provide_delay` seconds after
    it is advertised, not at once: every connected peer has it from the announcement, and the walk a provide
    makes costs every peer it reaches CPU, which in a pull storm is the CPU the announcements need (a 12-node
    storm spent ~40 % of its mirrors' CPU in provides made while the image was still arriving)."""

    listen: multiaddr.Multiaddr
    key_pair: KeyPair
    bootstrapper: Bootstrapper
    psk: str | None = None
    ttl: float = 600.0
    refresh: float | None = None
    rejoin: float = 60.0
    dht: bool = True
    provide_rate: float = 1.0
    provide_delay: float = 30.0
    networks: tuple[Network, ...] = ()
    max_keys_per_peer: int = 50_000
    peer_grace: float = 10.0

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
    """What is still to be sent to one peer."""

    def __init__(self) -> None:
        self.pending = messages.PendingChanges()
        self.wake = trio.Event()
        self.cancel_scope = trio.CancelScope()


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
        self._bootstrap_addrs: set[str] = set()  # the last bootstrap candidates (without /p2p): always dialable
        self._departed: dict[ID, float] = {}  # disconnected peers not yet forgotten: when they left
        self._held: dict[str, Announcement] = {}
        self._links: dict[ID, _Link] = {}
        self._peer_addrs: dict[ID, tuple[str, ...]] = {}
        self._dialing: set[ID] = set()
        self._encoded: dict[messages.Delta, bytes] = {}
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
        for link in self._links.values():
            link.pending.add(items)
            link.wake.set()
        self._provide_wake.set()
        await trio.lowlevel.checkpoint()

    async def withdraw(self, keys: Iterable[str]) -> None:
        keys = withdrawals(keys, self._held)
        for key in keys:
            del self._held[key]
            self._to_provide.pop(key, None)
        for link in self._links.values():
            link.pending.withdraw(keys)
            link.wake.set()
        await trio.lowlevel.checkpoint()

    async def lookup(self, key: str, count: int, timeout: float) -> list[Holder]:
        """See `Router.lookup`. Answers from the index without yielding to other tasks; only when the index knows no
        holder and may be incomplete (a connected peer has not been heard from) does it wait for the DHT."""
        now = trio.current_time()
        deadline = now + timeout
        holders = self.index.lookup(key, count, now, preferred=self._connected_names())
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
        """See `Router.order_claim`. The owner is chosen among this node and the connected peers whose registry
        address is known (`claims.owner`), leaving out for `SILENT_OWNER_SKIP` seconds a peer that failed to
        answer a claim (a frozen node costs one claim timeout, not one per blob it owns); when it is this node,
        the claim is recorded here without I/O."""
        now = trio.current_time()
        members = {
            str(peer): peer
            for peer in self._links
            if self.index.address(str(peer)) is not None and self._silent_owners.get(str(peer), -math.inf) <= now
        }
        owner = claims.owner(key, [self.name, *members])
        if owner == self.name:
            ahead: tuple[str, ...] | list[str] | None = await claims.take_place(self.claim_book, key, self.name, since)
        else:
            ahead = None
            with trio.move_on_after(timeout):
                try:
                    ahead = await self._ask_owner(members[str(owner)], key, since)
                except Exception as exc:  # the owner broke off, or answered nonsense
                    log.debug("claim of %s with %s failed: %s", key, owner, exc)
            if ahead is None:
                now = trio.current_time()
                self._silent_owners = {p: t for p, t in self._silent_owners.items() if t > now}
                self._silent_owners[str(owner)] = now + SILENT_OWNER_SKIP
        if ahead is None:
            return None
        return claims.placed(ahead, self.index.address)

    async def _ask_owner(self, owner: ID, key: str, since: float) -> tuple[str, ...]:
        stream = await self.host.new_stream(owner, [CLAIM])
        try:
            await stream.write(messages.encode_claim(key, since))
            return messages.decode_ahead(await _read_frame(stream, messages.MAX_FRAME))
        finally:
            await _reset(stream)

    async def _answer_claim(self, stream: INetStream) -> None:
        """Record the claim `stream`'s peer makes (for itself only: the peer is who the connection proves it is)
        and answer with the claimants ahead of it."""
        claimant = str(stream.muxed_conn.peer_id)
        try:
            with trio.fail_after(CLAIM_READ_TIMEOUT):
                key, since = messages.decode_claim(await _read_frame(stream, CLAIM_REQUEST_LIMIT))
            key_multihash(key)  # refuse keys that are not Spegel's
            ahead = await claims.take_place(self.claim_book, key, claimant, since)
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
        self._nursery.start_soon(self._expire)
        if self.dht is not None:
            self._nursery.start_soon(self._provide)

    async def _follow_connections(self, events: trio.MemoryReceiveChannel[tuple[bool, ID]]) -> None:
        async for connected, peer in events:
            if connected:
                self._departed.pop(peer, None)
            if connected and peer not in self._links:
                link = self._links[peer] = _Link()
                self._nursery.start_soon(self._send, peer, link)
                if self.dht is not None:
                    self._nursery.start_soon(partial(self.dht.add_peer, peer, skip_server_mode_check=True))
            elif not connected and not self.host.get_network().get_connections(peer):
                gone = self._links.pop(peer, None)
                if gone is not None:
                    gone.cancel_scope.cancel()
                    left = self._departed[peer] = trio.current_time()
                    self._nursery.start_soon(self._forget_later, peer, left)

    async def _forget_later(self, peer: ID, left: float) -> None:
        """Forget `peer` (keys, address, listen addresses) `peer_grace` s after it `left`, unless it is back: connected
        again, or heard from since (a connection closing while another one to the peer opens can look like a
        departure)."""
        await trio.sleep_until(left + self._settings.peer_grace)
        if self._departed.get(peer) != left or peer in self._links:
            return
        if self.host.get_network().get_connections(peer) or self.index.heard_since(str(peer), left):
            del self._departed[peer]
            return
        del self._departed[peer]
        self._peer_addrs.pop(peer, None)
        self.index.remove_peer(str(peer))
        self._changed.set()
        self._changed = trio.Event()

    async def _send(self, peer: ID, link: _Link) -> None:
        """Keep an announcement stream to `peer` and write our changes to it, until the peer disconnects."""
        delays = backoff_delays(first=0.5, cap=10.0)
        with link.cancel_scope:
            while self._links.get(peer) is link:
                try:
                    await self._send_session(peer, link)
                except Exception as exc:  # the stream broke; reopen while still connected
                    log.debug("announce stream to %s ended: %s", peer, exc)
                await trio.sleep(next(delays))

    async def _send_session(self, peer: ID, link: _Link) -> None:
        with trio.fail_after(DIAL_TIMEOUT):
            stream = await self.host.new_stream(peer, [ANNOUNCE])
        try:
            refresh = self._settings.refresh_interval
            full_due = True
            while True:
                if full_due:
                    link.pending.clear()
                    full_due = False
                    frame = b"".join(map(messages.encode, messages.split(self._state_message())))
                elif link.pending:
                    frame = self._encode_delta(link.pending.take())
                else:
                    link.wake = trio.Event()
                    with trio.move_on_after(refresh * random.uniform(0.9, 1.1)) as waited:
                        await link.wake.wait()
                    full_due = waited.cancelled_caught
                    continue
                with trio.fail_after(WRITE_TIMEOUT):
                    await stream.write(frame)
        finally:
            await _reset(stream)

    def _encode_delta(self, delta: messages.Delta) -> bytes:
        """The frame of `delta`; the same changes usually go to every peer, so the last one is kept."""
        frame = self._encoded.get(delta)
        if frame is None:
            frame = b"".join(map(messages.encode, messages.split(delta)))
            self._encoded = {delta: frame}
        return frame

    def _state_message(self) -> messages.State:
        peers = tuple(
            messages.PeerRecord(str(peer), self._peer_addrs[peer]) for peer in self._links if peer in self._peer_addrs
        )
        listen = tuple(str(addr) for addr in self.host.get_transport_addrs())
        return messages.State(self._registry_address, listen, peers, tuple(self._held.values()))

    async def _receive(self, stream: INetStream) -> None:
        """Apply the announcements `stream`'s peer writes, until it closes or breaks the protocol."""
        peer = stream.muxed_conn.peer_id
        name = str(peer)
        remote = stream.get_remote_address()
        remote_ip = remote[0] if remote else None
        decoder = messages.FrameDecoder()
        refused = 0
        try:
            while data := await stream.read(READ_CHUNK):
                decoder.feed(data)
                for frame in decoder.frames():
                    refused_now = self._apply(peer, name, remote_ip, messages.decode(frame))
                    if refused_now and not refused:
                        log.warning("%s announces more than %d keys: refusing the rest", peer, self.index.max_keys)
                    refused += refused_now
        except (messages.ProtocolError, AddressRefused) as exc:
            log.warning("dropping announcements from %s: %s", peer, exc)
        except Exception as exc:
            log.debug("announce stream from %s ended: %s", peer, exc)
        finally:
            await _reset(stream)

    def _apply(self, peer: ID, name: str, remote_ip: str | None, message: messages.Message) -> int:
        """Apply one message of `peer`'s; returns how many keys were refused (the peer's limit). Raises
        AddressRefused for a registry address this node will not fetch from."""
        now = trio.current_time()
        known = self._known_ips()
        if isinstance(message, messages.State):
            self.index.set_address(name, self.addresses.registry_address(message.registry, remote_ip))
            listen = (with_host_multiaddr(addr, remote_ip) for addr in message.listen)
            addrs = tuple(addr for addr in listen if self.addresses.may_dial(addr, known))
            if self._peer_addrs.get(peer) != addrs:
                self._peer_addrs[peer] = addrs
                self._introduce(messages.PeerRecord(name, addrs), to_all_but=peer)
            refused = self.index.replace(name, message.keys, now)
        else:
            refused = self.index.update(name, message.added, now)
            self.index.remove(name, message.withdrawn)
        for record in message.peers:
            self._learn_peer(record, known)
        self._changed.set()
        self._changed = trio.Event()
        return refused

    def _introduce(self, record: messages.PeerRecord, to_all_but: ID) -> None:
        """Tell every other peer about a newly met one, so they connect to it now (not at the next State)."""
        for peer, link in self._links.items():
            if peer != to_all_but:
                link.pending.introduce(record)
                link.wake.set()

    def _learn_peer(self, record: messages.PeerRecord, known: set[IPAddress]) -> None:
        """Dial the peer `record` names, at its addresses on `known` hosts or in the peer networks."""
        if len(self._dialing) >= MAX_PENDING_DIALS:
            return
        try:
            peer = ID.from_base58(record.peer_id)
            addrs = [multiaddr.Multiaddr(addr) for addr in record.addrs if self.addresses.may_dial(addr, known)]
        except Exception:
            log.debug("ignoring a malformed peer record %r", record)
            return
        if peer == self.peer_id or peer in self._links or peer in self._dialing or not addrs:
            return
        self._dialing.add(peer)
        self._nursery.start_soon(self._dial, peer, addrs)

    async def _dial(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        try:
            async with self._dial_limiter:
                with trio.fail_after(DIAL_TIMEOUT):
                    await self.host.connect(PeerInfo(peer, addrs))
        except Exception as exc:
            log.debug("cannot dial %s: %s", peer, exc)
        finally:
            self._dialing.discard(peer)

    async def _bootstrap(self) -> None:
        """Dial the bootstrap candidates, retrying with backoff until connected, then again every `rejoin` s."""
        delays = backoff_delays()
        while True:
            try:
                candidates = await self._settings.bootstrapper.candidates()
            except BootstrapError as exc:
                log.warning("bootstrap: %s", exc)
                candidates = None
            if candidates is not None:
                self._bootstrap_addrs = {str(_without_peer_id(addr)) for addr in candidates}
                others: list[bool] = []
                async with trio.open_nursery() as nursery:
                    for addr in candidates:
                        nursery.start_soon(self._bootstrap_dial, addr, others)
                self._alone = not any(others)
                if self.host.get_connected_peers() or self._alone:
                    await trio.sleep(self._settings.rejoin)
                    delays = backoff_delays()
                    continue
            await trio.sleep(next(delays))

    async def _bootstrap_dial(self, addr: multiaddr.Multiaddr, others: list[bool]) -> None:
        """Connect to the node at `addr`; appends to `others` whether it may be another node than this one."""
        try:
            peer_text = addr.get_peer_id()
            if peer_text is None:
                known = self._probed.get(str(addr))
                if known == self.peer_id or (known is not None and self.host.get_network().get_connections(known)):
                    others.append(known != self.peer_id)
                    return
                peer = self._probed[str(addr)] = await learn_peer_id(self.host, addr, DIAL_TIMEOUT)
                target = addr
            else:
                peer = ID.from_base58(peer_text)
                target = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer_text}"))
            others.append(peer != self.peer_id)
            if peer == self.peer_id or self.host.get_network().get_connections(peer):
                return
            with trio.fail_after(DIAL_TIMEOUT):
                await self.host.connect(PeerInfo(peer, [target]))
        except Exception as exc:
            others.append(True)
            log.debug("bootstrap dial %s failed: %s", addr, exc)

    async def _expire(self) -> None:
        while True:
            await trio.sleep(min(self._settings.ttl / 4, 60.0))
            if self.index.expire(trio.current_time()):
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

    def _connected_names(self) -> set[str]:
        return {str(peer) for peer in self._links}

    def _index_complete(self, now: float) -> bool:
        """Whether every connected peer is heard from (a vanished peer, still in the DHT routing table for up to an
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


def _without_peer_id(addr: multiaddr.Multiaddr) -> multiaddr.Multiaddr:
    peer = addr.get_peer_id()
    return addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}")) if peer else addr
