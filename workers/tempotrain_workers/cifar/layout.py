"""Where one scale's files live. Ray Train owns `<runs>/<run_id>/<scale>/` (its checkpoints
and run state, `RunConfig(storage_path=<runs>/<run_id>, name=<scale>)`); TempoTrain's own
files sit in its `_tempotrain/` folder. Both are on the runs volume, which the Ray pods and
the worker pods mount at the same path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ScaleLayout:
    storage_path: Path  # <runs>/<run_id>
    name: str  # the scale: Ray Train's run name

    @property
    def ray_run_dir(self) -> Path:
        return self.storage_path / self.name

    @property
    def own_dir(self) -> Path:
        return self.ray_run_dir / "_tempotrain"

    @property
    def job_file(self) -> Path:
        return self.own_dir / "job.json"

    @property
    def result_file(self) -> Path:
        return self.own_dir / "result.json"

    @property
    def final_metrics_file(self) -> Path:
        return self.own_dir / "final-metrics.json"

    @property
    def progress_file(self) -> Path:
        return self.own_dir / "progress.json"

    @property
    def attempts_file(self) -> Path:
        """One line per start of the worker group: restarts = lines - 1."""
        return self.own_dir / "attempts.jsonl"

    @property
    def driver_log(self) -> Path:
        return self.own_dir / "driver.log"

    def pid_file(self, rank: int) -> Path:
        return self.own_dir / "pids" / f"rank-{rank}.pid"

    def ray_checkpoints(self) -> list[Path]:
        if not self.ray_run_dir.is_dir():
            return []
        return sorted(p for p in self.ray_run_dir.glob("checkpoint_*") if p.is_dir())

    def attempts(self) -> list[dict[str, Any]]:
        if not self.attempts_file.is_file():
            return []
        lines = self.attempts_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
