"""Log-rate windows with a clock moved by hand."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from fleetwatch.record import LogEvent, LogRate
from flows import clock as pipeline_clock
from flows import health, lifecycle
from flows.log_rates import LogRateLogic, ServiceLimits
from flows.schema import log_rate_line

S = 1_000_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z


def event(at_s: float, level: str, service: str = "api") -> LogEvent:
    return LogEvent(f"id{at_s}{level}", T0 + int(at_s * S), level, service, {})


class Clock:
    def __init__(self) -> None:
        # (a moment after most events here: no service's clock passes the present)
        self.now = T0 + 13 * S

    def __call__(self) -> int:
        return self.now


def closed(result: tuple[object, bool]) -> list[LogRate]:
    batches, _ = result
    return [rate for batch in batches for rate in batch]  # type: ignore[attr-defined]


def test_counts_by_level_close_on_event_time_and_late_events_are_left_out() -> None:
    clock = Clock()
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=2), clock=clock)
    assert closed(logic.on_batch([[event(1, "info"), event(3, "error"), event(9.9, "warn"), event(4, "")]])) == []
    # 12.5 s: past 10 s + 2 s of lateness, so [0, 10) closes; the reading at 11 opens [10, 20).
    rates = closed(logic.on_batch([[event(11, "info"), event(12.5, "info")]]))
    assert rates == [LogRate("api", T0, 10 * S, {"info": 1, "error": 1, "warn": 1, "": 1})]
    assert (rates[0].total, rates[0].errors) == (4, 1)
    # A straggler for the closed window is late: not counted in a reopened window.
    assert closed(logic.on_batch([[event(5, "error")]])) == []
    assert logic.windows.keys() == {T0 + 10 * S}


def test_a_quiet_service_closes_its_window_by_wall_time_and_state_survives_a_snapshot() -> None:
    clock = Clock()
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=1), clock=clock)
    logic.on_batch([[event(2, "error"), event(3, "critical")]])
    resumed = LogRateLogic(timedelta(seconds=10), timedelta(seconds=1), logic.snapshot(), clock=clock)
    clock.now += 7 * S  # event clock at 3 s + 7 s = 10 s: not yet past 10 s + 1 s
    assert closed(resumed.on_notify()) == []
    clock.now += 1 * S + 1
    assert closed(resumed.on_notify()) == [LogRate("api", T0, 10 * S, {"error": 1, "critical": 1})]
    # The service is quiet: the next window is written empty (rates drop to zero, a rule on errors resolves).
    assert resumed.notify_at() == datetime.fromtimestamp((clock.now + 10 * S) / 1e9, UTC)
    clock.now += 10 * S
    assert closed(resumed.on_notify()) == [LogRate("api", T0 + 10 * S, 10 * S, {})]
    # Nothing more to write: it wakes up only to see whether it is to be forgotten (see the memory tests below).
    assert resumed.notify_at() == datetime.fromtimestamp((clock.now + 30 * S) / 1e9, UTC)
    assert closed(resumed.on_notify()) == []


def test_a_window_closed_on_wall_time_never_opens_again() -> None:
    """A service goes quiet mid-window, its window closes on wall time, then lines with newer event times come
    (a shipper that held them): they are late. Opening the window again would write a second count with the
    same id, which replaces the first."""
    clock = Clock()
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=2), clock=clock)
    logic.on_batch([[event(1, "info"), event(4, "error")]])
    clock.now += 30 * S
    assert closed(logic.on_notify()) == [
        LogRate("api", T0, 10 * S, {"info": 1, "error": 1}),
        LogRate("api", T0 + 10 * S, 10 * S, {}),  # the quiet window after it, past too
    ]
    assert closed(logic.on_batch([[event(5, "info"), event(9, "warn")]])) == []
    assert logic.windows == {}
    # An event newer than the quiet service's clock opens its window as always.
    logic.on_batch([[event(35, "info")]])
    assert logic.windows.keys() == {T0 + 30 * S}


def test_influx_line_has_a_field_per_level_and_the_error_rate() -> None:
    line = log_rate_line(LogRate("shop api", T0, 60 * S, {"info": 3, "error": 1, "": 1}))
    assert line == (
        f"log_rates,service=shop\\ api,window=1m count=5i,errors=1i,error_rate=0.2,unknown=1i,error=1i,info=3i {T0}"
    )


# ------------------------------------------------------------------------------------------- stops, stalls, memory


@pytest.fixture
def stopped() -> Iterator[None]:
    """The process was asked to stop (SIGTERM): the end of input is a pause."""
    lifecycle.request_stop()
    yield
    lifecycle.reset()


@pytest.fixture
def stalled() -> Iterator[int]:
    """The flow spent an hour stalled on a store: the pipeline clock is an hour behind wall time."""
    hour = 3600 * S
    pipeline_clock.add_stall(hour)
    yield hour
    pipeline_clock.add_stall(-hour)


def test_a_stop_keeps_open_windows_in_the_snapshot_and_emits_nothing(stopped: None) -> None:
    clock = Clock()
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=1), clock=clock)
    logic.on_batch([[event(2, "error"), event(13, "info")]])
    out, discard = logic.on_eof()
    assert (list(out), discard) == ([], False)
    snapshot = logic.snapshot()
    assert snapshot[3] == {T0 + 10 * S: {"info": 1}}
    # Resumed, the window is still open; a finite input's end (no stop) closes it as before.
    lifecycle.reset()
    resumed = LogRateLogic(timedelta(seconds=10), timedelta(seconds=1), snapshot, clock=clock)
    assert closed(resumed.on_eof()) == [LogRate("api", T0 + 10 * S, 10 * S, {"info": 1})]


def test_notify_at_is_wall_time_after_a_stall(stalled: int) -> None:
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=1))  # the pipeline clock
    now = pipeline_clock.now_ns()
    logic.on_batch([[LogEvent("e1", now, "info", "api", {})]])
    due = logic.notify_at()
    # Within the window and its lateness from now, in wall time: not an hour ago.
    assert due is not None and time.time() < due.timestamp() < time.time() + 12


def test_a_test_clock_is_wall_time_and_pipeline_time_at_once(stalled: int) -> None:
    clock = Clock()
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=1), clock=clock)
    logic.on_batch([[event(2, "info")]])
    assert logic.notify_at() == datetime.fromtimestamp((clock.now + 9 * S) / 1e9, UTC)


def test_a_line_stamped_ahead_of_the_present_leaves_its_service_rightly_stamped_lines_on_time() -> None:
    """A host whose clock jumps 4 minutes ahead for one line (within logs.max_future_skew), then logs rightly
    stamped lines again: none is late, each window counts its lines, and the line ahead is counted in its own
    window, written once wall time passes it."""
    clock = Clock()
    clock.now = T0 + 10 * S
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=2), clock=clock)
    late_before = health_late()
    rates: list[LogRate] = []
    for second in range(10, 40):
        clock.now = T0 + second * S
        lines = [event(second, "info")] + ([event(second + 240, "error")] if second == 11 else [])
        rates += closed(logic.on_batch([lines]))
        rates += closed(logic.on_notify())
    assert health_late() == late_before
    assert [(r.window_start_ns - T0, r.by_level) for r in rates] == [(10 * S, {"info": 10}), (20 * S, {"info": 10})]
    clock.now = T0 + 262 * S  # past [250, 260) and the lateness
    rates = closed(logic.on_notify())
    assert (rates[0].window_start_ns - T0, rates[0].by_level) == (30 * S, {"info": 10})
    assert (rates[-1].window_start_ns - T0, rates[-1].by_level) == (250 * S, {"error": 1})


def test_a_line_stamped_ahead_in_a_backlog_leaves_the_rest_of_the_backlog_on_time() -> None:
    """The line stamped ahead comes in the backlog read after 30 s of downtime, while the service's clock runs
    behind wall time by design: moving that clock to the present made the rest of the backlog late."""
    clock = Clock()
    clock.now = T0 + 10 * S
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=2), clock=clock)
    rates: list[LogRate] = []
    for second in range(10, 16):
        clock.now = T0 + second * S
        rates += closed(logic.on_batch([[event(second, "info")]]))
    snapshot = logic.snapshot()
    clock.now = T0 + 46 * S  # down for 30 s
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=2), snapshot, clock=clock)
    late_before = health_late()
    for second in range(16, 46):
        lines = [event(second, "info")] + ([event(second + 240, "error")] if second == 20 else [])
        rates += closed(logic.on_batch([lines]))
        clock.now += S // 100
    for second in range(46, 60):
        clock.now = T0 + second * S
        rates += closed(logic.on_batch([[event(second, "info")]]))
    assert health_late() == late_before
    assert [(r.window_start_ns - T0, r.total) for r in rates] == [(s * S, 10) for s in (10, 20, 30, 40)]


def test_downtime_after_a_snapshot_is_not_silence() -> None:
    clock = Clock()
    clock.now = T0 + 2 * S
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=1), clock=clock)
    logic.on_batch([[event(2, "error")]])
    clock.now += 3 * S  # quiet for 3 s, then stopped: the event clock stands at 5 s of [0, 10)
    snapshot = logic.snapshot()
    clock.now += 20 * S  # down for 20 s, more than the window's rest plus the lateness
    resumed = LogRateLogic(timedelta(seconds=10), timedelta(seconds=1), snapshot, clock=clock)
    # The window is not closed half full by the downtime: the re-read events are still to come.
    assert closed(resumed.on_notify()) == []
    assert resumed.notify_at() == datetime.fromtimestamp((clock.now + 6 * S) / 1e9, UTC)
    resumed.on_batch([[event(4, "error"), event(6, "info")]])
    clock.now += 6 * S + 1
    assert closed(resumed.on_notify()) == [LogRate("api", T0, 10 * S, {"error": 2, "info": 1})]


def test_a_snapshot_of_the_earlier_format_still_resumes() -> None:
    clock = Clock()
    old = ("api", T0 + 2 * S, clock.now, {T0: {"error": 1}})
    resumed = LogRateLogic(timedelta(seconds=10), timedelta(seconds=1), old, clock=clock)  # type: ignore[arg-type]
    clock.now += 9 * S + 1
    assert closed(resumed.on_notify()) == [LogRate("api", T0, 10 * S, {"error": 1})]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Bytewax:
    """What Bytewax does with a stateful_batch step, in short: one logic per key, built on the key's first
    item; on_notify at the time notify_at asks for; a logic that says DISCARD is dropped with its state."""

    def __init__(self, clock: Clock, build: Callable[[], LogRateLogic]) -> None:
        self.clock = clock
        self.build = build
        self.logics: dict[str, LogRateLogic] = {}
        self.wakeups: list[tuple[int, int, str]] = []
        self.emitted: list[LogRate] = []
        self._calls = 0

    def _after(self, key: str, result: tuple[Iterable[list[LogRate]], bool]) -> None:
        batches, discard = result
        self.emitted += [rate for batch in batches for rate in batch]
        logic = self.logics[key]
        if discard:
            del self.logics[key]
            return
        due = logic.notify_at()
        if due is not None:
            self._calls += 1
            # A datetime holds microseconds: the first whole microsecond at or after the deadline.
            due_ns = (due - EPOCH) // timedelta(microseconds=1) * 1000 + 1000
            heapq.heappush(self.wakeups, (due_ns, self._calls, key))

    def send(self, events: list[LogEvent]) -> None:
        key = events[0].service
        if key not in self.logics:
            self.logics[key] = self.build()
        self._after(key, self.logics[key].on_batch([events]))

    def advance(self, to_ns: int) -> None:
        while self.wakeups and self.wakeups[0][0] <= to_ns:
            due, _, key = heapq.heappop(self.wakeups)
            self.clock.now = max(self.clock.now, due)
            if key in self.logics:
                self._after(key, self.logics[key].on_notify())
        self.clock.now = max(self.clock.now, to_ns)


def test_churning_services_are_forgotten_once_idle_and_capped_least_recently_seen_first() -> None:
    clock = Clock()
    limits = ServiceLimits(max_services=500, idle_after=timedelta(minutes=10))
    flow = Bytewax(clock, lambda: LogRateLogic(timedelta(seconds=10), timedelta(seconds=1), clock=clock, limits=limits))
    start = clock.now
    # 20,000 services log once each, one every 100 ms, and never again (container ids, say).
    most = 0
    for i in range(20_000):
        flow.advance(start + i * S // 10)
        flow.send([event(i / 10, "info", service=f"svc-{i}")])
        open_windows = sum(1 for logic in flow.logics.values() if logic.windows)
        most = max(most, len(flow.logics) - open_windows)
        # A service with an open window is never forgotten; idle ones are capped (a victim may still be
        # waiting for its next wake-up, at most 30 s of services).
        assert len(flow.logics) - open_windows <= 500 + 300
    assert limits.live() == len(flow.logics)
    assert most > 500 - 1  # the cap was reached and held, not avoided
    # Every window was written once, with its count: forgetting a service never loses its open window.
    flow.advance(clock.now + 22 * S)
    # (and the quiet window after each, empty)
    assert len(flow.emitted) == 40_000 and sorted({r.total for r in flow.emitted}) == [0, 1]
    assert sum(r.total for r in flow.emitted) == 20_000
    # The most recently seen services are the ones kept: a late event for one of them is still late.
    kept = sorted(flow.logics, key=lambda name: int(name.split("-")[1]))
    assert kept and kept[-1] == "svc-19999" and int(kept[0].split("-")[1]) >= 20_000 - 500 - 300
    flow.send([event(19_999 / 10, "error", service="svc-19999")])
    flow.advance(clock.now + 60 * S)
    assert len(flow.emitted) == 40_000  # left out of the rate, not a second window
    assert limits.evicted_over_cap > 0
    # After idle_after every idle service is forgotten, and each one was counted.
    flow.advance(clock.now + 11 * 60 * S)
    assert flow.logics == {} and limits.live() == 0
    assert limits.evicted == 20_000


def test_a_service_is_never_forgotten_while_a_window_is_open() -> None:
    clock = Clock()
    limits = ServiceLimits(max_services=1, idle_after=timedelta(seconds=1))
    busy = LogRateLogic(timedelta(minutes=1), timedelta(seconds=5), clock=clock, limits=limits)
    busy.on_batch([[event(1, "info", service="busy")]])
    other = LogRateLogic(timedelta(minutes=1), timedelta(seconds=5), clock=clock, limits=limits)
    other.on_batch([[event(1, "info", service="other")]])
    clock.now += 30 * S  # idle for far longer than idle_after, over the cap, but both windows are open
    for logic in (busy, other):
        out, discard = logic.on_notify()
        assert (closed((out, discard)), discard) == ([], False)
    clock.now += 35 * S
    assert [r.service for r in closed(busy.on_notify())] == ["busy"]


def test_a_backlog_read_in_one_batch_fills_every_window_it_spans() -> None:
    """A catch-up (a restart after downtime, a first start reading a file from its start) brings minutes of
    events in one batch, in order. Each counts in its own window: judged against the newest event of the
    batch, all but the last windows were late and never written."""
    clock = Clock()
    logic = LogRateLogic(timedelta(minutes=1), timedelta(seconds=5), clock=clock)
    late_before = health_late()
    backlog = [event(second, "error" if second % 10 == 0 else "info") for second in range(600)]
    rates = closed(logic.on_batch([backlog]))
    rates += closed(logic.on_eof())
    assert [(r.window_start_ns - T0, r.total, r.errors) for r in rates] == [
        (minute * 60 * S, 60, 6) for minute in range(10)
    ]
    assert health_late() == late_before


def test_a_line_without_a_time_of_its_own_counts_where_its_service_clock_stands() -> None:
    """A parse failure in a backlog is stamped with its receive time (now). Counted there, it moved the clock
    to now and every older line after it was late; it counts in the window its neighbours are in. A service
    that never gives a time (plain text) counts by receive time."""
    clock = Clock()
    clock.now = T0 + 400 * S  # (the backlog is older than the present)
    logic = LogRateLogic(timedelta(minutes=1), timedelta(seconds=5), clock=clock)
    failure = LogEvent("bad", clock.now, "", "api", {}, own_time=False)
    backlog = [event(second, "info") for second in range(0, 300, 2)]
    late_before = health_late()
    rates = closed(logic.on_batch([[*backlog[:40], failure, *backlog[40:]]]))
    rates += closed(logic.on_eof())
    assert [(r.window_start_ns - T0, r.total) for r in rates] == [
        (0, 30),
        (60 * S, 31),
        (120 * S, 30),
        (180 * S, 30),
        (240 * S, 30),
    ]
    assert health_late() == late_before

    plain = LogRateLogic(timedelta(seconds=10), timedelta(seconds=1), clock=clock)
    start = clock.now - clock.now % (10 * S)
    lines = [LogEvent(f"p{i}", start + i * S, "", "plain", {}, own_time=False) for i in range(3)]
    assert closed(plain.on_batch([lines])) == []
    clock.now = start + 12 * S
    assert [(r.window_start_ns, r.total) for r in closed(plain.on_notify())] == [(start, 3)]


def test_lines_without_a_time_before_a_services_first_stamped_line_count_with_it() -> None:
    """A file read from its start whose first lines have no time (the MySQL slow log's banner): counted at
    their receive time, they set the clock to now and every stamped line after them was late."""
    clock = Clock()
    logic = LogRateLogic(timedelta(minutes=1), timedelta(seconds=5), clock=clock)
    banner = [LogEvent(f"b{i}", clock.now, "", "api", {}, own_time=False) for i in range(3)]
    backlog = [event(second, "info") for second in range(0, 120, 2)]
    late_before = health_late()
    rates = closed(logic.on_batch([[*banner, *backlog]]))
    rates += closed(logic.on_eof())
    assert [(r.window_start_ns - T0, r.total) for r in rates] == [(0, 33), (60 * S, 30)]
    assert health_late() == late_before


def health_late() -> int:
    from flows import health

    return health.counters().late_log_events


def from_file(source: str, at_s: float, level: str = "info") -> LogEvent:
    """An event of a file (its id: the file's key, "-", the offset), as collectors.logs.tail names them."""
    return LogEvent(f"{source}-{int(at_s * 1000):x}", T0 + int(at_s * S), level, "api", {})


def test_a_backlog_of_several_files_of_one_service_is_counted_whole() -> None:
    """Found by a review: three replicas' files caught up after downtime, or rotated files read at a first start,
    are read a batch of one file at a time. With one clock per service, the file read first moved it minutes
    ahead and the others' events were late: 2,000 a minute counted of 6,000. Each file has its own clock now,
    and a window waits for every file that is still being read."""
    clock = Clock()
    clock.now = T0 + 3600 * S  # an hour after the events: a backlog
    logic = LogRateLogic(timedelta(seconds=60), timedelta(seconds=5), clock=clock)
    rates: list[LogRate] = []
    for chunk in range(3):  # 100 s of each file in turn, a batch each, as the tail reads a backlog
        for source in ("a", "b", "c"):
            rates += closed(logic.on_batch([[from_file(source, chunk * 100 + i) for i in range(100)]]))
            clock.now += S // 10
    # Windows of the past wait SOURCE_IDLE after they opened: time for the tail to reach the other files (file
    # "a" is read first, and "b" and "c" were not known yet when its first batch came).
    assert rates == []
    clock.now += 31 * S  # the files are read to their end and quiet since: every window closes, each whole
    rates = closed(logic.on_notify())
    assert {rate.window_start_ns: rate.total for rate in rates} == {T0 + m * 60 * S: 180 for m in range(5)}
    assert logic.windows == {T0 + 300 * S: {}}  # the quiet window after them, itself a window of the past


def test_a_file_read_to_its_end_holds_the_windows_only_while_it_moves_on_or_until_it_is_idle() -> None:
    """A quiet file's clock moves on with pipeline time, as a quiet service's does; after SOURCE_IDLE it holds
    nothing. Its clock survives a snapshot."""
    clock = Clock()
    clock.now = T0 + 29 * S  # live: "new" below is written up to now
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=2), clock=clock)
    logic.on_batch([[from_file("old", i) for i in range(10)]])  # a rotated file, read to its end at 9 s
    start = clock.now
    assert closed(logic.on_batch([[from_file("new", 10 + i) for i in range(20)]])) == []  # held by "old"
    assert logic.notify_at() == datetime.fromtimestamp((start + 3 * S) / 1e9, UTC)  # "old" at 9 + 3 s = 10 + 2 s
    resumed = LogRateLogic(timedelta(seconds=10), timedelta(seconds=2), logic.snapshot(), clock=clock)
    clock.now = start + 3 * S
    assert [rate.window_start_ns for rate in closed(resumed.on_notify())] == [T0]
    assert resumed.notify_at() == datetime.fromtimestamp((start + 13 * S) / 1e9, UTC)
    clock.now = start + 20 * S  # "old" at 29 - 2 s: [10, 20) closes; "new" (at 49 s by now) holds nothing
    assert [rate.window_start_ns for rate in closed(resumed.on_notify())] == [T0 + 10 * S]
    clock.now = start + 30 * S  # "old" quiet for SOURCE_IDLE: it holds nothing any more
    closing = [T0 + s * S for s in (20, 30)]  # and [30, 40): quiet, past too
    assert [rate.window_start_ns for rate in closed(resumed.on_notify())] == closing
    assert resumed.windows == {}


