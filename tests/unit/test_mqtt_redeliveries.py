"""collectors/mqtt/source: after a broker disconnect, a redelivery (DUP) of a message fleetwatch counted and
acknowledged is dropped, because the broker may have lost the PUBACK; anything else with a remembered packet id
is counted. The broker is the fake one of test_mqtt_protocol_errors: the first connection ends as soon as the
client's PUBACKs arrive, as if the broker had stopped before reading them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from collectors.mqtt import source
from collectors.mqtt.source import MQTTSource
from fleetwatch.config import MQTTConfig, SubscriptionConfig
from flows import health
from tests.unit.mqtt_packets import varint
from tests.unit.test_mqtt_protocol_errors import FakeBroker, drive


def publish(topic: bytes, payload: bytes, mid: int, dup: bool = False) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + payload
    return bytes([0x3A if dup else 0x32]) + varint(len(body)) + body


@pytest.mark.parametrize(
    ("reconnect_s", "window_s"),
    [(0.1, source._DEDUP_WINDOW), (0.6, 0.2)],
    ids=["reconnect at once", "reconnect after more than the window"],
)
def test_only_a_redelivery_of_an_acknowledged_message_is_dropped(
    unique: str, reconnect_s: float, window_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window in which redeliveries are looked for starts when the broker accepts the new connection: a
    broker that takes long to come back (or a paused process) must not have them counted."""
    monkeypatch.setattr(source, "_DEDUP_WINDOW", window_s)
    first = publish(b"t/a", b"1", 1) + publish(b"t/b", b"2", 2) + publish(b"t/c", b"3", 3)
    second = (
        publish(b"t/a", b"1", 1, dup=True)  # the same message again: counted already, dropped
        + publish(b"t/b", b"20", 2, dup=True)  # same packet id, other content: a message never counted
        + publish(b"t/d", b"4", 3)  # a new message with id 3: the broker had the PUBACK of the old one
        + publish(b"t/c", b"3", 3, dup=True)  # so this one, though it looks like the old id 3, is counted
    )
    broker = FakeBroker([first, second], v5=False, close_after_pubacks=1)
    cfg = MQTTConfig(
        host="127.0.0.1",
        port=broker.port,
        client_id=unique,
        reconnect_min_delay=timedelta(seconds=reconnect_s),
        subscriptions=[SubscriptionConfig(topic="t/#", metric="v", qos=1)],
    )
    dropped_before = health.counters().mqtt_redeliveries_dropped
    part = MQTTSource(cfg).build_part("mqtt", "mqtt-0", None)  # without recovery: acked at the next read
    try:
        messages = drive(part, lambda: len(broker.accepted) == 2)
        messages += drive(part, lambda: len(messages) >= 3 + 3, timeout=3.0)
        messages += drive(part, lambda: False, timeout=0.5)  # past the window: nothing is forgotten too early
    finally:
        part.close()
        broker.close()
    assert messages == [("t/a", b"1"), ("t/b", b"2"), ("t/c", b"3"), ("t/b", b"20"), ("t/d", b"4"), ("t/c", b"3")]
    assert health.counters().mqtt_redeliveries_dropped == dropped_before + 1
