"""collectors/mqtt: topic templates, payload decoders and the batch parser."""

from __future__ import annotations

import math
import time

import pytest

from collectors.mqtt.parse import MessageBatch, MQTTParser, ParsedBatch
from collectors.mqtt.payloads import (
    PayloadError,
    decode_json,
    decode_line_protocol,
    decode_number,
    decode_telegraf_json,
    timestamp_ns,
)
from collectors.mqtt.topics import TopicTemplate, topic_matches
from fleetwatch.config import from_dict
from fleetwatch.record import parse_series, series_key

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def test_template_levels_become_tags() -> None:
    t = TopicTemplate.parse("sensors/{site}/+/{device}/{metric}")
    assert t.tags("sensors/lyon/rack1/d7/temp") == {"site": "lyon", "device": "d7", "metric": "temp"}
    assert t.tags("sensors/lyon/rack1/d7") is None  # too short
    assert t.tags("other/lyon/rack1/d7/temp") is None  # literal differs
    assert TopicTemplate.parse("tele/{device}/#").tags("tele/plug/SENSOR/extra") == {"device": "plug"}


@pytest.mark.parametrize("bad", ["a/{x}/{x}", "a/#/b", "a/{x/b", "a/x+/b", "a/{window}/{metric}"])
def test_bad_templates_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        TopicTemplate.parse(bad)


def test_topic_filter_matching() -> None:
    assert topic_matches("sensors/+/+/+", "sensors/a/b/c")
    assert not topic_matches("sensors/+/+/+", "sensors/a/b")
    assert topic_matches("sensors/#", "sensors/a/b/c")
    assert not topic_matches("#", "$SYS/broker/load")


def test_number_payloads() -> None:
    assert decode_number(b" 21.5\n") == 21.5
    assert decode_number(b"\xef\xbb\xbf-3e2") == -300.0  # a byte-order mark, as some Windows tools write
    for payload, reason in [
        (b"abc", "not_a_number"),
        (b"NaN", "non_finite"),
        (b"-inf", "non_finite"),
        (b"1e999", "non_finite"),
        (b"\xff\xfe", "invalid_utf8"),
        (b"", "not_a_number"),
        (b"1_000", "not_a_number"),  # float() takes it; no device means it
        ("١٢٣".encode(), "not_a_number"),
        (b"0x10", "not_a_number"),
    ]:
        with pytest.raises(PayloadError) as err:
            decode_number(payload)
        assert err.value.reason == reason


def test_a_switch_state_is_one_or_zero() -> None:
    """Relays and binary sensors publish their state on their own topic: Tasmota's stat/<dev>/POWER and ESPHome's
    switch state "ON"/"OFF", Shelly Gen1's relay "on"/"off", Home Assistant's JSON "on" and JSON booleans. A
    dashboard charts them as 1 and 0, as a boolean inside a JSON object already is."""
    states = [decode_number(p) for p in (b"ON", b"OFF", b"on\n", b" off", b"true", b"False")]
    assert states == [1, 0, 1, 0, 1, 0]
    for payload, expected in [(b'"on"', 1.0), (b"true", 1.0), (b"false", 0.0), (b'{"occupancy": true}', 1.0)]:
        [sample] = decode_json(payload, None, "auto", frozenset(), None)
        assert sample.value == expected
    for payload in (b"onn", b"o n", b"yes", b"ON OFF", b"\xef\xbb\xbfopen"):
        with pytest.raises(PayloadError) as err:
            decode_number(payload)
        assert err.value.reason == "not_a_number"
    cfg = from_dict(
        {
            "mqtt": {
                "subscriptions": [{"topic": "stat/+/+", "template": "stat/{device}/{metric}", "format": "number"}]
            },
            "windows": {"max_age": "0s"},
        },
        env={},
    )
    batch = MessageBatch(T0, [("stat/plug1/POWER", b"ON"), ("stat/plug1/POWER", b"OFF")])
    parsed = MQTTParser(cfg.mqtt, cfg.windows).parse(batch)
    assert parsed.dead_letters == []
    assert [(r.series, r.value) for r in parsed.readings] == [
        ("readings,device=plug1,metric=POWER", 1.0),
        ("readings,device=plug1,metric=POWER", 0.0),
    ]


