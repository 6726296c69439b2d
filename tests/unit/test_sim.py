"""The cluster simulator's pure parts (benchmark/sim): event order, fluid sharing, router visibility, and
whole simulated pulls against the arithmetic they must reproduce."""

import dataclasses
import math
import random

import numpy as np
import pandas as pd
import pytest

from benchmark.__main__ import main
from benchmark.bound import payload_rate
from benchmark.sim.cluster import ClusterModel, PhaseResult, SimCluster
from benchmark.sim.containerd import Blob
from benchmark.sim.events import Simulation
from benchmark.sim.mirror import MirrorConfig
from benchmark.sim.network import NodeLink, PeerTransfer, SharedLink
from benchmark.sim.routing import ClaimOwners, DelayModel, Router, after_owner, uniforms
from benchmark.sim.world import Timing
from benchmark.unpack_bench import fit_crowding
from spegel.mirror import decide
from spegel.routing import claims
from spegel.routing.base import Holder, KeyState


def test_events_run_in_time_order_ties_in_schedule_order_and_cancelled_ones_never() -> None:
    sim, seen = Simulation(), []
    sim.at(2.0, lambda: seen.append("late"))
    sim.at(1.0, lambda: seen.append("first"))
    sim.at(1.0, lambda: seen.append("second"))
    sim.at(1.5, lambda: seen.append("cancelled")).cancel()
    sim.run()
    assert seen == ["first", "second", "late"]
    assert sim.now == 2.0
    with pytest.raises(ValueError):
        sim.at(1.0, lambda: None)


def test_stop_returns_after_the_current_event_and_run_goes_on_later() -> None:
    sim, seen = Simulation(), []
    sim.at(1.0, lambda: (seen.append(1), sim.stop()))
    sim.at(2.0, lambda: seen.append(2))
    sim.run()
    assert seen == [1]
    sim.run()
    assert seen == [1, 2]


def test_upstream_connections_share_the_link_and_all_bytes_arrive() -> None:
    sim, done = Simulation(), {}
    link = SharedLink(sim, capacity=100.0)
    down = NodeLink(1000.0)
    link.start(100.0, down, lambda: done.setdefault("a", sim.now))
    link.start(300.0, down, lambda: done.setdefault("b", sim.now))
    sim.run()
    # a and b share 100 B/s: a has its 100 bytes at 2 s; b then runs alone: 200 more bytes take 2 s.
    assert done == {"a": pytest.approx(2.0), "b": pytest.approx(4.0)}
    assert link.sent == pytest.approx(400.0)
    assert down.upstream == 0


def test_unequal_upstream_shares_still_fill_the_link() -> None:
    sim, ends = Simulation(), []
    link = SharedLink(sim, capacity=10.0, spread=0.5, seed=3)
    down = NodeLink(1000.0)
    for _ in range(5):
        link.start(20.0, down, lambda: ends.append(sim.now))
    sim.run()
    assert max(ends) == pytest.approx(10.0)  # 100 bytes at 10 B/s whatever the split
    assert min(ends) < 9.9  # and the connections did not finish in lockstep


def test_a_stopped_upstream_transfer_counts_what_it_delivered() -> None:
    sim = Simulation()
    link = SharedLink(sim, capacity=10.0)
    transfer = link.start(100.0, NodeLink(1000.0), lambda: None)
    sim.run(until=3.0)
    assert link.stop(transfer) == pytest.approx(30.0)
    assert link.sent == pytest.approx(30.0)


def test_the_host_cpu_gives_a_job_at_most_one_core_and_shares_the_rest() -> None:
    sim, ends = Simulation(), {}
    cores = SharedLink(sim, capacity=2.0, cap=1.0)
    cores.start(1.0, None, lambda: ends.setdefault("alone", sim.now))
    sim.run()
    for name in "abc":  # three jobs on two cores: 2/3 of a core each
        cores.start(1.0, None, lambda n=name: ends.setdefault(n, sim.now))
    sim.run()
    assert ends == {"alone": pytest.approx(1.0), **{n: pytest.approx(2.5) for n in "abc"}}


def test_jobs_that_outnumber_the_cores_lose_a_share_each_to_the_crowding() -> None:
    sim, ends = Simulation(), []
    cores = SharedLink(sim, capacity=2.0, cap=1.0, overhead=0.25)
    for _ in range(4):  # two beyond the cores: each gets 2/4 of a core / (1 + 0.25 * 2)
        cores.start(1.0, None, lambda: ends.append(sim.now))
    sim.run()
    assert ends == pytest.approx([3.0] * 4)


