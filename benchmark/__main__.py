"""`python -m benchmark run SCENARIO [--out DIR]` runs a scenario and writes its report;
`python -m benchmark report DIR` rebuilds the report of a kept run;
`python -m benchmark cleanup WORKDIR` removes what a killed run left (its namespaces and daemons).

Errors (a bad scenario, no root, a missing tool) print one line and exit 2 (usage) or 1 (environment);
Ctrl-C, SIGTERM or SIGHUP tear the cluster down, keep the data measured so far, and exit 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path

import trio

from benchmark import report, spegelgo
from benchmark.cluster.base import ClusterError
from benchmark.daemons import DaemonError
from benchmark.images import PushError
from benchmark.progress import Progress
from benchmark.scenario import Scenario, ScenarioError, load, plan


def _fail(message: str, code: int = 1) -> int:
    sys.stderr.write(f"benchmark: error: {message}\n")
    return code


def run(scenario: Scenario, out: Path, workdir: Path, spegel_go_binary: Path | None = None) -> None:
    """Build the images, bring up the cluster, run every run, write the data and the report."""
    from benchmark.cluster.kind import KindCluster
    from benchmark.cluster.netns import NetnsCluster
    from benchmark.kindrun import KindRunner
    from benchmark.runner import Recorder, ScenarioRunner, build_images, write_meta

    progress = Progress(len(plan(scenario)))
    if scenario.cluster.backend == "sim":
        from benchmark.sim.run import run as simulate

        simulate(scenario, out, progress)
        progress.note(f"report: {report.build(out)}")
        return
    progress.note(f"building images for {scenario.name} (cached under the image cache)")
    phase_images = build_images(scenario)
    started = time.time()
    write_meta(out, scenario, phase_images, started=started)
    recorder = Recorder(out)
    backend = scenario.cluster.backend
    cluster = (
        NetnsCluster(scenario.cluster, workdir, spegel_go_binary=spegel_go_binary)
        if backend == "netns"
        else KindCluster(scenario, out / "kind")
    )
    with cluster:
        if isinstance(cluster, KindCluster):
            runner: ScenarioRunner = KindRunner(scenario, cluster, phase_images, recorder, progress)
        else:
            runner = ScenarioRunner(scenario, cluster, phase_images, recorder, workdir, progress)

        async def main() -> None:
            progress.note(f"cluster up; pushing images to {cluster.upstream_url}")
            interrupted = False
            async with trio.open_nursery() as nursery:

                async def stop_on_signals() -> None:
                    nonlocal interrupted
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                        async for _ in signals:
                            interrupted = True
                            nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signals)
                await runner.push_images()
                await runner.run_all()
                nursery.cancel_scope.cancel()
            if interrupted:
                raise KeyboardInterrupt

        try:
            trio.run(main)
        finally:
            recorder.flush()
    write_meta(out, scenario, phase_images, started=started, finished=time.time())
    progress.note(f"report: {report.build(out)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description="Spegel benchmark suite")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run a scenario and write reports/<run>/")
    run_parser.add_argument("scenario", type=Path)
    run_parser.add_argument("--out", type=Path, help="report directory (default: reports/<scenario>-<time>)")
    run_parser.add_argument("--repetitions", type=int, help="override the scenario's repetitions (>= 1)")
    run_parser.add_argument(
        "--workdir", type=Path, help="node state and logs (default: /var/tmp/spegel-bench/<scenario>-<time>)"
    )
    run_parser.add_argument(
        "--spegel-go-binary",
        help=f"the Spegel (Go) binary for mode {spegelgo.MODE} (default: ${spegelgo.ENVIRONMENT}; without it the "
        "mode is skipped)",
    )
    report_parser = commands.add_parser("report", help="rebuild the report of a kept run")
    report_parser.add_argument("directory", type=Path)
    cleanup_parser = commands.add_parser("cleanup", help="remove what a killed run left (its namespaces, daemons)")
    cleanup_parser.add_argument("workdir", type=Path)
    args = parser.parse_args(argv)

    if args.command == "cleanup":
        from benchmark.cluster.netns import cleanup

        try:
            removed = cleanup(args.workdir)
        except ClusterError as exc:
            return _fail(str(exc))
        print("\n".join(removed) or "nothing left to remove")
        return 0

    if args.command == "report":
        try:
            print(report.build(args.directory))
        except report.ReportError as exc:
            return _fail(str(exc))
        return 0

    try:
        scenario = load(args.scenario)
    except ScenarioError as exc:
        return _fail(str(exc), 2)
    if args.repetitions is not None:
        if args.repetitions < 1:
            return _fail("--repetitions must be at least 1", 2)
        scenario = dataclasses.replace(scenario, repetitions=args.repetitions)
    try:
        binary = spegelgo.find_binary(args.spegel_go_binary)
        scenario, note = spegelgo.select_modes(scenario, binary)
    except spegelgo.SpegelGoError as exc:
        return _fail(str(exc), 2)
    if note:
        sys.stderr.write(f"benchmark: {note}\n")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("reports") / f"{scenario.name}-{stamp}"
    workdir = args.workdir or Path("/var/tmp/spegel-bench") / f"{scenario.name}-{stamp}"
    # Ctrl-C tears the cluster down even when the run was started with SIGINT ignored (a shell's background job):
    # Python keeps an inherited SIG_IGN, and the run would go on to its end
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run(scenario, out, workdir, binary)
    except BaseException as exc:  # sorted below; trio may wrap what it raises in a group
        if _find(exc, KeyboardInterrupt) is not None:
            sys.stderr.write(f"\nbenchmark: interrupted; the cluster is torn down, data so far in {out}/data\n")
            return 130
        known = _find(exc, (ClusterError, DaemonError, PushError, report.ReportError))
        if known is None:
            raise
        return _fail(str(known))
    return 0


def _find(exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]) -> BaseException | None:
    """`exc` if it is a `kind`, else the first `kind` inside it (exception groups), else None."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _find(inner, kind)) is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
