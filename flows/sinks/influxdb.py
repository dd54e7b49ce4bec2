"""InfluxDB sink: line protocol over the v1 ``/write`` API (InfluxDB 1.x) or the v2 API (influxdb-client;
InfluxDB 2.x, 3.x, 1.8+ and compatible servers).

Lifecycle: each Bytewax worker gets a partition that owns a writer thread (``flows.sinks.writer``) with a
bounded buffer. ``write_batch`` only enqueues. The writer sends gzip'd batches of ``batch_size`` lines or
what arrived within ``flush_interval``, and retries retryable failures (429, 5xx, connection errors) with
capped exponential backoff, forever: a store outage stalls the pipeline, it does not lose data. Points the
server refuses (400: a field type conflict, a bad line) go to the dead letters with the server's answer.

Writes are idempotent: points carry deterministic timestamps and tags (a window's start, a reading's event
time), so a batch written twice after a restart lands on the same points.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import urllib3
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from fleetwatch.config import InfluxDBConfig
from fleetwatch.record import DeadLetter
from flows import health
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
    def prepare(self) -> None:
        """Make the target ready (create the database); raise WriteError."""

    def write(self, body: bytes) -> None:
        """POST line protocol (UTF-8); raise WriteError."""

    def close(self) -> None: ...


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class V1Writer:
    """``POST /write?db=&rp=&precision=ns`` with basic auth, as InfluxDB 1.x speaks it."""

    def __init__(self, cfg: InfluxDBConfig) -> None:
        self._cfg = cfg
        ca = str(cfg.ca_file) if cfg.ca_file else None
        self._http = urllib3.PoolManager(
            num_pools=2,
            maxsize=2,
            retries=False,
            timeout=cfg.timeout.total_seconds(),
            cert_reqs="CERT_REQUIRED" if cfg.verify_tls else "CERT_NONE",
            ca_certs=ca,
        )
        params = {"db": cfg.database, "precision": "ns"}
        if cfg.retention_policy:
            params["rp"] = cfg.retention_policy
        self._url = f"{cfg.url}/write?{urlencode(params)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        password = cfg.resolved_password()
        if cfg.username:
            self._headers.update(
                urllib3.make_headers(basic_auth=f"{cfg.username}:{password.get_secret_value() if password else ''}")
            )
        if cfg.gzip:
            self._headers["Content-Encoding"] = "gzip"

    def prepare(self) -> None:
        """CREATE DATABASE is idempotent in InfluxDB 1.x."""
        if not self._cfg.create_database:
            return
        try:
            resp = self._http.request(
                "POST",
                f"{self._cfg.url}/query",
                fields={"q": f'CREATE DATABASE "{self._cfg.database}"'},
                headers={k: v for k, v in self._headers.items() if k == "authorization"},
                encode_multipart=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise WriteError(f"InfluxDB unreachable at {self._cfg.url}: {exc}", retryable=True) from exc
        if resp.status in RETRYABLE_STATUS:
            raise WriteError(f"CREATE DATABASE: HTTP {resp.status}", retryable=True, status=resp.status)
        if resp.status >= 300:
            answer = resp.data[:200].decode("utf-8", "replace")
            hint = (
                " (the user may not create databases: create it as an admin and set influxdb.create_database = false)"
                if resp.status in (401, 403)
                else ""
            )
            raise WriteError(
                f'CREATE DATABASE "{self._cfg.database}" refused: HTTP {resp.status} {answer}{hint}',
                retryable=False,
                status=resp.status,
            )

    def write(self, body: bytes) -> None:
        data = body
        if self._cfg.gzip:
            data = _gzip(data)
        try:
            resp = self._http.request("POST", self._url, body=data, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise WriteError(f"connection: {exc}", retryable=True) from exc
        if resp.status < 300:
            return
        message = f"HTTP {resp.status}: {resp.data[:300].decode('utf-8', 'replace')}"
        raise WriteError(
            message,
            retryable=resp.status in RETRYABLE_STATUS,
            retry_after=_retry_after(resp.headers),
            status=resp.status,
        )

    def close(self) -> None:
        self._http.clear()


def _gzip(data: bytes) -> bytes:
    # Level 1: line protocol compresses ~8x even at the fastest level, and CPU is the scarce resource.
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


class V2Writer:
    """influxdb-client's synchronous write API (``/api/v2/write``): url, token, org, bucket."""

    def __init__(self, cfg: InfluxDBConfig) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        token = cfg.resolved_token()
        self._client = InfluxDBClient(
            url=cfg.url,
            token=token.get_secret_value() if token else "",
            org=cfg.org,
            enable_gzip=cfg.gzip,
            timeout=int(cfg.timeout.total_seconds() * 1000),
            verify_ssl=cfg.verify_tls,
            ssl_ca_cert=str(cfg.ca_file) if cfg.ca_file else None,
            retries=False,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        self._cfg = cfg

    def prepare(self) -> None:
        """Buckets are provisioned with the server (DOCKER_INFLUXDB_INIT_BUCKET); nothing to do."""

    def write(self, body: bytes) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._api.write(bucket=self._cfg.bucket, org=self._cfg.org, record=body, write_precision=WritePrecision.NS)  # type: ignore[arg-type]  # a str constant
        except ApiException as exc:
            status = exc.status or 0
            raise WriteError(
                f"HTTP {status}: {str(exc.body)[:300]}",
                retryable=status in RETRYABLE_STATUS,
                retry_after=_retry_after(exc.headers),
                status=status,
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WriteError(f"connection: {exc}", retryable=True) from exc

    def close(self) -> None:
        self._api.close()
        self._client.close()


def make_writer(cfg: InfluxDBConfig) -> LineWriter:
    return V1Writer(cfg) if cfg.api == "v1" else V2Writer(cfg)


DeadLetterCallback = Callable[[list[DeadLetter]], None]


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
        )
        self.cfg = cfg
        self._writer = writer
        self._on_rejected = on_rejected
        self.start()

    def prepare(self) -> None:
        try:
            self._writer.prepare()
        except WriteError as err:
            if err.retryable:
                raise RetryableError(str(err), err.retry_after) from err
            raise SetupError(f"InfluxDB at {self.cfg.url}: {err}") from None

    def deliver(self, batch: list[str]) -> None:
        try:
            body = "\n".join(batch).encode("utf-8")
        except UnicodeEncodeError:
            batch = self._refuse_unencodable(batch)
            if not batch:
                return
            body = "\n".join(batch).encode("utf-8")
        try:
            self._writer.write(body)
        except WriteError as err:
            if err.retryable:
                raise RetryableError(str(err), err.retry_after) from err
            if err.status in (400, 413) and len(batch) > 1:
                # A bad line makes the server refuse the whole request. Halve until the bad lines stand
                # alone, so that only they become dead letters (writes are idempotent: lines stored by an
                # earlier half are simply stored again).
                middle = len(batch) // 2
                self.deliver(batch[:middle])
                self.deliver(batch[middle:])
                return
            if err.status in (400, 413, 422):
                log.error("InfluxDB refused %d point(s): %s", len(batch), err)
                self._on_rejected([DeadLetter("influxdb_rejected", "influxdb", body, time.time_ns(), str(err))])
                return
            # 401/403 (credentials), 404 (no such database or bucket): not about a record, and retrying
            # cannot fix it.
            raise SetupError(f"InfluxDB at {self.cfg.url} refused a write: {err}") from None
        self.written += len(batch)

    def _refuse_unencodable(self, batch: list[str]) -> list[str]:
        """Lines that cannot be UTF-8 (lone surrogates) become dead letters; the rest is returned."""
        good: list[str] = []
        for line in batch:
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as exc:
                raw = line.encode("utf-8", "backslashreplace")
                self._on_rejected([DeadLetter("invalid_utf8", "influxdb", raw, time.time_ns(), str(exc))])
            else:
                good.append(line)
        return good

    def close_target(self) -> None:
        self._writer.close()


class InfluxDBSink(FixedPartitionedSink[list[str], list[str]]):
    """Bytewax sink of keyed line-protocol batches ``(key, list[str])``, one partition (and writer) per
    worker.

    Stateful, so that a committed epoch never loses output: its snapshot holds the lines not yet written
    (usually the last few hundred milliseconds' worth), and a resumed partition writes them again. A
    window closed and forgotten by the window state is therefore either in InfluxDB or in the snapshot.
    When more than ``SNAPSHOT_MAX_PENDING`` lines wait (InfluxDB slow or down), the snapshot waits for
    them to be written instead of copying them.
    """

    def __init__(
        self,
        cfg: InfluxDBConfig,
        on_rejected: DeadLetterCallback,
        writer_factory: Callable[[InfluxDBConfig], LineWriter] = make_writer,
        partitions: int = 1,
    ) -> None:
        self.cfg = cfg
        self.on_rejected = on_rejected
        self.writer_factory = writer_factory
        self.partitions = partitions

    def list_parts(self) -> list[str]:
        return [f"influxdb-{i}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: list[str] | None) -> _InfluxPartition:
        partition = _InfluxPartition(self, int(for_part.rsplit("-", 1)[1]))
        if resume_state:
            log.info("%s: writing %d lines left unwritten at the last snapshot", for_part, len(resume_state))
            partition.write_batch([resume_state])
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


# Above this many unwritten lines, a snapshot waits for InfluxDB instead of holding them.
SNAPSHOT_MAX_PENDING = 20_000


class _InfluxPartition(StatefulSinkPartition[list[str], list[str]]):
    def __init__(self, sink: InfluxDBSink, index: int) -> None:
        # Built on the worker's thread: these are the counters its operators add to.
        report = HealthReport(health.counters())
        self._thread = InfluxWriterThread(
            sink.cfg, sink.writer_factory(sink.cfg), sink.on_rejected, f"influx-writer-{index}", report
        )

    def write_batch(self, items: list[list[str]]) -> None:
        # One put per call: with windows kept per series, a batch holds many short lists.
        if len(items) == 1:
            self._thread.put(items[0])
        else:
            self._thread.put([line for lines in items for line in lines])

    def snapshot(self) -> list[str]:
        return pending_for_epoch(self._thread, SNAPSHOT_MAX_PENDING)

    def close(self) -> None:
        self._thread.close()
