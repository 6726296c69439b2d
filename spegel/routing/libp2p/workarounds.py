"""Every workaround for a py-libp2p defect, in one place. Each has a test in tests/integration/test_libp2p_defects.py
that shows the defect and fails when a new library version changes it (the version is pinned in pyproject.toml).

1. `Swarm.dial_peer` waits a fixed 250 ms (a happy-eyeballs head start) after starting a dial even when the dial
   succeeded at once, unless the dial reaches `max_connections_per_peer`, which cancels the wait: dial with
   `max_connections_per_peer=1` (`dial_connection_config`).
2. Provider records live a fixed 48 h (`PROVIDER_RECORD_EXPIRATION_INTERVAL`, a module constant, read at every
   lookup): `set_provider_record_ttl` sets it, so a vanished node's records age out on our schedule.
3. A DHT server accepts 10 ADD_PROVIDER messages per 10 s from one peer and silently drops the rest (the sender
   sees success), and resets inbound DHT streams beyond 12 at once: `relax_dht_server_limits` raises both on our
   own servers, whose clients are the cluster's nodes only.
4. `KadDHT(protocol_prefix=...)` is accepted and ignored: the DHT always speaks `/ipfs/kad/1.0.0`. No workaround;
   cluster isolation comes from the private network key (PSK) and from only dialling cluster peers.
"""

from __future__ import annotations

from libp2p.kad_dht import provider_store
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.network.config import ConnectionConfig


def dial_connection_config() -> ConnectionConfig:
    """Connection settings whose dials return as soon as one connection is up (no fixed 250 ms wait)."""
    return ConnectionConfig(max_connections_per_peer=1)


def set_provider_record_ttl(seconds: float) -> None:
    """Make DHT provider records (stored by this process) expire `seconds` after they were last provided."""
    if seconds <= 0:
        raise ValueError(f"provider record ttl must be positive, got {seconds}")
    provider_store.PROVIDER_RECORD_EXPIRATION_INTERVAL = seconds


def relax_dht_server_limits(dht: KadDHT, add_provider_per_10s: int = 10_000, inbound_streams: int = 256) -> None:
    """Let `dht` accept `add_provider_per_10s` ADD_PROVIDER per peer per 10 s and that many concurrent streams."""
    dht._provider_rate_max = add_provider_per_10s
    dht._inbound_limiter.total_tokens = inbound_streams
