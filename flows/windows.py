"""Event-time windows over every series, as one Bytewax stateful operator per shard of series.

Why not one ``fold_window`` per series: that costs a Python call per reading per operator and wakes the
runtime per series and window; at fleet rates the per-item overhead is the bottleneck. Here a shard's logic
receives whole lists of readings and keeps, per series:

- its own event clock, as Bytewax's ``EventClock`` does per key: the watermark is the newest event time seen
  for the series minus the allowed lateness, advanced by wall time while no newer reading arrives (so
  windows close when a device goes quiet); it never moves back, so a closed window never opens again; it
  does not follow a reading stamped ahead of the present (wall time);
  time the flow spent stalled (on a store, or unable to complete epochs) does not count (``flows.clock``);
- its open windows, each holding the values it has seen (quantiles are exact).

A window closes when the series' watermark passes its end; it is then emitted once as an ``Aggregate``.

**Late policy.** A reading whose window (for some window length) has already closed is *late* for that
length: it is counted per window length and the reading is emitted raw in ``WindowResult.late``, so the
pipeline stores it in the ``<measurement>_late`` measurement. It is still added to the windows it belongs to
that are open (a longer window may still be open). Nothing is dropped silently.

Statistics are computed at close from the stored values with order-independent arithmetic (``math.fsum``,
sorting, ties broken by value), so any arrival order (1 worker or many) gives bit-identical aggregates.

**Nested windows.** A tumbling window whose length is a multiple of the shortest tumbling length (a *nesting*
window: a 1 min window holds six 10 s windows, all aligned to the Unix epoch) is made from the shortest length's
windows (its *base* windows): a reading is added to its base window only, and a base window's values go to its
nesting windows when it closes. At 100,000 series, where each window is a few cache misses away, adding every
reading to its 1 min window as well cost 0.25 µs of the 1.73 µs a reading took in the window step (BENCHMARKS.md,
run AO). The statistics are order-independent, so the aggregates are the same, bit for bit. A reading late for its
base window but not for a nesting one is added to the nesting window directly; a nesting window closes after its
base windows (``WindowLogic._close_base_windows``), and one written early includes its open base windows.
"""

from __future__ import annotations

import heapq
import logging
import math
import pickle
import struct
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, Final, NamedTuple

from bytewax.operators import StatefulBatchLogic

from fleetwatch.labels import duration_label, duration_ns
from fleetwatch.log_throttle import LogThrottle
from fleetwatch.record import Reading, new_tuple
from flows import clock as pipeline_clock
from flows import health, lifecycle
from flows.window_log import LOG_FORMAT, LogMarker, WindowLog

log = logging.getLogger(__name__)

_NO_TIME: Final = -9_223_372_036_854_775_808  # -(2**63)
# The present of a batch whose readings may all move their series' clocks (replays of logs written before a reading
# stamped ahead of the present was kept from moving it, see WindowLogic._add).
_NO_PRESENT: Final = 9_223_372_036_854_775_807  # 2**63 - 1
_NO_END: Final = 9_223_372_036_854_775_807  # 2**63 - 1
# Series without open windows are forgotten after an hour of silence; checked once a minute.
_FORGET_NS: Final = 3600 * 1_000_000_000
# Window deadlines are kept in buckets of this width: a window closes at most this much after its deadline.
_DUE_BUCKET_NS: Final = 50_000_000
_SWEEP_EVERY_NS: Final = 60 * 1_000_000_000
# Windows closed by one callback at most. At fleet scale a window boundary is due for every series at once
# (100,000 windows and more); closed in one go, that held the worker for seconds, and nothing was read
# meanwhile. The rest stay due, and the step is called back shortly (_YIELD_NS), after the input. A round must
# be short, because around an epoch's end Bytewax still runs about twenty of them (each with the steps after
# it: InfluxDB lines, alert rules) before the input's next turn. At 100,000 series with an alert rule on every
# window, a round of 1,000 took 20-40 ms, so reading paused for 0.4-0.8 s there, and alerts waited as long;
# with 500, the alerts' p99 went from 0.8-0.9 s to about 0.5 s (BENCHMARKS.md, run P). With 10,000 a round,
# reading had paused for 2-4 s.
_CLOSE_PER_CALL: Final = 500
# When closes are still due after a callback (its budget ran out), the step asks to be called back this much
# later rather than at the overdue moment. Bytewax calls a step whose notify_at is in the past again at once;
# it ran about twenty rounds in a row at every epoch's end, and more around it, before it polled the input
# again: at a fleet boundary reading paused for 0.4-1.5 s (and with it every alert), and the batch read
# afterwards was large enough to pause it again. A wake-up slightly ahead lets the input run between rounds.
_YIELD_NS: Final = 5_000_000
# A window is written early (WindowLogic(write_early=True), the pipeline's default): once a fraction of its
# allowed lateness has passed, the step formats its line and hands it to the store, in rounds, while the rest of
# the lateness runs (see WindowLogic._write_early). Dashboards then see a window a fraction of the lateness after its
# end instead of after all of it, and at a fleet boundary the store takes the lines over the lateness instead of
# in one burst after it. A reading that comes afterwards, within the lateness, marks the window changed, and its
# close writes it again: same series and timestamp, so the store keeps the final values (as a replay after a
# restart does). The close always computes the aggregate (about 2 µs; it is what alert rules see), and formats
# the line (about 7 µs of eleven statistics) only for a window not written early, or changed since: a closing
# round's budget counts a window written early as a third of one formatted at its close. One thing an overwrite
# cannot do is remove a field: if a late reading takes a window's sum or stddev beyond a double (values near
# 1e308), the value written early stays in InfluxDB beside the final count, min, max and quantiles.
_FORMAT_COST: Final = 3
_CLOSE_UNITS: Final = _CLOSE_PER_CALL * _FORMAT_COST
# Windows written early by one callback at most: a boundary of 100,000 windows is written within 2 s of
# lateness, and a round (about 12 ms) leaves the input its turns.
_EARLY_PER_CALL: Final = 1_000
# Writing early starts this fraction of the allowed lateness after the window's end, when the readings that
# were on their way at the end (in the broker, in the flow) have been added; a reading after that costs the
# window a second write. Below _EARLY_MIN_LATENESS_NS of lateness every window is written at its close.
_EARLY_START_FRACTION: Final = 8
_EARLY_MIN_LATENESS_NS: Final = 200_000_000
# _Window.written: not written yet; written early and unchanged since; written early and changed since (the bits
# of _WRITE_STATE); and two flags of a base window (see Nested windows, at the top):
_NOT_WRITTEN: Final = 0
_WRITTEN: Final = 1
_CHANGED: Final = 2
_WRITE_STATE: Final = 3
# its nesting windows were written early while it was open, so a reading added to it changes them;
_NESTING_WRITTEN: Final = 4
# its nesting windows already hold its values (it was restored from a state written before windows were nested):
# its readings go to them as well, and its close adds nothing to them.
_IN_NESTING: Final = 8
# Window sizes whose quantile positions are kept (each a few tuples).
_POSITIONS_KEPT: Final = 10_000


class WindowSpec(NamedTuple):
    """A window length. Tumbling when ``step_ns == length_ns``, sliding otherwise."""

    label: str
    length_ns: int
    step_ns: int

    @classmethod
    def tumbling(cls, length: timedelta) -> WindowSpec:
        ns = duration_ns(length)
        return cls(duration_label(length), ns, ns)

    @classmethod
    def sliding(cls, length: timedelta, step: timedelta) -> WindowSpec:
        return cls(f"{duration_label(length)}/{duration_label(step)}", duration_ns(length), duration_ns(step))


def _same_ns(ns: int) -> int:
    return ns


def nested_specs(specs: Sequence[WindowSpec]) -> tuple[int, tuple[tuple[int, int], ...]]:
    """The spec index of the base windows, and (spec index, length) of the nesting windows made from them (see
    Nested windows, above): the base is the shortest tumbling window, the nesting ones the other tumbling windows
    whose length is a multiple of its length. (-1, ()) when no window nests."""
    tumbling = [index for index, spec in enumerate(specs) if spec.step_ns == spec.length_ns]
    if not tumbling:
        return -1, ()
    base = min(tumbling, key=lambda index: specs[index].length_ns)
    nesting = tuple(
        (index, specs[index].length_ns)
        for index in tumbling
        if index != base and specs[index].length_ns % specs[base].length_ns == 0
    )
    return (base, nesting) if nesting else (-1, ())


