"""What running the work in real pods costs, on a platform of the bench's own:

- apply → first training step of the demo experiment, the pod path (training pod of the
  workers image on the real node) ÷ the host-worker path (a host process already polling);
- pod start p50 and p95: a pod of the workers image created → its container running;
- image build time: cold (an empty image store; the wheelhouse already downloaded) and warm
  (one source file changed: only the project's layer is rebuilt), and a cache hit.

Needs root (a real node). Run:  .venv/bin/python bench/pod_path.py [--runs 3] [--pods 10]
[--skip-cold]   (the cold build takes several minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from _operator_harness import percentile
from tempotrain_dev import mounts, node_support
from tempotrain_dev.demo import DEMOS, DemoRunner, HostDemo, PodDemo
from tempotrain_dev.images import BUILD_INPUTS, ImageStore
from tempotrain_dev.platform import Platform
from tempotrain_dev.tools import REPO_ROOT
from tempotrain_dev.waiting import wait_for
from tempotrain_dev.wheelhouse import default_cache


def first_step_seconds(runner: DemoRunner, name: str) -> float:
    """Apply the demo experiment under ``name``; seconds until its trainer finished step 1."""
    demo = replace(DEMOS["bert"], name=name)
    manifest = demo.example.read_text().replace(f"name: {DEMOS['bert'].name}", f"name: {name}", 1)
    cluster, ns = runner.cluster, runner.namespace
    started = time.monotonic()
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=manifest)

    def stepped() -> bool:
        runs = runner.runs_dir(demo)
        try:
            progress = json.loads((runs / name / "progress.json").read_text()) if runs else {}
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return int(progress.get("step", 0)) >= 1

    wait_for(stepped, timeout=600, what=f"{name}'s first training step", interval=0.2)
    seconds = time.monotonic() - started
    cluster.kubectl("delete", "bexp", name, "-n", ns, "--wait=true", "--timeout=300s")
    return seconds


def pod_start_seconds(runner: DemoRunner, image: str, count: int) -> list[float]:
    """Pods of the workers image, one after the other: created → container running."""
    cluster, ns = runner.cluster, runner.namespace
    seconds = []
    for index in range(count):
        name = f"start-{index}-{uuid.uuid4().hex[:4]}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": "main", "image": image, "command": ["sleep", "600"]}],
                "terminationGracePeriodSeconds": 0,
            },
        }
        started = time.monotonic()
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))

        def running(pod_name: str = name) -> bool:
            found = json.loads(cluster.kubectl("get", "pod", pod_name, "-n", ns, "-o", "json"))
            statuses = found["status"].get("containerStatuses") or []
            return bool(statuses) and "running" in statuses[0]["state"]

        wait_for(running, timeout=120, what=f"pod {name} to run", interval=0.05)
        seconds.append(time.monotonic() - started)
        cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=true")
    return seconds


def build_seconds() -> tuple[float, float, float]:
    """(cold, warm, cache hit) builds of the workers image in a store of their own."""
    with tempfile.TemporaryDirectory(prefix="pod-path-images-", dir=default_cache()) as tmp:
        cache, context = Path(tmp) / "cache", Path(tmp) / "context"
        for name in (*BUILD_INPUTS, "workers/Dockerfile", ".dockerignore"):
            source, target = REPO_ROOT / name, context / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, target)
        # Wheels cached: the downloads are not what this measures.
        wheelhouse = ImageStore().wheelhouse()
        (cache / "wheelhouse").mkdir(parents=True)
        (cache / "wheelhouse" / wheelhouse.name).symlink_to(wheelhouse)
        store = ImageStore(cache, log=lambda line: print(f"  {line}"))
        try:
            started = time.monotonic()
            store.project("workers", context)
            cold = time.monotonic() - started
            touched = context / "workers" / "tempotrain_workers" / "__init__.py"
            touched.write_text(touched.read_text() + "\n# changed by bench/pod_path.py\n")
            started = time.monotonic()
            store.project("workers", context)
            warm = time.monotonic() - started
            started = time.monotonic()
            store.project("workers", context)
            hit = time.monotonic() - started
        finally:
            store.buildah("rmi", "--all", "--force", check=False)
            mounts.unmount_below(cache)
    return cold, warm, hit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="applies per path")
    parser.add_argument("--pods", type=int, default=10, help="pods to time the start of")
    parser.add_argument("--skip-cold", action="store_true", help="no cold image build")
    parser.add_argument("--builds-only", action="store_true", help="only the image builds")
    args = parser.parse_args()
    reason = node_support.unsupported_reason()
    if reason is not None:
        print(f"skipped: no real node here ({reason})")
        return 0
    if args.builds_only:
        print_builds()
        return 0
    with tempfile.TemporaryDirectory(prefix="pod-path-") as tmp:
        platform = Platform(Path(tmp) / "platform")
        try:
            platform.up(log=lambda _: None)
            if platform.node is None:
                print(f"skipped: the real node did not start ({platform.no_node_reason})")
                return 1
            host, pods = HostDemo(platform), PodDemo(platform)
            platform.cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
            host.start()
            pods.start()
            image = platform.images(["workers"], log=lambda _: None)["workers"].ref
            on_host = [first_step_seconds(host, f"host-{i}") for i in range(args.runs)]
            in_pods = [first_step_seconds(pods, f"pods-{i}") for i in range(args.runs)]
            starts = pod_start_seconds(pods, image, args.pods)
        finally:
            platform.down(log=lambda _: None)
    host_median, pod_median = statistics.median(on_host), statistics.median(in_pods)
    print(f"apply → first training step, host worker: {host_median:.1f} s (median of {args.runs})")
    print(f"apply → first training step, real pods:   {pod_median:.1f} s (median of {args.runs})")
    print(f"pod path / host-worker path: {pod_median / host_median:.2f}")
    print(
        f"pod start (created → running, workers image, {args.pods} pods): "
        f"p50 {percentile(starts, 0.5):.2f} s, p95 {percentile(starts, 0.95):.2f} s"
    )
    if not args.skip_cold:
        print_builds()
    return 0


def print_builds() -> None:
    cold, warm, hit = build_seconds()
    print(
        f"workers image build: cold {cold:.0f} s, warm (one source file changed) "
        f"{warm:.0f} s ({warm / cold:.2f} of cold), cache hit {hit:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
