"""The Helm chart, rendered by the real helm binary (no cluster): lint, CRDs identical to
crds/, hardened workloads, least-privilege RBAC in both scopes, the operator's settings, and
values validation that fails with a readable message."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tempotrain_dev.tools import REPO_ROOT, Tools
from tempotrain_operator.settings import parse_settings
from tempotrain_workers.api import crdgen

CHART = REPO_ROOT / "charts" / "tempotrain"
CI_VALUES = CHART / "ci" / "ci-values.yaml"
CRD_DIR = REPO_ROOT / "crds"
RELEASE, NAMESPACE = "tt", "tt-system"
FULLNAME = f"{RELEASE}-tempotrain"
KEEP = {"helm.sh/resource-policy": "keep"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
RBAC_KINDS = {"Role", "ClusterRole"}

# What the operator does to which resource (operator/tempotrain_operator: kopf watching and
# patching the experiments and their /status, posting events and watching the worker pods,
# the claims and Warning events; kr8s creating PVCs, Deployments and RayClusters, looking
# them up by name (a LIST with a field selector), scaling Deployments (GET + PATCH),
# deleting RayClusters). The chart must grant exactly this in each watched namespace: more
# is too broad, less breaks the operator.
OPERATOR_PERMISSIONS = {
    ("", "events"): {"create", "list", "watch"},
    ("tempotrain.dev", "bertexperiments"): {"get", "list", "watch", "patch"},
    ("tempotrain.dev", "cifar10scalings"): {"get", "list", "watch", "patch"},
    ("tempotrain.dev", "batchinferences"): {"get", "list", "watch", "patch"},
    ("tempotrain.dev", "bertexperiments/status"): {"patch"},
    ("tempotrain.dev", "cifar10scalings/status"): {"patch"},
    ("tempotrain.dev", "batchinferences/status"): {"patch"},
    ("tempotrain.dev", "bertexperiments/finalizers"): {"update"},
    ("tempotrain.dev", "cifar10scalings/finalizers"): {"update"},
    ("tempotrain.dev", "batchinferences/finalizers"): {"update"},
    ("", "persistentvolumeclaims"): {"create", "get", "list", "watch"},
    ("", "pods"): {"list", "watch"},
    ("apps", "deployments"): {"get", "create", "patch"},
    ("ray.io", "rayclusters"): {"get", "create", "delete"},
}
# kopf's cluster-scoped reads (rbac.frameworkClusterReads), never application rules.
FRAMEWORK_CLUSTER_PERMISSIONS = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
            "KUBECONFIG": str(self.home / "no-kubeconfig"),
        }
        return subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=120, env=env
        )

    def lint(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("lint", str(CHART), "--strict", *args)

    def template(self, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
        return self.run("template", RELEASE, str(chart), "--namespace", NAMESPACE, *args)

    def objects(self, *args: str) -> list[dict[str, Any]]:
        result = self.template(*args)
        assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def helm(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tools.helm / "helm", tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def default_objects(helm: Helm) -> list[dict[str, Any]]:
    return helm.objects()


@pytest.fixture(scope="module")
def ci_objects(helm: Helm) -> list[dict[str, Any]]:
    return helm.objects("--values", str(CI_VALUES))


def of_kind(objects: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in kinds]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment", f"{FULLNAME}-operator")["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = pod["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def permissions(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules") or []:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                granted.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return granted


# -- lint and render ------------------------------------------------------------------------
@pytest.mark.parametrize("values", [None, CI_VALUES], ids=["default-values", "ci-values"])
def test_helm_lint_strict_passes(helm: Helm, values: Path | None) -> None:
    result = helm.lint(*(["--values", str(values)] if values else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_default_values_render_the_operator_rbac_crds_and_dev_server(
    default_objects: list[dict[str, Any]],
) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in default_objects)
    assert kinds == sorted(
        [
            ("ServiceAccount", FULLNAME),
            ("ClusterRole", FULLNAME),
            ("ClusterRoleBinding", FULLNAME),
            ("ClusterRole", f"{FULLNAME}-kopf"),
            ("ClusterRoleBinding", f"{FULLNAME}-kopf"),
            ("Deployment", f"{FULLNAME}-operator"),
            ("Service", f"{FULLNAME}-metrics"),
            ("Deployment", f"{FULLNAME}-temporal"),
            ("Service", f"{FULLNAME}-temporal"),
            ("PersistentVolumeClaim", f"{FULLNAME}-temporal-data"),
            ("NetworkPolicy", f"{FULLNAME}-temporal"),
            ("CustomResourceDefinition", "bertexperiments.tempotrain.dev"),
            ("CustomResourceDefinition", "cifar10scalings.tempotrain.dev"),
            ("CustomResourceDefinition", "batchinferences.tempotrain.dev"),
        ]
    )
    for obj in default_objects:
        if obj["kind"] == "CustomResourceDefinition":
            continue
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "tempotrain"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "tempotrain-0.1.0"
        assert labels["app.kubernetes.io/component"]


def test_deployment_selectors_include_the_component(
    default_objects: list[dict[str, Any]],
) -> None:
    """The operator's and the dev server's Deployments (and the worker Deployments the operator
    creates, labelled app.kubernetes.io/name=tempotrain too) must not select each other."""
    selectors = []
    for deployment in of_kind(default_objects, "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template_labels.items()
        selectors.append(selector["app.kubernetes.io/component"])
    assert sorted(selectors) == ["operator", "temporal-dev-server"]


# -- CRDs ----------------------------------------------------------------------------------
def test_chart_crd_copies_are_byte_identical_to_crds() -> None:
    generated = sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "crds-source").glob("*.yaml"))
    assert generated and copies == generated
    for name in generated:
        assert (CHART / "crds-source" / name).read_bytes() == (CRD_DIR / name).read_bytes(), (
            f"charts/tempotrain/crds-source/{name} drifted: run `make crds`"
        )


def test_the_generator_writes_and_checks_the_chart_copy() -> None:
    for kind in crdgen.KINDS:
        assert CHART / "crds-source" / crdgen.path_for(kind).name in crdgen.targets_for(kind)
    assert crdgen.main(["--check"]) == 0


def _rendered_crd_texts(stdout: str) -> dict[str, str]:
    """name -> the YAML text helm rendered for that CRD (after its `# Source:` line)."""
    texts = {}
    for chunk in re.split(r"^---\n", stdout, flags=re.MULTILINE):
        source, _, text = chunk.partition("\n")
        if source == "# Source: tempotrain/templates/crds.yaml":
            texts[yaml.safe_load(text)["metadata"]["name"]] = text
    return texts


def test_rendered_crds_equal_crds_apart_from_the_keep_annotation(helm: Helm) -> None:
    result = helm.template()
    assert result.returncode == 0, result.stderr
    texts = _rendered_crd_texts(result.stdout)
    assert sorted(texts) == sorted(p.stem for p in CRD_DIR.glob("*.yaml"))
    keep_lines = "  annotations:\n    helm.sh/resource-policy: keep\n"
    for name, text in texts.items():
        generated = (CRD_DIR / f"{name}.yaml").read_text()
        rendered = yaml.safe_load(text)
        assert rendered["metadata"].pop("annotations") == KEEP
        assert rendered == yaml.safe_load(generated), f"rendered {name} differs from crds/"
        # Not reformatted either: the same text with only the annotation inserted.
        assert text.replace(keep_lines, "", 1).rstrip("\n") == generated.rstrip("\n")


def test_crds_are_absent_when_crds_install_is_false(helm: Helm) -> None:
    objects = helm.objects("--set", "crds.install=false")
    assert not of_kind(objects, "CustomResourceDefinition")
    assert of_kind(objects, "Deployment"), "the rest of the chart still renders"


# -- hardened workloads ----------------------------------------------------------------------
def _pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in of_kind(objects, *WORKLOAD_KINDS):
        spec = obj["spec"]
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = spec if obj["kind"] == "Pod" else spec["template"]["spec"]
        yield f"{obj['kind']}/{obj['metadata']['name']}", pod


@pytest.mark.parametrize(
    "args",
    [[], ["--values", str(CI_VALUES)], ["--set", "temporal.devServer.ui=false"]],
    ids=["default-values", "ci-values", "headless-dev-server"],
)
def test_every_container_is_hardened(helm: Helm, args: list[str]) -> None:
    checked = []
    for where, pod in _pod_specs(helm.objects(*args)):
        pod_context = pod.get("securityContext") or {}
        assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container.get("securityContext") or {}
            what = f"{where} container {container['name']}"
            run_as_non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
            assert run_as_non_root is True, what
            assert context.get("runAsUser", pod_context.get("runAsUser")) == 1000, what
            assert context.get("readOnlyRootFilesystem") is True, what
            assert context.get("allowPrivilegeEscalation") is False, what
            assert context.get("privileged") in (None, False), what
            assert "ALL" in (context.get("capabilities") or {}).get("drop", []), what
            assert not (context.get("capabilities") or {}).get("add"), what
            assert container.get("resources", {}).get("requests"), what
            # A read-only root needs a writable /tmp, from an emptyDir.
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1, what
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert "emptyDir" in volumes[tmp[0]["name"]], what
            checked.append(what)
    expected = 1 if "--values" in args else 2  # the ci values run no dev server
    assert len(checked) == expected, checked


# -- the operator's process ------------------------------------------------------------------
def test_operator_runs_the_module_with_probes_on_its_liveness_endpoint(
    default_objects: list[dict[str, Any]],
) -> None:
    deployment = one(default_objects, "Deployment", f"{FULLNAME}-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = operator_container(default_objects)
    assert container["command"] == ["python", "-m", "tempotrain_operator"]
    settings = parse_settings(container["args"])  # the operator's own parser accepts them
    assert settings.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz", probe
        assert ports[http["port"]] == 8080, probe


def test_replicas_share_the_experiments_with_a_lease_each(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = helm.objects("--set", "operator.replicas=3", "--set", "operator.leaseSeconds=20")
    deployment = one(objects, "Deployment", f"{FULLNAME}-operator")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never beside unsharded ones
    container = operator_container(objects)
    env = {e["name"]: e for e in container["env"]}
    assert env["TEMPOTRAIN_SHARDED"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    plain = {name: e["value"] for name, e in env.items() if "value" in e}
    pod = {"POD_NAME": "tempotrain-operator-5f7c9d8b6d-x2k4p", "POD_NAMESPACE": NAMESPACE}
    for name, value in (plain | pod).items():  # the operator's parser, on what the pod gets
        monkeypatch.setenv(name, value)
    settings = parse_settings(container["args"])
    assert settings.sharded and settings.identity == pod["POD_NAME"]
    assert settings.lease_namespace == NAMESPACE and settings.lease_seconds == 20
    # Exactly the lease calls `sharding` makes, in the release's namespace only.
    role = one(objects, "Role", f"{FULLNAME}-replicas")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert permissions(role) == {
        ("coordination.k8s.io", "leases"): {"list", "create", "patch", "delete"}
    }
    binding = one(objects, "RoleBinding", f"{FULLNAME}-replicas")
    assert binding["roleRef"]["name"] == f"{FULLNAME}-replicas"
    # One replica: unsharded, no lease, no Role.
    single = helm.objects()
    assert "TEMPOTRAIN_SHARDED" not in env_of(operator_container(single))
    assert not of_kind(single, "Role")


def test_operator_env_is_what_the_operator_reads(
    ci_objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every setting the chart passes by environment reaches the operator's parse_settings
    (a misspelt variable would silently fall back to its default)."""
    container = operator_container(ci_objects)
    for name, value in env_of(container).items():
        monkeypatch.setenv(name, value)
    settings = parse_settings(container["args"])
    assert settings.temporal.address == "temporal-frontend.temporal.svc:7233"
    assert settings.temporal.namespace == "training"
    assert settings.namespaces == ["ml-team-a", "ml-team-b"]
    assert settings.worker_image == "registry.example.com/tempotrain/workers:ci"
    assert settings.per_experiment_queues is True
    assert settings.ray_address == "local"
    assert settings.inference_queue == "tempotrain-inference"
    assert settings.resync_seconds == 30.0
    assert settings.metrics_port == 9100
    assert settings.temporal.tls_ca == "/etc/tempotrain/temporal-tls/ca.crt"
    assert settings.temporal.tls_cert == "/etc/tempotrain/temporal-tls/tls.crt"
    assert settings.temporal.tls_key == "/etc/tempotrain/temporal-tls/tls.key"
    assert settings.temporal.api_key_file == "/etc/tempotrain/temporal-api-key/api-key"
    assert settings.temporal.tls is True
    assert settings.worker_temporal_secret == "temporal-worker-credentials"
    defaults = settings.worker_pod_defaults
    assert [s.name for s in defaults.image_pull_secrets] == ["registry-credentials"]
    assert [v.wire() for v in defaults.env] == [
        {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "hugging-face", "key": "token"}},
        },
        {"name": "NCCL_DEBUG", "value": "WARN"},
    ]
    assert [s.wire() for s in defaults.env_from] == [{"configMapRef": {"name": "proxies"}}]
    chart_vars = {n for n in env_of(container) if n.startswith(("TEMPORAL_", "TEMPOTRAIN_"))}
    operator_source = "".join(
        (REPO_ROOT / path).read_text()
        for path in (
            "operator/tempotrain_operator/settings.py",
            "workers/tempotrain_workers/temporal_client.py",  # the shared connection flags
            "workers/tempotrain_workers/metrics.py",  # the shared --metrics-port
        )
    )
    unknown = {n for n in chart_vars if f'"{n}"' not in operator_source}
    assert not unknown, f"the chart sets variables the operator never reads: {unknown}"


