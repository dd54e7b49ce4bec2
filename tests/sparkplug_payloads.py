"""Sparkplug B messages as an edge node publishes them, for the unit and integration tests.

Payloads are encoded with the protobuf runtime from the installed fleetwatch's schema, whose field numbers are the
specification's; each metric is given as ``(name, alias, datatype, value)`` and put in the field its datatype uses.
"""

from __future__ import annotations

from typing import Any

from collectors.mqtt.sparkplug import VALUE_FIELD
from collectors.mqtt.sparkplug import sparkplug_payload_pb2 as pb

# The ready-made offline (deadman) rule, as README.md and fleetwatch.example.toml give it.
OFFLINE_RULE = """
[[alerts.rules]]
name = "sparkplug-offline"
measurement = "sparkplug_state"
metric = "online"
condition = "<"
critical = 1
summary = "Sparkplug {group}/{node} {device} is offline"
"""

INT8, INT16, INT32, INT64, UINT32, UINT64 = 1, 2, 3, 4, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING = 9, 10, 11, 12

# (name, alias, datatype, value): None leaves the name, alias or value out.
Metric = tuple[str | None, int | None, int | None, Any]


def payload(
    metrics: list[Metric],
    *,
    seq: int | None = None,
    ts_ms: int | None = None,
    metric_ts_ms: dict[str, int] | None = None,
    nulls: tuple[str, ...] = (),
    send_datatypes: bool = True,
) -> bytes:
    """``send_datatypes=False`` as in data messages: the datatype picks the value's field but is not sent."""
    message = pb.Payload()
    if ts_ms is not None:
        message.timestamp = ts_ms
    if seq is not None:
        message.seq = seq
    for name, alias, datatype, value in metrics:
        m = message.metrics.add()
        if name is not None:
            m.name = name
        if alias is not None:
            m.alias = alias
        if datatype is not None and send_datatypes:
            m.datatype = datatype
        if name in (metric_ts_ms or {}):
            m.timestamp = (metric_ts_ms or {})[name or ""]
        if name in nulls:
            m.is_null = True
            continue
        if value is None:
            continue
        if datatype == STRING or isinstance(value, str):
            m.string_value = value
            continue
        field = VALUE_FIELD[datatype] if datatype else _field_of(value)
        if field in ("int_value", "long_value") and value < 0:
            value &= (1 << (32 if field == "int_value" else 64)) - 1  # two's complement, as the specification says
        setattr(m, field, value)
    return message.SerializeToString()


def _field_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean_value"
    if isinstance(value, float):
        return "double_value"
    return "long_value"


def topic(group: str, kind: str, node: str, device: str = "") -> str:
    return f"spBv1.0/{group}/{kind}/{node}" + (f"/{device}" if device else "")
