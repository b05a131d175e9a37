"""Chaos: four faults in one local platform (kwok nodes, host worker processes), one table.

- worker: the host worker SIGKILLed --kills (5) times during one BertExperiment, each time
  at a random moment after its attempt has saved a checkpoint, and started again at once;
- operator: the operator SIGKILLed during a burst of --burst (30) BertExperiments (no worker
  polls their queues: they only need their workflow and children), and started again;
- temporal: the Temporal dev server stopped and started again mid-run (same address, same
  database file);
- apiserver: kube-apiserver SIGKILLed mid-run and started again; the operator must then
  still see events (deleting the finished experiment needs its finalizer handler).

Per scenario: faults survived; steps recomputed per crash ÷ save interval (max and mean):
the step the crashed attempt had reached minus the step its successor resumed from, where
"reached" is its last progress.json step (written every 2 s and on each save) carried
forward to the SIGKILL at its own pace, never past its next save; duplicate workflows (a
second run of an experiment's coordinator or child, or an id it should not have) and
children (more than its 2 Deployments and 2 PVCs); seconds from each fault until the
experiments show it is behind them (status past the step reached at the fault; for the
burst, every experiment started with its children). Goals: every fault survived, 0
duplicates, <= 1.0 save interval recomputed per crash; exits 1 when one is missed. A
workflow task that fails its replay (TMPRL1100) fails its scenario at once; --logs keeps the
logs and the trained experiments' workflow histories (for a Replayer) of the run.

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/chaos.py \
        [--only worker|operator|temporal|apiserver ...] [--kills 5] [--burst 30] [--seed 7]
        [--logs DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from _harness import minilm_path
from _operator_harness import Bench, bench_platform
from operator_latency import manifest
from operator_scale import done, manifests
from resume_waste import _reached, _resumed_from
from temporalio.client import Client, WorkflowExecutionStatus
from tempotrain_dev.cluster import kwok_namespace
from tempotrain_dev.platform import Platform
from tempotrain_dev.processes import log_tail, pids_running
from tempotrain_dev.waiting import WaitTimeout, wait_for
from tempotrain_workers.api import workflow_id_for
from tempotrain_workers.sample_data import write_sentiment_jsonl

RESOURCE = "bertexperiments.tempotrain.dev"
KIND = "BertExperiment"
# Relative to the snapshots volume (a spec may not name the worker's own disk): main() links
# the offline MiniLM there.
MODEL = "models/minilm"
SCENARIOS = ("worker", "operator", "temporal", "apiserver")
LABELS = {  # the table's names
    "worker": "worker SIGKILL",
    "operator": "operator SIGKILL",
    "temporal": "temporal restart",
    "apiserver": "apiserver restart",
}
CHILDREN_EACH = 2  # Deployments (training, eval) and PVCs (snapshots, runs) per experiment
DATASET_ROWS = 1200  # 90 % train: 68 steps per epoch at batch 16
RECONCILED = b"Handler 'bertexperiment_reconcile' succeeded"  # kopf's line, one per experiment
TRAINING_PHASES = {"Pending", "Snapshotting", "Training"}
RUN_TIMEOUT = 600.0
# Each poll of the apiserver is a kubectl process: on 2 cores, CPU the trainer is short of.
STATUS_POLL = 0.5
NONDETERMINISM = b"[TMPRL1100]"  # the SDK's code for a replay that took another path
# The SDK's line for a failed workflow task (its run id amid terminal colour codes).
REPLAY_FAILURE = re.compile(
    rb"Failing workflow task.*?run_id.*?(?P<run_id>[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12})"
    rb'.*?message: "(?P<message>[^"]*)"'
)
T = TypeVar("T")


@dataclass
class Outcome:
    scenario: str
    faults: int
    survived: int = 0
    recomputed: list[int] = field(default_factory=list)  # steps, one entry per crash
    save_steps: int | None = None  # None: nothing trained in this scenario
    duplicate_workflows: int = 0
    duplicate_children: int = 0
    converge: list[float] = field(default_factory=list)  # seconds, one entry per fault
    end: str = ""

    def ratios(self) -> list[float]:
        return [r / self.save_steps for r in self.recomputed] if self.save_steps else []

    def met(self) -> bool:
        return (
            self.survived == self.faults
            and self.duplicate_workflows == 0
            and self.duplicate_children == 0
            and all(r <= 1.0 for r in self.ratios())
        )


class Attempts:
    """A run dir's training attempts, sampled in a thread: each attempt's progress.json
    writes (step, mtime), counted only once written by its own trainer (a fresh attempt
    finds its predecessor's file still there)."""

    def __init__(self, run_dir: Path, save_steps: int) -> None:
        self.run_dir = run_dir
        self.save_steps = save_steps
        self.writes: dict[int, list[tuple[int, float]]] = {}
        self.killed_at: dict[int, float] = {}  # attempt -> wall time of its SIGKILL
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @contextlib.contextmanager
    def sampling(self) -> Iterator[Attempts]:
        thread = threading.Thread(target=self._sample_until_stopped, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def numbers(self) -> list[int]:
        return sorted(int(p.stem.rsplit("-", 1)[1]) for p in self.run_dir.glob(".job-attempt-*"))

    def latest(self) -> int | None:
        numbers = self.numbers()
        return numbers[-1] if numbers else None

    def resumed_from(self, attempt: int) -> int:
        return _resumed_from(self.run_dir, attempt)

    def sample(self) -> None:
        attempt = self.latest()
        if attempt is None:
            return
        try:
            written = (self.run_dir / "progress.json").stat().st_mtime
            started = (self.run_dir / f".job-attempt-{attempt}.json").stat().st_mtime
        except FileNotFoundError:
            return
        if written < started:
            return
        write = (_reached(self.run_dir), written)
        with self._lock:
            writes = self.writes.setdefault(attempt, [])
            if not writes or writes[-1] != write:
                writes.append(write)

    def step(self) -> int:
        """The step the current attempt has written last (its resume step before that)."""
        attempt = self.latest()
        if attempt is None:
            return 0
        with self._lock:
            writes = list(self.writes.get(attempt, []))
        return writes[-1][0] if writes else self.resumed_from(attempt)

    def checkpointed(self) -> int | None:
        """The current attempt, once it has saved a checkpoint past its resume step and its
        pace is known."""
        attempt = self.latest()
        if attempt is None or self.pace(attempt) is None:
            return None
        resumed = self.resumed_from(attempt)
        saved = [
            int(json.loads(m.read_text())["step"])
            for m in self.run_dir.glob("checkpoint-*/tempotrain-checkpoint.json")
        ]
        return attempt if any(step > resumed for step in saved) else None

    def trained(self) -> bool:
        """The trainer has written its result: the run trains no more."""
        return (self.run_dir / "result.json").exists()

    def pace(self, attempt: int) -> float | None:
        """Seconds per step of the attempt so far (its saves included)."""
        with self._lock:
            writes = list(self.writes.get(attempt, []))
        if len(writes) < 2 or writes[-1][0] <= writes[0][0]:
            return None
        (first, first_at), (last, last_at) = writes[0], writes[-1]
        return (last_at - first_at) / (last - first)

    def reached(self, attempt: int) -> int:
        """The step the attempt had reached when it ended: its last write, and for one
        SIGKILLed the steps after it at the attempt's own pace (saves included), up to its
        next save (a save writes progress.json first)."""
        self.sample()
        with self._lock:
            writes = list(self.writes.get(attempt, []))
        if not writes:
            return self.resumed_from(attempt)
        last, last_at = writes[-1]
        killed_at, pace = self.killed_at.get(attempt), self.pace(attempt)
        if killed_at is None or pace is None:
            return last
        next_save = (last // self.save_steps + 1) * self.save_steps
        return min(next_save, last + int(max(0.0, killed_at - last_at) / pace))

    def recomputed(self, since: int = 2) -> list[int]:
        """Per attempt from `since` on: steps its predecessor had reached past its resume."""
        return [
            max(0, self.reached(n - 1) - self.resumed_from(n))
            for n in self.numbers()
            if n >= max(2, since)
        ]


@dataclass
class Chaos:
    bench: Bench
    platform: Platform
    args: argparse.Namespace
    rng: random.Random
    operator: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    _worker_log_read: int = 0  # how far the worker's log has been searched for replay failures

    # -- processes ------------------------------------------------------------------------

    def ensure_operator(self) -> None:
        if self.operator is None or self.operator.poll() is not None:
            self.operator = self.bench.start_operator()

    def ensure_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            self.worker = self.bench.start_worker()

    def stop(self) -> None:
        for process in (self.worker, self.operator):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    # -- the cluster ----------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any]:
        return dict(self._object(name).get("status") or {})

    def experiment(self, name: str, epochs: float) -> dict[str, Any]:
        spec: dict[str, Any] = json.loads(manifest(name, MODEL, self.args.save_steps, epochs))
        spec["spec"]["training"] |= {
            # Checkpoints are ~270 MB here (weights and optimizer): keep few.
            "saveTotalLimit": 3,
            # A killed worker is taken for lost after this: the lower, the faster a resume.
            "heartbeatTimeoutSeconds": self.args.heartbeat_seconds,
        }
        self.bench.kubectl("apply", "-n", self.bench.namespace, "-f", "-", input=json.dumps(spec))
        return spec

    def status_past(self, name: str, step: int) -> bool:
        """Its status shows training past `step`, or training over."""
        status = self.status(name)
        shown = (status.get("progress") or {}).get("step") or 0
        return bool(shown > step) or _trained(status)

    def kill_worker(self) -> None:
        if self.worker is not None:
            self.worker.send_signal(signal.SIGKILL)
            self.worker.wait()

    def wait(
        self, name: str, condition: Callable[[], T | None], what: str, interval: float = STATUS_POLL
    ) -> T:
        """wait_for a condition of experiment `name`'s run, failing at once when one of its
        workflow tasks fails its replay (the run would only wait for a fixed worker)."""

        def unless_replay_failed() -> T | None:
            self._no_replay_failure(name)
            return condition()

        result: T = wait_for(
            unless_replay_failed,
            timeout=RUN_TIMEOUT,
            what=what,
            interval=interval,
            detail=self.logs,
        )
        return result

    def _no_replay_failure(self, name: str) -> None:
        with (self.bench.root / "worker.log").open("rb") as log:
            # From where the last search ended, less a line that may have been cut there.
            start = max(0, self._worker_log_read - 4096)
            log.seek(start)
            new = log.read()
        self._worker_log_read = start + len(new)
        failed = {
            m["run_id"].decode(): m["message"].decode()
            for m in REPLAY_FAILURE.finditer(new)
            if NONDETERMINISM in m["message"]
        }
        if not failed:
            return
        mine = _workflows_of(self.bench.namespace, name)
        for execution in asyncio.run(_executions(self.bench.temporal_address)):
            if execution.run_id in failed and mine.match(execution.id):
                raise RuntimeError(
                    f"{execution.id} (run {execution.run_id}) failed its replay: "
                    f"{failed[execution.run_id]}"
                )

    def finish(self, name: str, outcome: Outcome, attempts: Attempts) -> None:
        """Wait for the run's end; fill in its phase and duplicates."""
        phase = self.wait(name, lambda: self._ended(name), f"{name} to end", interval=2)
        outcome.end = phase
        if phase != "Succeeded":
            outcome.survived = 0
        outcome.duplicate_workflows = duplicate_workflows(
            [self._object(name)], self.bench.temporal_address
        )
        outcome.duplicate_children = duplicate_children(self.bench, self.bench.namespace, [name])
        print(f"  {name}: {phase}; attempts {attempts.numbers()}", flush=True)

    def abandon(self) -> None:
        """After a failed scenario: its experiments must not train beside the next one's,
        nor a workflow stuck in a failing task fill the worker's log."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.bench.kubectl(
                "delete", RESOURCE, "--all", "-n", self.bench.namespace, "--wait=false"
            )
        ours = f"{KIND.lower()}-{self.bench.namespace}-chaos-"
        running = [
            e
            for e in asyncio.run(_executions(self.bench.temporal_address))
            if e.id.startswith(ours) and e.state == WorkflowExecutionStatus.RUNNING
        ]
        asyncio.run(_terminate(self.bench.temporal_address, running, "chaos: scenario failed"))

    def _ended(self, name: str) -> str | None:
        phase = self.status(name).get("phase")
        return str(phase) if phase in ("Succeeded", "Failed", "Cancelled") else None

    def _object(self, name: str) -> dict[str, Any]:
        raw = self.bench.kubectl("get", RESOURCE, name, "-n", self.bench.namespace, "-o", "json")
        return dict(json.loads(raw))

    def logs(self) -> str:
        parts = []
        for log in sorted(self.bench.root.glob("**/*.log")):
            if log.name in ("operator.log", "worker.log") or log.name.startswith("trainer-"):
                parts.append(f"--- {log}\n{log_tail(log, 15)}")
        return "\n".join(parts)


def _trained(status: dict[str, Any]) -> bool:
    phase = status.get("phase")
    return phase is not None and phase not in TRAINING_PHASES


# -- duplicates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    id: str
    run_id: str
    state: WorkflowExecutionStatus | None


async def _executions(address: str) -> list[Execution]:
    client = await Client.connect(address)
    return [Execution(w.id, w.run_id, w.status) async for w in client.list_workflows()]


async def _terminate(address: str, executions: list[Execution], reason: str) -> None:
    client = await Client.connect(address)
    for execution in executions:
        await client.get_workflow_handle(execution.id, run_id=execution.run_id).terminate(reason)


def _workflows_of(namespace: str, name: str) -> re.Pattern[str]:
    """The ids of an experiment's coordinator and children, whatever its uid."""
    return re.compile(
        rf"^{KIND.lower()}-{re.escape(namespace)}-{re.escape(name)}-[0-9a-f]{{8}}(-|$)"
    )


def duplicate_workflows(objects: list[dict[str, Any]], address: str) -> int:
    """Per experiment: runs of its coordinator and children beyond one each (a chain of
    continue-as-new is one), plus workflows under its name with an id it should not have."""
    executions = asyncio.run(_executions(address))
    extra = 0
    for obj in objects:
        meta = obj["metadata"]
        expected = workflow_id_for(KIND, meta["namespace"], meta["name"], meta["uid"])
        mine = _workflows_of(meta["namespace"], meta["name"])
        runs = Counter(
            e.id
            for e in executions
            if mine.match(e.id) and e.state != WorkflowExecutionStatus.CONTINUED_AS_NEW
        )
        extra += sum(count - 1 for count in runs.values())
        extra += sum(1 for i in runs if not (i == expected or i.startswith(f"{expected}-")))
        if expected not in runs:
            print(f"  {meta['name']}: no workflow {expected} in Temporal", flush=True)
    return extra


def duplicate_children(bench: Bench, namespace: str, names: list[str]) -> int:
    extra = 0
    for kind in ("deployments", "pvc"):
        items = json.loads(bench.kubectl("get", kind, "-n", namespace, "-o", "json"))["items"]
        per = Counter(
            (i["metadata"].get("labels") or {}).get("tempotrain.dev/experiment") for i in items
        )
        extra += sum(max(0, per[name] - CHILDREN_EACH) for name in names)
    return extra


# -- scenarios ----------------------------------------------------------------------------


def worker_kills(chaos: Chaos) -> Outcome:
    args, name = chaos.args, "chaos-worker"
    outcome = Outcome(LABELS["worker"], args.kills, save_steps=args.save_steps)
    chaos.ensure_operator()
    chaos.ensure_worker()
    # Each attempt trains to a new checkpoint and up to a save interval more before its
    # kill: 5 kills take at most ~80 steps of the run's 136.
    chaos.experiment(name, epochs=args.worker_epochs)
    attempts = Attempts(chaos.bench.root / "runs" / name, args.save_steps)
    with attempts.sampling():
        for kill in range(1, args.kills + 1):
            chaos.wait(
                name,
                lambda: attempts.trained() or attempts.checkpointed() is not None,
                f"{name}'s attempt to save a checkpoint",
                interval=0.2,  # files only: no kubectl
            )
            attempt = attempts.checkpointed()
            if attempts.trained() or attempt is None:
                print(f"  kill {kill}: training ended first", flush=True)
                break
            # The crash point: a random moment of the save interval that follows.
            time.sleep(chaos.rng.uniform(0, args.save_steps * (attempts.pace(attempt) or 0)))
            attempts.killed_at[attempt] = time.time()
            killed = time.monotonic()
            chaos.kill_worker()
            # The trainer dies with its worker (PDEATHSIG); its last write is final then.
            wait_for(
                lambda: not pids_running("tempotrain_workers.trainer_main", str(attempts.run_dir)),
                timeout=30,
                what="the trainer to exit",
            )
            chaos.worker = chaos.bench.start_worker()
            reached = attempts.reached(attempt)
            chaos.wait(
                name,
                functools.partial(chaos.status_past, name, reached),
                f"{name} to train past step {reached} again",
            )
            outcome.converge.append(time.monotonic() - killed)
            outcome.survived += 1
            print(
                f"  kill {kill}: attempt {attempt} at step ~{reached}; in status past it again "
                f"after {outcome.converge[-1]:.1f} s",
                flush=True,
            )
        chaos.finish(name, outcome, attempts)
    outcome.recomputed = attempts.recomputed()
    return outcome


def operator_burst(chaos: Chaos) -> Outcome:
    args = chaos.args
    outcome = Outcome(LABELS["operator"], 1)
    # Its own namespace, queues no worker polls and log: these experiments never train.
    burst = replace(
        chaos.bench,
        root=chaos.bench.root / "burst",
        namespace=f"{chaos.bench.namespace}-burst",
        queues=replace(
            chaos.bench.queues,
            training=f"{chaos.bench.queues.training}-idle",
            eval=f"{chaos.bench.queues.eval}-idle",
            status=f"{chaos.bench.queues.status}-burst",
        ),
    )
    burst.root.mkdir(parents=True, exist_ok=True)
    burst.kubectl("apply", "-f", "-", input=json.dumps(kwok_namespace(burst.namespace)))
    operator = burst.start_operator()
    try:
        burst.kubectl("apply", "-n", burst.namespace, "-f", "-", input=manifests(args.burst))
        log = burst.root / "operator.log"
        # Its log, not the apiserver, says when: a poll of the experiments takes long enough
        # for the whole burst to be through on an idle machine.
        wait_for(
            lambda: log.read_bytes().count(RECONCILED) >= args.kill_after,
            timeout=120,
            what=f"the operator to reconcile {args.kill_after} experiments",
            interval=0.01,
        )
        killed = time.monotonic()
        operator.send_signal(signal.SIGKILL)
        operator.wait()
        started = _with_workflow(burst)
        print(f"  operator SIGKILLed; {started}/{args.burst} had a workflow id", flush=True)
        log.rename(log.with_name("operator-killed.log"))  # start_operator waits on a fresh log
        operator = burst.start_operator()
        try:
            wait_for(
                lambda: _quietly(done, burst, args.burst),
                timeout=180,  # three resyncs of the operator
                what="every experiment of the burst to be started with its children",
                interval=1,
                detail=lambda: _not_started(burst),
            )
            outcome.converge.append(time.monotonic() - killed)
            outcome.survived = 1
        except WaitTimeout as err:  # still count what there is
            print(f"  {err}", flush=True)
        items = json.loads(burst.kubectl("get", RESOURCE, "-n", burst.namespace, "-o", "json"))
        objects = items["items"]
        outcome.duplicate_workflows = duplicate_workflows(objects, burst.temporal_address)
        names = [o["metadata"]["name"] for o in objects]
        outcome.duplicate_children = duplicate_children(burst, burst.namespace, names)
        outcome.end = f"{sum(map(_started, objects))}/{args.burst} started"
    finally:
        operator.send_signal(signal.SIGTERM)
        operator.wait(timeout=60)
    return outcome


def _quietly(check: Callable[[Bench, int], bool], bench: Bench, count: int) -> bool:
    """operator_scale's check without its line per poll."""
    with contextlib.redirect_stdout(io.StringIO()):
        return check(bench, count)


def _started(item: dict[str, Any]) -> bool:
    conditions = (item.get("status") or {}).get("conditions") or []
    return any(c["type"] == "WorkflowStarted" and c["status"] == "True" for c in conditions)


def _not_started(bench: Bench) -> str:
    """The experiments without WorkflowStarted=True: their status, kopf's annotations and
    what Temporal has of their workflow."""
    items = json.loads(bench.kubectl("get", RESOURCE, "-n", bench.namespace, "-o", "json"))
    executions = asyncio.run(_executions(bench.temporal_address))
    lines = []
    for item in items["items"]:
        if _started(item):
            continue
        status = item.get("status") or {}
        meta = item["metadata"]
        expected = workflow_id_for(KIND, meta["namespace"], meta["name"], meta["uid"])
        runs = [e.state.name if e.state else "?" for e in executions if e.id == expected]
        annotations = {
            k: v for k, v in (meta.get("annotations") or {}).items() if "kubectl" not in k
        }
        lines += [
            f"{meta['name']}: status {json.dumps(status)}",
            f"  Temporal: {expected} {runs or 'absent'}",
            f"  annotations {json.dumps(annotations)[:300]}",
        ]
    return "\n".join(lines)


def _with_workflow(bench: Bench) -> int:
    items = json.loads(bench.kubectl("get", RESOURCE, "-n", bench.namespace, "-o", "json"))
    return sum(bool((i.get("status") or {}).get("workflowId")) for i in items["items"])


def restart_mid_run(chaos: Chaos, name: str, scenario: str, restart: Callable[[], None]) -> Outcome:
    """One experiment; `restart` once it trains past its first checkpoint. Converged when
    its status shows a step past the one the run had reached when the fault began."""
    args = chaos.args
    outcome = Outcome(scenario, 1, save_steps=args.save_steps)
    chaos.ensure_operator()
    chaos.ensure_worker()
    chaos.experiment(name, epochs=args.restart_epochs)
    attempts = Attempts(chaos.bench.root / "runs" / name, args.save_steps)
    with attempts.sampling():
        chaos.wait(
            name,
            lambda: (chaos.status(name).get("latestCheckpoint") or {}).get("step"),
            f"{name}'s first checkpoint in its status",
        )
        first = attempts.latest() or 1
        reached = attempts.step()
        began = time.monotonic()
        restart()
        print(
            f"  {scenario} at step {reached}: back after {time.monotonic() - began:.1f} s",
            flush=True,
        )
        chaos.wait(
            name,
            lambda: chaos.status_past(name, reached),
            f"{name}'s status to move past step {reached}",
        )
        outcome.converge.append(time.monotonic() - began)
        outcome.survived = 1
        chaos.finish(name, outcome, attempts)
    # Any attempt the fault cost, as one crash.
    outcome.recomputed = [sum(attempts.recomputed(since=first + 1))]
    return outcome


def temporal_restart(chaos: Chaos) -> Outcome:
    temporal = chaos.platform.temporal

    def restart() -> None:
        temporal.down(log=lambda _: None)
        temporal.up(log=lambda _: None)
        if temporal.address != chaos.bench.temporal_address:
            raise RuntimeError(
                f"Temporal came back at {temporal.address}, not {chaos.bench.temporal_address}"
            )

    return restart_mid_run(chaos, "chaos-temporal", LABELS["temporal"], restart)


def apiserver_restart(chaos: Chaos) -> Outcome:
    cluster = chaos.platform.cluster
    apiserver = cluster.processes["kube-apiserver"]

    def restart() -> None:
        pid = apiserver.pid()
        if pid is None:
            raise RuntimeError("kube-apiserver is not running")
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # ours when this process started it
            os.waitpid(pid, 0)
        wait_for(lambda: not apiserver.is_running(), timeout=30, what="the apiserver to die")
        cluster.up(log=lambda _: None)  # starts what is not running: the apiserver

    name = "chaos-apiserver"
    outcome = restart_mid_run(chaos, name, LABELS["apiserver"], restart)
    # Deleting it needs the operator's finalizer handler: its watch came back.
    began = time.monotonic()
    try:
        chaos.bench.kubectl(
            "delete", RESOURCE, name, "-n", chaos.bench.namespace, "--wait=true", "--timeout=60s"
        )
        print(f"  deleted after the restart in {time.monotonic() - began:.1f} s", flush=True)
    except subprocess.CalledProcessError as err:
        outcome.survived = 0
        outcome.end += f"; delete not handled: {err.stderr.strip()}"
    return outcome


RUNS: dict[str, Callable[[Chaos], Outcome]] = {
    "operator": operator_burst,  # first: no worker competes for the CPU during the burst
    "worker": worker_kills,
    "temporal": temporal_restart,
    "apiserver": apiserver_restart,
}


# -- the table ----------------------------------------------------------------------------


def _max_mean(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return f"{max(values):{fmt}} / {statistics.mean(values):{fmt}}"


def table(outcomes: list[Outcome]) -> str:
    header = (
        "scenario",
        "survived",
        "recomputed/save interval (max / mean)",
        "dup workflows",
        "dup children",
        "converge s (max / mean)",
        "end",
    )
    rows = [header] + [
        (
            o.scenario,
            f"{o.survived}/{o.faults}",
            _max_mean(o.ratios(), ".2f"),
            str(o.duplicate_workflows),
            str(o.duplicate_children),
            _max_mean(o.converge, ".1f"),
            o.end,
        )
        for o in outcomes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _copy_logs(root: Path, to: Path) -> None:
    for log in root.glob("**/*.log"):
        copy = to / log.relative_to(root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, copy)


async def _histories(address: str) -> dict[str, str]:
    """The trained experiments' workflow histories by file name, for a Replayer (not the
    burst's)."""
    client = await Client.connect(address)
    histories = {}
    async for execution in client.list_workflows():
        if "-chaos-" in execution.id:
            handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
            history = await handle.fetch_history()
            histories[f"{execution.id}-{execution.run_id}.json"] = history.to_json()
    return histories


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="repeatable")
    parser.add_argument("--kills", type=int, default=5, help="worker SIGKILLs in one run")
    parser.add_argument("--burst", type=int, default=30, help="experiments in the burst")
    parser.add_argument(
        "--kill-after", type=int, default=10, help="experiments reconciled before the kill"
    )
    parser.add_argument("--save-steps", type=int, default=8)
    parser.add_argument("--heartbeat-seconds", type=int, default=10)
    parser.add_argument("--worker-epochs", type=float, default=2.0)
    parser.add_argument("--restart-epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--logs",
        type=Path,
        help="copy every log (operators, worker, trainers, platform) and the trained "
        "experiments' workflow histories here",
    )
    args = parser.parse_args()
    chosen = [s for s in RUNS if s in (args.only or SCENARIOS)]
    began = time.monotonic()
    outcomes: list[Outcome] = []
    with bench_platform("chaos-") as bench:
        snapshots = bench.root / "snapshots"
        write_sentiment_jsonl(snapshots / "datasets" / "sentiment.jsonl", DATASET_ROWS)
        (snapshots / "models").mkdir(parents=True)
        (snapshots / MODEL).symlink_to(minilm_path(), target_is_directory=True)
        # The same state dir as the bench's platform: its Temporal and apiserver to restart.
        chaos = Chaos(bench, Platform(bench.root / "platform"), args, random.Random(args.seed))
        print(f"platform up in {time.monotonic() - began:.0f} s", flush=True)
        try:
            for scenario in chosen:
                print(f"== {scenario}", flush=True)
                try:
                    outcomes.append(RUNS[scenario](chaos))
                except (WaitTimeout, RuntimeError, subprocess.CalledProcessError) as err:
                    print(f"  {scenario} failed: {err}", flush=True)
                    chaos.abandon()
                    first = str(err).splitlines()[0]
                    outcomes.append(Outcome(LABELS[scenario], 1, end=f"error: {first[:100]}"))
        finally:
            chaos.stop()
            if args.logs:
                _copy_logs(bench.root, args.logs)
                (args.logs / "histories").mkdir(parents=True, exist_ok=True)
                for file, history in asyncio.run(_histories(bench.temporal_address)).items():
                    (args.logs / "histories" / file).write_text(history)
    print()
    print(table(outcomes))
    met = all(o.met() for o in outcomes)
    print(
        f"goals {'met' if met else 'MISSED'}: every fault survived, 0 duplicates, <= 1.0 save "
        f"interval recomputed per crash ({time.monotonic() - began:.0f} s in all)"
    )
    if not met:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
