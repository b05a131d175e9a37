"""The real node's network: a network namespace of the platform's own, joined to the host by a
veth pair, with a pod subnet behind it.

The node (containerd, kubelet, kube-proxy) runs inside the namespace, as a kind node runs in
its container. Its iptables rules, its CNI bridge and its pods' interfaces all live there, so
two platforms on one machine never touch each other's rules, and deleting the namespace
removes every one of them. The host side of the link carries the address that the
apiserver, Temporal and CoreDNS listen on, so pods reach them without leaving the machine.
The host does not forward: pods reach the host and each other, nothing beyond.

Addresses of platform N (0-99): link 10.(100+N).0.0/24 (host .1, node .2), pods
10.(100+N).1.0/24 (the bridge is .1).
"""

from __future__ import annotations

import json
import subprocess
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "tempotrain-"
HOST_LINK_PREFIX = "ttnode"
SLOTS = 100


class NetworkError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeNetwork:
    """One platform's node network, by its slot (0-99; the namespace's name claims it)."""

    slot: int

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.slot}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def host_link(self) -> str:
        return f"{HOST_LINK_PREFIX}{self.slot}"

    @property
    def prefix(self) -> str:
        """The first two octets of the platform's /16: 10.(100+slot)."""
        return f"10.{100 + self.slot}"

    @property
    def host_ip(self) -> str:
        """Where the apiserver, Temporal and cluster DNS listen for the node and its pods."""
        return f"{self.prefix}.0.1"

    @property
    def node_ip(self) -> str:
        return f"{self.prefix}.0.2"

    @property
    def pod_cidr(self) -> str:
        return f"{self.prefix}.1.0/24"

    @property
    def pod_gateway(self) -> str:
        return f"{self.prefix}.1.1"

    def exists(self) -> bool:
        return self.netns_path.exists()

    def nsenter(self) -> list[str]:
        """Prefix that runs a command in the node's network namespace and nothing else: the
        mount namespace stays the host's, so kubelet's volume mounts are what containerd sees
        (`ip netns exec` would give each process a mount namespace of its own)."""
        return ["nsenter", f"--net={self.netns_path}", "--"]

    def create(self) -> None:
        """Namespace, veth pair, addresses, routes and forwarding inside; idempotent only in
        the sense that a half-made network is removed before an error is raised."""
        # `ip netns add` fails if the name exists: that is the claim on the slot.
        _ip("netns", "add", self.netns)
        try:
            _ip("-n", self.netns, "link", "set", "lo", "up")
            _ip(
                "link", "add", self.host_link, "type", "veth",
                "peer", "name", "eth0", "netns", self.netns,
            )  # fmt: skip
            _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            _ip("-n", self.netns, "addr", "add", f"{self.node_ip}/24", "dev", "eth0")
            _ip("-n", self.netns, "link", "set", "eth0", "up")
            _ip("-n", self.netns, "route", "add", "default", "via", self.host_ip)
            # The host reaches pods (kubectl port-forward aside, the apiserver's proxy and
            # tests do) through the node.
            _ip("route", "add", self.pod_cidr, "via", self.node_ip)
            for key, value in (
                ("net.ipv4.ip_forward", "1"),  # the node routes between its bridge and eth0
                ("net.bridge.bridge-nf-call-iptables", "1"),  # Services between pods
            ):
                _run([*self.nsenter(), "sysctl", "-q", "-w", f"{key}={value}"])
        except NetworkError:
            self.delete()
            raise

    def delete(self) -> None:
        """Everything `create` made; what is already gone is skipped."""
        _ip("route", "del", self.pod_cidr, check=False)
        _ip("link", "del", self.host_link, check=False)  # its peer goes with it
        if self.exists():
            _ip("netns", "del", self.netns)

    def leftovers(self) -> list[str]:
        left = []
        if self.exists():
            left.append(f"network namespace {self.netns}")
        if Path(f"/sys/class/net/{self.host_link}").exists():
            left.append(f"host link {self.host_link}")
        return left


def claim_network(state_dir: Path) -> NodeNetwork:
    """This platform's network: the one recorded in its state dir if it still exists, else a
    new one in the first free slot (starting from one derived from the state dir, so
    platforms started side by side rarely race for the same slot)."""
    record = state_dir / "network.json"
    if record.exists():
        network = NodeNetwork(**json.loads(record.read_text()))
        if network.exists():
            return network
    start = zlib.crc32(str(state_dir).encode()) % SLOTS
    taken = _host_prefixes()
    for offset in range(SLOTS):
        network = NodeNetwork((start + offset) % SLOTS)
        if network.exists() or network.prefix in taken:
            continue
        try:
            network.create()
        except NetworkError:
            if network.exists():  # another platform claimed it a moment ago
                continue
            raise
        state_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(asdict(network)))
        return network
    raise NetworkError(f"no free network slot: {SLOTS} platforms' namespaces exist")


def recorded_network(state_dir: Path) -> NodeNetwork | None:
    record = state_dir / "network.json"
    return NodeNetwork(**json.loads(record.read_text())) if record.exists() else None


def all_platform_networks() -> list[str]:
    """Network namespaces and host links of any platform on this machine (for CI's check)."""
    found = [f"network namespace {p.name}" for p in _glob(NETNS_DIR, f"{NETNS_PREFIX}*")]
    found += [f"host link {p.name}" for p in _glob(Path("/sys/class/net"), f"{HOST_LINK_PREFIX}*")]
    return found


def _glob(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern)) if directory.is_dir() else []


def _host_prefixes() -> set[str]:
    """The 10.x prefixes of addresses and routes the host already uses."""
    out = _run(["ip", "-4", "-o", "addr", "show"]) + _run(["ip", "-4", "route", "show"])
    prefixes = set()
    for word in out.split():
        parts = word.split("/")[0].split(".")
        if len(parts) == 4 and parts[0] == "10":
            prefixes.add(f"10.{parts[1]}")
    return prefixes


def _ip(*args: str, check: bool = True) -> str:
    return _run(["ip", *args], check=check)


def _run(argv: list[str], check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout
