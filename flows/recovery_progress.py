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

import sqlite3
from pathlib import Path


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
