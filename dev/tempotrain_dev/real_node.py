"""A real node beside the kwok ones: containerd, kubelet and kube-proxy in the platform's own
network namespace (`node_network.py`), and CoreDNS on the host side of it. Pods scheduled
here run containers from images built on this machine (`images.py`); nothing is pulled.

Every path the node writes is under its state dir (containerd's root and state, runc's state,
the kubelet's root and pod logs, CNI's IP allocations, pod network namespaces), so `down`
unmounts that one tree and deletes the network namespace; the two kinds of file the runtime
keeps elsewhere (the kubelet's /var/log/containers symlinks, libcni's result cache) are removed
one by one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from tempotrain_dev import mounts
from tempotrain_dev.cluster import NODE_POOL_LABEL, LocalCluster
from tempotrain_dev.containerd import Ctr
from tempotrain_dev.images import BuiltImage
from tempotrain_dev.net import free_ports, http_ok
from tempotrain_dev.node_images import NodeImageSeed
from tempotrain_dev.node_network import NodeNetwork
from tempotrain_dev.processes import ManagedProcess, descendants, pids_running
from tempotrain_dev.waiting import WaitTimeout, wait_for

NODE_NAME = "real-cpu-0"
# The node's labels: the CPU pool kwok's CPU Nodes are also in, and what makes it real.
RUNTIME_LABEL = "tempotrain.dev/runtime"
NODE_LABELS = {NODE_POOL_LABEL: "cpu", RUNTIME_LABEL: "containerd"}
COMPONENTS = ("containerd", "coredns", "kubelet", "kube-proxy")  # start order
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
CLUSTER_DOMAIN = "cluster.local"
# Who the node's components are towards the apiserver (client certificates: CN and O).
KUBELET_USER = f"system:node:{NODE_NAME}"
PROXY_USER = "system:kube-proxy"  # bound to system:node-proxier by the default RBAC
COREDNS_USER = "system:coredns"
# /var/log/containers: the kubelet's one hard-coded path outside its root dir (symlinks).
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CNI_CACHE = Path("/var/lib/cni/results")
MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes with its terminating NUL
SOCKETS_ROOT = Path("/run/tempotrain")  # short paths for unix sockets (see RealNode.socket)
KUBELET_HEALTHZ_PORT = 10248  # inside the node's network namespace: no other platform's


class NodeStartError(RuntimeError):
    pass


def node_processes(state_dir: Path) -> dict[str, ManagedProcess]:
    return {name: ManagedProcess(name, state_dir) for name in COMPONENTS}


class RealNode:
    """The node of one platform. Stopping it and listing what it left need nothing but its
    state dir and network; starting it needs the control plane (``cluster``)."""

    def __init__(
        self, state_dir: Path, network: NodeNetwork, cluster: LocalCluster | None = None
    ) -> None:
        self.state_dir = state_dir
        self.network = network
        self._cluster = cluster
        self.processes = node_processes(state_dir)
        self.ctr = Ctr(self.socket)

    @property
    def cluster(self) -> LocalCluster:
        if self._cluster is None:
            raise NodeStartError("the real node needs its control plane to start")
        return self._cluster

    # -- paths ------------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        """containerd's socket, under /run by a hash of the state dir: containerd refuses a
        socket path over 104 bytes, which a state dir in a deep folder (a pytest tmp_path)
        reaches. One per node, as the state dir is."""
        key = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:16]
        return SOCKETS_ROOT / key / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.state_dir / "kubelet"

    def _check_socket_paths(self) -> None:
        """The kubelet binds unix sockets under its root dir (pod-resources/<10 digits>); a
        path over 107 bytes cannot be bound, and the kubelet exits. Said up front, with
        what to do, rather than as a kubelet crash."""
        longest = self.kubelet_root / "pod-resources" / ("0" * 10)
        if len(str(longest).encode()) > MAX_UNIX_SOCKET_PATH:
            raise RuntimeError(
                f"the state dir {self.state_dir} is too deep for the kubelet's unix sockets "
                f"({len(str(longest).encode())} bytes, at most {MAX_UNIX_SOCKET_PATH}): "
                "use a shorter --state-dir"
            )

    @property
    def pod_logs(self) -> Path:
        return self.state_dir / "pod-logs"

    @property
    def cni_network_name(self) -> str:
        return f"tempotrain-{self.network.slot}"

    # -- lifecycle ----------------------------------------------------------------------------

    def is_up(self) -> bool:
        return all(p.is_running() for p in self.processes.values()) and self._ready()

    def up(
        self, pause: BuiltImage, seed: NodeImageSeed, log: Callable[[str], None] = print
    ) -> None:
        """Start whatever is not running and wait until the Node is Ready. ``pause`` is the
        sandbox image every pod starts with (built here, never pulled); a containerd that
        starts gets its image store from ``seed``."""
        if self.is_up():
            log(f"node: {NODE_NAME} already up")
            return
        self._check_socket_paths()
        if not self.processes["containerd"].is_running():
            # Whatever ran before died with it: start the node from a clean slate.
            self.down(lambda _: None, keep_network=True)
            images = seed.copy_to(self.state_dir / "containerd" / "root")
            log(f"node: image store seeded with {len(images)} image(s) by hard links")
        self.cluster.pki.ensure(
            {KUBELET_USER: "system:nodes", PROXY_USER: "", COREDNS_USER: ""},
            (self.cluster.address,),
        )
        ports = self._ports()
        node_ip = self.network.node_ip
        self._start("containerd", self._containerd_argv(pause.ref), self.ctr.responds)
        self.load(pause)
        self._apply_coredns_rbac()
        self._start("coredns", self._coredns_argv(ports), lambda: self._coredns_ok(ports))
        self._start(
            "kubelet",
            self._kubelet_argv(),
            lambda: http_ok(f"http://{node_ip}:{KUBELET_HEALTHZ_PORT}/healthz"),
        )
        self._start(
            "kube-proxy",
            self._kube_proxy_argv(ports),
            lambda: http_ok(f"http://{node_ip}:{ports['proxy_healthz']}/healthz"),
        )
        wait_for(
            self._ready,
            timeout=120,
            what=f"node {NODE_NAME} to become Ready",
            detail=lambda: f"kubelet log: {self.processes['kubelet'].log_file}",
        )
        log(f"node: {NODE_NAME} Ready at {self.network.node_ip} (pods {self.network.pod_cidr})")

    def down(self, log: Callable[[str], None] = print, *, keep_network: bool = False) -> None:
        """Stop the node and remove everything it made: containers, mounts, rules, links.
        Works from any state, a half-started or crashed node included. ``keep_network``: the
        namespace and link stay (the apiserver and Temporal listen on the host side)."""
        self.processes["kubelet"].stop()
        if self.processes["containerd"].is_running():
            self._kill_containers()
        for name in ("kube-proxy", "coredns", "containerd"):
            self.processes[name].stop()
        # Shims outlive containerd; their children are the containers' processes.
        self._kill_tree(pids_running("-address", str(self.socket)))
        mounts.unmount_below(self.state_dir)
        if not keep_network:
            self.network.delete()
        with contextlib.suppress(FileNotFoundError):
            # Pods' IP allocations: every pod is gone with the network namespace.
            for lease in (self.state_dir / "cni" / "ipam").rglob("*"):
                if lease.is_file():
                    lease.unlink()
        self._remove_container_log_links()
        shutil.rmtree(self.socket.parent, ignore_errors=True)
        if not keep_network:
            log(f"node: {NODE_NAME} stopped, its network {self.network.netns} removed")

    def leftovers(self) -> list[str]:
        left = [f"mount {m}" for m in mounts.below(self.state_dir)]
        left += self.network.leftovers()
        shims = pids_running("-address", str(self.socket))
        left += [f"process {pid} (container shim or its child)" for pid in shims]
        left += [f"process {pid} (container)" for pid in descendants(shims)]
        left += [f"CNI cache {p}" for p in CNI_CACHE.glob(f"{self.cni_network_name}-*")]
        return left

    # -- images ---------------------------------------------------------------------------------

    def load(self, image: BuiltImage) -> bool:
        """Import an image built here unless the node has it; True when it was imported."""
        return self.ctr.load(image)

    # -- internals --------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], healthy: Callable[[], bool]) -> None:
        process = self.processes[name]
        process.start(argv)

        def ok() -> bool:
            if not process.is_running():
                raise NodeStartError(
                    f"{name} exited during start-up; last lines of {process.log_file}:\n"
                    f"{process.exited_early()}"
                )
            return healthy()

        wait_for(ok, timeout=60, what=f"{name} to become healthy", detail=lambda: "")

    def _ports(self) -> dict[str, int]:
        record = self.state_dir / "ports.json"
        if record.exists() and any(p.is_running() for p in self.processes.values()):
            return dict(json.loads(record.read_text()))
        names = ("proxy_healthz", "proxy_metrics", "coredns_ready")  # the rest are per-netns
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(ports))
        return ports

    def _coredns_ok(self, ports: dict[str, int]) -> bool:
        return http_ok(f"http://127.0.0.1:{ports['coredns_ready']}/ready")

    def _ready(self) -> bool:
        found = self.cluster.kubectl(
            "get", "node", NODE_NAME, "--ignore-not-found", "-o", "json", check=False
        )
        if not found.strip():
            return False
        conditions = json.loads(found).get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _kill_containers(self) -> None:
        """Every container of the node, SIGKILLed through containerd, then removed with its
        writable layer: no container is left for the next `up` to recover."""
        for task in self._task_states():
            self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, check=False)
        with contextlib.suppress(WaitTimeout):
            wait_for(
                lambda: all(s == "STOPPED" for s in self._task_states().values()),
                timeout=20,
                what="the node's containers to stop",
            )
        containers = self.ctr("containers", "ls", "-q", check=False).split()
        for container in containers:
            self.ctr("tasks", "delete", "--force", container, check=False)
            self.ctr("containers", "delete", container, check=False)
        # libcni's cache of each sandbox's result: the one file CNI keeps outside our dirs.
        for sandbox in containers:
            for cached in CNI_CACHE.glob(f"*-{sandbox}-*"):
                cached.unlink(missing_ok=True)

    def _task_states(self) -> dict[str, str]:
        """Task id → STATUS, from `ctr tasks ls` (TASK PID STATUS)."""
        lines = self.ctr("tasks", "ls", check=False).splitlines()[1:]
        return {words[0]: words[-1] for words in map(str.split, lines) if len(words) >= 3}

    def _kill_tree(self, roots: list[int]) -> None:
        for pid in [*descendants(roots), *roots]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _remove_container_log_links(self) -> None:
        if not CONTAINER_LOG_LINKS.is_dir():
            return
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and self.pod_logs in link.readlink().parents:
                link.unlink()

    def _apply_coredns_rbac(self) -> None:
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "tempotrain:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "tempotrain:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "tempotrain:coredns",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}
            ],
        }
        self.cluster.kubectl(
            "apply",
            "--server-side",
            "--field-manager=tempotrain-dev",
            "-f",
            "-",
            input=f"{json.dumps(role)}\n---\n{json.dumps(binding)}",
        )

    def _kubeconfig(self, user: str, name: str) -> Path:
        """The component's own identity, so RBAC and the Node authorizer apply to it."""
        return self.cluster.pki.write_kubeconfig(
            self.state_dir / f"{name}.kubeconfig", self.cluster.server(), user
        )

    # -- containerd -------------------------------------------------------------------------

    def _containerd_argv(self, sandbox_image: str) -> list[str]:
        directory = self.state_dir / "containerd"
        directory.mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self._write_cni_config()
        config = directory / "config.toml"
        config.write_text(
            containerd_config(
                directory,
                sandbox_image,
                cni_conf_dir=self.state_dir / "cni" / "net.d",
                socket=self.socket,
            )
        )
        return [*self.network.nsenter(), "containerd", "--config", str(config)]

    def _write_cni_config(self) -> None:
        conf_dir = self.state_dir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / "10-tempotrain.conflist").write_text(
            json.dumps(
                cni_config(
                    self.cni_network_name,
                    self.network,
                    ipam_dir=self.state_dir / "cni" / "ipam",
                ),
                indent=2,
            )
        )

    # -- kubelet ----------------------------------------------------------------------------

    def _kubelet_argv(self) -> list[str]:
        config = self.state_dir / "kubelet-config.json"
        config.write_text(
            json.dumps(
                kubelet_config(
                    node_ip=self.network.node_ip,
                    dns_ip=self.network.host_ip,
                    ca_file=self.cluster.pki.ca_cert,
                    runtime_socket=self.socket,
                    pod_logs=self.pod_logs,
                    plugin_dir=self.kubelet_root / "volume-plugins",
                ),
                indent=2,
            )
        )
        labels = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
        return [
            *self.network.nsenter(),
            str(self.cluster.tools.binary("kubelet")),
            f"--config={config}",
            f"--kubeconfig={self._kubeconfig(KUBELET_USER, 'kubelet')}",
            f"--root-dir={self.kubelet_root}",
            f"--cert-dir={self.state_dir / 'kubelet-pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={self.network.node_ip}",
            f"--node-labels={labels}",
            "--v=1",
        ]

    # -- kube-proxy and CoreDNS -------------------------------------------------------------

    def _kube_proxy_argv(self, ports: dict[str, int]) -> list[str]:
        return [
            *self.network.nsenter(),
            str(self.cluster.tools.binary("kube-proxy")),
            f"--kubeconfig={self._kubeconfig(PROXY_USER, 'kube-proxy')}",
            "--proxy-mode=iptables",
            f"--cluster-cidr={self.network.pod_cidr}",
            # Pod → Service → pod on the same bridge (hairpin) needs the source rewritten.
            "--masquerade-all",
            f"--hostname-override={NODE_NAME}",
            f"--bind-address={self.network.node_ip}",
            f"--metrics-bind-address=127.0.0.1:{ports['proxy_metrics']}",
            f"--healthz-bind-address={self.network.node_ip}:{ports['proxy_healthz']}",
            # Leave the conntrack sysctls alone: they are not the node's to change.
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
        ]

    def _coredns_argv(self, ports: dict[str, int]) -> list[str]:
        corefile = self.state_dir / "Corefile"
        corefile.write_text(
            coredns_corefile(
                self.network.host_ip,
                self._kubeconfig(COREDNS_USER, "coredns"),
                ready_port=ports["coredns_ready"],
            )
        )
        return [str(self.cluster.tools.binary("coredns")), "-conf", str(corefile)]


