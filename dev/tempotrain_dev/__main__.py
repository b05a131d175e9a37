"""`python -m tempotrain_dev up|down|status|env|tools|images|leftovers|demo|workspace|doctor`:
the local platform from the shell."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from tempotrain_dev import mounts, node_support
from tempotrain_dev.containerd import ContainerdError
from tempotrain_dev.disk import NotEnoughDisk
from tempotrain_dev.images import ImageBuildError
from tempotrain_dev.node_network import all_platform_networks
from tempotrain_dev.platform import Platform
from tempotrain_dev.processes import leftovers
from tempotrain_dev.real_node import CNI_CACHE
from tempotrain_dev.tools import ensure_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tempotrain-dev", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where PID files, logs, PKI and data live "
        "(default: $TEMPOTRAIN_STATE_DIR or .tempotrain/platform)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the control plane and Temporal (no-op if up)")
    up.add_argument("--no-cluster", action="store_true", help="only Temporal")
    up.add_argument("--no-temporal", action="store_true", help="only Kubernetes")
    up.add_argument(
        "--no-real-node",
        action="store_true",
        help="kwok nodes only (also: TEMPOTRAIN_REAL_NODE=0)",
    )
    down = commands.add_parser("down", help="stop every process the platform started")
    down.add_argument("--purge", action="store_true", help="also delete its state (etcd, db)")
    commands.add_parser("status", help="what runs, and where")
    demo = commands.add_parser(
        "demo",
        help="run examples/bert-experiment-local.yaml (or the CIFAR or inference one) end to end",
    )
    demo.add_argument(
        "--experiment",
        choices=["bert", "sweep", "cifar10", "inference", "queueing"],
        default="bert",
        help="bert: BertExperiment with MiniLM; cifar10: Cifar10Scaling on Ray (1 and 2 "
        "workers); sweep: a 4-trial BertExperiment sweep, then `tempotrain get` and `plot`; "
        "inference: BatchInference over the bert demo's model (runs it first); "
        "queueing: two BertExperiments through the platform's Kueue, one preempting the other",
    )
    workspace = commands.add_parser(
        "workspace",
        help="a namespace for an operator and a worker of your own on the running platform: "
        "CRDs, the example's model and data, and the commands to start them",
    )
    workspace.add_argument("--namespace", default="mine", help="default: mine")
    workspace.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="the worker's runs root (default: .tempotrain/NS/runs)",
    )
    commands.add_parser("doctor", help="one line per prerequisite, with what to do")
    commands.add_parser("env", help="print export lines for KUBECONFIG and TEMPORAL_ADDRESS")
    commands.add_parser("tools", help="build or find the Go-built binaries, print their dirs")
    commands.add_parser(
        "images",
        help="build (or find) the operator and workers images; load them into the real node",
    )
    stray = commands.add_parser(
        "leftovers", help="list (and fail on) processes, mounts and networks still there"
    )
    stray.add_argument(
        "--all-platforms",
        action="store_true",
        help="any platform's processes, not only this state dir's (for CI)",
    )
    args = parser.parse_args(argv)

    platform = Platform(args.state_dir)
    if args.command == "up":
        platform.up(
            cluster=not args.no_cluster,
            temporal=not args.no_temporal,
            real_node=not args.no_real_node,
        )
        print(f"\nexport KUBECONFIG={platform.env().get('KUBECONFIG', '(no cluster)')}")
        print(f"# or: source {platform.env_file}")
        if platform.temporal.process.is_running():
            print(f"# Temporal UI: {platform.temporal.ui_url}")
        if platform.prometheus.process.is_running():
            print(f"# Prometheus: {platform.prometheus.url}")
    elif args.command == "down":
        platform.down(purge=args.purge)
        left = platform.leftovers()
        if left:
            print(f"still there after down: {'; '.join(left)}", file=sys.stderr)
            return 1
    elif args.command == "status":
        return _status(platform)
    elif args.command == "demo":
        # Needs the operator and workers installed.
        from tempotrain_dev.demo import run_demo, run_queueing_demo

        if args.experiment == "queueing":
            return run_queueing_demo(platform)
        return run_demo(platform, args.experiment)
    elif args.command == "workspace":
        from tempotrain_dev.workspace import PlatformDown, prepare_workspace  # needs the venv

        runs = args.runs or Path(".tempotrain") / args.namespace / "runs"
        try:
            print("\n".join(prepare_workspace(platform, args.namespace, runs)))
        except PlatformDown as err:
            print(f"workspace: {err}", file=sys.stderr)
            return 1
    elif args.command == "doctor":
        from tempotrain_dev import doctor

        return doctor.main()
    elif args.command == "env":
        for key, value in platform.env().items():
            print(f"export {key}={value}")
    elif args.command == "leftovers":
        return _leftovers(platform, args.all_platforms)
    elif args.command == "images":
        reason = node_support.unsupported_reason()
        if reason is not None:  # images are for the real node: without one, nothing to do
            print(f"images: not built ({reason}); the platform runs host workers instead")
            return 0
        try:
            built = platform.images()
        except (ImageBuildError, ContainerdError, NotEnoughDisk) as err:
            print(f"images: {err}", file=sys.stderr)  # says what to do; no traceback
            return 1
        for name, image in built.items():
            print(f"{name}={image.ref}")
    elif args.command == "tools":
        tools = ensure_tools()
        for field, value in vars(tools).items():
            print(f"{field}={value}")
    return 0


# Where any platform's node mounts things (its state dir's node/ folder).
NODE_MOUNTS = re.compile(r"/node/(kubelet|containerd)(/|$)")


def _leftovers(platform: Platform, all_platforms: bool) -> int:
    if all_platforms:
        found = [f"process {pid} {_cmdline(pid)}" for pid in leftovers(None)]
        found += all_platform_networks()
        found += [f"mount {m}" for m in mounts.below(Path("/")) if NODE_MOUNTS.search(str(m))]
        found += [f"CNI cache {p}" for p in CNI_CACHE.glob("tempotrain-*")]
    else:
        found = [
            f"{item} {_cmdline(int(item.split()[1]))}" if item.startswith("process ") else item
            for item in platform.leftovers()
        ]
    for item in found:
        print(item)
    return 1 if found else 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except FileNotFoundError:
        return "(gone)"


def _status(platform: Platform) -> int:
    """What runs; exit status 3 (as `systemctl status`) when part of the platform does not."""
    running = True
    for name, process in platform.processes().items():
        pid = process.pid()
        running &= pid is not None
        print(f"{name:24} {'pid ' + str(pid) if pid else 'stopped'}")
    for name, process in platform.demo_processes().items():
        print(f"{'demo ' + name:24} pid {process.pid()}  log {process.log_file}")
    reason = platform.no_node_reason
    if reason:
        print(f"real node: none ({reason})")
    for key, value in platform.env().items():
        print(f"{key}={value}")
    if not running:
        print("the platform is not (all) up: `make up` starts it, `make down` stops what is left")
    return 0 if running else 3


if __name__ == "__main__":
    sys.exit(main())
