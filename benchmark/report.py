"""The report of a run: Markdown with tables and matplotlib PNGs, rebuilt from `DIR/data/*.csv` + `meta.json`,
and the interactive page `DIR/report.html` (`report_html`).

`build(DIR)` reads the kept data and (re)writes `DIR/README.md`, `DIR/report.html` and `DIR/*.png`:
- `pull_times.png`: pull time of every node per mode and phase (strip plot), beside the bounds;
- `cdf.png`: CDF of per-node pull times per mode, per phase;
- `timeline.png`: `create` of the largest image, the slowest run per mode: each node's layers from download
  start to commit, beside the lower bound;
- `advertisement.png`: how long after a layer's commit (and ingest start) other nodes could get it (symlog);
- `upstream_bytes.png`: bytes sent by the upstream per phase, in image sizes, beside 1 and N.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Patch

from benchmark import report_html, tables
from benchmark.bound import GOODPUT, payload_bytes
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
DPI = 130
HTML_PAGE = "report.html"
LEGEND = {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}  # outside


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
        figure = _timeline(directory, frames["events"], pulls, meta)
        if figure:
            figures.append(figure)
    if not latency.empty:
        figures.append(_advertisement(directory, latency))
    if not traffic.empty:
        figures.append(_upstream(directory, traffic, meta))
    readme = directory / "README.md"
    readme.write_text(_markdown(meta, frames, latency, figures))
    _page(directory, meta, frames, latency)
    return readme


def _page(directory: Path, meta: dict[str, Any], frames: dict[str, pd.DataFrame], latency: pd.DataFrame) -> Path:
    """The interactive page: the goals and the side-by-side table above the charts of `report_html`."""
    scenario = meta["scenario"]
    parts = [
        f'<p class="summary">{html.escape(scenario.get("description", ""))}. Tables and details: '
        f'<a href="README.md">README.md</a>; commit <code>{html.escape(str(meta.get("commit", "?")))}</code>.</p>'
    ]
    found = goals(meta, frames, latency)
    if found:
        frame = pd.DataFrame(found, columns=["goal", "measured", "verdict"]).replace("**not met**", "not met")
        parts += ["<h2>Goals</h2>", html_table(frame, {"goal": "goal", "measured": "measured", "verdict": ""})]
    compared = tables.side_by_side(frames["pulls"], frames["traffic"], frames["usage"], latency, meta)
    if len(compared.columns) > 2:
        modes = [c for c in compared.columns if c not in ("shape", "figure")]
        parts += [
            "<h2>Peer modes side by side</h2>",
            html_table(compared, {"shape": "image", "figure": "figure", **{m: m for m in modes}}),
        ]
    chart_list = report_html.charts(meta, frames, latency, bound_lines)
    return report_html.write(directory, f"Benchmark: {scenario['name']}", "\n".join(parts), chart_list, COLORS)


# --- plots ---


def _modes(frame: pd.DataFrame) -> list[str]:
    present = set(frame["mode"])
    return [m for m in tables.MODE_ORDER if m in present]


def _phases(frame: pd.DataFrame) -> list[str]:
    present = set(frame["phase"])
    return [p for p in ("create", "update") if p in present]


def _panels(frame: pd.DataFrame, phases: list[str]) -> tuple[Any, list[tuple[Any, str, str, pd.DataFrame]]]:
    """A figure of panels, a row per image of `frame` and a column per phase in `phases`, each titled
    `image: phase`; with each panel's axes, image, phase and the rows of `frame` it shows."""
    images = list(dict.fromkeys(frame["image"]))
    fig, axes = plt.subplots(len(images), len(phases), figsize=(7 * len(phases), 3.4 * len(images)), squeeze=False)
    panels = []
    for row, image in enumerate(images):
        for col, phase in enumerate(phases):
            axes[row][col].set_title(f"{image}: {phase}")
            rows = frame[(frame["image"] == image) & (frame["phase"] == phase)]
            panels.append((axes[row][col], image, phase, rows))
    return fig, panels