def test_temporal_credentials_come_from_secrets_mounted_read_only(
    ci_objects: list[dict[str, Any]],
) -> None:
    pod = one(ci_objects, "Deployment", f"{FULLNAME}-operator")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in operator_container(ci_objects)["volumeMounts"]}
    tls = volumes["temporal-tls"]["secret"]
    assert tls["secretName"] == "temporal-client-tls"
    assert {i["path"]: i["key"] for i in tls["items"]} == {
        "ca.crt": "ca.crt",
        "tls.crt": "tls.crt",
        "tls.key": "tls.key",
    }
    api_key = volumes["temporal-api-key"]["secret"]
    assert api_key["secretName"] == "temporal-api-key"
    assert api_key["items"] == [{"key": "key", "path": "api-key"}]
    for name, path in (
        ("temporal-tls", "/etc/tempotrain/temporal-tls"),
        ("temporal-api-key", "/etc/tempotrain/temporal-api-key"),
    ):
        assert mounts[name] == {"name": name, "mountPath": path, "readOnly": True}
        assert volumes[name]["secret"]["defaultMode"] == 0o440


def test_server_tls_mounts_only_the_ca(helm: Helm) -> None:
    objects = helm.objects(
        *("--set", "temporal.address=temporal.example.com:7233"),
        *("--set", "temporal.devServer.enabled=false"),
        *("--set", "temporal.tls.mode=tls", "--set", "temporal.tls.secretName=temporal-ca"),
        *("--set", "workers.temporalSecretName=temporal-ca"),
    )
    container = operator_container(objects)
    env = env_of(container)
    assert env["TEMPORAL_TLS_CA"] == "/etc/tempotrain/temporal-tls/ca.crt"
    assert "TEMPORAL_TLS_CERT" not in env and "TEMPORAL_TLS_KEY" not in env
    assert "TEMPORAL_API_KEY_FILE" not in env
    pod = one(objects, "Deployment", f"{FULLNAME}-operator")["spec"]["template"]["spec"]
    (tls,) = [v for v in pod["volumes"] if v["name"] == "temporal-tls"]
    assert tls["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]


def test_plain_temporal_mounts_no_credentials(default_objects: list[dict[str, Any]]) -> None:
    container = operator_container(default_objects)
    env = env_of(container)
    assert not {k for k in env if k.startswith("TEMPORAL_TLS") or k == "TEMPORAL_API_KEY_FILE"}
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]


