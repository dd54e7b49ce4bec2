"""Which epochs Bytewax has durably committed, read from its recovery partitions.

An MQTT message may be acknowledged to the broker only once the state that counted it is committed: acked
earlier, a crash loses it (the broker forgets it, the restart resumes from an older snapshot). Bytewax 0.21
does not tell a source when an epoch commits, but it records it in the recovery partitions (SQLite):

- ``exs``: one row per execution, with the epoch it resumed from (the first epoch it runs);
- ``commits``: per partition, the newest epoch whose snapshots are all written and kept;
- ``fronts``: per execution and worker, the worker's frontier (the oldest epoch it has not finished).

An epoch counts as committed when both say so: every partition's commit epoch has reached it, and every worker
of the current execution has moved its frontier past it. Everything before the current execution's resume
epoch is committed by definition (the restart resumed from it). The tables are Bytewax 0.21's; the version is
pinned in pyproject.toml, and tests/integration/test_pipeline_faults.py checks the result against kills.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from flows import lifecycle

log = logging.getLogger(__name__)

T = TypeVar("T")


class RecoveryProgress:
    def __init__(self, recovery_dir: Path) -> None:
        self.recovery_dir = recovery_dir
        parts = sorted(recovery_dir.glob("part-*.sqlite3"))
        if not parts:
            raise FileNotFoundError(f"no Bytewax recovery partitions (part-*.sqlite3) in {recovery_dir}")
        # Read-only: readers never block Bytewax's writers in WAL mode.
        self._connections = [sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5) for p in parts]

    def execution(self) -> tuple[int, int, int]:
        """The current execution: its number, the epoch it resumed from, and its worker count."""
        newest: tuple[int, int, int] | None = None
        for connection in self._connections:
            row = connection.execute(
                "SELECT ex_num, resume_epoch, worker_count FROM exs ORDER BY ex_num DESC LIMIT 1"
            ).fetchone()
            if row is not None and (newest is None or row[0] > newest[0]):
                newest = (int(row[0]), int(row[1]), int(row[2]))
        if newest is None:
            raise RuntimeError(f"Bytewax has recorded no execution in {self.recovery_dir} yet")
        return newest

    def committed_through(self, execution: tuple[int, int, int]) -> int:
        """The newest epoch that is committed (``resume_epoch - 1`` until this execution commits one)."""
        ex_num, resume_epoch, worker_count = execution
        commits: list[int] = []
        frontiers: dict[int, int] = {}
        for connection in self._connections:
            row = connection.execute("SELECT commit_epoch FROM commits").fetchone()
            if row is not None:
                commits.append(int(row[0]))
            for worker, frontier in connection.execute(
                "SELECT worker_index, worker_frontier FROM fronts WHERE ex_num = ?", (ex_num,)
            ):
                frontiers[int(worker)] = int(frontier)
        floor = resume_epoch - 1
        if len(commits) < len(self._connections) or len(frontiers) < worker_count:
            return floor
        return max(floor, min(min(commits), min(frontiers.values()) - 1))

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
        self._connections = []


class EpochCommits:
    """A stateful partition's epochs and which of them are committed, for work that must wait for the commit
    (acknowledging MQTT messages, storing dead letters).

    Bytewax snapshots a stateful partition once at the end of every epoch, so the partition counts its epochs
    from the epoch the execution resumed from. The recovery store is opened at the first snapshot: Bytewax has
    recorded the execution by then. ``owner`` names the partition in errors."""

    def __init__(self, recovery_dir: Path, owner: str) -> None:
        self.recovery_dir = recovery_dir
        self.owner = owner
        self._progress: RecoveryProgress | None = None
        self._execution = (0, 0, 0)
        self._next_epoch = 0

    def end_epoch(self) -> int:
        """Called from ``snapshot``: the epoch that ends with this snapshot."""
        if self._progress is None:
            self._progress = RecoveryProgress(self.recovery_dir)
            self._execution = self._progress.execution()
            self._next_epoch = self._execution[1]
        epoch = self._next_epoch
        self._next_epoch += 1
        return epoch

    def committed(self) -> int:
        """The newest committed epoch (-1 before the first snapshot)."""
        if self._progress is None:
            return -1
        committed = self._progress.committed_through(self._execution)
        if committed >= self._next_epoch:
            # An epoch committed that this partition has not snapshotted: the count is wrong, and work could
            # run ahead of the state. Stop rather than risk it.
            raise RuntimeError(
                f"{self.owner}: Bytewax committed epoch {committed}, but this partition has only ended epoch "
                f"{self._next_epoch - 1}; the epoch count does not match this Bytewax version"
            )
        return committed

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()


class AfterCommit(Generic[T]):
    """Hands items to ``release`` once the epoch that made them is committed, for a sink partition whose
    writes must not outrun the state (dead letters, see flows/sinks/elasticsearch.py).

    ``end_epoch`` is called from the partition's ``snapshot`` with the items of the epoch that ends. A sink
    partition is called only when items arrive, so the recovery store is read on a thread of this gate's own,
    every ``poll`` seconds while items wait. What waits is in ``waiting()`` for the snapshot; an item may be in
    it and already released (releasing twice must be harmless). An error on the thread stops the process."""

    def __init__(self, recovery_dir: Path, name: str, release: Callable[[list[T]], None], poll: float = 0.05) -> None:
        self.recovery_dir = recovery_dir
        self.name = name
        self._release = release
        self._poll = poll
        # The epoch count, on the partition's thread; the gate's thread reads the store on a connection of its own.
        self._epochs = EpochCommits(recovery_dir, name)
        self._lock = threading.Lock()
        self._waiting: deque[tuple[int, list[T]]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-after-commit", daemon=True)
        self._thread.start()

    def end_epoch(self, items: list[T]) -> None:
        epoch = self._epochs.end_epoch()
        if items:
            with self._lock:
                self._waiting.append((epoch, items))

    def waiting(self) -> list[T]:
        with self._lock:
            return [item for _, items in self._waiting for item in items]

    def close(self) -> list[T]:
        """Stop the thread; what still waits (for the caller to deal with)."""
        self._stop.set()
        self._thread.join(10)
        self._epochs.close()
        return self.waiting()

    def _run(self) -> None:
        try:
            self._release_committed()
        except BaseException as exc:
            log.exception("%s: stopped by an unexpected error", self.name)
            lifecycle.fail(f"{self.name} cannot go on", exc)

    def _release_committed(self) -> None:
        progress: RecoveryProgress | None = None
        try:
            while not self._stop.wait(self._poll):
                with self._lock:
                    if not self._waiting:
                        continue
                if progress is None:
                    progress = RecoveryProgress(self.recovery_dir)
                committed = progress.committed_through(progress.execution())
                while True:
                    with self._lock:
                        if not self._waiting or self._waiting[0][0] > committed:
                            break
                        items = self._waiting[0][1]
                    self._release(items)  # may wait (backpressure); still in waiting() meanwhile
                    with self._lock:
                        self._waiting.popleft()
        finally:
            if progress is not None:
                progress.close()
