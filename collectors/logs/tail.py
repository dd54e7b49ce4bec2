"""File tail source for Bytewax: log files followed by glob, resumed exactly from Bytewax state.

Lifecycle contract:

- **Partitions.** One partition per ``[[logs.files]]`` input, keyed by the input's name. Bytewax partitions
  are fixed at start but files matching the globs come and go, so a partition owns every file its globs
  match, and its state holds one ``FileState`` per file.
- **Identity.** A file is its ``(st_dev, st_ino)``, not its path: a renamed file keeps its offset. Each file
  has a fingerprint, the digest of its inode number and its first line (its first 256 bytes if longer), taken
  once that line is complete, and checked again after a restart and whenever the file changes size: a
  reused inode, or content replaced in place, is not read from a stranger's offset.
- **Doc ids.** ``<file key>-<event start offset in hex>``, the file key being
  ``blake2b(f"{fingerprint}:{generation}")`` (64 bits): the same event read again, after a restart from an
  older snapshot, gets the same id, so Elasticsearch refuses it instead of duplicating. A file's ids share
  their prefix and rise with the offset: Elasticsearch checks each explicit id against the index, and that
  costs less for such ids than for random ones (BENCHMARKS.md, run L8). The inode number is part of the
  fingerprint because after a ``create`` rotation the new file starts at offset 0 too, and often with the
  same first line (a banner): without it the new file's events would take the ids of the old file's. A
  new file whose fingerprint another file has or had anyway (a freed inode reused for a file with the same
  header line; the same inode on another filesystem) takes a generation past theirs: the fingerprints of
  finished files are kept in the snapshot (the last 1,000), so a restart gives it the same generation.
- **Committed offset.** ``snapshot()`` records, per file, the offset just after the last line of the last
  event emitted whole: the start of a pending multiline event, or of a line whose newline has not arrived
  yet. A restart re-reads from there, so nothing is lost or emitted in halves; an event emitted before the
  snapshot is never re-read, one emitted after it is re-read with the same id.
- **Start position.** ``read_from`` ("start" or "end") applies to files found when a partition starts
  without state. Files that appear later, or after a restart with state, are read from the start.
- **Rotation by rename** (logrotate ``create``). The old inode stays open and is read to its end; it is
  forgotten once it is at EOF, at no globbed path, and quiet for ``rotate_wait`` (the writer may still be
  finishing a line). After a restart it is found again by scanning the directory of its last known path for
  its dev/ino (``app.log.1``), even if that name does not match the glob. The new file at the path is read
  from the start.
- **copytruncate.** Same inode, but smaller than what was read, or a different first line: ``generation``
  goes up and reading restarts at 0 with a new fingerprint, so the new content gets new ids. After a restart,
  also when the bytes just before the saved offset changed (``FileState.before_offset``): a file deleted and
  created again while not running, with its inode reused and the same header line.
- **Lines.** Split on ``\\n``, one trailing ``\\r`` stripped. A last line without its newline is *not*
  emitted while the file may still grow, even after a timeout: writers that buffer (stdout redirected to a
  file) flush in 4-8 KiB blocks, mid-line, minutes apart, and a timed flush would split each such line in
  two. Fluent Bit and Fluentd wait for the newline the same way. The partial line is emitted when the file
  is finished: forgotten after rotation or deletion, or truncated by copytruncate.
- **Multiline.** With ``multiline``, a line matching ``start_pattern`` (``re.search``: anchor it with ``^``)
  starts an event and other lines join the pending one with ``\\n``. The pending event is emitted when the
  next start line arrives or after ``flush_timeout`` without new data from the file; it is flagged
  "multiline" when it has more than one line. A late continuation line, after its event was flushed,
  becomes an event of its own.
- **Container logs** (``parser.kind = "cri"``, the files of Kubernetes' container runtimes, and ``"docker"``,
  Docker's json-file driver): a line the runtime split into partial records (CRI tag ``P``; Docker: a "log"
  without its newline, at 16 KiB) is one event, the contents joined, from its first record's offset. Each
  stream has its own run (a container may split a stdout and a stderr line at once). Lines of the other
  stream read meanwhile, whole or joined, are held and emitted after the older run, so that the committed
  offset (that run's start) never lies before an emitted event. A run left without its last record is
  emitted after a second without a record of its stream, as it is (CRI: still tagged ``P``), flagged
  "partial".
- **Size limit.** An event longer than ``max_event_bytes`` is cut there (on a UTF-8 character boundary) and
  flagged "truncated"; the rest of it is skipped. Files are read in chunks, and a line is never held in
  memory beyond the limit, however long it is: an overlong line is emitted as soon as it passes the limit.
- **Encoding.** UTF-8 (a byte-order mark at the file's start is left out of its first line), UTF-16 (LE or BE:
  lines end with the two bytes of ``\\n`` at an even offset, the byte-order mark is left out, an odd last byte
  waits for its pair) or a single-byte ``encoding`` (Latin-1, Windows-1252, ...: lines are split on the byte
  ``\\n``).
- **Never raises.** Invalid UTF-8 is replaced and flagged "invalid_utf8" (bytes another encoding has no
  character for: "invalid_encoding"); files that cannot be opened or
  read are logged (once) and retried at the next poll.
- **Open files.** Every followed file holds a descriptor. All inputs of a process together hold at most
  ``open_files_budget()`` (a share of the process's limit, which ``fleetwatch run`` raises to its hard limit
  as Go programs do): past it, new files wait, named in a warning, until followed files are finished. A glob
  that cannot read a directory (out of descriptors, permissions) returns nothing rather than failing: a
  followed file still at its path is therefore still matched, never taken for rotated away and read again.
- **Excluded paths.** A path the globs match and an ``exclude`` pattern too (fnmatch; by default the compressed
  files logrotate leaves, ``*.gz`` and the like) is not followed. A followed file renamed to such a path is
  still read to its end.
- **Polling.** Globs and file sizes are checked every ``poll_interval`` (glob + stat, no inotify), and
  ``next_awake`` sleeps until the next poll or multiline flush unless a batch hit its cap. A batch holds at
  most ``MAX_BATCH_LINES`` lines and ``MAX_BATCH_BYTES`` bytes, so the worker stays responsive; more after
  a wait for Bytewax (``collectors.polling``).
"""

from __future__ import annotations

import codecs
import contextlib
import fnmatch
import glob
import json
import logging
import os
import re
import resource
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import blake2b
from typing import NamedTuple

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from collectors.polling import batch_limit
from fleetwatch.config import FileInputConfig
from fleetwatch.record import LogLine
from flows import clock, health, lifecycle

log = logging.getLogger(__name__)

