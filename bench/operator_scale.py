"""Operator at scale: 1,000 BertExperiments, no workers. Prints the time until every one has
WorkflowStarted and its four children, apply -> WorkflowStarted p50/p95 of each under that
load, the operator's peak RSS, CPU seconds by process through the burst, and apiserver
requests per CR: all clients', the operator handlers' own, and the most frequent by verb and
resource (goals: all within 60 s, p95 < 1 s, RSS < 300 MB at 5,000, the operator's requests
<= 15 per CR). `--by-client`: requests per CR by client, from the apiserver's audit log (the
operator runs as a user of its own). `--profile FILE`: py-spy the operator through the burst
(a speedscope file; `pip install py-spy`). `--replicas N`: N operators sharing the burst
(`--sharded`); RSS is the largest replica's.

    .venv/bin/python bench/operator_scale.py [--experiments 1000] [--by-client] [--replicas 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from _operator_harness import (
    OPERATOR_USER,
    Bench,
    audit_log,
    bench_platform,
    cpu_seconds_by_process,
    percentile,
)
from tempotrain_dev.net import free_ports
from tempotrain_dev.waiting import wait_for


def manifests(count: int, prefix: str = "scale") -> str:
    return "\n---\n".join(
        json.dumps(
            {
                "apiVersion": "tempotrain.dev/v1alpha1",
                "kind": "BertExperiment",
                "metadata": {"name": f"{prefix}-{i:04d}"},
                "spec": {"model": {"name": "bert-base-uncased"}, "resources": {"gpus": 0}},
            }
        )
        for i in range(count)
    )


def apiserver_requests(bench: Bench) -> Counter[tuple[str, str]]:
    """Requests the apiserver has served, by (verb, resource)."""
    metrics = bench.kubectl("get", "--raw", "/metrics")
    counts: Counter[tuple[str, str]] = Counter()
    for m in re.finditer(
        r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$", metrics, re.MULTILINE
    ):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        resource = labels.get("resource", "") + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        counts[(labels.get("verb", ""), resource)] += int(float(m.group(2)))
    return counts


def operator_requests(port: int) -> int:
    """The requests the operator's handlers made (kr8s: its own metric); kopf's own watch
    streams, handler-state patches and events are not in it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        int(float(m.group(1)))
        for m in re.finditer(
            r"^tempotrain_operator_kube_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.MULTILINE
        )
    )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def done(bench: Bench, count: int) -> bool:
    items = json.loads(bench.kubectl("get", "bexp", "-n", bench.namespace, "-o", "json"))["items"]
    started = sum(
        any(
            c["type"] == "WorkflowStarted" and c["status"] == "True"
            for c in (i.get("status") or {}).get("conditions", [])
        )
        for i in items
    )
    deployments = len(
        json.loads(bench.kubectl("get", "deploy", "-n", bench.namespace, "-o", "json"))["items"]
    )
    claims = len(
        json.loads(bench.kubectl("get", "pvc", "-n", bench.namespace, "-o", "json"))["items"]
    )
    print(f"  {started}/{count} started, {deployments} Deployments, {claims} PVCs", flush=True)
    return started == count and deployments == 2 * count and claims == 2 * count


def audit_offset(bench: Bench) -> int:
    path = audit_log(bench)
    return path.stat().st_size if path.exists() else 0


def requests_by_client(bench: Bench, since: int) -> Counter[tuple[str, str]]:
    """(client, "verb resource") → requests, from the apiserver's audit log past `since`
    (bytes); a client is its user and the product of its user agent (kopf, kr8s, kubectl,
    kwok, kube-controller-manager ...). Waits for a marker request to be written: the log
    is written in batches."""
    marker = f"audit-marker-{time.monotonic_ns()}"
    bench.kubectl("get", "configmap", marker, "-n", bench.namespace, "--ignore-not-found")
    path = audit_log(bench)

    def tail() -> str | None:
        with path.open() as log:
            log.seek(since)
            text = log.read()
        return text if marker in text else None

    text = wait_for(tail, timeout=60, what="the audit log to have the marker request")
    counts: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        entry = json.loads(line)
        if marker in entry.get("requestURI", ""):
            break
        agent = str(entry.get("userAgent", "")).split("/")[0]
        ref = entry.get("objectRef") or {}
        resource = ref.get("resource", entry.get("requestURI", "")) + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        counts[(f"{entry['user']['username']} ({agent})", f"{entry['verb']} {resource}")] += 1
    return counts


