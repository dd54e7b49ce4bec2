"""Log rates: per service and event-time window, the number of events by level and the error rate.

One Bytewax stateful operator keyed by service. The window clock follows the readings windows
(``flows.windows``): the watermark is the newest event time of the service minus the allowed lateness,
advanced by pipeline wall time while the service is quiet, so a window closes even when the service stops
logging. A window is emitted once, when the watermark passes its end, as a ``LogRate``.

Late events (their window already emitted) are still stored in Elasticsearch by the logs path; they are
only left out of the rate, and counted in the pipeline's health as ``late_log_events``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from bytewax.operators import StatefulBatchLogic

from fleetwatch.record import LogEvent, LogRate
from flows import clock as pipeline_clock
from flows import health

RateState = tuple[str, int, int, dict[int, dict[str, int]]]


class LogRateLogic(StatefulBatchLogic[list[LogEvent], list[LogRate], RateState]):
    """Windows of one service. State: (service, newest event time, wall time when it was seen, open windows).
    The service is learnt from the events: Bytewax does not pass the key to the builder."""

    def __init__(
        self,
        window: timedelta,
        allowed_lateness: timedelta,
        resume: RateState | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.window_ns = int(window.total_seconds() * 1e9)
        self.lateness_ns = int(allowed_lateness.total_seconds() * 1e9)
        self._now = clock or pipeline_clock.now_ns
        self.service, self.max_ts, self.sys_at_max, open_windows = (
            resume if resume is not None else ("", -(2**63), 0, {})
        )
        self.windows: dict[int, dict[str, int]] = {start: dict(counts) for start, counts in open_windows.items()}

    def _watermark(self, now: int) -> int:
        return self.max_ts + (now - self.sys_at_max) - self.lateness_ns

    def on_batch(self, values: list[list[LogEvent]]) -> tuple[Iterable[list[LogRate]], bool]:
        now = self._now()
        for events in values:
            for event in events:
                self.service = event.service
                if event.ts_ns > self.max_ts:
                    self.max_ts, self.sys_at_max = event.ts_ns, now
        watermark = self._watermark(now)
        late = 0
        for events in values:
            for event in events:
                start = event.ts_ns - event.ts_ns % self.window_ns
                if start + self.window_ns <= watermark and start not in self.windows:
                    late += 1
                    continue
                counts = self.windows.setdefault(start, {})
                counts[event.level] = counts.get(event.level, 0) + 1
        if late:
            health.counters().late_log_events += late
        return self._close(watermark), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[list[LogRate]], bool]:
        return self._close(self._watermark(self._now())), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[list[LogRate]], bool]:
        return self._close(2**62), StatefulBatchLogic.RETAIN

    def _close(self, watermark: int) -> list[list[LogRate]]:
        due = sorted(start for start in self.windows if start + self.window_ns <= watermark)
        if not due:
            return []
        return [[LogRate(self.service, start, self.window_ns, self.windows.pop(start)) for start in due]]

    def notify_at(self) -> datetime | None:
        if not self.windows:
            return None
        # Wall time at which the earliest window closes if the service stays quiet.
        end = min(self.windows) + self.window_ns
        due_ns = self.sys_at_max + (end + self.lateness_ns - self.max_ts)
        return datetime.fromtimestamp(due_ns / 1e9, tz=UTC)

    def snapshot(self) -> RateState:
        return (
            self.service,
            self.max_ts,
            self.sys_at_max,
            {start: dict(counts) for start, counts in self.windows.items()},
        )
