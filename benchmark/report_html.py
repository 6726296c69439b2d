"""The interactive page of a run, `DIR/report.html`: one self-contained file beside the Markdown report.

The charts' data is embedded as JSON and drawn as SVG by `report_page.js` (inlined with `report_page.css`): no
library and no network, so the page opens offline. Hovering an element shows its values; the legend's
checkboxes toggle modes in every chart; the create timeline of the largest image can show every repetition
(the slowest first). Every time plot carries its bounds as reference lines.

`charts(meta, frames, latency)` is pure (the page's data); `write(directory, ...)` renders the page.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark import tables

ASSETS = Path(__file__).parent
DASHES = {"--": "6 4", ":": "2 3", "-.": "6 3 2 3"}
SYMLOG_MS = 10.0  # advertisement plots: linear within ±10 ms, logarithmic beyond (the 100 ms goal stays visible)

Chart = dict[str, Any]
Element = dict[str, Any]


def _id(*parts: str) -> str:
    return "chart-" + "-".join("".join(c if c.isalnum() else "_" for c in part) for part in parts)


def _jitter(x: int, i: int) -> float:
    return ((x * 7919 + i * 104729) % 100 - 50) / 250


def _lines(bounds: list[tuple[float, str, str]], axis: str) -> list[dict[str, Any]]:
    return [{"axis": axis, "value": value, "label": label, "dash": DASHES[style]} for value, label, style in bounds]


def _modes(frame: pd.DataFrame) -> list[str]:
    present = set(frame["mode"])
    return [m for m in tables.MODE_ORDER if m in present]


def pull_charts(pulls: pd.DataFrame, meta: dict[str, Any], bounds: Any) -> list[Chart]:
    """Per image and phase: every node's pull time (a strip per mode) and the CDF, with the phase's bounds."""
    charts = []
    for image in dict.fromkeys(pulls["image"]):
        for phase in ("create", "update"):
            data = pulls[(pulls["image"] == image) & (pulls["phase"] == phase) & pulls["ok"].astype(bool)]
            if data.empty:
                continue
            modes, lines = _modes(data), bounds(meta, image, phase)
            points, steps = [], []
            for x, mode in enumerate(modes):
                rows = data[data["mode"] == mode].sort_values(["repetition", "node"])
                for i, r in enumerate(rows.itertuples()):
                    text = f"{mode} {r.node} rep{r.repetition} batch {r.batch}: {r.duration:.2f} s"
                    points.append(
                        {"type": "point", "mode": mode, "x": x + _jitter(x, i), "y": r.duration, "text": text}
                    )
                values = sorted(rows["duration"])
                fractions = [0.0] + [(i + 1) / len(values) for i in range(len(values))]
                text = f"{mode}: median {pd.Series(values).median():.2f} s, max {values[-1]:.2f} s, n {len(values)}"
                steps.append({"type": "step", "mode": mode, "xs": [values[0], *values], "ys": fractions, "text": text})
            charts.append(
                {
                    "id": _id("pulls", image, phase),
                    "title": f"{image}, {phase}: pull time of every node",
                    "x": {"label": "mode", "scale": "category", "categories": modes},
                    "y": {"label": "pull time per node (s)", "scale": "linear", "min": 0},
                    "lines": _lines(lines, "y"),
                    "variants": {"all repetitions": points},
                }
            )
            charts.append(
                {
                    "id": _id("cdf", image, phase),
                    "title": f"{image}, {phase}: cumulative distribution of pull times",
                    "x": {"label": "pull time per node (s)", "scale": "linear", "min": 0},
                    "y": {"label": "fraction of pulls", "scale": "linear", "min": 0},
                    "lines": _lines(lines, "x"),
                    "variants": {"all repetitions": steps},
                }
            )
    return charts


def timeline_charts(events: pd.DataFrame, pulls: pd.DataFrame, meta: dict[str, Any]) -> list[Chart]:
    """The create phase of the largest image, one chart per mode: each node's layers from download start to
    commit; every repetition selectable, the slowest first; the lower bound as a line."""
    if events.empty:
        return []
    image = tables.largest_image(meta, pulls)
    runs_of = tables.slowest_runs(pulls, image)
    if not runs_of:
        return []
    lower = tables.Bounds.of(meta, image).lower
    charts = []
    for mode in [m for m in tables.MODE_ORDER if m in runs_of]:
        variants: dict[str, list[Element]] = {}
        rows = 1
        for k, run in enumerate(runs_of[mode]):
            spans = tables.layer_spans(events, pulls, run)
            if spans.empty:
                continue
            nodes = list(dict.fromkeys(spans["node"]))
            layers = sorted(set(spans["layer"]))
            rows = max(rows, len(nodes))
            height = 0.8 / len(layers)
            elements = []
            for span in spans.itertuples():
                offset = nodes.index(span.node) - 0.4 + layers.index(span.layer) * height
                text = (
                    f"{span.node} layer {span.layer}: download {span.begin:.2f} s -> commit {span.end:.2f} s "
                    f"({span.end - span.begin:.2f} s)"
                )
                elements.append(
                    {
                        "type": "rect",
                        "mode": mode,
                        "x0": span.begin,
                        "x1": span.end,
                        "y0": offset,
                        "y1": offset + height * 0.9,
                        "color": _layer_color(layers.index(span.layer), len(layers)),
                        "text": text,
                    }
                )
            label = f"{run} (slowest)" if k == 0 else run
            variants[label] = elements
        if variants:
            nodes = [f"n{i}" for i in range(rows)]
            charts.append(
                {
                    "id": _id("timeline", mode),
                    "title": f"{image}, create, {mode}: each node's layers from download start to commit",
                    "x": {"label": "seconds since the phase start", "scale": "linear", "min": 0},
                    "y": {"label": "node", "scale": "category", "categories": nodes},
                    "lines": _lines([(lower, "lower bound", "--")], "x"),
                    "variants": variants,
                    "height": 80 + 44 * rows,
                }
            )
    return charts


def _layer_color(k: int, count: int) -> str:
    """A blue-to-yellow ramp (close to viridis) for layer k of count."""
    t = k / max(1, count - 1)
    start, end = (68, 1, 84), (253, 231, 37)
    middle = (33, 145, 140)
    a, b, u = (start, middle, t * 2) if t < 0.5 else (middle, end, t * 2 - 1)
    return "#" + "".join(f"{round(p + (q - p) * u):02x}" for p, q in zip(a, b, strict=True))


def advertisement_chart(latency: pd.DataFrame) -> list[Chart]:
    """When other nodes could get a layer after the puller committed it (ms, symlog so that the 100 ms goal
    and negative values, seen while downloading, both show)."""
    seen = latency.dropna(subset=["after_commit"])
    if seen.empty:
        return []
    modes = _modes(seen)
    points = []
    for x, mode in enumerate(modes):
        rows = seen[seen["mode"] == mode]
        for i, r in enumerate(rows.itertuples()):
            ms = r.after_commit * 1000
            text = f"{mode} rep{r.repetition} layer {r.layer} seen by {r.observer}: {ms:.0f} ms after commit"
            points.append({"type": "point", "mode": mode, "x": x + _jitter(x, i), "y": ms, "text": text})
    return [
        {
            "id": _id("advertisement"),
            "title": "Advertisement latency: visible after the puller's commit "
            f"(symlog: linear within ±{SYMLOG_MS:g} ms)",
            "x": {"label": "mode", "scale": "category", "categories": modes},
            "y": {"label": "ms after commit", "scale": "symlog", "linthresh": SYMLOG_MS},
            "lines": _lines([(100.0, "100 ms goal (layer)", "--")], "y"),
            "variants": {"all repetitions": points},
        }
    ]


def bar_charts(traffic: pd.DataFrame, usage: pd.DataFrame, meta: dict[str, Any]) -> list[Chart]:
    """Upstream bytes per phase (x S; median bar, min-max whisker) and the mirror processes' CPU and RSS."""
    charts = []
    nodes = meta["scenario"]["cluster"]["nodes"]
    table = tables.traffic_table(traffic, meta) if not traffic.empty else pd.DataFrame()
    for image in dict.fromkeys(table["image"]) if not table.empty else []:
        for phase in ("create", "update"):
            data = table[(table["image"] == image) & (table["phase"] == phase)]
            if data.empty:
                continue
            modes = list(data["mode"])
            elements = _bars(modes, data["median"], data["min"], data["max"], "x S")
            charts.append(
                {
                    "id": _id("upstream", image, phase),
                    "title": f"{image}, {phase}: bytes sent by the upstream, in image sizes",
                    "x": {"label": "mode", "scale": "category", "categories": modes},
                    "y": {"label": "upstream bytes / S", "scale": "linear", "min": 0},
                    "lines": _lines(
                        [(1.0, "1 x S (ideal)", "--"), (float(nodes), f"{nodes} x S (no sharing)", ":")], "y"
                    ),
                    "variants": {"median, min-max": elements},
                }
            )
    mirrors = usage[usage["process"].isin(tables.MIRROR_PROCESSES)] if not usage.empty else usage
    if not mirrors.empty:
        for column, label, scale in (
            ("cpu_seconds", "CPU s per run", 1.0),
            ("peak_rss_bytes", "peak RSS (MiB)", 1 << 20),
        ):
            grouped = (mirrors.assign(value=mirrors[column] / scale)).groupby("mode")["value"]
            stats = tables.order(grouped.agg(["median", "min", "max"]).reset_index())
            modes = list(stats["mode"])
            charts.append(
                {
                    "id": _id("mirror", column),
                    "title": f"Mirror process per node: {label} (median over nodes and repetitions, min-max)",
                    "x": {"label": "mode", "scale": "category", "categories": modes},
                    "y": {"label": label, "scale": "linear", "min": 0},
                    "lines": [],
                    "variants": {"median, min-max": _bars(modes, stats["median"], stats["min"], stats["max"], "")},
                }
            )
    return charts


