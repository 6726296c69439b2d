"""Unspecified hosts in announced addresses are replaced by the IP the node is seen at."""

import pytest

from spegel.routing.libp2p.addresses import is_unspecified, with_host, with_host_multiaddr


@pytest.mark.parametrize(
    ("address", "seen", "expected"),
    [
        ("0.0.0.0:5000", "10.0.0.7", "10.0.0.7:5000"),
        (":5000", "10.0.0.7", "10.0.0.7:5000"),
        ("[::]:5000", "fd00::7", "[fd00::7]:5000"),
        ("0.0.0.0:5000", "fd00::7", "[fd00::7]:5000"),
        ("10.0.0.1:5000", "10.0.0.7", "10.0.0.1:5000"),
        ("[fd00::1]:5000", "10.0.0.7", "[fd00::1]:5000"),
        ("node-a.example:5000", "10.0.0.7", "node-a.example:5000"),
        ("0.0.0.0:5000", None, "0.0.0.0:5000"),
        ("no-port", "10.0.0.7", "no-port"),
    ],
)
def test_with_host(address: str, seen: str | None, expected: str) -> None:
    assert with_host(address, seen) == expected


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
