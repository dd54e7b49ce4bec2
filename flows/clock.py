"""The pipeline's wall clock: wall time minus the time the flow spent stalled.

Windows close on wall time when a series goes quiet (see ``windows``). If the flow stalls, the readings
waiting in the broker, or in epochs the flow cannot complete yet, are not "quiet series": counting the stall
would turn them into late readings once the flow goes on. So stalls are left out.

Every stall is a pause: the clock stands still from the moment the first pause starts until the last one
ends, however many overlap (so no time is left out twice). Three kinds:

- a source that does not read because a sink's buffer is above its high-water mark (``StallMark``);
- an epoch that waits for a store to take its items (``StallMark`` in ``flows.sinks.writer``);
- a worker loop that does not come back to its sources (``beat``): a cluster peer out of reach holds every
  worker of the cluster until the link is back, with readings taken in before the cut in epochs the windows
  do not see yet. A watcher thread starts the pause once no source has been called for ``_SILENCE_S``
  past the time it asked to be called again; the next call of any source ends it.
"""

from __future__ import annotations

import threading
import time

# Reentrant: the heartbeat's start and end of a pause take it around _pause and _resume.
_lock = threading.RLock()
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
    """Leave ``ns`` out of the clock at once (tests use it to move the clock by hand)."""
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


# The worker loop's heartbeat: the latest moment (monotonic s) by which some source expects its next call.
# A loop that has not come back this long after it is silent. Above a slow callback of a healthy flow (a
# fleet boundary's round of closes, a new window-log generation: well under a second), below the allowed
# lateness of any sensible configuration.
_SILENCE_S = 1.0
_expected_by = 0.0
_silent = False
# Whether any source beats: a process with none (tests of a single step) is never silent.
_watching = False
_watcher: threading.Thread | None = None


def beat(next_call_s: float) -> None:
    """A source was called: the worker loop runs. Sources beat from ``next_awake``, which Bytewax calls after
    every ``next_batch``. ``next_call_s``: the monotonic time by which the source expects to be called again
    (now, when it has more to read)."""
    global _expected_by, _silent, _watching
    if next_call_s > _expected_by:
        _expected_by = next_call_s
    _watching = True
    if _silent:
        with _lock:
            if _silent:
                _silent = False
                _resume()
    elif _watcher is None:
        _start_watcher()


def _start_watcher() -> None:
    global _watcher
    with _lock:
        if _watcher is not None:
            return
        _watcher = threading.Thread(target=_watch, name="fleetwatch-clock-watch", daemon=True)
    _watcher.start()


def _watch() -> None:
    global _silent
    while True:
        time.sleep(0.05)
        if _silent or time.monotonic() <= _expected_by + _SILENCE_S:
            continue
        with _lock:
            if _watching and not _silent and time.monotonic() > _expected_by + _SILENCE_S:
                _silent = True
                _pause()


def stop_watching() -> None:
    """No source beats any more (their process, or a test, is done with them): end a silence, start no other
    until a source beats again."""
    global _silent, _watching
    with _lock:
        _watching = False
        if _silent:
            _silent = False
            _resume()


class StallMark:
    """One party's part in a stall: ``set(True)`` while it holds the flow back (a source that does not read
    because a sink is saturated, an epoch waiting for a store), ``set(False)`` once it goes on (and on
    close)."""

    __slots__ = ("_on",)

    def __init__(self) -> None:
        self._on = False

    def set(self, stalled: bool) -> None:
        if stalled != self._on:
            self._on = stalled
            _pause() if stalled else _resume()
