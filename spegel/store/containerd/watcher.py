"""The watcher: containerd's state turned into advertisements (`--advertise image|layer|inflight`).

Modes:
- `image`: an image's tag and every digest it holds are advertised when `/images/create|update` arrives
  (containerd publishes it after the whole image is fetched and unpacked);
- `layer`: also each digest on `/content/create`, the moment its blob is committed (containerd >= 2.1);
- `inflight`: also each blob as in progress as soon as its download's first bytes are on disk (inotify, see
  ingestwatch.py for why not earlier), withdrawn if the download is abandoned; and the tracker accepts claims
  (`Tracker.claim`): a blob the mirror is about to let containerd download (upstream or from a peer's
  download), before containerd has received anything, with the claim's time.

A session subscribes first, then re-lists everything (so nothing published in between is lost), then applies
events in containerd's order. Re-listing also runs every `relist_interval` seconds and `gc_delay` seconds after
an image is deleted, because garbage collection publishes no content deletes. When containerd goes away the
session ends (so does it when the content root cannot be watched, e.g. out of inotify watches); the next one
starts after a back-off (0.1 s doubling to 5 s) and re-lists: advertisements are kept meanwhile (a restart
keeps the content). A mode containerd cannot serve (content events need 2.1) is logged once and the best
available mode is used instead.

All changes go through the `Tracker` (spegel/tracker.py), the one owner of what the node advertises and claims.
"""

from __future__ import annotations

import logging
from enum import Enum

import trio

from spegel.oci.digest import Digest, InvalidDigest
from spegel.store.containerd.client import ContainerdError, Version
from spegel.store.containerd.content import ContainerdContent
from spegel.store.containerd.downloads import Downloads
from spegel.store.containerd.ingestwatch import IngestEnded, IngestEvent, IngestStarted, IngestWatcher
from spegel.store.containerd.proto import content_events_pb2, images_pb2, types_pb2
from spegel.store.containerd.store import ContainerdStore
from spegel.tracker import Tracker

log = logging.getLogger("spegel.containerd")

DEFAULT_RELIST_INTERVAL = 60.0
DEFAULT_GC_DELAY = 2.0
MIN_BACKOFF, MAX_BACKOFF = 0.1, 5.0


class Mode(Enum):
    IMAGE = "image"
    LAYER = "layer"
    INFLIGHT = "inflight"


CONTENT_EVENTS_SINCE = (2, 1)


def topics(mode: Mode) -> list[str]:
    """The event topics a mode subscribes to."""
    names = ["/images/create", "/images/update", "/images/delete"]
    if mode is not Mode.IMAGE:
        names += ["/content/create", "/content/delete"]
    return names


def event_filters(mode: Mode, namespace: str) -> list[str]:
    """containerd event filters (OR-ed) for a mode's topics in one namespace."""
    return [f'topic=="{topic}",namespace=="{namespace}"' for topic in topics(mode)]


def effective_mode(requested: Mode, version: Version) -> Mode:
    """The mode to run: content events (layer, inflight) need containerd >= 2.1, else image mode."""
    if requested is not Mode.IMAGE and not version.at_least(*CONTENT_EVENTS_SINCE):
        return Mode.IMAGE
    return requested