def _bars(modes: list[str], medians: Any, lows: Any, highs: Any, unit: str) -> list[Element]:
    elements: list[Element] = []
    for x, (mode, median, low, high) in enumerate(zip(modes, medians, lows, highs, strict=True)):
        if not math.isfinite(median):
            continue
        text = f"{mode}: median {median:.3g}{' ' + unit if unit else ''} (min {low:.3g}, max {high:.3g})"
        elements.append(
            {"type": "rect", "mode": mode, "x0": x - 0.3, "x1": x + 0.3, "y0": 0, "y1": median, "text": text}
        )
        elements.append(
            {"type": "segment", "mode": mode, "x0": x, "x1": x, "y0": low, "y1": high, "color": "#000", "text": text}
        )
    return elements


def charts(meta: dict[str, Any], frames: dict[str, pd.DataFrame], latency: pd.DataFrame, bounds: Any) -> list[Chart]:
    """Every chart of the page, in reading order. `bounds(meta, image, phase)` gives the reference lines of a
    pull time: (seconds, label, matplotlib line style)."""
    pulls = frames["pulls"]
    return [
        *pull_charts(pulls[pulls["phase"].isin(["create", "update"])], meta, bounds),
        *timeline_charts(frames["events"], pulls, meta),
        *advertisement_chart(latency),
        *bar_charts(frames["traffic"], frames["usage"], meta),
    ]


