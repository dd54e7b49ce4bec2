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
original document, stored in the dead-letter index. So does a document that cannot be sent at all: one that
cannot be written as JSON (lone surrogates, NaN or infinity, values JSON has no type for) or that is larger
than the server takes in one request (``http.max_content_length``). Every document is encoded on its own, so
one bad record costs only itself, never its batch. Should the dead-letter index itself refuse one, it goes
to the local dead-letter file: nothing vanishes.

Setup: the index templates are installed once per process (the sink's writers and the dead-letter writer
share them). A server that refuses them (4xx: wrong credentials, missing privileges, a conflicting template)
is not a record's problem: ``ElasticsearchSetupError`` stops the process with the server's answer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, SerializationError
from elasticsearch import ApiError, Elasticsearch
from elasticsearch.serializer import OrjsonSerializer

from fleetwatch.config import ElasticsearchConfig
from fleetwatch.labels import duration_ns
from fleetwatch.log_throttle import LogThrottle
from fleetwatch.record import AlertTransition, DeadLetter, LogEvent, LogRate
from flows import health
from flows.alerts.notify import alert_doc, alert_mappings, rfc3339
from flows.recovery_progress import AfterCommit
from flows.sinks.es_retention import expired_index, lifecycle_body
from flows.sinks.pending_log import PendingLog, PendingSnapshot, resume_pending
from flows.sinks.writer import BatchWriterThread, RetryableError, SetupError, pending_for_epoch, retry_forever

log = logging.getLogger(__name__)

Record = LogEvent | LogRate | DeadLetter | AlertTransition
DeadLetterCallback = Callable[[list[DeadLetter]], None]

# Kinds of documents, each with its own index (or data stream) and template.
LOGS, LOG_RATES, DEAD_LETTERS, ALERTS = "logs", "log-rates", "dead-letters", "alerts"
KINDS = (LOGS, LOG_RATES, DEAD_LETTERS, ALERTS)

# Elasticsearch's default http.max_content_length, assumed when the server does not say.
DEFAULT_MAX_CONTENT_LENGTH = 100 * 1024 * 1024
# Room left in a request for the action line and the bulk framing of a document.
_REQUEST_HEADROOM = 64 * 1024
# Bulk requests stay below this even when the server would take more: smaller requests spread better.
_MAX_CHUNK_BYTES = 50 * 1024 * 1024
# A dead letter for an oversized document keeps at most this much of it (the local file keeps it whole).
_OVERSIZED_RAW_KEPT = 1024 * 1024
# What a bulk answer keeps: whether any item failed, per item its status and, when it failed, the error.
_BULK_FILTER = "errors,items.*.status,items.*.error"
# The encoding the client itself would use (orjson, with the client's dates, UUIDs and decimals).
_SERIALIZER = OrjsonSerializer()


class ElasticsearchSetupError(SetupError):
    """The server refused fleetwatch's setup (index templates): not retried, the process stops with it."""


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
    """RFC 3339 in UTC with microseconds: ``2026-11-23T10:00:00.123456Z`` (as alert documents have it)."""
    return rfc3339(ts_ns)


def dead_letter_id(letter: DeadLetter) -> str:
    # surrogatepass: a lone surrogate in a source (a file name) must not stop its dead letter being stored.
    text = (letter.reason.encode("utf-8", "surrogatepass"), letter.source.encode("utf-8", "surrogatepass"))
    key = b"\0".join((*text, str(letter.received_ns).encode(), letter.raw))
    return hashlib.blake2b(key, digest_size=16).hexdigest()


# Elasticsearch refuses an _id longer than 512 bytes, and with it the whole bulk request it is in.
_MAX_ID_BYTES = 512


def record_weight(record: Record) -> int:
    """About the bytes a record holds, for the buffer's bound: a dead letter's raw input and detail, a log
    event's message (the rest of a document is small beside the largest of them)."""
    if isinstance(record, DeadLetter):
        return 256 + len(record.raw) + len(record.detail)
    if isinstance(record, LogEvent):
        message = record.doc.get("message")
        return 512 + (len(message) if isinstance(message, str) else 0)
    return 512


