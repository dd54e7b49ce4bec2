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


def add_stall(ns: int) -> None:
    global _stalled_ns
    with _lock:
        _stalled_ns += ns
