"""collectors/mqtt/payloads and parse: properties of the payload decoders over generated input (hypothesis).

- ``number``: every finite float written as Python or as a device would (``repr``, fixed point, exponent) reads
  back as the same value; any bytes give a finite value or a PayloadError with a dead-letter reason.
- ``json``: a generated object (nested objects, numbers, booleans, strings, lists, nulls) gives exactly the
  readings its flattening by path says; any bytes give finite readings or a PayloadError.
- ``influx_line``: lines built from generated measurements, tags, fields of every type and timestamps, escaped
  by the published rules (measurement: comma and space; tag keys, tag values and field keys: comma, equals sign
  and space; string field values: double quote and backslash, in double quotes; a backslash before nothing it
  escapes is literal), read back as exactly what was written; any text gives samples or a PayloadError.
- Topic filters match as the MQTT spec says (checked against a plain level-by-level reading of it), and a
  template gives back the levels a topic was built from.
- Through MQTTParser, every message of a batch of arbitrary topics and payloads ends as readings or as exactly
  one dead letter with a known reason (readings out of range, or invalid UTF-8 in strings: the message's other
  readings, and one dead letter): none vanishes, and nothing raises.

FLEETWATCH_FUZZ_EXAMPLES sets the number of examples of each property (a few hundred by default).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from collectors.mqtt.parse import MessageBatch, MQTTParser, _scaled
from collectors.mqtt.payloads import (
    PartlyInvalidUTF8,
    PayloadError,
    Sample,
    decode_json,
    decode_line_protocol,
    decode_number,
    decode_senml,
    decode_telegraf_json,
)
from collectors.mqtt.topics import TopicTemplate, topic_matches
from fleetwatch.config import from_dict
from fleetwatch.devices import RESERVED_TAGS
from fleetwatch.record import parse_series, series_key
from tests.unit.fuzzing import FUZZ

# Every reason a payload decoder or the parser gives (README, "Dead letters").
REASONS = {
    "oversized",
    "invalid_utf8",
    "undecodable",
    "not_a_number",
    "non_finite",
    "no_numeric_fields",
    "bad_timestamp",
    "timestamp_out_of_range",
    "topic_mismatch",
    "unknown_device",
}

FINITE = st.floats(allow_nan=False, allow_infinity=False)


def one_per_point(readings: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """A message's readings as the parser keeps them: of two with one name as written (one series at one time,
    one point in InfluxDB), the last."""
    last = {name: i for i, (name, _) in enumerate(readings)}
    return [reading for i, reading in enumerate(readings) if last[reading[0]] == i]


def as_written(name: str) -> str:
    """A name as a series key gives it back: without trailing backslashes (line protocol cannot write them),
    and with its line breaks as backslash n and backslash r (it has no escape for them), as InfluxDB stores it."""
    return name.rstrip("\\").replace("\n", "\\n").replace("\r", "\\r")


def decodes_or_refuses(decode: Any, payload: bytes) -> list[Sample] | None:
    """The samples, all finite, or None after a PayloadError with a known reason and a detail."""
    try:
        samples = decode(payload)
    except PayloadError as err:
        assert err.reason in REASONS, err.reason
        assert err.detail
        return None
    for sample in samples:
        assert math.isfinite(sample.value)
    return list(samples)


# ------------------------------------------------------------------------------------------- number


@FUZZ
@given(value=FINITE, style=st.sampled_from(["repr", "fixed", "exponent", "padded"]))
def test_a_finite_number_reads_back_as_written(value: float, style: str) -> None:
    text = {"repr": repr(value), "fixed": f"{value:.17f}", "exponent": f"{value:.17e}", "padded": f" {value!r}\n"}
    assert decode_number(text[style].encode()) == float(text[style])


@FUZZ
@given(payload=st.binary(max_size=64) | st.text(max_size=32).map(str.encode))
@example(payload=b"nan")
@example(payload=b"-Infinity")
@example(payload=b"1e999")
@example(payload=b"\xff1")
def test_any_bytes_as_a_number_give_a_finite_value_or_a_dead_letter_reason(payload: bytes) -> None:
    decodes_or_refuses(lambda p: [Sample("value", decode_number(p))], payload)


# ------------------------------------------------------------------------------------------- JSON

JSON_KEYS = st.text(st.characters(codec="utf-8"), max_size=6)
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | FINITE
    | st.text(max_size=6)
    | st.lists(st.integers(), max_size=2)
)
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.dictionaries(JSON_KEYS, inner, max_size=4), max_leaves=12)
JSON_OBJECTS = st.dictionaries(JSON_KEYS, JSON_VALUES, min_size=1, max_size=6)


def flattened(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """The README's rule: nested objects by path with ``_``, arrays by index, booleans as 0/1, strings and nulls
    left out."""
    out: list[tuple[str, float]] = []
    for key, value in obj.items():
        name = prefix + key
        if isinstance(value, int | float):  # booleans too: 1.0 and 0.0
            out.append((name, float(value)))
        elif isinstance(value, dict):
            out += flattened(value, name + "_")
        elif isinstance(value, list):
            out += flattened({str(i): item for i, item in enumerate(value)}, name + "_")
    return out


@FUZZ
@given(doc=JSON_OBJECTS, spaced=st.booleans())
@example(doc={"\\": False}, spaced=False)
def test_a_json_object_gives_the_readings_of_its_flattened_numbers(doc: dict[str, Any], spaced: bool) -> None:
    payload = json.dumps(doc, indent=1 if spaced else None, ensure_ascii=spaced).encode()
    expected = flattened(doc)
    try:
        samples = decode_json(payload, None, "auto", frozenset(), None)
    except PayloadError as err:
        if err.reason == "no_numeric_fields":
            assert expected == []
        elif err.reason == "undecodable":
            # A reading needs a name, and a tag value's trailing backslashes are left out of line protocol.
            assert any(not name.rstrip("\\") for name, _ in expected)
        else:
            # Only an integer beyond a float's range is refused among valid JSON numbers.
            assert err.reason == "non_finite"
            assert any(abs(v) > 1e308 for v in _numbers(doc))
        return
    assert [(s.metric, s.value) for s in samples] == expected


def _numbers(value: Any) -> list[int]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if type(value) is int else []


@FUZZ
@given(payload=st.binary(max_size=64) | JSON_VALUES.map(lambda v: json.dumps(v).encode()[:-1]))
@example(payload=b"[" * 5_000)
@example(payload=b'{"a": NaN}')
@example(payload=b'"\\ud800"')
def test_any_bytes_as_json_give_finite_readings_or_a_dead_letter_reason(payload: bytes) -> None:
    decodes_or_refuses(lambda p: decode_json(p, None, "auto", frozenset(), None), payload)
    decodes_or_refuses(lambda p: decode_json(p, "ts", "auto", frozenset({"ts"}), "m"), payload)
    decodes_or_refuses(lambda p: decode_telegraf_json(p, "auto"), payload)
    decodes_or_refuses(lambda p: decode_senml(p, 1_767_225_600_000_000_000), payload)


SENML_RECORDS = st.lists(
    st.dictionaries(
        st.sampled_from(["bn", "bt", "bv", "bs", "bver", "n", "v", "vb", "vs", "s", "t", "x_"]),
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    ),
    max_size=4,
)


@FUZZ
@given(records=SENML_RECORDS)
@example(records=[{"t": -1.7976931348623157e308, "n": "x", "v": 1}])  # OverflowError in the relative time
def test_any_senml_records_give_finite_readings_or_a_dead_letter_reason(records: list[dict[str, Any]]) -> None:
    samples = decodes_or_refuses(lambda p: decode_senml(p, 1_767_225_600_000_000_000), json.dumps(records).encode())
    for sample in samples or []:
        assert sample.metric.rstrip("\\")
        assert sample.ts_ns is None or isinstance(sample.ts_ns, int)


# ------------------------------------------------------------------------------------------- line protocol

# Any character but the line separator (which no element may hold, by the published rules).
LP_CHARACTERS = st.characters(codec="utf-8", exclude_characters="\n")
LP_NAMES = st.text(LP_CHARACTERS, min_size=1, max_size=8)


def escape(text: str, special: str) -> str:
    """Backslash before each special character, and before a backslash that would otherwise be read as one
    (before a special character, another backslash or the end of the element)."""
    out = []
    for i, ch in enumerate(text):
        if ch in special:
            out.append("\\" + ch)
        elif ch == "\\" and (i + 1 == len(text) or text[i + 1] in special + "\\"):
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)


@st.composite
def field_values(draw: st.DrawFn) -> tuple[str, float | None]:
    """A field value as written, and the reading it is (None: a string field, not a reading)."""
    kind = draw(st.sampled_from(["float", "integer", "uinteger", "boolean", "string"]))
    if kind == "float":
        value = draw(FINITE)
        text = draw(st.sampled_from([repr(value), f"{value:.17e}", f"{value:.6E}"]))
        return text, float(text)
    if kind == "integer":
        number = draw(st.integers(-(2**63), 2**63 - 1))
        return f"{number}i", float(number)
    if kind == "uinteger":
        number = draw(st.integers(0, 2**64 - 1))
        return f"{number}u", float(number)
    if kind == "boolean":
        text = draw(st.sampled_from(["t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"]))
        return text, 1.0 if text[0] in "tT" else 0.0
    text = draw(st.text(LP_CHARACTERS, max_size=10))
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"', None


@st.composite
def points(draw: st.DrawFn) -> tuple[str, list[tuple[str, float, int | None, str, dict[str, str]]]]:
    """One line and the (metric, value, ts, measurement, tags) of each numeric field in it."""
    measurement = draw(LP_NAMES.filter(lambda m: not m.startswith("#") and m.strip() == m))
    # (fleetwatch's own tags, metric and window, are refused: tests/unit/test_mqtt_payloads.py)
    # (as are their spellings with trailing backslashes, which line protocol leaves out)
    tags = draw(
        st.dictionaries(LP_NAMES.filter(lambda k: k.rstrip("\\") not in ("metric", "window")), LP_NAMES, max_size=3)
    )
    fields = draw(st.dictionaries(LP_NAMES, field_values(), min_size=1, max_size=4))
    ts = draw(st.none() | st.integers(-(2**63), 2**63 - 1))
    head = escape(measurement, ", ") + "".join(f",{escape(k, ',= ')}={escape(v, ',= ')}" for k, v in tags.items())
    body = ",".join(f"{escape(k, ',= ')}={text}" for k, (text, _) in fields.items())
    line = f"{head} {body}" + ("" if ts is None else f" {ts}")
    expected = [(k, value, ts, measurement, tags) for k, (_, value) in fields.items() if value is not None]
    return line, expected


@FUZZ
@given(lines=st.lists(points(), min_size=1, max_size=4), newline=st.sampled_from(["\n", "\r\n"]))
@example(lines=[("m,k=a\u2028b v=1", [("v", 1.0, None, "m", {"k": "a\u2028b"})])], newline="\n")
@example(lines=[("m\\x,k\\y=C:\\dir\\  v\\z=1", [("v\\z", 1.0, None, "m\\x", {"k\\y": "C:\\dir "})])], newline="\n")
def test_line_protocol_written_by_the_rules_reads_back_as_written(
    lines: list[tuple[str, list[tuple[str, float, int | None, str, dict[str, str]]]]], newline: str
) -> None:
    payload = newline.join(line for line, _ in lines).encode()
    expected = [e for _, point in lines for e in point]
    try:
        samples = decode_line_protocol(payload)
    except PayloadError as err:
        assert err.reason == "no_numeric_fields" and expected == [], err.detail
        return
    assert [(s.metric, s.value, s.ts_ns, s.measurement, s.tags) for s in samples] == expected


LP_PIECES = st.sampled_from(["m", ",", "=", " ", "\\", '"', "1", "i", "u", "t", "1e5", "\n", "#", "_"])


@FUZZ
@given(text=st.text(st.characters(codec="utf-8"), max_size=48) | st.lists(LP_PIECES, max_size=24).map("".join))
@example(text="m v=1_0")
@example(text="m v=1.5i")
@example(text="m v=-1u")
@example(text="m v=9223372036854775808i")
@example(text="m v=1 1_000")
@example(text="m v=1 \u0661\u0662")
def test_any_text_as_line_protocol_gives_samples_or_a_dead_letter_reason(text: str) -> None:
    samples = decodes_or_refuses(decode_line_protocol, text.encode())
    for sample in samples or []:
        assert sample.measurement and sample.metric
        assert sample.ts_ns is None or -(2**63) <= sample.ts_ns < 2**63


@FUZZ
@given(doc=JSON_OBJECTS, spaced=st.booleans())
def test_the_parser_reads_a_json_object_as_the_decoder_does(doc: dict[str, Any], spaced: bool) -> None:
    """MQTTParser reads flat JSON objects inline, without decode_json: both must give the same readings (a
    metric name with a line break is written escaped in the series key, and read back as backslash n)."""
    payload = json.dumps(doc, indent=1 if spaced else None).encode()
    parser = _parser()
    parsed = parser.parse(MessageBatch(1_767_225_600_000_000_000, [("j/d1", payload), ("j/d1", payload)]))
    if len(payload) > 256:  # the parser's max_payload_bytes
        assert [d.reason for d in parsed.dead_letters] == ["oversized"] * 2
        return
    try:
        expected = [(s.metric, s.value) for s in decode_json(payload, None, "auto", frozenset(), None)]
    except PayloadError as err:
        assert [d.reason for d in parsed.dead_letters] == [err.reason] * 2
        return
    if any("\x00" in metric for metric, _ in expected):  # refused, as a NUL in a topic is
        assert [d.reason for d in parsed.dead_letters] == ["undecodable"] * 2 and not parsed.readings
        return
    # An empty name is left out of the series key (line protocol cannot carry an empty tag value), and so are
    # trailing backslashes (see fleetwatch.record).
    expected = one_per_point([(as_written(metric), value) for metric, value in expected])
    assert [(parse_series(r.series)[1].get("metric", ""), r.value) for r in parsed.readings] == expected * 2


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v": 2.5 } \n',  # whitespace around the object
        b'\xef\xbb\xbf{"v": 1}',  # a byte order mark
        b'\xff\xfe{\x00"\x00v\x00"\x00:\x001\x00}\x00',  # UTF-16
        b'{"v": 1} x',  # data after the object
        b'{"v": 1, "v": 2}',  # a name twice: the last value
        b'{"v": NaN}',
        b'{"v": -Infinity}',
        b'{"v": 1e400}',
        b'{"v": 18446744073709551617}',  # beyond 64 bits
        b'{"v": -9223372036854775809}',
        b'{"v": 1, "s": "\\ud800"}',  # a lone surrogate, escaped
        b'{"\\ud83d\\ude00": 3}',  # a surrogate pair, escaped: one character
        b'{"v": 1, "s": "\xed\xa0\x80"}',  # a lone surrogate's UTF-8 bytes
        b'{"a": ' * 30 + b"1" + b"}" * 30,  # nested (max_payload_bytes is 256 here)
        b"{}",
        b"",
        b"[]",
    ],
)
def test_the_parser_judges_odd_json_bytes_as_the_decoder_does(payload: bytes) -> None:
    """The parser's inline decoder for flat JSON (orjson) leaves what it refuses to decode_json: whatever the bytes,
    the readings or the dead letter reason are the decoder's."""
    parsed = _parser().parse(MessageBatch(1_767_225_600_000_000_000, [("j/d1", payload)]))
    try:
        expected = [(s.metric.rstrip("\\"), s.value) for s in decode_json(payload, None, "auto", frozenset(), None)]
    except PayloadError as err:
        if not payload:
            assert parsed.empty_payloads == 1 and parsed.dead_letters == []  # (counted, not a dead letter)
        else:
            assert [d.reason for d in parsed.dead_letters] == [err.reason]
        # Invalid UTF-8 only in strings that are no readings: a dead letter, and the readings kept.
        kept = err.samples if isinstance(err, PartlyInvalidUTF8) else []
        assert [(parse_series(r.series)[1].get("metric", ""), r.value) for r in parsed.readings] == [
            (as_written(s.metric), s.value) for s in kept
        ]
        return
    assert parsed.dead_letters == []
    assert [(parse_series(r.series)[1].get("metric", ""), r.value) for r in parsed.readings] == expected


