"""Small file helpers shared by the trainers and drivers."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any


def staging_path(path: Path) -> Path:
    """A temporary name beside `path`, unique to this call: writers of the same file in other
    threads, processes or pods (every container's worker is PID 1) never share one."""
    return path.with_name(f".{path.name}.tmp.{uuid.uuid4().hex}")


def write_json_atomically(path: Path, payload: Any) -> None:
    """Readers (the supervising activity, a resumed run) never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(path)
    try:
        staging.write_text(json.dumps(payload, indent=2, default=str))
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
