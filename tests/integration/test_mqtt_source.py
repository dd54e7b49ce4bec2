"""collectors/mqtt/source against the real Mosquitto: TLS (server and client certificates), credentials, and
MQTT's largest topics and payloads at the configured limit."""

from __future__ import annotations

import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collectors.mqtt.parse import MessageBatch, MQTTParser
from collectors.mqtt.source import MQTTPartition, MQTTSource
from fleetwatch.config import MQTTConfig, WindowsConfig
from fleetwatch.record import parse_series
from tests.conftest import MQTT_AUTH_PORT, MQTT_HOST, MQTT_PORT, STACK_DIR, mqtt_password

TLS_DIR = STACK_DIR / "mosquitto" / "tls"


def source_config(unique: str, port: int, **extra: object) -> MQTTConfig:
    return MQTTConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "client_id": unique[:16],
            "shared_group": unique,
            "persistent_session": False,
            "subscriptions": [{"topic": f"fwtest/{unique}/#", "metric": "v"}],
            **extra,
        }
    )


def read_for(partition: MQTTPartition, seconds: float) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for batch in partition.next_batch():
            got += batch.messages
        time.sleep(0.01)
    return got


def publish(topic: str, payloads: list[bytes]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect(MQTT_HOST, MQTT_PORT)
    client.loop_start()
    for info in [client.publish(topic, p, qos=1) for p in payloads]:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def received_over(cfg: MQTTConfig, unique: str) -> list[tuple[str, bytes]]:
    partition = MQTTSource(cfg).build_part("mqtt", "mqtt-0", None)
    try:
        read_for(partition, 1.5)  # connect and subscribe
        publish(f"fwtest/{unique}/a", [b"1", b"2", b"3"])
        return read_for(partition, 1.5)
    finally:
        partition.close()


def test_tls_with_the_servers_ca(unique: str) -> None:
    cfg = source_config(unique, 8883, tls={"enabled": True, "ca_file": str(TLS_DIR / "ca.crt")})
    assert received_over(cfg, unique) == [(f"fwtest/{unique}/a", p) for p in (b"1", b"2", b"3")]


def test_tls_listener_that_requires_a_client_certificate(unique: str) -> None:
    with_cert = source_config(
        unique,
        8884,
        tls={
            "enabled": True,
            "ca_file": str(TLS_DIR / "ca.crt"),
            "cert_file": str(TLS_DIR / "client.crt"),
            "key_file": str(TLS_DIR / "client.key"),
        },
    )
    assert len(received_over(with_cert, unique)) == 3
    without = source_config(unique + "x", 8884, tls={"enabled": True, "ca_file": str(TLS_DIR / "ca.crt")})
    assert received_over(without, unique + "x") == []


def test_username_and_password_on_the_authenticated_listener(unique: str) -> None:
    good = source_config(unique, MQTT_AUTH_PORT, username="fleetwatch", password=mqtt_password("fleetwatch"))
    assert len(received_over(good, unique)) == 3
    bad = source_config(unique + "y", MQTT_AUTH_PORT, username="fleetwatch", password="wrong")
    assert received_over(bad, unique + "y") == []


def test_reconnects_after_a_broker_restart_and_keeps_its_session(unique: str) -> None:
    import subprocess

    from tests.conftest import REPO

    cfg = source_config(
        unique,
        MQTT_PORT,
        persistent_session=True,
        reconnect_max_delay="1s",
        subscriptions=[{"topic": f"fwtest/{unique}/#", "metric": "v", "qos": 1}],
    )
    partition = MQTTSource(cfg).build_part("mqtt", "mqtt-0", None)
    try:
        read_for(partition, 1.0)
        publish(f"fwtest/{unique}/a", [b"before"])
        assert [m[1] for m in read_for(partition, 1.0)] == [b"before"]
        subprocess.run([str(REPO / "scripts" / "stack.sh"), "restart", "mosquitto"], check=True)
        # The broker restored the session from its persistence file: no resubscribe needed for delivery.
        assert read_for(partition, 0.5) == []  # reading while reconnecting does not raise or block
        publish(f"fwtest/{unique}/a", [b"after"])
        assert [m[1] for m in read_for(partition, 4.0)] == [b"after"]
    finally:
        partition.close()


def test_a_refused_connection_is_retried_with_backoff_not_in_a_tight_loop(
    unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad credentials: the broker answers every CONNECT with a refusal. Before, the source reconnected at
    once, about 500 times a second, each logged as an ERROR (issue 15 item 10)."""
    cfg = source_config(
        unique,
        MQTT_AUTH_PORT,
        username="fleetwatch",
        password="wrong",
        reconnect_min_delay="0.25s",
        reconnect_max_delay="2s",
    )
    partition = MQTTSource(cfg).build_part("mqtt", "mqtt-0", None)
    try:
        with caplog.at_level("ERROR", logger="collectors.mqtt.source"):
            assert read_for(partition, 4.0) == []
    finally:
        partition.close()
    refusals = [r for r in caplog.records if "refused connection" in r.getMessage()]
    # 0.25 + 0.5 + 1 + 2 s of waiting: at most 5 attempts in 4 s, at least 2 (it keeps trying).
    assert 2 <= len(refusals) <= 5, [r.getMessage() for r in refusals]


def test_a_65535_byte_topic_and_payloads_at_the_limit_through_the_broker(unique: str) -> None:
    """What a careless client can send within MQTT's own limits reaches the parser whole: a topic of 65,535
    bytes is read in full (its series key would pass what InfluxDB takes for an aggregate: a dead letter); a
    payload of exactly max_payload_bytes is read and one byte more is a dead letter."""
    cfg = source_config(
        unique,
        MQTT_PORT,
        max_payload_bytes=4_096,
        subscriptions=[{"topic": f"fwtest/{unique}/#", "template": f"fwtest/{unique}/{{device}}/{{metric}}"}],
    )
    prefix = f"fwtest/{unique}/"
    device = "d" * (65_535 - len(prefix) - len("/temp"))
    long_topic = f"{prefix}{device}/temp"
    assert len(long_topic.encode()) == 65_535
    at_limit = b"21.5" + b" " * 4_092
    partition = MQTTSource(cfg).build_part("mqtt", "mqtt-0", None)
    try:
        read_for(partition, 1.5)  # connect and subscribe
        publish(long_topic, [b"1.5"])
        publish(f"{prefix}d1/temp", [at_limit, at_limit + b" "])
        got = read_for(partition, 1.5)
    finally:
        partition.close()
    assert got == [(long_topic, b"1.5"), (f"{prefix}d1/temp", at_limit), (f"{prefix}d1/temp", at_limit + b" ")]
    parsed = MQTTParser(cfg, WindowsConfig()).parse(MessageBatch(time.time_ns(), got))
    assert [(parse_series(r.series)[1]["device"], r.value) for r in parsed.readings] == [("d1", 21.5)]
    assert [(d.reason, d.raw) for d in parsed.dead_letters] == [
        ("series_too_long", b"1.5"),
        ("oversized", at_limit),  # (its first max_payload_bytes)
    ]


def test_another_client_with_the_same_client_id_is_named_as_a_likely_cause(
    unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two clients with one client id (two fleetwatch processes started with the same config) make the broker
    close each connection as the other connects. This Mosquitto (2.0.11) sends no reason, at either protocol
    version: after three such closes in a row the log names the likely cause, and each is counted."""
    from flows import health

    cfg = source_config(unique, MQTT_PORT, reconnect_min_delay="0.1s", reconnect_max_delay="0.2s")
    partition = MQTTSource(cfg).build_part("mqtt", "mqtt-0", None)
    before = health.counters().mqtt_disconnects
    try:
        read_for(partition, 1.0)
        with caplog.at_level("ERROR", logger="collectors.mqtt.source"):
            for _ in range(8):  # the other client connects again and again, as a second process would
                intruder = paho.Client(CallbackAPIVersion.VERSION2, client_id=partition.client_id)
                intruder.connect(MQTT_HOST, MQTT_PORT)
                intruder.loop_start()
                read_for(partition, 0.3)
                intruder.loop_stop()
                intruder.disconnect()
    finally:
        partition.close()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("another client connecting with this client id" in e for e in errors), errors
    assert health.counters().mqtt_disconnects >= before + 3
