"""`make chaos`: fleetwatch under load while faults are injected at seeded random moments, then an exact count.

One `fleetwatch run` (the installed program, supervised by this script) takes, all on loopback:

- readings over MQTT (fleetwatch subscribes at QoS 1; the load is published at QoS 2 on a persistent session,
  so that a broker restart cannot duplicate or drop a message on the way *into* the broker: every reading the
  publisher saw completed is in the broker exactly once, and what happens after that is fleetwatch's part);
- anomalies: a device publishes one reading above the threshold of a reading rule, then one below it: one
  firing and one resolved notification per episode, to the alert journal, MQTT and a webhook receiver this
  script runs;
- a known number of bad inputs (undecodable JSON, invalid UTF-8, a non-finite value), each on its own topic,
  each of which must become exactly one dead letter;
- JSON log lines appended to a file, with a sequence number in each;
- syslog lines over TCP, with a sequence number in each.

Faults, one at a time, in a seeded random order with seeded random gaps and durations (`--seed`), until
`--minutes` have passed: kill -9 of the pipeline and an immediate restart with the same config (this script
is the supervisor); SIGSTOP for 5-20 s then SIGCONT; a broker restart (`scripts/stack.sh restart mosquitto`,
persistence on); InfluxDB stopped for 5-30 s; Elasticsearch stopped for 5-30 s; a burst of three rename
rotations; a burst of three copytruncate rotations. A pipeline that exits by itself is restarted too, and
counted as a discrepancy.

Two documented limits shape the load, not the count (README, *Logs*): syslog has no replay (what a TCP
receiver has read but not committed is lost in a crash), so the syslog sender stops, and waits until every
line it sent is in Elasticsearch, before each kill -9, and starts again once the restarted pipeline is ready;
and copytruncate loses the lines written between the tailer's last read and the truncation, so each
truncation waits until every line written is in Elasticsearch (the copies go where the tail does not look).

Then the load stops, everything drains, and the run reconciles exactly (any difference fails it, exit 1):

- readings completed by the publisher = the sum of `count` in the 10 s aggregates in InfluxDB (late readings,
  which would be missing there, are reported beside it);
- every log line and syslog line in Elasticsearch exactly once: the document count, the distinct `_id`s and
  the distinct sequence numbers must all equal the lines written;
- dead letters: one per bad input (count and distinct sources);
- alert notifications: two per episode, each delivered once. A duplicate is a second delivery of a
  notification id: a second POST with the same `X-Fleetwatch-Notification-Id` at the webhook receiver, or a
  second `sent` line for a channel and id in the journal. Delivery is at least once (README, *Alerts*), so a
  second POST with a kill -9 between the two, or a failed attempt logged between them, is reported as a repeat
  (`webhook_repeats`), not counted as a duplicate. The webhook receiver's ids, the journal's `sent`
  ids of every channel and the firing/resolved documents of the alert history must all be the same set;
- the pipeline's log: no traceback, no dead thread, no CRITICAL line; its status never showed a dead writer.

Environment: CHAOS_MINUTES (30), CHAOS_SEED (random), CHAOS_RATE (readings/s, 200), CHAOS_DEVICES (50),
CHAOS_LOG_RATE (lines/s, 50), CHAOS_SYSLOG_RATE (lines/s, 20). The summary is printed as one JSON line and
written to bench/results/chaos-<time>.json; RELIABILITY.md records the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.installed import FLEETWATCH
from bench.run import REPO, RESULTS, _status, http, influxql
from bench.soak import rss_mb
from bench.stack_credentials import INFLUX_AUTH_TOML
from bench.webhook_repeats import webhook_failures, webhook_repeats
from tests.integration.harness import crash_lines

ES_URL = "http://127.0.0.1:9200"
STACK = REPO / "scripts" / "stack.sh"

RATE = int(os.environ.get("CHAOS_RATE", "200"))
DEVICES = int(os.environ.get("CHAOS_DEVICES", "50"))
LOG_RATE = int(os.environ.get("CHAOS_LOG_RATE", "50"))
SYSLOG_RATE = int(os.environ.get("CHAOS_SYSLOG_RATE", "20"))
ANOMALY_EVERY_S = 4.0
BAD_EVERY_S = 3.0
THRESHOLD = 50.0
# Windows stay open this long past their end: longer than the longest fault (a 20 s SIGSTOP, a broker restart,
# a kill and restart), so that readings delayed by a fault are not late (late readings would be stored in
# readings_late, not in the 10 s aggregates, and show as missing there).
ALLOWED_LATENESS = "45s"
READY_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 300.0
ALL_FAULTS = ("kill", "sigstop", "broker", "influxdb", "elasticsearch", "rotate_rename", "rotate_copytruncate")
# CHAOS_FAULTS: a comma-separated subset, to look into one kind of fault.
FAULT_KINDS = tuple(k for k in os.environ.get("CHAOS_FAULTS", ",".join(ALL_FAULTS)).split(",") if k)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack(*args: str) -> None:
    subprocess.run([str(STACK), *args], check=True, capture_output=True)


# ----------------------------------------------------------------------------------------------- Elasticsearch


def es_count(index: str, query: dict[str, Any]) -> int | None:
    """Documents matching ``query`` (after a refresh), or None while the server or the index is not there."""
    try:
        http.request("POST", f"{ES_URL}/{index}/_refresh?ignore_unavailable=true&allow_no_indices=true")
        resp = http.request(
            "POST",
            f"{ES_URL}/{index}/_count?ignore_unavailable=true&allow_no_indices=true",
            body=json.dumps({"query": query}),
            headers={"Content-Type": "application/json"},
        )
    except Exception:
        return None
    if resp.status != 200:
        return None
    return int(json.loads(resp.data)["count"])


def es_hits(index: str, query: dict[str, Any], fields: list[str]) -> list[dict[str, Any]]:
    """Every matching hit (``_id`` and the ``fields`` of ``_source``), scrolled."""
    http.request("POST", f"{ES_URL}/{index}/_refresh?ignore_unavailable=true&allow_no_indices=true")
    body = {"size": 5000, "query": query, "_source": fields, "sort": ["_doc"]}

    def call(method: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        resp = http.request(
            method, ES_URL + path, body=json.dumps(payload), headers={"Content-Type": "application/json"}
        )
        if resp.status != 200:
            raise RuntimeError(f"Elasticsearch {path}: HTTP {resp.status}: {resp.data[:300]!r}")
        return dict(json.loads(resp.data))

    hits: list[dict[str, Any]] = []
    resp = call("POST", f"/{index}/_search?scroll=2m&ignore_unavailable=true&allow_no_indices=true", body)
    while resp["hits"]["hits"]:
        hits += resp["hits"]["hits"]
        resp = call("POST", "/_search/scroll", {"scroll": "2m", "scroll_id": resp["_scroll_id"]})
    return hits


# Waits for Elasticsearch (before a kill, before a truncation) that timed out: the fault went ahead all the same,
# and what it then lost shows in the count; the timeouts are a discrepancy of their own.
wait_timeouts: list[str] = []


def wait_es(index: str, query: dict[str, Any], expected: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while (es_count(index, query) or 0) < expected:
        if time.monotonic() > deadline:
            wait_timeouts.append(what)
            log(f"{what}: fewer than {expected} documents in {index} after {timeout:.0f} s; going ahead")
            return
        time.sleep(0.5)


# ----------------------------------------------------------------------------------------------- load


class MqttLoad(threading.Thread):
    """Readings round robin over DEVICES devices at RATE/s, an anomaly episode every ANOMALY_EVERY_S (a reading
    above THRESHOLD, then one below), and a bad input every BAD_EVERY_S. A message counts as published once the
    broker has completed its QoS 2 handshake."""

    BAD: tuple[tuple[str, Callable[[int], bytes]], ...] = (
        ("undecodable", lambda ms: b"{not json"),
        ("invalid_utf8", lambda ms: b"\xff\xfe\xfd"),
        ("non_finite", lambda ms: b'{"ts": %d, "v": 1e999}' % ms),
    )

    def __init__(self, unique: str) -> None:
        super().__init__(name="mqtt-load", daemon=True)
        self.unique = unique
        self.stop = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{unique}-load", clean_session=False)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.2, 2)  # type: ignore[arg-type]  # seconds; paho computes with floats too
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        # Message ids sent and not yet completed (PUBCOMP), by kind; ids paho reported completed, not yet matched.
        self.pending: dict[int, tuple[str, int]] = {}
        # Readings completed per 10 s window of their event time (ms), to say where a difference lies.
        self.per_window: Counter[int] = Counter()
        self._done: list[int] = []
        self._done_lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.completed: Counter[str] = Counter()
        self.readings_sent = 0
        self.episodes = 0
        self.bad_sources: list[str] = []

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, reason: object, props: object) -> None:
        with self._done_lock:
            self._done.append(mid)

    def _send(self, kind: str, topic: str, payload: bytes, ms: int = 0) -> None:
        # Sent while the broker is away, a QoS 2 message waits in paho's queue and goes out on reconnect. No lock
        # of ours is held inside paho: its network thread calls _on_publish holding paho's own locks.
        mid = self.client.publish(topic, payload, qos=2).mid
        with self._done_lock:
            self.pending[mid] = (kind, ms // 10_000 * 10_000)

    def _prune(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
            for mid in done:
                sent = self.pending.pop(mid, None)
                if sent is None:
                    self._done.append(mid)  # completed before _send registered it: next time
                else:
                    self.completed[sent[0]] += 1
                    if sent[0] == "reading":
                        self.per_window[sent[1]] += 1

    def run(self) -> None:
        begin = time.monotonic()
        next_anomaly, next_bad, open_episode = begin + 1.0, begin + 0.5, False
        while not self.stop.is_set():
            now = time.monotonic()
            ms = time.time_ns() // 1_000_000
            due = int((now - begin) * RATE) - self.readings_sent
            for _ in range(due):
                d = self.readings_sent % DEVICES
                value = 20.0 + (self.readings_sent % 97) / 10
                self._send("reading", f"{self.unique}/dev{d:03d}/temp", b'{"ts": %d, "v": %.1f}' % (ms, value), ms)
                self.readings_sent += 1
            if now >= next_anomaly:
                # The episode's device publishes above the threshold now and below it at the next tick.
                value = 20.0 if open_episode else THRESHOLD + 50.0
                topic = f"{self.unique}/alarm{self.episodes:04d}/temp"
                self._send("reading", topic, b'{"ts": %d, "v": %.1f}' % (ms, value), ms)
                self.readings_sent += 1
                if open_episode:
                    self.episodes += 1
                open_episode = not open_episode
                next_anomaly = now + ANOMALY_EVERY_S / 2
            if now >= next_bad:
                reason, make = self.BAD[len(self.bad_sources) % len(self.BAD)]
                topic = f"{self.unique}/bad{len(self.bad_sources):05d}-{reason}/temp"
                self._send("bad", topic, make(ms))
                self.bad_sources.append(f"mqtt:{topic}")
                next_bad = now + BAD_EVERY_S
            self._prune()
            time.sleep(0.05)
        if open_episode:  # close the last episode: every episode is one firing and one resolved
            ms = time.time_ns() // 1_000_000
            self._send("reading", f"{self.unique}/alarm{self.episodes:04d}/temp", b'{"ts": %d, "v": 20.0}' % ms, ms)
            self.readings_sent += 1
            self.episodes += 1

    def finish(self, timeout: float = 300.0) -> int:
        """Wait for every handshake; the messages still not completed (0 unless the broker is gone)."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self._prune()
            time.sleep(0.2)
        self.client.disconnect()
        self.client.loop_stop()
        return len(self.pending)


