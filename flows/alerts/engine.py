"""The alert state machine: one Bytewax stateful operator evaluating every rule on every series of its key.

Input: ``WatchedReadings`` and ``WatchedAggregates``, the readings and the closed windows as the parser and the
window step made them (``watched_readings`` drops the series no rule watches), and lists of ``Observation``
(log rates, made by ``observations_from_log_rates``, which drops the figures no rule needs). Output: lists of
``AlertTransition``. The lead keys observations so that a series always meets the same logic (the readings' shard
key; log rates by service); a logic holds the state of every (rule, series) pair of its key.

Per (rule, series), threshold and rate-of-change rules (event time throughout)::

    ok ──cond──► pending ──held for `for`──► firing ──no severity holds──► resolved (state ok)
     ▲              │ cond false                 │ severity changes: firing again, new severity
     └──── "ok" ────┘                            │ every `renotify` of event time: firing, renotify=True

- Transitions emitted: ``pending`` (only when ``for`` > 0), ``firing``, ``resolved``, and ``ok`` when a pending
  episode is cancelled (for history; notifiers only act on firing and resolved). A change of severity while pending
  emits nothing: the episode fires with the severity that holds when ``for`` has elapsed.
- ``for`` counts from the event time the condition first held (``started_ns``, any severity) and is checked as
  observations arrive: firing happens at the first observation at least ``for`` later that still holds.
- Severity: critical beats warning. Once firing, a severity holds while the value passes its clear threshold
  (hysteresis, see ``flows.alerts.rules``); the warning clear applies while firing at critical too, so critical
  de-escalates to warning rather than resolving while the value is still in the warning band.
- Rate of change: the value is ``|Δvalue| / Δt`` (seconds of event time) or ``|Δvalue|`` (per window) between
  consecutive observations; the first observation of a series only primes it.
- Out of order: an observation older than the newest one seen for the (rule, series) is ignored (no state change,
  no rate); equal times are evaluated (rate of change skips them: Δt = 0). NaN values are ignored too.
- A firing threshold alert stays firing while its series is silent: pair it with a deadman rule.

Deadman rules: a (rule, series) is known once it was seen (a series never seen cannot be missed). It fires when no
observation has arrived for ``silent_for`` of system time (the pipeline clock, which leaves out time the flow was
stalled on a store), checked with ``notify_at``/``on_notify``; it resolves with the next observation. Re-notifications
follow system time as well. After a restart every deadman clock starts again from the restart, so the downtime
itself does not raise alarms.

Notification ids are deterministic (``notification_id``): every time in them is event time (a deadman's firing time
is its last observation's event time + ``silent_for``; its k-th re-notification ``+ k * renotify``), so a replay after
a restart produces the same ids and the notifier's journal drops what was already sent.

A snapshot holds each state's record, encoded when the state changed (``AlertLogic.snapshot``). An observation that
leaves a window rule's state ok changes only its newest event time, which a window rule does not need after a restart
(see ``_Rule``): it is not recorded, and a new window state is recorded once it is pending or firing. With recovery on,
a logic holding many states (a rule on every series of a fleet shard) writes them to a log of its own beside Bytewax's
partitions instead, as the windows do (``flows.window_log``): each epoch appends the states that changed (and tombstones
of forgotten ones), an ok state that changed only in its newest event time as that time alone, and the snapshot
Bytewax stores is a marker into the log. After a resume, firing stays firing
(nothing is re-sent) and pending keeps its ``started_ns``. States of rules no longer configured are dropped. A stop
(``flows.lifecycle.stopping``) ends the input like a finite one; ``on_eof`` emits nothing either way and keeps every
state for the snapshot.

Memory is bounded: series come and go (devices replaced, services named after containers). The state of a (rule,
series) that is ok (not pending, not firing, not an armed deadman) is forgotten once its series has been silent for
``idle_after`` (system time; swept every quarter of it, from ``notify_at`` too), and a key holding more than
``max_states`` forgets its least recently seen ok states first (to 90 % of the cap, logged). A forgotten series that
comes back starts from nothing, as a new one: at worst a rate of change is primed again. Pending and firing alerts
and armed deadman timers are never forgotten: a firing alert must resolve, not vanish, so they may exceed the cap
(logged). A key left with no state at all (a service's log-rate key) is discarded from Bytewax's state. Every
forgotten state is counted in ``evicted``.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import logging
import operator
import pickle
import struct
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from bytewax.operators import StatefulBatchLogic

from fleetwatch.labels import quantile_field
from fleetwatch.record import (
    AlertTransition,
    LogRate,
    Reading,
    escape_measurement,
    escape_tag,
    parse_series,
    series_key,
)
from flows import clock as pipeline_clock
from flows.alerts.rules import (
    DEFAULT_MAX_STATES,
    DEFAULT_STATE_IDLE_AFTER,
    LOG_RATE_STATS,
    TARGETS,
    WINDOW_STATS,
    AlertRule,
    RuleMatcher,
    Threshold,
    render_summary,
    unknown_target,
)
from flows.window_log import LOG_FORMAT, LogMarker, WindowLog
from flows.windows import Aggregate

log = logging.getLogger(__name__)

_NO_TIME = -(2**63)
# A state's record in a snapshot: the series key's length, the key (UTF-8), then the fields in the order of
# _State.__getstate__.
_KEY_LENGTH = struct.Struct("<I")
_STATE_FIELDS = struct.Struct("<bbqqqdqqq")
_OK, _PENDING, _FIRING = 0, 1, 2
_SEVERITIES = ("", "warning", "critical")  # by rank
_CACHE_MAX = 1_000_000
_SECOND = 1_000_000_000
# A key over its cap says so at most this often (seconds of monotonic time).
_CAP_LOG_INTERVAL = 60.0
# With recovery on, a logic holding at least this many states keeps them in the alert state log, and its
# snapshot is a marker: at 100,000 series, joining every record at every epoch (18 MB, then pickled and written
# to SQLite by Bytewax) was the largest cost of the alerts that did not follow the rate of observations. Fewer
# states (a service's log-rate key) stay in the snapshot itself, which costs less than a log file per key.
_LOG_MIN_STATES = 1_000
# The folder of the alert state logs in the recovery directory (flows.window_log).
ALERT_LOG_FOLDER = "alert-log"
# The log's frames: every state (the first frame of a generation), or the changes since the frame before. Both
# are {rule name: (state records joined, series whose state was forgotten)}, pickled; a frame of changes may add
# to a rule's tuple the series whose state changed only in its newest event time, and those times (int64, native
# order), which replay sets on the states it holds.
_FRAME_ALL = b"R"
_FRAME_CHANGES = b"O"


def _same_ns(ns: int) -> int:
    return ns


class Observation(NamedTuple):
    """One value a rule can look at. ``target`` is "reading", "window" or "log_rate"; ``series`` is the series key
    (``flows.alerts.rules`` describes each target's form); ``stat_key`` the statistic ("value" for readings)."""

    target: str
    series: str
    stat_key: str
    value: float
    ts_ns: int


# ------------------------------------------------------------------------------------------- observations


def aggregate_series(agg: Aggregate) -> str:
    """``readings,device=d1,metric=t`` in window ``1m`` -> ``readings_agg,device=d1,metric=t,window=1m``: the
    InfluxDB series the aggregate is stored as."""
    prefix = escape_measurement(agg.measurement)
    return f"{prefix}_agg{agg.series[len(prefix) :]},window={escape_tag(agg.window)}"


def log_rate_series(service: str) -> str:
    return series_key("log_rates", {"service": service})


class WatchedReadings(NamedTuple):
    """Readings for the alert step as the parser made them: each is an observation of its series' value (target
    "reading", stat "value"). At a rule on every reading, an ``Observation`` made per reading cost more than the
    rule's evaluation."""

    readings: list[Reading]


def watched_readings(readings: list[Reading], matcher: RuleMatcher) -> WatchedReadings | None:
    """The readings of series some rule watches (a dict lookup each), or None when there are none. The list
    itself when every reading is watched: nothing is copied."""
    known = matcher.cache("reading").get
    kept: list[Reading] = []
    for reading in readings:
        rules = known(reading.series)
        if rules is None:
            rules = matcher.rules_for("reading", reading.series)
        if rules:
            kept.append(reading)
    if not kept:
        return None
    return WatchedReadings(readings if len(kept) == len(readings) else kept)


@functools.lru_cache(maxsize=64)
def _quantile_stat(q: float) -> str:
    return quantile_field(q)


def _aggregate_stat(agg: Aggregate, stat: str) -> float | None:
    """The window's ``stat``; None when it lacks it (the stddev of one value, a quantile it does not compute)."""
    if stat in _AGGREGATE_FIELDS:
        value = getattr(agg, stat)
        return None if value is None else float(value)
    for q, value in agg.quantiles:
        if _quantile_stat(q) == stat:
            return value
    return None  # a quantile the windows do not compute


_AGGREGATE_FIELDS = frozenset(WINDOW_STATS[:8])  # count .. stddev


class WatchedAggregates(NamedTuple):
    """Closed windows for the alert step as the window step made them: each gives the stat a window rule watches
    (see ``_aggregate_stat``), at the window start (its time in InfluxDB), as an observation of the aggregate's
    series (``aggregate_series``). Windows of a length no rule watches are skipped there."""

    aggregates: list[Aggregate]


def _log_rate_stat(rate: LogRate, stat: str) -> float:
    if stat == "count":
        return float(rate.total)
    if stat == "errors":
        return float(rate.errors)
    if stat == "error_rate":
        total = rate.total
        return rate.errors / total if total else 0.0
    # A level absent from the window counted zero events: that must be seen, or an error-count alert never clears.
    return float(rate.by_level.get("" if stat == "unknown" else stat, 0))


def observations_from_log_rates(rates: Iterable[LogRate], matcher: RuleMatcher | None = None) -> list[Observation]:
    """Per log-rate window, one observation per figure (count, errors, error_rate, one per level), at the window
    start; with a matcher, only the figures rules watching the service need."""
    out: list[Observation] = []
    for rate in rates:
        series = log_rate_series(rate.service)
        stats: Iterable[str] = LOG_RATE_STATS if matcher is None else matcher.stats_for("log_rate", series)
        out += [Observation("log_rate", series, s, _log_rate_stat(rate, s), rate.window_start_ns) for s in stats]
    return out


# ------------------------------------------------------------------------------------------- ids and summaries


def notification_id(
    rule: str, series: str, state: str, severity: str, started_ns: int, at_ns: int, renotify: bool
) -> str:
    """Deterministic from event data: the same transition replayed after a restart gets the same id."""
    text = "\x1f".join((rule, series, state, severity, str(started_ns), str(at_ns), "1" if renotify else "0"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _show(value: Threshold) -> str:
    return f"[{value[0]:g}, {value[1]:g}]" if isinstance(value, tuple) else f"{value:g}"


# ------------------------------------------------------------------------------------------- compiled rules


def _outside(value: float, band: tuple[float, float]) -> bool:
    return value < band[0] or value > band[1]


def _inside(value: float, band: tuple[float, float]) -> bool:
    return band[0] <= value <= band[1]


_TESTS: dict[str, Callable[[float, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "outside": _outside,
    "inside": _inside,
}


class _Level(NamedTuple):
    severity: str
    rank: int
    threshold: Threshold
    clear: Threshold


def _reported(threshold: Threshold, value: float) -> float:
    """The number a transition reports: a band's bound nearest the value."""
    if isinstance(threshold, tuple):
        low, high = threshold
        return low if abs(value - low) <= abs(value - high) else high
    return threshold


def _ns(delta: timedelta | None) -> int:
    return 0 if delta is None else delta // timedelta(microseconds=1) * 1000


class _Rule:
    """A rule prepared for evaluation."""

    __slots__ = (
        "advanced",
        "deadman",
        "deadman_rank",
        "dirty",
        "for_ns",
        "levels",
        "name",
        "per_window",
        "rate",
        "records",
        "records_each_observation",
        "records_time_alone",
        "renotify_ns",
        "rule",
        "silent_ns",
        "stat",
        "test",
    )

    def __init__(self, rule: AlertRule) -> None:
        self.rule = rule
        self.name = rule.name
        # The snapshot record of each series' state, and the series whose state changed since the last
        # snapshot: a snapshot encodes only those and joins the rest (see AlertLogic.snapshot).
        self.records: dict[str, bytes] = {}
        self.dirty: set[str] = set()
        # The states that changed in their newest event time since the last snapshot (a reading rule's state at
        # nearly every reading), each once: for those not in ``dirty`` the alert state log takes the series and
        # the time alone, not a whole record. With a rule on every reading of 100,000 series, whole records were
        # 0.6 us a reading. (A list of the watches, flagged, not a dict by series: one more lookup per reading.)
        self.advanced: list[_Watch] = []
        self.stat = rule.stat
        self.deadman = rule.kind == "deadman"
        self.deadman_rank = 2 if rule.critical is not None else 1
        self.rate = rule.kind == "rate_of_change"
        self.per_window = rule.rate_per == "window"
        # A series' windows close once each and in order, also across a restart (its window state is restored
        # from the same epoch as the alert state): no window observation is older than one before it (but after
        # an hour of silence, when both the series' windows and its alert states are forgotten). So the newest
        # event time of a window rule's state guards nothing after a restart, and an observation that changes
        # nothing else is not a change to snapshot, nor is a new ok state (restored as missing, it is made again
        # as it was). At a 10 s boundary of 100,000 series that spares 100,000 records (about 200 ms of the
        # worker, in the way of every alert behind them). Readings can come out of order, and a rate of change
        # keeps its previous value: those states are recorded every time.
        self.records_each_observation = self.rate or rule.target != "window"
        # (a rate of change keeps its previous value too: recorded whole)
        self.records_time_alone = self.records_each_observation and not self.rate
        self.for_ns = _ns(rule.for_)
        self.silent_ns = _ns(rule.silent_for)
        self.renotify_ns = _ns(rule.renotify)
        self.test = _TESTS[rule.condition]
        levels = []
        if rule.critical is not None:
            clear = rule.critical_clear if rule.critical_clear is not None else rule.critical
            levels.append(_Level("critical", 2, rule.critical, clear))
        if rule.warning is not None:
            clear = rule.warning_clear if rule.warning_clear is not None else rule.warning
            levels.append(_Level("warning", 1, rule.warning, clear))
        self.levels = tuple(levels)

    def severity(self, value: float, firing_rank: int) -> _Level | None:
        """The level that holds: its threshold is passed, or (hysteresis) it is at or below the firing severity
        and its clear threshold is passed."""
        test = self.test
        for level in self.levels:
            if test(value, level.threshold) or (firing_rank >= level.rank and test(value, level.clear)):
                return level
        return None

    def level(self, rank: int) -> _Level:
        return next(level for level in self.levels if level.rank == rank)

    def summary(self, state: str, severity: str, value: float, threshold: float, series: str, renotify: bool) -> str:
        rule = self.rule
        if rule.summary is not None:
            fields = {**parse_series(series)[1], "rule": self.name, "severity": severity, "value": value}
            fields |= {"threshold": threshold, "state": state, "series": series}
            try:
                return render_summary(rule.summary, fields)
            except (ValueError, IndexError, KeyError, AttributeError, TypeError):
                pass  # a tag formatted as a number, say: the default summary still says what happened
        head = {"firing": severity.upper(), "pending": f"pending {severity}", "resolved": f"RESOLVED {severity}"}.get(
            state, "ok"
        )
        if renotify:
            head += ", still firing"
        if self.deadman:
            what = (
                f"data again after {value:g}s"
                if state == "resolved"
                else f"no data for {value:g}s (silent_for {threshold:g}s)"
            )
        else:
            stat = f"change per {rule.rate_per}" if self.rate else rule.stat
            level = self.level(_SEVERITIES.index(severity))
            cond = f"{rule.condition} {_show(level.threshold)}"
            if state == "resolved":
                what = f"{stat} {value:g}, cleared ({threshold:g})"
            elif state == "ok":
                what = f"{stat} {value:g}, no longer {cond}"
            elif not self.test(value, level.threshold):
                # Held by hysteresis (back from critical to warning, say): the value does not pass the level's
                # threshold, only its clear one; "29 > 30" would be false.
                what = f"{stat} {value:g} {rule.condition} {_show(level.clear)}, held until it clears (fires at {cond})"
            else:
                what = f"{stat} {value:g} {cond}"
        return f"[{head}] {self.name}: {what} on {series}"


class _State:
    """One (rule, series). Times are event-time ns except ``sys_seen``: system time of the last observation (for a
    deadman while firing, of the last notification), which also says how long the series has been idle."""

    __slots__ = (
        "last_ts",
        "notified_ns",
        "phase",
        "prev_ts",
        "prev_value",
        "queued_at",
        "rank",
        "renotified",
        "started_ns",
        "sys_seen",
    )

    def __init__(self) -> None:
        self.phase = _OK
        self.rank = 0  # severity: 1 warning, 2 critical (pending: the one holding now)
        self.started_ns = 0
        self.last_ts = _NO_TIME
        self.notified_ns = 0  # the last firing notification (re-notify clock)
        self.prev_value = 0.0  # rate of change: the previous observation
        self.prev_ts = _NO_TIME
        self.sys_seen = 0  # deadman: last arrival; while firing, the last notification
        self.renotified = 0  # deadman: re-notifications of this episode
        self.queued_at: int | None = None  # deadman: the one live deadline of this state in the heap

    def __getstate__(self) -> tuple[int, int, int, int, int, float, int, int, int]:
        return (
            self.phase,
            self.rank,
            self.started_ns,
            self.last_ts,
            self.notified_ns,
            self.prev_value,
            self.prev_ts,
            self.sys_seen,
            self.renotified,
        )

    def __setstate__(self, state: tuple[int, int, int, int, int, float, int, int, int]) -> None:
        (
            self.phase,
            self.rank,
            self.started_ns,
            self.last_ts,
            self.notified_ns,
            self.prev_value,
            self.prev_ts,
            self.sys_seen,
            self.renotified,
        ) = state
        self.queued_at = None


class _Watch:
    """One rule watching one series, with the series' state under the rule once it has one: an observation finds
    its rules and their states with one lookup of the series in a logic's cache (at 100,000 series each lookup is
    a cache miss, and a reading took four). Invariant: ``state is states.get(series)``. A state is only made
    through its watch, and one forgotten drops its series' watches from the cache, so none outlives its state."""

    __slots__ = ("advanced", "rule", "series", "state", "states")

    def __init__(self, rule: _Rule, states: dict[str, _State], series: str) -> None:
        self.rule = rule
        self.states = states
        self.series = series
        self.state = states.get(series)
        self.advanced = False  # in rule.advanced (see _Rule)

    def new_state(self) -> _State:
        st = self.state = self.states[self.series] = _State()
        return st


def _take_advanced(rule: _Rule) -> list[_Watch]:
    """The rule's watches whose state advanced since the last snapshot; the rule starts a new list."""
    advanced = rule.advanced
    rule.advanced = []
    for watch in advanced:
        watch.advanced = False
    return advanced


# What a logic's cache holds for a series: the one rule watching it (at fleet scale nearly always one), or the rules
# watching it (none: the empty tuple). A tuple around a single watch was 48 bytes a (rule, series).
_Watches = _Watch | tuple[_Watch, ...]


class _Caches(dict[str, dict[str, _Watches]]):
    def __missing__(self, target: str) -> dict[str, _Watches]:
        raise unknown_target(target)


# ------------------------------------------------------------------------------------------- the logic


def _decode_states(records: bytes) -> dict[str, _State]:
    """The states of one rule from its snapshot records (see ``AlertLogic.snapshot``)."""
    states: dict[str, _State] = {}
    pos = 0
    while pos < len(records):
        (length,) = _KEY_LENGTH.unpack_from(records, pos)
        pos += _KEY_LENGTH.size
        series = records[pos : pos + length].decode("utf-8", "surrogatepass")
        pos += length
        st = _State()
        st.__setstate__(_STATE_FIELDS.unpack_from(records, pos))
        pos += _STATE_FIELDS.size
        states[series] = st
    return states


def _state_record(series: str, st: _State) -> bytes:
    key = series.encode("utf-8", "surrogatepass")
    return _KEY_LENGTH.pack(len(key)) + key + _STATE_FIELDS.pack(*st.__getstate__())


def _replay_log(frames: Iterable[bytes]) -> dict[str, dict[str, _State]]:
    """Every rule's states from the alert state log's frames, applied in order."""
    by_rule: dict[str, dict[str, _State]] = {}
    for frame in frames:
        kind, body = frame[:1], frame[1:]
        if kind == _FRAME_ALL:
            by_rule.clear()
        elif kind != _FRAME_CHANGES:
            raise ValueError(f"alert state log frame of an unknown kind {kind!r}")
        for name, change in pickle.loads(body).items():
            states = by_rule.setdefault(name, {})
            states.update(_decode_states(change[0]))
            for series in change[1]:
                states.pop(series, None)
            if len(change) > 2:
                times = array("q")
                times.frombytes(change[3])
                for series, ts in zip(change[2], times, strict=True):
                    # (a state missing here is in a part of a new generation still to come, with this time)
                    st = states.get(series)
                    if st is not None:
                        st.last_ts = ts
    return by_rule


# What a snapshot is: {"version": 2, "records": {rule name: the rule's state records}}, handed to Bytewax as it is
# (Bytewax pickles it: pickling it here too copied every record twice); or, with the alert state log, a marker
# into it. Version 1, pickled bytes of the states themselves, still resumes.
AlertSnapshot = dict[str, Any] | LogMarker


# What the alert step takes: see the module docstring.
AlertInput = WatchedReadings | WatchedAggregates | list[Observation]


class AlertLogic(StatefulBatchLogic[AlertInput, list[AlertTransition], AlertSnapshot | bytes]):
    """Alert states of one key. ``rules`` may be a shared ``RuleMatcher`` (the logic keeps its series' rules itself,
    with their states, and asks the matcher once per series without its cache). ``clock``: system-time ns for
    deadman rules and idle states (tests move it by hand; by default the pipeline clock). ``idle_after`` and
    ``max_states``: ``alerts.state_idle_after`` and ``alerts.max_states`` (see the module docstring).
    ``recovery_dir``: Bytewax's recovery directory, where the alert state log goes once the logic holds many
    states; None keeps every state in the snapshot (recovery off, tests). ``step_id``: the Bytewax step whose
    snapshots hold the log's markers."""

    def __init__(
        self,
        rules: Sequence[AlertRule] | RuleMatcher,
        resume_state: AlertSnapshot | bytes | None = None,
        clock: Callable[[], int] | None = None,
        *,
        idle_after: timedelta = DEFAULT_STATE_IDLE_AFTER,
        max_states: int = DEFAULT_MAX_STATES,
        recovery_dir: Path | None = None,
        step_id: str = "fleetwatch.alerts",
    ) -> None:
        if max_states < 1 or idle_after <= timedelta(0):
            raise ValueError("max_states must be >= 1 and idle_after > 0")
        self.matcher = rules if isinstance(rules, RuleMatcher) else RuleMatcher(rules)
        self._now = clock or pipeline_clock.now_ns
        # notify_at answers in wall time, which Bytewax compares with its own clock. The pipeline clock runs
        # behind wall time by the time the flow stalled; a test clock is both at once.
        self._to_wall = pipeline_clock.to_wall_ns if clock is None else _same_ns
        self._rules = {rule.name: _Rule(rule) for rule in self.matcher.rules}
        # rule name -> series -> state
        self.states: dict[str, dict[str, _State]] = {name: {} for name in self._rules}
        # (due in system-time ns, rule, series), deadman rules only; stale entries are skipped on pop.
        self._deadlines: list[tuple[int, str, str]] = []
        self._caches = _Caches({t: {} for t in TARGETS})
        self.idle_ns = _ns(idle_after)
        self.max_states = max_states
        # States forgotten (idle, or over the cap), for health.
        self.evicted = 0
        self._count = 0
        self._shrink_at = max_states
        self._sweep_every = max(self.idle_ns // 4, _SECOND)
        # Only threshold and rate-of-change states are ever idle: deadman states fire on silence instead.
        self._sweepable = any(not rule.deadman for rule in self._rules.values())
        self._next_cap_log = 0.0
        self._recovery_dir = recovery_dir
        self._step_id = step_id
        self._log: WindowLog | None = None
        # The size of the states in the log's last whole frame, against which the log's growth is measured.
        self._live_bytes = 0
        now = self._now()
        self._next_sweep = now + self._sweep_every
        if isinstance(resume_state, tuple):
            if resume_state[0] != LOG_FORMAT:
                raise ValueError(f"alert snapshot of an unknown format {resume_state[0]!r}")
            if recovery_dir is None:
                raise ValueError("an alert snapshot that refers to the alert state log needs the recovery directory")
            _, _, log_name, generation, seq = resume_state
            # The first snapshot after the resume starts a new generation: frames after the marker belong to
            # epochs that never committed.
            self._log = WindowLog(recovery_dir, step_id, log_name, ALERT_LOG_FOLDER)
            self._resume(_replay_log(self._log.replay(generation, seq)), now)
        elif resume_state is not None:
            saved = pickle.loads(resume_state) if isinstance(resume_state, bytes) else resume_state
            self._resume(
                {name: _decode_states(records) for name, records in saved["records"].items()}
                if saved["version"] == 2
                else saved["states"],  # version 1: the states pickled whole
                now,
            )

    def _resume(self, by_rule: dict[str, dict[str, _State]], now: int) -> None:
        """Take over the states of a snapshot; states of rules no longer configured are dropped (said in the log
        when some were firing: nothing resolves them, and their retained MQTT topics keep the firing state)."""
        for name, states in by_rule.items():
            if name in self._rules:
                self.states[name] = states
                continue
            firing = sum(1 for st in states.values() if st.phase == _FIRING)
            if firing:
                log.warning(
                    "alert rule %r is no longer configured: %d of its series were firing, and no resolved "
                    "notification will be sent for them (their retained MQTT topics <prefix>/%s/# keep that state "
                    "until cleared)",
                    name,
                    firing,
                    name,
                )
        for name, states in self.states.items():
            rule = self._rules[name]
            rule.dirty.update(states)  # sys_seen is set below
            self._count += len(states)
            if not rule.deadman:
                # The rule may have lost the severity it was firing at: carry on at the one it has.
                ranks = {level.rank for level in rule.levels}
                for st in states.values():
                    if st.rank and st.rank not in ranks:
                        st.rank = max(ranks)
                    st.sys_seen = now  # the restart counts as an arrival: downtime is not idleness
            else:
                for series, st in states.items():
                    st.sys_seen = now  # the restart counts as an arrival: downtime is not silence
                    if st.phase != _FIRING:
                        self._arm(name, series, st, now + rule.silent_ns)
                    elif rule.renotify_ns:
                        self._arm(name, series, st, now + rule.renotify_ns)

    # -- Bytewax callbacks

    def on_batch(self, values: list[AlertInput]) -> tuple[Iterable[list[AlertTransition]], bool]:
        now = self._now()
        out: list[AlertTransition] = []
        caches = self._caches
        for batch in values:
            if isinstance(batch, WatchedReadings):
                self._observe_readings(batch.readings, now, out)
                continue
            if isinstance(batch, WatchedAggregates):
                self._observe_aggregates(batch.aggregates, now, out)
                continue
            for target, series, stat, value, ts in batch:
                watches = caches[target].get(series)
                if watches is None:
                    watches = self._watches(target, series)
                for watch in (watches,) if isinstance(watches, _Watch) else watches:
                    if watch.rule.stat == stat:
                        self._take(watch, value, ts, now, out)
        if self._deadlines and self._deadlines[0][0] <= now:
            self._pop_due(now, out)
        # After the batch, not while a state is being evaluated: only states whose phase is final are weighed.
        if self._count > self._shrink_at:
            self._shrink()
        if now >= self._next_sweep:
            self._sweep(now)
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[list[AlertTransition]], bool]:
        now = self._now()
        out: list[AlertTransition] = []
        self._pop_due(now, out)
        if now >= self._next_sweep:
            self._sweep(now)
        # Nothing left to remember (every series of a service's key went idle): Bytewax may drop the key.
        done = not self._count and not self._deadlines
        if done and self._log is not None:
            # No snapshot of this logic follows; the log's files go at the next start (remove_unreferenced).
            self._log.close()
        return ([out] if out else []), (StatefulBatchLogic.DISCARD if done else StatefulBatchLogic.RETAIN)

    def on_eof(self) -> tuple[Iterable[list[AlertTransition]], bool]:
        # Nothing is due at the end of input, finite or a stop (lifecycle.stopping): every state stays, so the
        # last snapshot holds pending and firing alerts and a restart carries on from them.
        return [], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = self._deadlines[0][0] if self._deadlines else None
        if self._sweepable and self._count and (due is None or self._next_sweep < due):
            due = self._next_sweep
        if due is None:
            return None
        return datetime.fromtimestamp(self._to_wall(due) / 1e9, tz=UTC)

    def state_count(self) -> int:
        """(rule, series) states held."""
        return self._count

    def snapshot(self) -> AlertSnapshot:
        """Every state, as records: a state's record is encoded when the state changed, and kept; a snapshot
        joins them. At fleet scale (a rule on every reading of 100,000 series) pickling every state each epoch
        took half the worker; this costs the change plus a join. With the alert state log, not even the join:
        only the changed records are written, and the snapshot is a marker."""
        if self._log is None and self._recovery_dir is not None and self._count >= _LOG_MIN_STATES:
            self._log = WindowLog(self._recovery_dir, self._step_id, folder=ALERT_LOG_FOLDER)
            for rule in self._rules.values():
                rule.records.clear()  # the log keeps them from now on
        if self._log is not None:
            return self._append_to_log()
        by_rule: dict[str, bytes] = {}
        for name, rule in self._rules.items():
            states, records = self.states[name], rule.records
            if rule.advanced:  # (the snapshot keeps whole records: a few states, see _LOG_MIN_STATES)
                rule.dirty.update(watch.series for watch in _take_advanced(rule))
            for series in rule.dirty:
                st = states.get(series)
                if st is None:
                    records.pop(series, None)
                    continue
                records[series] = _state_record(series, st)
            rule.dirty.clear()
            by_rule[name] = b"".join(records.values())
        return {"version": 2, "records": by_rule}

    def _append_to_log(self) -> LogMarker:
        """The states changed since the last snapshot as one frame; every state when the log starts (and after a
        resume); and, while the log's next generation is being written, the next part of the states to it, as
        a frame of changes (each record replaces its state whole; see ``flows.window_log``)."""
        state_log = self._log
        assert state_log is not None
        if state_log.generation < 0:
            every: dict[str, tuple[bytes, list[str]]] = {
                name: (b"".join([_state_record(series, st) for series, st in self.states[name].items()]), [])
                for name in self._rules
            }
            frame = _FRAME_ALL + pickle.dumps(every, protocol=5)
            state_log.start_generation(frame)
            self._live_bytes = len(frame)
        else:
            changes: dict[str, tuple[bytes, list[str]] | tuple[bytes, list[str], list[str], bytes]] = {}
            for name, rule in self._rules.items():
                if not rule.dirty and not rule.advanced:
                    continue
                states, dirty = self.states[name], rule.dirty
                records: list[bytes] = []
                gone: list[str] = []
                for series in dirty:
                    st = states.get(series)
                    if st is None:
                        gone.append(series)
                    else:
                        records.append(_state_record(series, st))
                advanced: list[str] = []
                times = array("q")
                for watch in _take_advanced(rule):
                    st = watch.state
                    if st is not None and watch.series not in dirty:  # (dirty: a whole record, or forgotten)
                        advanced.append(watch.series)
                        times.append(st.last_ts)
                if advanced:
                    changes[name] = (b"".join(records), gone, advanced, times.tobytes())
                else:
                    changes[name] = (b"".join(records), gone)
            if changes:
                state_log.append(_FRAME_CHANGES + pickle.dumps(changes, protocol=5))
            if not state_log.writing_next and state_log.needs_new_generation(self._live_bytes):
                # The states as they stand after the frame above; the changes after it go to both generations.
                state_log.begin_generation([(name, series) for name, by in self.states.items() for series in by])
            if state_log.writing_next:
                self._write_base_part(state_log)
        for rule in self._rules.values():
            rule.dirty.clear()
            _take_advanced(rule)
        state_log.collect()
        return state_log.marker(self._now())

    def _write_base_part(self, state_log: WindowLog) -> None:
        """The next part of the (rule, series) states to the log's next generation, as a frame of changes (states
        forgotten since it began are left out: the changes say so)."""
        records: dict[str, list[bytes]] = {}
        for name, series in state_log.next_base_part():
            st = self.states[name].get(series)
            if st is not None:
                records.setdefault(name, []).append(_state_record(series, st))
        frame = _FRAME_CHANGES + pickle.dumps({name: (b"".join(rs), []) for name, rs in records.items()}, protocol=5)
        if state_log.append_base(frame):
            self._live_bytes = state_log.base_bytes

    # -- bounded memory

    def _evict(self, rule: _Rule, series: str) -> None:
        del self.states[rule.name][series]
        rule.records.pop(series, None)
        # The next snapshot drops its record (the alert state log writes a tombstone).
        rule.dirty.add(series)
        self._count -= 1
        self.evicted += 1
        # The series' cached rule list goes too: a series that does not come back costs nothing more.
        self._caches[rule.rule.target].pop(series, None)

    def _sweep(self, now: int) -> None:
        """Forget ok states idle for ``idle_after``."""
        self._next_sweep = now + self._sweep_every
        horizon = now - self.idle_ns
        forgotten = 0
        for name, states in self.states.items():
            rule = self._rules[name]
            if rule.deadman:
                continue
            idle = [series for series, st in states.items() if st.phase == _OK and st.sys_seen <= horizon]
            for series in idle:
                self._evict(rule, series)
            forgotten += len(idle)
        if forgotten:
            log.debug("alerts: forgot %d idle (rule, series) states; %d held", forgotten, self._count)

    def _shrink(self) -> None:
        """Over ``max_states``: forget the least recently seen ok states, down to 90 % of the cap (so that the
        scan is paid once per tenth of the cap of new series, not per batch)."""
        target = self.max_states * 9 // 10
        candidates = (
            (st.sys_seen, name, series)
            for name, states in self.states.items()
            if not self._rules[name].deadman
            for series, st in states.items()
            if st.phase == _OK
        )
        victims = heapq.nsmallest(self._count - target, candidates)
        for _, name, series in victims:
            self._evict(self._rules[name], series)
        self._shrink_at = max(self.max_states, self._count + max(1, self.max_states // 10))
        now = time.monotonic()
        if now >= self._next_cap_log:
            self._next_cap_log = now + _CAP_LOG_INTERVAL
            log.warning(
                "alerts: more than %d (rule, series) states on one key (alerts.max_states): forgot the %d least"
                " recently seen ok ones (%d in all); %d held%s",
                self.max_states,
                len(victims),
                self.evicted,
                self._count,
                ", the rest pending, firing or armed deadman timers, which are never forgotten"
                if self._count > self.max_states
                else "",
            )

    # -- evaluation

    def _watches(self, target: str, series: str) -> _Watches:
        cache = self._caches[target]
        each = tuple(
            _Watch(self._rules[r.name], self.states[r.name], series) for r in self.matcher.match(target, series)
        )
        watches: _Watches = each[0] if len(each) == 1 else each
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[series] = watches
        return watches

    def _take(self, watch: _Watch, value: float, ts: int, now: int, out: list[AlertTransition]) -> None:
        if watch.rule.deadman:
            self._seen(watch, ts, now, out)
        else:
            self._observe(watch, value, ts, now, out)

    def _observe_readings(self, readings: list[Reading], now: int, out: list[AlertTransition]) -> None:
        """Each reading as an observation of stat "value" of its series (what target "reading" watches)."""
        cache = self._caches["reading"]
        for _, series, value, ts in readings:
            watches = cache.get(series)
            if watches is None:
                watches = self._watches("reading", series)
            if isinstance(watches, _Watch):
                self._take(watches, value, ts, now, out)
            else:
                for watch in watches:
                    self._take(watch, value, ts, now, out)

    def _observe_aggregates(self, aggregates: list[Aggregate], now: int, out: list[AlertTransition]) -> None:
        """Each closed window as an observation, at its start, of the stat each rule watching its series needs."""
        windows = self.matcher.windows
        cache = self._caches["window"]
        for agg in aggregates:
            if agg.window not in windows:
                continue
            series = aggregate_series(agg)
            watches = cache.get(series)
            if watches is None:
                watches = self._watches("window", series)
            for watch in (watches,) if isinstance(watches, _Watch) else watches:
                value = _aggregate_stat(agg, watch.rule.stat)
                if value is not None:
                    self._take(watch, value, agg.start_ns, now, out)

    def _observe(self, watch: _Watch, value: float, ts: int, now: int, out: list[AlertTransition]) -> None:
        rule = watch.rule
        st = watch.state
        if st is None:
            st = watch.new_state()
            self._count += 1
            if rule.records_each_observation:
                rule.dirty.add(watch.series)
        elif rule.rate:
            rule.dirty.add(watch.series)  # (its previous value changes too)
        st.sys_seen = now  # alive, even if the observation is out of order (sys_seen is not restored)
        if ts < st.last_ts or value != value:  # out of order, or NaN
            return
        st.last_ts = ts
        if rule.records_time_alone and not watch.advanced:
            watch.advanced = True  # (recorded whole instead if it changes more, below)
            rule.advanced.append(watch)
        series = watch.series
        if rule.rate:
            prev_ts, prev_value = st.prev_ts, st.prev_value
            if ts == prev_ts:
                return
            st.prev_ts, st.prev_value = ts, value
            if prev_ts == _NO_TIME:
                return
            change = abs(value - prev_value)
            value = change if rule.per_window else change * 1e9 / (ts - prev_ts)
        phase = st.phase
        level = rule.severity(value, st.rank if phase == _FIRING else 0)
        if phase != _OK or level is not None:
            rule.dirty.add(series)  # it may change: pending, firing and resolving states are always recorded
        if phase == _FIRING:
            if level is None:
                cleared = rule.level(st.rank)
                self._emit(out, rule, series, "resolved", st.rank, value, _reported(cleared.clear, value), st, ts)
                st.phase, st.rank = _OK, 0
            elif level.rank != st.rank:
                st.rank, st.notified_ns = level.rank, ts
                self._emit(out, rule, series, "firing", st.rank, value, _reported(level.threshold, value), st, ts)
            elif rule.renotify_ns and ts - st.notified_ns >= rule.renotify_ns:
                st.notified_ns = ts
                threshold = _reported(level.threshold, value)
                self._emit(out, rule, series, "firing", st.rank, value, threshold, st, ts, renotify=True)
        elif level is None:
            if phase == _PENDING:
                threshold = _reported(rule.level(st.rank).threshold, value)
                self._emit(out, rule, series, "ok", st.rank, value, threshold, st, ts)
                st.phase, st.rank = _OK, 0
        else:
            st.rank = level.rank
            if phase == _OK:
                st.started_ns = ts
                st.phase = _PENDING
                if rule.for_ns:
                    self._emit(out, rule, series, "pending", st.rank, value, _reported(level.threshold, value), st, ts)
            if ts - st.started_ns >= rule.for_ns:
                st.phase, st.notified_ns = _FIRING, ts
                self._emit(out, rule, series, "firing", st.rank, value, _reported(level.threshold, value), st, ts)

    def _seen(self, watch: _Watch, ts: int, now: int, out: list[AlertTransition]) -> None:
        """A deadman rule's series sent something."""
        rule, series = watch.rule, watch.series
        st = watch.state
        if st is None:
            st = watch.new_state()
            self._count += 1
        elif ts < st.last_ts:
            return
        rule.dirty.add(series)
        if st.phase == _FIRING:
            gap_s = (ts - st.last_ts) / 1e9
            self._emit(out, rule, series, "resolved", st.rank, gap_s, rule.silent_ns / 1e9, st, ts)
            st.phase, st.rank, st.renotified = _OK, 0, 0
        st.last_ts, st.sys_seen = ts, now
        if st.queued_at is None or st.queued_at > now + rule.silent_ns:
            self._arm(rule.name, series, st, now + rule.silent_ns)

    def _arm(self, name: str, series: str, st: _State, due: int) -> None:
        # At most one live entry per state: an arrival only moves sys_seen, and the entry is re-pushed lazily
        # when popped early, so steady data costs one heap operation per silent_for, not one per observation.
        st.queued_at = due
        heapq.heappush(self._deadlines, (due, name, series))

    def _pop_due(self, now: int, out: list[AlertTransition]) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            due, name, series = heapq.heappop(deadlines)
            rule = self._rules.get(name)
            st = self.states.get(name, {}).get(series)
            if rule is None or st is None or st.queued_at != due:
                continue  # superseded
            rule.dirty.add(series)
            st.queued_at = None
            if st.phase == _FIRING:
                if not rule.renotify_ns:
                    continue
                next_due = st.sys_seen + rule.renotify_ns
                if next_due <= now:
                    st.renotified += 1
                    st.sys_seen = now
                    at = st.started_ns + st.renotified * rule.renotify_ns
                    silent_s = (at - st.last_ts) / 1e9
                    self._emit(out, rule, series, "firing", st.rank, silent_s, rule.silent_ns / 1e9, st, at, True)
                    next_due = now + rule.renotify_ns
                self._arm(name, series, st, next_due)
            else:
                next_due = st.sys_seen + rule.silent_ns
                if next_due > now:
                    self._arm(name, series, st, next_due)
                    continue
                st.phase, st.rank, st.renotified = _FIRING, rule.deadman_rank, 0
                st.started_ns = st.last_ts + rule.silent_ns
                st.sys_seen = now
                silent_s = rule.silent_ns / 1e9
                self._emit(out, rule, series, "firing", st.rank, silent_s, silent_s, st, st.started_ns)
                if rule.renotify_ns:
                    self._arm(name, series, st, now + rule.renotify_ns)

    def _emit(
        self,
        out: list[AlertTransition],
        rule: _Rule,
        series: str,
        state: str,
        rank: int,
        value: float,
        threshold: float,
        st: _State,
        at_ns: int,
        renotify: bool = False,
    ) -> None:
        severity = _SEVERITIES[rank]
        out.append(
            AlertTransition(
                rule=rule.name,
                series=series,
                tags=parse_series(series)[1],
                state=state,
                severity=severity,
                value=value,
                threshold=threshold,
                started_ns=st.started_ns,
                at_ns=at_ns,
                summary=rule.summary(state, severity, value, threshold, series, renotify),
                notification_id=notification_id(rule.name, series, state, severity, st.started_ns, at_ns, renotify),
                renotify=renotify,
            )
        )
