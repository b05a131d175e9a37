"""A trivial workflow on the real dev server, through a worker using the pydantic converter."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.worker import Worker

if TYPE_CHECKING:  # the workflow sandbox re-imports this module: keep kr8s & co out of it
    from tests.conftest import TemporalHandle


class Greeting(BaseModel):
    name: str
    sent_at: datetime


class Reply(BaseModel):
    text: str
    echoed: Greeting


@activity.defn
async def compose_reply(greeting: Greeting) -> Reply:
    return Reply(text=f"hello, {greeting.name}", echoed=greeting)


@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self, greeting: Greeting) -> Reply:
        return await workflow.execute_activity(
            compose_reply, greeting, start_to_close_timeout=timedelta(seconds=30)
        )


async def test_workflow_round_trips_pydantic_models(temporal: TemporalHandle) -> None:
    queue = f"test-{uuid.uuid4()}"
    greeting = Greeting(name="tempotrain", sent_at=datetime(2026, 1, 2, 3, 4, 5))
    async with Worker(
        temporal.client, task_queue=queue, workflows=[GreetingWorkflow], activities=[compose_reply]
    ):
        reply = await temporal.client.execute_workflow(
            GreetingWorkflow.run,
            greeting,
            id=f"greeting-{uuid.uuid4()}",
            task_queue=queue,
            execution_timeout=timedelta(seconds=60),
        )
    # A typed model comes back (not a dict), with the datetime intact.
    assert isinstance(reply, Reply)
    assert reply.text == "hello, tempotrain"
    assert reply.echoed == greeting