class LogWriter(threading.Thread):
    """LOG_RATE JSON lines a second to app.log, each with its sequence number; rotations on request."""

    def __init__(self, directory: Path, unique: str) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.directory = directory
        self.path = directory / "app.log"
        self.archive = directory.parent / "copies"  # outside the tail's glob
        self.archive.mkdir()
        self.unique = unique
        self.stop = threading.Event()
        self.written = 0
        self.rotations = 0
        self._requests: list[tuple[str, threading.Event]] = []
        self._lock = threading.Lock()

    def rotate(self, mode: str) -> None:
        """A burst of three rotations (``rename`` or ``copytruncate``), done by the writer between lines."""
        done = threading.Event()
        with self._lock:
            self._requests.append((mode, done))
        if not done.wait(600):
            raise RuntimeError(f"{mode} rotation did not finish")

    def _write(self, out: Any, lines: int) -> None:
        for _ in range(lines):
            ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            out.write(
                json.dumps({"timestamp": ts, "level": "info", "message": f"line {self.written}", "seq": self.written})
            )
            out.write("\n")
            self.written += 1
        out.flush()

    def _burst(self, out: Any, mode: str) -> Any:
        for _ in range(3):
            self.rotations += 1
            if mode == "rename":
                out.close()
                self.path.rename(self.directory / f"app.log.{self.rotations}")
                out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - reopened at every rotation
            else:
                # copytruncate loses what the tail has not read at the truncation (README): truncate only once
                # every line written so far is in Elasticsearch.
                wait_es(f"{self.unique}-logs*", app_lines(), self.written, 300, "copytruncate")
                shutil.copyfile(self.path, self.archive / f"app.log.{self.rotations}")
                with open(self.path, "r+b") as f:
                    f.truncate(0)
            self._write(out, 20)
            time.sleep(0.3)
        return out

    def run(self) -> None:
        out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        begin = time.monotonic()
        while not self.stop.is_set():
            self._write(out, int((time.monotonic() - begin) * LOG_RATE) - self.written)
            with self._lock:
                requests, self._requests = self._requests, []
            for mode, done in requests:
                out = self._burst(out, mode)
                begin = time.monotonic() - self.written / LOG_RATE
                done.set()
            time.sleep(0.05)
        out.close()


