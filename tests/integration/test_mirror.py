"""The mirror's data path over real HTTP: several mirrors in one trio run, each with its own OCI layout store,
joined by a router that knows who holds what. Tests the request classification, multi-source chunks, resume
after a peer breaks, hedging past a silent peer, and misses answered within the resolve budget."""

from __future__ import annotations

import contextlib
import gc
import time
import warnings
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import httpx
import pytest
import trio

from benchmark.images import ImageSpec, build
from spegel.metrics import Metrics, RegistryLabels
from spegel.mirror.backend import DownloadClaims, InProgressSource, MirrorBackend, MirrorOptions
from spegel.mirror.blob import PeerBlob
from spegel.mirror.peers import PeerClient, Timeouts
from spegel.mirror.policy import RegistryFilters
from spegel.oci.digest import Digest
from spegel.registry.app import create_app
from spegel.registry.server import serve_app
from spegel.routing.base import ClaimOrder, Holder, KeyState, Router
from spegel.routing.claims import ClaimBook
from spegel.routing.memory import MemoryNetwork
from spegel.store.base import NotFound
from spegel.store.layout import OCILayoutStore, write_layout
from spegel.tracker import Tracker

REFERENCE = "example.com/team/app:v1"
CHUNK = 256 << 10


class StaticRouter:
    """Answers lookups from a fixed table (key -> holders); records what is advertised."""

    def __init__(self, table: dict[str, list[Holder]]) -> None:
        self.table = table
        self.lookups: list[str] = []
        self.name = "static"

    async def advertise(self, keys: Iterable[str], state: KeyState = KeyState.COMPLETE) -> None:
        return None

    async def withdraw(self, keys: Iterable[str]) -> None:
        return None

    async def lookup(self, key: str, count: int, timeout: float) -> list[Holder]:
        self.lookups.append(key)
        return self.table.get(key, [])[:count]

    async def order_claim(self, key: str, timeout: float, since: float) -> None:
        return None  # no owner to ask: claims are ordered as announced

    def ready(self) -> bool:
        return True


@pytest.fixture(scope="module")
def image():
    return build(ImageSpec(layers=(3 << 20,), compression="none", seed=7))


def layer_of(image) -> Digest:
    return image.platforms[0].layers[0].digest


async def start_mirror(
    nursery: trio.Nursery,
    layout: Path,
    router: Router,
    options: MirrorOptions,
    in_progress: InProgressSource | None = None,
    claims: DownloadClaims | None = None,
    peers: PeerClient | None = None,
) -> tuple[str, Metrics]:
    metrics = Metrics(RegistryLabels(["example.com"]))
    peers = peers or PeerClient(Timeouts(connect=0.5, first_byte=1.0, read=1.0, inflight_wait=0.0))
    nursery.start_soon(close_when_cancelled, peers)
    backend = MirrorBackend(OCILayoutStore(layout), router, peers, metrics, options, in_progress, claims)
    bound = await nursery.start(serve_app, create_app(backend, "example.com"), "127.0.0.1:0")
    return bound[0].removeprefix("http://"), metrics


async def close_when_cancelled(peers: PeerClient) -> None:
    """Close `peers` (its pooled connections) when the test's nursery is cancelled, as the app does on shutdown."""
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await peers.aclose()


def empty_layout(path: Path) -> Path:
    write_layout(path, {}, [])
    return path


def peer_count(metrics: Metrics, source: str) -> float:
    return (
        metrics.registry.get_sample_value(
            "spegel_mirror_requests_by_source_total", {"registry": "example.com", "source": source}
        )
        or 0.0
    )


