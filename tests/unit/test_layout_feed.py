"""LayoutFeed: an OCI layout's tags (with their manifest digests) and blobs reach the tracker at start and after
each rewrite of index.json (real inotify on a temporary directory); a layout that cannot be watched is still
advertised once, and a broken index.json keeps the advertisements as they were."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import trio

from spegel.oci.digest import Digest
from spegel.oci.manifest import Descriptor
from spegel.routing.base import KeyState
from spegel.store import inotify
from spegel.store.layout import LayoutFeed, OCILayoutStore, write_layout
from spegel.tracker import Tracker
from tests.support.routers import RecordingRouter

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def tagged(data: bytes, reference: str) -> Descriptor:
    return Descriptor(MANIFEST, Digest.of(data), len(data), {"org.opencontainers.image.ref.name": reference})


async def test_the_layout_is_advertised_at_start_and_after_each_index_rewrite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = b'{"first": 1}', b'{"second": 2}'
    write_layout(tmp_path, {Digest.of(first): first}, [tagged(first, "example.com/a:v1")])
    router = RecordingRouter()
    feed = LayoutFeed(OCILayoutStore(tmp_path), Tracker(router))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(feed.run)
            assert router.state == {
                f"example.com/a:v1@{Digest.of(first)}": KeyState.COMPLETE,
                str(Digest.of(first)): KeyState.COMPLETE,
            }
            write_layout(
                tmp_path,
                {Digest.of(first): first, Digest.of(second): second},
                [tagged(first, "example.com/a:v1"), tagged(second, "example.com/b:v2")],
            )
            await router.wait_for(lambda state: f"example.com/b:v2@{Digest.of(second)}" in state)
            assert str(Digest.of(second)) in router.state

            advertised = dict(router.state)
            (tmp_path / "index.json").write_text("{not json")  # a broken index keeps what is advertised
            while "cannot list the layout" not in caplog.text:
                await trio.sleep(0.01)
            assert router.state == advertised
            (tmp_path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
            await router.wait_for(lambda state: not any("@" in key for key in state))
            nursery.cancel_scope.cancel()
    assert set(router.state) == {str(Digest.of(first)), str(Digest.of(second))}  # blobs stay, tags went


async def test_a_layout_that_cannot_be_watched_is_advertised_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = b'{"x": 1}'
    write_layout(tmp_path, {Digest.of(data): data}, [tagged(data, "example.com/a:v1")])

    def no_instances() -> inotify.Inotify:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(inotify, "Inotify", no_instances)
    router = RecordingRouter()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(LayoutFeed(OCILayoutStore(tmp_path), Tracker(router)).run)
            nursery.cancel_scope.cancel()
    assert str(Digest.of(data)) in router.state
    assert "cannot watch the layout" in caplog.text