class StartWatch:
    """When each experiment first came down a watch and when its WorkflowStarted turned True,
    both on this process's clock (`kubectl get -w`: the watch's own cost stays in Go):
    apply → WorkflowStarted of every experiment, with all the others as the load. The
    apiserver closes a watcher that falls behind (kubectl then exits): it is started again,
    its first listing dating what changed meanwhile late, and the restarts are counted."""

    TEMPLATE = '{.metadata.name} {.status.conditions[?(@.type=="WorkflowStarted")].status}{"\\n"}'

    def __init__(self, bench: Bench) -> None:
        self.seen: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.restarts = -1
        self._argv = [
            *(str(bench.kubectl_path), "--kubeconfig", str(bench.kubeconfig), "get", "bexp"),
            *("-n", bench.namespace, "--watch", "-o", f"jsonpath={self.TEMPLATE}"),
        ]
        self._stopping = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._stopping.is_set():
            self.restarts += 1
            self._process = subprocess.Popen(
                self._argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            assert self._process.stdout is not None
            for line in self._process.stdout:
                now = time.monotonic()
                name, _, started = line.strip().partition(" ")
                self.seen.setdefault(name, now)
                if started == "True":
                    self.started.setdefault(name, now)
            self._process.wait()

    def latencies(self, prefix: str) -> list[float]:
        return [
            self.started[name] - self.seen[name]
            for name in self.started
            if name.startswith(prefix) and name in self.seen
        ]

    def stop(self) -> None:
        self._stopping.set()
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument(
        "--profile", type=Path, help="py-spy the operator through the burst: a speedscope file"
    )
    parser.add_argument("--replicas", type=int, default=1, help="operators sharing the burst")
    parser.add_argument(
        "--by-client",
        action="store_true",
        help="requests by client from the apiserver's audit log (which costs it some CPU)",
    )
    args = parser.parse_args()
    with bench_platform("operator-scale-", audit=args.by_client) as bench:
        ports = free_ports(args.replicas)
        if args.replicas == 1:
            operators = [bench.start_operator("--metrics-port", str(ports[0]))]
        else:
            operators = [
                bench.start_operator(
                    *("--metrics-port", str(port), "--sharded", "--identity", f"replica-{i}"),
                    name=f"replica-{i}",
                )
                for i, port in enumerate(ports)
            ]
        operator = operators[0]
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(operator.pid),
                    "--rate",
                    "50",
                    "--format",
                    "speedscope",
                    "--output",
                    str(args.profile),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
            )
        watch = StartWatch(bench)
        try:
            # One experiment first: the watch is live (it saw it) and the operator warm.
            bench.kubectl("apply", "-n", bench.namespace, "-f", "-", input=manifests(1, "warm"))
            wait_for(lambda: "warm-0000" in watch.started, timeout=120, what="the first start")
            before = apiserver_requests(bench)
            audited_from = audit_offset(bench)
            cpu_before = cpu_seconds_by_process()
            started = time.monotonic()
            bench.kubectl(
                "apply", "-n", bench.namespace, "-f", "-", input=manifests(args.experiments)
            )
            wait_for(
                lambda: done(bench, args.experiments + 1),
                timeout=max(600, args.experiments * 0.6),
                what="every experiment to be reconciled",
                interval=5,
            )
            elapsed = time.monotonic() - started
            cpu = Counter(cpu_seconds_by_process())
            cpu.subtract(cpu_before)
            latencies = watch.latencies("scale-")
            requests = apiserver_requests(bench)
            requests.subtract(before)
            by_client = requests_by_client(bench, audited_from) if args.by_client else None
            rss = max(peak_rss_mb(process.pid) for process in operators)
            own = sum(operator_requests(port) for port in ports)
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait(timeout=60)
        finally:
            watch.stop()
            for process in operators:
                process.send_signal(signal.SIGTERM)
            for process in operators:
                process.wait(timeout=60)
    print(
        f"{args.experiments} experiments reconciled by {args.replicas} operator(s) "
        f"in {elapsed:.1f} s "
        f"(goal 60 s for 1,000: ratio {elapsed / 60 * 1000 / args.experiments:.2f})"
    )
    print(
        f"apply → WorkflowStarted under that load ({len(latencies)} experiments, "
        f"{watch.restarts} watch restarts): "
        f"p50 {percentile(latencies, 0.5):.1f} s, p95 {percentile(latencies, 0.95):.1f} s "
        f"(goal p95 < 1 s: ratio {percentile(latencies, 0.95):.1f})"
    )
    print(f"operator peak RSS {rss:.0f} MB (goal 300 MB: ratio {rss / 300:.2f})")
    busy, cores = sum(cpu.values()), os.cpu_count() or 1
    print(
        f"CPU seconds through the burst: {busy:.0f} of the {cores * elapsed:.0f} that "
        f"{cores} cores had, by process:"
    )
    for name, seconds in cpu.most_common(8):
        print(f"  {seconds:6.1f} s  {seconds / busy:5.1%}  {name}")
    total = sum(requests.values())
    print(
        f"apiserver requests per CR: {total / args.experiments:.1f} "
        "(all clients, incl. controller-manager, scheduler and kwok for the children); "
        "the most frequent:"
    )
    print(f"  of which the operator's handlers (kr8s): {own / args.experiments:.1f} per CR")
    for (verb, resource), count in requests.most_common(14):
        print(f"  {count / args.experiments:5.2f}  {verb} {resource}")
    if by_client is not None:
        print_by_client(by_client, args.experiments)


def print_by_client(counts: Counter[tuple[str, str]], experiments: int) -> None:
    clients: Counter[str] = Counter()
    for (client, _), count in counts.items():
        clients[client] += count
    own = sum(n for client, n in clients.items() if client.startswith(OPERATOR_USER))
    print(
        f"requests per CR by client (audit log): the operator's {own / experiments:.1f} "
        f"(goal 15: ratio {own / experiments / 15:.2f})"
    )
    for client, count in clients.most_common():
        print(f"  {count / experiments:5.2f}  {client}")
        if client.startswith(OPERATOR_USER):
            calls = Counter({call: n for (who, call), n in counts.items() if who == client})
            for call, n in calls.most_common(8):
                print(f"           {n / experiments:5.2f}  {call}")


if __name__ == "__main__":
    main()