# ------------------------------------------------------------------------------------------- series keys

NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)


@FUZZ
@given(measurement=NAMES, tags=st.dictionaries(NAMES, st.text(st.characters(codec="utf-8"), max_size=8), max_size=4))
@example(measurement="m", tags={"metric": "\\", "site": "s1"})  # a trailing backslash escaped the comma after it
@example(measurement="m\\", tags={"k": "C:\\new"})
def test_a_series_key_reads_back_as_its_measurement_and_tags(measurement: str, tags: dict[str, str]) -> None:
    """The series key is the line protocol of a point's measurement and tags: parse_series gives them back
    (line breaks, which line protocol cannot carry, as backslash n and r), and so does a line protocol reader
    by the published rules (but for two backslashes in a row, which they read as one and InfluxDB 1.x keeps)."""
    key = series_key(measurement, tags)
    # Trailing backslashes cannot be written (see fleetwatch.record): names read back without them, and
    # keys and values that were nothing else are left out, as is a key that then repeats the one before.
    measurement = as_written(measurement)
    named: dict[str, str] = {}
    for k in sorted(tags):
        if as_written(k) and as_written(tags[k]) and as_written(k) not in named:
            named[as_written(k)] = as_written(tags[k])
    assert parse_series(key) == (measurement, named)
    # A line starting with "#" is a comment and leading blanks are skipped: such measurements are not
    # written (a Telegraf JSON name starting with "#" is a dead letter).
    readable = measurement[:1] not in ("", "#", " ", "\t")
    # A line-protocol payload may not name fleetwatch's own tags (metric, window): hypothesis drew {"window": "0"}.
    readable = readable and not set(named) & RESERVED_TAGS
    if readable and "\\\\" not in key:
        [sample] = decode_line_protocol(f"{key} value=1".encode())
        assert (sample.measurement, sample.tags) == (measurement, named)


