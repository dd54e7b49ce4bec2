"""What one bad message, a stop or a crash must not do to the readings pipeline (issue 15 items 1-3 and 7,
issue 10 item 2): real Mosquitto -> the installed `fleetwatch run` -> real InfluxDB and Elasticsearch."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import INFLUX_AUTH_TOML, INFLUX_URL, MQTT_HOST, MQTT_PORT, REPO, es_docs, influx_rows
from tests.integration.harness import Pipeline

S = 1_000_000_000


def write_config(path: Path, unique: str, db: str, epoch: str = "500ms") -> Path:
    path.write_text(f"""
[mqtt]
host = "{MQTT_HOST}"
port = {MQTT_PORT}
client_id = "{unique}"
max_payload_bytes = 65536

[[mqtt.subscriptions]]
topic = "fwfault/{unique}/+/+"
qos = 1
template = "fwfault/+/{{device}}/{{metric}}"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"

[windows]
tumbling = ["10s"]
allowed_lateness = "2s"
max_age = "0s"

[flow]
epoch_interval = "{epoch}"
health_interval = "1s"

[recovery]
dir = "{path.parent / "recovery"}"

[retention]
# These queries read the database's default policy: one policy for everything.
enabled = false

[influxdb]
{INFLUX_AUTH_TOML}
url = "{INFLUX_URL}"
database = "{db}"
flush_interval = "100ms"

[elasticsearch]
index_prefix = "{unique}"

