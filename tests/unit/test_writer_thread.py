"""The writer thread every sink shares: flush means stored, a stop never drops, a failure is never quiet
(issue 15 items 4, 5 and 6)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from flows import clock, lifecycle
from flows.sinks.writer import (
    BatchWriterThread,
    RetryableError,
    SetupError,
    flush_all_writers,
    pending_for_epoch,
    writers_failing,
)


@pytest.fixture(autouse=True)
def fresh_lifecycle() -> Iterator[None]:
    lifecycle.reset()
    yield
    lifecycle.reset()


class SlowStore(BatchWriterThread[str]):
    """Stores a batch after ``delay`` seconds; ``down`` makes every write fail as retryable."""

    def __init__(
        self, delay: float = 0.0, down: bool = False, prepare_error: Exception | None = None, lanes: int = 1
    ) -> None:
        super().__init__(
            "test-writer", capacity=100, batch_size=10, flush_interval=0.001, retry_max_delay=0.05, lanes=lanes
        )
        self.delay = delay
        self.down = down
        self.prepare_error = prepare_error
        self.stored: list[str] = []
        self.start()

    def prepare(self) -> None:
        if self.prepare_error is not None:
            raise self.prepare_error

    def deliver(self, batch: list[str]) -> None:
        time.sleep(self.delay)
        if self.down:
            raise RetryableError("store down")
        self.stored.extend(batch)


def test_flush_returns_only_once_the_batch_in_flight_is_stored() -> None:
    writer = SlowStore(delay=0.01)
    try:
        for i in range(200):
            writer.put([f"item{i}"])
            assert writer.flush(5.0)
            assert writer.stored[-1] == f"item{i}", f"flush returned before item{i} was stored"
    finally:
        writer.close(5.0)


def test_close_with_the_store_down_keeps_what_is_unwritten_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    writer = SlowStore(down=True)
    writer.put([f"item{i}" for i in range(25)])
    time.sleep(0.1)
    assert writer.close(timeout=0.5) is False
    assert writer.stored == []
    assert writer.buffer.unwritten() == 25, "the items must still be counted as unwritten, not dropped"
    assert "25 items unwritten" in caplog.text


def test_a_failing_setup_stops_the_process_with_the_reason_and_put_never_blocks() -> None:
    writer = SlowStore(prepare_error=SetupError('CREATE DATABASE "x" refused: HTTP 403'))
    deadline = time.monotonic() + 5
    while writer.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not writer.alive()
    assert lifecycle.stopping()
    assert any("HTTP 403" in failure for failure in lifecycle.failures())
    # The dataflow can still hand over its output (it ends in the last snapshot) instead of hanging.
    done = threading.Event()
    threading.Thread(target=lambda: (writer.put(["x"] * 500), done.set()), daemon=True).start()
    assert done.wait(2), "put blocked on a writer that is gone"
    assert len(pending_for_epoch(writer, limit=10)) == 500
    assert writer.flush(0.2) is False
    writer.close(0.2)


def test_an_unexpected_error_in_deliver_is_logged_with_its_traceback_and_stops_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(SlowStore):
        def deliver(self, batch: list[str]) -> None:
            raise KeyError("bug")

    writer = Broken()
    with caplog.at_level(logging.ERROR):
        writer.put(["a"])
        deadline = time.monotonic() + 5
        while writer.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not writer.alive() and lifecycle.stopping()
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)
    assert any("test-writer cannot go on" in f for f in lifecycle.failures())
    writer.close(0.2)


def test_a_stop_puts_everything_unwritten_into_the_last_snapshot_instead_of_waiting() -> None:
    writer = SlowStore(down=True)
    writer.put([f"item{i}" for i in range(50)])
    lifecycle.request_stop()
    started = time.monotonic()
    assert len(pending_for_epoch(writer, limit=10)) == 50
    assert time.monotonic() - started < 1.0
    writer.close(0.2)


def test_an_epoch_waits_for_a_store_that_is_down_and_the_wait_is_a_stall_of_the_window_clock() -> None:
    """More unwritten items than a snapshot may hold: the epoch waits for the store until the snapshot may
    hold what is left (the flow stalls, the sources stop reading), and the time waited is left out of the
    pipeline clock, so the windows do not close on a backlog that only waited for the store."""
    writer = SlowStore(down=True)
    writer.put([f"item{i}" for i in range(50)])
    _wait_for_a_failed_attempt(writer)
    stalled_before = clock.stalled_ns()
    result: list[list[str]] = []
    waiting = threading.Thread(target=lambda: result.append(pending_for_epoch(writer, limit=10)), daemon=True)
    waiting.start()
    time.sleep(1.2)
    assert waiting.is_alive(), "the epoch did not wait for the store"
    writer.down = False  # the store is back
    waiting.join(10)
    assert len(result) == 1, "the epoch never went on"
    held = result[0]
    assert len(held) <= 10, "the snapshot holds more than its limit"
    # It waits only until the snapshot may hold the rest, not until the store has everything: draining
    # the buffer to empty at every such epoch left the writer idle while the worker refilled it.
    stored = list(writer.stored)
    assert set(stored) | set(held) == {f"item{i}" for i in range(50)}, "an item is neither stored nor held"
    assert stored[: 50 - len(held)] == [f"item{i}" for i in range(50 - len(held))]
    assert clock.stalled_ns() - stalled_before >= 1_000_000_000
    writer.close(1.0)


def test_an_epoch_over_the_limit_waits_only_until_the_snapshot_may_hold_the_rest() -> None:
    """The store takes the first 40 items and then hangs: an epoch with 50 unwritten and a limit of 10 goes
    on once 10 are left, holding them, instead of waiting for a store that has not answered yet."""
    writer = SlowStore()
    release = threading.Event()
    deliver = writer.deliver

    def hang_after_forty(batch: list[str]) -> None:
        if len(writer.stored) >= 40:
            release.wait(30)
        deliver(batch)

    writer.deliver = hang_after_forty  # type: ignore[method-assign]
    try:
        writer.put([f"item{i}" for i in range(50)])
        started = time.monotonic()
        held = pending_for_epoch(writer, limit=10)
        waited = time.monotonic() - started
        assert held == [f"item{i}" for i in range(40, 50)]
        # Waiting for everything would last until the flush gives up (5 s) on the hanging store.
        assert waited < 4.0, f"the epoch waited {waited:.1f} s for items its snapshot could hold"
    finally:
        release.set()
        writer.close(5.0)


def _wait_for_a_failed_attempt(writer: SlowStore) -> None:
    deadline = time.monotonic() + 5
    while not writer.failing and time.monotonic() < deadline:
        time.sleep(0.005)
    assert writer.failing


def test_a_store_that_answers_slowly_does_not_stall_the_epoch_its_backlog_goes_into_the_snapshot() -> None:
    """A window boundary at fleet scale hands the sink far more lines than the limit at once. While the store
    keeps answering, the snapshot copies them (resume writes them again) instead of waiting for them."""
    writer = SlowStore(delay=0.05)
    writer.put([f"item{i}" for i in range(90)])
    started = time.monotonic()
    pending = pending_for_epoch(writer, limit=10, limit_while_answering=100)
    assert time.monotonic() - started < 0.2, "the epoch waited for a store that answers"
    assert 60 <= len(pending) <= 90
    assert pending == [f"item{i}" for i in range(90 - len(pending), 90)], "the snapshot is the unstored tail"
    assert not writer.failing
    writer.close(10.0)


def test_a_store_that_comes_back_is_no_longer_failing() -> None:
    writer = SlowStore(down=True)
    writer.put(["a"])
    _wait_for_a_failed_attempt(writer)
    writer.down = False
    assert writer.flush(5.0)
    assert not writer.failing
    assert len(pending_for_epoch(writer, limit=0, limit_while_answering=100)) == 0
    writer.close(1.0)


def test_lanes_keep_several_batches_in_flight_and_a_snapshot_holds_each_until_it_is_stored() -> None:
    """With two lanes, a second batch goes out while the first is still with the store (a slow request
    does not leave the store idle), and until each is stored, a snapshot holds it."""
    writer = SlowStore(lanes=2)
    release = threading.Event()
    in_flight: list[list[str]] = []
    deliver = writer.deliver

    def held_by_the_store(batch: list[str]) -> None:
        in_flight.append(batch)
        release.wait(10)
        deliver(batch)

    writer.deliver = held_by_the_store  # type: ignore[method-assign]
    try:
        writer.put([f"item{i}" for i in range(25)])
        deadline = time.monotonic() + 5
        while len(in_flight) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(in_flight) == 2, "the second lane did not send while the first waited for the store"
        assert sorted(in_flight[0] + in_flight[1]) == sorted(f"item{i}" for i in range(20))
        assert writer.buffer.unwritten() == 25
        assert sorted(writer.buffer.pending(None) or []) == sorted(f"item{i}" for i in range(25))
        assert writer.flush(0.2) is False, "flush returned while two batches were not stored"
        release.set()
        assert writer.flush(5.0)
        assert sorted(writer.stored) == sorted(f"item{i}" for i in range(25))
        assert writer.buffer.pending(None) == []
    finally:
        release.set()
        writer.close(5.0)
    assert not writer.alive()


def test_a_stop_flushes_the_answering_writers_first_and_waits_briefly_for_a_failing_one() -> None:
    """A webhook that answers 500 held every stop for the whole flush timeout (30 s), and a writer registered
    after it got what was left of that time: none. The answering writer goes first and is flushed; the failing
    one, with a grace, is waited for only that long (with recovery on, what it holds is in the last snapshot)."""
    failing = SlowStore(down=True)
    failing.put(["lost"])
    deadline = time.monotonic() + 5
    while not failing.failing:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    answering = SlowStore(delay=0.2)
    answering.put([f"item{i}" for i in range(30)])
    try:
        assert writers_failing() >= 1
        started = time.monotonic()
        left = flush_all_writers(timeout=10.0, failing_grace=0.3)
        took = time.monotonic() - started
        assert answering.stored == [f"item{i}" for i in range(30)]
        assert left.get("test-writer") == 1  # (both are "test-writer": the failing one's count is what is left)
        assert took < 2.0, f"the stop waited {took:.1f} s for a writer whose store is down"
    finally:
        failing.close(0.1)
        answering.close(1.0)
