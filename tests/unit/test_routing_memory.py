"""The in-memory router follows the Router contract."""

import pytest

from spegel.routing.base import Holder, KeyState
from spegel.routing.memory import MemoryNetwork


async def test_routers_see_each_other() -> None:
    network = MemoryNetwork()
    a, b, c = (network.join(f"10.0.0.{n}:5000") for n in (1, 2, 3))
    assert a.ready()
    await a.advertise(["sha256:aa", "docker.io/library/x:1"])
    await b.advertise(["sha256:aa"], KeyState.IN_PROGRESS, available=1024)
    assert await c.lookup("sha256:aa", 3, 0.02) == [
        Holder("10.0.0.1:5000"),
        Holder("10.0.0.2:5000", KeyState.IN_PROGRESS, 1024),
    ]
    assert await a.lookup("sha256:aa", 3, 0.02) == [Holder("10.0.0.2:5000", KeyState.IN_PROGRESS, 1024)]
    assert await c.lookup("sha256:none", 3, 0.02) == []


async def test_withdraw_and_leave() -> None:
    network = MemoryNetwork()
    a, b = network.join("a:1"), network.join("b:1")
    await a.advertise(["k1", "k2"])
    await a.withdraw(["k1"])
    assert await b.lookup("k1", 1, 0.02) == []
    assert await b.lookup("k2", 1, 0.02) == [Holder("a:1")]
    a.leave()
    assert await b.lookup("k2", 1, 0.02) == []
    assert not b.ready()


def test_an_address_joins_once() -> None:
    network = MemoryNetwork()
    network.join("a:1")
    with pytest.raises(ValueError):
        network.join("a:1")
