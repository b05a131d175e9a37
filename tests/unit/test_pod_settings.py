"""What every pod the operator makes carries: the restricted security profile, no API token,
no GPUs it did not ask for, and the user's pull secrets and environment over the chart's."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import ValidationError
from tempotrain_operator.children import (
    Experiment,
    WorkerConfig,
    build_inference_deployment,
    build_worker_deployment,
)
from tempotrain_operator.ray_children import build_ray_cluster
from tempotrain_operator.settings import parse_settings
from tempotrain_workers.api import (
    BatchInferenceSpec,
    BertExperimentSpec,
    Cifar10ScalingSpec,
    PodSettings,
)
from tempotrain_workers.temporal_client import TemporalConnection

DEFAULTS = PodSettings.model_validate(
    {
        "imagePullSecrets": [{"name": "registry"}],
        "env": [
            {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
            {"name": "NCCL_DEBUG", "value": "WARN"},
        ],
        "envFrom": [{"configMapRef": {"name": "proxies"}}],
    }
)
WORKERS = WorkerConfig(
    image="img:1",
    temporal=TemporalConnection("t:7233"),
    training_queue="tq",
    eval_queue="eq",
    pod_defaults=DEFAULTS,
)
USER = {
    "imagePullSecrets": [{"name": "team"}, {"name": "registry"}],
    "env": [
        {"name": "NCCL_DEBUG", "value": "INFO"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    ],
    "envFrom": [{"secretRef": {"name": "team-env"}, "prefix": "TEAM_"}],
}


def _bert(**spec: Any) -> Experiment[BertExperimentSpec]:
    model = BertExperimentSpec.model_validate({"model": {"name": "bert-base-uncased"}, **spec})
    return Experiment(name="exp", namespace="ns", uid="0123456789abcdef", spec=model)


def _pods() -> list[dict[str, Any]]:
    """Every pod template the operator makes, of every kind."""
    bert = _bert(resources={"gpus": 1})
    scaling = Experiment(
        "c10",
        "ns",
        "0123456789abcdef",
        Cifar10ScalingSpec.model_validate({"scales": [{"workers": 1}]}),
    )
    inference = Experiment(
        "inf",
        "ns",
        "0123456789abcdef",
        BatchInferenceSpec.model_validate({"model": {"name": "m"}, "dataset": {"name": "imdb"}}),
    )
    ray = build_ray_cluster(scaling, "img:1")["spec"]
    return [
        build_worker_deployment(bert, WORKERS, "training")["spec"]["template"]["spec"],
        build_worker_deployment(bert, WORKERS, "eval")["spec"]["template"]["spec"],
        build_worker_deployment(scaling, WORKERS, "ray-driver")["spec"]["template"]["spec"],
        build_inference_deployment(inference, WORKERS)["spec"]["template"]["spec"],
        ray["headGroupSpec"]["template"]["spec"],
        ray["workerGroupSpecs"][0]["template"]["spec"],
    ]


def test_every_pod_is_restricted_without_an_api_token_and_chowns_only_on_a_mismatch() -> None:
    for pod in _pods():
        assert pod["automountServiceAccountToken"] is False
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert security["fsGroupChangePolicy"] == "OnRootMismatch"
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_containers_without_a_gpu_limit_see_no_gpu() -> None:
    for pod in _pods():
        for container in pod["containers"]:
            limits = container["resources"].get("limits", {})
            visible = {e["name"]: e.get("value") for e in container["env"]}.get(
                "NVIDIA_VISIBLE_DEVICES"
            )
            assert visible == (None if "nvidia.com/gpu" in limits else "void"), container


def test_the_experiments_settings_add_to_the_operators_and_win_on_a_name() -> None:
    experiment = _bert(workers=USER)
    pod = build_worker_deployment(experiment, WORKERS, "eval")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}, {"name": "team"}]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NCCL_DEBUG"] == {"name": "NCCL_DEBUG", "value": "INFO"}
    assert [e["name"] for e in container["env"]].count("NCCL_DEBUG") == 1
    assert env["HTTPS_PROXY"]["value"] == "http://proxy:3128"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["TEMPORAL_ADDRESS"]["value"] == "t:7233"  # ours stay
    assert container["envFrom"] == [
        {"configMapRef": {"name": "proxies"}},
        {"prefix": "TEAM_", "secretRef": {"name": "team-env"}},
    ]


def test_ray_pods_get_the_same_settings() -> None:
    scaling = Experiment(
        "c10",
        "ns",
        "0123456789abcdef",
        Cifar10ScalingSpec.model_validate({"scales": [{"workers": 1}], "workers": USER}),
    )
    ray = build_ray_cluster(scaling, "img:1", DEFAULTS)["spec"]
    for group in [ray["headGroupSpec"], *ray["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "registry"}, {"name": "team"}]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["NCCL_DEBUG"] == "INFO" and env["HTTPS_PROXY"] == "http://proxy:3128"


def test_no_settings_leave_no_empty_fields() -> None:
    workers = dataclasses.replace(WORKERS, pod_defaults=PodSettings())
    pod = build_worker_deployment(_bert(), workers, "eval")["spec"]["template"]["spec"]
    assert "imagePullSecrets" not in pod and "envFrom" not in pod["containers"][0]


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]},
         "set value or valueFrom"),
        ({"env": [{"name": "1A=", "value": "1"}]}, "env.0.name"),
        ({"env": [{"name": "A", "valueFrom": {}}]}, "exactly one of secretKeyRef"),
        ({"envFrom": [{"prefix": "X_"}]}, "exactly one of secretRef and configMapRef"),
        ({"imagePullSecrets": [{"name": "Not A Name"}]}, "imagePullSecrets.0.name"),
    ],
)  # fmt: skip
def test_malformed_settings_are_refused_with_the_field(
    settings: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        PodSettings.model_validate(settings)


def test_operator_refuses_to_start_on_malformed_pod_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEMPOTRAIN_WORKER_POD_DEFAULTS", '{"env": [{"value": "no name"}]}')
    with pytest.raises(SystemExit):
        parse_settings([])
    assert "TEMPOTRAIN_WORKER_POD_DEFAULTS" in capsys.readouterr().err
