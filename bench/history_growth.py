"""Workflow history per simulated hour of training, and per run over a simulated week.

The real training workflow and supervising activity run around a simulated trainer (hours of
training in seconds: a progress event per 2 simulated seconds, real verified checkpoints),
against a real Temporal dev server. Temporal warns at 10,240 events in one run and
terminates a run at 51,200; before progress moved to heartbeat details, a run wrote about
2,400 events per hour (a progress signal and a status push every 15 s).

    .venv/bin/python bench/history_growth.py [--hours 24] [--days 7]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from pathlib import Path

from _harness import temporal_server
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from tempotrain_dev.history_sim import Outcome, Scenario, simulate

WARNING_EVENTS = 10_240
GOAL_PER_HOUR = 100


def report(name: str, outcome: Outcome) -> None:
    runs = outcome.events_per_run
    print(
        f"{name}: {outcome.scenario.hours:.0f} simulated h in {outcome.seconds:.0f} s; "
        f"{len(runs)} run(s), events per run {runs}; "
        f"checkpoint signals {sum(outcome.checkpoint_signals_per_run)}, "
        f"progress signals {outcome.progress_signals}, status pushes {outcome.status_updates}"
    )
    per_hour = outcome.events_per_hour_without_checkpoints()
    print(
        f"  events per simulated hour, checkpoints aside: {per_hour:.2f} "
        f"(goal <= {GOAL_PER_HOUR}: ratio {per_hour / GOAL_PER_HOUR:.3f})"
    )
    print(
        f"  largest run / Temporal's 10,240-event warning: {max(runs) / WARNING_EVENTS:.3f}; "
        f"finished: {outcome.result is not None}"
        + (f"; attempts {outcome.retry.attempts}" if outcome.retry else "")
    )


async def main() -> None:
    # The simulated crashes are expected: keep the SDK's tracebacks of them off the report.
    logging.getLogger("temporalio").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=24, help="steady run, no checkpoints")
    parser.add_argument("--days", type=float, default=7, help="week run: checkpoints, crashes")
    args = parser.parse_args()
    with temporal_server() as address, tempfile.TemporaryDirectory() as tmp:
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        steady = await simulate(client, Scenario(hours=args.hours), Path(tmp) / "steady")
        report("steady training", steady)
        hours = args.days * 24
        week = Scenario(
            hours=hours,
            checkpoint_minutes=10,
            crash_at_hours=tuple(hours * k / 6 for k in range(1, 6)),
        )
        report("week with 5 crashes", await simulate(client, week, Path(tmp) / "week"))


if __name__ == "__main__":
    asyncio.run(main())