class Aggregate(NamedTuple):
    """One closed window of one series. A named tuple, not a frozen dataclass: at fleet scale a window
    boundary builds a hundred thousand of them at once, and a frozen dataclass's constructor costs several
    times a tuple's."""

    measurement: str
    series: str
    window: str
    start_ns: int
    end_ns: int
    count: int  # type: ignore[assignment]  # (shadows tuple.count, which nothing here uses)
    min: float
    max: float
    mean: float
    # None when the sum of finite values is beyond a double (about 1.8e308): no store takes an infinity.
    sum: float | None
    first: float
    last: float
    # Sample standard deviation; None for a single value (as InfluxQL's STDDEV()), and when beyond a double.
    stddev: float | None
    # (q, value) pairs, exact, linear interpolation between closest ranks.
    quantiles: tuple[tuple[float, float], ...]


class WindowResult(NamedTuple):
    aggregates: list[Aggregate]
    late: list[Reading]
    # Late readings per window label.
    late_counts: dict[str, int]
    # Readings of new series the shard had no room for (``max_series``): dead letters.
    refused: Sequence[Reading] = ()
    # The lines to write, when the step formats them (``WindowLogic(format_line=...)``): those of the windows
    # written early in this call, and of the closed windows not written early or changed since.
    lines: Sequence[str] = ()


def quantile(ordered: Sequence[float], q: float) -> float:
    """Exact quantile of sorted values, linear interpolation (the default of numpy and InfluxQL's
    percentile is nearest rank; linear is smoother for small windows).

    >>> quantile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.5
    """
    lo, hi, frac = _quantile_position(len(ordered), q)
    return _between(ordered[lo], ordered[hi], frac)


def _between(lo: float, hi: float, frac: float) -> float:
    """``frac`` of the way from ``lo`` to ``hi``; when ``hi - lo`` is beyond a double (values of opposite signs
    near the largest), as a weighted mean instead, which cannot overflow."""
    value = lo + frac * (hi - lo)
    if value - value != 0.0:
        value = lo * (1.0 - frac) + hi * frac
    return value


def _scaled_statistics(ordered: Sequence[float]) -> tuple[float | None, float, float | None]:
    """Sum, mean and sample standard deviation of values whose sum or squares overflow a double, computed on
    the values scaled by a power of two (exact) and scaled back: the mean always fits; the sum and the standard
    deviation are None when they do not."""
    exponent = math.frexp(max(-ordered[0], ordered[-1]))[1]
    scaled = [math.ldexp(v, -exponent) for v in ordered]
    count = len(scaled)
    total = math.fsum(scaled)
    mean = total / count
    spread = math.sqrt(math.fsum([(v - mean) ** 2 for v in scaled]) / (count - 1))
    return _unscaled(total, exponent), math.ldexp(mean, exponent), _unscaled(spread, exponent)


def _unscaled(value: float, exponent: int) -> float | None:
    try:
        return math.ldexp(value, exponent)
    except OverflowError:
        return None


def _quantile_position(count: int, q: float) -> tuple[int, int, float]:
    """Where quantile ``q`` of ``count`` sorted values lies: the ranks around it and the fraction between."""
    pos = (count - 1) * q
    lo = math.floor(pos)
    return lo, min(lo + 1, count - 1), pos - lo


class _Window:
    __slots__ = ("first_ts", "first_v", "last_ts", "last_v", "values", "written")

    def __init__(self) -> None:
        self.values = array("d")
        self.first_ts = self.last_ts = _NO_TIME
        self.first_v = self.last_v = 0.0
        # Whether the store holds it as it stands (_NOT_WRITTEN, _WRITTEN early, _CHANGED since).
        self.written = _NOT_WRITTEN

    def add(self, value: float, ts: int) -> None:
        self.values.append(value)
        if self.first_ts == _NO_TIME or ts < self.first_ts or (ts == self.first_ts and value < self.first_v):
            self.first_ts, self.first_v = ts, value
        if ts > self.last_ts or (ts == self.last_ts and value > self.last_v):
            self.last_ts, self.last_v = ts, value

    def merge(self, window: _Window) -> None:
        """Add another window's values, as adding its readings one by one would (in any order)."""
        if not window.values:
            return
        self.values.extend(window.values)
        ts, value = window.first_ts, window.first_v
        if self.first_ts == _NO_TIME or ts < self.first_ts or (ts == self.first_ts and value < self.first_v):
            self.first_ts, self.first_v = ts, value
        ts, value = window.last_ts, window.last_v
        if ts > self.last_ts or (ts == self.last_ts and value > self.last_v):
            self.last_ts, self.last_v = ts, value

    def __getstate__(self) -> tuple[int, float, int, float, bytes]:
        return (self.first_ts, self.first_v, self.last_ts, self.last_v, self.values.tobytes())

    def __setstate__(self, state: tuple[int, float, int, float, bytes]) -> None:
        self.first_ts, self.first_v, self.last_ts, self.last_v, raw = state
        # (not kept: after a restart the window is written again, early or at its close)
        self.written = _NOT_WRITTEN
        self.values = array("d")
        self.values.frombytes(raw)


def window_key(index: int, start: int, spec_count: int) -> int:
    """A window's key in its series' dict: one int for (spec index, start). An ``(index, start)`` tuple cost
    about 70 bytes more per open window."""
    return start * spec_count + index


def split_window_key(key: int, spec_count: int) -> tuple[int, int]:
    """(spec index, start) of a window key (floor division: starts before 1970 come back too)."""
    start, index = divmod(key, spec_count)
    return index, start


# No window: what a series' recent-window slots hold when empty (a window of its own, never in a series' dict).
_NO_WINDOW: Final = _Window()


class _Series:
    __slots__ = (
        "first_end",
        "key",
        "max_ts",
        "measurement",
        "number",
        "recent0",
        "recent0_start",
        "recent1",
        "recent1_start",
        "sys_at_max",
        "windows",
    )

    # (The default is for pickle, which makes the object before __setstate__ fills it: compiled, the class
    # calls __init__ there too.)
    def __init__(self, key: str = "", measurement: str = "", number: int = 0) -> None:
        # (the series map's key, the same string: the windows due hold their series, not its key, so that a close
        # finds it without a lookup in the map, which at 100,000 series is a few cache misses a window)
        self.key = key
        self.measurement = measurement
        # What the window state log's frames call the series (see _NumberedReadings); the shard numbers its series
        # again when it is restored.
        self.number = number
        self.max_ts = _NO_TIME
        self.sys_at_max = 0
        # window_key(spec index, window start) -> window
        self.windows: dict[int, _Window] = {}
        # No open window ends before this (a lower bound, exact after a scan; _NO_END when none is open): a
        # newer reading closes windows by event time only once the watermark reaches it. Without it, every
        # reading that advanced its series scanned the series' windows, and at fleet scale nearly every
        # reading does (each series gets a reading every few seconds), for a close that is rarely due.
        self.first_end = _NO_TIME
        self._forget_recent()

    def _forget_recent(self) -> None:
        # The open window of spec 0 and of spec 1 that the series' last reading went to, and its start (_NO_TIME:
        # none): the next reading most often goes to the same window, and finds it here. In ``windows`` that took
        # an int object for the key and a dict of its own in memory, for each reading and window length: at
        # 100,000 series, where every part of a series is far apart in memory, a tenth of the window step.
        # Only open windows: whatever takes a window out of ``windows`` goes through pop_window or clear_windows.
        self.recent0 = self.recent1 = _NO_WINDOW
        self.recent0_start = self.recent1_start = _NO_TIME

    def pop_window(self, index: int, start: int, spec_count: int) -> _Window | None:
        """Take an open window out of the series (None if it holds no such window)."""
        if index == 0 and self.recent0_start == start:
            self.recent0, self.recent0_start = _NO_WINDOW, _NO_TIME
        elif index == 1 and self.recent1_start == start:
            self.recent1, self.recent1_start = _NO_WINDOW, _NO_TIME
        return self.windows.pop(start * spec_count + index, None)

    def clear_windows(self) -> None:
        self.windows.clear()
        self._forget_recent()

    def __getstate__(self) -> tuple[str, int, int, dict[int, _Window]]:
        return (self.measurement, self.max_ts, self.sys_at_max, self.windows)

    def __setstate__(self, state: tuple[str, int, int, dict[Any, _Window]]) -> None:
        self.measurement, self.max_ts, self.sys_at_max, self.windows = state
        self.number = 0
        self.first_end = _NO_TIME
        self._forget_recent()


