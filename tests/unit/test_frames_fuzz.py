"""collectors/mqtt/frames: properties of read_publishes over generated input (hypothesis), with paho's own
encoder and reader as the oracle.

- Valid QoS 0/1 PUBLISH packets (MQTT 3.1.1 and 5 with properties, topics of any well-formed UTF-8, remaining
  lengths at the edges of the 1 to 4 byte encodings up to 2 MiB), encoded by paho and mixed with packets that
  are paho's to read, arrive split at random points as socket reads do: read_publishes gives back exactly the
  topics, payloads and packet ids that were encoded (which paho's reader decodes too), and hands every other
  packet over whole, where it starts.
- Arbitrary bytes after a PUBLISH header byte: read_publishes raises nothing but MalformedPacket, and agrees
  with paho's reader on the packet: what it accepts, paho decodes the same way; what it refuses, paho refuses
  too, except where fleetwatch follows the spec more strictly than paho (STRICTER_THAN_PAHO).

FLEETWATCH_FUZZ_EXAMPLES sets the number of examples of each property: a few hundred by default, so that the
unit tests stay fast; `make fuzz` runs many more.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import paho.mqtt.client as paho
from hypothesis import event, example, given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties

from collectors.mqtt.frames import LIMIT, NEED_DATA, OTHER_PACKET, Ack, MalformedPacket, content_key, read_publishes
from tests.unit.fuzzing import FUZZ
from tests.unit.mqtt_packets import varint

# Remaining lengths where the variable byte integer grows by a byte. 268,435,455 (the largest) would need a
# 256 MiB packet.
REMAINING_LENGTH_EDGES = [127, 128, 16_383, 16_384, 2_097_151, 2_097_152]
TOPIC_LENGTH_EDGES = [127, 128, 255, 256, 65_535]
# What paho 2.1's reader raises on a packet it cannot decode (besides returning MQTT_ERR_PROTOCOL).
PAHO_DECODE_ERRORS = (struct.error, IndexError, KeyError, ValueError, MQTTException)
# MalformedPacket reasons for packets that paho takes, or waits for more of, where MQTT says protocol error:
# U+0000 in a topic (3.1.1 §1.5.3, 5.0 §1.5.4), a zero-length topic in MQTT 5 (fleetwatch allows no topic
# aliases; paho refuses it in 3.1.1 only), packet id 0 (3.1.1 §2.3.1, 5.0 §2.2.1), a remaining length whose
# fourth byte says more follow (paho decides at the fifth byte), and an MQTT 5 property length that runs past
# the end of the packet (paho decodes what is there and takes the packet).
STRICTER_THAN_PAHO = (
    "U+0000",
    "zero-length topic",
    "packet id 0",
    "remaining length longer than 4 bytes",
    "property length",
)

# Topic characters: any code point UTF-8 can encode (no surrogates) but U+0000.
TOPIC_CHARACTERS = st.characters(codec="utf-8", exclude_characters="\x00")
# paho refuses U+FEFF in property strings (MQTT allows it); property contents are paho's to judge.
PROPERTY_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00\ufeff"), max_size=12)


def packet_end(buf: bytes, pos: int) -> int | None:
    """Where the packet at ``pos`` ends, read from the spec (not from frames.py); None if the header is cut."""
    length, shift = 0, 0
    for i in range(pos + 1, min(pos + 5, len(buf))):
        length |= (buf[i] & 0x7F) << shift
        shift += 7
        if not buf[i] & 0x80:
            return i + 1 + length
    return None


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    dup: bool
    properties: Properties | None


@dataclass(frozen=True)
class Decoded:
    topic: str
    payload: bytes
    mid: int  # 0 for QoS 0


@dataclass(frozen=True)
class Refused:
    why: str


INCOMPLETE = "incomplete"
NOT_A_MESSAGE = "not a message"  # read by paho without a message for on_message (a QoS 2 PUBLISH waits for PUBREL)


class PahoCodec(paho.Client):
    """paho's own PUBLISH encoder (``_send_publish``) and packet reader (``_packet_read``) without a network:
    what paho would send is captured, what it reads comes from a byte string. Relies on paho 2.1's internals,
    as the MQTT source does (the version is pinned)."""

    def __init__(self, v5: bool) -> None:
        super().__init__(
            CallbackAPIVersion.VERSION2,
            client_id="fuzz",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        self._sent: list[bytes] = []
        self._received: list[tuple[str | None, bytes, int, int]] = []
        self._rx = b""
        self._rx_pos = 0
        self.on_message = self._got

    def _got(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic: str | None = msg.topic
        except UnicodeDecodeError:
            topic = None
        self._received.append((topic, msg.payload, msg.mid, msg.qos))

    def _packet_queue(self, command: int, packet: bytes, mid: int, qos: int, info: Any = None) -> MQTTErrorCode:
        self._sent.append(bytes(packet))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rx_pos >= len(self._rx):
            raise BlockingIOError
        data = self._rx[self._rx_pos : self._rx_pos + bufsize]
        self._rx_pos += len(data)
        return data

    def encode(self, p: Publish) -> bytes:
        self._sock = object()  # _send_publish only checks that there is a connection; _packet_queue is ours
        try:
            rc = self._send_publish(p.mid, p.topic.encode(), p.payload, p.qos, p.retain, p.dup, None, p.properties)
        finally:
            self._sock = None
        assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._sent.pop()

    def decode(self, data: bytes) -> Decoded | Refused | str:
        """What paho makes of the packet at the start of ``data``."""
        self._rx, self._rx_pos = data, 0
        try:
            rc = self._packet_read()
        except PAHO_DECODE_ERRORS as exc:
            return Refused(repr(exc))
        if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
            return INCOMPLETE
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return Refused(f"rc {rc!r}")
        if not self._received:
            return NOT_A_MESSAGE
        topic, payload, mid, qos = self._received.pop()
        return Refused("topic not UTF-8") if topic is None else Decoded(topic, payload, mid if qos else 0)


def paho_decode(data: bytes, v5: bool) -> Decoded | Refused | str:
    return PahoCodec(v5).decode(data)  # a new reader each time: paho keeps a half-read packet's state


def paho_encode(p: Publish, v5: bool) -> bytes:
    return PahoCodec(v5).encode(p)


@st.composite
def topics(draw: st.DrawFn) -> str:
    size = draw(st.one_of(st.none(), st.sampled_from(TOPIC_LENGTH_EDGES)))
    if size is None:
        return draw(st.text(TOPIC_CHARACTERS, min_size=1, max_size=30))
    # Exactly ``size`` bytes: a drawn character repeated, topped up with one-byte ones.
    char = draw(TOPIC_CHARACTERS)
    width = len(char.encode())
    return char * (size // width) + "a" * (size % width)


@st.composite
def publish_properties(draw: st.DrawFn) -> Properties:
    """Any of the properties a broker may put on a PUBLISH to a client that allows no topic aliases."""
    props = Properties(PacketTypes.PUBLISH)
    if draw(st.booleans()):
        props.PayloadFormatIndicator = draw(st.integers(0, 1))
    if draw(st.booleans()):
        props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        props.ContentType = draw(PROPERTY_TEXT)
    if draw(st.booleans()):
        props.ResponseTopic = draw(PROPERTY_TEXT)
    if draw(st.booleans()):
        props.CorrelationData = draw(st.binary(max_size=16))
    for pair in draw(st.lists(st.tuples(PROPERTY_TEXT, PROPERTY_TEXT), max_size=3)):
        props.UserProperty = pair
    for identifier in draw(st.lists(st.integers(1, 268_435_455), max_size=2)):
        props.SubscriptionIdentifier = identifier
    return props


@st.composite
def publishes(draw: st.DrawFn, v5: bool, qos: int | None = None, edge: bool = False) -> Publish:
    """A PUBLISH; with ``edge``, its remaining length is one of REMAINING_LENGTH_EDGES when the topic and
    properties leave room for it."""
    topic = draw(topics())
    qos = draw(st.integers(0, 1)) if qos is None else qos
    mid = draw(st.integers(1, 65_535)) if qos else 0
    props = draw(publish_properties()) if v5 else None
    overhead = 2 + len(topic.encode()) + (2 if qos else 0) + (len(props.pack()) if props is not None else 0)
    target = draw(st.sampled_from(REMAINING_LENGTH_EDGES)) if edge else 0
    if target >= overhead:
        pattern = draw(st.binary(min_size=1, max_size=8))
        size = target - overhead
        payload = (pattern * (size // len(pattern) + 1))[:size]
    else:
        payload = draw(st.binary(max_size=48))
    return Publish(topic, payload, qos, mid, draw(st.booleans()), qos > 0 and draw(st.booleans()), props)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bool, list[Publish | bytes]]:
    """What a broker sends: QoS 0/1 PUBLISH packets and, now and then, one that is paho's to read (a QoS 2
    PUBLISH, PUBREL, SUBACK, PINGRESP). At most one packet has an edge remaining length, in about a third of
    the streams (they go up to 2 MiB)."""
    v5 = draw(st.booleans())
    count = draw(st.integers(1, 6))
    edge_at = draw(st.integers(0, 3 * count))
    items: list[Publish | bytes] = []
    for i in range(count):
        if draw(st.integers(0, 4)):
            items.append(draw(publishes(v5, edge=i == edge_at)))
            continue
        mid = draw(st.integers(1, 65_535)).to_bytes(2, "big")
        other = draw(
            st.sampled_from(
                [
                    "qos2",
                    b"\x62\x02" + mid,
                    b"\x90\x04" + mid + b"\x00\x01" if v5 else b"\x90\x03" + mid + b"\x01",
                    b"\xd0\x00",
                ]
            )
        )
        items.append(draw(publishes(v5, qos=2)) if other == "qos2" else other)
    return v5, items


def read_as_the_source_does(
    wire: bytes, cuts: list[int], v5: bool, limit: int
) -> tuple[list[tuple[str, bytes]], list[Ack], list[bytes]]:
    """Feed ``wire`` to read_publishes in the pieces ``cuts`` make, as the source does with socket reads: the
    unconsumed rest of the buffer plus the new bytes; a batch ends at ``limit`` messages; a packet that is not
    a QoS 0/1 PUBLISH is taken whole, as paho would. Returns the messages, acks and the other packets."""
    messages: list[tuple[str, bytes]] = []
    acks: list[Ack] = []
    others: list[bytes] = []
    buf, pos = b"", 0
    bounds = [0, *sorted(set(cuts)), len(wire)]
    for start, stop in pairwise(bounds):
        buf, pos = buf[pos:] + wire[start:stop], 0
        while True:
            batch: list[tuple[str, bytes]] = []
            pos, status = read_publishes(buf, pos, v5, batch, acks, limit)
            messages += batch
            if status == LIMIT:
                assert len(batch) == limit
            elif status == OTHER_PACKET:
                end = packet_end(buf, pos)
                assert end is not None and end <= len(buf), "a packet is handed to paho only when it is whole"
                others.append(buf[pos:end])
                pos = end
            else:
                assert status == NEED_DATA
                break
    assert pos == len(buf), "every byte is consumed once the stream is whole"
    return messages, acks, others


@FUZZ
@given(stream=streams(), data=st.data())
def test_valid_publishes_split_anywhere_come_back_exactly_as_encoded(
    stream: tuple[bool, list[Publish | bytes]], data: st.DataObject
) -> None:
    v5, items = stream
    packets = [paho_encode(item, v5) if isinstance(item, Publish) else item for item in items]
    # QoS 2 and retained messages are left to paho (the source decides whether a retained one counts).
    ours = [item for item in items if isinstance(item, Publish) and item.qos < 2 and not item.retain]
    for item, packet in zip(items, packets, strict=True):
        if isinstance(item, Publish) and item.qos < 2:
            assert paho_decode(packet, v5) == Decoded(item.topic, item.payload, item.mid)
            event(f"a remaining length of {next(i for i in range(1, 5) if not packet[i] & 0x80)} byte(s)")
    wire = b"".join(packets)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=12), label="cuts")
    limit = data.draw(st.integers(1, 8), label="limit")
    assert read_as_the_source_does(wire, cuts, v5, limit) == (
        [(p.topic, p.payload) for p in ours],
        [(p.mid, 1, content_key(p.topic, p.payload)) for p in ours if p.qos == 1],
        [
            packet
            for item, packet in zip(items, packets, strict=True)
            if not (isinstance(item, Publish) and item.qos < 2 and not item.retain)
        ],
    )


def mutate(packet: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Each edit (kind, where, byte): 0 replaces a byte, 1 inserts one, 2 deletes one."""
    out = bytearray(packet)
    for kind, where, byte in edits:
        i = where % (len(out) + 1)
        if kind == 1:
            out.insert(i, byte)
        elif out and i < len(out):
            if kind == 0:
                out[i] = byte
            else:
                del out[i]
    return bytes(out)


