"""A router node driven over stdin/stdout, for multi-process tests and the benchmark.

    python -m benchmark.router_node --registry-address HOST:PORT [router flags, see `spegel registry --help`]

On start it prints one JSON line `{"event": "started", "peer_id": ..., "addrs": [...]}`. Then each stdin line is
a JSON command `{"id": N, "op": ..., ...}`, answered by one stdout line `{"id": N, ...}` (`"error"` on failure);
commands run concurrently, so a slow one (`watch`) does not hold up the rest. The process ends at stdin EOF.

Operations: `status` (connected and linked peers, the members it knows, the keys held per peer in the index, how
many it refused, how many messages skipped numbers); `advertise` (keys,
state, available); `withdraw` (keys); `lookup` (key, count, timeout:
holders and seconds taken); `lookups` (keys, count, timeout: latencies in seconds and how many found); `watch`
(keys, timeout: the wall-clock time each key first became visible); `inspect` (origin: what this node knows of it);
`usage` (CPU seconds, RSS bytes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import sys
import time
from typing import Any

import trio

from spegel.routing.base import Holder, KeyState
from spegel.routing.config import RouterConfigError, RouterOptions, open_router
from spegel.routing.libp2p.router import Libp2pRouter

MAX_LINE = 64 * 1024 * 1024


class CommandError(Exception):
    """A command that cannot be carried out; reported in its answer."""


def rss_bytes() -> int:
    """Resident set size of this process, from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _holder(holder: Holder) -> list[object]:
    return [holder.address, holder.state.value, holder.available]


async def _watch(router: Libp2pRouter, keys: list[str], timeout: float) -> dict[str, float]:
    seen: dict[str, float] = {}
    remaining = list(dict.fromkeys(keys))
    with trio.move_on_after(timeout):
        while remaining:
            now = trio.current_time()
            found = [key for key in remaining if router.index.lookup(key, 1, now)]
            for key in found:
                seen[key] = time.time()
            remaining = [key for key in remaining if key not in seen]
            if remaining:
                await router.wait_changed()
    return seen


async def execute(router: Libp2pRouter, command: dict[str, Any]) -> dict[str, Any]:
    op = command.get("op")
    if op == "status":
        return {
            "peer_id": str(router.peer_id),
            "addrs": router.listen_addrs(),
            "ready": router.ready(),
            "connected": sorted(str(peer) for peer in router.connected_peers()),
            "linked": sorted(str(peer) for peer in router.linked_peers()),
            "members": sorted(router.origins.known),
            "gaps": router.gaps,
            "settled": router.settled,
            "frames": router.frames,
            "handled": router.handled,
            "handling_seconds": router.handling_seconds,
            "holds": {peer: router.index.holds(peer) for peer in router.index.known_peers()},
            "refused": router.index.refused,
        }
    if op == "advertise":
        state = KeyState(command.get("state", KeyState.COMPLETE.value))
        await router.advertise(command["keys"], state, command.get("available"))
        return {"at": time.time()}
    if op == "withdraw":
        await router.withdraw(command["keys"])
        return {"at": time.time()}
    if op == "lookup":
        start = time.perf_counter()
        holders = await router.lookup(command["key"], command.get("count", 3), command.get("timeout", 0.02))
        return {"holders": [_holder(h) for h in holders], "elapsed": time.perf_counter() - start}
    if op == "lookups":
        latencies, found = [], 0
        for key in command["keys"]:
            start = time.perf_counter()
            holders = await router.lookup(key, command.get("count", 3), command.get("timeout", 0.02))
            latencies.append(time.perf_counter() - start)
            found += bool(holders)
        return {"latencies": latencies, "found": found}
    if op == "watch":
        return {"seen": await _watch(router, command["keys"], command.get("timeout", 10.0))}
    if op == "inspect":
        origin, now = command["origin"], trio.current_time()
        record = router.origins.known.get(origin)
        return {
            "sequence": None if record is None else list(dataclasses.astuple(record.sequence)),
            "address": router.index.address(origin),
            "heard": router.index.heard(origin, now),
            "holds": router.index.holds(origin),
            "linked": origin in {str(peer) for peer in router.linked_peers()},
        }
    if op == "usage":
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"cpu": usage.ru_utime + usage.ru_stime, "rss": rss_bytes()}
    raise CommandError(f"unknown op {op!r}")


async def serve(options: RouterOptions, registry_address: str) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    write_lock = trio.Lock()

    async def emit(message: dict[str, Any]) -> None:
        async with write_lock:
            await stdout.send_all(json.dumps(message).encode() + b"\n")

    async def run_one(router: Libp2pRouter, line: bytes) -> None:
        try:
            command = json.loads(line)
            ident = command.get("id")
        except (ValueError, AttributeError):
            await emit({"id": None, "error": f"not a JSON command: {line[:80]!r}"})
            return
        try:
            answer = await execute(router, command)
        except (CommandError, KeyError, ValueError, TypeError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        await emit({"id": ident, **answer})

    async with open_router(options, registry_address) as router:
        await emit({"event": "started", "peer_id": str(router.peer_id), "addrs": router.listen_addrs()})
        async with trio.open_nursery() as nursery:
            buffer = b""
            while chunk := await stdin.receive_some(1 << 20):
                buffer += chunk
                if len(buffer) > MAX_LINE:
                    raise CommandError("command line too long")
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        nursery.start_soon(run_one, router, line)
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    from spegel.cli import add_router_flags, router_options
    from spegel.flags import FlagParser, log_level

    parser = FlagParser(prog="python -m benchmark.router_node", environ={})
    parser.add_argument("--registry-address", required=True, help="HOST:PORT announced as this node's registry")
    parser.add_argument("--log-level", type=log_level, default="warning", help="spegel's own log (libp2p's: warning)")
    add_router_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("spegel").setLevel(args.log_level.upper())
    try:
        options = router_options(args)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    try:
        trio.run(serve, options, args.registry_address)
    except RouterConfigError as exc:
        sys.stderr.write(f"node: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