def test_names_of_one_message_that_write_one_point_are_one_reading_the_last() -> None:
    """Found by a review: {"a_0": 1, "a": [5]} flattens both to a_0, "t" and "t\\" are one tag (its trailing
    backslash is left out), "value" and the topic's metric are one metric. InfluxDB stored the last as the point,
    and the windows counted both (count 2, sum 6 for a raw point of 5). Through the inline flat-JSON path and the
    general decoder alike; readings of one series at different times (a buffered array) stay apart."""
    cfg = from_dict(
        {
            "mqtt": {
                "subscriptions": [
                    {"topic": "j/+", "template": "j/{device}", "format": "json", "write_raw": True},
                    {"topic": "m/+/+", "template": "m/{device}/{metric}", "format": "json"},
                    {"topic": "a/+", "template": "a/{device}", "format": "json", "timestamp_field": "ts"},
                ]
            },
            "windows": {"max_age": "0s"},
        },
        env={},
    )
    batch = [
        ("j/d1", b'{"a_0": 1, "a": [5]}'),
        ("j/d2", b'{"t": 1, "t\\\\": 5, "u": 7}'),
        ("j/d2", b'{"t": 2, "t\\\\": 6}'),  # the inline path, its names now cached
        ("m/d3/temp", b'{"value": 20.5, "temp": 21.5}'),
        ("j/d5", b'{"a\\nb": 1, "a\\\\nb": 2}'),  # a line break and backslash n: one tag value
        ("a/d4", b'[{"ts": 1767225600, "v": 1}, {"ts": 1767225610, "v": 2}]'),
    ]
    parsed = MQTTParser(cfg.mqtt, cfg.windows).parse(MessageBatch(T0, batch))
    assert parsed.dead_letters == []
    got = [(parse_series(r.series)[1]["device"], parse_series(r.series)[1]["metric"], r.value) for r in parsed.readings]
    assert got == [
        ("d1", "a_0", 5.0),
        ("d2", "t", 5.0),
        ("d2", "u", 7.0),
        ("d2", "t", 6.0),
        ("d3", "temp", 21.5),
        ("d5", "a\\nb", 2.0),
        ("d4", "v", 1.0),
        ("d4", "v", 2.0),
    ]
    assert [r.value for r in parsed.raw] == [5.0, 5.0, 7.0, 6.0, 2.0]


def test_a_nul_in_a_json_name_is_refused_as_in_a_topic() -> None:
    cfg = from_dict(
        {
            "mqtt": {"subscriptions": [{"topic": "j/+", "template": "j/{device}", "format": "json"}]},
            "windows": {"max_age": "0s"},
        },
        env={},
    )
    parsed = MQTTParser(cfg.mqtt, cfg.windows).parse(MessageBatch(T0, [("j/d1", b'{"a\\u0000b": 1, "c": 2}')]))
    assert [(d.reason, d.detail) for d in parsed.dead_letters] == [
        ("undecodable", "name 'readings,device=d1,metric=a\\x00b' holds a NUL character")
    ]
    assert parsed.readings == []


def test_tasmota_sensor_payload() -> None:
    payload = b'{"Time":"2026-01-01T00:00:10","AM2301":{"Temperature":21.3,"Humidity":45.1},"TempUnit":"C"}'
    samples = decode_json(payload, "Time", "rfc3339", frozenset(), None)
    assert {(s.metric, s.value) for s in samples} == {("AM2301_Temperature", 21.3), ("AM2301_Humidity", 45.1)}
    assert {s.ts_ns for s in samples} == {T0 + 10 * 10**9}


def test_tasmota_three_phase_energy_arrays_are_flattened_by_index() -> None:
    """Tasmota's ENERGY of a three-phase meter has a value per phase in an array: each is a reading, named as
    Telegraf's JSON flattener names it. Strings and nulls inside arrays are skipped as elsewhere."""
    payload = (
        b'{"Time":"2026-01-01T00:00:10","ENERGY":{"TotalStartTime":"2025-01-01T00:00:00","Total":12.345,'
        b'"Power":[100,200,300],"Voltage":[230,231,229],"Factor":[0.91,null,"x"],"Phases":[{"Current":0.4}]}}'
    )
    samples = decode_json(payload, "Time", "rfc3339", frozenset({"ENERGY_Voltage_1"}), None)
    assert {s.metric: s.value for s in samples} == {
        "ENERGY_Total": 12.345,
        "ENERGY_Power_0": 100.0,
        "ENERGY_Power_1": 200.0,
        "ENERGY_Power_2": 300.0,
        "ENERGY_Voltage_0": 230.0,
        "ENERGY_Voltage_2": 229.0,  # (ENERGY_Voltage_1 in ignore_fields)
        "ENERGY_Factor_0": 0.91,
        "ENERGY_Phases_0_Current": 0.4,
    }
    assert {s.ts_ns for s in samples} == {T0 + 10 * 10**9}


def test_a_nested_timestamp_field_by_its_dotted_path_shelly_gen2() -> None:
    """Shelly Gen2's NotifyStatus carries its time in params.ts (seconds, a float); the time is no reading."""
    payload = (
        b'{"src":"shellyplus1pm-a8032ab1","dst":"user_1","method":"NotifyStatus",'
        b'"params":{"ts":1767225600.25,"switch:0":{"id":0,"apower":12.5,"temperature":{"tC":41.2,"tF":106.2}}}}'
    )
    cfg = from_dict(
        {
            "mqtt": {
                "subscriptions": [
                    {
                        "topic": "shellies/+/events/rpc",
                        "template": "shellies/{device}/#",
                        "format": "json",
                        "timestamp_field": "params.ts",
                    }
                ]
            },
            "windows": {"max_age": "0s", "max_future_skew": "1000d"},
        },
        env={},
    )
    parsed = MQTTParser(cfg.mqtt, cfg.windows).parse(MessageBatch(T0, [("shellies/sp1/events/rpc", payload)]))
    assert not parsed.dead_letters
    got = {parse_series(r.series)[1]["metric"]: (r.value, r.ts_ns) for r in parsed.readings}
    assert got == {
        "params_switch:0_id": (0.0, T0 + 250_000_000),
        "params_switch:0_apower": (12.5, T0 + 250_000_000),
        "params_switch:0_temperature_tC": (41.2, T0 + 250_000_000),
        "params_switch:0_temperature_tF": (106.2, T0 + 250_000_000),
    }
    with pytest.raises(PayloadError) as err:
        decode_json(b'{"params":{"ts":null},"v":1}', "params.ts", "auto", frozenset(), None)
    assert err.value.detail == "timestamp field 'params.ts' is missing or null"


