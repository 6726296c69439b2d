"""Which addresses a node takes from its peers (pure): registry addresses to fetch from, multiaddrs to dial.

Peers are untrusted: what they announce is checked before any connection is made to it.

- A peer's registry address is `host:port` only (an IP literal, `[v6]` bracketed, or empty/unspecified for "the
  address I connect from"), nothing else: a path, query or name is refused. Its host must be the IP the peer's
  connection comes from, or lie inside one of the configured peer networks (`--router-peer-networks`, e.g. the
  pod CIDR): a peer cannot make this node send requests to a third host.
- A multiaddr to dial (peer exchange, a peer's listen addresses, the DHT) is `/ip4|ip6/<ip>/tcp/<port>`, optionally
  followed by `/p2p/<id>`, with an IP that is already known to be a cluster host (a bootstrap host, the host of a
  connected peer) or lies inside the peer networks.

A node listening on `0.0.0.0` or `::` announces that unspecified IP; whoever receives the announcement replaces it
by the IP it sees the node at (the remote end of the connection, or the host it fetched the announcement from).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9a-fA-F:.]{2,45})\]|(?P<v4>[0-9.]{0,15})):(?P<port>[0-9]{1,5})")


class AddressRefused(ValueError):
    """An address a peer gave that this node will not use."""


def is_unspecified(host: str) -> bool:
    """Whether `host` is the IPv4 or IPv6 unspecified address (`0.0.0.0`, `::`)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (`10.244.0.0/16`, `fd00::/64`); raises ValueError naming the first bad one."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"invalid network {text!r}: want a CIDR such as 10.244.0.0/16") from None
    return tuple(networks)


class PeerAddressPolicy:
    """The checks above, for one node. `networks` are the peer networks (empty: peers' own hosts only)."""

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks = tuple(networks)

    def in_networks(self, ip: IPAddress) -> bool:
        return any(ip.version == network.version and ip in network for network in self.networks)

    def registry_address(self, announced: str, seen_ip: str | None, known: Collection[IPAddress] = ()) -> str:
        """The `host:port` to fetch from a peer that announced `announced` and connects from `seen_ip` (None: the
        announcement was passed on by another peer).

        An empty or unspecified host becomes `seen_ip`. Raises AddressRefused for anything but an IP and a port,
        and for a host other than `seen_ip` that is neither `known` (cluster hosts) nor in the peer networks.
        """
        match = _HOST_PORT.fullmatch(announced)
        if match is None or not 0 < int(match["port"]) < 65536:
            raise AddressRefused(f"registry address {announced[:100]!r} is not HOST:PORT")
        host = match["v6"] if match["v6"] is not None else match["v4"]
        seen = _ip(seen_ip) if seen_ip else None
        try:
            ip = seen if (not host or is_unspecified(host)) else ipaddress.ip_address(host)
        except ValueError:
            raise AddressRefused(f"registry address {announced[:100]!r}: host is not an IP address") from None
        if ip is None:
            raise AddressRefused(f"registry address {announced[:100]!r} has no host and the peer's is not known")
        if ip != seen and ip not in known and not self.in_networks(ip):
            raise AddressRefused(f"registry address {announced[:100]!r} is not on the peer's host {seen_ip}")
        port = int(match["port"])
        return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"

    def dial_ip(self, addr: str) -> IPAddress:
        """The IP of a dialable multiaddr (`/ip4|ip6/<ip>/tcp/<port>[/p2p/<id>]`); AddressRefused otherwise."""
        parts = addr.split("/")
        if not (len(parts) in (5, 7) and parts[0] == "" and parts[1] in ("ip4", "ip6") and parts[3] == "tcp"):
            raise AddressRefused(f"multiaddr {addr[:100]!r} is not /ip4|ip6/<ip>/tcp/<port>")
        if len(parts) == 7 and (parts[5] != "p2p" or not parts[6].isalnum()):
            raise AddressRefused(f"multiaddr {addr[:100]!r} has more than a /p2p/<id> after the port")
        ip = _ip(parts[2])
        port = parts[4]
        if ip is None or f"ip{ip.version}" != parts[1] or not (port.isdigit() and 0 < int(port) < 65536):
            raise AddressRefused(f"multiaddr {addr[:100]!r} has a bad IP or port")
        if ip.is_unspecified or ip.is_multicast:
            raise AddressRefused(f"multiaddr {addr[:100]!r} is not a host")
        return ip

    def may_dial(self, addr: str, known: Collection[IPAddress]) -> bool:
        """Whether `addr` is dialable (see `dial_ip`) on a host in `known` or inside the peer networks."""
        try:
            ip = self.dial_ip(addr)
        except AddressRefused:
            return False
        return ip in known or self.in_networks(ip)


def _ip(text: str | None) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text) if text else None
    except ValueError:
        return None


def with_host_multiaddr(addr: str, seen_ip: str | None) -> str:
    """A multiaddr (text) whose leading unspecified `/ip4` or `/ip6` part is replaced by `seen_ip`."""
    parts = addr.split("/")
    if seen_ip and len(parts) > 2 and parts[1] in ("ip4", "ip6") and is_unspecified(parts[2]):
        try:
            version = ipaddress.ip_address(seen_ip).version
        except ValueError:
            return addr
        parts[1:3] = [f"ip{version}", seen_ip]
    return "/".join(parts)
