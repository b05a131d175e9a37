"""Pure builders of a BertExperiment's children, and the status mapping."""

from __future__ import annotations

from datetime import UTC, datetime

from tempotrain_operator.children import (
    TEMPLATE_HASH,
    Experiment,
    WorkerConfig,
    build_pvc,
    build_worker_deployment,
    pvc_is_owned,
    worker_config,
)
from tempotrain_operator.mapping import (
    checkpoint_patch,
    coordinator_input,
    duration,
    progress_patch,
    status_patch,
)
from tempotrain_operator.settings import parse_settings
from tempotrain_workers.api import (
    BertExperimentSpec,
    CheckpointInfo,
    Phase,
    Progress,
    StatusTarget,
    StatusUpdate,
)
from tempotrain_workers.temporal_client import TemporalConnection

WORKERS = WorkerConfig(
    image="img:1",
    temporal=TemporalConnection("t:7233"),
    training_queue="tq",
    eval_queue="eq",
)


def _experiment(**spec: object) -> Experiment:
    model = BertExperimentSpec.model_validate({"model": {"name": "bert-base-uncased"}, **spec})
    return Experiment(name="exp", namespace="ns", uid="0123456789abcdef", spec=model)


def test_training_pod_asks_for_gpus_tolerates_the_gpu_taint_and_runs_non_root() -> None:
    deployment = build_worker_deployment(
        _experiment(resources={"gpus": 2, "nodeSelector": {"pool": "a100"}}), WORKERS, "training"
    )
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["command"][-2:] == ["--queue", "tq"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts >= {"/data/snapshots", "/data/runs", "/dev/shm"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    # PyTorch's threads follow the pod's CPU request, not the node's cores.
    threads = next(e for e in container["env"] if e["name"] == "OMP_NUM_THREADS")
    assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert deployment["spec"]["replicas"] == 1


def test_a_sweep_trains_max_parallel_trials_at_once_in_as_many_pods() -> None:
    sweep = {"grid": {"seed": [1, 2, 3]}, "maxParallel": 3}
    training = build_worker_deployment(_experiment(sweep=sweep), WORKERS, "training")
    evaluation = build_worker_deployment(_experiment(sweep=sweep), WORKERS, "eval")
    assert (training["spec"]["replicas"], evaluation["spec"]["replicas"]) == (3, 1)


def test_eval_pod_is_cpu_only_and_labelled() -> None:
    deployment = build_worker_deployment(_experiment(), WORKERS, "eval")
    pod = deployment["spec"]["template"]["spec"]
    assert "limits" not in pod["containers"][0]["resources"]
    assert "/dev/shm" not in {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    labels = deployment["metadata"]["labels"]
    assert labels["tempotrain.dev/experiment"] == "exp"
    assert labels["app.kubernetes.io/component"] == "eval-worker"


def test_pvcs_follow_reclaim_policy_and_existing_claims() -> None:
    experiment = _experiment(
        storage={
            "snapshots": {"existingClaim": "shared"},
            "runs": {"reclaimPolicy": "Delete", "size": "50Gi"},
        }
    )
    assert build_pvc(experiment, "snapshots") is None
    runs = build_pvc(experiment, "runs")
    assert runs is not None and runs["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert pvc_is_owned(experiment, "runs") and not pvc_is_owned(experiment, "snapshots")
    volumes = build_worker_deployment(experiment, WORKERS, "eval")["spec"]["template"]["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in volumes["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"snapshots": "shared", "runs": "exp-runs"}


def test_workflow_input_carries_the_spec_and_a_status_target() -> None:
    experiment = _experiment(
        dataset={"file": "data/x.jsonl"},
        training={"epochs": 1.5, "heartbeatTimeoutSeconds": 45},
        runId="my-run",
    )
    request = coordinator_input("exp", "ns", "uid-1", experiment.spec, "opq", "tq", "eq")
    config = request.configs[0].fine_tune
    assert config.heartbeat_timeout_seconds == 45
    assert _experiment().spec.training.heartbeat_timeout_seconds == 15  # a crash costs seconds
    assert (config.run_id, config.dataset_name, config.dataset_config) == (
        "my-run",
        "data/x.jsonl",
        None,
    )
    assert config.num_epochs == 1.5
    assert request.status_target == StatusTarget(
        kind="BertExperiment", namespace="ns", name="exp", uid="uid-1", queue="opq"
    )


def _update(**fields: object) -> StatusUpdate:
    target = StatusTarget(kind="BertExperiment", namespace="ns", name="exp")
    return StatusUpdate(target=target, at=datetime(2026, 1, 1, tzinfo=UTC), **fields)  # type: ignore[arg-type]


def _checkpoint(step: int) -> CheckpointInfo:
    return CheckpointInfo(
        step=step,
        epoch=0.5,
        loss=0.3,
        path=f"/r/checkpoint-{step}",
        snapshot_hash="h",
        saved_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_status_never_moves_backwards() -> None:
    current = {"phase": "Training", "latestCheckpoint": {"step": 20}, "progress": {"step": 25}}
    stale = status_patch(
        _update(
            phase=Phase.SNAPSHOTTING,
            latest_checkpoint=_checkpoint(10),
            progress=Progress(step=12, total_steps=100),
        ),
        current,
    )
    # Nothing moves back: phase, checkpoint and step stay; only the total it knew is taken.
    assert stale == {"progress": {"step": 25, "totalSteps": 100, "percent": 25}}
    fresh = status_patch(
        _update(
            phase=Phase.EVALUATING,
            latest_checkpoint=_checkpoint(30),
            progress=Progress(step=30, total_steps=120),
        ),
        current,
    )
    assert fresh["phase"] == "Evaluating" and fresh["latestCheckpoint"]["step"] == 30
    assert fresh["progress"] == {"step": 30, "totalSteps": 120, "percent": 25}
    assert status_patch(_update(phase=Phase.TRAINING), {"phase": "Succeeded"}) == {}
    done = status_patch(_update(phase=Phase.SUCCEEDED, metrics={"evalAccuracy": 0.9}), current)
    assert done["completionTime"] == "2026-01-01T00:00:00Z" and done["metrics"]["evalAccuracy"]


def test_suspended_is_taken_only_while_a_suspension_is_wanted() -> None:
    training = {"phase": "Training"}
    ack = _update(phase=Phase.SUSPENDED)
    # Suspended, and no time left shown while nothing trains.
    assert status_patch(ack, training, suspend_wanted=True) == {"phase": "Suspended", "eta": None}
    assert status_patch(ack, {"phase": "Evaluating"}, suspend_wanted=True)["phase"] == "Suspended"
    # A late acknowledgement after the resume (Pending again) changes nothing.
    assert status_patch(ack, {"phase": "Pending"}, suspend_wanted=False) == {}
    # While held, the workflow's stale pushes stay out; its end does not.
    held = {"phase": "Suspended"}
    assert status_patch(_update(phase=Phase.TRAINING), held, suspend_wanted=True) == {}
    assert status_patch(_update(phase=Phase.SUCCEEDED), held, True)["phase"] == "Succeeded"
    # Resumed: Pending, and the phase it goes on with moves forward from there.
    assert status_patch(_update(phase=Phase.TRAINING), {"phase": "Pending"}) == {
        "phase": "Training"
    }
    # Deleted: only Cancelled replaces Terminating, whatever is wanted.
    terminating = {"phase": "Terminating"}
    assert status_patch(ack, terminating, suspend_wanted=True) == {}
    assert status_patch(_update(phase=Phase.CANCELLED), terminating)["phase"] == "Cancelled"


def test_the_eta_follows_the_trainers_recent_rate() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    update = Progress(step=100, total_steps=1000, steps_per_second=2.0)
    patch = progress_patch(update, {}, at)
    assert patch["progress"] == {
        "step": 100,
        "totalSteps": 1000,
        "percent": 10,
        "stepsPerSecond": 2.0,
    }
    assert patch["estimatedCompletionTime"] == "2026-01-01T00:07:30Z"  # 900 steps at 2/s
    assert patch["eta"] == "7m30s"
    # A checkpoint's push without the total keeps the one the heartbeat gave.
    known = {"progress": {"step": 100, "totalSteps": 1000, "percent": 10}}
    assert progress_patch(Progress(step=200), known, at)["progress"] == {
        "step": 200,
        "totalSteps": 1000,
        "percent": 20,
    }
    # No rate yet (the first seconds of an attempt): no estimate rather than a wrong one.
    assert "eta" not in progress_patch(Progress(step=5, total_steps=1000), {}, at)
    assert [duration(s) for s in (44.6, 200, 7500, 3 * 86_400 + 4 * 3600)] == [
        "45s",
        "3m20s",
        "2h05m",
        "3d4h",
    ]


def test_worker_config_gives_each_experiment_its_queues_when_asked() -> None:
    shared = worker_config(parse_settings([]), "0123456789abcdef")
    assert (shared.training_queue, shared.eval_queue, shared.ray_queue) == (
        "tempotrain-training",
        "tempotrain-eval",
        "tempotrain-ray",
    )
    own = worker_config(parse_settings(["--per-experiment-queues"]), "0123456789abcdef")
    assert (own.training_queue, own.eval_queue, own.ray_queue) == (
        "tempotrain-training-01234567",
        "tempotrain-eval-01234567",
        "tempotrain-ray-01234567",
    )


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
RWX = {"accessMode": "ReadWriteMany"}


def test_claims_are_read_write_once_and_eval_runs_beside_its_trainer() -> None:
    """ReadWriteOnce is what every storage class gives: one node mounts the claims, so the
    eval pod goes to the training pod's node (tolerating its GPU taint)."""
    experiment = _experiment()
    for volume in ("snapshots", "runs"):
        pvc = build_pvc(experiment, volume)
        assert pvc is not None and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod = build_worker_deployment(experiment, WORKERS, "eval")["spec"]["template"]["spec"]
    [term] = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "exp",
        "app.kubernetes.io/component": "training-worker",
    }
    assert GPU_TOLERATION in pod["tolerations"]
    training = build_worker_deployment(experiment, WORKERS, "training")["spec"]["template"]
    preferred = training["spec"]["affinity"]["podAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert (
        preferred[0]["podAffinityTerm"]["labelSelector"]["matchLabels"][
            "app.kubernetes.io/component"
        ]
        == "eval-worker"
    )


def test_read_write_many_claims_let_eval_run_anywhere() -> None:
    experiment = _experiment(storage={"snapshots": RWX, "runs": RWX})
    assert build_pvc(experiment, "runs")["spec"]["accessModes"] == ["ReadWriteMany"]  # type: ignore[index]
    for role in ("eval", "training"):
        pod = build_worker_deployment(experiment, WORKERS, role)["spec"]["template"]["spec"]
        assert "affinity" not in pod
    eval_pod = build_worker_deployment(experiment, WORKERS, "eval")["spec"]["template"]["spec"]
    assert "tolerations" not in eval_pod


def test_one_claim_of_its_own_still_keeps_eval_beside_the_trainer() -> None:
    experiment = _experiment(storage={"snapshots": RWX, "runs": {"existingClaim": "mine"}})
    pod = build_worker_deployment(experiment, WORKERS, "eval")["spec"]["template"]["spec"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAffinity"]


def test_the_template_hash_changes_with_what_the_pods_get_and_only_then() -> None:
    def hash_of(**spec: object) -> str:
        deployment = build_worker_deployment(_experiment(**spec), WORKERS, "training")
        return str(deployment["metadata"]["annotations"][TEMPLATE_HASH])

    assert hash_of() == hash_of()  # rebuilt alike: nothing to roll out
    assert hash_of(resources={"cpu": "8"}) != hash_of()
    assert hash_of(workers={"image": "registry.example/ml/workers:2"}) != hash_of()
    # What is not in the pod template (the run's own settings) rolls nothing out.
    assert hash_of(retryGeneration=3) == hash_of()


def test_printer_columns_get_rounded_copies_and_the_status_keeps_every_digit() -> None:
    checkpoint = _checkpoint(9).model_copy(update={"loss": 0.0046806085854768755})
    patch = checkpoint_patch(checkpoint, known_step=-1)
    assert patch["latestCheckpoint"]["loss"] == 0.0046806085854768755
    assert patch["displayLoss"] == "0.004681"
    done = status_patch(_update(metrics={"evalAccuracy": 0.91234567}), {})
    assert done["metrics"]["evalAccuracy"] == 0.91234567 and done["displayAccuracy"] == "0.9123"
