"""Sparkplug B (Eclipse Sparkplug 3.0): topics and protobuf payloads, decoded into plain records.

Topics are ``spBv1.0/<group>/<type>/<node>[/<device>]``. This module is stateless: it turns one message into a
``SparkplugMessage`` (what the topic says, the payload's seq and timestamp, and its metrics with their raw
values). What needs the edge node's history (aliases and datatypes from the births, the sequence number, online
state) is ``flows.sparkplug``, a Bytewax stateful step keyed by edge node, so it survives a restart.

Payloads are decoded with the protobuf runtime and the schema in ``sparkplug_payload.proto``.
"""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import DecodeError

from collectors.mqtt.payloads import PayloadError
from collectors.mqtt.sparkplug import sparkplug_payload_pb2 as pb

NAMESPACE = "spBv1.0"
# Messages an edge node sends about itself and its devices.
NODE_MESSAGES = frozenset({"NBIRTH", "NDATA", "NDEATH"})
DEVICE_MESSAGES = frozenset({"DBIRTH", "DDATA", "DDEATH"})
# Commands to edge nodes and host application state: valid Sparkplug, but no readings (ignored, counted).
IGNORED_MESSAGES = frozenset({"NCMD", "DCMD", "STATE"})

# DataType numbers (sparkplug_payload.proto).
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN = 9, 10, 11
# Signed integer types and their width in bits: their values travel in two's complement.
SIGNED_BITS = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}
UNSIGNED_BITS = {UINT8: 8, UINT16: 16, UINT32: 32, UINT64: 64}
# The oneof field each numeric type's value travels in.
VALUE_FIELD = {
    INT8: "int_value",
    INT16: "int_value",
    INT32: "int_value",
    UINT8: "int_value",
    UINT16: "int_value",
    UINT32: "int_value",
    INT64: "long_value",
    UINT64: "long_value",
    FLOAT: "float_value",
    DOUBLE: "double_value",
    BOOLEAN: "boolean_value",
}


class SparkplugTopic(NamedTuple):
    group: str
    # NBIRTH, NDATA, NDEATH, DBIRTH, DDATA, DDEATH, NCMD, DCMD or STATE.
    kind: str
    node: str
    # "" for the edge node's own messages.
    device: str

    @property
    def node_key(self) -> str:
        """The edge node, the unit of Sparkplug state: ``<group>/<node>``."""
        return f"{self.group}/{self.node}"


def parse_topic(topic: str) -> SparkplugTopic:
    """Split a Sparkplug B topic; raise ``PayloadError("sparkplug_topic", …)`` for one that is not.

    >>> parse_topic("spBv1.0/plant1/DDATA/edge7/press3")
    SparkplugTopic(group='plant1', kind='DDATA', node='edge7', device='press3')
    >>> parse_topic("spBv1.0/STATE/scada-host")
    SparkplugTopic(group='', kind='STATE', node='scada-host', device='')
    """
    levels = topic.split("/")
    if len(levels) < 3 or levels[0] != NAMESPACE:
        raise PayloadError("sparkplug_topic", f"topic {topic!r} is not spBv1.0/<group>/<type>/<node>[/<device>]")
    if levels[1] == "STATE":
        return SparkplugTopic("", "STATE", "/".join(levels[2:]), "")
    if len(levels) not in (4, 5) or not all(levels[1:]):
        raise PayloadError("sparkplug_topic", f"topic {topic!r} is not spBv1.0/<group>/<type>/<node>[/<device>]")
    group, kind, node = levels[1], levels[2], levels[3]
    device = levels[4] if len(levels) == 5 else ""
    if kind in NODE_MESSAGES or kind == "NCMD":
        if device:
            raise PayloadError("sparkplug_topic", f"topic {topic!r}: {kind} is an edge node message, without a device")
    elif kind in DEVICE_MESSAGES or kind == "DCMD":
        if not device:
            raise PayloadError("sparkplug_topic", f"topic {topic!r}: {kind} needs a device level")
    else:
        raise PayloadError("sparkplug_topic", f"topic {topic!r}: unknown message type {kind!r}")
    return SparkplugTopic(group, kind, node, device)


