"""How many rows a chunk gets when the spec does not say: pure arithmetic on a measured rate.

A chunk has a fixed cost next to its compute (a workflow task to schedule it, the activity's
pickup, its Parquet file, sha256 and marker: ~35 ms here), so small chunks waste a share of
the device (50-row chunks ran at 0.60 of a plain loop). Large ones lose more to a crash and
report progress less often. The probe's rate says how many rows make CHUNK_TARGET_SECONDS.
"""

from __future__ import annotations

import math

from tempotrain_workers.api import CHUNK_TARGET_SECONDS

MAX_CHUNK_ROWS = 1_000_000  # the spec's own limit


def chunk_size_for(
    rows_per_second: float,
    *,
    batch_size: int,
    total_rows: int,
    in_flight: int,
    target_seconds: float = CHUNK_TARGET_SECONDS,
) -> int:
    """Rows for about `target_seconds` of compute at `rows_per_second`, in whole batches (a
    ragged last batch per chunk pads for nothing), but small enough that each of the
    `in_flight` chunk slots gets a chunk of the job, and never more than the job has."""
    if rows_per_second <= 0 or not math.isfinite(rows_per_second):
        raise ValueError(f"rows_per_second must be a positive number, not {rows_per_second}")
    by_time = max(1, math.ceil(rows_per_second * target_seconds))
    size = math.ceil(by_time / batch_size) * batch_size
    # Never so large that a slot idles, nor smaller than one batch for it.
    fair_share = max(batch_size, math.ceil(total_rows / max(1, in_flight)))
    return max(1, min(size, fair_share, total_rows, MAX_CHUNK_ROWS))
