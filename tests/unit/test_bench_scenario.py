"""Scenario parsing and planning: the shipped files load, defaults apply, bad values name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.scenario import MODES, RunKey, ScenarioError, from_dict, load, plan

SCENARIOS = Path(__file__).parents[2] / "scenarios"
MiB = 1 << 20


def _minimal(**extra: object) -> dict:
    return {"name": "t", "cluster": {"nodes": 3}, "images": [{"name": "i", "size": "3MiB", "layers": 3}], **extra}


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path) -> None:
    scenario = load(path)
    assert scenario.name == path.stem
    assert plan(scenario)


def test_default_scenario() -> None:
    scenario = load(SCENARIOS / "default.toml")
    assert scenario.modes == MODES and scenario.phases == ("create", "update", "advertise")
    assert scenario.cluster.upstream_bandwidth == 50e6 and scenario.cluster.node_bandwidth == 200e6
    assert scenario.images[0].layers == (8 * MiB,) * 4


def test_defaults_and_even_split() -> None:
    scenario = from_dict(_minimal(images=[{"name": "i", "size": 10, "layers": 3}]))
    assert scenario.images[0].layers == (4, 3, 3)
    assert scenario.cluster.backend == "netns" and scenario.cluster.chunk_size == 4 * MiB
    assert scenario.repetitions == 1 and scenario.jitter == 0.5 and scenario.update_batch == 0.2


def test_explicit_layer_sizes() -> None:
    scenario = from_dict(_minimal(images=[{"name": "i", "layers": ["1MiB", 5], "compression": "zstd"}]))
    assert scenario.images[0].layers == (MiB, 5) and scenario.images[0].compression == "zstd"


def test_plan_interleaves_modes_within_each_repetition() -> None:
    scenario = from_dict(_minimal(modes=["upstream", "inflight"], repetitions=2))
    assert plan(scenario) == [
        RunKey("i", "upstream", 0),
        RunKey("i", "inflight", 0),
        RunKey("i", "upstream", 1),
        RunKey("i", "inflight", 1),
    ]


@pytest.mark.parametrize(("nodes", "batch", "expected"), [(4, 0.2, [[0], [1], [2], [3]]), (10, 0.2, [[0, 1]] * 1)])
def test_update_batches(nodes: int, batch: float, expected: list[list[int]]) -> None:
    scenario = from_dict(_minimal(cluster={"nodes": nodes}, update={"batch": batch}))
    batches = scenario.update_batches()
    assert batches[0] == expected[0]
    assert sorted(n for b in batches for n in b) == list(range(nodes))
    assert all(len(b) == len(batches[0]) for b in batches[:-1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cluster": {"nodes": 0}}, "cluster.nodes: must be an integer"),
        ({"cluster": {"nodes": 2, "upstream_bandwidth": "fast"}}, "cluster.upstream_bandwidth: invalid rate"),
        ({"cluster": {"nodes": 2, "colour": "red"}}, "cluster: unknown key"),
        ({"modes": ["mirror"]}, "modes: 'mirror' is not one of"),
        ({"modes": []}, "modes: must be a non-empty list"),
        ({"phases": ["create", "create"]}, "phases: must be a non-empty list without repeats"),
        ({"images": []}, "images: must be a non-empty array"),
        ({"images": [{"name": "i", "size": "1MB", "compression": "lz4"}]}, "images[0].compression"),
        ({"images": [{"name": "i", "layers": ["1MB", "x"]}]}, "images[0].layers[1]: invalid size"),
        ({"images": [{"name": "i", "size": "1MB"}, {"name": "i", "size": "2MB"}]}, "names must be unique"),
        ({"cluster": {"nodes": 1}, "phases": ["advertise"]}, "needs at least 2 nodes"),
        ({"update": {"batch": 0}}, "update.batch"),
        ({"repetitions": "3"}, "repetitions: must be an integer"),
        ({"name": ""}, "name: must be a non-empty string"),
        ({"extra": 1}, "scenario: unknown key(s) extra"),
    ],
)
def test_bad_values_name_their_key(change: dict, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        from_dict(_minimal(**change))
    assert message in str(info.value)


def test_missing_cluster_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cluster: missing"):
        from_dict({"name": "t", "images": [{"name": "i", "size": 1}]})
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load(tmp_path / "bad.toml")


def test_run_command_refuses_bad_scenarios_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmark.__main__ import main

    (tmp_path / "bad.toml").write_text('name = "x"\n[cluster]\nnodes = "many"\n')
    assert main(["run", str(tmp_path / "bad.toml")]) == 2
    assert capsys.readouterr().err == "benchmark: error: cluster.nodes: must be an integer in [1, 64], got 'many'\n"
    assert main(["run", str(SCENARIOS / "ci.toml"), "--repetitions", "0"]) == 2
    assert "--repetitions must be at least 1" in capsys.readouterr().err
