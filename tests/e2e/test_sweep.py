"""A sweep from one BertExperiment: trials with their own runs, at most maxParallel at once,
a failed trial that does not fail the sweep, the best trial picked by the objective, the
training history kept per trial, the median rule stopping a weak trial, and a sweep
suspended, resumed, deleted (every trial cancelled) and applied again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client, WorkflowExecutionStatus
from tempotrain_workers.history import read
from tempotrain_workers.trainer_main import TrainerJob

from tests.conftest import ClusterHandle
from tests.e2e.conftest import (
    Stack,
    apply,
    experiment,
    experiment_status,
    kube_json,
    until_ended,
)
from tests.support import eventually

pytestmark = [pytest.mark.kube, pytest.mark.temporal]


TEMPOTRAIN = [sys.executable, "-m", "tempotrain_client"]


def _env(stack: Stack) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(stack.kubeconfig)}


def tempotrain(stack: Stack, *args: str, ok: bool = True) -> str:
    """The `tempotrain` CLI in the stack's namespace, reading runs where the worker writes."""
    argv = [*TEMPOTRAIN, "-n", stack.namespace, "--runs-root", str(stack.runs), *args]
    done = subprocess.run(
        argv, cwd=stack.root, env=_env(stack), capture_output=True, text=True, timeout=120
    )
    assert (done.returncode == 0) == ok, (args, done.stdout, done.stderr)
    return done.stdout + done.stderr


def sweep_experiment(name: str, model: str, **sweep: Any) -> dict[str, Any]:
    manifest = experiment(name, model, resources={"gpus": 0, "cpu": "1", "memory": "1Gi"})
    manifest["spec"]["training"].update({"epochs": 1, "saveSteps": 6})
    manifest["spec"]["dataset"]["maxTrainSamples"] = 96
    manifest["spec"]["sweep"] = sweep
    return manifest


async def training_spans(
    temporal_address: str, workflow_id: str, trials: int
) -> list[tuple[float, float]]:
    """When each trial's training workflow ran: (start, close) in seconds."""
    client = await Client.connect(temporal_address)
    spans = []
    for index in range(trials):
        description = await client.get_workflow_handle(f"{workflow_id}-train-{index}").describe()
        assert description.close_time is not None
        spans.append((description.start_time.timestamp(), description.close_time.timestamp()))
    return sorted(spans)


