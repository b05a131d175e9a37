"""The ML stack (datasets, transformers) imported once, by one thread at a time.

A worker warms these imports up in a background thread while it starts polling. An activity
that imported them at the same moment in its own thread could see a half-initialised module
(`module 'transformers' has no attribute 'PreTrainedTokenizerBase'`: Python hands a partially
imported module to the second thread of an import cycle rather than deadlock). Every import
of the stack goes through this lock, so an activity waits for a warm-up in progress instead.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()


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
