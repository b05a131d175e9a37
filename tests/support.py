"""Helpers shared by the tests: kubectl with the session's kubeconfig, bounded async waits."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Kubectl:
    binary: Path
    kubeconfig: Path

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=_seconds_allowed(args),
        )

    def __call__(self, *args: str, input: str | None = None) -> str:
        result = self.run(*args, input=input)
        if result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout


def _seconds_allowed(args: tuple[str, ...]) -> float:
    """How long kubectl may run: a minute, or longer than its own `--timeout=` (a wait or a
    delete that gives up itself says why; a killed one says nothing)."""
    units = {"s": 1, "m": 60, "h": 3600}
    for arg in args:
        if arg.startswith("--timeout=") and arg[-1] in units and arg[10:-1].isdigit():
            return max(60.0, int(arg[10:-1]) * units[arg[-1]] + 30.0)
    return 60.0


def node_pool(kubectl: Kubectl, node: str) -> str:
    """The node's pool label (`tempotrain.dev/node-pool`: cpu or gpu), set on the platform's
    kwok and real nodes and by dev/kind-e2e.sh's kind-config.yaml: tests check placement by
    pool, never by a node name one platform happens to use."""
    labels = kubectl("get", "node", node, "-o", "jsonpath={.metadata.labels}")
    return str(json.loads(labels).get("tempotrain.dev/node-pool", ""))


async def eventually(
    probe: Callable[[], Awaitable[T | None] | T | None],
    *,
    within: float,
    what: str,
    interval: float = 0.25,
) -> T:
    """Call ``probe`` (a coroutine function, or a plain one: a file on a claim, a counter)
    until it returns something truthy, or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        result = probe()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {what}; last value: {last!r}")