MAX_BATCH_LINES = 2000
# Encodings whose lines the tail splits two bytes at a time (FileInputConfig.encoding).
_WIDE_NEWLINES = ("utf-16-le", "utf-16-be")
# Container log files: how long a run of partial records waits for its last one when no more data comes (the
# runtime writes them together: only a stopped container leaves a run unfinished).
_PARTIAL_FLUSH_TIMEOUT = 1.0
MAX_BATCH_BYTES = 4 * 1024 * 1024
# After a wait for Bytewax (collectors.polling): what one second of a fast file holds.
MAX_BATCH_LINES_AFTER_WAIT = 40_000
MAX_BATCH_BYTES_AFTER_WAIT = 32 * 1024 * 1024
_CHUNK = 128 * 1024
_FINGERPRINT_BYTES = 256
# How many bytes before a file's saved offset its snapshot keeps a digest of (FileState.before_offset).
_BEFORE_OFFSET_BYTES = 64
# Fingerprints of finished files remembered per input, the oldest forgotten first. They are in every snapshot
# of the input (about 50 bytes each); a collision needs a reused inode and the same first line.
_FINISHED_KEPT = 1_000
# How far back from the end a "read_from = end" start looks for the last newline.
_END_LOOKBACK = 64 * 1024
# Default for rotate_wait: how long a rotated-away file at EOF is kept open for late writes.
ROTATE_WAIT = 5.0
# Descriptors left for all else a process opens: connections to the servers and from syslog clients, the
# recovery database, modules imported late. Out of descriptors, none of those works (nor the log line saying so).
_RESERVED_FDS = 256


def open_files_budget() -> int:
    """How many files the tails of this process may hold open together: the open-files limit less a reserve
    (a quarter of the limit, at least 256), at least 16."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - max(_RESERVED_FDS, soft // 4))


class _OpenFiles:
    """The descriptors held by every tail of this process (all inputs, all workers)."""

    lock = threading.Lock()
    held = 0

    @classmethod
    def reserve(cls) -> bool:
        with cls.lock:
            if cls.held >= open_files_budget():
                return False
            cls.held += 1
            return True

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.held -= 1


def _close(fd: int) -> None:
    _OpenFiles.release()
    with contextlib.suppress(OSError):
        os.close(fd)


@dataclass
class FileState:
    """The persisted position in one file."""

    # Last known path: where to look first after a restart (then in that directory, by dev/ino).
    path: str
    dev: int
    ino: int
    # Hex digest of the inode number and the first line (at most 256 bytes); "" until that line is complete.
    fingerprint: str = ""
    # How many bytes of the head the fingerprint covers.
    fingerprint_len: int = 0
    # Incremented on copytruncate, so content that starts again at offset 0 gets new ids.
    generation: int = 0
    # Just after the last line of the last event emitted whole.
    offset: int = 0
    # Hex digest of the bytes just before ``offset`` (at most 64): a file deleted and created again while not
    # running can get the same inode and the same first line (a header); its content up to the offset tells it
    # apart. "" when not known (offset 0, a snapshot of an older version).
    before_offset: str = ""
    # Container logs: the stream ("stdout"/"stderr") whose records after ``offset`` and starting before
    # ``skip_until`` are in a line already emitted (the offset is the start of the other stream's split line,
    # which was still waiting; see _Event.skip_stream). "" when there are none.
    skip_stream: str = ""
    skip_until: int = 0


@dataclass
class TailState:
    """A partition's snapshot: one entry per file it follows, including rotated files not yet finished, and the
    fingerprints of files it finished (see ``FileTailPartition._unique_generation``)."""

    files: list[FileState] = field(default_factory=list)
    # Fingerprint of a finished file -> the first generation a new file with that fingerprint may take.
    finished: dict[str, int] = field(default_factory=dict)


def file_key(fingerprint: str, generation: int) -> str:
    """The prefix of every id of one file generation (see the module docstring)."""
    return blake2b(f"{fingerprint}:{generation}".encode(), digest_size=8).hexdigest()


def doc_id(fingerprint: str, generation: int, offset: int) -> str:
    return f"{file_key(fingerprint, generation)}-{offset:x}"


def _fingerprint(ino: int, head: bytes) -> str:
    return blake2b(b"%d:" % ino + head, digest_size=16).hexdigest()


def cut_utf8(data: bytes, limit: int) -> bytes:
    """``data`` cut to at most ``limit`` bytes without splitting a UTF-8 character."""
    if len(data) <= limit:
        return data
    cut = limit
    # A continuation byte at the cut means its character started before: cut before that character.
    while cut > max(0, limit - 3) and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return data[:cut]


class FileTailSource(FixedPartitionedSource[list[LogLine], TailState]):
    """Tails the files of each configured input; one partition per input, each item a batch of lines.

    ``host_name`` is kept for the stages after the source (LogLine carries no host); it is not part of the
    ids. ``rotate_wait`` is how long a rotated-away file at EOF stays open for late writes.
    """

    def __init__(
        self,
        inputs: list[FileInputConfig],
        host_name: str | None = None,
        *,
        rotate_wait: float = ROTATE_WAIT,
        saturated: Callable[[], bool] = lambda: False,
    ) -> None:
        self.inputs = {cfg.name: cfg for cfg in inputs}
        self.host_name = host_name
        self.rotate_wait = rotate_wait
        # Backpressure: while a sink's buffer is above its high-water mark, no more lines are read (the
        # files are the buffer).
        self.saturated = saturated

    def list_parts(self) -> list[str]:
        return list(self.inputs)

    def build_part(self, step_id: str, for_part: str, resume_state: TailState | None) -> FileTailPartition:
        return FileTailPartition(
            self.inputs[for_part], resume_state, rotate_wait=self.rotate_wait, saturated=self.saturated
        )


class _Event:
    """A multiline event, or a run of a container's partial records, not emitted yet."""

    __slots__ = (
        "deferred",
        "deferred_bytes",
        "last",
        "lines",
        "nbytes",
        "nlines",
        "other",
        "skip_stream",
        "skip_until",
        "start",
        "stream",
        "truncated",
        "updated",
    )

    def __init__(self, start: int, line: bytes, truncated: bool, stream: bytes = b"", now: float = 0.0) -> None:
        self.start = start
        self.lines = [line]
        self.nbytes = len(line)
        # Lines seen, including those dropped after truncation.
        self.nlines = 1
        self.truncated = truncated
        # Container runs: the stream ("stdout"/"stderr") whose partial records these are, when the last of
        # them was read, and the events of the other stream read meanwhile (raw, start, truncated, partial),
        # held until the run ends: emitted before it, they would be past the committed offset (the run's
        # start), and read and counted again after a restart.
        self.stream = stream
        self.updated = now
        self.deferred: list[tuple[bytes, int, bool, bool]] = []
        self.deferred_bytes = 0
        # The other stream's run, when both streams split a line at once (a container writing long lines to
        # stdout and stderr); it started after this one, and its line is held with the others when it ends.
        self.other: _Event | None = None
        # Set on the other stream's run once this one was emitted first (ended, or flushed unfinished): that
        # run waits now, and the committed offset is its start, but this stream's records after it that start
        # before skip_until are in the emitted event. A restart reads them again and must leave them out, or
        # the line's end is stored a second time as an event of its own.
        self.skip_stream = b""
        self.skip_until = 0
        # Where the run's latest record starts.
        self.last = start