def log_rate_id(rate: LogRate) -> str:
    """``<service>:<window>:<start>``, or for a service name too long for an ``_id`` (a sender's APP-NAME can be
    anything) its first 100 characters (at most 400 bytes) and a digest of all of it."""
    doc_id = f"{rate.service}:{rate.window_ns}:{rate.window_start_ns}"
    if len(doc_id.encode("utf-8", "surrogatepass")) <= _MAX_ID_BYTES:
        return doc_id
    digest = hashlib.blake2b(rate.service.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{rate.service[:100]}~{digest}:{rate.window_ns}:{rate.window_start_ns}"


def _clean(text: str) -> str:
    """Text that can be encoded as UTF-8: lone surrogates (file names, broken input) become ``\\udcff``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter_doc(letter: DeadLetter) -> dict[str, Any]:
    # The dead letter's own text is cleaned, so that a dead letter can always be indexed.
    clean = letter._replace(reason=_clean(letter.reason), source=_clean(letter.source), detail=_clean(letter.detail))
    parsed = json.loads(clean.to_json())
    return {
        "@timestamp": iso_timestamp(letter.received_ns),
        "reason": clean.reason,
        "source": clean.source,
        "detail": clean.detail,
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
        # Events without a level (plain syslog files, unstructured lines) count as "unknown", the name the
        # InfluxDB field has too: Elasticsearch refuses an empty field name.
        "levels": {level or "unknown": n for level, n in rate.by_level.items()},
    }


def _keyword(ignore_above: int = 1024) -> dict[str, Any]:
    return {"type": "keyword", "ignore_above": ignore_above}


def template_mappings(kind: str) -> dict[str, Any]:
    """Mappings per kind. Strings that people filter and group by are keywords; free text is text."""
    if kind == LOGS:
        return {
            # Parsed values are not dates by the look of them: a date-like string mapped fields.<x> as a date,
            # and every later line whose <x> was not one (an unparseable timestamp kept there, tagged
            # timestamp_invalid) was refused by the day's index.
            "date_detection": False,
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
                                # RFC 5424 structured data, whose names any syslog sender chooses: one field for
                                # all of it (ECS maps it so), not a mapped field per parameter (a few datagrams
                                # filled the index's 1,000 fields, and every document with a new field was
                                # refused for the rest of the day). A value past ignore_above is kept in the
                                # document but not indexed: Elasticsearch refuses a term above 32,766 bytes.
                                "structured_data": {"type": "flattened", "ignore_above": 1024},
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


_DAY_NS = 86_400 * 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=1024)
def _utc_day(day: int) -> str:
    """Day ``day`` since the epoch as ``YYYY.MM.DD``: formatted once per day, not once per document."""
    # The year padded by hand: strftime's %Y gives "1" for year 1 on glibc, a name retention never matched.
    date = _EPOCH + timedelta(days=day)
    return f"{date.year:04d}.{date.month:02d}.{date.day:02d}"


@dataclass(frozen=True)
class IndexLayout:
    prefix: str
    data_streams: bool
    replicas: int
    # Per kind, how long its documents are kept (flows.sinks.es_retention); None or a missing kind: forever.
    retention: Mapping[str, timedelta] | None = None
    # The server takes index.mapping.total_fields.ignore_dynamic_beyond_limit (Elasticsearch 8.14 and later).
    fields_beyond_limit: bool = False

    def target(self, kind: str, ts_ns: int) -> str:
        """The data stream, or the daily index of the record's own time; for a record of a day the kind no
        longer keeps, the kind's ``expired`` index.

        Each daily index is a shard. A sender's timestamps pick the day, and the retention job would delete
        the index of a day past retention at its next run: without the ``expired`` index, one syslog datagram
        per past date opens an index per date, until the node's shard limit refuses every new index, today's
        included. The record keeps its ``@timestamp``; the retention job deletes the ``expired`` index at each
        run (``flows.sinks.es_retention``)."""
        if self.data_streams:
            return f"{self.prefix}-{kind}"
        day = ts_ns // _DAY_NS
        keep = self.retention.get(kind) if self.retention else None
        if keep is not None and day < (time.time_ns() - duration_ns(keep)) // _DAY_NS:
            return expired_index(self.prefix, kind)
        return f"{self.prefix}-{kind}-{_utc_day(day)}"

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
        }
        if kind == LOGS:
            # As Elastic's own logs templates do: a value that does not fit its field's type (a number field
            # that one line writes as text) is kept in the document, not indexed, and named in _ignored; the
            # document is stored. (A conflict of shapes, an object where a value was, is still refused.)
            body["template"]["settings"]["index.mapping.ignore_malformed"] = True
            if self.fields_beyond_limit:
                # One service that logs a key per user or request would otherwise fill the day's 1,000 fields,
                # after which every document with a field not yet mapped is refused, other services' too. Past
                # the limit a new field is kept in the document, not indexed, and named in _ignored.
                body["template"]["settings"]["index.mapping.total_fields.ignore_dynamic_beyond_limit"] = True
        if self.data_streams:
            body["data_stream"] = {}
            keep = (self.retention or {}).get(kind)
            if keep is not None:
                # Elasticsearch deletes the stream's backing indices past this age (data stream lifecycle);
                # daily indices have no lifecycle: fleetwatch's retention job deletes them.
                body["template"]["lifecycle"] = lifecycle_body(keep)
        # The digest of everything above, so that a start finds a template already in place from what the
        # server answers, without writing it again (each write is a cluster-state update on the master).
        body["_meta"] = {"managed_by": "fleetwatch", "digest": template_digest(body)}
        return body


def template_digest(body: Mapping[str, Any]) -> str:
    """A short digest of a template body, the same for the same body in any key order."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


# Module names of data streams: "data-streams" since 8.0, "x-pack-data-streams" in 7.x.
_DATA_STREAM_MODULES = {"data-streams", "x-pack-data-streams"}


def server_version(es: Elasticsearch) -> tuple[int, int]:
    """The server's (major, minor) version; (0, 0) when it cannot be read (no ``monitor`` privilege)."""
    try:
        # The node's own info: "GET /" is not served by every distribution (the integration-test one refuses it).
        info = es.nodes.info(node_id="_local", filter_path="nodes.*.version")
        number = next((str(node.get("version", "")) for node in info.get("nodes", {}).values()), "")
    except ApiError as exc:
        if exc.status_code not in (401, 403, 404, 405):
            raise
        return (0, 0)
    major, _, rest = number.partition(".")
    minor = rest.partition(".")[0]
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else (0, 0)


def server_has_data_streams(es: Elasticsearch, prefix: str) -> bool:
    """Whether the server has the data-streams module, from the node's list of modules.

    The list needs the cluster privilege ``monitor``. Probing ``GET _data_stream`` instead would do without it,
    but a server without the module answers 405, which the client counts as a failed node (a warning and a
    second's timeout at every start); it remains the fallback for users without ``monitor``."""
    try:
        info = es.nodes.info(node_id="_local", metric="plugins", filter_path="nodes.*.modules.name")
        return any(
            module.get("name") in _DATA_STREAM_MODULES
            for node in info.get("nodes", {}).values()
            for module in node.get("modules", [])
        )
    except ApiError as exc:
        if exc.status_code not in (401, 403, 404):
            raise
    try:
        es.indices.get_data_stream(name=f"{prefix}-*")
        return True
    except ApiError:
        return False


_BYTE_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40, "pb": 1 << 50}


