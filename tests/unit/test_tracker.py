"""The tracker: claims reach the router with their time, expire without a download, survive re-lists."""

from __future__ import annotations

import time

import trio

from spegel.oci.digest import Digest
from spegel.routing.base import KeyState
from spegel.tracker import Listing, Tracker
from tests.support.routers import RecordingRouter

IN_PROGRESS = KeyState.IN_PROGRESS


class Source:
    """A `ContentSource` whose listing and downloads the test sets."""

    def __init__(self) -> None:
        self.complete: list[str] = []
        self.downloading: set[str] = set()

    async def listing(self) -> Listing:
        return Listing(list(self.complete), [], sorted(self.downloading))

    async def downloads(self) -> set[str]:
        return set(self.downloading)


async def test_a_claim_is_in_progress_until_its_grace_ends_without_a_download() -> None:
    router, source = RecordingRouter(), Source()
    tracker = Tracker(router, claim_grace=0.2)
    abandoned, downloading = Digest.of(b"no download"), Digest.of(b"downloading")
    assert await tracker.claim(abandoned, time.time()) is None  # no feed accepts claims yet
    tracker.accept_claims(True)
    first = await tracker.claim(abandoned, time.time())
    assert first is not None and await tracker.claim(downloading, time.time()) is not None
    assert await tracker.claim(abandoned, time.time()) == first  # claimed once: the same claim
    assert [c.since for c in router.calls] == [first, router.calls[1].since]  # claim times reach the router
    assert router.state == {str(abandoned): IN_PROGRESS, str(downloading): IN_PROGRESS}
    source.downloading.add(str(downloading))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tracker.expire_claims, source)
            await router.wait_for(lambda state: str(abandoned) not in state)
            nursery.cancel_scope.cancel()
    assert router.state == {str(downloading): IN_PROGRESS}
    again = await tracker.claim(abandoned, time.time())  # a claim withdrawn is forgotten: a new one has its own time
    assert again is not None and again > first


async def test_a_relist_keeps_a_claim_until_its_grace_ends_then_only_while_it_downloads() -> None:
    router, source = RecordingRouter(), Source()
    tracker = Tracker(router, claim_grace=60)
    tracker.accept_claims(True)
    claimed, listed = Digest.of(b"claimed"), "sha256:" + "1" * 64
    source.complete = [listed]
    await tracker.claim(claimed, time.time())
    await tracker.relist(source)  # no listing shows a claim: it has no bytes on disk yet
    assert router.state == {str(claimed): IN_PROGRESS, listed: KeyState.COMPLETE}
    tracker.claim_grace = 0
    second = Digest.of(b"second")
    await tracker.claim(second, time.time())
    source.downloading = {str(second)}
    await tracker.relist(source)  # past its grace: kept because containerd downloads it
    assert router.state.get(str(second)) is IN_PROGRESS
    source.downloading = set()
    await tracker.relist(source)
    assert str(second) not in router.state
    await tracker.complete([str(claimed)])
    assert tracker.advertisements.claim_since(str(claimed)) is None  # complete: the claim has ended
