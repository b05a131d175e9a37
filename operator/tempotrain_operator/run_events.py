"""Kubernetes Events that tell a run's story in `kubectl describe`: one per phase change, and
one per checkpoint saved, at most one a minute per experiment (a save every few seconds
would bury everything else; the skipped ones are counted in the next).

One place for every writer: the phase is written by the handlers (Pending, Queued,
Suspended), by the status sink (Training, Succeeded) and by the resync timer. Rather than
each posting its own, a watch-event handler compares what it sees with what it saw last."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import kopf
from tempotrain_workers.api import GROUP, TERMINAL_PHASES, VERSION, Phase

from tempotrain_operator import sharding
from tempotrain_operator.mapping import latest_step

HANDLER_ID = "run-events"

PHASE_CHANGED = "PhaseChanged"
CHECKPOINT_SAVED = "CheckpointSaved"
# One checkpoint event a minute per experiment; the last one is always told when it ends.
CHECKPOINT_EVENT_SECONDS = 60.0


@dataclass(frozen=True)
class Seen:
    """What the last watch event showed of one experiment, and what was told of it."""

    phase: str | None
    checkpoint_step: int  # -1: none yet (`latest_step`)
    checkpoint_told_at: float | None = None
    untold: int = 0  # checkpoint changes seen since the last CheckpointSaved event
    # status.checkpointsSaved when that event was told: the saves between two watch events
    # (the status sink coalesces its pushes) are counted from it, where the kind reports it.
    saved_when_told: int | None = None


@dataclass(frozen=True)
class Told:
    type: str  # Normal or Warning
    reason: str
    message: str


def what_happened(
    seen: Seen | None,
    status: Mapping[str, Any],
    now: float,
    every: float = CHECKPOINT_EVENT_SECONDS,
) -> tuple[Seen, list[Told]]:
    """What to tell of `status`, given what was `seen` before (None: the first look since
    this operator started, which tells nothing: it cannot know what changed)."""
    phase = status.get("phase") or None
    step = latest_step(status)
    if seen is None:
        return Seen(phase, step), []
    now_seen = replace(seen, phase=phase, checkpoint_step=step)
    if step >= 0 and step != seen.checkpoint_step:
        now_seen = replace(now_seen, untold=seen.untold + 1)
    changed: list[Told] = []
    if phase is not None and phase != seen.phase:
        message = f"{seen.phase or 'new'} → {phase}"
        if status.get("message"):
            message += f": {status['message']}"
        kind = "Warning" if phase == Phase.FAILED else "Normal"
        changed.append(Told(kind, PHASE_CHANGED, message))
    ended = bool(changed) and phase in TERMINAL_PHASES
    due = seen.checkpoint_told_at is None or now - seen.checkpoint_told_at >= every
    saved: list[Told] = []
    if now_seen.untold and step >= 0 and (due or ended):
        count = status.get("checkpointsSaved")
        count = count if isinstance(count, int) else None
        if count is not None and seen.saved_when_told is not None:
            others = count - seen.saved_when_told - 1
        else:
            others = now_seen.untold - 1
        more = f" ({others} more since the last such event)" if others > 0 else ""
        saved.append(Told("Normal", CHECKPOINT_SAVED, f"step {step} saved and verified{more}"))
        now_seen = replace(now_seen, checkpoint_told_at=now, untold=0, saved_when_told=count)
    # The story ends with the run's last checkpoint, then how it ended.
    told = saved + changed if ended else changed + saved
    return now_seen, told


def register(plural: str) -> None:
    kopf.on.event(GROUP, VERSION, plural, id=HANDLER_ID, when=sharding.owned)(_tell)


async def _tell(
    body: kopf.Body, status: kopf.Status, memo: kopf.Memo, type: str | None, **_: Any
) -> None:
    # kopf gives each object a memo of its own: what was seen of this one lives there.
    if type == "DELETED":
        return
    seen, told = what_happened(memo.get("run_events_seen"), status, time.monotonic())
    memo["run_events_seen"] = seen
    for event in told:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
