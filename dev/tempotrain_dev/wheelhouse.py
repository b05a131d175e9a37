"""One download of every wheel the project installs. The venv (`make venv`) and the images'
pip (`make images`) install from it without an index: the same versions in both, and torch
(gigabytes with its CUDA libraries) is downloaded once, not once per consumer.

`python -m tempotrain_dev.wheelhouse` downloads what is missing and prints the folder; it uses
only the standard library, so it runs before the venv holds anything (PYTHONPATH=dev).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

from tempotrain_dev.processes import log_tail
from tempotrain_dev.tools import REPO_ROOT

# pip.conf for image builds, which mount the wheelhouse at /wheelhouse.
IMAGE_PIP_CONF = "[global]\nno-index = true\nfind-links = /wheelhouse\n"


class WheelhouseError(RuntimeError):
    pass


def default_cache() -> Path:
    return Path(os.environ.get("TEMPOTRAIN_CACHE", Path.home() / ".cache" / "tempotrain"))


def requirements() -> list[str]:
    """The distribution's dependencies with every extra, and its build backend (the wheel
    an image builds, the venv's editable install)."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    extras = [req for group in project["optional-dependencies"].values() for req in group]
    return [*project["dependencies"], *extras, *pyproject["build-system"]["requires"]]


def ensure(cache: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The wheelhouse of the current requirements, downloaded by this interpreter's pip (which
    trusts the host's CAs) if missing; older ones are removed (gigabytes each)."""
    wanted = requirements()
    digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:12]
    directory = (cache or default_cache()) / "wheelhouse" / digest
    if (directory / "pip.conf").exists():
        return directory
    log(f"wheelhouse: downloading every wheel the project installs into {directory} (once)")
    staging = directory.with_name(f"{digest}.tmp")
    staging.mkdir(parents=True, exist_ok=True)  # kept across a killed download: pip resumes
    _seed(staging, directory.parent)
    log_file = directory.with_name(f"{digest}.log")
    with log_file.open("wb") as out:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--prefer-binary",
                "--dest",
                str(staging),
                *wanted,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        raise WheelhouseError(
            f"pip download failed; the last lines of {log_file}:\n{log_tail(log_file, 20)}"
        )
    (staging / "pip.conf").write_text(IMAGE_PIP_CONF)
    staging.rename(directory)
    for older in directory.parent.iterdir():
        if older.name.split(".")[0] != digest:
            if older.is_dir():
                shutil.rmtree(older, ignore_errors=True)
            else:
                older.unlink(missing_ok=True)
    return directory


def _seed(staging: Path, wheelhouses: Path) -> None:
    """Start from the previous complete wheelhouse: pip download skips a file already in its
    destination, so one added dependency downloads that one, not torch again."""
    previous = [d for d in wheelhouses.iterdir() if d.is_dir() and (d / "pip.conf").exists()]
    if not previous:
        return
    newest = max(previous, key=lambda d: d.stat().st_mtime)
    for wheel in newest.iterdir():
        target = staging / wheel.name
        if wheel.name == "pip.conf" or target.exists():
            continue
        try:
            os.link(wheel, target)  # same filesystem: no copy of gigabytes
        except OSError:
            shutil.copy2(wheel, target)


if __name__ == "__main__":
    try:
        print(ensure(log=lambda line: print(line, file=sys.stderr)))
    except WheelhouseError as err:
        sys.exit(str(err))
