"""Payload decoders for MQTT messages, chosen per subscription (``format``).

- ``number``: a bare value, as ESPHome and Home Assistant state topics publish (``21.5``); a switch's
  ``ON``/``OFF`` or ``true``/``false`` is 1/0.
- ``json``: an object of numeric fields, nested objects flattened by path with ``_`` and arrays by index
  (Telegraf's convention: ``ENERGY_Voltage_0``), booleans as 0/1, strings and nulls ignored. Covers Tasmota
  ``tele/<dev>/SENSOR`` and Zigbee2MQTT.
  An optional timestamp field (epoch s/ms/us/ns or RFC 3339) gives the event time.
- ``influx_line``: InfluxDB line protocol, one point per line, with its own measurement and tags.
- ``senml``: SenML's JSON (RFC 8428), a pack of records: each value, boolean or sum is a reading named by the
  record's ``n``, its base name ``bn`` the tag ``base_name``; base values, sums and times apply as the RFC says.
- ``telegraf_json``: Telegraf's JSON serializer (its ``outputs.mqtt`` with ``data_format = "json"``):
  ``{"name": …, "tags": {…}, "fields": {…}, "timestamp": …}``, or a batch ``{"metrics": [ … ]}``. As line
  protocol: ``name`` is the measurement, ``tags`` are tags, each numeric field is a metric.

Each decoder raises ``PayloadError(reason, detail)`` for input that must go to the dead letters.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, tzinfo
from typing import Any, NamedTuple

from fleetwatch.devices import RESERVED_TAGS
from fleetwatch.times import from_iso


class PayloadError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class PartlyInvalidUTF8(PayloadError):
    """A JSON payload that is not valid UTF-8 only where it holds no reading (a Latin-1 "°C" in a unit string,
    a device name): the message is a dead letter ``invalid_utf8`` all the same, but its readings, read with the
    bad bytes replaced, are kept, as Telegraf keeps them."""

    def __init__(self, detail: str, samples: list[Sample]) -> None:
        super().__init__("invalid_utf8", detail)
        self.samples = samples


class Sample(NamedTuple):
    metric: str
    value: float
    ts_ns: int | None = None
    # Only line protocol and Telegraf JSON carry a measurement; they and SenML (its base name) carry tags.
    measurement: str | None = None
    tags: dict[str, str] | None = None
    # ts_ns counts from the message's receive time (a SenML relative time): a redelivery stamps it anew.
    from_receipt: bool = False


def to_text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("invalid_utf8", f"payload is not valid UTF-8: {exc}") from None


# A number as devices write it: Python's float() also takes "1_000" and, in text, digits of other scripts
# ("١٢٣"), which no device means as a reading (Telegraf's value parser refuses both).
_NUMBER_TEXT = re.compile(r"[ \t\r\n]*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?[ \t\r\n]*\Z")
_NON_FINITE_TEXT = re.compile(r"\s*[-+]?(?:inf|infinity|nan)\s*\Z", re.IGNORECASE)


def decode_number(payload: bytes) -> float:
    """A bare number (the payload's whitespace and a UTF-8 byte-order mark around it are allowed)."""
    text = to_text(payload).removeprefix("\ufeff")
    return number_text(text, "payload")


# A switch's state, as relays and binary sensors publish it on their own topic (Tasmota and ESPHome "ON"/"OFF",
# Shelly Gen1 and Home Assistant "on"/"off"): 1 and 0, as booleans are in a JSON object.
_SWITCH_STATES = {"on": 1.0, "off": 0.0, "true": 1.0, "false": 0.0}


def number_text(text: str, what: str) -> float:
    """``text`` as a finite reading (a switch's on/off or true/false as 1/0), or the dead-letter reason why not."""
    word = text.strip(" \t\r\n")
    state = _SWITCH_STATES.get(word.lower()) if len(word) <= 5 else None
    if state is not None:
        return state
    if _NON_FINITE_TEXT.match(text):
        raise PayloadError("non_finite", f"{what} {text[:80]!r} is not finite")
    if not _NUMBER_TEXT.match(text):
        raise PayloadError("not_a_number", f"{what} {text[:80]!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise PayloadError("non_finite", f"{what} {text[:80]!r} is beyond a double")
    return value


# --- timestamps -----------------------------------------------------------------------------------

_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


# The fraction of the seconds in an RFC 3339 time: after hh:mm:ss.
_SECONDS_FRACTION = re.compile(r"\d\d:\d\d:\d\d[.,](\d+)")


def timestamp_ns(value: Any, unit: str, zone: tzinfo = UTC) -> int:
    """Event time in ns from an epoch number (``unit`` s/ms/us/ns, or ``auto`` by magnitude) or an
    RFC 3339 string, to the nanosecond. A string without a zone is in ``zone`` (a subscription's
    ``timestamp_timezone``: Tasmota sends its local time without one)."""
    if isinstance(value, bool):
        raise PayloadError("bad_timestamp", f"timestamp {value!r} is a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise PayloadError("bad_timestamp", f"timestamp {value!r} is not finite")
        if unit in ("auto", "rfc3339"):
            magnitude = abs(value)
            # Seconds until year 5138, then ms, us, ns.
            unit = "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us" if magnitude < 1e17 else "ns"
        if isinstance(value, int):
            return value * _UNIT_NS[unit]
        if not math.isfinite(value * _UNIT_NS[unit]):  # 1e300 s is finite, but not in nanoseconds
            raise PayloadError("bad_timestamp", f"timestamp {value!r} {unit} is out of range")
        # To the microsecond, then exactly to ns: a double holds a millisecond epoch times 1,000 exactly, not
        # times 1,000,000 (1796657511455.0 ms would be ...455000064 ns). No float epoch is finer than that.
        return round(value * (_UNIT_NS[unit] / 1000)) * 1000
    if isinstance(value, str):
        text = value.strip()
        if unit not in ("auto", "rfc3339"):
            try:
                return timestamp_ns(float(text) if "." in text else int(text), unit)
            except ValueError:
                raise PayloadError("bad_timestamp", f"timestamp {value!r} is not a number") from None
        try:
            moment = from_iso(text)
        except ValueError:
            try:
                return timestamp_ns(float(text) if "." in text else int(text), "auto")
            except ValueError:
                raise PayloadError("bad_timestamp", f"timestamp {value!r} is neither RFC 3339 nor epoch") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
        # datetime keeps microseconds: the digits after them (The Things Network and Go services send
        # nanoseconds) are added here.
        fraction = _SECONDS_FRACTION.search(text)
        if fraction is not None and len(fraction[1]) > 6:
            ns += int(fraction[1][6:9].ljust(3, "0"))
        return ns
    raise PayloadError("bad_timestamp", f"timestamp {value!r} is neither a number nor a string")


# --- JSON -----------------------------------------------------------------------------------------


def _flatten(obj: dict[str, Any], prefix: str, skip: frozenset[str], ts: int | None, out: list[Sample]) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}" if prefix else key
        if name in skip:
            continue
        kind = type(value)
        if not name.rstrip("\\") and (kind is float or kind is int or kind is bool):
            # A reading needs a name: without one it would be written with no metric tag at all (line protocol
            # has no empty tag value, and a tag's trailing backslashes are left out), beside the device's named
            # metrics.
            raise PayloadError("undecodable", "a JSON field has an empty name")
        if kind is float or kind is int:
            out.append(Sample(name, finite_float(value, name), ts))
        elif kind is bool:
            out.append(Sample(name, 1.0 if value else 0.0, ts))
        elif kind is dict:
            _flatten(value, f"{name}_", skip, ts, out)
        elif kind is list:
            # By index, as Telegraf flattens them: a three-phase Tasmota meter's "Voltage":[230,231,229] is
            # ENERGY_Voltage_0, _1 and _2.
            _flatten(dict(zip(map(str, range(len(value))), value, strict=True)), f"{name}_", skip, ts, out)
        # Strings and nulls are not readings (Tasmota's "TempUnit", Zigbee2MQTT's "update").


def finite_float(value: float, name: str) -> float:
    """A JSON number as a finite float: ``Infinity``/``NaN`` (which json.loads accepts) and integers too
    large for a float (JSON has no limit on digits) are refused."""
    try:
        number = float(value)
    except OverflowError:
        raise PayloadError("non_finite", f"field {name!r} is an integer too large for a float") from None
    if number - number != 0:
        raise PayloadError("non_finite", f"field {name!r} is {number}")
    return number


def _load_json(payload: bytes) -> Any:
    """The payload as JSON, or the dead-letter reason why not."""
    try:
        # Decoded here, strictly: json.loads of bytes lets the UTF-8 bytes of a lone surrogate ("\xed\xa0\x80")
        # through, which no UTF-8 text holds. UTF-16 and UTF-32 JSON (RFC 8259 allows them once) still read.
        encoding = json.detect_encoding(payload)
        text = payload.decode("utf-8-sig" if encoding == "utf-8" else encoding)
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise PayloadError("invalid_utf8", f"payload is not valid UTF-8: {exc}") from None
    except ValueError as exc:
        raise PayloadError("undecodable", f"not JSON: {exc}") from None
    except RecursionError:
        # 60,000 x "[" fits in a payload and exhausts the decoder's stack.
        raise PayloadError("undecodable", "JSON nested too deeply") from None


def decode_json(
    payload: bytes,
    timestamp_field: str | None,
    timestamp_unit: str,
    skip: frozenset[str],
    metric: str | None,
    zone: tzinfo = UTC,
) -> list[Sample]:
    """``skip`` must include ``timestamp_field``; ``zone``: that of timestamps written without one. A JSON
    array of objects is several readings at once (a device sending what it buffered, each object with its own
    timestamp), read object by object; one bad object refuses the whole message."""
    try:
        doc = _load_json(payload)
    except PayloadError as err:
        if err.reason != "invalid_utf8":
            raise
        samples = _readings_despite_invalid_utf8(payload, timestamp_field, timestamp_unit, skip, metric, zone)
        if not samples:
            raise
        raise PartlyInvalidUTF8(
            f"{err.detail}; no reading's name or value has the bad bytes: its {len(samples)} readings were read",
            samples,
        ) from None
    return _json_doc(doc, timestamp_field, timestamp_unit, skip, metric, zone)


def _readings_despite_invalid_utf8(
    payload: bytes,
    timestamp_field: str | None,
    timestamp_unit: str,
    skip: frozenset[str],
    metric: str | None,
    zone: tzinfo,
) -> list[Sample]:
    """The readings of a JSON payload whose invalid UTF-8 is only in strings that are not readings; none if any
    reading's name would carry a replaced byte, or the payload is no JSON even so."""
    try:
        doc = json.loads(payload.decode("utf-8", errors="replace"))
        samples = _json_doc(doc, timestamp_field, timestamp_unit, skip, metric, zone)
    except (ValueError, RecursionError, PayloadError):
        return []
    if any("\ufffd" in sample.metric for sample in samples):
        return []
    return samples


def _json_doc(
    doc: Any, timestamp_field: str | None, timestamp_unit: str, skip: frozenset[str], metric: str | None, zone: tzinfo
) -> list[Sample]:
    if type(doc) is list and doc:
        if timestamp_field is None and len(doc) > 1:
            # Their readings would all have the message's receive time: one point in the store per series.
            raise PayloadError("bad_timestamp", "a JSON array of several readings needs the timestamp_field setting")
        samples = []
        for i, item in enumerate(doc):
            if type(item) is not dict:
                raise PayloadError("not_a_number", f"JSON array item {i} is not an object: {_json_kind(item)}")
            samples += _json_object(item, timestamp_field, timestamp_unit, skip, zone)
        if len(doc) > 1:
            # Oldest first (a stable sort: readings of one time keep their order), as a device that flushes its
            # buffer newest first would otherwise have its newest reading move its series' clock past the windows
            # of the older ones in the same message, which were then late.
            samples.sort(key=_sample_time)
        return samples
    if type(doc) is not dict:
        return [_bare_json_value(doc, metric)]
    return _json_object(doc, timestamp_field, timestamp_unit, skip, zone)


def _sample_time(sample: Sample) -> int:
    return sample.ts_ns or 0


def _json_object(
    doc: dict[str, Any], timestamp_field: str | None, timestamp_unit: str, skip: frozenset[str], zone: tzinfo
) -> list[Sample]:
    ts: int | None = None
    if timestamp_field is not None:
        raw_ts = doc.get(timestamp_field)
        if raw_ts is None and "." in timestamp_field:
            raw_ts = _nested(doc, timestamp_field)
        if raw_ts is None:
            raise PayloadError("bad_timestamp", f"timestamp field {timestamp_field!r} is missing or null")
        ts = timestamp_ns(raw_ts, timestamp_unit, zone)
    samples: list[Sample] = []
    _flatten(doc, "", skip, ts, samples)
    if not samples:
        raise PayloadError("no_numeric_fields", "JSON object has no numeric fields")
    return samples


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words ("null", not Python's "NoneType")."""
    kinds = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return kinds.get(type(value), "object")


def _nested(doc: dict[str, Any], path: str) -> Any:
    """The value at a dotted path ("params.ts": Shelly Gen2's NotifyStatus), or None."""
    value: Any = doc
    for key in path.split("."):
        if type(value) is not dict:
            return None
        value = value.get(key)
    return value


def _bare_json_value(doc: Any, metric: str | None) -> Sample:
    if isinstance(doc, str):
        # Home Assistant publishes some states as JSON strings: "21.5". (Not encoded back to bytes: a JSON
        # escape such as "\ud800" gives a lone surrogate, which UTF-8 cannot encode.)
        return Sample(metric or "value", number_text(doc, "JSON string"))
    if isinstance(doc, bool):
        return Sample(metric or "value", 1.0 if doc else 0.0)  # as inside an object
    if not isinstance(doc, int | float):
        raise PayloadError("not_a_number", f"a JSON {_json_kind(doc)} is not a reading")
    return Sample(metric or "value", finite_float(doc, metric or "value"))


# --- tags ---------------------------------------------------------------------------------------


def _check_tags(tags: dict[str, str], where: str) -> None:
    """Tags fleetwatch's series carry of their own (``metric``, the field's name; ``window``, on aggregates)
    are not a payload's: its tag would be overwritten, or make every aggregate of the series a line InfluxDB
    refuses ("duplicate tags")."""
    # As written to InfluxDB: a key's trailing backslashes are left out ("window\\" is "window").
    clash = RESERVED_TAGS.intersection(key.rstrip("\\") for key in tags)
    if clash:
        raise PayloadError(
            "undecodable", f"{where}: tag {min(clash)!r} is fleetwatch's own (metric, window); rename it in the sender"
        )


# --- line protocol --------------------------------------------------------------------------------


# The published rules: a measurement escapes commas and spaces, tag keys, tag values and field keys escape
# commas, equals signs and spaces, string field values escape double quotes and backslashes. Two backslashes
# are one; a backslash before any other character is itself. Lines are separated by LF only.
_LP_NAME = r"(?:[^,=\\ ]|\\.)+"
_LP_HEAD = re.compile(r"((?:[^,\\ ]|\\.)+)((?:," + _LP_NAME + r"=(?:[^,\\ ]|\\.)+)*) +")
_LP_TAG = re.compile(r",(" + _LP_NAME + r")=((?:[^,\\ ]|\\.)+)")
_LP_FIELD = re.compile(r"(" + _LP_NAME + r')=("(?:[^"\\]|\\.)*"|[^", ][^, ]*)([, ]|\Z)')
_LP_TIMESTAMP = re.compile(r" *(-?[0-9]+)? *\Z")
_LP_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")
_LP_INTEGER = re.compile(r"-?[0-9]+\Z")
_LP_TRUE = frozenset(("t", "T", "true", "True", "TRUE"))
_LP_FALSE = frozenset(("f", "F", "false", "False", "FALSE"))
_MEASUREMENT_ESCAPE = re.compile(r"\\([, \\])")
_NAME_ESCAPE = re.compile(r"\\([,= \\])")


def _line_value(raw: str, field: str) -> float | None:
    """A field value as a reading: floats, ``i`` integers (int64), ``u`` integers (uint64) and booleans;
    None for a string."""
    if raw in _LP_TRUE:
        return 1.0
    if raw in _LP_FALSE:
        return 0.0
    if raw[0] == '"':
        return None  # string fields are not readings
    suffix = raw[-1]
    if suffix == "i" or suffix == "u":
        digits = raw[:-1]
        if _LP_INTEGER.match(digits):
            number = int(digits)
            if (-(2**63) <= number < 2**63) if suffix == "i" else (0 <= number < 2**64):
                return float(number)
        kind = "an integer (int64)" if suffix == "i" else "an unsigned integer (uint64)"
        raise PayloadError("undecodable", f"field {field!r} is not {kind}: {raw[:40]!r}")
    if not _LP_FLOAT.match(raw):
        if _NON_FINITE_TEXT.match(raw):  # (line protocol has no NaN or infinity; a device meant one all the same)
            raise PayloadError("non_finite", f"field {field!r} is {raw[:40]!r}")
        raise PayloadError("undecodable", f"field {field!r} has no valid value ({raw[:40]!r})")
    value = float(raw)
    if not math.isfinite(value):
        raise PayloadError("non_finite", f"field {field!r} is {value}")
    return value


def decode_line_protocol(payload: bytes) -> list[Sample]:
    # (a byte-order mark would otherwise start the first measurement's name)
    text = to_text(payload).removeprefix("\ufeff")
    samples: list[Sample] = []
    for line in text.split("\n"):
        line = line.strip(" \t\r")
        if not line or line[0] == "#":
            continue
        head = _LP_HEAD.match(line)
        if head is None:
            raise PayloadError("undecodable", f"line protocol needs 'measurement[,tags] fields [ts]': {line[:80]!r}")
        measurement = _MEASUREMENT_ESCAPE.sub(r"\1", head[1])
        tags: dict[str, str] = {}
        if head[2]:
            for tag in _LP_TAG.finditer(head[2]):
                key = _NAME_ESCAPE.sub(r"\1", tag[1])
                if key in tags:  # InfluxDB refuses the line too ("duplicate tags")
                    raise PayloadError("undecodable", f"line protocol: tag {key[:40]!r} is given twice")
                tags[key] = _NAME_ESCAPE.sub(r"\1", tag[2])
            _check_tags(tags, "line protocol")
        pos = head.end()
        fields: list[tuple[str, str]] = []
        while True:
            field = _LP_FIELD.match(line, pos)
            if field is None:
                raise PayloadError("undecodable", f"bad field at {line[pos : pos + 40]!r}")
            fields.append((_NAME_ESCAPE.sub(r"\1", field[1]), field[2]))
            pos = field.end()
            if field[3] != ",":
                break
        rest = _LP_TIMESTAMP.match(line, pos)
        if rest is None:
            raise PayloadError("bad_timestamp", f"line protocol timestamp {line[pos:][:40]!r} is not an integer")
        ts: int | None = None
        if rest[1] is not None:
            ts = int(rest[1])
            if not -(2**63) <= ts < 2**63:
                raise PayloadError("bad_timestamp", f"line protocol timestamp {rest[1][:40]!r} is out of range")
        # A field given twice: the last value, as InfluxDB stores it (each would otherwise be a reading of the
        # windows, and the aggregates would count a value the raw point does not have).
        for key, raw in dict(fields).items():
            number = _line_value(raw, key)
            if number is not None:
                samples.append(Sample(key, number, ts, measurement, tags))
    if not samples:
        raise PayloadError("no_numeric_fields", "line protocol payload has no numeric fields")
    return samples


# --- Telegraf JSON --------------------------------------------------------------------------------


def decode_telegraf_json(payload: bytes, timestamp_unit: str, skip: frozenset[str] = frozenset()) -> list[Sample]:
    """Telegraf's JSON metrics. ``timestamp`` is in Telegraf's ``json_timestamp_units`` (1 s by default), read
    with ``timestamp_unit`` (``auto`` guesses by magnitude); without one, the receive time is used. String
    fields and the fields in ``skip`` are not readings; booleans are 0/1, as in the other formats."""
    doc = _load_json(payload)
    if type(doc) is dict and "metrics" in doc and "fields" not in doc:
        metrics = doc["metrics"]
        if type(metrics) is not list:
            raise PayloadError("undecodable", "Telegraf JSON batch: 'metrics' is not a list")
    else:
        metrics = [doc]
    samples: list[Sample] = []
    for metric in metrics:
        samples += _telegraf_metric(metric, timestamp_unit, skip)
    if not samples:
        raise PayloadError("no_numeric_fields", "Telegraf JSON has no numeric fields")
    return samples


def _telegraf_metric(metric: Any, timestamp_unit: str, skip: frozenset[str]) -> list[Sample]:
    if type(metric) is not dict:
        raise PayloadError("undecodable", f"Telegraf JSON metric is not an object: {_json_kind(metric)}")
    name, fields, tags = metric.get("name"), metric.get("fields"), metric.get("tags", {})
    if type(name) is not str or not name.rstrip("\\"):
        raise PayloadError("undecodable", "Telegraf JSON metric without a 'name'")
    if name[0] == "#":  # the line written to InfluxDB would be a comment, and dropped without a word
        raise PayloadError("undecodable", f"Telegraf JSON metric name {name[:40]!r} starts with '#'")
    if type(fields) is not dict:
        raise PayloadError("undecodable", f"Telegraf JSON metric {name!r} without a 'fields' object")
    if type(tags) is not dict or any(type(v) is not str for v in tags.values()):
        raise PayloadError("undecodable", f"Telegraf JSON metric {name!r}: 'tags' must map names to strings")
    _check_tags(tags, f"Telegraf JSON metric {name!r}")
    raw_ts = metric.get("timestamp")
    ts = None if raw_ts is None else timestamp_ns(raw_ts, timestamp_unit)
    samples = []
    for field, value in fields.items():
        kind = type(value)
        if field in skip:
            continue
        if kind is float or kind is int:
            samples.append(Sample(field, finite_float(value, field), ts, name, tags))
        elif kind is bool:
            samples.append(Sample(field, 1.0 if value else 0.0, ts, name, tags))
    return samples


# --- SenML (RFC 8428) -----------------------------------------------------------------------------

# A record's time below 2**28 s is relative to now (RFC 8428 4.5.3): negative in the past, 0 "roughly now".
_SENML_RELATIVE_S = 2**28
_SENML_VERSION = 10
_SENML_BASE_FIELDS = frozenset(("bn", "bt", "bu", "bv", "bs", "bver"))
_SENML_FIELDS = _SENML_BASE_FIELDS | {"n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"}


def decode_senml(payload: bytes, received_ns: int, skip: frozenset[str] = frozenset()) -> list[Sample]:
    """A SenML JSON pack: an array of records (one record alone, as an object, is read too). The base fields of a
    record apply to it and to the records after it until one sets them anew. Each record's value ``v`` (plus the
    base value), boolean ``vb`` (1/0) and sum ``s`` (plus the base sum, as ``<n>_sum``) is a reading; string and
    data values are not readings. A record's name is ``bn`` + ``n``: ``n`` is the metric, and ``bn`` (the device,
    by convention: ``urn:dev:mac:...:``) the tag ``base_name``, so one metric of many devices is one name. The
    time is ``bt`` + ``t`` seconds: since the Unix epoch, or below 2**28 relative to the receive time. One bad
    record refuses the pack, as RFC 8428 has it."""
    doc = _load_json(payload)
    records = [doc] if type(doc) is dict else doc
    if type(records) is not list:
        raise PayloadError("undecodable", f"a SenML pack is an array of records, not a JSON {_json_kind(doc)}")
    if not records:
        raise PayloadError("undecodable", "an empty SenML pack: no records")
    base_name, base_time, base_value, base_sum = "", 0.0, 0.0, 0.0
    samples: list[Sample] = []
    for i, record in enumerate(records):
        if type(record) is not dict:
            raise PayloadError("undecodable", f"SenML record {i} is not an object: {_json_kind(record)}")
        unknown = [key for key in record if key not in _SENML_FIELDS and key.endswith("_")]
        if unknown:  # RFC 8428 4.4: a field whose name ends in "_" must be understood, or the pack refused
            raise PayloadError("undecodable", f"SenML record {i}: field {unknown[0]!r} must be understood")
        if "bver" in record:
            version = record["bver"]
            if type(version) is not int or version > _SENML_VERSION:
                raise PayloadError("undecodable", f"SenML record {i}: version {version!r} (fleetwatch reads 10)")
        if "bn" in record:
            base_name = _senml_text(record["bn"], "bn", i)
        if "bt" in record:
            base_time = _senml_number(record["bt"], "bt", i, "bad_timestamp")
        if "bv" in record:
            base_value = _senml_number(record["bv"], "bv", i, "not_a_number")
        if "bs" in record:
            base_sum = _senml_number(record["bs"], "bs", i, "not_a_number")
        name = _senml_text(record["n"], "n", i) if "n" in record else ""
        given = [key for key in ("v", "vb", "vs", "vd") if key in record]
        if len(given) > 1:
            raise PayloadError("undecodable", f"SenML record {i} has {' and '.join(given)}: one value field at most")
        if not given and "s" not in record:
            if name or set(record) - _SENML_BASE_FIELDS:
                # A value under a name SenML does not know ("V"), or none at all: the RFC refuses such a record.
                raise PayloadError("undecodable", f"SenML record {i} has no value field (v, vb, vs, vd) and no sum")
            continue  # base fields only: they apply to the records after it
        values: list[tuple[str, float]] = []
        if "v" in record:
            values.append(("", base_value + _senml_number(record["v"], "v", i, "not_a_number")))
        elif "vb" in record:
            if type(record["vb"]) is not bool:
                raise PayloadError("not_a_number", f"SenML record {i}: vb is a JSON {_json_kind(record['vb'])}")
            values.append(("", 1.0 if record["vb"] else 0.0))
        if "s" in record:
            values.append(("_sum", base_sum + _senml_number(record["s"], "s", i, "not_a_number")))
        if not values:
            continue  # a string or data value: not a reading
        metric, tags = (name, {"base_name": base_name}) if name and base_name else (name or base_name, None)
        if not metric.rstrip("\\"):
            raise PayloadError("undecodable", f"SenML record {i} has no name (bn + n)")
        seconds = base_time + (_senml_number(record["t"], "t", i, "bad_timestamp") if "t" in record else 0.0)
        ts: int | None = None  # "roughly now": the receive time
        from_receipt = False
        if seconds >= _SENML_RELATIVE_S:
            ts = timestamp_ns(seconds, "s")
        elif seconds:
            if seconds < -_SENML_RELATIVE_S:  # (-1e308 s would not even be a number of nanoseconds)
                raise PayloadError("bad_timestamp", f"SenML record {i}: relative time {seconds} s is out of range")
            ts, from_receipt = received_ns + round(seconds * 1_000_000) * 1_000, True
        for suffix, value in values:
            if metric + suffix in skip:
                continue
            if value - value != 0:  # a base value plus a value beyond a double
                raise PayloadError("non_finite", f"SenML record {i}: {metric + suffix!r} is {value}")
            samples.append(Sample(metric + suffix, value, ts, None, tags, from_receipt))
    if not samples:
        raise PayloadError("no_numeric_fields", "SenML pack has no numeric or boolean value")
    return samples


def _senml_text(value: Any, field: str, i: int) -> str:
    if type(value) is not str:
        raise PayloadError("undecodable", f"SenML record {i}: {field} is a JSON {_json_kind(value)}, not a string")
    return value


def _senml_number(value: Any, field: str, i: int, reason: str) -> float:
    if type(value) is not int and type(value) is not float:
        raise PayloadError(reason, f"SenML record {i}: {field} is a JSON {_json_kind(value)}, not a number")
    if reason == "bad_timestamp" and value - value != 0:
        raise PayloadError(reason, f"SenML record {i}: {field} is {value}")
    return finite_float(value, f"SenML record {i} {field}")
