"""Ten real libp2p router nodes, each its own process, on loopback, with a private network key."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from benchmark.router_cluster import NodeError, NodeProcess, running_cluster, wait_until_meshed

pytestmark = pytest.mark.slow

NODES = 10
TTL = "3s"  # records of a vanished node age out quickly
PSK_HEX = "5e" * 32


def psk_args(tmp_path: Path, hex_key: str = PSK_HEX, name: str = "cluster.key", ttl: str = "30s") -> list[str]:
    path = tmp_path / name
    path.write_text(f"/key/swarm/psk/1.0.0/\n/base16/\n{hex_key}\n")
    return ["--router-psk-file", str(path), "--router-record-ttl", ttl]


async def wait_found(node: NodeProcess, key: str, timeout: float = 10.0) -> list[list[object]]:
    with trio.fail_after(timeout):
        while not (holders := (await node.request("lookup", key=key))["holders"]):
            await trio.sleep(0.05)
    return holders


async def test_content_is_found_from_every_node_and_misses_are_answered_in_budget(tmp_path: Path) -> None:
    args = psk_args(tmp_path)
    async with running_cluster(tmp_path, NODES, args) as nodes:
        for i, node in enumerate(nodes):
            await node.request("advertise", keys=[f"sha256:{i:064x}", f"docker.io/library/app:{i}"])
        for i in range(NODES):
            for j, other in enumerate(nodes):
                if i == j:
                    continue
                assert await wait_found(other, f"sha256:{i:064x}") == [[f"127.0.0.1:{20000 + i}", "complete", None]]
                assert await wait_found(other, f"docker.io/library/app:{i}")
        # In progress, with bytes so far; then complete.
        await nodes[3].request("advertise", keys=["sha256:partial"], state="in_progress", available=512)
        assert await wait_found(nodes[7], "sha256:partial") == [["127.0.0.1:20003", "in_progress", 512]]
        # Nobody has it: empty, answered within the 20 ms budget (the answer's own measure, plus scheduling slack).
        answer = await nodes[5].request("lookups", keys=[f"sha256:none{i}" for i in range(10)], timeout=0.02)
        assert answer["found"] == 0
        assert max(answer["latencies"]) < 0.02 + 0.03

        # A node with another key, and one with none, cannot join.
        bootstrap = ["--static-bootstrap-peers", nodes[0].addrs[0]]
        outsiders = {"intruder": psk_args(tmp_path, "77" * 32, "other.key"), "plain": []}
        async with trio.open_nursery() as nursery:
            started = []
            try:
                for name, extra in outsiders.items():
                    started.append(
                        await NodeProcess.start(nursery, name, tmp_path / name, "127.0.0.1:29999", [*extra, *bootstrap])
                    )
                for outsider in started:
                    await outsider.request("advertise", keys=[f"sha256:{outsider.name}"])
                await trio.sleep(3)
                for outsider in started:
                    status = await outsider.request("status")
                    assert status["connected"] == [] and not status["ready"]
                    assert (await outsider.request("lookup", key="sha256:" + "0" * 64))["holders"] == []
                    assert (await nodes[1].request("lookup", key=f"sha256:{outsider.name}"))["holders"] == []
            finally:
                for outsider in started:
                    await outsider.close()


async def test_killed_node_ages_out_and_restarted_node_rejoins_with_its_identity(tmp_path: Path) -> None:
    args = [*psk_args(tmp_path, ttl=TTL), "--router-refresh", "1s"]
    async with running_cluster(tmp_path, NODES, args) as nodes:
        victim = nodes[4]
        await victim.request("advertise", keys=["sha256:victim"])
        for node in nodes:
            if node is not victim:
                await wait_found(node, "sha256:victim")
        await victim.kill()
        # Gone from every index within the TTL (3 s) plus one sweep; bounded at 15 s.
        with trio.fail_after(15):
            for node in nodes:
                if node is not victim:
                    while (await node.request("lookup", key="sha256:victim"))["holders"]:
                        await trio.sleep(0.2)
        async with trio.open_nursery() as nursery:
            again = await NodeProcess.start(
                nursery,
                "node4-again",
                tmp_path / "node4",
                "127.0.0.1:20004",
                [*args, "--static-bootstrap-peers", nodes[0].addrs[0]],
            )
            try:
                assert again.peer_id == victim.peer_id
                rest = [node for node in nodes if node is not victim]
                await wait_until_meshed([*rest, again], 30)
                await again.request("advertise", keys=["sha256:back"])
                for node in rest:
                    assert await wait_found(node, "sha256:back") == [["127.0.0.1:20004", "complete", None]]
            finally:
                await again.close()


async def test_a_node_that_cannot_start_says_why(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(NodeError, match="router address"):
            await NodeProcess.start(nursery, "bad", tmp_path / "bad", "127.0.0.1:1", ["--router-addr", "nowhere"])


async def test_announcements_pass_over_a_sparse_overlay_to_every_node(tmp_path: Path) -> None:
    """Eight nodes that each pick 2 peers to link to: no node links to everyone, yet every node's announcement
    reaches every other node, each about once, and a killed node is forgotten by every node, also by those it was
    not linked to."""
    nodes_count = 8
    args = [*psk_args(tmp_path), "--router-degree", "2"]
    async with running_cluster(tmp_path, nodes_count, args) as nodes:
        with trio.fail_after(30):  # the links made to bootstrap are closed once each node holds those it picks
            while True:
                statuses = [await node.request("status") for node in nodes]
                if all(status["settled"] and len(status["linked"]) < nodes_count - 1 for status in statuses):
                    break
                await trio.sleep(0.5)
        await trio.sleep(12)  # the overlay still (10 s): the last messages of its settling are through
        statuses = [await node.request("status") for node in nodes]
        before = [status["frames"] for status in statuses]
        for i, node in enumerate(nodes):
            await node.request("advertise", keys=[f"sha256:{i + 100:064x}"])
        for i in range(nodes_count):
            for j, other in enumerate(nodes):
                if i != j:
                    assert await wait_found(other, f"sha256:{i + 100:064x}") == [
                        [f"127.0.0.1:{20000 + i}", "complete", None]
                    ]
        after_statuses = [await node.request("status") for node in nodes]
        after = [status["frames"] for status in after_statuses]
        received = sum(a["new"] + a["old"] - b["new"] - b["old"] for a, b in zip(after, before, strict=True))
        assert nodes_count * (nodes_count - 1) <= received <= 2 * nodes_count * (nodes_count - 1)
        # the deltas are counted by kind, with the CPU time handling them took
        for a, b in zip(after_statuses, statuses, strict=True):
            assert a["handled"]["delta"] - b["handled"]["delta"] >= nodes_count - 1
            assert a["handling_seconds"]["delta"] > b["handling_seconds"]["delta"]

        victim = nodes[3]
        linked = {node.name: status["linked"] for node, status in zip(nodes, statuses, strict=True)}
        strangers = [node for node in nodes if node is not victim and victim.peer_id not in linked[node.name]]
        assert strangers
        await victim.kill()
        with trio.fail_after(30):  # the peer grace (10 s), a failed dial, the news passed on
            for node in strangers:
                while victim.peer_id in (await node.request("status"))["members"]:
                    await trio.sleep(0.2)