def app_lines() -> dict[str, Any]:
    return {"term": {"service.name": "chaos-app"}}


def syslog_lines() -> dict[str, Any]:
    return {"term": {"service.name": "chaos-syslog"}}


class SyslogSender(threading.Thread):
    """SYSLOG_RATE RFC 5424 lines a second over TCP (newline framing), each with its sequence number. Paused
    (connection closed) around a kill -9: syslog has no replay, what the receiver read but did not commit is
    lost in a crash (README)."""

    def __init__(self, port: int) -> None:
        super().__init__(name="syslog-sender", daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self.idle = threading.Event()
        self.sent = 0
        self.errors: list[str] = []

    def pause(self) -> None:
        self.running.clear()
        self.idle.wait(30)

    def resume(self) -> None:
        self.idle.clear()
        self.running.set()

    def run(self) -> None:
        sock: socket.socket | None = None
        begin = time.monotonic()
        while not self.stop.is_set():
            if not self.running.is_set():
                if sock is not None:
                    sock.close()
                    sock = None
                self.idle.set()
                self.running.wait(1)
                begin = time.monotonic() - self.sent / SYSLOG_RATE
                continue
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", self.port), 10)
            due = int((time.monotonic() - begin) * SYSLOG_RATE) - self.sent
            data = b""
            for i in range(self.sent, self.sent + max(0, due)):
                ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                data += f"<134>1 {ts} chaoshost chaos-syslog - - - syslog line {i}\n".encode()
            try:
                sock.sendall(data)
            except OSError as exc:  # a lost connection loses lines: the count will show it
                self.errors.append(f"{type(exc).__name__}: {exc}")
                sock.close()
                sock = None
            self.sent += max(0, due)
            time.sleep(0.05)
        if sock is not None:
            sock.close()
        self.idle.set()


class WebhookReceiver:
    """Records every POST's notification id, state and wall-clock time; answers 200."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, float]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                state = str(json.loads(body).get("state", ""))
                notification_id = self.headers.get("X-Fleetwatch-Notification-Id", "")
                receiver.posts.append((notification_id, state, time.time()))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True).start()


# ----------------------------------------------------------------------------------------------- the pipeline


class Supervised:
    """`fleetwatch run` restarted at once whenever it dies: by a kill -9 of the run, or by itself (which is
    recorded as a discrepancy). Every process appends to one log."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.log_path = workdir / "pipeline.log"
        self.lock = threading.RLock()
        self.starts = 0
        self.unexpected_exits: list[int] = []
        self.dead_writer_seen = 0
        self.peak_rss_mb = 0.0
        # Wall-clock times of each kill -9: what a webhook received just before one may come again after it.
        self.kills: list[float] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.status = workdir / "status-0.json"
        self.start()
        self.watch = threading.Event()
        threading.Thread(target=self._monitor, name="supervisor", daemon=True).start()

    def start(self) -> float:
        """Start and wait until ready; seconds it took."""
        with self.lock:
            begin = time.monotonic()
            self.starts += 1
            self.status = self.workdir / f"status-{self.starts}.json"
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(
                    [str(FLEETWATCH), "run", "-c", str(self.config), "--status-file", str(self.status)],
                    cwd=self.workdir,
                    stdout=out,
                    stderr=out,
                )
            while not _status(self.status).get("ready"):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"fleetwatch exited with {self.proc.returncode} at start; see {self.log_path}")
                if time.monotonic() - begin > READY_TIMEOUT_S:
                    raise RuntimeError(f"fleetwatch not ready after {READY_TIMEOUT_S:.0f} s; see {self.log_path}")
                time.sleep(0.1)
            return time.monotonic() - begin

    def kill_and_restart(self) -> float:
        with self.lock:
            assert self.proc is not None
            self.kills.append(time.time())
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            return self.start()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def _monitor(self) -> None:
        while not self.watch.is_set():
            time.sleep(1)
            with self.lock:
                if self.watch.is_set() or self.proc is None:
                    return
                code = self.proc.poll()
                if code is not None:
                    log(f"fleetwatch exited by itself with {code}: restarting it")
                    self.unexpected_exits.append(code)
                    self.start()
                    continue
                status = _status(self.status)
                if status.get("writers_alive", 0) < status.get("writers", 0):
                    self.dead_writer_seen += 1
                with contextlib.suppress(OSError, RuntimeError):
                    self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self.proc.pid))

    def stop(self) -> int:
        """SIGINT, as a user stops it; the exit status (0: a clean stop that flushed)."""
        self.watch.set()
        with self.lock:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
                return -9


