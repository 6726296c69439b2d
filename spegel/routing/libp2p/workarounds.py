"""Every workaround for a py-libp2p defect, in one place. Each has a test in tests/integration/test_libp2p_defects.py
that shows the defect and fails when a new library version changes it (the version is pinned in pyproject.toml).

1. `Swarm.dial_peer` waits a fixed 250 ms (a happy-eyeballs head start) after starting a dial even when the dial
   succeeded at once, unless the dial reaches `max_connections_per_peer`, which cancels the wait: dial with
   `max_connections_per_peer=1` (`dial_connection_config`).
2. Provider records live a fixed 48 h (`PROVIDER_RECORD_EXPIRATION_INTERVAL`, a module constant, read at every
   lookup): `set_provider_record_ttl` sets it, so a vanished node's records age out on our schedule.
3. A DHT server accepts 10 ADD_PROVIDER messages per 10 s from one peer and silently drops the rest (the sender
   sees success), and resets inbound DHT streams beyond 12 at once: `relax_dht_server_limits` raises both on our
   own servers to what the cluster's nodes send (the router passes three times its own provide rate).
4. `KadDHT(protocol_prefix=...)` is accepted and ignored: the DHT always speaks `/ipfs/kad/1.0.0`. No workaround;
   cluster isolation comes from the private network key (PSK) and from only dialling cluster peers.
5. Cancelling a stream write part-way (e.g. a DHT query under a caller's 20 ms timeout) breaks the whole
   connection: it is closed but stays listed, so every stream to that peer fails until a new dial. So no caller's
   deadline may cancel libp2p I/O: `DetachedCalls` runs such calls in background tasks the caller only waits on.
6. A DHT server logs a warning ("Failed to read DHT message from stream: ") each time a client closes a stream
   after a fire-and-forget ADD_PROVIDER, i.e. for every provider record it receives: `quiet_dht_eof_warnings`
   drops exactly that warning (with an empty error), not others.
7. The swarm's auto-connector dials peers from the peer store (every peer the DHT or the router learnt of) until
   the host holds 150 connections, and setting its watermarks to 0 makes the pruner close every connection:
   `stop_auto_dialling` replaces its dial round by one that does nothing, so the host dials only when asked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio
from libp2p.abc import IHost
from libp2p.kad_dht import provider_store
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.network.config import ConnectionConfig


def dial_connection_config() -> ConnectionConfig:
    """Connection settings whose dials return as soon as one connection is up (no fixed 250 ms wait)."""
    return ConnectionConfig(max_connections_per_peer=1)


def stop_auto_dialling(host: IHost) -> None:
    """Keep `host`'s swarm from dialling peers of its own: its auto-connector dials every peer in the peer store
    until the host has 150 connections (the midpoint of its watermarks; it cannot be turned off by configuration
    without also making the pruner close every connection), which would undo the overlay's bounded links."""

    async def no_dials() -> None:
        return None

    host.get_network().auto_connector.maybe_connect = no_dials  # type: ignore[attr-defined]


LIBRARY_PROVIDER_RECORD_TTL = provider_store.PROVIDER_RECORD_EXPIRATION_INTERVAL  # as shipped, before any change


def set_provider_record_ttl(seconds: float) -> None:
    """Make DHT provider records (stored by this process) expire `seconds` (rounded up to whole seconds, the
    library's unit) after they were last provided."""
    if seconds <= 0:
        raise ValueError(f"provider record ttl must be positive, got {seconds}")
    provider_store.PROVIDER_RECORD_EXPIRATION_INTERVAL = math.ceil(seconds)


def relax_dht_server_limits(dht: KadDHT, add_provider_per_10s: int = 30, inbound_streams: int = 256) -> None:
    """Let `dht` accept `add_provider_per_10s` ADD_PROVIDER per peer per 10 s and that many concurrent streams."""
    dht._provider_rate_max = add_provider_per_10s
    dht._inbound_limiter.total_tokens = inbound_streams


DHT_LOGGER = "libp2p.kad_dht.kad_dht"
_EOF_WARNING = "Failed to read DHT message from stream: %s"


class _DropEofWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _EOF_WARNING and isinstance(record.args, tuple) and str(record.args[0]) == "")


def quiet_dht_eof_warnings() -> None:
    """Drop the DHT server's warning about a client closing its stream after its last message (idempotent)."""
    logger = logging.getLogger(DHT_LOGGER)
    if not any(isinstance(f, _DropEofWarnings) for f in logger.filters):
        logger.addFilter(_DropEofWarnings())


T = TypeVar("T")


class DetachedCalls(Generic[T]):
    """Background calls that callers wait for with their own deadline, never cancelling the call itself.

    Callers asking for the same `key` while a call runs share it. At most `limit` calls run at once; beyond that,
    `wait` answers `default` at once. Each call is still bounded by `bound` seconds (a last resort only).
    """

    def __init__(self, nursery: trio.Nursery, limit: int, bound: float, default: T) -> None:
        self._nursery = nursery
        self._limit = limit
        self._bound = bound
        self._default = default
        self._running: dict[Hashable, tuple[trio.Event, list[T]]] = {}

    async def wait(self, key: Hashable, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        """The result of `call()` (or of the running call for `key`), or `default` if not done by `deadline`."""
        running = self._running.get(key)
        if running is None:
            if len(self._running) >= self._limit:
                await trio.lowlevel.checkpoint()
                return self._default
            running = self._running[key] = (trio.Event(), [])
            self._nursery.start_soon(self._run, key, call, running)
        done, result = running
        with trio.move_on_at(deadline):
            await done.wait()
        return result[0] if result else self._default

    async def _run(self, key: Hashable, call: Callable[[], Awaitable[T]], running: tuple[trio.Event, list[T]]) -> None:
        done, result = running
        try:
            with trio.move_on_after(self._bound):
                result.append(await call())
        except Exception:
            pass  # a failed call answers `default`, like a slow one
        finally:
            del self._running[key]
            done.set()