[dead_letters]
path = "{path.parent / "dead.jsonl"}"
""")
    return path


class Publisher:
    """QoS 1 with every PUBACK awaited: what the test counts as published, the broker has."""

    def __init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(MQTT_HOST, MQTT_PORT)
        self.client.loop_start()
        self.infos: list[paho.MQTTMessageInfo] = []

    def send(self, topic: str, payload: bytes) -> None:
        self.infos.append(self.client.publish(topic, payload, qos=1))

    def close(self) -> None:
        for info in self.infos:
            info.wait_for_publish(60)
        assert all(info.is_published() for info in self.infos)
        self.client.disconnect()
        self.client.loop_stop()


def reading(unique: str, device: str, value: float, ts_ns: int | None = None, note: str = "") -> tuple[str, bytes]:
    """``note``: a text field the parser skips (a firmware version, a status line), which makes a payload longer."""
    ms = (ts_ns if ts_ns is not None else time.time_ns()) // 1_000_000
    doc: dict[str, object] = {"ts": ms, "v": value}
    if note:
        doc["note"] = note
    return f"fwfault/{unique}/{device}/temp", json.dumps(doc).encode()


def counted(db: str, since_ns: int, until_ns: int) -> int:
    rows = influx_rows(
        db,
        f'SELECT sum("count") FROM "readings_agg" WHERE "window" = \'10s\' AND time >= {since_ns} '
        f"AND time < {until_ns}",
    )
    return int(rows[0]["sum"]) if rows else 0


def wait_counted(db: str, since_ns: int, expected: int, timeout: float = 45.0, until_ns: int = 2**62) -> int:
    deadline = time.monotonic() + timeout
    total = counted(db, since_ns, until_ns)
    while total < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        total = counted(db, since_ns, until_ns)
    time.sleep(1.0)  # anything counted twice would show up now
    return counted(db, since_ns, until_ns)


def test_hostile_payloads_are_dead_letters_and_the_pipeline_keeps_counting(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    pipeline = Pipeline(config)
    start = (time.time_ns() // (10 * S)) * 10 * S - 60 * S
    topic = f"fwfault/{unique}/d1/temp"
    hostile = [
        b"[" * 60_000,  # RecursionError in the JSON decoder
        b'{"ts": 1, "v": ' + b"9" * 400 + b"}",  # an integer beyond float range
        b"9" * 400,
        b'{"ts": 1e300, "v": 1}',  # 1e300 ms: far beyond any accepted skew
        b'{"ts": 1, "\\ud800": 1}',  # a lone surrogate as a metric name
    ]
    pub = Publisher()
    for payload in hostile:
        pub.send(topic, payload)
    good = 20
    for i in range(good):
        pub.send(*reading(unique, "d1", float(i), start + i * S // 2))
    # A line break in a JSON key becomes a series of its own, not a broken batch.
    pub.send(f"fwfault/{unique}/d2/temp", json.dumps({"ts": (start + S) // 1_000_000, "te\nmp": 5}).encode())
    # A backslash at the end of a name cannot be written to InfluxDB 1.x (it refused the point): left out.
    pub.send(f"fwfault/{unique}/d2/temp", json.dumps({"ts": (start + S) // 1_000_000, "x\\": 6}).encode())
    # A backslash inside a name is stored as it is (written doubled, InfluxDB 1.x kept both).
    pub.send(f"fwfault/{unique}/d2/temp", json.dumps({"ts": (start + S) // 1_000_000, "dir\\new": 7}).encode())
    # Finite values near the largest double: their window's sum is beyond a double, its mean is not.
    huge = [1.7e308, 1.7e308, -1.7e308, 1e308]
    for i, value in enumerate(huge):
        pub.send(*reading(unique, "d3", value, start + i * S))
    # Past the windows: they close on event time.
    for device in ("d1", "d2", "d3"):
        pub.send(*reading(unique, device, 0.0, start + 50 * S))
    pub.close()
    pipeline.wait_for("messages_in", len(hostile) + good + len(huge) + 6)
    expected = good + 3 + len(huge)
    assert wait_counted(influx_db, start, expected, timeout=20, until_ns=start + 40 * S) == expected
    by_metric = influx_rows(
        influx_db,
        f'SELECT sum("count") FROM "readings_agg" WHERE time >= {start} AND time < {start + 40 * S} GROUP BY "metric"',
    )
    # The template names the metric (temp): the JSON fields are read under it (collectors.mqtt.parse).
    assert {r["metric"]: r["sum"] for r in by_metric} == {
        "temp_v": good + len(huge),
        "temp_te\\nmp": 1,
        "temp_x": 1,
        "temp_dir\\new": 1,
    }
    (near_max,) = influx_rows(
        influx_db,
        f'SELECT "count", "sum", "mean", "max" FROM "readings_agg" WHERE "device" = \'d3\' AND time = {start}',
    )
    assert (near_max["count"], near_max["sum"], near_max["max"]) == (4, None, 1.7e308)
    assert near_max["mean"] == pytest.approx(sum(v / 4 for v in huge))
    pipeline.wait_for("dead_letters", len(hostile))
    deadline = time.monotonic() + 15
    dead = es_docs(f"{unique}-dead-letters*")
    while len(dead) < len(hostile) and time.monotonic() < deadline:
        time.sleep(0.5)
        dead = es_docs(f"{unique}-dead-letters*")
    assert sorted(d["reason"] for d in dead) == sorted(
        ["undecodable", "non_finite", "non_finite", "timestamp_out_of_range", "invalid_utf8"]
    )
    pipeline.stop(signal.SIGTERM)


def test_points_influxdb_refuses_are_dead_letters_counted_as_the_parsers_are(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """The database already has readings_agg.count as a float: InfluxDB refuses fleetwatch's aggregates (count
    is an integer) with a field type conflict. Each refused point is a dead letter in Elasticsearch, and the
    pipeline's dead_letters count them."""
    from tests.conftest import INFLUX_URL, http, influx_headers

    start = (time.time_ns() // (10 * S)) * 10 * S - 60 * S
    seed = http.request(
        "POST",
        f"{INFLUX_URL}/write?db={influx_db}",
        body=f"readings_agg,device=seed count=1.5 {start}".encode(),
        headers=influx_headers(),
    )
    assert seed.status == 204, seed.data
    pipeline = Pipeline(write_config(tmp_path / "fleetwatch.toml", unique, influx_db))
    pub = Publisher()
    pub.send(*reading(unique, "d1", 1.0, start + S))
    pub.send(*reading(unique, "d1", 2.0, start + 50 * S))  # past the window: it closes on event time
    pub.close()
    pipeline.wait_for("dead_letters", 1)
    assert pipeline.counters()["dead_letters_by_reason"] == {"influxdb_rejected": 1}
    deadline = time.monotonic() + 15
    while not (dead := es_docs(f"{unique}-dead-letters*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    pipeline.stop(signal.SIGTERM)
    assert [d["reason"] for d in dead] == ["influxdb_rejected"]
    assert "device=d1" in dead[0]["raw"] and "conflict" in dead[0]["detail"]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_retained_message_counts_once_however_often_the_pipeline_restarts(
    tmp_path: Path, unique: str, influx_db: str, protocol: str
) -> None:
    """A device's retained reading (its last value, kept by the broker) is counted when the pipeline's session
    first subscribes. After a stop and after a kill -9 the session is still there: MQTT 3.1.1 brokers send the
    message again at every SUBSCRIBE, and it is acknowledged without being counted again; MQTT 5 is asked not
    to send it (Retain Handling 1). A filter added to the configuration meanwhile is new to the session: its
    retained message counts. A new retained publication while the pipeline runs arrives live and counts."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    config.write_text(config.read_text().replace("[mqtt]\n", f'[mqtt]\nprotocol = "{protocol}"\n', 1))
    start = (time.time_ns() // (10 * S)) * 10 * S - 60 * S
    device = paho.Client(CallbackAPIVersion.VERSION2)
    device.connect(MQTT_HOST, MQTT_PORT)
    device.loop_start()
    topic, payload = reading(unique, "d1", 21.5, start + S)
    added_topic = f"fwadded/{unique}/d9/temp"
    device.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    device.publish(added_topic, payload, qos=1, retain=True).wait_for_publish(10)
    skipped = 1 if protocol == "3.1.1" else 0
    try:
        pipeline = Pipeline(config)
        pipeline.wait_for("messages_in", 1)
        for how in ("stop", "kill"):
            pipeline.stop() if how == "stop" else pipeline.kill()
            pipeline = Pipeline(config)  # subscribed: a 3.1.1 broker sends the retained message at once
            time.sleep(1.5)
            counters = pipeline.counters()
            assert (counters["messages_in"], counters.get("mqtt_retained_skipped")) == (0, skipped), how
        pipeline.stop()
        text = config.read_text()
        subscription = text[text.index("[[mqtt.subscriptions]]") : text.index("[windows]")]
        config.write_text(text.replace("[windows]", subscription.replace("fwfault/", "fwadded/") + "[windows]"))
        pipeline = Pipeline(config)
        pipeline.wait_for("messages_in", 1)
        time.sleep(1.5)
        counters = pipeline.counters()
        assert (counters["messages_in"], counters.get("mqtt_retained_skipped")) == (1, skipped)
        device.publish(*reading(unique, "d1", 22.5, start + 2 * S), qos=1, retain=True).wait_for_publish(10)
        device.publish(*reading(unique, "d1", 0.0, start + 50 * S), qos=1).wait_for_publish(10)
        pipeline.wait_for("messages_in", 3)
        assert wait_counted(influx_db, start, 3, timeout=20, until_ns=start + 10 * S) == 3  # d1 twice, d9 once
        late = influx_rows(influx_db, f'SELECT count("value") FROM "readings_late" WHERE time >= {start}')
        assert not late and pipeline.counters()["mqtt_retained_skipped"] == skipped
        pipeline.stop(signal.SIGTERM)
    finally:
        for retained in (topic, added_topic):  # cleared
            device.publish(retained, b"", qos=1, retain=True).wait_for_publish(10)
        device.disconnect()
        device.loop_stop()


def publish_for(
    unique: str, seconds: float, rate: float, devices: int, note: str = ""
) -> tuple[threading.Thread, list[int]]:
    """Publish live readings (event time = now) from a thread; the count published goes in the list."""
    published = [0]

    def run() -> None:
        pub = Publisher()
        begin = time.monotonic()
        i = 0
        while time.monotonic() - begin < seconds:
            pub.send(*reading(unique, f"d{i % devices}", float(i % 13), note=note))
            i += 1
            ahead = i / rate - (time.monotonic() - begin)
            if ahead > 0:
                time.sleep(ahead)
        pub.close()
        published[0] = i

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, published


def test_sigterm_and_restart_under_qos1_load_lose_nothing_and_print_no_panic(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """Three stops with SIGTERM (`docker compose restart`, a deploy) while 2,000 readings/s arrive at QoS 1,
    one of them down for longer than a window plus the allowed lateness: every reading counted once, each
    stop clean (exit 0, no panic, no traceback: the harness checks)."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    since = time.time_ns() - 20 * S
    pipeline = Pipeline(config)
    thread, published = publish_for(unique, 14.0, 2000, devices=20)
    for downtime in (0.5, 13.0, 0.5):
        time.sleep(3.0)
        pipeline.stop(signal.SIGTERM)
        assert "stopped; written:" in pipeline.log_text()
        time.sleep(downtime)
        pipeline = Pipeline(config)
    thread.join(60)
    assert published[0] > 20_000
    total = wait_counted(influx_db, since, published[0])
    late = influx_rows(influx_db, f'SELECT count("value") FROM "readings_late" WHERE time >= {since}')
    pipeline.stop(signal.SIGINT)
    assert (total, late[0]["count"] if late else 0) == (published[0], 0)


def test_kill_9_and_a_long_restart_neither_lose_nor_overwrite_a_window(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """Kill -9 with live event times, down for 15 s (longer than a window's remainder plus the allowed
    lateness). The restored windows must wait for the readings the broker redelivers instead of closing
    half full at once, which would count them late and overwrite the complete points."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db, epoch="2s")
    since = time.time_ns() - 20 * S
    pipeline = Pipeline(config)
    thread, published = publish_for(unique, 8.0, 1000, devices=10)
    time.sleep(4.0)
    pipeline.kill()
    time.sleep(15.0)
    pipeline = Pipeline(config)
    thread.join(60)
    total = wait_counted(influx_db, since, published[0])
    late = influx_rows(influx_db, f'SELECT count("value") FROM "readings_late" WHERE time >= {since}')
    pipeline.stop(signal.SIGTERM)
    assert (total, late[0]["count"] if late else 0) == (published[0], 0)


def test_a_frozen_process_does_not_count_the_frozen_time_on_the_window_clock(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """SIGSTOP for 8 s, then SIGCONT (`docker pause`, a VM or laptop suspended, a debugger): 4 times the allowed
    lateness. The readings the broker held meanwhile carry event times from the frozen seconds; counting those
    seconds on the window clock would have closed their windows before they were read, and made them late."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    since = time.time_ns() - 20 * S
    pipeline = Pipeline(config)
    # Each device every 2 s, as a fleet reports. What the broker holds after the freeze (2,000 readings of 4 kB)
    # takes several reads, so most series get no reading in the first batch after it: their windows are due on
    # the clock alone.
    thread, published = publish_for(unique, 16.0, 250, devices=500, note="x" * 4000)
    time.sleep(4.0)
    pipeline.proc.send_signal(signal.SIGSTOP)
    time.sleep(8.0)
    pipeline.proc.send_signal(signal.SIGCONT)
    thread.join(60)
    total = wait_counted(influx_db, since, published[0])
    late = influx_rows(influx_db, f'SELECT count("value") FROM "readings_late" WHERE time >= {since}')
    pipeline.stop(signal.SIGTERM)
    assert (total, late[0]["count"] if late else 0) == (published[0], 0)
    assert "did not run for" in pipeline.log_text(), "the freeze was not reported in the log"


def test_a_store_that_refuses_the_setup_stops_the_process_with_the_reason(
    tmp_path: Path, unique: str, es_index: str
) -> None:
    """A database the user may not create (or that does not exist, with create_database off) is not a
    per-record problem: the process must exit non-zero and say why, not live on with a dead writer."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, f"{unique}_missing")
    config.write_text(
        config.read_text().replace('flush_interval = "100ms"', 'flush_interval = "100ms"\ncreate_database = false')
    )
    pipeline = Pipeline(config)
    pub = Publisher()
    pub.send(*reading(unique, "d1", 1.0, time.time_ns() - 60 * S))
    pub.send(*reading(unique, "d1", 1.0, time.time_ns()))
    pub.close()
    code = pipeline.proc.wait(90)
    pipeline.finish()
    log = pipeline.log_text()
    assert code == 1, log[-3000:]
    assert "database not found" in log and "stopping" in log
    assert "exiting with status 1" in log
    assert "panicked at" not in log and "Traceback" not in log


def test_exact_aggregates_at_20000_series(tmp_path: Path, unique: str, influx_db: str, es_index: str) -> None:
    """Fleet shape through the broker: 2,000 devices x 10 metrics, JSON, two readings per series in one 10 s
    window, then a reading per device past it. Every one of the 20,000 series gets its exact aggregate."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    pipeline = Pipeline(config)
    start = (time.time_ns() // (10 * S)) * 10 * S - 120 * S
    pub = Publisher()
    devices = 2000
    for second, scale in ((1, 1.0), (6, 2.0)):
        for d in range(devices):
            fields = {f"m{m}": d * 10 + m * scale for m in range(10)}
            payload = json.dumps({"ts": (start + second * S) // 1_000_000, **fields}).encode()
            pub.send(f"fwfault/{unique}/dev{d}/x", payload)
    for d in range(devices):
        pub.send(f"fwfault/{unique}/dev{d}/x", json.dumps({"ts": (start + 60 * S) // 1_000_000, "m0": 0}).encode())
    pub.close()
    pipeline.wait_for("messages_in", 3 * devices, timeout=60)
    assert wait_counted(influx_db, start, 20 * devices * 2, timeout=60, until_ns=start + 10 * S) == 40_000
    rows = influx_rows(
        influx_db,
        f'SELECT "count", "sum", "min", "max" FROM "readings_agg" WHERE "window" = \'10s\' AND time = {start} '
        'GROUP BY "device", "metric"',
    )
    pipeline.stop(signal.SIGTERM)
    assert len(rows) == 20_000
    for row in rows:
        # The topic's last level (x) names the metric: each JSON field mN is read under it, as x_mN.
        assert row["metric"].startswith("x_m"), row
        d, m = int(row["device"][3:]), int(row["metric"][3:])
        low, high = sorted((d * 10 + m * 1.0, d * 10 + m * 2.0))
        assert (row["count"], row["sum"], row["min"], row["max"]) == (2, low + high, low, high), row


def test_kill_9_while_the_window_log_writes_a_new_generation_loses_nothing(
    tmp_path: Path, unique: str, influx_db: str
) -> None:
    """20,000 series (2,000 devices x 10 fields), 30 readings each into one open window, at QoS 1. Once the
    window state log holds four times the live state, it writes a new generation a part of the series at each
    epoch: the pipeline is killed with kill -9 in the middle of that, while the publisher goes on. After the
    restart every series has its exact count and sum: the unfinished generation was not resumed from, and the
    one it was to replace still was."""
    from flows.window_log import referenced_logs

    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    log_dir = tmp_path / "recovery" / "window-log"
    start = (time.time_ns() // (10 * S)) * 10 * S - 120 * S
    devices, rounds = 2000, 30
    pipeline = Pipeline(config)
    pub = Publisher()

    def publish() -> None:
        for k in range(rounds):
            ts_ms = (start + k * 300_000_000) // 1_000_000
            payload = json.dumps({"ts": ts_ms, **{f"m{m}": float(k) for m in range(10)}}).encode()
            for d in range(devices):
                pub.send(f"fwfault/{unique}/dev{d}/x", payload)
        # Past the window and its allowed lateness: the window closes by event time.
        for d in range(devices):
            pub.send(f"fwfault/{unique}/dev{d}/x", json.dumps({"ts": (start + 60 * S) // 1_000_000, "m0": 0}).encode())
        pub.close()

    thread = threading.Thread(target=publish)
    thread.start()
    generations: list[int] = []
    deadline = time.monotonic() + 120
    while len(generations) < 2:
        assert time.monotonic() < deadline and thread.is_alive(), "no second log generation while publishing"
        generations = sorted(int(p.suffix[1:]) for p in log_dir.glob("*.*") if p.suffix[1:].isdigit())
        time.sleep(0.01)
    pipeline.kill()
    referenced = [generation for _, generation in referenced_logs(tmp_path / "recovery", "fleetwatch.windows")]
    assert referenced and max(referenced) < generations[-1], (referenced, generations)
    time.sleep(2.0)
    pipeline = Pipeline(config)
    thread.join(180)
    assert not thread.is_alive()
    total = wait_counted(influx_db, start, 10 * devices * rounds, timeout=120, until_ns=start + 10 * S)
    rows = influx_rows(
        influx_db,
        f'SELECT "count", "sum" FROM "readings_agg" WHERE "window" = \'10s\' AND time = {start} '
        'GROUP BY "device", "metric"',
    )
    pipeline.stop(signal.SIGTERM)
    assert total == 10 * devices * rounds
    assert len(rows) == 10 * devices
    assert {(row["count"], row["sum"]) for row in rows} == {(rounds, float(sum(range(rounds))))}


@contextlib.contextmanager
def recovery_writes_stalled(recovery_dir: Path) -> Iterator[None]:
    """Hold the write lock of every recovery partition, as a stalled disk or a slow network volume would hold
    up its writes: the pipeline's snapshots and progress cannot be committed until it is released."""
    connections = []
    try:
        for part in sorted(recovery_dir.glob("part-*.sqlite3")):
            connection = sqlite3.connect(part, timeout=10, isolation_level=None)
            connection.execute("BEGIN EXCLUSIVE")
            connections.append(connection)
        assert connections, f"no recovery partitions in {recovery_dir}"
        yield
    finally:
        for connection in connections:
            connection.close()


def test_kill_9_while_commits_are_stalled_loses_nothing(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """Readings go on arriving at QoS 1 while the recovery store takes no writes. A message may be acknowledged
    to the broker only once the epoch that counted it is committed: the pipeline is killed -9 inside the stall,
    restarted, and every reading must be counted once."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    since = time.time_ns() - 20 * S
    pipeline = Pipeline(config, workers=2)
    thread, published = publish_for(unique, 10.0, 2000, devices=20)
    time.sleep(3.0)
    with recovery_writes_stalled(tmp_path / "recovery"):
        time.sleep(2.0)
        pipeline.kill()
    pipeline = Pipeline(config, workers=2)
    thread.join(60)
    total = wait_counted(influx_db, since, published[0])
    pipeline.stop(signal.SIGTERM)
    assert total == published[0]


def killed_before_the_commit_and_restarted(config: Path, topic: str, payload: bytes, counter: str) -> Pipeline:
    """One QoS 1 message read while the recovery store takes no writes (``counter`` shows it was read), then
    kill -9 before its epoch commits, three epochs later: time enough to store what it made, had that not waited.
    Returns the restarted pipeline once it has read the broker's redelivery."""
    pipeline = Pipeline(config)
    time.sleep(2.0)  # a few epochs committed: the recovery partitions exist
    with recovery_writes_stalled(config.parent / "recovery"):
        pub = Publisher()
        pub.send(topic, payload)
        pub.close()
        pipeline.wait_for(counter, 1)
        time.sleep(1.5)
        pipeline.kill()
    pipeline = Pipeline(config)
    pipeline.wait_for(counter, 1)  # read again from the redelivery
    return pipeline


def test_a_dead_letter_of_an_epoch_a_kill_cuts_off_is_stored_once(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """A bad message becomes a dead letter, and the pipeline is killed -9 before the epoch that read it commits.
    The broker redelivers the message to the restarted pipeline, which makes the dead letter again, with a new
    receive time and so a new id. It must be stored once: a dead letter waits for its epoch's commit."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    topic = f"fwfault/{unique}/d1/temp"
    pipeline = killed_before_the_commit_and_restarted(config, topic, b"not json", "dead_letters")
    deadline = time.monotonic() + 30
    while not (docs := es_docs(f"{unique}-dead-letters*")) and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(2.0)  # a second document would be there by now
    docs = es_docs(f"{unique}-dead-letters*")
    assert [(d["source"], d["raw"]) for d in docs] == [(f"mqtt:{topic}", "not json")]
    pipeline.stop(signal.SIGTERM)


def test_a_raw_reading_stamped_at_receipt_in_an_epoch_a_kill_cuts_off_is_written_once(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """A bare number has no time of its own: it is stamped with its receive time, and with write_raw its raw
    point is written. The pipeline is killed -9 before the epoch that read it commits; the broker redelivers the
    message, which the restarted pipeline receives at another time. The raw point must be there once, not once
    per receive time: it waits for its epoch's commit."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    with config.open("a") as f:
        f.write(f"""
[[mqtt.subscriptions]]
topic = "fwraw/{unique}/+/+"
qos = 1
template = "fwraw/+/{{device}}/{{metric}}"
format = "number"
measurement = "bare"
write_raw = true
""")
    pipeline = killed_before_the_commit_and_restarted(config, f"fwraw/{unique}/d1/temp", b"21.5", "readings")
    deadline = time.monotonic() + 30
    while not (rows := influx_rows(influx_db, 'SELECT "value" FROM "bare"')) and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(2.0)  # a second point would be there by now
    rows = influx_rows(influx_db, 'SELECT "value", "device" FROM "bare"')
    pipeline.stop(signal.SIGTERM)
    assert [(row["device"], row["value"]) for row in rows] == [("d1", 21.5)]


def test_kill_9_while_influxdb_is_down_writes_the_closed_windows_from_the_sinks_log(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """InfluxDB is down when a window closes: its lines wait in the sink, and each snapshot keeps them in the
    sink's log beside the recovery partitions (the closed window is gone from the window state). Killed -9 then,
    the pipeline restarts once InfluxDB is back, writes those lines from the log, and every reading is counted
    once."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    since = time.time_ns() - 20 * S
    pipeline = Pipeline(config)
    thread, published = publish_for(unique, 20.0, 500, devices=20)
    stack = str(REPO / "scripts" / "stack.sh")
    time.sleep(3.0)
    subprocess.run([stack, "down", "influxdb"], check=True)
    try:
        closed = pipeline.counters().get("windows_closed", 0)
        # A 10 s window and 2 s of lateness: within 14 s at least one boundary's windows close into the sink.
        pipeline.wait_for("windows_closed", closed + 20, timeout=20)
        time.sleep(1.5)  # three epochs: their snapshots hold the closed windows' lines
        logged = list((tmp_path / "recovery" / "sink-log").iterdir())
        assert logged, "no pending lines in the sink's log while InfluxDB is down"
        assert pipeline.counters().get("sink_snapshot_bytes", 0) > 0
        pipeline.kill()
    finally:
        subprocess.run([stack, "up", "influxdb"], check=True)
    pipeline = Pipeline(config)
    thread.join(60)
    total = wait_counted(influx_db, since, published[0])
    assert "lines left unwritten at the last snapshot" in pipeline.log_text(), pipeline.tail()
    pipeline.stop(signal.SIGTERM)
    assert total == published[0]
