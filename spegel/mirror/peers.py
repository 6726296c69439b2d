"""Talking to peer mirrors over HTTP: timeouts, hedged first requests, load accounting.

Every request to a peer carries `X-Spegel-Mirrored: true` (the peer serves it from its own store only, so
requests never loop) and `Accept-Encoding: identity`. Each call has a connect timeout, a first-byte timeout
(time to the response headers) and a read timeout between body pieces: a silent peer costs bounded time.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlencode

import httpx
import trio

from spegel import httprange
from spegel.httprange import RangeSpec
from spegel.mirror import peerhttp
from spegel.mirror.decide import LatencyTracker, order_holders
from spegel.oci.digest import Digest, InvalidDigest
from spegel.oci.manifest import detect_media_type
from spegel.oci.reference import Reference
from spegel.registry.backend import MAX_MANIFEST_SIZE, MIRRORED_HEADER, ManifestContent
from spegel.routing.base import Holder, KeyState
from spegel.store.base import closing

DISCARD_TIMEOUT = 5.0  # longest a cancelled `first_success` spends closing what its attempts opened
SKIP_BUFFER = 1 << 20  # bytes dropped per receive by `PeerResponse.skip_to`
PeerError = peerhttp.PeerError
PEER_HEADERS = {MIRRORED_HEADER: "true", "Accept-Encoding": "identity"}  # on every request to a peer
T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    connect: float = 0.5
    first_byte: float = 2.0  # for complete holders; in-progress holders get `first_byte + inflight_wait`
    read: float = 5.0  # for complete holders; in-progress holders get `read + inflight_wait`
    inflight_wait: float = 30.0


class PeerResponse:
    """An open blob response from a peer: its body covers bytes `start..end` of a blob of `size` bytes, and
    `position` is the offset in the blob of the next byte it delivers."""

    def __init__(
        self, holder: Holder, response: peerhttp.Response, start: int, end: int, size: int, on_close: Callable[[], None]
    ) -> None:
        self.holder = holder
        self.response = response
        self.start, self.end, self.size = start, end, size
        self.ranged = response.headers.get("accept-ranges", "").lower() == "bytes"
        self.closed = False
        self._on_close = on_close

    @property
    def position(self) -> int:
        return self.start + self.response.received

    async def wait_readable(self) -> None:
        """Return once `receive_available` has bytes to give. Raises PeerError when the transfer breaks, ends
        before `end` or stalls past the read timeout."""
        if self.position > self.end:
            raise PeerError(f"{self.holder.address}: body ended at {self.position}")
        await self.response.wait_readable()

    def receive_available(self, view: memoryview) -> int:
        """Receive into `view`, without waiting, the body bytes that arrived (0 when none yet): the blob's
        bytes from `position` on. Raises PeerError when the transfer broke."""
        return self.response.receive_available(view)

    async def skip_to(self, offset: int) -> None:
        """Receive and drop the bytes before `offset` (a holder that answered a range from an earlier byte)."""
        scratch = memoryview(bytearray(min(SKIP_BUFFER, max(0, offset - self.position))))
        while self.position < offset:
            await self.wait_readable()
            self.receive_available(scratch[: offset - self.position])

    async def aclose(self) -> None:
        """Close the response and its connection (a body not read to its end is dropped). Never blocks."""
        if not self.closed:
            self.closed = True
            self._on_close()
            self.response.close()


class PeerClient:
    """A pooled HTTP client to peer mirrors. `load[address]` counts blob requests open per peer, from the moment
    they are sent until their response is closed."""

    def __init__(
        self, timeouts: Timeouts = Timeouts(), penalty: float = 10.0, bad_bytes_penalty: float = 300.0
    ) -> None:
        self.timeouts = timeouts
        self.load: dict[str, int] = {}
        self.penalty = penalty
        self.bad_bytes_penalty = bad_bytes_penalty
        self._penalized_until: dict[str, float] = {}
        self._rotation = itertools.count()

        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=1.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self.latency = LatencyTracker()

    def order(self, holders: list[Holder]) -> list[Holder]:
        """`holders` best first (see `order_holders`): each call rotates the ties by one more place."""
        return order_holders(holders, self.load, next(self._rotation))

    async def aclose(self) -> None:
        await self._client.aclose()

    def _first_byte_timeout(self, holder: Holder) -> float:
        if holder.state is KeyState.IN_PROGRESS:
            return self.timeouts.first_byte + self.timeouts.inflight_wait
        return self.timeouts.first_byte

    def _read_timeout(self, holder: Holder) -> float:
        if holder.state is KeyState.IN_PROGRESS:
            return self.timeouts.read + self.timeouts.inflight_wait
        return self.timeouts.read

    def usable(self, holder: Holder) -> bool:
        """False for a peer that is penalized: it failed to answer (connect or first-byte timeout, refused) or
        its transfer stalled within the last `penalty` seconds, so a silent peer costs its timeout once, not on
        every request; or it sent bytes that do not match their digest within the last `bad_bytes_penalty`."""
        until = self._penalized_until.get(holder.address)
        return until is None or time.monotonic() >= until

    def penalize(self, address: str, seconds: float | None = None) -> None:
        """Do not ask `address` for `seconds` (default: `penalty`); a longer penalty already set is kept."""
        until = time.monotonic() + (self.penalty if seconds is None else seconds)
        self._penalized_until[address] = max(until, self._penalized_until.get(address, until))

    async def _send(self, holder: Holder, request: httpx.Request) -> httpx.Response:
        """Send and wait for the response headers within the first-byte timeout; errors become PeerError."""
        started = time.perf_counter()
        try:
            with trio.fail_after(self._first_byte_timeout(holder)):
                response = await self._client.send(request, stream=True)
        except trio.TooSlowError:
            self.penalize(holder.address)
            raise PeerError(f"{holder.address}: no answer within the first-byte timeout") from None
        except httpx.HTTPError as exc:
            self.penalize(holder.address)
            raise PeerError(f"{holder.address}: {type(exc).__name__}: {exc}") from None
        self.latency.observe(time.perf_counter() - started)
        return response

    def _request(self, holder: Holder, path: str, registry: str) -> httpx.Request:
        t = self.timeouts
        return self._client.build_request(
            "GET",
            f"http://{holder.address}{path}",
            params={"ns": registry},
            headers=PEER_HEADERS,
            timeout=httpx.Timeout(connect=t.connect, read=self._read_timeout(holder), write=t.read, pool=1.0),
        )

    async def fetch_manifest(self, holder: Holder, reference: Reference) -> ManifestContent:
        """Fetch a manifest from a peer and check it: by digest it must hash to that digest; by tag to the
        digest the peer announced for the tag (`holder.digest`; a holder that announced none is not asked)."""
        expected = reference.digest or _announced_digest(holder)
        if expected is None:
            raise PeerError(f"{holder.address}: announced no manifest digest for {reference}")
        target = str(reference.digest) if reference.digest is not None else reference.tag
        path = f"/v2/{reference.repository}/manifests/{target}"
        response = await self._send(holder, self._request(holder, path, reference.registry))
        try:
            if response.status_code != 200:
                raise PeerError(f"{holder.address}: manifest answered {response.status_code}")
            data = bytearray()
            async with closing(response.aiter_raw()) as raw:
                async for piece in raw:
                    data += piece
                    if len(data) > MAX_MANIFEST_SIZE:
                        raise PeerError(f"{holder.address}: manifest larger than {MAX_MANIFEST_SIZE} bytes")
        except httpx.HTTPError as exc:
            raise PeerError(f"{holder.address}: {type(exc).__name__}: {exc}") from None
        finally:
            await response.aclose()
        if Digest.of(bytes(data), expected.algorithm) != expected:
            raise PeerError(f"{holder.address}: manifest bytes do not match {expected}")
        media_type = response.headers.get("Content-Type") or detect_media_type(bytes(data))
        if media_type is None or detect_media_type(bytes(data)) is None:
            raise PeerError(f"{holder.address}: answered something that is not a manifest")
        return ManifestContent(media_type, expected, bytes(data))

    async def open_blob(
        self, holder: Holder, registry: str, repository: str, digest: Digest, requested: RangeSpec | None, head: bool
    ) -> PeerResponse:
        """Open a blob on a peer, asking for the range `requested` (None: the whole blob). Its body is received
        with `peerhttp` (into the caller's buffers)."""
        headers = PEER_HEADERS | ({"Range": requested.header()} if requested is not None else {})
        target = f"/v2/{repository}/blobs/{digest}?{urlencode({'ns': registry})}"
        timeouts = peerhttp.RequestTimeouts(
            self.timeouts.connect, self._first_byte_timeout(holder), self._read_timeout(holder)
        )
        self.track(holder.address, +1)  # counted from the start, so concurrent requests spread at once
        started = time.perf_counter()
        try:
            method = "HEAD" if head else "GET"
            response = await peerhttp.open_response(holder.address, method, target, headers, timeouts)
        except BaseException as exc:
            self.track(holder.address, -1)
            if isinstance(exc, PeerError):
                self.penalize(holder.address)
            raise
        self.latency.observe(time.perf_counter() - started)
        try:
            return _blob_response(holder, response, digest, lambda: self.track(holder.address, -1))
        except PeerError:
            self.track(holder.address, -1)
            response.close()
            raise

    async def open_blob_range(
        self, holder: Holder, registry: str, repository: str, digest: Digest, start: int, end: int
    ) -> PeerResponse:
        return await self.open_blob(holder, registry, repository, digest, RangeSpec(start, end), head=False)

    def track(self, address: str, delta: int) -> None:
        self.load[address] = self.load.get(address, 0) + delta


def _announced_digest(holder: Holder) -> Digest | None:
    try:
        return Digest.parse(holder.digest) if holder.digest else None
    except InvalidDigest:
        return None


def _header_digest(headers: dict[str, str]) -> Digest | None:
    try:
        return Digest.parse(headers.get("docker-content-digest", ""))
    except InvalidDigest:
        return None


def _blob_response(
    holder: Holder, response: peerhttp.Response, digest: Digest, on_close: Callable[[], None]
) -> PeerResponse:
    """Validate a peer's blob answer and say which bytes its body holds."""
    headers = response.headers
    if response.status not in (200, 206):
        raise PeerError(f"{holder.address}: blob answered {response.status}")
    if headers.get("content-encoding", "identity") != "identity":
        raise PeerError(f"{holder.address}: blob sent with a Content-Encoding")
    if _header_digest(headers) != digest:
        raise PeerError(f"{holder.address}: answered for another digest")
    length = response.content_length
    if length is None:
        raise PeerError(f"{holder.address}: blob answer without Content-Length")
    if response.status == 200:
        return PeerResponse(holder, response, 0, length - 1, length, on_close)
    content_range = httprange.parse_content_range(headers.get("content-range", ""))
    if content_range is None or content_range.size is None or content_range.end - content_range.start + 1 != length:
        raise PeerError(f"{holder.address}: 206 with a bad Content-Range")
    return PeerResponse(holder, response, content_range.start, content_range.end, content_range.size, on_close)


async def first_success(
    attempts: Sequence[Callable[[], Awaitable[T]]],
    hedge_delay: float,
    discard: Callable[[T], Awaitable[None]],
) -> T:
    """Run `attempts` staggered: the next starts when the previous fails or `hedge_delay` passes without an
    answer. Returns the first success and cancels the rest. Raises PeerError (the last error) when all fail.

    Every success that is not returned is `discard`ed, on every path: a late success that lost the race, and,
    when the caller is cancelled, the winner and any answer already waiting in the channel. The discards run
    shielded (bounded by `DISCARD_TIMEOUT`), so a cancelled caller still closes what its attempts opened.
    """
    if not attempts:
        raise PeerError("no holders to ask")
    send, receive = trio.open_memory_channel[tuple[T | None, PeerError | None]](len(attempts))
    successes: list[T] = []
    errors: list[PeerError] = []

    async def run(attempt: Callable[[], Awaitable[T]]) -> None:
        try:
            send.send_nowait((await attempt(), None))
        except PeerError as exc:
            send.send_nowait((None, exc))

    try:
        async with trio.open_nursery() as nursery:
            started = running = 0
            while not successes:
                if started < len(attempts):
                    nursery.start_soon(run, attempts[started])
                    started += 1
                    running += 1
                elif running == 0:
                    break
                wait = hedge_delay if started < len(attempts) else math.inf
                with trio.move_on_after(wait):
                    result, error = await receive.receive()
                    running -= 1
                    if error is None:
                        successes.append(result)  # type: ignore[arg-type]
                    else:
                        errors.append(error)
            nursery.cancel_scope.cancel()
    except BaseException:
        await _discard_all(successes + _late_successes(receive), discard)
        raise
    # The nursery is done: every attempt has sent whatever it got.
    await _discard_all(successes[1:] + _late_successes(receive), discard)
    if not successes:
        raise errors[-1]
    return successes[0]


def _late_successes(receive: trio.MemoryReceiveChannel[tuple[T | None, PeerError | None]]) -> list[T]:
    late: list[T] = []
    while True:
        try:
            result, _ = receive.receive_nowait()
        except trio.WouldBlock:
            return late
        if result is not None:
            late.append(result)


async def _discard_all(unused: list[T], discard: Callable[[T], Awaitable[None]]) -> None:
    """Discard `unused`, shielded from the caller's cancellation (bounded by DISCARD_TIMEOUT)."""
    with trio.move_on_after(DISCARD_TIMEOUT, shield=True):
        for item in unused:
            await discard(item)
