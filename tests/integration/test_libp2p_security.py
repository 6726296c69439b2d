"""Hostile peers against real routers and mirrors: each test runs real processes (`spegel registry`, or the router
node driver) and a rogue libp2p peer built with the project's own host and message code, which announces whatever
the test tells it.

- Without the cluster key, or offering only plaintext, a peer cannot connect; a router refuses to start on a
  non-loopback address without a key (exit 2, one line) unless told `--insecure-no-psk`.
- A registry address with a path, or on another host, is refused: the mirror never connects there (a listener
  counts connections); a peer-exchange record naming another host is never dialled.
- A tag whose manifest does not hash to the digest the peer announced is not served (404: containerd goes
  upstream).
- 300,000 announced keys: the index keeps `--router-max-keys-per-peer`, counts the rest refused (RSS printed);
  an oversized frame drops the stream; a peer's entries go `--router-peer-grace` after it disconnects.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL
from libp2p.stream_muxer.yamux.yamux import Yamux

from benchmark.daemons import Registry, Spegel, free_address, spegel_command, start_loopback_node
from benchmark.images import ImageSpec, build, push
from benchmark.router_cluster import NodeProcess
from spegel.oci.digest import Digest
from spegel.oci.mediatypes import OCI_MANIFEST
from spegel.routing.index import Announcement
from spegel.routing.libp2p import messages
from spegel.routing.libp2p.host import build_host, close_host, learn_peer_id
from spegel.routing.overlay import Sequence
from spegel.store.layout import write_layout

PSK_HEX = "3c" * 32
ANNOUNCE = TProtocol(messages.ANNOUNCE_PROTOCOL)


def write_psk(path: Path, hex_key: str = PSK_HEX) -> str:
    path.write_text(f"{hex_key}\n")
    return str(path)


class RoguePeer:
    """A libp2p host that opens announcement streams to a target and writes what it is told."""

    def __init__(self, host: IHost) -> None:
        self.host = host
        self.peer_id = str(host.get_id())
        self._streams: list[INetStream] = []
        self._number = 0

    def state(
        self, registry: str, keys: list[Announcement], listen: tuple[str, ...] = (), origin: str | None = None
    ) -> bytes:
        """The frame of a State of this rogue's (or of `origin`'s, passed on), numbered after the last one."""
        self._number += 1
        sequence = Sequence(1, self._number)
        return messages.encode(messages.State(origin or self.peer_id, sequence, registry, listen, (), tuple(keys)))

    async def connect(self, addr: str) -> ID:
        """Connect to the router at `addr` (no /p2p part needed); returns its peer id."""
        target = multiaddr.Multiaddr(addr.split("/p2p/")[0])
        peer = await learn_peer_id(self.host, target, 5.0)
        with trio.fail_after(5):
            await self.host.connect(PeerInfo(peer, [target]))
        return peer

    async def announce(self, peer: ID, *frames: bytes) -> None:
        """Open a new announcement stream to `peer` and write `frames` (kept open until the rogue stops)."""
        with trio.fail_after(5):
            stream = await self.host.new_stream(peer, [ANNOUNCE])
        self._streams.append(stream)
        for frame in frames:
            await stream.write(frame)


@contextlib.asynccontextmanager
async def rogue_peer(psk_hex: str | None = PSK_HEX, plaintext_only: bool = False) -> AsyncIterator[RoguePeer]:
    """A rogue on a free loopback port: our own host (Noise) by default, or one that offers only plaintext."""
    key_pair = create_new_key_pair()
    if plaintext_only:
        host = new_host(
            key_pair=key_pair,
            sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
            muxer_opt={YAMUX_PROTOCOL: Yamux},
            psk=psk_hex,
        )
    else:
        host = build_host(key_pair, psk_hex)
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        try:
            yield RoguePeer(host)
        finally:
            await close_host(host)


class CountingListener:
    """A TCP listener that counts the connections it accepts (and answers each with a 404)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.address = ""

    async def serve(self, host: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def handle(stream: trio.SocketStream) -> None:
            self.accepted += 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.receive_some(65536)
                await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await stream.aclose()

        listeners = await trio.open_tcp_listeners(0, host=host)
        self.address = f"{host}:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(handle, listeners)


async def serve_manifest(
    body: bytes, served: list[int] | None = None, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """A peer's registry answering every request with `body` as an OCI manifest (its own digest in the header);
    counts the requests in `served[0]` when given."""
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {len(body)}\r\n"
        f"Docker-Content-Digest: {Digest.of(body)}\r\nConnection: close\r\n\r\n"
    ).encode()

    async def handle(stream: trio.SocketStream) -> None:
        if served is not None:
            served[0] += 1
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.receive_some(65536)
            await stream.send_all(head + body)
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(f"127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    await trio.serve_listeners(handle, listeners)


def manifest(seed: int) -> bytes:
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + f"{seed:064x}", "size": 2}
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": []}).encode()


@contextlib.contextmanager
def mirror_process(tmp_path: Path, *router_flags: str) -> Iterator[tuple[Spegel, str]]:
    """A real `spegel registry` (empty OCI layout store, libp2p router with the cluster key); yields it and its
    router address."""
    layout = tmp_path / "layout"
    write_layout(layout, {}, [])
    router_addr = free_address()
    router = ["--router", "libp2p", "--router-addr", router_addr, "--data-dir", str(tmp_path / "data")]
    router += ["--router-psk-file", write_psk(tmp_path / "psk"), *router_flags]
    with Spegel.registry(f"oci-layout:{layout}", tmp_path / "spegel.log", router=router) as mirror:
        yield mirror, f"/ip4/127.0.0.1/tcp/{router_addr.rsplit(':', 1)[1]}"


async def until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    try:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


def logged(mirror: Spegel, text: str) -> bool:
    return any(text in json.dumps(record) for record in mirror.log_records())


# ---- the cluster secret ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--router-addr", "0.0.0.0:0"],
        ["--router-addr", "127.0.0.1:0", "--static-bootstrap-peers", "/ip4/10.0.0.1/tcp/5001"],
        ["--router-addr", "127.0.0.1:0", "--bootstrap-kind", "dns", "--dns-bootstrap-domain", "spegel.example"],
    ],
)
def test_registry_without_a_key_refuses_a_non_loopback_cluster(tmp_path: Path, flags: list[str]) -> None:
    layout = tmp_path / "layout"
    write_layout(layout, {}, [])
    argv = [*spegel_command(), "registry", "--store", f"oci-layout:{layout}", "--registry-addr", free_address()]
    argv += ["--metrics-addr", free_address(), "--router", "libp2p", "--data-dir", str(tmp_path / "data"), *flags]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no --router-psk-file" in result.stderr, result.stderr
    assert "--insecure-no-psk" in result.stderr