# -- the Temporal dev server -----------------------------------------------------------------
def test_dev_server_runs_start_dev_and_the_operator_defaults_to_its_service(
    default_objects: list[dict[str, Any]],
) -> None:
    service = one(default_objects, "Service", f"{FULLNAME}-temporal")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 7233, "ui": 8233}
    pod = one(default_objects, "Deployment", f"{FULLNAME}-temporal")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("temporalio/temporal:")
    args = container["args"]
    assert args[:2] == ["server", "start-dev"]
    assert args[args.index("--ip") + 1] == "0.0.0.0"
    assert pod["automountServiceAccountToken"] is False
    address = env_of(operator_container(default_objects))["TEMPORAL_ADDRESS"]
    # Resolvable from every namespace: the worker pods get the same address.
    assert address == f"{FULLNAME}-temporal.{NAMESPACE}.svc:7233"


def test_dev_server_keeps_its_database_on_a_claim_that_outlives_the_release(
    default_objects: list[dict[str, Any]],
) -> None:
    claim = one(default_objects, "PersistentVolumeClaim", f"{FULLNAME}-temporal-data")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    pod = one(default_objects, "Deployment", f"{FULLNAME}-temporal")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--db-filename") + 1] == "/data/temporal.db"
    assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


@pytest.mark.parametrize(
    ("args", "claim"),
    [
        (["--set", "temporal.devServer.persistence.enabled=false"], None),
        (["--set", "temporal.devServer.persistence.existingClaim=mine"], "mine"),
    ],
    ids=["in-memory", "existing-claim"],
)
def test_dev_server_in_memory_or_on_an_existing_claim_creates_no_claim(
    helm: Helm, args: list[str], claim: str | None
) -> None:
    objects = helm.objects(*args)
    assert not of_kind(objects, "PersistentVolumeClaim")
    pod = one(objects, "Deployment", f"{FULLNAME}-temporal")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert ("--db-filename" in pod["containers"][0]["args"]) == (claim is not None)
    assert (volumes.get("data") or {}).get("persistentVolumeClaim", {}).get("claimName") == claim


