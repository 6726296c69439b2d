"""The advertisement state machine: facts in, router actions out."""

from __future__ import annotations

from hypothesis import example, given
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


def test_claim_advertises_in_progress_with_its_time_once() -> None:
    ads = Advertisements()
    ads.complete(["held"])
    assert ads.claim("held", since=5.0, deadline=10.0) == []  # held already: nothing to claim
    assert ads.claim("new", since=5.0, deadline=10.0) == [Advertise(("new",), IN_PROGRESS, 5.0)]
    assert ads.claim("new", since=6.0, deadline=11.0) == []
    assert ads.claim_since("new") == 5.0 and ads.claim_since("held") is None


def test_relist_keeps_a_claim_before_its_deadline_or_while_downloading() -> None:
    """The re-list after `/images/delete` used to withdraw claims: no listing shows a download without bytes."""
    ads = Advertisements()
    ads.claim("a", since=1.0, deadline=10.0)
    ads.claim("b", since=1.0, deadline=10.0)
    assert ads.relist(complete=["x"], now=9.0) == [Advertise(("x",), COMPLETE)]
    assert ads.relist(complete=["x"], now=10.0, downloading=["b"]) == [Withdraw(("a",))]
    assert ads.state == {"x": COMPLETE, "b": IN_PROGRESS}


def test_expire_claims_withdraws_due_claims_without_a_download_and_settles_the_others() -> None:
    ads = Advertisements()
    ads.claim("gone", since=1.0, deadline=5.0)
    ads.claim("busy", since=1.0, deadline=5.0)
    ads.claim("later", since=1.0, deadline=50.0)
    assert ads.due_claims(4.9) == []
    assert ads.expire_claims(5.0, downloading={"busy"}) == [Withdraw(("gone",))]
    assert ads.due_claims(100.0) == ["later"]  # "busy" is settled: its download ends it, not a deadline
    assert ads.claim_since("busy") == 1.0
    assert ads.ingest_gone(["busy"]) == [Withdraw(("busy",))]
    assert ads.claim_since("busy") is None


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


CLAIM_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("complete"), KEYS),
        st.tuples(st.just("withdraw"), KEYS),
        st.tuples(st.just("ingest_gone"), KEYS, KEYS),
        st.tuples(st.just("claim"), st.sampled_from("abcdef"), st.integers(0, 20)),
        st.tuples(st.just("expire_claims"), st.integers(0, 20), KEYS),
        st.tuples(st.just("relist"), KEYS, KEYS, st.integers(0, 20), KEYS),
    ),
    max_size=30,
)


@given(CLAIM_OPERATIONS)
@example([("claim", "a", 5), ("expire_claims", 5, ["a"]), ("relist", [], [], 10, [])])  # download seen, then gone
def test_claims_end_with_their_key_and_a_relist_withdraws_only_lapsed_claims(operations: list[tuple]) -> None:
    ads = Advertisements()
    router: dict[str, KeyState] = {}
    deadlines: dict[str, int | None] = {}  # the model of open claims (None: its download was seen)
    for name, *args in operations:
        if name == "claim":
            key, deadline = args
            before = key in ads.state
            _apply(router, ads.claim(key, since=1.0, deadline=deadline))
            if not before:
                deadlines[key] = deadline
        elif name == "expire_claims":
            now, downloading = args
            _apply(router, ads.expire_claims(now, set(downloading)))
            for key, deadline in deadlines.items():
                if deadline is not None and deadline <= now and key in downloading:
                    deadlines[key] = None
        elif name == "relist":
            complete, in_progress, now, downloading = args
            claimed = {
                k
                for k, d in deadlines.items()
                if ads.claim_since(k) is not None and ((d is not None and d > now) or k in downloading)
            }
            _apply(router, ads.relist(complete, in_progress, now, downloading))
            assert set(router) == set(complete) | set(in_progress) | claimed
        else:
            _apply(router, getattr(ads, name)(*args))
        assert router == ads.state
        for key in list(deadlines):
            if ads.claim_since(key) is None:
                del deadlines[key]
            else:
                assert ads.state.get(key) is IN_PROGRESS, "an open claim is always advertised in progress"
