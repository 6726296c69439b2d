"""The netns cluster's network plan: addresses inside 198.18.0.0/15, names within limits, shaping commands."""

from __future__ import annotations

import ipaddress

import pytest

from benchmark.cluster.netplan import (
    INNER_IF,
    NETWORK,
    class_bytes,
    connected_peers,
    make_plan,
    setup_commands,
    shaping_commands,
    subnets,
    teardown_commands,
)

SUBNET = ipaddress.ip_network("198.19.7.0/24")


def test_addresses_and_names() -> None:
    plan = make_plan("sbab12", SUBNET, 64, upstream=50e6, node=400e6)
    addresses = [ipaddress.ip_address(e.address) for e in plan.endpoints] + [ipaddress.ip_address(plan.host_address)]
    assert len(set(addresses)) == len(addresses) == 67
    assert all(a in SUBNET and a in NETWORK for a in addresses)
    assert plan.upstream.address == "198.19.7.2" and plan.nodes[0].address == "198.19.7.10"
    names = [plan.bridge] + [e.host_if for e in plan.endpoints]
    assert all(len(n) <= 15 and n.startswith("sbab12-") for n in names)
    assert len(set(names)) == len(names)
    assert plan.upstream.upload == 50e6 and plan.upstream.download is None
    assert all(e.upload == e.download == 400e6 for e in plan.nodes)


def test_every_run_subnet_is_a_slash_24_of_the_benchmark_network() -> None:
    nets = subnets()
    assert len(nets) == 512 and all(n.prefixlen == 24 and n.subnet_of(NETWORK) for n in nets)


@pytest.mark.parametrize(
    ("prefix", "subnet", "nodes"),
    [
        ("toolong1", SUBNET, 2),
        ("a-b", SUBNET, 2),
        ("sb", ipaddress.ip_network("10.0.0.0/24"), 2),
        ("sb", ipaddress.ip_network("198.18.0.0/16"), 2),
        ("sb", SUBNET, 0),
    ],
)
def test_bad_plans_are_refused(prefix: str, subnet: ipaddress.IPv4Network, nodes: int) -> None:
    with pytest.raises(ValueError):
        make_plan(prefix, subnet, nodes, 1e6, 1e6)


def test_shaping_is_htb_with_large_burst_and_short_fifo() -> None:
    commands = [" ".join(c) for c in shaping_commands("eth0", 50e6)]
    assert commands == [
        "tc qdisc add dev eth0 root handle 1: htb default 10",
        "tc class add dev eth0 parent 1: classid 1:10 htb rate 50000000bit ceil 50000000bit burst 256k cburst 256k",
        "tc qdisc add dev eth0 parent 1:10 handle 10: bfifo limit 262144",
    ]
    assert "netem delay 5.000ms" in " ".join(shaping_commands("eth0", 1e6, latency=0.005)[2])


def test_setup_shapes_both_directions_of_nodes_and_upload_of_upstream() -> None:
    plan = make_plan("sb1", SUBNET, 2, upstream=50e6, node=400e6)
    commands = [" ".join(c) for c in setup_commands(plan)]
    assert commands[0] == "ip link add sb1-br type bridge"
    up_ns = f"ip netns exec {plan.upstream.netns} "
    assert up_ns + f"tc class add dev {INNER_IF} parent 1: classid 1:10 htb rate 50000000bit" in " ".join(commands)
    node = plan.nodes[1]
    shaped = [c for c in commands if "htb rate 400000000bit" in c]
    assert any(c.startswith(f"ip netns exec {node.netns} tc class add dev {INNER_IF}") for c in shaped)
    assert any(c.startswith(f"tc class add dev {node.host_if} ") for c in shaped)
    assert not any(c.startswith(f"tc class add dev {plan.upstream.host_if} ") for c in commands)
    # Every namespace is made before anything is done inside it.
    for ep in plan.endpoints:
        first_use = min(i for i, c in enumerate(commands) if f"netns exec {ep.netns} " in c)
        assert commands.index(f"ip netns add {ep.netns}") < first_use


def test_teardown_deletes_only_this_plans_names() -> None:
    plan = make_plan("sb9", SUBNET, 3, 1e6, 1e6)
    commands = teardown_commands(plan)
    assert all(c[-1].startswith("sb9-") for c in commands)
    assert {c[-1] for c in commands} == {e.netns for e in plan.endpoints} | {plan.bridge}


def test_class_bytes_from_tc_output() -> None:
    output = (
        "class htb 1:10 root leaf 10: prio 0 rate 50Mbit ceil 50Mbit burst 262125b cburst 262125b \n"
        " Sent 9608626 bytes 6395 pkt (dropped 0, overlimits 0 requeues 0) \n"
        " backlog 0b 0p requeues 0\n"
    )
    assert class_bytes(output) == 9608626
    with pytest.raises(ValueError, match="no htb class 1:20"):
        class_bytes(output, "1:20")


def test_without_root_the_netns_cluster_stops_with_one_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmark.cluster import netns
    from benchmark.cluster.base import ClusterError

    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterError, match=r"^the netns cluster needs root .*use the kind backend$"):
        netns.check_environment(latency=0)


def test_connected_peers_counts_both_directions_of_the_router_port() -> None:
    ss = (
        "0      0      198.18.7.9:5001     198.18.7.10:40312\n"  # n1 dialled us
        "0      0      198.18.7.9:51000    198.18.7.11:5001\n"  # we dialled n2
        "0      0      198.18.7.9:5000     198.18.7.12:40000\n"  # the registry port: not the router
        "garbage\n"
    )
    assert connected_peers(ss, 5001) == {"198.18.7.10", "198.18.7.11"}
    assert connected_peers("", 5001) == set()