def test_notes_warn_that_an_in_memory_dev_server_loses_workflows(
    helm: Helm, tmp_path: Path
) -> None:
    kept = _notes(helm, tmp_path / "kept")
    assert "WARNING" not in kept and f"{FULLNAME}-temporal-data" in kept
    lost = _notes(helm, tmp_path / "lost", "--set", "temporal.devServer.persistence.enabled=false")
    assert "WARNING: temporal.devServer.persistence.enabled is false" in lost


def test_dev_server_creates_the_temporal_namespace_the_operator_uses(helm: Helm) -> None:
    objects = helm.objects("--set", "temporal.namespace=training")
    pod = one(objects, "Deployment", f"{FULLNAME}-temporal")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--namespace") + 1] == "training"


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "temporal.devServer.enabled=false", "--set", "temporal.address=t.example:7233"],
        ["--values", str(CI_VALUES)],
    ],
    ids=["disabled", "ci-values"],
)
def test_dev_server_objects_appear_only_when_enabled(helm: Helm, args: list[str]) -> None:
    objects = helm.objects(*args)
    assert not [
        o
        for o in objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        == "temporal-dev-server"
    ]
    services = [o["metadata"]["name"] for o in of_kind(objects, "Service")]
    assert of_kind(objects, "Deployment") and services == [f"{FULLNAME}-metrics"]
    assert env_of(operator_container(objects))["TEMPORAL_ADDRESS"] != ""


