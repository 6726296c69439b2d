from spegel.mirror.policy import LatencyTracker, RegistryFilters, order_holders
from spegel.routing.base import Holder, KeyState


def test_complete_holders_come_first_then_least_loaded_then_most_available() -> None:
    holders = [
        Holder("a:1", KeyState.IN_PROGRESS, available=10),
        Holder("b:1", KeyState.IN_PROGRESS, available=500),
        Holder("c:1"),
        Holder("d:1"),
    ]
    ordered = order_holders(holders, {"c:1": 2, "d:1": 0})
    assert [h.address for h in ordered] == ["d:1", "c:1", "b:1", "a:1"]


def test_equal_holders_are_spread_by_the_rotation() -> None:
    holders = [Holder("a:1"), Holder("b:1"), Holder("c:1")]
    firsts = [order_holders(holders, {}, rotation)[0].address for rotation in range(6)]
    assert firsts == ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1"]
    assert order_holders(holders, {"b:1": 1}, 1)[0].address == "c:1"


def test_hedge_delay_is_the_clamped_p80_once_there_are_enough_samples() -> None:
    tracker = LatencyTracker(initial=0.02, minimum=0.002, maximum=0.5)
    assert tracker.hedge_delay() == 0.02
    for ms in range(1, 11):  # 1..10 ms
        tracker.observe(ms / 1000)
    assert tracker.hedge_delay() == 0.008
    for _ in range(200):
        tracker.observe(3.0)
    assert tracker.hedge_delay() == 0.5


def test_filters_match_anywhere_in_the_tag_key() -> None:
    filters = RegistryFilters([":latest$", "^internal.example/"])
    assert filters.excludes("docker.io/library/nginx:latest")
    assert filters.excludes("internal.example/team/app:1.0")
    assert not filters.excludes("docker.io/library/nginx:1.27")
    assert not RegistryFilters().excludes("docker.io/library/nginx:latest")
