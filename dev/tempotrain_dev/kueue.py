"""Kueue's controller manager on the local platform, as a host process like the other
controllers: its configuration, the certificates it insists on, and its CRDs.

Kueue is run without its webhook configurations (nothing calls its webhooks: they only
default and validate Kueue's own objects), without leader election, and without its internal
certificate management, which out of a cluster waits forever for a kubelet to mount a Secret.
Its webhook server still starts and wants a certificate, and with internal certificates off
it reads a metrics certificate from a fixed path, /etc/kueue/metrics/certs: both get the
platform's own serving pair. The three TempoTrain kinds are its external frameworks: Kueue
admits their Workloads, which the TempoTrain operator creates and follows (docs/queueing.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from tempotrain_workers.api import GROUP, VERSION

# Fixed in Kueue 0.17 (cmd/kueue/main.go) when internalCertManagement is off.
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
EXTERNAL_FRAMEWORKS = tuple(
    f"{kind}.{VERSION}.{GROUP}" for kind in ("BertExperiment", "Cifar10Scaling", "BatchInference")
)


def write_certificates(cert: Path, key: Path, webhook_dir: Path) -> None:
    """The serving pair where Kueue's webhook server and metrics watcher read it."""
    for directory in (webhook_dir, METRICS_CERT_DIR):
        directory.mkdir(parents=True, exist_ok=True)
        for source, name in ((cert, "tls.crt"), (key, "tls.key")):
            target = directory / name
            data = source.read_bytes()
            if not target.exists() or target.read_bytes() != data:
                target.write_bytes(data)
                target.chmod(0o600)


def configuration(health_port: int, webhook_port: int, cert_dir: Path) -> str:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2), as JSON (which is YAML)."""
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "featureGates": {
            # An API server of its own (delegated authn against the cluster): not needed.
            "VisibilityOnDemand": False,
            # 0.17.1 marks a Workload whose owner its informer has not seen yet as
            # finished (kubernetes-sigs/kueue#10901; off by default from 0.17.3).
            "FinishOrphanedWorkloads": False,
        },
        "manageJobsWithoutQueueName": False,
        "integrations": {
            "frameworks": ["batch/job"],
            "externalFrameworks": list(EXTERNAL_FRAMEWORKS),
        },
    }
    return json.dumps(config, indent=2)
