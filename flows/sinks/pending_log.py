"""Where a store sink's snapshot keeps what the store does not have yet, when recovery is on.

A sink's snapshot holds the items the epoch produced and the store has not acknowledged (``pending_for_epoch``),
to be written again on resume. At fleet scale a window boundary hands the InfluxDB sink a line per series, and
InfluxDB takes seconds to store them: at 100,000 series the snapshots of those seconds held 90,000 to 140,000 lines
(20 to 31 MB). Handed to Bytewax as a list, each was pickled whole into one buffer and written to its SQLite store, and
the process's peak RSS rose by about 65 MB at every boundary (BENCHMARKS.md run AD). The Elasticsearch sink's
snapshot holds up to 10,000 log documents while Elasticsearch is slow, each carrying its message and fields.

So the snapshot writes the items into a file of its own beside Bytewax's partitions instead, a chunk of items per
frame, and hands Bytewax a marker of a few bytes. Each snapshot writes a new generation of the log (the pending set
replaces the previous one whole, and shrinks as the store catches up); ``WindowLog`` supplies the frames, the
fsync before the marker is returned, the replay of a marker, and the deletion of generations no stored snapshot
refers to. An empty pending set needs no file: the snapshot is an empty list. Each sink has a folder of its own:
at start, ``remove_unreferenced`` deletes every file of a folder that no stored snapshot of its step refers to.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeGuard, TypeVar

from flows.window_log import LOG_FORMAT, LogMarker, WindowLog

# The InfluxDB sink's folder (the name predates the Elasticsearch sink's log).
PENDING_LOG_FOLDER = "sink-log"
# Lines per frame: about 1 MB of InfluxDB lines, so writing a snapshot never holds more than that at once.
LINES_PER_FRAME = 4096

T = TypeVar("T")
PendingSnapshot = list[T] | LogMarker


def is_marker(snapshot: object) -> TypeGuard[LogMarker]:
    return isinstance(snapshot, tuple) and len(snapshot) == 5 and snapshot[0] == LOG_FORMAT


class PendingLog(Generic[T]):
    """One sink partition's log of pending items (anything picklable: lines, documents). ``step_id`` is the Bytewax
    step of the sink (its snapshots hold the markers), and ``folder`` the sink's own folder in the recovery
    directory."""

    def __init__(
        self,
        recovery_dir: Path,
        step_id: str,
        resume_from: LogMarker | None = None,
        folder: str = PENDING_LOG_FOLDER,
        items_per_frame: int = LINES_PER_FRAME,
    ) -> None:
        # A resumed partition keeps the log's name, so that the generation it resumed from is deleted once a
        # newer one is committed.
        name = resume_from[2] if resume_from is not None else None
        self._log = WindowLog(recovery_dir, step_id, name, folder)
        self._items_per_frame = items_per_frame
        # Bytes the last save wrote.
        self.saved_bytes = 0

    def load(self, marker: LogMarker) -> list[T]:
        """The items a marker refers to, in the order they were pending."""
        _, _, _, generation, seq = marker
        items: list[T] = []
        for frame in self._log.replay(generation, seq):
            items.extend(pickle.loads(frame))
        return items

    def save(self, pending: list[T], taken_ns: int) -> PendingSnapshot[T]:
        """The snapshot for ``pending``: a marker to a new generation holding it, or the empty list."""
        self._log.collect()
        if not pending:
            self.saved_bytes = 0
            return []
        self._log.write_generation(_frames(pending, self._items_per_frame))
        self.saved_bytes = self._log.generation_bytes
        return self._log.marker(taken_ns)

    def close(self) -> None:
        self._log.close()


def resume_pending(
    sink: str,
    recovery_dir: Path | None,
    step_id: str,
    resume_state: PendingSnapshot[T] | None,
    folder: str = PENDING_LOG_FOLDER,
    items_per_frame: int = LINES_PER_FRAME,
) -> tuple[PendingLog[T] | None, list[T]]:
    """For a sink partition's ``build_part``: its log (with recovery on) and the items its snapshot left pending.
    ``resume_state`` is a marker into the log, or a list (a snapshot without the log, or by an earlier fleetwatch);
    ``sink`` names the sink in errors."""
    if is_marker(resume_state):
        if recovery_dir is None:
            raise ValueError(f"{sink} snapshot that refers to the sink's log needs the recovery directory")
        pending_log: PendingLog[T] = PendingLog(recovery_dir, step_id, resume_state, folder, items_per_frame)
        return pending_log, pending_log.load(resume_state)
    if resume_state is not None and not isinstance(resume_state, list):
        raise ValueError(f"{sink} snapshot of an unknown format {resume_state[0]!r}")
    if recovery_dir is None:
        return None, resume_state or []
    return PendingLog(recovery_dir, step_id, None, folder, items_per_frame), resume_state or []


def _frames(items: list[T], per_frame: int) -> Iterator[bytes]:
    # Lines are pickled too, not joined with newlines: a string field of a line may hold a newline.
    for start in range(0, len(items), per_frame):
        yield pickle.dumps(items[start : start + per_frame], protocol=pickle.HIGHEST_PROTOCOL)
