"""The libp2p host: TCP + Noise (only) + yamux, a persistent Ed25519 identity, an optional private network key.

`build_host` makes the host; `load_identity` keeps the node's key in `--data-dir` so a restarted node keeps its
peer id; `read_psk_file` reads a libp2p private network key file; `learn_peer_id` finds out who listens at an
address given without `/p2p/<id>` (a bootstrap peer, or a DNS answer); `restrict_dials` makes the host refuse to
dial addresses a check rejects (peer exchange, the DHT); `connected_ips` lists the hosts of open connections.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.exceptions import SwarmException
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.pnet.protector import new_protected_conn
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL
from libp2p.stream_muxer.yamux.yamux import Yamux

from spegel.routing.base import RouterConfigError
from spegel.routing.libp2p.addresses import IPAddress
from spegel.routing.libp2p.workarounds import dial_connection_config, stop_auto_dialling

IDENTITY_FILE = "identity.key"
_PSK_HEADER = "/key/swarm/psk/1.0.0/"


def load_identity(data_dir: str | os.PathLike[str]) -> KeyPair:
    """The Ed25519 key pair in `data_dir/identity.key`, created (mode 0600) on first use."""
    path = Path(data_dir) / IDENTITY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _create_identity(path)
    except OSError as exc:
        raise RouterConfigError(f"cannot read identity {path}: {exc.strerror}") from None
    try:
        private = deserialize_private_key(data)
    except Exception:
        raise RouterConfigError(f"identity {path} is not a libp2p private key") from None
    if private.get_type() is not KeyType.Ed25519:
        raise RouterConfigError(f"identity {path} is a {private.get_type().name} key, want Ed25519")
    return KeyPair(private, private.get_public_key())


def _create_identity(path: Path) -> KeyPair:
    key_pair = create_new_key_pair()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(key_pair.private_key.serialize())
        temporary.replace(path)
    except OSError as exc:
        raise RouterConfigError(f"cannot write identity {path}: {exc.strerror}") from None
    return key_pair


def parse_psk(text: str) -> str:
    """The 32-byte key (64 hex digits) in a private network key file's text.

    Accepts the libp2p format (`/key/swarm/psk/1.0.0/`, `/base16/`, hex) or the bare hex line.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and lines[0] == _PSK_HEADER:
        if len(lines) != 3 or lines[1] != "/base16/":
            raise RouterConfigError("private network key: want /key/swarm/psk/1.0.0/, /base16/, then 64 hex digits")
        lines = lines[2:]
    if len(lines) != 1 or not re.fullmatch(r"[0-9a-fA-F]{64}", lines[0]):
        raise RouterConfigError("private network key: want 64 hex digits (32 bytes)")
    return lines[0].lower()


def read_psk_file(path: str | os.PathLike[str]) -> str:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RouterConfigError(f"cannot read private network key {path}: {exc}") from None
    return parse_psk(text)


def listen_multiaddr(address: str) -> multiaddr.Multiaddr:
    """`HOST:PORT`, `:PORT` or `[V6]:PORT` as a TCP multiaddr (`:PORT` listens on all IPv4 interfaces)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise RouterConfigError(f"invalid router address {address!r}: want HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise RouterConfigError(f"invalid router address {address!r}: HOST must be an IP address") from None
    return multiaddr.Multiaddr(f"/ip{ip.version}/{ip}/tcp/{int(port)}")


def build_host(key_pair: KeyPair, psk: str | None = None) -> IHost:
    """A host that speaks TCP, Noise and yamux only; with `psk`, only to members of that private network. It dials
    only when asked to (see `workarounds.stop_auto_dialling`)."""
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL): Yamux},
        psk=psk,
        connection_config=dial_connection_config(),
    )
    stop_auto_dialling(host)
    return host


def restrict_dials(host: IHost, allowed: Callable[[multiaddr.Multiaddr], bool]) -> None:
    """Make `host` refuse (SwarmException, no connection attempted) every dial of an address `allowed` rejects.

    Every outgoing connection of py-libp2p 0.8's swarm (`connect`, a DHT query's `new_stream`) goes through its
    `_dial_with_retry`, which this wraps on the instance (the version is pinned in pyproject.toml; the test in
    tests/integration/test_libp2p_security.py fails if a dial slips past).
    """
    swarm = host.get_network()
    if not isinstance(swarm, Swarm):
        raise TypeError(f"cannot restrict the dials of a {type(swarm).__name__}")
    dial = swarm._dial_with_retry

    async def checked_dial(addr: multiaddr.Multiaddr, peer_id: ID, source: tuple[str, int] | None = None) -> INetConn:
        if not allowed(addr):
            raise SwarmException(f"refusing to dial {addr}: not a cluster address")
        return await dial(addr, peer_id, source)

    swarm._dial_with_retry = checked_dial  # type: ignore[method-assign]


def connected_ips(host: IHost) -> set[IPAddress]:
    """The remote IPs of `host`'s open connections."""
    ips: set[IPAddress] = set()
    for conn in host.get_network().get_connections():
        muxed = conn.muxed_conn
        remote = muxed.get_remote_address() if isinstance(muxed, Yamux) else None  # yamux: the only muxer
        if remote:
            try:
                ips.add(ipaddress.ip_address(remote[0]))
            except ValueError:
                continue
    return ips


async def close_host(host: IHost, timeout: float = 5.0) -> None:
    """Close `host`'s connections and listeners; call it inside `host.run()`. Bounded, shielded from cancellation.

    Leaving `host.run()` alone left a router's connections open (its peers kept listing it as connected until the
    process ended), so the router closes explicitly.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(timeout):
        await host.get_network().close()


async def learn_peer_id(host: IHost, addr: multiaddr.Multiaddr, timeout: float) -> ID:
    """The peer id of whoever listens at `addr` (no `/p2p` part), by a Noise handshake on a throwaway connection.

    Raises OSError-like `ConnectionError` when nobody answers or the handshake fails within `timeout` seconds.
    """
    swarm = host.get_network()
    if not isinstance(swarm, Swarm):
        raise TypeError(f"{host} is not a host of build_host (its network is a {type(swarm).__name__})")
    transport = swarm.transport_manager.transport_for_dialing(addr)
    if transport is None:
        raise ConnectionError(f"cannot dial {addr}")
    raw = None
    try:
        with trio.fail_after(timeout):
            raw = await transport.dial(addr)
            if swarm.psk is not None:
                raw = new_protected_conn(raw, swarm.psk)
            # The peer id is what we want to learn: Noise accepts None (not checked), the annotation says ID.
            secured = await swarm.upgrader.security_multistream.secure_outbound(raw, None)  # type: ignore[arg-type]
            return secured.get_remote_peer()
    except trio.TooSlowError:
        raise ConnectionError(f"no handshake with {addr} within {timeout}s") from None
    except Exception as exc:
        raise ConnectionError(f"handshake with {addr} failed: {exc}") from None
    finally:
        if raw is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await raw.close()
