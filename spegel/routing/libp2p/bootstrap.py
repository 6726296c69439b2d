"""Where to find the cluster: static multiaddrs, the A/AAAA records of a DNS name, or another node's HTTP `/id`.

A `Bootstrapper` answers with candidate multiaddrs, each with or without `/p2p/<id>` (the router learns a missing
id on connect). `serve_id` is the HTTP side: it answers `GET /id` with this node's multiaddrs, one a line.
`backoff_delays` is the retry schedule the router follows until it is connected.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable, Iterator
from typing import Protocol

import httpx
import multiaddr
import trio

from spegel.routing.libp2p.addresses import with_host_multiaddr


class BootstrapError(Exception):
    """A bootstrap source that cannot answer now (the router retries) or is misconfigured."""


class Bootstrapper(Protocol):
    async def candidates(self) -> list[multiaddr.Multiaddr]:
        """Multiaddrs to dial; raises BootstrapError when the source cannot answer."""
        ...


def parse_multiaddrs(lines: list[str]) -> list[multiaddr.Multiaddr]:
    """Multiaddrs from text, blank lines skipped; raises BootstrapError naming the first bad one."""
    result = []
    for line in (text.strip() for text in lines):
        if not line:
            continue
        try:
            result.append(multiaddr.Multiaddr(line))
        except Exception:
            raise BootstrapError(f"invalid multiaddr {line!r}") from None
    return result


class StaticBootstrapper:
    def __init__(self, addrs: list[multiaddr.Multiaddr]) -> None:
        self._addrs = list(addrs)

    async def candidates(self) -> list[multiaddr.Multiaddr]:
        await trio.lowlevel.checkpoint()
        return list(self._addrs)


class DnsBootstrapper:
    """The A and AAAA records of `domain` (e.g. a headless Service), each at TCP `port`."""

    def __init__(self, domain: str, port: int) -> None:
        self._domain = domain
        self._port = port

    async def candidates(self) -> list[multiaddr.Multiaddr]:
        try:
            with trio.fail_after(5):
                answers = await trio.socket.getaddrinfo(self._domain, self._port, type=socket.SOCK_STREAM)
        except (OSError, trio.TooSlowError) as exc:
            raise BootstrapError(f"cannot resolve {self._domain}: {exc}") from None
        result: list[multiaddr.Multiaddr] = []
        for _family, _type, _proto, _name, sockaddr in answers:
            ip = ipaddress.ip_address(sockaddr[0])
            addr = multiaddr.Multiaddr(f"/ip{ip.version}/{ip}/tcp/{self._port}")
            if addr not in result:
                result.append(addr)
        return result


class HttpBootstrapper:
    """The multiaddrs another node serves at `url` (its `/id`); an unspecified IP in them (the node listens on all
    interfaces) becomes the IP the URL's host resolves to."""

    def __init__(self, url: str) -> None:
        self._url = url

    async def candidates(self) -> list[multiaddr.Multiaddr]:
        try:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
                response = await client.get(self._url)
        except httpx.HTTPError as exc:
            raise BootstrapError(f"cannot fetch {self._url}: {exc}") from None
        if response.status_code != 200:
            raise BootstrapError(f"{self._url} answered {response.status_code}")
        lines = response.text.splitlines()
        if any("/0.0.0.0/" in line or "/::/" in line for line in lines):
            seen_ip = await _resolve_one(response.url.host)
            lines = [with_host_multiaddr(line.strip(), seen_ip) for line in lines]
        return parse_multiaddrs(lines)


async def _resolve_one(host: str) -> str:
    try:
        with trio.fail_after(5):
            answers = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, trio.TooSlowError) as exc:
        raise BootstrapError(f"cannot resolve {host}: {exc}") from None
    return str(answers[0][4][0])


async def serve_id(
    addrs: Callable[[], list[str]], bind: str, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve `GET /id` (this node's multiaddrs from `addrs()`, one a line) on `bind` until cancelled."""
    from quart import Response
    from quart_trio import QuartTrio

    from spegel.registry.server import serve_app

    app = QuartTrio("spegel.bootstrap")

    @app.route("/id")
    async def identity() -> Response:
        return Response("".join(f"{addr}\n" for addr in addrs()), content_type="text/plain; charset=utf-8")

    await serve_app(app, bind, task_status=task_status)


def backoff_delays(first: float = 0.25, cap: float = 30.0, rng: random.Random | None = None) -> Iterator[float]:
    """Retry delays: doubling from `first` up to `cap`, each with ±20% jitter; endless (the caller bounds it)."""
    rng = rng or random.Random()
    delay = first
    while True:
        yield delay * rng.uniform(0.8, 1.2)
        delay = min(delay * 2, cap)