def test_a_window_written_never_opens_again_for_a_new_file() -> None:
    """Found by a review: a file appearing with lines for a window already written (a new pod, a buffered writer)
    held the watermark back, and the window opened again and was written a second time with only the new lines'
    count, replacing the first in InfluxDB. Those lines are late."""
    clock = Clock()
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=2), clock=clock)
    assert [r.total for r in closed(logic.on_batch([[from_file("a", i) for i in range(15)]]))] == [10]
    clock.now += S
    late_before = health.counters().late_log_events
    assert closed(logic.on_batch([[from_file("b", 5 + i / 10, "error") for i in range(5)]])) == []
    assert health.counters().late_log_events - late_before == 5
    assert logic.windows.keys() == {T0 + 10 * S}


def test_a_file_stamped_behind_the_others_holds_a_live_window_source_idle_at_most() -> None:
    """Found by a review: a file stamped 120 s behind the others (a wrong zone) held every window of the service
    until it passed it: the live rates came 127 s after the window's end. It holds a window SOURCE_IDLE at most
    after the service's clock passed it."""
    clock = Clock()
    clock.now = T0 + 5 * S  # live: the events are as old as the pipeline clock says
    logic = LogRateLogic(timedelta(seconds=10), timedelta(seconds=2), clock=clock)
    written: dict[int, int] = {}
    for second in range(5, 90):
        out = closed(logic.on_batch([[from_file("now", second), from_file("behind", second - 120)]]))
        clock.now += S
        out += closed(logic.on_notify())
        written |= {r.window_start_ns - T0: clock.now - T0 for r in out if r.window_start_ns >= T0}
    # Each live window of the "now" file: out 2 s (the lateness) + 30 s (SOURCE_IDLE) after its end at most.
    assert sorted(written) == [w * S for w in (0, 10, 20, 30, 40)]  # (up to 89 s: [50, 60) is due at 92 s)
    assert all(at - (start + 10 * S) <= 33 * S for start, at in written.items())
