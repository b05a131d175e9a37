"""`tempotrain_dev doctor` on this machine: a line per prerequisite, each FAIL or warn with
what to do, and the exit status that `make demo` stops on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tempotrain_dev import doctor
from tempotrain_dev.disk import GB
from tempotrain_dev.tools import REPO_ROOT


def test_every_prerequisite_has_a_line_and_every_problem_what_to_do(tmp_path: Path) -> None:
    findings = doctor.diagnose(tmp_path / "cache")
    subjects = [f.what.split(":")[0].split()[0] for f in findings]
    assert subjects == ["Python", "Go", "make", "openssl", "disk", "real", "ports"]
    for finding in findings:
        assert finding.level in ("ok", "warn", "FAIL")
        if finding.level != "ok":
            assert finding.advice, finding


def test_the_disk_verdict_follows_the_free_space(tmp_path: Path) -> None:
    finding = doctor.check_disk(tmp_path / "not-yet" / "cache")
    free = shutil.disk_usage(tmp_path).free / GB
    assert (finding.level == "ok") == (free >= doctor.CACHE_NEEDS_GB), finding
    assert f"{free:.0f} GB free" in finding.what


def test_it_runs_without_the_venv_and_exits_1_only_on_a_failure() -> None:
    # As `make doctor` runs it, before the venv exists: no site-packages at all (-S).
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, 'dev'); "
         "from tempotrain_dev import doctor; sys.exit(doctor.main())"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert len(lines) == 7, result.stdout + result.stderr
    assert result.returncode == (1 if any(line.startswith("FAIL") for line in lines) else 0)
