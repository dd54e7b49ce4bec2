"""The pipeline's wall clock: wall time minus the time the flow spent stalled on a store.

Windows close on wall time when a series goes quiet (see ``windows``). If the flow stalls because a
store is down, the readings waiting in the broker are not "quiet series": counting the stall would turn
the whole backlog into late readings once the store is back. So stalls are subtracted.
"""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_stalled_ns = 0


def now_ns() -> int:
    return time.time_ns() - _stalled_ns


def to_wall_ns(pipeline_ns: int) -> int:
    """A moment on the pipeline clock as wall time: what Bytewax's ``notify_at`` must be given. Returning a
    pipeline-clock moment there would be in the past after any stall, and Bytewax would call ``on_notify``
    again at once, forever."""
    return pipeline_ns + _stalled_ns


def stalled_ns() -> int:
    return _stalled_ns


def add_stall(ns: int) -> None:
    global _stalled_ns
    with _lock:
        _stalled_ns += ns
