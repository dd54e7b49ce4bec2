"""InfluxDB sink: line protocol over the v1 ``/write`` API (InfluxDB 1.x) or the v2 API (influxdb-client;
InfluxDB 2.x, 3.x, 1.8+ and compatible servers).

Lifecycle: each Bytewax worker gets a partition that owns a bounded buffer and one writer thread.
``write_batch`` only enqueues (it blocks only when the buffer is full: backpressure, never a drop). The
writer flushes when ``batch_size`` lines are waiting or ``flush_interval`` has passed, gzip'd, and retries
retryable failures (429, 5xx, connection errors) with capped exponential backoff, forever: a store outage
stalls the pipeline, it does not lose data. Points the server refuses (400: a field type conflict, a bad
line) go to the dead letters with the server's answer.

Writes are idempotent: points carry deterministic timestamps and tags (a window's start, a reading's event
time), so a batch written twice after a restart lands on the same points.
"""

from __future__ import annotations

import logging
import threading
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
from flows import clock, health
from flows.sinks.buffer import BoundedBuffer

log = logging.getLogger(__name__)

# A flush at the end of an epoch longer than this is a stall (the store is slow or down), not work.
_STALL_NS = 500_000_000
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class WriteError(Exception):
    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class LineWriter(Protocol):
    def prepare(self) -> None:
        """Make the target ready (create the database); raise WriteError."""

    def write(self, body: str) -> None:
        """POST line protocol; raise WriteError."""

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
        if resp.status >= 300:
            raise WriteError(f"CREATE DATABASE failed: {resp.status} {resp.data[:200]!r}", retryable=False)

    def write(self, body: str) -> None:
        data = body.encode("utf-8")
        if self._cfg.gzip:
            data = _gzip(data)
        try:
            resp = self._http.request("POST", self._url, body=data, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise WriteError(f"connection: {exc}", retryable=True) from exc
        if resp.status < 300:
            return
        message = f"HTTP {resp.status}: {resp.data[:300].decode('utf-8', 'replace')}"
        raise WriteError(message, retryable=resp.status in RETRYABLE_STATUS, retry_after=_retry_after(resp.headers))

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

    def write(self, body: str) -> None:
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
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WriteError(f"connection: {exc}", retryable=True) from exc

    def close(self) -> None:
        self._api.close()
        self._client.close()


def make_writer(cfg: InfluxDBConfig) -> LineWriter:
    return V1Writer(cfg) if cfg.api == "v1" else V2Writer(cfg)


DeadLetterCallback = Callable[[list[DeadLetter]], None]

_writers: list[InfluxWriterThread] = []
_writers_lock = threading.Lock()


def flush_all_writers(timeout: float) -> bool:
    """Flush every writer of this process: on a stop, Bytewax does not close sinks, so the runner does."""
    with _writers_lock:
        writers = list(_writers)
    deadline = time.monotonic() + timeout
    return all(w.flush(max(0.0, deadline - time.monotonic())) for w in writers)


class InfluxWriterThread:
    """Owns a buffer and drains it into a LineWriter. Usable outside Bytewax (the simulator's references
    and the benchmark use it directly)."""

    def __init__(
        self,
        cfg: InfluxDBConfig,
        writer: LineWriter,
        on_rejected: DeadLetterCallback,
        name: str = "influx-writer",
        health_report: HealthReport | None = None,
    ) -> None:
        self.cfg = cfg
        self._health = health_report
        self.buffer = BoundedBuffer(cfg.buffer_max_points)
        self._writer = writer
        self._on_rejected = on_rejected
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self.retries = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        with _writers_lock:
            _writers.append(self)

    def put(self, lines: list[str]) -> None:
        if lines:
            self._idle.clear()
            self.buffer.put(lines)

    def _prepare(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                self._writer.prepare()
                return
            except WriteError as err:
                if not err.retryable:
                    raise
                self.retries += 1
                if self._health is not None:
                    self._health.update(self)
                log.warning("InfluxDB not ready (%s); retrying in %.1fs", err, delay)
                time.sleep(delay)
                delay = min(self.cfg.retry_max_delay.total_seconds(), delay * 2)

    def _run(self) -> None:
        self._prepare()
        wait = self.cfg.flush_interval.total_seconds()
        while not (self._stop.is_set() and not len(self.buffer)):
            lines = self.buffer.take(self.cfg.batch_size, wait)
            if not lines:
                self._idle.set()
                continue
            self._write_with_retry(lines)
            if self._health is not None:
                self._health.update(self)
            if not len(self.buffer):
                self._idle.set()

    def _write_with_retry(self, lines: list[str]) -> None:
        body = "\n".join(lines)
        delay = 0.1
        max_delay = self.cfg.retry_max_delay.total_seconds()
        while True:
            try:
                self._writer.write(body)
                self.written += len(lines)
                return
            except WriteError as err:
                if not err.retryable:
                    log.error("InfluxDB refused a batch of %d points: %s", len(lines), err)
                    self._on_rejected(
                        [DeadLetter("influxdb_rejected", "influxdb", body.encode(), time.time_ns(), str(err))]
                    )
                    return
                self.retries += 1
                if self._health is not None:
                    self._health.update(self)
                pause = min(max_delay, err.retry_after if err.retry_after is not None else delay)
                if self.retries == 1 or self.retries % 20 == 0:
                    log.warning(
                        "InfluxDB write failed (%s); retry %d in %.1fs, %d points waiting",
                        err,
                        self.retries,
                        pause,
                        len(self.buffer) + len(lines),
                    )
                time.sleep(pause)
                delay = min(max_delay, delay * 2)

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything put so far is written (without waiting for the flush interval)."""
        self.buffer.request_flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.wait(0.05) and not len(self.buffer):
                return True
        return False

    def close(self, timeout: float = 60.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout)
        with _writers_lock:
            if self in _writers:
                _writers.remove(self)
        self.buffer.close()
        self._writer.close()


class InfluxDBSink(FixedPartitionedSink[list[str], None]):
    """Bytewax sink of keyed line-protocol batches ``(key, list[str])``, one partition (and writer) per
    worker.

    A stateful sink because of its ``snapshot()``: Bytewax calls it when the epoch closes, and it returns
    only once everything the epoch produced is written. So a committed epoch never has output that is
    still only in memory: a window closed and forgotten by the window state is already in InfluxDB.
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

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _InfluxPartition:
        return _InfluxPartition(self, int(for_part.rsplit("-", 1)[1]))


@dataclass
class HealthReport:
    """Where a sink's writer keeps the gauges of the worker that owns it (queue depth, points written,
    retries); ``flows.health`` writes them out with the worker's other counters."""

    counters: health.Counters

    def update(self, writer: InfluxWriterThread) -> None:
        stats = self.counters
        stats.sink_queue_depth = len(writer.buffer)
        stats.points_written = writer.written
        stats.sink_retries = writer.retries


class _InfluxPartition(StatefulSinkPartition[list[str], None]):
    def __init__(self, sink: InfluxDBSink, index: int) -> None:
        # Built on the worker's thread: these are the counters its operators add to.
        report = HealthReport(health.counters())
        self._thread = InfluxWriterThread(
            sink.cfg, sink.writer_factory(sink.cfg), sink.on_rejected, f"influx-writer-{index}", report
        )

    def write_batch(self, items: list[list[str]]) -> None:
        for lines in items:
            self._thread.put(lines)

    def snapshot(self) -> None:
        # Everything of the closing epoch is written before the epoch can be committed. While InfluxDB is
        # down this waits (the flow stalls, the broker queues); it does not give up.
        started = time.monotonic_ns()
        while not self._thread.flush(60.0):
            log.warning("epoch waits for %d points to reach InfluxDB", len(self._thread.buffer))
        waited = time.monotonic_ns() - started
        if waited > _STALL_NS:
            clock.add_stall(waited)
        return None

    def close(self) -> None:
        self._thread.close()