def test_zigbee2mqtt_payload() -> None:
    payload = (
        b'{"battery":97,"humidity":48.2,"linkquality":120,"temperature":22.5,"voltage":3000,'
        b'"occupancy":true,"update":{"state":"idle"},"update_available":null}'
    )
    samples = decode_json(payload, None, "auto", frozenset({"update"}), None)
    assert {s.metric: s.value for s in samples} == {
        "battery": 97.0,
        "humidity": 48.2,
        "linkquality": 120.0,
        "temperature": 22.5,
        "voltage": 3000.0,
        "occupancy": 1.0,
    }
    assert all(s.ts_ns is None for s in samples)


@pytest.mark.parametrize(
    "value,unit,expected",
    [
        (1_767_225_600, "auto", T0),
        (1_767_225_600_000, "auto", T0),
        (1_767_225_600_000_000_000, "auto", T0),
        (1_767_225_600.5, "s", T0 + 500_000_000),
        ("2026-01-01T00:00:00Z", "rfc3339", T0),
        ("2026-01-01T01:00:00+01:00", "auto", T0),
        ("1767225600000", "ms", T0),
        ("2025-12-31T23:59:60Z", "rfc3339", T0),  # a leap second: the first second of the next minute
        ("2025-12-31T23:59:60.250Z", "auto", T0 + 250_000_000),
        ("2026-01-01t00:00:00.5z", "rfc3339", T0 + 500_000_000),  # RFC 3339 allows lower case
        # A float epoch to the microsecond, exactly: times 1e6 in doubles gave ...123000064 ns.
        (1_767_225_600_123.0, "ms", T0 + 123_000_000),
        (1_767_225_600.123456, "s", T0 + 123_456_000),
        (1_767_225_600_123.0, "auto", T0 + 123_000_000),
    ],
)
def test_timestamps(value: object, unit: str, expected: int) -> None:
    assert timestamp_ns(value, unit) == expected


def test_line_protocol() -> None:
    payload = b'weather,station=a\\ b temp=21.5,hum=40i,ok=t,note="x y" 1767225600000000000\nweather temp=1'
    samples = decode_line_protocol(payload)
    assert [(s.measurement, s.tags, s.metric, s.value, s.ts_ns) for s in samples] == [
        ("weather", {"station": "a b"}, "temp", 21.5, T0),
        ("weather", {"station": "a b"}, "hum", 40.0, T0),
        ("weather", {"station": "a b"}, "ok", 1.0, T0),
        ("weather", {}, "temp", 1.0, None),
    ]
    for bad, reason in [
        (b"weather", "undecodable"),
        (b"w v=abc", "undecodable"),
        (b"w v=1 notatime", "bad_timestamp"),
        (b'w s="only strings"', "no_numeric_fields"),
    ]:
        with pytest.raises(PayloadError) as err:
            decode_line_protocol(bad)
        assert err.value.reason == reason


def test_telegraf_json_keeps_the_name_tags_and_fields() -> None:
    """What Telegraf's MQTT output writes with data_format = "json" (its default 1 s timestamps), single and
    batched: the tags are kept and the fields are metrics of the named measurement."""
    one = (
        b'{"fields":{"usage_idle":97.5,"usage_user":1},"name":"cpu",'
        b'"tags":{"cpu":"cpu0","host":"h1"},"timestamp":1767225600}'
    )
    samples = decode_telegraf_json(one, "auto")
    assert [(s.measurement, s.tags, s.metric, s.value, s.ts_ns) for s in samples] == [
        ("cpu", {"cpu": "cpu0", "host": "h1"}, "usage_idle", 97.5, T0),
        ("cpu", {"cpu": "cpu0", "host": "h1"}, "usage_user", 1.0, T0),
    ]
    batch = (
        b'{"metrics":[{"fields":{"free":10,"path_label":"/"},"name":"disk","tags":{},"timestamp":1767225600123},'
        b'{"fields":{"up":true},"name":"net","tags":{"if":"eth0"}}]}'
    )
    samples = decode_telegraf_json(batch, "ms", frozenset({"free_ignored"}))
    assert [(s.measurement, s.metric, s.value, s.ts_ns) for s in samples] == [
        ("disk", "free", 10.0, T0 + 123_000_000),
        ("net", "up", 1.0, None),
    ]
    assert decode_telegraf_json(one, "auto", frozenset({"usage_user"}))[0].metric == "usage_idle"
    for bad, reason in [
        (b'{"fields":{"x":1},"tags":{}}', "undecodable"),  # no name
        (b'{"name":"cpu","fields":[1]}', "undecodable"),
        (b'{"name":"cpu","fields":{"x":1},"tags":{"a":1}}', "undecodable"),  # tag values are strings
        (b'{"name":"cpu","fields":{"x":1e999}}', "non_finite"),
        (b'{"name":"cpu","fields":{"x":1},"timestamp":"soon"}', "bad_timestamp"),
        (b'{"name":"cpu","fields":{"s":"text"}}', "no_numeric_fields"),
        (b'{"metrics":{"name":"cpu"}}', "undecodable"),
        (b'{"metrics":[3]}', "undecodable"),
        (b"\xff", "invalid_utf8"),
    ]:
        with pytest.raises(PayloadError) as err:
            decode_telegraf_json(bad, "auto")
        assert err.value.reason == reason, bad


