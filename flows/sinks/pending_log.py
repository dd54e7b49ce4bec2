"""Where a store sink's snapshot keeps what the store does not have yet, when recovery is on.

A sink's snapshot holds the items the epoch produced and the store has not acknowledged (``pending_for_epoch``),
to be written again on resume. At fleet scale a window boundary hands the InfluxDB sink a line per series, and
InfluxDB takes seconds to store them: at 100,000 series the snapshots of those seconds held 90,000 to 140,000 lines
(20 to 31 MB). Handed to Bytewax as a list, each was pickled whole into one buffer and written to its SQLite store, and
the process's peak RSS rose by about 65 MB at every boundary (BENCHMARKS.md run AD).

So the snapshot writes the lines into a file of its own beside Bytewax's partitions instead, a chunk of lines per
frame, and hands Bytewax a marker of a few bytes. Each snapshot writes a new generation of the log (the pending set
replaces the previous one whole, and shrinks as the store catches up); ``WindowLog`` supplies the frames, the
fsync before the marker is returned, the replay of a marker, and the deletion of generations no stored snapshot
refers to. An empty pending set needs no file: the snapshot is an empty list.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import TypeGuard

from flows.window_log import LOG_FORMAT, LogMarker, WindowLog

PENDING_LOG_FOLDER = "sink-log"
# Lines per frame: about 1 MB of InfluxDB lines, so writing a snapshot never holds more than that at once.
_LINES_PER_FRAME = 4096

PendingSnapshot = list[str] | LogMarker


def is_marker(snapshot: object) -> TypeGuard[LogMarker]:
    return isinstance(snapshot, tuple) and len(snapshot) == 5 and snapshot[0] == LOG_FORMAT


class PendingLog:
    """One sink partition's log of pending lines. ``step_id`` is the Bytewax step of the sink (its snapshots hold
    the markers)."""

    def __init__(self, recovery_dir: Path, step_id: str, resume_from: LogMarker | None = None) -> None:
        # A resumed partition keeps the log's name, so that the generation it resumed from is deleted once a
        # newer one is committed.
        name = resume_from[2] if resume_from is not None else None
        self._log = WindowLog(recovery_dir, step_id, name, PENDING_LOG_FOLDER)
        # Bytes the last save wrote.
        self.saved_bytes = 0

    def load(self, marker: LogMarker) -> list[str]:
        """The lines a marker refers to, in the order they were pending."""
        _, _, _, generation, seq = marker
        lines: list[str] = []
        for frame in self._log.replay(generation, seq):
            lines.extend(pickle.loads(frame))
        return lines

    def save(self, pending: list[str], taken_ns: int) -> PendingSnapshot:
        """The snapshot for ``pending``: a marker to a new generation holding it, or the empty list."""
        self._log.collect()
        if not pending:
            self.saved_bytes = 0
            return []
        self._log.write_generation(_frames(pending))
        self.saved_bytes = self._log.generation_bytes
        return self._log.marker(taken_ns)

    def close(self) -> None:
        self._log.close()


def _frames(lines: list[str]) -> Iterator[bytes]:
    # Pickled, not joined with newlines: a string field of a line may hold a newline.
    for start in range(0, len(lines), _LINES_PER_FRAME):
        yield pickle.dumps(lines[start : start + _LINES_PER_FRAME], protocol=pickle.HIGHEST_PROTOCOL)
