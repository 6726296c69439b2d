"""One node's containerd pulling an image, as `../shared/notes/containerd-2.1.md` describes 2.1.9:

- `max_concurrent_downloads` is one semaphore over the daemon: every HTTP transfer (a blob's first request,
  each later chunk) holds a slot; blobs queue in manifest order, chunks as they are opened. The layers are
  asked for once the config is committed (2.1.9's unpacker reads the config before it fetches the layers,
  `core/unpack/unpacker.go`).
- Every blob is asked for with `Range: bytes=0-` from the first host (the node's mirror, when it has one):
  a 206 larger than a chunk makes containerd fetch chunk 0 on that request and every further chunk with its
  own request (open-ended, read for one chunk and closed), by up to `max_concurrent_downloads` workers per
  blob that each wait for a slot per chunk; the bytes go to disk in order, 1 MiB at a time: the first chunk
  not yet complete as it arrives, the later ones when their turn comes. A 404 sends it to the next host
  (upstream) at once, with a request that takes a slot anew: the 404's slot is released and the upstream
  request waits at the back of the queue (`dockerFetcher.open` acquires a slot per host it tries and releases
  it on error).
- A blob from a peer: the node's mirror copies it whole from the holder (one stream) while containerd's first
  request waits on it, holding its slot, and answers 206 once the copy is verified (`PeerBlob.verified`);
  containerd then reads the copy in chunks as above, `Timing.fetch_cost` CPU per byte. The copy is what the
  node's peers read from it meanwhile.
- After a blob is committed its layer is unpacked, one layer at a time in order (`Timing.unpack_cost`, and
  `snapshot_copy_cost` for the layers below it); the pull ends when the last layer is unpacked. This CPU
  work runs on the host's shared cores when the nodes share one machine (`World.compute`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from benchmark.sim.mirror import MirrorNode, PeerAnswer
from benchmark.sim.world import Arriving, Download, World

Record = Callable[[str, int, str, float], None]  # (event, node, digest, time): ingest started, commit


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    layer: bool  # unpacked after its commit (the config is not)


class Slots:
    """A counting semaphore with a FIFO queue of waiting actions."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiting: deque[Callable[[], None]] = deque()

    def acquire(self, action: Callable[[], None]) -> None:
        if self.free > 0:
            self.free -= 1
            action()
        else:
            self._waiting.append(action)

    def release(self) -> None:
        if self._waiting:
            self._waiting.popleft()()
        else:
            self.free += 1


class Containerd:
    def __init__(
        self,
        world: World,
        node: int,
        mirror: MirrorNode | None,
        chunk: int,
        max_concurrent_downloads: int,
        record: Record,
        on_commit: Callable[[str], None],
    ) -> None:
        self.world, self.node, self.mirror, self.chunk = world, node, mirror, chunk
        self.max_concurrent_downloads = max_concurrent_downloads
        self.slots = Slots(max_concurrent_downloads)
        self.record, self.on_commit = record, on_commit

    def pull(self, blobs: list[Blob], on_done: Callable[[], None]) -> None:
        """Fetch `blobs` (config first, then layers) and unpack the layers; `on_done()` at the end."""
        pull = _Pull(self, blobs, on_done)
        self.world.sim.after(self.world.timing.metadata, pull.begin)


class _Pull:
    def __init__(self, containerd: Containerd, blobs: list[Blob], on_done: Callable[[], None]) -> None:
        self.containerd, self.blobs, self.on_done = containerd, blobs, on_done
        self.committed: dict[str, float] = {}
        self.next_unpack = 0
        self.unpacking = False
        self.below = 0  # bytes of the layers unpacked so far (the next snapshot's parent)
        self.layers = [b for b in blobs if b.layer]

    def begin(self) -> None:
        """The config and other blobs that are not layers first; the layers once they are all committed."""
        first = [b for b in self.blobs if not b.layer] or self.layers
        self._fetch(first)

    def _fetch(self, blobs: list[Blob]) -> None:
        for blob in blobs:
            self.containerd.slots.acquire(lambda blob=blob: _Fetch(self, blob).begin())

    def blob_committed(self, blob: Blob) -> None:
        self.committed[blob.digest] = self.containerd.world.sim.now
        if not blob.layer and all(b.digest in self.committed for b in self.blobs if not b.layer):
            self._fetch(self.layers)
        self._unpack()

    def _unpack(self) -> None:
        """Unpack the next layer once it is committed and the one before it is unpacked; end the pull after
        the last."""
        if self.unpacking:
            return
        world = self.containerd.world
        if self.next_unpack < len(self.layers) and self.layers[self.next_unpack].digest in self.committed:
            size, timing = self.layers[self.next_unpack].size, world.timing
            self.unpacking = True
            world.compute(size * timing.unpack_cost + self.below * timing.snapshot_copy_cost, self._unpacked)
        elif self.next_unpack == len(self.layers) and len(self.committed) == len(self.blobs):
            self.next_unpack += 1  # done once
            self.on_done()

    def _unpacked(self) -> None:
        self.unpacking = False
        self.below += self.layers[self.next_unpack].size
        self.next_unpack += 1
        self._unpack()