async def test_sweep_runs_trials_in_parallel_and_picks_the_best(
    cluster: ClusterHandle, stack: Stack, tiny_bert: Path, temporal_address: str
) -> None:
    ns = stack.namespace
    stack.start_worker("worker-2")  # two trainers: maxParallel 2 has somewhere to run
    manifest = sweep_experiment(
        "sweep",
        stack.model(tiny_bert),
        grid={"learningRate": [1e-4, 5e-4], "batchSize": [8, 16]},
        # One trial whose model does not exist: it fails, the sweep does not.
        trials=[{"model": "models/no-such-model"}],
        maxParallel=2,
        objective="evalLoss",
    )
    (stack.root / "sweep.yaml").write_text(yaml.safe_dump(manifest))
    assert "bertexperiment/sweep created" in tempotrain(stack, "submit", "-f", "sweep.yaml")
    # `watch` follows it to its end: bars per trial, then the summary; 0 when Succeeded.
    watching = await asyncio.create_subprocess_exec(
        *TEMPOTRAIN, "-n", ns, "watch", "sweep", "--every", "1",
        cwd=stack.root, env=_env(stack), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip

    async def rows_listed() -> dict[str, Any] | None:
        return (experiment_status(cluster, ns, "sweep") or {}).get("trialRuns")

    first_rows = await eventually(rows_listed, within=30, what="the trials listed in status")

    status = await until_ended(cluster, ns, "sweep", within=420)
    assert status["phase"] == "Succeeded", (status, stack.log("worker"))
    watched = (await asyncio.wait_for(watching.communicate(), 60))[0].decode()
    assert watching.returncode == 0, watched
    assert "t03" in watched and "best t0" in watched, watched
    assert status["trials"] == {
        "total": 5, "running": 0, "succeeded": 4, "failed": 1, "stopped": 0
    }, status["trials"]  # fmt: skip
    rows = status["trialRuns"]
    assert sorted(rows) == ["t00", "t01", "t02", "t03", "t04"], rows
    assert rows["t00"]["parameters"] == {"learningRate": 1e-4, "batchSize": 8}
    assert rows["t04"]["phase"] == "Failed" and "ModelNotFound" in rows["t04"]["message"]
    assert len({row["runId"] for row in rows.values()}) == 5
    succeeded = {n: r for n, r in rows.items() if r["phase"] == "Succeeded"}
    assert len(succeeded) == 4, rows
    losses = {name: row["metrics"]["evalLoss"] for name, row in succeeded.items()}
    best = min(losses, key=lambda name: losses[name])
    assert status["bestTrial"]["name"] == best, (status["bestTrial"], losses)
    assert status["bestTrial"]["value"] == pytest.approx(losses[best])
    assert status["bestTrial"]["parameters"] == rows[best]["parameters"]
    assert status["metrics"]["evalLoss"] == pytest.approx(losses[best])
    assert status["displayTrials"] == "5/5"

    # Each trial's history: its own file, steps in order and none twice, eval at the end.
    for name in succeeded:
        records = read(stack.runs / rows[name]["historyFile"])
        steps = [r.step for r in records if r.loss is not None]
        assert steps and steps == sorted(set(steps)), (name, steps)
        assert records[-1].eval_loss == pytest.approx(rows[name]["metrics"]["evalLoss"], rel=1e-3)
    # maxParallel 2 on two workers: two trials trained at the same time, never three.
    spans = await training_spans(temporal_address, status["workflowId"], 5)
    overlapping = max(
        sum(1 for start, end in spans if start <= moment <= end) for moment, _ in spans
    )
    assert overlapping == 2, spans

    table = cluster.kubectl("get", "bexp", "sweep", "-n", ns).splitlines()
    header, row = table[0].split(), table[1]
    assert "TRIALS" in header and "BEST" in header, table
    assert "5/5" in row and f"{best} " in row, table
    assert first_rows and sorted(first_rows) == sorted(rows), first_rows

    # The client reads the runs volume where this machine sees it (the host worker's root).
    shown = tempotrain(stack, "get", "sweep")
    assert f"best {best} evalLoss=" in shown and "t04 Failed" in shown, shown
    assert "sweep" in tempotrain(stack, "list").splitlines()[1]
    table = tempotrain(stack, "metrics", "sweep", "--trial", "t01").splitlines()
    assert table[0] == "# t01" and "eval_loss" in table[1] and len(table) > 4, table
    assert "==> trainer-attempt-1.log <==" in tempotrain(stack, "logs", "sweep", "--trial", "t00")
    assert "5 runs" in tempotrain(stack, "plot", "sweep", "-o", "sweep.png")
    assert (stack.root / "sweep.png").stat().st_size > 20_000
    refused = tempotrain(stack, "logs", "sweep", ok=False)
    assert "name one of its trials" in refused, refused


async def test_early_stopping_stops_the_weak_trial_and_frees_its_worker(
    cluster: ClusterHandle, stack: Stack, tiny_bert: Path
) -> None:
    ns = stack.namespace
    stack.start_worker("worker-2")
    manifest = sweep_experiment(
        "median",
        stack.model(tiny_bert),
        grid={"learningRate": [5e-4, 1e-3]},
        # A learning rate of 0.5 diverges: the third trial, judged against the first two. Its
        # run is long: the stop reaches its trainer on a heartbeat reply, seconds after the
        # verdict, and this model takes hundreds of steps in that time.
        trials=[{"learningRate": 0.5, "batchSize": 4, "epochs": 100}],  # 2,400 steps
        maxParallel=2,
        objective="evalLoss",
        earlyStopping={"evalSteps": 20, "minEvaluations": 3, "minTrials": 2},
    )
    manifest["spec"]["training"].update({"epochs": 60, "saveSteps": 100})  # 360 steps

    apply(cluster, ns, manifest)
    status = await until_ended(cluster, ns, "median", within=420)
    assert status["phase"] == "Succeeded", status
    assert status["trials"] == {
        "total": 3, "running": 0, "succeeded": 2, "failed": 0, "stopped": 1
    }, status["trialRuns"]  # fmt: skip
    weak = status["trialRuns"]["t02"]
    assert weak["phase"] == "Cancelled" and weak["message"].startswith("stopped early"), weak
    # Stopped at its third evaluation, before its last step; the others ran to the end.
    records = read(stack.runs / weak["historyFile"])
    evaluations = [r.step for r in records if r.eval_loss is not None]
    assert evaluations[:3] == [20, 40, 60], evaluations
    # Judged at step 60, stopped long before its 2,400th.
    assert weak["progress"]["step"] < 1_200, weak["progress"]
    assert status["bestTrial"]["name"] in ("t00", "t01")


async def test_a_sweep_suspended_resumed_deleted_and_reapplied_resumes_each_trial(
    cluster: ClusterHandle, stack: Stack, tiny_bert: Path, temporal_address: str
) -> None:
    """One sweep through the lifecycle a user puts it through: suspended (every trial saves
    and holds, the waiting one does not start), resumed, deleted (every trial's workflow
    cancelled, each trainer saving first) and applied again: each trial resumes from the
    very checkpoint it saved, its history without a step twice."""
    ns = stack.namespace
    stack.start_worker("worker-2")
    manifest = sweep_experiment(
        "again", stack.model(tiny_bert), grid={"seed": [1, 2, 3]}, maxParallel=2
    )
    # Long enough that the first two still train when the test deletes it.
    manifest["spec"]["training"].update({"epochs": 60, "saveSteps": 12})

    def rows() -> dict[str, Any]:
        return dict((experiment_status(cluster, ns, "again") or {}).get("trialRuns") or {})

    def checkpointed(beyond: dict[str, int]) -> Any:
        async def probe() -> dict[str, int] | None:
            steps = {
                name: (row.get("latestCheckpoint") or {}).get("step", 0)
                for name, row in rows().items()
            }
            past = {name: steps[name] for name in beyond if steps.get(name, 0) > beyond[name]}
            return past if len(past) == len(beyond) else None

        return probe

    apply(cluster, ns, manifest)
    await eventually(checkpointed({"t00": 0, "t01": 0}), within=180, what="two trials saved")
    assert "suspend requested" in tempotrain(stack, "suspend", "again")

    async def suspended() -> dict[str, Any] | None:
        status = experiment_status(cluster, ns, "again")
        return status if status.get("phase") == "Suspended" else None

    status = await eventually(suspended, within=120, what="the sweep Suspended")
    held = {n: r for n, r in status["trialRuns"].items() if r["phase"] == "Suspended"}
    assert sorted(held) == ["t00", "t01"], status["trialRuns"]
    assert status["trialRuns"]["t02"]["phase"] == "Pending"  # not started while suspended
    steps_held = {n: r["latestCheckpoint"]["step"] for n, r in held.items()}
    workflow_id = status["workflowId"]

    assert "resume requested" in tempotrain(stack, "resume", "again")
    # Resumed: both train on from where they held, and save again.
    await eventually(checkpointed(steps_held), within=180, what="both trials saving again")
    assert kube_json(cluster, ns, "deployments", "again-training")["spec"]["replicas"] == 2
    assert "deleted" in tempotrain(stack, "delete", "again")

    def gone() -> bool | None:
        found = cluster.kubectl.run("get", "bexp", "again", "-n", ns)
        return True if found.returncode != 0 and "NotFound" in found.stderr else None

    await eventually(gone, within=120, what="the sweep to go")
    client = await Client.connect(temporal_address)
    for index in range(2):  # the two that were training (each saved first); the third never ran
        description = await client.get_workflow_handle(f"{workflow_id}-train-{index}").describe()
        assert description.status == WorkflowExecutionStatus.CANCELED, (index, description.status)
    started = [w async for w in client.list_workflows(f"WorkflowId = '{workflow_id}-train-2'")]
    assert not started

    # Cancelled, each trainer saved where it was: that is where the same spec resumes.
    saved = {}
    for trial in ("t00", "t01"):
        progress = json.loads((stack.runs / f"again-{trial}" / "progress.json").read_text())
        saved[trial] = progress["step"]
        assert saved[trial] > steps_held[trial], (trial, saved[trial], steps_held[trial])
    apply(cluster, ns, manifest)

    status = await until_ended(cluster, ns, "again", within=360, what="the re-applied sweep")
    assert status["phase"] == "Succeeded" and status["trials"]["succeeded"] == 3, status
    for trial, step in saved.items():
        run_dir = stack.runs / f"again-{trial}"
        newest = max(run_dir.glob(".job-attempt-*.json"), key=lambda path: path.stat().st_mtime)
        job = TrainerJob.model_validate_json(newest.read_text())
        assert job.resumed_from_step == step, (trial, job.resumed_from_step, step)
        # Three runs of it (before the suspension, after it, after the re-apply): no step twice.
        logged = [r.step for r in read(run_dir / "history.jsonl") if r.loss is not None]
        assert logged == sorted(set(logged)) and logged[-1] > step, (trial, logged[-5:])