class _File:
    """A followed file: its persisted state, its open descriptor, and what was read beyond the state."""

    __slots__ = (
        "fd",
        "globbed",
        "globbed_path",
        "line_start",
        "mtime_ns",
        "partial",
        "pending",
        "quiet_since",
        "read_pos",
        "size",
        "skip_stream",
        "skip_until",
        "skipping",
        "source",
        "state",
        "tail_digest",
        "tail_offset",
    )

    def __init__(self, state: FileState, fd: int, size: int, now: float) -> None:
        self.state = state
        # The digest of the bytes before tail_offset, as the last snapshot took it (FileState.before_offset).
        self.tail_offset = state.offset
        self.tail_digest = state.before_offset
        self.fd = fd
        self.source = f"file:{state.path}"
        self.size = size
        # The modification time at the last check (0: not checked yet).
        self.mtime_ns = 0
        # Bytes before read_pos have been read; the current line starts at line_start, and its bytes read so
        # far are in partial (at most max_event_bytes + 1).
        self.read_pos = state.offset
        self.line_start = state.offset
        self.partial = bytearray()
        # The current line passed max_event_bytes and was handed on: drop the rest of it.
        self.skipping = False
        # Resumed from a snapshot whose offset was inside a container line already emitted: that line's records
        # of this stream are read again, and dropped (FileState.skip_stream, skip_until).
        self.skip_stream = state.skip_stream.encode("latin-1")
        self.skip_until = state.skip_until
        self.pending: _Event | None = None
        # At a path one of the globs matches (else rotated away or deleted).
        self.globbed = True
        # The path at which a glob last found it (None: not found by a glob yet, as a file of the state).
        self.globbed_path: str | None = None
        # Time of the last data read, or of the rotation: flush timeouts and rotate_wait count from it.
        self.quiet_since = now

    @property
    def key(self) -> tuple[int, int]:
        return (self.state.dev, self.state.ino)

    def set_path(self, path: str) -> None:
        self.state.path = path
        self.source = f"file:{path}"

    def committed(self) -> int:
        return self.pending.start if self.pending is not None else self.line_start


