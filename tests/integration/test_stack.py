"""The local stack's servers are real and reachable the way fleetwatch uses them."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest
from elasticsearch import Elasticsearch
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import (
    ES_URL,
    INFLUX_PASSWORD_FILE,
    INFLUX_URL,
    MQTT_AUTH_PORT,
    MQTT_HOST,
    MQTT_PORT,
    VM_URL,
    http,
    influx_headers,
    influx_rows,
    mqtt_password,
    vm_export,
)


class Subscriber:
    """A paho client collecting messages of one filter."""

    def __init__(self, port: int, topic: str, user: str | None = None, password: str | None = None) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.subscribed = threading.Event()
        self.granted: list[int] = []
        self.connect_reason: str | None = None
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        if user:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.topic = topic
        self.client.connect(MQTT_HOST, port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        self.connect_reason = str(reason)
        self.connected.set()
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reasons, props) -> None:  # type: ignore[no-untyped-def]
        self.granted = [r.value for r in reasons]
        self.subscribed.set()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[paho.MQTTMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_qos1(
    port: int, topic: str, payloads: list[bytes], user: str | None = None, password: str | None = None
) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    if user:
        client.username_pw_set(user, password)
    client.connect(MQTT_HOST, port)
    client.loop_start()
    infos = [client.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(10)
        assert info.is_published()
    client.disconnect()
    client.loop_stop()


def test_mosquitto_qos1_round_trip_on_the_plain_listener(unique: str) -> None:
    topic = f"fwtest/{unique}/a"
    sub = Subscriber(MQTT_PORT, topic)
    assert sub.subscribed.wait(5) and sub.granted == [1]
    payloads = [f"{i}".encode() for i in range(500)]
    publish_qos1(MQTT_PORT, topic, payloads)
    got = sub.wait_for(500)
    sub.close()
    assert [m.payload for m in got] == payloads
    assert {m.qos for m in got} == {1}


def test_mosquitto_authenticated_listener_accepts_the_right_user(unique: str) -> None:
    topic = f"fwtest/{unique}/auth"
    sub = Subscriber(MQTT_AUTH_PORT, topic, "fleetwatch", mqtt_password("fleetwatch"))
    assert sub.subscribed.wait(5) and sub.granted == [1]
    publish_qos1(MQTT_AUTH_PORT, topic, [b"21.5", b"22.0"], "device", mqtt_password("device"))
    got = sub.wait_for(2)
    sub.close()
    assert [m.payload for m in got] == [b"21.5", b"22.0"]


@pytest.mark.parametrize("user,password", [("fleetwatch", "wrong-password"), (None, None)])
def test_mosquitto_authenticated_listener_rejects_bad_credentials(user: str | None, password: str | None) -> None:
    sub = Subscriber(MQTT_AUTH_PORT, "fwtest/x", user, password)
    assert sub.connected.wait(5)
    sub.close()
    assert sub.connect_reason in ("Not authorized", "Bad user name or password")


def test_mosquitto_acl_keeps_a_device_from_reading_and_from_writing_elsewhere(unique: str) -> None:
    # The device user may only write sensors/# and fwtest/#: what it publishes elsewhere never arrives.
    watcher = Subscriber(MQTT_AUTH_PORT, f"alerts/{unique}", "fleetwatch", mqtt_password("fleetwatch"))
    assert watcher.subscribed.wait(5)
    publish_qos1(MQTT_AUTH_PORT, f"alerts/{unique}", [b"forged"], "device", mqtt_password("device"))
    # And it cannot read: its subscription is granted, but nothing is delivered to it.
    spy = Subscriber(MQTT_AUTH_PORT, f"fwtest/{unique}/spy", "device", mqtt_password("device"))
    assert spy.subscribed.wait(5)
    publish_qos1(MQTT_AUTH_PORT, f"fwtest/{unique}/spy", [b"secret"], "fleetwatch", mqtt_password("fleetwatch"))
    # Control message proves delivery works for the allowed reader within the wait.
    control = Subscriber(MQTT_AUTH_PORT, f"fwtest/{unique}/spy", "fleetwatch", mqtt_password("fleetwatch"))
    assert control.subscribed.wait(5)
    publish_qos1(MQTT_AUTH_PORT, f"fwtest/{unique}/spy", [b"control"], "fleetwatch", mqtt_password("fleetwatch"))
    assert [m.payload for m in control.wait_for(1)] == [b"control"]
    time.sleep(0.5)
    for s in (watcher, spy, control):
        s.close()
    assert watcher.messages == []
    assert spy.messages == []


def test_influxdb_v1_write_and_query(influx_db: str) -> None:
    body = "\n".join(
        f"probe,device=d{i % 3} value={i}.5 {1_700_000_000_000_000_000 + i * 1_000_000_000}" for i in range(30)
    )
    resp = http.request(
        "POST", f"{INFLUX_URL}/write?db={influx_db}&precision=ns", body=body.encode(), headers=influx_headers()
    )
    assert resp.status == 204, resp.data
    rows = influx_rows(influx_db, 'SELECT count("value"), sum("value") FROM "probe" GROUP BY "device"')
    assert sorted((r["device"], r["count"], r["sum"]) for r in rows) == [
        ("d0", 10, sum(i + 0.5 for i in range(0, 30, 3))),
        ("d1", 10, sum(i + 0.5 for i in range(1, 30, 3))),
        ("d2", 10, sum(i + 0.5 for i in range(2, 30, 3))),
    ]


@pytest.mark.parametrize("credentials", ["none", "wrong password", "unknown user"])
def test_influxdb_refuses_writes_and_queries_without_valid_credentials(influx_db: str, credentials: str) -> None:
    headers = {
        "none": {},
        "wrong password": influx_headers(password="not-" + INFLUX_PASSWORD_FILE.read_text().strip()),
        "unknown user": influx_headers(user=f"{influx_db}-nobody", password="x"),
    }[credentials]
    write = http.request(
        "POST",
        f"{INFLUX_URL}/write?db={influx_db}&precision=ns",
        body=b"probe value=1 1700000000000000000",
        headers=headers,
    )
    query = http.request(
        "GET", f"{INFLUX_URL}/query", fields={"db": influx_db, "q": "SHOW MEASUREMENTS"}, headers=headers
    )
    assert (write.status, query.status) == (401, 401), (write.data, query.data)
    # Nothing was stored by the refused write, and the health check needs no credentials.
    assert influx_rows(influx_db, "SELECT * FROM probe") == []
    assert http.request("GET", f"{INFLUX_URL}/ping").status == 204


def test_influxdb_admin_password_is_generated_and_private() -> None:
    password = INFLUX_PASSWORD_FILE.read_text().strip()
    assert len(password) >= 20 and password.isalnum()
    assert INFLUX_PASSWORD_FILE.stat().st_mode & 0o777 == 0o600


def test_victoriametrics_accepts_influxdb_client_v2_writes(vm_measurement: str) -> None:
    ts = int(time.time()) * 1_000_000_000
    with InfluxDBClient(url=VM_URL, token="unused", org="fleetwatch") as client:
        api = client.write_api(write_options=SYNCHRONOUS)
        api.write(
            bucket="fleetwatch",
            record=[
                f"{vm_measurement},device=d1 value=1.5,count=3i {ts}",
                f"{vm_measurement},device=d2 value=2.5,count=4i {ts}",
            ],
        )
    deadline = time.monotonic() + 30  # VictoriaMetrics makes new samples searchable within seconds
    series = vm_export(vm_measurement)
    while len(series) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
        series = vm_export(vm_measurement)
    got = sorted((s["metric"]["__name__"], s["metric"]["device"], s["values"][0], s["timestamps"][0]) for s in series)
    ms = ts // 1_000_000
    assert got == [
        (f"{vm_measurement}_count", "d1", 3, ms),
        (f"{vm_measurement}_count", "d2", 4, ms),
        (f"{vm_measurement}_value", "d1", 1.5, ms),
        (f"{vm_measurement}_value", "d2", 2.5, ms),
    ]


def test_elasticsearch_index_and_search(es_index: str) -> None:
    es = Elasticsearch(ES_URL)
    # The integ-test distribution has no "GET /" handler; the node info carries the version.
    versions = {n["version"] for n in es.nodes.info()["nodes"].values()}
    assert len(versions) == 1 and versions.pop().startswith("8.")
    for i in range(5):
        es.index(
            index=es_index,
            id=f"doc{i}",
            document={"message": f"line {i} error" if i % 2 else f"line {i}", "@timestamp": f"2026-01-01T00:00:0{i}Z"},
        )
    es.indices.refresh(index=es_index)
    hits = es.search(index=es_index, query={"match": {"message": "error"}})["hits"]
    assert hits["total"]["value"] == 2
    assert sorted(h["_id"] for h in hits["hits"]) == ["doc1", "doc3"]
