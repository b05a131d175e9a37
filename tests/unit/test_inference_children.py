"""BatchInference's pure parts: its worker Deployment, chunks in flight per GPU, the device
pool, and chunk counts in `.status`."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from tempotrain_operator.children import (
    Experiment,
    WorkerConfig,
    build_inference_deployment,
    build_pvc,
    worker_config,
    worker_deployment_names,
)
from tempotrain_operator.mapping import inference_input, status_patch
from tempotrain_operator.settings import parse_settings
from tempotrain_workers.api import (
    BatchInferenceSpec,
    InferenceProgress,
    MergeResult,
    Phase,
    RowSelection,
    StatusTarget,
    StatusUpdate,
)
from tempotrain_workers.inference.chunks import DevicePool
from tempotrain_workers.temporal_client import TemporalConnection

WORKERS = WorkerConfig(
    image="img:1",
    temporal=TemporalConnection("t:7233"),
    training_queue="tq",
    eval_queue="eq",
    inference_queue="iq",
)
TARGET = StatusTarget(kind="BatchInference", namespace="ns", name="job", uid="u", queue="op")


def _job(**spec: object) -> Experiment[BatchInferenceSpec]:
    model = BatchInferenceSpec.model_validate(
        {"model": {"name": "bert-base-uncased"}, "dataset": {"name": "imdb"}, **spec}
    )
    return Experiment(name="job", namespace="ns", uid="0123456789abcdef", spec=model)


def test_one_pod_per_worker_each_with_its_gpus_on_the_job_queue() -> None:
    deployment = build_inference_deployment(
        _job(
            workers=4,
            gpusPerWorker=2,
            resources={"nodeSelector": {"pool": "l4"}, "memory": "24Gi"},
            image={"image": "mine:2"},
        ),
        WORKERS,
    )
    assert deployment["metadata"]["name"] == "job-inference"
    assert worker_deployment_names("job", "BatchInference") == ["job-inference"]
    assert deployment["spec"]["replicas"] == 4
    # Chunks are idempotent: pods may overlap while they roll.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "mine:2"
    # Two GPUs per pod: two chunks scored at a time, one on each, and a third prepared.
    assert container["command"][-4:] == ["--queue", "iq", "--max-concurrent-activities", "3"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["resources"]["requests"]["memory"] == "24Gi"
    assert pod["nodeSelector"] == {"pool": "l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"job-snapshots", "job-runs"}


def test_a_cpu_job_asks_for_no_gpu_and_tolerates_no_gpu_taint() -> None:
    pod = build_inference_deployment(_job(gpusPerWorker=0), WORKERS)["spec"]["template"]["spec"]
    assert "limits" not in pod["containers"][0]["resources"]
    assert "tolerations" not in pod
    assert pod["containers"][0]["command"][-1] == "2"  # one chunk scored, one prepared


def test_chunks_in_flight_are_one_per_gpu_of_every_pod_and_one_prepared_per_pod() -> None:
    for gpus, in_flight in ((0, 6), (1, 6), (4, 15)):
        spec = _job(workers=3, gpusPerWorker=gpus).spec
        assert inference_input("job", "ns", "uid", spec, None, "op", "iq").workers == in_flight


def test_a_range_with_only_a_start_runs_to_the_last_row() -> None:
    def rows(**range_: int) -> RowSelection:
        spec = _job(range=range_).spec
        return inference_input("job", "ns", "uid", spec, None, "op", "iq").range

    assert rows(start=1000) == RowSelection(start=1000, end=None)
    assert rows(start=5, end=9) == RowSelection(start=5, end=9)
    assert rows() == RowSelection(start=0, end=None)


def test_each_chunk_thread_gets_a_gpu_of_its_own_and_waits_for_a_free_one() -> None:
    pool = DevicePool(["cuda:0", "cuda:1"])
    third_started = threading.Event()

    def third() -> None:
        with pool.device():
            third_started.set()

    with pool.device() as first, pool.device() as second:
        assert {first, second} == {"cuda:0", "cuda:1"}
        waiting = threading.Thread(target=third)
        waiting.start()
        assert not third_started.wait(timeout=0.2)  # both GPUs busy: it must wait
    assert third_started.wait(timeout=5)  # a GPU came free
    waiting.join(timeout=5)


def test_without_cuda_the_cpu_is_one_device_and_each_device_runs_work_on_its_own_thread() -> None:
    pool = DevicePool([])
    with pool.device() as device:
        assert device == "cpu"
        second = threading.Thread(target=pool.run, args=(lambda _: None,))
        second.start()
        second.join(timeout=0.2)
        assert second.is_alive()  # two forwards at once on the CPU only slow each other
    second.join(timeout=5)
    assert not second.is_alive()
    threads = {pool.run(lambda d: (d, threading.current_thread().name)) for _ in range(3)}
    assert threads == {("cpu", "model-cpu_0")}, threads  # one thread: one OpenMP team


def test_per_experiment_queues_give_each_job_its_own_inference_queue() -> None:
    settings = parse_settings(["--per-experiment-queues"])
    assert worker_config(settings, "abcdef0123").inference_queue == "tempotrain-inference-abcdef01"
    shared = parse_settings([])
    assert worker_config(shared, "abcdef0123").inference_queue == "tempotrain-inference"


def _update(completed: int, skipped: int, **fields: object) -> StatusUpdate:
    return StatusUpdate(
        target=TARGET,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        inference=InferenceProgress(total=10, completed=completed, skipped=skipped, **fields),  # type: ignore[arg-type]
    )


def test_chunk_counts_and_rate_reach_status_and_never_move_back() -> None:
    patch = status_patch(_update(3, 2, rows_per_second=41.5), {})
    assert patch["chunks"] == {"total": 10, "completed": 3, "skipped": 2, "failed": 0}
    assert patch["chunksDone"] == "5/10" and patch["rowsPerSecond"] == 41.5
    current = {"chunks": patch["chunks"]}
    assert "chunks" not in status_patch(_update(2, 2), current)  # a stale update arrived late
    output = MergeResult(path="/data/runs/inference/job/output.parquet", rows=500, sha256="ab")
    done = status_patch(
        StatusUpdate(
            target=TARGET,
            phase=Phase.SUCCEEDED,
            at=datetime(2026, 1, 1, tzinfo=UTC),
            inference=InferenceProgress(total=10, completed=8, skipped=2, output=output),
        ),
        {**current, "phase": "Running"},
    )
    assert done["phase"] == "Succeeded" and done["chunksDone"] == "10/10"
    assert done["output"] == {"path": output.path, "rows": 500, "sha256": "ab"}


def test_claims_are_read_write_many_only_when_several_inference_pods_share_them() -> None:
    one = build_pvc(_job(workers=1), "runs")
    several = build_pvc(_job(workers=3), "runs")
    assert one is not None and one["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert several is not None and several["spec"]["accessModes"] == ["ReadWriteMany"]
