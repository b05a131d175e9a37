"""The Events that tell a run's story: one per phase change, checkpoints at most once a
minute (the skipped ones counted), the last one always told when the run ends."""

from __future__ import annotations

from typing import Any

from tempotrain_operator.run_events import (
    CHECKPOINT_SAVED,
    PHASE_CHANGED,
    Seen,
    Told,
    what_happened,
)


def status(
    phase: str | None = None, step: int | None = None, message: str = "", saved: int | None = None
) -> dict[str, Any]:
    found: dict[str, Any] = {"phase": phase, "message": message or None}
    if step is not None:
        found["latestCheckpoint"] = {"step": step, "path": f"checkpoint-{step}"}
    if saved is not None:
        found["checkpointsSaved"] = saved
    return found


def replay(statuses: list[tuple[float, dict[str, Any]]]) -> list[tuple[float, Told]]:
    """Watch events at the given times, from an operator that saw the object created."""
    seen: Seen | None = Seen(None, -1)
    told: list[tuple[float, Told]] = []
    for at, shown in statuses:
        seen, events = what_happened(seen, shown, at, every=60)
        told += [(at, event) for event in events]
    return told


def test_a_first_look_tells_nothing_it_cannot_know_changed() -> None:
    seen, told = what_happened(None, status("Training", 40), now=0)
    assert told == [] and seen == Seen("Training", 40)
    # The next checkpoint is news.
    _, told = what_happened(seen, status("Training", 48), now=1)
    assert [t.reason for t in told] == [CHECKPOINT_SAVED]


def test_each_phase_change_is_told_once_with_its_message() -> None:
    told = replay([
        (0, status()),
        (1, status("Pending")),
        (2, status("Pending")),
        (3, status("Training")),
        (9, status("Failed", message="ModelNotFound: models/x")),
    ])  # fmt: skip
    assert [(t.type, t.reason, t.message) for _, t in told] == [
        ("Normal", PHASE_CHANGED, "new → Pending"),
        ("Normal", PHASE_CHANGED, "Pending → Training"),
        ("Warning", PHASE_CHANGED, "Training → Failed: ModelNotFound: models/x"),
    ]


def test_checkpoints_are_told_at_most_once_a_minute_and_the_last_when_it_ends() -> None:
    # A save every 10 s for 3 minutes, then Succeeded.
    shown = [(0.0, status("Training"))]
    shown += [(10.0 * i, status("Training", 8 * i)) for i in range(1, 19)]
    shown += [(185.0, status("Succeeded", 144))]
    told = [(at, t) for at, t in replay(shown) if t.reason == CHECKPOINT_SAVED]
    assert [at for at, _ in told] == [10.0, 70.0, 130.0, 185.0]
    assert told[0][1].message == "step 8 saved and verified"
    assert told[1][1].message == "step 56 saved and verified (5 more since the last such event)"
    assert told[-1][1].message.startswith("step 144 saved")
    # The checkpoint comes before the phase that ends the story.
    reasons = [t.reason for at, t in replay(shown) if at == 185.0]
    assert reasons == [CHECKPOINT_SAVED, PHASE_CHANGED]


def test_a_status_read_again_without_a_new_checkpoint_tells_nothing() -> None:
    told = replay([(0, status("Training", 8)), (100, status("Training", 8))])
    assert [t.reason for _, t in told] == [PHASE_CHANGED, CHECKPOINT_SAVED]


def test_saves_between_two_watch_events_are_counted_from_checkpoints_saved() -> None:
    # Pushes are coalesced: the status jumps from 1 save to 9 between two events.
    told = replay([
        (0, status("Training", 8, saved=1)),
        (61, status("Training", 16, saved=2)),
        (200, status("Training", 72, saved=9)),
    ])  # fmt: skip
    messages = [t.message for _, t in told if t.reason == CHECKPOINT_SAVED]
    assert messages == [
        "step 8 saved and verified",
        "step 16 saved and verified",
        "step 72 saved and verified (6 more since the last such event)",
    ]
