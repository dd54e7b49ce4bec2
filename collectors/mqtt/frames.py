"""Reading MQTT PUBLISH frames straight from the socket buffer.

paho spends about 12 µs of pure Python per incoming message (reading the header byte by byte, building an
``MQTTMessage``, matching per-filter callbacks). At fleet rates that is most of the pipeline's CPU. The MQTT
source therefore parses the frames that dominate the stream itself, QoS 0 and QoS 1 PUBLISH packets, and
hands every other packet (CONNACK, SUBACK, PINGRESP, the QoS 2 exchange, DISCONNECT) to paho untouched. paho
still owns the connection, the session, keepalive and acknowledgements.

Only complete packets are consumed here, so paho never sees a packet that was half read by this module.

A PUBLISH that breaks the spec raises ``MalformedPacket``, whatever the fault: MQTT makes every malformed
packet a protocol error after which the receiver closes the network connection (3.1.1 §4.8, 5.0 §4.13), so
the source needs one exception to catch, never an ``IndexError`` from a length that does not fit. Checked:

- the remaining length (at most 4 bytes), the topic length, the packet id and the MQTT 5 property length
  must all fit in the packet;
- the topic must be at least one character (3.1.1 §4.7.3). MQTT 5 allows a zero-length topic only with a
  Topic Alias, and fleetwatch grants the broker none (its CONNECT has no Topic Alias Maximum, which means
  0, 5.0 §3.1.2.11.5), so a zero-length topic is a protocol error in both versions;
- the topic must be well-formed UTF-8 without U+0000 (3.1.1 §1.5.3, 5.0 §1.5.4);
- QoS 3 (both QoS bits set) does not exist (3.1.1 §3.3.1.2, 5.0 §3.3.1.2);
- a QoS 1 packet id is not 0 (3.1.1 §2.3.1, 5.0 §2.2.1).

MQTT 5 properties are skipped by their declared length, not decoded: fleetwatch uses none of them, and
decoding them would cost more than the rest of the packet.
"""

from __future__ import annotations

from typing import Literal

NEED_DATA: Literal[0] = 0  # the buffer ends inside a packet (or is empty)
OTHER_PACKET: Literal[1] = 1  # a complete packet that is not a QoS 0/1 PUBLISH starts at the position
LIMIT: Literal[2] = 2  # ``limit`` messages were collected

# What the source keeps of a QoS >= 1 message until (and for a while after) it is acknowledged:
# (packet id, QoS, content key). The content key (``content_key``) tells a redelivery of a message already
# counted from a new message that reuses its packet id.
Ack = tuple[int, int, int]


def content_key(topic: str, payload: bytes) -> int:
    """A key of the message's content, equal for a redelivery of the same message. Python's ``hash``: cheap
    (str and bytes cache theirs) and good enough to tell two messages with one packet id apart; it is
    salted per process, so keys never outlive it (a snapshot keeps packet ids only)."""
    return hash((topic, payload))


class MalformedPacket(ValueError):
    """A packet from the broker that breaks the MQTT spec: a protocol error, after which the connection must
    be closed. ``reason`` says what was wrong, for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _varint(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int] | None:
    """MQTT variable byte integer at ``pos``: (value, position after it), or None if ``end`` comes first."""
    value = 0
    shift = 0
    for i in range(pos, min(pos + 4, end)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if end - pos >= 4:
        raise MalformedPacket(f"{what} longer than 4 bytes")
    return None


def read_publishes(
    buf: bytes,
    pos: int,
    v5: bool,
    messages: list[tuple[str, bytes]],
    acks: list[Ack],
    limit: int,
    redeliveries_to_paho: bool = False,
) -> tuple[int, int]:
    """Collect complete QoS 0/1 PUBLISH packets from ``buf[pos:]`` into ``messages`` (topic, payload), and
    the ``Ack`` of QoS 1 ones into ``acks``. Returns (position after the last consumed packet,
    NEED_DATA | OTHER_PACKET | LIMIT).

    With ``redeliveries_to_paho``, a QoS 1 PUBLISH with the DUP flag is checked and then left to paho
    (OTHER_PACKET), so that the source can decide whether it was counted already.

    Raises ``MalformedPacket`` at the first PUBLISH that breaks the spec (see the module's docstring). The
    packets before it are collected already, each with its ack: a message and its ack are appended together
    or not at all."""
    end = len(buf)
    append = messages.append
    while pos < end:
        if len(messages) >= limit:
            return pos, LIMIT
        first = buf[pos]
        if pos + 1 < end and buf[pos + 1] < 0x80:  # most sensor messages are under 128 bytes
            length, body = buf[pos + 1], pos + 2
        else:
            header = _varint(buf, pos + 1, end, "remaining length")
            if header is None:
                return pos, NEED_DATA
            length, body = header
        packet_end = body + length
        if packet_end > end:
            return pos, NEED_DATA
        if first & 0xF0 != 0x30:
            return pos, OTHER_PACKET
        qos = (first >> 1) & 3
        if qos & 2:
            if qos == 3:
                raise MalformedPacket("PUBLISH with QoS 3 (both QoS bits set)")
            return pos, OTHER_PACKET  # the QoS 2 exchange is paho's
        if length < 2:
            raise MalformedPacket(f"PUBLISH with remaining length {length}: no room for the topic length")
        topic_length = (buf[body] << 8) | buf[body + 1]
        topic_end = body + 2 + topic_length
        cursor = topic_end + 2 if qos else topic_end
        if cursor > packet_end:
            if topic_end > packet_end:
                raise MalformedPacket(
                    f"topic length {topic_length} runs past the end of the packet (remaining length {length})"
                )
            raise MalformedPacket("QoS 1 PUBLISH without room for its packet id")
        if not topic_length:
            raise MalformedPacket("zero-length topic")
        try:
            topic = buf[body + 2 : topic_end].decode()
        except UnicodeDecodeError as exc:
            raise MalformedPacket(f"topic is not well-formed UTF-8 ({exc.reason} at byte {exc.start})") from None
        if "\x00" in topic:
            raise MalformedPacket("topic contains U+0000")
        if v5:
            props = _varint(buf, cursor, packet_end, "property length")
            if props is None or props[1] + props[0] > packet_end:
                raise MalformedPacket("property length missing or running past the end of the packet")
            payload = buf[props[1] + props[0] : packet_end]
        else:
            payload = buf[cursor:packet_end]
        if qos:
            mid = (buf[topic_end] << 8) | buf[topic_end + 1]
            if not mid:
                raise MalformedPacket("QoS 1 PUBLISH with packet id 0")
            if redeliveries_to_paho and first & 0x08:
                return pos, OTHER_PACKET
        if first & 0x01:
            # RETAIN: a topic's retained message, sent because a subscription was made. Rare, and the source
            # decides whether it counts (a persistent session saw it when it was published).
            return pos, OTHER_PACKET
        if qos:
            acks.append((mid, qos, hash((topic, payload))))  # content_key, inline: once per message
        append((topic, payload))
        pos = packet_end
    return pos, NEED_DATA
