"""Waiting on real mirrors in end-to-end tests."""

from __future__ import annotations

import httpx
import trio

from benchmark.daemons import LoopbackNode


async def wait_until_served(node: LoopbackNode, url_path: str, timeout: float = 90.0) -> None:
    """Until `node`'s mirror answers `url_path` (a HEAD) with 200, e.g. once a peer's advertisements reached it."""
    async with httpx.AsyncClient(timeout=5) as client:
        with trio.fail_after(timeout):
            while (await client.head(f"{node.mirror.url}{url_path}")).status_code != 200:
                await trio.sleep(0.1)
