"""The pure parts of the measurements: ingest refs, ingest scans on a real directory, mirror counters, progress."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from benchmark.measure import counter_delta, machine_busy, parse_mirror_metrics, scan_ingests
from benchmark.progress import Progress
from spegel.store.containerd.ingest import ref_digest

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (f"k8s.io/1/layer-sha256:{HEX}", f"sha256:{HEX}"),
        (f"k8s.io/12/manifest-sha256:{HEX}\n", f"sha256:{HEX}"),
        (f"default/3/sha256:{HEX}", f"sha256:{HEX}"),
        ("k8s.io/1/layer-sha256:short", None),
        ("garbage", None),
    ],
)
def test_ingest_digest(ref: str, expected: str | None) -> None:
    digest = ref_digest(ref.strip())
    assert (str(digest) if digest else None) == expected


def test_scan_ingests_reports_each_new_ingest_once(tmp_path: Path) -> None:
    seen: set[str] = set()
    assert scan_ingests(tmp_path, seen) == []  # no ingest directory yet
    first = tmp_path / "ingest" / "aaa"
    first.mkdir(parents=True)
    assert scan_ingests(tmp_path, seen) == []  # ref not written yet: looked at again later
    (first / "ref").write_text(f"k8s.io/1/layer-sha256:{HEX}")
    assert scan_ingests(tmp_path, seen) == [f"sha256:{HEX}"]
    assert scan_ingests(tmp_path, seen) == []
    second = tmp_path / "ingest" / "bbb"
    second.mkdir()
    (second / "ref").write_text("k8s.io/2/something-else")
    assert scan_ingests(tmp_path, seen) == [] and "bbb" in seen


def test_scan_ingests_with_bytes_waits_for_the_first_bytes(tmp_path: Path) -> None:
    seen: set[str] = set()
    ingest = tmp_path / "ingest" / "aaa"
    ingest.mkdir(parents=True)
    (ingest / "ref").write_text(f"k8s.io/1/layer-sha256:{HEX}")
    assert scan_ingests(tmp_path, seen, with_bytes=True) == []  # no data file yet
    (ingest / "data").write_bytes(b"")
    assert scan_ingests(tmp_path, seen, with_bytes=True) == []  # empty: the first chunk has not arrived
    (ingest / "data").write_bytes(b"x")
    assert scan_ingests(tmp_path, seen, with_bytes=True) == [f"sha256:{HEX}"]
    assert scan_ingests(tmp_path, seen, with_bytes=True) == []


def test_mirror_metrics_by_source() -> None:
    text = (
        "# HELP spegel_mirror_bytes_total Body bytes served by source.\n"
        "# TYPE spegel_mirror_bytes_total counter\n"
        'spegel_mirror_bytes_total{source="peer"} 1024.0\n'
        'spegel_mirror_bytes_total{source="local"} 10.0\n'
        'spegel_mirror_bytes_created{source="peer"} 1.7e9\n'
        "# TYPE spegel_mirror_requests_by_source_total counter\n"
        'spegel_mirror_requests_by_source_total{registry="a",source="miss"} 2.0\n'
        'spegel_mirror_requests_by_source_total{registry="b",source="miss"} 3.0\n'
        "# TYPE other_total counter\n"
        "other_total 99.0\n"
    )
    assert parse_mirror_metrics(text) == {"bytes_peer": 1024, "bytes_local": 10, "requests_miss": 5}
    assert counter_delta({"a": 1, "b": 5}, {"b": 7, "c": 2}) == {"a": -1, "b": 2, "c": 2}


def test_progress_lines_count_runs_and_estimate_what_is_left() -> None:
    out = io.StringIO()
    progress = Progress(2, out)
    progress.run_starting()
    progress.step("run a: create")
    progress.run_finished("run a done")
    progress.step("run b: create")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/2, ? left] run a: create"
    assert lines[1].startswith("[1/2] run a done (") and lines[1].endswith(" s)")
    assert lines[2].startswith("[2/2, ") and lines[2].endswith(" min left] run b: create")


def test_machine_busy_counts_up() -> None:
    first = machine_busy()
    sum(i * i for i in range(200_000))  # some CPU work
    assert 0 < first <= machine_busy()
