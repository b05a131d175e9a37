"""Heartbeats come from the activity's event loop, never from the work itself: blocking work
runs in a thread (or a process) while the loop heartbeats every few seconds, so a worker that
dies is noticed within the heartbeat timeout and a slow step never looks like a dead worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import activity

T = TypeVar("T")
HEARTBEAT_SECONDS = 2.0


async def heartbeating(function: Callable[..., T], *args: Any) -> T:
    """Run blocking work in a thread, heartbeating meanwhile."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    while True:
        done, _ = await asyncio.wait({work}, timeout=HEARTBEAT_SECONDS)
        if done:
            return work.result()
        activity.heartbeat()
