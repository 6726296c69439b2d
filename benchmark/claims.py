"""Why a pull storm goes upstream more than once, or waits: the download claims of a kept netns run, read back.

    python -m benchmark.claims REPORT_DIR WORKDIR     # writes REPORT_DIR/data/{hops,pairs,upstream,incidents}.csv

Sources, per run (`WORKDIR/runs/<run>/<node>/spegel.log`, `WORKDIR/upstream/registry.log`, `REPORT_DIR/data`):
- the mirror's `claim` log line: when a node claimed a blob (`since`, its clock), when it looked again after the
  settle (the line's time) and which holders it saw then, with their claim times;
- the upstream registry's log (`response completed`: time, client address, blob, bytes): who went upstream;
- the mirror's access log: the 404s it gave its containerd for a blob (each one sends containerd upstream);
- the harness's events: when each node's download started (`ingest`), wrote its first bytes (`data`), committed.

Tables (one row per run, blob and node):
- `claims`: `since`, `looked`, `followed` (the node just ahead in claim order among those it saw: the one it
  streams from; "" = nobody ahead, it goes upstream), `depth` (its place in the chain it saw), `missed` (nodes
  whose claim was earlier than its own but not visible when it looked), `missed_age` (how long before its look
  the earliest missed claim had been made: a lower bound of that claim's propagation time), `seen_age` (the
  longest time between a claim it did see and its look: an upper bound of that claim's propagation time);
- `hops`: the same nodes with `ingest`, `data`, `commit` times and the lags behind the node followed;
- `pairs`: for each look and each claim made before it, the claim's age then and whether the look saw it
  (the distribution of claim propagation times);
- `upstream`: every blob GET the upstream answered, by node, with bytes and duration;
- `incidents`: every 404 a mirror gave its own containerd for a blob GET, every peer transfer that broke, and
  every body to its containerd cut short, with the reason (`stalled`: the download followed wrote nothing
  for the stall timeout).
"""

from __future__ import annotations

import argparse
import calendar
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.bound import payload_bytes
from benchmark.tables import Bounds

_LOGFMT = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)')
_BLOB_PATH = re.compile(r"/blobs/(sha256:[0-9a-f]{64})")
_DURATION = re.compile(r"^([0-9.]+)(ns|µs|us|ms|s|m)$")
_UNIT = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_logfmt(line: str) -> dict[str, str]:
    """The `key=value` pairs of one logrus text line (quoted values unquoted)."""
    fields = {}
    for key, value in _LOGFMT.findall(line):
        fields[key] = json.loads(value) if value.startswith('"') else value
    return fields


def go_duration(text: str) -> float:
    """Seconds in a Go duration as logrus prints one (`1.5ms`, `949.441µs`, `2.1s`); NaN when unreadable."""
    match = _DURATION.match(text)
    return float(match[1]) * _UNIT[match[2]] if match else math.nan


def rfc3339(text: str) -> float:
    """Epoch seconds of `2026-12-02T02:11:48.897102793Z` (UTC; any number of fraction digits)."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(
        (int(whole[0:4]), int(whole[5:7]), int(whole[8:10]), int(whole[11:13]), int(whole[14:16]), int(whole[17:19]))
    )
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def upstream_fetches(lines: list[str], node_of: dict[str, str]) -> list[dict[str, Any]]:
    """Blob GETs in a distribution registry's log: node (by client address), digest, status, bytes, start, end."""
    rows = []
    for line in lines:
        if "response completed" not in line:
            continue
        fields = parse_logfmt(line)
        blob = _BLOB_PATH.search(fields.get("http.request.uri", ""))
        if blob is None or fields.get("http.request.method") != "GET":
            continue
        end = rfc3339(fields["time"])
        client = fields.get("http.request.remoteaddr", "").rpartition(":")[0]
        rows.append(
            {
                "node": node_of.get(client, client),
                "digest": blob[1],
                "status": int(fields.get("http.response.status", 0)),
                "bytes": int(fields.get("http.response.written", 0)),
                "start": end - go_duration(fields.get("http.response.duration", "")),
                "end": end,
            }
        )
    return rows


@dataclass(frozen=True)
class Claim:
    """One `claim` log line: `node` claimed `digest` at `since`, looked at `looked` and saw `seen`
    (address, claim time or None, state) of other holders. When the key's owner ordered the claim, `mine` is its
    place in the owner's order and the `seen` claimants carry theirs instead of a time."""

    node: str
    digest: str
    since: float
    looked: float
    seen: tuple[tuple[str, float | None, str], ...]
    mine: float | None = None


