"""Child processes that must not outlive the worker that supervises them."""

from __future__ import annotations

import contextlib
import ctypes
import signal


def die_with_parent() -> None:
    """preexec_fn: if the worker is SIGKILLed, the child gets SIGKILL too instead of running
    on as an orphan that keeps writing into the run directory (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
