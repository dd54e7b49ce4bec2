"""Alerts end to end: readings over the real Mosquitto -> `fleetwatch run` -> rule state machines ->
notifications over MQTT (retained) and a webhook (a real local HTTP server), history in Elasticsearch and
InfluxDB; then kill -9 and a restart with recovery: no notification twice."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ES_URL, INFLUX_AUTH_TOML, INFLUX_URL, MQTT_HOST, MQTT_PORT, es_docs, influx_rows
from tests.integration.harness import Pipeline
from tests.integration.test_readings_pipeline import Publisher

S = 1_000_000_000
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class Webhook:
    """A real HTTP server on a free port that records what it receives."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Subscriber:
    def __init__(self, topic: str) -> None:
        self.messages: list[tuple[str, dict, bool]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload), bool(m.retain)))
        self.client.connect(MQTT_HOST, MQTT_PORT)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def write_config(tmp_path: Path, unique: str, db: str, hook: str) -> Path:
    path = tmp_path / "fleetwatch.toml"
    path.write_text(f"""
[mqtt]
client_id = "{unique}"
shared_group = "{unique}"
[[mqtt.subscriptions]]
topic = "fwtest/{unique}/+/+"
qos = 1
template = "fwtest/+/{{device}}/+"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"

[windows]
tumbling = ["10s"]
allowed_lateness = "2s"
max_age = "0s"

[flow]
# Long epochs: the kill below lands before the epoch with the transitions commits, so the restart replays it.
epoch_interval = "10s"

[recovery]
dir = "{tmp_path / "recovery"}"

[retention]
# These queries read the database's default policy: one policy for everything.
enabled = false

[influxdb]
{INFLUX_AUTH_TOML}
url = "{INFLUX_URL}"
database = "{db}"
flush_interval = "100ms"

[elasticsearch]
hosts = ["{ES_URL}"]
index_prefix = "{unique}"
flush_interval = "100ms"

[alerts]
mqtt_topic_prefix = "fwalerts/{unique}"
journal = "{tmp_path / "alerts-sent.jsonl"}"

[[alerts.webhooks]]
url = "{hook}"

[[alerts.rules]]
name = "hot"
target = "reading"
metric = "temp"
condition = ">"
warning = 30.0
critical = 40.0
warning_clear = 28.0
summary = "{{device}} is {{value}} C"
""")
    return path


def send(pub: Publisher, unique: str, device: str, at_s: int, value: float) -> None:
    # A JSON payload's field names are the metrics.
    pub.send(f"fwtest/{unique}/{device}/sensor", json.dumps({"ts": T0_MS + at_s * 1000, "temp": value}).encode())


def wait_until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_threshold_alert_notifies_every_channel_once_across_a_kill(
    tmp_path: Path, unique: str, influx_db: str, es_index: str, webhook: Webhook
) -> None:
    config = write_config(tmp_path, unique, influx_db, webhook.url)
    live = Subscriber(f"fwalerts/{unique}/#")
    pipeline = Pipeline(config)
    pub = Publisher()
    # 35 fires warning, 45 escalates, 38 steps back to warning (below 40), 29 stays warning (hysteresis:
    # it clears below 28 only), 27 resolves. d2 never crosses a threshold.
    for at_s, value in enumerate([20.0, 35.0, 45.0, 38.0, 29.0, 31.0, 29.5, 27.0]):
        send(pub, unique, "d1", at_s, value)
        send(pub, unique, "d2", at_s, 25.0)
    pub.flush()
    wait_until(lambda: len(webhook.bodies) >= 4 and len(live.messages) >= 4)
    time.sleep(0.5)  # delivered and journalled (a crash between the two is the one at-least-once window)
    # Killed before the epoch with the transitions commits: the broker redelivers its readings, the engine
    # emits the same transitions again, and the journal keeps them from going out twice.
    pipeline.kill()
    pipeline = Pipeline(config)
    pipeline.wait_for("messages_in", 16)
    send(pub, unique, "d1", 20, 26.0)
    pub.flush()
    pipeline.wait_for("messages_in", 17)
    time.sleep(2.0)
    pipeline.stop()
    pub.close()
    live.close()

    expected = [
        ("firing", "warning", 35.0),
        ("firing", "critical", 45.0),
        ("firing", "warning", 38.0),
        ("resolved", "warning", 27.0),
    ]
    assert [(b["state"], b["severity"], b["value"]) for b in webhook.bodies] == expected
    assert webhook.bodies[0]["summary"] == "d1 is 35.0 C" and webhook.bodies[0]["tags"]["device"] == "d1"
    assert len({b["notification_id"] for b in webhook.bodies}) == 4

    topic = f"fwalerts/{unique}/hot/readings/d1/temp"
    assert [(t, m["state"], m["severity"]) for t, m, _ in live.messages] == [(topic, s, sev) for s, sev, _ in expected]
    # A subscriber arriving later gets the current state, retained.
    late = Subscriber(f"fwalerts/{unique}/#")
    wait_until(lambda: late.messages)
    late.close()
    assert [(t, m["state"], retained) for t, m, retained in late.messages] == [(topic, "resolved", True)]

    history = es_docs(f"{unique}-alerts*")
    assert sorted((d["state"], d["severity"], d["value"]) for d in history) == sorted(expected)
    rows = influx_rows(influx_db, 'SELECT "value", "firing" FROM "alerts" WHERE "rule" = \'hot\'')
    assert sorted((r["value"], r["firing"]) for r in rows) == [(27.0, 0), (35.0, 1), (38.0, 1), (45.0, 1)]

    # Clear the retained state this test left on the broker.
    cleaner = paho.Client(CallbackAPIVersion.VERSION2)
    cleaner.connect(MQTT_HOST, MQTT_PORT)
    cleaner.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    cleaner.disconnect()


