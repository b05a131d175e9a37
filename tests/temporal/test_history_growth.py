"""A week of training, compressed, against the real workflow and the real Temporal server:
history stays bounded, crashes are budgeted per stretch without progress, and a run that
keeps failing where it stands fails with the reason (tempotrain_dev.history_sim)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tempotrain_dev.history_sim import Scenario, simulate
from tempotrain_workers.workflows.training import TOO_MANY_FAILURES

from tests.conftest import TemporalHandle

pytestmark = pytest.mark.temporal

TEMPORAL_WARNING = 10_240  # events in one run: Temporal warns here, terminates at 51,200


async def test_a_simulated_week_with_crashes_keeps_each_run_small_and_finishes(
    temporal: TemporalHandle, tmp_path: Path
) -> None:
    # A checkpoint every 10 minutes for 7 days (1,008), a progress event a minute (10,080;
    # bench/history_growth.py runs the trainer's real 2 s), five crashes. A low limit of its
    # own makes the run continue as new several times.
    limit = 2000
    week = Scenario(
        hours=7 * 24,
        checkpoint_minutes=10,
        crash_at_hours=(20, 50, 80, 110, 140),
        history_limit=limit,
        max_failures_without_progress=2,  # five crashes, each after progress: never reached
        tick_seconds=60,
    )
    outcome = await simulate(temporal.client, week, tmp_path)
    print(
        f"simulated week: {outcome.seconds:.0f} s, runs {outcome.events_per_run}, "
        f"{outcome.events_per_hour_without_checkpoints():.1f} events/h without checkpoints"
    )

    assert outcome.result is not None, outcome.failure
    assert outcome.result.global_step == outcome.result.total_steps == week.ticks(7 * 24)
    assert len(outcome.events_per_run) >= 2, outcome.events_per_run  # it continued as new
    # Each run hands over at its limit, plus what arrives while the trainer stops and saves
    # (here ~50 checkpoints a second for up to 5 s: the heartbeat that brings the cancel).
    assert max(outcome.events_per_run) < min(2 * limit, TEMPORAL_WARNING)
    assert outcome.progress_signals == 0  # progress costs no history at all
    assert outcome.events_per_hour_without_checkpoints() <= 100
    # The checkpoints reached the workflow across crashes and handovers: all but, at most,
    # one per handover (saved as the old run closed; the next run finds it on disk).
    handovers = len(outcome.events_per_run) - 1
    assert sum(outcome.checkpoint_signals_per_run) >= 1008 - handovers
    retry = outcome.retry
    assert retry is not None and retry.attempts >= 6  # 5 crashes + the handovers' attempts
    assert retry.failures_without_progress == 0
    assert retry.last_failure is not None and retry.last_failure.reason == "TrainerExited"


async def test_failures_without_progress_are_budgeted_and_progress_resets_the_count(
    temporal: TemporalHandle, tmp_path: Path
) -> None:
    # Checkpoints at 10 and 20 minutes, then every attempt crashes at 30 minutes: the first
    # attempt made progress (no backoff, the count stays 0); the next three make none.
    budget = Scenario(
        hours=1, checkpoint_minutes=10, fail_from_hour=0.5, max_failures_without_progress=3
    )
    outcome = await simulate(temporal.client, budget, tmp_path)

    assert outcome.result is None
    assert outcome.failure is not None and "3 training attempts in a row" in outcome.failure
    retry = outcome.retry
    assert retry is not None
    assert retry.attempts == 4, retry  # 1 with progress + 3 without
    assert retry.failures_without_progress == 3
    assert retry.last_failure is not None and retry.last_failure.reason == "TrainerExited"
    assert outcome.failure_type == TOO_MANY_FAILURES
    last = outcome.last_status
    assert last is not None and last.retry is not None and last.retry.degraded