def read_mirror_log(lines: list[str], node: str) -> tuple[str, list[Claim], list[dict[str, Any]]]:
    """From one mirror's JSON log: its registry host, its claims, and its incidents (node, digest, time, kind):
    `404` (answered to its containerd for a blob GET: containerd goes upstream), `deferred` (a claim waited for
    the node that leads the pull to claim first: `decide.defer_claim`), `broke` (a peer transfer broke
    and is resumed elsewhere), and the reason a body to its containerd was cut short (`stalled`: the download
    followed wrote nothing for the stall timeout; `all holders failed`; ...)."""
    host, claims, incidents = "", [], []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        message = record.get("msg")
        if message == "serving" and record.get("registry"):
            host = str(record["registry"][0]).removeprefix("http://").rpartition(":")[0]
        elif message == "claim":
            seen = tuple((str(a).rpartition(":")[0], s, str(state)) for a, s, state in record["seen"])
            mine = float(record["mine"]) if record.get("ordered_by") == "owner" else None
            claims.append(Claim(node, record["key"], float(record["since"]), rfc3339(record["time"]), seen, mine))
        elif record.get("logger") == "spegel.access" and record.get("status") == 404 and not record.get("mirrored"):
            blob = _BLOB_PATH.search(str(record.get("path", "")))
            if blob is not None and record.get("method") == "GET":
                incidents.append({"node": node, "digest": blob[1], "time": rfc3339(record["time"]), "kind": "404"})
        elif message == "claim deferred":
            incidents.append(
                {"node": node, "digest": record.get("key"), "time": rfc3339(record["time"]), "kind": "deferred"}
            )
        elif message in ("blob body cut short", "peer transfer broke"):
            kind = "broke" if message == "peer transfer broke" else _cut_reason(str(record.get("error", "")))
            incidents.append(
                {"node": node, "digest": record.get("digest"), "time": rfc3339(record["time"]), "kind": kind}
            )
    return host, claims, incidents


def _cut_reason(error: str) -> str:
    if error.startswith("ingest stalled"):
        return "stalled"
    if error.startswith("every holder"):
        return "all holders failed"
    return " ".join(error.split()[:2])


def chain(claims: list[Claim], node_of: dict[str, str]) -> list[dict[str, Any]]:
    """One row per node claiming one blob (its first claim; `looks` counts them all): whom it followed and what
    it missed (see the module docstring)."""
    first: dict[str, Claim] = {}
    for claim in sorted(claims, key=lambda c: c.looked):  # a resumed request claims again: keep the first
        first.setdefault(claim.node, claim)
    rows = []
    for claim in first.values():
        seen = {node_of.get(address, address): (since, state) for address, since, state in claim.seen}
        place = claim.since if claim.mine is None else claim.mine
        ahead = sorted(
            (since if since is not None else -math.inf, name)
            for name, (since, state) in seen.items()
            if state == "complete" or since is None or since < place
        )
        missed = [
            other
            for other in first.values()
            if other.node != claim.node and other.since < claim.since and other.node not in seen
        ]
        seen_claims = [s for s, _ in seen.values() if s is not None and s < claim.since and claim.mine is None]
        rows.append(
            {
                "node": claim.node,
                "digest": claim.digest,
                "since": claim.since,
                "looked": claim.looked,
                "followed": ahead[-1][1] if ahead else "",
                "depth": len(ahead),
                "seen": len(seen),
                "looks": sum(c.node == claim.node for c in claims),
                "missed": " ".join(sorted(m.node for m in missed)),
                "missed_age": max((claim.looked - m.since for m in missed), default=math.nan),
                "seen_age": max((claim.looked - s for s in seen_claims), default=math.nan),
            }
        )
    return rows


def pairs(claims: list[Claim], node_of: dict[str, str]) -> list[dict[str, Any]]:
    """For every node's first look at a blob and every other node's claim made before that look: the claim's
    age at the look (`looked - since`) and whether the look saw it. Over many pairs this is the distribution of
    claim propagation times: a claim `age` old is visible with the probability seen at that age."""
    first: dict[str, Claim] = {}
    for claim in sorted(claims, key=lambda c: c.looked):
        first.setdefault(claim.node, claim)
    rows = []
    for look in first.values():
        seen = {node_of.get(address, address) for address, _, _ in look.seen}
        for other in first.values():
            if other.node != look.node and other.since < look.looked:
                rows.append(
                    {
                        "observer": look.node,
                        "claimant": other.node,
                        "digest": look.digest,
                        "age": look.looked - other.since,
                        "visible": other.node in seen,
                    }
                )
    return rows


