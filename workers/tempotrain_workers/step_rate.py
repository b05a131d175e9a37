"""A trainer's recent speed, for the ETA: steps per second over a sliding window of the
attempt's progress reports. Recent, not since the start: a resumed attempt, a warm-up or a
slower node must not skew it for long."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0
MIN_SPAN_SECONDS = 5.0  # fewer seconds than this say more about noise than about speed


class StepRate:
    def __init__(
        self, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, step: int) -> float | None:
        """Record the step reached now; the rate over the window, None until it spans
        MIN_SPAN_SECONDS (or when the step went back: a new attempt starts over)."""
        now = self._clock()
        if self._samples and step < self._samples[-1][1]:
            self._samples.clear()
        self._samples.append((now, step))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        first_at, first_step = self._samples[0]
        span = now - first_at
        if span < MIN_SPAN_SECONDS or step <= first_step:
            return None
        return (step - first_step) / span
