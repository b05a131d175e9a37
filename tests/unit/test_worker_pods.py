"""WorkersReady: what the experiment says about worker pods that cannot start, from the pod
status a kubelet and the scheduler report (shapes as they write them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from tempotrain_operator import indexes
from tempotrain_operator.worker_pods import mount_problem, stuck_creating, workers_health


def _pod(name: str, phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase, **status}}


def _waiting(reason: str, message: str) -> dict[str, Any]:
    return {
        "name": "worker",
        "image": "img",
        "state": {"waiting": {"reason": reason, "message": message}},
    }


def _running_ready(name: str) -> dict[str, Any]:
    return _pod(
        name,
        "Running",
        conditions=[{"type": "Ready", "status": "True"}],
        containerStatuses=[{"name": "worker", "image": "img", "state": {"running": {}}}],
    )


def test_an_image_the_node_cannot_have_is_named_with_the_kubelets_words() -> None:
    message = 'Container image "localhost/x:1" is not present with pull policy of Never'
    health = workers_health(
        [
            _running_ready("exp-eval-1"),
            _pod("exp-training-1", containerStatuses=[_waiting("ErrImageNeverPull", message)]),
        ]
    )
    assert health is not None and not health.ready
    assert health.reason == "ImageUnavailable"
    assert health.message == f"pod exp-training-1: ErrImageNeverPull: {message}"


def test_an_unschedulable_pod_carries_the_schedulers_reason() -> None:
    message = "0/5 nodes are available: pod has unbound immediate PersistentVolumeClaims."
    pod = _pod(
        "exp-training-1",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
            }
        ],
    )
    health = workers_health([pod])
    assert health is not None and (health.ready, health.reason) == (False, "Unschedulable")
    assert message in health.message


def test_a_crash_loop_names_the_last_exit_and_where_to_look() -> None:
    crashing = {
        "name": "worker",
        "image": "img",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}},
    }
    health = workers_health([_pod("exp-eval-1", "Running", containerStatuses=[crashing])])
    assert health is not None and health.reason == "CrashLoopBackOff"
    assert (
        "exit code 2" in health.message and "kubectl logs --previous exp-eval-1" in health.message
    )


def test_a_missing_secret_is_a_container_that_was_not_created() -> None:
    waiting = _waiting("CreateContainerConfigError", 'secret "temporal" not found')
    health = workers_health([_pod("exp-eval-1", containerStatuses=[waiting])])
    assert health is not None and health.reason == "ContainerNotCreated"


def test_all_running_and_ready_is_ready_and_starting_pods_say_nothing_yet() -> None:
    health = workers_health([_running_ready("a"), _running_ready("b")])
    assert health is not None and (health.ready, health.reason) == (True, "Running")
    creating = _pod("c", containerStatuses=[_waiting("ContainerCreating", "")])
    assert workers_health([_running_ready("a"), creating]) is None
    assert workers_health([]) is None  # scaled to 0, or not created yet
    terminating = _running_ready("d")
    terminating["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    assert workers_health([terminating]) is None


def _creating(name: str, scheduled_at: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled_at}
            ],
            "containerStatuses": [
                {"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}
            ],
        },
    }


def test_only_pods_creating_for_a_while_are_asked_about() -> None:
    now = datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)
    pods = [
        _creating("fresh", "2026-12-01T12:00:20Z"),
        _creating("stuck", "2026-12-01T11:59:00Z"),
    ]
    assert stuck_creating(pods, now) == ["stuck"]
    assert stuck_creating(pods, now + timedelta(minutes=5)) == ["fresh", "stuck"]


def test_the_newest_mount_failure_says_why_a_pod_is_stuck() -> None:
    events = [
        {"reason": "FailedMount", "message": "old", "lastTimestamp": "2026-12-01T11:00:00Z"},
        {
            "reason": "FailedMount",
            "message": 'MountVolume.SetUp failed for volume "temporal" : secret "creds" not found',
            "lastTimestamp": "2026-12-01T12:00:00Z",
        },
        {"reason": "BackOff", "message": "unrelated", "lastTimestamp": "2026-12-01T12:01:00Z"},
    ]
    health = mount_problem("p", events)
    assert health is not None and not health.ready
    assert health.reason == "VolumeNotMounted"
    assert 'secret "creds" not found' in health.message
    assert mount_problem("p", events[2:]) is None


def test_the_indexed_pod_keeps_what_the_verdicts_read() -> None:
    """The operator keeps a slim copy of each worker pod (`indexes`): every verdict on it
    is the one on the pod the watch gave, spec and managed fields and all."""
    scheduled = {
        "type": "PodScheduled",
        "status": "True",
        "lastTransitionTime": "2026-12-01T11:59:00Z",
    }
    full_pods = [
        _running_ready("exp-eval-1"),
        _pod("exp-training-1", containerStatuses=[_waiting("CrashLoopBackOff", "back-off")]),
        _pod("exp-training-2", conditions=[scheduled]),
        _pod(
            "exp-training-3",
            initContainerStatuses=[_waiting("ErrImagePull", "pull access denied")],
        ),
        {**_running_ready("exp-gone"), "metadata": {"name": "exp-gone"}},
    ]
    full_pods[-1]["metadata"]["deletionTimestamp"] = "2026-12-01T12:00:00Z"
    for pod in full_pods:
        pod["metadata"].update(uid="u", managedFields=[{"manager": "kubelet"}], labels={"a": "b"})
        pod["spec"] = {"containers": [{"name": "worker", "image": "img"}]}
    now = datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)
    for some in ([p] for p in full_pods):
        slim = [indexes.slim_pod(kopf.Body(pod)) for pod in some]
        assert "spec" not in slim[0] and "uid" not in slim[0]["metadata"]
        assert workers_health(slim) == workers_health(some)
        assert stuck_creating(slim, now) == stuck_creating(some, now)
    assert stuck_creating([indexes.slim_pod(kopf.Body(full_pods[2]))], now) == ["exp-training-2"]


def test_the_indexed_event_keeps_what_the_verdicts_read() -> None:
    events = [
        {
            "metadata": {"name": f"p.{i}", "managedFields": [{"manager": "kubelet"}]},
            "involvedObject": {"kind": "Pod", "name": "p"},
            "type": "Warning",
            "reason": "FailedMount",
            "message": f'MountVolume.SetUp failed: secret "creds-{i}" not found',
            "lastTimestamp": f"2026-12-01T12:0{i}:00Z",
            "source": {"component": "kubelet"},
        }
        for i in range(3)
    ]
    slim = [indexes.slim_event(kopf.Body(event)) for event in events]
    assert all(set(event) == {"reason", "message", "lastTimestamp", "eventTime"} for event in slim)
    assert mount_problem("p", slim) == mount_problem("p", events)
