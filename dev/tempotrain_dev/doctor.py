"""`python -m tempotrain_dev doctor`: one line per prerequisite, each with what to do when it
is missing. Standard library only: it runs before the venv exists (`make demo` runs it first).
Exit 1 when something the platform cannot do without is missing; a missing real node is a
warning (the platform then runs host workers on kwok nodes)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tempotrain_dev import node_support
from tempotrain_dev.disk import GB

GO_MINIMUM = (1, 24)
# A cold first run: ~25 GB of tools, wheels and images under the cache, ~7 GB of venv, and
# room for an image being imported (README, Prerequisites).
CACHE_NEEDS_GB = 40


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warn | FAIL
    what: str
    advice: str = ""

    def line(self) -> str:
        advice = f" — {self.advice}" if self.advice else ""
        return f"{self.level:4} {self.what}{advice}"


def check_python() -> Finding:
    found = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] == (3, 11):
        return Finding("ok", f"Python {found}")
    return Finding(
        "FAIL", f"Python {found}", "Python 3.11 is needed: `make PYTHON=python3.11` or install it"
    )


def check_go() -> Finding:
    go = shutil.which("go")
    if go is None:
        return Finding("FAIL", "Go: not found", "install Go ≥ 1.24 (https://go.dev/dl/), on PATH")
    output = subprocess.run([go, "version"], capture_output=True, text=True).stdout
    match = re.search(r"go(\d+)\.(\d+)", output)
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if version < GO_MINIMUM:
        return Finding("FAIL", f"Go {output.strip()}", "Go ≥ 1.24 builds the platform's tools")
    proxy = subprocess.run([go, "env", "GOPROXY"], capture_output=True, text=True).stdout.strip()
    return Finding("ok", f"Go {version[0]}.{version[1]} (GOPROXY {proxy or 'default'})")


def check_commands() -> list[Finding]:
    return [
        Finding("ok", f"{name}: {path}")
        if (path := shutil.which(name))
        else Finding("FAIL", f"{name}: not found", f"install it (Debian: apt-get install {name})")
        for name in ("make", "openssl")
    ]


def check_disk(cache: Path) -> Finding:
    existing = next(p for p in (cache, *cache.parents) if p.exists())
    free = shutil.disk_usage(existing).free / GB
    used = _size_gb(cache) if cache.exists() else 0.0
    what = f"disk: {free:.0f} GB free for {cache} (it holds {used:.1f} GB)"
    if free + used < CACHE_NEEDS_GB:
        return Finding(
            "FAIL",
            what,
            f"a first run needs ~{CACHE_NEEDS_GB} GB: free some, or point "
            "TEMPOTRAIN_CACHE at a bigger disk (`make clean` frees what this checkout rebuilds)",
        )
    return Finding("ok", what)


def check_real_node() -> Finding:
    # Without installing anything: the doctor only looks.
    reason = node_support.unsupported_reason(install=False)
    if reason is None:
        return Finding("ok", "real node: root, overlayfs, cgroup v1 and the Debian packages")
    if reason.startswith("missing Debian packages") and os.geteuid() == 0:
        return Finding("ok", f"real node: {reason}", "`make up` installs them (root)")
    return Finding(
        "warn", f"real node: {reason}", "the platform runs host workers on kwok nodes instead"
    )


def check_loopback() -> Finding:
    """The platform binds its servers to free local ports."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    except OSError as err:
        return Finding("FAIL", f"ports: cannot bind 127.0.0.1 ({err})", "the platform needs it")
    return Finding("ok", f"ports: local ports can be bound (e.g. {port})")


def _size_gb(path: Path) -> float:
    result = subprocess.run(
        ["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True
    )
    return int(result.stdout.split()[0]) / GB if result.returncode == 0 and result.stdout else 0.0


def diagnose(cache: Path) -> list[Finding]:
    checks: list[Callable[[], Finding | list[Finding]]] = [
        check_python,
        check_go,
        check_commands,
        lambda: check_disk(cache),
        check_real_node,
        check_loopback,
    ]
    findings: list[Finding] = []
    for check in checks:
        result = check()
        findings.extend(result if isinstance(result, list) else [result])
    return findings


def main() -> int:
    cache = Path(os.environ.get("TEMPOTRAIN_CACHE", Path.home() / ".cache" / "tempotrain"))
    findings = diagnose(cache)
    for finding in findings:
        print(finding.line())
    return 1 if any(f.level == "FAIL" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
