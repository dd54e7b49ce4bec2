"""InfluxDB sink: line protocol over the v1 ``/write`` API (InfluxDB 1.x) or the v2 API (influxdb-client;
InfluxDB 2.x, 3.x, 1.8+ and compatible servers).

Lifecycle: each Bytewax worker gets a partition that owns a writer thread (``flows.sinks.writer``) with a
bounded buffer. ``write_batch`` only enqueues. The writer sends batches of ``batch_size`` lines or what arrived
within ``flush_interval`` (gzip'd unless the server is on loopback, see ``gzip``), and retries retryable failures
(429, 5xx, connection errors) with capped exponential backoff, forever: a store outage stalls the pipeline, it
does not lose data. Points the server refuses (400: a field type conflict, a bad line) go to the dead letters
with the server's answer.

Writes are idempotent: points carry deterministic timestamps and tags (a window's start, a reading's event
time), so a batch written twice after a restart lands on the same points. The exception is a raw reading whose
payload had no time of its own: it is stamped with its receive time, which a redelivery after a crash changes.
Those lines come as ``AfterCommitLines`` and, with recovery on, wait until the epoch that read them is committed
(as dead letters do, ``flows.sinks.elasticsearch``).

Retention tiers (``[retention]``, ``fleetwatch.retention``): each line goes to its tier's retention policy
(1.x) or bucket (2.x), which ``prepare`` creates at start, or changes to the configured duration; a server or
user that may not do so stops the process with what to create by hand. A line older than its tier keeps is
not sent (the server would refuse it): it is counted as ``points_beyond_retention``.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import urllib3
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from fleetwatch.config import InfluxDBConfig
from fleetwatch.record import DeadLetter
from fleetwatch.retention import LineRouter, Tier, TierPlan
from flows import health
from flows.recovery_progress import AfterCommit
from flows.sinks.pending_log import PendingLog, PendingSnapshot, resume_pending
from flows.sinks.writer import BatchWriterThread, RetryableError, SetupError, pending_for_epoch

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class WriteError(Exception):
    def __init__(
        self, message: str, *, retryable: bool, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class LineWriter(Protocol):
    # The retention tiers the writer writes to, or None: everything to one database/policy or bucket.
    plan: TierPlan | None

    def prepare(self) -> None:
        """Make the target ready (create the database, the tiers' policies or buckets); raise WriteError."""

    def write(self, body: bytes, tier: str | None = None) -> None:
        """POST line protocol (UTF-8) to ``tier``'s policy or bucket (None: the configured one); raise
        WriteError."""

    def close(self) -> None: ...


def credentials_hint(cfg: InfluxDBConfig) -> str:
    """What to check when the server answers 401: the keys that give the credentials, never their values."""
    if cfg.api == "v2":
        if cfg.token is None and cfg.token_file is None:
            return "the server asks for a token: set influxdb.token_file (or FLEETWATCH_INFLUXDB_TOKEN)"
        where = "influxdb.token_file" if cfg.token_file else "influxdb.token (or FLEETWATCH_INFLUXDB_TOKEN)"
        return f"the server refused the token of {where}"
    if not cfg.username:
        return (
            "the server asks for credentials: set influxdb.username and influxdb.password_file "
            "(or FLEETWATCH_INFLUXDB_USERNAME and FLEETWATCH_INFLUXDB_PASSWORD)"
        )
    if cfg.password_file:
        where = f"the password of influxdb.password_file ({cfg.password_file})"
    elif cfg.password is not None:
        where = "the password of influxdb.password (or FLEETWATCH_INFLUXDB_PASSWORD)"
    else:
        where = "no password: set influxdb.password_file"
    return f"the server refused influxdb.username {cfg.username!r} with {where}"


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class V1Writer:
    """``POST /write?db=&rp=&precision=ns`` with basic auth, as InfluxDB 1.x speaks it. With retention tiers,
    one retention policy per tier."""

    def __init__(self, cfg: InfluxDBConfig, plan: TierPlan | None = None) -> None:
        self._cfg = cfg
        self.plan = plan
        ca = str(cfg.ca_file) if cfg.ca_file else None
        self._http = urllib3.PoolManager(
            num_pools=2,
            maxsize=max(2, cfg.concurrent_requests),
            retries=False,
            timeout=cfg.timeout.total_seconds(),
            cert_reqs="CERT_REQUIRED" if cfg.verify_tls else "CERT_NONE",
            ca_certs=ca,
        )
        params = {"db": cfg.database, "precision": "ns"}
        if cfg.retention_policy:
            params["rp"] = cfg.retention_policy
        self._url = f"{cfg.url}/write?{urlencode(params)}"
        self._tier_urls = {
            t.name: f"{cfg.url}/write?{urlencode({**params, 'rp': t.name})}" for t in (plan.tiers if plan else ())
        }
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        password = cfg.resolved_password()
        if cfg.username:
            self._headers.update(
                urllib3.make_headers(basic_auth=f"{cfg.username}:{password.get_secret_value() if password else ''}")
            )
        self._compress = cfg.compresses()
        if self._compress:
            self._headers["Content-Encoding"] = "gzip"

    def prepare(self) -> None:
        """CREATE DATABASE is idempotent in InfluxDB 1.x; so is creating the tiers' retention policies here
        (missing ones are created, ones with another duration altered, others left alone)."""
        if self._cfg.create_database:
            hint = "the user may not create databases: create it as an admin and set influxdb.create_database = false"
            self._statement(f"CREATE DATABASE {influxql_identifier(self._cfg.database)}", hint)
        if self.plan is None:
            return
        existing = self._retention_policies()
        for tier in self.plan.tiers:
            duration = existing.get(tier.name)
            if duration == int(tier.duration.total_seconds()):
                continue
            verb = "CREATE" if duration is None else "ALTER"
            statement = (
                f"{verb} RETENTION POLICY {influxql_identifier(tier.name)} ON {influxql_identifier(self._cfg.database)}"
                f" DURATION {tier.influx_duration}"
            )
            if verb == "CREATE":
                statement += " REPLICATION 1"
            self._statement(statement, _v1_tier_hint(self._cfg.database, self.plan))
            log.info(
                "InfluxDB: retention policy %s %s (%s)",
                tier.name,
                "created" if verb == "CREATE" else "altered",
                tier.influx_duration,
            )

    def _query(self, statement: str) -> tuple[int, dict[str, Any] | None, str]:
        """POST one InfluxQL statement; (HTTP status, the statement's result, the answer's text)."""
        try:
            resp = self._http.request(
                "POST",
                f"{self._cfg.url}/query",
                fields={"q": statement},
                headers={k: v for k, v in self._headers.items() if k == "authorization"},
                encode_multipart=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise WriteError(f"InfluxDB unreachable at {self._cfg.shown_url}: {exc}", retryable=True) from exc
        text = resp.data[:300].decode("utf-8", "replace").strip()
        if resp.status in RETRYABLE_STATUS:
            raise WriteError(f"{statement}: HTTP {resp.status}", retryable=True, status=resp.status)
        try:
            result = json.loads(resp.data)["results"][0] if resp.status < 300 else None
        except (ValueError, KeyError, IndexError, TypeError):
            result = None
        return resp.status, result, text

    def _statement(self, statement: str, hint: str) -> None:
        status, result, text = self._query(statement)
        error = result.get("error") if result is not None else None
        if status >= 300 or error:
            detail = f"HTTP {status} {text}" if status >= 300 else str(error)
            if status == 401:
                # The credentials, not the privileges: the hint about what the user may do would mislead.
                hint = credentials_hint(self._cfg)
            refused = status in (401, 403) or "authoriz" in str(error) or "privilege" in str(error)
            raise WriteError(
                f"{statement} refused: {detail}" + (f" ({hint})" if refused else ""), retryable=False, status=status
            )

    def _retention_policies(self) -> dict[str, int]:
        """The database's retention policies: name -> duration in seconds (0: forever)."""
        statement = f"SHOW RETENTION POLICIES ON {influxql_identifier(self._cfg.database)}"
        status, result, text = self._query(statement)
        if status >= 300 or result is None or "error" in result:
            detail = f"HTTP {status} {text}" if status >= 300 else str((result or {}).get("error"))
            hint = credentials_hint(self._cfg) if status == 401 else _v1_tier_hint(self._cfg.database, self.plan)
            raise WriteError(
                f"{statement} refused: {detail} ({hint})",
                retryable=False,
                status=status,
            )
        policies: dict[str, int] = {}
        for series in result.get("series", []):
            columns = series.get("columns", [])
            for row in series.get("values", []):
                named = dict(zip(columns, row, strict=False))
                policies[str(named["name"])] = _go_duration_seconds(str(named["duration"]))
        return policies

    def write(self, body: bytes, tier: str | None = None) -> None:
        data = body
        if self._compress:
            data = _gzip(data)
        url = self._url if tier is None else self._tier_urls[tier]
        try:
            resp = self._http.request("POST", url, body=data, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise WriteError(f"connection: {exc}", retryable=True) from exc
        if resp.status < 300:
            return
        message = f"HTTP {resp.status}: {_answer(resp.data.decode('utf-8', 'replace'))}"
        raise WriteError(
            message,
            retryable=resp.status in RETRYABLE_STATUS,
            retry_after=_retry_after(resp.headers),
            status=resp.status,
        )

    def close(self) -> None:
        self._http.clear()


def influxql_identifier(name: str) -> str:
    """A database or retention policy name as an InfluxQL identifier: double-quoted, with its backslashes and
    double quotes escaped, so a name is only ever a name (``a"; DROP DATABASE "b`` included).

    >>> influxql_identifier('a"; DROP DATABASE "b')
    '"a\\\\"; DROP DATABASE \\\\"b"'
    """
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _go_duration_seconds(text: str) -> int:
    """InfluxDB 1.x writes a policy's duration as Go does: ``168h0m0s``, ``0s`` (forever)."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns)", text):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}[unit]
    return int(total)


def _v1_tier_hint(database: str, plan: TierPlan | None) -> str:
    statements = "; ".join(
        f"CREATE RETENTION POLICY {influxql_identifier(t.name)} ON {influxql_identifier(database)}"
        f" DURATION {t.influx_duration} REPLICATION 1"
        for t in (plan.tiers if plan else ())
    )
    return (
        "the user may not manage retention policies: run as an admin, with the durations of [retention]: "
        f"{statements}; or set retention.enabled = false"
    )


def _answer(text: str, keep: int = 300) -> str:
    """A server's error text, short: its start and its end. InfluxDB quotes the refused line first
    ("unable to parse '<line>': <reason>"), and the reason is at the end."""
    text = text.strip()
    return text if len(text) <= keep else f"{text[: keep // 2]} ... {text[-keep // 2 :]}"


def _gzip(data: bytes) -> bytes:
    # Level 1: line protocol compresses ~8x even at the fastest level, and CPU is the scarce resource.
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


class V2Writer:
    """influxdb-client's synchronous write API (``/api/v2/write``): url, token, org, bucket. With retention
    tiers, one bucket ``<bucket>_<tier>`` per tier, with a DBRP mapping (database ``<bucket>``, retention
    policy ``<tier>``) so that InfluxQL (Grafana) reads it as in 1.x."""

    def __init__(self, cfg: InfluxDBConfig, plan: TierPlan | None = None) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        token = cfg.resolved_token()
        self._client = InfluxDBClient(
            url=cfg.url,
            token=token.get_secret_value() if token else "",
            org=cfg.org,
            enable_gzip=cfg.compresses(),
            timeout=int(cfg.timeout.total_seconds() * 1000),
            verify_ssl=cfg.verify_tls,
            ssl_ca_cert=str(cfg.ca_file) if cfg.ca_file else None,
            retries=False,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        self._cfg = cfg
        self.plan = plan

    def bucket_of(self, tier: str | None) -> str:
        return self._cfg.bucket if tier is None else f"{self._cfg.bucket}_{tier}"

    def prepare(self) -> None:
        """Without tiers, the bucket is provisioned with the server (DOCKER_INFLUXDB_INIT_BUCKET). With tiers,
        each tier's bucket is created with its retention (or its retention changed), and its DBRP mapping
        created, when the token may; otherwise the process stops saying what to create."""
        if self.plan is None:
            return
        from influxdb_client.rest import ApiException

        try:
            org_id = self._org_id()
            for tier in self.plan.tiers:
                self._ensure_bucket(tier, org_id)
        except ApiException as exc:
            status = exc.status or 0
            if status in RETRYABLE_STATUS:
                raise WriteError(f"bucket setup: HTTP {status}", retryable=True, status=status) from exc
            raise WriteError(
                f"bucket setup refused: HTTP {status} {str(exc.body or exc.reason)[:200]} "
                f"({credentials_hint(self._cfg) if status == 401 else self._bucket_hint()})",
                retryable=False,
                status=status,
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WriteError(f"InfluxDB unreachable at {self._cfg.shown_url}: {exc}", retryable=True) from exc

    def _org_id(self) -> str:
        orgs = self._client.organizations_api().find_organizations(org=self._cfg.org)
        if not orgs or orgs[0].id is None:
            raise WriteError(f"no organization {self._cfg.org!r} ({self._bucket_hint()})", retryable=False)
        return str(orgs[0].id)

    def _ensure_bucket(self, tier: Tier, org_id: str) -> None:
        from influxdb_client.client.bucket_api import BucketsApi
        from influxdb_client.domain.bucket_retention_rules import BucketRetentionRules
        from influxdb_client.domain.dbrp_create import DBRPCreate
        from influxdb_client.service.dbr_ps_service import DBRPsService

        buckets = BucketsApi(self._client)
        name = self.bucket_of(tier.name)
        seconds = int(tier.duration.total_seconds())
        rules = [BucketRetentionRules(type="expire", every_seconds=seconds)]
        bucket = buckets.find_bucket_by_name(name)
        if bucket is None:
            bucket = buckets.create_bucket(bucket_name=name, retention_rules=rules, org_id=org_id)
            log.info("InfluxDB: bucket %s created (%s)", name, tier.influx_duration)
        elif [r.every_seconds for r in bucket.retention_rules or []] != [seconds]:
            bucket.retention_rules = rules
            bucket = buckets.update_bucket(bucket)
            log.info("InfluxDB: bucket %s retention set to %s", name, tier.influx_duration)
        dbrps = DBRPsService(self._client.api_client)
        found = dbrps.get_dbr_ps(org_id=org_id, db=self._cfg.bucket, rp=tier.name)
        if not found.content:
            dbrps.post_dbrp(
                DBRPCreate(
                    org_id=org_id,
                    database=self._cfg.bucket,
                    retention_policy=tier.name,
                    bucket_id=bucket.id,
                    default=False,
                )
            )

    def _bucket_hint(self) -> str:
        plan = self.plan
        creates = "; ".join(
            f"influx bucket create --org {self._cfg.org} --name {self.bucket_of(t.name)} --retention "
            f"{t.influx_duration} && influx v1 dbrp create --org {self._cfg.org} --db {self._cfg.bucket} --rp "
            f"{t.name} --bucket-id <id of {self.bucket_of(t.name)}>"
            for t in (plan.tiers if plan else ())
        )
        return (
            "the token may not create buckets, or the server has no buckets API: give it read and write access "
            f"to the org's buckets and DBRP mappings, or create them with an operator token: {creates}; "
            "or set retention.enabled = false to write to influxdb.bucket alone"
        )

    def write(self, body: bytes, tier: str | None = None) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            bucket = self.bucket_of(tier)
            precision = WritePrecision.NS
            self._api.write(bucket=bucket, org=self._cfg.org, record=body, write_precision=precision)  # type: ignore[arg-type]  # a str constant
        except ApiException as exc:
            status = exc.status or 0
            raise WriteError(
                f"HTTP {status}: {_answer(str(exc.body))}",
                retryable=status in RETRYABLE_STATUS,
                retry_after=_retry_after(exc.headers),
                status=status,
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WriteError(f"connection: {exc}", retryable=True) from exc

    def close(self) -> None:
        self._api.close()
        self._client.close()


def make_writer(cfg: InfluxDBConfig, plan: TierPlan | None = None) -> LineWriter:
    return V1Writer(cfg, plan) if cfg.api == "v1" else V2Writer(cfg, plan)


DeadLetterCallback = Callable[[list[DeadLetter]], None]


def line_time_ns(line: str) -> int:
    """The timestamp of a line-protocol line (nanoseconds: every line fleetwatch writes has one), or 0.

    A dead letter for a refused line takes the point's own time, not the time of refusal: its id hashes that
    time, so the same line refused again after a replay (kill -9, restart) is the same dead letter, stored
    once."""
    _, _, last = line.rpartition(" ")
    try:
        return int(last) if last.isascii() else 0
    except ValueError:  # a line without a timestamp ends with its fields
        return 0


class InfluxWriterThread(BatchWriterThread[str]):
    """Drains line protocol into a LineWriter. Usable outside Bytewax (the health writer and the
    benchmark's references use it directly)."""

    def __init__(
        self,
        cfg: InfluxDBConfig,
        writer: LineWriter,
        on_rejected: DeadLetterCallback,
        name: str = "influx-writer",
        health_report: HealthReport | None = None,
    ) -> None:
        super().__init__(
            name,
            cfg.buffer_max_points,
            cfg.batch_size,
            cfg.flush_interval.total_seconds(),
            cfg.retry_max_delay.total_seconds(),
            health_report.update if health_report is not None else None,
            # InfluxDB parses and stores one request on one core; at fleet scale a window boundary hands over
            # 100,000 points and more at once. Each lane sends its own batches, so several requests are in
            # flight and none waits for the next to be encoded.
            lanes=cfg.concurrent_requests,
            max_bytes=cfg.buffer_max_bytes,
            weigh=len,
        )
        self.cfg = cfg
        self._writer = writer
        self._on_rejected = on_rejected
        plan = getattr(writer, "plan", None)
        self._router: LineRouter | None = plan.router() if plan is not None else None
        # Per tier, how old (ns) a point may be and still be kept.
        self._keeps_ns = {t.name: int(t.duration.total_seconds() * 1e9) for t in (plan.tiers if plan else ())}
        # Points not sent because their tier no longer keeps them (health: points_beyond_retention).
        self.beyond_retention = 0
        self._beyond_logged_ns = 0
        self.start()

    def prepare(self) -> None:
        try:
            self._writer.prepare()
        except WriteError as err:
            if err.retryable:
                raise RetryableError(str(err), err.retry_after) from err
            raise SetupError(f"InfluxDB at {self.cfg.shown_url}: {err}") from None

    def deliver(self, batch: list[str]) -> None:
        if self._router is None:
            written = self._deliver(batch, None)
        else:
            written = 0
            for tier, lines in self._router.split(batch).items():
                lines = self._within_retention(tier, lines)
                if lines:
                    written += self._deliver(lines, tier)
        with self.counts_lock:
            self.written += written

    def _within_retention(self, tier: str, lines: list[str]) -> list[str]:
        """The lines whose time the tier still keeps. The server would refuse the others (InfluxDB 1.x: "points
        beyond retention policy"), and replayed history makes many: they are counted, not dead letters."""
        now = time.time_ns()
        cutoff = now - self._keeps_ns[tier]
        kept = []
        for line in lines:
            ts = line[line.rfind(" ") + 1 :]
            # (a time before 1970 is negative: a log line stamped 1969 gives such a log rate)
            if ts.lstrip("-").isdigit() and int(ts) < cutoff:
                continue
            kept.append(line)
        dropped = len(lines) - len(kept)
        if dropped:
            with self.counts_lock:
                self.beyond_retention += dropped
            if now - self._beyond_logged_ns > 60_000_000_000:
                self._beyond_logged_ns = now
                log.info(
                    "InfluxDB: %d point(s) older than tier %s keeps were not written (%d so far)",
                    dropped,
                    tier,
                    self.beyond_retention,
                )
        return kept

    def _deliver(self, batch: list[str], tier: str | None) -> int:
        """Sends one request; the number of points stored."""
        try:
            body = "\n".join(batch).encode("utf-8")
        except UnicodeEncodeError:
            batch = self._refuse_unencodable(batch)
            if not batch:
                return 0
            body = "\n".join(batch).encode("utf-8")
        try:
            self._writer.write(body, tier)
        except WriteError as err:
            if err.retryable:
                raise RetryableError(str(err), err.retry_after) from err
            if err.status in (400, 413) and len(batch) > 1:
                # A bad line makes the server refuse the whole request. Halve until the bad lines stand
                # alone, so that only they become dead letters (writes are idempotent: lines stored by an
                # earlier half are simply stored again).
                middle = len(batch) // 2
                return self._deliver(batch[:middle], tier) + self._deliver(batch[middle:], tier)
            if err.status in (400, 413, 422):
                log.error("InfluxDB refused %d point(s): %s", len(batch), err)
                letter = DeadLetter("influxdb_rejected", "influxdb", body, line_time_ns(batch[0]), str(err))
                self._on_rejected([letter])
                return 0
            # 401/403 (credentials, privileges), 404 (no such database or bucket): not about a record, and
            # retrying cannot fix it. A refused credential is a configuration error, found here too when the
            # password changes while fleetwatch runs.
            hint = f" ({credentials_hint(self.cfg)})" if err.status == 401 else ""
            raise SetupError(f"InfluxDB at {self.cfg.shown_url} refused a write: {err}{hint}") from None
        return len(batch)

    def _refuse_unencodable(self, batch: list[str]) -> list[str]:
        """Lines that cannot be UTF-8 (lone surrogates) become dead letters; the rest is returned."""
        good: list[str] = []
        for line in batch:
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as exc:
                raw = line.encode("utf-8", "backslashreplace")
                self._on_rejected([DeadLetter("invalid_utf8", "influxdb", raw, line_time_ns(line), str(exc))])
            else:
                good.append(line)
        return good

    def close_target(self) -> None:
        self._writer.close()


class AfterCommitLines(list[str]):
    """Lines stamped with their receive time (raw readings of payloads without a time): with recovery on, the
    sink writes them once the epoch that made them is committed. Written before, such a line would be written
    again under another time when the broker redelivers its message after a crash: a second point."""

    __slots__ = ()


class InfluxDBSink(FixedPartitionedSink[list[str], PendingSnapshot[str]]):
    """Bytewax sink of keyed line-protocol batches ``(key, list[str])``, one partition (and writer) per
    worker.

    Stateful, so that a committed epoch never loses output: its snapshot holds the lines not yet written
    (usually the last few hundred milliseconds' worth), and a resumed partition writes them again. A
    window closed and forgotten by the window state is therefore either in InfluxDB or in the snapshot.
    While InfluxDB answers, the snapshot holds whatever waits, up to the whole buffer (a window boundary at
    fleet scale hands over a line per series at once). While it is failing and more than
    ``SNAPSHOT_MAX_PENDING`` lines wait, the snapshot waits for them to be written instead of copying them.
    With recovery on (``recovery_dir``), the lines go to a log file beside Bytewax's partitions and the snapshot
    is a marker to it (``flows.sinks.pending_log``), so that Bytewax does not pickle a boundary's worth of lines.
    """

    def __init__(
        self,
        cfg: InfluxDBConfig,
        on_rejected: DeadLetterCallback,
        writer_factory: Callable[[InfluxDBConfig, TierPlan | None], LineWriter] = make_writer,
        partitions: int = 1,
        plan: TierPlan | None = None,
        recovery_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_rejected = on_rejected
        self.writer_factory = writer_factory
        self.partitions = partitions
        self.plan = plan
        self.recovery_dir = recovery_dir

    def list_parts(self) -> list[str]:
        return [f"influxdb-{i}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: PendingSnapshot[str] | None) -> _InfluxPartition:
        pending_log, lines = resume_pending("an InfluxDB sink", self.recovery_dir, step_id, resume_state)
        partition = _InfluxPartition(self, int(for_part.rsplit("-", 1)[1]), pending_log)
        if lines:
            # (A stop's flush may have written some after that snapshot: they land on the same points.)
            log.info(
                "%s: writing %d lines left unwritten at the last snapshot (again, if the stop's flush wrote them)",
                for_part,
                len(lines),
            )
            partition.write_batch([lines])
        return partition


@dataclass
class HealthReport:
    """Where a sink's writer keeps the gauges of the worker that owns it (queue depth, points written,
    retries); ``flows.health`` writes them out with the worker's other counters."""

    counters: health.Counters

    def update(self, writer: BatchWriterThread[str]) -> None:
        stats = self.counters
        stats.sink_queue_depth = len(writer.buffer)
        stats.points_written = writer.written
        stats.sink_retries = writer.retries
        if isinstance(writer, InfluxWriterThread):
            stats.points_beyond_retention = writer.beyond_retention


# Above this many unwritten lines, while InfluxDB is failing, a snapshot waits for it instead of holding them.
SNAPSHOT_MAX_PENDING = 20_000


class _InfluxPartition(StatefulSinkPartition[list[str], PendingSnapshot[str]]):
    def __init__(self, sink: InfluxDBSink, index: int, pending_log: PendingLog[str] | None) -> None:
        self._pending_log = pending_log
        # Built on the worker's thread: these are the counters its operators add to.
        report = self._report = HealthReport(health.counters())

        def on_rejected(letters: list[DeadLetter]) -> None:
            # Points InfluxDB refused are dead letters of this worker, counted as the parser's are.
            report.counters.add_dead([letter.reason for letter in letters])
            sink.on_rejected(letters)

        self._thread = InfluxWriterThread(
            sink.cfg, sink.writer_factory(sink.cfg, sink.plan), on_rejected, f"influx-writer-{index}", report
        )
        # Lines stamped with their receive time, of the current epoch; then, with recovery on, they wait in the
        # gate for its commit (AfterCommitLines).
        self._after_commit: list[str] = []
        self._gate = (
            AfterCommit(sink.recovery_dir, f"influxdb-{index}", self._thread.put) if sink.recovery_dir else None
        )

    def write_batch(self, items: list[list[str]]) -> None:
        if self._gate is not None:
            gated = [lines for lines in items if isinstance(lines, AfterCommitLines)]
            if gated:
                for lines in gated:
                    self._after_commit += lines
                items = [lines for lines in items if not isinstance(lines, AfterCommitLines)]
                if not items:
                    return
        # One put per call: with windows kept per series, a batch holds many short lists.
        if len(items) == 1:
            self._thread.put(items[0])
        else:
            self._thread.put([line for lines in items for line in lines])

    def snapshot(self) -> PendingSnapshot[str]:
        waiting: list[str] = []
        if self._gate is not None:
            self._gate.end_epoch(self._after_commit)
            self._after_commit = []
            # Waiting ones first: one released meanwhile is then in both lists, never in neither.
            waiting = self._gate.waiting()
        pending = pending_for_epoch(
            self._thread, SNAPSHOT_MAX_PENDING, limit_while_answering=self._thread.buffer.capacity
        )
        if waiting:
            pending = pending + waiting
        if self._pending_log is None:
            return pending
        started = time.perf_counter()
        snapshot = self._pending_log.save(pending, time.time_ns())
        stats = self._report.counters
        stats.sink_snapshots += 1
        stats.sink_snapshot_bytes += self._pending_log.saved_bytes
        stats.sink_snapshot_seconds += time.perf_counter() - started
        return snapshot

    def close(self) -> None:
        # A stop: the last snapshot holds what waits still; it is written now all the same, at the times the
        # snapshot has (a replay writes the same points).
        if self._gate is not None:
            self._thread.put(self._gate.close() + self._after_commit)
            self._after_commit = []
        self._thread.close()
        if self._pending_log is not None:
            self._pending_log.close()
