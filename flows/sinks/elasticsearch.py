"""Elasticsearch sink (elasticsearch-py 8.x bulk helpers): log events, log rates, alert history and dead letters.

Layout: every kind of record has its index template, installed at start, with mappings chosen on purpose
(``message`` is text, names and levels are keywords, ``@timestamp`` is a date). Documents go to a data
stream ``<prefix>-<kind>`` when the server has data streams (``index_mode = "auto"``), else to daily
indices ``<prefix>-<kind>-YYYY.MM.DD`` picked by the record's own time, so a replay lands in the same index.

Exactly once: every record carries a deterministic ``_id`` and is sent with ``op_type: create``. A document
sent again after a restart is answered 409 and counted as a duplicate, never stored twice. Documents not
yet indexed when an epoch ends are part of the sink's snapshot, so a committed epoch loses none.

Failures: documents answered 429 or 5xx, and whole requests that fail to connect, are retried with capped
backoff until they are stored; the flow waits meanwhile (bounded buffer, backpressure). A document the server
rejects (a mapping conflict, a malformed field) becomes a dead letter with the server's reason and the
original document, stored in the dead-letter index. Should the dead-letter index itself refuse one, it goes
to the local dead-letter file: nothing vanishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, Elasticsearch
from elasticsearch.helpers import streaming_bulk
from elasticsearch.serializer import OrjsonSerializer

from fleetwatch.config import ElasticsearchConfig
from fleetwatch.record import AlertTransition, DeadLetter, LogEvent, LogRate
from flows import health
from flows.alerts.notify import alert_doc, alert_mappings
from flows.sinks.writer import BatchWriterThread, RetryableError, pending_for_epoch, retry_forever

log = logging.getLogger(__name__)

Record = LogEvent | LogRate | DeadLetter | AlertTransition
DeadLetterCallback = Callable[[list[DeadLetter]], None]

# Kinds of documents, each with its own index (or data stream) and template.
LOGS, LOG_RATES, DEAD_LETTERS, ALERTS = "logs", "log-rates", "dead-letters", "alerts"
KINDS = (LOGS, LOG_RATES, DEAD_LETTERS, ALERTS)


def make_client(cfg: ElasticsearchConfig) -> Elasticsearch:
    api_key = cfg.resolved_api_key()
    password = cfg.resolved_password()
    options: dict[str, Any] = {}
    if api_key is not None:
        options["api_key"] = api_key.get_secret_value()
    if cfg.username:
        options["basic_auth"] = (cfg.username, password.get_secret_value() if password else "")
    if cfg.ca_file is not None:
        options["ca_certs"] = str(cfg.ca_file)
    return Elasticsearch(
        cfg.hosts,
        serializer=OrjsonSerializer(),
        verify_certs=cfg.verify_tls,
        request_timeout=cfg.timeout.total_seconds(),
        # Retries are the sink's business: it knows which documents are safe to send again.
        max_retries=0,
        retry_on_timeout=False,
        **options,
    )


def iso_timestamp(ts_ns: int) -> str:
    """RFC 3339 in UTC with microseconds: ``2026-11-23T10:00:00.123456Z``."""
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns // 1000:06d}Z"


def dead_letter_id(letter: DeadLetter) -> str:
    key = b"\0".join((letter.reason.encode(), letter.source.encode(), str(letter.received_ns).encode(), letter.raw))
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def dead_letter_doc(letter: DeadLetter) -> dict[str, Any]:
    parsed = json.loads(letter.to_json())
    return {
        "@timestamp": iso_timestamp(letter.received_ns),
        "reason": letter.reason,
        "source": letter.source,
        "detail": letter.detail,
        "raw": parsed["raw_preview"],
        "raw_base64": parsed["raw_base64"],
        "raw_bytes": len(letter.raw),
    }


def log_rate_doc(rate: LogRate) -> dict[str, Any]:
    total = rate.total
    return {
        "@timestamp": iso_timestamp(rate.window_start_ns),
        "service": {"name": rate.service},
        "window": f"{rate.window_ns // 1_000_000_000}s",
        "count": total,
        "errors": rate.errors,
        "error_rate": rate.errors / total if total else 0.0,
        "levels": dict(rate.by_level),
    }


def _keyword(ignore_above: int = 1024) -> dict[str, Any]:
    return {"type": "keyword", "ignore_above": ignore_above}


def template_mappings(kind: str) -> dict[str, Any]:
    """Mappings per kind. Strings that people filter and group by are keywords; free text is text."""
    if kind == LOGS:
        return {
            "dynamic_templates": [
                # Extra parsed fields: exact-match keywords unless declared otherwise (ECS's default).
                {"strings_as_keywords": {"match_mapping_type": "string", "mapping": _keyword()}}
            ],
            "properties": {
                "@timestamp": {"type": "date"},
                "message": {"type": "text"},
                "tags": _keyword(),
                "log": {
                    "properties": {
                        "level": _keyword(),
                        "file": {"properties": {"path": _keyword()}},
                        "syslog": {
                            "properties": {
                                "facility": {"properties": {"code": {"type": "integer"}, "name": _keyword()}},
                                "severity": {"properties": {"code": {"type": "integer"}, "name": _keyword()}},
                            }
                        },
                    }
                },
                "service": {"properties": {"name": _keyword()}},
                "host": {"properties": {"name": _keyword()}},
                "event": {"properties": {"dataset": _keyword(), "code": _keyword()}},
                "process": {"properties": {"name": _keyword(), "pid": {"type": "long"}}},
                "error": {"properties": {"message": {"type": "text"}}},
                "http": {
                    "properties": {
                        "version": _keyword(),
                        "request": {"properties": {"method": _keyword(), "referrer": _keyword()}},
                        "response": {
                            "properties": {
                                "status_code": {"type": "integer"},
                                "body": {"properties": {"bytes": {"type": "long"}}},
                            }
                        },
                    }
                },
                "url": {"properties": {"original": _keyword(8192)}},
                "user_agent": {"properties": {"original": _keyword()}},
                "source": {"properties": {"address": _keyword()}},
                "user": {"properties": {"name": _keyword()}},
                "fields": {"type": "object", "dynamic": True},
            },
        }
    if kind == LOG_RATES:
        return {
            "dynamic": "strict",
            "properties": {
                "@timestamp": {"type": "date"},
                "service": {"properties": {"name": _keyword()}},
                "window": _keyword(),
                "count": {"type": "long"},
                "errors": {"type": "long"},
                "error_rate": {"type": "double"},
                "levels": {"type": "object", "dynamic": True},
            },
        }
    if kind == DEAD_LETTERS:
        return {
            "dynamic": "strict",
            "properties": {
                "@timestamp": {"type": "date"},
                "reason": _keyword(),
                "source": _keyword(),
                "detail": {"type": "text"},
                # Kept, not indexed: raw input can be anything, and must never itself be refused.
                "raw": {"type": "text", "index": False},
                "raw_base64": {"type": "binary"},
                "raw_bytes": {"type": "long"},
            },
        }
    if kind == ALERTS:
        return alert_mappings()
    raise ValueError(f"unknown document kind {kind!r}")


@dataclass(frozen=True)
class IndexLayout:
    prefix: str
    data_streams: bool
    replicas: int

    def target(self, kind: str, ts_ns: int) -> str:
        """The data stream, or the daily index of the record's own time."""
        if self.data_streams:
            return f"{self.prefix}-{kind}"
        day = datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC).strftime("%Y.%m.%d")
        return f"{self.prefix}-{kind}-{day}"

    def pattern(self, kind: str) -> str:
        """What dashboards and searches query: every index or the stream of a kind."""
        return f"{self.prefix}-{kind}*"

    def template(self, kind: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "index_patterns": [self.pattern(kind)],
            # Above the server's built-in templates (priority 100), so ours applies.
            "priority": 200,
            "template": {
                "settings": {"number_of_replicas": self.replicas, "refresh_interval": "1s"},
                "mappings": template_mappings(kind),
            },
            "_meta": {"managed_by": "fleetwatch"},
        }
        if self.data_streams:
            body["data_stream"] = {}
        return body


