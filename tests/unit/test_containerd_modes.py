"""The watcher's decisions without containerd: versions, the mode a version allows, event filters, flags."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from spegel.store.containerd.client import ContainerdClient, Version
from spegel.store.containerd.store import ContainerdStore
from spegel.store.containerd.watcher import Mode, Watcher, effective_mode, event_filters
from spegel.tracker import Tracker
from tests.support.routers import RecordingRouter


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
    store = ContainerdStore(ContainerdClient("/nonexistent/containerd.sock"), content_path)  # never connects
    return Watcher(store, Tracker(RecordingRouter()), mode=mode)


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
