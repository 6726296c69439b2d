"""Run router nodes as subprocesses (`benchmark.router_node`) and talk to them: for tests and the benchmark.

`NodeProcess.start` launches one node and waits for its start line; `request` sends a command and waits (bounded)
for its answer; `kill` ends it at once (SIGKILL), `close` gently (stdin EOF, then SIGKILL after a grace period).
`running_cluster` starts N nodes bootstrapped from the first and closes them all on exit, also on failure.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

START_CONCURRENCY = 4  # nodes starting at once: Python start-up is CPU-bound
START_TIMEOUT = 90.0  # seconds a node may take to start (Python and libp2p imports; 10 s and more when loaded)


class NodeError(Exception):
    """A node that failed to start, died, or answered a command with an error."""


class NodeProcess:
    def __init__(self, process: trio.Process, name: str, stderr_path: Path) -> None:
        self.process = process
        self.name = name
        self.stderr_path = stderr_path
        self.peer_id = ""
        self.addrs: list[str] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = {}
        self._started = trio.Event()
        self._closed = False

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        name: str,
        data_dir: Path,
        registry_address: str,
        router_args: Sequence[str] = (),
        timeout: float = START_TIMEOUT,
    ) -> NodeProcess:
        """Launch a node with its identity in `data_dir`, listening on a free loopback port unless told otherwise.

        `timeout` bounds the start (Python and libp2p imports: about 1 s idle, 10 s and more on a loaded machine)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        stderr_path = data_dir / "stderr.log"
        argv = [sys.executable, "-m", "benchmark.router_node", "--registry-address", registry_address]
        argv += ["--data-dir", str(data_dir)]
        if "--router-addr" not in router_args:
            argv += ["--router-addr", "127.0.0.1:0"]
        argv += list(router_args)
        with stderr_path.open("ab") as stderr:
            process = await trio.lowlevel.open_process(
                argv, stdin=-1, stdout=-1, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        node = cls(process, name, stderr_path)
        nursery.start_soon(node._read_answers)
        try:
            with trio.fail_after(timeout):
                await node._started.wait()
        except trio.TooSlowError:
            await node.kill()
            raise NodeError(f"{name} did not start within {timeout}s: {node.stderr_tail()}") from None
        if not node.peer_id:
            await node.kill()
            raise NodeError(f"{name} exited at start: {node.stderr_tail()}")
        return node

    async def _read_answers(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        try:
            while chunk := await self.process.stdout.receive_some(1 << 20):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._dispatch(json.loads(line))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            self._closed = True
            self._started.set()
            for event, _ in self._waiting.values():
                event.set()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("event") == "started":
            self.peer_id = message["peer_id"]
            self.addrs = message["addrs"]
            self._started.set()
            return
        ident = message.get("id")
        waiter = self._waiting.get(ident) if isinstance(ident, int) else None
        if waiter is not None:
            waiter[1].append(message)
            waiter[0].set()

    async def request(self, op: str, answer_within: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Send one command and return its answer; NodeError if the node is gone, errs, or is silent for
        `answer_within` seconds."""
        if self._closed or self.process.stdin is None:
            raise NodeError(f"{self.name} is not running")
        ident = next(self._ids)
        event, answers = trio.Event(), list[dict[str, Any]]()
        self._waiting[ident] = (event, answers)
        try:
            await self.process.stdin.send_all(json.dumps({"id": ident, "op": op, **fields}).encode() + b"\n")
            with trio.fail_after(answer_within):
                await event.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise NodeError(f"{self.name} is not running") from None
        except trio.TooSlowError:
            raise NodeError(f"{self.name} did not answer {op} within {answer_within}s") from None
        finally:
            del self._waiting[ident]
        if not answers:
            raise NodeError(f"{self.name} exited during {op}: {self.stderr_tail()}")
        if "error" in answers[0]:
            raise NodeError(f"{self.name}: {op}: {answers[0]['error']}")
        return answers[0]

    async def kill(self) -> None:
        """End the node at once (as a crash would) and reap it."""
        if self.process.returncode is None:
            self.process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await self.process.wait()

    async def close(self, grace: float = 5.0) -> None:
        """Ask the node to stop (stdin EOF); kill it if it has not within `grace` seconds."""
        if self.process.stdin is not None:
            with trio.CancelScope(shield=True), suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.process.stdin.aclose()
        with trio.CancelScope(shield=True), trio.move_on_after(grace):
            await self.process.wait()
        await self.kill()

    def stderr_tail(self, size: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


async def wait_until_meshed(nodes: Sequence[NodeProcess], timeout: float) -> None:
    """Wait until every node is ready and knows every other one as a member of the overlay (linked to it, or through
    links); NodeError naming the laggards otherwise."""
    names = {node.peer_id for node in nodes}
    statuses: list[dict[str, Any]] = []
    with trio.move_on_after(timeout):
        while True:
            statuses = [await node.request("status") for node in nodes]
            if all(s["ready"] and names - {s["peer_id"]} <= set(s["members"]) for s in statuses):
                return
            await trio.sleep(0.2)
    lagging = [(n.name, len(s["members"]), len(s["linked"]), s["ready"]) for n, s in zip(nodes, statuses, strict=False)]
    raise NodeError(f"not meshed within {timeout}s (name, members, links, ready): {lagging}")


@asynccontextmanager
async def running_cluster(
    root: Path,
    count: int,
    router_args: Sequence[str] = (),
    mesh_timeout: float = 60.0,
    start_timeout: float = START_TIMEOUT,
) -> AsyncIterator[list[NodeProcess]]:
    """`count` nodes under `root` (node0 first, then the others a few at a time, bootstrapped from it), meshed;
    all closed on exit, also on failure. Each node must start within `start_timeout` seconds.

    Node i announces registry address `127.0.0.1:<20000 + i>` (never dialled by the router itself).
    """
    nodes: list[NodeProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            first = await NodeProcess.start(
                nursery, "node0", root / "node0", "127.0.0.1:20000", router_args, start_timeout
            )
            nodes.append(first)
            bootstrap = ["--static-bootstrap-peers", first.addrs[0]]

            starting = trio.CapacityLimiter(START_CONCURRENCY)

            async def start_one(i: int) -> None:
                async with starting:
                    node = await NodeProcess.start(
                        nursery,
                        f"node{i}",
                        root / f"node{i}",
                        f"127.0.0.1:{20000 + i}",
                        [*router_args, *bootstrap],
                        start_timeout,
                    )
                nodes.append(node)

            async with trio.open_nursery() as starters:
                for i in range(1, count):
                    starters.start_soon(start_one, i)
            nodes.sort(key=lambda node: int(node.name.removeprefix("node")))
            await wait_until_meshed(nodes, mesh_timeout)
            yield nodes
        finally:
            async with trio.open_nursery() as closer:
                for node in nodes:
                    closer.start_soon(node.close)
            nursery.cancel_scope.cancel()