# Topic bytes that each break (or just pass) one rule: empty, U+0000, cut or invalid sequences, a UTF-16
# surrogate, an overlong "/", a code point past U+10FFFF, and U+FEFF (valid).
TOPIC_BYTES = st.one_of(
    st.sampled_from(
        [
            b"",
            b"\x00",
            b"a/\x00",
            b"\xc3",
            b"\xc3\x28",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xf4\x90\x80\x80",
            b"\xef\xbb\xbf",
        ]
    ),
    st.binary(max_size=6),
    topics().map(str.encode),
)
PROPERTY_SECTIONS = st.one_of(
    publish_properties().map(Properties.pack),
    st.sampled_from([b"", b"\x80", b"\xff\xff\xff\xff\x01", b"\x05\x01", b"\x7f"]),
    st.binary(max_size=6),
)


@st.composite
def assembled_publishes(draw: st.DrawFn, first: int, v5: bool) -> bytes:
    """A PUBLISH put together field by field, each field valid or not: the topic's bytes and declared length,
    the packet id (0 included), the property section; the body may be cut short."""
    topic = draw(TOPIC_BYTES)
    declared = draw(st.one_of(st.just(len(topic)), st.integers(0, 65_535)))
    body = declared.to_bytes(2, "big") + topic
    if (first >> 1) & 3:
        body += draw(st.sampled_from([0, 1, 65_535]) | st.integers(0, 65_535)).to_bytes(2, "big")
    if v5:
        body += draw(PROPERTY_SECTIONS)
    body += draw(st.binary(max_size=8))
    body = body[: len(body) - draw(st.integers(0, 3))]
    return bytes([first]) + varint(len(body)) + body


