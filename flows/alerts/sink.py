"""The alert notification sink: every transition to the log, firing/resolved (and re-notifications) to MQTT,
the webhooks and, when ``[alerts.grafana]`` is set, Grafana annotations. Alert history (Elasticsearch,
InfluxDB) goes through the store sinks.

The notifiers are per process, not per worker: they share one journal of sent notification ids, a file
that only one process may hold. Each partition hands its transitions to them and returns at once: a slow
or failing webhook never blocks the dataflow, neither in ``write_batch`` (a notifier whose queue is full
drops, counts and journals what does not fit: see ``flows.alerts.notify``) nor in ``snapshot``, which
never waits for a notifier to catch up. A partition's snapshot holds every transition the notifiers have
not delivered yet (at most ``alerts.max_pending_notifications`` and one batch in flight per notifier); on
resume they are put again, and the journal skips what did go out, so a crash neither loses a queued
notification nor sends one twice.
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from fleetwatch.alerts_config import AlertsConfig
from fleetwatch.config import MQTTConfig
from fleetwatch.record import AlertTransition
from flows.alerts.notify import (
    GrafanaAnnotationNotifier,
    MQTTNotifier,
    Notifier,
    SentJournal,
    WebhookNotifier,
    log_transition,
)

# States that are notified; "pending" and "ok" (a cancelled pending) are history only.
NOTIFIED_STATES = frozenset({"firing", "resolved"})

_notifiers: list[Notifier] | None = None
_journal: SentJournal | None = None
_lock = threading.Lock()


def journal_path(cfg: AlertsConfig, process_id: int | None) -> Path:
    """One journal per process of a cluster: ``alerts-sent.jsonl`` becomes ``alerts-sent-1.jsonl``."""
    if process_id is None:
        return cfg.journal
    return cfg.journal.with_name(f"{cfg.journal.stem}-{process_id}{cfg.journal.suffix}")


def process_notifiers(cfg: AlertsConfig, mqtt: MQTTConfig, process_id: int | None) -> list[Notifier]:
    global _notifiers, _journal
    with _lock:
        if _notifiers is None:
            journal = SentJournal(journal_path(cfg, process_id))
            suffix = "" if process_id is None else f"-{process_id}"
            capacity = cfg.max_pending_notifications
            notifiers: list[Notifier] = [
                MQTTNotifier(
                    mqtt,
                    cfg.mqtt_topic_prefix,
                    journal,
                    client_id=f"{mqtt.client_id}-alerts{suffix}",
                    capacity=capacity,
                )
            ]
            notifiers += [
                WebhookNotifier(hook, journal, channel=f"webhook-{i}", name=f"alert-webhook-{i}", capacity=capacity)
                for i, hook in enumerate(cfg.webhooks)
            ]
            if cfg.grafana is not None:
                notifiers.append(GrafanaAnnotationNotifier(cfg.grafana, journal, capacity=capacity))
            _notifiers, _journal = notifiers, journal
        return _notifiers


def notification_stats() -> dict[str, dict[str, int]]:
    """Per notifier of this process: written, failed, skipped, dropped (queue full), retries, pending."""
    with _lock:
        notifiers = list(_notifiers or [])
    return {n.name: n.stats() for n in notifiers}


def close_process_notifiers(timeout: float) -> None:
    """Deliver what can be within ``timeout`` per notifier, stop them and release the journal (the end of a
    run; tests that build several sinks in one process)."""
    global _notifiers, _journal
    with _lock:
        notifiers, journal = _notifiers or [], _journal
        _notifiers = _journal = None
    for notifier in notifiers:
        notifier.close(timeout)
    if journal is not None:
        journal.close()


class AlertNotifySink(FixedPartitionedSink[list[AlertTransition], list[list[AlertTransition]]]):
    def __init__(self, cfg: AlertsConfig, mqtt: MQTTConfig, partitions: int, process_id: int | None) -> None:
        self.cfg = cfg
        self.mqtt = mqtt
        self.partitions = partitions
        self.process_id = process_id

    def list_parts(self) -> list[str]:
        return [f"alerts-{i}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(
        self, step_id: str, for_part: str, resume_state: list[list[AlertTransition]] | None
    ) -> _AlertNotifyPartition:
        partition = _AlertNotifyPartition(process_notifiers(self.cfg, self.mqtt, self.process_id))
        for notifier, pending in zip(partition.notifiers, resume_state or [], strict=False):
            notifier.put(pending)
        return partition


class _AlertNotifyPartition(StatefulSinkPartition[list[AlertTransition], list[list[AlertTransition]]]):
    def __init__(self, notifiers: list[Notifier]) -> None:
        self.notifiers = notifiers

    def write_batch(self, items: list[list[AlertTransition]]) -> None:
        notify: list[AlertTransition] = []
        for transitions in items:
            for t in transitions:
                log_transition(t)
                if t.state in NOTIFIED_STATES:
                    notify.append(t)
        if notify:
            for notifier in self.notifiers:
                notifier.put(notify)

    def snapshot(self) -> list[list[AlertTransition]]:
        # The notifiers are shared by the partitions of this process, so each snapshot holds every
        # undelivered notification of the process; putting them back twice is harmless (a notifier queues
        # an id once, and the journal skips what was delivered). Never waits: a notifier's queue is bounded
        # by its capacity, so the snapshot is too, and waiting for a failing target would stall the flow.
        return [n.buffer.pending(None) or [] for n in self.notifiers]
