"""The report of a run: Markdown with tables and matplotlib PNGs, rebuilt from `DIR/data/*.csv` + `meta.json`.

`build(DIR)` reads the kept data and (re)writes `DIR/README.md` and `DIR/*.png`:
- `pull_times.png`: pull time of every node per mode and phase (strip plot), beside the bounds;
- `cdf.png`: CDF of per-node pull times per mode, per phase;
- `timeline.png`: one run per mode of `create`: each node's layers from download start to commit;
- `advertisement.png`: how long after a layer's commit (and ingest start) other nodes could get it;
- `upstream_bytes.png`: bytes sent by the upstream per phase, in image sizes, beside 1 and N.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from benchmark import tables
from benchmark.runner import TABLES
from benchmark.units import format_rate, format_size

COLORS = {
    "upstream": "#7f7f7f",
    "proxy": "#8c564b",
    "spegel-go": "#9467bd",
    "image": "#1f77b4",
    "layer": "#2ca02c",
    "inflight": "#d62728",
}
DPI = 80


class ReportError(RuntimeError):
    """The directory holds no usable run data."""


def load(directory: Path) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """meta.json and the data tables of a run directory (missing or empty tables are empty frames)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{directory} has no readable meta.json ({exc}): not a benchmark run directory") from None
    frames = {}
    for name in TABLES:
        path = directory / "data" / f"{name}.csv"
        try:
            frames[name] = pd.read_csv(path)
        except (FileNotFoundError, pd.errors.EmptyDataError):
            frames[name] = pd.DataFrame()
    if frames["pulls"].empty:
        raise ReportError(f"{directory}/data/pulls.csv has no pulls: nothing to report")
    return meta, frames


def build(directory: Path) -> Path:
    """Write README.md and the plots of the run in `directory`; returns the README's path."""
    directory = Path(directory)
    meta, frames = load(directory)
    pulls, traffic = frames["pulls"], frames["traffic"]
    latency = tables.advertisement_latency(frames["events"], frames["visibility"])
    figures = []
    if not pulls[pulls["phase"].isin(["create", "update"])].empty:
        figures += [_pull_times(directory, pulls, meta), _cdf(directory, pulls, meta)]
    if not frames["events"].empty:
        figure = _timeline(directory, frames["events"], pulls)
        if figure:
            figures.append(figure)
    if not latency.empty:
        figures.append(_advertisement(directory, latency))
    if not traffic.empty:
        figures.append(_upstream(directory, traffic, meta))
    readme = directory / "README.md"
    readme.write_text(_markdown(meta, frames, latency, figures))
    return readme


# --- plots ---


def _modes(frame: pd.DataFrame) -> list[str]:
    present = set(frame["mode"])
    return [m for m in tables.MODE_ORDER if m in present]


def _phases(frame: pd.DataFrame) -> list[str]:
    present = set(frame["phase"])
    return [p for p in ("create", "update") if p in present]


def _save(fig: Any, directory: Path, name: str, caption: str) -> tuple[str, str]:
    fig.tight_layout()
    fig.savefig(directory / name, dpi=DPI)
    plt.close(fig)
    return name, caption


def _bound_lines(ax: Any, meta: dict[str, Any], image: str, phase: str, vertical: bool = False) -> None:
    bounds = tables.Bounds.of(meta, image, phase)
    lines = (
        [(bounds.lower, "lower bound", "k", "--"), (bounds.no_sharing, "no sharing N·S/U", "k", ":")]
        if phase == "create"
        else [(bounds.node_time, "S/B", "k", "--")]
    )
    for value, label, color, style in lines:
        (ax.axvline if vertical else ax.axhline)(value, color=color, linestyle=style, linewidth=1, label=label)


