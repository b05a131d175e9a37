"""The ML stack (datasets, transformers) imported once, by one thread at a time.

A worker warms these imports up in a background thread while it starts polling. An activity
that imported them at the same moment in its own thread could see a half-initialised module
(`module 'transformers' has no attribute 'PreTrainedTokenizerBase'`: Python hands a partially
imported module to the second thread of an import cycle rather than deadlock). Every import
of the stack goes through this lock, so an activity waits for a warm-up in progress instead.
"""

from __future__ import annotations

import asyncio
import threading

_lock = threading.Lock()


async def ml_stack_ready() -> None:
    """For an activity, before it imports anything of the stack: waits (off the event loop,
    which keeps heartbeating) for a warm-up in progress, or does the imports itself."""
    await asyncio.to_thread(import_ml_stack)


def import_ml_stack() -> None:
    """Import datasets and transformers, and resolve the lazy names the activities use."""
    with _lock:
        try:
            import datasets  # noqa: F401
            import transformers
        except ImportError:  # an operator-only install: activities report what is missing
            return
        # transformers loads its submodules lazily, on first attribute access: do it here.
        for name in ("PreTrainedTokenizerBase", "AutoTokenizer", "AutoModel"):
            getattr(transformers, name)