def test_telegraf_json_through_the_parser_makes_series_of_its_measurement_and_tags() -> None:
    cfg = from_dict(
        {
            "mqtt": {
                "subscriptions": [
                    {"topic": "telegraf/#", "format": "telegraf_json", "template": "telegraf/{site}/#"},
                ]
            },
            "windows": {"max_age": "0s", "max_future_skew": "100000d"},
        },
        env={},
    )
    parser = MQTTParser(cfg.mqtt, cfg.windows)
    now = T0 + 3600 * 10**9
    payload = b'{"fields":{"usage_idle":97.5},"name":"cpu","tags":{"cpu":"cpu0","host":"h1"},"timestamp":1767225600}'
    parsed = parser.parse(MessageBatch(now, [("telegraf/s1/h1/cpu", payload), ("telegraf/s1/h1/cpu", b"{}")]))
    assert [(parse_series(r.series), r.value, r.ts_ns) for r in parsed.readings] == [
        (("cpu", {"cpu": "cpu0", "host": "h1", "metric": "usage_idle", "site": "s1"}), 97.5, T0)
    ]
    assert [r.measurement for r in parsed.readings] == ["cpu"]
    assert [d.reason for d in parsed.dead_letters] == ["undecodable"]


def _parser(**windows: object) -> MQTTParser:
    cfg = from_dict(
        {
            "mqtt": {
                "max_payload_bytes": 100,
                "subscriptions": [
                    {"topic": "sensors/+/+/+", "template": "sensors/{site}/{device}/{metric}", "write_raw": True},
                    {
                        "topic": "tele/+/SENSOR",
                        "template": "tele/{device}/#",
                        "format": "json",
                        "timestamp_field": "Time",
                        "measurement": "tasmota",
                    },
                    {"topic": "lp/#", "format": "influx_line", "template": "lp/{site}/#"},
                ],
            },
            "windows": windows,
        },
        env={},
    )
    return MQTTParser(cfg.mqtt, cfg.windows)


def test_parser_turns_a_batch_into_readings_and_dead_letters() -> None:
    now = T0 + 3600 * 10**9
    parser = _parser(max_age="0s", max_future_skew="100000d")
    batch = MessageBatch(
        now,
        [
            ("sensors/s1/d1/temp", b"21.5"),
            ("tele/plug/SENSOR", b'{"Time":"2026-01-01T00:00:10Z","ENERGY":{"Power":12}}'),
            ("lp/s2/x", b"cpu,host=h load=0.5 1767225600000000000"),
            ("sensors/s1/d1/temp", b"oops"),
            ("sensors/s1/d1/temp", b"1e999"),
            ("sensors/s1/d1/temp", b"\xc3\x28"),
            ("sensors/s1/d1/temp", b"1" * 101),
            ("sensors/s1/d1", b"1"),
            ("tele/plug/SENSOR", b'{"Time":"yesterday","x":1}'),
            ("tele/plug/SENSOR", b'{"x":1'),
        ],
    )
    parsed = parser.parse(batch)
    got = [(parse_series(r.series), r.value, r.ts_ns) for r in parsed.readings]
    assert got == [
        (("readings", {"device": "d1", "metric": "temp", "site": "s1"}), 21.5, now),
        (("tasmota", {"device": "plug", "metric": "ENERGY_Power"}), 12.0, T0 + 10 * 10**9),
        (("cpu", {"host": "h", "metric": "load", "site": "s2"}), 0.5, T0),
    ]
    assert parsed.raw == parsed.readings[:1]
    assert [d.reason for d in parsed.dead_letters] == [
        "not_a_number",
        "non_finite",
        "invalid_utf8",
        "oversized",
        "topic_mismatch",
        "bad_timestamp",
        "undecodable",
    ]
    assert all(d.source.startswith("mqtt:") and d.raw for d in parsed.dead_letters)
    assert parsed.dead_letters[3].raw == b"1" * 100  # (an oversized payload's first max_payload_bytes)