@st.composite
def publish_headed_bytes(draw: st.DrawFn) -> tuple[bool, bytes]:
    """A PUBLISH header byte (any flags) and then: random bytes; a random body with a remaining length that
    fits it; a PUBLISH assembled from valid and invalid fields; or a valid PUBLISH with a few bytes replaced,
    inserted or deleted (its first byte stays a PUBLISH's)."""
    v5 = draw(st.booleans())
    first = draw(st.integers(0x30, 0x3F))
    kind = draw(st.sampled_from(["random", "framed", "assembled", "mutated"]))
    if kind == "random":
        return v5, bytes([first]) + draw(st.binary(max_size=40))
    if kind == "framed":
        body = draw(st.binary(max_size=40))
        return v5, bytes([first]) + varint(len(body)) + body
    if kind == "assembled":
        return v5, draw(assembled_publishes(first, v5))
    packet = paho_encode(draw(publishes(v5, qos=draw(st.integers(0, 2)))), v5)
    edits = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 1 << 16), st.integers(0, 255)), max_size=3))
    return v5, bytes([first]) + mutate(packet, edits)[1:]


def without_properties(packet: bytes) -> bytes:
    """An MQTT 5 PUBLISH that read_publishes accepted, with its property list replaced by an empty one."""
    body = 1
    while packet[body] & 0x80:
        body += 1
    body += 1  # after the remaining length
    topic_end = body + 2 + int.from_bytes(packet[body : body + 2], "big")
    cursor = topic_end + (2 if (packet[0] >> 1) & 3 else 0)
    length, shift, after = 0, 0, cursor
    while True:
        byte = packet[after]
        length |= (byte & 0x7F) << shift
        shift += 7
        after += 1
        if not byte & 0x80:
            break
    new_body = packet[body:cursor] + b"\x00" + packet[after + length :]
    return packet[:1] + varint(len(new_body)) + new_body


