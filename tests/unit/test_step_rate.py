"""The trainer's recent rate behind the ETA (fake clock)."""

from __future__ import annotations

from tempotrain_workers.step_rate import StepRate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_recent_and_needs_a_few_seconds() -> None:
    clock = Clock()
    rate = StepRate(window=60, clock=clock)
    assert rate.add(0) is None
    clock.now = 2
    assert rate.add(4) is None  # 2 s: too short to say
    for second in range(4, 62, 2):  # 2 steps/s for a minute
        clock.now = second
        latest = rate.add(2 * second)
    assert latest == 2.0
    for second in range(62, 182, 2):  # then 1 step/s for two minutes: the window forgets
        clock.now = second
        latest = rate.add(120 + (second - 60))
    assert latest is not None and abs(latest - 1.0) < 0.05, latest


def test_a_step_going_back_starts_over() -> None:
    clock = Clock()
    rate = StepRate(clock=clock)
    rate.add(100)
    clock.now = 10
    assert rate.add(120) == 2.0
    clock.now = 12
    assert rate.add(50) is None  # a new attempt resumed from an earlier checkpoint
