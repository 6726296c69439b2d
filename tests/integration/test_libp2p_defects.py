"""Each py-libp2p defect that spegel.routing.libp2p.workarounds works around: the defect shown on the pinned library
(these fail when a new version changes it, so the workaround can be revisited) and the workaround shown working."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.host.exceptions import StreamFailure
from libp2p.kad_dht import provider_store
from libp2p.kad_dht.kad_dht import PROTOCOL_ID as KAD_PROTOCOL
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network import swarm as swarm_module
from libp2p.peer.peerinfo import PeerInfo
from libp2p.tools.anyio_service import background_trio_service

from spegel.routing.keys import key_multihash
from spegel.routing.libp2p.host import build_host, close_host
from spegel.routing.libp2p.workarounds import (
    DHT_LOGGER,
    LIBRARY_PROVIDER_RECORD_TTL,
    DetachedCalls,
    quiet_dht_eof_warnings,
    relax_dht_server_limits,
    set_provider_record_ttl,
)

LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


@asynccontextmanager
async def running(*hosts: IHost) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        stops = []
        for host in hosts:
            done, stop = trio.Event(), trio.Event()
            stops.append(stop)

            async def run(host: IHost = host, done: trio.Event = done, stop: trio.Event = stop) -> None:
                async with host.run(LOOPBACK):
                    done.set()
                    await stop.wait()
                    await close_host(host)  # leaving run() leaves the connections open, as the router knows

            nursery.start_soon(run)
            await done.wait()
        yield
        for stop in stops:
            stop.set()


async def connect(a: IHost, b: IHost) -> None:
    with trio.fail_after(10):
        await a.connect(PeerInfo(b.get_id(), b.get_transport_addrs()))


async def test_dial_waits_a_fixed_happy_eyeballs_delay_unless_one_connection_per_peer() -> None:
    assert swarm_module._HAPPY_EYEBALLS_DELAY == 0.25
    default = new_host(key_pair=create_new_key_pair())
    ours, target = build_host(create_new_key_pair()), build_host(create_new_key_pair())
    async with running(default, ours, target):
        start = time.monotonic()
        await connect(default, target)
        assert time.monotonic() - start >= 0.25  # the fixed wait, however fast the dial itself
    # With the workaround the wait is cancelled as soon as the connection is up: make the wait absurd to show it.
    ours, target = build_host(create_new_key_pair()), build_host(create_new_key_pair())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(swarm_module, "_HAPPY_EYEBALLS_DELAY", 600.0)
        async with running(ours, target):
            await connect(ours, target)  # within connect's 10 s bound, not 600 s


async def test_provider_records_live_48h_unless_the_module_constant_is_set() -> None:
    assert LIBRARY_PROVIDER_RECORD_TTL == 48 * 60 * 60
    host = build_host(create_new_key_pair())
    store = provider_store.ProviderStore(host)
    key = key_multihash("sha256:old")
    info = PeerInfo(host.get_id(), [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/1")])
    store.providers[key] = {str(host.get_id()): provider_store.ProviderRecord(info, time.time() - 3600)}
    with pytest.MonkeyPatch.context() as patch:
        # Other tests in this process may have set it already: the shipped value for this test, restored after.
        patch.setattr(provider_store, "PROVIDER_RECORD_EXPIRATION_INTERVAL", LIBRARY_PROVIDER_RECORD_TTL)
        assert store.get_providers(key)  # an hour old: still alive by default
        set_provider_record_ttl(60)
        assert store.get_providers(key) == []
        with pytest.raises(ValueError):
            set_provider_record_ttl(0)


async def test_every_received_provider_record_logs_a_warning_unless_quieted(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(DHT_LOGGER)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logger, "filters", [])
        with caplog.at_level(logging.WARNING, logger=DHT_LOGGER):
            await provided_count(relax=False, keys=2)
        eof = [r for r in caplog.records if r.name == DHT_LOGGER and "Failed to read DHT message" in r.getMessage()]
        assert len(eof) >= 2  # at least one per record received (the FIND_NODE walks add more)
        caplog.clear()
        quiet_dht_eof_warnings()
        with caplog.at_level(logging.WARNING, logger=DHT_LOGGER):
            await provided_count(relax=False, keys=2)
        assert not [r for r in caplog.records if "Failed to read DHT message" in r.getMessage()]
        logger.warning("Failed to read DHT message from stream: %s", "real trouble")
        assert [r.getMessage() for r in caplog.records] == ["Failed to read DHT message from stream: real trouble"]


async def provided_count(relax: bool, keys: int) -> tuple[int, int]:
    """(how many provide() calls reported success, how many records the server stored) for `keys` provides."""
    client, server = build_host(create_new_key_pair()), build_host(create_new_key_pair())
    client_dht, server_dht = KadDHT(client, DHTMode.SERVER), KadDHT(server, DHTMode.SERVER)
    if relax:
        relax_dht_server_limits(server_dht)
    async with running(client, server), background_trio_service(client_dht), background_trio_service(server_dht):
        await connect(client, server)
        await client_dht.add_peer(server.get_id(), skip_server_mode_check=True)
        successes = 0
        for i in range(keys):
            successes += await client_dht.provider_store.provide(key_multihash(f"k{i}"))
        with trio.move_on_after(2):
            while len(server_dht.provider_store.providers) < keys:
                await trio.sleep(0.05)
        return successes, len(server_dht.provider_store.providers)


async def test_add_provider_beyond_10_per_10s_is_silently_dropped_unless_relaxed() -> None:
    assert await provided_count(relax=False, keys=14) == (14, 10)
    assert await provided_count(relax=True, keys=14) == (14, 14)


async def test_dht_protocol_prefix_is_ignored() -> None:
    host = build_host(create_new_key_pair())
    KadDHT(host, DHTMode.SERVER, protocol_prefix="/spegel")
    protocols = host.get_mux().get_protocols()
    assert KAD_PROTOCOL == "/ipfs/kad/1.0.0"
    assert KAD_PROTOCOL in protocols
    assert not any(str(p).startswith("/spegel") for p in protocols)


async def sink(stream: INetStream) -> None:
    try:
        while await stream.read(65536):
            pass
    except Exception:
        pass


@pytest.mark.parametrize("ours", [False, True])
async def test_the_swarm_dials_every_peer_in_its_peer_store_unless_auto_dialling_is_stopped(ours: bool) -> None:
    a = build_host(create_new_key_pair()) if ours else new_host(key_pair=create_new_key_pair())
    b = build_host(create_new_key_pair()) if ours else new_host(key_pair=create_new_key_pair())
    async with running(a, b):
        a.get_peerstore().add_addrs(b.get_id(), b.get_transport_addrs(), 3600)
        await a.get_network().auto_connector.maybe_connect()  # what its background task and disconnects call
        with trio.move_on_after(3):
            while b.get_id() not in a.get_connected_peers():
                await trio.sleep(0.05)
        assert (b.get_id() in a.get_connected_peers()) is not ours


async def test_a_cancelled_stream_write_breaks_the_whole_connection() -> None:
    a, b = build_host(create_new_key_pair()), build_host(create_new_key_pair())
    b.set_stream_handler("/sink/1", sink)
    async with running(a, b):
        await connect(a, b)
        (connection,) = a.get_network().get_connections(b.get_id())
        for attempt in range(1, 40):  # cancel ever later until a cancellation lands mid-write
            try:
                with trio.fail_after(10):
                    stream = await a.new_stream(b.get_id(), ["/sink/1"])
            except StreamFailure:
                break  # the connection is already broken
            with trio.move_on_after(0.0001 * attempt):
                await stream.write(b"x" * 300_000)
            await trio.sleep(0.05)
            if connection.is_closed:
                break
        with trio.fail_after(5):
            while not connection.is_closed:
                await trio.sleep(0.05)
        # Closed, yet the peer is still listed as connected.
        assert b.get_id() in a.get_connected_peers()


async def test_detached_calls_leave_the_call_running_past_the_callers_deadline() -> None:
    finished = trio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await trio.sleep(0.2)
        finished.set()
        return "done"

    async with trio.open_nursery() as nursery:
        detached = DetachedCalls[str](nursery, limit=1, bound=5, default="late")
        now = trio.current_time()
        assert await detached.wait("k", slow, now + 0.01) == "late"
        assert await detached.wait("other", slow, now + 1) == "late"  # over the limit: answered at once
        assert await detached.wait("k", slow, trio.current_time() + 5) == "done"  # joined the running call
        assert finished.is_set() and calls == 1
