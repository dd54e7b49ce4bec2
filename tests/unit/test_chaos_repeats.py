"""The chaos run's reading of repeated webhook deliveries (bench/chaos.py): fleetwatch delivers at least once,
so a repeat is fine only where the README says it can happen, across a kill -9 or after a failed attempt."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# bench/ is a tool of the checkout, not part of the wheel: its one module of pure functions is loaded by path,
# without putting the checkout on sys.path (the tests import fleetwatch from the installed wheel only).
_spec = importlib.util.spec_from_file_location("bench_webhook_repeats", REPO / "bench" / "webhook_repeats.py")
assert _spec is not None and _spec.loader is not None
_repeats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_repeats)
webhook_failures = _repeats.webhook_failures
webhook_repeats = _repeats.webhook_repeats


def test_a_repeat_with_no_kill_or_failed_attempt_between_is_a_duplicate() -> None:
    posts = [("a", "firing", 10.0), ("b", "firing", 11.0), ("a", "firing", 12.0), ("c", "resolved", 20.0)]
    assert webhook_repeats(posts, kills=[9.0, 13.0], failures=[8.0, 12.5]) == [
        {"id": "a", "first_at": 10.0, "again_at": 12.0, "explained_by": None}
    ]


def test_a_repeat_across_a_kill_or_after_a_failed_attempt_is_at_least_once() -> None:
    posts = [("a", "firing", 10.0), ("a", "firing", 12.0), ("d", "firing", 30.0), ("d", "firing", 36.0)]
    repeats = webhook_repeats(posts, kills=[11.5], failures=[35.0])
    assert [(r["id"], r["explained_by"]) for r in repeats] == [("a", "kill"), ("d", "failed_attempt")]


def test_failed_webhook_attempts_are_read_from_the_pipeline_log(tmp_path: Path) -> None:
    log = tmp_path / "pipeline.log"
    log.write_text(
        "2026-12-07 21:40:14,123 WARNING flows.sinks.writer: alert-webhook-0: writing 1 items failed "
        "(127.0.0.1:8080: ReadTimeoutError: read timed out); retry 1 in 0.1s, 0 waiting\n"
        "2026-12-07 21:40:15,000 WARNING flows.sinks.writer: elasticsearch: writing 9 items failed (refused)\n"
    )
    local = time.mktime(time.strptime("2026-12-07 21:40:14", "%Y-%m-%d %H:%M:%S"))
    assert webhook_failures(log) == [local + 0.123]
