"""Coalesced status push from a workflow to the operator (`publish_status` on its queue).

Without a target nothing is ever scheduled. With one, updates are merged while they wait:
progress goes out at most once per MIN_INTERVAL, a phase change or a checkpoint at most once
per URGENT_INTERVAL (so it shows in `.status` within about a second, while a burst still
costs one activity), and the last state always goes out at once on `flush`.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import (
        PUBLISH_STATUS_ACTIVITY,
        Phase,
        StatusTarget,
        StatusUpdate,
    )

MIN_INTERVAL = timedelta(seconds=3)  # progress-only updates
URGENT_INTERVAL = timedelta(seconds=1)  # a phase change or a new checkpoint
URGENT_FIELDS = frozenset({"phase", "latest_checkpoint", "message", "scale_results"})


class StatusReporter:
    def __init__(self, target: StatusTarget | None) -> None:
        self._target = target
        self._pending: dict[str, Any] = {}
        self._sending = False
        self._flushing = False
        self._last_sent: datetime | None = None
        self._loop: asyncio.Task[None] | None = None

    def update(self, **fields: Any) -> None:
        if self._target is None:
            return
        self._pending.update({k: v for k, v in fields.items() if v is not None})
        if self._loop is None:
            self._loop = asyncio.create_task(self._send_forever())

    async def flush(self) -> None:
        if self._target is not None and self._loop is not None:
            self._flushing = True
            await workflow.wait_condition(lambda: not self._pending and not self._sending)

    def _urgent(self) -> bool:
        return self._flushing or bool(URGENT_FIELDS & self._pending.keys())

    async def _wait_until_due(self) -> None:
        """Hold merged updates until their interval since the last send has passed; an urgent
        update arriving meanwhile shortens the wait."""
        while self._last_sent is not None:
            interval = URGENT_INTERVAL if self._urgent() else MIN_INTERVAL
            remaining = (self._last_sent + interval - workflow.now()).total_seconds()
            if remaining <= 0 or self._flushing:
                return
            if self._urgent():
                await workflow.sleep(remaining)
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await workflow.wait_condition(self._urgent, timeout=remaining)

    async def _send_forever(self) -> None:
        assert self._target is not None
        while True:
            await workflow.wait_condition(lambda: bool(self._pending))
            await self._wait_until_due()
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
                self._last_sent = workflow.now()


def causes(err: BaseException) -> list[BaseException]:
    """The error and its causes, outermost first."""
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return chain


def root_message(err: BaseException) -> str:
    """What actually went wrong, for `.status.message`: the outermost typed application
    error below the workflow wrappers (`ModelNotFound: ...`, `TooManyFailuresWithoutProgress:
    ...`), else the innermost cause's message."""
    chain = causes(err)
    for cause in chain:
        if isinstance(cause, ApplicationError) and cause.type:
            return f"{cause.type}: {cause.message}"
    return str(chain[-1])


def ended_phase(err: BaseException) -> Phase:
    """Cancelled when the failure is a cancellation (the experiment deleted, a `temporal
    workflow cancel`), else Failed: a deleted experiment never reads as failed."""
    cancelled = any(isinstance(cause, CancelledError) for cause in causes(err))
    return Phase.CANCELLED if cancelled else Phase.FAILED
