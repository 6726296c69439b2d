"""The advertisement state machine: facts in, router actions out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from spegel.advertise import Action, Advertise, Advertisements, Withdraw
from spegel.routing.base import KeyState

COMPLETE, IN_PROGRESS = KeyState.COMPLETE, KeyState.IN_PROGRESS


def test_complete_advertises_new_keys_once_in_input_order() -> None:
    ads = Advertisements()
    assert ads.complete(["b", "a", "b"]) == [Advertise(("b", "a"), COMPLETE)]
    assert ads.complete(["a", "c"]) == [Advertise(("c",), COMPLETE)]
    assert ads.complete(["a"]) == []


def test_in_progress_never_downgrades_a_complete_key() -> None:
    ads = Advertisements()
    ads.complete(["a"])
    assert ads.in_progress(["a", "b"]) == [Advertise(("b",), IN_PROGRESS)]
    assert ads.in_progress(["b"]) == []
    assert ads.state == {"a": COMPLETE, "b": IN_PROGRESS}


def test_completion_upgrades_an_in_progress_key() -> None:
    ads = Advertisements()
    ads.in_progress(["a"])
    assert ads.complete(["a"]) == [Advertise(("a",), COMPLETE)]
    assert ads.state == {"a": COMPLETE}


def test_ingest_gone_withdraws_only_unfinished_in_progress_keys() -> None:
    ads = Advertisements()
    ads.in_progress(["aborted", "committed"])
    ads.complete(["done"])
    assert ads.ingest_gone(["aborted", "committed", "done", "unknown"], committed=["committed"]) == [
        Withdraw(("aborted",))
    ]
    assert ads.state == {"committed": IN_PROGRESS, "done": COMPLETE}


def test_withdraw_ignores_keys_not_advertised() -> None:
    ads = Advertisements()
    ads.complete(["a"])
    assert ads.withdraw(["x"]) == []
    assert ads.withdraw(["a", "a"]) == [Withdraw(("a",))]
    assert ads.state == {}


def test_relist_withdraws_what_is_gone_and_advertises_what_changed() -> None:
    ads = Advertisements()
    ads.complete(["kept", "gone"])
    ads.in_progress(["finished", "vanished"])
    actions = ads.relist(complete=["kept", "finished", "new"], in_progress=["started", "kept"])
    assert actions == [
        Withdraw(("gone", "vanished")),
        Advertise(("finished", "new"), COMPLETE),
        Advertise(("started",), IN_PROGRESS),
    ]
    assert ads.state == {"kept": COMPLETE, "finished": COMPLETE, "new": COMPLETE, "started": IN_PROGRESS}
    assert ads.relist(complete=["kept", "finished", "new"], in_progress=["started"]) == []


def _apply(model: dict[str, KeyState], actions: list[Action]) -> None:
    for action in actions:
        if isinstance(action, Advertise):
            assert action.keys, "an action never has an empty key list"
            model.update(dict.fromkeys(action.keys, action.state))
        else:
            assert action.keys
            for key in action.keys:
                assert key in model, "only advertised keys are withdrawn"
                del model[key]


KEYS = st.lists(st.sampled_from("abcdef"), max_size=6)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("complete"), KEYS),
        st.tuples(st.just("in_progress"), KEYS),
        st.tuples(st.just("withdraw"), KEYS),
        st.tuples(st.just("ingest_gone"), KEYS, KEYS),
        st.tuples(st.just("relist"), KEYS, KEYS),
    ),
    max_size=30,
)


@given(OPERATIONS)
def test_actions_replayed_on_a_router_reproduce_the_state(operations: list[tuple]) -> None:
    ads = Advertisements()
    router: dict[str, KeyState] = {}
    for name, *args in operations:
        _apply(router, getattr(ads, name)(*args))
        assert router == ads.state
        if name == "relist":
            complete, in_progress = args
            assert set(router) == set(complete) | set(in_progress)
            assert all(router[k] is COMPLETE for k in complete)