def write_config(tmp: Path, unique: str, logs: Path, syslog_port: int, hook_port: int) -> Path:
    config = tmp / "chaos.toml"
    config.write_text(f"""
[mqtt]
client_id = "{unique}"
# A plain subscription: Mosquitto 2.0 does not restore shared subscriptions across a restart (README).
shared_group = ""
[[mqtt.subscriptions]]
topic = "{unique}/+/+"
qos = 1
template = "{unique}/{{device}}/{{metric}}"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"
[windows]
tumbling = ["10s"]
allowed_lateness = "{ALLOWED_LATENESS}"
max_age = "0s"
[flow]
health_interval = "5s"
[recovery]
dir = "{tmp / "recovery"}"
[retention]
enabled = false
[influxdb]
database = "{unique}"
retry_max_delay = "2s"
{INFLUX_AUTH_TOML}
[elasticsearch]
index_prefix = "{unique}"
retry_max_delay = "2s"
[[logs.files]]
name = "app"
paths = ["{logs}/app.log*"]
read_from = "start"
parser = {{ kind = "json", timestamp_field = "timestamp", level_field = "level", message_field = "message" }}
service = "chaos-app"
[[logs.syslog]]
name = "syslog"
protocol = "tcp"
listen = "127.0.0.1:{syslog_port}"
[dead_letters]
path = "{tmp / "dead.jsonl"}"
[alerts]
mqtt_topic_prefix = "{unique}-alerts"
journal = "{tmp / "alerts-sent.jsonl"}"
[[alerts.webhooks]]
url = "http://127.0.0.1:{hook_port}/hook"
max_retry_delay = "2s"
[[alerts.rules]]
name = "chaos-hot"
target = "reading"
measurement = "readings"
metric = "*"
match = {{ device = "alarm*" }}
condition = ">"
critical = {THRESHOLD}
""")
    return config


