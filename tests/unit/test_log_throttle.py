"""fleetwatch/log_throttle: events that can come thousands a second are logged once an interval, with how many
came since the last line."""

from __future__ import annotations

import time
from typing import Any

from fleetwatch.log_throttle import LogThrottle


def test_the_first_event_is_reported_at_once_then_one_line_an_interval_with_the_events_since(
    monkeypatch: Any,
) -> None:
    clock = [1_000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    throttle = LogThrottle(60.0)
    reports = []
    for _ in range(5_000):  # 5 s of refusals, a thousand a second
        reports.append(throttle.count())
        clock[0] += 0.001
    assert reports[0] == 1 and not any(reports[1:])
    clock[0] += 60
    assert throttle.count() == 5_000  # the 4,999 unreported and this one
    assert throttle.count() == 0
    clock[0] += 60
    assert throttle.count() == 2
