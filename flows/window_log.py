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
- once a generation has grown to several times the live state, the next generation is written beside it, a
  part of the state at each snapshot (``begin_generation``, ``next_base_part``, ``append_base``): written
  whole in one go, the state held the worker for about 0.35 s at 100,000 series, and for seconds at 1,000,000,
  with every reading and alert waiting. Meanwhile each frame of changes goes to both generations and the
  markers still refer to the current one, which stays complete on its own. The next one is complete on its own
  once every series has been written to it: each series' record replaces whatever the changes before it built,
  and the changes after it follow. Then the markers move to it. The first generation of a log, and the first
  after a resume, are still written whole at once;
- an older generation is deleted when no snapshot that Bytewax still keeps refers to it (Bytewax drops a key's
  older snapshots once a newer one is committed).

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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOG_FORMAT = "series-log-1"
# (format, the clock when taken, log name, generation, sequence number of the last frame)
LogMarker = tuple[str, int, str, int, int]

_FRAME = struct.Struct("<QQI")
# A new generation starts when the current one holds this many times the live state, and at least this much.
_COMPACT_FACTOR = 4
_COMPACT_MIN_BYTES = 4 << 20
# The next generation takes the state in this many parts, one a snapshot, of at least _BASE_PART_MIN keys (series,
# or alert states): at 100,000 series a part holds the worker for about 40 ms, where the whole state held it for
# about 0.35 s (BENCHMARKS.md run U). More parts would write more frames of changes twice (to both generations).
_BASE_PARTS = 8
_BASE_PART_MIN = 5_000
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
        # The last frame written to the current generation, which a marker names (frames written only to the
        # next generation come between).
        self.current_seq = 0
        self.generation_bytes = 0
        self._file: object = None
        self._fd = -1
        # The generation being written beside the current one (see begin_generation), its file, the keys its
        # state is written for, how many are written and the bytes of their parts.
        self.next_generation = -1
        self._next_fd = -1
        self._next_bytes = 0
        self._base_keys: list[Any] = []
        self._base_done = 0
        self.base_bytes = 0
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
            raise WindowLogError(f"state log {path} is missing; the snapshot refers to it") from exc
        pos, last = 0, None
        while pos + _FRAME.size <= len(data):
            frame_seq, length, crc = _FRAME.unpack_from(data, pos)
            start, end = pos + _FRAME.size, pos + _FRAME.size + length
            if frame_seq > seq:
                break
            if end > len(data) or zlib.crc32(data[start:end]) != crc:
                raise WindowLogError(f"state log {path}: frame {frame_seq} is damaged")
            last = frame_seq
            yield data[start:end]
            pos = end
        if last != seq:
            raise WindowLogError(f"state log {path} ends at frame {last}, the snapshot refers to frame {seq}")
        self.seq = self.current_seq = seq

    # -- writing

    def append(self, payload: bytes) -> int:
        """Append a frame of changes (to the next generation too, while one is being written); returns its
        sequence number."""
        if self._fd < 0:
            raise WindowLogError("append before a generation was started")
        self.seq += 1
        frame = self._frame(payload)
        self.generation_bytes += _write_synced(self._fd, frame)
        self.current_seq = self.seq
        if self._next_fd >= 0:
            self._next_bytes += _write_synced(self._next_fd, frame)
        return self.seq

    def start_generation(self, full_state: bytes) -> int:
        """Write the whole state as the first frame of a new generation; returns its sequence number."""
        return self.write_generation([full_state])

    def write_generation(self, payloads: Iterable[bytes]) -> int:
        """Write a new generation of one frame per payload, fsynced once at the end: a state that replaces the
        previous one whole at every snapshot, written in parts so that it is never joined into one large buffer.
        There must be at least one payload. Returns the last frame's sequence number, which a marker names."""
        self._abandon_next()
        self.generation = self._new_generation_number()
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = self._create(self.generation)
        self.generation_bytes = 0
        for payload in payloads:
            self.seq += 1
            self.generation_bytes += _write_all(self._fd, self._frame(payload))
        if not self.generation_bytes:
            raise WindowLogError("write_generation without a payload")
        os.fsync(self._fd)
        self.current_seq = self.seq
        self._sync_directory()
        self._next_collect = 0.0
        return self.seq

    # -- the next generation, written a part at a time

    @property
    def writing_next(self) -> bool:
        return self._next_fd >= 0

    def begin_generation(self, keys: list[Any]) -> None:
        """Start the next generation beside the current one, for the state of ``keys`` as it stands. The
        caller writes the state into it a part at a time: the keys of ``next_base_part``, as one frame to
        ``append_base``. Meanwhile ``append`` writes each frame of changes to both generations, and the markers
        refer to the current one; the last part makes the next generation the current one."""
        if self._fd < 0:
            raise WindowLogError("begin_generation before a generation was started")
        self._abandon_next()
        self.next_generation = self._new_generation_number()
        self._next_fd = self._create(self.next_generation)
        self._next_bytes = self.base_bytes = self._base_done = 0
        self._base_keys = keys

    def next_base_part(self) -> list[Any]:
        """The keys whose state the next ``append_base`` holds."""
        keys, done = self._base_keys, self._base_done
        part = keys[done : done + max(_BASE_PART_MIN, -(-len(keys) // _BASE_PARTS))]
        self._base_done += len(part)
        return part

    def append_next(self, payload: bytes) -> None:
        """Write a frame to the next generation only that is not a part of the state: one its parts and the
        frames of changes after it refer to (the windows' series numbers)."""
        if self._next_fd < 0:
            raise WindowLogError("append_next without begin_generation")
        self.seq += 1
        frame_bytes = _write_synced(self._next_fd, self._frame(payload))
        self._next_bytes += frame_bytes
        self.base_bytes += frame_bytes

    def append_base(self, payload: bytes) -> bool:
        """Write a part of the state to the next generation only. True when it was the last part: the next
        generation is then the current one (``base_bytes`` is the size of its state)."""
        if self._next_fd < 0:
            raise WindowLogError("append_base without begin_generation")
        self.append_next(payload)
        if self._base_done < len(self._base_keys):
            return False
        self._finish_generation()
        return True

    def _finish_generation(self) -> None:
        """The next generation holds every key: it becomes the current one, and the markers refer to it."""
        self._base_keys = []
        self._sync_directory()
        os.close(self._fd)
        self._fd, self._next_fd = self._next_fd, -1
        self.generation, self.next_generation = self.next_generation, -1
        self.generation_bytes = self._next_bytes
        self.current_seq = self.seq
        self._next_collect = 0.0

    def _abandon_next(self) -> None:
        # No marker refers to a generation left unfinished. (One left by a crash is deleted by collect, once the
        # markers refer to a later generation.)
        if self._next_fd >= 0:
            os.close(self._next_fd)
            self.path(self.next_generation).unlink(missing_ok=True)
            self._next_fd, self.next_generation = -1, -1
            self._base_keys = []

    def _new_generation_number(self) -> int:
        existing = [int(p.suffix[1:]) for p in self.directory.glob(f"{self.name}.*") if p.suffix[1:].isdigit()]
        return max([self.generation, self.next_generation, *existing]) + 1

    def _create(self, generation: int) -> int:
        return os.open(self.path(generation), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)

    def _sync_directory(self) -> None:
        # The directory entry of a new file must be as durable as its contents.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def needs_new_generation(self, live_bytes: int) -> bool:
        return self.generation_bytes > max(_COMPACT_FACTOR * live_bytes, _COMPACT_MIN_BYTES)

    def marker(self, taken_ns: int) -> LogMarker:
        return (LOG_FORMAT, taken_ns, self.name, self.generation, self.current_seq)

    def _frame(self, payload: bytes) -> bytes:
        return _FRAME.pack(self.seq, len(payload), zlib.crc32(payload)) + payload

    def close(self) -> None:
        self._abandon_next()
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
        referenced = referenced_logs(self.recovery_dir, self.step_id) or []
        return [generation for name, generation in referenced if name == self.name]


def _write_synced(fd: int, frame: bytes) -> int:
    """Write a whole frame and fsync it; returns its length."""
    _write_all(fd, frame)
    os.fsync(fd)
    return len(frame)


def _write_all(fd: int, frame: bytes) -> int:
    view = memoryview(frame)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    return len(frame)


def referenced_logs(recovery_dir: Path, step_id: str) -> list[tuple[str, int]] | None:
    """(log name, generation) of every window state log marker in Bytewax's store for ``step_id``; None when a
    part of the store cannot be read, so that nothing is taken for unreferenced (and deleted) on a guess."""
    found = []
    unreadable = False
    for part in sorted(recovery_dir.glob("part-*.sqlite3")):
        connection = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5)
        try:
            for (blob,) in connection.execute("SELECT ser_change FROM snaps WHERE step_id = ?", (step_id,)):
                snapshot = pickle.loads(blob) if blob is not None else None
                if isinstance(snapshot, tuple) and snapshot[:1] == (LOG_FORMAT,):
                    found.append((str(snapshot[2]), int(snapshot[3])))
        except sqlite3.Error as exc:
            # Not fatal here: an old generation stays until the next check.
            log.warning("window state log: cannot read %s to find superseded generations: %s", part, exc)
            unreadable = True
        finally:
            connection.close()
    return None if unreadable else found


def remove_unreferenced(recovery_dir: Path, step_id: str, folder: str = "window-log") -> int:
    """At start, before the dataflow runs: delete the log files in ``folder`` that no stored snapshot of
    ``step_id`` can resume from (logs of runs that died before their first commit, generations left behind by
    a crash, logs of keys Bytewax discarded). Returns how many."""
    directory = recovery_dir / folder
    if not directory.is_dir():
        return 0
    referenced = referenced_logs(recovery_dir, step_id)
    if referenced is None:
        # A store that cannot be read now (damaged, locked by a backup) says nothing about what is unreferenced:
        # deleting on that guess took every state log with it, and the state was lost even once the store was
        # put back from a backup. The start goes on to the store's own check.
        log.warning("state logs in %s left in place: the recovery store cannot be read", directory)
        return 0
    oldest: dict[str, int] = {}
    for name, generation in referenced:
        oldest[name] = min(generation, oldest.get(name, generation))
    removed = 0
    for path in directory.iterdir():
        name, _, suffix = path.name.rpartition(".")
        if not suffix.isdigit() or int(suffix) < oldest.get(name, 1 << 62):
            path.unlink()
            removed += 1
    return removed
