"""One bad payload must become a dead letter, never an exception out of the parser (issue 15 items 1, 2,
11 and 12): the parser runs inside the dataflow, and an exception there stops the pipeline, in a loop when
the broker redelivers the message after each restart."""

from __future__ import annotations

import pytest

from collectors.mqtt.parse import MessageBatch, MQTTParser
from fleetwatch.config import from_dict
from fleetwatch.record import escape_tag, parse_series, series_key


def _parser(**mqtt: object) -> MQTTParser:
    cfg = from_dict(
        {
            "mqtt": {
                "max_payload_bytes": 65_536,
                "subscriptions": [
                    {"topic": "j/+", "template": "j/{device}", "format": "json"},
                    {
                        "topic": "ts/+",
                        "template": "ts/{device}",
                        "format": "json",
                        "timestamp_field": "ts",
                        "timestamp_unit": "s",
                    },
                    {"topic": "n/+/+", "template": "n/{device}/{metric}"},
                    {"topic": "lp/#", "format": "influx_line"},
                    {"topic": "tg/#", "format": "telegraf_json"},
                ],
                **mqtt,
            },
            "windows": {"max_age": "0s", "max_future_skew": "100000d"},
        },
        env={},
    )
    return MQTTParser(cfg.mqtt, cfg.windows)


HOSTILE = [
    ("j/d1", b"[" * 60_000, "undecodable"),
    ("j/d1", b"{" * 60_000, "undecodable"),
    ("j/d1", b'{"v": ' + b"9" * 400 + b"}", "non_finite"),
    ("j/d1", b'{"a": {"v": ' + b"9" * 400 + b"}}", "non_finite"),
    ("j/d1", b"9" * 400, "non_finite"),
    ("ts/d1", b'{"ts": 1e300, "v": 1}', "bad_timestamp"),
    ("ts/d1", b'{"ts": ' + b"9" * 400 + b', "v": 1}', "timestamp_out_of_range"),
    ("j/d1", b'{"\\ud800": 1}', "invalid_utf8"),
    ("j/d1", b'{"a": {"\\udfff": 1}}', "invalid_utf8"),
    # The UTF-8 bytes of a lone surrogate in a key: not UTF-8 either (in a string value, see below).
    ("j/d1", b'{"v\xed\xa0\x80": 1}', "invalid_utf8"),
    # Names that line protocol would write empty (a tag's trailing backslashes are left out) or as fleetwatch's
    # own tag: no reading without its metric tag, no aggregate InfluxDB refuses for a duplicate tag.
    ("j/d1", b'{"\\\\": 5}', "undecodable"),
    ("lp/x", b"m,window\\\\=w v=1", "undecodable"),
    ("tg/x", b'{"name": "m", "tags": {"window\\\\": "x"}, "fields": {"v": 7}}', "undecodable"),
    ("tg/x", b'{"name": "\\\\", "fields": {"v": 7}}', "undecodable"),
    ("n/d1/\\", b"1", "topic_mismatch"),
    # Series keys InfluxDB would take for raw points but not with an aggregate's "_agg" and window tag.
    ("n/d1/" + "L" * 65_480, b"1", "series_too_long"),
    ("j/d1", b'{"' + b"k" * 65_500 + b'": 1}', "series_too_long"),
]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"), HOSTILE, ids=[h[1][:20].decode(errors="replace") for h in HOSTILE]
)
def test_a_hostile_payload_is_a_dead_letter_and_the_batch_goes_on(topic: str, payload: bytes, reason: str) -> None:
    parser = _parser()
    parsed = parser.parse(MessageBatch(1, [("j/d0", b'{"v": 1}'), (topic, payload), ("n/d2/temp", b"2.5")]))
    assert [d.reason for d in parsed.dead_letters] == [reason]
    assert parsed.dead_letters[0].raw == payload
    assert [r.value for r in parsed.readings] == [1.0, 2.5]
    # Every reading the parser lets through can be written as UTF-8 line protocol.
    for reading in parsed.readings:
        reading.series.encode("utf-8")


def test_invalid_utf8_only_in_a_string_is_a_dead_letter_and_the_readings_are_kept() -> None:
    """A device that writes its unit in Latin-1 ("\xb0C") or a lone surrogate's bytes in a name string: the
    message is a dead letter (invalid_utf8, with its bytes), and its numbers are readings all the same, as
    Telegraf reads them. Bad bytes in a reading's own name refuse the message."""
    parser = _parser()
    latin1 = b'{"temperature": 21.5, "unit": "\xb0C", "humidity": 40}'
    surrogate = b'{"v": 1, "s": "\xed\xa0\x80"}'
    in_a_name = b'{"temp\xb0": 21.5}'
    parsed = parser.parse(MessageBatch(1, [("j/d0", latin1), ("j/d1", surrogate), ("j/d2", in_a_name)]))
    assert [(d.reason, d.raw) for d in parsed.dead_letters] == [
        ("invalid_utf8", latin1),
        ("invalid_utf8", surrogate),
        ("invalid_utf8", in_a_name),
    ]
    assert "its 2 readings were read" in parsed.dead_letters[0].detail
    assert [(parse_series(r.series)[1]["metric"], r.value) for r in parsed.readings] == [
        ("temperature", 21.5),
        ("humidity", 40.0),
        ("v", 1.0),
    ]


def test_a_number_after_a_byte_order_mark_keeps_its_topics_metric() -> None:
    parsed = _parser().parse(MessageBatch(1, [("n/d1/temp", b"21.0"), ("n/d1/temp", b"\xef\xbb\xbf21.5")]))
    assert not parsed.dead_letters
    assert [(r.series, r.value) for r in parsed.readings] == [("readings,device=d1,metric=temp", v) for v in (21, 21.5)]


def test_a_newline_in_a_topic_level_or_key_never_breaks_a_line() -> None:
    parser = _parser()
    parsed = parser.parse(MessageBatch(1, [("n/dev\nice/temp", b"1"), ("j/d1", b'{"te\\nmp": 2}'), ("n/d\r/x", b"3")]))
    assert not parsed.dead_letters
    for reading in parsed.readings:
        assert "\n" not in reading.series and "\r" not in reading.series
    assert escape_tag("a\nb") == "a\\nb"
    assert series_key("m\nx", {"k": "v\r"}) == "m\\nx,k=v\\r"


def test_the_topic_and_field_caches_stay_bounded_under_churn() -> None:
    parser = _parser()
    parser.topic_cache_limit = 1_000
    parser.name_cache_limit = 5_000
    for i in range(50):
        # 200 new topics a batch, each with 20 new JSON keys.
        fields = ",".join(f'"k{i}_{j}": {j}' for j in range(20))
        batch = [(f"j/dev{i}_{k}", ("{" + fields + "}").encode()) for k in range(200)]
        parsed = parser.parse(MessageBatch(1, batch))
        assert len(parsed.readings) == 200 * 20
        assert parser.cached_topics() <= 1_000
        assert parser.cached_names() <= 5_000