def test_parser_dead_letters_timestamps_outside_the_skew() -> None:
    parser = _parser(max_age="1h", max_future_skew="1m")
    now = T0
    old = b'{"Time":"2025-12-31T22:00:00Z","v":1}'
    future = b'{"Time":"2026-01-01T00:02:00Z","v":1}'
    fine = b'{"Time":"2025-12-31T23:30:00Z","v":1}'
    import time as time_mod

    real = time_mod.time_ns
    time_mod.time_ns = lambda: now  # the parser reads wall time once per batch
    try:
        parsed = parser.parse(
            MessageBatch(now, [("tele/a/SENSOR", old), ("tele/a/SENSOR", future), ("tele/a/SENSOR", fine)])
        )
    finally:
        time_mod.time_ns = real
    assert [d.reason for d in parsed.dead_letters] == ["timestamp_out_of_range"] * 2
    assert len(parsed.readings) == 1 and not math.isnan(parsed.readings[0].value)
    assert parsed.dead_letters[0].detail == (
        "event time out of range: 'v' at 2025-12-31T22:00:00.000000000Z (past windows.max_age)"
    )
    assert "past windows.max_future_skew" in parsed.dead_letters[1].detail


def test_one_line_out_of_range_costs_that_line_not_the_messages_others() -> None:
    """A gateway's line-protocol payload with one line 40 days old: InfluxDB's /write stores the ten others and
    refuses that one. So does the parser: ten readings, and the message as a dead letter naming the line."""
    cfg = from_dict(
        {"mqtt": {"subscriptions": [{"topic": "lp/#", "format": "influx_line", "template": "lp/{site}/#"}]}},
        env={},
    )
    parser = MQTTParser(cfg.mqtt, cfg.windows)  # (max_age 30 days)
    now = time.time_ns()
    second = 10**9
    lines = [f"gw,dev=d{i} v={i} {now - i * second}" for i in range(10)]
    lines.append(f"gw,dev=old v=99 {now - 40 * 86400 * second}")
    payload = "\n".join(lines).encode()
    parsed = parser.parse(MessageBatch(now, [("lp/s1/x", payload)]))
    assert sorted(r.value for r in parsed.readings) == [float(i) for i in range(10)]
    [dead] = parsed.dead_letters
    assert (dead.reason, dead.raw) == ("timestamp_out_of_range", payload)
    assert dead.detail.startswith("1 of 11 readings have an event time out of range, 10 kept; the first: 'gw.v' at ")
    assert dead.detail.endswith("(past windows.max_age)")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Only LF ends a line; U+2028 and the other Unicode line breaks are text.
        ("m,k=a\u2028b v=1", ("m", {"k": "a\u2028b"}, "v")),
        # A backslash before a character it does not escape is itself; two backslashes are one.
        ("m\\x,k\\y=C:\\dir\\  v\\z=1", ("m\\x", {"k\\y": "C:\\dir "}, "v\\z")),
        ("m,k=a\\\\ v=1", ("m", {"k": "a\\"}, "v")),
        ("m,k=a\\,b\\=c v=1", ("m", {"k": "a,b=c"}, "v")),
    ],
)
def test_line_protocol_reads_names_by_the_published_escaping_rules(
    line: str, expected: tuple[str, dict[str, str], str]
) -> None:
    """Found by tests/unit/test_payloads_fuzz.py."""
    [sample] = decode_line_protocol(line.encode())
    assert (sample.measurement, sample.tags, sample.metric) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("m v=1_0", "undecodable"),  # Python's float() takes it; line protocol does not
        ("m v=1.5i", "undecodable"),
        ("m v=-1u", "undecodable"),
        ("m v=9223372036854775808i", "undecodable"),  # beyond int64
        ("m v=18446744073709551616u", "undecodable"),  # beyond uint64
        ('m v="unterminated', "undecodable"),
        ("m v=1 1_000", "bad_timestamp"),
        ("m,metric=cpu v=1", "undecodable"),  # fleetwatch's own tags: overwritten, or refused by InfluxDB
        ("m,host=a,window=5m v=1", "undecodable"),
        ("m v=1 \u0661\u0662", "bad_timestamp"),  # Arabic-Indic digits, which int() takes
        ("m v=1 9223372036854775808", "bad_timestamp"),
        ("m,h=a,h=b v=1", "undecodable"),  # InfluxDB: "duplicate tags"
        ("m v=NaN", "non_finite"),
        ("m v=-inf", "non_finite"),
    ],
)
def test_line_protocol_refuses_what_its_rules_do_not_allow(line: str, reason: str) -> None:
    """Found by tests/unit/test_payloads_fuzz.py: each of these was read as a number."""
    with pytest.raises(PayloadError) as err:
        decode_line_protocol(line.encode())
    assert err.value.reason == reason


def test_line_protocol_as_influxdb_stores_it_a_repeated_field_and_a_byte_order_mark() -> None:
    """A field given twice is stored with its last value by InfluxDB: one reading of that value, not two (the
    aggregates would count a value the raw point does not have). A byte-order mark is not the measurement's."""
    samples = decode_line_protocol("\ufeffm1,h=e v=1,w=5,v=2 1767225600000000000".encode())
    assert [(s.measurement, s.metric, s.value) for s in samples] == [("m1", "v", 2.0), ("m1", "w", 5.0)]


