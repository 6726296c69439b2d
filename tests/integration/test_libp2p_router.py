"""The libp2p router, in one process: real hosts on loopback TCP, opened from the same flags `spegel registry` takes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from spegel.cli import add_router_flags, router_options
from spegel.flags import FlagParser
from spegel.routing.base import ClaimOrder, Holder, KeyState
from spegel.routing.claims import owner
from spegel.routing.config import RouterConfigError, RouterOptions, open_router
from spegel.routing.keys import key_multihash
from spegel.routing.libp2p.bootstrap import BootstrapError, HttpBootstrapper, serve_id
from spegel.routing.libp2p.host import IDENTITY_FILE
from spegel.routing.libp2p.router import CLAIM, Libp2pRouter

PSK = "/key/swarm/psk/1.0.0/\n/base16/\n" + "ab" * 32 + "\n"


def parse(*flags: str) -> RouterOptions:
    parser = FlagParser(environ={})
    add_router_flags(parser)
    return router_options(parser.parse_args(list(flags)))


@contextlib.asynccontextmanager
async def router(tmp: Path, name: str, *flags: str, registry: str = "127.0.0.1:5000") -> AsyncIterator[Libp2pRouter]:
    args = parse("--router-addr", "127.0.0.1:0", "--data-dir", str(tmp / name), "--router-record-ttl", "30s", *flags)
    async with open_router(args, registry) as opened:
        yield opened


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def visible(node: Libp2pRouter, key: str, timeout: float = 10.0) -> list[Holder]:
    with trio.fail_after(timeout):
        while not (found := await node.lookup(key, 3, 0.02)):
            await trio.sleep(0.02)
    return found


async def test_advertise_withdraw_and_states(tmp_path: Path) -> None:
    async with router(tmp_path, "a", registry="0.0.0.0:5000") as a:
        b_flags = ("--static-bootstrap-peers", a.listen_addrs()[0])
        async with router(tmp_path, "b", *b_flags) as b:
            await until(lambda: a.ready() and b.ready())
            await a.advertise(["sha256:1", "docker.io/library/x:1"])
            # The unspecified registry host is replaced by the address a connects from.
            assert await visible(b, "sha256:1") == [Holder("127.0.0.1:5000")]
            assert await visible(b, "docker.io/library/x:1") == [Holder("127.0.0.1:5000")]
            await b.advertise(["sha256:2"], KeyState.IN_PROGRESS, available=4096)
            assert await visible(a, "sha256:2") == [Holder("127.0.0.1:5000", KeyState.IN_PROGRESS, 4096)]
            assert [h.peer for h in await a.lookup("sha256:2", 3, 0.02)] == [b.name] and a.name != b.name
            assert await a.lookup("sha256:1", 3, 0.02) == []  # never itself
            await a.withdraw(["sha256:1"])
            with trio.fail_after(10):
                while b.index.lookup("sha256:1", 1, trio.current_time()):
                    await trio.sleep(0.02)
            assert await b.lookup("docker.io/library/x:1", 3, 0.02) == [Holder("127.0.0.1:5000")]


async def test_state_exchange_on_join_and_peer_exchange(tmp_path: Path) -> None:
    async with router(tmp_path, "a", registry="127.0.0.1:5001") as a:
        await a.advertise(["early"])
        async with router(tmp_path, "b", "--static-bootstrap-peers", a.listen_addrs()[0]) as b:
            # b joins after the advertisement: the state exchange brings it.
            assert await visible(b, "early") == [Holder("127.0.0.1:5001")]
            async with router(
                tmp_path, "c", "--static-bootstrap-peers", a.listen_addrs()[0], registry="127.0.0.1:5003"
            ) as c:
                # c bootstrapped from a only; peer exchange connects it to b as well.
                await until(lambda: b.peer_id in c.connected_peers())
                await c.advertise(["late"])
                assert await visible(b, "late") == [Holder("127.0.0.1:5003")]


async def test_miss_returns_empty_within_the_timeout(tmp_path: Path) -> None:
    async with router(tmp_path, "a") as a, router(tmp_path, "b", "--static-bootstrap-peers", a.listen_addrs()[0]) as b:
        await until(lambda: a.ready() and b.ready())
        with trio.fail_after(1):
            assert await b.lookup("sha256:nobody", 3, 0.02) == []
        assert await b.lookup("", 3, 0.02) == []
        with pytest.raises(ValueError):
            await b.advertise([""])


async def test_dht_fallback_finds_a_holder_the_index_lost(tmp_path: Path) -> None:
    delay = 2.0
    async with (
        router(tmp_path, "a", "--router-dht-provide-delay", f"{delay}s") as a,
        router(tmp_path, "b", "--static-bootstrap-peers", a.listen_addrs()[0]) as b,
    ):
        await until(lambda: a.ready() and b.ready())
        advertised = trio.current_time()
        await a.advertise(["sha256:dht"])
        await visible(b, "sha256:dht")
        # Wait for a's provider record to reach b's DHT store (not before the provide delay), then make b's
        # index forget a's keys.
        with trio.fail_after(delay + 10):
            while not b.dht.provider_store.get_providers(key_multihash("sha256:dht")):
                await trio.sleep(0.05)
        assert trio.current_time() - advertised >= delay
        b.index.forget(str(a.peer_id))
        found = await b.lookup("sha256:dht", 3, 0.5)
        assert found == [Holder("127.0.0.1:5000")] and found[0].peer == a.name == str(a.peer_id)


async def test_identity_persists_in_the_data_dir(tmp_path: Path) -> None:
    async with router(tmp_path, "a") as a:
        first = a.peer_id
    assert (tmp_path / "a" / IDENTITY_FILE).stat().st_mode & 0o777 == 0o600
    async with router(tmp_path, "a") as again:
        assert again.peer_id == first
    async with router(tmp_path, "other") as other:
        assert other.peer_id != first


async def test_bootstrap_peer_without_peer_id(tmp_path: Path) -> None:
    async with router(tmp_path, "a") as a:
        bare = a.listen_addrs()[0].split("/p2p/")[0]
        async with router(tmp_path, "b", "--static-bootstrap-peers", f"{bare},/ip4/127.0.0.1/tcp/1") as b:
            await until(lambda: a.peer_id in b.connected_peers())
            await until(b.ready)


async def test_http_bootstrap(tmp_path: Path) -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with router(tmp_path, "a", "--http-bootstrap-addr", f"127.0.0.1:{port}") as a:
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{port}/id")
        assert response.status_code == 200
        assert response.text.splitlines() == a.listen_addrs()
        flags = ("--bootstrap-kind", "http", "--http-bootstrap-url", f"http://127.0.0.1:{port}/id")
        async with router(tmp_path, "b", *flags) as b:
            await until(lambda: a.peer_id in b.connected_peers())


async def test_dns_bootstrap(tmp_path: Path) -> None:
    # Same port on two loopback addresses; "localhost" resolves to the first.
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args_a = ("--router-addr", f"127.0.0.1:{port}")
    async with router(tmp_path, "a", *args_a) as a:
        flags = ("--router-addr", f"127.0.0.2:{port}", "--bootstrap-kind", "dns", "--dns-bootstrap-domain", "localhost")
        parsed = parse("--data-dir", str(tmp_path / "b"), *flags)
        async with open_router(parsed, "127.0.0.2:5000") as b:
            await until(lambda: a.peer_id in b.connected_peers())


async def test_a_lone_node_is_ready_and_an_unreachable_cluster_is_not(tmp_path: Path) -> None:
    async with router(tmp_path, "alone") as alone:
        await until(alone.ready)
    async with router(tmp_path, "lost", "--static-bootstrap-peers", "/ip4/127.0.0.1/tcp/1") as lost:
        await trio.sleep(1)
        assert not lost.ready()


async def test_wrong_private_network_key_cannot_join(tmp_path: Path) -> None:
    (tmp_path / "good.key").write_text(PSK)
    (tmp_path / "bad.key").write_text("cd" * 32)
    async with router(tmp_path, "a", "--router-psk-file", str(tmp_path / "good.key")) as a:
        await a.advertise(["secret"])
        addr = a.listen_addrs()[0]
        good = ("--router-psk-file", str(tmp_path / "good.key"), "--static-bootstrap-peers", addr)
        async with router(tmp_path, "b", *good) as b:
            assert await visible(b, "secret")
        for flags in (("--router-psk-file", str(tmp_path / "bad.key")), ()):
            async with router(tmp_path, "c", *flags, "--static-bootstrap-peers", addr) as c:
                await trio.sleep(2)
                assert c.connected_peers() == []
                assert not c.ready()
                assert await c.lookup("secret", 3, 0.02) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--router-addr", "nowhere"), "invalid router address"),
        (("--router-addr", "example.com:5001"), "must be an IP address"),
        (("--static-bootstrap-peers", "/not/a/multiaddr"), "invalid multiaddr"),
        (("--bootstrap-kind", "dns"), "--dns-bootstrap-domain"),
        (("--bootstrap-kind", "http"), "--http-bootstrap-url"),
        (("--router-psk-file", "/nonexistent/psk"), "cannot read private network key"),
    ],
)
async def test_bad_flags_are_refused_in_one_line(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    args = parse("--data-dir", str(tmp_path), *flags)
    with pytest.raises(RouterConfigError, match=message):
        async with open_router(args, "127.0.0.1:5000"):
            pass


async def test_bad_key_and_identity_files(tmp_path: Path) -> None:
    (tmp_path / "short.key").write_text("abcd\n")
    with pytest.raises(RouterConfigError, match="64 hex digits"):
        async with router(tmp_path, "x", "--router-psk-file", str(tmp_path / "short.key")):
            pass
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / IDENTITY_FILE).write_bytes(b"garbage")
    with pytest.raises(RouterConfigError, match="not a libp2p private key"):
        async with router(tmp_path, "y"):
            pass


async def test_http_bootstrap_fills_in_an_unspecified_ip_from_the_url(tmp_path: Path) -> None:
    peer = "12D3KooWGJ69AYrWgdxE4AiCfwvtEXbm6jWE85VT6nJPtyhfMGsp"
    served = [f"/ip4/0.0.0.0/tcp/5001/p2p/{peer}", f"/ip4/10.1.2.3/tcp/5001/p2p/{peer}"]
    async with trio.open_nursery() as nursery:
        (bound,) = await nursery.start(serve_id, lambda: served, "127.0.0.1:0")
        port = bound.rsplit(":", 1)[1]
        candidates = await HttpBootstrapper(f"http://localhost:{port}/id").candidates()
        assert [str(c) for c in candidates] == [f"/ip4/127.0.0.1/tcp/5001/p2p/{peer}", served[1]]
        with pytest.raises(BootstrapError, match="answered 404"):
            await HttpBootstrapper(f"http://127.0.0.1:{port}/nothing").candidates()
        nursery.cancel_scope.cancel()
    with pytest.raises(BootstrapError, match="cannot fetch"):
        await HttpBootstrapper("http://127.0.0.1:1/id").candidates()


async def test_a_miss_never_waits_when_every_connected_peer_is_heard_even_after_a_peer_died(tmp_path: Path) -> None:
    async with router(tmp_path, "a") as a:
        bootstrap = ("--static-bootstrap-peers", a.listen_addrs()[0])
        async with router(tmp_path, "b", *bootstrap) as b:
            async with router(tmp_path, "c", *bootstrap) as c:
                await until(lambda: len(a.connected_peers()) == 2 and a.ready() and c.ready())
                await c.advertise(["sha256:c"])
                await visible(a, "sha256:c")
            # c is gone (it may linger in the DHT routing table); b is connected and heard.
            await until(lambda: c.peer_id not in a.connected_peers())
            with trio.CancelScope() as scope:
                scope.cancel()  # any wait inside lookup would raise Cancelled here
                found = await a.lookup("sha256:nobody", 3, 5.0)
            assert not scope.cancelled_caught
            assert found == []
            assert b.peer_id in a.connected_peers()


@pytest.mark.parametrize(("rate", "limit"), [("1", 30), ("5", 150), ("0.1", 10)])
async def test_the_dht_takes_three_times_the_provide_rate_from_a_peer(tmp_path: Path, rate: str, limit: int) -> None:
    """Was 10,000 ADD_PROVIDER per 10 s from any peer: enough for one peer to fill the provider store."""
    async with router(tmp_path, "a", "--router-dht-provide-rate", rate) as a:
        assert a.dht is not None and a.dht._provider_rate_max == limit


async def test_claims_of_one_key_get_one_order_from_its_owner(tmp_path: Path) -> None:
    """Three nodes claim the same blobs at the same moment: whatever the announcements did, each blob gets one
    first claimant (position 0), and each later one is told exactly the claimants before it."""
    async with (
        router(tmp_path, "a", registry="127.0.0.1:5001") as a,
        router(tmp_path, "b", "--static-bootstrap-peers", a.listen_addrs()[0], registry="127.0.0.1:5002") as b,
        router(tmp_path, "c", "--static-bootstrap-peers", a.listen_addrs()[0], registry="127.0.0.1:5003") as c,
    ):
        nodes = [a, b, c]
        registry = {a.name: "127.0.0.1:5001", b.name: "127.0.0.1:5002", c.name: "127.0.0.1:5003"}
        await until(lambda: all(n.index.address(o.name) is not None for n in nodes for o in nodes if o is not n))
        owners = set()
        for i in range(8):
            key = f"sha256:{i:064x}"
            orders = {}

            async def claim(node: Libp2pRouter, key: str = key, orders: dict = orders) -> None:  # type: ignore[type-arg]
                orders[node.name] = await node.order_claim(key, 5.0, time.time())

            async with trio.open_nursery() as nursery:
                for node in nodes:
                    nursery.start_soon(claim, node)
            assert all(order is not None for order in orders.values())
            by_position = sorted(orders, key=lambda name: orders[name].position)
            assert [orders[name].position for name in by_position] == [0, 1, 2]
            for name in by_position:
                ahead = orders[name].ahead
                assert [h.peer for h in ahead] == by_position[: orders[name].position]
                assert [h.address for h in ahead] == [registry[p] for p in by_position[: orders[name].position]]
                assert all(h.state is KeyState.IN_PROGRESS for h in ahead)
            owners |= {n.name for n in nodes if len(n.claim_book)}
        assert len(owners) >= 2  # 8 keys spread over the three owners (all on one: p = 3 * (1/3)^8)


async def test_a_malformed_claim_is_refused_and_the_owner_goes_on(tmp_path: Path) -> None:
    async with (
        router(tmp_path, "a", registry="127.0.0.1:5001") as a,
        router(tmp_path, "b", "--static-bootstrap-peers", a.listen_addrs()[0], registry="127.0.0.1:5002") as b,
    ):
        await until(lambda: a.index.address(b.name) is not None and b.index.address(a.name) is not None)
        for junk in (b"\x00\x00\x00\x05hello", b'\x00\x00\x00\x0f{"type":"xyz"} ', b"\xff\xff\xff\xff"):
            stream = await b.host.new_stream(a.peer_id, [CLAIM])
            await stream.write(junk)
            with trio.fail_after(10):
                with contextlib.suppress(Exception):  # the owner resets the stream
                    assert await stream.read(1024) == b""
            await stream.reset()
        key = next(f"sha256:{i:064x}" for i in range(100) if owner(f"sha256:{i:064x}", [a.name, b.name]) == a.name)
        order = await b.order_claim(key, 5.0, time.time())
        assert order is not None and order.position == 0
        assert await a.order_claim(key, 5.0, time.time()) == ClaimOrder(
            1, (Holder("127.0.0.1:5002", KeyState.IN_PROGRESS),)
        )


async def test_an_owner_that_does_not_answer_is_left_out_of_the_next_claims(tmp_path: Path) -> None:
    """A frozen owner costs the claim timeout once; the next claims go to another owner at once."""
    async with (
        router(tmp_path, "a", registry="127.0.0.1:5001") as a,
        router(tmp_path, "b", "--static-bootstrap-peers", a.listen_addrs()[0], registry="127.0.0.1:5002") as b,
    ):
        await until(lambda: a.index.address(b.name) is not None and b.index.address(a.name) is not None)

        async def never_answer(stream) -> None:  # type: ignore[no-untyped-def]
            await trio.sleep_forever()

        a.host.set_stream_handler(CLAIM, never_answer)
        keys = [f"sha256:{i:064x}" for i in range(200)]
        first, second = [key for key in keys if owner(key, [a.name, b.name]) == a.name][:2]
        started = trio.current_time()
        assert await b.order_claim(first, 0.5, time.time()) is None
        assert trio.current_time() - started >= 0.5
        started = trio.current_time()
        order = await b.order_claim(second, 0.5, time.time())
        assert order is not None and order.position == 0  # b owns it now, with a left out
        assert trio.current_time() - started < 0.5