@FUZZ
@given(case=publish_headed_bytes())
@example(case=(False, b"0\x00"))  # remaining length 0: IndexError before MalformedPacket existed
@example(case=(True, b"0\t\x00\x01\x01\x06&\x00\x00\x00\x01"))  # properties past the end, which paho takes
def test_bytes_after_a_publish_header_raise_only_malformed_packet_and_agree_with_paho(case: tuple[bool, bytes]) -> None:
    v5, data = case
    messages: list[tuple[str, bytes]] = []
    acks: list[Ack] = []
    paho_sees = paho_decode(data, v5)
    try:
        pos, status = read_publishes(data, 0, v5, messages, acks, 1)
    except MalformedPacket as exc:
        event("MalformedPacket: " + re.sub(r"length \d+", "length N", exc.reason.split(" (")[0]))
        assert not messages and not acks
        if not isinstance(paho_sees, Refused):
            assert any(r in exc.reason for r in STRICTER_THAN_PAHO), (
                f"refused ({exc.reason}) what paho takes: {paho_sees}"
            )
        return
    assert status in (NEED_DATA, OTHER_PACKET, LIMIT)
    if status == OTHER_PACKET:
        event("QoS 2 or retained, left to paho")
        assert (data[0] >> 1) & 3 == 2 or data[0] & 0x01, "only a QoS 2 or a retained PUBLISH is left to paho"
        if (data[0] >> 1) & 3 != 2:
            # A retained one is checked first, as any PUBLISH read here: paho must take it (MQTT 5 properties
            # aside, which only paho decodes; see below).
            if isinstance(paho_sees, Refused) and v5:
                paho_sees = paho_decode(without_properties(data[: packet_end(data, 0)]), v5)
            assert not isinstance(paho_sees, Refused), "a retained PUBLISH left to paho is one paho takes"
        return
    if not messages:
        event("incomplete")
        assert status == NEED_DATA and paho_sees == INCOMPLETE
        return
    event("accepted")
    [(topic, payload)] = messages
    qos = (data[0] >> 1) & 3
    mid = acks[0][0] if qos else 0
    assert acks == ([(mid, 1, content_key(topic, payload))] if qos else [])
    assert pos == packet_end(data, 0)
    if isinstance(paho_sees, Refused) and v5:
        # fleetwatch skips MQTT 5 properties by their length without decoding them; paho decodes them. Without
        # them, paho must read the same message.
        paho_sees = paho_decode(without_properties(data[:pos]), v5)
    assert paho_sees == Decoded(topic, payload, mid)