def test_a_json_string_holding_a_lone_surrogate_is_not_a_number() -> None:
    """Found by tests/unit/test_payloads_fuzz.py: decode_json raised UnicodeEncodeError."""
    with pytest.raises(PayloadError) as err:
        decode_json(b'"\\ud800"', None, "auto", frozenset(), None)
    assert err.value.reason == "not_a_number"
    assert decode_json(b'"21.5"', None, "auto", frozenset(), "temp")[0].value == 21.5


def test_a_series_key_with_backslashes_reads_back_and_a_hash_name_is_refused() -> None:
    """Found by tests/unit/test_payloads_fuzz.py: a name ending in a backslash escaped the comma after it
    (the tags ran together in InfluxDB), and a Telegraf JSON name starting with "#" made a comment line. Doubled,
    such a backslash still escapes the separator in InfluxDB 1.x (it refuses the tag, and reads the tags after
    such a measurement as part of its name): it is left out, as Telegraf does."""
    key = series_key("readings\\", {"metric": "temp\\", "site": "s1", "path": "\\\\", "dir\\": "C:\\x"})
    assert key == "readings,dir=C:\\x,metric=temp,site=s1"
    assert parse_series(key) == ("readings", {"dir": "C:\\x", "metric": "temp", "site": "s1"})
    [sample] = decode_line_protocol(f"{key.replace('metric=', 'sensor=')} value=1".encode())
    assert sample.tags == {"dir": "C:\\x", "sensor": "temp", "site": "s1"}
    with pytest.raises(PayloadError) as err:
        decode_telegraf_json(b'{"name": "#cpu", "fields": {"v": 1}}', "auto")
    assert err.value.reason == "undecodable"


def test_a_backslash_inside_a_name_is_written_as_influxdb_stores_it() -> None:
    """InfluxDB 1.x reads a backslash as an escape only before a comma, an equals sign or a space, and keeps every
    other one: doubled before n or another backslash, C:\\temp\\new was stored with two backslashes before new."""
    tags = {"path": "C:\\temp\\new", "share": "\\\\srv\\x", "metric": "a\\,b", "line": "a\nb"}
    key = series_key("readings", tags)
    assert key == "readings,line=a\\nb,metric=a\\\\\\,b,path=C:\\temp\\new,share=\\\\srv\\x"
    # A line break has no escape in line protocol: it reads back as the two characters, as InfluxDB stores it.
    assert parse_series(key) == ("readings", {**tags, "line": "a\\nb"})


def test_each_field_of_a_json_topic_keeps_its_own_series_whatever_the_fields_of_each_message() -> None:
    """A topic's series keys are cached by field name (the first name apart from the others): fields that
    come and go between messages, in any order, and through either JSON decoder, each name their own series."""
    cfg = from_dict(
        {
            "mqtt": {"subscriptions": [{"topic": "dev/+", "template": "dev/{device}", "format": "json"}]},
            "windows": {"max_age": "0s"},
        },
        env={},
    )
    parser = MQTTParser(cfg.mqtt, cfg.windows)
    payloads = [
        b'{"temp": 1}',
        b'{"hum": 2, "temp": 3}',
        b'{"pres": 4, "hum": 5}',
        b'{"temp": 6, "hum": 7, "pres": 8}',
        b'{"x": {"y": 9}, "temp": 10}',  # nested: the general decoder
        b'{"hum": 11}',
    ]
    for _ in range(2):  # the second time every name is cached
        parsed = parser.parse(MessageBatch(T0, [("dev/d1", p) for p in payloads]))
        got = [(parse_series(r.series)[1]["metric"], r.value) for r in parsed.readings]
        assert got == [
            ("temp", 1.0),
            ("hum", 2.0),
            ("temp", 3.0),
            ("pres", 4.0),
            ("hum", 5.0),
            ("temp", 6.0),
            ("hum", 7.0),
            ("pres", 8.0),
            ("x_y", 9.0),
            ("temp", 10.0),
            ("hum", 11.0),
        ]
        assert {parse_series(r.series)[1]["device"] for r in parsed.readings} == {"d1"}


def test_json_objects_on_topics_that_name_the_metric_keep_the_metrics_apart() -> None:
    """A device with a topic per metric, each sending ``{"value": ..., "ts": ...}`` (the common shape): every
    topic is a series of its own metric, not one ``value`` series mixing temperatures and humidities. Other
    fields are read as nested under the topic's metric, through either JSON decoder."""
    cfg = from_dict(
        {
            "mqtt": {
                "subscriptions": [
                    {
                        "topic": "plant/+/+/+",
                        "template": "plant/{site}/{device}/{metric}",
                        "format": "json",
                        "timestamp_field": "ts",
                        "timestamp_unit": "ms",
                        "ignore_fields": ["status"],
                    }
                ]
            },
            "windows": {"max_age": "0s", "max_future_skew": "100000d"},
        },
        env={},
    )
    parser = MQTTParser(cfg.mqtt, cfg.windows)
    ms = T0 // 1_000_000
    messages = [
        ("plant/s1/p7/temperature", b'{"ts": %d, "value": 71.5}' % ms),
        ("plant/s1/p7/humidity", b'{"ts": %d, "value": 40}' % ms),
        ("plant/s1/p7/humidity", b"41"),  # a bare value: the topic's metric too
        ("plant/s1/p7/pressure", b'{"ts": %d, "pressure": 1013.2, "battery": 88, "status": 1}' % ms),
        ("plant/s1/p7/vibration", b'{"ts": %d, "axis": {"x": 0.1}, "value": 0.3}' % ms),  # nested: general path
    ]
    for _ in range(2):  # the second time every name is cached
        parsed = parser.parse(MessageBatch(T0, messages))
        assert parsed.dead_letters == []
        got = [(parse_series(r.series)[1]["metric"], r.value) for r in parsed.readings]
        assert got == [
            ("temperature", 71.5),
            ("humidity", 40.0),
            ("humidity", 41.0),
            ("pressure", 1013.2),
            ("pressure_battery", 88.0),
            ("vibration_axis_x", 0.1),
            ("vibration", 0.3),
        ]


