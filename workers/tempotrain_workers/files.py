"""Small file helpers shared by the trainers and drivers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomically(path: Path, payload: Any) -> None:
    """Readers (the supervising activity, a resumed run) never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    staging.write_text(json.dumps(payload, indent=2, default=str))
    staging.replace(path)
