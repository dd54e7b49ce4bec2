"""Repeated webhook deliveries in a chaos run (bench/chaos.py), told apart: fleetwatch delivers at least once
(README, *Alerts*), so a repeat is expected only where that says it can happen. Pure functions, loaded by path
by the unit tests (bench/ is not in the wheel)."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Any

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def webhook_failures(log_path: Path) -> list[float]:
    """Wall-clock times of the pipeline's log lines saying a webhook delivery failed and will be retried
    (a timeout, a reset, a 5xx): the receiver may have acted on the failed attempt all the same."""
    times = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = _LOG_TIME.match(line)
        if match and "alert-webhook-" in line and " failed (" in line:
            stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))  # local time, as asctime
            times.append(stamp + int(match.group(2)) / 1000)
    return times


def webhook_repeats(
    posts: list[tuple[str, str, float]], kills: list[float], failures: list[float]
) -> list[dict[str, Any]]:
    """Each second (third...) POST of a notification id, and what explains it. fleetwatch delivers at least
    once (README, *Alerts*): a kill -9 between the receiver's answer and the journal's write, or an attempt
    that failed on the pipeline's side after the receiver had read it, sends it again. So a repeat is
    explained by a kill -9 between the two POSTs, or by a failed attempt logged between them (10 ms of slack
    for the log's millisecond clock). Anything else is a duplicate."""
    by_id: dict[str, list[float]] = {}
    for notification_id, _, at in posts:
        by_id.setdefault(notification_id, []).append(at)
    repeats = []
    for notification_id, times in sorted(by_id.items()):
        times.sort()
        for before, after in itertools.pairwise(times):
            explained_by = None
            if any(before <= k <= after for k in kills):
                explained_by = "kill"
            elif any(before - 0.01 <= f <= after + 0.01 for f in failures):
                explained_by = "failed_attempt"
            repeats.append({"id": notification_id, "first_at": before, "again_at": after, "explained_by": explained_by})
    return repeats
