"""A bounded buffer between the dataflow and a sink's writer thread, with backpressure and never a drop.

When the store is slow or down, the buffer fills. Past the high-water mark, ``saturated()`` turns true and
the MQTT source stops reading (the broker queues for fleetwatch's persistent session, TCP flow control
does the rest). If the buffer still fills up, ``put`` blocks the worker until the writer makes room.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_buffers: list[BoundedBuffer[Any]] = []
_registry_lock = threading.Lock()


def saturated() -> bool:
    """True while any sink buffer of this process is above its high-water mark."""
    return any(b.above_high_water() for b in _buffers)


class BoundedBuffer(Generic[T]):
    """At most ``capacity`` items, and with ``max_bytes`` at most that many bytes by ``weigh`` (queued and being
    written): a count alone lets large items (dead letters of 64 KB payloads, lines of 60 KB topics) take
    gigabytes. An item larger than ``max_bytes`` still goes in, alone."""

    def __init__(
        self,
        capacity: int,
        high_water: float = 0.8,
        max_bytes: int | None = None,
        weigh: Callable[[T], int] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if (max_bytes is None) != (weigh is None):
            raise ValueError("max_bytes and weigh go together")
        self.capacity = capacity
        self._high = max(1, int(capacity * high_water))
        self.max_bytes = max_bytes
        self._high_bytes = max(1, int(max_bytes * high_water)) if max_bytes is not None else 0
        self._weigh = weigh
        self._items: deque[T] = deque()
        # With max_bytes: each queued item's weight (in step with _items), the bytes queued and being written,
        # and per lane the bytes of the batch it took.
        self._weights: deque[int] = deque()
        self._bytes = 0
        self._taken_bytes: dict[int, int] = {}
        self._cond = threading.Condition()
        # Set by request_flush(): the current take() returns what there is without waiting for a full batch.
        self._flush_requested = False
        # Per sender lane, the last batch it took, until it says the batch is stored (done()): still pending
        # for a snapshot. A writer with several lanes has several batches in flight at once.
        self._taken: dict[int, list[T]] = {}
        # Set once the writer behind this buffer has stopped for good: put() stops blocking, so that the
        # dataflow can end and keep what is unwritten in its last snapshot instead of waiting forever.
        self._writer_gone = False
        with _registry_lock:
            _buffers.append(self)

    def __len__(self) -> int:
        return len(self._items)

    def above_high_water(self) -> bool:
        return len(self._items) >= self._high or (self.max_bytes is not None and self._bytes >= self._high_bytes)

    def bytes(self) -> int:
        """Bytes queued and being written, by ``weigh`` (0 without ``max_bytes``)."""
        return self._bytes

    def put(self, items: Sequence[T]) -> None:
        """Add items; blocks while the buffer is full. Items larger than the buffer go in part by part."""
        pos = 0
        with self._cond:
            while pos < len(items):
                room = self.capacity - len(self._items)
                if self._writer_gone:
                    room = len(items) - pos
                elif self.max_bytes is not None and self._bytes >= self.max_bytes:
                    room = 0
                if room <= 0:
                    self._cond.wait(0.1)
                    continue
                chunk = items[pos : pos + room]
                if self._weigh is not None and self.max_bytes is not None:
                    chunk = self._admit(chunk, self._weigh, self.max_bytes)
                    if not chunk:  # (the next item does not fit in the bytes left)
                        self._cond.wait(0.1)
                        continue
                self._items.extend(chunk)
                pos += len(chunk)
                self._cond.notify_all()

    def _admit(self, chunk: Sequence[T], weigh: Callable[[T], int], max_bytes: int) -> Sequence[T]:
        """The part of ``chunk`` that fits in the bytes left, counted in; into an empty buffer at least its first
        item, however large."""
        each = list(map(weigh, chunk))
        whole = sum(each)
        if self._bytes + whole <= max_bytes or self._writer_gone:
            self._weights.extend(each)
            self._bytes += whole
            return chunk
        total, admitted = self._bytes, 0
        for weight in each:
            if total + weight > max_bytes and total > 0:
                break
            total += weight
            admitted += 1
        self._weights.extend(each[:admitted])
        self._bytes = total
        return chunk[:admitted]

    def take(self, max_items: int, wait: float, lane: int = 0) -> list[T]:
        """Up to ``max_items`` for sender ``lane``; waits up to ``wait`` seconds for the batch to fill
        (time-based flush). The batch stays pending until the lane calls ``done``."""
        deadline = time.monotonic() + wait
        with self._cond:
            while len(self._items) < max_items and not self._flush_requested:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            count = min(max_items, len(self._items))
            popleft = self._items.popleft
            out = [popleft() for _ in range(count)]
            self._taken[lane] = out
            if self.max_bytes is not None:
                # (as _taken, the lane's batch replaces the one before, which done() has let go of)
                weight = self._weights.popleft
                self._bytes -= self._taken_bytes.get(lane, 0)
                self._taken_bytes[lane] = sum(weight() for _ in range(count))
            if not self._items:
                self._flush_requested = False
            self._cond.notify_all()
            return out

    def done(self, lane: int = 0) -> None:
        """The batch ``lane`` took last is stored."""
        with self._cond:
            self._taken.pop(lane, None)
            self._bytes -= self._taken_bytes.pop(lane, 0)
            self._cond.notify_all()

    def _in_flight(self) -> int:
        return sum(len(batch) for batch in self._taken.values())

    def unwritten(self) -> int:
        """Items not yet stored: the batches being written plus the queue."""
        with self._cond:
            return self._in_flight() + len(self._items)

    def wait_written(self, timeout: float, down_to: int = 0) -> bool:
        """Wait until every item put so far is stored (the queue is empty and no batch is being written), or
        with ``down_to`` until at most that many are not; False after ``timeout`` seconds or once the writer
        is gone with items left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while self._in_flight() + len(self._items) > down_to:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._writer_gone:
                    return False
                self._cond.wait(min(remaining, 0.1))
            return True

    def writer_gone(self) -> None:
        with self._cond:
            self._writer_gone = True
            self._cond.notify_all()

    def pending(self, limit: int | None) -> list[T] | None:
        """Everything not yet stored (the batches being written, then the queue), or None if that is more
        than ``limit`` items."""
        with self._cond:
            if limit is not None and self._in_flight() + len(self._items) > limit:
                return None
            return [*(item for lane in sorted(self._taken) for item in self._taken[lane]), *self._items]

    def request_flush(self) -> None:
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()

    def close(self) -> None:
        with _registry_lock:
            if self in _buffers:
                _buffers.remove(self)