# ----------------------------------------------------------------------------------------------- faults


class Faults:
    def __init__(self, rng: random.Random, pipeline: Supervised, writer: LogWriter, syslog: SyslogSender, unique: str):
        self.rng = rng
        self.pipeline = pipeline
        self.writer = writer
        self.syslog = syslog
        self.unique = unique
        self.begin = time.monotonic()
        self.done: list[dict[str, Any]] = []

    def run(self, seconds: float) -> None:
        """Rounds of every fault kind in a seeded random order, with seeded random gaps, until ``seconds`` have
        passed; the first round always runs to its end, so that a short run has every kind once."""
        end = self.begin + seconds
        for round_index in itertools.count():
            kinds = list(FAULT_KINDS)
            self.rng.shuffle(kinds)
            for kind in kinds:
                gap = self.rng.uniform(2.0, 8.0)
                if round_index > 0 and time.monotonic() + gap >= end:
                    return
                time.sleep(gap)
                at = time.monotonic() - self.begin
                detail = getattr(self, kind)()
                took = time.monotonic() - self.begin - at
                self.done.append({"kind": kind, "at_s": round(at, 1), "took_s": round(took, 1), **detail})
                log(f"fault {kind} at {at:.0f} s, {took:.1f} s: {detail}")

    def kill(self) -> dict[str, Any]:
        self.syslog.pause()
        wait_es(f"{self.unique}-logs*", syslog_lines(), self.syslog.sent, 300, "syslog before a kill")
        ready = self.pipeline.kill_and_restart()
        self.syslog.resume()
        return {"ready_after_restart_s": round(ready, 1)}

    def sigstop(self) -> dict[str, Any]:
        seconds = self.rng.uniform(5, 20)
        self.pipeline.signal(signal.SIGSTOP)
        time.sleep(seconds)
        self.pipeline.signal(signal.SIGCONT)
        return {"stopped_s": round(seconds, 1)}

    def broker(self) -> dict[str, Any]:
        stack("restart", "mosquitto")
        return {}

    def _outage(self, server: str) -> dict[str, Any]:
        seconds = self.rng.uniform(5, 30)
        stack("down", server)
        time.sleep(seconds)
        began = time.monotonic()
        stack("up", server)
        return {"down_s": round(seconds, 1), "start_s": round(time.monotonic() - began, 1)}

    def influxdb(self) -> dict[str, Any]:
        return self._outage("influxdb")

    def elasticsearch(self) -> dict[str, Any]:
        return self._outage("elasticsearch")

    def rotate_rename(self) -> dict[str, Any]:
        self.writer.rotate("rename")
        return {}

    def rotate_copytruncate(self) -> dict[str, Any]:
        self.writer.rotate("copytruncate")
        return {}