# -- RBAC ------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", [None, CI_VALUES], ids=["cluster-scope", "namespaced-scope"])
def test_rbac_has_no_wildcards(helm: Helm, values: Path | None) -> None:
    roles = of_kind(helm.objects(*(["--values", str(values)] if values else [])), *RBAC_KINDS)
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert not [v for v in rule.get(field, []) if "*" in v], (
                    f"{role['kind']} {role['metadata']['name']}: {field} {rule[field]}"
                )
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_cluster_scope_grants_exactly_the_operators_calls(
    default_objects: list[dict[str, Any]],
) -> None:
    assert not of_kind(default_objects, "Role", "RoleBinding")
    application = one(default_objects, "ClusterRole", FULLNAME)
    assert permissions(application) == OPERATOR_PERMISSIONS
    framework = one(default_objects, "ClusterRole", f"{FULLNAME}-kopf")
    # Cluster-wide, kopf watches no Namespaces; it still observes CRDs.
    assert permissions(framework) == {
        key: verbs for key, verbs in FRAMEWORK_CLUSTER_PERMISSIONS.items() if key[1] != "namespaces"
    }
    for binding_name, role_name in ((FULLNAME, FULLNAME), (f"{FULLNAME}-kopf",) * 2):
        binding = one(default_objects, "ClusterRoleBinding", binding_name)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role_name,
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]


