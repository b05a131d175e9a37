"""One way to reach Temporal for every process, and worker pods that connect like the operator."""

from __future__ import annotations

import pytest
from tempotrain_operator.children import Experiment, WorkerConfig, build_worker_deployment
from tempotrain_operator.settings import parse_settings
from tempotrain_workers.api import BertExperimentSpec
from tempotrain_workers.settings import parse_worker_settings
from tempotrain_workers.temporal_client import SECRET_MOUNT, TemporalConnection

EXPERIMENT = Experiment(
    name="exp",
    namespace="ns",
    uid="0123456789abcdef",
    spec=BertExperimentSpec.model_validate({"model": {"name": "m"}}),
)


def _env(connection: TemporalConnection, secret: str | None) -> dict[str, str]:
    workers = WorkerConfig("img", connection, "tq", "eq", temporal_secret=secret)
    container = build_worker_deployment(EXPERIMENT, workers, "eval")["spec"]["template"]["spec"]
    return {e["name"]: e["value"] for e in container["containers"][0]["env"] if "value" in e}


def test_a_plaintext_connection_gives_workers_address_and_namespace_only() -> None:
    env = _env(TemporalConnection("temporal:7233", "ml"), None)
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233" and env["TEMPORAL_NAMESPACE"] == "ml"
    assert not {k for k in env if k.startswith(("TEMPORAL_TLS", "TEMPORAL_API"))}


def test_mtls_workers_read_the_same_kind_of_files_from_the_mounted_secret() -> None:
    operator_side = TemporalConnection(
        "t:7233", tls_cert="/op/tls.crt", tls_key="/op/tls.key", tls_ca="/op/ca.crt"
    )
    workers = WorkerConfig("img", operator_side, "tq", "eq", temporal_secret="temporal-mtls")
    pod = build_worker_deployment(EXPERIMENT, workers, "training")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    assert env["TEMPORAL_TLS"] == "true"
    assert env["TEMPORAL_TLS_CERT"] == f"{SECRET_MOUNT}/tls.crt"
    assert env["TEMPORAL_TLS_KEY"] == f"{SECRET_MOUNT}/tls.key"
    assert env["TEMPORAL_TLS_CA"] == f"{SECRET_MOUNT}/ca.crt"
    assert "TEMPORAL_API_KEY_FILE" not in env
    assert {"name": "temporal", "secret": {"secretName": "temporal-mtls"}} in pod["volumes"]
    mount = {"name": "temporal", "mountPath": SECRET_MOUNT, "readOnly": True}
    assert mount in pod["containers"][0]["volumeMounts"]


def test_an_api_key_implies_tls_and_without_a_secret_workers_use_system_roots() -> None:
    cloud = TemporalConnection("ns.acct.tmprl.cloud:7233", "ns.acct", api_key_file="/op/key")
    assert cloud.uses_tls
    with_secret = _env(cloud, "temporal-cloud")
    assert with_secret["TEMPORAL_API_KEY_FILE"] == f"{SECRET_MOUNT}/api-key"
    without = _env(cloud, None)
    assert without["TEMPORAL_TLS"] == "true" and "TEMPORAL_API_KEY_FILE" not in without


def test_worker_and_operator_parse_the_same_connection_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEMPORAL_TLS", "true")
    monkeypatch.setenv("TEMPORAL_TLS_CA", "/etc/ca.crt")
    worker = parse_worker_settings(["--address", "t:7233", "--namespace", "ml"]).temporal
    operator = parse_settings(["--temporal-address", "t:7233", "--temporal-namespace", "ml"])
    assert worker == operator.temporal
    assert worker == TemporalConnection("t:7233", "ml", tls=True, tls_ca="/etc/ca.crt")


def test_a_client_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(SystemExit, match="go together"):
        parse_worker_settings(["--temporal-tls-cert", "/c.crt"])
