"""A failing webhook never blocks the dataflow (issue 15, item 9).

The alert sink is driven the way Bytewax drives it, ``write_batch`` then ``snapshot`` at each epoch, with the
real notifiers of a process: MQTT to the stack's Mosquitto and a webhook to a real local HTTP server that
answers 500, or hangs. Every call must return at once however many notifications are waiting. What does not
fit the webhook's queue is not lost silently: it is counted, logged once, and recorded in the journal as
dropped, and everything else is either delivered or in the snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetwatch.config import MQTTConfig
from fleetwatch.record import AlertTransition
from flows.alerts import sink as alert_sink
from flows.alerts.notify import DEFAULT_CAPACITY, SentJournal
from flows.alerts.rules import AlertsConfig
from flows.sinks.buffer import saturated
from tests.conftest import MQTT_HOST, MQTT_PORT
from tests.integration.test_alert_notify import Hook, clear_retained, transition, webhook_cfg

BATCH = 100
# A write_batch or snapshot call that takes longer than this is the worker waiting on a notifier.
CALL_BOUND_S = 1.0


@pytest.fixture
def prefix(unique: str) -> Iterator[str]:
    prefix = f"fwtest/{unique}/alerts"
    yield prefix
    alert_sink.close_process_notifiers(5.0)
    clear_retained(f"{prefix}/#")


def hook_that(behaviour: str) -> Hook:
    if behaviour == "answers 500":
        return Hook(answer=lambda n: (500, 0.0, {}))
    # Hangs: holds every request far longer than the notifier's timeout.
    return Hook(answer=lambda n: (200, 60.0, {}))


def drive(partition: object, transitions: list[AlertTransition]) -> tuple[list[float], list[list[AlertTransition]]]:
    """Epochs of BATCH transitions: write_batch, then snapshot, as Bytewax calls them. The longest call of
    each epoch, and the last snapshot."""
    slowest: list[float] = []
    snapshot: list[list[AlertTransition]] = []
    for i in range(0, len(transitions), BATCH):
        started = time.monotonic()
        partition.write_batch([transitions[i : i + BATCH]])  # type: ignore[attr-defined]
        wrote = time.monotonic()
        snapshot = partition.snapshot()  # type: ignore[attr-defined]
        slowest.append(max(wrote - started, time.monotonic() - wrote))
    return slowest, snapshot


def run_bounded(partition: object, transitions: list[AlertTransition], limit: float) -> tuple[list[float], list]:
    """``drive`` on its own thread, so that a worker stuck on a notifier fails the test instead of hanging it."""
    result: list[tuple[list[float], list]] = []
    thread = threading.Thread(target=lambda: result.append(drive(partition, transitions)), daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the worker was still blocked after {limit:g}s: a notifier held it"
    return result[0]


@pytest.mark.parametrize("behaviour", ["answers 500", "hangs"])
def test_more_than_a_thousand_pending_notifications_do_not_stall_the_epoch(
    prefix: str, tmp_path: Path, behaviour: str
) -> None:
    hook = hook_that(behaviour)
    cfg = AlertsConfig(mqtt_topic_prefix=prefix, webhooks=[webhook_cfg(hook.port)], journal=tmp_path / "sent.jsonl")
    mqtt = MQTTConfig(host=MQTT_HOST, port=MQTT_PORT)
    try:
        partition = alert_sink.AlertNotifySink(cfg, mqtt, 1, None).build_part("alerts", "alerts-0", None)
        transitions = [transition(f"n-{i}", at_ns=i) for i in range(1_500)]
        slowest, snapshot = run_bounded(partition, transitions, limit=30.0)
        assert max(slowest) < CALL_BOUND_S, f"slowest write_batch/snapshot call: {max(slowest):.2f}s"

        mqtt_notifier, webhook = partition.notifiers
        # Nothing dropped below the queue's capacity: the webhook holds every notification, and the snapshot
        # holds them too, so a crash now loses none.
        assert webhook.written == 0 and webhook.dropped == 0
        assert {t.notification_id for t in snapshot[1]} == {t.notification_id for t in transitions}
        assert mqtt_notifier.flush(30)
        assert mqtt_notifier.written == 1_500
    finally:
        hook.close()


@pytest.mark.slow
def test_a_full_webhook_queue_drops_counts_logs_once_and_journals(
    prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flows")
    hook = hook_that("answers 500")
    journal_path = tmp_path / "sent.jsonl"
    cfg = AlertsConfig(mqtt_topic_prefix=prefix, webhooks=[webhook_cfg(hook.port)], journal=journal_path)
    mqtt = MQTTConfig(host=MQTT_HOST, port=MQTT_PORT)
    total = DEFAULT_CAPACITY + 2_000
    try:
        partition = alert_sink.AlertNotifySink(cfg, mqtt, 1, None).build_part("alerts", "alerts-0", None)
        transitions = [transition(f"n-{i}", at_ns=i) for i in range(total)]
        slowest, snapshot = run_bounded(partition, transitions, limit=60.0)
        assert max(slowest) < CALL_BOUND_S, f"slowest write_batch/snapshot call: {max(slowest):.2f}s"
        # A full notifier queue never makes the sources pause either (that is a stall too).
        assert not saturated()

        mqtt_notifier, webhook = partition.notifiers
        held = {t.notification_id for t in snapshot[1]}
        assert webhook.written == 0
        assert webhook.dropped > 0 and webhook.dropped + len(held) == total
        assert len(held) <= DEFAULT_CAPACITY + webhook.batch_size

        # Every notification is accounted for: in the snapshot (to be delivered), or in the journal as
        # dropped for this channel (it is in the alert history all the same).
        journal = mqtt_notifier.journal
        dropped = [t.notification_id for t in transitions if journal.status(webhook.channel, t.notification_id)]
        assert len(dropped) == webhook.dropped
        assert {journal.status(webhook.channel, i) for i in dropped} == {"dropped"}
        assert held.isdisjoint(dropped) and held | set(dropped) == {t.notification_id for t in transitions}

        # Logged once for the whole burst (rate-limited), with the count.
        warnings = [
            r.getMessage() for r in caplog.records if "dropped" in r.getMessage() and webhook.name in r.getMessage()
        ]
        assert len(warnings) == 1, warnings
        assert "queue is full" in warnings[0]

        # The totals a health report reads.
        stats = alert_sink.notification_stats()
        assert stats[webhook.name]["dropped"] == webhook.dropped
        assert stats[webhook.name]["pending"] == len(held)

        # The MQTT channel was not held back by the webhook: what it was given, it delivers.
        assert mqtt_notifier.flush(60)
        assert mqtt_notifier.written + mqtt_notifier.dropped == total
    finally:
        hook.close()

    # The journal survives a restart with the drops in it: a replay of these transitions does not queue them.
    alert_sink.close_process_notifiers(5.0)
    reopened = SentJournal(journal_path)
    try:
        assert reopened.status("webhook-0", dropped[0]) == "dropped"
    finally:
        reopened.close()