def test_namespaced_scope_renders_roles_only_in_the_watched_namespaces(
    ci_objects: list[dict[str, Any]],
) -> None:
    roles = of_kind(ci_objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-team-a", "ml-team-b"]
    for role in roles:
        assert permissions(role) == OPERATOR_PERMISSIONS
    bindings = of_kind(ci_objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-team-a", "ml-team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]
    # No ClusterRole carries application rules: only kopf's cluster-scoped reads remain.
    for cluster_role in of_kind(ci_objects, "ClusterRole"):
        assert permissions(cluster_role) == FRAMEWORK_CLUSTER_PERMISSIONS, cluster_role
    bound = {b["roleRef"]["name"] for b in of_kind(ci_objects, "ClusterRoleBinding")}
    assert bound == {f"{FULLNAME}-kopf"}


def test_framework_cluster_reads_can_be_switched_off(helm: Helm) -> None:
    objects = helm.objects("--values", str(CI_VALUES), "--set", "rbac.frameworkClusterReads=false")
    assert not of_kind(objects, "ClusterRole", "ClusterRoleBinding")
    assert len(of_kind(objects, "Role")) == 2


def test_rbac_create_false_renders_no_rbac(helm: Helm) -> None:
    objects = helm.objects("--set", "rbac.create=false")
    assert not of_kind(objects, "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


# -- values validation ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        # values.schema.json: types, enums and ranges, checked before any template runs.
        (["--set", "operator.replicas=-1"], "at '/operator/replicas': minimum: got -1, want 0"),
        (["--set", "temporal.tls.mode=ssl"], "value must be one of 'disabled', 'tls', 'mtls'"),
        (["--set", "operator.replicas=one"], "at '/operator/replicas': got string, want integer"),
        (["--set", "crds.install=yes"], "at '/crds/install': got string, want boolean"),
        (["--set", "operator.replica=1"], "additional properties 'replica' not allowed"),
        # tempotrain.validateConfig: the same ranges without the schema, and the rules across
        # fields that a schema cannot state.
        (
            ["--skip-schema-validation", "--set", "operator.replicas=-1"],
            "operator.replicas must be 0 (to pause the operator) or more, not -1",
        ),
        (["--set", "operator.leaseSeconds=1"], "at '/operator/leaseSeconds': minimum: got 1"),
        (
            ["--skip-schema-validation", "--set", "operator.leaseSeconds=1"],
            "operator.leaseSeconds must be at least 3",
        ),
        (
            ["--skip-schema-validation", "--set", "temporal.tls.mode=ssl"],
            'temporal.tls.mode must be one of disabled, tls, mtls, not "ssl"',
        ),
        (
            ["--set", "watchNamespaces={team-a}"],
            "watchNamespaces is set (team-a) but rbac.scope is cluster",
        ),
        (
            ["--set", "rbac.scope=namespaced"],
            "rbac.scope is namespaced but watchNamespaces is empty",
        ),
        (
            ["--set", "temporal.devServer.enabled=false"],
            "temporal.address is empty: set it to your Temporal frontend",
        ),
        (
            [
                *("--set", "temporal.address=t.example:7233", "--set", "temporal.tls.mode=tls"),
                *("--set", "temporal.apiKey.enabled=true"),
            ],
            "temporal.apiKey.enabled is true: set temporal.apiKey.secretName",
        ),
        (
            [
                *("--set", "temporal.address=t.example:7233"),
                *("--set", "temporal.apiKey.enabled=true", "--set", "temporal.apiKey.secretName=k"),
            ],
            "temporal.apiKey.enabled is true but temporal.tls.mode is disabled",
        ),
        (
            ["--set", "temporal.address=t.example:7233", "--set", "temporal.tls.mode=mtls"],
            "temporal.tls.mode is mtls: set temporal.tls.secretName",
        ),
        (
            ["--set", "temporal.tls.secretName=certs"],
            'temporal.tls.secretName is "certs" but temporal.tls.mode is disabled',
        ),
        (
            ["--set", "temporal.tls.mode=mtls", "--set", "temporal.tls.secretName=certs"],
            "the Temporal dev server speaks plain gRPC",
        ),
        (
            ["--set", "serviceAccount.create=false"],
            "serviceAccount.create is false: set serviceAccount.name",
        ),
        (
            [
                *("--set", "temporal.address=t.example:7233", "--set", "temporal.tls.mode=tls"),
                *("--set", "temporal.tls.secretName=ca"),
            ],
            "the worker pods would get none: set workers.temporalSecretName",
        ),
        (
            [
                *("--set", "temporal.devServer.persistence.existingClaim=mine"),
                *("--set", "temporal.devServer.persistence.storageClassName=fast"),
            ],
            "set existingClaim or storageClassName, not both",
        ),
    ],
)
def test_nonsense_values_fail_with_a_readable_message(
    helm: Helm, args: list[str], message: str
) -> None:
    result = helm.template(*args)
    assert result.returncode != 0, f"helm template {' '.join(args)} rendered nonsense"
    assert message in result.stderr, result.stderr
    assert not result.stdout.strip()


