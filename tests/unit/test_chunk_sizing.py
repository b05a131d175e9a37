"""The chunk size of a job that does not give one: about CHUNK_TARGET_SECONDS of compute at the
probe's rate, in whole batches, never leaving a chunk slot idle or exceeding the job."""

from __future__ import annotations

import pytest
from tempotrain_workers.api import CHUNK_TARGET_SECONDS
from tempotrain_workers.inference.sizing import MAX_CHUNK_ROWS, chunk_size_for


def test_a_chunk_is_about_the_target_seconds_of_compute_in_whole_batches() -> None:
    # 600 rows/s (MiniLM on 2 CPU cores): 1,200 rows for 2 s, rounded up to batches of 64.
    size = chunk_size_for(600.0, batch_size=64, total_rows=1_000_000, in_flight=2)
    assert size == 1216 and size % 64 == 0
    assert size / 600.0 >= CHUNK_TARGET_SECONDS
    # A GPU 40x faster gets 40x the rows: the same seconds per chunk.
    fast = chunk_size_for(24_000.0, batch_size=64, total_rows=10_000_000, in_flight=2)
    assert fast == 48_000


def test_every_slot_gets_work_and_no_chunk_exceeds_the_job() -> None:
    # 4,096 rows over 6 chunk slots: no slot idles while another holds 1,216 rows.
    assert chunk_size_for(600.0, batch_size=64, total_rows=4096, in_flight=6) == 683
    # A tiny job: one chunk of all of it, even on a slow device.
    assert chunk_size_for(5.0, batch_size=64, total_rows=30, in_flight=1) == 30
    # Fair shares never go below a batch (a ragged batch per chunk would pad for nothing).
    assert chunk_size_for(600.0, batch_size=64, total_rows=500, in_flight=16) == 64
    assert chunk_size_for(1e9, batch_size=64, total_rows=10**9, in_flight=1) == MAX_CHUNK_ROWS


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_a_rate_that_is_not_a_measurement_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rows_per_second"):
        chunk_size_for(rate, batch_size=64, total_rows=100, in_flight=1)
