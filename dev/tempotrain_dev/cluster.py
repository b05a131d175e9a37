"""A real Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok (fake Nodes), the KubeRay operator and Kueue, each a process of its own
with a PID file.

Without a real node everything listens on loopback. With one (`real_node.py`) the apiserver
listens on the host side of the node's network instead, so kubelets and pods reach it.

kwok's Nodes carry kwok's own taint: pods land there only from namespaces that ask for it
(`KWOK_NAMESPACE_ANNOTATIONS`), where host processes polling Temporal do the real work. Every
other pod goes to the real node, or stays Pending where there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tempotrain_dev import kueue
from tempotrain_dev.net import free_ports, http_ok, port_open
from tempotrain_dev.node_network import NodeNetwork
from tempotrain_dev.pki import Pki
from tempotrain_dev.processes import ManagedProcess
from tempotrain_dev.provisioner import storage_class
from tempotrain_dev.tools import Tools
from tempotrain_dev.waiting import wait_for

# Start order; `down` stops them in reverse.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "provisioner",
    "kuberay-operator",  # its CRDs are applied before the controller-manager (see `up`)
    "kueue",  # likewise
)
PORT_NAMES = (
    "etcd_client",
    "etcd_peer",
    "apiserver",
    "controller_manager",
    "scheduler",
    "kwok",
    "kuberay_probe",
    "kueue_probe",
    "kueue_webhook",
)
SERVICE_CIDR = "10.96.0.0/16"
# A path here: the apiserver writes one audit line per request to it (who, verb, resource),
# which is how a benchmark tells the operator's requests from the controllers'.
AUDIT_LOG_ENV = "TEMPOTRAIN_APISERVER_AUDIT_LOG"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata"}],
}
# Fixed, not port-derived, so service-account tokens survive a restart on new ports.
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# kwok's convention: its Nodes are tainted, and only pods that tolerate it land there.
KWOK_TAINT = {"key": KWOK_NODE_ANNOTATION, "value": "fake", "effect": "NoSchedule"}
# A namespace that says so has all its pods placed on kwok Nodes (the PodNodeSelector and
# PodTolerationRestriction admission plugins): the host-worker mode of the tests and demos.
KWOK_NAMESPACE_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=kwok",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
        [{"key": KWOK_NODE_ANNOTATION, "operator": "Exists", "effect": "NoSchedule"}]
    ),
}


def kwok_namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, object]:
    """A Namespace whose pods all go to kwok Nodes (host processes do their work)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": labels or {},
            "annotations": KWOK_NAMESPACE_ANNOTATIONS,
        },
    }


# The apiserver's client certificate towards kubelets (logs, exec, port-forward).
KUBELET_CLIENT = "kube-apiserver-kubelet-client"
GPU_RESOURCE = "nvidia.com/gpu"
NODE_POOL_LABEL = "tempotrain.dev/node-pool"


@dataclass(frozen=True)
class FakeNode:
    name: str
    pool: str  # "cpu" or "gpu"
    cpu: str = "16"
    memory: str = "64Gi"
    gpus: int = 0


DEFAULT_NODES = (
    FakeNode("kwok-cpu-0", "cpu"),
    FakeNode("kwok-cpu-1", "cpu"),
    FakeNode("kwok-gpu-0", "gpu", cpu="32", memory="256Gi", gpus=4),
    FakeNode("kwok-gpu-1", "gpu", cpu="32", memory="256Gi", gpus=4),
)


class ClusterStartError(RuntimeError):
    pass


def cluster_processes(state_dir: Path) -> dict[str, ManagedProcess]:
    """The control plane's processes by name. Needs no tools: stopping or listing them works
    even where nothing has been built."""
    return {name: ManagedProcess(name, state_dir) for name in COMPONENTS}


