"""The writer thread every store sink shares: a bounded buffer drained in batches by one thread, or by one
thread per lane.

Lifecycle: ``put`` only enqueues (it blocks only while the buffer is full: backpressure, never a drop). The
thread first prepares the target (creates the database, installs index templates), retrying while the
store is unreachable, then takes up to ``batch_size`` items, or what arrived within ``flush_interval``,
and hands them to ``deliver``, which returns only once the batch is stored or dead-lettered: a store
outage stalls the pipeline, it does not lose data. A writer with several ``lanes`` runs that loop in as
many threads on the one buffer, so that a request is in flight while the next batch is prepared.
``flush`` waits until everything put so far is delivered. The Bytewax sinks' snapshots hold what is not
yet delivered (``pending_for_epoch``), or wait for it when the store is failing and that is a lot, so a
committed epoch never has output only in memory.

Every writer registers itself, and the runner calls ``flush_all_writers`` on the way out.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from flows import clock, lifecycle
from flows.sinks.buffer import BoundedBuffer

log = logging.getLogger(__name__)

T = TypeVar("T")

_writers: list[BatchWriterThread[Any]] = []
_writers_lock = threading.Lock()
# Items stored, and left unwritten, by writers already closed, by writer name: the stop's summary line
# counts them too.
_closed_written: dict[str, int] = {}
_closed_unwritten: dict[str, int] = {}


def flush_all_writers(timeout: float, failing_grace: float | None = None) -> dict[str, int]:
    """Flush every writer of this process within ``timeout`` seconds. Returns, per writer that could not
    store everything, how many items it still holds.

    Writers whose store answers go first, so that one that is down does not use up their time. A writer whose
    last attempt failed gets at most ``failing_grace`` seconds (None: the rest of ``timeout``): with recovery on,
    what it holds is in the last snapshot anyway, and waiting the whole timeout for a webhook that answers 500
    only made every stop take 30 s, longer than ``docker stop`` waits."""
    with _writers_lock:
        writers = sorted(_writers, key=lambda w: w.failing)
    deadline = time.monotonic() + timeout
    with _writers_lock:
        left = dict(_closed_unwritten)
    for writer in writers:
        wait = max(0.0, deadline - time.monotonic())
        if failing_grace is not None and writer.failing:
            wait = min(wait, failing_grace)
        if not writer.flush(wait):
            left[writer.name] = writer.buffer.unwritten()
    return left


def writers_failing() -> int:
    """Writer threads of this process whose last attempt failed (their store or target is down or refusing)."""
    with _writers_lock:
        return sum(w.failing for w in _writers)


def writers_written() -> dict[str, int]:
    """Items stored so far, per writer of this process (the stop's summary line)."""
    with _writers_lock:
        written = dict(_closed_written)
        for w in _writers:
            written[w.name] = written.get(w.name, 0) + w.written
        return written


def writers_alive() -> tuple[int, int]:
    """(alive, registered) writer threads of this process, for the health points."""
    with _writers_lock:
        return sum(w.alive() for w in _writers), len(_writers)


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


class SetupError(Exception):
    """The store refused what the writer needs to start (a database it may not create, a template it may
    not install): a configuration problem that retrying cannot fix. The process stops with this message."""


class BatchWriterThread(ABC, Generic[T]):
    """Owns a bounded buffer and one thread that delivers it in batches. Subclasses say how to prepare the
    target and how to deliver one batch.

    Contract for subclasses: ``deliver`` stores the batch, or turns what the store refuses *per record*
    into dead letters, or raises ``RetryableError`` to have the whole batch retried. Anything else it
    raises, like anything ``prepare`` raises other than ``RetryableError``, is a failure of the writer, not
    of a record: the thread stops, ``flows.lifecycle.fail`` stops the process with the error, and the exit
    status is non-zero so that a supervisor restarts it. A writer never dies quietly.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        batch_size: int,
        flush_interval: float,
        retry_max_delay: float,
        on_progress: Callable[[BatchWriterThread[T]], None] | None = None,
        lanes: int = 1,
        max_bytes: int | None = None,
        weigh: Callable[[T], int] | None = None,
    ) -> None:
        self.name = name
        self.lanes = lanes
        self.buffer: BoundedBuffer[T] = BoundedBuffer(capacity, max_bytes=max_bytes, weigh=weigh)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_max_delay = retry_max_delay
        self.retries = 0
        self.written = 0
        # Guards the counters (``retries``, ``written`` and a subclass's own): every lane updates them.
        self.counts_lock = threading.Lock()
        # True from a failed attempt until the next batch is stored: the store is down or refusing.
        self.failing = False
        # The exception that stopped the thread, if one did.
        self.failure: BaseException | None = None
        self._on_progress = on_progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # The threads of lanes 1 and up, started once the target is prepared; lane 0 is ``_thread``.
        self._lane_threads: list[threading.Thread] = []

    def start(self) -> None:
        """Subclasses call this at the end of their constructor, once ``deliver`` can run."""
        self._thread.start()
        with _writers_lock:
            _writers.append(self)

    @abstractmethod
    def prepare(self) -> None:
        """Make the target ready; raise RetryableError while the store is unreachable, SetupError when it
        refuses."""

    @abstractmethod
    def deliver(self, batch: list[T]) -> None:
        """Store ``batch``, or dead-letter what the store refuses; raise RetryableError to retry it whole."""

    def close_target(self) -> None:
        """Release clients and connections."""

    def alive(self) -> bool:
        threads = [self._thread, *self._lane_threads]
        return all(t.is_alive() for t in threads) and self.failure is None

    def put(self, items: list[T]) -> None:
        if items:
            self.buffer.put(items)

    def note_retry(self) -> None:
        with self.counts_lock:
            self.retries += 1
        self.failing = True
        self._progress()

    def _progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self)

    def _run(self, lane: int = 0) -> None:
        try:
            if lane == 0:
                self._work()
            else:
                self._drain(lane)
        except SetupError as exc:
            self._failed(exc)
        except BaseException as exc:
            # A bug, or a store answer nobody foresaw: the traceback is worth having.
            log.exception("%s: stopped by an unexpected error", self.name)
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        # The stop is asked for before the writer reads as dead, so nobody sees a dead writer in a
        # process that is not stopping.
        lifecycle.fail(f"{self.name} cannot go on", exc)
        self.buffer.writer_gone()
        self.failure = exc

    def _work(self) -> None:
        if not retry_forever(
            self.prepare, f"{self.name}: preparing", self.retry_max_delay, self._stop, self.note_retry
        ):
            self.buffer.writer_gone()
            return
        for lane in range(1, self.lanes):
            thread = threading.Thread(target=self._run, args=(lane,), name=f"{self.name}-{lane}", daemon=True)
            self._lane_threads.append(thread)
            thread.start()
        self._drain(0)

    def _drain(self, lane: int) -> None:
        while not (self._stop.is_set() and not len(self.buffer)):
            batch = self.buffer.take(self.batch_size, self.flush_interval, lane)
            if not batch:
                continue
            if not self._deliver_with_retry(batch):
                # Stopped while the store was failing: the batch is not stored, and stays counted as
                # unwritten (it is in the last snapshot when recovery is on).
                log.error(
                    "%s: stopped with %d items unwritten (the store was failing)", self.name, self.buffer.unwritten()
                )
                self.buffer.writer_gone()
                return
            self.buffer.done(lane)
            self.failing = False
            self._progress()

    def _deliver_with_retry(self, batch: list[T]) -> bool:
        return retry_forever(
            lambda: self.deliver(batch),
            f"{self.name}: writing {len(batch)} items",
            self.retry_max_delay,
            self._stop,
            self.note_retry,
            lambda: len(self.buffer) + len(batch),
        )

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything put so far is stored (without waiting for the flush interval), including
        the batch being written. False after ``timeout``, or if the writer stopped with items unwritten."""
        return self.buffer.wait_written(timeout)

    def close(self, timeout: float = 60.0) -> bool:
        """Flush, then stop the thread. False if items were left unwritten (the store stayed down)."""
        flushed = self.flush(timeout)
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in [self._thread, *self._lane_threads]:
            thread.join(max(0.0, deadline - time.monotonic()))
        with _writers_lock:
            if self in _writers:
                _writers.remove(self)
                _closed_written[self.name] = _closed_written.get(self.name, 0) + self.written
        unwritten = self.buffer.unwritten()
        if unwritten:
            with _writers_lock:
                _closed_unwritten[self.name] = _closed_unwritten.get(self.name, 0) + unwritten
        self.buffer.close()
        self.close_target()
        return flushed and unwritten == 0


def pending_for_epoch(writer: BatchWriterThread[T], limit: int, limit_while_answering: int | None = None) -> list[T]:
    """Called from a sink's ``snapshot``: what the epoch produced and the store does not have yet, to be
    kept in the snapshot and written again on resume (writes are idempotent). The worker does not wait
    for the store, so a slow write does not hold up the flow.

    Above ``limit`` items the snapshot would copy the same large backlog epoch after epoch; then the epoch
    waits until the store has taken all but ``limit`` of them, and the snapshot holds the rest: the flow
    stalls, the sources stop reading, nothing is given up. (Waiting until everything is stored left the
    writer idle after every such wait while the worker refilled its buffer: the logs pipeline ran at
    two thirds of its rate that way.)
    ``limit_while_answering`` raises the limit while the store answers (its last attempt did not fail): at
    fleet scale a window boundary hands the InfluxDB sink a line per series at once (100,000 and more), and
    waiting for the store to take them would stall the flow at every boundary. Short lines are cheap to copy;
    log documents are not, so the Elasticsearch sink keeps the one limit.
    When the process is stopping, or the writer is gone, the snapshot keeps everything instead, so that a
    stop neither hangs on a store that is down nor loses what was not written."""
    # Window clocks run on pipeline time, which stands still while the flow waits for a store.
    waiting = clock.StallMark()
    try:
        while True:
            if lifecycle.stopping() or not writer.alive():
                return writer.buffer.pending(None) or []
            answering = limit_while_answering is not None and not writer.failing
            pending = writer.buffer.pending(limit_while_answering if answering else limit)
            if pending is not None:
                return pending
            waiting.set(True)
            if writer.buffer.wait_written(5.0, down_to=limit):
                continue  # the snapshot may hold what is left
            log.warning("epoch waits for %d items to reach %s", writer.buffer.unwritten(), writer.name)
    finally:
        waiting.set(False)
