"""The readings pipeline end to end: real Mosquitto -> `fleetwatch run` (Bytewax) -> real InfluxDB 1.x."""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import INFLUX_AUTH_TOML, INFLUX_URL, MQTT_HOST, MQTT_PORT, REPO, es_docs, influx_rows, influxql
from tests.integration.harness import Counted, Pipeline, PrivateBroker, free_port

S = 1_000_000_000
# Event times are history (a replay): windows close on event time, not on the test's wall clock.
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z


def write_config(
    path: Path, unique: str, db: str, protocol: str = "3.1.1", qos: int = 1, port: int = MQTT_PORT
) -> Path:
    path.write_text(f"""
[mqtt]
host = "{MQTT_HOST}"
port = {port}
protocol = "{protocol}"
client_id = "{unique}"
shared_group = "{unique}"
max_payload_bytes = 1000

[[mqtt.subscriptions]]
topic = "fwtest/{unique}/+/+"
qos = {qos}
template = "fwtest/+/{{device}}/{{metric}}"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"

[windows]
tumbling = ["10s", "1m"]
allowed_lateness = "2s"
max_age = "0s"

[flow]
epoch_interval = "500ms"
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
    def __init__(self, qos: int = 1, port: int = MQTT_PORT) -> None:
        self.qos = qos
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.max_queued_messages_set(0)
        self.client.connect(MQTT_HOST, port)
        self.client.loop_start()
        self.infos: list[paho.MQTTMessageInfo] = []

    def send(self, topic: str, payload: bytes) -> None:
        self.infos.append(self.client.publish(topic, payload, qos=self.qos))

    def flush(self) -> None:
        for info in self.infos:
            info.wait_for_publish(30)
        self.infos.clear()

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


def reading(unique: str, device: str, at_s: float, value: float) -> tuple[str, bytes]:
    ms = (T0 + int(at_s * S)) // 1_000_000
    return f"fwtest/{unique}/{device}/temp", json.dumps({"ts": ms, "v": value}).encode()


def stream(unique: str) -> list[list[tuple[str, bytes]]]:
    """Phases published with pauses between them.

    Event times are history replayed at full speed, and with two workers the broker splits one topic
    between two connections, so readings of a series can be reordered by a whole batch. Each phase spans
    one 10 s window, so reordering inside a phase never crosses a closed window; what is late is late
    whatever the worker.
    """
    chunks: list[list[tuple[str, bytes]]] = [[], [], []]
    for device in ("d1", "d2", "d3"):
        for i in range(60):  # 0 .. 29.5 s, in order except each 10th pair swapped (out of order, in time)
            at = i * 0.5 if i % 10 != 4 else (i + 1) * 0.5
            at = (i - 1) * 0.5 if i % 10 == 5 else at
            chunks[int(at // 10)].append(reading(unique, device, at, round(math.sin(i) * 10 + i, 3)))
    late = [reading(unique, "d1", 3.0, 1000.0), reading(unique, "d2", 12.0, -1000.0)]
    # Event time jumps ahead: every window up to 1 min + lateness closes.
    closer = [reading(unique, d, 200.0, 0.0) for d in ("d1", "d2", "d3")]
    return [*chunks, late, closer]


def expected_10s(unique: str) -> dict[tuple[str, int], tuple[int, float, float, float]]:
    """(device, window start s) -> (count, min, max, sum) of the main phase."""
    out: dict[tuple[str, int], list[float]] = {}
    for topic, payload in [m for chunk in stream(unique)[:3] for m in chunk]:
        doc = json.loads(payload)
        start = ((doc["ts"] * 1_000_000 - T0) // S) // 10 * 10
        out.setdefault((topic.split("/")[2], start), []).append(doc["v"])
    return {k: (len(v), min(v), max(v), math.fsum(v)) for k, v in out.items()}


def aggregates(db: str) -> list[dict]:
    return influx_rows(db, 'SELECT * FROM "readings_agg" GROUP BY "device", "window"')


class Cluster(Counted):
    """Two `fleetwatch run` processes of one Bytewax cluster, one worker each."""

    def __init__(self, config: Path) -> None:
        import socket

        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
        self.procs: list[Pipeline] = []
        for i in range(2):
            self.procs.append(Pipeline(config, 1, ["--process-id", str(i), "--addresses", addresses]))

    def counters(self) -> dict:
        total: dict = {}
        for p in self.procs:
            for key, value in p.counters().items():
                if isinstance(value, int):
                    total[key] = total.get(key, 0) + value
        return total

    def stop(self) -> None:
        for p in self.procs:
            p.proc.send_signal(signal.SIGINT)
        for p in self.procs:
            p.proc.wait(60)
            p.log.close()


def run_stream(tmp_path: Path, unique: str, db: str, workers: int, cluster: bool = False) -> list[dict]:
    config = write_config(tmp_path / "fleetwatch.toml", unique, db)
    pipeline: Pipeline | Cluster = Cluster(config) if cluster else Pipeline(config, workers)
    pub = Publisher()
    phases = stream(unique)
    total = 0
    for phase in phases:
        for topic, payload in phase:
            pub.send(topic, payload)
        pub.flush()
        total += len(phase)
        pipeline.wait_for("messages_in", total)
        time.sleep(1.5)  # more than an epoch: the next phase is seen after this one
    pub.send(f"fwtest/{unique}/d1/temp", b"not json")
    pub.send(f"fwtest/{unique}/d1/temp", b'{"ts": 1, "v": NaN}')
    pub.send(f"fwtest/{unique}/d1/temp", b"x" * 2000)
    pub.close()
    pipeline.wait_for("dead_letters", 3)
    deadline = time.monotonic() + 20
    while len(aggregates(db)) < 9 + 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    pipeline.stop()
    return aggregates(db)


@pytest.mark.parametrize("workers", [1, 2])
def test_exact_aggregates_late_readings_and_dead_letters(
    tmp_path: Path, unique: str, influx_db: str, es_index: str, workers: int
) -> None:
    rows = run_stream(tmp_path, unique, influx_db, workers)
    by_key = {(r["device"], r["window"], (int(_ns(r["time"])) - T0) // S): r for r in rows}
    expected = expected_10s(unique)
    got_10s = {
        (d, start): (r["count"], r["min"], r["max"], r["sum"])
        for (d, w, start), r in by_key.items()
        if w == "10s" and start < 100
    }
    # The late readings are not in their closed 10 s windows...
    assert {k: (c, mn, mx, round(sm, 9)) for k, (c, mn, mx, sm) in got_10s.items()} == {
        k: (c, mn, mx, round(sm, 9)) for k, (c, mn, mx, sm) in expected.items()
    }
    # ...but in the 1 min window, still open when they came: 60 + 1 for d1 and d2.
    minute = {d: by_key[(d, "1m", 0)]["count"] for d in ("d1", "d2", "d3")}
    assert minute == {"d1": 61, "d2": 61, "d3": 60}
    assert by_key[("d1", "1m", 0)]["max"] == 1000.0 and by_key[("d2", "1m", 0)]["min"] == -1000.0
    late = influx_rows(influx_db, 'SELECT "value" FROM "readings_late" GROUP BY "device"')
    assert sorted((r["device"], r["value"]) for r in late) == [("d1", 1000.0), ("d2", -1000.0)]
    # Dead letters are in Elasticsearch's dead-letter index, with their reason, topic and raw payload.
    dead = es_docs(f"{unique}-dead-letters*")
    assert sorted(d["reason"] for d in dead) == ["non_finite", "oversized", "undecodable"]
    assert all(d["source"].startswith(f"mqtt:fwtest/{unique}/") and d["raw_base64"] for d in dead)
    health = influx_rows(influx_db, 'SELECT last("messages_in") FROM "fleetwatch_health" GROUP BY "worker"')
    assert len(health) == workers and sum(r["last"] for r in health) > 0


def test_one_worker_two_workers_and_two_processes_give_identical_aggregates(tmp_path: Path, unique: str) -> None:
    results = []
    for mode, workers, cluster in (("w1", 1, False), ("w2", 2, False), ("p2", 1, True)):
        run_dir = tmp_path / mode
        run_dir.mkdir()
        db = f"{unique}{mode}"
        influxql("", f'CREATE DATABASE "{db}"', "POST")
        try:
            # The same topics (same unique name) so that series keys are equal.
            rows = run_stream(run_dir, unique, db, workers, cluster)
        finally:
            influxql("", f'DROP DATABASE "{db}"', "POST")
        results.append(sorted(json.dumps(r, sort_keys=True) for r in rows))
    assert len(results[0]) >= 12
    assert results[0] == results[1] == results[2]


def _ns(rfc3339: str) -> int:
    from collectors.mqtt.payloads import timestamp_ns

    return timestamp_ns(rfc3339, "rfc3339")


def test_restart_mid_stream_at_qos1_loses_no_reading(tmp_path: Path, unique: str, influx_db: str) -> None:
    """Kill -9 mid-stream; keep publishing while the pipeline is down; restart. The persistent session
    holds what was published meanwhile, recovery restores the open windows, and unacked messages are
    redelivered: every reading is counted exactly once."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    pub = Publisher()
    pipeline = Pipeline(config)
    n = 3000
    for i in range(n // 2):
        pub.send(*reading(unique, f"d{i % 5}", i * 0.01, 1.0))
    pub.flush()
    pipeline.wait_for("messages_in", 500)
    pipeline.kill()
    for i in range(n // 2, n):
        pub.send(*reading(unique, f"d{i % 5}", i * 0.01, 1.0))
    pub.flush()
    pipeline = Pipeline(config)
    time.sleep(2)
    for d in range(5):
        pub.send(*reading(unique, f"d{d}", 500.0, 0.0))
    pub.close()
    deadline = time.monotonic() + 30
    total = 0.0
    while time.monotonic() < deadline:
        rows = influx_rows(
            influx_db, f'SELECT sum("count") FROM "readings_agg" WHERE "window" = \'10s\' AND time < {T0 + 100 * S}'
        )
        total = rows[0]["sum"] if rows else 0
        if total >= n:
            break
        time.sleep(0.3)
    pipeline.stop()
    assert total == n
    if os.environ.get("FLEETWATCH_TEST_DEBUG"):
        print((tmp_path / "pipeline.log").read_text())


def test_a_broker_restart_mid_stream_at_qos1_counts_every_reading_once(
    tmp_path: Path, unique: str, influx_db: str
) -> None:
    """The broker goes away while fleetwatch is working through a backlog at QoS 1 and comes back with its
    persisted sessions. What fleetwatch counted but had not acknowledged yet is redelivered (same packet ids,
    DUP) and dropped; what it had not received is delivered after the reconnect: every reading once.

    A plain subscription (``shared_group = ""``): Mosquitto 2.0.11 does not restore *shared* subscriptions
    from its persistence file, so with one, what is published between the broker's restart and fleetwatch's
    resubscription is never queued (README, *Delivery guarantees*)."""
    broker = PrivateBroker(tmp_path, free_port(), persistence=True)
    broker.start()
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db, port=broker.port)
    config.write_text(config.read_text().replace(f'shared_group = "{unique}"', 'shared_group = ""'))
    pipeline = Pipeline(config)
    try:
        n = 20_000
        pub = Publisher(port=broker.port)
        for i in range(n // 2):
            pub.send(*reading(unique, f"d{i % 20}", i * 0.004, 1.0))
        pub.close()  # every message of the first half is with the broker
        pipeline.wait_for("messages_in", 1_000)
        received_before = pipeline.counters().get("messages_in", 0)
        broker.stop()  # mid-backlog: some counted and not yet acknowledged, some not yet sent
        broker.start()
        pub = Publisher(port=broker.port)
        for i in range(n // 2, n):
            pub.send(*reading(unique, f"d{i % 20}", i * 0.004, 1.0))
        for d in range(20):  # event time moves on: every window of the stream closes
            pub.send(*reading(unique, f"d{d}", 500.0, 0.0))
        pub.close()
        total = 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = influx_rows(
                influx_db,
                f'SELECT sum("count") FROM "readings_agg" WHERE "window" = \'10s\' AND time < {T0 + 100 * S}',
            )
            total = rows[0]["sum"] if rows else 0
            if total >= n:
                break
            time.sleep(0.3)
        time.sleep(1.0)  # a duplicate would show as a count above n once its window is rewritten
        rows = influx_rows(
            influx_db, f'SELECT sum("count") FROM "readings_agg" WHERE "window" = \'10s\' AND time < {T0 + 100 * S}'
        )
        assert 1_000 <= received_before < n, "the broker restarted while fleetwatch was mid-stream"
        assert rows[0]["sum"] == n
        log_text = pipeline.log_text()
        assert "session present: True" in log_text, "the broker came back with the persisted session"
        pipeline.stop()
    finally:
        broker.stop()


def test_acknowledgements_the_broker_never_read_do_not_make_it_count_twice(
    tmp_path: Path, unique: str, influx_db: str
) -> None:
    """fleetwatch acknowledges readings it counted, but the broker stops before it reads those PUBACKs: it
    saves the messages as unacknowledged and, back up, redelivers them (same packet ids, DUP set). They were
    counted once and must stay so. The broker is frozen (SIGSTOP) as soon as it has every reading, which
    it has sent on to fleetwatch then, and fleetwatch reads them from its socket while the broker is frozen:
    the acknowledgements wait unread in its socket when it is told to stop."""
    broker = PrivateBroker(tmp_path, free_port(), persistence=True)
    broker.start()
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db, port=broker.port)
    config.write_text(config.read_text().replace(f'shared_group = "{unique}"', 'shared_group = ""'))
    pipeline = Pipeline(config)
    try:
        n = 5_000
        pub = Publisher(port=broker.port)
        for i in range(n):  # one 10 s window, still open when the redeliveries come: they would count in it
            pub.send(*reading(unique, f"d{i % 20}", i * 0.001, 1.0))
        pub.close()  # the broker acknowledged every reading
        broker.freeze()
        pipeline.wait_for("messages_in", n)
        time.sleep(2.0)  # four epochs: every one that counted a reading is committed and acknowledged
        broker.stop()  # the PUBACKs are still unread
        broker.start()
        pub = Publisher(port=broker.port)
        for d in range(20):  # event time moves on: every window of the stream closes
            pub.send(*reading(unique, f"d{d}", 500.0, 0.0))
        pub.close()
        pipeline.wait_for("messages_in", n + 20)
        query = f'SELECT sum("count") FROM "readings_agg" WHERE "window" = \'10s\' AND time < {T0 + 100 * S}'
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (influx_rows(influx_db, query) or [{"sum": 0}])[0]["sum"] >= n:
            time.sleep(0.3)
        time.sleep(1.0)  # a duplicate would show as a count above n once its window is rewritten
        assert influx_rows(influx_db, query)[0]["sum"] == n
        counters = pipeline.counters()
        assert counters.get("mqtt_redeliveries_dropped", 0) > 0, "the broker redelivered what it had no PUBACK for"
        assert (counters["messages_in"], counters["late_readings"], counters["dead_letters"]) == (n + 20, 0, 0)
        pipeline.stop()
    finally:
        broker.stop()


# Devices may publish at QoS 2; fleetwatch subscribes at QoS 0 or 1 (QoS 2 subscriptions are refused), and the
# broker delivers at the lower of the two.
@pytest.mark.parametrize("protocol,publish_qos,qos", [("5", 1, 1), ("5", 2, 1), ("3.1.1", 2, 1), ("3.1.1", 0, 0)])
def test_mqtt5_and_every_qos_reach_the_aggregates(
    tmp_path: Path, unique: str, influx_db: str, protocol: str, publish_qos: int, qos: int
) -> None:
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db, protocol=protocol, qos=qos)
    pipeline = Pipeline(config)
    pub = Publisher(publish_qos)
    n = 2000
    for i in range(n):
        pub.send(*reading(unique, f"d{i % 4}", i * 0.01, float(i % 10)))
    pub.flush()
    pipeline.wait_for("messages_in", n)
    for d in range(4):
        pub.send(*reading(unique, f"d{d}", 500.0, 0.0))
    pub.close()
    deadline = time.monotonic() + 20
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = influx_rows(
            influx_db,
            f'SELECT sum("count"), sum("sum") FROM "readings_agg" WHERE "window" = \'10s\' AND time < {T0 + 100 * S}',
        )
        if rows and rows[0]["sum"] >= n:
            break
        time.sleep(0.2)
    pipeline.stop()
    assert (rows[0]["sum"], rows[0]["sum_1"]) == (n, float(sum(i % 10 for i in range(n))))


def test_influxdb_outage_of_30s_under_load_loses_nothing(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """InfluxDB is stopped for 30 s while readings keep coming. The sink retries, its small buffer fills,
    the source stops reading (the broker queues for the persistent session), and everything lands once
    InfluxDB is back. Memory stays bounded by the buffer."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    text = config.read_text().replace('tumbling = ["10s", "1m"]', 'tumbling = ["1s"]')
    config.write_text(
        text.replace(
            'flush_interval = "100ms"', 'flush_interval = "100ms"\nbuffer_max_points = 500\nretry_max_delay = "2s"'
        )
    )
    pipeline = Pipeline(config)
    pub = Publisher()
    devices, sent, max_depth = 50, 0, 0
    at_20s: tuple[int, int] | None = None  # (sent, messages_in) 20 s into the outage
    stack = str(REPO / "scripts" / "stack.sh")
    subprocess.run([stack, "down", "influxdb"], check=True)
    try:
        start = time.monotonic()
        while time.monotonic() - start < 30:
            for d in range(devices):  # live event times: one reading per device every 0.1 s
                pub.send(f"fwtest/{unique}/d{d}/temp", json.dumps({"ts": time.time_ns() // 10**6, "v": 1}).encode())
            sent += devices
            time.sleep(0.1)
            status = pipeline.counters()
            max_depth = max(max_depth, status.get("sink_queue_depth", 0))
            if at_20s is None and time.monotonic() - start >= 20:
                at_20s = (sent, status.get("messages_in", 0))
        pub.flush()
        queued = pipeline.counters()
        assert queued.get("sink_retries", 0) > 0
        # Backpressure, which is what bounds memory: the sink's queue never went past its bound
        # (buffer_max_points = 500; it fills in about 10 s of windows), the source stopped reading, and the
        # readings of the last 10 s (about 5,000) wait in the broker for the session. The status file is up to
        # 250 ms old: at 500 readings/s, 125 of them.
        assert max_depth <= 500, max_depth
        assert at_20s is not None
        sent_late, read_late = sent - at_20s[0], queued.get("messages_in", 0) - at_20s[1]
        assert sent_late >= 2_000 and read_late <= 250, (sent_late, read_late, queued)
    finally:
        subprocess.run([stack, "up", "influxdb"], check=True)
    pub.close()
    pipeline.wait_for("messages_in", sent, timeout=60)
    deadline = time.monotonic() + 60
    total = 0.0
    while time.monotonic() < deadline:
        rows = influx_rows(influx_db, 'SELECT sum("count") FROM "readings_agg"')
        total = rows[0]["sum"] if rows else 0
        if total >= sent:
            break
        time.sleep(0.5)
    pipeline.stop()
    assert total == sent
    assert es_docs(f"{unique}-dead-letters*") == []
    # The time the sources were held back by the full buffer did not count as silence: no reading of the
    # backlog became late.
    assert influx_rows(influx_db, 'SELECT count("value") FROM "readings_late"') == []


def test_real_device_formats_through_the_broker(tmp_path: Path, unique: str, influx_db: str) -> None:
    """ESPHome/Home Assistant bare values (a switch's ON too), Tasmota SENSOR JSON, Zigbee2MQTT JSON, line protocol,
    SenML and Telegraf's JSON output, each on its own subscription, published to the real broker and read back raw from
    InfluxDB."""
    config = tmp_path / "fleetwatch.toml"
    config.write_text(f"""
[mqtt]
client_id = "{unique}"
shared_group = "{unique}"
[[mqtt.subscriptions]]
topic = "{unique}/esphome/+/sensor/+/state"
template = "+/esphome/{{device}}/sensor/{{metric}}/state"
format = "number"
measurement = "home"
write_raw = true
[[mqtt.subscriptions]]
topic = "{unique}/esphome/+/switch/+/state"
template = "+/esphome/{{device}}/switch/{{metric}}/state"
format = "number"
measurement = "home"
write_raw = true
[[mqtt.subscriptions]]
topic = "{unique}/tele/+/SENSOR"
template = "+/tele/{{device}}/#"
format = "json"
timestamp_field = "Time"
timestamp_unit = "rfc3339"
measurement = "tasmota"
write_raw = true
[[mqtt.subscriptions]]
topic = "{unique}/zigbee2mqtt/+"
template = "+/zigbee2mqtt/{{device}}"
format = "json"
ignore_fields = ["update"]
measurement = "zigbee"
write_raw = true
[[mqtt.subscriptions]]
topic = "{unique}/lp/#"
template = "+/lp/{{site}}/#"
format = "influx_line"
write_raw = true
[[mqtt.subscriptions]]
topic = "{unique}/senml/+"
template = "+/senml/{{site}}"
format = "senml"
measurement = "senml"
write_raw = true
[[mqtt.subscriptions]]
topic = "{unique}/telegraf/#"
template = "+/telegraf/{{site}}/#"
format = "telegraf_json"
write_raw = true
[windows]
max_age = "0s"
[recovery]
dir = "{tmp_path / "recovery"}"
[retention]
# These queries read the database's default policy: one policy for everything.
enabled = false

[influxdb]
{INFLUX_AUTH_TOML}
database = "{influx_db}"
flush_interval = "100ms"
[dead_letters]
path = "{tmp_path / "dead.jsonl"}"
""")
    pipeline = Pipeline(config)
    pub = Publisher()
    pub.send(f"{unique}/esphome/kitchen/sensor/temperature/state", b"21.5")
    pub.send(f"{unique}/esphome/kitchen/switch/relay/state", b"ON")  # a switch's state is 1 or 0
    pub.send(
        f"{unique}/tele/plug1/SENSOR",
        b'{"Time":"2026-01-01T00:00:10","ENERGY":{"Power":12,"Voltage":231},"AM2301":{"Temperature":19.2}}',
    )
    pub.send(
        f"{unique}/zigbee2mqtt/hall",
        b'{"temperature":20.1,"humidity":48,"battery":97,"linkquality":120,"occupancy":true,"update":{"state":"idle"}}',
    )
    pub.send(f"{unique}/lp/lyon/x", b"weather,station=roof temp=5.5,hum=80i 1767225600000000000")
    pub.send(
        f"{unique}/senml/nice",
        b'[{"bn":"urn:dev:mac:0024befffe804ff1:","bt":1767225630,"n":"temp","u":"Cel","v":23.5},'
        b'{"n":"door","t":1,"vb":true},{"n":"label","vs":"hall"}]',
    )
    pub.send(
        f"{unique}/telegraf/paris/h1/cpu",
        b'{"fields":{"usage_idle":97.5,"usage_user":1.5},"name":"cpu","tags":{"cpu":"cpu-total","host":"h1"},'
        b'"timestamp":1767225620}',
    )
    pub.close()
    pipeline.wait_for("readings", 15)
    time.sleep(1.0)
    pipeline.stop()

    def raw(measurement: str) -> set[tuple]:
        rows = influx_rows(influx_db, f'SELECT * FROM "{measurement}"')
        return {tuple(sorted((k, v) for k, v in r.items() if k != "time" and v is not None)) for r in rows}

    assert raw("home") == {
        (("device", "kitchen"), ("metric", "temperature"), ("value", 21.5)),
        (("device", "kitchen"), ("metric", "relay"), ("value", 1)),
    }
    assert raw("tasmota") == {
        (("device", "plug1"), ("metric", "ENERGY_Power"), ("value", 12)),
        (("device", "plug1"), ("metric", "ENERGY_Voltage"), ("value", 231)),
        (("device", "plug1"), ("metric", "AM2301_Temperature"), ("value", 19.2)),
    }
    tasmota_times = {r["time"] for r in influx_rows(influx_db, 'SELECT * FROM "tasmota"')}
    assert tasmota_times == {"2026-01-01T00:00:10Z"}
    assert raw("zigbee") == {
        (("device", "hall"), ("metric", m), ("value", v))
        for m, v in [("temperature", 20.1), ("humidity", 48), ("battery", 97), ("linkquality", 120), ("occupancy", 1)]
    }
    assert raw("weather") == {
        (("metric", "temp"), ("site", "lyon"), ("station", "roof"), ("value", 5.5)),
        (("metric", "hum"), ("site", "lyon"), ("station", "roof"), ("value", 80)),
    }
    # Telegraf's tags kept, its name the measurement, its fields the metrics (not "fields_usage_idle").
    assert raw("cpu") == {
        (("cpu", "cpu-total"), ("host", "h1"), ("metric", m), ("site", "paris"), ("value", v))
        for m, v in [("usage_idle", 97.5), ("usage_user", 1.5)]
    }
    assert {r["time"] for r in influx_rows(influx_db, 'SELECT * FROM "cpu"')} == {"2026-01-01T00:00:20Z"}
    # SenML: each record's n the metric, the base name a tag, the base time carried over to the next record.
    senml = influx_rows(influx_db, 'SELECT * FROM "senml"')
    assert {(r["time"], r["base_name"], r["metric"], r["site"], r["value"]) for r in senml} == {
        ("2026-01-01T00:00:30Z", "urn:dev:mac:0024befffe804ff1:", "temp", "nice", 23.5),
        ("2026-01-01T00:00:31Z", "urn:dev:mac:0024befffe804ff1:", "door", "nice", 1),
    }


def test_the_device_inventory_tags_readings_and_is_read_again_when_it_changes(
    tmp_path: Path, unique: str, influx_db: str
) -> None:
    """[mqtt.devices] through the broker into InfluxDB: a known device's readings carry its inventory tags, an
    unknown one's are refused as dead letters, and an edited file takes effect without a restart."""
    devices = tmp_path / "devices.csv"
    devices.write_text("device,model,owner\nd1,TH-2,facilities\n")
    config = tmp_path / "fleetwatch.toml"
    config.write_text(f"""
[mqtt]
client_id = "{unique}"
shared_group = "{unique}"
[mqtt.devices]
file = "{devices}"
missing = "reject"
reload_interval = "200ms"
[[mqtt.subscriptions]]
topic = "{unique}/+/+"
template = "+/{{device}}/{{metric}}"
write_raw = true
[windows]
max_age = "0s"
[recovery]
dir = "{tmp_path / "recovery"}"
[retention]
# These queries read the database's default policy: one policy for everything.
enabled = false

[influxdb]
{INFLUX_AUTH_TOML}
database = "{influx_db}"
flush_interval = "100ms"
[elasticsearch]
enabled = false
[dead_letters]
path = "{tmp_path / "dead.jsonl"}"
""")
    pipeline = Pipeline(config)
    pub = Publisher()
    pub.send(f"{unique}/d1/temp", b"21.5")
    pub.send(f"{unique}/d2/temp", b"19.0")  # not in the inventory: refused
    pub.flush()
    pipeline.wait_for("messages_in", 2)
    devices.write_text("device,model,owner\nd1,TH-3,facilities\nd2,TH-2,lab\n")
    time.sleep(1.0)  # past reload_interval: the next batch sees the new file
    pub.send(f"{unique}/d1/temp", b"22.5")
    pub.send(f"{unique}/d2/temp", b"19.5")
    pub.close()
    pipeline.wait_for("readings", 3)
    time.sleep(1.0)
    pipeline.stop()

    rows = influx_rows(influx_db, 'SELECT "value", "device", "model", "owner" FROM "readings"')
    assert sorted((r["device"], r["model"], r["owner"], r["value"]) for r in rows) == [
        ("d1", "TH-2", "facilities", 21.5),
        ("d1", "TH-3", "facilities", 22.5),
        ("d2", "TH-2", "lab", 19.5),
    ]
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["source"]) for d in dead] == [("unknown_device", f"mqtt:{unique}/d2/temp")]
    assert pipeline.counters()["unknown_devices"] == 1


def test_health_is_written_while_no_data_flows(tmp_path: Path, unique: str, influx_db: str) -> None:
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    pipeline = Pipeline(config)
    time.sleep(3.5)
    pipeline.stop()
    rows = influx_rows(influx_db, 'SELECT count("messages_in") FROM "fleetwatch_health"')
    assert rows and rows[0]["count"] >= 2


@pytest.mark.parametrize("workers", [1, 2])
def test_past_max_series_readings_of_new_series_are_dead_letters_and_the_others_go_on(
    tmp_path: Path, unique: str, influx_db: str, es_index: str, workers: int
) -> None:
    """A topic per message (a cardinality bomb) must not grow the window state without bound: past
    windows.max_series the readings of new series are dead letters with their reason; the series held keep
    their exact aggregates. With 2 workers each of the 16 shards holds its share (rounded up)."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    limit = 3 if workers == 1 else 16
    config.write_text(config.read_text().replace('max_age = "0s"', f'max_age = "0s"\nmax_series = {limit}'))
    pipeline = Pipeline(config, workers)
    pub = Publisher()
    devices = [f"d{i}" for i in range(1 if workers == 1 else 16, 6 if workers == 1 else 200)]
    for at in range(4):
        for device in devices:
            pub.send(*reading(unique, device, at, float(at)))
    pub.flush()
    pipeline.wait_for("messages_in", 4 * len(devices))
    time.sleep(1.5)
    for device in devices:
        pub.send(*reading(unique, device, 200.0, 0.0))  # closes the first windows
    pub.close()
    pipeline.wait_for("messages_in", 5 * len(devices))
    deadline = time.monotonic() + 20
    held: list[dict] = []
    dead: list[dict] = []
    while time.monotonic() < deadline:
        held = [r for r in aggregates(influx_db) if r["window"] == "10s"]
        dead = es_docs(f"{unique}-dead-letters*")
        if held and len(held) + len(dead) // 5 == len(devices):
            break
        time.sleep(0.5)
    status = pipeline.counters()
    pipeline.stop()
    assert 0 < len(held) <= limit and all(r["count"] == 4 and r["sum"] == 6.0 for r in held)
    refused = {d["source"] for d in dead}
    assert len(refused) == len(devices) - len(held) and len(dead) == 5 * len(refused)
    assert refused == {f"series:readings,device={d},metric=temp_v" for d in devices} - {
        f"series:readings,device={r['device']},metric=temp_v" for r in held
    }
    assert {d["reason"] for d in dead} == {"series_limit"}
    assert all(b"value=" in base64.b64decode(d["raw_base64"]) for d in dead)
    assert status["dead_letters"] == len(dead)


def test_a_live_window_is_written_early_and_its_close_writes_the_late_reading_in(
    tmp_path: Path, unique: str, influx_db: str
) -> None:
    """With live event times, a 10 s window is in InfluxDB half a second after its end (an eighth of the 4 s
    allowed lateness), before it closes. A reading that comes within the lateness afterwards changes it, and the
    close writes the point again: what InfluxDB keeps is the final aggregate."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    windows = 'tumbling = ["10s", "1m"]\nallowed_lateness = "2s"\nmax_age = "0s"'
    assert windows in config.read_text()
    config.write_text(config.read_text().replace(windows, 'tumbling = ["10s"]\nallowed_lateness = "4s"'))
    pipeline = Pipeline(config)
    pub = Publisher()
    # A window that starts from now on, so that both of its readings below are in it.
    start_ns = (time.time_ns() // (10 * S) + 1) * 10 * S
    time.sleep(max(0.0, (start_ns - time.time_ns()) / S) + 0.1)

    def send(device: str, at_ns: int, value: float) -> None:
        pub.send(f"fwtest/{unique}/{device}/temp", json.dumps({"ts": at_ns // 1_000_000, "v": value}).encode())
        pub.flush()

    send("d1", start_ns + 100_000_000, 1.0)
    send("d2", start_ns + 100_000_000, 5.0)
    end_ns = start_ns + 10 * S
    query = f'SELECT "count", "sum", "max" FROM "readings_agg" WHERE time = {start_ns} GROUP BY "device"'
    # Half the lateness at most: the reading below must still come within it.
    while not (rows := influx_rows(influx_db, query)) or len(rows) < 2:
        assert time.time_ns() < end_ns + 2 * S, "the window was not written within half its allowed lateness"
        time.sleep(0.05)
    seen_ns = time.time_ns()
    assert seen_ns >= end_ns, "a window was written before its end"
    assert {r["device"]: (r["count"], r["sum"]) for r in rows} == {"d1": (1, 1.0), "d2": (1, 5.0)}
    # Within the lateness (the window closes 4 s after its end, by this series' clock): not late.
    send("d1", start_ns + 9 * S, 3.0)
    pipeline.wait_for("windows_closed", 2, timeout=20)
    final = {"d1": (2, 4.0, 3.0), "d2": (1, 5.0, 5.0)}
    deadline = time.monotonic() + 10
    while (stored := {r["device"]: (r["count"], r["sum"], r["max"]) for r in influx_rows(influx_db, query)}) != final:
        assert time.monotonic() < deadline, f"InfluxDB keeps {stored}, not the final aggregates {final}"
        time.sleep(0.1)
    counters = pipeline.counters()
    assert (counters["windows_rewritten"], counters["late_readings"]) == (1, 0)
    pub.close()
    pipeline.stop()


def test_a_reading_stamped_minutes_ahead_leaves_the_devices_other_readings_in_their_windows(
    tmp_path: Path, unique: str, influx_db: str
) -> None:
    """A device sends live readings twice a second, and one of them is stamped 4 minutes ahead (its clock jumped,
    within max_future_skew). The readings around it fill their 10 s windows, and none is late: the reading ahead
    moves its series' clock to the present only."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    pipeline = Pipeline(config)
    pub = Publisher()
    start_ns = (time.time_ns() // (10 * S) + 1) * 10 * S
    time.sleep(max(0.0, (start_ns - time.time_ns()) / S) + 0.05)

    def send(at_ns: int, value: float) -> None:
        pub.send(f"fwtest/{unique}/d1/temp", json.dumps({"ts": at_ns // 1_000_000, "v": value}).encode())
        pub.flush()

    for i in range(40):
        at_ns = start_ns + i * S // 2
        time.sleep(max(0.0, (at_ns - time.time_ns()) / S))
        send(at_ns, 1.0)
        if i == 5:
            send(start_ns + 240 * S, 100.0)
    pipeline.wait_for("windows_closed", 2, timeout=30)
    query = (
        f'SELECT "count", "max" FROM "readings_agg" WHERE "window" = \'10s\' AND time >= {start_ns} '
        f"AND time < {start_ns + 20 * S}"
    )
    assert [(r["count"], r["max"]) for r in influx_rows(influx_db, query)] == [(20, 1.0), (20, 1.0)]
    assert pipeline.counters()["late_readings"] == 0
    assert influx_rows(influx_db, 'SELECT count("value") FROM "readings_late"') == []
    pub.close()
    pipeline.stop()


def test_windows_statistics_choose_the_fields_stored(tmp_path: Path, unique: str, influx_db: str) -> None:
    """`windows.statistics` and `quantiles`, as Telegraf's basicstats `stats`: InfluxDB gets those fields and
    no others, with the window's values."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    windows = 'tumbling = ["10s", "1m"]\nallowed_lateness = "2s"\nmax_age = "0s"'
    chosen = 'tumbling = ["1s"]\nallowed_lateness = "500ms"\nstatistics = ["count", "max", "stddev"]\nquantiles = [0.9]'
    config.write_text(config.read_text().replace(windows, chosen))
    pipeline = Pipeline(config)
    pub = Publisher()
    start_ns = (time.time_ns() // S + 1) * S
    time.sleep(max(0.0, (start_ns - time.time_ns()) / S) + 0.05)
    for offset_ms, value in ((100, 1.0), (200, 2.0), (300, 4.0)):
        at_ms = start_ns // 1_000_000 + offset_ms
        pub.send(f"fwtest/{unique}/d1/temp", json.dumps({"ts": at_ms, "v": value}).encode())
    pub.close()
    pipeline.wait_for("windows_closed", 1, timeout=20)
    query = f'SELECT * FROM "readings_agg" WHERE time = {start_ns}'
    deadline = time.monotonic() + 10
    while not (rows := influx_rows(influx_db, query)):
        assert time.monotonic() < deadline, "the window never reached InfluxDB"
        time.sleep(0.1)
    pipeline.stop()
    fields = influxql(influx_db, 'SHOW FIELD KEYS FROM "readings_agg"')["series"][0]["values"]
    assert sorted(name for name, _ in fields) == ["count", "max", "p90", "stddev"]
    (row,) = rows
    assert (row["count"], row["max"]) == (3, 4.0)
    assert math.isclose(row["p90"], 3.6) and math.isclose(row["stddev"], math.sqrt(7 / 3))
