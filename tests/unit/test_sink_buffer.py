"""The bounded buffer between the dataflow and a sink's writer thread."""

from __future__ import annotations

import threading
import time

from flows.sinks.buffer import BoundedBuffer


def test_pending_is_the_batch_being_written_then_the_queue_until_it_is_done() -> None:
    buffer: BoundedBuffer[str] = BoundedBuffer(10)
    buffer.put(["a", "b", "c"])
    assert buffer.take(2, wait=0) == ["a", "b"]
    buffer.put(["d"])
    # "a" and "b" are taken but not stored yet: a snapshot must still hold them.
    assert buffer.pending(limit=10) == ["a", "b", "c", "d"]
    assert buffer.pending(limit=3) is None
    buffer.done()
    assert buffer.pending(limit=10) == ["c", "d"]
    buffer.close()


def test_put_blocks_while_full_and_nothing_is_dropped() -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(4)
    done = threading.Event()

    def produce() -> None:
        buffer.put(list(range(10)))
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    time.sleep(0.2)
    assert not done.is_set() and len(buffer) == 4 and buffer.above_high_water()
    taken: list[int] = []
    while len(taken) < 10:
        taken += buffer.take(3, wait=0.5)
    assert done.wait(2) and taken == list(range(10))
    buffer.close()


def test_with_max_bytes_large_items_fill_it_before_the_count_does_and_nothing_is_dropped() -> None:
    """Found by a review: dead letters of 70 KB payloads, capped by count only, took 3.8 GB while Elasticsearch was
    slow. With a byte bound the buffer holds what it allows in bytes, queued and being written; an item larger
    than the bound still goes in, alone."""
    buffer: BoundedBuffer[bytes] = BoundedBuffer(1000, max_bytes=100, weigh=len)
    done = threading.Event()

    def produce() -> None:
        buffer.put([b"x" * 30] * 10 + [b"y" * 250, b"z"])
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    time.sleep(0.2)
    assert not done.is_set() and len(buffer) == 3 and buffer.bytes() == 90 and buffer.above_high_water()
    assert buffer.take(2, wait=0) == [b"x" * 30] * 2
    time.sleep(0.2)
    assert len(buffer) == 1 and buffer.bytes() == 90, "what is being written still counts"
    taken: list[bytes] = []
    buffer.done()
    while len(taken) < 10:
        taken += buffer.take(1, wait=0.5)
        assert buffer.bytes() <= 100 or taken[-1] == b"y" * 250
        buffer.done()
    assert done.wait(2) and buffer.bytes() == 0
    assert taken == [b"x" * 30] * 8 + [b"y" * 250, b"z"]
    buffer.close()