def test_validation_fails_helm_lint_too(helm: Helm) -> None:
    result = helm.lint("--set", "operator.replicas=-1")
    assert result.returncode != 0
    assert "/operator/replicas" in result.stdout + result.stderr


# -- values.yaml documentation ----------------------------------------------------------------
def _documented(lines: list[str], keys: list[str]) -> bool:
    """Whether the key at this path has a `# --` comment right above it (helm-docs style; a
    continued comment may follow the `# --` line)."""
    indent = "  " * (len(keys) - 1)
    (at,) = [
        i
        for i, line in enumerate(lines)
        if line.startswith(f"{indent}{keys[-1]}:") and _parents(lines, i) == keys[:-1]
    ]
    above = at - 1
    while above >= 0 and lines[above].startswith(f"{indent}#") and "# --" not in lines[above]:
        above -= 1
    return above >= 0 and lines[above].startswith(f"{indent}# --")


def _undocumented_and_untyped(
    lines: list[str], values: dict[str, Any], schema: dict[str, Any], parents: list[str]
) -> Iterator[tuple[str, str]]:
    """("undocumented" | "untyped" | "value", path) for each value. A documented map (e.g.
    `resources`) is one value; an undocumented one is a group whose children are values."""
    for key, value in values.items():
        keys, node = [*parents, key], schema.get("properties", {}).get(key)
        path = ".".join(keys)
        if node is None:
            yield "untyped", path
        if _documented(lines, keys):
            yield "value", path
        elif isinstance(value, dict) and value and node is not None and "properties" in node:
            yield from _undocumented_and_untyped(lines, value, node, keys)
        else:
            yield "undocumented", path


def test_every_value_is_documented_and_typed() -> None:
    """Each value carries a `# --` comment right above it, and the schema knows each key."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    found: dict[str, list[str]] = {"value": [], "undocumented": [], "untyped": []}
    for verdict, path in _undocumented_and_untyped(
        lines, yaml.safe_load("\n".join(lines)), schema, []
    ):
        found[verdict].append(path)
    assert len(found["value"]) > 40, "the walk found too few values to mean anything"
    assert not found["undocumented"], f"values without a `# --` comment: {found['undocumented']}"
    assert not found["untyped"], f"values missing from values.schema.json: {found['untyped']}"


def _parents(lines: list[str], at: int) -> list[str]:
    """The keys enclosing line `at` of a block-style YAML file."""
    parents: list[str] = []
    depth = (len(lines[at]) - len(lines[at].lstrip())) // 2
    for line in reversed(lines[:at]):
        stripped = line.lstrip()
        if not stripped or stripped.startswith(("#", "-")):
            continue
        line_depth = (len(line) - len(stripped)) // 2
        if line_depth < depth:
            parents.insert(0, stripped.split(":", 1)[0])
            depth = line_depth
    return parents


# -- NOTES.txt ------------------------------------------------------------------------------
def _notes(helm: Helm, tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` would print it (rendered offline through `tpl`)."""
    chart = tmp_path / "tempotrain"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "NOTES.txt")
    (chart / "templates" / "notes-render.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ tpl (.Files.Get "NOTES.txt") . | quote }}\n'
    )
    result = helm.template(*args, "--show-only", "templates/notes-render.yaml", chart=chart)
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["data"]["notes"])


