"""The window state's change log: what a windows snapshot writes instead of the whole state.

Bytewax keeps one snapshot per state key, written whole at every epoch in which the key was touched. For the
windows of a shard that is every series the shard holds (about 110 bytes each) at every epoch: at 100,000
series, 11 MB an epoch pickled and written to SQLite, when only the fifth of the series that had a reading
changed. So the cost of recovery grew with the number of series, not with the rate of readings.

The windows keep their state in a log of their own instead, beside Bytewax's recovery partitions:

- each snapshot appends one frame holding only the series that changed since the previous frame (a forgotten
  series as a tombstone), and hands Bytewax a small marker: the log's name, its generation and the frame's
  sequence number. Bytewax commits the marker with the epoch, as it commits any state;
- on resume, the generation in the marker is replayed up to that frame. Frames after it were written for
  epochs that never committed, and are ignored;
- once a generation has grown to several times the live state, the whole state is written as the first frame
  of the next generation. An older generation is deleted when no snapshot that Bytewax still keeps refers to
  it (Bytewax drops a key's older snapshots once a newer one is committed).

A frame is its sequence number (u64), payload length (u64) and the payload's CRC-32 (u32), then the payload:
series records as ``flows.windows`` encodes them. Each frame is flushed and fsynced before its marker is
returned, so the log is at least as durable as the SQLite commit that refers to it.
"""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOG_FORMAT = "series-log-1"
# (format, the clock when taken, log name, generation, sequence number of the last frame)
LogMarker = tuple[str, int, str, int, int]

_FRAME = struct.Struct("<QQI")
# A new generation starts when the current one holds this many times the live state, and at least this much.
_COMPACT_FACTOR = 4
_COMPACT_MIN_BYTES = 4 << 20
# How often superseded generations are looked for in Bytewax's store while some are waiting for deletion.
_COLLECT_EVERY_S = 5.0


class WindowLogError(RuntimeError):
    """The log a snapshot refers to is missing or damaged: the state it holds cannot be restored."""


