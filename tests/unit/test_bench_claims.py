"""Reading a storm back from the logs: registry log lines, the mirror's claim lines, and who followed whom."""

from __future__ import annotations

import json
import math

import pytest

from benchmark.claims import Claim, chain, go_duration, parse_logfmt, read_mirror_log, rfc3339, upstream_fetches

DIGEST = "sha256:" + "ab" * 32
REGISTRY_LINE = (
    'time="2026-12-02T02:11:48.500000000Z" level=info msg="response completed" go.version=go1.19.8 '
    'http.request.method=GET http.request.remoteaddr="198.18.7.10:52890" '
    f'http.request.uri="/v2/bench/x/blobs/{DIGEST}" http.response.duration=1.5s http.response.status=206 '
    "http.response.written=4194304"
)


def test_logfmt_and_go_durations() -> None:
    fields = parse_logfmt('a=1 b="two words" c="with \\"quote\\"" d=')
    assert fields == {"a": "1", "b": "two words", "c": 'with "quote"', "d": ""}
    assert go_duration("949.441µs") == pytest.approx(949.441e-6)
    assert go_duration("1.5ms") == pytest.approx(0.0015)
    assert go_duration("2s") == 2.0
    assert math.isnan(go_duration("1h2m"))


def test_rfc3339_keeps_the_fraction() -> None:
    assert rfc3339("1970-01-01T00:00:01.25Z") == 1.25
    assert rfc3339("2026-12-02T02:11:48Z") == rfc3339("2026-12-02T02:11:48.000Z")


def test_upstream_fetches_name_the_node_and_span_the_request() -> None:
    lines = [REGISTRY_LINE, REGISTRY_LINE.replace("GET", "HEAD"), "198.18.7.10 - - [...] access line", "garbage"]
    [fetch] = upstream_fetches(lines, {"198.18.7.10": "n1"})
    assert fetch["node"] == "n1" and fetch["digest"] == DIGEST and fetch["bytes"] == 4194304
    assert fetch["end"] - fetch["start"] == pytest.approx(1.5)


def _line(**record: object) -> str:
    return json.dumps({"time": "2026-12-02T02:11:48.123Z", "level": "info", **record})


def test_mirror_log_gives_host_claims_and_misses() -> None:
    lines = [
        _line(logger="spegel.app", msg="serving", registry=["http://198.18.7.9:5000"]),
        _line(
            logger="spegel.mirror",
            msg="claim",
            key=DIGEST,
            since=100.0,
            seen=[["198.18.7.10:5000", 99.9, "in_progress"]],
        ),
        _line(
            logger="spegel.access", msg="request", method="GET", path=f"/v2/x/blobs/{DIGEST}", status=404, mirrored=None
        ),
        _line(
            logger="spegel.access",
            msg="request",
            method="GET",
            path=f"/v2/x/blobs/{DIGEST}",
            status=404,
            mirrored="true",
        ),
        _line(
            logger="spegel.registry", msg="blob body cut short", digest=DIGEST, error="ingest stalled at 8 of 16 bytes"
        ),
        _line(logger="spegel.mirror", msg="peer transfer broke", digest=DIGEST, error="peer closed connection"),
        "not json",
    ]
    host, claims, misses = read_mirror_log(lines, "n0")
    assert host == "198.18.7.9"
    assert claims == [
        Claim("n0", DIGEST, 100.0, rfc3339("2026-12-02T02:11:48.123Z"), (("198.18.7.10", 99.9, "in_progress"),))
    ]
    assert [m["kind"] for m in misses] == ["404", "stalled", "broke"]  # a peer's request (mirrored) is no miss


def test_chain_follows_the_nearest_earlier_claim_and_reports_the_missed_ones() -> None:
    node_of = {"a": "n0", "b": "n1", "c": "n2"}
    claims = [
        Claim("n0", DIGEST, 10.00, 10.03, ()),  # first: nobody ahead, goes upstream
        Claim("n1", DIGEST, 10.01, 10.04, (("a", 10.00, "in_progress"),)),
        Claim("n2", DIGEST, 10.02, 10.05, (("b", 10.01, "in_progress"),)),  # did not see n0's claim
        Claim("n2", DIGEST, 12.00, 12.03, ()),  # a later look (a resume): not the chain
    ]
    rows = {r["node"]: r for r in chain(claims, node_of)}
    assert (rows["n0"]["followed"], rows["n0"]["depth"]) == ("", 0)
    assert (rows["n1"]["followed"], rows["n1"]["depth"]) == ("n0", 1)
    assert rows["n1"]["seen_age"] == pytest.approx(0.04)
    assert rows["n2"]["followed"] == "n1" and rows["n2"]["missed"] == "n0" and rows["n2"]["looks"] == 2
    assert rows["n2"]["missed_age"] == pytest.approx(0.05)


def test_a_complete_holder_is_always_ahead() -> None:
    claims = [Claim("n1", DIGEST, 10.0, 10.03, (("a", None, "complete"),))]
    assert chain(claims, {"a": "n0"})[0]["followed"] == "n0"