def containerd_config(directory: Path, sandbox_image: str, cni_conf_dir: Path, socket: Path) -> str:
    """containerd 1.6 (Debian's): everything under ``directory``, CRI on, cgroupfs."""
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    return f"""version = 2
root = "{directory / "root"}"
state = "{directory / "state"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{directory / "opt"}"

{cri}
  sandbox_image = "{sandbox_image}"
  # This sandbox may not lower oom_score_adj; without this every sandbox fails in runc.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state dir, not /run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true

{cri[:-1]}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

{cri[:-1]}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

{cri[:-1]}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{directory / "runc"}"

{cri[:-1]}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf_dir}"
"""


def cni_config(name: str, network: NodeNetwork, ipam_dir: Path) -> dict[str, object]:
    """A bridge in the node's namespace with the pod subnet; the node is the pods' gateway."""
    return {
        "cniVersion": "0.4.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": network.pod_cidr, "gateway": network.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    *,
    node_ip: str,
    dns_ip: str,
    ca_file: Path,
    runtime_socket: Path,
    pod_logs: Path,
    plugin_dir: Path,
) -> dict[str, object]:
    """What this machine needs (each one failed without it): cgroupfs and no QoS cgroups or
    node-allocatable enforcement (no systemd, cgroup v1), swap allowed, no local-storage
    accounting and no eviction or image GC thresholds (a shared development disk)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "readOnlyPort": 0,
        # The node's address, not its loopback: the host checks it from outside the namespace.
        "healthzBindAddress": node_ip,
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            # Only holders of a certificate from the platform's CA: the apiserver.
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "localStorageCapacityIsolation": False,
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "clusterDNS": [dns_ip],
        "clusterDomain": CLUSTER_DOMAIN,
        "podLogsDir": str(pod_logs),
        "volumePluginDir": str(plugin_dir),
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "shutdownGracePeriod": "0s",
    }


def coredns_corefile(host_ip: str, kubeconfig: Path, ready_port: int) -> str:
    """cluster.local from the apiserver; nothing forwarded, so no name leaves the machine."""
    return f""".:53 {{
    bind {host_ip}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
"""