class _Fetch:
    """One blob: its first request (holding a slot), then chunks or a stream."""

    def __init__(self, pull: _Pull, blob: Blob) -> None:
        self.pull, self.blob = pull, blob
        self.containerd = pull.containerd
        self.world = self.containerd.world
        self.chunks = max(1, math.ceil(blob.size / self.containerd.chunk)) if self.containerd.chunk else 1
        self.done: list[bool] = [False] * self.chunks
        self.front = 0
        self.arriving: dict[int, Arriving] = {}  # the chunks' transfers in progress
        self.taken = 0  # chunks a worker has taken
        self.fetch_chunk: Callable[[int, Callable[[], None]], None] = lambda i, done: None
        self.download = Download(self.world, self.containerd.node, blob.digest, blob.size, self.world.sim.now)

    def begin(self) -> None:
        world, containerd = self.world, self.containerd
        world.downloads[containerd.node, self.blob.digest] = self.download
        containerd.record("ingest", containerd.node, self.blob.digest, world.sim.now)
        if containerd.mirror is None:
            self._upstream_answer()
        else:
            containerd.mirror.open(self.blob.digest, self._mirror_answer)

    # --- the first answer ---

    def _mirror_answer(self, answer: PeerAnswer | None) -> None:
        if answer is None:
            slots = self.containerd.slots
            slots.release()
            slots.acquire(self._upstream_answer)
        else:
            self._copy(answer)

    def _upstream_answer(self) -> None:
        self.world.sim.after(self.world.timing.rtt, lambda: self._chunked(self._from_upstream))

    def _chunked(self, fetch: Callable[[int, Callable[[], None]], None]) -> None:
        """A 206: `min(max_concurrent_downloads, chunks)` workers take the chunks in order. Chunk 0 is read from
        the first answer (its slot held until then); every other chunk needs a request of its own, for which
        the worker waits for a slot, one chunk at a time: the blobs of a pull take turns at the slots
        (2.1.9's `dockerFetcher.open`)."""
        self.fetch_chunk = fetch
        for _ in range(min(self.containerd.max_concurrent_downloads, self.chunks)):
            self._next_chunk()

    def _next_chunk(self) -> None:
        i = self.taken
        if i >= self.chunks:
            return
        self.taken += 1
        if i == 0:
            self.fetch_chunk(0, lambda: self._chunk_done(0))
        else:
            self.containerd.slots.acquire(lambda: self.fetch_chunk(i, lambda: self._chunk_done(i)))

    def _span(self, i: int) -> tuple[int, int]:
        if self.chunks == 1:
            return 0, self.blob.size
        return i * self.containerd.chunk, min(self.blob.size, (i + 1) * self.containerd.chunk)

    def _arriving(self, i: int, transfer: Arriving) -> None:
        self.arriving[i] = transfer
        if i == self.front:
            self.download.feed(transfer)

    def _from_upstream(self, i: int, done: Callable[[], None]) -> None:
        start, end = self._span(i)
        self._arriving(i, self.world.upstream.start(end - start, self.world.downlinks[self.containerd.node], done))

    def _chunk_done(self, i: int) -> None:
        self.containerd.slots.release()
        self.done[i] = True
        self.arriving.pop(i, None)
        while self.front < self.chunks and self.done[self.front]:
            self.front += 1
        self.download.feed(self.arriving.get(self.front))
        self.download.wrote(self._span(self.front - 1)[1] if self.front else 0)
        if self.front == self.chunks:
            self._arrived()
        else:
            self._next_chunk()

    def _copy(self, answer: PeerAnswer) -> None:
        """The mirror copies the blob whole from the holder that answered (one stream; this request's slot held
        meanwhile), peers may read the copy as it grows; once it is whole and verified, containerd's request gets
        a 206 and containerd reads the blob from the copy in chunks (`_from_copy`)."""
        mirror = self.containerd.mirror
        assert mirror is not None

        def copied() -> None:
            self.download.unfollow()
            self.download.complete = True  # the copy: peers get it whole now
            self._chunked(self._from_copy)

        stream = mirror.transfer(answer, self.blob.digest, 0, self.blob.size, copied)
        self.download.follow(stream, 0)

    def _from_copy(self, i: int, done: Callable[[], None]) -> None:
        start, end = self._span(i)
        self.world.compute((end - start) * self.world.timing.fetch_cost, done)

    def _arrived(self) -> None:
        """Every byte is in containerd: it commits the blob."""
        self.download.complete = True
        self.download.wrote(self.blob.size)
        self._committed()

    def _committed(self) -> None:
        self.containerd.record("commit", self.containerd.node, self.blob.digest, self.world.sim.now)
        self.containerd.on_commit(self.blob.digest)
        self.pull.blob_committed(self.blob)