class FileTailPartition(StatefulSourcePartition[list[LogLine], TailState]):
    """Follows every file matched by one input's globs. See the module docstring for the contract."""

    def __init__(
        self,
        cfg: FileInputConfig,
        resume_state: TailState | None,
        *,
        rotate_wait: float,
        saturated: Callable[[], bool] = lambda: False,
    ) -> None:
        self._cfg = cfg
        self._saturated = saturated
        self._name = cfg.name
        self._limit = cfg.max_event_bytes
        # How long a line may be before the tail cuts it as it reads: a container runtime's record must be read
        # whole to be a record (Docker's closes with its stream and time, and escapes can make a 16 KiB part
        # six times longer), so for those kinds the event limit applies to the record's content instead.
        self._line_limit = self._limit if cfg.parser.kind not in _CONTAINER_FORMATS else max(self._limit, 256 * 1024)
        self._start = re.compile(cfg.multiline.start_pattern) if cfg.multiline else None
        self._container = _CONTAINER_FORMATS.get(cfg.parser.kind)
        self._encoding = codecs.lookup(cfg.encoding).name
        # UTF-16 files: a character is two bytes (a surrogate pair four), lines end with the two bytes of "\n" at
        # an even offset, and a file may start with its byte-order mark (left out of the first line).
        self._wide = self._encoding in _WIDE_NEWLINES
        self._newline = "\n".encode(self._encoding) if self._wide else b"\n"
        self._cr = "\r".encode(self._encoding) if self._wide else b"\r"
        # Lines may wait in a pending event: multiline, or the partial records of a container's log line.
        self._joins = self._start is not None or self._container is not None
        self._flush_after = (
            cfg.multiline.flush_timeout.total_seconds()
            if cfg.multiline
            else _PARTIAL_FLUSH_TIMEOUT
            if self._container is not None
            else 0.0
        )
        # A zero poll interval would make the worker spin.
        self._poll_every = max(cfg.poll_interval.total_seconds(), 0.005)
        self._rotate_wait = rotate_wait
        self._files: dict[tuple[int, int], _File] = {}
        # Paths that failed to open or stat: logged once until they work again.
        self._failing: set[str] = set()
        # Paths not opened at the last scan because the process's open-files budget was spent.
        self._waiting: set[str] = set()
        self._waited: set[str] = set()
        # Whether the globs last missed followed files that are still at their paths (unreadable directory).
        self._globs_missed = False
        # Files from the state that exist but cannot be opened now: kept in snapshots, retried at each poll.
        self._parked: list[FileState] = []
        self._out: list[LogLine] = []
        self._now_ns = time.time_ns()
        self._more = False
        self._turn = 0
        # While a sink is saturated this source does not read, and the window clock stands still.
        self._stall = clock.StallMark()
        now = time.monotonic()
        # Fingerprint of a finished file -> the next generation free for it (see _unique_generation).
        self._finished: dict[str, int] = {}
        if resume_state is not None:
            self._parked = list(resume_state.files)
            # (absent from snapshots of earlier versions)
            self._finished = dict(getattr(resume_state, "finished", {}))
        # Scan now, not at the first next_batch: "read_from = end" means the end as of the start.
        self._scan(now, from_end=resume_state is None and cfg.read_from == "end")
        self._next_poll = now + self._poll_every
        self._last_call = now
        health.set_ready(f"files:{cfg.name}", True)

    # -- opening files

    def _open(self, path: str) -> tuple[int, os.stat_result] | None:
        if not _OpenFiles.reserve():
            self._waiting.add(path)
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            _OpenFiles.release()
            if path not in self._failing:
                self._failing.add(path)
                log.warning("%s: cannot open %s: %s (retrying at every poll)", self._name, path, exc.strerror)
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            _close(fd)
            return None
        self._failing.discard(path)
        return fd, st

    def _resume(self, entry: FileState, now: float) -> bool:
        """Open a file of the state again; False if it exists but cannot be opened now (retry later)."""
        key = (entry.dev, entry.ino)
        if key in self._files:
            return True
        path = self._locate(entry)
        if path is None:
            log.warning(
                "%s: %s (inode %d) was deleted or moved away while not running; its unread rest is lost",
                self._name,
                entry.path,
                entry.ino,
            )
            self._remember_finished(entry)
            return True
        opened = self._open(path)
        if opened is None:
            return False
        fd, st = opened
        if (st.st_dev, st.st_ino) != key:  # replaced between the lookup and the open
            _close(fd)
            return False
        state = FileState(path, entry.dev, entry.ino, entry.fingerprint, entry.fingerprint_len, entry.generation)
        state.offset, state.before_offset = entry.offset, entry.before_offset
        state.skip_stream, state.skip_until = entry.skip_stream, entry.skip_until
        tf = _File(state, fd, st.st_size, now)
        self._files[key] = tf
        if st.st_size < entry.offset:
            self._restart_file(tf, f"truncated to {st.st_size} bytes while not running (copytruncate?)")
        elif entry.fingerprint and not self._same_head(tf):
            self._restart_file(tf, "first line changed while not running (copytruncate or inode reuse)")
        elif entry.before_offset and self._digest_before(tf, entry.offset) not in (entry.before_offset, None):
            # Same inode, same first line, at least as long: a new file all the same (deleted and created again,
            # its inode reused, starting with the same header), or the old one rewritten in place.
            self._restart_file(tf, "content before the saved offset changed while not running (a new file?)")
        else:
            log.info("%s: resuming %s at offset %d (generation %d)", self._name, path, entry.offset, entry.generation)
        return True

    @staticmethod
    def _locate(entry: FileState) -> str | None:
        """Where the file with the entry's dev/ino is now: its last known path, else a name in the same
        directory (rotated: ``app.log.1``, whether or not a glob matches it)."""
        try:
            st = os.stat(entry.path)
            if (st.st_dev, st.st_ino) == (entry.dev, entry.ino):
                return entry.path
        except OSError:
            pass
        return _find_near(entry.path, entry.dev, entry.ino)

    def _track_new(self, path: str, now: float, from_end: bool) -> None:
        opened = self._open(path)
        if opened is None:
            return
        fd, st = opened
        key = (st.st_dev, st.st_ino)
        if key in self._files or not stat.S_ISREG(st.st_mode):
            _close(fd)
            return
        state = FileState(path, st.st_dev, st.st_ino)
        tf = _File(state, fd, st.st_size, now)
        self._take_fingerprint(tf)
        if from_end and st.st_size:
            state.offset = tf.read_pos = tf.line_start = self._end_position(fd, st.st_size)
        self._files[key] = tf
        log.info("%s: opened %s (inode %d) at offset %d", self._name, path, st.st_ino, state.offset)

    def _end_position(self, fd: int, size: int) -> int:
        """Just after the last newline, so a line being written now is read whole rather than as a tail
        fragment; the end itself if the last ``_END_LOOKBACK`` bytes hold no newline."""
        n = min(size, _END_LOOKBACK)
        if self._wide:
            size -= size % 2  # (half a character at the end: read once it is whole)
            n = min(size, _END_LOOKBACK)
        try:
            tail = os.pread(fd, n, size - n)
        except OSError:
            return size
        nl = self._last_newline(tail)
        if nl >= 0:
            return size - len(tail) + nl + len(self._newline)
        return 0 if n == size else size

    def _last_newline(self, data: bytes) -> int:
        """Where the last newline of ``data`` (read from an even offset) starts, or -1."""
        nl = data.rfind(self._newline)
        while self._wide and nl > 0 and nl % 2:
            nl = data.rfind(self._newline, 0, nl + 1)
        return nl if not (self._wide and nl % 2) else -1

    def _cut(self, data: bytes, limit: int) -> bytes:
        """``data`` cut to at most ``limit`` bytes on a character boundary of the file's encoding."""
        if not self._wide:
            return cut_utf8(data, limit)
        if len(data) <= limit:
            return data
        cut = limit - limit % 2
        # A high surrogate last would be half a pair.
        unit = data[cut - 2 : cut]
        if len(unit) == 2 and 0xD8 <= (unit[1] if self._encoding == "utf-16-le" else unit[0]) <= 0xDB:
            cut -= 2
        return data[:cut]

    # -- fingerprints and truncation

    def _read_head(self, tf: _File, n: int) -> bytes | None:
        try:
            return os.pread(tf.fd, n, 0)
        except OSError as exc:
            log.warning("%s: cannot read %s: %s", self._name, tf.state.path, exc.strerror)
            return None

    def _take_fingerprint(self, tf: _File, final: bool = False) -> None:
        """Fingerprint the first line, or the first 256 bytes of a longer one. A shorter first line still
        being written is left for later (unless the file is ``final``): the fingerprint must not depend on
        when it was taken, or a file fingerprinted again after a restart would get other ids."""
        head = self._read_head(tf, _FINGERPRINT_BYTES)
        if not head:
            return
        nl = head.find(b"\n")
        if nl >= 0:
            head = head[: nl + 1]
        elif len(head) < _FINGERPRINT_BYTES and not final:
            return
        tf.state.fingerprint = _fingerprint(tf.state.ino, head)
        tf.state.fingerprint_len = len(head)
        self._unique_generation(tf)

    def _unique_generation(self, tf: _File) -> None:
        """A new file may have the fingerprint of another: its inode reused after a file was deleted and its
        first line the same (a header, a banner), or the same inode on another filesystem. Both would write
        the same ids, and Elasticsearch would keep the first file's events and refuse the second's as
        duplicates. Its generation goes past every other file's with that fingerprint, live or finished.
        The finished ones are in the snapshot, so a file fingerprinted again after a restart gets the same
        generation, and its events the same ids."""
        state = tf.state
        fingerprint = state.fingerprint
        others = [f.state for f in self._files.values() if f is not tf]
        live = [other.generation + 1 for other in others if other.fingerprint == fingerprint]
        state.generation = max(state.generation, self._finished.get(fingerprint, 0), *live)

    def _remember_finished(self, state: FileState) -> None:
        if not state.fingerprint:
            return
        finished = self._finished
        finished[state.fingerprint] = max(finished.pop(state.fingerprint, 0), state.generation + 1)
        if len(finished) > _FINISHED_KEPT:
            del finished[next(iter(finished))]

    def _digest_before(self, tf: _File, offset: int) -> str | None:
        """The digest of the (at most 64) bytes before ``offset``: "" at 0, None if unreadable now."""
        n = min(offset, _BEFORE_OFFSET_BYTES)
        if n == 0:
            return ""
        try:
            data = os.pread(tf.fd, n, offset - n)
        except OSError:
            return None
        return blake2b(data, digest_size=8).hexdigest()

    def _same_head(self, tf: _File) -> bool:
        head = self._read_head(tf, tf.state.fingerprint_len)
        if head is None:
            return True  # unreadable now: decide at a later poll rather than on an error
        return _fingerprint(tf.state.ino, head) == tf.state.fingerprint

    def _restart_file(self, tf: _File, why: str) -> None:
        """The content was replaced in place: finish what was read, then read again from 0 as a new
        generation with a new fingerprint, so the new content gets new ids."""
        self._finish(tf)
        state = tf.state
        state.generation += 1
        state.offset = tf.read_pos = tf.line_start = tf.tail_offset = 0
        state.fingerprint, state.fingerprint_len = "", 0
        state.before_offset = tf.tail_digest = ""
        tf.skip_stream, tf.skip_until = b"", 0
        self._take_fingerprint(tf)
        log.info(
            "%s: %s %s; reading it again from the start (generation %d)",
            self._name,
            tf.state.path,
            why,
            state.generation,
        )

    # -- polling

    def _scan(self, now: float, from_end: bool = False) -> None:
        """Match the globs: open new files, notice renames and rotations, check sizes and truncation, and
        forget rotated files that are done."""
        self._waited, self._waiting = self._waiting, set()
        if self._parked:
            # Before the globs: a file of the state must not be taken for a new one.
            self._parked = [entry for entry in self._parked if not self._resume(entry, now)]
        seen: dict[tuple[int, int], str] = {}
        exclude = self._cfg.exclude
        for pattern in self._cfg.paths:
            for path in sorted(glob.glob(pattern, recursive=True)):
                if exclude and any(fnmatch.fnmatchcase(path, excluded) for excluded in exclude):
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue  # gone since the glob
                if stat.S_ISREG(st.st_mode):
                    seen.setdefault((st.st_dev, st.st_ino), path)
        parked = {(entry.dev, entry.ino) for entry in self._parked}
        for key, path in seen.items():
            tf = self._files.get(key)
            if tf is None:
                if key not in parked:
                    self._track_new(path, now, from_end)
                    if key in self._files:
                        self._files[key].globbed_path = path
                continue
            if tf.state.path != path:
                log.info("%s: %s was renamed to %s", self._name, tf.state.path, path)
                tf.set_path(path)
            tf.globbed = True
            tf.globbed_path = path
        missed = 0
        for key, tf in list(self._files.items()):
            if tf.globbed and key not in seen:
                if tf.globbed_path is not None and _still_at(tf.globbed_path, key):
                    # The globs are fixed and matched this path before: a glob that lost a path which still
                    # names the same file could not read a directory (out of descriptors, permissions).
                    missed += 1
                else:
                    tf.globbed = False
                    tf.quiet_since = now
                    self._rotated_away(tf)
            self._check(tf, now)
        self._report_scan(missed)

    def _report_scan(self, missed: int) -> None:
        """Warn when files wait for the open-files budget, or the globs could not read a directory; once, until
        that changes."""
        if missed and not self._globs_missed:
            log.warning(
                "%s: the globs missed %d followed file(s) still at their paths (a directory could not be read: "
                "out of file descriptors, or permissions); they are still followed",
                self._name,
                missed,
            )
        self._globs_missed = missed > 0
        if self._waiting and not self._waited:
            log.warning(
                "%s: %d file(s) wait to be followed, such as %s: this process's tails hold %d open files, their "
                "budget under the open-files limit of %d; raise the limit (ulimit -n, systemd's LimitNOFILE) or "
                "narrow the globs. They are opened as followed files are finished",
                self._name,
                len(self._waiting),
                min(self._waiting),
                _OpenFiles.held,
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )
        elif self._waited and not self._waiting:
            log.info("%s: no more files wait for the open-files budget", self._name)

    def _rotated_away(self, tf: _File) -> None:
        new_path = _find_near(tf.state.path, tf.state.dev, tf.state.ino)
        if new_path == tf.state.path:
            log.info("%s: %s is not matched by the globs; reading it to its end", self._name, new_path)
        elif new_path is not None:
            log.info("%s: %s rotated to %s; reading it to its end", self._name, tf.state.path, new_path)
            tf.set_path(new_path)
        else:
            log.info("%s: %s was deleted or moved away; reading it to its end", self._name, tf.state.path)

    def _check(self, tf: _File, now: float) -> None:
        try:
            st = os.fstat(tf.fd)
        except OSError as exc:
            log.warning("%s: cannot stat %s: %s", self._name, tf.state.path, exc.strerror)
            return
        size, mtime_ns = st.st_size, st.st_mtime_ns
        changed = size != tf.size or mtime_ns != tf.mtime_ns
        if size < tf.read_pos:
            self._restart_file(tf, f"was truncated to {size} bytes (copytruncate?)")
        elif changed and tf.state.fingerprint and not self._same_head(tf):
            # Truncated and rewritten up to or past our position between two polls. The size alone misses a
            # rewrite to the very size the file had (lines of equal length); the modification time shows it.
            self._restart_file(tf, "has a new first line (truncated and rewritten)")
        elif not tf.state.fingerprint and size:
            self._take_fingerprint(tf)
        tf.size, tf.mtime_ns = size, mtime_ns
        if not tf.globbed and tf.read_pos >= size and now - tf.quiet_since >= self._rotate_wait:
            self._finish(tf)
            _close(tf.fd)
            del self._files[tf.key]
            self._remember_finished(tf.state)
            log.info("%s: finished %s (rotated away, read to its end)", self._name, tf.state.path)

    def _finish(self, tf: _File) -> None:
        """The file will not grow (forgotten or truncated): emit the pending event and the partial line."""
        if not tf.state.fingerprint:
            self._take_fingerprint(tf, final=True)
        if tf.partial and not tf.skipping:
            raw = bytes(tf.partial).removesuffix(self._cr)
            tf.partial.clear()
            self._line(tf, self._cut(raw, self._line_limit), tf.line_start, len(raw) > self._line_limit)
        self._emit_runs(tf)
        tf.partial.clear()
        tf.skipping = False
        tf.line_start = tf.read_pos

    # -- reading

    def _read(self, tf: _File, lines: int, nbytes: int) -> tuple[int, int]:
        """Read what the file has, within the budget; returns the lines and bytes consumed."""
        used_lines = used_bytes = 0
        while used_lines < lines and used_bytes < nbytes:
            try:
                chunk = os.pread(tf.fd, _CHUNK, tf.read_pos)
            except OSError as exc:
                log.warning("%s: cannot read %s: %s", self._name, tf.state.path, exc.strerror)
                break
            if not chunk:
                break
            if not tf.state.fingerprint:
                self._take_fingerprint(tf)
            tf.quiet_since = time.monotonic()
            consumed, n = self._consume(tf, chunk, lines - used_lines)
            used_lines += n
            used_bytes += consumed
            if consumed < len(chunk) or len(chunk) < _CHUNK:
                break  # line budget reached, or EOF for now
        tf.size = max(tf.size, tf.read_pos)
        return used_lines, used_bytes

    def _consume(self, tf: _File, chunk: bytes, max_lines: int) -> tuple[int, int]:
        """Split a chunk read at ``tf.read_pos`` into lines; returns the bytes consumed (all unless
        ``max_lines`` was reached: the rest is read again next time) and the lines completed. UTF-16: newlines
        at even offsets only (files are read from even offsets), an odd last byte left for the next read, the
        byte-order mark left out of the first line."""
        wide = self._wide
        if wide:
            chunk = chunk[: len(chunk) - len(chunk) % 2]
        newline, cr = self._newline, self._cr
        step, cr_len = len(newline), len(cr)
        limit = self._line_limit
        # Single UTF-8 lines (no multiline, no container records) are emitted inline: this loop is the hot path.
        single = not self._joins and self._encoding == "utf-8"
        out = self._out
        name, source, now_ns = self._name, tf.source, self._now_ns
        id_prefix = file_key(tf.state.fingerprint, tf.state.generation) + "-"
        base = tf.read_pos
        pos = n = 0
        end = len(chunk)
        while pos < end and n < max_lines:
            nl = chunk.find(newline, pos)
            if wide:
                while nl >= 0 and nl % 2:  # the newline's bytes across two other characters
                    nl = chunk.find(newline, nl + 1)
            if nl < 0:
                self._grow_partial(tf, chunk[pos:])
                pos = end
                break
            if tf.skipping:
                tf.skipping = False  # the overlong line ends here; its head was handed on already
            else:
                raw = chunk[pos:nl]
                if tf.partial:
                    raw = bytes(tf.partial) + raw
                    tf.partial.clear()
                if raw.endswith(cr):
                    raw = raw[:-cr_len]
                if tf.line_start == 0:
                    # A file's byte-order mark is not part of its first line (Windows programs write one).
                    if wide and raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                        raw = raw[2:]
                    elif raw[:3] == codecs.BOM_UTF8 and self._encoding == "utf-8":
                        raw = raw[3:]
                if len(raw) > limit:
                    self._line(tf, self._cut(raw, limit), tf.line_start, True)
                elif not single:
                    self._line(tf, raw, tf.line_start, False)
                else:
                    try:
                        text = raw.decode("utf-8")
                        flags: tuple[str, ...] = ()
                    except UnicodeDecodeError:
                        text = raw.decode("utf-8", errors="replace")
                        flags = ("invalid_utf8",)
                    out.append(LogLine(text, name, source, f"{id_prefix}{tf.line_start:x}", now_ns, flags))
            n += 1
            pos = nl + step
            tf.line_start = base + pos
        tf.read_pos += pos
        return pos, n

    def _grow_partial(self, tf: _File, data: bytes) -> None:
        if tf.skipping:
            return
        # One "\r" more than the limit: it may end a line exactly at the limit.
        room = self._line_limit + len(self._cr) - len(tf.partial)
        if len(data) <= room:
            tf.partial += data
            return
        # Too long: hand on its head now and skip the rest, rather than hold an unbounded line.
        tf.partial += data[:room]
        raw = self._cut(bytes(tf.partial), self._line_limit)
        tf.partial.clear()
        tf.skipping = True
        self._line(tf, raw, tf.line_start, True)

    def _line(self, tf: _File, raw: bytes, start: int, truncated: bool) -> None:
        """A complete line (or the head of an overlong one), starting at byte ``start``."""
        if self._container is not None:
            self._container_record(tf, raw, start, truncated)
            return
        if self._start is None:
            self._emit(tf, raw, start, truncated, 1)
            return
        pending = tf.pending
        if pending is None or self._start.search(raw.decode(self._encoding, errors="replace")):
            if pending is not None:
                self._emit_pending(tf)
            tf.pending = _Event(start, raw, truncated)
            return
        pending.nlines += 1
        if pending.truncated:
            return
        room = self._limit - pending.nbytes - len(self._newline)  # the "\n" that joins the lines
        if len(raw) > room or truncated:
            raw = self._cut(raw, max(room, 0))
            pending.truncated = True
            if not raw:
                return
        pending.lines.append(raw)
        pending.nbytes += len(raw) + len(self._newline)

    def _container_record(self, tf: _File, raw: bytes, start: int, truncated: bool) -> None:
        """A record of a container runtime's log file (``_CONTAINER_FORMATS``). The runtime splits a long line
        into partial records: their contents are joined, without separator, into one event at the first
        record's offset, written as one record. A record of the other stream between them is an event of its
        own; a line that is no record is passed on as it is (the parser stores it with ``parse_failure``)."""
        assert self._container is not None
        split, join = self._container
        record = split(raw)
        if record is None and join is _docker_join:
            compact = _docker_compact(raw)
            if compact is not None:
                raw, record = compact, split(compact)
        if record is not None and len(raw) > self._limit:
            # Past max_event_bytes: the content is cut, the record kept whole (so that it still is one).
            raw, truncated = _fit_record(raw, record, self._limit, join is _docker_join), True
        if record is not None and start < tf.skip_until and record.stream == tf.skip_stream:
            return  # read again after a restart: part of a line emitted before the snapshot (FileState.skip_stream)
        pending = tf.pending
        if pending is not None:
            run = None if record is None else pending if record.stream == pending.stream else pending.other
            if record is not None and run is not None:
                self._extend_run(run, record, truncated, join is _docker_join)
                run.last = start
                if not record.partial:
                    joined = join(run.lines[0], run.lines[1:], True)
                    if run is pending:
                        self._promote_other(tf, pending)
                        self._emit(tf, joined, pending.start, pending.truncated, 1)
                        self._emit_deferred(tf, pending)
                    else:
                        pending.other = None
                        self._hold(tf, pending, joined, run.start, run.truncated, False)
                return
            if record is not None and record.partial and pending.other is None:
                # The other stream split a line too: its run waits beside this one.
                pending.other = _Event(start, raw, truncated, record.stream, time.monotonic())
                return
            if record is not None and not record.partial:
                self._hold(tf, pending, raw, start, truncated, False)
                return
            # A line that is no record: the runs end unfinished.
            self._emit_runs(tf)
        if record is not None and record.partial:
            tf.pending = _Event(start, raw, truncated, record.stream, time.monotonic())
            return
        self._emit(tf, raw, start, truncated, 1)

    @staticmethod
    def _promote_other(tf: _File, emitted: _Event) -> None:
        """The other stream's run waits on alone once ``emitted`` is out: its start is the committed offset now,
        before ``emitted``'s last records, which a restart must not read into an event again."""
        tf.pending = emitted.other
        if tf.pending is not None:
            tf.pending.skip_stream, tf.pending.skip_until = emitted.stream, emitted.last + 1

    def _extend_run(self, run: _Event, record: _Record, truncated: bool, escaped: bool) -> None:
        """Adds a record's content to the run of its stream (cut at max_event_bytes)."""
        run.nlines += 1
        if not run.truncated:
            content = record.content
            room = self._limit - run.nbytes
            if len(content) > room or truncated:
                content = _cut_content(content, max(room, 0), escaped=escaped)
                run.truncated = True
            run.lines.append(content)
            run.nbytes += len(content)
        run.updated = time.monotonic()

    def _hold(self, tf: _File, pending: _Event, raw: bytes, start: int, truncated: bool, partial: bool) -> None:
        """An event of the other stream, read while ``pending`` waits: held until it ends, or, when too much is
        held already, emitted after the runs end unfinished."""
        if len(pending.deferred) < MAX_BATCH_LINES and pending.deferred_bytes + len(raw) <= MAX_BATCH_BYTES:
            pending.deferred.append((raw, start, truncated, partial))
            pending.deferred_bytes += len(raw)
            return
        self._emit_runs(tf)
        self._emit(tf, raw, start, truncated, 1, partial=partial)

    def _emit_deferred(self, tf: _File, pending: _Event) -> None:
        # Each started before the other stream's run that may still wait (tf.pending now): that run started
        # after them, and once it waits, every record of its stream is its own.
        for raw, start, truncated, partial in pending.deferred:
            self._emit(tf, raw, start, truncated, 1, partial=partial)

    def _emit_runs(self, tf: _File) -> None:
        """Every pending event, unfinished (both container runs, oldest first)."""
        while tf.pending is not None:
            self._emit_pending(tf)

    def _expire(self, tf: _File, now: float) -> None:
        """Ends the container runs (or the multiline event) that have waited ``flush_after`` for a line."""
        pending = tf.pending
        if pending is None:
            return
        other = pending.other
        if other is not None and now - other.updated >= self._flush_after and now - pending.updated < self._flush_after:
            assert self._container is not None
            pending.other = None
            joined = self._container[1](other.lines[0], other.lines[1:], False)
            self._hold(tf, pending, joined, other.start, other.truncated, True)
        elif now - self._quiet_since(tf, pending) >= self._flush_after:
            self._emit_pending(tf)
            self._expire(tf, now)  # the other stream's run, now the oldest, may have waited as long

    def _quiet_since(self, tf: _File, pending: _Event) -> float:
        """Since when a pending event has had no line: for a container run, no record of its own stream (the
        other stream's lines do not keep it waiting)."""
        if self._container is None:
            return tf.quiet_since
        return pending.updated if pending.other is None else min(pending.updated, pending.other.updated)

    def _emit_pending(self, tf: _File) -> None:
        pending = tf.pending
        if pending is None:
            return
        tf.pending = None
        if self._container is not None:
            # A run of partial records whose last record never came (the container stopped mid-line, or the
            # flush timeout): what there is, one line, flagged "partial". The other stream's run, if any, waits
            # on.
            self._promote_other(tf, pending)
            joined = self._container[1](pending.lines[0], pending.lines[1:], False)
            self._emit(tf, joined, pending.start, pending.truncated, 1, partial=True)
            self._emit_deferred(tf, pending)
            return
        raw = pending.lines[0] if len(pending.lines) == 1 else self._newline.join(pending.lines)
        self._emit(tf, raw, pending.start, pending.truncated, pending.nlines)

    def _emit(self, tf: _File, raw: bytes, start: int, truncated: bool, nlines: int, partial: bool = False) -> None:
        flags: tuple[str, ...] = ("truncated",) if truncated else ()
        if partial:
            flags += ("partial",)
        try:
            text = raw.decode(self._encoding)
        except UnicodeDecodeError:
            text = raw.decode(self._encoding, errors="replace")
            flags += ("invalid_utf8",) if self._encoding == "utf-8" else ("invalid_encoding",)
        if nlines > 1:
            flags += ("multiline",)
        state = tf.state
        self._out.append(
            LogLine(
                text, self._name, tf.source, doc_id(state.fingerprint, state.generation, start), self._now_ns, flags
            )
        )

    # -- Bytewax

    def next_batch(self) -> Iterable[list[LogLine]]:
        if lifecycle.stopping():
            # End of input: the last snapshot keeps each file's committed offset, and the next start reads
            # on from there.
            raise StopIteration
        # Every call counts, also a stalled one: only a wait for Bytewax may raise the read limit.
        now = time.monotonic()
        gap, self._last_call = now - self._last_call, now
        if self._saturated():
            self._stall.set(True)
            self._more = False
            return []
        self._stall.set(False)
        self._now_ns = time.time_ns()
        if now >= self._next_poll:
            self._scan(now)
            self._next_poll = now + self._poll_every
        lines = batch_limit(MAX_BATCH_LINES, MAX_BATCH_LINES_AFTER_WAIT, gap)
        nbytes = batch_limit(MAX_BATCH_BYTES, MAX_BATCH_BYTES_AFTER_WAIT, gap)
        files = list(self._files.values())
        # Start with a different file each time, so one busy file cannot starve the others.
        self._turn = (self._turn + 1) % max(len(files), 1)
        for tf in files[self._turn :] + files[: self._turn]:
            if lines <= 0 or nbytes <= 0:
                break
            if tf.read_pos < tf.size:
                used_lines, used_bytes = self._read(tf, lines, nbytes)
                lines -= used_lines
                nbytes -= used_bytes
        self._more = lines <= 0 or nbytes <= 0
        if self._joins:
            now = time.monotonic()
            for tf in files:
                self._expire(tf, now)
        out, self._out = self._out, []
        return [out] if out else []

    def next_awake(self) -> datetime | None:
        if self._more:
            clock.beat(time.monotonic())
            return None
        wake = self._next_poll
        if self._joins:
            for tf in self._files.values():
                if tf.pending is not None:
                    wake = min(wake, self._quiet_since(tf, tf.pending) + self._flush_after)
        now = time.monotonic()
        clock.beat(max(wake, now))
        return datetime.now(UTC) + timedelta(seconds=max(wake - now, 0.0))

    def snapshot(self) -> TailState:
        files = []
        for tf in self._files.values():
            s = tf.state
            committed = tf.committed()
            if committed != tf.tail_offset:  # (one short read per file that moved on, per epoch)
                digest = self._digest_before(tf, committed)
                tf.tail_offset, tf.tail_digest = committed, digest or ""
            # What a restart from the committed offset must leave out (_Event.skip_stream).
            skip, until = b"", 0
            if tf.pending is not None and tf.pending.skip_until > committed:
                skip, until = tf.pending.skip_stream, tf.pending.skip_until
            elif tf.skip_until > committed:
                skip, until = tf.skip_stream, tf.skip_until
            files.append(
                FileState(
                    s.path,
                    s.dev,
                    s.ino,
                    s.fingerprint,
                    s.fingerprint_len,
                    s.generation,
                    committed,
                    tf.tail_digest,
                    skip.decode("latin-1"),
                    until,
                )
            )
        files += [FileState(**vars(entry)) for entry in self._parked]
        return TailState(files, dict(self._finished))

    def close(self) -> None:
        self._stall.set(False)
        for tf in self._files.values():
            _close(tf.fd)
        self._files.clear()