def parse_byte_size(text: str) -> int | None:
    """An Elasticsearch byte size (``100mb``, ``1gb``, ``2048b``) in bytes; None if it is not one."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?b?)\s*", text.lower())
    if match is None:
        return None
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2)])


def server_max_content_length(es: Elasticsearch) -> int:
    """The largest request body the server takes (``http.max_content_length``); the default when the user may
    not read cluster settings (needs ``monitor``)."""
    try:
        settings = es.cluster.get_settings(include_defaults=True, filter_path="*.http.max_content_length")
    except ApiError as exc:
        if exc.status_code not in (401, 403, 404):
            raise
        return DEFAULT_MAX_CONTENT_LENGTH
    for scope in ("transient", "persistent", "defaults"):
        value = settings.get(scope, {}).get("http", {}).get("max_content_length")
        size = parse_byte_size(str(value)) if value is not None else None
        if size:
            return size
    return DEFAULT_MAX_CONTENT_LENGTH


@dataclass(frozen=True)
class ServerSetup:
    layout: IndexLayout
    max_content_length: int

    @property
    def max_doc_bytes(self) -> int:
        """The largest encoded document that fits in one request."""
        return max(1024, self.max_content_length - _REQUEST_HEADROOM)

    @property
    def max_chunk_bytes(self) -> int:
        return max(1024, min(_MAX_CHUNK_BYTES, self.max_content_length - _REQUEST_HEADROOM))


# Setup done by this process, per server and prefix: every writer of the process (one per sink partition, and
# the dead-letter writer) uses it, so templates are installed once.
_setups: dict[tuple[tuple[str, ...], str, str, int, tuple[tuple[str, timedelta], ...]], ServerSetup] = {}
_setups_lock = threading.Lock()


def _api_reason(exc: ApiError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return str(exc.message or body or exc)


def installed_template_digests(es: Elasticsearch, prefix: str) -> dict[str, str]:
    """The digests fleetwatch recorded in the server's templates named ``<prefix>-*``, by name: one request
    instead of a write per template at every start. Empty when the user may not read templates (then every
    template is written, as before) or none exists."""
    try:
        answer = es.indices.get_index_template(name=f"{prefix}-*")
    except ApiError as exc:
        if exc.status_code in (401, 403, 404):
            return {}
        raise
    digests: dict[str, str] = {}
    for item in answer.get("index_templates", []):
        meta = item.get("index_template", {}).get("_meta") or {}
        if meta.get("managed_by") == "fleetwatch" and isinstance(meta.get("digest"), str):
            digests[item["name"]] = meta["digest"]
    return digests


def _put_template(es: Elasticsearch, cfg: ElasticsearchConfig, name: str, body: dict[str, Any]) -> None:
    try:
        es.indices.put_index_template(name=name, **body)
    except ApiError as exc:
        if exc.status_code == 429 or exc.status_code >= 500:
            raise RetryableError(f"Elasticsearch answered {exc.status_code} to index template {name!r}") from exc
        hint = ""
        if exc.status_code in (401, 403):
            hint = " (check [elasticsearch] username/password or api_key, and that the user may manage index templates)"
        raise ElasticsearchSetupError(
            f"Elasticsearch at {cfg.shown_hosts} refused index template {name!r}: "
            f"HTTP {exc.status_code} {_api_reason(exc)}{hint}"
        ) from exc


def _install_templates(es: Elasticsearch, cfg: ElasticsearchConfig, layout: IndexLayout) -> int:
    """Write each template the server does not hold as it is now; returns how many were written."""
    installed = installed_template_digests(es, cfg.index_prefix)
    stale: list[tuple[str, dict[str, Any]]] = []
    for kind in KINDS:
        name = f"{cfg.index_prefix}-{kind}"
        body = layout.template(kind)
        if installed.get(name) != body["_meta"]["digest"]:
            stale.append((name, body))
    if stale:
        # Independent writes, each a cluster-state update: sent together rather than one after the other. The
        # first failure, in the order of KINDS, is raised.
        with ThreadPoolExecutor(len(stale), thread_name_prefix="es-templates") as pool:
            for _ in pool.map(lambda item: _put_template(es, cfg, *item), stale):
                pass
    return len(stale)


def apply_lifecycles(es: Elasticsearch, cfg: ElasticsearchConfig, retention: Mapping[str, timedelta]) -> None:
    """A template's lifecycle applies to data streams created after it: the streams that exist already (created
    before retention was configured, or with another one) get theirs set here. A stream not created yet is
    fine (404): it gets the template's."""
    for kind, keep in retention.items():
        name = f"{cfg.index_prefix}-{kind}"
        try:
            es.indices.put_data_lifecycle(name=name, data_retention=lifecycle_body(keep)["data_retention"])
        except ApiError as exc:
            if exc.status_code == 404:
                continue
            if exc.status_code == 429 or exc.status_code >= 500:
                raise RetryableError(f"Elasticsearch answered {exc.status_code} to the lifecycle of {name!r}") from exc
            hint = " (the user needs manage_data_stream_lifecycle, or manage, on the data streams)"
            raise ElasticsearchSetupError(
                f"Elasticsearch at {cfg.shown_hosts} refused the lifecycle of data stream {name!r}: "
                f"HTTP {exc.status_code} {_api_reason(exc)}" + (hint if exc.status_code in (401, 403) else "")
            ) from exc