def test_messages_of_one_batch_without_a_timestamp_each_get_their_own_receive_time() -> None:
    """A batch is read at one moment, but its messages are distinct arrivals: stamped alike, five quick
    readings of a series would be one point in the store (the same series and time, each write replacing the
    one before), and identical bad payloads one dead letter (their id hashes the receive time)."""
    from flows.sinks.elasticsearch import dead_letter_id

    now = T0 + 3600 * 10**9
    parser = _parser(max_age="0s", max_future_skew="100000d")
    messages = [("sensors/s1/d1/temp", b"20.0")] * 3 + [("sensors/s1/d2/temp", b"21.0")] * 2
    messages += [("sensors/s1/d1/temp", b"nan")] * 2
    parsed = parser.parse(MessageBatch(now, messages))
    assert [r.ts_ns for r in parsed.readings] == [now, now + 1, now + 2, now + 3, now + 4]
    assert [r.ts_ns for r in parsed.raw] == [now, now + 1, now + 2, now + 3, now + 4]
    assert [d.received_ns for d in parsed.dead_letters] == [now + 5, now + 6]
    assert len({dead_letter_id(d) for d in parsed.dead_letters}) == 2
    assert parsed.received_ns == now


def _json_parser(topic: str, template: str, **subscription: str) -> MQTTParser:
    """A parser of one JSON subscription, with event times of any age accepted."""
    cfg = from_dict(
        {
            "mqtt": {"subscriptions": [{"topic": topic, "template": template, "format": "json", **subscription}]},
            "windows": {"max_age": "0s", "max_future_skew": "100000d"},
        },
        env={},
    )
    return MQTTParser(cfg.mqtt, cfg.windows)


def test_timestamps_without_a_zone_are_in_the_subscriptions_zone_and_keep_their_nanoseconds() -> None:
    """Tasmota sends its local time without a zone: read as UTC, a device in Berlin was an hour in the
    future (every reading a dead letter) and one in New York five hours in the past. The Things Network
    stamps nanoseconds, which datetime would cut to microseconds."""
    from zoneinfo import ZoneInfo

    from fleetwatch.config import ConfigError

    berlin = ZoneInfo("Europe/Berlin")
    assert timestamp_ns("2026-07-01T12:00:00", "auto", berlin) == timestamp_ns("2026-07-01T10:00:00Z", "auto")
    assert timestamp_ns("2026-01-01T12:00:00", "auto", berlin) == timestamp_ns("2026-01-01T11:00:00Z", "auto")
    assert timestamp_ns("2026-07-01T12:00:00+05:00", "auto", berlin) == timestamp_ns("2026-07-01T07:00:00Z", "auto")
    assert timestamp_ns("2026-01-01T00:00:44.123456789Z", "auto") == T0 + 44_123_456_789
    assert timestamp_ns("2026-01-01T00:00:44.1234567Z", "auto") == T0 + 44_123_456_700
    parser = _json_parser(
        "tele/+/SENSOR", "tele/{device}/#", timestamp_field="Time", timestamp_timezone="America/New_York"
    )
    parsed = parser.parse(
        MessageBatch(T0, [("tele/plug/SENSOR", b'{"Time":"2025-12-31T19:00:10","ENERGY":{"Power":12}}')])
    )
    assert [(r.value, r.ts_ns) for r in parsed.readings] == [(12.0, T0 + 10 * 10**9)]
    with pytest.raises(ConfigError, match="timestamp_timezone") as err:
        subscription = {"topic": "t/#", "format": "json", "timestamp_timezone": "CET+1"}
        from_dict({"mqtt": {"subscriptions": [subscription]}}, env={})
    assert "IANA" in str(err.value)


def test_a_json_array_of_objects_is_several_readings_each_with_its_own_time() -> None:
    """Devices that were offline send what they buffered as one array; each object is a reading with its
    own timestamp. An item that is not an object refuses the message, with the reason, as a dead letter."""
    parser = _json_parser("buf/+/+", "buf/{device}/{metric}", timestamp_field="ts")
    good = b'[{"ts": 1767225600, "value": 20.5}, {"ts": 1767225610, "value": 21.0, "battery": 90}]'
    bad = b'[{"ts": 1767225600, "value": 1}, 5]'
    parsed = parser.parse(MessageBatch(T0, [("buf/d1/temp", good), ("buf/d1/temp", bad)]))
    readings = [(parse_series(r.series)[1]["metric"], r.value, r.ts_ns) for r in parsed.readings]
    assert readings == [("temp", 20.5, T0), ("temp", 21.0, T0 + 10 * 10**9), ("temp_battery", 90.0, T0 + 10 * 10**9)]
    assert [(d.reason, d.detail) for d in parsed.dead_letters] == [
        ("not_a_number", "JSON array item 1 is not an object: number")
    ]