# ------------------------------------------------------------------------------------------- topics

LEVEL_TEXT = st.text(st.sampled_from("ab$+#é"), max_size=3)
FILTER_LEVELS = st.sampled_from(["a", "b", "+", "", "$a", "ab", "é"])


def matches_by_the_spec(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 read level by level: ``+`` one level, a trailing ``#`` the parent and any levels below,
    and a filter starting with a wildcard does not match a topic starting with ``$``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filt, parts = topic_filter.split("/"), topic.split("/")
    if filt[-1] == "#":
        head = filt[:-1]
        return len(parts) >= len(head) and all(f in ("+", p) for f, p in zip(head, parts, strict=False))
    return len(parts) == len(filt) and all(f in ("+", p) for f, p in zip(filt, parts, strict=True))


@FUZZ
@given(
    levels=st.lists(FILTER_LEVELS, min_size=1, max_size=4),
    hash_end=st.booleans(),
    topic=st.lists(LEVEL_TEXT, min_size=1, max_size=5).map("/".join),
)
def test_topic_filters_match_as_the_spec_says(levels: list[str], hash_end: bool, topic: str) -> None:
    topic_filter = "/".join([*levels, "#"] if hash_end else levels)
    assert topic_matches(topic_filter, topic) == matches_by_the_spec(topic_filter, topic)


@FUZZ
@given(
    values=st.lists(st.text(st.characters(codec="utf-8", exclude_characters="/"), max_size=6), min_size=3, max_size=3),
    rest=st.lists(st.text(max_size=4), max_size=3),
)
def test_a_template_gives_back_the_levels_of_its_topic(values: list[str], rest: list[str]) -> None:
    template = TopicTemplate.parse("s/{site}/+/{metric}/#")
    topic = "/".join(["s", *values, *rest])
    assert template.tags(topic) == {"site": values[0], "metric": values[2]}
    exact = None if rest else {"site": values[0], "metric": values[2]}
    assert TopicTemplate.parse("s/{site}/+/{metric}").tags(topic) == exact


# ------------------------------------------------------------------------------------------- the parser


def _parser() -> MQTTParser:
    cfg = from_dict(
        {
            "mqtt": {
                "max_payload_bytes": 256,
                "subscriptions": [
                    {"topic": "n/+/+", "template": "n/{device}/{metric}"},
                    {"topic": "j/+", "template": "j/{device}", "format": "json"},
                    {
                        "topic": "t/+",
                        "template": "t/{device}",
                        "format": "json",
                        "timestamp_field": "ts",
                        "timestamp_unit": "ms",
                    },
                    {"topic": "l/#", "format": "influx_line"},
                    {"topic": "g/#", "format": "telegraf_json"},
                ],
            },
            "windows": {"max_age": "3650d", "max_future_skew": "3650d"},
        },
        env={},
    )
    return MQTTParser(cfg.mqtt, cfg.windows)


TOPICS = st.one_of(
    st.sampled_from(["n/d1/temp", "j/d1", "t/d1", "l/x", "g/x", "n/d1", "other", "n/a b/c\nd"]),
    st.builds(lambda p, t: p + t, st.sampled_from(["n/", "j/", "t/", "l/", "g/"]), st.text(max_size=12)),
)
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    JSON_OBJECTS.map(lambda d: json.dumps(d).encode()),
    points().map(lambda p: p[0].encode()),
    FINITE.map(lambda v: repr(v).encode()),
)