def test_notes_tell_the_next_commands(helm: Helm, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path)
    assert "kubectl get tempotrain" in notes
    assert "kubectl apply -f examples/bert-experiment.yaml" in notes
    assert f"port-forward svc/{FULLNAME}-temporal 8233:8233" in notes
    assert "http://localhost:8233" in notes


def test_notes_without_dev_server_point_at_the_watched_namespace(
    helm: Helm, tmp_path: Path
) -> None:
    notes = _notes(helm, tmp_path, "--values", str(CI_VALUES))
    assert "port-forward" not in notes
    assert "kubectl apply -n ml-team-a -f examples/bert-experiment.yaml" in notes
    assert "temporal-frontend.temporal.svc:7233" in notes


def test_kueue_integration_adds_its_env_and_exactly_its_rbac(helm: Helm) -> None:
    objects = helm.objects("--set", "kueue.enabled=true", "--set", "kueue.pollSeconds=5")
    env = env_of(operator_container(objects))
    assert env["TEMPOTRAIN_KUEUE"] == "true" and env["TEMPOTRAIN_QUEUE_SECONDS"] == "5"
    granted = permissions(one(objects, "ClusterRole", FULLNAME))
    assert granted[("kueue.x-k8s.io", "workloads")] == {"list", "create", "patch"}
    assert granted[("kueue.x-k8s.io", "workloads/status")] == {"patch"}
    assert set(granted) - set(OPERATOR_PERMISSIONS) == {
        ("kueue.x-k8s.io", "workloads"),
        ("kueue.x-k8s.io", "workloads/status"),
    }
    reads = one(objects, "ClusterRole", f"{FULLNAME}-kueue")
    assert permissions(reads) == {
        ("kueue.x-k8s.io", "resourceflavors"): {"list"},
        ("kueue.x-k8s.io", "workloadpriorityclasses"): {"list"},
    }
    assert one(objects, "ClusterRoleBinding", f"{FULLNAME}-kueue")["roleRef"]["name"] == (
        f"{FULLNAME}-kueue"
    )
    # Off by default: no Kueue permission, no Kueue setting.
    assert "TEMPOTRAIN_KUEUE" not in env_of(operator_container(helm.objects()))


def test_metrics_are_served_scraped_and_charted(helm: Helm) -> None:
    """The operator's /metrics port behind a Service; a ServiceMonitor, a PodMonitor for the
    worker pods' `metrics` port and the Grafana dashboard on request; every metric the
    dashboard plots is one the operator or the workers export."""
    from prometheus_client import REGISTRY
    from tempotrain_operator import metrics as operator_metrics
    from tempotrain_workers import metrics as worker_metrics

    objects = helm.objects(
        *(
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.podMonitor.enabled=true",
        ),
        *(
            "--set",
            "metrics.dashboard.enabled=true",
            "--set",
            "metrics.serviceMonitor.labels.release=kps",
        ),
    )
    container = operator_container(objects)
    assert env_of(container)["TEMPOTRAIN_METRICS_PORT"] == "9100"
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
    service = one(objects, "Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    monitor = one(objects, "ServiceMonitor", f"{FULLNAME}-operator")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    pods = one(objects, "PodMonitor", f"{FULLNAME}-workers")
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pods["spec"]["namespaceSelector"] == {"any": True}
    dashboard = one(objects, "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    panels = json.loads(dashboard["data"]["tempotrain.json"])["panels"]
    exported = {
        sample.name
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name.startswith("tempotrain_")
    } | {  # samples of labelled metrics appear once used: their names by declaration
        f"{m._name}{suffix}"
        for module in (operator_metrics, worker_metrics)
        for m in vars(module).values()
        if hasattr(m, "_name") and hasattr(m, "_type")
        for suffix in ("", "_total", "_bucket", "_count", "_sum")
    }
    plotted = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"tempotrain_[a-z_]+", target["expr"])
    }
    assert len(plotted) >= 10 and plotted <= exported, plotted - exported

    # Off: neither the port, nor the Service; the monitors and the dashboard are opt-in.
    quiet = helm.objects("--set", "metrics.enabled=false")
    assert "TEMPOTRAIN_METRICS_PORT" not in env_of(operator_container(quiet))
    assert not [o for o in quiet if o["metadata"]["name"].endswith("-metrics")]
    assert not of_kind(helm.objects(), "ServiceMonitor", "PodMonitor", "ConfigMap")