async def test_insecure_no_psk_runs_and_a_loopback_cluster_needs_no_key(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        flags = ["--router-addr", "0.0.0.0:0", "--insecure-no-psk"]
        node = await NodeProcess.start(nursery, "open", tmp_path / "open", "127.0.0.1:5000", flags)
        local = await NodeProcess.start(nursery, "local", tmp_path / "local", "127.0.0.1:5000")
        assert (await node.request("status"))["peer_id"] and (await local.request("status"))["peer_id"]
        await node.close()
        await local.close()


def test_the_host_offers_noise_only() -> None:
    host = build_host(create_new_key_pair(), PSK_HEX)
    offered = host.get_network().upgrader.security_multistream.transports  # type: ignore[attr-defined]
    assert list(offered) == [NOISE_PROTOCOL]


@pytest.mark.parametrize(
    ("name", "rogue_psk", "plaintext_only", "node_flags"),
    [
        ("wrong key", "77" * 32, False, "psk"),
        ("no key", None, False, "psk"),
        ("plaintext with the key", PSK_HEX, True, "psk"),
        ("plaintext, node without key", None, True, "none"),
    ],
)
async def test_a_peer_without_the_key_or_offering_plaintext_cannot_connect_or_announce(
    tmp_path: Path, name: str, rogue_psk: str | None, plaintext_only: bool, node_flags: str
) -> None:
    flags = ["--router-psk-file", write_psk(tmp_path / "psk")] if node_flags == "psk" else []
    async with trio.open_nursery() as nursery:
        node = await NodeProcess.start(nursery, "node", tmp_path / "node", "127.0.0.1:5000", flags)
        try:
            async with rogue_peer(rogue_psk, plaintext_only) as rogue:
                target = multiaddr.Multiaddr(node.addrs[0].split("/p2p/")[0])
                peer = ID.from_base58(node.peer_id)
                with pytest.raises(Exception):  # noqa: B017 - any failure to connect: handshake, reset, timeout
                    with trio.fail_after(5):
                        await rogue.host.connect(PeerInfo(peer, [target]))
                        await rogue.announce(peer, rogue.state(":5000", [Announcement("sha256:" + "e" * 64)]))
                status = await node.request("status")
                assert status["connected"] == [] and rogue.peer_id not in status["holds"], name
        finally:
            await node.close()


# ---- announced addresses --------------------------------------------------------------------------------------


async def test_a_passed_on_state_of_an_origin_that_is_no_peer_id_drops_the_stream_and_the_node_goes_on(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        node = await NodeProcess.start(
            nursery, "node", tmp_path / "node", "127.0.0.1:5000", ["--router-psk-file", write_psk(tmp_path / "psk")]
        )
        try:
            async with rogue_peer() as rogue:
                target = await rogue.connect(node.addrs[0])
                own = rogue.state(":5000", [Announcement("sha256:" + "2" * 64)])
                garbage = rogue.state("127.0.0.1:5001", [], ("/ip4/127.0.0.1/tcp/1",), origin="not a peer id!")
                await rogue.announce(target, own, garbage)
                await until(lambda: "is not a peer id" in node.stderr_tail(), what="the bad origin refused")
                await trio.sleep(2)  # the node's overlay upkeep (every second) runs with what it holds
                status = await node.request("status")
                assert "not a peer id!" not in status["members"] and rogue.peer_id in status["members"]
        finally:
            await node.close()
        nursery.cancel_scope.cancel()


async def test_a_registry_address_with_a_path_or_on_another_host_is_never_requested(tmp_path: Path) -> None:
    digest = "sha256:" + "5a" * 32
    blob_path = f"/v2/team/app/blobs/{digest}"
    same_host, other_host = CountingListener(), CountingListener()
    with mirror_process(tmp_path) as (mirror, router_addr):
        async with trio.open_nursery() as nursery, rogue_peer() as rogue:
            await nursery.start(same_host.serve, "127.0.0.1")
            await nursery.start(other_host.serve, "127.0.0.2")
            target = await rogue.connect(router_addr)
            async with httpx.AsyncClient(base_url=mirror.url) as client:
                for announced in (
                    f"{same_host.address}/internal/admin?token=x#",  # the SSRF of issue 14
                    other_host.address,  # a third host, not the rogue's own
                ):
                    await rogue.announce(target, rogue.state(announced, [Announcement(digest)]))
                    await until(lambda a=announced: logged(mirror, a[:30]), what="the refusal logged")
                    answer = await client.get(blob_path, params={"ns": "example.com"})
                    assert answer.status_code == 404
                assert (same_host.accepted, other_host.accepted) == (0, 0)

                # The same announcement with a bare address on the rogue's own host is used: the listener would
                # have counted the requests above.
                await rogue.announce(target, rogue.state(same_host.address, [Announcement(digest)]))
                with trio.fail_after(10):
                    while same_host.accepted == 0:
                        await client.get(blob_path, params={"ns": "example.com"})
                        await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    print(f"connections: same host {same_host.accepted} (after the valid address only), other host 0")


async def test_passed_on_states_name_no_host_to_dial_outside_the_cluster(tmp_path: Path) -> None:
    """Two other origins' states passed on by the rogue (on 127.0.0.1): one listening on the rogue's own host,
    dialled; one on another host (127.0.0.2), never dialled."""
    inside, outside = CountingListener(), CountingListener()
    async with trio.open_nursery() as nursery:
        node = await NodeProcess.start(
            nursery, "node", tmp_path / "node", "127.0.0.1:5000", ["--router-psk-file", write_psk(tmp_path / "psk")]
        )
        try:
            await nursery.start(inside.serve, "127.0.0.1")
            await nursery.start(outside.serve, "127.0.0.2")
            async with rogue_peer() as rogue:
                target = await rogue.connect(node.addrs[0])
                passed_on = [
                    rogue.state(
                        ":5000", [], (multiaddr_of(listener),), str(ID.from_pubkey(create_new_key_pair().public_key))
                    )
                    for listener in (outside, inside)
                ]
                await rogue.announce(target, rogue.state(":5000", [Announcement("sha256:" + "1" * 64)]), *passed_on)
                await until(lambda: inside.accepted > 0, what="the record on the rogue's host dialled")
                assert outside.accepted == 0
        finally:
            await node.close()
        nursery.cancel_scope.cancel()
    print(f"dials: rogue's host {inside.accepted}, another host {outside.accepted}")


def multiaddr_of(listener: CountingListener) -> str:
    ip, port = listener.address.split(":")
    return f"/ip4/{ip}/tcp/{port}"


# ---- forged tags ----------------------------------------------------------------------------------------------


async def test_a_tag_served_as_another_manifest_than_announced_is_not_served(tmp_path: Path) -> None:
    honest, forged = manifest(1), manifest(2)
    tag = "example.com/team/app:v1"
    with mirror_process(tmp_path) as (mirror, router_addr):
        async with trio.open_nursery() as nursery, rogue_peer() as rogue:
            registry = await nursery.start(serve_manifest, forged)
            target = await rogue.connect(router_addr)
            async with httpx.AsyncClient(base_url=mirror.url) as client:
                # Announced as what it serves, the tag is served (the path works end to end) ...
                await rogue.announce(target, rogue.state(registry, [Announcement(tag, digest=str(Digest.of(forged)))]))
                assert (await status_when(client, 200)).content == forged
                # ... announced as the honest manifest while serving the forged one, it is not.
                await rogue.announce(target, rogue.state(registry, [Announcement(tag, digest=str(Digest.of(honest)))]))
                await status_when(client, 404)
                for _ in range(4):
                    answer = await client.get("/v2/team/app/manifests/v1", params={"ns": "example.com"})
                    assert answer.status_code == 404, "falls through: containerd asks upstream"
            nursery.cancel_scope.cancel()


async def status_when(client: httpx.AsyncClient, status: int) -> httpx.Response:
    """The tag's answer once it has `status` (the mirror applies an announcement within milliseconds)."""
    with trio.fail_after(10):
        while (
            answer := await client.get("/v2/team/app/manifests/v1", params={"ns": "example.com"})
        ).status_code != status:
            await trio.sleep(0.1)
    return answer


@pytest.mark.slow
async def test_a_forged_tag_never_reaches_containerd(tmp_path: Path) -> None:
    """A real containerd pulls a tag through its mirror while a key-holding rogue announces that tag (with the real
    manifest's digest) and serves a forged manifest: the mirror asks the rogue, refuses its answer, containerd
    pulls from upstream, and the content store holds the real manifest, never the forged one."""
    image = build(ImageSpec(layers=(200_000,), seed=1401))
    forged = manifest(3)
    served = [0]
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(Registry(tmp_path / "upstream"))
        async with httpx.AsyncClient() as client:
            await push(image, client, upstream.url, "team/app", "v1")
        psk = ["--router-psk-file", write_psk(tmp_path / "psk")]
        node = start_loopback_node(stack, tmp_path / "node", upstream.url, None, mirror_flags=psk)
        tag = f"{upstream.address}/team/app:v1"
        async with trio.open_nursery() as nursery, rogue_peer() as rogue:
            registry = await nursery.start(serve_manifest, forged, served)
            target = await rogue.connect(f"/ip4/127.0.0.1/tcp/{node.router_addr.rsplit(':', 1)[1]}")
            await rogue.announce(target, rogue.state(registry, [Announcement(tag, digest=str(image.top.digest))]))
            async with httpx.AsyncClient(base_url=node.mirror.url) as client:
                with trio.fail_after(10):  # the mirror asks the rogue once the announcement is applied
                    while served[0] == 0:
                        answer = await client.get("/v2/team/app/manifests/v1", params={"ns": upstream.address})
                        assert answer.status_code == 404
                        await trio.sleep(0.1)
            await node.pull(tag)
            nursery.cancel_scope.cancel()
        content = node.containerd.content_root / "blobs" / "sha256"
        assert (content / image.top.digest.hex).exists()
        assert not (content / Digest.of(forged).hex).exists()
        assert any(e.path == "/v2/team/app/manifests/v1" for e in upstream.access_log()), "the tag came from upstream"
    print(f"rogue asked {served[0]} times; containerd holds {image.top.digest}")


# ---- key floods, frame limits, departures ---------------------------------------------------------------------


async def test_a_key_flood_is_bounded_and_a_departed_peer_is_forgotten(tmp_path: Path) -> None:
    limit, flood = 50_000, 300_000
    flags = ["--router-psk-file", write_psk(tmp_path / "psk"), "--router-peer-grace", "1s"]
    async with trio.open_nursery() as nursery:
        node = await NodeProcess.start(nursery, "node", tmp_path / "node", "127.0.0.1:5000", flags)
        try:
            before = (await node.request("usage"))["rss"]
            async with rogue_peer() as rogue:
                target = await rogue.connect(node.addrs[0])
                keys = [Announcement(f"sha256:{i:064x}") for i in range(flood)]
                delta = messages.Delta(rogue.peer_id, Sequence(1, 1), tuple(keys))
                frames = [messages.encode(m) for m in messages.split(delta)]
                await rogue.announce(target, *frames)
                with trio.fail_after(60):
                    while (status := await node.request("status"))["refused"] < flood - limit:
                        await trio.sleep(0.2)
                after = (await node.request("usage"))["rss"]
                print(
                    f"{flood} keys announced in {len(frames)} frames: index holds {status['holds'][rogue.peer_id]}, "
                    f"refused {status['refused']}; RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB"
                )
                assert status["holds"][rogue.peer_id] == limit
                assert after - before < 150 * 2**20

                # An oversized frame drops the stream; the node carries on.
                await rogue.announce(target, (messages.MAX_FRAME + 1).to_bytes(4, "big") + b"{")
                await until(lambda: "exceeds" in node.stderr_tail(), what="the oversized frame refused")
            # The rogue is gone (its host closed): its entries go after the grace, not after the 600 s TTL.
            start = trio.current_time()
            with trio.fail_after(10):
                while rogue.peer_id in (await node.request("status"))["holds"]:
                    await trio.sleep(0.1)
            print(f"entries of the departed peer gone {trio.current_time() - start:.1f} s after it left")
        finally:
            await node.close()
