"""collectors/mqtt/frames: PUBLISH frames parsed from a byte buffer, as the source reads them."""

from __future__ import annotations

import re

import pytest

from collectors.mqtt.frames import LIMIT, NEED_DATA, OTHER_PACKET, Ack, MalformedPacket, content_key, read_publishes
from tests.unit.mqtt_packets import varint


def publish(topic: str, payload: bytes, qos: int = 0, mid: int = 0, props: bytes | None = None) -> bytes:
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode()
    if qos:
        body += mid.to_bytes(2, "big")
    if props is not None:
        body += varint(len(props)) + props
    body += payload
    return bytes([0x30 | (qos << 1)]) + varint(len(body)) + body


def test_qos0_and_qos1_publishes_with_long_payloads() -> None:
    big = b"x" * 70_000  # three-byte remaining length
    buf = publish("a/b", b"1.5") + publish("c", big, qos=1, mid=513) + publish("d/é", b"2", qos=1, mid=7)
    messages: list[tuple[str, bytes]] = []
    acks: list[Ack] = []
    pos, status = read_publishes(buf, 0, False, messages, acks, 100)
    assert (pos, status) == (len(buf), NEED_DATA)
    assert messages == [("a/b", b"1.5"), ("c", big), ("d/é", b"2")]
    assert acks == [(513, 1, content_key("c", big)), (7, 1, content_key("d/é", b"2"))]


def test_mqtt5_properties_are_skipped() -> None:
    props = bytes([0x01, 0x01, 0x03, 0x00, 0x04]) + b"json"  # payload format indicator, content type
    buf = publish("s/t", b"{}", qos=1, mid=1, props=props) + publish("s/u", b"7", props=b"")
    messages: list[tuple[str, bytes]] = []
    acks: list[Ack] = []
    read_publishes(buf, 0, True, messages, acks, 100)
    assert messages == [("s/t", b"{}"), ("s/u", b"7")]


@pytest.mark.parametrize("cut", [1, 2, 5, 9])
def test_an_incomplete_packet_is_left_for_the_next_read(cut: int) -> None:
    second = publish("topic/two", b"22.5", qos=1, mid=9)
    buf = publish("t1", b"1") + second[:cut]
    messages: list[tuple[str, bytes]] = []
    acks: list[Ack] = []
    pos, status = read_publishes(buf, 0, False, messages, acks, 100)
    assert status == NEED_DATA and messages == [("t1", b"1")] and acks == []
    rest = buf[pos:] + second[cut:]
    pos, status = read_publishes(rest, 0, False, messages, acks, 100)
    assert messages[-1] == ("topic/two", b"22.5") and pos == len(rest)
    assert acks == [(9, 1, content_key("topic/two", b"22.5"))]


def test_other_packets_and_qos2_are_left_to_paho() -> None:
    pingresp = bytes([0xD0, 0x00])
    qos2 = publish("q2", b"1", qos=2, mid=3)
    for other in (pingresp, qos2):
        messages: list[tuple[str, bytes]] = []
        buf = publish("t", b"1") + other + publish("u", b"2")
        pos, status = read_publishes(buf, 0, False, messages, [], 100)
        assert status == OTHER_PACKET and messages == [("t", b"1")] and buf[pos:].startswith(other)


def test_stops_at_the_limit() -> None:
    buf = b"".join(publish(f"t{i}", b"1") for i in range(10))
    messages: list[tuple[str, bytes]] = []
    pos, status = read_publishes(buf, 0, False, messages, [], 4)
    assert status == LIMIT and len(messages) == 4
    assert read_publishes(buf, pos, False, messages, [], 100)[1] == NEED_DATA and len(messages) == 10


def raw(first: int, body: bytes) -> bytes:
    """A packet with this first byte and body, whatever the body says about its own lengths."""
    return bytes([first]) + varint(len(body)) + body


TOPIC_A = b"\x00\x01a"  # topic length 1, "a"