def stop_cluster(state_dir: Path, log: Callable[[str], None] = print) -> None:
    processes = cluster_processes(state_dir)
    for name in reversed(COMPONENTS):
        if processes[name].is_running():
            # The apiserver's shutdown waits up to 20 s to take its address out of the
            # `kubernetes` Service's endpoints, which nothing needs once the platform stops;
            # its data is etcd's, stopped gracefully next.
            processes[name].stop(timeout=3 if name == "kube-apiserver" else 15)
            log(f"cluster: {name} stopped")


class LocalCluster:
    def __init__(self, state_dir: Path, tools: Tools, network: NodeNetwork | None = None) -> None:
        self.state_dir = state_dir
        self.tools = tools
        self.network = network
        # Loopback, unless a real node's kubelet and pods must reach the apiserver.
        self.address = network.host_ip if network else "127.0.0.1"
        self.pki = Pki(state_dir / "pki")
        self.kubeconfig = state_dir / "kubeconfig"
        self._ports_file = state_dir / "ports.json"
        self.processes = cluster_processes(state_dir)

    # -- lifecycle ----------------------------------------------------------------------

    def is_up(self) -> bool:
        return all(p.is_running() for p in self.processes.values()) and self._ready()

    def up(self, log: Callable[[str], None] = print) -> None:
        """Start whatever is not running; a no-op when everything already is."""
        if self.is_up():
            log(f"cluster: already up (KUBECONFIG={self.kubeconfig})")
            return
        extra_ips = (self.address,) if self.network else ()
        self.pki.ensure({"admin": "system:masters", KUBELET_CLIENT: "system:masters"}, extra_ips)
        ports = self._ports()
        self.pki.write_kubeconfig(self.kubeconfig, self.server(ports["apiserver"]), "admin")
        for name in COMPONENTS:
            if name == "kube-controller-manager":
                # Before the controller-manager: its garbage collector discovers resources at
                # start and only every 30 s after, and it must know RayClusters to delete
                # their pods with them. The KubeRay operator's watches need them too.
                self._apply_crds()
            already = self.processes[name].is_running()
            self.processes[name].start(self._argv(name, ports), env=self._env(name))
            self._wait_healthy(name, ports)
            log(f"cluster: {name} {'already running' if already else 'started'}")
        self._bootstrap()
        log(f"cluster: ready at {self.server(ports['apiserver'])}")

    def down(self, log: Callable[[str], None] = print) -> None:
        stop_cluster(self.state_dir, log)

    def server(self, port: int | None = None) -> str:
        return f"https://{self.address}:{port or self._ports()['apiserver']}"

    # -- helpers used by callers ----------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [str(self.tools.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    # -- internals --------------------------------------------------------------------------

    def _ports(self) -> dict[str, int]:
        """Reuse the recorded ports while any component still runs; otherwise pick free ones.
        Names the record lacks (a component added since it was written) get free ones too."""
        chosen: dict[str, int] = {}
        if self._ports_file.exists() and any(p.is_running() for p in self.processes.values()):
            chosen = dict(json.loads(self._ports_file.read_text()))
        missing = [name for name in PORT_NAMES if name not in chosen]
        if missing:
            chosen |= dict(zip(missing, free_ports(len(missing)), strict=True))
            self._ports_file.parent.mkdir(parents=True, exist_ok=True)
            self._ports_file.write_text(json.dumps(chosen, indent=2))
        return chosen

    def _env(self, name: str) -> dict[str, str]:
        env = {"KUBECONFIG": str(self.kubeconfig)}
        if name == "kuberay-operator":
            # Its webhooks would need serving certs and a webhook configuration; keep them off
            # even if the calling shell exports ENABLE_WEBHOOKS=true.
            env["ENABLE_WEBHOOKS"] = "false"
        return env

    def _argv(self, name: str, ports: dict[str, int]) -> list[str]:
        pki, state, kubeconfig = self.pki, self.state_dir, str(self.kubeconfig)
        if name == "etcd":
            peer = f"http://127.0.0.1:{ports['etcd_peer']}"
            client = f"http://127.0.0.1:{ports['etcd_client']}"
            return [
                str(self.tools.binary("etcd")),
                "--name=default",
                f"--data-dir={state / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]
        if name == "kube-apiserver":
            return self._apiserver_argv(ports)
        if name == "kube-controller-manager":
            return [
                str(self.tools.binary("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['controller_manager']}",
                f"--cert-dir={state / 'controller-manager'}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
            ]
        if name == "kube-scheduler":
            return [
                str(self.tools.binary("kube-scheduler")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}",
                f"--cert-dir={state / 'scheduler'}",
                "--profiling=false",
            ]
        if name == "kwok":
            config = state / "kwok.yaml"
            config.write_text("")  # keep ~/.kwok/kwok.yaml of the user out of it
            return [
                str(self.tools.binary("kwok")),
                f"--kubeconfig={kubeconfig}",
                f"--config={config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--manage-nodes-with-label-selector=",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                "--cidr=10.244.0.1/16",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
            ]
        if name == "provisioner":
            return [
                sys.executable,
                "-m",
                "tempotrain_dev.provisioner",
                f"--root={state / 'volumes'}",
            ]
        if name == "kuberay-operator":
            return [
                str(self.tools.binary("ray-operator")),
                f"--kubeconfig={kubeconfig}",
                # One operator per cluster: a Lease would only slow the start down.
                "--enable-leader-election=false",
                # Defaults are :8080 and :8082 on all interfaces, which parallel runs share.
                "--metrics-addr=0",
                f"--health-probe-bind-address=127.0.0.1:{ports['kuberay_probe']}",
                "--watch-namespace=",  # every namespace: tests make their own
                "--log-stdout-encoder=console",
            ]
        if name == "kueue":
            cert_dir = state / "kueue" / "certs"
            kueue.write_certificates(pki.serving_cert, pki.serving_key, cert_dir)
            config = state / "kueue" / "config.yaml"
            config.write_text(
                kueue.configuration(ports["kueue_probe"], ports["kueue_webhook"], cert_dir)
            )
            return [
                str(self.tools.binary("kueue")),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                "--zap-log-level=info",
            ]
        raise ValueError(name)

    def _apiserver_argv(self, ports: dict[str, int]) -> list[str]:
        pki, state = self.pki, self.state_dir
        kubelet_cert, kubelet_key = pki.client_cert(KUBELET_CLIENT)
        argv = [
            str(self.tools.binary("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd_client']}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={state / 'apiserver'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            # Node: a kubelet may touch only its own Node and what its pods need.
            "--authorization-mode=Node,RBAC",
            # OwnerReferencesPermissionEnforcement, as OpenShift runs it: an owner reference
            # that blocks the owner's deletion needs `update` on the owner's finalizers.
            "--enable-admission-plugins=NodeRestriction,PodNodeSelector,"
            "PodTolerationRestriction,OwnerReferencesPermissionEnforcement",
            "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--kubelet-client-certificate={kubelet_cert}",
            f"--kubelet-client-key={kubelet_key}",
            # Nodes have no DNS names here: reach kubelets (logs, exec) by their IP.
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
        ]
        if self.network is None:
            # 127.0.0.1 is not a valid Endpoints address, and nothing would route to it.
            argv.append("--endpoint-reconciler-type=none")
        audit_log = os.environ.get(AUDIT_LOG_ENV)
        if audit_log:
            policy = state / "audit-policy.json"
            policy.write_text(json.dumps(AUDIT_POLICY))
            argv += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={audit_log}",
                # Written in batches off the request path, each within a second.
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
            ]
        return argv

    def _wait_healthy(self, name: str, ports: dict[str, int]) -> None:
        process = self.processes[name]
        checks: dict[str, Callable[[], bool]] = {
            "etcd": lambda: http_ok(f"http://127.0.0.1:{ports['etcd_client']}/health"),
            "kube-apiserver": self._ready,
            "kube-controller-manager": lambda: port_open(ports["controller_manager"]),
            "kube-scheduler": lambda: port_open(ports["scheduler"]),
            "kwok": lambda: http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"),
            "provisioner": lambda: True,  # no port; being alive is all it can show
            "kuberay-operator": lambda: http_ok(
                f"http://127.0.0.1:{ports['kuberay_probe']}/readyz"
            ),
            "kueue": lambda: http_ok(f"http://127.0.0.1:{ports['kueue_probe']}/readyz"),
        }

        def healthy() -> bool:
            if not process.is_running():
                raise ClusterStartError(
                    f"{name} exited during start-up; last lines of {process.log_file}:\n"
                    f"{process.exited_early()}"
                )
            return checks[name]()

        wait_for(
            healthy,
            timeout=120,
            what=f"{name} to become healthy",
            detail=lambda: f"log: {process.log_file}",
        )

    def _ready(self) -> bool:
        result = subprocess.run(
            [
                str(self.tools.kubectl),
                "--kubeconfig",
                str(self.kubeconfig),
                "get",
                "--raw=/readyz",
                "--request-timeout=5s",
            ],
            capture_output=True,
            text=True,
        )
        return result.returncode == 0 and result.stdout.strip() == "ok"

    def _apply_crds(self) -> None:
        """KubeRay's and Kueue's CRDs; idempotent (server-side apply: Kueue's Workload CRD
        is too big for client-side apply's annotation). Waits until the API server serves
        them."""
        for directory in (self.tools.kuberay_crds, self.tools.kueue_crds):
            self.kubectl(
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=tempotrain-dev",
                "-f",
                str(directory),
            )
        wait_for(self._crds_established, timeout=60, what="the KubeRay and Kueue CRDs")

    def _crds_established(self) -> bool:
        wanted = {
            f"{path.stem.split('_', 1)[1]}.{path.stem.split('_', 1)[0]}"
            for directory in (self.tools.kuberay_crds, self.tools.kueue_crds)
            for path in directory.glob("*_*.yaml")
        }
        crds = json.loads(self.kubectl("get", "crd", "-o", "json"))["items"]
        established = {
            crd["metadata"]["name"]
            for crd in crds
            if any(
                c["type"] == "Established" and c["status"] == "True"
                # A CRD created a moment ago has `conditions: null`.
                for c in (crd.get("status") or {}).get("conditions") or []
            )
        }
        return wanted <= established

    def _bootstrap(self) -> None:
        """Fake Nodes and the default StorageClass; idempotent (server-side apply)."""
        manifests = [*(_node_manifest(n) for n in DEFAULT_NODES), storage_class()]
        self.kubectl(
            "apply",
            "--server-side",
            "--field-manager=tempotrain-dev",
            "-f",
            "-",
            input="\n---\n".join(json.dumps(m) for m in manifests),
        )
        wait_for(self._nodes_ready, timeout=60, what="the kwok Nodes to report Ready")
        wait_for(
            self._default_service_account,
            timeout=60,
            what="the default ServiceAccount (controller-manager is working)",
        )

    def _nodes_ready(self) -> bool:
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json"))["items"]
        ready = [
            n
            for n in nodes
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        return len(ready) >= len(DEFAULT_NODES)

    def _default_service_account(self) -> bool:
        out = self.kubectl(
            "get",
            "serviceaccount",
            "default",
            "-n",
            "default",
            "--ignore-not-found",
            "-o",
            "name",
            check=False,
        )
        return bool(out.strip())


def _node_manifest(node: FakeNode) -> dict[str, object]:
    capacity = {"cpu": node.cpu, "memory": node.memory, "pods": "110"}
    labels = {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        NODE_POOL_LABEL: node.pool,
    }
    taints = [KWOK_TAINT]
    if node.gpus:
        capacity[GPU_RESOURCE] = str(node.gpus)
        labels["nvidia.com/gpu.present"] = "true"
        # As managed GPU pools do: only pods that ask for GPUs (and tolerate this) land here.
        taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": labels,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