class SparkplugMetric(NamedTuple):
    """One metric as sent: by name, by alias, or both; its value still raw (its meaning may depend on the
    datatype declared in a birth)."""

    name: str
    alias: int | None
    # Milliseconds since the Unix epoch, None when the metric has none (the payload's applies).
    ts_ms: int | None
    # DataType number; 0 when not sent (data messages usually leave it to the birth).
    datatype: int
    # The oneof field that holds the value ("int_value", "double_value", …), "" when none is set.
    field: str
    value: int | float | bool | str | bytes | None
    is_null: bool


class SparkplugMessage(NamedTuple):
    """A decoded Sparkplug B message with what the subscription says about it, on its way to the edge node's
    state (``flows.sparkplug``)."""

    topic: str
    kind: str
    group: str
    node: str
    device: str
    # Tags of its readings (group, node, device when there is one, the device inventory's), without "metric".
    tags: dict[str, str]
    measurement: str
    write_raw: bool
    # Metric names that are not readings (the subscription's ignore_fields).
    ignore: frozenset[str]
    seq: int | None
    ts_ms: int | None
    metrics: list[SparkplugMetric]
    payload: bytes
    received_ns: int


def decode_payload(payload: bytes) -> tuple[int | None, int | None, list[SparkplugMetric]]:
    """(seq, timestamp in ms, metrics) of a Sparkplug B payload; ``PayloadError("undecodable", …)`` when the
    bytes are not one."""
    message = pb.Payload()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise PayloadError("undecodable", f"not a Sparkplug B payload: {exc}") from None
    metrics = []
    for m in message.metrics:
        # Strings that are not valid UTF-8 come back from the protobuf runtime as bytes (proto2 does not check).
        if not isinstance(m.name, str):
            raise PayloadError("invalid_utf8", f"a metric name is not valid UTF-8: {m.name[:80]!r}")
        field = m.WhichOneof("value") or ""
        value = getattr(m, field) if field else None
        metrics.append(
            SparkplugMetric(
                m.name,
                m.alias if m.HasField("alias") else None,
                m.timestamp if m.HasField("timestamp") else None,
                m.datatype,
                field,
                value,
                m.is_null,
            )
        )
    seq = message.seq if message.HasField("seq") else None
    ts_ms = message.timestamp if message.HasField("timestamp") else None
    return seq, ts_ms, metrics


def numeric_value(metric: SparkplugMetric, datatype: int) -> float | None:
    """The reading a metric gives under ``datatype`` (the metric's own, else its birth's): integers (signed ones
    from two's complement), floats and doubles as they are, booleans as 1.0/0.0. None for a type that is no
    reading (strings, bytes, DateTime, data sets, templates, arrays, …). Raises ``PayloadError`` when the value
    is not where the datatype puts it, or not finite.

    >>> numeric_value(SparkplugMetric("t", None, None, 0, "int_value", 0xFFFFFFFE, False), INT16)
    -2.0
    """
    expected = VALUE_FIELD.get(datatype)
    if expected is None:
        return None
    if metric.field != expected:
        raise PayloadError(
            "sparkplug_bad_metric",
            f"metric {metric.name or metric.alias!r} of datatype {type_name(datatype)} carries "
            f"{metric.field or 'no value'} (expected {expected})",
        )
    value = metric.value
    if datatype == BOOLEAN:
        return 1.0 if value else 0.0
    if isinstance(value, int):
        bits = SIGNED_BITS.get(datatype)
        if bits is not None:
            value &= (1 << bits) - 1
            if value >= 1 << (bits - 1):
                value -= 1 << bits
        else:
            value &= (1 << UNSIGNED_BITS[datatype]) - 1
        return float(value)
    assert isinstance(value, float)
    if value - value != 0.0:
        raise PayloadError("non_finite", f"metric {metric.name or metric.alias!r} is {value}")
    return value


def type_name(datatype: int) -> str:
    """The DataType's name (``Int32``, ``String``), or its number when unknown."""
    try:
        return pb.DataType.Name(datatype)
    except ValueError:
        return str(datatype)
