"""Log lines about events that can come thousands a second (refused connections, refused documents): the
first at once, then at most one an interval, saying how many came since. Each event is still counted in the
health measurement and, where it is data, stored as a dead letter; the log must not be buried under them."""

from __future__ import annotations

import math
import threading
import time


class LogThrottle:
    """Counts events; ``count`` says when one is to be logged, and with how many since the last line."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()  # (the Elasticsearch sink's lanes count from several threads)
        self._logged_at = -math.inf  # (the first event is logged, however early after boot it comes)
        self._unlogged = 0

    def count(self, events: int = 1) -> int:
        """Count ``events`` more. Returns the events to report now, these included (0: not yet)."""
        with self._lock:
            self._unlogged += events
            now = time.monotonic()
            if now - self._logged_at < self._interval_s:
                return 0
            events, self._unlogged, self._logged_at = self._unlogged, 0, now
            return events
