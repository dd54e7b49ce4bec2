"""The pipeline's wall clock: wall time minus the time the flow spent stalled on a store.

Windows close on wall time when a series goes quiet (see ``windows``). If the flow stalls because a
store is down, the readings waiting in the broker are not "quiet series": counting the stall would turn
the whole backlog into late readings once the store is back. So stalls are subtracted.

Two kinds of stall: an epoch that waits for a store (``add_stall``, measured after the wait), and a source
that does not read because a sink's buffer is above its high-water mark (``StallMark``: the clock stands
still from the moment the first source pauses until the last one reads again, however many pause).
"""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_stalled_ns = 0
# Sources paused by backpressure right now, and since when (monotonic ns) at least one has been.
_paused = 0
_paused_since = 0


def _paused_ns() -> int:
    """How long the sources have been paused by backpressure so far, if they are now."""
    return time.monotonic_ns() - _paused_since if _paused else 0


def now_ns() -> int:
    return time.time_ns() - _stalled_ns - _paused_ns()


def to_wall_ns(pipeline_ns: int) -> int:
    """A moment on the pipeline clock as wall time: what Bytewax's ``notify_at`` must be given. Returning a
    pipeline-clock moment there would be in the past after any stall, and Bytewax would call ``on_notify``
    again at once, forever."""
    return pipeline_ns + _stalled_ns + _paused_ns()


def stalled_ns() -> int:
    return _stalled_ns


def stalled_so_far_ns() -> int:
    """Every stall so far, the one going on included: the pipeline clock is this far behind wall time."""
    return _stalled_ns + _paused_ns()


def add_stall(ns: int) -> None:
    global _stalled_ns
    with _lock:
        _stalled_ns += ns


def _pause() -> None:
    global _paused, _paused_since
    with _lock:
        if _paused == 0:
            _paused_since = time.monotonic_ns()
        _paused += 1


def _resume() -> None:
    global _paused, _stalled_ns
    with _lock:
        _paused -= 1
        if _paused == 0:
            _stalled_ns += time.monotonic_ns() - _paused_since


class StallMark:
    """One source's part in the backpressure stall: ``set(True)`` while it does not read because a sink is
    saturated, ``set(False)`` once it reads again (and on close)."""

    __slots__ = ("_on",)

    def __init__(self) -> None:
        self._on = False

    def set(self, stalled: bool) -> None:
        if stalled != self._on:
            self._on = stalled
            _pause() if stalled else _resume()