def _pull_times(directory: Path, pulls: pd.DataFrame, meta: dict[str, Any]) -> tuple[str, str]:
    images, phases = list(dict.fromkeys(pulls["image"])), _phases(pulls)
    fig, axes = plt.subplots(len(images), len(phases), figsize=(5 * len(phases), 3.2 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        for col, phase in enumerate(phases):
            ax = axes[row][col]
            data = pulls[(pulls["image"] == image) & (pulls["phase"] == phase)]
            modes = _modes(data)
            for x, mode in enumerate(modes):
                values = data[data["mode"] == mode]
                jitter = [(hash((x, i)) % 100 - 50) / 250 for i in range(len(values))]
                ok = values["ok"].astype(bool).to_numpy()
                ax.scatter(
                    [x + j for j in jitter],
                    values["duration"],
                    s=14,
                    alpha=0.75,
                    color=COLORS.get(mode, "C0"),
                    marker="o",
                    edgecolors=["none" if good else "k" for good in ok],
                )
                if len(values):
                    ax.hlines(values["duration"].median(), x - 0.3, x + 0.3, color="k", linewidth=1.5)
            _bound_lines(ax, meta, image, phase)
            ax.set_xticks(range(len(modes)), modes)
            ax.set_ylabel("pull time per node (s)")
            ax.set_ylim(bottom=0)
            ax.set_title(f"{image}: {phase}")
            ax.legend(fontsize=7, loc="upper right")
    return _save(fig, directory, "pull_times.png", "Pull time of every node (dots; bar = median) beside the bounds")


def _cdf(directory: Path, pulls: pd.DataFrame, meta: dict[str, Any]) -> tuple[str, str]:
    images, phases = list(dict.fromkeys(pulls["image"])), _phases(pulls)
    fig, axes = plt.subplots(len(images), len(phases), figsize=(5 * len(phases), 3.2 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        for col, phase in enumerate(phases):
            ax = axes[row][col]
            data = pulls[(pulls["image"] == image) & (pulls["phase"] == phase) & pulls["ok"].astype(bool)]
            for mode in _modes(data):
                values = data[data["mode"] == mode]["duration"].sort_values().to_numpy()
                fraction = [(i + 1) / len(values) for i in range(len(values))]
                ax.step(values, fraction, where="post", label=mode, color=COLORS.get(mode))
            _bound_lines(ax, meta, image, phase, vertical=True)
            ax.set_xlabel("pull time per node (s)")
            ax.set_ylabel("fraction of pulls")
            ax.set_xlim(left=0)
            ax.set_title(f"{image}: {phase}")
            ax.legend(fontsize=7, loc="lower right")
    return _save(fig, directory, "cdf.png", "Cumulative distribution of per-node pull times")


def _timeline(directory: Path, events: pd.DataFrame, pulls: pd.DataFrame) -> tuple[str, str] | None:
    layer_events = events[(events["phase"] == "create") & (events["layer"] >= 0)]
    if layer_events.empty:
        return None
    first_image = pulls["image"].iloc[0]
    runs = []
    for mode in _modes(layer_events):
        candidates = layer_events[(layer_events["mode"] == mode) & (layer_events["image"] == first_image)]
        if not candidates.empty:
            runs.append((mode, candidates["run"].iloc[0]))
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 0.6 + 1.6 * len(runs)), squeeze=False, sharex=True)
    for ax, (mode, run) in zip(axes[:, 0], runs, strict=True):
        data = layer_events[layer_events["run"] == run]
        start = pulls[(pulls["run"] == run) & (pulls["phase"] == "create")]["phase_start"].min()
        nodes = sorted(set(data["node"]), key=lambda n: int(n[1:]) if n[1:].isdigit() else 0)
        layers = sorted(set(data["layer"]))
        height = 0.8 / max(1, len(layers))
        for y, node in enumerate(nodes):
            for k, layer in enumerate(layers):
                rows = data[(data["node"] == node) & (data["layer"] == layer)]
                ingest = rows[rows["event"] == "ingest"]["time"].min()
                commit = rows[rows["event"] == "commit"]["time"].min()
                offset = y - 0.4 + k * height
                color = plt.cm.viridis(k / max(1, len(layers) - 1))
                if not math.isnan(commit):
                    begin = ingest if not math.isnan(ingest) else commit
                    label = f"layer {layer}" if y == 0 else None
                    ax.barh(
                        offset,
                        commit - begin,
                        left=begin - start,
                        height=height * 0.9,
                        color=color,
                        align="edge",
                        label=label,
                    )
                    ax.plot(commit - start, offset + height / 2, marker="|", color="k", markersize=6)
        ax.set_yticks(range(len(nodes)), nodes)
        ax.set_title(f"{mode} ({run})", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="lower right")
    axes[-1][0].set_xlabel("seconds since the phase start (bar: download of a layer, tick: commit)")
    return _save(fig, directory, "timeline.png", "create: each node's layers, from download start to commit")


def _advertisement(directory: Path, latency: pd.DataFrame) -> tuple[str, str]:
    modes = _modes(latency)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, column, title in (
        (axes[0], "after_commit", "visible after the puller's commit (ms)"),
        (axes[1], "after_ingest", "visible after the puller's download start (ms)"),
    ):
        data = [latency[latency["mode"] == m][column].dropna().to_numpy() * 1000 for m in modes]
        positions = [i for i, d in enumerate(data) if len(d)]
        if positions:
            ax.boxplot([data[i] for i in positions], positions=positions, widths=0.5)
        ax.set_xticks(range(len(modes)), modes)
        ax.axhline(0, color="k", linewidth=0.8)
        if column == "after_commit":
            ax.axhline(100, color="k", linestyle="--", linewidth=1, label="100 ms goal (layer)")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
    return _save(fig, directory, "advertisement.png", "Advertisement latency per mode (all observers, all layers)")


def _upstream(directory: Path, traffic: pd.DataFrame, meta: dict[str, Any]) -> tuple[str, str]:
    table = tables.traffic_table(traffic, meta)
    images, phases = list(dict.fromkeys(table["image"])), [p for p in ("create", "update") if p in set(table["phase"])]
    phases = phases or list(dict.fromkeys(table["phase"]))
    fig, axes = plt.subplots(len(images), len(phases), figsize=(5 * len(phases), 3.2 * len(images)), squeeze=False)
    nodes = meta["scenario"]["cluster"]["nodes"]
    for row, image in enumerate(images):
        for col, phase in enumerate(phases):
            ax = axes[row][col]
            data = table[(table["image"] == image) & (table["phase"] == phase)]
            modes = list(data["mode"])
            ax.bar(
                range(len(modes)),
                data["median"],
                color=[COLORS.get(m, "C0") for m in modes],
                yerr=[data["median"] - data["min"], data["max"] - data["median"]],
                capsize=3,
            )
            ax.axhline(1, color="k", linestyle="--", linewidth=1, label="1 x S (ideal)")
            ax.axhline(nodes, color="k", linestyle=":", linewidth=1, label=f"{nodes} x S (no sharing)")
            ax.set_xticks(range(len(modes)), modes)
            ax.set_ylabel("upstream bytes / image size")
            ax.set_title(f"{image}: {phase}")
            ax.legend(fontsize=7)
    return _save(fig, directory, "upstream_bytes.png", "Bytes sent by the upstream (median, min-max), in image sizes")


# --- markdown ---


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(frame: pd.DataFrame, columns: dict[str, str], digits: int = 3) -> str:
    """A Markdown table of `frame`'s `columns` (name -> header)."""
    if frame.empty:
        return "_no data_\n"
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for row in frame.to_dict("records"):
        lines.append("| " + " | ".join(_fmt(row.get(c, math.nan), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def goals(meta: dict[str, Any], frames: dict[str, pd.DataFrame], latency: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) for the mirror's goals that this run's data can speak to."""
    pulls, traffic = frames["pulls"], frames["traffic"]
    results = []
    done = tables.completion(pulls)
    for image in dict.fromkeys(pulls["image"]):
        bounds = tables.Bounds.of(meta, image, "create") if f"{image}/create" in meta["images"] else None
        inflight = done[(done["image"] == image) & (done["mode"] == "inflight") & (done["phase"] == "create")]
        if bounds and not inflight.empty:
            ratio = inflight["slowest"].median() / bounds.lower
            results.append(
                (
                    f"{image}: create, inflight: slowest node ≤ 1.25 x lower bound ({bounds.lower:.1f} s)",
                    f"{ratio:.2f} x",
                    _verdict(ratio <= 1.25),
                )
            )
        sent = traffic[(traffic["image"] == image) & (traffic["mode"] == "inflight") & (traffic["phase"] == "create")]
        if bounds and not sent.empty:
            ratio = sent["upstream_bytes"].median() / bounds.size
            results.append(
                (f"{image}: create, inflight: upstream bytes ≤ 1.5 x S", f"{ratio:.2f} x S", _verdict(ratio <= 1.5))
            )
        update = pulls[(pulls["image"] == image) & (pulls["phase"] == "update") & (pulls["mode"] == "inflight")]
        if not update.empty:
            node_time = tables.Bounds.of(meta, image, "update").node_time
            ratio = update["duration"].median() / node_time
            results.append(
                (
                    f"{image}: update, inflight: median pull ≤ 1.5 x S/B ({node_time:.2f} s)",
                    f"{ratio:.2f} x",
                    _verdict(ratio <= 1.5),
                )
            )
    if not latency.empty:
        layer = latency[latency["mode"] == "layer"]["after_commit"].dropna()
        image = latency[latency["mode"] == "image"]["after_commit"].dropna()
        if not layer.empty:
            p95 = layer.quantile(0.95) * 1000
            results.append(
                ("advertise, layer: p95 visible ≤ 100 ms after commit", f"{p95:.0f} ms", _verdict(p95 <= 100))
            )
        if not layer.empty and not image.empty:
            ahead = layer.median() < image.median()
            results.append(
                (
                    "advertise: layer ahead of image (median after commit)",
                    f"{layer.median() * 1000:.0f} vs {image.median() * 1000:.0f} ms",
                    _verdict(ahead),
                )
            )
    return results


def _took(meta: dict[str, Any]) -> str:
    started, finished = meta.get("started"), meta.get("finished")
    return f", ran {(finished - started) / 60:.1f} min" if started and finished else ""


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _markdown(
    meta: dict[str, Any], frames: dict[str, pd.DataFrame], latency: pd.DataFrame, figures: list[tuple[str, str]]
) -> str:
    scenario, cluster = meta["scenario"], meta["scenario"]["cluster"]
    pulls = frames["pulls"]
    out = [f"# Benchmark: {scenario['name']}\n", f"{scenario.get('description', '')}\n"]
    out.append(
        f"Backend `{cluster['backend']}`, {cluster['nodes']} nodes, "
        f"upstream U = {format_rate(cluster['upstream_bandwidth'])}, "
        f"node B = {format_rate(cluster['node_bandwidth'])}, containerd chunk {format_size(cluster['chunk_size'])}, "
        f"{scenario['repetitions']} repetition(s), modes {', '.join(scenario['modes'])}, phases "
        f"{', '.join(scenario['phases'])}. Machine: {meta.get('machine', {}).get('cpus', '?')} CPUs, "
        f"commit `{meta.get('commit', '?')}`{_took(meta)}. "
        f"Failed pulls: {int((~pulls['ok'].astype(bool)).sum())} of {len(pulls)}.\n"
    )
    failures = frames["failures"]
    if not failures.empty:
        out.append(f"**{len(failures)} run(s) failed** and are missing from the tables:\n")
        out.extend(f"- {r['run']}: {str(r['error']).splitlines()[0][:300]}\n" for r in failures.to_dict("records"))
    out.append("## Bounds\n")
    out.append(
        "Rates are TCP payload rates (95.8 % of the shaped rate). Lower bound T = max(S/U, S/B, N·S/(U+N·B)); "
        "without sharing the last node needs N·S/U; a node alone needs S/B.\n"
    )
    bounds = []
    for key in meta["images"]:
        image, phase = key.split("/", 1)
        if phase == "create":
            b = tables.Bounds.of(meta, image, phase)
            bounds.append(
                {
                    "image": image,
                    "size": format_size(b.size),
                    "lower": b.lower,
                    "none": b.no_sharing,
                    "node": b.node_time,
                }
            )
    out.append(
        markdown_table(
            pd.DataFrame(bounds),
            {"image": "image", "size": "S", "lower": "lower bound (s)", "none": "no sharing (s)", "node": "S/B (s)"},
        )
    )
    found = goals(meta, frames, latency)
    if found:
        out.append("## Goals\n")
        out.append("| goal | measured | |\n|---|---|---|\n" + "".join(f"| {g} | {m} | {v} |\n" for g, m, v in found))
    out.append("## Pull times\n")
    out.append(
        "Pull time per node over all nodes and repetitions (n, median, min, max, CV; each node timed from its own "
        "start, as the kubelet reports it), the slowest node of a run (median and max over repetitions), when "
        "all nodes were done counted from the phase start (create: with the start jitter; update: every batch), "
        "and the ratio to the bound: create: the slowest node over the lower bound; update: the median pull "
        "over S/B.\n"
    )
    out.append(
        markdown_table(
            tables.pull_table(pulls, meta),
            {
                "image": "image",
                "phase": "phase",
                "mode": "mode",
                "n": "n",
                "median": "median (s)",
                "min": "min",
                "max": "max",
                "cv": "CV",
                "slowest_median": "slowest node, median (s)",
                "slowest_max": "slowest, max",
                "completion_median": "all done, median (s)",
                "bound": "bound (s)",
                "vs_bound": "/ bound",
                "failed": "failed",
            },
        )
    )
    out.append("## Upstream traffic\n")
    out.append(
        "Bytes the upstream registry sent per phase (tc counter of its link, framing included), as a multiple "
        "of the image size S, beside what its access log claims (more: containerd closes open-ended chunk "
        "requests early); `peer MiB` is what the nodes' containerd got through their mirror from peers, `of "
        "which in flight` what peers sent of downloads still in progress (medians per phase).\n"
    )
    out.append(
        markdown_table(
            tables.traffic_table(frames["traffic"], meta),
            {
                "image": "image",
                "phase": "phase",
                "mode": "mode",
                "n": "n",
                "median": "median x S",
                "min": "min",
                "max": "max",
                "cv": "CV",
                "log_median": "access log, median x S",
                "peer_mib_median": "peer MiB",
                "inflight_mib_median": "of which in flight",
            },
        )
    )
    if not latency.empty:
        out.append("## Advertisement latency\n")
        out.append(
            "Seconds from the puller's commit of a layer until another node's mirror found a holder for it (the "
            "send time of its first probe answered 200; negative: visible while still downloading), and the "
            "median from the puller's download start. Resolution: one probe period, the interval "
            f"({scenario['observe_interval'] * 1000:g} ms) plus a miss; the rest of the probe's round trip (the "
            "holder's HEAD path) is shown apart (probe answer).\n"
        )
        out.append(
            markdown_table(
                tables.advertisement_table(latency),
                {
                    "image": "image",
                    "mode": "mode",
                    "n": "n",
                    "median": "median (s)",
                    "min": "min",
                    "max": "max",
                    "cv": "CV",
                    "p95": "p95 (s)",
                    "ingest_median": "after download start, median (s)",
                    "rtt_median": "probe answer, median (s)",
                    "rtt_p95": "probe answer, p95 (s)",
                    "unseen": "never seen",
                },
            )
        )
    out.append("## Resources\n")
    out.append("CPU seconds and peak RSS per process over one run (all phases), over nodes and repetitions.\n")
    out.append(
        markdown_table(
            tables.usage_table(frames["usage"]),
            {
                "mode": "mode",
                "process": "process",
                "cpu_median": "CPU s, median",
                "cpu_max": "CPU s, max",
                "rss_mib_median": "peak RSS MiB, median",
                "rss_mib_max": "peak RSS MiB, max",
            },
        )
    )
    if figures:
        out.append("## Plots\n")
        out.extend(f"![{caption}]({name})\n\n{caption}.\n" for name, caption in figures)
    out.append("\nData: `data/*.csv` (raw records), `meta.json` (scenario, images). Rebuild: `nox -s report -- DIR`.\n")
    return "\n".join(out)
