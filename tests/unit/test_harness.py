"""The integration harness's own judgement of a pipeline's log (tests/integration/harness.py)."""

from __future__ import annotations

import pytest

from tests.integration.harness import crash_lines


@pytest.mark.parametrize(
    "line",
    [
        "Traceback (most recent call last):",
        "thread '<unnamed>' panicked at src/run.rs:123:45:",
        "Exception in thread writer-influxdb:",
        "2026-01-01 00:00:00,000 CRITICAL fleetwatch.runner: the dataflow failed",
        "Fatal Python error: Segmentation fault",
    ],
)
def test_a_crash_is_seen(line: str) -> None:
    log = f"2026-01-01 00:00:00,000 INFO fleetwatch.runner: started\n{line}\nmore\n"
    assert crash_lines(log) == [line]


def test_a_clean_log_is_clean() -> None:
    log = (
        "2026-01-01 00:00:00,000 INFO fleetwatch.runner: fleetwatch: 1 worker(s) x 1 process(es)\n"
        "2026-01-01 00:00:01,000 WARNING flows.sinks.writer: influxdb: writing 5 items failed, retrying in 1 s\n"
        "2026-01-01 00:00:02,000 ERROR flows.sinks.writer: a store error is not a crash\n"
        "2026-01-01 00:00:03,000 INFO fleetwatch.runner: fleetwatch: stopping\n"
        "2026-01-01 00:00:04,000 WARNING flows.alerts.notify: alert hot firing (critical): [CRITICAL] hot: 46 > 40\n"
    )
    assert crash_lines(log) == []
