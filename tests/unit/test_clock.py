"""flows/clock: the window clock stands still while the flow is held back by a store."""

from __future__ import annotations

import time

from flows import clock


def test_the_clock_stands_still_while_any_source_is_paused_by_backpressure() -> None:
    first, second = clock.StallMark(), clock.StallMark()
    first.set(True)
    frozen = clock.now_ns()
    second.set(True)  # a second source pausing does not count the same time twice
    time.sleep(0.2)
    first.set(False)
    time.sleep(0.2)
    assert abs(clock.now_ns() - frozen) < 50_000_000, "the clock moved while a source was paused"
    second.set(False)
    time.sleep(0.2)
    moved = clock.now_ns() - frozen
    assert 150_000_000 < moved < 400_000_000
    # notify_at's conversion stays consistent: the pipeline's now is wall time now.
    assert abs(clock.to_wall_ns(clock.now_ns()) - time.time_ns()) < 50_000_000


def test_setting_the_same_state_twice_is_one_pause() -> None:
    mark = clock.StallMark()
    before = clock.stalled_ns()
    mark.set(True)
    mark.set(True)
    time.sleep(0.05)
    mark.set(False)
    mark.set(False)
    assert 40_000_000 < clock.stalled_ns() - before < 300_000_000
