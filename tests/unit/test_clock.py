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


def test_the_clock_stands_still_while_no_source_is_called_and_goes_on_at_the_next_call() -> None:
    """A worker loop held up (a cluster peer out of reach holds every worker until the link is back): once no
    source has been called for a second past the time it asked for, the clock stands still until one is."""
    clock.beat(time.monotonic())
    start = clock.now_ns()
    time.sleep(0.5)
    assert 400_000_000 < clock.now_ns() - start < 700_000_000, "half a second of silence is no stall"
    time.sleep(2.0)
    clock.beat(time.monotonic())
    moved = clock.now_ns() - start
    assert 900_000_000 < moved < 1_300_000_000, f"the clock moved {moved / 1e9:.2f} s in 2.5 s, 1.5 s of them silent"
    time.sleep(0.3)
    assert 1_150_000_000 < clock.now_ns() - start < 1_600_000_000, "the clock did not go on after the call"
    clock.stop_watching()


def test_a_source_that_asked_to_be_called_later_is_not_silent_until_then() -> None:
    clock.beat(time.monotonic() + 2.0)  # a file tail polling every 2 s
    start = clock.now_ns()
    time.sleep(1.5)
    clock.beat(time.monotonic())
    assert clock.now_ns() - start > 1_400_000_000
    clock.stop_watching()