def server_has_data_streams(es: Elasticsearch) -> bool:
    """The data-streams module adds ``GET _data_stream``; without it the path is read as an index name."""
    try:
        es.indices.get_data_stream(name="*")
        return True
    except ApiError:
        return False


def prepare_layout(es: Elasticsearch, cfg: ElasticsearchConfig) -> IndexLayout:
    """Pick data streams or daily indices, and install the index templates (idempotent)."""
    try:
        auto = cfg.index_mode == "auto"
        data_streams = server_has_data_streams(es) if auto else cfg.index_mode == "data_stream"
        layout = IndexLayout(cfg.index_prefix, data_streams, cfg.number_of_replicas)
        for kind in KINDS:
            es.indices.put_index_template(name=f"{cfg.index_prefix}-{kind}", **layout.template(kind))
    except (TransportConnectionError, ConnectionTimeout) as exc:
        raise RetryableError(f"Elasticsearch unreachable: {exc}") from exc
    except ApiError as exc:
        if exc.status_code in (429,) or exc.status_code >= 500:
            raise RetryableError(f"Elasticsearch answered {exc.status_code}") from exc
        raise
    log.info(
        "Elasticsearch: %s under %s-*", "data streams" if layout.data_streams else "daily indices", cfg.index_prefix
    )
    return layout


