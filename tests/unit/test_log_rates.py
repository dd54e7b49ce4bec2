"""Log-rate windows with a clock moved by hand."""

from __future__ import annotations

from datetime import timedelta

from fleetwatch.record import LogEvent, LogRate
from flows.log_rates import LogRateLogic
from flows.schema import log_rate_line

S = 1_000_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z


def event(at_s: float, level: str, service: str = "api") -> LogEvent:
    return LogEvent(f"id{at_s}{level}", T0 + int(at_s * S), level, service, {})


class Clock:
    def __init__(self) -> None:
        self.now = 10**18

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
    assert resumed.notify_at() is None


def test_influx_line_has_a_field_per_level_and_the_error_rate() -> None:
    line = log_rate_line(LogRate("shop api", T0, 60 * S, {"info": 3, "error": 1, "": 1}))
    assert line == (
        f"log_rates,service=shop\\ api,window=1m count=5i,errors=1i,error_rate=0.2,unknown=1i,error=1i,info=3i {T0}"
    )
