"""The alert notification sink: every transition to the log, firing/resolved (and re-notifications) to MQTT,
the webhooks and, when ``[alerts.grafana]`` is set, Grafana annotations. Alert history (Elasticsearch,
InfluxDB) goes through the store sinks.

The notifiers are per process, not per worker: they share one journal of sent notification ids, a file
that only one process may hold. Each partition hands its transitions to them and returns at once (a slow
or failing webhook never blocks the dataflow). A partition's snapshot holds the transitions its notifiers
have not delivered yet; on resume they are put again, and the journal skips what did go out, so a crash
neither loses a notification nor sends one twice.
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from fleetwatch.config import MQTTConfig
from fleetwatch.record import AlertTransition
from flows.alerts.notify import (
    GrafanaAnnotationNotifier,
    MQTTNotifier,
    SentJournal,
    WebhookNotifier,
    log_transition,
)
from flows.alerts.rules import AlertsConfig
from flows.sinks.writer import BatchWriterThread, pending_for_epoch

# States that are notified; "pending" and "ok" (a cancelled pending) are history only.
NOTIFIED_STATES = frozenset({"firing", "resolved"})
# Above this many undelivered notifications, a snapshot waits for them instead of holding them.
SNAPSHOT_MAX_PENDING = 1_000

_notifiers: list[BatchWriterThread[AlertTransition]] | None = None
_lock = threading.Lock()


def journal_path(cfg: AlertsConfig, process_id: int | None) -> Path:
    """One journal per process of a cluster: ``alerts-sent.jsonl`` becomes ``alerts-sent-1.jsonl``."""
    if process_id is None:
        return cfg.journal
    return cfg.journal.with_name(f"{cfg.journal.stem}-{process_id}{cfg.journal.suffix}")


def process_notifiers(
    cfg: AlertsConfig, mqtt: MQTTConfig, process_id: int | None
) -> list[BatchWriterThread[AlertTransition]]:
    global _notifiers
    with _lock:
        if _notifiers is None:
            journal = SentJournal(journal_path(cfg, process_id))
            suffix = "" if process_id is None else f"-{process_id}"
            notifiers: list[BatchWriterThread[AlertTransition]] = [
                MQTTNotifier(mqtt, cfg.mqtt_topic_prefix, journal, client_id=f"{mqtt.client_id}-alerts{suffix}")
            ]
            notifiers += [
                WebhookNotifier(hook, journal, channel=f"webhook-{i}", name=f"alert-webhook-{i}")
                for i, hook in enumerate(cfg.webhooks)
            ]
            if cfg.grafana is not None:
                notifiers.append(GrafanaAnnotationNotifier(cfg.grafana, journal))
            _notifiers = notifiers
        return _notifiers


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
    def __init__(self, notifiers: list[BatchWriterThread[AlertTransition]]) -> None:
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
        # undelivered notification of the process; the journal makes putting them back twice harmless.
        return [pending_for_epoch(n, SNAPSHOT_MAX_PENDING) for n in self.notifiers]
