"""The debug page's rendering (pure): what it lists, and client-chosen text escaped."""

from __future__ import annotations

from spegel.activity import Activity
from spegel.debugweb import DebugView, MeasuredBlob, PeerRow, render_index, render_measure, size_text
from spegel.routing.base import KeyState


def test_index_lists_peers_advertisements_transfers_and_misses() -> None:
    activity = Activity()
    running = activity.start("sha256:" + "a" * 64, "peer", lambda: "10.0.0.2:5000")
    activity.sent(running, 3 << 20)
    done = activity.start("sha256:" + "b" * 64, "local", lambda: None)
    activity.sent(done, 1024)
    activity.end(done)
    activity.missed("/v2/x/blobs/<script>alert(1)</script>", '"><img src=x>', mirrored=False)
    advertised = {
        "docker.io/library/nginx:1": KeyState.COMPLETE,
        "sha256:" + "c" * 64: KeyState.COMPLETE,
        "sha256:" + "d" * 64: KeyState.IN_PROGRESS,
    }
    view = DebugView(
        "node-a", "http://127.0.0.1:5000", activity, advertised, lambda: [PeerRow("12D3Koo", "10.0.0.2:5000", 7, True)]
    )
    page = render_index(view, now=activity.running[running].started + 2.0)
    assert "Advertised: 1 tags, 1 blobs, 1 blobs in progress" in page
    assert "docker.io/library/nginx:1" in page and "d" * 64 in page
    assert "Transfers running now (1)" in page and "10.0.0.2:5000" in page and "1.5 MiB/s" in page
    assert "b" * 64 in page.split('id="finished"')[1]
    assert "<script>" not in page and "&lt;script&gt;" in page and "<img" not in page
    assert "Peers (1)" in page and ">heard<" in page


def test_measure_result_and_sizes() -> None:
    blobs = [MeasuredBlob("sha256:" + "e" * 64, "layer", 2 << 20, 200, 0.5, "peer", "10.0.0.3:5000")]
    page = render_measure("<b>img</b>", blobs, None, 0.6)
    assert "&lt;b&gt;img&lt;/b&gt;" in page and "<b>img" not in page
    assert "4.0 MiB/s" in page and "10.0.0.3:5000" in page and "1 requests, 2.0 MiB" in page
    assert [size_text(n) for n in (0, 1023, 1024, 5 << 30)] == ["0 B", "1023 B", "1.0 KiB", "5.0 GiB"]