# ----------------------------------------------------------------------------------------------- reconciliation


def readings_counted(db: str) -> tuple[int, int]:
    """Sum of `count` of the 10 s aggregates, and the late readings."""
    agg = influxql(db, 'SELECT sum("count") FROM "readings_agg" WHERE "window" = \'10s\'')
    late = influxql(db, 'SELECT count("value") FROM "readings_late"')
    return (int(agg[0]["values"][0][1]) if agg else 0), (int(late[0]["values"][0][1]) if late else 0)


def lines_check(hits: list[dict[str, Any]], sent: int, seq_of: Callable[[dict[str, Any]], int]) -> dict[str, int]:
    seqs = Counter(seq_of(h["_source"]) for h in hits)
    expected = set(range(sent))
    return {
        "sent": sent,
        "documents": len(hits),
        "distinct_ids": len({h["_id"] for h in hits}),
        "distinct_lines": len(seqs),
        "missing": len(expected - set(seqs)),
        "duplicated": sum(n - 1 for n in seqs.values()),
        "unexpected": len(set(seqs) - expected),
    }


def journal_sent(path: Path) -> dict[str, Counter[str]]:
    """Per channel: how many `sent` lines each notification id has; other statuses under "<channel>:<status>"."""
    out: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        key = entry["channel"] if entry.get("status", "sent") == "sent" else f"{entry['channel']}:{entry['status']}"
        out.setdefault(key, Counter())[entry["id"]] += 1
    return out


