"""The writer thread every store sink shares: a bounded buffer drained in batches by one thread.

Lifecycle: ``put`` only enqueues (it blocks only while the buffer is full: backpressure, never a drop). The
thread first prepares the target (creates the database, installs index templates), retrying while the
store is unreachable, then takes up to ``batch_size`` items, or what arrived within ``flush_interval``,
and hands them to ``deliver``, which returns only once the batch is stored or dead-lettered: a store
outage stalls the pipeline, it does not lose data. ``flush`` waits until everything put so far is
delivered. The Bytewax sinks' snapshots hold what is not yet delivered (``pending_for_epoch``), or wait for
it when that is a lot (``flush_for_epoch``), so a committed epoch never has output only in memory.

Bytewax does not close sinks when a run is interrupted, so every writer registers itself and the runner
calls ``flush_all_writers`` on the way out.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from flows import clock
from flows.sinks.buffer import BoundedBuffer

log = logging.getLogger(__name__)

T = TypeVar("T")

# A flush at the end of an epoch longer than this is a stall (the store is slow or down), not work.
_STALL_NS = 500_000_000

_writers: list[BatchWriterThread[Any]] = []
_writers_lock = threading.Lock()


def flush_all_writers(timeout: float) -> bool:
    """Flush every writer of this process within ``timeout`` seconds; False if one could not."""
    with _writers_lock:
        writers = list(_writers)
    deadline = time.monotonic() + timeout
    return all(w.flush(max(0.0, deadline - time.monotonic())) for w in writers)


class RetryableError(Exception):
    """A failure worth retrying: the store is down, overloaded (429) or failing (5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_forever(
    attempt: Callable[[], None],
    what: str,
    max_delay: float,
    stopping: threading.Event,
    on_retry: Callable[[], None],
    waiting: Callable[[], int] = lambda: 0,
) -> bool:
    """Call ``attempt`` until it stops raising ``RetryableError``, sleeping with capped exponential backoff
    (or the server's Retry-After) in between. Other exceptions propagate. False if ``stopping`` was set."""
    delay = 0.1
    failures = 0
    while True:
        try:
            attempt()
            return True
        except RetryableError as err:
            failures += 1
            on_retry()
            pause = min(max_delay, err.retry_after if err.retry_after is not None else delay)
            if failures == 1 or failures % 20 == 0:
                log.warning("%s failed (%s); retry %d in %.1fs, %d waiting", what, err, failures, pause, waiting())
            if stopping.wait(pause):
                return False
            delay = min(max_delay, delay * 2)


class BatchWriterThread(ABC, Generic[T]):
    """Owns a bounded buffer and one thread that delivers it in batches. Subclasses say how to prepare the
    target and how to deliver one batch."""

    def __init__(
        self,
        name: str,
        capacity: int,
        batch_size: int,
        flush_interval: float,
        retry_max_delay: float,
        on_progress: Callable[[BatchWriterThread[T]], None] | None = None,
    ) -> None:
        self.name = name
        self.buffer: BoundedBuffer[T] = BoundedBuffer(capacity)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_max_delay = retry_max_delay
        self.retries = 0
        self.written = 0
        self._on_progress = on_progress
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Subclasses call this at the end of their constructor, once ``deliver`` can run."""
        self._thread.start()
        with _writers_lock:
            _writers.append(self)

    @abstractmethod
    def prepare(self) -> None:
        """Make the target ready; raise RetryableError while the store is unreachable."""

    @abstractmethod
    def deliver(self, batch: list[T]) -> None:
        """Store ``batch``, or dead-letter what the store refuses; raise RetryableError to retry it whole."""

    def close_target(self) -> None:
        """Release clients and connections."""

    def put(self, items: list[T]) -> None:
        if items:
            self._idle.clear()
            self.buffer.put(items)

    def note_retry(self) -> None:
        self.retries += 1
        self._progress()

    def _progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self)

    def _run(self) -> None:
        if not retry_forever(
            self.prepare, f"{self.name}: preparing", self.retry_max_delay, self._stop, self.note_retry
        ):
            return
        while not (self._stop.is_set() and not len(self.buffer)):
            batch = self.buffer.take(self.batch_size, self.flush_interval)
            if not batch:
                self._idle.set()
                continue
            self._deliver_with_retry(batch)
            self.buffer.done()
            self._progress()
            if not len(self.buffer):
                self._idle.set()

    def _deliver_with_retry(self, batch: list[T]) -> None:
        retry_forever(
            lambda: self.deliver(batch),
            f"{self.name}: writing {len(batch)} items",
            self.retry_max_delay,
            self._stop,
            self.note_retry,
            lambda: len(self.buffer) + len(batch),
        )

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything put so far is delivered (without waiting for the flush interval)."""
        self.buffer.request_flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.wait(0.05) and not len(self.buffer):
                return True
        return False

    def close(self, timeout: float = 60.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout)
        with _writers_lock:
            if self in _writers:
                _writers.remove(self)
        self.buffer.close()
        self.close_target()


def pending_for_epoch(writer: BatchWriterThread[T], limit: int) -> list[T]:
    """Called from a sink's ``snapshot``: what the epoch produced and the store does not have yet, to be
    kept in the snapshot and written again on resume (writes are idempotent). The worker does not wait
    for the store, so a slow write does not hold up the flow. Above ``limit`` items (the store is slow or
    down) the snapshot would grow large; then the epoch waits until everything is stored instead."""
    pending = writer.buffer.pending(limit)
    if pending is None:
        flush_for_epoch(writer)
        return []
    return pending


def flush_for_epoch(writer: BatchWriterThread[Any]) -> None:
    """Called from a sink's ``snapshot``: everything of the closing epoch is stored before the epoch can be
    committed, so a committed epoch never has output that is still only in memory. While the store is down
    this waits (the flow stalls, the sources stop reading); it does not give up."""
    started = time.monotonic_ns()
    while not writer.flush(60.0):
        log.warning("epoch waits for %d items to reach %s", len(writer.buffer), writer.name)
    waited = time.monotonic_ns() - started
    if waited > _STALL_NS:
        # Window clocks run on pipeline time, which does not advance while the flow waits for a store.
        clock.add_stall(waited)