class _DueBucket:
    """The windows due in one deadline bucket, in columns (series, spec index, start): a tuple per window cost
    about 50 bytes more. A series forgotten since holds no windows, so its entries are passed over. A bucket is
    handed out in parts (a closing round's budget): ``taken`` entries are done. Copying the rest into a new bucket
    at every round instead cost a reference count up and down per entry left: at a fleet boundary a third of the
    worker's time went there."""

    __slots__ = ("indexes", "series", "starts", "taken")

    def __init__(self) -> None:
        self.series: list[_Series] = []
        self.indexes = array("i")
        self.starts = array("q")
        self.taken = 0

    def add(self, series: _Series, index: int, start: int) -> None:
        self.series.append(series)
        self.indexes.append(index)
        self.starts.append(start)

    def __len__(self) -> int:
        return len(self.series) - self.taken

    def entries(self) -> Iterator[tuple[_Series, int, int]]:
        """The entries not taken yet."""
        taken = self.taken
        columns = (
            islice(self.series, taken, None),
            islice(self.indexes, taken, None),
            islice(self.starts, taken, None),
        )
        return zip(*columns, strict=True)


def _add_to_bucket(
    buckets: dict[int, _DueBucket], heap: list[int], deadline: int, series: _Series, index: int, start: int
) -> None:
    bucket = -(-deadline // _DUE_BUCKET_NS)  # rounded up: never before the deadline
    entries = buckets.get(bucket)
    if entries is None:
        entries = buckets[bucket] = _DueBucket()
        heapq.heappush(heap, bucket)
    entries.add(series, index, start)


class WindowState(NamedTuple):
    series: dict[str, _Series]
    # (deadline in wall-time ns, series, spec index, start): when the window closes if no newer data
    # arrives; re-checked on pop because newer data can only bring it forward.
    deadlines: list[tuple[int, str, int, int]]
    # The clock when the snapshot was taken (0 in older snapshots): on resume, the time the process was
    # down is left out of every series' silence, as a stall is.
    taken_ns: int = 0


# A snapshot: (format, the clock when it was taken, every series' record, joined). A record is a fixed
# header (key and measurement lengths, newest event time, its wall time, window count), the key and the
# measurement in UTF-8, then per window a fixed part (spec index, start, first and last time and value,
# value count) and its values as float64. Packed with struct rather than pickled: a series that changed is
# encoded in a few microseconds, where pickle's object walk took about 20.
#
# With recovery on, the records go to the window state log instead (``flows.window_log``), and the snapshot is
# its marker: only the series that changed are written at an epoch.
_SNAPSHOT_FORMAT: Final = "series-records-2"
# Written before windows were nested (see Nested windows, at the top): its nesting windows hold every reading of
# their base windows, including the open ones'.
_SNAPSHOT_FORMAT_UNNESTED: Final = "series-records-1"
WindowSnapshot = tuple[str, int, bytes] | LogMarker
_SERIES_HEAD = struct.Struct("<IIqqI")
_WINDOW_HEAD = struct.Struct("<iqqdqdI")
# The measurement length of a tombstone: the record of a series that was forgotten.
_TOMBSTONE: Final = 0xFFFFFFFF
# In a window's spec index: the window is a base window marked _IN_NESTING.
_IN_NESTING_RECORD: Final = 0x10000


# The window state log's frames (``flows.window_log``): the whole state as series records, written when a log
# starts; a part of the series' records, while the next generation is written; or the operations since the
# frame before, in order: readings added (with the clock of the batch), windows closed by event time, series
# forgotten, the clock shifted by a downtime, windows closed on wall time (with the clock, which carries their
# series' clocks forward). Replayed over the records, they give
# back the state exactly, since adding a reading depends only on the state and the batch's clock.
# Encoding an epoch's readings in columns costs about 0.5 µs a reading; encoding every changed series again
# cost about 6 µs a reading at 100,000 series (each reading changes a series, and so does each window close).
_FRAME_RECORDS: Final = b"R"
_FRAME_OPS: Final = b"O"
# A part of the state, as series records, written to the next generation while it is being written: each
# record replaces its series whole (whatever the operations before it built there); nothing else is cleared.
_FRAME_SERIES: Final = b"S"
# The numbers of the series held when a generation starts: after its records, or before its first part. The
# operations name a series by its number (a series created since comes with its key, in the operation that adds
# its first reading), so a generation's frames resolve every number on their own.
_FRAME_NUMBERS: Final = b"N"
# The first frame of a generation written since windows are nested (see Nested windows, at the top): in a
# generation without it, the nesting windows of its records hold every reading of their open base windows too.
_FRAME_NESTED: Final = b"L"
# Operations name series by key in logs written before series were numbered (replayed still, after an upgrade).
_OP_READINGS: Final = 0
_OP_CLOSES: Final = 1
_OP_FORGETS: Final = 2
_OP_SHIFT: Final = 3
_OP_QUIET_CLOSES: Final = 4
_OP_NUMBERED_READINGS: Final = 5
_OP_NUMBERED_CLOSES: Final = 6
_OP_NUMBERED_FORGETS: Final = 7
_OP_NUMBERED_QUIET_CLOSES: Final = 8
# _OP_NUMBERED_READINGS with the wall time the batch was added at: a reading stamped after it moved no clock.
_OP_NUMBERED_READINGS_AT: Final = 9
# (kind, ...): the fields after the kind depend on it, see _numbered_readings_op, WindowLogic._log_close and the
# others, and WindowLogic._replay_ops.
_Op = tuple[Any, ...]


class _NumberedReadings:
    """A batch's readings as the window state log names their series: by number, in an array of ints. With each
    reading's series key instead, pickling and writing the keys was most of a snapshot's cost at 100,000 series,
    where a key seldom comes twice in an epoch, and the log grew about twice as fast (52 against 26-28 bytes a
    reading, BENCHMARKS.md run AM), so its next generation was written as much more often. The series the batch
    created come with their keys, numbered from ``first`` in order."""

    __slots__ = ("first", "keys", "measurements", "numbers")

    def __init__(self, first: int) -> None:
        self.first = first
        self.keys: list[str] = []
        self.measurements: list[str] = []
        self.numbers: list[int] = []


def _carry_clock(series: _Series, now: int) -> None:
    """Carry a quiet series' clock forward to ``now`` as it stands, when its silence closes a window: the
    watermark stays where it was, but a reading newer than the last one can no longer move it back. Without
    this, a reading that comes after the close (a device that flushes what it buffered offline, readings held
    in a stalled flow) restarted the clock from its own time, opened the closed window again, and its second
    aggregate overwrote the first in the store (same series, same timestamp): the first part was lost. Now it
    is late, and counted so."""
    if series.sys_at_max < now:
        series.max_ts += now - series.sys_at_max
        series.sys_at_max = now


def _no_schedule(deadline: int, series: _Series, index: int, start: int) -> None:
    """Deadlines are rebuilt from the state once a replay is done."""


def _numbered_readings_op(now: int, present: int, numbered: _NumberedReadings, batches: list[list[Reading]]) -> _Op:
    """The operation that adds a batch's readings at ``now`` (the pipeline clock) and ``present`` (wall time), in
    columns. Made as the batch is added, while its readings are in the CPU's caches: held until the epoch's snapshot
    instead, the readings were cold by then (at 100,000 series and 150,000 readings/s a snapshot took 70-76 ms,
    51-56 ms since, BENCHMARKS.md run AM)."""
    readings = [r for batch in batches for r in batch]
    return (
        _OP_NUMBERED_READINGS_AT,
        now,
        present,
        numbered.first,
        numbered.keys,
        numbered.measurements,
        array("q", numbered.numbers),
        array("d", [r[2] for r in readings]),
        array("q", [r[3] for r in readings]),
    )


def _numbers_frame(held: list[_Series], keys: list[str]) -> bytes:
    """The numbers of the series ``held``, with their ``keys`` (in the same order) and measurements
    (_FRAME_NUMBERS)."""
    numbers = array("q", [series.number for series in held])
    return _FRAME_NUMBERS + pickle.dumps((numbers, keys, [series.measurement for series in held]), protocol=5)


def _tombstone(key: str) -> bytes:
    key_b = key.encode()
    return _SERIES_HEAD.pack(len(key_b), _TOMBSTONE, 0, 0, 0) + key_b


def _encode_series(key: str, series: _Series, spec_count: int) -> bytes:
    key_b = key.encode()
    measurement_b = series.measurement.encode()
    parts = [
        _SERIES_HEAD.pack(len(key_b), len(measurement_b), series.max_ts, series.sys_at_max, len(series.windows)),
        key_b,
        measurement_b,
    ]
    for wkey, w in series.windows.items():
        index, start = split_window_key(wkey, spec_count)
        if w.written & _IN_NESTING:
            index |= _IN_NESTING_RECORD
        parts.append(_WINDOW_HEAD.pack(index, start, w.first_ts, w.first_v, w.last_ts, w.last_v, len(w.values)))
        parts.append(w.values.tobytes())
    return b"".join(parts)


def _decode_records(
    joined: bytes, spec_count: int, unnested_base: int = -1
) -> Iterator[tuple[str, _Series | None, bytes]]:
    """Each record's series key, its series (None for a tombstone) and the record's bytes. ``unnested_base``: the
    spec index of the base windows in records written before windows were nested (-1: none), which are marked
    _IN_NESTING."""
    view = memoryview(joined)
    pos, end = 0, len(joined)
    while pos < end:
        start_pos = pos
        key_len, measurement_len, max_ts, sys_at_max, count = _SERIES_HEAD.unpack_from(view, pos)
        pos += _SERIES_HEAD.size
        key = bytes(view[pos : pos + key_len]).decode()
        pos += key_len
        if measurement_len == _TOMBSTONE:
            yield key, None, joined[start_pos:pos]
            continue
        series = _Series(key, bytes(view[pos : pos + measurement_len]).decode())
        pos += measurement_len
        series.max_ts, series.sys_at_max = max_ts, sys_at_max
        for _ in range(count):
            index, start, first_ts, first_v, last_ts, last_v, n = _WINDOW_HEAD.unpack_from(view, pos)
            pos += _WINDOW_HEAD.size
            window = _Window()
            if index & _IN_NESTING_RECORD or index == unnested_base:
                index &= ~_IN_NESTING_RECORD
                window.written = _IN_NESTING
            window.values.frombytes(view[pos : pos + 8 * n])
            pos += 8 * n
            window.first_ts, window.first_v, window.last_ts, window.last_v = first_ts, first_v, last_ts, last_v
            series.windows[window_key(index, start, spec_count)] = window
        yield key, series, joined[start_pos:pos]


class WindowLogic(StatefulBatchLogic[list[Reading], WindowResult, WindowSnapshot | bytes]):
    """Windows of one shard of series. A snapshot is a marker into the window state log (recovery on), or the
    whole state's records as bytes (immutable, as Bytewax asks)."""

    def __init__(
        self,
        specs: Sequence[WindowSpec],
        allowed_lateness: timedelta,
        quantiles: Sequence[float],
        resume: WindowSnapshot | bytes | None = None,
        clock: object = None,
        recovery_dir: Path | None = None,
        step_id: str = "fleetwatch.windows",
        max_series: int = 0,
        format_line: Callable[[Aggregate], str] | None = None,
        write_early: bool = True,
        closed_written: bool = True,
    ) -> None:
        """``recovery_dir``: Bytewax's recovery directory, where the window state log goes (snapshots are then
        log markers, see ``flows.window_log``); None keeps whole snapshots (recovery off, tests).
        ``format_line``: the store's line of an aggregate; with it, results carry the lines to write, and with
        ``write_early`` a window's line is written while its allowed lateness runs (see ``_write_early``), and again at
        its close only if a reading changed it meanwhile.
        ``closed_written``: whether results carry the aggregate of a window written early and unchanged since, at
        its close (what alert rules on windows evaluate). Without it such a close is only counted: the pipeline
        turns it off when no rule watches windows, since the aggregate would be made again for nothing (at a
        fleet boundary of 100,000 windows, aggregates made at closes took 14 % of the worker's time)."""
        self.specs = tuple(specs)
        # The spec index of the base windows (-1: none), and (spec index, length) of the nesting windows made from
        # them (see Nested windows, at the top).
        self._base, self._nested = nested_specs(self.specs)
        # The length of each spec's windows if they nest (0 if not), by spec index.
        self._nesting_length = [0] * len(self.specs)
        for index, length in self._nested:
            self._nesting_length[index] = length
        self.format_line = format_line
        self.closed_written = closed_written
        # The most series this shard holds (0: no limit); a reading of another series is refused.
        self.max_series = max_series or sys.maxsize
        self._refused_log = LogThrottle(60.0)
        self.lateness_ns = duration_ns(allowed_lateness)
        self.quantiles = tuple(quantiles)
        # Tests drive windows with a clock they move by hand: any callable returning wall-time ns.
        self._now = clock if callable(clock) else pipeline_clock.now_ns
        self._to_wall = pipeline_clock.to_wall_ns if self._now is pipeline_clock.now_ns else _same_ns
        # Each series' last pickle, and the series changed since the last snapshot: a snapshot pickles only
        # what changed and joins the rest as bytes (see ``snapshot``).
        self._blobs: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        # The number the next new series gets (see _NumberedReadings).
        self._next_number = 0
        # The size of the live state, against which the log's growth is measured (the records kept, or the
        # last whole-state frame written to the log).
        self._live_bytes = 0
        self._log: WindowLog | None = None
        # With the log: what happened since the last snapshot, in order (see _FRAME_OPS).
        self._ops: list[_Op] | None = None
        # This shard's part of the worker's ``window_series`` gauge, as last reported.
        self._series_counted = 0
        self._last_sweep = self._now()
        # When each open window closes if no newer reading comes: buckets of _DUE_BUCKET_NS (a dict of
        # lists, and a heap of bucket numbers). A heap of every window's own deadline cost a tuple
        # comparison per level per window, with series keys compared on ties: at 100,000 series it was
        # the biggest cost of a reading.
        self._due: dict[int, _DueBucket] = {}
        self._due_heap: list[int] = []
        # When each open window is written early (see _write_early), in buckets as the deadlines are, per window
        # spec; how long before its deadline that is (0: not at all).
        self._early: list[dict[int, _DueBucket]] = [{} for _ in self.specs]
        self._early_heap: list[list[int]] = [[] for _ in self.specs]
        # Spec indexes, shortest windows first: the order in which due early writes are made. Where windows of
        # several lengths end together (10 s and 1 min windows, every minute), a store takes the boundary's lines
        # over seconds at fleet scale, and those seconds are a large part of a 10 s window's period and a small part
        # of a minute's. In the order the windows opened, every 1 min window went first (BENCHMARKS.md run AH).
        self._early_order = sorted(range(len(self.specs)), key=lambda i: self.specs[i].length_ns)
        lateness = self.lateness_ns
        early = format_line is not None and write_early and lateness >= _EARLY_MIN_LATENESS_NS
        self._early_ns = lateness - lateness // _EARLY_START_FRACTION if early else 0
        # The quantiles' positions by window size: the same few sizes recur at every window boundary.
        self._positions: dict[int, tuple[tuple[float, int, int, float], ...]] = {}
        if resume is None:
            self.state: WindowState = WindowState({}, [])
        elif isinstance(resume, bytes):
            # A snapshot from before series were pickled one by one: the whole shard in one pickle.
            self.state = pickle.loads(resume)
            self._dirty.update(self.state.series)
            for key, series in self.state.series.items():
                series.key = key
                by_tuple: dict[Any, _Window] = series.windows  # that format keyed windows by (index, start)
                series.windows = {window_key(i, st, len(self.specs)): w for (i, st), w in by_tuple.items()}
                for (i, _), w in by_tuple.items():
                    if i == self._base:  # (written before windows were nested)
                        w.written = _IN_NESTING
            for deadline, key, index, start in self.state.deadlines:
                if (held := self.state.series.get(key)) is not None:
                    self._schedule(deadline, held, index, start)
            self.state.deadlines.clear()
        elif len(resume) == 3 and resume[0] in (_SNAPSHOT_FORMAT, _SNAPSHOT_FORMAT_UNNESTED):
            self.state = self._restore(resume[1], [resume[2]], resume[0] == _SNAPSHOT_FORMAT_UNNESTED)
        elif len(resume) == 5 and resume[0] == LOG_FORMAT:
            if recovery_dir is None:
                raise ValueError("a window snapshot that refers to the window state log needs the recovery directory")
            _, taken_ns, name, generation, seq = resume
            self._log = WindowLog(recovery_dir, step_id, name)
            self.state = self._replay(taken_ns, self._log.replay(generation, seq))
        else:
            raise ValueError(f"window snapshot of an unknown format {resume[0]!r}")
        # Numbered again from 0: a restored log starts a new generation, whose frames name series afresh.
        for number, series in enumerate(self.state.series.values()):
            series.number = number
        self._next_number = len(self.state.series)
        if recovery_dir is not None and self._log is None:
            self._log = WindowLog(recovery_dir, step_id)
        if self._log is not None:
            # A resumed log starts a new generation at the first snapshot (the frames after the marker belong
            # to epochs that never committed), so the operations start from here.
            self._ops = []
        if self.state.taken_ns:
            self._leave_out_downtime(self._last_sweep - self.state.taken_ns)

    def _restore(self, taken_ns: int, frames: Iterable[bytes], unnested: bool) -> WindowState:
        """The state from record frames applied in order: a later record of a series replaces an earlier one,
        a tombstone removes it. ``unnested``: records written before windows were nested."""
        series_map: dict[str, _Series] = {}
        blobs = self._blobs
        unnested_base = self._base if unnested else -1
        for joined in frames:
            for key, series, record in _decode_records(joined, len(self.specs), unnested_base):
                if series is None:
                    series_map.pop(key, None)
                    blobs.pop(key, None)
                else:
                    series_map[key] = series
                    blobs[key] = record
        self._live_bytes = sum(len(b) for b in blobs.values())
        if unnested_base >= 0:
            self._dirty.update(series_map)  # (the records kept do not mark the base windows: encoded again)
        self._schedule_open_windows(series_map)
        return WindowState(series_map, [], taken_ns)

    def _replay(self, taken_ns: int, frames: Iterable[bytes]) -> WindowState:
        """The state from the window state log's frames: whole-state records, then operations in order."""
        self.state = WindowState({}, [], taken_ns)
        series_map = self.state.series
        # (series number -> measurement and key, as the generation's frames declare them)
        numbered: dict[int, tuple[str, str]] = {}
        # (until the generation says it was written with nested windows)
        unnested_base = self._base
        for frame in frames:
            kind, body = frame[:1], frame[1:]
            if kind == _FRAME_NESTED:
                unnested_base = -1
            elif kind == _FRAME_RECORDS:
                series_map.clear()
                for key, series, _ in _decode_records(body, len(self.specs), unnested_base):
                    if series is not None:
                        series_map[key] = series
                self._live_bytes = len(frame)
            elif kind == _FRAME_SERIES:
                for key, series, _ in _decode_records(body, len(self.specs), unnested_base):
                    if series is not None:
                        series_map[key] = series
                self._live_bytes += len(frame)
            elif kind == _FRAME_NUMBERS:
                numbers, keys, measurements = pickle.loads(body)
                numbered.update(zip(numbers, zip(measurements, keys, strict=True), strict=True))
            elif kind == _FRAME_OPS:
                self._replay_ops(pickle.loads(body), numbered)
            else:
                raise ValueError(f"window state log frame of an unknown kind {kind!r}")
        self._schedule_open_windows(series_map)
        return self.state

    def _replay_ops(self, ops: list[_Op], numbered: dict[int, tuple[str, str]]) -> None:
        series_map = self.state.series
        for op in ops:
            kind = op[0]
            if kind in (_OP_NUMBERED_READINGS_AT, _OP_NUMBERED_READINGS):
                if kind == _OP_NUMBERED_READINGS_AT:
                    _, now, present, first, new_keys, new_measurements, numbers, values, stamps = op
                else:  # (written before the clocks were held to the present, which the replay must not do either)
                    _, now, first, new_keys, new_measurements, numbers, values, stamps = op
                    present = _NO_PRESENT
                numbered.update(enumerate(zip(new_measurements, new_keys, strict=True), first))
                named = [numbered[number] for number in numbers]
                readings = [Reading(m, key, v, ts) for (m, key), v, ts in zip(named, values, stamps, strict=True)]
                self._add(readings, now, present, [], {}, [], _no_schedule, None, None)
            elif kind == _OP_READINGS:
                _, now, measurements, keys, values, stamps = op
                readings_then = map(Reading, measurements, keys, values, stamps)
                self._add(readings_then, now, _NO_PRESENT, [], {}, [], _no_schedule, None, None)
            elif kind in (_OP_CLOSES, _OP_QUIET_CLOSES, _OP_NUMBERED_CLOSES, _OP_NUMBERED_QUIET_CLOSES):
                # (a wall-time close also carries its series' clock to the moment of the close)
                quiet_at = op[1] if kind in (_OP_QUIET_CLOSES, _OP_NUMBERED_QUIET_CLOSES) else None
                named_by, indexes, starts = op[-3:]
                keys = named_by if kind in (_OP_CLOSES, _OP_QUIET_CLOSES) else [numbered[n][1] for n in named_by]
                for key, index, start in zip(keys, indexes, starts, strict=True):
                    series = series_map.get(key)
                    if series is not None:
                        self._take(series, index, start, _no_schedule)
                        if quiet_at is not None:
                            _carry_clock(series, quiet_at)
            elif kind in (_OP_FORGETS, _OP_NUMBERED_FORGETS):
                for key in op[1] if kind == _OP_FORGETS else [numbered[n][1] for n in op[1]]:
                    series_map.pop(key, None)
            elif kind == _OP_SHIFT:
                for series in series_map.values():
                    series.sys_at_max += op[1]
            else:
                raise ValueError(f"window state log operation of an unknown kind {kind!r}")

    def _schedule_open_windows(self, series_map: dict[str, _Series]) -> None:
        # Deadlines are not in the snapshot: each open window's is where its series' clock puts it.
        spec_count = len(self.specs)
        for series in series_map.values():
            for wkey in series.windows:
                index, start = split_window_key(wkey, spec_count)
                end = start + self.specs[index].length_ns
                self._schedule(series.sys_at_max + (end + self.lateness_ns - series.max_ts), series, index, start)

    def _log_close(self, series: _Series, index: int, start: int) -> None:
        ops = self._ops
        if ops is None:
            return
        if ops and ops[-1][0] == _OP_NUMBERED_CLOSES:
            last = ops[-1]
            last[1].append(series.number)
            last[2].append(index)
            last[3].append(start)
        else:
            ops.append((_OP_NUMBERED_CLOSES, array("q", [series.number]), array("i", [index]), array("q", [start])))

    def _log_quiet_close(self, series: _Series, index: int, start: int, now: int) -> None:
        ops = self._ops
        if ops is None:
            return
        if ops and ops[-1][0] == _OP_NUMBERED_QUIET_CLOSES and ops[-1][1] == now:
            last = ops[-1]
            last[2].append(series.number)
            last[3].append(index)
            last[4].append(start)
        else:
            numbers, indexes, starts = array("q", [series.number]), array("i", [index]), array("q", [start])
            ops.append((_OP_NUMBERED_QUIET_CLOSES, now, numbers, indexes, starts))

    def _log_forget(self, series: _Series) -> None:
        ops = self._ops
        if ops is None:
            return
        if ops and ops[-1][0] == _OP_NUMBERED_FORGETS:
            ops[-1][1].append(series.number)
        else:
            ops.append((_OP_NUMBERED_FORGETS, array("q", [series.number])))

    def _schedule(self, deadline: int, series: _Series, index: int, start: int) -> None:
        """A new window's deadline, and when it is written early."""
        _add_to_bucket(self._due, self._due_heap, deadline, series, index, start)
        if self._early_ns:
            early_at = deadline - self._early_ns
            _add_to_bucket(self._early[index], self._early_heap[index], early_at, series, index, start)

    def _leave_out_downtime(self, downtime_ns: int) -> None:
        """Shift every wall-time mark by the time between the snapshot and now. Without this, a restart
        longer than a window's remainder plus the allowed lateness would close the restored windows at
        once, half full: the readings of the epochs after the snapshot, which the broker redelivers right
        after the restart, would then count as late, and the half-full aggregate would overwrite the
        complete point written before the restart (same series, same timestamp)."""
        if downtime_ns <= 0:
            return
        for series in self.state.series.values():
            series.sys_at_max += downtime_ns
        # The pickles kept for the next snapshot hold the old clock marks.
        self._dirty.update(self.state.series)
        if self._ops is not None:
            self._ops.append((_OP_SHIFT, downtime_ns))
        due, self._due, self._due_heap = self._due, {}, []
        # (scheduled again with the deadlines)
        self._early, self._early_heap = [{} for _ in self.specs], [[] for _ in self.specs]
        for bucket, entries in due.items():
            for series, index, start in entries.entries():
                self._schedule(bucket * _DUE_BUCKET_NS + downtime_ns, series, index, start)

    # -- Bytewax callbacks

    def on_batch(self, values: list[list[Reading]]) -> tuple[Iterable[WindowResult], bool]:
        now = self._now()
        present = self._to_wall(now)
        late: list[Reading] = []
        late_counts: dict[str, int] = {}
        closing: list[_Series] = []
        refused: list[Reading] = []
        numbered = _NumberedReadings(self._next_number) if self._ops is not None else None
        for readings in values:
            self._add(readings, now, present, late, late_counts, closing, self._schedule, refused, numbered)
        if self._ops is not None:
            if refused:
                # The log holds what was added, and a replay adds it all: it must not decide again with the
                # series it holds at that point (a generation written in parts has not restored them all yet)
                # or with a max_series changed since.
                gone = {id(r) for r in refused}
                values = [[r for r in readings if id(r) not in gone] for readings in values]
            assert numbered is not None  # (made above, with the log)
            self._ops.append(_numbered_readings_op(now, present, numbered, values))
        aggregates: list[Aggregate] = []
        lines: list[str] = []
        for series in closing:
            self._close_due(series, now, aggregates, lines)
        self._pop_deadlines(now, aggregates, lines)
        if refused:
            self._report_refused(len(refused))
        if aggregates or late or refused or lines:
            return [WindowResult(aggregates, late, late_counts, refused, lines)], StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def _report_refused(self, count: int) -> None:
        # (every batch's are counted: a line a minute says how many went since the last line)
        events = self._refused_log.count(count)
        if events:
            log.warning(
                "windows: a shard holds %d series, its share of windows.max_series: %d reading(s) of new series "
                "went to the dead letters (series_limit) since the last such message; silent series are forgotten "
                "an hour after their last window",
                len(self.state.series),
                events,
            )

    def _add(
        self,
        readings: Iterable[Reading],
        now: int,
        present: int,
        late: list[Reading],
        late_counts: dict[str, int],
        closing: list[_Series],
        schedule: Callable[[int, _Series, int, int], None],
        refused: list[Reading] | None,
        numbered: _NumberedReadings | None,
    ) -> None:
        """Add readings that arrived at ``now`` to their series' open windows (the state change a replay of the
        window state log repeats, with the same clock). ``present``: the wall time at ``now``; a reading stamped
        after it does not move its series' clock (_NO_PRESENT: every reading may). ``closing`` gets the series
        whose newer event time brought their watermark to a window's end (a series may be there more than once);
        ``refused`` the readings of new series past ``max_series`` (None: a replay, which adds every reading);
        ``numbered`` (with the log) the added readings' series numbers, for the log's frame."""
        series_map = self.state.series
        lateness = self.lateness_ns
        spec_count = len(self.specs)
        spans = [(index, spec.length_ns, spec.step_ns, spec.label) for index, spec in enumerate(self.specs)]
        # What a reading goes to when its base window takes it: not the nesting windows, which get it when the base
        # window closes (see Nested windows, at the top). Without nesting windows, every span.
        base_index = self._base
        base_length = self.specs[base_index].length_ns if base_index >= 0 else 0
        nesting = {index for index, _ in self._nested}
        base_spans = [span for span in spans if span[0] not in nesting]
        # Without the log, the series changed since the last snapshot are encoded again; with it, the log's
        # frames say what changed, and a set of the series a batch touched would be work for nothing.
        dirty = self._dirty if self._ops is None else None
        numbers = numbered.numbers if numbered is not None else None
        max_series = self.max_series if refused is not None else sys.maxsize
        for reading in readings:
            key = reading.series
            ts = reading.ts_ns
            series = series_map.get(key)
            if series is None:
                if len(series_map) >= max_series:
                    assert refused is not None  # (None only in a replay, which has no limit)
                    refused.append(reading)
                    continue
                series = series_map[key] = _Series(key, reading.measurement, self._next_number)
                self._next_number += 1
                if numbered is not None:
                    numbered.keys.append(key)
                    numbered.measurements.append(reading.measurement)
            if numbers is not None:
                numbers.append(series.number)
            elif dirty is not None:
                dirty.add(key)
            if ts > series.max_ts:
                # A reading stamped ahead of the present (wall time: a device whose clock jumped, within
                # max_future_skew) leaves its series' clock where it is, and its window closes when the clock passes
                # it. Taken as it was, it moved the clock that far ahead for good, since a quiet series' clock runs
                # on with wall time from there: the device's rightly stamped readings were late until the series
                # was forgotten, an hour later. Nor does it move the clock to the present: after a restart or a
                # stall the series' clock runs behind wall time, by design, while the readings the broker held are
                # read, and those would have been late. A new series' clock starts at the present.
                if ts <= present:
                    clock_ts = ts
                elif series.max_ts == _NO_TIME:
                    clock_ts = present
                else:
                    clock_ts = _NO_TIME
                if clock_ts > series.max_ts:
                    series.max_ts = clock_ts
                    series.sys_at_max = now
                    # (the series' clock is now ``now``: its watermark is its newest event time minus the lateness)
                    if clock_ts - lateness >= series.first_end:
                        closing.append(series)
            watermark = series.max_ts + (now - series.sys_at_max) - lateness
            windows = series.windows
            is_late = False
            # (a reading late for its base window goes to its nesting windows directly)
            late_for_base = base_length > 0 and ts - ts % base_length + base_length <= watermark
            for index, length, step, label in spans if late_for_base else base_spans:
                # The windows holding ts, aligned to the Unix epoch: one for a tumbling window, length / step
                # for a sliding one.
                start = ts - ts % step
                while start > ts - length:
                    end = start + length
                    if end <= watermark:
                        if not is_late:
                            late_counts[label] = late_counts.get(label, 0) + 1
                        is_late = True
                        start -= step
                        continue
                    if index == 0 and series.recent0_start == start:
                        window = series.recent0
                    elif index == 1 and series.recent1_start == start:
                        window = series.recent1
                    else:
                        wkey = start * spec_count + index  # window_key, inline: once per reading and length
                        found = windows.get(wkey)
                        if found is None:
                            window = self._open_window(series, index, start, schedule)
                            if index == base_index:
                                self._open_nesting(series, start, schedule)
                        else:
                            window = found
                        if index == 0:
                            series.recent0, series.recent0_start = window, start
                        elif index == 1:
                            series.recent1, series.recent1_start = window, start
                    if window.written:
                        self._changed(series, start, window, reading.value, ts)
                    window.add(reading.value, ts)
                    start -= step
            if is_late:
                late.append(reading)

    def _changed(self, series: _Series, start: int, window: _Window, value: float, ts: int) -> None:
        """A reading is added to a window written early, or to a base window with a flag (the rare case of _add)."""
        flags = window.written
        if flags & _WRITE_STATE:
            flags = flags & ~_WRITE_STATE | _CHANGED  # (written without this reading: again at the close)
        if flags & (_NESTING_WRITTEN | _IN_NESTING):
            for nesting in self._nesting_windows(series, start):
                if flags & _IN_NESTING:
                    nesting.add(value, ts)
                if nesting.written:
                    nesting.written = _CHANGED
            flags &= ~_NESTING_WRITTEN
        window.written = flags

    def _open_nesting(self, series: _Series, start: int, schedule: Callable[[int, _Series, int, int], None]) -> None:
        """A new base window's nesting windows: opened where they are not (with their deadlines); changed if they
        were written early, since that was without the new window's readings."""
        windows, spec_count = series.windows, len(self.specs)
        for index, length in self._nested:
            outer = start - start % length
            nesting = windows.get(outer * spec_count + index)
            if nesting is None:
                self._open_window(series, index, outer, schedule)
            elif nesting.written:
                nesting.written = _CHANGED

    def _nesting_windows(
        self,
        series: _Series,
        start: int,
        open_missing: bool = False,
        schedule: Callable[[int, _Series, int, int], None] | None = None,
    ) -> list[_Window]:
        """The open nesting windows of the base window at ``start``; with ``open_missing``, those not open are
        opened, their deadlines given to ``schedule`` (by default, scheduled)."""
        windows, spec_count = series.windows, len(self.specs)
        found = []
        for index, length in self._nested:
            outer = start - start % length
            nesting = windows.get(outer * spec_count + index)
            if nesting is None and open_missing:
                nesting = self._open_window(series, index, outer, schedule or self._schedule)
            if nesting is not None:
                found.append(nesting)
        return found

    def _open_window(
        self, series: _Series, index: int, start: int, schedule: Callable[[int, _Series, int, int], None]
    ) -> _Window:
        """Open a window of ``series`` and schedule its close: its end plus the allowed lateness, by the series'
        clock (its newest event time, at the wall time it arrived)."""
        window = series.windows[start * len(self.specs) + index] = _Window()
        end = start + self.specs[index].length_ns
        schedule(series.sys_at_max + (end + self.lateness_ns - series.max_ts), series, index, start)
        if end < series.first_end:
            series.first_end = end
        return window

    def _take(
        self,
        series: _Series,
        index: int,
        start: int,
        schedule: Callable[[int, _Series, int, int], None] | None = None,
    ) -> _Window | None:
        """Take an open window out of its series to close it (None if the series holds no such window). A base
        window's values go to its nesting windows, opened if they are not (a window length added to the config
        since the base window opened); ``schedule`` takes their deadlines (a replay's ``_no_schedule``: the
        deadlines of every open window are made once it is done)."""
        window = series.pop_window(index, start, len(self.specs))
        if window is not None and index == self._base and not window.written & _IN_NESTING:
            for nesting in self._nesting_windows(series, start, open_missing=True, schedule=schedule):
                nesting.merge(window)
        return window

    def on_notify(self) -> tuple[Iterable[WindowResult], bool]:
        aggregates: list[Aggregate] = []
        lines: list[str] = []
        self._pop_deadlines(self._now(), aggregates, lines)
        if aggregates or lines:
            return [WindowResult(aggregates, [], {}, (), lines)], StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[WindowResult], bool]:
        if lifecycle.stopping():
            # A stop, not the end of the data: the open windows stay in the last snapshot and go on
            # filling after the restart. Emitting them now would write them half full.
            return [], StatefulBatchLogic.RETAIN
        # Finite input (tests, replays) ended: every open window is final.
        aggregates: list[Aggregate] = []
        lines: list[str] = []
        spec_count = len(self.specs)
        for key, series in self.state.series.items():
            # (base windows first: their values go to their nesting windows)
            for base_first in (True, False):
                for index, start in sorted(split_window_key(w, spec_count) for w in series.windows):
                    if base_first and index != self._base:
                        continue
                    window = self._take(series, index, start)
                    assert window is not None  # (a key of windows)
                    self._emit(series, index, start, window, aggregates, lines)
                    self._log_close(series, index, start)
            series.clear_windows()
            self._dirty.add(key)
        self._due.clear()
        self._due_heap.clear()
        for buckets, heap in zip(self._early, self._early_heap, strict=True):
            buckets.clear()
            heap.clear()
        return ([WindowResult(aggregates, [], {}, (), lines)] if aggregates else []), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self._due_heap:
            return None
        due = self._due_heap[0] * _DUE_BUCKET_NS
        for heap in self._early_heap:
            if heap:
                due = min(due, heap[0] * _DUE_BUCKET_NS)
        now = self._now()
        if due <= now:
            due = now + _YIELD_NS  # closes left by a callback's budget: after the input's turn (see _YIELD_NS)
        # Deadlines are on the pipeline clock; Bytewax compares with wall time.
        return datetime.fromtimestamp(self._to_wall(due) / 1e9, tz=UTC)

    def snapshot(self) -> WindowSnapshot:
        """Only the series that changed since the last snapshot are encoded again. With the window state log,
        only they are written (see ``flows.window_log``); without it, the other series' records are kept from
        before and joined as bytes, which costs a copy, not a walk through their objects."""
        started = time.perf_counter()
        series_map = self.state.series
        now = self._now()
        stats = health.counters()
        if self._log is not None:
            snapshot: WindowSnapshot
            written, snapshot = self._append_to_log(now)
            encoded = written
        else:
            encoded, written, snapshot = self._encode_changed(now)
        stats.window_snapshots += 1
        stats.window_snapshot_bytes += written
        stats.window_snapshot_encoded_bytes += encoded
        stats.window_snapshot_seconds += time.perf_counter() - started
        stats.window_series += len(series_map) - self._series_counted
        self._series_counted = len(series_map)
        return snapshot

    def _append_to_log(self, now: int) -> tuple[int, LogMarker]:
        """The operations since the last snapshot as one frame; the whole state when the log starts (and after a
        resume); and, while the log's next generation is being written, the next part of the state to it (see
        ``flows.window_log``)."""
        state_log, ops = self._log, self._ops
        assert state_log is not None and ops is not None
        written = 0
        series_map = self.state.series
        if state_log.generation < 0:
            spec_count = len(self.specs)
            frame = _FRAME_RECORDS + b"".join(_encode_series(k, s, spec_count) for k, s in series_map.items())
            numbers = _numbers_frame(list(series_map.values()), list(series_map))
            state_log.write_generation([_FRAME_NESTED, frame, numbers])
            self._live_bytes = written = len(_FRAME_NESTED) + len(frame) + len(numbers)
        else:
            if ops:
                frame = _FRAME_OPS + pickle.dumps(ops, protocol=5)
                state_log.append(frame)
                written = len(frame)
            if not state_log.writing_next and state_log.needs_new_generation(self._live_bytes):
                # The series as they stand after the frame above: the operations after it go to both
                # generations, so each series' record in the next one may be written at any later snapshot.
                held = list(series_map.values())
                keys = [series.key for series in held]
                state_log.begin_generation(keys)
                numbers = _numbers_frame(held, keys)
                state_log.append_next(_FRAME_NESTED)
                state_log.append_next(numbers)
                written += len(_FRAME_NESTED) + len(numbers)
            if state_log.writing_next:
                written += self._write_base_part(state_log)
        ops.clear()
        self._dirty.clear()
        state_log.collect()
        return written, state_log.marker(now)

    def _write_base_part(self, state_log: WindowLog) -> int:
        """The next part of the series to the log's next generation (those forgotten since it began are left
        out: the operations say so)."""
        series_map, spec_count = self.state.series, len(self.specs)
        part = state_log.next_base_part()
        records = [_encode_series(key, s, spec_count) for key in part if (s := series_map.get(key)) is not None]
        frame = _FRAME_SERIES + b"".join(records)
        if state_log.append_base(frame):
            self._live_bytes = state_log.base_bytes
        return len(frame)

    def _encode_changed(self, now: int) -> tuple[int, int, WindowSnapshot]:
        """Without the log: the series changed since the last snapshot encoded again, joined with the others'
        records kept from before."""
        blobs = self._blobs
        series_map = self.state.series
        changes: list[bytes] = []
        live = self._live_bytes
        for key in self._dirty:
            old = blobs.get(key)
            if old is not None:
                live -= len(old)
            series = series_map.get(key)
            if series is None:
                if old is not None:
                    del blobs[key]
                    changes.append(_tombstone(key))
            else:
                blob = blobs[key] = _encode_series(key, series, len(self.specs))
                live += len(blob)
                changes.append(blob)
        self._dirty.clear()
        self._live_bytes = live
        joined = b"".join(blobs.values())
        return sum(len(c) for c in changes), len(joined), (_SNAPSHOT_FORMAT, now, joined)

    # -- closing

    def _emit(
        self, series: _Series, index: int, start: int, window: _Window, out: list[Aggregate], lines: list[str]
    ) -> int:
        """A closed window's aggregate, and its line when the step formats them, unless it was written early and
        is unchanged since (only counted then without ``closed_written``). Returns its cost in a closing round's
        units (see _FORMAT_COST)."""
        health.counters().windows_closed += 1
        if not window.values:
            return 0  # (a nesting window whose base windows never closed into it: nothing to aggregate)
        written = window.written & _WRITE_STATE
        if written == _WRITTEN:
            if self.closed_written:
                out.append(self._aggregate(series, index, start, window))
            return 1
        aggregate = self._aggregate(series, index, start, window)
        out.append(aggregate)
        if self.format_line is not None:
            lines.append(self.format_line(aggregate))
            if written == _CHANGED:
                health.counters().windows_rewritten += 1
        return _FORMAT_COST

    def _close_due(self, series: _Series, now: int, out: list[Aggregate], lines: list[str]) -> None:
        watermark = series.max_ts + (now - series.sys_at_max) - self.lateness_ns
        windows = series.windows
        specs = self.specs
        spec_count = len(specs)
        # Another pass when a window that _take opened (a window length added to the config since its base window
        # opened) is due already.
        while watermark >= series.first_end:
            first_end = series.first_end = _NO_END  # (a window _take opens sets it again)
            for wkey in list(windows):
                start, index = divmod(wkey, spec_count)  # split_window_key, inline
                end = start + specs[index].length_ns
                if end <= watermark:
                    if wkey not in windows:
                        continue  # a base window, closed before its nesting window (below)
                    if self._nesting_length[index]:
                        self._close_base_windows(series, index, start, None, out, lines)
                    window = self._take(series, index, start)
                    assert window is not None  # (a key of windows)
                    self._emit(series, index, start, window, out, lines)
                    self._log_close(series, index, start)
                elif end < first_end:
                    first_end = end
            if first_end < series.first_end:
                series.first_end = first_end

    def _close_base_windows(
        self, series: _Series, index: int, start: int, quiet_at: int | None, out: list[Aggregate], lines: list[str]
    ) -> int:
        """Close the open base windows of a nesting window that closes, before it: their values go to it. They are
        due too (they end no later, by the same clock). ``quiet_at``: the clock of a close on wall time (None: by
        event time). Returns their cost in a closing round's units (see _emit)."""
        spec_count, base = len(self.specs), self._base
        end = start + self.specs[index].length_ns
        inner = sorted(k for k in series.windows if k % spec_count == base and start <= k // spec_count < end)
        cost = 0
        for wkey in inner:
            inner_start = wkey // spec_count
            window = self._take(series, base, inner_start)
            assert window is not None  # (a key of windows)
            cost += self._emit(series, base, inner_start, window, out, lines)
            if quiet_at is None:
                self._log_close(series, base, inner_start)
            else:
                self._log_quiet_close(series, base, inner_start, quiet_at)
        return cost

    def _pop_deadlines(self, now: int, out: list[Aggregate], lines: list[str]) -> None:
        heap = self._due_heap
        series_map = self.state.series
        spec_count = len(self.specs)
        budget = _CLOSE_UNITS
        while heap and heap[0] * _DUE_BUCKET_NS <= now and budget > 0:
            bucket = heapq.heappop(heap)
            entries = self._due.pop(bucket)
            # Close part of the bucket, as far as the budget goes (a round costs at most about _CLOSE_PER_CALL
            # closes that format their line); the rest stays due (notify_at is then just ahead, _YIELD_NS).
            held, indexes, starts = entries.series, entries.indexes, entries.starts
            taken, count = entries.taken, len(held)
            while taken < count and budget > 0:
                series, index, start = held[taken], indexes[taken], starts[taken]
                taken += 1
                if start * spec_count + index not in series.windows:
                    continue  # closed earlier by event time (or the series was forgotten since)
                end = start + self.specs[index].length_ns
                due = series.sys_at_max + (end + self.lateness_ns - series.max_ts)
                if due <= now:
                    if self._nesting_length[index]:
                        budget -= self._close_base_windows(series, index, start, now, out, lines)
                    window = self._take(series, index, start)
                    assert window is not None  # (in windows, above)
                    budget -= self._emit(series, index, start, window, out, lines)
                    if self._ops is None:
                        self._dirty.add(series.key)
                    self._log_quiet_close(series, index, start, now)
                    _carry_clock(series, now)
                else:
                    _add_to_bucket(self._due, heap, due, series, index, start)  # (a later bucket: due > now)
            if taken < count:
                entries.taken = taken
                self._due[bucket] = entries
                heapq.heappush(heap, bucket)
        if budget > 0 and self._early_ns:
            self._write_early(now, min(budget, _EARLY_PER_CALL), lines)
        # A quiet series keeps its clock for a while, so that a straggler is still recognised as late
        # (instead of reopening a window that was already written); then it is forgotten.
        if now - self._last_sweep > _SWEEP_EVERY_NS:
            self._last_sweep = now
            for key in [k for k, s in series_map.items() if not s.windows and now - s.sys_at_max > _FORGET_NS]:
                self._log_forget(series_map.pop(key))
                self._dirty.add(key)

    def _write_early(self, now: int, budget: int, lines: list[str]) -> None:
        """Write early the lines of up to ``budget`` windows whose allowed lateness has begun (a fraction of it
        has passed, _EARLY_START_FRACTION), the shortest windows first. A line is the one a close would format
        (from the same aggregate, of the same values): a reading added meanwhile marks the window changed, and
        its close writes it again."""
        for spec_index in self._early_order:
            heap = self._early_heap[spec_index]
            if heap and heap[0] * _DUE_BUCKET_NS <= now:
                budget = self._write_early_of(spec_index, now, budget, lines)
                if budget <= 0:
                    return

    def _write_early_of(self, spec_index: int, now: int, budget: int, lines: list[str]) -> int:
        """``_write_early`` for the windows of one spec; returns the budget left."""
        heap, buckets = self._early_heap[spec_index], self._early[spec_index]
        specs, spec_count = self.specs, len(self.specs)
        format_line = self.format_line
        assert format_line is not None  # (nothing is written early without it: _early_ns is 0)
        lead = self._early_ns
        while heap and heap[0] * _DUE_BUCKET_NS <= now and budget > 0:
            bucket = heapq.heappop(heap)
            entries = buckets.pop(bucket)
            held, indexes, starts = entries.series, entries.indexes, entries.starts
            first, count = entries.taken, len(held)
            stop = min(count, first + budget)
            budget -= stop - first
            if stop < count:
                entries.taken = stop
                buckets[bucket] = entries
                heapq.heappush(heap, bucket)
            for i in range(first, stop):
                series, index, start = held[i], indexes[i], starts[i]
                window = series.windows.get(start * spec_count + index)
                if window is None or window.written & _WRITE_STATE:
                    continue  # closed already, or written
                end = start + specs[index].length_ns
                early_at = series.sys_at_max + (end + self.lateness_ns - series.max_ts) - lead
                if early_at > now:
                    # (its series' clock was moved on by a downtime left out: not yet; a later bucket)
                    _add_to_bucket(buckets, heap, early_at, series, index, start)
                    continue
                whole = self._with_base_windows(series, index, start, window) if self._nesting_length[index] else window
                if not whole.values:
                    continue  # (see _emit)
                lines.append(format_line(self._aggregate(series, index, start, whole)))
                window.written |= _WRITTEN
        return budget

    def _with_base_windows(self, series: _Series, index: int, start: int, window: _Window) -> _Window:
        """A nesting window as its close would find it, with the values of its open base windows: those are
        marked, so that a reading added to one of them changes it."""
        spec_count, base = len(self.specs), self._base
        end = start + self._nesting_length[index]
        whole: _Window | None = None
        for wkey, inner in series.windows.items():
            inner_start, inner_index = divmod(wkey, spec_count)
            if inner_index == base and start <= inner_start < end:
                inner.written |= _NESTING_WRITTEN
                if not inner.written & _IN_NESTING:
                    if whole is None:
                        whole = _Window()
                        whole.merge(window)
                    whole.merge(inner)
        return window if whole is None else whole

    def _aggregate(self, series: _Series, index: int, start: int, window: _Window) -> Aggregate:
        spec = self.specs[index]
        values = window.values
        count = len(values)
        if count == 1:
            # The common case for a fleet reporting every 10 s: every statistic is the one value (no stddev,
            # as InfluxQL's STDDEV() of one value). The same numbers as the general path, without its work.
            v = values[0]
            quantiles = tuple((q, v) for q in self.quantiles)
            end = start + spec.length_ns
            fields = (series.measurement, series.key, spec.label, start, end, 1, v, v, v, v, v, v, None, quantiles)
            return new_tuple(Aggregate, fields)
        # (a list of the values, sorted in place: sorted() took them from the array one by one, as an iterator)
        ordered: list[float] = values.tolist()
        ordered.sort()
        total: float | None
        stddev: float | None
        try:
            total = math.fsum(ordered)
            mean = total / count
            stddev = math.sqrt(math.fsum([(v - mean) * (v - mean) for v in ordered]) / (count - 1))
            if stddev == math.inf:
                raise OverflowError
        except OverflowError:
            # Values near the largest double (1e308 from a device, or a firmware's "no data" marker): the sum
            # or the squares overflow, and the window would stop the flow at every close, after a restart too.
            total, mean, stddev = _scaled_statistics(ordered)
        positions = self._positions.get(count)
        if positions is None:
            positions = tuple((q, *_quantile_position(count, q)) for q in self.quantiles)
            if len(self._positions) < _POSITIONS_KEPT:
                self._positions[count] = positions
        return new_tuple(
            Aggregate,
            (
                series.measurement,
                series.key,
                spec.label,
                start,
                start + spec.length_ns,
                count,
                ordered[0],
                ordered[-1],
                mean,
                total,
                window.first_v,
                window.last_v,
                stddev,
                tuple([(q, _between(ordered[lo], ordered[hi], frac)) for q, lo, hi, frac in positions]),
            ),
        )