def analyse_run(run_dir: Path, registry_lines: list[str]) -> dict[str, pd.DataFrame]:
    """The `claims`, `pairs`, `upstream` and `incidents` tables of one run directory (`WORKDIR/runs/<run>`)."""
    node_of: dict[str, str] = {}
    claims: list[Claim] = []
    incidents: list[dict[str, Any]] = []
    for log_path in sorted(run_dir.glob("*/spegel.log")):
        node = log_path.parent.name
        host, node_claims, node_incidents = read_mirror_log(log_path.read_text(errors="replace").splitlines(), node)
        if host:
            node_of[host] = node
        claims += node_claims
        incidents += node_incidents
    rows, ages = [], []
    for digest in sorted({c.digest for c in claims}):
        rows += chain([c for c in claims if c.digest == digest], node_of)
        ages += pairs([c for c in claims if c.digest == digest], node_of)
    return {
        "claims": pd.DataFrame(rows),
        "pairs": pd.DataFrame(ages),
        "upstream": pd.DataFrame(upstream_fetches(registry_lines, node_of)),
        "incidents": pd.DataFrame(incidents),
    }


def hops(claims: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """`claims` with each node's ingest/data/commit times and the lags behind the node it followed."""
    if claims.empty:
        return claims
    times = events.pivot_table(index=["run", "node", "digest"], columns="event", values="time", aggfunc="min")
    merged = claims.join(times, on=["run", "node", "digest"])
    for event in ("ingest", "data", "commit"):
        if event not in merged:
            merged[event] = math.nan
    own = merged.drop_duplicates(["run", "node", "digest"]).set_index(["run", "node", "digest"])
    ahead = own.reindex(pd.MultiIndex.from_arrays([merged["run"], merged["followed"], merged["digest"]]))
    merged["data_lag"] = merged["data"].to_numpy() - ahead["data"].to_numpy()
    merged["commit_lag"] = merged["commit"].to_numpy() - ahead["commit"].to_numpy()
    return merged


def analyse(report: Path, workdir: Path) -> dict[str, pd.DataFrame]:
    """Every run of a kept scenario: the tables above, with the run's labels, written to `report/data/`."""
    data = report / "data"
    events = pd.read_csv(data / "events.csv")
    traffic = pd.read_csv(data / "traffic.csv")
    registry_lines = (workdir / "upstream" / "registry.log").read_text(errors="replace").splitlines()
    layer_of = events.dropna(subset=["digest"]).groupby("digest")["layer"].first().to_dict()
    tables: dict[str, list[pd.DataFrame]] = {"claims": [], "pairs": [], "upstream": [], "incidents": []}
    for row in traffic.itertuples():
        run_dir = workdir / "runs" / str(row.run).replace("/", "-")
        if not run_dir.is_dir():
            continue
        for name, frame in analyse_run(run_dir, registry_lines).items():
            if frame.empty:
                continue
            if name == "upstream":  # the registry's log spans every run: keep this phase's requests
                frame = frame[(frame["end"] >= row.phase_start) & (frame["start"] <= row.phase_end)]
            frame.insert(0, "run", row.run)
            frame["layer"] = frame["digest"].map(layer_of)
            tables[name].append(frame)
    result = {
        name: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame() for name, frames in tables.items()
    }
    result["hops"] = hops(result.pop("claims"), events)
    for name, frame in result.items():
        frame.to_csv(data / f"{name}.csv", index=False)
    return result


def summary(tables: dict[str, pd.DataFrame]) -> str:
    """Per run and layer: claimants, who went upstream (and how many bytes), how many nodes missed an earlier
    claim and by how much, chain depth, and the per-hop lag of first bytes and commits."""
    hops_table, upstream, incidents = tables["hops"], tables["upstream"], tables["incidents"]
    lines = [
        "run | layer | claims | roots (nobody ahead) | upstream GETs: node MiB | incidents | "
        "missed an earlier claim (age ms) | max depth | data lag p50/max ms | commit lag p50/max ms"
    ]
    for (run, layer), group in hops_table.groupby(["run", "layer"]):
        roots = sorted(group[group["followed"] == ""]["node"])
        ups = upstream[(upstream["run"] == run) & (upstream["layer"] == layer)] if not upstream.empty else upstream
        by_node = ups.groupby("node")["bytes"].sum() / 2**20 if not ups.empty else pd.Series(dtype=float)
        found = incidents[(incidents["run"] == run) & (incidents["layer"] == layer)] if len(incidents) else incidents
        missed = group[group["missed"] != ""]
        ages = ", ".join(f"{r.node}:{r.missed_age * 1000:.0f}" for r in missed.itertuples())
        lag = group["data_lag"].dropna() * 1000
        commit = group["commit_lag"].dropna() * 1000
        went_up = " ".join(f"{n}:{b:.0f}" for n, b in by_node.items())
        kinds = " ".join(f"{k}:{c}" for k, c in found["kind"].value_counts().items()) if len(found) else ""
        lines.append(
            f"{run} | {layer} | {len(group)} | {' '.join(roots)} | {went_up} | {kinds} | {ages} | "
            f"{group['depth'].max()} | {lag.median():.0f}/{lag.max():.0f} | {commit.median():.0f}/{commit.max():.0f}"
        )
    return "\n".join(lines) + "\n\n" + propagation(tables["pairs"])


AGE_BUCKETS = (0.0, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, math.inf)


def propagation(pairs_table: pd.DataFrame) -> str:
    """How often a claim was visible at another node's look, by the claim's age at that look."""
    if pairs_table.empty:
        return "no claim was older than another node's look"
    buckets = pd.cut(pairs_table["age"], AGE_BUCKETS, right=False)
    grouped = pairs_table.groupby(buckets, observed=True)["visible"].agg(["count", "mean"])
    lines = ["claim age at another node's look (ms) | pairs | visible"]
    for interval, row in grouped.iterrows():
        lines.append(f"{interval.left * 1000:.0f}-{interval.right * 1000:.0f} | {row['count']:.0f} | {row['mean']:.0%}")
    return "\n".join(lines)


def per_run(report: Path, tables: dict[str, pd.DataFrame]) -> str:
    """One line per run: load average, slowest node over the bound, upstream bytes over S, upstream roots per
    layer and how many nodes they are (1: one first claimant for the whole image), stalls, and the time from each
    node's last blob commit to the end of its pull (unpacking: CPU)."""
    data = report / "data"
    meta = json.loads((report / "meta.json").read_text())
    pulls, traffic = pd.read_csv(data / "pulls.csv"), pd.read_csv(data / "traffic.csv")
    events = pd.read_csv(data / "events.csv")
    usage = pd.read_csv(data / "usage.csv")
    commits = events[(events["event"] == "commit") & (events["layer"] >= 0)].groupby(["run", "node"])["time"].max()
    hops_table, incidents = tables["hops"], tables["incidents"]
    lines = [
        "run | load start/end | slowest (s) | / bound | upstream x S | roots per layer | nodes with a root | stalls | "
        "unpack tail p50/max (s) | CPU s per node: spegel / containerd"
    ]
    for row in traffic.itertuples():
        bounds = Bounds.of(meta, str(row.image))
        run_pulls = pulls[pulls["run"] == row.run].set_index("node")
        tail = run_pulls["end"] - commits.loc[row.run].reindex(run_pulls.index)
        layers = hops_table[(hops_table["run"] == row.run) & (hops_table["layer"] >= 0)]
        first_claims = layers[layers["followed"] == ""]
        roots = first_claims.groupby("layer").size().reindex(sorted(set(layers["layer"])), fill_value=0)
        stalls = int((incidents[incidents["run"] == row.run]["kind"] == "stalled").sum()) if len(incidents) else 0
        cpu = usage[usage["run"] == row.run].groupby("process")["cpu_seconds"].median()
        lines.append(
            f"{row.run} | {row.load_start:.1f}/{row.load_end:.1f} | {run_pulls['duration'].max():.1f} | "
            f"{run_pulls['duration'].max() / bounds.lower:.2f} | "
            f"{payload_bytes(row.upstream_bytes) / bounds.size:.2f} | "
            f"{' '.join(str(n) for n in roots)} | {first_claims['node'].nunique()} | {stalls} | "
            f"{tail.median():.1f}/{tail.max():.1f} | "
            f"{cpu.get('spegel', math.nan):.1f} / {cpu.get('containerd', math.nan):.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.claims", description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the scenario's report directory (with data/)")
    parser.add_argument("workdir", type=Path, help="the scenario's work directory (with runs/ and upstream/)")
    args = parser.parse_args(argv)
    try:
        tables = analyse(args.report, args.workdir)
    except (OSError, KeyError, ValueError) as exc:
        sys.stderr.write(f"claims: error: {exc}\n")
        return 2
    print(per_run(args.report, tables) + "\n\n" + summary(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