# (case, first byte, body, MQTT 5, what the reason says): every malformed PUBLISH a broker could send.
MALFORMED = [
    ("remaining length 0", 0x30, b"", False, "remaining length 0"),
    ("remaining length 1", 0x30, b"\x00", True, "remaining length 1"),
    ("topic length past the end", 0x30, b"\x00\x09abc", False, "topic length 9 runs past the end"),
    ("topic length past the end, QoS 1", 0x32, b"\x00\x05ab\x00\x01", False, "topic length 5 runs past"),
    ("QoS 1 without a packet id", 0x32, TOPIC_A, False, "without room for its packet id"),
    ("QoS 1 with half a packet id", 0x32, TOPIC_A + b"\x00", True, "without room for its packet id"),
    ("QoS 1 with packet id 0", 0x32, TOPIC_A + b"\x00\x00x", False, "packet id 0"),
    ("MQTT 5 without a property length", 0x30, TOPIC_A, True, "property length missing or running past"),
    ("MQTT 5 property length past the end", 0x30, TOPIC_A + b"\x05\x01\x01", True, "property length missing"),
    ("MQTT 5 property length past the end, QoS 1", 0x32, TOPIC_A + b"\x00\x07\x03", True, "property length"),
    ("MQTT 5 property length cut by the packet end", 0x30, TOPIC_A + b"\x80", True, "property length missing"),
    ("MQTT 5 property length of 5 bytes", 0x30, TOPIC_A + b"\xff\xff\xff\xff\x01", True, "longer than 4 bytes"),
    ("zero-length topic", 0x30, b"\x00\x0012.5", False, "zero-length topic"),
    ("zero-length topic, MQTT 5", 0x30, b"\x00\x00\x0012.5", True, "zero-length topic"),
    ("zero-length topic with a topic alias", 0x30, b"\x00\x00\x03\x23\x00\x01x", True, "zero-length topic"),
    ("topic not UTF-8", 0x30, b"\x00\x02\xc3\x28x", False, "not well-formed UTF-8"),
    ("topic with a UTF-16 surrogate", 0x30, b"\x00\x03\xed\xa0\x80x", False, "not well-formed UTF-8"),
    ("topic with an overlong encoding", 0x30, b"\x00\x02\xc0\xafx", False, "not well-formed UTF-8"),
    ("topic cut inside a character", 0x32, b"\x00\x01\xc3\xa9\x01", False, "not well-formed UTF-8"),
    ("topic with U+0000", 0x30, b"\x00\x03a\x00bx", False, "U+0000"),
    ("QoS 3", 0x36, TOPIC_A + b"\x00\x01x", False, "QoS 3"),
    ("QoS 3, retained, DUP", 0x3F, TOPIC_A + b"\x00\x01\x00x", True, "QoS 3"),
]


@pytest.mark.parametrize(("first", "body", "v5", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_publish_is_one_exception_with_the_reason(first: int, body: bytes, v5: bool, reason: str) -> None:
    """MQTT makes each of these a protocol error: the source closes the connection on MalformedPacket. The
    packets before the bad one are collected, each with its ack; nothing of the bad one is."""
    before = publish("ok", b"1", qos=1, mid=5, props=b"" if v5 else None)
    messages: list[tuple[str, bytes]] = []
    acks: list[Ack] = []
    with pytest.raises(MalformedPacket, match=re.escape(reason)) as err:
        read_publishes(
            before + raw(first, body) + publish("t", b"2", props=b"" if v5 else None), 0, v5, messages, acks, 9
        )
    assert err.value.reason == str(err.value)
    assert messages == [("ok", b"1")] and acks == [(5, 1, content_key("ok", b"1"))]


def test_a_malformed_length_is_an_error() -> None:
    with pytest.raises(MalformedPacket, match="remaining length longer than 4 bytes"):
        read_publishes(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), 0, False, [], [], 10)


def test_malformed_packet_is_a_value_error() -> None:
    """Callers that caught ValueError before keep working."""
    assert issubclass(MalformedPacket, ValueError)


def test_topics_at_the_edges_of_well_formed_utf8_are_kept() -> None:
    """Four-byte characters, U+FEFF (which MQTT says must not be stripped), the last code point, wildcards
    and spaces are valid in a topic name as paho reads it."""
    topics = ["\U0001f600/t", "\ufeffa", "\U0010ffff", "a b/c", "é" * 300]
    buf = b"".join(publish(t, b"1", qos=1, mid=i + 1) for i, t in enumerate(topics))
    messages: list[tuple[str, bytes]] = []
    read_publishes(buf, 0, False, messages, [], 100)
    assert [t for t, _ in messages] == topics
