"""`tempotrain`: the command line of the client (see `tempotrain --help`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tempotrain_client import plot
from tempotrain_client.client import ClientError, Experiment, TempoTrain, kind_of


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    client = TempoTrain(args.namespace, args.kubeconfig, args.runs_root)
    try:
        result: int = args.run(client, args)
        return result
    except ClientError as err:
        print(f"tempotrain: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tempotrain", description="Submit, follow and plot TempoTrain experiments."
    )
    top.add_argument("-n", "--namespace", help="default: the kubeconfig context's")
    top.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
    top.add_argument(
        "--runs-root", type=Path, help="where this machine sees the runs volume (logs, metrics, "
        "plot); default: the claim's local path, or $TEMPOTRAIN_RUNS_ROOT",
    )  # fmt: skip
    commands = top.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, run: Any, help: str, named: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        if named:
            sub.add_argument("name")
            sub.add_argument("-k", "--kind", type=kind_of, default="BertExperiment",
                             help="bexp (default), c10s or binf")  # fmt: skip
        return sub

    submit = command("submit", _submit, "create the experiments of a YAML file", named=False)
    submit.add_argument("-f", "--filename", type=Path, required=True)
    get = command("get", _get, "one experiment: phase, progress, metrics, trials")
    get.add_argument("-o", "--output", choices=("text", "json"), default="text")
    command("list", _list, "every experiment of the namespace", named=False)
    watch = command("watch", _watch, "live progress bars until it ends (per trial for a sweep)")
    watch.add_argument("--every", type=float, default=2.0, help="seconds between looks")
    watch.add_argument("--timeout", type=float, default=7 * 86_400)
    logs = command("logs", _logs, "the trainer's log (a sweep: --trial's), newest attempt")
    logs.add_argument("--trial")
    logs.add_argument("--all-attempts", action="store_true")
    metrics = command("metrics", _metrics, "the training history as a table")
    metrics.add_argument("--trial")
    drawn = command("plot", _plot, "training and eval curves to a PNG (a sweep: a line per trial)")
    drawn.add_argument("-o", "--output", type=Path, help="default: <name>.png")
    drawn.add_argument("--trial")
    command("suspend", _suspend, "save a checkpoint and free the compute (spec.suspend)")
    command("resume", _resume, "resume a suspended experiment from its checkpoint")
    command("delete", _delete, "cancel and delete (Retain claims keep the data)")
    return top


def _submit(client: TempoTrain, args: argparse.Namespace) -> int:
    for experiment in client.submit(args.filename):
        print(f"{experiment.kind.lower()}/{experiment.name} created in {experiment.namespace}")
    return 0


def _get(client: TempoTrain, args: argparse.Namespace) -> int:
    experiment = client.get(args.name, args.kind)
    if args.output == "json":
        print(json.dumps({"spec": experiment.spec, "status": experiment.status}, indent=2))
        return 0
    print(describe(experiment))
    return 0


def describe(experiment: Experiment) -> str:
    status = experiment.status
    lines = [
        f"{experiment.kind} {experiment.namespace}/{experiment.name}: {experiment.phase or '-'}"
    ]
    progress = status.get("progress") or {}
    if progress:
        lines.append(f"  step {progress.get('step')}/{progress.get('totalSteps', '?')}"
                     f"  eta {status.get('eta') or '-'}")  # fmt: skip
    if status.get("metrics"):
        lines.append("  metrics " + _numbers(status["metrics"]))
    if status.get("message"):
        lines.append(f"  message {status['message']}")
    trials = experiment.trials
    if trials:
        counts = status.get("trials") or {}
        lines.append("  trials " + " ".join(f"{k}={v}" for k, v in counts.items()))
        for name, row in trials.items():
            params = " ".join(f"{k}={v}" for k, v in (row.get("parameters") or {}).items())
            step = (row.get("progress") or {}).get("step", "-")
            lines.append(f"  {name} {row.get('phase', '-'):<10} step {step:<6} {params}  "
                         f"{_numbers(row.get('metrics') or {})}")  # fmt: skip
        best = status.get("bestTrial")
        if best:
            lines.append(f"  best {best['name']} {best['objective']}={best['value']:.4g}")
    return "\n".join(lines)


def _numbers(values: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )


def _list(client: TempoTrain, args: argparse.Namespace) -> int:
    rows = [("KIND", "NAME", "PHASE", "STEP", "TRIALS", "BEST")]
    for e in client.experiments():
        step = (e.status.get("progress") or {}).get("step", "")
        rows.append((e.kind, e.name, e.phase or "-", str(step), e.status.get("displayTrials", ""),
                     e.status.get("displayBest", "")))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _watch(client: TempoTrain, args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        TextColumn("{task.fields[steps]:>13}"),
        TextColumn("{task.fields[phase]:<11} loss {task.fields[loss]:<7} eta {task.fields[eta]}"),
        TimeRemainingColumn(),
    )
    deadline = time.monotonic() + args.timeout
    with Progress(*columns, refresh_per_second=4) as bars:
        tasks: dict[str, Any] = {}

        def show(label: str, status: dict[str, Any]) -> None:
            progress = status.get("progress") or {}
            loss = (status.get("latestCheckpoint") or {}).get("loss")
            fields: dict[str, Any] = {
                "phase": status.get("phase") or "-",
                "loss": f"{loss:.4g}" if isinstance(loss, float) else "-",
                "eta": status.get("eta") or "-",
            }
            total = progress.get("totalSteps") or None
            fields["steps"] = f"{progress.get('step', 0)}/{total or '?'}"
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=total, **fields)
            bars.update(tasks[label], completed=progress.get("step", 0), total=total, **fields)

        while True:
            experiment = client.get(args.name, args.kind)
            show(experiment.name, experiment.status)
            for name, row in experiment.trials.items():
                show(f"  {name}", row)
            if experiment.finished or time.monotonic() > deadline:
                break
            time.sleep(args.every)
    print(describe(experiment))
    return 0 if experiment.phase == "Succeeded" else 1


def _logs(client: TempoTrain, args: argparse.Namespace) -> int:
    files = client.log_files(args.name, args.trial)
    if not files:
        raise ClientError(f"no trainer log of {args.name} yet")
    for path in files if args.all_attempts else files[-1:]:
        print(f"==> {path.name} <==")
        sys.stdout.write(path.read_text(errors="replace"))
    return 0


def _metrics(client: TempoTrain, args: argparse.Namespace) -> int:
    columns = ("step", "epoch", "loss", "learning_rate", "eval_loss", "eval_accuracy")
    for label, records in client.history(args.name, args.trial).items():
        print(f"# {label}")
        print("  ".join(f"{c:>13}" for c in columns))
        for record in records:
            cells = [getattr(record, c) for c in columns]
            print("  ".join(f"{_cell(v):>13}" for v in cells))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _plot(client: TempoTrain, args: argparse.Namespace) -> int:
    runs = client.history(args.name, args.trial)
    target = plot.save(runs, args.name, args.output or Path(f"{args.name}.png"))
    print(f"wrote {target} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
    return 0


def _suspend(client: TempoTrain, args: argparse.Namespace) -> int:
    client.suspend(args.name, args.kind)
    print(f"{args.name}: suspend requested (it saves a checkpoint, then frees its compute)")
    return 0


def _resume(client: TempoTrain, args: argparse.Namespace) -> int:
    client.resume(args.name, args.kind)
    print(f"{args.name}: resume requested (from its last verified checkpoint)")
    return 0


def _delete(client: TempoTrain, args: argparse.Namespace) -> int:
    client.delete(args.name, args.kind)
    print(f"{args.kind.lower()}/{args.name} deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
