"""The pipeline's own health: counters per Bytewax worker, written to InfluxDB as ``fleetwatch_health``
every ``flow.health_interval`` by ``HealthWriter``, also while no data flows.

Each Bytewax worker runs its whole dataflow on one OS thread, so counters are kept per thread: operators
add to their worker's counters without locks, and the worker's InfluxDB sink partition writes them.
Totals across workers are kept too, for ``fleetwatch run``'s progress line and the demo summary.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields


@dataclass
class Counters:
    messages_in: int = 0
    readings: int = 0
    parse_errors: int = 0
    dead_letters: int = 0
    late_readings: int = 0
    windows_closed: int = 0
    # Windows written early (windows.write_early) that a late reading changed: written again at their close.
    windows_rewritten: int = 0
    points_written: int = 0
    sink_retries: int = 0
    # Points not written because their retention tier no longer keeps them (replayed history).
    points_beyond_retention: int = 0
    # MQTT connections closed on a malformed packet (collectors/mqtt/frames.py).
    mqtt_protocol_errors: int = 0
    # MQTT connections that ended without fleetwatch asking (broker restart, network, session taken over).
    mqtt_disconnects: int = 0
    # QoS 1 redeliveries (DUP) of messages counted already, acknowledged again and dropped (after a restart
    # or a broker disconnect; collectors/mqtt/source.py).
    mqtt_redeliveries_dropped: int = 0
    # Retained messages the broker sent again to a session that was present (it resends them at every
    # SUBSCRIBE), acknowledged and not counted: the session received them live (collectors/mqtt/source.py).
    mqtt_retained_skipped: int = 0
    # MQTT messages with an empty payload (a retained message deleted, a device removed): not readings.
    mqtt_empty_payloads: int = 0
    # Messages of devices missing from the device inventory ([mqtt.devices]).
    unknown_devices: int = 0
    # Sparkplug B (flows/sparkplug.py): sequence gaps and the messages they skipped, NDEATHs of an earlier
    # session, metrics that are no readings (strings, nulls, ...), messages with no readings (NCMD, DCMD, STATE).
    sparkplug_seq_gaps: int = 0
    sparkplug_seq_missed: int = 0
    sparkplug_stale_deaths: int = 0
    sparkplug_metrics_ignored: int = 0
    sparkplug_messages_ignored: int = 0
    # Times the MQTT parser's topic cache was full (mqtt.topic_cache_max_topics or _max_bytes) and started over.
    mqtt_topic_cache_resets: int = 0
    # Syslog: datagrams the kernel dropped because the receive buffer was full (counted when the next one
    # arrives), datagrams with nothing but line ends or NULs in them (no message: not stored), TCP connections
    # closed at once for max_connections, and closed after idle_timeout.
    syslog_udp_dropped: int = 0
    syslog_udp_empty: int = 0
    syslog_tcp_refused: int = 0
    syslog_tcp_idle_closed: int = 0
    # Logs and Elasticsearch.
    log_events: int = 0
    log_parse_failures: int = 0
    late_log_events: int = 0
    docs_indexed: int = 0
    es_duplicates: int = 0
    es_rejected: int = 0
    es_retries: int = 0
    # Window state snapshots (one per shard and epoch): bytes written (to the window state log with recovery
    # on: the series that changed, or the whole state when a log generation starts), bytes encoded anew (the
    # series that changed since the last one) and the time they took.
    window_snapshots: int = 0
    window_snapshot_bytes: int = 0
    window_snapshot_encoded_bytes: int = 0
    window_snapshot_seconds: float = 0.0
    # The InfluxDB sink's snapshots with recovery on (one per partition and epoch): bytes of pending lines written
    # to its log (flows.sinks.pending_log), and the time they took.
    sink_snapshots: int = 0
    sink_snapshot_bytes: int = 0
    sink_snapshot_seconds: float = 0.0
    # Gauges
    # Series whose window state is held (open windows, or a clock kept for stragglers).
    window_series: int = 0
    sink_queue_depth: int = 0
    es_queue_depth: int = 0
    # Wall time minus the newest event time processed, in seconds: how far behind live the flow is.
    lag_seconds: float = 0.0
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)

    def add_dead(self, reasons: list[str]) -> None:
        # Under a lock: the sinks' writer threads add the dead letters they make (records a store refused) to
        # the counters of the worker that owns them, while the worker adds its own.
        with _dead_lock:
            for reason in reasons:
                self.dead_letters_by_reason[reason] = self.dead_letters_by_reason.get(reason, 0) + 1
            self.dead_letters += len(reasons)

    def line_fields(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool | dict):
                continue
            parts.append(f"{f.name}={value}i" if isinstance(value, int) else f"{f.name}={value!r}")
        return ",".join(parts)


_HOST = socket.gethostname().replace(" ", "\\ ").replace(",", "\\,").replace("=", "\\=")

# Keyed by OS thread id, not threading.local: Bytewax's worker threads are Rust threads, and the Python
# thread state (with its thread-locals) that they get is created anew each time they take the GIL.
_by_thread: dict[int, Counters] = {}
_lock = threading.Lock()
_dead_lock = threading.Lock()


# Readiness per input partition of this process ("mqtt:<client id>", "syslog:<name>", "files:<name>"):
# an MQTT partition is ready once the broker acknowledged its subscriptions, a syslog partition once its
# socket is bound, a file input once its first scan is done. Read by the status file (and so by the
# container's healthcheck and the tests), never guessed from a sleep.
_readiness: dict[str, bool] = {}


def set_ready(component: str, ready: bool) -> None:
    with _lock:
        _readiness[component] = ready


def readiness() -> dict[str, bool]:
    with _lock:
        return dict(_readiness)


def counters() -> Counters:
    """This worker thread's counters."""
    mine = _by_thread.get(threading.get_ident())
    if mine is None:
        with _lock:
            mine = _by_thread.setdefault(threading.get_ident(), Counters())
    return mine


