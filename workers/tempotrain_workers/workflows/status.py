"""Coalesced status push from a workflow to the operator (`publish_status` on its queue).

Without a target nothing is ever scheduled. With one, the latest state is sent at most once
per MIN_INTERVAL: fields set in between are merged, so a burst of checkpoints costs one
activity, and the last state always goes out (`flush` before the workflow returns).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import (
        PUBLISH_STATUS_ACTIVITY,
        StatusTarget,
        StatusUpdate,
    )

MIN_INTERVAL = timedelta(seconds=3)


class StatusReporter:
    def __init__(self, target: StatusTarget | None) -> None:
        self._target = target
        self._pending: dict[str, Any] = {}
        self._sending = False
        self._loop: asyncio.Task[None] | None = None

    def update(self, **fields: Any) -> None:
        if self._target is None:
            return
        self._pending.update({k: v for k, v in fields.items() if v is not None})
        if self._loop is None:
            self._loop = asyncio.create_task(self._send_forever())

    async def flush(self) -> None:
        if self._target is not None and self._loop is not None:
            await workflow.wait_condition(lambda: not self._pending and not self._sending)

    async def _send_forever(self) -> None:
        assert self._target is not None
        while True:
            await workflow.wait_condition(lambda: bool(self._pending))
            fields, self._pending = self._pending, {}
            self._sending = True
            try:
                await workflow.execute_activity(
                    PUBLISH_STATUS_ACTIVITY,
                    StatusUpdate(target=self._target, at=workflow.now(), **fields),
                    task_queue=self._target.queue,
                    schedule_to_close_timeout=timedelta(minutes=1),
                    retry_policy=RetryPolicy(
                        maximum_attempts=5, maximum_interval=timedelta(seconds=10)
                    ),
                )
            except ActivityError as err:
                # Status is best effort: the operator's timer re-derives it from the workflow.
                workflow.logger.warning("publish_status failed: %s", err)
            finally:
                self._sending = False
            await workflow.sleep(MIN_INTERVAL)