@FUZZ
@given(messages=st.lists(st.tuples(TOPICS, PAYLOADS), min_size=1, max_size=8))
def test_every_message_of_a_batch_ends_as_readings_or_one_dead_letter(messages: list[tuple[str, bytes]]) -> None:
    """(or, empty, as a count of empty payloads)"""
    parser = _parser()
    received_ns = 1_767_225_600_000_000_000
    readings = dead = 0
    for topic, payload in messages:
        alone = parser.parse(MessageBatch(received_ns, [(topic, payload)]))
        if alone.dead_letters:
            [letter] = alone.dead_letters
            # Readings out of range cost only themselves, and invalid UTF-8 in strings no reading: the message's
            # other readings are kept.
            assert not alone.readings or letter.reason in ("timestamp_out_of_range", "invalid_utf8")
            assert letter.reason in REASONS, letter.reason
            assert letter.detail
            # (an oversized payload keeps its first max_payload_bytes)
            kept = payload[: parser._max_payload] if letter.reason == "oversized" else payload
            assert (letter.source, letter.raw) == (f"mqtt:{topic}", kept)
        elif not payload:
            assert alone.empty_payloads == 1 and not alone.readings  # counted: a retained message deleted
        else:
            assert alone.readings, f"{payload!r} on {topic!r} left neither readings nor a dead letter"
        for reading in alone.readings:
            assert math.isfinite(reading.value)
            reading.series.encode("utf-8")
            assert "\n" not in reading.series
        readings += len(alone.readings)
        dead += len(alone.dead_letters)
    # The same messages as one batch, with the caches now warm, come out the same.
    together = parser.parse(MessageBatch(received_ns, messages))
    assert together.messages == len(messages)
    assert (len(together.readings), len(together.dead_letters)) == (readings, dead)


@given(
    st.one_of(st.integers(-(2**80), 2**80), st.integers(0, 2**53)),
    st.sampled_from([1, 1_000, 1_000_000, 1_000_000_000]),
)
@example(1_767_225_600_123, 1_000_000)
@example(-1, 1_000_000)
@example(2**63 // 1_000_000 + 1, 1_000_000)
def test_a_json_timestamp_is_scaled_to_nanoseconds_exactly(stamp: int, ns_per_unit: int) -> None:
    """The flat-JSON path scales an integer timestamp in parts (a product computed on boxed ints was slow,
    compiled): it must be the exact product for any integer a device sends, past 64 bits too."""
    assert _scaled(stamp, ns_per_unit) == stamp * ns_per_unit
