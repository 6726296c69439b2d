"""Addresses taken from peers: registry addresses are HOST:PORT on the peer's own host (or a peer network), dial
targets are plain TCP multiaddrs on known hosts; unspecified hosts become the IP the node is seen at."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spegel.routing.libp2p.addresses import (
    AddressRefused,
    PeerAddressPolicy,
    is_unspecified,
    parse_networks,
    with_host_multiaddr,
)

POD_NETWORK = PeerAddressPolicy(parse_networks(["10.244.0.0/16", "fd00:10::/64"]))


@pytest.mark.parametrize(
    ("address", "seen", "expected"),
    [
        ("0.0.0.0:5000", "10.0.0.7", "10.0.0.7:5000"),
        (":5000", "10.0.0.7", "10.0.0.7:5000"),
        ("[::]:5000", "fd00::7", "[fd00::7]:5000"),
        ("0.0.0.0:5000", "fd00::7", "[fd00::7]:5000"),
        ("10.0.0.7:5000", "10.0.0.7", "10.0.0.7:5000"),
        ("[fd00::7]:5000", "fd00::7", "[fd00::7]:5000"),
    ],
)
def test_registry_address_on_the_peers_host(address: str, seen: str | None, expected: str) -> None:
    assert PeerAddressPolicy().registry_address(address, seen) == expected


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:18888/internal/admin?token=x#",  # the SSRF of issue 14: a path and query pasted into the URL
        "10.0.0.7:5000/v2",
        "10.0.0.7:5000?x",
        "10.0.0.7:5000#",
        "10.0.0.7:5000@evil",
        "user@10.0.0.7:5000",
        "node-a.example:5000",  # names resolve to anything
        "10.0.0.7",
        "10.0.0.7:0",
        "10.0.0.7:65536",
        "10.0.0.7:5000 ",
        "10.0.0.1:5000",  # another host
        "[fd00::1]:5000",
        "0.0.0.0:5000\n",
        "",
    ],
)
def test_registry_address_refused(address: str) -> None:
    with pytest.raises(AddressRefused):
        PeerAddressPolicy().registry_address(address, "10.0.0.7")


def test_unspecified_registry_host_needs_the_peers_address() -> None:
    with pytest.raises(AddressRefused):
        PeerAddressPolicy().registry_address(":5000", None)


def test_peer_networks_allow_other_hosts_inside_them_only() -> None:
    assert POD_NETWORK.registry_address("10.244.3.9:5000", "10.0.0.7") == "10.244.3.9:5000"
    assert POD_NETWORK.registry_address("[fd00:10::9]:5000", "10.0.0.7") == "[fd00:10::9]:5000"
    with pytest.raises(AddressRefused):
        POD_NETWORK.registry_address("10.245.0.1:5000", "10.0.0.7")


@given(st.text(max_size=60), st.sampled_from(["10.0.0.7", "fd00::7", None]))
def test_a_registry_address_is_always_a_bare_host_and_port(address: str, seen: str | None) -> None:
    """Whatever a peer announces, what is used is `IP:PORT` of the peer's own host (or refused)."""
    try:
        result = PeerAddressPolicy().registry_address(address, seen)
    except AddressRefused:
        return
    host, _, port = result.rpartition(":")
    assert ipaddress.ip_address(host.strip("[]")) == ipaddress.ip_address(seen)
    assert port.isdigit() and 0 < int(port) < 65536


KNOWN = {ipaddress.ip_address("10.0.0.7")}


@pytest.mark.parametrize(
    ("addr", "allowed"),
    [
        ("/ip4/10.0.0.7/tcp/5001", True),
        ("/ip4/10.0.0.7/tcp/5001/p2p/12D3KooWabc", True),
        ("/ip4/10.0.0.8/tcp/5001", False),  # not a known host
        ("/ip4/10.0.0.7/udp/5001", False),
        ("/ip4/10.0.0.7/tcp/5001/ws", False),
        ("/ip4/10.0.0.7/tcp/5001/p2p-circuit", False),
        ("/dns4/10.0.0.7/tcp/5001", False),
        ("/ip6/10.0.0.7/tcp/5001", False),
        ("/ip4/10.0.0.7/tcp/0", False),
        ("/ip4/0.0.0.0/tcp/5001", False),
        ("/ip4/224.0.0.1/tcp/5001", False),
        ("not a multiaddr", False),
    ],
)
def test_may_dial_known_hosts_only(addr: str, allowed: bool) -> None:
    assert PeerAddressPolicy().may_dial(addr, KNOWN) is allowed


def test_may_dial_inside_the_peer_networks() -> None:
    assert POD_NETWORK.may_dial("/ip4/10.244.9.9/tcp/5001", set())
    assert POD_NETWORK.may_dial("/ip6/fd00:10::9/tcp/5001", set())
    assert not POD_NETWORK.may_dial("/ip4/10.245.9.9/tcp/5001", set())


def test_parse_networks_names_a_bad_one() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])


@pytest.mark.parametrize(
    ("addr", "seen", "expected"),
    [
        ("/ip4/0.0.0.0/tcp/5001", "10.0.0.7", "/ip4/10.0.0.7/tcp/5001"),
        ("/ip4/0.0.0.0/tcp/5001/p2p/12D3Koo", "10.0.0.7", "/ip4/10.0.0.7/tcp/5001/p2p/12D3Koo"),
        ("/ip6/::/tcp/5001", "fd00::7", "/ip6/fd00::7/tcp/5001"),
        ("/ip4/0.0.0.0/tcp/5001", "fd00::7", "/ip6/fd00::7/tcp/5001"),
        ("/ip4/10.0.0.1/tcp/5001", "10.0.0.7", "/ip4/10.0.0.1/tcp/5001"),
        ("/ip4/0.0.0.0/tcp/5001", "not-an-ip", "/ip4/0.0.0.0/tcp/5001"),
        ("/ip4/0.0.0.0/tcp/5001", None, "/ip4/0.0.0.0/tcp/5001"),
        ("/dns4/x/tcp/5001", "10.0.0.7", "/dns4/x/tcp/5001"),
    ],
)
def test_with_host_multiaddr(addr: str, seen: str | None, expected: str) -> None:
    assert with_host_multiaddr(addr, seen) == expected


def test_is_unspecified() -> None:
    assert is_unspecified("0.0.0.0") and is_unspecified("::")
    assert not is_unspecified("127.0.0.1") and not is_unspecified("name")
