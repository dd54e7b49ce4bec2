"""The process's stop and failure state, shared by the runner, the sources, the stateful steps and the sinks.

A stop (SIGINT, SIGTERM, ``--duration``) ends the dataflow the way Bytewax ends a finite one: every source
returns end-of-input, the stateful steps keep their open windows in state instead of emitting them as final,
Bytewax takes and commits a last snapshot, and the sinks flush. A restart resumes from that snapshot, so a
stop loses nothing and a window that was open is not written half full.

A failure (a writer thread that cannot go on, a store that refuses its setup) is not per-record: it stops
the process with a clear error and a non-zero exit, so that a supervisor restarts it. A dead thread in a
live-looking process is never an option.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

_stop = threading.Event()
_lock = threading.Lock()
_failures: list[str] = []


def request_stop() -> None:
    """Ask every source to end its input; the dataflow then completes, snapshots and flushes."""
    _stop.set()


def wait_for_stop(timeout: float | None = None) -> bool:
    """Block until a stop is asked for (by a signal or a failure); False after ``timeout``."""
    return _stop.wait(timeout)


def stopping() -> bool:
    """True once a stop was asked for: sources end their input, stateful steps keep their windows open."""
    return _stop.is_set()


def fail(what: str, exc: BaseException | None = None) -> None:
    """Record a failure that is not about one record, and stop. The runner exits non-zero after it."""
    message = f"{what}: {type(exc).__name__}: {exc}" if exc is not None else what
    with _lock:
        _failures.append(message)
    log.critical("fleetwatch: %s; stopping", message)
    _stop.set()


def failures() -> list[str]:
    with _lock:
        return list(_failures)


def reset() -> None:
    """For tests that run several dataflows in one process."""
    _stop.clear()
    with _lock:
        _failures.clear()