class WindowLog:
    """One stateful logic's log: a windows shard's, or a key's alert states at fleet scale. ``step_id`` is the
    Bytewax step whose snapshots hold the markers (for example ``fleetwatch.windows``); ``recovery_dir`` holds
    Bytewax's partitions, the log goes in ``folder`` inside."""

    def __init__(self, recovery_dir: Path, step_id: str, name: str | None = None, folder: str = "window-log") -> None:
        self.recovery_dir = recovery_dir
        self.directory = recovery_dir / folder
        self.directory.mkdir(parents=True, exist_ok=True)
        self.step_id = step_id
        self.name = name or uuid.uuid4().hex
        self.generation = -1
        self.seq = 0
        self.generation_bytes = 0
        self._file: object = None
        self._fd = -1
        self._next_collect = 0.0

    # -- reading

    def path(self, generation: int) -> Path:
        return self.directory / f"{self.name}.{generation}"

    def replay(self, generation: int, seq: int) -> Iterator[bytes]:
        """The payloads of ``generation`` up to and including frame ``seq``, in order."""
        path = self.path(generation)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise WindowLogError(f"window state log {path} is missing; the snapshot refers to it") from exc
        pos, last = 0, None
        while pos + _FRAME.size <= len(data):
            frame_seq, length, crc = _FRAME.unpack_from(data, pos)
            start, end = pos + _FRAME.size, pos + _FRAME.size + length
            if frame_seq > seq:
                break
            if end > len(data) or zlib.crc32(data[start:end]) != crc:
                raise WindowLogError(f"window state log {path}: frame {frame_seq} is damaged")
            last = frame_seq
            yield data[start:end]
            pos = end
        if last != seq:
            raise WindowLogError(f"window state log {path} ends at frame {last}, the snapshot refers to frame {seq}")
        self.seq = seq

    # -- writing

    def append(self, payload: bytes) -> int:
        """Append a frame of changes; returns its sequence number."""
        if self._fd < 0:
            raise WindowLogError("append before a generation was started")
        self.seq += 1
        self._write(payload)
        return self.seq

    def start_generation(self, full_state: bytes) -> int:
        """Write the whole state as the first frame of a new generation; returns its sequence number."""
        previous = self.generation
        existing = [int(p.suffix[1:]) for p in self.directory.glob(f"{self.name}.*") if p.suffix[1:].isdigit()]
        self.generation = max([previous, *existing]) + 1
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path(self.generation), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self.generation_bytes = 0
        self.seq += 1
        self._write(full_state)
        # The directory entry of the new file must be as durable as its contents.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._next_collect = 0.0
        return self.seq

    def needs_new_generation(self, live_bytes: int) -> bool:
        return self.generation_bytes > max(_COMPACT_FACTOR * live_bytes, _COMPACT_MIN_BYTES)

    def marker(self, taken_ns: int) -> LogMarker:
        return (LOG_FORMAT, taken_ns, self.name, self.generation, self.seq)

    def _write(self, payload: bytes) -> None:
        frame = _FRAME.pack(self.seq, len(payload), zlib.crc32(payload)) + payload
        view = memoryview(frame)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self.generation_bytes += len(frame)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- deleting superseded generations

    def collect(self) -> None:
        """Delete this log's generations that no snapshot in Bytewax's store refers to any more. Checked at most
        every few seconds, and only while an older generation is on disk."""
        now = time.monotonic()
        if now < self._next_collect:
            return
        self._next_collect = now + _COLLECT_EVERY_S
        older = [
            p
            for p in self.directory.glob(f"{self.name}.*")
            if p.suffix[1:].isdigit() and int(p.suffix[1:]) < self.generation
        ]
        if not older:
            self._next_collect = float("inf")
            return
        referenced = self._referenced_generations()
        if not referenced:
            return  # no snapshot of this log committed yet: the generation it will refer to is not known
        oldest_needed = min(referenced)
        for path in older:
            if int(path.suffix[1:]) < oldest_needed:
                path.unlink(missing_ok=True)

    def _referenced_generations(self) -> list[int]:
        """Generations of this log that Bytewax's stored snapshots (committed, or written for an epoch still
        in progress) refer to."""
        return [
            generation for name, generation in referenced_logs(self.recovery_dir, self.step_id) if name == self.name
        ]


def referenced_logs(recovery_dir: Path, step_id: str) -> list[tuple[str, int]]:
    """(log name, generation) of every window state log marker in Bytewax's store for ``step_id``."""
    found = []
    for part in sorted(recovery_dir.glob("part-*.sqlite3")):
        connection = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5)
        try:
            for (blob,) in connection.execute("SELECT ser_change FROM snaps WHERE step_id = ?", (step_id,)):
                snapshot = pickle.loads(blob) if blob is not None else None
                if isinstance(snapshot, tuple) and snapshot[:1] == (LOG_FORMAT,):
                    found.append((str(snapshot[2]), int(snapshot[3])))
        except sqlite3.Error as exc:
            # Not fatal: an old generation stays until the next check.
            log.warning("window state log: cannot read %s to find superseded generations: %s", part, exc)
        finally:
            connection.close()
    return found


def remove_unreferenced(recovery_dir: Path, step_id: str, folder: str = "window-log") -> int:
    """At start, before the dataflow runs: delete the log files in ``folder`` that no stored snapshot of
    ``step_id`` can resume from (logs of runs that died before their first commit, generations left behind by
    a crash, logs of keys Bytewax discarded). Returns how many."""
    directory = recovery_dir / folder
    if not directory.is_dir():
        return 0
    oldest: dict[str, int] = {}
    for name, generation in referenced_logs(recovery_dir, step_id):
        oldest[name] = min(generation, oldest.get(name, generation))
    removed = 0
    for path in directory.iterdir():
        name, _, suffix = path.name.rpartition(".")
        if not suffix.isdigit() or int(suffix) < oldest.get(name, 1 << 62):
            path.unlink()
            removed += 1
    return removed
