"""Alert notifications: MQTT (retained current state) and webhooks (generic JSON or Slack), plus the pure
functions that turn a transition into an Elasticsearch document and an InfluxDB line for alert history.

Lifecycle contract:

- Each notifier is a ``BatchWriterThread``: ``put`` enqueues transitions and returns at once, always; one
  thread per notifier delivers them in order. A notifier never holds the dataflow back, unlike a store's
  writer: its queue (``capacity``, ``alerts.max_pending_notifications``, 10,000 by default) does not count
  towards the sources' backpressure, and when it is full ``put`` drops what does not fit instead of waiting.
  A dropped notification does not vanish: it is counted (``dropped``), logged (once per minute per
  notifier, with the count), and recorded in the journal as ``dropped`` for its channel; the transition is
  in the alert history (Elasticsearch, InfluxDB) all the same. Alerts are few, so a full queue means the
  target has been failing for a long time: what it would get is stale anyway, and a stalled dataflow would
  stop every other channel and the alert history too.
- Failures worth retrying (broker unreachable or no PUBACK in time; webhook 429, 5xx, connection errors,
  timeouts) are retried with capped exponential backoff, forever (``retry_forever``). What the target
  refuses for good (webhook 4xx other than 408/429, an MQTT 5 PUBACK failure code) is logged as an error,
  counted in ``failed`` and given up: sending it again would be refused again.
- ``flush`` waits until everything put so far is delivered or given up; ``close`` flushes, stops the
  thread and releases the client. The journal is not owned by a notifier: close it after its notifiers.

Exactly once, as far as a notification can be: every transition carries a deterministic
``notification_id``. After a restart with recovery, Bytewax replays the epoch that was not committed and
the engine emits the same transitions with the same ids; the ``SentJournal`` (an fsync'd file) remembers
which ids each channel already delivered, and those are skipped. What remains is at least once: a crash
between the delivery and the journal write, or a webhook that timed out after the receiver had acted,
notifies twice. Webhook requests carry the id in ``X-Fleetwatch-Notification-Id`` so receivers can dedupe.

MQTT: each transition is published as JSON (``alert_payload``) at QoS 1 with retain, to
``<prefix>/<rule>/<measurement>/<tag values in key order>`` (see ``alert_topic``). Resolved and cancelled
("ok") transitions are retained too, so the retained message of a topic is always the alert's current
state: a subscriber arriving later sees where each alert stands, not a stale "firing".
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from hashlib import blake2b
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import urllib3
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from collectors.mqtt.client import apply_credentials_and_tls
from fleetwatch.alerts_config import DEFAULT_MAX_PENDING_NOTIFICATIONS, GrafanaAnnotationsConfig, WebhookConfig
from fleetwatch.config import MQTTConfig
from fleetwatch.config_base import url_without_secrets
from fleetwatch.record import AlertTransition, escape_tag, parse_series
from flows.sinks.writer import BatchWriterThread, RetryableError

log = logging.getLogger(__name__)

# Notifications are few; this is hours of a flapping fleet's alerts while a target is down.
DEFAULT_CAPACITY = DEFAULT_MAX_PENDING_NOTIFICATIONS
# A full queue is reported at most this often per notifier (seconds): it fills on every alert while it lasts.
DROP_LOG_INTERVAL = 60.0
_BATCH_SIZE = 100
# How long a batch waits to fill: the notification latency when alerts trickle in.
_FLUSH_INTERVAL = 0.1
# HTTP statuses worth sending again; other 4xx are the request's fault and are given up.
RETRYABLE_STATUS = frozenset({408, 429})


# ------------------------------------------------------------------------------------------- payloads


def rfc3339(ts_ns: int) -> str:
    """RFC 3339 in UTC with microseconds, as the Elasticsearch sink writes ``@timestamp``."""
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    # The year padded by hand: strftime's %Y gives "1" for year 1 on glibc, which no date parser reads.
    t = datetime.fromtimestamp(seconds, UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{ns // 1000:06d}Z"


def _finite(value: float | None) -> float | None:
    # JSON has no NaN or infinity; a strict receiver would refuse the whole body.
    return value if value is not None and math.isfinite(value) else None


def alert_payload(t: AlertTransition) -> dict[str, Any]:
    """The generic JSON body (webhook ``format = "generic"``, and the MQTT payload)."""
    return {
        "rule": t.rule,
        "series": t.series,
        "tags": dict(t.tags),
        "state": t.state,
        "severity": t.severity,
        "value": _finite(t.value),
        "threshold": _finite(t.threshold),
        "started_at": rfc3339(t.started_ns),
        "at": rfc3339(t.at_ns),
        "summary": t.summary,
        "notification_id": t.notification_id,
        "renotify": t.renotify,
    }


# Slack attachment colours: red for critical, amber for warning, blue while pending, green once resolved.
_COLOURS = {"critical": "#d40e0d", "warning": "#daa038"}
_PENDING_COLOUR = "#439fe0"
_RESOLVED_COLOUR = "#2eb886"
_EMOJI = {"firing": ":rotating_light:", "pending": ":hourglass_flowing_sand:", "resolved": ":white_check_mark:"}


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions, and & as the start of an entity.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _colour(t: AlertTransition) -> str:
    if t.state in ("resolved", "ok"):
        return _RESOLVED_COLOUR
    if t.state == "pending":
        return _PENDING_COLOUR
    return _COLOURS.get(t.severity, _COLOURS["warning"])


def slack_payload(t: AlertTransition) -> dict[str, Any]:
    """A Slack incoming-webhook body: ``text`` (what notifications and old clients show) and one attachment
    coloured by severity, or green when resolved. Legacy attachment fields, not blocks: Mattermost and
    Rocket.Chat accept the same body."""
    state = t.state.upper() + (" (still firing)" if t.renotify else "")
    emoji = _EMOJI.get(t.state, ":information_source:")
    plain = f"[{state}] {t.rule} ({t.severity}) on {t.series}: {t.summary}"
    text = f"{emoji} *{_slack_escape(state)}* {_slack_escape(t.rule)} ({_slack_escape(t.severity)}) on " + (
        f"`{_slack_escape(t.series)}`: {_slack_escape(t.summary)}"
    )
    fields = [
        {"title": "Series", "value": _slack_escape(t.series), "short": False},
        {"title": "Severity", "value": t.severity, "short": True},
        {"title": "Value", "value": _number(_finite(t.value)), "short": True},
        {"title": "Threshold", "value": _number(_finite(t.threshold)), "short": True},
        {"title": "Since", "value": rfc3339(t.started_ns), "short": True},
    ]
    fields += [{"title": key, "value": _slack_escape(value), "short": True} for key, value in sorted(t.tags.items())]
    attachment = {
        "color": _colour(t),
        "fallback": plain,
        "title": f"{t.rule}: {t.state}",
        "text": _slack_escape(t.summary),
        "fields": fields,
        "footer": f"fleetwatch · {t.notification_id}",
        "ts": t.at_ns // 1_000_000_000,
    }
    return {"text": text, "attachments": [attachment]}


def alert_doc(t: AlertTransition) -> dict[str, Any]:
    """The alert-history document for Elasticsearch (index kind ``alerts``; ``_id`` = ``notification_id``,
    so a replayed transition is answered 409 instead of stored twice). The generic payload, with its time
    as ``@timestamp``."""
    doc = alert_payload(t)
    return {"@timestamp": doc.pop("at"), **doc}


def alert_mappings() -> dict[str, Any]:
    """The mappings of the ``alerts`` index template. Tags are free-form (whatever the series carries), so
    they are mapped as they appear, always as keywords: they are filtered and grouped by, never searched
    as text."""
    keyword = {"type": "keyword", "ignore_above": 1024}
    return {
        "dynamic": "strict",
        "dynamic_templates": [
            {"tags_as_keywords": {"path_match": "tags.*", "match_mapping_type": "*", "mapping": keyword}}
        ],
        "properties": {
            "@timestamp": {"type": "date"},
            "rule": keyword,
            "series": keyword,
            "tags": {"type": "object", "dynamic": True},
            "state": keyword,
            "severity": keyword,
            "value": {"type": "double"},
            "threshold": {"type": "double"},
            "started_at": {"type": "date"},
            "summary": {"type": "text"},
            "notification_id": keyword,
            "renotify": {"type": "boolean"},
        },
    }


ALERTS_MEASUREMENT = "alerts"
_RESERVED_TAGS = frozenset({"rule", "state", "severity"})


def _string_field(text: str) -> str:
    # Line protocol strings escape only quote and backslash; a newline would end the line.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    return f'"{escaped}"'


def alert_line(t: AlertTransition) -> str:
    """``alerts,rule=..,severity=..,state=..,<series tags> value=..,threshold=..,firing=1i,summary="..",
    started_ns=..i <at_ns>``. ``state`` is a tag so two transitions of one series at the same instant
    (pending then firing) are two points, not one overwriting the other. A series tag named like one of
    ours is stored as ``series_<name>``."""
    tags = {"rule": t.rule, "state": t.state, "severity": t.severity}
    for key, value in t.tags.items():
        tags[f"series_{key}" if key in _RESERVED_TAGS else key] = value
    tag_text = ",".join(f"{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()) if v)
    fields = []
    number = _finite(t.value)
    if number is not None:
        fields.append(f"value={number!r}")
    threshold = _finite(t.threshold)
    if threshold is not None:
        fields.append(f"threshold={threshold!r}")
    fields += [
        f"firing={1 if t.state == 'firing' else 0}i",
        f"summary={_string_field(t.summary)}",
        f"started_ns={t.started_ns}i",
    ]
    return f"{ALERTS_MEASUREMENT},{tag_text} {','.join(fields)} {t.at_ns}"


def log_transition(t: AlertTransition) -> None:
    """One log line per transition: WARNING when an alert fires, INFO otherwise."""
    level = logging.WARNING if t.state == "firing" else logging.INFO
    log.log(
        level,
        "alert %s %s%s (%s) on %s: %s [value=%s threshold=%s id=%s]",
        t.rule,
        t.state,
        " (still firing)" if t.renotify else "",
        t.severity,
        t.series,
        t.summary,
        _number(_finite(t.value)),
        _number(_finite(t.threshold)),
        t.notification_id,
    )


# ------------------------------------------------------------------------------------------- journal


class SentJournal:
    """The notification ids each channel has delivered (or given up on), in an fsync'd JSON-lines file.

    Loaded at start; ``seen`` answers from memory. Bounded: only the ``max_entries`` most recent ids are
    kept (a replay only ever re-emits the last uncommitted epoch), and the file is rewritten with those
    once it grows past twice as many lines. One process per file: an exclusive lock says so loudly
    instead of two processes interleaving lines. Thread-safe, so notifiers of one process can share it.
    """

    def __init__(self, path: Path | str, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.path = Path(path)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        # (channel, id) -> status, oldest first: a dict keeps insertion order and looks up in O(1).
        self._entries: dict[tuple[str, str], str] = {}
        self._lines = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._file = open(self.path, "a+b")  # noqa: SIM115  # held open for the journal's lifetime
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(f"{self.path} is in use by another notifier journal") from None
        if created:
            _fsync_dir(self.path.parent)
        self._load()

    def _load(self) -> None:
        self._file.seek(0)
        data = self._file.read()
        bad = 0
        for raw in data.splitlines():
            try:
                entry = json.loads(raw)
                key = (str(entry["channel"]), str(entry["id"]))
                status = str(entry.get("status", "sent"))
            except (ValueError, KeyError, TypeError, AttributeError):
                # A line torn by a crash mid-write: that notification may go out again, which is the point.
                bad += 1
                continue
            self._remember(key, status)
            self._lines += 1
        if bad:
            log.warning("%s: skipped %d unreadable lines", self.path, bad)
        if bad or self._lines > 2 * self.max_entries:
            # Rewriting also drops a torn last line, so the next entry starts on a line of its own.
            self._compact()
        elif data and not data.endswith(b"\n"):
            self._append(b"\n")

    def _remember(self, key: tuple[str, str], status: str) -> None:
        self._entries.pop(key, None)
        self._entries[key] = status
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, channel: str, notification_id: str) -> bool:
        with self._lock:
            return (channel, notification_id) in self._entries

    def status(self, channel: str, notification_id: str) -> str | None:
        """ "sent", "failed" (given up), "dropped" (the channel's queue was full), or None if not in the
        journal."""
        with self._lock:
            return self._entries.get((channel, notification_id))

    def record(self, channel: str, notification_id: str, status: str = "sent") -> None:
        self.record_many(channel, [notification_id], status)

    def record_many(self, channel: str, notification_ids: Iterable[str], status: str = "sent") -> None:
        """Remember ids as done (``status``: "sent", "failed" or "dropped"), durably once this returns. Memory is
        updated first: should the disk fail, this process still does not notify twice (OSError is
        raised)."""
        now = int(time.time())
        with self._lock:
            lines = []
            for notification_id in notification_ids:
                self._remember((channel, notification_id), status)
                entry = {"channel": channel, "id": notification_id, "status": status, "at": now}
                lines.append(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
            if not lines:
                return
            self._append(b"".join(lines))
            self._lines += len(lines)
            if self._lines > 2 * self.max_entries:
                self._compact()

    def _append(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())

    def _compact(self) -> None:
        """Rewrite the file with the kept entries: a new file, fsync'd, renamed over the old one. The lock
        moves to the new file before the old one is released."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as out:
            for (channel, notification_id), status in self._entries.items():
                entry = {"channel": channel, "id": notification_id, "status": status}
                out.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())
        new = open(tmp, "a+b")  # noqa: SIM115
        fcntl.flock(new.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._file.close()
        self._file = new
        self._lines = len(self._entries)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def _fsync_dir(directory: Path) -> None:
    # A new or renamed file survives a power loss only once its directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- notifiers


class Notifier(BatchWriterThread[AlertTransition]):
    """What every notifier shares: a queue that never makes the dataflow wait, the journal lookups, the
    counters, and recording an outcome."""

    def __init__(
        self,
        name: str,
        capacity: int,
        retry_max_delay: float,
        journal: SentJournal,
        channel: str,
        on_progress: Callable[[BatchWriterThread[AlertTransition]], None] | None,
    ) -> None:
        super().__init__(name, capacity, _BATCH_SIZE, _FLUSH_INTERVAL, retry_max_delay, on_progress)
        # Out of the registry that pauses the sources while a sink buffer is nearly full: a failing
        # notification target must not stall the dataflow (the store sinks' buffers do, to lose nothing).
        self.buffer.close()
        self.journal = journal
        self.channel = channel
        # Transitions not sent because they came twice (counted by put, on a worker thread) or the journal
        # had them (a replay; counted by the notifier's thread): see ``skipped``.
        self._skipped_twice = 0
        self._skipped_sent = 0
        # Transitions the target refused for good.
        self.failed = 0
        # Transitions not queued because the queue was full (journaled as "dropped").
        self.dropped = 0
        self._batch: list[AlertTransition] | None = None
        # Ids in the queue or being delivered: a transition put twice (every partition's snapshot holds the
        # process's pending notifications, and all are put back on resume) takes one place, and a copy that
        # does not fit is not journaled as dropped while the original is on its way.
        self._queued: set[str] = set()
        self._put_lock = threading.Lock()
        self._drops_unlogged = 0
        self._next_drop_log = 0.0

    def prepare(self) -> None:
        """Nothing to prepare: notification targets have no schema."""

    def put(self, items: list[AlertTransition]) -> None:
        """Queue what fits, drop the rest (see the module docstring); never waits."""
        if not items:
            return
        with self._put_lock:
            fresh: list[AlertTransition] = []
            for t in items:
                if t.notification_id in self._queued:
                    self._skipped_twice += 1  # the copy on its way is the one delivered
                else:
                    self._queued.add(t.notification_id)
                    fresh.append(t)
            # Only put adds to the buffer, under this lock, and the writer only takes from it: the room can
            # only grow until buffer.put runs, so buffer.put never blocks.
            room = max(0, self.buffer.capacity - len(self.buffer))
            queued, dropped = fresh[:room], fresh[room:]
            for t in dropped:
                self._queued.discard(t.notification_id)
            if queued:
                self.buffer.put(queued)
        if dropped:
            self._drop(dropped)

    def _drop(self, dropped: list[AlertTransition]) -> None:
        now = time.monotonic()
        with self._put_lock:  # worker threads put concurrently
            self.dropped += len(dropped)
            self._drops_unlogged += len(dropped)
            report = now >= self._next_drop_log
            if report:
                count, total, self._drops_unlogged = self._drops_unlogged, self.dropped, 0
                self._next_drop_log = now + DROP_LOG_INTERVAL
        try:
            # One fsync'd append for the whole batch: local disk, not the failing target.
            self.journal.record_many(self.channel, [t.notification_id for t in dropped], "dropped")
        except OSError as exc:
            log.error("%s: cannot write the journal %s: %s", self.name, self.journal.path, exc)
        if report:
            log.warning(
                "%s: queue is full (%d notifications waiting: the target is failing or slow); dropped %d "
                "notifications for this channel since the last report, %d in all. They are in the alert "
                "history; the journal records them as dropped",
                self.name,
                self.buffer.unwritten(),
                count,
                total,
            )

    @property
    def skipped(self) -> int:
        """Transitions not sent because they came twice or the journal had them (a replay)."""
        return self._skipped_twice + self._skipped_sent

    def _done(self, t: AlertTransition) -> None:
        with self._put_lock:
            self._queued.discard(t.notification_id)

    def stats(self) -> dict[str, int]:
        """The counters a health report reads; ``pending`` is what the queue holds (and a snapshot keeps)."""
        return {
            "written": self.written,
            "failed": self.failed,
            "skipped": self.skipped,
            "dropped": self.dropped,
            "retries": self.retries,
            "pending": self.buffer.unwritten(),
        }

    def _to_send(self, batch: list[AlertTransition]) -> list[AlertTransition]:
        """The transitions of ``batch`` not delivered yet. After a retryable failure ``deliver`` is called
        again with the same list; what the earlier attempt delivered is in the journal by then, and is not
        counted as skipped: only the first attempt counts."""
        first = batch is not self._batch
        self._batch = batch
        out: list[AlertTransition] = []
        ids: set[str] = set()
        for t in batch:
            if t.notification_id in ids:
                if first:
                    self._skipped_sent += 1
                continue
            if self.journal.seen(self.channel, t.notification_id):
                if first:
                    self._skipped_sent += 1
                    self._done(t)  # delivered before (a replay): no longer on its way
                continue
            ids.add(t.notification_id)
            out.append(t)
        return out

    def _record(self, t: AlertTransition, delivered: bool) -> None:
        if delivered:
            self.written += 1
        else:
            self.failed += 1
        self._done(t)
        try:
            self.journal.record(self.channel, t.notification_id, "sent" if delivered else "failed")
        except OSError as exc:
            # Delivered all the same; only a replay after a restart could now notify twice.
            log.error("%s: cannot write the journal %s: %s", self.name, self.journal.path, exc)


# ------------------------------------------------------------------------------------------- MQTT


def make_mqtt_client(cfg: MQTTConfig, client_id: str, **kwargs: Any) -> paho.Client:
    """A paho 2.1 client with the protocol version, credentials and TLS of ``cfg`` (as the MQTT source
    sets them up). Extra keyword arguments go to ``paho.Client``."""
    v5 = cfg.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        **kwargs,
    )
    apply_credentials_and_tls(client, cfg)
    return client