def drain(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(2)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", random.randrange(1 << 31))))
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("CHAOS_MINUTES", "30")))
    parser.add_argument("--out", type=Path, default=None, help="Write the summary here too.")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    unique = f"chaos{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="fwchaos"))
    logs = tmp / "logs"
    logs.mkdir()
    log(f"chaos run: seed {args.seed}, {args.minutes} min, {unique}, files in {tmp}")
    influxql("", f'CREATE DATABASE "{unique}"')
    hook = WebhookReceiver()
    syslog_port = free_port()
    config = write_config(tmp, unique, logs, syslog_port, hook.port)
    pipeline = Supervised(config, tmp)
    load = MqttLoad(unique)
    writer = LogWriter(logs, unique)
    syslog = SyslogSender(syslog_port)
    for thread in (load, writer, syslog):
        thread.start()
    faults = Faults(rng, pipeline, writer, syslog, unique)
    started = time.monotonic()
    faults.run(args.minutes * 60)
    log("faults over: stopping the load")
    for thread in (load, writer, syslog):
        thread.stop.set()
        thread.join(60)
    unconfirmed = load.finish()
    load_seconds = time.monotonic() - started
    readings = load.completed["reading"]
    bad = load.completed["bad"]
    expected_notifications = 2 * load.episodes

    def everything_in() -> bool:
        counted, late = readings_counted(unique)
        return (
            counted + late >= readings
            and (es_count(f"{unique}-logs*", app_lines()) or 0) >= writer.written
            and (es_count(f"{unique}-logs*", syslog_lines()) or 0) >= syslog.sent
            and (es_count(f"{unique}-dead-letters*", {"match_all": {}}) or 0) >= bad
            and len({i for i, _, _ in hook.posts}) >= expected_notifications
        )

    # The last windows close ALLOWED_LATENESS after their end: a count taken earlier would miss them (and a
    # duplicate elsewhere could make the total look complete).
    settle_until = time.monotonic() + 10 + float(ALLOWED_LATENESS.rstrip("s")) + 10
    drained = drain(lambda: time.monotonic() >= settle_until and everything_in())
    time.sleep(5)  # anything stored twice shows up now
    log(f"drained: {drained}; stopping fleetwatch")
    exit_code = pipeline.stop()

    counted, late = readings_counted(unique)
    app = lines_check(
        es_hits(f"{unique}-logs*", app_lines(), ["fields.seq"]), writer.written, lambda s: int(s["fields"]["seq"])
    )
    sys_hits = es_hits(f"{unique}-logs*", syslog_lines(), ["message"])
    syslog_check = lines_check(sys_hits, syslog.sent, lambda s: int(str(s["message"]).rsplit(" ", 1)[1]))
    dead = es_hits(f"{unique}-dead-letters*", {"match_all": {}}, ["source", "reason"])
    dead_sources = Counter(str(h["_source"]["source"]) for h in dead)
    posts = Counter(i for i, _, _ in hook.posts)
    repeats = webhook_repeats(hook.posts, pipeline.kills, webhook_failures(pipeline.log_path))
    journal = journal_sent(tmp / "alerts-sent.jsonl")
    history = es_hits(f"{unique}-alerts*", {"terms": {"state": ["firing", "resolved"]}}, ["state"])
    history_ids = {h["_id"] for h in history}
    channels = sorted(k for k in journal if ":" not in k)
    crashes = crash_lines(pipeline.log_path.read_text(errors="replace"))

    discrepancies: dict[str, int] = {
        "readings_missing": max(0, readings - counted),
        "readings_extra": max(0, counted - readings),
        "readings_late": late,
        "readings_unconfirmed_by_broker": unconfirmed,
        **{f"log_lines_{k}": v for k, v in app.items() if k in ("missing", "duplicated", "unexpected")},
        "log_documents_not_distinct_ids": app["documents"] - app["distinct_ids"],
        **{f"syslog_lines_{k}": v for k, v in syslog_check.items() if k in ("missing", "duplicated", "unexpected")},
        "syslog_documents_not_distinct_ids": syslog_check["documents"] - syslog_check["distinct_ids"],
        "syslog_send_errors": len(syslog.errors),
        "waits_for_elasticsearch_timed_out": len(wait_timeouts),
        "dead_letters_missing": len(set(load.bad_sources[:bad]) - set(dead_sources)),
        "dead_letters_duplicated": sum(n - 1 for n in dead_sources.values()),
        "dead_letters_unexpected": len(set(dead_sources) - set(load.bad_sources)),
        "webhook_missing": max(0, expected_notifications - len(posts)),
        "webhook_extra": max(0, len(posts) - expected_notifications),
        "webhook_duplicate_deliveries": sum(1 for r in repeats if r["explained_by"] is None),
        "alert_history_missing": max(0, expected_notifications - len(history_ids)),
        "alert_history_not_delivered": len(history_ids - set(posts)),
        "journal_channels_missing": max(0, 2 - len(channels)),
        **{f"journal_{c}_missing": len(set(posts) - set(journal[c])) for c in channels},
        **{f"journal_{c}_extra": len(set(journal[c]) - set(posts)) for c in channels},
        **{f"journal_{c}_duplicated": sum(n - 1 for n in journal[c].values()) for c in channels},
        **{f"journal_{k}": len(v) for k, v in journal.items() if ":" in k},
        "pipeline_unexpected_exits": len(pipeline.unexpected_exits),
        "pipeline_dead_writer_samples": pipeline.dead_writer_seen,
        "pipeline_log_crash_lines": len(crashes),
        "pipeline_stop_exit_status": exit_code,
    }
    summary = {
        "seed": args.seed,
        "minutes": args.minutes,
        "load_seconds": round(load_seconds, 1),
        "rates": {"readings_per_s": RATE, "devices": DEVICES, "log_lines_per_s": LOG_RATE, "syslog_per_s": SYSLOG_RATE},
        "faults": dict(Counter(f["kind"] for f in faults.done)),
        "pipeline_starts": pipeline.starts,
        "peak_rss_mb": round(pipeline.peak_rss_mb, 1),
        "published": {
            "readings": readings,
            "log_lines": writer.written,
            "syslog_lines": syslog.sent,
            "bad_inputs": bad,
            "alert_episodes": load.episodes,
            "notifications_expected": expected_notifications,
        },
        "stored": {
            "readings_in_10s_aggregates": counted,
            "readings_late": late,
            "log_lines": app,
            "syslog_lines": syslog_check,
            "dead_letters": {"documents": len(dead), "distinct_sources": len(dead_sources)},
            "webhook": {
                "posts": sum(posts.values()),
                "distinct_ids": len(posts),
                "repeated_across_a_kill": sum(1 for r in repeats if r["explained_by"] == "kill"),
                "repeated_after_a_failed_attempt": sum(1 for r in repeats if r["explained_by"] == "failed_attempt"),
            },
            "journal_sent_distinct": {c: len(journal[c]) for c in channels},
            "alert_history_firing_resolved": len(history_ids),
        },
        "drained_in_time": drained,
        "discrepancies": {k: v for k, v in discrepancies.items() if v},
        "crash_lines": crashes[:10],
        "fault_log": faults.done,
        "files": str(tmp),
    }
    begin_ms = min(load.per_window, default=0)
    rows = influxql(
        unique,
        f'SELECT sum("count") FROM "readings_agg" WHERE "window" = \'10s\' AND time >= {begin_ms - 60_000}ms '
        "GROUP BY time(10s) fill(none)",
    )
    stored_per_window = {int(t) // 1_000_000: int(n) for t, n in (rows[0]["values"] if rows else [])}
    summary["readings_windows_differing"] = [
        {"at_s": (w - begin_ms) / 1000, "published": load.per_window.get(w, 0), "stored": stored_per_window.get(w, 0)}
        for w in sorted(set(load.per_window) | set(stored_per_window))
        if load.per_window.get(w, 0) != stored_per_window.get(w, 0)
    ][:50]
    summary["webhook_repeats"] = repeats[:50]
    summary["dead_letters_duplicated_sources"] = sorted(k for k, n in dead_sources.items() if n > 1)[:50]
    summary["ok"] = not summary["discrepancies"] and drained
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"chaos-{int(time.time())}.json"
    text = json.dumps(summary, indent=1)
    out.write_text(text)
    if args.out is not None:
        args.out.write_text(text)
    print(json.dumps({k: v for k, v in summary.items() if k != "fault_log"}), flush=True)
    print(f"results: {out}")
    if not summary["ok"]:
        log(f"kept for a look: InfluxDB database {unique}, Elasticsearch indices {unique}-*, files in {tmp}")
        sys.exit(1)
    influxql("", f'DROP DATABASE "{unique}"')
    http.request("DELETE", f"{ES_URL}/{unique}*")
    http.request("DELETE", f"{ES_URL}/_index_template/{unique}-*")


if __name__ == "__main__":
    main()
