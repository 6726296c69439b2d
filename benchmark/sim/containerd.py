"""One node's containerd pulling an image, as `../shared/notes/containerd-2.1.md` describes 2.1.9:

- `max_concurrent_downloads` is one semaphore over the daemon: every HTTP transfer (a blob's first request,
  each later chunk) holds a slot; blobs queue in manifest order, chunks as they are opened. The layers are
  asked for once the config is committed (2.1.9's unpacker reads the config before it fetches the layers,
  `core/unpack/unpacker.go`).
- Every blob is asked for with `Range: bytes=0-` from the first host (the node's mirror, when it has one):
  a 206 larger than a chunk makes containerd fetch chunk 0 on that request and every further chunk with its
  own request (open-ended, read for one chunk and closed); the bytes go to disk in order, so the prefix on
  disk grows a chunk at a time. A 200 is read as one stream. A 404 sends it to the next host (upstream)
  at once, with a request that takes a slot anew: the 404's slot is released and the upstream request waits
  at the back of the queue (`dockerFetcher.open` acquires a slot per host it tries and releases it on error).
- After a blob is committed its layer is unpacked, one layer at a time in order; the pull ends when the
  last layer is unpacked.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from benchmark.sim.mirror import MirrorNode, PeerAnswer
from benchmark.sim.world import Download, World

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
        self.unpacked_until = 0.0
        self.next_unpack = 0
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
        world = self.containerd.world
        while self.next_unpack < len(self.layers) and self.layers[self.next_unpack].digest in self.committed:
            layer = self.layers[self.next_unpack]
            start = max(self.unpacked_until, self.committed[layer.digest])
            self.unpacked_until = start + layer.size / world.timing.unpack_rate
            self.next_unpack += 1
        if self.next_unpack == len(self.layers) and len(self.committed) == len(self.blobs):
            self.next_unpack += 1  # done once
            world.sim.at(max(world.sim.now, self.unpacked_until), self.on_done)


class _Fetch:
    """One blob: its first request (holding a slot), then chunks or a stream."""

    def __init__(self, pull: _Pull, blob: Blob) -> None:
        self.pull, self.blob = pull, blob
        self.containerd = pull.containerd
        self.world = self.containerd.world
        self.chunks = max(1, math.ceil(blob.size / self.containerd.chunk)) if self.containerd.chunk else 1
        self.done: list[bool] = [False] * self.chunks
        self.front = 0
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
        elif answer.ranged:
            self._chunked(lambda i, done: self._from_mirror(answer, i, done))
        else:
            self._stream(answer)

    def _upstream_answer(self) -> None:
        self.world.sim.after(self.world.timing.rtt, lambda: self._chunked(self._from_upstream))

    def _chunked(self, fetch: Callable[[int, Callable[[], None]], None]) -> None:
        """A 206: chunk 0 on the first request, every other chunk with a request of its own (a slot each)."""
        fetch(0, lambda: self._chunk_done(0))
        for i in range(1, self.chunks):
            self.containerd.slots.acquire(lambda i=i: fetch(i, lambda: self._chunk_done(i)))

    def _span(self, i: int) -> tuple[int, int]:
        if self.chunks == 1:
            return 0, self.blob.size
        return i * self.containerd.chunk, min(self.blob.size, (i + 1) * self.containerd.chunk)

    def _from_upstream(self, i: int, done: Callable[[], None]) -> None:
        start, end = self._span(i)
        self.world.upstream.start(end - start, self.world.downlinks[self.containerd.node], done)

    def _from_mirror(self, first: PeerAnswer, i: int, done: Callable[[], None]) -> None:
        mirror = self.containerd.mirror
        assert mirror is not None
        start, end = self._span(i)
        if i == 0:
            mirror.transfer(first, self.blob.digest, start, end, done)
            return

        def answered(answer: PeerAnswer | None) -> None:
            if answer is None:  # containerd fails the pull after a 206; the sim refetches the chunk upstream
                self._from_upstream(i, done)
            else:
                mirror.transfer(answer, self.blob.digest, start, end, done)

        mirror.open(self.blob.digest, answered)

    def _chunk_done(self, i: int) -> None:
        self.containerd.slots.release()
        self.done[i] = True
        while self.front < self.chunks and self.done[self.front]:
            self.front += 1
        self.download.wrote(self._span(self.front - 1)[1] if self.front else 0)
        if self.front == self.chunks:
            self._committed()

    def _stream(self, answer: PeerAnswer) -> None:
        """A 200: the whole blob on this one request."""
        mirror = self.containerd.mirror
        assert mirror is not None

        def done() -> None:
            self.download.unfollow()
            self.containerd.slots.release()
            self._committed()

        stream = mirror.transfer(answer, self.blob.digest, 0, self.blob.size, done)
        self.download.follow(stream, 0)

    def _committed(self) -> None:
        self.download.complete = True
        self.download.wrote(self.blob.size)
        self.containerd.record("commit", self.containerd.node, self.blob.digest, self.world.sim.now)
        self.containerd.on_commit(self.blob.digest)
        self.pull.blob_committed(self.blob)
