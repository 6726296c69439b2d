"""Running a scenario on the kind backend: the same runs, phases and tables as `benchmark/runner.py`, with pulls
made by a DaemonSet and timed from the kubelet's `Pulled` events, as spegel-org/benchmark measures them.

Per run (mode, repetition, image of `plan(scenario)`), on a `KindCluster`:
1. every worker gets the mode's hosts.toml (`KindCluster.set_hosts`); `proxy`: a fresh pull-through cache;
   mirror modes: `kubectl apply -k mirror-<mode>`, then `rollout status` of the mirror DaemonSet;
2. each phase applies its workload DaemonSet (`workload-<image>-<phase>.yaml`, one name for all phases, so
   `update` rolls the DaemonSet that `create` made from the create image to the update image):
   - `create`: every worker is labelled at once, so every worker pulls at once (batch 0);
   - `update`: batch by batch (`scenario.update_batches()`, 20 % of the nodes by default): the batch's pods
     of the earlier image are deleted and its workers labelled; the DaemonSet (`OnDelete`) makes each a pod
     of the new image; the next batch starts when every node of this one has pulled (or timed out).
     Not a RollingUpdate with maxUnavailable 20 %: the synthetic images hold no program, so their pods never
     become available, and the DaemonSet controller replaces unavailable old pods all at once, without
     counting them against maxUnavailable. Driving the batches here keeps them the netns runner's batches.
     A scenario with `update` but no `create` works the same way: the DaemonSet is made with the update
     image on no labelled worker, and the batches label the workers;
   - `advertise` is not run on kind (nothing is recorded): it needs each node's mirror probed from the
     benchmark process and containerd's events, which the netns backend has and kind does not expose;
3. a node's pull is the kubelet's `Pulled` event of a current workload pod for the phase's image: `duration`
   from the message, `end` the event's time (the kubelet's events carry whole seconds, so `start`/`end` are
   within a second; `duration` is exact), `start = end - duration`. A node with no such event within the
   scenario's pull_timeout gets ok=False, with the pod's waiting reason in `error`;
4. afterwards the cluster is reset (`KindCluster.reset`): workload, mirror and cache gone, the pulled images
   and partial downloads removed from every worker, so every run starts cold. After a failed run too.

Tables written (see `runner.py`): `pulls` (phase, node, batch, phase_start, start, end, duration, ok,
error: nodes are the kind node names), `traffic` (phase, phase_start, phase_end, upstream_bytes: the upstream
container's transmitted bytes; upstream_log_bytes: its access log; in mirror modes the mirrors' counters
summed, scraped through the API server's pod proxy) and `failures`. `events`, `visibility` and `usage` stay
empty on kind.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import trio

from benchmark.cluster import kindplan
from benchmark.cluster.base import ClusterError
from benchmark.cluster.kind import KindCluster
from benchmark.measure import counter_delta, parse_mirror_metrics
from benchmark.progress import Progress
from benchmark.runner import PhaseImage, Recorder, ScenarioRunner, run_labels, traffic_record
from benchmark.scenario import MIRROR_MODES, RunKey, Scenario

POLL_INTERVAL = 1.0
_T = TypeVar("_T")


# --- pure: kubectl JSON -> records ---


def event_time(event: dict[str, Any]) -> float | None:
    """When an event last happened (epoch seconds): `eventTime` (microseconds), else `lastTimestamp`, else
    `firstTimestamp` (whole seconds); None when it has none."""
    for key in ("eventTime", "lastTimestamp", "firstTimestamp"):
        value = event.get(key)
        if value:
            try:
                return datetime.fromisoformat(value).timestamp()
            except ValueError:
                continue
    return None


def pod_nodes(pods: dict[str, Any]) -> dict[str, str]:
    """Pod UID -> node name (empty while unscheduled) for the pods of `kubectl get pods -o json`."""
    return {
        item["metadata"]["uid"]: (item.get("spec") or {}).get("nodeName", "")
        for item in pods.get("items") or []
        if item.get("metadata", {}).get("uid")
    }


def pulled_records(
    events: dict[str, Any], pods: dict[str, Any], reference: str, nodes: list[str]
) -> dict[str, dict[str, Any]]:
    """Node -> pull record (node, start, end, duration, ok, error) from `kubectl get events -o json`, for the
    `Pulled` events of `reference` whose pod is in `pods` (so events of earlier runs' pods are left out) and
    runs on one of `nodes` (the pod's spec.nodeName, else the event's source.host). The earliest event per
    node counts; nodes without one are absent."""
    where = pod_nodes(pods)
    found: dict[str, dict[str, Any]] = {}
    for event in events.get("items") or []:
        if event.get("reason") != "Pulled":
            continue
        parsed = kindplan.parse_pulled_event(event.get("message", ""))
        if parsed is None or parsed[0] != reference:
            continue
        uid = (event.get("involvedObject") or {}).get("uid", "")
        if uid not in where:
            continue
        node = where[uid] or (event.get("source") or {}).get("host", "")
        end = event_time(event)
        if node not in nodes or end is None:
            continue
        duration = parsed[1]
        record = {"node": node, "start": end - duration, "end": end, "duration": duration, "ok": True, "error": ""}
        if node not in found or end < found[node]["end"]:
            found[node] = record
    return found


def stale_pods(pods: dict[str, Any], nodes: list[str], reference: str) -> list[str]:
    """Names of the pods on `nodes` whose container runs another image than `reference`."""
    stale = []
    for item in pods.get("items") or []:
        spec = item.get("spec") or {}
        images = [c.get("image") for c in spec.get("containers") or []]
        if spec.get("nodeName") in nodes and reference not in images:
            stale.append(item["metadata"]["name"])
    return stale


def waiting_reason(pods: dict[str, Any], node: str, reference: str) -> str:
    """Why `node`'s pod of `reference` is waiting (`ErrImagePull: ...`), or what is missing."""
    for item in pods.get("items") or []:
        spec = item.get("spec") or {}
        if spec.get("nodeName") != node or reference not in [c.get("image") for c in spec.get("containers") or []]:
            continue
        for status in (item.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting")
            if waiting:
                return f"{waiting.get('reason', '')}: {waiting.get('message', '')}".strip(": ")
        return "its pod shows no waiting reason"
    return "no pod of the image on the node"


# --- the runner ---


class KindRunner(ScenarioRunner):
    """Runs every run of `plan(scenario)` on a `KindCluster` (see the module docstring). Inherits from the
    netns runner what does not depend on the backend: `push_images` (to `cluster.upstream_url`) and
    `run_all` (failures, flushing, progress); `run_one` is kind's."""

    def __init__(
        self,
        scenario: Scenario,
        cluster: KindCluster,
        phase_images: dict[tuple[str, str], PhaseImage],
        recorder: Recorder,
        progress: Progress,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        # KindCluster is no `Cluster` (it starts no processes per run): only its upstream is used by the base.
        super().__init__(scenario, cluster, phase_images, recorder, cluster.directory, progress)  # type: ignore[arg-type]
        self.kind = cluster
        self.poll_interval = poll_interval

    async def run_one(self, key: RunKey) -> None:
        try:
            await self._run_phases(key)
        except ClusterError:
            await _blocking(self.kind.reset, key.mode)  # the next run must start cold after a failed one too
            raise
        self.progress.step(f"{key.label}: resetting the cluster")
        await _blocking(self.kind.reset, key.mode)

    async def _run_phases(self, key: RunKey) -> None:
        self.progress.step(f"{key.label}: configuring the nodes")
        await _blocking(self.kind.set_hosts, key.mode)
        if key.mode == "proxy":
            await _blocking(self.kind.start_cache)
        if key.mode in MIRROR_MODES:
            self.progress.step(f"{key.label}: deploying the mirror")
            await _blocking(self.kind.deploy_mirror, key.mode)
        for phase in self.scenario.phases:
            if phase == "advertise":
                continue  # not measurable on kind (module docstring)
            self.progress.step(f"{key.label}: {phase}")
            await self._run_phase(key, phase)

    async def _run_phase(self, key: RunKey, phase: str) -> None:
        shape = next(s for s in self.scenario.images if s.name == key.image)
        reference = self.images[key.image, phase].reference(self.kind.registry_host)
        phase_labels = {**run_labels(key), "phase": phase}
        workers = self.kind.workers
        if phase == "create":
            batches = [workers]
        else:
            batches = [[workers[i] for i in members] for members in self.scenario.update_batches()]
        upstream_before = await _blocking(self.kind.upstream_bytes)
        logged_before = await _blocking(self.kind.upstream_log_bytes)
        mirrors_before = await _blocking(self._mirror_counters, key.mode)
        phase_start = time.time()
        await _blocking(
            self.kind.kubectl, "apply", "-f", str(self.kind.directory / kindplan.workload_file(shape, phase))
        )
        for batch, nodes in enumerate(batches):
            if len(batches) > 1:
                self.progress.step(f"{key.label}: {phase} batch {batch + 1}/{len(batches)}")
            for record in await self._pull_batch(reference, nodes):
                self.recorder.add("pulls", phase_labels, {**record, "batch": batch, "phase_start": phase_start})
        phase_end = time.time()
        upstream_after = await _blocking(self.kind.upstream_bytes)
        logged_after = await _blocking(self.kind.upstream_log_bytes)
        mirrors_after = await _blocking(self._mirror_counters, key.mode)
        upstream, logged = upstream_after - upstream_before, logged_after - logged_before
        counters = counter_delta(mirrors_before, mirrors_after)
        self.recorder.add("traffic", phase_labels, traffic_record(phase_start, phase_end, upstream, logged, counters))

    async def _pull_batch(self, reference: str, nodes: list[str]) -> list[dict[str, Any]]:
        """Make `nodes` pull `reference` (replace their pods of another image, label them) and wait for their
        Pulled events; one record per node, in `nodes` order."""
        start = time.time()
        stale = stale_pods(await _blocking(self._workload_pods), nodes, reference)
        if stale:
            await _blocking(
                self.kind.kubectl, "-n", kindplan.WORKLOAD_NAMESPACE, "delete", "pod", "--wait=false", *stale
            )
        await _blocking(self.kind.kubectl, "label", "nodes", *nodes, f"{kindplan.PULL_LABEL}=true", "--overwrite")
        deadline = time.monotonic() + self.scenario.pull_timeout
        while True:
            pods = await _blocking(self._workload_pods)
            events = await _blocking(
                self.kind.kubectl_json,
                "-n",
                kindplan.WORKLOAD_NAMESPACE,
                "get",
                "events",
                "--field-selector=reason=Pulled",
            )
            found = pulled_records(events, pods, reference, nodes)
            if len(found) == len(nodes) or time.monotonic() >= deadline:
                break
            await trio.sleep(self.poll_interval)
        records = []
        for node in nodes:
            if node in found:
                records.append(found[node])
                continue
            end = time.time()
            error = f"no Pulled event for {reference} within {self.scenario.pull_timeout:.0f} s: "
            error += waiting_reason(pods, node, reference)
            records.append(
                {"node": node, "start": start, "end": end, "duration": end - start, "ok": False, "error": error[:500]}
            )
        return records

    def _workload_pods(self) -> dict[str, Any]:
        selector = f"--selector=app={kindplan.WORKLOAD_NAME}"
        return self.kind.kubectl_json("-n", kindplan.WORKLOAD_NAMESPACE, "get", "pods", selector)

    def _mirror_counters(self, mode: str) -> dict[str, Any]:
        """The mirrors' counters summed over pods (empty without a mirror), through the API server's proxy."""
        if mode not in MIRROR_MODES:
            return {}
        namespace = kindplan.MIRROR_NAMESPACE
        pods = self.kind.kubectl_json("-n", namespace, "get", "pods", "--selector=app.kubernetes.io/component=mirror")
        totals: dict[str, Any] = {}
        for item in pods.get("items") or []:
            name = item["metadata"]["name"]
            text = self.kind.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{name}:9090/proxy/metrics")
            for counter, value in parse_mirror_metrics(text).items():
                totals[counter] = totals.get(counter, 0) + value
        return totals


async def _blocking(function: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking cluster call in a worker thread; on cancellation the thread is left to finish (every
    command it runs has a timeout) and the cluster's teardown follows."""
    return await trio.to_thread.run_sync(functools.partial(function, *args), abandon_on_cancel=True)
