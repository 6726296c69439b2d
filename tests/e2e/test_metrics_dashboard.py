"""Two real nodes (containerd + `spegel registry`) after a pull shared between them: every series our Grafana
dashboard (deploy/grafana-dashboard.json) queries, and every series Spegel's own dashboard queries, exists on
their /metrics; client-chosen `?ns=` values and methods do not grow /metrics."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmark.daemons import Registry
from benchmark.images import ImageSpec, build, push
from tests.support.mirrors import wait_until_served

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*')
TARGET_LABELS = {"instance", "pod", "job", "namespace", "container"}  # added by Prometheus, not by the exporter

# The series Spegel's Grafana dashboard (charts/spegel/monitoring/grafana-dashboard.json, v0.7) queries, with
# the exporter's labels it selects on (its `pod`/`instance` selectors are Prometheus' target labels).
SPEGEL_DASHBOARD_SERIES = [
    ("spegel_mirror_requests_total", {"cache": "hit"}),
    ("spegel_mirror_requests_total", {"cache": "miss"}),
    ("spegel_advertised_image_digests", {"registry": None}),
    ("spegel_advertised_content_digests", {"registry": None}),
    ("http_request_duration_seconds_bucket", {}),
]


def dashboard_series() -> list[tuple[str, dict[str, str | None]]]:
    """(metric, {label: value or None for "any"}) for every selector in the dashboard's queries."""
    exprs = [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]]
    series = []
    for expr in exprs:
        for name, matchers in SELECTOR.findall(expr):
            labels: dict[str, str | None] = {}
            for label, op, value in MATCHER.findall(matchers):
                if label not in TARGET_LABELS:
                    labels[label] = value if op == "=" else None
            series.append((name, labels))
    return series


def samples(text: str) -> list[tuple[str, dict[str, str]]]:
    return [(s.name, s.labels) for family in text_string_to_metric_families(text) for s in family.samples]


def exists(found: list[tuple[str, dict[str, str]]], name: str, labels: dict[str, str | None]) -> bool:
    return any(
        sample_name == name and all(k in got and (v is None or got[k] == v) for k, v in labels.items())
        for sample_name, got in found
    )


@pytest.mark.slow
async def test_dashboard_series_exist_and_labels_stay_bounded(cluster, upstream: Registry) -> None:  # type: ignore[no-untyped-def]
    image = build(ImageSpec(layers=(1 << 20, 300_000), seed=1302))
    reference = f"{upstream.address}/dash/app:v1"
    async with httpx.AsyncClient() as client:
        await push(image, client, upstream.url, "dash/app", "v1")
    a, b = cluster(2)
    await a.pull(reference)  # A's mirror misses: containerd goes upstream
    layer = image.platforms[0].layers[0]
    await wait_until_served(b, f"/v2/dash/app/blobs/{layer.digest}?ns={upstream.address}")
    await b.pull(reference)  # B's mirror serves it from A

    async with httpx.AsyncClient(timeout=10) as client:
        scrapes = {n.name: (await client.get(f"http://{n.mirror.metrics_addr}/metrics")).text for n in (a, b)}
        found = [s for text in scrapes.values() for s in samples(text)]
        missing = [(name, labels) for name, labels in dashboard_series() if not exists(found, name, labels)]
        assert not missing, f"the dashboard queries series the mirrors do not export: {missing}"
        assert not [s for s in SPEGEL_DASHBOARD_SERIES if not exists(found, *s)]
        assert exists(samples(scrapes[b.name]), "spegel_mirror_requests_total", {"registry": upstream.address})

        # Clients choose ?ns= and methods: 300 random ones leave /metrics as it was (labels from fixed sets).
        before = len((await client.get(f"http://{b.mirror.metrics_addr}/metrics")).text)
        rng = random.Random(1303)
        for i in range(300):
            ns = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789.-", k=12)) + f".example{i}"
            method = rng.choice(["GET", "HEAD", "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=7))])
            await client.request(method, f"{b.mirror.url}/v2/x/y/blobs/sha256:{i:064x}?ns={ns}")
        after_text = (await client.get(f"http://{b.mirror.metrics_addr}/metrics")).text
    assert ".example" not in after_text
    other = [s for s in samples(after_text) if s[1].get("registry") == "other" or s[1].get("method") == "other"]
    assert other, "random registries and methods are counted as `other`"
    assert len(after_text) < before + 20_000, (before, len(after_text))
