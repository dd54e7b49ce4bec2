"""Elasticsearch retention: how long each kind of document is kept (``[retention]``), and who deletes it.

- **Data streams** (servers with the data-streams module, such as the docker compose stack): the index
  template of each kind carries a data stream lifecycle, ``{"data_retention": "30d"}``, and Elasticsearch
  itself deletes the backing indices past that age (``flows.sinks.elasticsearch.IndexLayout.template``); data
  streams that exist already get the same lifecycle at start (``PUT _data_stream/<name>/_lifecycle``).
- **Daily indices** ``<prefix>-<kind>-YYYY.MM.DD`` (servers without data streams, or ``index_mode = "daily"``):
  no lifecycle applies to them, so fleetwatch deletes every daily index whose whole day is older than its
  kind's retention. ``RetentionJob`` does so in the pipeline process at start and every
  ``retention.check_interval``; ``fleetwatch retention`` does it once (for cron, or with ``--dry-run`` to see
  what would go).

A daily index holds the records of its day by their own time (a replay lands in the day it happened), so its
age is its name's date, never its creation date: an index for 2026-11-01 goes once 2026-11-02 00:00 UTC is
older than the retention. Records of days already past the retention (old log files, a sender's clock, a
hostile sender) are written to one index per kind, ``<prefix>-<kind>-expired``, not to an index per day: it is
deleted at every run. Only names that are exactly a kind's daily or expired name are touched.

Failures: a server that is down or busy (connection errors, 429, 5xx) is tried again at the next interval,
with a warning. A server that refuses (403: the user may not delete indices) stops the process with what
privilege is missing: expiring nothing in silence would fill the disk.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, Elasticsearch

from fleetwatch.config import Config, ElasticsearchConfig
from fleetwatch.labels import duration_label
from flows import lifecycle

log = logging.getLogger(__name__)

# Kinds of documents (flows.sinks.elasticsearch.KINDS) and the retention key of each.
RETENTION_KEYS = {"logs": "logs", "log-rates": "log_rates", "dead-letters": "dead_letters", "alerts": "alerts"}


def kind_retention(cfg: Config) -> dict[str, timedelta] | None:
    """Per document kind, how long it is kept; None when ``[retention]`` is off (kept forever)."""
    if not cfg.retention.enabled:
        return None
    return {kind: getattr(cfg.retention, key) for kind, key in RETENTION_KEYS.items()}


def lifecycle_body(retention: timedelta) -> dict[str, str]:
    """A data stream lifecycle in an index template: ``{"data_retention": "30d"}``."""
    return {"data_retention": duration_label(retention)}


def expired_index(prefix: str, kind: str) -> str:
    """Where the records of days a kind no longer keeps are written (daily indices only)."""
    return f"{prefix}-{kind}-expired"


def expired_daily_indices(
    names: Iterable[str], prefix: str, retention: Mapping[str, timedelta], now: datetime
) -> list[str]:
    """The daily indices among ``names`` whose whole day is older than their kind's retention, and the kinds'
    expired indices.

    >>> from datetime import datetime, timedelta, UTC
    >>> now = datetime(2026, 12, 2, 10, tzinfo=UTC)
    >>> expired_daily_indices(
    ...     ["fw-logs-2026.11.01", "fw-logs-2026.11.02", "fw-logs-2026.11.01-x", "fw-alerts-2026.11.01",
    ...      "fw-logs-expired"],
    ...     "fw", {"logs": timedelta(days=30), "alerts": timedelta(days=400)}, now)
    ['fw-logs-2026.11.01', 'fw-logs-expired']
    """
    patterns = {kind: re.compile(re.escape(f"{prefix}-{kind}-") + r"(\d{4})\.(\d{2})\.(\d{2})") for kind in retention}
    expired = []
    for name in names:
        if name in (expired_index(prefix, kind) for kind in retention):
            expired.append(name)
            continue
        for kind, pattern in patterns.items():
            match = pattern.fullmatch(name)
            if match is None:
                continue
            try:
                day = datetime(int(match[1]), int(match[2]), int(match[3]), tzinfo=UTC)
            except ValueError:
                continue  # not a date: not an index fleetwatch named
            if day + timedelta(days=1) <= now - retention[kind]:
                expired.append(name)
    return sorted(expired)


class RetentionRefused(Exception):
    """The server refused to list or delete indices: a missing privilege, not something to retry."""


def _refused(exc: ApiError, what: str, cfg: ElasticsearchConfig) -> RetentionRefused:
    hint = ""
    if exc.status_code in (401, 403):
        hint = (
            f" (the user needs the index privileges view_index_metadata and delete_index on {cfg.index_prefix}-*,"
            " or set retention.enabled = false and expire the indices another way)"
        )
    return RetentionRefused(f"Elasticsearch at {cfg.shown_hosts} refused {what}: HTTP {exc.status_code}{hint}")


def delete_expired(
    es: Elasticsearch,
    cfg: ElasticsearchConfig,
    retention: Mapping[str, timedelta],
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Delete (or with ``dry_run`` only name) the daily indices past their retention; returns their names.
    Raises ``RetentionRefused`` when the server refuses, lets connection errors and 429/5xx through."""
    now = now or datetime.now(UTC)
    try:
        found = es.indices.get(index=f"{cfg.index_prefix}-*", expand_wildcards="open,closed", allow_no_indices=True)
    except ApiError as exc:
        if exc.status_code == 404:
            return []
        if exc.status_code == 429 or exc.status_code >= 500:
            raise
        raise _refused(exc, "listing its indices", cfg) from None
    expired = expired_daily_indices(found.keys(), cfg.index_prefix, retention, now)
    if dry_run:
        return expired
    for name in expired:
        try:
            es.indices.delete(index=name)
        except ApiError as exc:
            if exc.status_code == 404:
                continue  # deleted meanwhile (another fleetwatch process)
            if exc.status_code == 429 or exc.status_code >= 500:
                raise
            raise _refused(exc, f"deleting index {name}", cfg) from None
        log.info("Elasticsearch: deleted %s (past its %s retention)", name, _kind_of(name, cfg.index_prefix, retention))
    return expired


def _kind_of(name: str, prefix: str, retention: Mapping[str, timedelta]) -> str:
    for kind, keep in retention.items():
        if name.startswith(f"{prefix}-{kind}-"):
            return f"{kind} {duration_label(keep)}"
    return "?"


class RetentionJob:
    """Deletes expired daily indices at start and every ``interval`` seconds on its own thread. A refusal
    stops the process (``flows.lifecycle.fail``); an unreachable or busy server is tried again next time."""

    def __init__(
        self,
        cfg: ElasticsearchConfig,
        retention: Mapping[str, timedelta],
        interval: float,
        client_factory: Callable[[ElasticsearchConfig], Elasticsearch],
    ) -> None:
        self._cfg = cfg
        self._retention = dict(retention)
        self._interval = interval
        self._client_factory = client_factory
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="es-retention", daemon=True)
        self.runs = 0
        self.deleted: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> None:
        es = self._client_factory(self._cfg)
        try:
            self.deleted += delete_expired(es, self._cfg, self._retention)
        finally:
            es.close()
        self.runs += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except (TransportConnectionError, ConnectionTimeout, ApiError) as exc:
                log.warning("Elasticsearch retention: %s; trying again in %.0fs", exc, self._interval)
            except Exception as exc:  # a refusal, or a bug: never a quiet dead thread
                lifecycle.fail("Elasticsearch retention", exc)
                return
            if self._stop.wait(self._interval):
                return