class Growing:
    """A source that grows at `rate` bytes/s up to `size` (then tells its reader), or is complete."""

    def __init__(self, sim: Simulation, size: float, rate: float = math.inf) -> None:
        self.sim, self.size, self.speed = sim, size, rate
        self.readers: set[PeerTransfer] = set()
        if math.isfinite(rate):
            sim.at(size / rate, lambda: [r.source_changed() for r in list(self.readers)])

    def prefix(self) -> float:
        return min(self.size, self.speed * self.sim.now)

    def rate(self) -> float:
        return self.speed if self.prefix() < self.size else 0.0

    def watch(self, transfer: PeerTransfer) -> None:
        self.readers.add(transfer)

    def unwatch(self, transfer: PeerTransfer) -> None:
        self.readers.discard(transfer)


def test_peer_transfers_split_the_sender_uplink_equally() -> None:
    sim, ends = Simulation(), {}
    up = NodeLink(100.0)
    for name in "ab":
        PeerTransfer(
            sim, up, NodeLink(100.0), Growing(sim, 100.0), 0, 100.0, lambda n=name: ends.setdefault(n, sim.now), 0.01
        )
    sim.run()
    assert ends == {"a": pytest.approx(2.0), "b": pytest.approx(2.0)}


def test_a_follower_never_passes_its_source_and_ends_one_poll_after_it() -> None:
    """The source grows 10 bytes/s; the link could carry 1000 bytes/s. A reader of bytes 20.. of it follows."""
    sim = Simulation()
    ended, seen = [], []
    source = Growing(sim, 100.0, rate=10.0)
    transfer = PeerTransfer(
        sim, NodeLink(1000.0), NodeLink(1000.0), source, 20, 80.0, lambda: ended.append(sim.now), 0.01
    )
    for t in range(1, 100):
        sim.at(t / 10, lambda: seen.append(transfer.delivered() - max(0.0, source.prefix() - 20)))
    sim.run()
    assert max(seen) <= 1e-6
    assert ended[0] == pytest.approx(10.01, abs=1e-3)