async def test_blob_and_manifest_served_from_a_peer(tmp_path: Path, image) -> None:
    image.to_layout(tmp_path / "a", REFERENCE)
    layer = layer_of(image)
    async with trio.open_nursery() as nursery:
        a_addr, a_metrics = await start_mirror(nursery, tmp_path / "a", StaticRouter({}), MirrorOptions())
        holders = [Holder(a_addr)]
        table = {str(d.digest): holders for d in image.blobs()} | {
            REFERENCE: [Holder(a_addr, digest=str(image.top.digest))]
        }
        c_addr, c_metrics = await start_mirror(
            nursery, empty_layout(tmp_path / "c"), StaticRouter(table), MirrorOptions()
        )
        async with httpx.AsyncClient(base_url=f"http://{c_addr}") as client:
            manifest = await client.get("/v2/team/app/manifests/v1", params={"ns": "example.com"})
            assert manifest.status_code == 200
            assert manifest.headers["Docker-Content-Digest"] == str(image.top.digest)
            assert Digest.of(manifest.content) == image.top.digest
            blob = await client.get(f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"})
            assert blob.status_code == 200
            assert Digest.of(blob.content) == layer
            first = await client.get(
                f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"}, headers={"Range": "bytes=0-"}
            )
            # peer content is verified whole before it is sent; then it is complete here and ranged
            assert first.status_code == 206 and Digest.of(first.content) == layer
            resumed = await client.get(
                f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"}, headers={"Range": "bytes=1000-"}
            )
            assert resumed.status_code == 206 and resumed.content == image.read_blob(layer)[1000:]
            # a peer's request is never forwarded (C holds nothing of the config, which it never fetched)
            config = image.platforms[0].config.digest
            mirrored = await client.get(
                f"/v2/team/app/blobs/{config}", params={"ns": "example.com"}, headers={"X-Spegel-Mirrored": "true"}
            )
            assert mirrored.status_code == 404
            assert mirrored.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert peer_count(c_metrics, "peer") == 4
        assert peer_count(a_metrics, "local") == 2  # the manifest, and the layer once: C keeps its verified copy
        nursery.cancel_scope.cancel()


async def send_blob_start(stream: trio.SocketStream, data: bytes, digest: Digest, cut: int) -> None:
    """Read one request and answer it as a peer holding `data` would, up to its first `cut` bytes."""
    await stream.receive_some(65536)
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nDocker-Content-Digest: {digest}\r\n"
        "Accept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    await stream.send_all(head + data[:cut])


async def b_behind(nursery: trio.Nursery, tmp_path: Path, layer: Digest, first: str) -> tuple[Metrics, str, Metrics]:
    """Mirror B serving the layout at tmp_path/b, and mirror C whose router names `first`, then B, as the
    holders of `layer`. Returns B's metrics, C's address and C's metrics."""
    b_addr, b_metrics = await start_mirror(nursery, tmp_path / "b", StaticRouter({}), MirrorOptions())
    table = {str(layer): [Holder(first), Holder(b_addr)]}
    c_addr, c_metrics = await start_mirror(nursery, empty_layout(tmp_path / "c"), StaticRouter(table), MirrorOptions())
    return b_metrics, c_addr, c_metrics


async def serve_then_die(listener: trio.SocketListener, data: bytes, digest: Digest, cut: int) -> None:
    """A peer that answers a blob request with the right headers, sends `cut` bytes, then dies."""
    async with listener, await listener.accept() as stream:
        await send_blob_start(stream, data, digest, cut)


async def test_concurrent_gets_of_a_peer_blob_share_one_copy(tmp_path: Path, image) -> None:
    """Eight range requests for a blob that only a peer holds, sent at once: the mirror copies it from the peer
    once and answers all eight from that copy."""
    image.to_layout(tmp_path / "a", REFERENCE)
    layer = layer_of(image)
    data = image.read_blob(layer)
    async with trio.open_nursery() as nursery:
        a_addr, a_metrics = await start_mirror(nursery, tmp_path / "a", StaticRouter({}), MirrorOptions())
        table = {str(layer): [Holder(a_addr)]}
        c_addr, _ = await start_mirror(nursery, empty_layout(tmp_path / "c"), StaticRouter(table), MirrorOptions())
        piece = len(data) // 8 + 1
        got: dict[int, bytes] = {}
        async with httpx.AsyncClient(base_url=f"http://{c_addr}", timeout=30) as client:

            async def fetch(start: int) -> None:
                headers = {"Range": f"bytes={start}-{start + piece - 1}"}
                response = await client.get(
                    f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"}, headers=headers
                )
                assert response.status_code == 206
                got[start] = response.content

            async with trio.open_nursery() as requests:
                for start in range(0, len(data), piece):
                    requests.start_soon(fetch, start)
        assert b"".join(got[start] for start in sorted(got)) == data
        sent = a_metrics.registry.get_sample_value("spegel_mirror_bytes_total", {"source": "local"})
        assert sent == len(data)  # one copy, not one per request
        nursery.cancel_scope.cancel()


async def test_transfer_resumes_from_another_holder_when_a_peer_breaks(tmp_path: Path, image) -> None:
    layer = layer_of(image)
    data = image.read_blob(layer)
    image.to_layout(tmp_path / "b", REFERENCE)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    dying_addr = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_then_die, listeners[0], data, layer, (1 << 20) + 12345)
        b_metrics, c_addr, c_metrics = await b_behind(nursery, tmp_path, layer, dying_addr)
        async with httpx.AsyncClient(base_url=f"http://{c_addr}", timeout=10) as client:
            response = await client.get(f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"})
        assert response.status_code == 200
        assert Digest.of(response.content) == layer
        assert c_metrics.registry.get_sample_value("spegel_peer_resumes_total") == 1
        resumed_bytes = b_metrics.registry.get_sample_value("spegel_mirror_bytes_total", {"source": "local"})
        assert resumed_bytes <= len(data) - (1 << 20), "the second holder must resume, not start over"
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def silent_peer() -> AsyncIterator[str]:
    """The address of a peer that accepts connections and never answers."""
    with trio.socket.socket() as silent:
        await silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        yield f"127.0.0.1:{silent.getsockname()[1]}"


async def test_requests_closed_at_any_point_leave_no_peer_load(tmp_path: Path, image) -> None:
    """Clients that go away at every stage of a peer transfer (while the hedged first requests race past a
    silent holder, after the headers, mid-body), as containerd closes its chunk requests: once they are
    gone, every peer request the mirror opened is closed (`PeerClient.load` is zero for every holder)."""
    image.to_layout(tmp_path / "a", REFERENCE)
    image.to_layout(tmp_path / "b", REFERENCE)
    layer = layer_of(image)
    peers = PeerClient(Timeouts(connect=0.5, first_byte=1.0, read=1.0, inflight_wait=0.0), penalty=0.0)
    async with silent_peer() as silent_addr, trio.open_nursery() as nursery:
        a_addr, _ = await start_mirror(nursery, tmp_path / "a", StaticRouter({}), MirrorOptions())
        b_addr, _ = await start_mirror(nursery, tmp_path / "b", StaticRouter({}), MirrorOptions())
        table = {str(layer): [Holder(silent_addr), Holder(a_addr), Holder(b_addr)]}
        options = MirrorOptions(resolve_retries=3)
        c_addr, _ = await start_mirror(nursery, empty_layout(tmp_path / "c"), StaticRouter(table), options, peers=peers)

        async def closed_after(client: httpx.AsyncClient, seconds: float, start: int) -> None:
            with trio.move_on_after(seconds):
                headers = {"Range": f"bytes={start}-"}
                async with client.stream(
                    "GET", f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"}, headers=headers
                ) as response:
                    async for _ in response.aiter_raw(64 << 10):
                        await trio.sleep(0.001)

        async with httpx.AsyncClient(base_url=f"http://{c_addr}", timeout=10) as client:
            for i in range(40):  # each a batch of 4 concurrent chunk requests, closed at growing times
                async with trio.open_nursery() as requests:
                    for j in range(4):
                        requests.start_soon(closed_after, client, (i * 4 + j) * 0.0007, j * CHUNK)
        with trio.fail_after(5):
            while any(peers.load.values()):
                await trio.sleep(0.01)
        assert set(peers.load) >= {silent_addr, a_addr}, "the requests must have reached the peers"
        nursery.cancel_scope.cancel()


def tamper(layout: Path, digest: Digest) -> None:
    """Flip one byte in the middle of the blob file of `digest` in an OCI layout (its size unchanged)."""
    path = layout / "blobs" / digest.algorithm / digest.hex
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


async def test_wrong_bytes_from_a_peer_never_reach_the_client(tmp_path: Path, image) -> None:
    """A holder whose blob file was tampered serves wrong bytes under the right digest: the client gets the
    blob from the honest holder, the rogue is counted (`peer_errors{reason="digest"}`) and not asked again."""
    image.to_layout(tmp_path / "rogue", REFERENCE)
    image.to_layout(tmp_path / "honest", REFERENCE)
    layer = layer_of(image)
    tamper(tmp_path / "rogue", layer)
    async with trio.open_nursery() as nursery:
        rogue_addr, rogue_metrics = await start_mirror(nursery, tmp_path / "rogue", StaticRouter({}), MirrorOptions())
        honest_addr, _ = await start_mirror(nursery, tmp_path / "honest", StaticRouter({}), MirrorOptions())
        router = StaticRouter({str(layer): [Holder(rogue_addr), Holder(honest_addr)]})
        c_addr, c_metrics = await start_mirror(
            nursery, empty_layout(tmp_path / "c"), router, MirrorOptions(resolve_retries=2)
        )
        async with httpx.AsyncClient(base_url=f"http://{c_addr}", timeout=10) as client:
            for _ in range(3):
                response = await client.get(
                    f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"}, headers={"Range": "bytes=0-"}
                )
                assert response.status_code == 206 and Digest.of(response.content) == layer
        rogue_served = peer_count(rogue_metrics, "local")
        errors = c_metrics.registry.get_sample_value("spegel_peer_errors_total", {"reason": "digest"})
        assert (rogue_served, errors) == (1, 1), "the rogue must be asked once, counted once, then skipped"
        nursery.cancel_scope.cancel()


async def test_wrong_bytes_from_the_only_holder_are_a_miss(tmp_path: Path, image) -> None:
    """With no honest holder, the client gets 404 (containerd then fetches upstream), never the wrong bytes."""
    image.to_layout(tmp_path / "rogue", REFERENCE)
    layer = layer_of(image)
    tamper(tmp_path / "rogue", layer)
    async with trio.open_nursery() as nursery:
        rogue_addr, _ = await start_mirror(nursery, tmp_path / "rogue", StaticRouter({}), MirrorOptions())
        router = StaticRouter({str(layer): [Holder(rogue_addr)]})
        c_addr, c_metrics = await start_mirror(nursery, empty_layout(tmp_path / "c"), router, MirrorOptions())
        async with httpx.AsyncClient(base_url=f"http://{c_addr}", timeout=10) as client:
            response = await client.get(f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"})
        assert response.status_code == 404 and response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert peer_count(c_metrics, "miss") == 1
        nursery.cancel_scope.cancel()


async def serve_slowly(listener: trio.SocketListener, data: bytes, digest: Digest, started: trio.Event) -> None:
    """A peer that answers one blob request with the whole blob in 16 pieces, 50 ms apart."""
    async with listener, await listener.accept() as stream:
        await send_blob_start(stream, data, digest, 0)
        step = len(data) // 16 + 1
        for offset in range(0, len(data), step):
            await stream.send_all(data[offset : offset + step])
            started.set()
            await trio.sleep(0.05)


async def test_a_copy_in_progress_is_served_to_other_mirrors(tmp_path: Path, image) -> None:
    """While B copies a blob from a slow peer (before it verified it and gave its containerd a byte), a mirror
    that follows B reads B's copy as it grows and gets the whole blob."""
    layer = layer_of(image)
    data = image.read_blob(layer)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    slow_addr = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    started = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_slowly, listeners[0], data, layer, started)
        router = StaticRouter({str(layer): [Holder(slow_addr)]})
        b_addr, b_metrics = await start_mirror(nursery, empty_layout(tmp_path / "b"), router, MirrorOptions())
        answers: dict[str, httpx.Response] = {}

        async def get(name: str, headers: dict[str, str]) -> None:
            async with httpx.AsyncClient(base_url=f"http://{b_addr}", timeout=10) as client:
                answers[name] = await client.get(
                    f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"}, headers=headers
                )

        async with trio.open_nursery() as requests:
            requests.start_soon(get, "containerd", {})
            await started.wait()
            requests.start_soon(get, "follower", {"X-Spegel-Mirrored": "true"})
        assert answers["containerd"].status_code == answers["follower"].status_code == 200
        assert answers["containerd"].content == answers["follower"].content == data
        assert peer_count(b_metrics, "inflight") == 1
        nursery.cancel_scope.cancel()


async def serve_then_stall(
    listener: trio.SocketListener, data: bytes, digest: Digest, cut: int, accepted: list[int]
) -> None:
    """A peer that answers every blob request with the right headers and `cut` bytes, then sends nothing more
    (the connection stays open)."""

    async def stall(stream: trio.SocketStream) -> None:
        accepted.append(1)
        await send_blob_start(stream, data, digest, cut)
        await trio.sleep_forever()

    async with listener:
        await trio.serve_listeners(stall, [listener])


async def test_a_stalled_peer_is_resumed_from_the_next_byte_and_not_asked_again(tmp_path: Path, image) -> None:
    """A holder that stalls mid-body costs one read timeout: the transfer resumes from the next holder at the
    byte it stopped at, and the next request does not ask the staller again."""
    layer = layer_of(image)
    data = image.read_blob(layer)
    cut = (1 << 20) + 777
    image.to_layout(tmp_path / "b", REFERENCE)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    stall_addr = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    accepted: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_then_stall, listeners[0], data, layer, cut, accepted)
        b_metrics, c_addr, c_metrics = await b_behind(nursery, tmp_path, layer, stall_addr)
        async with httpx.AsyncClient(base_url=f"http://{c_addr}", timeout=10) as client:
            first = await client.get(f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"})
            assert first.status_code == 200 and first.content == data
            sent_by_b = b_metrics.registry.get_sample_value("spegel_mirror_bytes_total", {"source": "local"})
            assert sent_by_b == len(data) - cut, "the resume must start at the byte the staller stopped at"
            for _ in range(3):  # holder ties rotate per request: without the penalty one of these asks the staller
                started = time.perf_counter()
                again = await client.get(f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"})
                elapsed = time.perf_counter() - started
                assert again.status_code == 200 and again.content == data
                assert elapsed < 1.0, f"a later request took {elapsed:.2f} s"
        assert len(accepted) == 1, "a peer that stalled must not be asked again at once"
        assert c_metrics.registry.get_sample_value("spegel_peer_errors_total", {"reason": "broken"}) == 1
        nursery.cancel_scope.cancel()


async def test_silent_peer_costs_only_the_hedge_delay(tmp_path: Path, image) -> None:
    """A peer that accepts connections and never answers must not hold containerd: the hedged request to the
    next holder answers."""
    image.to_layout(tmp_path / "b", REFERENCE)
    layer = layer_of(image)
    async with silent_peer() as silent_addr, trio.open_nursery() as nursery:
        b_addr, _ = await start_mirror(nursery, tmp_path / "b", StaticRouter({}), MirrorOptions())
        table = {str(layer): [Holder(silent_addr), Holder(b_addr)]}
        c_addr, _ = await start_mirror(nursery, empty_layout(tmp_path / "c"), StaticRouter(table), MirrorOptions())
        async with httpx.AsyncClient(base_url=f"http://{c_addr}", timeout=10) as client:
            started = time.perf_counter()
            response = await client.head(f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"})
            elapsed = time.perf_counter() - started
        assert response.status_code == 200
        assert elapsed < 1.0, f"a silent first holder held the request for {elapsed:.3f} s"
        nursery.cancel_scope.cancel()


async def test_miss_is_404_and_tags_can_be_filtered(tmp_path: Path, image) -> None:
    image.to_layout(tmp_path / "a", REFERENCE)
    async with trio.open_nursery() as nursery:
        a_addr, _ = await start_mirror(nursery, tmp_path / "a", StaticRouter({}), MirrorOptions())
        router = StaticRouter({REFERENCE: [Holder(a_addr)]})
        options = MirrorOptions(filters=RegistryFilters([r":v1$"]))
        c_addr, c_metrics = await start_mirror(nursery, empty_layout(tmp_path / "c"), router, options)
        async with httpx.AsyncClient(base_url=f"http://{c_addr}") as client:
            unknown = "sha256:" + "0" * 64
            miss = await client.get(f"/v2/team/app/blobs/{unknown}", params={"ns": "example.com"})
            assert miss.status_code == 404 and miss.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
            filtered = await client.get("/v2/team/app/manifests/v1", params={"ns": "example.com"})
            assert filtered.status_code == 404 and filtered.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        assert REFERENCE not in router.lookups, "a filtered tag must not even be looked up"
        assert peer_count(c_metrics, "miss") == 2
        nursery.cancel_scope.cancel()


async def test_a_tag_is_served_only_as_the_manifest_its_holder_announced(tmp_path: Path, image) -> None:
    """A peer that serves, for a tag, another manifest than the one it announced (a forged tag), or announced no
    digest, is not believed: the tag is a miss (404, containerd goes upstream)."""
    other = build(ImageSpec(layers=(1 << 10,), compression="none", seed=8))
    other.to_layout(tmp_path / "rogue", REFERENCE)
    image.to_layout(tmp_path / "honest", REFERENCE)
    async with trio.open_nursery() as nursery:
        rogue, _ = await start_mirror(nursery, tmp_path / "rogue", StaticRouter({}), MirrorOptions())
        honest, _ = await start_mirror(nursery, tmp_path / "honest", StaticRouter({}), MirrorOptions())
        announced = str(image.top.digest)
        for holders, status in [
            ([Holder(rogue, digest=announced)], 404),  # serves `other` for the tag it announced as `image`
            ([Holder(honest)], 404),  # announced no digest
            ([Holder(rogue, digest=announced), Holder(honest, digest=announced)], 200),
        ]:
            router = StaticRouter({REFERENCE: holders})
            c_addr, _ = await start_mirror(
                nursery, empty_layout(tmp_path / f"c{len(holders)}{status}"), router, MirrorOptions()
            )
            async with httpx.AsyncClient(base_url=f"http://{c_addr}") as client:
                answer = await client.get("/v2/team/app/manifests/v1", params={"ns": "example.com"})
            assert answer.status_code == status
            if status == 200:
                assert Digest.of(answer.content) == image.top.digest
        nursery.cancel_scope.cancel()


class DelayedClaims:
    """The watcher's part (inflight mode) over a memory router: a claim is announced in progress with its
    rank, reaching the other routers `latency` seconds later, as an announcement crosses the network."""

    claims_accepted = True

    def __init__(self, router: Router, nursery: trio.Nursery, latency: float) -> None:
        self.router, self.nursery, self.latency = router, nursery, latency
        self.claims: list[float] = []

    async def claim(self, digest: Digest, since: float) -> float:
        self.claims.append(since)
        self.nursery.start_soon(self._announce, str(digest), self.claims[-1])
        return self.claims[-1]

    async def _announce(self, key: str, since: float) -> None:
        await trio.sleep(self.latency)
        await self.router.advertise([key], KeyState.IN_PROGRESS, since=since)


class Download:
    """What a claimant serves its followers: each blob of `blobs` as its own download would deliver it (one
    stream); a blob whose data is None was abandoned."""

    def __init__(self, blobs: dict[Digest, bytes | None]) -> None:
        self.blobs = blobs
        self.asked = self.opened = 0

    async def open_in_progress(self, digest: Digest, wait: float) -> Download.Reader:
        self.asked += 1
        data = self.blobs.get(digest)
        if data is None:
            raise NotFound(str(digest))
        self.opened += 1
        return Download.Reader(data)

    class Reader:
        ranged = False

        def __init__(self, data: bytes) -> None:
            self.data, self.size = data, len(data)

        async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
            yield self.data[start : end + 1]

        async def aclose(self) -> None:
            return None


async def no_owner(key: str, timeout: float, since: float) -> None:
    return None


@pytest.mark.parametrize("ordered_by", ["owner", "announcements"])
async def test_claims_send_only_the_first_claimant_upstream_and_chain_the_rest(
    tmp_path: Path, image, ordered_by: str
) -> None:
    """Two nodes ask for a blob nobody holds within the announcement latency: both claim it, and only the
    earlier claimant answers 404 (its containerd goes upstream); the other follows its download. A third node
    asking later claims too, and follows the claimant just before it, not the first: a chain. The claim order
    comes from the key's owner; when the owner cannot be asked, from the claims each node sees after the
    settle."""
    layer = layer_of(image)
    data = image.read_blob(layer)
    network = MemoryNetwork()
    options = MirrorOptions(miss_settle=0.3)
    async with trio.open_nursery() as nursery:
        mirrors = {}
        for name in ("a", "b", "c"):  # router names; their addresses are known once bound
            router = network.join(name)
            if ordered_by == "announcements":
                router.order_claim = no_owner  # type: ignore[method-assign]
            claims, download = DelayedClaims(router, nursery, latency=0.1), Download({layer: data})
            address, metrics = await start_mirror(
                nursery, empty_layout(tmp_path / name), router, options, download, claims
            )
            network.index.set_address(name, address)
            mirrors[name] = (address, claims, download, metrics)
        answers: dict[str, httpx.Response] = {}

        async def get(name: str) -> None:
            async with httpx.AsyncClient(base_url=f"http://{mirrors[name][0]}") as client:
                answers[name] = await client.get(f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"})

        async with trio.open_nursery() as both:  # within the 100 ms latency of each other
            both.start_soon(get, "b")
            both.start_soon(get, "a")
        if ordered_by == "owner":  # the owner's order: a claim again keeps its place and is told who is ahead
            first, second = ("b", "a") if network.claims.ahead(str(layer), "a", trio.current_time()) else ("a", "b")
        else:
            first, second = sorted("ab", key=lambda n: mirrors[n][1].claims[0])
        assert len(mirrors["a"][1].claims) == len(mirrors["b"][1].claims) == 1
        assert answers[first].status_code == 404 and answers[first].json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert answers[second].status_code == 200 and answers[second].content == data
        assert (mirrors[first][2].opened, mirrors[second][2].opened) == (1, 0)  # the second followed the first

        await get("c")
        assert answers["c"].status_code == 200 and answers["c"].content == data
        assert len(mirrors["c"][1].claims) == 1
        # c followed the second, which served it the verified copy it had made of the first's download
        assert mirrors[first][2].opened == 1 and peer_count(mirrors[second][3], "inflight") == 1
        nursery.cancel_scope.cancel()


async def test_claims_rank_every_layer_of_a_pull_by_when_the_pull_began(tmp_path: Path) -> None:
    """a asks for the first layer of an image, then b for the second, a for the second and b for the first, all
    within the owner's window. Ranked by when each node began pulling the repository, a is first for both
    layers (404: its containerd goes upstream) and b follows a for both; ranked by each claim's own time, b
    would be first for the second layer while a waited on it, and each first claimant's download slots could
    be held by waits on the other's layer."""
    image = build(ImageSpec(layers=(1 << 20, 1 << 20), compression="none", seed=11))
    first_layer, second_layer = (layer.digest for layer in image.platforms[0].layers)
    blobs: dict[Digest, bytes | None] = {digest: image.read_blob(digest) for digest in (first_layer, second_layer)}
    network = MemoryNetwork()
    network.claims = ClaimBook(window=0.6)  # every claim below reaches the owner within a key's first window
    async with trio.open_nursery() as nursery:
        mirrors = {}
        for name in ("a", "b"):
            router = network.join(name)
            claims, download = DelayedClaims(router, nursery, latency=0), Download(blobs)
            address, _ = await start_mirror(
                nursery, empty_layout(tmp_path / name), router, MirrorOptions(), download, claims
            )
            network.index.set_address(name, address)
            mirrors[name] = (address, download)
        answers: dict[tuple[str, Digest], httpx.Response] = {}

        async def get(name: str, digest: Digest, after: float) -> None:
            await trio.sleep(after)
            async with httpx.AsyncClient(base_url=f"http://{mirrors[name][0]}") as client:
                url = f"/v2/team/app/blobs/{digest}"
                answers[name, digest] = await client.get(url, params={"ns": "example.com"})

        async with trio.open_nursery() as asking:
            for at, (name, digest) in enumerate(
                [("a", first_layer), ("b", second_layer), ("a", second_layer), ("b", first_layer)]
            ):
                asking.start_soon(get, name, digest, 0.05 * at)
        assert [answers["a", d].status_code for d in (first_layer, second_layer)] == [404, 404]
        assert [answers["b", d].content == blobs[d] for d in (first_layer, second_layer)] == [True, True]
        assert (mirrors["a"][1].opened, mirrors["b"][1].opened) == (2, 0)  # b followed a's downloads, both
        nursery.cancel_scope.cancel()


async def test_a_node_led_in_a_pull_waits_for_the_leader_to_claim_a_layer_it_asked_for_first(tmp_path: Path) -> None:
    """a is the first claimant of the image's config and b follows it, so a leads the pull. b's containerd then
    asks for the layer 0.3 s before a's does: b's claim waits until a has claimed the layer, and b follows a. Not
    waiting, b would be the layer's first claimant while a waits on it, two first claimants in one image (their
    download slots can all end up waiting on each other, reports/scale-12-long rep 0). a's claim takes 0.3 s to
    reach the owner: announced before that, b would see it, claim, and be placed first all the same."""
    image = build(ImageSpec(layers=(1 << 20,), compression="none", seed=17))
    config, layer = image.platforms[0].config.digest, image.platforms[0].layers[0].digest
    blobs: dict[Digest, bytes | None] = {digest: image.read_blob(digest) for digest in (config, layer)}
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        mirrors, routers = {}, {}
        for name in ("a", "b"):
            router = network.join(name)
            claims, download = DelayedClaims(router, nursery, latency=0.05), Download(blobs)
            address, _ = await start_mirror(
                nursery, empty_layout(tmp_path / name), router, MirrorOptions(), download, claims
            )
            network.index.set_address(name, address)
            mirrors[name] = (address, download)
            routers[name] = router
        placed = routers["a"].order_claim

        async def slow_for_the_layer(key: str, timeout: float, since: float) -> ClaimOrder | None:
            if key == str(layer):
                await trio.sleep(0.3)
            return await placed(key, timeout, since)

        routers["a"].order_claim = slow_for_the_layer  # type: ignore[method-assign]
        answers: dict[tuple[str, Digest], tuple[int, float]] = {}

        async def get(name: str, digest: Digest) -> None:
            async with httpx.AsyncClient(base_url=f"http://{mirrors[name][0]}") as client:
                url = f"/v2/team/app/blobs/{digest}"
                response = await client.get(url, params={"ns": "example.com"})
                answers[name, digest] = (response.status_code, trio.current_time())
                assert response.status_code == 404 or response.content == blobs[digest]

        await get("a", config)
        await trio.sleep(0.1)  # a's claim reaches b
        await get("b", config)
        asked = trio.current_time()
        async with trio.open_nursery() as asking:
            asking.start_soon(get, "b", layer)
            await trio.sleep(0.3)
            asking.start_soon(get, "a", layer)
        assert [answers[name, layer][0] for name in ("a", "b")] == [404, 200]
        assert answers["b", layer][1] - asked >= 0.3  # b waited for a's claim
        assert (mirrors["a"][1].opened, mirrors["b"][1].opened) == (2, 0)  # b had both from a's downloads
        nursery.cancel_scope.cancel()


async def test_a_node_led_in_one_pull_is_not_led_in_the_next_image_s_pull(tmp_path: Path) -> None:
    """b follows a for the config, so a leads that pull. b's containerd then pulls another image of the same
    repository: a manifest request, then a blob nobody holds. No node leads that pull, so the 404 comes at once;
    b still led, it would wait the whole claim timeout for a first claim that no node makes."""
    image = build(ImageSpec(layers=(1 << 20,), compression="none", seed=23))
    config = image.platforms[0].config.digest
    nobody = Digest.of(b"an image only b pulls")
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        addresses = {}
        for name in ("a", "b"):
            router = network.join(name)
            claims, download = DelayedClaims(router, nursery, latency=0.05), Download({config: image.read_blob(config)})
            addresses[name], _ = await start_mirror(
                nursery, empty_layout(tmp_path / name), router, MirrorOptions(), download, claims
            )
            network.index.set_address(name, addresses[name])
        params = {"ns": "example.com"}
        async with httpx.AsyncClient(base_url=f"http://{addresses['a']}", params=params) as client:
            assert (await client.get(f"/v2/team/app/blobs/{config}")).status_code == 404  # a downloads it upstream
        await trio.sleep(0.1)  # a's claim reaches b
        async with httpx.AsyncClient(base_url=f"http://{addresses['b']}", params=params) as client:
            got = await client.get(f"/v2/team/app/blobs/{config}")
            assert got.status_code == 200 and got.content == image.read_blob(config)  # from a: b is led
            assert (await client.head("/v2/team/app/manifests/v2")).status_code == 404  # the next image's pull
            asked = trio.current_time()
            missed = await client.get(f"/v2/team/app/blobs/{nobody}")
        assert missed.status_code == 404
        assert trio.current_time() - asked < MirrorOptions().claim_timeout / 2
        nursery.cancel_scope.cancel()


async def test_a_node_that_makes_no_claims_answers_a_miss_at_once_even_when_led_in_the_pull(tmp_path: Path) -> None:
    """`--advertise layer`: the tracker accepts no claims. b follows a's download of the config, so it is led in
    the pull; its request for a layer nobody holds must still get its 404 at once, without asking the claim's
    owner or waiting for a first claim that no node of a cluster without claims ever makes."""
    image = build(ImageSpec(layers=(1 << 20,), compression="none", seed=19))
    config, layer = image.platforms[0].config.digest, image.platforms[0].layers[0].digest
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        routers = {name: network.join(name) for name in ("a", "b")}
        download = Download({config: image.read_blob(config)})
        layout_a = empty_layout(tmp_path / "a")
        address_a, _ = await start_mirror(nursery, layout_a, routers["a"], MirrorOptions(), download)
        network.index.set_address("a", address_a)
        await routers["a"].advertise([str(config)], KeyState.IN_PROGRESS)
        asked_owner: list[str] = []
        placed = routers["b"].order_claim

        async def counted(key: str, timeout: float, since: float) -> ClaimOrder | None:
            asked_owner.append(key)
            return await placed(key, timeout, since)

        routers["b"].order_claim = counted  # type: ignore[method-assign]
        tracker = Tracker(routers["b"])  # claims not accepted, as a watcher in layer mode leaves it
        address_b, _ = await start_mirror(
            nursery, empty_layout(tmp_path / "b"), routers["b"], MirrorOptions(), claims=tracker
        )
        async with httpx.AsyncClient(base_url=f"http://{address_b}") as client:
            got = await client.get(f"/v2/team/app/blobs/{config}", params={"ns": "example.com"})
            assert got.status_code == 200 and got.content == image.read_blob(config)  # from a: b is led
            asked = trio.current_time()
            missed = await client.get(f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"})
        assert missed.status_code == 404
        assert trio.current_time() - asked < MirrorOptions().claim_timeout / 2
        assert asked_owner == []
        nursery.cancel_scope.cancel()


async def test_the_404s_of_a_pull_are_answered_in_the_order_its_requests_came(tmp_path: Path) -> None:
    """containerd asks for two layers; the first one's claim takes 0.5 s to be placed, the second's none. The
    second layer's 404 waits for the first's decision: containerd's request to the upstream joins the back of
    its download queue after a 404, so 404s sent out of order reorder its downloads."""
    image = build(ImageSpec(layers=(1 << 20, 1 << 20), compression="none", seed=13))
    first_layer, second_layer = (layer.digest for layer in image.platforms[0].layers)
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        router = network.join("a")
        network.join("b")  # a cluster of two: claims are made
        placed = router.order_claim

        async def slow_for_the_first(key: str, timeout: float, since: float) -> ClaimOrder | None:
            if key == str(first_layer):
                await trio.sleep(0.5)
            return await placed(key, timeout, since)

        router.order_claim = slow_for_the_first  # type: ignore[method-assign]
        claims = DelayedClaims(router, nursery, latency=0)
        address, _ = await start_mirror(
            nursery, empty_layout(tmp_path / "a"), router, MirrorOptions(), Download({}), claims
        )
        network.index.set_address("a", address)
        answered: dict[Digest, tuple[int, float]] = {}
        started = trio.current_time()

        async def get(digest: Digest, after: float) -> None:
            await trio.sleep(after)
            async with httpx.AsyncClient(base_url=f"http://{address}") as client:
                answer = await client.get(f"/v2/team/app/blobs/{digest}", params={"ns": "example.com"})
            answered[digest] = (answer.status_code, trio.current_time() - started)

        async with trio.open_nursery() as asking:
            asking.start_soon(get, first_layer, 0)
            asking.start_soon(get, second_layer, 0.1)
        assert answered[first_layer][0] == answered[second_layer][0] == 404  # both first claimants
        assert answered[second_layer][1] >= 0.45  # not before the first layer's claim was placed
        nursery.cancel_scope.cancel()


async def test_a_follower_falls_back_to_an_earlier_claimant_when_the_nearest_has_nothing(tmp_path: Path, image) -> None:
    """a claimed first and is downloading; b claimed next but its download is gone; c, claiming last, asks
    b (the nearest) first, gets nothing, and streams from a instead of going upstream."""
    layer = layer_of(image)
    data = image.read_blob(layer)
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        mirrors = {}
        routers = {}
        for name, held in (("a", data), ("b", None), ("c", data)):
            routers[name] = router = network.join(name)
            claims, download = DelayedClaims(router, nursery, latency=0), Download({layer: held})
            address, _ = await start_mirror(
                nursery, empty_layout(tmp_path / name), router, MirrorOptions(), download, claims
            )
            network.index.set_address(name, address)
            mirrors[name] = (address, claims, download)
        for name, age in (("a", 2), ("b", 1)):  # claimed with the owner, and announced
            await routers[name].order_claim(str(layer), 1.0, time.time() - age)
            await routers[name].advertise([str(layer)], KeyState.IN_PROGRESS, since=time.time() - age)
        async with httpx.AsyncClient(base_url=f"http://{mirrors['c'][0]}") as client:
            answer = await client.get(f"/v2/team/app/blobs/{layer}", params={"ns": "example.com"})
        assert answer.status_code == 200 and answer.content == data
        assert (mirrors["b"][2].asked, mirrors["a"][2].opened) == (1, 1)  # the nearest first, then the next
        assert len(mirrors["c"][1].claims) == 1
        nursery.cancel_scope.cancel()


THIRD_PARTY_GENERATORS = ("Async generator 'httpx.", "Async generator 'httpcore.")


async def serve_until_dropped(listener: trio.SocketListener, data: bytes, digest: Digest) -> None:
    """A peer that answers one blob request with all of `data`, until the client drops the connection."""
    async with listener, await listener.accept() as stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await send_blob_start(stream, data, digest, len(data))


@pytest.mark.parametrize("stop", ["break", "cancel"])
async def test_a_reader_stopped_mid_blob_leaves_no_generator_or_response_open(image, stop: str) -> None:
    """A consumer that stops reading a peer blob part-way (it breaks off, or it is cancelled between two pieces)
    and closes the reader leaves nothing to the garbage collector: every generator on the way (PeerBlob's, the
    response's, httpx's) is closed at once and the peer response is closed (its load counted down)."""
    layer = layer_of(image)
    data = image.read_blob(layer)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    peers = PeerClient(Timeouts(connect=0.5, first_byte=1.0, read=1.0, inflight_wait=0.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_until_dropped, listeners[0], data, layer)
        holder = Holder(address)
        first = await peers.open_blob(holder, "example.com", "team/app", layer, None, head=False)
        blob = PeerBlob(peers, [holder], "example.com", "team/app", layer, first, Metrics(RegistryLabels([])))
        gc.collect()  # what earlier tests left, before counting what this one leaves
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with trio.CancelScope() as scope:
                async with contextlib.aclosing(blob.chunks(0, blob.size - 1)) as chunks:
                    async for _ in chunks:
                        if stop == "break":
                            break
                        scope.cancel()
                        await trio.sleep(0)  # cancelled here, between two pieces
            await blob.aclose()
            gc.collect()
            await trio.testing.wait_all_tasks_blocked()  # trio closes what the collector found in system tasks
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        # httpx's and httpcore's own generators (named in pyproject.toml's filterwarnings) do not close each other
        assert [m for m in unclosed if not m.startswith(THIRD_PARTY_GENERATORS)] == []
        assert peers.load[address] == 0
    await peers.aclose()
