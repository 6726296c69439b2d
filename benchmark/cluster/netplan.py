"""The network of a netns cluster as data and as `ip`/`tc` commands (pure: nothing here runs a command).

Topology: a bridge in the root namespace holds the host address `198.18.K.1/24`; every endpoint (the nodes,
the upstream registry and the central cache) is a network namespace joined to the bridge by a veth pair whose
inner end is `eth0` with address `198.18.K.N/24`. All addresses lie in 198.18.0.0/15 (RFC 2544 benchmarking),
in one /24 per run so that concurrent runs never collide. Names start with a run-specific prefix, so a
run creates and deletes only its own namespaces and links.

Shaping is on the sending side of each veth, with HTB (`burst 256k`: the default burst loses 4 % at 1 Gbit/s)
and a 256 KiB bfifo below it (the default queue grows to several MB, adding hundreds of ms to each request):
- inside the namespace on `eth0`: what the endpoint sends (its upload: B for nodes, U for the upstream);
- in the root namespace on the host end: what the endpoint receives (its download: B).
Latency, when asked for, is a netem qdisc in place of the bfifo; kernels without netem refuse it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

NETWORK = ipaddress.ip_network("198.18.0.0/15")
INNER_IF = "eth0"
QUEUE_BYTES = 256 * 1024
HTB_BURST = "burst 256k cburst 256k"
MAX_PREFIX = 6  # interface names are at most 15 bytes: PREFIX + "-n" + up to 2 digits + slack


@dataclass(frozen=True)
class Endpoint:
    """One namespace on the bridge: `name` is its role (`n0`, `n1`, ..., `up`, `cache`)."""

    name: str
    netns: str
    host_if: str
    address: str
    upload: float  # bit/s sent by the endpoint
    download: float | None  # bit/s it receives; None: not shaped


@dataclass(frozen=True)
class NetPlan:
    prefix: str
    subnet: ipaddress.IPv4Network
    bridge: str
    host_address: str
    nodes: tuple[Endpoint, ...]
    upstream: Endpoint
    cache: Endpoint
    latency: float = 0.0

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return (self.upstream, self.cache, *self.nodes)


def subnets() -> list[ipaddress.IPv4Network]:
    """Every /24 a run may use (198.18.0.0/24 ... 198.19.255.0/24)."""
    return list(NETWORK.subnets(new_prefix=24))  # type: ignore[arg-type]


def make_plan(
    prefix: str, subnet: ipaddress.IPv4Network, nodes: int, upstream: float, node: float, latency: float = 0.0
) -> NetPlan:
    """Addresses and names for `nodes` nodes, the upstream (sends at `upstream` bit/s) and the cache."""
    if not prefix.isalnum() or not 1 <= len(prefix) <= MAX_PREFIX:
        raise ValueError(f"prefix must be 1-{MAX_PREFIX} letters or digits, got {prefix!r}")
    if not subnet.subnet_of(NETWORK) or subnet.prefixlen != 24:  # type: ignore[arg-type]
        raise ValueError(f"subnet must be a /24 inside {NETWORK}, got {subnet}")
    if not 1 <= nodes <= 200:
        raise ValueError(f"nodes must be in [1, 200], got {nodes}")
    hosts = list(subnet.hosts())

    def endpoint(name: str, index: int, up: float, down: float | None) -> Endpoint:
        return Endpoint(name, f"{prefix}-{name}", f"{prefix}-{name}", str(hosts[index]), up, down)

    return NetPlan(
        prefix=prefix,
        subnet=subnet,
        bridge=f"{prefix}-br",
        host_address=str(hosts[0]),
        upstream=endpoint("up", 1, upstream, None),
        cache=endpoint("cache", 2, node, node),
        nodes=tuple(endpoint(f"n{i}", 9 + i, node, node) for i in range(nodes)),
        latency=latency,
    )


def setup_commands(plan: NetPlan) -> list[list[str]]:
    """argv lists that build the network, in order (run as root; each must succeed)."""
    commands = [
        ["ip", "link", "add", plan.bridge, "type", "bridge"],
        ["ip", "addr", "add", f"{plan.host_address}/24", "dev", plan.bridge],
        ["ip", "link", "set", plan.bridge, "up"],
    ]
    for ep in plan.endpoints:
        in_ns = ["ip", "netns", "exec", ep.netns]
        commands += [
            ["ip", "netns", "add", ep.netns],
            ["ip", "link", "add", ep.host_if, "type", "veth", "peer", "name", INNER_IF, "netns", ep.netns],
            ["ip", "link", "set", ep.host_if, "master", plan.bridge, "up"],
            [*in_ns, "ip", "addr", "add", f"{ep.address}/24", "dev", INNER_IF],
            [*in_ns, "ip", "link", "set", INNER_IF, "up"],
            [*in_ns, "ip", "link", "set", "lo", "up"],
            *[[*in_ns, *c] for c in shaping_commands(INNER_IF, ep.upload, plan.latency)],
        ]
        if ep.download is not None:
            commands += shaping_commands(ep.host_if, ep.download, plan.latency)
    return commands


def shaping_commands(dev: str, rate: float, latency: float = 0.0) -> list[list[str]]:
    """HTB at `rate` bit/s on `dev`'s egress, with a short bfifo (or a netem delay of `latency` s) below it."""
    bits = f"{round(rate)}bit"
    leaf = (
        ["netem", "delay", f"{latency * 1000:.3f}ms", "limit", "10000"]
        if latency > 0
        else ["bfifo", "limit", str(QUEUE_BYTES)]
    )
    return [
        f"tc qdisc add dev {dev} root handle 1: htb default 10".split(),
        f"tc class add dev {dev} parent 1: classid 1:10 htb rate {bits} ceil {bits} {HTB_BURST}".split(),
        [*f"tc qdisc add dev {dev} parent 1:10 handle 10:".split(), *leaf],
    ]


def teardown_commands(plan: NetPlan) -> list[list[str]]:
    """argv lists that remove everything `setup_commands` made (each may fail if that part was never made).

    Deleting a namespace deletes the veth pair inside it; the host ends go with it.
    """
    return [*(["ip", "netns", "delete", ep.netns] for ep in plan.endpoints), ["ip", "link", "delete", plan.bridge]]


def class_bytes(tc_output: str, classid: str = "1:10") -> int:
    """The `Sent N bytes` counter of HTB class `classid` in the output of `tc -s class show` (tc 6.1 prints
    no JSON for HTB classes). Raises ValueError when the class is not there."""
    match = re.search(rf"^class htb {re.escape(classid)} .*\n\s*Sent (\d+) bytes", tc_output, re.MULTILINE)
    if match is None:
        raise ValueError(f"no htb class {classid} in tc output")
    return int(match[1])


def connected_peers(ss_output: str, port: int) -> set[str]:
    """The remote IPv4 addresses of the established TCP connections to or from `port` in the output of
    `ss -Htn state established` (columns: Recv-Q Send-Q Local:Port Peer:Port)."""
    peers = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local, remote = fields[2].rpartition(":"), fields[3].rpartition(":")
        if str(port) in (local[2], remote[2]):
            peers.add(remote[0])
    return peers
