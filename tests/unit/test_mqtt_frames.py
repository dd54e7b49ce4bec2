"""collectors/mqtt/frames: PUBLISH frames parsed from a byte buffer, as the source reads them."""

from __future__ import annotations

import pytest

from collectors.mqtt.frames import LIMIT, NEED_DATA, OTHER_PACKET, read_publishes


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


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
    acks: list[tuple[int, int]] = []
    pos, status = read_publishes(buf, 0, False, messages, acks, 100)
    assert (pos, status) == (len(buf), NEED_DATA)
    assert messages == [("a/b", b"1.5"), ("c", big), ("d/é", b"2")]
    assert acks == [(513, 1), (7, 1)]


def test_mqtt5_properties_are_skipped() -> None:
    props = bytes([0x01, 0x01, 0x03, 0x00, 0x04]) + b"json"  # payload format indicator, content type
    buf = publish("s/t", b"{}", qos=1, mid=1, props=props) + publish("s/u", b"7", props=b"")
    messages: list[tuple[str, bytes]] = []
    acks: list[tuple[int, int]] = []
    read_publishes(buf, 0, True, messages, acks, 100)
    assert messages == [("s/t", b"{}"), ("s/u", b"7")]


@pytest.mark.parametrize("cut", [1, 2, 5, 9])
def test_an_incomplete_packet_is_left_for_the_next_read(cut: int) -> None:
    second = publish("topic/two", b"22.5", qos=1, mid=9)
    buf = publish("t1", b"1") + second[:cut]
    messages: list[tuple[str, bytes]] = []
    acks: list[tuple[int, int]] = []
    pos, status = read_publishes(buf, 0, False, messages, acks, 100)
    assert status == NEED_DATA and messages == [("t1", b"1")] and acks == []
    rest = buf[pos:] + second[cut:]
    pos, status = read_publishes(rest, 0, False, messages, acks, 100)
    assert messages[-1] == ("topic/two", b"22.5") and acks == [(9, 1)] and pos == len(rest)


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


def test_a_malformed_length_is_an_error() -> None:
    with pytest.raises(ValueError):
        read_publishes(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), 0, False, [], [], 10)