def test_delay_model_interpolates_between_measured_sizes_and_keeps_the_largest_beyond() -> None:
    measured = {10: (0.01, 0.02), 100: (0.1, 0.2)}
    assert DelayModel.for_nodes(5, measured) == DelayModel(0.01, 0.02)
    assert DelayModel.for_nodes(1000, measured) == DelayModel(0.1, 0.2)
    middle = DelayModel.for_nodes(31, measured)  # about half way in log(nodes)
    assert 0.03 < middle.median < 0.035
    table = DelayModel(0.01, 0.03).table()
    assert table[len(table) // 2] == pytest.approx(0.01, rel=0.01)
    assert table[int(0.95 * len(table))] == pytest.approx(0.03, rel=0.05)
    assert list(table) == sorted(table)


def test_an_announcement_becomes_visible_to_each_node_after_its_own_delay_and_to_all_after_the_cut() -> None:
    names = [f"{i:02d}" for i in range(50)]
    router = Router(names, [f"n{i}:1" for i in range(50)], DelayModel(0.01, 0.03), seed=1)
    router.announce(0.0, 7, "k", complete=False, since=0.0)
    seen_early = [bool(router.lookup(0.01, o, "k", 3)) for o in range(50) if o != 7]
    assert 0 < sum(seen_early) < 49  # some nodes see it before the median delay, some do not
    others = [o for o in range(50) if o != 7]
    assert all(router.lookup(0.0, o, "k", 3) == [] for o in others)  # (lookups come in time order, as in a run)
    assert all([h.peer for h in router.lookup(router.cut + 0.001, o, "k", 3)] == ["07"] for o in others)
    assert router.lookup(1.0, 7, "k", 3) == []  # never itself


def test_lookup_ranks_complete_holders_first_then_by_name() -> None:
    names = ["d", "c", "b", "a"]
    router = Router(names, [f"n{i}:1" for i in range(4)], DelayModel(0.0, 0.0))
    router.announce(0.0, 0, "k", complete=False, since=0.0)
    router.announce(0.0, 1, "k", complete=False, since=0.0)
    router.announce(0.0, 2, "k", complete=False, since=0.0)
    router.announce(1.0, 1, "k", complete=True)
    holders = router.lookup(2.0, 3, "k", 3)
    assert [(h.peer, h.state) for h in holders] == [
        ("c", KeyState.COMPLETE),
        ("b", KeyState.IN_PROGRESS),
        ("d", KeyState.IN_PROGRESS),
    ]


def random_storm(rng: random.Random) -> tuple[Router, list[tuple[float, int, bool, float | None]], DelayModel]:
    """A router over a few nodes (names sharing prefixes, in no node order) and a storm of claims (some at one
    instant, some without a claim time) and completions on key "k", in time order."""
    n = rng.randint(2, 12)
    names = rng.sample([a + b for a in "abc" for b in "xyz0"], n)
    delays = DelayModel(rng.choice([0.0, 0.005, 0.02]), 0.05)
    router = Router(names, [f"n{i}:1" for i in range(n)], delays, seed=rng.randint(0, 99))
    times = sorted(rng.choice([0.0, 0.01, 0.02]) + rng.uniform(0, 0.2) for _ in range(rng.randint(0, 3 * n)))
    announcements = []
    for t in times:
        complete = rng.random() < 0.3
        since = None if complete else rng.choice([None, t, round(t, 1), 0.0])
        announcements.append((t, rng.randrange(n), complete, since))
    return router, announcements, delays


def visible_state(
    router: Router, delays: DelayModel, announcements: list, now: float, observer: int
) -> tuple[list[int], dict[int, float | None]]:
    """The module docstring's visibility, by brute force: (complete holders, claimant -> claim time)."""
    table = delays.table()
    complete, claims = set(), {}
    for i, (t, node, done, since) in enumerate(announcements):
        delay = table[int(uniforms(router.seed, np.array([i]), observer)[0] * len(table))]
        if node == observer or t > now or (t > now - table[-1] and t + delay > now):
            continue
        if done:
            complete.add(node)
        else:
            claims[node] = since
    return sorted(complete), {n: since for n, since in claims.items() if n not in complete}


def test_lookup_lists_what_the_observer_sees_complete_first_then_claims_by_name_at_most_count() -> None:
    rng = random.Random(5)
    for _ in range(300):
        router, announcements, delays = random_storm(rng)
        made = 0
        for now in sorted(rng.uniform(0, 0.4) for _ in range(8)):
            while made < len(announcements) and announcements[made][0] <= now:
                router.announce(*announcements[made][:2], "k", announcements[made][2], announcements[made][3])
                made += 1
            observer, count = rng.randrange(len(router.names)), rng.randint(1, 5)
            complete, claims = visible_state(router, delays, announcements[:made], now, observer)
            name = router.names.__getitem__
            expected = [(n, KeyState.COMPLETE, None) for n in sorted(complete, key=name)][:count]
            expected += [(n, KeyState.IN_PROGRESS, claims[n]) for n in sorted(claims, key=name)]
            got = [(int(h.address[1:-2]), h.state, h.since) for h in router.lookup(now, observer, "k", count)]
            assert got == expected[:count]


def described(decision: decide.Follow | decide.Miss) -> tuple:
    if isinstance(decision, decide.Miss):
        return ("miss", decision.claim)
    return ("follow", decision.hedge_delay, [(h.address, h.state, h.since, h.peer) for h in decision.holders])


def test_the_routers_claim_decision_is_decide_after_claim_over_every_holder_listed() -> None:
    rng = random.Random(7)
    follows = 0
    for _ in range(300):
        router, announcements, _ = random_storm(rng)
        made = 0
        for now in sorted(rng.uniform(0, 0.4) for _ in range(8)):
            while made < len(announcements) and announcements[made][0] <= now:
                router.announce(*announcements[made][:2], "k", announcements[made][2], announcements[made][3])
                made += 1
            observer = rng.randrange(len(router.names))
            mine = (rng.choice([now, round(now, 1), 0.0]), router.names[observer])
            options = {"retries": rng.randint(0, 4), "fanout": rng.randint(1, 3), "chain": rng.randint(0, 6)}
            listed: list[Holder] = router.lookup(now, observer, "k", len(router.names))
            load = {h.address: rng.randint(0, 2) for h in listed}
            ordered = decide.order_holders(listed, load, rng.randint(0, 5))
            expected = decide.after_claim(ordered, mine, **options)
            assert described(router.after_claim(now, observer, "k", mine, **options)) == described(expected)
            follows += isinstance(expected, decide.Follow) and len(expected.holders) > 1
    assert follows > 100  # the storms gave decisions with fallbacks, not only misses


def test_a_claim_placed_by_the_owner_is_decided_as_the_mirror_decides_it() -> None:
    """`after_owner` over `Router.complete_last` and `Router.placed` against `MirrorBackend._claim`'s reading of an
    owner's answer: the holders listed that need no order, then `claims.placed`, into `decide.after_claim`."""
    rng = random.Random(11)
    follows = 0
    for _ in range(300):
        router, announcements, _ = random_storm(rng)
        # the simulated mirrors announce every download in progress with its claim time
        announcements = [
            (t, node, done, t if since is None and not done else since) for t, node, done, since in announcements
        ]
        made = 0
        for now in sorted(rng.uniform(0, 0.4) for _ in range(8)):
            while made < len(announcements) and announcements[made][0] <= now:
                router.announce(*announcements[made][:2], "k", announcements[made][2], announcements[made][3])
                made += 1
            observer = rng.randrange(len(router.names))
            others = [name for name in router.names if name != router.names[observer]]
            ahead = rng.sample(others, rng.randint(0, len(others)))  # the owner's order: any, as claims arrived
            options = {"retries": rng.randint(0, 4), "fanout": rng.randint(1, 3), "chain": rng.randint(0, 6)}
            listed = router.lookup(now, observer, "k", len(router.names))
            load = {h.address: rng.randint(0, 2) for h in listed}
            unordered = [
                h
                for h in decide.order_holders(listed, load, rng.randint(0, 5))
                if h.state is KeyState.COMPLETE or h.since is None
            ]
            address = dict(zip(router.names, router.addresses, strict=True))
            order = claims.placed(ahead, address.get)
            expected = decide.after_claim(
                unordered + list(order.ahead), (float(order.position), router.names[observer]), **options
            )
            complete = router.complete_last(now, observer, "k", options["retries"])
            got = after_owner(complete, ahead, lambda place, r=router, a=ahead: r.placed(a[place], place), **options)
            assert described(got) == described(expected)
            follows += isinstance(expected, decide.Follow) and any(
                h.state is KeyState.IN_PROGRESS for h in expected.holders
            )
    assert follows > 100  # claimants were followed, not only complete holders


def test_claim_owners_answer_in_the_order_claims_reach_the_owner_and_lose_late_answers() -> None:
    names = [f"node{i}" for i in range(8)]
    key = "sha256:" + "a" * 64
    owner = names.index(claims.owner(key, names))

    def claim_all(delays: DelayModel, timeout: float, at: list[float]) -> tuple[ClaimOwners, dict[int, tuple]]:
        sim = Simulation()
        owners = ClaimOwners(sim, names, delays, seed=3)
        answers: dict[int, tuple] = {}
        for node, t in enumerate(at):
            answer = lambda ahead, node=node: answers.setdefault(node, (sim.now, ahead))  # noqa: E731
            sim.at(t, lambda node=node, t=t, answer=answer: owners.order(node, key, t, timeout, answer))
        sim.run()
        return owners, answers

    # no delays: the order is the order of the claims; the owner's own claim is answered once its place is final
    at = [0.1 * ((3 * i) % 8) for i in range(8)]
    owners, answers = claim_all(DelayModel(0.0, 0.0), 1.0, at)
    by_time = sorted(range(8), key=lambda n: at[n])
    assert {n: answers[n][1] for n in range(8)} == {
        n: [names[m] for m in by_time[: by_time.index(n)]] for n in range(8)
    }
    assert owners.owner(key) == owner and owners.asked == 7 and owners.late == 0

    # delays: each answer after the claim (the owner's own at the end of the first claims' window), the claimants
    # ahead a prefix of one order
    owners, answers = claim_all(DelayModel(0.05, 0.15), 1.0, [0.0] * 8)
    final = max((ahead for _, ahead in answers.values()), key=len)
    assert sorted(len(ahead) for _, ahead in answers.values()) == list(range(8))
    for node, (when, ahead) in answers.items():
        assert ahead == final[: len(ahead)] and names[node] not in ahead
        assert when == pytest.approx(claims.ClaimBook().window) if node == owner else when > claims.ClaimBook().window

    # answers later than the timeout are lost (None at the timeout); the owner recorded the claims all the same
    at = [1.0 if node == owner else 0.0 for node in range(8)]
    owners, answers = claim_all(DelayModel(0.05, 0.15), 0.001, at)  # each delay is at least 5 ms
    assert owners.asked == owners.late == 7
    assert {n: answers[n] for n in range(8) if n != owner} == {n: (0.001, None) for n in range(8) if n != owner}
    assert answers[owner][0] == 1.0 and sorted(answers[owner][1]) == sorted(n for n in names if n != names[owner])


def test_claims_placed_by_their_owner_or_deferred_by_led_nodes_send_each_layer_upstream_once() -> None:
    """The 12-node storm under slow announcements (p50 50 ms, p95 150 ms): with the settle alone some node misses
    the claims ahead of it and goes upstream too; placed by the owner (answered well within the timeout), or with
    the settle but led nodes waiting for the leader's claims (`decide.defer_claim`), never."""
    blobs = [Blob("sha256:config", 600, layer=False)] + [
        Blob(f"sha256:layer{i}", 8 << 20, layer=True) for i in range(4)
    ]
    size = sum(b.size for b in blobs)
    upstream = {}
    for ordered, led in ((False, False), (True, False), (False, True), (True, True)):
        sent = []
        for seed in range(8):
            mirror = MirrorConfig(claims=True, ordered=ordered, led=led)
            model = ClusterModel(12, 50e6, 400e6, 4 << 20, 3, mirror=mirror, delays=DelayModel(0.05, 0.15))
            sent.append(
                SimCluster(model, "inflight", seed)
                .run_phase(blobs, [list(range(12))], {})
                .traffic["upstream_log_bytes"]
            )
        upstream[ordered, led] = max(sent) / size
    assert upstream[False, False] > 1.1
    assert [upstream[design] for design in ((True, False), (False, True), (True, True))] == pytest.approx(
        [1.0] * 3, rel=1e-3
    )  # a config (600 bytes) may go twice


NO_CPU = Timing(fetch_cost=0.0, unpack_cost=0.0, start_spread=0.0, crowding=0.0)


def run_create(model: ClusterModel, mode: str, layers: list[int], jitter: float = 0.0) -> PhaseResult:
    cluster = SimCluster(model, mode, seed=2)
    blobs = [Blob("sha256:config", 600, layer=False)]
    blobs += [Blob(f"sha256:layer{i}", size, layer=True) for i, size in enumerate(layers)]
    return cluster.run_phase(blobs, [list(range(model.nodes))], {n: jitter * n for n in range(model.nodes)})


def simulate(mode: str, nodes: int, layer: int = 40_000_000, jitter: float = 0.0) -> tuple[list[float], float]:
    """(per-node pull times, upstream payload bytes) of one create phase, containerd's CPU work left out."""
    result = run_create(ClusterModel(nodes, 50e6, 400e6, 4 << 20, 3, timing=NO_CPU), mode, [layer], jitter)
    return [p["duration"] for p in result.pulls], result.traffic["upstream_log_bytes"]


def test_one_node_from_upstream_takes_s_over_u() -> None:
    times, upstream = simulate("upstream", 1)
    assert max(times) == pytest.approx(40_000_600 / payload_rate(50e6) + Timing().metadata, rel=0.01)
    assert upstream == 40_000_600


def test_containerd_asks_for_the_layers_once_the_config_is_committed() -> None:
    """As 2.1.9's unpacker: the config is fetched before any layer (so a node knows whether it leads the pull
    before it asks for a layer)."""
    model = ClusterModel(2, 50e6, 400e6, 4 << 20, 3)
    blobs = [Blob("sha256:config", 600, layer=False), Blob("sha256:a", 1 << 20, True), Blob("sha256:b", 1 << 20, True)]
    events = SimCluster(model, "inflight", seed=1).run_phase(blobs, [[0, 1]], {}).events
    for node in ("n0", "n1"):
        mine = [e for e in events if e["node"] == node]
        config_commit = next(e["time"] for e in mine if e["event"] == "commit" and e["digest"] == "sha256:config")
        layer_ingests = [e["time"] for e in mine if e["event"] == "ingest" and e["digest"] != "sha256:config"]
        assert len(layer_ingests) == 2 and min(layer_ingests) >= config_commit


def test_nodes_without_a_mirror_take_n_s_over_u() -> None:
    times, upstream = simulate("upstream", 6)
    assert max(times) == pytest.approx(6 * 40_000_600 / payload_rate(50e6), rel=0.02)
    assert upstream == 6 * 40_000_600


def test_in_flight_sharing_sends_the_layer_upstream_once_and_ends_near_s_over_u() -> None:
    times, upstream = simulate("inflight", 6, jitter=0.05)  # claims 50 ms apart: every node sees the earlier ones
    assert upstream == pytest.approx(40_000_600, rel=0.001)
    assert max(times) < 1.25 * 40_000_000 / payload_rate(50e6)


def test_a_sim_scenario_runs_through_the_benchmark_command_and_writes_the_report(tmp_path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "t"\nmodes = ["upstream", "proxy", "layer", "inflight"]\nphases = ["create", "update"]\n'
        '[cluster]\nbackend = "sim"\nnodes = 100\nupstream_bandwidth = "100Mbit"\nnode_bandwidth = "1Gbit"\n'
        '[[images]]\nname = "8MiB"\nsize = "8MiB"\nlayers = 2\n'
    )
    assert main(["run", str(scenario), "--out", str(tmp_path / "out")]) == 0
    pulls = pd.read_csv(tmp_path / "out" / "data" / "pulls.csv")
    assert len(pulls) == 3 * 2 * 100 and pulls["ok"].all()
    failures = pd.read_csv(tmp_path / "out" / "data" / "failures.csv")
    assert list(failures["mode"]) == ["proxy"]
    sent = pd.read_csv(tmp_path / "out" / "data" / "traffic.csv").set_index(["mode", "phase"])["upstream_log_bytes"]
    assert sent["upstream", "create"] == pytest.approx(100 * (8 << 20), rel=0.001)
    assert sent["inflight", "create"] < 10 * (8 << 20)
    assert "## Pull times" in (tmp_path / "out" / "README.md").read_text()


def test_nodes_on_one_host_unpack_on_its_shared_cores() -> None:
    """Six nodes pull from upstream on links that end together; each unpack is 1 CPU second. With their own
    CPUs they all end 1 s after the last byte, on two shared cores 3 s after it."""
    timing = dataclasses.replace(NO_CPU, unpack_cost=1 / 8_000_000)
    ends = {}
    for cores in (None, 2.0):
        model = ClusterModel(6, 50e6, 400e6, 4 << 20, 3, timing=dataclasses.replace(timing, host_cores=cores))
        model = dataclasses.replace(model, share_spread=0.0)
        ends[cores] = max(p["end"] for p in run_create(model, "upstream", [8_000_000]).pulls)
    assert ends[2.0] - ends[None] == pytest.approx(2.0, abs=0.05)


def test_each_layers_snapshot_costs_a_copy_of_the_layers_below_it() -> None:
    timing = dataclasses.replace(NO_CPU, snapshot_copy_cost=1 / 4_000_000)
    model = ClusterModel(1, 50e6, 400e6, 4 << 20, 3, timing=timing)
    pulls = {
        cost: max(p["end"] for p in run_create(dataclasses.replace(model, timing=t), "upstream", [4_000_000] * 3).pulls)
        for cost, t in ((0, NO_CPU), (1, timing))
    }
    assert pulls[1] - pulls[0] == pytest.approx(0 + 1 + 2, abs=0.01)  # seconds: 0, 4 and 8 MB copied


def test_a_follower_commits_a_blob_only_after_reading_its_mirrors_whole_copy() -> None:
    """The mirror gives containerd no byte of a peer's blob before its copy is whole, and containerd then reads
    it (`fetch_cost` x size; one download slot, so one chunk at a time): the followers commit that much later,
    the first node (from upstream) does not."""
    commits = {}
    for cost in (0.0, 1 / 40_000_000):
        model = ClusterModel(3, 50e6, 400e6, 4 << 20, 1, timing=dataclasses.replace(NO_CPU, fetch_cost=cost))
        events = pd.DataFrame(run_create(model, "inflight", [40_000_000], jitter=0.05).events)
        layer = events[(events["event"] == "commit") & (events["digest"] == "sha256:layer0")]
        commits[cost] = layer.set_index("node")["time"].sort_index()
    assert list(commits[1 / 40_000_000] - commits[0.0]) == pytest.approx([0.0, 1.0, 1.0], abs=1e-3)


def test_the_crowding_fit_is_the_loss_per_process_beyond_the_cores() -> None:
    assert fit_crowding({1: 1.0, 4: 1.4, 8: 2.2}, cores=2) == pytest.approx(0.2)
    assert fit_crowding({1: 1.0, 2: 1.3}, cores=2) == 0.0  # none beyond the cores: nothing to fit