def _topic_level(text: str) -> str:
    # Wildcards are not allowed in a topic name, "/" would add a level, NUL is forbidden, and an empty
    # level is legal but unreadable in a filter. A level so changed gets a digest of what it was, or "a/b" and
    # "a_b" would share one retained topic, and one series' state would overwrite the other's.
    clean = text
    for ch in "+#/\0":
        clean = clean.replace(ch, "_")
    if clean and clean == text:
        return text
    digest = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=3).hexdigest()
    return f"{clean or '_'}~{digest}"


def alert_topic(prefix: str, t: AlertTransition) -> str:
    """``<prefix>/<rule>/<measurement>/<tag values, tags sorted by key>``, e.g.
    ``fleetwatch/alerts/high_temp/readings/dev1/temperature/site1`` for
    ``readings,device=dev1,metric=temperature,site=site1``. Built from the series key, which is canonical,
    so one alert of one series always has one topic. Levels are sanitised: ``+``, ``#``, ``/`` and NUL
    become ``_``, an empty level ``_``, and such a level ends in ``~`` and 6 hex digits of a digest of what it
    was."""
    measurement, tags = parse_series(t.series)
    levels = [_topic_level(t.rule), _topic_level(measurement)]
    levels += [_topic_level(tags[key]) for key in sorted(tags)]
    return "/".join([prefix.rstrip("/"), *levels])