def prepare_layout(
    es: Elasticsearch, cfg: ElasticsearchConfig, retention: Mapping[str, timedelta] | None = None
) -> ServerSetup:
    """Pick data streams or daily indices and install the index templates, once per process and server (the
    templates are idempotent, but each writer installing them again only adds requests and log lines)."""
    kept = tuple(sorted((retention or {}).items()))
    key = (tuple(cfg.hosts), cfg.index_prefix, cfg.index_mode, cfg.number_of_replicas, kept)
    with _setups_lock:
        setup = _setups.get(key)
        if setup is not None:
            return setup
        try:
            auto = cfg.index_mode == "auto"
            data_streams = server_has_data_streams(es, cfg.index_prefix) if auto else cfg.index_mode == "data_stream"
            beyond_limit = server_version(es) >= (8, 14)
            layout = IndexLayout(cfg.index_prefix, data_streams, cfg.number_of_replicas, retention, beyond_limit)
            max_content_length = server_max_content_length(es)
            written = _install_templates(es, cfg, layout)
            if data_streams and retention:
                apply_lifecycles(es, cfg, retention)
        except (TransportConnectionError, ConnectionTimeout) as exc:
            raise RetryableError(f"Elasticsearch unreachable: {exc}") from exc
        except ApiError as exc:
            if exc.status_code == 429 or exc.status_code >= 500:
                raise RetryableError(f"Elasticsearch answered {exc.status_code}") from exc
            raise ElasticsearchSetupError(
                f"Elasticsearch at {cfg.shown_hosts} refused fleetwatch's setup: "
                f"HTTP {exc.status_code} {_api_reason(exc)}"
            ) from exc
        setup = _setups[key] = ServerSetup(layout, max_content_length)
    log.info(
        "Elasticsearch: %s under %s-*, index templates %s",
        "data streams" if layout.data_streams else "daily indices",
        cfg.index_prefix,
        f"installed ({written} of {len(KINDS)} written)" if written else "already in place",
    )
    return setup


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
        return _Action(record, LOG_RATES, log_rate_id(record), record.window_start_ns, log_rate_doc(record))
    if isinstance(record, AlertTransition):
        return _Action(record, ALERTS, record.notification_id, record.at_ns, alert_doc(record))
    return _Action(record, DEAD_LETTERS, dead_letter_id(record), record.received_ns, dead_letter_doc(record))


@dataclass
class _Encoded:
    """An action ready for a bulk request: its index, its action line and its source as the exact bytes
    sent."""

    action: _Action
    index: str
    header: bytes
    body: bytes