def _save(fig: Any, directory: Path, name: str, caption: str) -> tuple[str, str]:
    fig.tight_layout()
    fig.savefig(directory / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return name, caption


def _bound_lines(ax: Any, meta: dict[str, Any], image: str, phase: str, vertical: bool = False) -> None:
    for value, label, style in bound_lines(meta, image, phase):
        (ax.axvline if vertical else ax.axhline)(value, color="k", linestyle=style, linewidth=1, label=label)


def bound_lines(meta: dict[str, Any], image: str, phase: str) -> list[tuple[float, str, str]]:
    """(seconds, label, matplotlib line style) of the bounds a pull time of `phase` is seen against: create:
    the lower bound and no sharing; update: S/B (batches after the first) and the first batch's cold bound."""
    if phase == "create":
        bounds = tables.Bounds.of(meta, image, phase)
        return [(bounds.lower, "lower bound", "--"), (bounds.no_sharing, "no sharing N·S/U", ":")]
    first = tables.first_batch_size(meta)
    return [
        (tables.Bounds.of(meta, image, "update").node_time, "S/B (batches after the first)", "--"),
        (tables.Bounds.first_batch(meta, image, first).lower, f"first batch ({first} cold): lower bound", "-."),
    ]


def _pull_times(directory: Path, pulls: pd.DataFrame, meta: dict[str, Any]) -> tuple[str, str]:
    fig, panels = _panels(pulls, _phases(pulls))
    for ax, image, phase, data in panels:
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
        ax.legend(**LEGEND)
    return _save(fig, directory, "pull_times.png", "Pull time of every node (dots; bar = median) beside the bounds")


def _cdf(directory: Path, pulls: pd.DataFrame, meta: dict[str, Any]) -> tuple[str, str]:
    fig, panels = _panels(pulls, _phases(pulls))
    for ax, image, phase, data in panels:
        data = data[data["ok"].astype(bool)]
        for mode in _modes(data):
            values = data[data["mode"] == mode]["duration"].sort_values().to_numpy()
            fraction = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, fraction, where="post", label=mode, color=COLORS.get(mode))
        _bound_lines(ax, meta, image, phase, vertical=True)
        ax.set_xlabel("pull time per node (s)")
        ax.set_ylabel("fraction of pulls")
        ax.set_xlim(left=0)
        ax.legend(**LEGEND)
    return _save(fig, directory, "cdf.png", "Cumulative distribution of per-node pull times")


def _timeline(
    directory: Path, events: pd.DataFrame, pulls: pd.DataFrame, meta: dict[str, Any]
) -> tuple[str, str] | None:
    image = tables.largest_image(meta, pulls)
    slowest = tables.slowest_runs(pulls, image)
    runs, spans = [], {}
    for mode in [m for m in tables.MODE_ORDER if m in slowest]:
        for run in slowest[mode]:  # the slowest run whose events were recorded
            spans[run] = tables.layer_spans(events, pulls, run)
            if not spans[run].empty:
                runs.append((mode, run))
                break
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 0.8 + 1.6 * len(runs)), squeeze=False, sharex=True)
    lower = tables.Bounds.of(meta, image).lower
    for ax, (mode, run) in zip(axes[:, 0], runs, strict=True):
        data = spans[run]
        nodes = list(dict.fromkeys(data["node"]))
        layers = sorted(set(data["layer"]))
        height = 0.8 / max(1, len(layers))
        for span in data.itertuples():
            k = layers.index(span.layer)
            offset = nodes.index(span.node) - 0.4 + k * height
            color = plt.cm.viridis(k / max(1, len(layers) - 1))
            ax.barh(offset, span.end - span.begin, left=span.begin, height=height * 0.9, color=color, align="edge")
            ax.plot(span.end, offset + height / 2, marker="|", color="k", markersize=6)
        bound = ax.axvline(lower, color="k", linestyle="--", linewidth=1, label="lower bound")
        ax.set_yticks(range(len(nodes)), nodes)
        ax.set_title(f"{mode} ({run}, the slowest of its repetitions)", fontsize=9)
        colors = [plt.cm.viridis(k / max(1, len(layers) - 1)) for k in range(len(layers))]
        handles = [Patch(color=c, label=f"layer {layer}") for c, layer in zip(colors, layers, strict=True)]
        ax.legend(handles=[*handles, bound], **LEGEND)
    axes[-1][0].set_xlabel("seconds since the phase start (bar: download of a layer, tick: commit)")
    return _save(
        fig, directory, "timeline.png", f"create of {image} (the largest image): each node's layers, download to commit"
    )


