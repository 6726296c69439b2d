"""Result tables from the raw DataFrames of a run (pure pandas: no plotting, no files).

Every table reports the spread over repetitions (and nodes, where a value is per node): median, min, max and
the coefficient of variation (standard deviation / |mean|; 0 for a single value). Bounds come from the
scenario in `meta.json` (see `bound.py`): a node cannot finish `create` before the lower bound
max(S/U, S/B, N·S/(U+N·B)) and, without sharing, the last one not before N·S/U; an `update` batch not
before S/B, except the first: nobody holds the new image yet, so it is a cold `create` of its k nodes, judged
against the lower bound with N = k (`Bounds.first_batch`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from benchmark.bound import lower_bound, no_sharing_bound, payload_bytes, payload_rate

MODE_ORDER = ("upstream", "proxy", "spegel-go", "image", "layer", "inflight")
PHASE_ORDER = ("create", "update", "advertise")
STAT_COLUMNS = ["n", "median", "min", "max", "cv"]


def spread(values: pd.Series) -> dict[str, float]:
    """n, median, min, max and coefficient of variation of the non-missing values."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return {"n": 0, "median": math.nan, "min": math.nan, "max": math.nan, "cv": math.nan}
    mean = values.mean()
    cv = float(values.std(ddof=0) / abs(mean)) if len(values) > 1 and mean != 0 else 0.0
    return {"n": len(values), "median": values.median(), "min": values.min(), "max": values.max(), "cv": cv}