def test_a_json_array_flushed_newest_first_comes_out_oldest_first() -> None:
    """A device that flushes its buffer newest first: its readings go to the windows oldest first, so that the
    newest does not move its series' clock past the windows of the older ones in the same message (which were
    then late). Readings of one time keep their order (the last of a series is the one kept)."""
    parser = _json_parser("buf/+/+", "buf/{device}/{metric}", timestamp_field="ts")
    newest_first = (
        b'[{"ts": 1767225604, "value": 3}, {"ts": 1767225602, "value": 2, "x": 7}, {"ts": 1767225600, "value": 1}]'
    )
    parsed = parser.parse(MessageBatch(T0, [("buf/d1/temp", newest_first)]))
    readings = [(parse_series(r.series)[1]["metric"], r.value, (r.ts_ns - T0) // 10**9) for r in parsed.readings]
    assert readings == [("temp", 1.0, 0), ("temp", 2.0, 2), ("temp_x", 7.0, 2), ("temp", 3.0, 4)]


def test_a_json_array_of_readings_without_a_timestamp_field_is_refused_not_stamped_alike() -> None:
    """Without timestamp_field, every reading of an array would have the message's receive time: one point
    per series in the store, the others written over. The message is a dead letter that says why."""
    messages = [("arr/d1", b'[{"temp": 1}, {"temp": 2}]'), ("arr/d1", b'[{"temp": 3}]')]
    parsed = _json_parser("arr/+", "arr/{device}").parse(MessageBatch(T0, messages))
    assert [d.reason for d in parsed.dead_letters] == ["bad_timestamp"]
    assert "timestamp_field" in parsed.dead_letters[0].detail
    assert [r.value for r in parsed.readings] == [3.0]


def test_json_numbers_in_strings_and_fields_without_a_name() -> None:
    assert decode_json(b'"21.5"', None, "auto", frozenset(), "temp")[0].value == 21.5
    for payload in (b'"1_000"', '"١٢٣"'.encode()):
        with pytest.raises(PayloadError) as err:
            decode_json(payload, None, "auto", frozenset(), "temp")
        assert err.value.reason == "not_a_number"
    with pytest.raises(PayloadError) as err:
        decode_json(b'{"": 1, "t": 2}', None, "auto", frozenset(), None)
    assert err.value.reason == "undecodable"
    # A nested field without a name is named by its parent.
    assert [s.metric for s in decode_json(b'{"a": {"": 1}}', None, "auto", frozenset(), None)] == ["a_"]


def _parse_any_time(messages: list[tuple[str, bytes]]) -> ParsedBatch:
    """``messages`` through the test subscriptions, with no bound on event times."""
    return _parser(max_age="0s", max_future_skew="100000d").parse(MessageBatch(T0, messages))


def test_the_parser_fast_paths_refuse_what_the_decoders_refuse() -> None:
    parsed = _parse_any_time(
        [
            ("sensors/s1/d1/temp", b"1_000"),
            ("sensors/s1/d1/temp", b"\xef\xbb\xbf7"),
            ("tele/plug/SENSOR", b'{"Time": 1767225600, "x": 1, "": 2}'),
            ("tele/plug/SENSOR", b'{"Time": 1767225600, "": 2}'),
        ]
    )
    assert [r.value for r in parsed.readings] == [7.0]
    assert [d.reason for d in parsed.dead_letters] == ["not_a_number", "undecodable", "undecodable"]


def test_telegraf_json_tags_named_like_fleetwatchs_own_are_refused() -> None:
    with pytest.raises(PayloadError, match="tag 'window' is fleetwatch's own"):
        decode_telegraf_json(b'{"name": "m", "tags": {"window": "5m"}, "fields": {"v": 1}}', "auto")


def test_empty_payloads_are_counted_not_dead_letters() -> None:
    """An empty payload deletes a retained message (and the broker passes it to the subscribers): no reading, no
    bad input. On a topic no subscription reads, it is still that topic's dead letter."""
    parsed = _parse_any_time(
        [
            ("sensors/s1/d1/temp", b""),
            ("tele/plug/SENSOR", b""),
            ("lp/s2/x", b""),
            ("sensors/s1/d1", b""),
            ("sensors/s1/d1/temp", b" "),
        ]
    )
    assert parsed.empty_payloads == 3 and parsed.readings == []
    assert [d.reason for d in parsed.dead_letters] == ["topic_mismatch", "not_a_number"]


def test_a_leap_second_past_year_9999_is_a_bad_timestamp() -> None:
    with pytest.raises(PayloadError) as err:
        timestamp_ns("9999-12-31T23:59:60Z", "rfc3339")
    assert err.value.reason == "bad_timestamp"