def _is_mapping_conflict(error: Any) -> bool:
    kind = error.get("type", "") if isinstance(error, dict) else str(error)
    return kind in ("mapper_parsing_exception", "document_parsing_exception", "illegal_argument_exception")


@dataclass
class _Action:
    record: Record
    kind: str
    doc_id: str
    ts_ns: int
    source: dict[str, Any]


def to_action(record: Record) -> _Action:
    if isinstance(record, LogEvent):
        return _Action(record, LOGS, record.doc_id, record.ts_ns, record.doc)
    if isinstance(record, LogRate):
        doc_id = f"{record.service}:{record.window_ns}:{record.window_start_ns}"
        return _Action(record, LOG_RATES, doc_id, record.window_start_ns, log_rate_doc(record))
    if isinstance(record, AlertTransition):
        return _Action(record, ALERTS, record.notification_id, record.at_ns, alert_doc(record))
    return _Action(record, DEAD_LETTERS, dead_letter_id(record), record.received_ns, dead_letter_doc(record))


class ElasticWriterThread(BatchWriterThread[Record]):
    """Bulk-indexes records; usable outside Bytewax (dead letters of the InfluxDB writers, the benchmark)."""

    def __init__(
        self,
        cfg: ElasticsearchConfig,
        on_unstorable: DeadLetterCallback,
        name: str = "es-writer",
        client_factory: Callable[[ElasticsearchConfig], Elasticsearch] = make_client,
        on_progress: Callable[[BatchWriterThread[Record]], None] | None = None,
    ) -> None:
        super().__init__(
            name,
            cfg.buffer_max_docs,
            cfg.batch_size,
            cfg.flush_interval.total_seconds(),
            cfg.retry_max_delay.total_seconds(),
            on_progress,
        )
        self.cfg = cfg
        self._es = client_factory(cfg)
        self._on_unstorable = on_unstorable
        self.layout: IndexLayout | None = None
        self.duplicates = 0
        self.rejected = 0
        self._pool = ThreadPoolExecutor(max(1, cfg.concurrent_requests - 1), thread_name_prefix=name)
        self._counts_lock = threading.Lock()
        self.start()

    def prepare(self) -> None:
        self.layout = prepare_layout(self._es, self.cfg)

    def deliver(self, batch: list[Record]) -> None:
        actions = [to_action(record) for record in batch]
        parts = self.cfg.concurrent_requests
        if parts == 1 or len(actions) < 2 * parts:
            self._deliver_part(actions)
            return
        # One bulk request keeps one of the server's write threads busy; several in flight use its cores.
        size = -(-len(actions) // parts)
        chunks = [actions[i : i + size] for i in range(0, len(actions), size)]
        futures = [self._pool.submit(self._deliver_part, chunk) for chunk in chunks[1:]]
        self._deliver_part(chunks[0])
        for future in futures:
            future.result()

    def _deliver_part(self, actions: list[_Action]) -> None:
        pending = actions

        def attempt() -> None:
            nonlocal pending
            pending = self._bulk(pending)
            if pending:
                raise RetryableError(f"{len(pending)} documents answered 429/5xx")

        retry_forever(
            attempt, f"{self.name}: indexing", self.retry_max_delay, self._stop, self.note_retry, lambda: len(pending)
        )

    def _bulk(self, actions: list[_Action]) -> list[_Action]:
        """One bulk round; returns the actions to send again. Rejected documents become dead letters, which
        are indexed in the same round."""
        assert self.layout is not None
        layout = self.layout

        def bodies(items: list[_Action]) -> Iterator[dict[str, Any]]:
            for a in items:
                yield {
                    "_op_type": "create",
                    "_index": layout.target(a.kind, a.ts_ns),
                    "_id": a.doc_id,
                    "_source": a.source,
                }

        retry: list[_Action] = []
        queue = actions
        while queue:
            dead: list[_Action] = []
            try:
                # max_retries=0: results come back one per action, in order, so they can be zipped.
                results = streaming_bulk(
                    self._es,
                    bodies(queue),
                    chunk_size=max(1, len(queue)),
                    max_chunk_bytes=50 * 1024 * 1024,
                    raise_on_error=False,
                    raise_on_exception=False,
                    max_retries=0,
                )
                outcomes = [info.popitem()[1] for _ok, info in results]
            except (TransportConnectionError, ConnectionTimeout) as exc:
                raise RetryableError(f"Elasticsearch unreachable: {exc}") from exc
            written = duplicates = rejected = 0
            for action, item in zip(queue, outcomes, strict=True):
                status = item.get("status", 500)
                if not isinstance(status, int):  # "N/A": the request itself failed
                    status = 503
                if 200 <= status < 300:
                    written += 1
                elif status == 409:
                    duplicates += 1  # already stored by an earlier attempt or run: exactly once
                elif status == 429 or status >= 500:
                    retry.append(action)
                else:
                    rejected += 1
                    dead.extend(self._reject(action, item))
            with self._counts_lock:
                self.written += written
                self.duplicates += duplicates
                self.rejected += rejected
            queue = dead
        return retry

    def _reject(self, action: _Action, item: dict[str, Any]) -> list[_Action]:
        error = item.get("error", {})
        reason = "mapping_conflict" if _is_mapping_conflict(error) else "elasticsearch_rejected"
        detail = json.dumps(error)[:2000] if isinstance(error, dict) else str(error)[:2000]
        raw = json.dumps(action.source, ensure_ascii=False, default=str).encode()
        if isinstance(action.record, DeadLetter):
            log.error("the dead-letter index refused a dead letter (%s); kept in the dead-letter file", detail)
            self._on_unstorable([action.record])
            return []
        # The record's own time keeps the dead letter's id deterministic across replays.
        letter = DeadLetter(reason, f"elasticsearch:{item.get('_index', action.kind)}", raw, action.ts_ns, detail)
        log.warning("Elasticsearch refused document %s: %s", action.doc_id, detail[:300])
        return [to_action(letter)]

    def close_target(self) -> None:
        self._pool.shutdown()
        self._es.close()


@dataclass
class ElasticHealthReport:
    counters: health.Counters

    def update(self, writer: BatchWriterThread[Record]) -> None:
        assert isinstance(writer, ElasticWriterThread)
        stats = self.counters
        stats.es_queue_depth = len(writer.buffer)
        stats.docs_indexed = writer.written
        stats.es_duplicates = writer.duplicates
        stats.es_rejected = writer.rejected
        stats.es_retries = writer.retries


# Above this many unindexed documents, a snapshot waits for Elasticsearch instead of holding them.
SNAPSHOT_MAX_PENDING = 10_000


class ElasticsearchSink(FixedPartitionedSink[list[Record], list[Record]]):
    """Bytewax sink of keyed record batches ``(key, list[Record])``, one partition (and writer) per worker.

    Stateful, as the InfluxDB sink: a snapshot holds the documents not yet indexed, and a resumed partition
    sends them again (the server answers 409 for those that made it). Above ``SNAPSHOT_MAX_PENDING`` the
    snapshot waits for them to be indexed instead."""

    def __init__(
        self,
        cfg: ElasticsearchConfig,
        on_unstorable: DeadLetterCallback,
        partitions: int = 1,
        client_factory: Callable[[ElasticsearchConfig], Elasticsearch] = make_client,
    ) -> None:
        self.cfg = cfg
        self.on_unstorable = on_unstorable
        self.partitions = partitions
        self.client_factory = client_factory

    def list_parts(self) -> list[str]:
        return [f"elasticsearch-{i}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: list[Record] | None) -> _ElasticPartition:
        partition = _ElasticPartition(self, for_part)
        if resume_state:
            log.info("%s: indexing %d documents left unindexed at the last snapshot", for_part, len(resume_state))
            partition.write_batch([resume_state])
        return partition


class _ElasticPartition(StatefulSinkPartition[list[Record], list[Record]]):
    def __init__(self, sink: ElasticsearchSink, name: str) -> None:
        # Built on the worker's thread: these are the counters its operators add to.
        report = ElasticHealthReport(health.counters())
        self._writer = ElasticWriterThread(
            sink.cfg, sink.on_unstorable, f"es-writer-{name}", sink.client_factory, report.update
        )

    def write_batch(self, items: list[list[Record]]) -> None:
        for records in items:
            self._writer.put(records)

    def snapshot(self) -> list[Record]:
        return pending_for_epoch(self._writer, SNAPSHOT_MAX_PENDING)

    def close(self) -> None:
        self._writer.close()


def wait_until_searchable(es: Elasticsearch, index: str, expected: int, timeout: float) -> int:
    """Poll ``_count`` (without forcing a refresh) until ``expected`` documents are visible; returns the count."""
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        try:
            count = int(es.count(index=index, ignore_unavailable=True, allow_no_indices=True)["count"])
        except ApiError:
            count = -1
        if count >= expected:
            return count
        time.sleep(0.1)
    return count