def totals() -> Counters:
    """Sum over all workers of this process (gauges summed too)."""
    total = Counters()
    with _lock:
        snapshot = list(_by_thread.values())
    for c in snapshot:
        for f in fields(Counters):
            if f.name == "dead_letters_by_reason":
                with _dead_lock:  # (writer threads add reasons)
                    by_reason = list(c.dead_letters_by_reason.items())
                for reason, n in by_reason:
                    total.dead_letters_by_reason[reason] = total.dead_letters_by_reason.get(reason, 0) + n
            elif f.name == "lag_seconds":
                total.lag_seconds = max(total.lag_seconds, c.lag_seconds)
            else:
                setattr(total, f.name, getattr(total, f.name) + getattr(c, f.name))
    return total


def per_worker() -> list[Counters]:
    """Each worker thread's counters, in the order the workers started."""
    with _lock:
        return list(_by_thread.values())


class HealthWriter:
    """Writes one ``fleetwatch_health`` point per worker thread every ``interval`` seconds, and one
    ``fleetwatch_process`` point with what belongs to the process rather than a worker (``process_fields``,
    line-protocol fields: the writer threads alive, notifications dropped)."""

    def __init__(
        self,
        put: Callable[[list[str]], None],
        interval: float,
        tags: str = "",
        process_fields: Callable[[], str] | None = None,
    ) -> None:
        self._put = put
        self._interval = interval
        self._tags = tags
        self._process_fields = process_fields
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetwatch-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def lines(self) -> list[str]:
        now = time.time_ns()
        lines = [
            f"fleetwatch_health,worker={i}{self._tags} {c.line_fields()} {now}" for i, c in enumerate(per_worker())
        ]
        if self._process_fields is not None:
            lines.append(f"fleetwatch_process,host={_HOST}{self._tags} {self._process_fields()} {now}")
        return lines

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            lines = self.lines()
            if lines:
                self._put(lines)

    def stop(self) -> None:
        self._stop.set()
