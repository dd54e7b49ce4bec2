"""Log rates: per service and event-time window, the number of events by level and the error rate.

One Bytewax stateful operator keyed by service. The window clock follows the readings windows
(``flows.windows``): the watermark is the newest event time of the service minus the allowed lateness,
advanced by pipeline wall time while the service is quiet, so a window closes even when the service stops
logging. A window is emitted once, when the watermark passes its end, as a ``LogRate``.

Late events (their window already emitted) are still stored in Elasticsearch by the logs path; they are
only left out of the rate, and counted in the pipeline's health as ``late_log_events``. When a service goes
quiet, the window after its last one is written too, with no events, and then none until it logs again.

Several sources of one service (the files of one input: rotated ones, a pod's replicas; told apart by their
events' ids) each keep a clock of their own. Once the service's clock has passed a window, the window also
waits for every source that sent something in the last ``SOURCE_IDLE`` to pass it, for at most ``SOURCE_IDLE``.
A backlog is read file by file, a batch at a time: with one clock per service, the file read first moved it
minutes ahead, and the others' events were late (a third of a catch-up of three replicas was counted); read
that fast, the others pass the window within seconds. A source that sends nothing for ``SOURCE_IDLE`` (a file
read to its end) holds nothing, and one stamped minutes behind the others (a wrong zone) holds a live window
``SOURCE_IDLE`` at most: its older lines are late. A window once written never opens again (``closed_until``):
a new source's lines for it are late too. A source not seen yet cannot hold a window: so a window of the past (its end
``SOURCE_IDLE`` and more before now, a backlog's) stays open at least ``SOURCE_IDLE`` after it opened, time for
the tail to reach the other files (a first start reading ``app.log`` before ``app.log.1``).

Stops and restarts. A stop (``flows.lifecycle.stopping``) ends the input the way a finite input ends, but it
is a pause: ``on_eof`` then emits nothing and keeps the open windows, which the last snapshot holds. A snapshot
records the pipeline clock; on resume the wall-time mark of the newest event is moved forward by the time
since, so the time the process was down does not count as the service being quiet, and a window open at the
stop is not closed half full before the re-read events arrive.

Memory. Services come and go (a container id as the service name), and a service is remembered only for its
event clock once its windows are closed. It is forgotten (Bytewax drops its key) once it has logged nothing
for ``idle_after``; and when more services than ``max_services`` hold state in the process, the least
recently seen of those without an open window are forgotten first. A service with an open window is never
forgotten. An event of a forgotten service opens a new window as for a new service, so an event later than
``idle_after`` could be counted in a window written before; ``idle_after`` is far longer than any lateness.
``ServiceLimits`` counts what was forgotten. Bytewax drops a key only from one of its own callbacks, so a
service without an open window wakes up now and then (``ServiceLimits.check_ns``) to see whether it must go.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from bytewax.operators import StatefulBatchLogic

from fleetwatch.config import LogsConfig
from fleetwatch.record import LogEvent, LogRate
from flows import clock as pipeline_clock
from flows import health, lifecycle

log = logging.getLogger(__name__)

# (service, newest event time, pipeline time it was seen, open windows, pipeline time of the snapshot, each
# source's [newest event time, pipeline time it was seen, pipeline time of its last event], and the end of the
# newest window written).
RateState = tuple[str, int, int, dict[int, dict[str, int]], int, dict[str, list[int]], int]
# Before the sources were recorded; still resumed (without them).
_RateStateWithoutSources = tuple[str, int, int, dict[int, dict[str, int]], int]
# The format before the snapshot time was recorded; still resumed (without the shift).
_OldRateState = tuple[str, int, int, dict[int, dict[str, int]]]

_SECOND = 1_000_000_000
# No event yet: the service's clock is not set (the first event sets it, with its receive time if need be).
_NO_TIME = -(2**63)
# A forgotten-over-the-cap report at most this often (seconds of monotonic time).
_CAP_LOG_INTERVAL = 60.0
# How long a source that sends nothing still holds its service's windows open (pipeline time). Longer than the
# tail leaves a file unread while it reads the others' backlogs, a batch each in turn.
SOURCE_IDLE = 30 * _SECOND


def _same_ns(ns: int) -> int:
    return ns


class ServiceLimits:
    """The services of one process that hold log-rate state, and which go first when there are too many:
    ``logs.rate_max_services`` and ``logs.rate_idle_after``. Shared by the logics of every worker (a lock).

    A logic registers when it is built and is forgotten here when Bytewax drops it (or it is garbage). While it
    has no open window it is in the idle list, least recently idle first; while more than ``max_services``
    logics are alive, the oldest idle ones are marked to go, and each goes at its next wake-up. One that logs
    again before that is kept, and the next oldest is marked instead."""

    def __init__(self, max_services: int, idle_after: timedelta) -> None:
        if max_services < 1 or idle_after <= timedelta(0):
            raise ValueError("max_services must be >= 1 and idle_after > 0")
        self.max_services = max_services
        self.idle_ns = int(idle_after.total_seconds() * 1e9)
        # How often a service without an open window wakes up: soon enough that a cap is held within
        # half a minute, rarely enough that thousands of idle services cost little.
        self.check_ns = min(max(self.idle_ns // 4, _SECOND), 30 * _SECOND)
        # Services forgotten: idle for idle_after, or (also counted in evicted_over_cap) over the cap.
        self.evicted = 0
        self.evicted_over_cap = 0
        # Reentrant: a logic that becomes garbage runs _forget wherever the collector happens to run, which
        # may be inside one of these methods on the same thread.
        self._lock = threading.RLock()
        self._live = 0
        self._idle: OrderedDict[int, None] = OrderedDict()
        self._victims: set[int] = set()
        self._next_log = 0.0

    def live(self) -> int:
        """Services holding state in this process."""
        with self._lock:
            return self._live

    def register(self, logic: object) -> Callable[[], object]:
        """Count ``logic`` in; the returned call counts it out (at once, or when it is garbage)."""
        with self._lock:
            self._live += 1
            self._pick()
        return weakref.finalize(logic, self._forget, id(logic))

    def _forget(self, key: int) -> None:
        with self._lock:
            self._live -= 1
            self._idle.pop(key, None)
            self._victims.discard(key)

    def idle(self, key: int) -> None:
        with self._lock:
            self._idle[key] = None
            self._pick()

    def busy(self, key: int) -> None:
        with self._lock:
            self._idle.pop(key, None)
            self._victims.discard(key)

    def must_go(self, key: int) -> bool:
        with self._lock:
            return key in self._victims

    def _pick(self) -> None:
        over = self._live - self.max_services - len(self._victims)
        while over > 0 and self._idle:
            key, _ = self._idle.popitem(last=False)
            self._victims.add(key)
            over -= 1

    def forgotten(self, over_cap: bool) -> None:
        with self._lock:
            self.evicted += 1
            if over_cap:
                self.evicted_over_cap += 1
            now = time.monotonic()
            report = over_cap and now >= self._next_log
            if report:
                self._next_log = now + _CAP_LOG_INTERVAL
            live, evicted = self._live, self.evicted_over_cap
        if report:
            log.warning(
                "log rates: more than %d services hold state (logs.rate_max_services, %d now): forgetting the"
                " least recently seen without an open window, %d so far",
                self.max_services,
                live,
                evicted,
            )


# The limits of logics built without their own (tests, and a pipeline that does not pass its config's): the
# defaults of [logs].
_DEFAULT_LIMITS = ServiceLimits(LogsConfig().rate_max_services, LogsConfig().rate_idle_after)


class LogRateLogic(StatefulBatchLogic[list[LogEvent], list[LogRate], RateState]):
    """Windows of one service. State: see ``RateState``. The service is learnt from the events: Bytewax does not
    pass the key to the builder. ``clock``: system-time ns (tests move it by hand; by default the pipeline
    clock)."""

    def __init__(
        self,
        window: timedelta,
        allowed_lateness: timedelta,
        resume: RateState | _RateStateWithoutSources | _OldRateState | None = None,
        clock: Callable[[], int] | None = None,
        limits: ServiceLimits | None = None,
    ) -> None:
        self.window_ns = int(window.total_seconds() * 1e9)
        self.lateness_ns = int(allowed_lateness.total_seconds() * 1e9)
        self._now = clock or pipeline_clock.now_ns
        # notify_at answers in wall time, which Bytewax compares with its own clock. The pipeline clock runs
        # behind wall time by the time the flow stalled; a test clock is both at once.
        self._to_wall = pipeline_clock.to_wall_ns if clock is None else _same_ns
        self._limits = limits or _DEFAULT_LIMITS
        now = self._now()
        open_windows: dict[int, dict[str, int]]
        # Per source (the part of an event's id before its last "-": a file's generation): see the module doc.
        self._sources: dict[str, list[int]] = {}
        # The end of the newest window written: no window before it opens again.
        self._closed_until = _NO_TIME
        if resume is None:
            self.service, self.max_ts, self.sys_at_max, open_windows = "", _NO_TIME, 0, {}
        else:
            self.service, self.max_ts, self.sys_at_max, open_windows = resume[:4]
            if len(resume) > 4:
                # Downtime is not quiet time: the mark moves by the time since the snapshot.
                down = now - resume[4]
                self.sys_at_max += down
                if len(resume) > 6:
                    self._sources = {
                        source: [newest, at + down, seen + down] for source, (newest, at, seen) in resume[5].items()
                    }
                    self._closed_until = resume[6]
        self.windows: dict[int, dict[str, int]] = {start: dict(counts) for start, counts in open_windows.items()}
        # Pipeline time each window opened (the restored ones: now, as a restart reads their backlog again), and
        # when the service's clock passed it (from then on its sources have SOURCE_IDLE to pass it too).
        self._opened = dict.fromkeys(self.windows, now)
        self._passed: dict[int, int] = {}
        # Last time the service sent anything (late events too); a restart counts as a sign of life.
        self._seen_at = now
        self._key = id(self)
        self._registration = self._limits.register(self)
        self._idle = False
        if resume is not None and not self.windows:
            self._set_idle()

    def _service_watermark(self, now: int) -> int:
        return self.max_ts + (now - self.sys_at_max) - self.lateness_ns

    def _watermark(self, now: int) -> int:
        """The service's watermark, held back to the slowest source that sent something in the last SOURCE_IDLE."""
        mark = self.max_ts + (now - self.sys_at_max)
        if len(self._sources) > 1:
            for newest, at, seen in self._sources.values():
                if now - seen < SOURCE_IDLE:
                    mark = min(mark, newest + (now - at))
        return mark - self.lateness_ns

    def _forget_idle_sources(self, now: int) -> None:
        if len(self._sources) > 1 and any(now - seen >= SOURCE_IDLE for _, _, seen in self._sources.values()):
            self._sources = {k: clock for k, clock in self._sources.items() if now - clock[2] < SOURCE_IDLE}

    def _set_idle(self) -> None:
        if not self._idle:
            self._idle = True
            self._limits.idle(self._key)

    def on_batch(self, values: list[list[LogEvent]]) -> tuple[Iterable[list[LogRate]], bool]:
        now = self._now()
        # A line stamped ahead of the present (wall time: a host whose clock jumped, within logs.max_future_skew)
        # is counted in its own window, but leaves the clocks where they are (a new one starts at the present).
        # Taken as it was, it moved its service's clock that far ahead for good, and the service's rightly stamped
        # lines were all late while it kept logging. Nor does it move them to the present: after a restart or a
        # stall they run behind wall time while the backlog is read (see flows.windows).
        present = self._to_wall(now)
        self._seen_at = now
        if self._idle:
            self._idle = False
            self._limits.busy(self._key)
        late = 0
        # Event by event, in the order read: the watermark moves with each event, not to the newest of the
        # batch first. A backlog (a catch-up after downtime, a first start reading a file from its start) comes
        # in batches spanning minutes: judged against the batch's newest event, all but its last windows were
        # late.
        # Lines without a time of their own read before the service has a clock (a file's banner before its
        # first stamped line): counted once the batch gives the clock, else at their receive time.
        waiting: list[LogEvent] = []
        sources = self._sources
        for events in values:
            for event in events:
                self.service = event.service
                ts = event.ts_ns
                if not event.own_time:
                    if self.max_ts == _NO_TIME:
                        waiting.append(event)
                        continue
                    # A line without a usable time of its own (a parse failure, a plain-text line) is counted
                    # where its service's clock stands: in a backlog, among the lines around it. Its receive
                    # time would move the clock to now, and every older line after it would be late.
                    ts = self.max_ts + (now - self.sys_at_max)
                else:
                    if ts <= present:
                        clock_ts = ts
                    elif self.max_ts == _NO_TIME:
                        clock_ts = present
                    else:
                        clock_ts = _NO_TIME
                    if clock_ts > self.max_ts:
                        self.max_ts, self.sys_at_max = clock_ts, now
                    source = event.doc_id.rpartition("-")[0]
                    source_clock = sources.get(source)
                    if source_clock is None:
                        sources[source] = [min(ts, present), now, now]
                    else:
                        if clock_ts > source_clock[0]:
                            source_clock[0], source_clock[1] = clock_ts, now
                        source_clock[2] = now
                late += self._count(ts, event.level, now)
                if waiting:
                    clock = self.max_ts + (now - self.sys_at_max)
                    late += sum(self._count(clock, w.level, now) for w in waiting)
                    waiting.clear()
        for event in waiting:  # no stamped line in the batch: the receive time is all there is
            if event.ts_ns > self.max_ts:
                self.max_ts, self.sys_at_max = event.ts_ns, now
            late += self._count(event.ts_ns, event.level, now)
        if late:
            health.counters().late_log_events += late
        self._forget_idle_sources(now)
        out = self._close(now)
        if not self.windows:
            self._set_idle()
        return out, StatefulBatchLogic.RETAIN

    def _count(self, ts: int, level: str, now: int) -> int:
        """Count an event at ``ts`` in its window; 1 if that window was closed already (a late event)."""
        window_ns = self.window_ns
        start = ts - ts % window_ns
        counts = self.windows.get(start)
        if counts is None:
            if start + window_ns <= self._closed_until or start + window_ns <= self._watermark(now):
                return 1
            counts = self.windows[start] = {}
            self._opened[start] = now
        counts[level] = counts.get(level, 0) + 1
        return 0

    def on_notify(self) -> tuple[Iterable[list[LogRate]], bool]:
        now = self._now()
        self._forget_idle_sources(now)
        out = self._close(now)
        if out and self.sys_at_max < now:
            # Closed on wall time: carry the clock forward as it stands, so that an event newer than the last one
            # cannot move the watermark back and open a window written already (its second count would replace
            # the first document, same id). Such an event is late instead.
            self.max_ts += now - self.sys_at_max
            self.sys_at_max = now
        if self.windows:
            return out, StatefulBatchLogic.RETAIN
        self._set_idle()
        over_cap = self._limits.must_go(self._key)
        if over_cap or now - self._seen_at >= self._limits.idle_ns:
            self._registration()
            self._limits.forgotten(over_cap)
            return out, StatefulBatchLogic.DISCARD
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[list[LogRate]], bool]:
        if lifecycle.stopping():
            # A stop, not the end of the data: the open windows stay in state for the last snapshot, and the
            # restart closes them when their time comes, with the events still to be re-read.
            return [], StatefulBatchLogic.RETAIN
        return self._close(None), StatefulBatchLogic.RETAIN

    def _close(self, now: int | None) -> list[list[LogRate]]:
        """The windows due (see the module doc); every open one with ``now`` None (the end of a finite input)."""
        due = sorted(self.windows) if now is None else [s for s in sorted(self.windows) if self._due(s, now)]
        if not due:
            return []
        for start in due:
            self._opened.pop(start, None)
            self._passed.pop(start, None)
        rates = [LogRate(self.service, start, self.window_ns, self.windows.pop(start)) for start in due]
        if now is not None and not self.windows and rates[-1].by_level:
            # The service went quiet: the window after its last one is written too, empty, so that the rates
            # drop to zero and a rule on them resolves (an error burst, then silence, would page forever).
            # An empty window opens none after it.
            quiet = due[-1] + self.window_ns
            self.windows[quiet] = {}
            self._opened[quiet] = now
            if self._due(quiet, now):
                del self.windows[quiet], self._opened[quiet]
                self._passed.pop(quiet, None)
                rates.append(LogRate(self.service, quiet, self.window_ns, {}))
        self._closed_until = max(self._closed_until, rates[-1].window_start_ns + self.window_ns)
        return [rates]

    def _due(self, start: int, now: int) -> bool:
        """Past the service's watermark, and past every active source's or SOURCE_IDLE after the service's; a
        window of the past only once SOURCE_IDLE old (see the module doc)."""
        end = start + self.window_ns
        if end > self._service_watermark(now) or self._held(start, now):
            return False
        if end <= self._watermark(now):
            return True
        return now - self._passed.setdefault(start, now) >= SOURCE_IDLE

    def _held(self, start: int, now: int) -> bool:
        """A window of the past that opened less than SOURCE_IDLE ago (see the module doc)."""
        return start + self.window_ns + SOURCE_IDLE <= now and now - self._opened.get(start, now) < SOURCE_IDLE

    def notify_at(self) -> datetime | None:
        if self.windows:
            # Pipeline time at which the earliest window closes if the service stays quiet: once each source
            # has passed it too, or has gone idle.
            first = min(self.windows)
            end = first + self.window_ns
            due_ns = self.sys_at_max + (end + self.lateness_ns - self.max_ts)
            if len(self._sources) > 1:
                sources_pass = due_ns
                for newest, at, seen in self._sources.values():
                    sources_pass = max(sources_pass, min(at + (end + self.lateness_ns - newest), seen + SOURCE_IDLE))
                due_ns = min(sources_pass, self._passed.get(first, due_ns) + SOURCE_IDLE)
            if self._held(first, self._now()):
                due_ns = max(due_ns, self._opened[first] + SOURCE_IDLE)
        elif self._limits.must_go(self._key):
            due_ns = self._now()
        else:
            # No window open: wake up when the service has been idle long enough, or to see whether it must
            # make room for others.
            due_ns = min(self._seen_at + self._limits.idle_ns, self._now() + self._limits.check_ns)
        return datetime.fromtimestamp(self._to_wall(due_ns) / 1e9, tz=UTC)

    def snapshot(self) -> RateState:
        return (
            self.service,
            self.max_ts,
            self.sys_at_max,
            {start: dict(counts) for start, counts in self.windows.items()},
            self._now(),
            {source: list(clock) for source, clock in self._sources.items()},
            self._closed_until,
        )
