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

A process that does not run at all (SIGSTOP, ``docker pause``, a suspended VM or laptop) is no pause: its
threads, the watcher's too, stop with it, so nothing can start one. The watcher notes the time at each of its
ticks instead, and a gap between two notes in which the process used no CPU is left out once it runs again
(``_note_running``). Whichever thread runs first after the freeze notes it: the watcher, or the worker asking
``now_ns``, so that no window is closed on the frozen time before the readings the broker held meanwhile are
read.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

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
    wall_ns = time.time_ns()
    if wall_ns - _noted_wall_ns > _FROZEN_NS and _watcher is not None:
        _note_running(wall_ns)
    return wall_ns - _stalled_ns - _paused_ns()


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


# The watcher's tick, and the least time the process must not have run for a gap between two notes to be left
# out of the clock: well above any wait of a thread for its turn on a busy machine, and below the allowed
# lateness of any sensible configuration (a shorter freeze is within it).
_TICK_S = 0.05
_FROZEN_NS = 500_000_000
# When the process was last seen running: wall time, monotonic time and the process's CPU time, in ns.
_noted_wall_ns = 2**62
_noted_mono_ns = 0
_noted_cpu_ns = 0


def _note_running(wall_ns: int) -> None:
    """The process runs at ``wall_ns``. If it did not run for a while before (the wall clock moved on since the
    last note, and the process's CPU time did not), that time is left out of the clock.

    CPU time tells a frozen process from a watcher that only waited for its turn: while some thread holds the
    interpreter (a long call into native code), the watcher cannot note, but the process's CPU time goes on.
    The wall clock (not the monotonic one) is what the window clock runs on, and it goes on while the machine
    sleeps."""
    global _noted_wall_ns, _noted_mono_ns, _noted_cpu_ns, _stalled_ns
    mono_ns, cpu_ns = time.monotonic_ns(), time.process_time_ns()
    with _lock:
        if wall_ns < _noted_wall_ns:
            return  # the other thread noted a later moment meanwhile
        frozen = (wall_ns - _noted_wall_ns) - (cpu_ns - _noted_cpu_ns) - int(_TICK_S * 1e9)
        if _paused:
            # A pause going on since before the freeze leaves out what the monotonic clock counted of it.
            frozen -= mono_ns - _noted_mono_ns
        _noted_wall_ns, _noted_mono_ns, _noted_cpu_ns = wall_ns, mono_ns, cpu_ns
        if frozen <= _FROZEN_NS:
            return
        _stalled_ns += frozen
    log.warning(
        "fleetwatch: the process did not run for %.1f s (stopped, paused or suspended): the window clock leaves "
        "that time out, so readings held meanwhile are not late",
        frozen / 1e9,
    )


def _start_watcher() -> None:
    global _watcher, _noted_wall_ns, _noted_mono_ns, _noted_cpu_ns
    with _lock:
        if _watcher is not None:
            return
        _noted_wall_ns, _noted_mono_ns, _noted_cpu_ns = time.time_ns(), time.monotonic_ns(), time.process_time_ns()
        _watcher = threading.Thread(target=_watch, name="fleetwatch-clock-watch", daemon=True)
    _watcher.start()


def _watch() -> None:
    global _silent
    while True:
        time.sleep(_TICK_S)
        _note_running(time.time_ns())
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