class Watcher:
    """Feeds a `Tracker` what one containerd namespace holds and does. Run with `run()`."""

    def __init__(
        self,
        store: ContainerdStore,
        tracker: Tracker,
        mode: Mode = Mode.INFLIGHT,
        relist_interval: float = DEFAULT_RELIST_INTERVAL,
        gc_delay: float = DEFAULT_GC_DELAY,
        downloads: Downloads | None = None,
    ) -> None:
        """In inflight mode, `downloads` (when given) is fed every ingest event, for `IngestSource`."""
        self.store = store
        self.downloads = downloads
        self.tracker = tracker
        self.requested_mode = mode
        self.mode: Mode | None = None  # the mode of the current session, once connected
        self.relist_interval = relist_interval
        self.gc_delay = gc_delay
        self.sessions = 0  # sessions started (a reconnection starts a new one)
        self._relist_requested = trio.Event()
        self._warned: set[tuple[Mode, Mode]] = set()
        self._started = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled, reconnecting when containerd goes away.

        `started` after the first session's first re-list has been applied.
        """
        backoff = MIN_BACKOFF
        try:
            while True:
                sessions = self.sessions
                try:
                    await self._session(task_status)
                except* (ContainerdError, OSError) as group:  # containerd away, or its content root unwatchable
                    errors = "; ".join(str(e) for e in group.exceptions)
                    log.warning("containerd watch interrupted", extra={"error": errors, "retry_in": backoff})
                backoff = MIN_BACKOFF if self.sessions > sessions else min(backoff * 2, MAX_BACKOFF)
                await trio.sleep(backoff)
        finally:
            self.tracker.accept_claims(False)

    async def _session(self, task_status: trio.TaskStatus[None]) -> None:
        version = await self.store.client.version()
        mode = self._choose_mode(version)
        content = ContainerdContent(self.store, blobs=mode is not Mode.IMAGE, downloads_too=mode is Mode.INFLIGHT)
        async with self.store.client.subscribe(event_filters(mode, self.store.namespace)) as envelopes:
            self.sessions += 1
            self.mode = mode
            log.info("watching containerd", extra={"version": version.text, "advertise": mode.value})
            async with trio.open_nursery() as nursery:
                if mode is Mode.INFLIGHT:
                    if self.downloads is not None:
                        self.downloads.clear()  # the ingest watcher reports the present ones again
                    ingests = IngestWatcher(self.store.content_path, self.store.namespace, self._on_ingest)
                    await nursery.start(ingests.run)
                    nursery.start_soon(self.tracker.expire_claims, content)
                self.tracker.accept_claims(mode is Mode.INFLIGHT)
                await self.tracker.relist(content)
                if not self._started:
                    self._started = True
                    task_status.started()
                nursery.start_soon(self._relist_periodically, content)
                async for envelope in envelopes:
                    await self._on_envelope(nursery, content, envelope)
                raise ContainerdError("containerd closed the event stream")

    def _choose_mode(self, version: Version) -> Mode:
        mode = effective_mode(self.requested_mode, version)
        if mode is Mode.INFLIGHT and not self.store.content_path.parent.is_dir():
            mode = Mode.LAYER
            reason = f"the content root {self.store.content_path} is not mounted"
        else:
            reason = f"containerd {version.text} publishes no content events (needs >= 2.1)"
        if mode is not self.requested_mode and (self.requested_mode, mode) not in self._warned:
            self._warned.add((self.requested_mode, mode))
            log.error(
                f"--advertise {self.requested_mode.value} is not available: {reason}; advertising in "
                f"{mode.value} mode instead",
                extra={"requested": self.requested_mode.value, "mode": mode.value, "version": version.text},
            )
        return mode

    def request_relist(self) -> None:
        """Ask for a re-list soon (by the periodic task)."""
        self._relist_requested.set()

    async def _relist_periodically(self, content: ContainerdContent) -> None:
        while True:
            with trio.move_on_after(self.relist_interval):
                await self._relist_requested.wait()
            self._relist_requested = trio.Event()
            await self.tracker.relist(content)

    async def _relist_later(self, delay: float) -> None:
        await trio.sleep(delay)
        self.request_relist()

    async def _on_envelope(
        self, nursery: trio.Nursery, content: ContainerdContent, envelope: types_pb2.Envelope
    ) -> None:
        topic = envelope.topic
        if topic in ("/images/create", "/images/update"):
            payload = images_pb2.ImageCreate.FromString(envelope.event.value)  # ImageUpdate has the same fields
            await self.tracker.complete(await content.image_keys_by_name(payload.name))
        elif topic == "/images/delete":
            await self.tracker.relist(content)
            nursery.start_soon(self._relist_later, self.gc_delay)  # once garbage collection has run
        elif topic in ("/content/create", "/content/delete"):
            digest = content_events_pb2.ContentCreate.FromString(envelope.event.value).digest  # same field 1
            try:
                key = str(Digest.parse(digest))
            except InvalidDigest:
                log.warning("ignoring content event with an invalid digest", extra={"digest": digest[:200]})
                return
            if topic == "/content/create":
                await self.tracker.complete([key])
            else:
                await self.tracker.withdraw([key])

    async def _on_ingest(self, event: IngestEvent) -> None:
        if self.downloads is not None:
            self.downloads.update(event)
        key = str(event.ingest.digest)
        if isinstance(event, IngestStarted):
            await self.tracker.download_started(key)
        elif isinstance(event, IngestEnded) and event.started:
            await self.tracker.download_ended(key, event.committed)
