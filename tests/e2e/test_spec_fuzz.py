"""Property-based fuzzing of every kind's spec against the real apiserver and operator: each
generated spec (a valid one with a few fields replaced by arbitrary JSON, removed, or added)
is either refused at `kubectl apply` naming the field, or accepted, read by the operator's
own model exactly as the apiserver stored it, and reconciled (a phase, and SpecValid or a
started workflow); the operator never crashes nor logs an unhandled error."""

from __future__ import annotations

import copy
import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from tempotrain_workers.api import BatchInferenceSpec, BertExperimentSpec, Cifar10ScalingSpec

from tests.conftest import ClusterHandle
from tests.e2e.conftest import Stack, conditions_by_type, experiment, kube_json
from tests.e2e.test_batch_inference import batch_inference
from tests.e2e.test_cifar10_scaling import scaling
from tests.support import eventually

pytestmark = pytest.mark.kube

DELETE = object()  # a mutation that removes the field
NASTY_STRINGS = [
    "",
    " ",
    "../../etc/passwd",
    "/etc",
    "m" * 300,
    "bert-base-uncased",
    "models/minilm",
    "10Gi",
    "lots",
    "-1",
    "registry.example/ml/workers:2",
    "evil.example/miner:1",
    "Delete",
    "ReadWriteMany",
    "synthetic",
    "\u00e9\u00e8\u0000",
]
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, 1, -1, 7, 64, 4097, 10**6, 0.5, 1e-9, 2.5, 1e12]),
    st.sampled_from(NASTY_STRINGS),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "workers", "x", "cpu", "file"]), inner, max_size=3
        ),
    ),
    max_leaves=6,
)

# A valid spec of each kind, and its model: the starting points the mutations take apart.
KINDS: dict[str, tuple[str, dict[str, Any], type[BaseModel]]] = {
    "BertExperiment": (
        "bexp",
        experiment("x", "models/minilm", workers={"image": "registry.example/ml/w:1"})["spec"],
        BertExperimentSpec,
    ),
    "Cifar10Scaling": ("c10s", scaling("x")["spec"], Cifar10ScalingSpec),
    "BatchInference": (
        "binf",
        batch_inference("x", model={"name": "models/minilm"}, workers=2)["spec"],
        BatchInferenceSpec,
    ),
}
# Fields a valid base leaves unset, which mutations should reach too.
OPTIONAL_PATHS = {
    "BertExperiment": [("runId",), ("dataset", "name"), ("storage", "runs", "existingClaim")],
    "Cifar10Scaling": [("ray", "address"), ("useGpu",), ("storage", "snapshots", "reclaimPolicy")],
    "BatchInference": [("model", "fromExperiment"), ("range", "end"), ("outputs", "path")],
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


def _mutate(spec: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    parent: Any = spec
    for step in path[:-1]:
        if isinstance(parent, dict):
            parent = parent.setdefault(step, {})
        elif isinstance(parent, list) and isinstance(step, int) and step < len(parent):
            parent = parent[step]
        else:
            return  # an earlier mutation replaced what this path goes through
        if not isinstance(parent, dict | list):
            return
    last = path[-1]
    if isinstance(parent, list):
        if isinstance(last, int) and last < len(parent):
            if value is DELETE:
                del parent[last]
            else:
                parent[last] = value
    elif value is DELETE:
        parent.pop(last, None)
    else:
        parent[last] = value


def specs(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    base = KINDS[kind][1]
    paths = _paths(base) + OPTIONAL_PATHS[kind] + [("unknownField",)]
    mutation = st.tuples(st.sampled_from(paths), st.one_of(st.just(DELETE), JSON_VALUES))

    def mutated(mutations: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
        spec = copy.deepcopy(base)
        for path, value in mutations:
            _mutate(spec, path, value)
        return spec

    return st.lists(mutation, min_size=1, max_size=3).map(mutated)


# The apiserver names the field it refuses: spec.x.y, spec.scales[0].workers, or for a
# strict-decoding refusal the unknown field's path.
FIELD_PATH = re.compile(r"spec(\.[A-Za-z]+(\[\d+\])?)*|unknown field \"spec")


@pytest.mark.parametrize(
    ("kind", "examples"),
    [("BertExperiment", 40), ("Cifar10Scaling", 20), ("BatchInference", 30)],
)
async def test_every_spec_is_refused_with_its_field_or_reconciled(
    cluster: ClusterHandle, operator_only: Stack, kind: str, examples: int
) -> None:
    ns = operator_only.namespace
    short, _, model = KINDS[kind]
    names = (f"fuzz-{n}" for n in itertools.count())
    accepted: list[str] = []
    refused = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same specs every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
    )
    @given(spec=specs(kind))
    def apply_one(spec: dict[str, Any]) -> None:
        nonlocal refused
        name = next(names)
        manifest = {
            "apiVersion": "tempotrain.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        result = cluster.kubectl.run("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
        if result.returncode != 0:
            refused += 1
            assert FIELD_PATH.search(result.stderr), f"refused without a field:\n{result.stderr}"
            return
        stored = kube_json(cluster, ns, short, name)["spec"]
        # What the apiserver let through, the operator's model reads: the CRD is generated
        # from it, and the two must not disagree.
        model.model_validate(stored)
        accepted.append(name)

    apply_one()
    assert refused and accepted, f"{refused} refused, {len(accepted)} accepted: fuzz too narrow"

    async def all_reconciled() -> bool:
        items = {i["metadata"]["name"]: i for i in kube_json(cluster, ns, short)["items"]}
        return all(_reconciled(items[name]) for name in accepted)

    await eventually(all_reconciled, within=180, what=f"every accepted {kind} reconciled")
    assert operator_only.alive("operator")
    log = operator_only.log("operator") + (operator_only.root / "operator.log").read_text()
    assert "failed with an exception" not in log and "Traceback" not in log, log[-3000:]


def _reconciled(obj: dict[str, Any]) -> bool:
    """The operator has seen it through: a phase, and the verdict on its spec (valid and
    started, or Failed with InvalidSpec); a scaling run may still wait for its Ray cluster."""
    status = obj.get("status") or {}
    conditions = conditions_by_type(status)
    if not status.get("phase"):
        return False
    if status["phase"] == "Failed":
        valid = conditions.get("SpecValid") or conditions.get("ModelReady") or {}
        return valid.get("status") == "False" and bool(valid.get("message"))
    return (
        "SpecValid" in conditions or "RayClusterReady" in conditions or "ModelReady" in conditions
    )