def _json_bytes(payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (from a tag decoded with surrogateescape): JSON's \u escapes can carry it.
        return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _encode(name: str, t: AlertTransition, build: Callable[[AlertTransition], bytes]) -> bytes | None:
    """The body of a notification, or None (logged) if it cannot be built: one bad transition must not stop
    the notifier's thread, and with it every later notification."""
    try:
        return build(t)
    except Exception:
        log.exception("%s: cannot encode notification %s of %s; giving up on it", name, t.notification_id, t.rule)
        return None


# Returned by _wait_for_ack when no PUBACK came in time.
_NO_ACK = object()


class MQTTNotifier(Notifier):
    """Publishes transitions retained at QoS 1 and waits for each PUBACK before recording it.

    The client runs paho's own network thread (alerts are not the hot path) and reconnects by itself with
    the configured backoff. A message handed to paho stays in paho's queue until acknowledged and is sent
    again after a reconnect, so a retry waits for that message instead of publishing a second copy.
    """

    def __init__(
        self,
        mqtt_cfg: MQTTConfig,
        topic_prefix: str,
        journal: SentJournal,
        *,
        channel: str = "mqtt",
        client_id: str | None = None,
        publish_timeout: float = 10.0,
        capacity: int = DEFAULT_CAPACITY,
        name: str = "alert-mqtt",
        on_progress: Callable[[BatchWriterThread[AlertTransition]], None] | None = None,
    ) -> None:
        if not topic_prefix.strip("/") or any(ch in topic_prefix for ch in "+#\0"):
            raise ValueError(f"topic_prefix must be a topic name without wildcards (got {topic_prefix!r})")
        super().__init__(name, capacity, mqtt_cfg.reconnect_max_delay.total_seconds(), journal, channel, on_progress)
        self.cfg = mqtt_cfg
        self.topic_prefix = topic_prefix.rstrip("/")
        self.publish_timeout = publish_timeout
        # notification id -> paho message id, for messages handed to paho and not yet acknowledged.
        self._inflight: dict[str, int] = {}
        # paho message id -> PUBACK reason code, filled by paho's thread.
        self._acks: dict[int, Any] = {}
        self._acked = threading.Condition()
        # A fresh id per instance: this client only publishes, so it needs no session, and two processes
        # must not take each other's connection over.
        client_id = client_id or f"{mqtt_cfg.client_id}-notify-{uuid.uuid4().hex[:8]}"
        v5 = mqtt_cfg.protocol == "5"
        self._client = make_mqtt_client(mqtt_cfg, client_id, clean_session=None if v5 else True)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(
            max(1, round(mqtt_cfg.reconnect_min_delay.total_seconds())),
            max(1, round(mqtt_cfg.reconnect_max_delay.total_seconds())),
        )
        self._client.on_publish = self._on_publish
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.connect_async(
            mqtt_cfg.host,
            mqtt_cfg.port,
            keepalive=int(mqtt_cfg.keepalive.total_seconds()),
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
        )
        # paho's thread retries the first connection too, so a broker that is down at start is no error.
        self._client.loop_start()
        self.start()

    # paho callbacks, on paho's network thread

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._acked:
            self._acks[mid] = reason
            self._acked.notify_all()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("%s: broker %s:%d refused the connection: %s", self.name, self.cfg.host, self.cfg.port, reason)
        else:
            log.info("%s: connected to %s:%d", self.name, self.cfg.host, self.cfg.port)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not self._stop.is_set():
            log.warning("%s: disconnected from %s:%d (%s)", self.name, self.cfg.host, self.cfg.port, reason)

    # BatchWriterThread

    def topic(self, t: AlertTransition) -> str:
        return alert_topic(self.topic_prefix, t)

    def deliver(self, batch: list[AlertTransition]) -> None:
        todo = self._to_send(batch)
        # Hand the whole batch to paho first (QoS 1 pipelines), then collect the acknowledgements in order.
        for t in list(todo):
            if t.notification_id not in self._inflight:
                payload = _encode(self.name, t, lambda x: _json_bytes(alert_payload(x)))
                if payload is None:
                    todo.remove(t)
                    self._record(t, delivered=False)
                    continue
                info = self._client.publish(self.topic(t), payload, qos=1, retain=True)
                # Not connected (rc NO_CONN) is fine: paho keeps the message and sends it on reconnect.
                self._inflight[t.notification_id] = info.mid
        deadline = time.monotonic() + self.publish_timeout
        for t in todo:
            reason = self._wait_for_ack(self._inflight[t.notification_id], deadline)
            if reason is _NO_ACK:
                state = "connected" if self._client.is_connected() else "not connected"
                raise RetryableError(
                    f"no PUBACK within {self.publish_timeout:g}s ({state}, {len(self._inflight)} waiting)"
                )
            del self._inflight[t.notification_id]
            refused = reason is not None and bool(getattr(reason, "is_failure", False))
            if refused:
                # MQTT 5 only: the broker refused the message (not authorised, topic invalid...).
                log.error("%s: broker refused %s for %s: %s", self.name, t.notification_id, self.topic(t), reason)
            self._record(t, delivered=not refused)

    def _wait_for_ack(self, mid: int, deadline: float) -> Any:
        with self._acked:
            while mid not in self._acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return _NO_ACK
                self._acked.wait(min(remaining, 0.2))
            return self._acks.pop(mid)

    def close_target(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# ------------------------------------------------------------------------------------------- webhooks


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = headers.get("Retry-After") if headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the capped backoff will do


class WebhookNotifier(Notifier):
    """POSTs each transition (``generic``: ``alert_payload``; ``slack``: ``slack_payload``) with urllib3.

    2xx is delivered. 408, 429, 5xx, connection errors and timeouts are retried with capped backoff (the
    server's Retry-After when it gives one, up to ``max_retry_delay``), forever. Any other status is the
    request's fault: logged as an error, counted in ``failed``, recorded, given up. The URL's path and
    the headers (tokens) never reach a log line.
    """

    def __init__(
        self,
        webhook_cfg: WebhookConfig,
        journal: SentJournal,
        *,
        channel: str = "webhook",
        capacity: int = DEFAULT_CAPACITY,
        name: str = "alert-webhook",
        on_progress: Callable[[BatchWriterThread[AlertTransition]], None] | None = None,
    ) -> None:
        super().__init__(name, capacity, webhook_cfg.max_retry_delay.total_seconds(), journal, channel, on_progress)
        self.cfg = webhook_cfg
        self._url = webhook_cfg.url
        self.target = url_without_secrets(self._url)
        self._format = webhook_cfg.format
        timeout = webhook_cfg.timeout.total_seconds()
        # Retries are ours (they must not log the URL, and must back off); redirects are not followed: a
        # webhook that moved is a configuration to fix, reported as a failure.
        self._http = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False, timeout=urllib3.Timeout(timeout))
        self._headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "fleetwatch",
        }
        self._headers.update({name: value.get_secret_value() for name, value in webhook_cfg.headers.items()})
        self.start()

    def body(self, t: AlertTransition) -> bytes:
        return _json_bytes(slack_payload(t) if self._format == "slack" else alert_payload(t))

    def deliver(self, batch: list[AlertTransition]) -> None:
        for t in self._to_send(batch):
            self._post(t)

    def _post(self, t: AlertTransition) -> None:
        body = _encode(self.name, t, self.body)
        if body is None:
            self._record(t, delivered=False)
            return
        headers = {**self._headers, "X-Fleetwatch-Notification-Id": t.notification_id}
        try:
            resp = self._http.request("POST", self._url, body=body, headers=headers, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            # With retries off, urllib3 raises the underlying error (refused, timed out, reset), whose text
            # names host and port but not the path; redact it anyway in case a version adds the URL.
            detail = self._redact(str(exc))
            raise RetryableError(f"{self.target}: {type(exc).__name__}: {detail}") from None
        status = resp.status
        if 200 <= status < 300:
            self._record(t, delivered=True)
            return
        if status in RETRYABLE_STATUS or status >= 500:
            raise RetryableError(f"{self.target} answered HTTP {status}", _retry_after(resp.headers))
        answer = resp.data[:200].decode("utf-8", "replace")
        log.error(
            "%s: %s refused notification %s (%s %s) with HTTP %d, giving up: %s",
            self.name,
            self.target,
            t.notification_id,
            t.rule,
            t.state,
            status,
            answer,
        )
        self._record(t, delivered=False)

    def _redact(self, text: str) -> str:
        text = text.replace(self._url, self.target)
        parts = urlsplit(self._url)
        for secret in (parts.path + (f"?{parts.query}" if parts.query else ""), parts.path, parts.query):
            if len(secret) > 1:
                text = text.replace(secret, "<redacted>")
        return text

    def close_target(self) -> None:
        self._http.clear()


# ------------------------------------------------------------------------------------------- Grafana


class GrafanaAnnotationNotifier(Notifier):
    """Posts each transition as a Grafana annotation through grafana-client (``dashboards.sync.annotate``).
    Connection errors, timeouts, 408, 429 and 5xx are retried with capped backoff; other client errors (a
    bad token, a missing dashboard) are logged and given up, like a webhook's."""

    def __init__(
        self,
        cfg: GrafanaAnnotationsConfig,
        journal: SentJournal,
        *,
        channel: str = "grafana",
        capacity: int = DEFAULT_CAPACITY,
        name: str = "alert-grafana",
        api: Any = None,
    ) -> None:
        super().__init__(name, capacity, 60.0, journal, channel, None)
        self.cfg = cfg
        self.target = url_without_secrets(cfg.url)
        self._token = cfg.resolved_token()
        self._api = api
        self.start()

    def deliver(self, batch: list[AlertTransition]) -> None:
        from grafana_client.client import GrafanaClientError

        from dashboards.sync import SyncError, annotate, connect

        if self._api is None:
            self._api = connect(self.cfg.url, self._token)
        for t in self._to_send(batch):
            try:
                annotate(self.cfg.url, self._token, t, dashboard_uid=self.cfg.dashboard_uid, api=self._api)
            except SyncError as exc:
                cause = exc.__cause__
                status = cause.status_code if isinstance(cause, GrafanaClientError) else None
                if status is None or status in RETRYABLE_STATUS:
                    raise RetryableError(f"{self.target}: {exc}") from None
                log.error(
                    "%s: %s refused annotation %s with HTTP %s, giving up", self.name, self.target, t.rule, status
                )
                self._record(t, delivered=False)
                continue
            self._record(t, delivered=True)
