"""Bootstrap pieces that need no network: the retry schedule and multiaddr parsing."""

import itertools
import random

import pytest

from spegel.routing.libp2p.bootstrap import BootstrapError, StaticBootstrapper, backoff_delays, parse_multiaddrs
from spegel.routing.libp2p.host import RouterConfigError, listen_multiaddr, parse_psk


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    delays = list(itertools.islice(backoff_delays(first=1, cap=8, rng=random.Random(1)), 7))
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8, 8], strict=True):
        assert 0.8 * nominal <= delay <= 1.2 * nominal


def test_parse_multiaddrs() -> None:
    addrs = parse_multiaddrs(
        ["/ip4/10.0.0.1/tcp/5001", "", "  /ip6/::1/tcp/5001/p2p/12D3KooWGJ69AYrWgdxE4AiCfwvtEXbm6jWE85VT6nJPtyhfMGsp "]
    )
    assert len(addrs) == 2
    assert str(addrs[0]) == "/ip4/10.0.0.1/tcp/5001"
    assert addrs[1].get_peer_id() == "12D3KooWGJ69AYrWgdxE4AiCfwvtEXbm6jWE85VT6nJPtyhfMGsp"
    with pytest.raises(BootstrapError, match="invalid multiaddr 'nope'"):
        parse_multiaddrs(["nope"])


async def test_static_bootstrapper_answers_its_list() -> None:
    addrs = parse_multiaddrs(["/ip4/10.0.0.1/tcp/5001"])
    assert await StaticBootstrapper(addrs).candidates() == addrs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":5001", "/ip4/0.0.0.0/tcp/5001"),
        ("127.0.0.2:0", "/ip4/127.0.0.2/tcp/0"),
        ("[::1]:5001", "/ip6/::1/tcp/5001"),
    ],
)
def test_listen_multiaddr(text: str, expected: str) -> None:
    assert str(listen_multiaddr(text)) == expected


@pytest.mark.parametrize("text", ["5001", "host:5001", ":99999", ":x"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(RouterConfigError):
        listen_multiaddr(text)


def test_psk_formats() -> None:
    key = "ab" * 32
    assert parse_psk(f"/key/swarm/psk/1.0.0/\n/base16/\n{key}\n") == key
    assert parse_psk(f"  {key.upper()}\n") == key
    for bad in ["", "/key/swarm/psk/1.0.0/\n/base64/\nxyz\n", "ab" * 31, key + "\n" + key]:
        with pytest.raises(RouterConfigError):
            parse_psk(bad)