def summarize(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """One row per group of `by` with the spread of `value`, groups in mode/phase order."""
    if frame.empty or value not in frame:
        return pd.DataFrame(columns=[*by, *STAT_COLUMNS])
    rows = [{**dict(zip(by, key, strict=True)), **spread(group[value])} for key, group in frame.groupby(by, sort=False)]
    return order(pd.DataFrame(rows))


def order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by image (in order of first appearance: the scenario's), then phase and mode in their
    natural order."""
    keys = []
    if "image" in frame:
        first_seen = {image: i for i, image in enumerate(dict.fromkeys(frame["image"]))}
        frame = frame.assign(_image=frame["image"].map(first_seen))
        keys.append("_image")
    for column, ranking in (("phase", PHASE_ORDER), ("mode", MODE_ORDER)):
        if column in frame:
            frame = frame.assign(**{f"_{column}": frame[column].map(lambda v, r=ranking: r.index(v) if v in r else 99)})
            keys.append(f"_{column}")
    if not keys:
        return frame.reset_index(drop=True)
    return frame.sort_values(keys, kind="stable").drop(columns=keys).reset_index(drop=True)


@dataclass(frozen=True)
class Bounds:
    """The bounds of one image shape in one scenario (seconds)."""

    size: int  # S: bytes a node pulls
    lower: float  # create: max(S/U, S/B, N*S/(U+N*B))
    no_sharing: float  # create: N*S/U
    node_time: float  # S/B: one node alone at full node bandwidth

    @classmethod
    def of(cls, meta: dict[str, Any], image: str, phase: str = "create", nodes: int | None = None) -> Bounds:
        """The bounds of `image` in `phase` for `nodes` nodes pulling at once (default: the whole cluster)."""
        cluster = meta["scenario"]["cluster"]
        size = meta["images"][f"{image}/{phase}"]["size"]
        upstream, node = payload_rate(cluster["upstream_bandwidth"]), payload_rate(cluster["node_bandwidth"])
        nodes = nodes or cluster["nodes"]
        return cls(size, lower_bound(size, nodes, upstream, node), no_sharing_bound(size, nodes, upstream), size / node)

    @classmethod
    def first_batch(cls, meta: dict[str, Any], image: str, batch_size: int) -> Bounds:
        """The bounds of the first `update` batch: a cold pull of the new image by its `batch_size` nodes."""
        return cls.of(meta, image, "update", batch_size)


def completion(pulls: pd.DataFrame) -> pd.DataFrame:
    """Per run and phase: the slowest node's pull time (`slowest`, each node timed from its own start, as the
    kubelet reports it), when the last node finished counted from the phase start (`completion`: includes the
    start jitter of `create` and every batch of `update`), and how many pulls failed."""
    columns = ["run", "image", "mode", "repetition", "phase", "slowest", "completion", "failed"]
    if pulls.empty:
        return pd.DataFrame(columns=columns)
    frame = pulls.assign(failed=~pulls["ok"].astype(bool))
    grouped = frame.groupby(["run", "image", "mode", "repetition", "phase"], sort=False)
    result = grouped.agg(end=("end", "max"), phase_start=("phase_start", "min"), failed=("failed", "sum")).reset_index()
    slowest = frame[~frame["failed"]].groupby(["run", "phase"], sort=False)["duration"].max().rename("slowest")
    result = result.merge(slowest.reset_index(), on=["run", "phase"], how="left")
    result["completion"] = result["end"] - result["phase_start"]
    result["failed"] = result["failed"].astype(int)
    return result[columns]


def pull_table(pulls: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """Pull time per node (all nodes, all repetitions), the slowest node and the completion of each run
    (medians over repetitions), beside the bounds.

    `vs_bound` compares what the bound is about: in `create` the slowest node with the lower bound; in
    `update` the median pull of the batches after the first (`later_median`: the first pulls cold, see
    `update_table`) with S/B, the time of one node alone; in `advertise` the pull with S/B.
    """
    ok = pulls[pulls["ok"].astype(bool)] if not pulls.empty else pulls
    per_node = summarize(ok, ["image", "phase", "mode"], "duration")
    later = ok[(ok["phase"] == "update") & (ok["batch"] > 0)].groupby(["image", "phase", "mode"])["duration"]
    runs = completion(pulls)
    keys = ["image", "phase", "mode"]
    per_run = runs.groupby(keys).agg(
        slowest_median=("slowest", "median"),
        slowest_max=("slowest", "max"),
        completion_median=("completion", "median"),
        failed=("failed", "sum"),
    )
    table = per_node.merge(per_run.reset_index(), on=keys, how="left")
    table = table.merge(later.median().rename("later_median").reset_index(), on=keys, how="left")
    table["bound"] = [_phase_bound(meta, r.image, r.phase) for r in table.itertuples()]
    measured = table["slowest_median"].where(table["phase"] == "create", table["median"])
    measured = measured.where(table["phase"] != "update", table["later_median"])
    table["vs_bound"] = measured / table["bound"]
    return order(table)


def update_table(pulls: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """The rolling update split in two: the first batch (cold: its slowest node, median over repetitions,
    against the lower bound of a `create` by the batch's k nodes) and the batches after it (median pull
    against S/B)."""
    columns = ["image", "mode", "first_nodes", "first_slowest", "first_bound", "first_vs", "later_n"]
    columns += ["later_median", "node_bound", "later_vs"]
    update = pulls[(pulls["phase"] == "update") & pulls["ok"].astype(bool)] if not pulls.empty else pulls
    if update.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (image, mode), group in update.groupby(["image", "mode"], sort=False):
        first, later = group[group["batch"] == 0], group[group["batch"] > 0]
        first_nodes = int(first.groupby("run")["node"].count().max()) if not first.empty else 0
        first_slowest = first.groupby("run")["duration"].max().median() if not first.empty else math.nan
        first_bound = Bounds.first_batch(meta, image, first_nodes).lower if first_nodes else math.nan
        node_bound = Bounds.of(meta, image, "update").node_time
        later_median = later["duration"].median() if not later.empty else math.nan
        rows.append(
            {
                "image": image,
                "mode": mode,
                "first_nodes": first_nodes,
                "first_slowest": first_slowest,
                "first_bound": first_bound,
                "first_vs": first_slowest / first_bound,
                "later_n": len(later),
                "later_median": later_median,
                "node_bound": node_bound,
                "later_vs": later_median / node_bound,
            }
        )
    return order(pd.DataFrame(rows, columns=columns))


def first_batch_size(meta: dict[str, Any]) -> int:
    """How many nodes the first `update` batch has (as `Scenario.update_batches`: ceil(batch x N), at least 1)."""
    scenario = meta["scenario"]
    nodes = scenario["cluster"]["nodes"]
    return min(nodes, max(1, math.ceil(scenario.get("update_batch", 0.2) * nodes)))


def largest_image(meta: dict[str, Any], pulls: pd.DataFrame) -> str:
    """The image shape of the run with the most bytes (its `create` version), of those that were pulled."""
    images = list(dict.fromkeys(pulls["image"]))
    return max(images, key=lambda image: meta["images"].get(f"{image}/create", {}).get("size", 0))


def slowest_runs(pulls: pd.DataFrame, image: str, phase: str = "create") -> dict[str, list[str]]:
    """Per mode, the runs of `image` in `phase`, slowest node first (the run to show by default first)."""
    done = completion(pulls[(pulls["image"] == image) & (pulls["phase"] == phase)])
    done = done.sort_values("slowest", ascending=False, kind="stable")
    return {mode: list(group["run"]) for mode, group in done.groupby("mode", sort=False)}


def layer_spans(events: pd.DataFrame, pulls: pd.DataFrame, run: str, phase: str = "create") -> pd.DataFrame:
    """Each node's layers in one run's `phase`: download start (`begin`: ingest seen, else the commit) and
    commit (`end`), in seconds since the phase start; layers never committed are left out."""
    columns = ["node", "layer", "begin", "end"]
    data = events[(events["run"] == run) & (events["phase"] == phase) & (events["layer"] >= 0)]
    start = pulls[(pulls["run"] == run) & (pulls["phase"] == phase)]["phase_start"].min()
    if data.empty or math.isnan(start):
        return pd.DataFrame(columns=columns)
    firsts = data.groupby(["node", "layer", "event"])["time"].min().unstack("event")
    if "commit" not in firsts:
        return pd.DataFrame(columns=columns)
    firsts = firsts.dropna(subset=["commit"])
    begin = firsts["ingest"].fillna(firsts["commit"]) if "ingest" in firsts else firsts["commit"]
    spans = pd.DataFrame({"begin": begin - start, "end": firsts["commit"] - start}).reset_index()
    spans["order"] = spans["node"].map(lambda n: int(n[1:]) if n[1:].isdigit() else 0)
    return spans.sort_values(["order", "layer"]).drop(columns="order").reset_index(drop=True)[columns]


MIRROR_PROCESSES = ("spegel", "spegel-go")  # the per-node mirror process of our modes and of `spegel-go`
PEER_COMPARISON = ("spegel-go", "image", "layer", "inflight")


def side_by_side(
    pulls: pd.DataFrame,
    traffic: pd.DataFrame,
    usage: pd.DataFrame,
    latency: pd.DataFrame,
    meta: dict[str, Any],
) -> pd.DataFrame:
    """The headline figures of every peer mode (Spegel's and ours) side by side, one row per figure and image:
    create slowest node (median over repetitions), upstream bytes in create and update (x S), update median
    pull after the first batch, failed pulls, advertisement latency after commit (median, p95, ms), CPU seconds
    and peak RSS of the node's mirror process (medians over nodes and repetitions). Columns: `shape` (the
    image), `figure`, and one per mode present (a mode is named `image`: hence `shape`)."""
    modes = [m for m in PEER_COMPARISON if m in set(pulls["mode"])]
    if not modes:
        return pd.DataFrame(columns=["shape", "figure"])
    done, update = completion(pulls), update_table(pulls, meta)
    mirrors = usage[usage["process"].isin(MIRROR_PROCESSES)] if not usage.empty else usage
    seen = latency.dropna(subset=["after_commit"]) if not latency.empty else latency

    def median(frame: pd.DataFrame, image: str, mode: str, column: str, scale: float = 1.0) -> float:
        if frame.empty:
            return math.nan
        chosen = frame[(frame["image"] == image) & (frame["mode"] == mode)][column]
        return float(chosen.median() / scale) if not chosen.empty else math.nan

    def upstream(image: str, mode: str, phase: str) -> float:
        size = meta["images"].get(f"{image}/{phase}", {}).get("size")
        in_phase = traffic[traffic["phase"] == phase] if not traffic.empty else traffic
        return payload_bytes(median(in_phase, image, mode, "upstream_bytes")) / size if size else math.nan

    def failed(image: str, mode: str) -> float:
        runs = done[(done["image"] == image) & (done["mode"] == mode) & done["phase"].isin(["create", "update"])]
        return float(runs["failed"].sum())

    def visible(image: str, mode: str, quantile: float) -> float:
        if seen.empty:
            return math.nan
        chosen = seen[(seen["image"] == image) & (seen["mode"] == mode)]["after_commit"]
        return float(chosen.quantile(quantile) * 1000) if not chosen.empty else math.nan

    figures: list[tuple[str, Callable[[str, str], float]]] = [
        ("create: slowest node (s)", lambda i, m: median(done[done["phase"] == "create"], i, m, "slowest")),
        ("create: upstream bytes (x S)", lambda i, m: upstream(i, m, "create")),
        ("update: median pull after the first batch (s)", lambda i, m: median(update, i, m, "later_median")),
        ("update: upstream bytes (x S)", lambda i, m: upstream(i, m, "update")),
        ("create + update: failed pulls, all repetitions", lambda i, m: failed(i, m)),
    ]
    if not seen.empty:
        figures += [
            ("advertise: visible after commit, median (ms)", lambda i, m: visible(i, m, 0.5)),
            ("advertise: visible after commit, p95 (ms)", lambda i, m: visible(i, m, 0.95)),
        ]
    figures += [
        ("mirror process: CPU s per run, median", lambda i, m: median(mirrors, i, m, "cpu_seconds")),
        ("mirror process: peak RSS (MiB), median", lambda i, m: median(mirrors, i, m, "peak_rss_bytes", 1 << 20)),
    ]
    rows = [
        {"shape": image, "figure": figure, **{mode: value(image, mode) for mode in modes}}
        for image in dict.fromkeys(pulls["image"])
        for figure, value in figures
    ]
    return pd.DataFrame(rows).dropna(subset=modes, how="all").reset_index(drop=True)  # e.g. no update phase


def _phase_bound(meta: dict[str, Any], image: str, phase: str) -> float:
    bounds = Bounds.of(meta, image, phase)
    return bounds.lower if phase == "create" else bounds.node_time


def traffic_table(traffic: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """Upstream bytes per phase as a multiple of the image size S (1 = the image crossed the link once): the
    spread of the link's counter, and the median of what the registry's access log claims (`log_median`)."""
    if traffic.empty:
        return pd.DataFrame(columns=["image", "phase", "mode", *STAT_COLUMNS])
    frame = traffic.copy()
    frame["upstream_ratio"] = [
        payload_bytes(r.upstream_bytes) / meta["images"][f"{r.image}/{r.phase}"]["size"] for r in frame.itertuples()
    ]
    table = summarize(frame, ["image", "phase", "mode"], "upstream_ratio")
    if "upstream_log_bytes" in frame:
        sizes = [meta["images"][f"{r.image}/{r.phase}"]["size"] for r in frame.itertuples()]
        frame["log_ratio"] = frame["upstream_log_bytes"] / sizes
        logged = frame.groupby(["image", "phase", "mode"])["log_ratio"].median().rename("log_median")
        table = table.merge(logged.reset_index(), on=["image", "phase", "mode"], how="left")
    # On the node that asks, `peer` counts what its containerd got from peers; on the nodes that serve,
    # `inflight` counts what they sent from downloads still in progress (a part of the askers' `peer`).
    for column, name in (("bytes_peer", "peer_mib_median"), ("bytes_inflight", "inflight_mib_median")):
        if column in frame:
            medians = (frame.groupby(["image", "phase", "mode"])[column].median() / (1 << 20)).rename(name)
            table = table.merge(medians.reset_index(), on=["image", "phase", "mode"], how="left")
    return order(table)


def advertisement_latency(events: pd.DataFrame, visibility: pd.DataFrame) -> pd.DataFrame:
    """Per observation: the puller's ingest start and commit of the layer, when the observer saw it, the
    latencies `after_commit` (visible - commit; negative when seen while downloading) and `after_ingest`, and
    `rtt`, the round trip of the probe that saw it."""
    columns = ["run", "image", "mode", "repetition", "observer", "layer", "after_commit", "after_ingest", "rtt"]
    if visibility.empty or events.empty:
        return pd.DataFrame(columns=columns)
    puller = events[(events["phase"] == "advertise") & (events["node"] == "n0")]
    firsts = puller.groupby(["run", "digest", "event"])["time"].min().unstack("event").reset_index()
    merged = visibility.merge(firsts, on=["run", "digest"], how="left")
    merged["after_commit"] = merged["visible"] - merged.get("commit", math.nan)
    merged["after_ingest"] = merged["visible"] - merged.get("ingest", math.nan)
    return merged[columns]


def advertisement_table(latency: pd.DataFrame) -> pd.DataFrame:
    """Advertisement latency per mode: spread after commit and after ingest start, p95 after commit, the
    probes' round trip (median, p95), and how many layers were never seen."""
    if latency.empty:
        return pd.DataFrame(
            columns=["image", "mode", *STAT_COLUMNS, "p95", "ingest_median", "rtt_median", "rtt_p95", "unseen"]
        )
    rows = []
    for (image, mode), group in latency.groupby(["image", "mode"], sort=False):
        stats = spread(group["after_commit"])
        seen = group["after_commit"].dropna()
        rows.append(
            {
                "image": image,
                "mode": mode,
                **stats,
                "p95": seen.quantile(0.95) if not seen.empty else math.nan,
                "ingest_median": group["after_ingest"].median(),
                "rtt_median": group["rtt"].median(),
                "rtt_p95": group["rtt"].quantile(0.95),
                "unseen": int(group["after_commit"].isna().sum()),
            }
        )
    return order(pd.DataFrame(rows))


def usage_table(usage: pd.DataFrame) -> pd.DataFrame:
    """CPU seconds and peak RSS (MiB) per process kind and mode, over nodes and repetitions."""
    if usage.empty:
        return pd.DataFrame(columns=["mode", "process", "cpu_median", "cpu_max", "rss_mib_median", "rss_mib_max"])
    frame = usage.assign(rss_mib=usage["peak_rss_bytes"] / (1 << 20))
    table = frame.groupby(["mode", "process"], sort=False).agg(
        cpu_median=("cpu_seconds", "median"),
        cpu_max=("cpu_seconds", "max"),
        rss_mib_median=("rss_mib", "median"),
        rss_mib_max=("rss_mib", "max"),
    )
    return order(table.reset_index())


SERVED_SOURCES = ("bytes_local", "bytes_peer", "bytes_inflight")  # the mirror's bytes sent, by source (not `miss`)


def cpu_per_gb_table(
    usage: pd.DataFrame, traffic: pd.DataFrame, pulls: pd.DataFrame, meta: dict[str, Any]
) -> pd.DataFrame:
    """CPU seconds per GB (10^9 bytes) moved, per mode, totals over all nodes, phases and repetitions.

    Mirror: the CPU seconds of the mirror processes (`MIRROR_PROCESSES`) over the bytes they served, their
    `spegel_mirror_bytes_total` of sources local, peer and inflight. A byte passed from one node's mirror to
    another's counts twice, as the holder's local (or inflight) and as the asker's peer: both processes moved it.
    Runs without any of these counters (no mirror of ours: upstream, proxy, spegel-go) are left out, CPU
    included: such a mode gets NaN. A counter missing beside others is 0: before f6beead a mirror exported a
    source only once it had counted bytes.
    Containerd: its CPU seconds over the bytes its nodes pulled, the image size S of each successful pull (the
    bytes of a failed pull are left out, its CPU is not)."""
    columns = ["mode", "mirror_cpu", "mirror_gb", "mirror_cpu_per_gb"]
    columns += ["containerd_cpu", "containerd_gb", "containerd_cpu_per_gb"]
    if usage.empty or pulls.empty:
        return pd.DataFrame(columns=columns)
    kinds = usage.assign(kind=usage["process"].replace(dict.fromkeys(MIRROR_PROCESSES, "mirror")))
    runs = kinds.pivot_table(index=["run", "mode"], columns="kind", values="cpu_seconds", aggfunc="sum")
    runs = runs.reindex(columns=["mirror", "containerd"]).reset_index("mode")
    counters = traffic.reindex(columns=["run", *SERVED_SOURCES])
    served = counters[list(SERVED_SOURCES)].sum(axis=1, min_count=1)  # NaN: no counter at all
    runs["mirror_bytes"] = served.groupby(counters["run"]).sum(min_count=1)
    runs["mirror"] = runs["mirror"].where(runs["mirror_bytes"].notna())
    ok = pulls[pulls["ok"].astype(bool)]
    sizes = [meta["images"][f"{r.image}/{r.phase}"]["size"] for r in ok.itertuples()]
    runs["containerd_bytes"] = pd.Series(sizes, index=ok.index, dtype=float).groupby(ok["run"]).sum()
    totals = runs.groupby("mode", sort=False).sum(min_count=1)
    table = pd.DataFrame({"mode": totals.index}, index=totals.index)
    for kind in ("mirror", "containerd"):
        gb = totals[f"{kind}_bytes"] / 1e9
        table[f"{kind}_cpu"], table[f"{kind}_gb"] = totals[kind], gb
        table[f"{kind}_cpu_per_gb"] = totals[kind] / gb.where(gb > 0)
    return order(table[columns])
