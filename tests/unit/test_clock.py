"""flows/clock: the window clock stands still while the flow is held back by a store."""

from __future__ import annotations

import signal
import subprocess
import sys
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


# A worker that looks at the clock in a tight loop for 4 s, and reports the clock's largest step between two
# looks, and how far the clock fell behind wall time.
_LOOKING_WORKER = """
import time
from flows import clock
clock.beat(time.monotonic() + 3600)  # a source not due for an hour: no silence pause
start_wall, start = time.time_ns(), clock.now_ns()
print("looking", flush=True)
step = 0
last = start
while time.time_ns() - start_wall < 4_000_000_000:
    now = clock.now_ns()
    step = max(step, now - last)
    last = now
print(step, (time.time_ns() - start_wall) - (clock.now_ns() - start), flush=True)
"""


def test_the_time_a_process_was_stopped_is_left_out_already_at_its_first_look_at_the_clock() -> None:
    """SIGSTOP for 1.5 s, then SIGCONT (`docker pause`, a suspended VM): every thread stops, the watcher's too.
    Readings the broker held meanwhile are read after the freeze; the clock must not have moved by the frozen
    time, not even at the worker's first look after it (it may run before the watcher does)."""
    child = subprocess.Popen([sys.executable, "-c", _LOOKING_WORKER], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "looking"
    time.sleep(0.5)
    child.send_signal(signal.SIGSTOP)
    time.sleep(1.5)
    child.send_signal(signal.SIGCONT)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    step, behind = (int(x) / 1e9 for x in out.split())
    assert step < 0.3, f"the clock jumped {step:.2f} s at once"
    assert 1.3 < behind < 1.8, f"the clock is {behind:.2f} s behind wall time after a 1.5 s freeze"
