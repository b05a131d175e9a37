"""`python -m tempotrain_dev up|down|status|env|tools`: the local platform from the shell."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tempotrain_dev.platform import Platform
from tempotrain_dev.processes import leftovers
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
    down = commands.add_parser("down", help="stop every process the platform started")
    down.add_argument("--purge", action="store_true", help="also delete its state (etcd, db)")
    commands.add_parser("status", help="what runs, and where")
    demo = commands.add_parser(
        "demo",
        help="run examples/bert-experiment-local.yaml (or the CIFAR or inference one) end to end",
    )
    demo.add_argument(
        "--experiment",
        choices=["bert", "cifar10", "inference"],
        default="bert",
        help="bert: BertExperiment with MiniLM; cifar10: Cifar10Scaling on Ray (1 and 2 "
        "workers); inference: BatchInference over the bert demo's model (runs it first)",
    )
    commands.add_parser("env", help="print export lines for KUBECONFIG and TEMPORAL_ADDRESS")
    commands.add_parser("tools", help="build or find the Go-built binaries, print their dirs")
    stray = commands.add_parser("leftovers", help="list (and fail on) processes still running")
    stray.add_argument(
        "--all-platforms",
        action="store_true",
        help="any platform's processes, not only this state dir's (for CI)",
    )
    args = parser.parse_args(argv)

    platform = Platform(args.state_dir)
    if args.command == "up":
        platform.up(cluster=not args.no_cluster, temporal=not args.no_temporal)
        print(f"\nexport KUBECONFIG={platform.env().get('KUBECONFIG', '(no cluster)')}")
        print(f"# or: source {platform.env_file}")
        if platform.temporal.process.is_running():
            print(f"# Temporal UI: {platform.temporal.ui_url}")
    elif args.command == "down":
        platform.down(purge=args.purge)
        left = platform.leftovers()
        if left:
            print(f"processes still alive: {left}", file=sys.stderr)
            return 1
    elif args.command == "status":
        return _status(platform)
    elif args.command == "demo":
        from tempotrain_dev.demo import run_demo  # needs the operator and workers installed

        return run_demo(platform, args.experiment)
    elif args.command == "env":
        for key, value in platform.env().items():
            print(f"export {key}={value}")
    elif args.command == "leftovers":
        pids = leftovers(None if args.all_platforms else platform.state_dir)
        for pid in pids:
            print(f"{pid} {_cmdline(pid)}")
        return 1 if pids else 0
    elif args.command == "tools":
        tools = ensure_tools()
        for field, value in vars(tools).items():
            print(f"{field}={value}")
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except FileNotFoundError:
        return "(gone)"


def _status(platform: Platform) -> int:
    running = True
    for name, process in platform.processes().items():
        pid = process.pid()
        running &= pid is not None
        print(f"{name:24} {'pid ' + str(pid) if pid else 'stopped'}")
    for key, value in platform.env().items():
        print(f"{key}={value}")
    return 0 if running else 3


if __name__ == "__main__":
    sys.exit(main())
