"""`spec.suspend` as a workflow sees it: a flag set by the SUSPEND_SIGNAL, held between pieces
of work.

The operator signals the experiment's top-level workflow; a parent forwards the flag to its
children (`follow`). A workflow stops its work at a safe point (a trainer saves a checkpoint
on cancellation, chunks in flight finish), then `hold` says `Suspended` (the operator releases
the compute only then) and waits, without failing or ending, until the flag is false again.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import SUSPEND_SIGNAL, Phase
    from tempotrain_workers.workflows.status import StatusReporter


class Suspension:
    def __init__(self) -> None:
        self.suspended = False
        self._signalled = False

    def begin(self, suspended: bool) -> None:
        """The flag a run was started (or continued as new) with, unless a signal that
        arrived before the run's first task already said otherwise: that one is newer."""
        if not self._signalled:
            self.suspended = suspended

    def set(self, suspended: bool) -> None:
        if suspended != self.suspended:
            workflow.logger.info("%s requested", "suspension" if suspended else "resumption")
        self._signalled = True
        self.suspended = suspended

    async def hold(self, status: StatusReporter, resumed: Phase) -> bool:
        """When suspended: report `Suspended`, wait to be resumed, report `resumed`. The
        caller's work must have stopped by now. True when it held."""
        if not self.suspended:
            return False
        status.update(phase=Phase.SUSPENDED)
        await workflow.wait_condition(lambda: not self.suspended)
        status.update(phase=resumed)
        return True

    async def cancel_when_suspended(self, activity: workflow.ActivityHandle[Any]) -> None:
        """Cancel a running activity once suspended (it saves on its way out); run beside it
        and cancel this when the activity is over."""
        await workflow.wait_condition(lambda: self.suspended)
        activity.cancel()

    async def follow(self, child: workflow.ChildWorkflowHandle[Any, Any], sent: bool) -> None:
        """Forward every change of the flag to a child started with `sent`, until cancelled
        (when the child has closed). Level-triggered: a change made while the child was being
        started is forwarded too."""
        forwarded = sent

        def changed() -> bool:
            return self.suspended != forwarded

        while True:
            await workflow.wait_condition(changed)
            forwarded = self.suspended
            try:
                await child.signal(SUSPEND_SIGNAL, forwarded)
            except Exception as err:  # it closed meanwhile: nothing left to suspend there
                workflow.logger.info("suspend flag not forwarded: %s", err)