def test_a_fleets_alert_states_come_back_from_the_alert_state_log_after_a_kill(
    tmp_path: Path, unique: str, influx_db: str, es_index: str, webhook: Webhook
) -> None:
    """1,200 devices under one rule: more states than a snapshot carries itself, so they go to the alert state
    log. After kill -9 the firing alert must still be firing: a reading in its warning band sends nothing, and
    the next one below the clear threshold resolves it. Had the state been lost, the first would fire again."""
    config = write_config(tmp_path, unique, influx_db, webhook.url)
    config.write_text(config.read_text().replace('epoch_interval = "10s"', 'epoch_interval = "1s"'))
    pipeline = Pipeline(config)
    pub = Publisher()
    for device in range(1200):
        send(pub, unique, f"d{device}", 0, 20.0)
    send(pub, unique, "d0", 1, 35.0)
    pub.flush()
    wait_until(lambda: len(webhook.bodies) >= 1)
    pipeline.wait_for("messages_in", 1201)
    time.sleep(3.0)  # epochs with the firing state commit
    logs = list((tmp_path / "recovery" / "alert-log").iterdir())
    assert logs, "the states went to the alert state log"
    pipeline.kill()

    pipeline = Pipeline(config)
    send(pub, unique, "d0", 2, 38.0)
    send(pub, unique, "d0", 3, 27.0)
    pub.flush()
    pipeline.wait_for("messages_in", 2)
    wait_until(lambda: len(webhook.bodies) >= 2)
    time.sleep(1.0)
    pipeline.stop()
    pub.close()

    assert [(b["state"], b["severity"], b["value"]) for b in webhook.bodies] == [
        ("firing", "warning", 35.0),
        ("resolved", "warning", 27.0),
    ]
    cleaner = paho.Client(CallbackAPIVersion.VERSION2)
    cleaner.connect(MQTT_HOST, MQTT_PORT)
    cleaner.publish(f"fwalerts/{unique}/hot/readings/d0/temp", b"", qos=1, retain=True).wait_for_publish(5)
    cleaner.disconnect()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_window_rule_fires_on_the_closed_window_beside_a_reading_rule(
    tmp_path: Path, unique: str, influx_db: str, es_index: str, webhook: Webhook, workers: int
) -> None:
    """A rule on the 10 s windows' max and the reading rule, together: each notifies once, the window rule when
    its window closes (event time past its end plus the allowed lateness), on the window's InfluxDB series and
    at its start. With two workers the readings of a series go to the alert step's worker, the windows' results
    are already there, and a series' states meet one logic."""
    config = write_config(tmp_path, unique, influx_db, webhook.url)
    config.write_text(
        config.read_text()
        + """
[[alerts.rules]]
name = "hot_window"
target = "window"
window = "10s"
stat = "max"
metric = "temp"
condition = ">"
warning = 33.0
"""
    )
    pipeline = Pipeline(config, workers=workers)
    pub = Publisher()
    for device in ("d1", "d2", "d3", "d4"):
        for at_s, value in enumerate([20.0, 25.0, 22.0]):
            send(pub, unique, device, at_s, value)
    send(pub, unique, "d3", 3, 35.0)  # the reading rule fires (over 30), and d3's window's max is over 33
    pub.flush()
    # (two workers each take some of the messages: the later ones must not overtake these)
    pipeline.wait_for("messages_in", 13)
    for device in ("d1", "d2", "d3", "d4"):
        # Event time past 10 s + 2 s: the first windows close. d3's reading resolves the reading rule.
        send(pub, unique, device, 20, 21.0)
    pub.flush()
    wait_until(lambda: len(webhook.bodies) >= 3)
    time.sleep(1.0)
    pipeline.stop()
    pub.close()

    fired = sorted((b["rule"], b["state"], b["series"], b["value"], b["at"]) for b in webhook.bodies)
    window_start = "2026-01-01T00:00:00.000000Z"
    assert [f[:4] for f in fired] == [
        ("hot", "firing", "readings,device=d3,metric=temp", 35.0),
        ("hot", "resolved", "readings,device=d3,metric=temp", 21.0),
        ("hot_window", "firing", "readings_agg,device=d3,metric=temp,window=10s", 35.0),
    ]
    assert fired[2][4] == window_start
    cleaner = paho.Client(CallbackAPIVersion.VERSION2)
    cleaner.connect(MQTT_HOST, MQTT_PORT)
    for retained in ("hot/readings/d3/temp", "hot_window/readings_agg/d3/temp"):
        cleaner.publish(f"fwalerts/{unique}/{retained}", b"", qos=1, retain=True).wait_for_publish(5)
    cleaner.disconnect()