# -- container log files


class _Record(NamedTuple):
    """What the tail needs of a container runtime's log record: its stream, whether the runtime split the line
    there (more records of it follow), and its content as it is written in the record."""

    stream: bytes
    partial: bool
    content: bytes


_CRI_STREAMS = (b"stdout", b"stderr")


def _cri_split(raw: bytes) -> _Record | None:
    """CRI (containerd, CRI-O): ``<time> <stream> <tags> <content>``; tag ``P`` is a partial record, ``F`` the
    last (tags are ``:``-separated)."""
    parts = raw.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in _CRI_STREAMS:
        return None
    return _Record(parts[1], parts[2].split(b":", 1)[0] == b"P", parts[3] if len(parts) == 4 else b"")


def _cri_join(first: bytes, rest: list[bytes], complete: bool) -> bytes:
    """The run as one record: the first, tagged ``F`` when the run is complete, then the others' contents."""
    if complete:
        time_, stream, _tags, *content = first.split(b" ", 3)
        first = b" ".join((time_, stream, b"F", *content))
    return first + b"".join(rest)


# Docker's json-file driver: {"log":"<line>\n","stream":"stdout","time":"..."} in this key order. The "log"
# value ends at this (a quote inside it is escaped), and a line the driver split at 16 KiB has no "\n".
_DOCKER_HEAD = b'{"log":"'
_DOCKER_LOG_END = b'","stream":"'