SYMLOG_MS = report_html.SYMLOG_MS


def _advertisement(directory: Path, latency: pd.DataFrame) -> tuple[str, str]:
    modes = _modes(latency)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, column, title in (
        (axes[0], "after_commit", "visible after the puller's commit (ms)"),
        (axes[1], "after_ingest", "visible after the puller's download start (ms)"),
    ):
        for x, mode in enumerate(modes):
            values = latency[latency["mode"] == mode][column].dropna().to_numpy() * 1000
            jitter = [(hash((x, i)) % 100 - 50) / 250 for i in range(len(values))]
            ax.scatter([x + j for j in jitter], values, s=12, alpha=0.7, color=COLORS.get(mode, "C0"))
            if len(values):
                ax.hlines(float(pd.Series(values).median()), x - 0.3, x + 0.3, color="k", linewidth=1.5)
        ax.set_yscale("symlog", linthresh=SYMLOG_MS, linscale=0.5)
        ax.set_xticks(range(len(modes)), modes)
        ax.axhline(0, color="k", linewidth=0.8)
        if column == "after_commit":
            ax.axhline(100, color="k", linestyle="--", linewidth=1, label="100 ms goal (layer)")
            ax.legend(**LEGEND)
        ax.grid(axis="y", linewidth=0.3)
        ax.set_title(f"{title}; symlog, linear within ±{SYMLOG_MS:g} ms", fontsize=9)
    return _save(
        fig, directory, "advertisement.png", "Advertisement latency per mode (dots: observer x layer; bar: median)"
    )


def _upstream(directory: Path, traffic: pd.DataFrame, meta: dict[str, Any]) -> tuple[str, str]:
    table = tables.traffic_table(traffic, meta)
    fig, panels = _panels(table, _phases(table) or list(dict.fromkeys(table["phase"])))
    nodes = meta["scenario"]["cluster"]["nodes"]
    for ax, _, _, data in panels:
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
        ax.legend(**LEGEND)
    return _save(fig, directory, "upstream_bytes.png", "Bytes sent by the upstream (median, min-max), in image sizes")


# --- markdown ---


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}g}"
    return str(value)


def _cells(frame: pd.DataFrame, columns: dict[str, str], digits: int) -> list[list[str]]:
    return [[_fmt(row.get(c, math.nan), digits) for c in columns] for row in frame.to_dict("records")]


def markdown_table(frame: pd.DataFrame, columns: dict[str, str], digits: int = 3) -> str:
    """A Markdown table of `frame`'s `columns` (name -> header)."""
    if frame.empty:
        return "_no data_\n"
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(frame, columns, digits)]
    return "\n".join(lines) + "\n"


