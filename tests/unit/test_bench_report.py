"""Result tables and the report, from small synthetic DataFrames shaped like the runner's records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from benchmark import tables
from benchmark.__main__ import main
from benchmark.bound import GOODPUT
from benchmark.report import build, goals, markdown_table

MiB = 1 << 20
SIZE = 8 * MiB


def _meta() -> dict:
    image = {"size": SIZE, "layer_bytes": SIZE - 1000, "layers": []}
    return {
        "scenario": {
            "name": "synthetic",
            "description": "made up",
            "cluster": {
                "backend": "netns",
                "nodes": 2,
                "upstream_bandwidth": 50e6,
                "node_bandwidth": 200e6,
                "chunk_size": MiB,
            },
            "repetitions": 2,
            "modes": ["upstream", "layer", "inflight"],
            "phases": ["create", "update", "advertise"],
            "observe_interval": 0.01,
        },
        "images": {"img/create": image, "img/update": image, "img/advertise": image},
        "machine": {"cpus": 2},
        "commit": "abc",
    }


def _pulls() -> pd.DataFrame:
    rows = []
    for mode, base in (("upstream", 3.0), ("inflight", 1.5)):
        for rep in (0, 1):
            labels = {"run": f"img/{mode}/rep{rep}", "image": "img", "mode": mode, "repetition": rep}
            start = 1000.0 + rep * 100 + (50 if mode == "inflight" else 0)
            for node, extra, jitter in (("n0", 0.0, 0.0), ("n1", 0.5, 0.3)):
                duration = base + extra + rep * 0.1
                rows.append(
                    {
                        **labels,
                        "phase": "create",
                        "node": node,
                        "batch": 0,
                        "phase_start": start,
                        "start": start + jitter,
                        "end": start + jitter + duration,
                        "duration": duration,
                        "ok": True,
                        "error": "",
                    }
                )
                rows.append(
                    {
                        **labels,
                        "phase": "update",
                        "node": node,
                        "batch": int(node[1]),
                        "phase_start": start + 10,
                        "start": start + 10,
                        "end": start + 10.2,
                        "duration": 0.2,
                        "ok": node == "n0",
                        "error": "" if node == "n0" else "boom",
                    }
                )
    return pd.DataFrame(rows)


def _traffic() -> pd.DataFrame:
    rows = []
    for mode, ratio in (("upstream", 2.1), ("inflight", 1.1)):
        for rep in (0, 1):
            rows.append(
                {
                    "run": f"img/{mode}/rep{rep}",
                    "image": "img",
                    "mode": mode,
                    "repetition": rep,
                    "phase": "create",
                    "upstream_bytes": ratio * SIZE / GOODPUT,  # on the wire: the ratio is of payload
                    "upstream_log_bytes": ratio * SIZE * 1.1,
                    "bytes_peer": 0 if mode == "upstream" else SIZE,
                    "bytes_inflight": 0 if mode == "upstream" else SIZE // 2,
                }
            )
    return pd.DataFrame(rows)


def _events_and_visibility() -> tuple[pd.DataFrame, pd.DataFrame]:
    events, visibility = [], []
    for mode, delay in (("layer", 0.05), ("inflight", -0.5)):
        run = f"img/{mode}/rep0"
        labels = {"run": run, "image": "img", "mode": mode, "repetition": 0}
        for layer in (0, 1):
            digest = f"sha256:{mode[0]}{layer}" + "0" * 62
            events.append(
                {
                    **labels,
                    "node": "n0",
                    "event": "ingest",
                    "digest": digest,
                    "time": 10.0 + layer,
                    "phase": "advertise",
                    "layer": layer,
                }
            )
            events.append(
                {
                    **labels,
                    "node": "n0",
                    "event": "commit",
                    "digest": digest,
                    "time": 11.0 + layer,
                    "phase": "advertise",
                    "layer": layer,
                }
            )
            events.append(
                {
                    **labels,
                    "node": "n1",
                    "event": "commit",
                    "digest": digest,
                    "time": 12.0 + layer,
                    "phase": "create",
                    "layer": layer,
                }
            )
            visibility.append(
                {
                    **labels,
                    "phase": "advertise",
                    "observer": "n1",
                    "digest": digest,
                    "layer": layer,
                    "visible": 11.0 + layer + delay,
                    "answered": 11.0 + layer + delay + 0.002 + 0.01 * layer,
                    "rtt": 0.002 + 0.01 * layer,
                    "probes": 5,
                }
            )
    visibility[-1]["visible"] = float("nan")  # one layer never seen
    return pd.DataFrame(events), pd.DataFrame(visibility)


def _usage() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run": "img/inflight/rep0",
                "image": "img",
                "mode": "inflight",
                "repetition": 0,
                "node": "n0",
                "process": "spegel",
                "cpu_seconds": 2.5,
                "peak_rss_bytes": 80 * MiB,
            }
        ]
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "meta.json").write_text(json.dumps(_meta()))
    events, visibility = _events_and_visibility()
    failures = pd.DataFrame(
        [
            {
                "run": "img/layer/rep1",
                "image": "img",
                "mode": "layer",
                "repetition": 1,
                "error": "starting the nodes failed: spegel exited\nlog tail",
            }
        ]
    )
    frames = {
        "pulls": _pulls(),
        "traffic": _traffic(),
        "events": events,
        "visibility": visibility,
        "usage": _usage(),
        "failures": failures,
    }
    for name, frame in frames.items():
        frame.to_csv(tmp_path / "data" / f"{name}.csv", index=False)
    return tmp_path


def test_spread() -> None:
    stats = tables.spread(pd.Series([1.0, 2.0, 3.0, None]))
    assert stats["n"] == 3 and stats["median"] == 2 and stats["min"] == 1 and stats["max"] == 3
    assert stats["cv"] == pytest.approx((2 / 3) ** 0.5 / 2)
    assert tables.spread(pd.Series([5.0]))["cv"] == 0
    assert tables.spread(pd.Series([], dtype=float))["n"] == 0


def test_completion_and_pull_table() -> None:
    pulls, meta = _pulls(), _meta()
    done = tables.completion(pulls)
    create = done[(done["mode"] == "inflight") & (done["phase"] == "create")].sort_values("repetition")
    assert list(create["slowest"]) == pytest.approx([2.0, 2.1])  # each node from its own start
    assert list(create["completion"]) == pytest.approx([2.3, 2.4])  # n1 started 0.3 s after the phase
    upstream = done[(done["mode"] == "upstream") & (done["phase"] == "create")].sort_values("repetition")
    assert list(upstream["slowest"]) == pytest.approx([3.5, 3.6])
    assert list(upstream["completion"]) == pytest.approx([3.8, 3.9])
    assert done[done["phase"] == "update"]["failed"].tolist() == [1, 1, 1, 1]
    table = tables.pull_table(pulls, meta)
    assert list(table["mode"]) == ["upstream", "inflight", "upstream", "inflight"]  # mode order within phases
    row = table[(table["phase"] == "create") & (table["mode"] == "inflight")].iloc[0]
    bounds = tables.Bounds.of(meta, "img")
    assert row["n"] == 4 and row["slowest_median"] == pytest.approx(2.05) and row["slowest_max"] == 2.1
    assert row["vs_bound"] == pytest.approx(2.05 / bounds.lower)
    update = table[(table["phase"] == "update") & (table["mode"] == "inflight")].iloc[0]
    assert update["n"] == 2 and update["failed"] == 2  # failed pulls are counted, not timed
    assert math.isnan(update["vs_bound"])  # judged on the batches after the first: n1's pulls, which all failed


def test_traffic_table_in_image_sizes() -> None:
    table = tables.traffic_table(_traffic(), _meta())
    assert table.set_index("mode")["median"].to_dict() == pytest.approx({"upstream": 2.1, "inflight": 1.1})
    assert table.set_index("mode")["peer_mib_median"]["inflight"] == 8  # in-flight bytes are a part of it
    assert table.set_index("mode")["inflight_mib_median"]["inflight"] == 4
    assert table.set_index("mode")["log_median"].to_dict() == pytest.approx({"upstream": 2.31, "inflight": 1.21})


def test_advertisement_latency_from_commit_and_ingest() -> None:
    events, visibility = _events_and_visibility()
    latency = tables.advertisement_latency(events, visibility)
    layer = latency[latency["mode"] == "layer"].sort_values("layer")
    assert list(layer["after_commit"]) == pytest.approx([0.05, 0.05])
    assert list(layer["after_ingest"]) == pytest.approx([1.05, 1.05])
    table = tables.advertisement_table(latency).set_index("mode")
    assert table.loc["inflight", "median"] == pytest.approx(-0.5) and table.loc["inflight", "unseen"] == 1
    assert table.loc["layer", "p95"] == pytest.approx(0.05)
    assert table.loc["layer", "rtt_median"] == pytest.approx(0.007)  # the probes' round trip, apart


def test_goals_report_met_and_not_met() -> None:
    events, visibility = _events_and_visibility()
    frames = {"pulls": _pulls(), "traffic": _traffic()}
    found = goals(_meta(), frames, tables.advertisement_latency(events, visibility))
    verdicts = {goal.split(": ", 1)[1].split(" (")[0]: (measured, verdict) for goal, measured, verdict in found}
    # slowest inflight node 2.05 s vs S/U = 1.40 s
    assert verdicts["create, inflight: slowest node ≤ 1.25 x lower bound"] == ("1.46 x", "**not met**")
    assert verdicts["create, inflight: upstream bytes ≤ 1.5 x S"] == ("1.10 x S", "met")
    # the first update batch (n0 alone, cold): 0.2 s vs its lower bound max(S/U, S/B) = 1.40 s; n1's later
    # batch failed, so no goal is judged on it
    assert verdicts["update, inflight: first batch"] == ("0.14 x", "met")
    assert not any("after the first batch" in goal for goal in verdicts)
    assert verdicts["p95 visible ≤ 100 ms after commit"] == ("50 ms", "met")


def test_report_is_built_with_tables_and_plots(run_dir: Path) -> None:
    readme = build(run_dir)
    text = readme.read_text()
    assert text.startswith("# Benchmark: synthetic")
    for heading in (
        "## Bounds",
        "## Goals",
        "## Pull times",
        "## Upstream traffic",
        "## Advertisement latency",
        "## Resources",
        "## Plots",
    ):
        assert heading in text
    assert "| img | create | inflight | 4 |" in text
    assert "| mode | mirror CPU s | GB served | mirror CPU s / GB |" in text
    assert "**1 run(s) failed**" in text and "- img/layer/rep1: starting the nodes failed: spegel exited\n" in text
    assert "[report.html](report.html)" in text and (run_dir / "report.html").read_text().startswith("<!DOCTYPE html>")
    for png in ("pull_times.png", "cdf.png", "timeline.png", "advertisement.png", "upstream_bytes.png"):
        assert f"]({png})" in text
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_rebuilds_and_refuses_non_runs(run_dir: Path, tmp_path_factory, capsys) -> None:  # type: ignore[no-untyped-def]
    (run_dir / "README.md").unlink(missing_ok=True)
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "README.md").exists()
    empty = tmp_path_factory.mktemp("empty")
    assert main(["report", str(empty)]) == 1
    assert "not a benchmark run directory" in capsys.readouterr().err


def test_update_table_judges_the_first_batch_cold_and_the_rest_against_s_over_b() -> None:
    meta = _meta()
    meta["scenario"]["cluster"]["nodes"] = 4
    rows = [
        {"run": f"img/layer/rep{rep}", "image": "img", "mode": "layer", "repetition": rep, "phase": "update"}
        | {"node": f"n{i}", "batch": i // 2, "duration": duration, "ok": True}
        for rep, durations in ((0, [3.0, 2.8, 1.0, 1.2]), (1, [2.5, 2.9, 0.9, 5.0]))
        for i, duration in enumerate(durations)
    ]
    table = tables.update_table(pd.DataFrame(rows), meta).iloc[0]
    first = tables.Bounds.first_batch(meta, "img", 2)
    assert table["first_nodes"] == 2 and table["first_slowest"] == pytest.approx(2.95)  # median of 3.0 and 2.9
    assert (
        table["first_bound"] == pytest.approx(first.lower)
        and first.lower == tables.Bounds.of(meta, "img", "update", 2).lower
    )
    assert table["later_n"] == 4 and table["later_median"] == pytest.approx(1.1)
    assert table["later_vs"] == pytest.approx(1.1 / tables.Bounds.of(meta, "img", "update").node_time)
    assert tables.first_batch_size(meta) == 1  # ceil(0.2 x 4); the data above had batches of 2


def test_the_timeline_shows_the_largest_image_slowest_run_first() -> None:
    meta = _meta()
    meta["images"]["big/create"] = {"size": 2 * SIZE}
    pulls = _pulls()
    big = pulls[pulls["image"] == "img"].assign(image="big", run=lambda f: f["run"].str.replace("img", "big"))
    pulls = pd.concat([pulls, big])
    assert tables.largest_image(meta, pulls) == "big"
    assert tables.slowest_runs(pulls, "big")["inflight"] == ["big/inflight/rep1", "big/inflight/rep0"]  # 2.1 s, 2.0 s
    events = pd.DataFrame(
        [
            {"run": "big/inflight/rep1", "phase": "create", "node": node, "layer": 0, "event": event, "time": time}
            for node, event, time in (("n1", "ingest", 1151.0), ("n1", "commit", 1152.5), ("n0", "commit", 1151.2))
        ]
    )
    spans = tables.layer_spans(events, pulls, "big/inflight/rep1")  # phase start 1150
    assert spans.to_dict("records") == [
        {"node": "n0", "layer": 0, "begin": pytest.approx(1.2), "end": pytest.approx(1.2)},  # no ingest seen
        {"node": "n1", "layer": 0, "begin": pytest.approx(1.0), "end": pytest.approx(2.5)},
    ]


def test_side_by_side_puts_spegel_go_beside_our_modes() -> None:
    pulls = _pulls()
    go = pulls[pulls["mode"] == "upstream"].assign(
        mode="spegel-go", run=lambda f: f["run"].str.replace("upstream", "spegel-go")
    )
    traffic = _traffic()
    go_traffic = traffic[traffic["mode"] == "upstream"].assign(mode="spegel-go")
    usage = pd.concat(
        [_usage(), _usage().assign(mode="spegel-go", process="spegel-go", cpu_seconds=0.5, peak_rss_bytes=40 * MiB)]
    )
    table = tables.side_by_side(
        pd.concat([pulls, go]), pd.concat([traffic, go_traffic]), usage, pd.DataFrame(), _meta()
    )
    assert list(table.columns) == ["shape", "figure", "spegel-go", "inflight"]
    values = table.set_index("figure")
    assert values.loc["create: slowest node (s)"].to_dict() | {"shape": "img"} == pytest.approx(
        {"shape": "img", "spegel-go": 3.55, "inflight": 2.05}
    )
    assert values.loc["create: upstream bytes (x S)", "spegel-go"] == pytest.approx(2.1)
    assert values.loc["create + update: failed pulls, all repetitions"].tolist()[1:] == [2, 2]  # n1's updates
    assert values.loc["mirror process: peak RSS (MiB), median"].tolist()[1:] == [40, 80]
    assert values.loc["mirror process: CPU s per run, median", "spegel-go"] == 0.5


def test_markdown_table_formats_numbers_and_missing_values() -> None:
    frame = pd.DataFrame([{"a": "x", "b": 1.23456, "c": float("nan")}])
    assert markdown_table(frame, {"a": "A", "b": "B", "c": "C"}).splitlines()[2] == "| x | 1.23 | - |"
    assert markdown_table(pd.DataFrame(), {"a": "A"}) == "_no data_\n"


def test_order_keeps_the_scenarios_image_order_and_sorts_phases_and_modes() -> None:
    frame = pd.DataFrame(
        [
            {"image": "1MB", "phase": "update", "mode": "inflight"},
            {"image": "1MB", "phase": "create", "mode": "inflight"},
            {"image": "100MB", "phase": "create", "mode": "inflight"},
            {"image": "1MB", "phase": "create", "mode": "upstream"},
        ]
    )
    ordered = tables.order(frame)
    assert list(zip(ordered["image"], ordered["phase"], ordered["mode"], strict=True)) == [
        ("1MB", "create", "upstream"),
        ("1MB", "create", "inflight"),
        ("1MB", "update", "inflight"),
        ("100MB", "create", "inflight"),
    ]


def test_cpu_per_gb_counts_mirror_bytes_served_and_containerd_bytes_pulled() -> None:
    meta = {"images": {"img/create": {"size": 1e9}, "img/update": {"size": 0.5e9}}}
    # mode: its mirror process, containerd CPU s of n0 (n1 twice that)
    modes = {"upstream": ((), 1.0), "spegel-go": (("spegel-go",), 2.0), "inflight": (("spegel",), 0.5)}
    pulls, usage, traffic = [], [], []
    for mode, (mirror, cpu) in modes.items():
        for rep in (0, 1):
            labels = {"run": f"img/{mode}/rep{rep}", "image": "img", "mode": mode, "repetition": rep}
            for node, used in (("n0", cpu), ("n1", 2 * cpu)):
                pulls.append({**labels, "phase": "create", "node": node, "ok": True})
                pulls.append({**labels, "phase": "update", "node": node, "ok": node == "n0"})  # n1's update failed
                usage.append({**labels, "node": node, "process": "containerd", "cpu_seconds": used})
                usage += [{**labels, "node": node, "process": p, "cpu_seconds": 4 * used} for p in mirror]
            for phase, sent in (("create", (1e9, 2e9, 0.5e9)), ("update", (0.25e9, 0.25e9, 0.0))):
                if mode != "inflight":  # no mirror counters
                    sent = (math.nan,) * 3
                elif rep == 1:  # an old mirror's export: no counter of a source that counted nothing
                    sent = tuple(math.nan if bytes_ == 0 else bytes_ for bytes_ in sent)
                traffic.append({**labels, "phase": phase, **dict(zip(tables.SERVED_SOURCES, sent, strict=True))})
    table = tables.cpu_per_gb_table(pd.DataFrame(usage), pd.DataFrame(traffic), pd.DataFrame(pulls), meta)
    assert list(table["mode"]) == ["upstream", "spegel-go", "inflight"]
    rows = table.set_index("mode")
    # 2 runs x 4 x (0.5 + 1) s over 2 x (1 + 2 + 0.5 + 0.25 + 0.25) GB
    assert rows.loc["inflight", ["mirror_cpu", "mirror_gb", "mirror_cpu_per_gb"]].tolist() == pytest.approx(
        [12, 8, 1.5]
    )
    assert rows.loc[["upstream", "spegel-go"], ["mirror_cpu", "mirror_gb", "mirror_cpu_per_gb"]].isna().all(axis=None)
    # containerd: both repetitions; per run 2 x 1 GB created + 0.5 GB updated (n1's failed update not counted)
    assert rows["containerd_cpu"].tolist() == pytest.approx([6, 12, 3])
    assert rows["containerd_gb"].tolist() == pytest.approx([5, 5, 5])
    assert rows["containerd_cpu_per_gb"].tolist() == pytest.approx([1.2, 2.4, 0.6])
