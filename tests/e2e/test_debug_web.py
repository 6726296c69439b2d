"""The debug page `/debug/web/` of two real nodes, opened in a real headless Chromium (Debian's `chromium`):
peers, advertised tags, a transfer from the peer shown while it runs, and a measure of an image pulled through
the mirror showing the peer each layer came from."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from benchmark.daemons import Registry
from benchmark.images import ImageSpec, build, push
from tests.support.mirrors import wait_until_served

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium not installed")]

# no sandbox as root; nothing fetched but the page (no updates, sync, or other background traffic)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
)


def chromium(tmp_path: Path, url: str, *action: str) -> str:
    """Load `url` in a headless Chromium with `action` (`--dump-dom` or `--screenshot=FILE`); its stdout."""
    profile = tmp_path / f"chromium-{os.urandom(4).hex()}"
    argv = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1800", *action, url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def section(dom: str, name: str) -> str:
    start = dom.index(f'<section id="{name}">')
    return dom[start : dom.index("</section>", start)]


async def test_debug_page_in_chromium(cluster, upstream: Registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = build(ImageSpec(layers=(24 << 20, 200_000), compression="none", seed=1304))
    reference = f"{upstream.address}/dbg/app:v1"
    async with httpx.AsyncClient() as client:
        await push(image, client, upstream.url, "dbg/app", "v1")
    a, b = cluster(2, "--http-send-timeout", "10m")  # the paused client below is not dropped while Chromium loads
    await a.pull(reference)
    layer = image.platforms[0].layers[0]
    blob_path = f"/v2/dbg/app/blobs/{layer.digest}?ns={upstream.address}"
    await wait_until_served(b, blob_path)
    page_a = f"http://{a.mirror.metrics_addr}/debug/web/"
    page_b = f"http://{b.mirror.metrics_addr}/debug/web/"

    dom = await trio.to_thread.run_sync(chromium, tmp_path, page_a, "--dump-dom")
    assert f"{upstream.address}/dbg/app:v1" in section(dom, "advertised")
    assert b.mirror.registry_addr in section(dom, "peers")

    # A client of B that reads the first bytes of the big layer and then waits: B streams it from A meanwhile.
    digest = hashlib.sha256()
    screenshot = tmp_path / "debug-web.png"
    async with httpx.AsyncClient(timeout=60) as client, client.stream("GET", f"{b.mirror.url}{blob_path}") as response:
        assert response.status_code == 200
        chunks = response.aiter_raw(1 << 16)
        digest.update(await chunks.__anext__())
        dom = await trio.to_thread.run_sync(chromium, tmp_path, page_b, "--dump-dom")
        await trio.to_thread.run_sync(chromium, tmp_path, page_b, f"--screenshot={screenshot}")
        async for chunk in chunks:
            digest.update(chunk)
    assert f"sha256:{digest.hexdigest()}" == str(layer.digest)
    running = section(dom, "transfers")
    assert "Transfers running now (1)" in running
    assert str(layer.digest) in running and ">peer<" in running
    assert a.mirror.registry_addr in running  # the peer it streams from
    peers = section(dom, "peers")
    assert "Peers (1)" in peers and a.mirror.registry_addr in peers and ">heard<" in peers
    assert screenshot.stat().st_size > 10_000
    if (kept := os.environ.get("SPEGEL_DEBUG_WEB_SHOT")) is not None:
        shutil.copy(screenshot, kept)

    # Measure: B pulls the image through its own mirror; the layers come from A.
    measure_url = f"{page_b}measure?image={reference}"
    dom = await trio.to_thread.run_sync(chromium, tmp_path, measure_url, "--dump-dom")
    result = section(dom, "result")
    assert 'id="error"' not in dom
    rows = [row for row in result.split("<tr>") if "<td>layer</td>" in row]
    assert len(rows) == 2
    for row in rows:
        assert "<td>200</td>" in row and "<td>peer</td>" in row and a.mirror.registry_addr in row
    assert str(layer.digest) in result
    if (shot := os.environ.get("SPEGEL_DEBUG_WEB_MEASURE_SHOT")) is not None:
        await trio.to_thread.run_sync(chromium, tmp_path, measure_url, f"--screenshot={shot}")