def _docker_split(raw: bytes) -> _Record | None:
    end = raw.find(_DOCKER_LOG_END)
    if not raw.startswith(_DOCKER_HEAD) or end < 0:
        return None
    stream_end = raw.find(b'"', end + len(_DOCKER_LOG_END))
    content = raw[len(_DOCKER_HEAD) : end]
    return _Record(raw[end + len(_DOCKER_LOG_END) : stream_end], not _ends_with_newline_escape(content), content)


def _docker_compact(raw: bytes) -> bytes | None:
    """A json-file record in another layout (spaces after the separators, keys in another order: the file as a
    tool wrote it back) in the driver's own, so that a line split into partial records is joined all the same.
    None when ``raw`` is no such record."""
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        record = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        return None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("log"), str)
        or not isinstance(record.get("stream"), str)
    ):
        return None
    ordered = {"log": record.pop("log"), "stream": record.pop("stream"), **record}
    try:
        return json.dumps(ordered, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate escaped in the record: kept escaped
        return json.dumps(ordered, separators=(",", ":")).encode()


def _ends_with_newline_escape(body: bytes) -> bool:
    """The JSON string body ends with the escape ``\\n`` (not with an escaped backslash then ``n``)."""
    if not body.endswith(b"\\n"):
        return False
    backslashes = len(body) - 1 - len(body[:-1].rstrip(b"\\"))
    return backslashes % 2 == 1


def _docker_join(first: bytes, rest: list[bytes], complete: bool) -> bytes:
    """The run as one record: the first record with the others' "log" contents after its own."""
    end = first.find(_DOCKER_LOG_END)
    return first[:end] + b"".join(rest) + first[end:]


def _fit_record(raw: bytes, record: _Record, limit: int, docker: bool) -> bytes:
    """A record longer than ``limit`` with its content cut so that the whole is at most ``limit`` bytes (or its
    content empty): a Docker record stays JSON."""
    content = record.content
    kept = _cut_content(content, max(len(content) - (len(raw) - limit), 0), escaped=docker)
    if docker:
        end = raw.find(_DOCKER_LOG_END)
        return raw[: len(_DOCKER_HEAD)] + kept + raw[end:]
    return raw[: len(raw) - len(content)] + kept  # CRI: the content ends the record


def _cut_content(content: bytes, limit: int, escaped: bool) -> bytes:
    """``content`` cut to at most ``limit`` bytes on a UTF-8 boundary, and, for a JSON string body, not inside
    an escape sequence (which would make the record no JSON)."""
    cut = cut_utf8(content, limit)
    if escaped:
        i = cut.rfind(b"\\", max(0, len(cut) - 6))
        if i >= 0:
            run = len(cut[: i + 1]) - len(cut[: i + 1].rstrip(b"\\"))  # backslashes ending at i
            if run % 2 == 1 and len(cut) - i < (6 if cut[i + 1 : i + 2] == b"u" else 2):
                cut = cut[:i]
    return cut


# Parser kinds whose files the tail reads record by record, joining split lines: how to read and join records.
_CONTAINER_FORMATS: dict[str, tuple[Callable[[bytes], _Record | None], Callable[[bytes, list[bytes], bool], bytes]]] = {
    "cri": (_cri_split, _cri_join),
    "docker": (_docker_split, _docker_join),
}


def _still_at(path: str, key: tuple[int, int]) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == key


def _find_near(path: str, dev: int, ino: int) -> str | None:
    """Where a file last seen at ``path`` is now: a name in that path's directory, or, when the path is a
    symbolic link (Kubernetes' /var/log/containers/*.log), in the directory of the file it points to, where the
    runtime rotates it."""
    directory = os.path.dirname(path)
    found = _find_inode(directory, dev, ino)
    if found is None:
        target_dir = os.path.dirname(os.path.realpath(path))
        if target_dir != os.path.realpath(directory or "."):
            found = _find_inode(target_dir, dev, ino)
    return found


def _find_inode(directory: str, dev: int, ino: int) -> str | None:
    """The path of the file with this dev/ino in ``directory``, if any."""
    try:
        with os.scandir(directory or ".") as entries:
            for entry in entries:
                try:
                    # inode() needs no extra system call on POSIX; stat() only for the candidate.
                    if entry.inode() == ino and entry.stat(follow_symlinks=False).st_dev == dev:
                        return entry.path
                except OSError:
                    continue
    except OSError:
        return None
    return None