def write(directory: Path, title: str, summary: str, chart_list: list[Chart], colors: dict[str, str]) -> Path:
    """Write `directory/report.html` with these charts; `summary` is trusted HTML (the caller escapes)."""
    modes = [
        m
        for m in tables.MODE_ORDER
        if any(e["mode"] == m for c in chart_list for v in c["variants"].values() for e in v)
    ]
    payload = {"modes": [{"name": m, "color": colors.get(m, "#444")} for m in modes], "charts": chart_list}
    blob = json.dumps(_clean(payload), allow_nan=False).replace("</", "<\\/")
    figures = "\n".join(
        f'<figure id="{c["id"]}"><figcaption>{html.escape(c["title"])}'
        + (' <select aria-label="repetition"></select>' if len(c["variants"]) > 1 else "")
        + '</figcaption><div class="plot"></div><ul class="keys"></ul></figure>'
        for c in chart_list
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{(ASSETS / "report_page.css").read_text()}</style></head>
<body><h1>{html.escape(title)}</h1>{summary}
<div id="modes" class="modes"><strong>Modes:</strong></div>
<main>{figures}</main>
<div id="tooltip" role="tooltip"></div>
<script id="report-data" type="application/json">{blob}</script>
<script>{(ASSETS / "report_page.js").read_text()}</script>
</body></html>
"""
    path = Path(directory) / "report.html"
    path.write_text(page)
    return path


def _clean(value: Any) -> Any:
    """`value` with plain Python numbers (numpy's converted; NaN and infinities as None) for strict JSON."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, bool | str) or value is None:
        return value
    number = float(value)
    if number.is_integer() and not isinstance(value, float):
        return int(number)
    return number if math.isfinite(number) else None