def html_table(frame: pd.DataFrame, columns: dict[str, str], digits: int = 3) -> str:
    """An HTML table of `frame`'s `columns` (name -> header), every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns.values())
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        for cells in _cells(frame, columns, digits)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
            ratio = payload_bytes(sent["upstream_bytes"].median()) / bounds.size
            results.append(
                (f"{image}: create, inflight: upstream bytes ≤ 1.5 x S", f"{ratio:.2f} x S", _verdict(ratio <= 1.5))
            )
        update = tables.update_table(pulls, meta)
        update = update[(update["image"] == image) & (update["mode"] == "inflight")]
        if not update.empty:
            first = update.iloc[0]
            results.append(
                (
                    f"{image}: update, inflight: first batch ({first['first_nodes']} cold) slowest ≤ 1.25 x its "
                    f"lower bound ({first['first_bound']:.2f} s)",
                    f"{first['first_vs']:.2f} x",
                    _verdict(first["first_vs"] <= 1.25),
                )
            )
            if first["later_n"]:
                results.append(
                    (
                        f"{image}: update, inflight: median pull after the first batch ≤ 1.5 x S/B "
                        f"({first['node_bound']:.2f} s)",
                        f"{first['later_vs']:.2f} x",
                        _verdict(first["later_vs"] <= 1.5),
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
    out.append(f"Interactive page (hover for values, toggle modes; opens offline): [{HTML_PAGE}]({HTML_PAGE}).\n")
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
    compared = tables.side_by_side(pulls, frames["traffic"], frames["usage"], latency, meta)
    if "spegel-go" in compared:
        out.append("## Spegel (Go) beside ours\n")
        out.append(
            "The real Spegel (`spegel-go`, see benchmark/README.md for its version) and our mirror's modes in the "
            "same cluster and run: medians over repetitions (pull times, bytes), over observers and layers "
            "(advertisement), over nodes and repetitions (the mirror process).\n"
        )
        modes = [c for c in compared.columns if c not in ("shape", "figure")]
        out.append(markdown_table(compared, {"shape": "image", "figure": "figure", **{m: m for m in modes}}))
    out.append("## Pull times\n")
    out.append(
        "Pull time per node over all nodes and repetitions (n, median, min, max, CV; each node timed from its own "
        "start, as the kubelet reports it), the slowest node of a run (median and max over repetitions), when "
        "all nodes were done counted from the phase start (create: with the start jitter; update: every batch), "
        "and the ratio to the bound: create: the slowest node over the lower bound; update: the median pull "
        "of the batches after the first over S/B (the first batch: see Rolling update).\n"
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
    update = tables.update_table(pulls, meta)
    if not update.empty:
        out.append("## Rolling update\n")
        out.append(
            "The first batch pulls an image nobody holds yet: it is a cold create of its k nodes, judged against "
            "that lower bound (its slowest node, median over repetitions); the batches after it can pull from "
            "peers, judged against S/B (median pull).\n"
        )
        out.append(
            markdown_table(
                update,
                {
                    "image": "image",
                    "mode": "mode",
                    "first_nodes": "first batch: nodes",
                    "first_slowest": "slowest (s)",
                    "first_bound": "bound (s)",
                    "first_vs": "/ bound",
                    "later_n": "later batches: pulls",
                    "later_median": "median (s)",
                    "node_bound": "S/B (s)",
                    "later_vs": "/ S/B",
                },
            )
        )
    out.append("## Upstream traffic\n")
    out.append(
        f"Bytes the upstream registry sent per phase (TCP payload: the tc counter of its link times {GOODPUT}, the "
        "payload share the bounds' rates use), as a multiple of the image size S, beside what its access log "
        "claims (more: containerd closes open-ended chunk requests early); `peer MiB` is what the nodes' "
        "containerd got through their mirror from peers, `of which in flight` what peers sent "
        "of downloads still in progress (medians per phase).\n"
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
    out.append(
        "CPU seconds per GB (10^9 bytes) moved, totals over nodes, phases and repetitions: the mirror processes' "
        "over the bytes they served (local, peer and in flight; a byte passed between two mirrors counts at both), "
        "containerd's over the images its nodes pulled (S per successful pull). `-`: not measured (no mirror "
        "counters).\n"
    )
    out.append(
        markdown_table(
            tables.cpu_per_gb_table(frames["usage"], frames["traffic"], pulls, meta),
            {
                "mode": "mode",
                "mirror_cpu": "mirror CPU s",
                "mirror_gb": "GB served",
                "mirror_cpu_per_gb": "mirror CPU s / GB",
                "containerd_cpu": "containerd CPU s",
                "containerd_gb": "GB pulled",
                "containerd_cpu_per_gb": "containerd CPU s / GB",
            },
        )
    )
    if figures:
        out.append("## Plots\n")
        out.extend(f"![{caption}]({name})\n\n{caption}.\n" for name, caption in figures)
    out.append("\nData: `data/*.csv` (raw records), `meta.json` (scenario, images). Rebuild: `nox -s report -- DIR`.\n")
    return "\n".join(out)
