"""The watcher's decisions without containerd: versions, the mode a version allows, event filters, flags, and
blobs announced on a miss."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from benchmark.watcher_bench import RecordingRouter
from spegel.oci.digest import Digest
from spegel.routing.base import KeyState
from spegel.store.containerd.client import Version
from spegel.store.containerd.watcher import Mode, Watcher, effective_mode, event_filters


@pytest.mark.parametrize(
    ("text", "major", "minor"),
    [("v2.1.9", 2, 1), ("2.1.9+unknown", 2, 1), ("1.7.24~ds1-1", 1, 7), ("v10.0.0-rc.1", 10, 0)],
)
def test_version_parse(text: str, major: int, minor: int) -> None:
    version = Version.parse(text)
    assert (version.major, version.minor, version.text) == (major, minor, text)


@pytest.mark.parametrize("text", ["", "dev", "x2.1"])
def test_version_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="unrecognised containerd version"):
        Version.parse(text)


@pytest.mark.parametrize(
    ("requested", "version", "expected"),
    [
        (Mode.INFLIGHT, "2.1.0", Mode.INFLIGHT),
        (Mode.LAYER, "2.2.1", Mode.LAYER),
        (Mode.LAYER, "2.0.5", Mode.IMAGE),
        (Mode.INFLIGHT, "1.7.24", Mode.IMAGE),
        (Mode.IMAGE, "1.6.20", Mode.IMAGE),
    ],
)
def test_effective_mode(requested: Mode, version: str, expected: Mode) -> None:
    assert effective_mode(requested, Version.parse(version)) is expected


def test_event_filters_per_mode() -> None:
    assert event_filters(Mode.IMAGE, "k8s.io") == [
        'topic=="/images/create",namespace=="k8s.io"',
        'topic=="/images/update",namespace=="k8s.io"',
        'topic=="/images/delete",namespace=="k8s.io"',
    ]
    assert event_filters(Mode.LAYER, "ns") == event_filters(Mode.INFLIGHT, "ns")
    assert 'topic=="/content/create",namespace=="ns"' in event_filters(Mode.LAYER, "ns")


def _watcher(mode: Mode, content_path: Path) -> Watcher:
    store = SimpleNamespace(content_path=content_path)
    return Watcher(store, router=None, mode=mode)  # type: ignore[arg-type]


def test_unavailable_mode_is_logged_once_and_degraded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher = _watcher(Mode.INFLIGHT, tmp_path / "content")
    with caplog.at_level(logging.ERROR, logger="spegel.containerd"):
        assert watcher._choose_mode(Version.parse("1.7.24")) is Mode.IMAGE
        assert watcher._choose_mode(Version.parse("1.7.24")) is Mode.IMAGE
    [record] = caplog.records
    assert "--advertise inflight is not available" in record.message and "needs >= 2.1" in record.message
    assert watcher._choose_mode(Version.parse("2.1.9")) is Mode.INFLIGHT


def test_inflight_without_a_content_root_falls_back_to_layer(caplog: pytest.LogCaptureFixture) -> None:
    watcher = _watcher(Mode.INFLIGHT, Path("/nonexistent/containerd/content"))
    with caplog.at_level(logging.ERROR, logger="spegel.containerd"):
        assert watcher._choose_mode(Version.parse("2.1.9")) is Mode.LAYER
    assert "is not mounted" in caplog.records[0].message


async def test_a_claim_is_in_progress_until_its_grace_ends_without_a_download(tmp_path: Path) -> None:
    router = RecordingRouter()
    store = SimpleNamespace(content_path=tmp_path, namespace="k8s.io")
    watcher = Watcher(store, router, Mode.INFLIGHT)  # type: ignore[arg-type]
    watcher.mode, watcher.miss_grace = Mode.INFLIGHT, 0.2
    abandoned, downloading = Digest.of(b"no download"), Digest.of(b"downloading")
    first = await watcher.claim(abandoned)
    assert first is not None and await watcher.claim(downloading) is not None
    assert await watcher.claim(abandoned) == first  # claimed once: the same claim
    assert [c.since for c in router.calls] == [first, router.calls[1].since]  # claim times reach the router
    assert router.state == {str(abandoned): KeyState.IN_PROGRESS, str(downloading): KeyState.IN_PROGRESS}
    ingest = tmp_path / "ingest" / "x"
    ingest.mkdir(parents=True)
    (ingest / "ref").write_text(f"k8s.io/1/layer-{downloading}")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher._expire_misses)
            await router.wait_for(lambda state: str(abandoned) not in state)
            nursery.cancel_scope.cancel()
    assert router.state == {str(downloading): KeyState.IN_PROGRESS}
    again = await watcher.claim(abandoned)  # a claim withdrawn is forgotten: a new one has its own time
    assert again is not None and again > first

    watcher.mode = Mode.LAYER  # nothing is claimed outside inflight mode
    assert await watcher.claim(Digest.of(b"other")) is None
    assert str(Digest.of(b"other")) not in router.state