def _non_finite(value: Any) -> str | None:
    """Where the first NaN or infinity of a document is (orjson writes them as null, silently), or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return path or "(the document)"
        elif isinstance(item, dict):
            stack.extend((f"{path}.{key}" if path else str(key), v) for key, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
    return None


def _raw_of(source: Any) -> bytes:
    """A document that could not be encoded, written down as well as it can be: JSON with lone surrogates
    escaped, NaN as ``NaN`` and other values as their repr; else the repr of the whole."""
    try:
        return json.dumps(source, ensure_ascii=True, default=repr).encode()
    except (TypeError, ValueError, RecursionError):
        return repr(source).encode("utf-8", "backslashreplace")


def encode_batch(
    records: list[Record], layout: IndexLayout, max_doc_bytes: int
) -> tuple[list[_Encoded], list[DeadLetter], list[DeadLetter]]:
    """Encode every record on its own. Returns the encoded actions, dead letters for the records that cannot
    be sent (each with the reason, where it was going and its input), and the whole input of oversized
    documents for the local dead-letter file (the dead letter indexed keeps only the first part of it).

    A dead letter that cannot be encoded itself goes to the local file as it is."""
    encoded: list[_Encoded] = []
    dead: list[DeadLetter] = []
    unstorable: list[DeadLetter] = []
    # (kind, day) -> the index and the start of its action lines: a batch mostly goes to one or two.
    targets: dict[tuple[str, int], tuple[str, bytes]] = {}
    dumps, default, option = orjson.dumps, _SERIALIZER.default, orjson.OPT_SERIALIZE_NUMPY
    for record in records:
        index = ""
        action: _Action | None = None
        try:
            action = to_action(record)
            target = targets.get((action.kind, action.ts_ns // _DAY_NS))
            if target is None:
                index = layout.target(action.kind, action.ts_ns)
                target = targets[(action.kind, action.ts_ns // _DAY_NS)] = (index, _action_prefix(index))
            index = target[0]
            # What the client's OrjsonSerializer.json_dumps does, without the call through it.
            body = dumps(action.source, default=default, option=option)
            if b"null" in body and (where := _non_finite(action.source)) is not None:
                raise ValueError(f"{where} is not a finite number (JSON has no NaN or infinity)")
            header = target[1] + dumps(action.doc_id) + b"}}\n"
        except (TypeError, ValueError, OverflowError, OSError, SerializationError, RecursionError) as exc:
            if isinstance(record, DeadLetter):
                log.error("a dead letter cannot be encoded (%s); kept in the dead-letter file", exc)
                unstorable.append(record)
                continue
            doc_id = action.doc_id if action is not None else "?"
            source = action.source if action is not None else record
            where = index or (layout.pattern(action.kind) if action is not None else "elasticsearch")
            # The record's own time keeps the dead letter's id deterministic, unless that time is the problem.
            at = action.ts_ns if action is not None and index else time.time_ns()
            detail = f"document {doc_id} cannot be written as JSON: {str(exc)[:1000]}"
            origin = f"elasticsearch:{where}/{doc_id}"
            dead.append(DeadLetter("unserializable", origin, _raw_of(source), at, _clean(detail)))
            continue
        if len(body) > max_doc_bytes:
            if isinstance(record, DeadLetter):
                log.warning(
                    "a dead letter (%s, from %s) is %d bytes as a document, more than the %d bytes one request to "
                    "this server may carry; kept in the dead-letter file",
                    record.reason,
                    _clean(record.source[:200]),
                    len(body),
                    max_doc_bytes,
                )
                unstorable.append(record)
                continue
            kept = min(_OVERSIZED_RAW_KEPT, max_doc_bytes // 4)
            detail = (
                f"document {action.doc_id} is {len(body)} bytes, more than the {max_doc_bytes} bytes one request "
                f"to this server may carry (http.max_content_length); raw holds its first {kept} bytes, the "
                "local dead-letter file all of it"
            )
            letter = DeadLetter("too_large", f"elasticsearch:{index}/{action.doc_id}", body, action.ts_ns, detail)
            unstorable.append(letter)
            dead.append(letter._replace(raw=body[:kept]))
            continue
        encoded.append(_Encoded(action, index, header, body))
    return encoded, dead, unstorable


def _action_prefix(index: str) -> bytes:
    """The bulk action line of a document up to its id: ``{"create":{"_index":...,"_id":`` (the id, ``}}``
    and the newline follow)."""
    return b'{"create":{"_index":' + orjson.dumps(index) + b',"_id":'


def bulk_requests(actions: list[_Encoded], max_bytes: int) -> Iterator[tuple[list[_Encoded], bytes]]:
    """The actions as NDJSON bulk request bodies of at most ``max_bytes`` each (a single larger document
    still goes, alone), with the actions each body holds, in order."""
    start = size = 0
    parts: list[bytes] = []
    for i, action in enumerate(actions):
        length = len(action.header) + len(action.body) + 1
        if parts and size + length > max_bytes:
            yield actions[start:i], b"".join(parts)
            start, size, parts = i, 0, []
        parts += (action.header, action.body, b"\n")
        size += length
    if parts:
        yield actions[start:], b"".join(parts)


class ElasticWriterThread(BatchWriterThread[Record]):
    """Bulk-indexes records; usable outside Bytewax (dead letters of the InfluxDB writers, the benchmark)."""

    def __init__(
        self,
        cfg: ElasticsearchConfig,
        on_unstorable: DeadLetterCallback,
        name: str = "es-writer",
        client_factory: Callable[[ElasticsearchConfig], Elasticsearch] = make_client,
        on_progress: Callable[[BatchWriterThread[Record]], None] | None = None,
        retention: Mapping[str, timedelta] | None = None,
    ) -> None:
        super().__init__(
            name,
            cfg.buffer_max_docs,
            cfg.batch_size,
            cfg.flush_interval.total_seconds(),
            cfg.retry_max_delay.total_seconds(),
            on_progress,
            # One bulk request keeps one of the server's write threads busy. Each lane takes, encodes and
            # sends its own batches, so the server is never idle while fleetwatch encodes the next request.
            lanes=cfg.concurrent_requests,
            max_bytes=cfg.buffer_max_bytes,
            weigh=record_weight,
        )
        self.cfg = cfg
        self._es = client_factory(cfg)
        self._on_unstorable = on_unstorable
        self._retention = retention
        self.setup: ServerSetup | None = None
        self.duplicates = 0
        self.rejected = 0
        # The dead letters this writer made (documents the server refused or that cannot be sent), by reason,
        # under counts_lock: the worker's health counts them (ElasticHealthReport).
        self.dead_reasons: Counter[str] = Counter()
        # A sender whose every line the server refuses makes thousands of dead letters a second: logged once a
        # minute (the dead letters and the es_rejected and dead_letters counters have them all).
        self._refusals = LogThrottle()
        self.start()

    def prepare(self) -> None:
        self.setup = prepare_layout(self._es, self.cfg, self._retention)

    @property
    def layout(self) -> IndexLayout | None:
        return self.setup.layout if self.setup is not None else None

    def deliver(self, batch: list[Record]) -> None:
        self._index(self._encode(batch))

    def _encode(self, records: list[Record]) -> list[_Encoded]:
        """The records as bulk actions, with dead letters for those that cannot be sent."""
        assert self.setup is not None
        actions, dead, unstorable = encode_batch(records, self.setup.layout, self.setup.max_doc_bytes)
        if dead:
            for letter in dead:
                self._log_refusal(letter.detail)
            with self.counts_lock:
                self.rejected += len(dead)
                self.dead_reasons.update(letter.reason for letter in dead)
            letters, _, unencodable = encode_batch(list[Record](dead), self.setup.layout, self.setup.max_doc_bytes)
            actions += letters
            unstorable += unencodable
        if unstorable:
            self._on_unstorable(unstorable)
        return actions

    def _index(self, actions: list[_Encoded]) -> None:
        pending = actions

        def attempt() -> None:
            nonlocal pending
            pending = self._bulk(pending)
            if pending:
                raise RetryableError(f"{len(pending)} documents answered 429/5xx")

        if not retry_forever(
            attempt, f"{self.name}: indexing", self.retry_max_delay, self._stop, self.note_retry, lambda: len(pending)
        ):
            # Stopped while the server was failing: the batch is not stored, and the writer must know it.
            raise RetryableError(f"stopped with {len(pending)} documents not indexed")

    def _bulk(self, actions: list[_Encoded]) -> list[_Encoded]:
        """One bulk round; returns the actions to send again. Rejected documents become dead letters, which
        are indexed in the same round."""
        assert self.setup is not None
        setup = self.setup

        retry: list[_Encoded] = []
        queue = actions
        chunk_bytes = setup.max_chunk_bytes
        while queue:
            again: list[_Encoded] = []
            outcomes: list[dict[str, Any]] = []
            try:
                # The request bodies are built here from the encoded documents (what streaming_bulk would
                # send, without encoding each action line through the client); the answer's items come
                # back one per action, in order, so they can be zipped.
                sent: list[_Encoded] = []
                written = 0
                for part, body in bulk_requests(queue, chunk_bytes):
                    answer = self._send(part, body)
                    if answer is None:
                        written += len(part)
                    else:
                        sent += part
                        outcomes += answer
            except (TransportConnectionError, ConnectionTimeout) as exc:
                raise RetryableError(f"Elasticsearch unreachable: {exc}") from exc
            duplicates = rejected = 0
            too_large = False
            for action, item in zip(sent, outcomes, strict=True):
                status = item.get("status", 500)
                if not isinstance(status, int):  # "N/A": the request itself failed
                    status = 503
                if 200 <= status < 300:
                    written += 1
                elif status == 409:
                    duplicates += 1  # already stored by an earlier attempt or run: exactly once
                elif status == 429 or status >= 500:
                    retry.append(action)
                elif status == 413 and len(action.body) + _REQUEST_HEADROOM < chunk_bytes:
                    # The request was too large for the server (or a proxy before it) though this document
                    # alone may not be: send it again in smaller requests, down to one document each.
                    too_large = True
                    again.append(action)
                elif status == 400 and item.get("request_documents", 1) > 1:
                    # The server refused the whole request (a 400 for one action it cannot even read, such as an
                    # _id past 512 bytes): the others are not at fault. Smaller requests, down to one document
                    # each, find the one to refuse.
                    too_large = True
                    again.append(action)
                else:
                    rejected += 1
                    again.extend(self._reject(action, item))
            with self.counts_lock:
                self.written += written
                self.duplicates += duplicates
                self.rejected += rejected
            if too_large:
                chunk_bytes = max(1, chunk_bytes // 4)
            queue = again
        return retry

    def _send(self, part: list[_Encoded], body: bytes) -> list[dict[str, Any]] | None:
        """One bulk request. None when every document was created; else the outcome of each action: its item
        of the answer, or for a request the server refused as a whole (413, 429, 5xx) the request's status
        and error for every action."""
        try:
            # filter_path: the errors flag, the status and, for failures, the error of each item.
            answer = self._es.bulk(operations=body, filter_path=_BULK_FILTER)  # type: ignore[arg-type]
        except ApiError as exc:
            failed = {"status": exc.status_code, "error": str(exc), "request_documents": len(part)}
            return [dict(failed) for _ in part]
        if answer.body.get("errors") is False:
            return None
        items = answer.body.get("items", [])
        if len(items) != len(part):
            raise RuntimeError(f"Elasticsearch answered a bulk request of {len(part)} documents with {len(items)}")
        return [next(iter(item.values())) for item in items]

    def _reject(self, action: _Encoded, item: dict[str, Any]) -> list[_Encoded]:
        error = item.get("error", {})
        status = item.get("status")
        if status == 413:
            reason = "too_large"
        else:
            reason = "mapping_conflict" if _is_mapping_conflict(error) else "elasticsearch_rejected"
        detail = json.dumps(error)[:2000] if isinstance(error, dict) else str(error)[:2000]
        if isinstance(action.action.record, DeadLetter):
            log.error("the dead-letter index refused a dead letter (%s); kept in the dead-letter file", detail)
            self._on_unstorable([action.action.record])
            return []
        assert self.setup is not None
        raw = action.body
        if reason == "too_large":
            # The whole document goes to the local file; the dead letter indexed keeps its beginning.
            kept = min(_OVERSIZED_RAW_KEPT, self.setup.max_doc_bytes // 4)
            detail = (
                f"HTTP 413 for a request of this one document ({len(raw)} bytes): {detail}; raw holds its first "
                f"{kept} bytes, the local dead-letter file all of it"
            )
            where = f"elasticsearch:{action.index}/{action.action.doc_id}"
            whole = DeadLetter(reason, where, raw, action.action.ts_ns, detail)
            self._on_unstorable([whole])
            raw = raw[:kept]
        # The record's own time keeps the dead letter's id deterministic across replays; the document's id in its
        # source keeps two identical documents refused (the same line twice in a second) two dead letters.
        where = f"elasticsearch:{item.get('_index', action.index)}/{action.action.doc_id}"
        letter = DeadLetter(reason, where, raw, action.action.ts_ns, detail)
        with self.counts_lock:
            self.dead_reasons[reason] += 1
        self._log_refusal(f"refused document {action.action.doc_id}: {detail}")
        encoded, _, unstorable = encode_batch([letter], self.setup.layout, self.setup.max_doc_bytes)
        if unstorable:
            self._on_unstorable(unstorable)
        return encoded

    def _log_refusal(self, detail: str) -> None:
        events = self._refusals.count()
        if events:
            log.warning(
                "Elasticsearch: %d document(s) stored as dead letters since the last such message (logged at most "
                "once a minute; every one is counted); the latest: %s",
                events,
                detail[:300],
            )

    def close_target(self) -> None:
        self._es.close()


@dataclass
class ElasticHealthReport:
    counters: health.Counters
    # The writer's dead letters already added to the counters.
    dead_reported: Counter[str] = field(default_factory=Counter)

    def update(self, writer: BatchWriterThread[Record]) -> None:
        assert isinstance(writer, ElasticWriterThread)
        stats = self.counters
        stats.es_queue_depth = len(writer.buffer)
        stats.docs_indexed = writer.written
        stats.es_duplicates = writer.duplicates
        stats.es_rejected = writer.rejected
        stats.es_retries = writer.retries
        # (called from each of the writer's lanes: what is new and what is reported change under one lock)
        with writer.counts_lock:
            made = writer.dead_reasons - self.dead_reported
            self.dead_reported.update(made)
        if made:
            stats.add_dead(list(made.elements()))


# Above this many unindexed documents, a snapshot waits for Elasticsearch instead of holding them.
SNAPSHOT_MAX_PENDING = 10_000
# With recovery on, the unindexed documents go to a log in this folder of the recovery directory, and the snapshot
# is a marker to it (flows.sinks.pending_log).
PENDING_DOCS_FOLDER = "es-sink-log"
# Documents per frame of that log. A log document carries its whole message (up to the line limit of its
# source), so a frame is kept to a few hundred of them.
_DOCS_PER_FRAME = 256


class ElasticsearchSink(FixedPartitionedSink[list[Record], PendingSnapshot[Record]]):
    """Bytewax sink of keyed record batches ``(key, list[Record])``, one partition (and writer) per worker.

    Stateful, as the InfluxDB sink: a snapshot holds the documents not yet indexed, and a resumed partition
    sends them again (the server answers 409 for those that made it). Above ``SNAPSHOT_MAX_PENDING`` the
    snapshot waits for them to be indexed instead. With recovery on, the documents go to a log file beside
    Bytewax's partitions and the snapshot is a marker to it, so that Bytewax does not pickle up to
    ``SNAPSHOT_MAX_PENDING`` documents into its store at every epoch while Elasticsearch is slow.

    With recovery on (``recovery_dir``), a batch of dead letters waits until the epoch that made it is
    committed. Stored before, a dead letter whose message comes back after a crash (the MQTT broker redelivers
    what the lost epoch read) would be stored again under another id: its id hashes its receive time. Log
    documents, aggregates and alerts have ids of their content and need no wait."""

    def __init__(
        self,
        cfg: ElasticsearchConfig,
        on_unstorable: DeadLetterCallback,
        partitions: int = 1,
        client_factory: Callable[[ElasticsearchConfig], Elasticsearch] = make_client,
        retention: Mapping[str, timedelta] | None = None,
        recovery_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_unstorable = on_unstorable
        self.partitions = partitions
        self.client_factory = client_factory
        self.retention = retention
        self.recovery_dir = recovery_dir

    def list_parts(self) -> list[str]:
        return [f"elasticsearch-{i}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(
        self, step_id: str, for_part: str, resume_state: PendingSnapshot[Record] | None
    ) -> _ElasticPartition:
        pending_log, documents = resume_pending(
            "an Elasticsearch sink", self.recovery_dir, step_id, resume_state, PENDING_DOCS_FOLDER, _DOCS_PER_FRAME
        )
        partition = _ElasticPartition(self, for_part, pending_log)
        if documents:
            # Dead letters among them too: they are in a committed snapshot, so their epoch is committed.
            log.info(
                "%s: indexing %d documents left unindexed at the last snapshot (again, if the stop's flush indexed "
                "them: the server answers 409)",
                for_part,
                len(documents),
            )
            partition.writer.put(documents)
        return partition


class _ElasticPartition(StatefulSinkPartition[list[Record], PendingSnapshot[Record]]):
    def __init__(self, sink: ElasticsearchSink, name: str, pending_log: PendingLog[Record] | None) -> None:
        self._pending_log = pending_log
        # Built on the worker's thread: these are the counters its operators add to.
        report = ElasticHealthReport(health.counters())
        self.writer = ElasticWriterThread(
            sink.cfg, sink.on_unstorable, f"es-writer-{name}", sink.client_factory, report.update, sink.retention
        )
        # Dead letters of the current epoch; then, with recovery on, they wait in the gate for its commit.
        self._letters: list[Record] = []
        self._gate = AfterCommit(sink.recovery_dir, name, self.writer.put) if sink.recovery_dir else None

    def write_batch(self, items: list[list[Record]]) -> None:
        for records in items:
            # A batch is of one kind: the dead letters of one parsed MQTT batch come on their own.
            if self._gate is not None and records and isinstance(records[0], DeadLetter):
                self._letters += records
            else:
                self.writer.put(records)

    def snapshot(self) -> PendingSnapshot[Record]:
        if self._gate is None:
            return pending_for_epoch(self.writer, SNAPSHOT_MAX_PENDING)
        self._gate.end_epoch(self._letters)
        self._letters = []
        # Waiting ones first: one released meanwhile is then in both lists, never in neither.
        letters = self._gate.waiting()
        pending = pending_for_epoch(self.writer, SNAPSHOT_MAX_PENDING) + letters
        if self._pending_log is None:
            return pending
        return self._pending_log.save(pending, time.time_ns())

    def close(self) -> None:
        # A stop: the last snapshot holds what waits still, so that a crash in the stop loses none of it; the
        # dead letters are stored now all the same, under the ids the snapshot has (a replay gets 409s).
        if self._gate is not None:
            self.writer.put(self._gate.close())
            self.writer.put(self._letters)
            self._letters = []
        self.writer.close()
        if self._pending_log is not None:
            self._pending_log.close()


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
