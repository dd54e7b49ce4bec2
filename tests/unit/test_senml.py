"""collectors/mqtt/payloads.decode_senml: SenML's JSON (RFC 8428), its examples, its base fields and its
relative times, through the decoder, the batch parser and the raw lines' commit gate."""

from __future__ import annotations

import json

import pytest

from collectors.mqtt.parse import MessageBatch, MQTTParser
from collectors.mqtt.payloads import PayloadError, Sample, decode_senml
from fleetwatch import config
from fleetwatch.config import from_dict
from flows.pipeline import _raw_lines
from flows.sinks.influxdb import AfterCommitLines

T0 = 1_796_659_200_000_000_000  # 2026-12-07T00:00:00Z
S = 1_000_000_000


def test_rfc_8428_multiple_datapoints_name_the_metric_and_the_base_name_tag() -> None:
    """RFC 8428 5.1.2: the base name is the device, each record's name its metric; no time is the receive time."""
    pack = b"""[
      {"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},
      {"n":"current","u":"A","v":1.2}
    ]"""
    tags = {"base_name": "urn:dev:ow:10e2073a01080063:"}
    assert decode_senml(pack, T0) == [
        Sample("voltage", 120.1, None, None, tags),
        Sample("current", 1.2, None, None, tags),
    ]


def test_rfc_8428_multiple_measurements_take_the_base_time_and_their_own_offsets() -> None:
    """RFC 8428 5.1.3: an absolute base time, each record's t seconds from it (negative: before it)."""
    pack = b"""[
      {"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
      {"n":"current","t":-5,"v":1.2},
      {"n":"current","t":-4,"v":1.3},
      {"n":"current","v":1.7}
    ]"""
    samples = decode_senml(pack, T0)
    assert [(s.metric, s.value, s.ts_ns, s.from_receipt) for s in samples] == [
        ("voltage", 120.1, 1_276_020_076_001_000_000, False),
        ("current", 1.2, 1_276_020_071_001_000_000, False),
        ("current", 1.3, 1_276_020_072_001_000_000, False),
        ("current", 1.7, 1_276_020_076_001_000_000, False),
    ]


def test_relative_times_count_from_the_receive_time() -> None:
    """Below 2**28 s a time is relative to now (RFC 8428 4.5.3): -5 is five seconds before the receive time."""
    pack = b'[{"n":"temp","t":-5,"v":21.5},{"n":"temp","t":-2.5,"v":21.6},{"n":"temp","v":21.7}]'
    assert [(s.ts_ns, s.from_receipt) for s in decode_senml(pack, T0)] == [
        (T0 - 5 * S, True),
        (T0 - 2_500_000_000, True),
        (None, False),  # "roughly now": stamped with the receive time by the parser
    ]


def test_base_values_sums_and_booleans_and_what_is_not_a_reading() -> None:
    pack = json.dumps(
        [
            {"bn": "dev1/", "bv": 100, "bs": 1000, "n": "meter", "v": 5, "s": 20},
            {"n": "door", "vb": True},
            {"n": "label", "vs": "kitchen"},
            {"n": "blob", "vd": "aGk"},
            {"bn": "dev2/"},  # base fields only: no reading
            {"v": 7},  # no n: named by the base name alone
        ]
    ).encode()
    assert [(s.metric, s.value, s.tags) for s in decode_senml(pack, T0)] == [
        ("meter", 105.0, {"base_name": "dev1/"}),
        ("meter_sum", 1020.0, {"base_name": "dev1/"}),
        ("door", 1.0, {"base_name": "dev1/"}),
        ("dev2/", 107.0, None),
    ]
    # A record's own object alone, without the array, is a pack of one; ignore_fields names metrics.
    assert decode_senml(b'{"n":"a","v":1}', T0, frozenset({"b"})) == [Sample("a", 1.0)]
    assert decode_senml(b'[{"n":"a","v":1},{"n":"b","v":2}]', T0, frozenset({"b"})) == [Sample("a", 1.0)]


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (b'{"v": 1}', "undecodable", "no name"),
        (b"5", "undecodable", "array of records"),
        (b"[]", "undecodable", "an empty SenML pack"),
        (b'[{"n":"a","v":1}, 5]', "undecodable", "record 1 is not an object: number"),
        (b'[{"n":"a","v":"21.5"}]', "not_a_number", "v is a JSON string"),
        (b'[{"n":"a","vb":"true"}]', "not_a_number", "vb is a JSON string"),
        (b'[{"n":"a","v":NaN}]', "non_finite", "nan"),
        (b'[{"n":"a","bv":1.7e308,"v":1.7e308}]', "non_finite", "inf"),
        (b'[{"n":"a","t":"now","v":1}]', "bad_timestamp", "t is a JSON string"),
        (b'[{"n":"a","bt":Infinity,"v":1}]', "bad_timestamp", "bt is inf"),
        (b'[{"n":"a","bt":-1e308,"v":1}]', "bad_timestamp", "relative time -1e+308 s is out of range"),
        (b'[{"n":"a","v":1,"new_":2}]', "undecodable", "'new_' must be understood"),
        (b'[{"bver":11,"n":"a","v":1}]', "undecodable", "version 11"),
        (b'[{"n":5,"v":1}]', "undecodable", "n is a JSON number"),
        (b'[{"n":"a","vs":"x"}]', "no_numeric_fields", "no numeric"),
        # RFC 8428 4.2: exactly one value field, unless there is a sum. A record without one lost its reading.
        (b'[{"n":"door","v":0,"vb":true}]', "undecodable", "record 0 has v and vb: one value field at most"),
        (b'[{"n":"t","v":21.5,"vs":"warm"}]', "undecodable", "has v and vs"),
        (b'[{"n":"hum","v":48},{"bn":"typo:","n":"temp","V":21.5}]', "undecodable", "record 1 has no value field"),
        (b'[{"bn":"novalue:","n":"temp"},{"n":"hum","v":48}]', "undecodable", "record 0 has no value field"),
        (b'[{"bn":"d:","u":"Cel"},{"n":"hum","v":48}]', "undecodable", "record 0 has no value field"),
        (b'[{"n":"a","v":1}', "undecodable", "not JSON"),
        (b'[{"n":"\xff","v":1}]', "invalid_utf8", "UTF-8"),
    ],
)
def test_a_pack_the_rfc_does_not_allow_is_a_dead_letter_with_the_reason(
    payload: bytes, reason: str, detail: str
) -> None:
    with pytest.raises(PayloadError) as err:
        decode_senml(payload, T0)
    assert err.value.reason == reason
    assert detail in err.value.detail


def _parser(write_raw: bool = True) -> MQTTParser:
    cfg = from_dict(
        {
            "mqtt": {
                "subscriptions": [
                    {"topic": "senml/+", "template": "senml/{site}", "format": "senml", "write_raw": write_raw}
                ]
            },
            "windows": {"max_age": "0s"},
        },
        env={},
    )
    return MQTTParser(cfg.mqtt, cfg.windows)


def test_the_parser_reads_a_pack_into_readings_of_their_own_series() -> None:
    pack = (
        b'[{"bn":"urn:dev:mac:0024befffe804ff1:","bt":1796659200,"n":"temp","v":21.5},'
        b'{"n":"hum","t":10,"v":48},{"n":"temp","t":-5,"v":21.4}]'
    )
    parsed = _parser().parse(MessageBatch(T0 + 60 * S, [("senml/lyon", pack)]))
    assert parsed.dead_letters == []
    assert [(r.series, r.value, r.ts_ns) for r in parsed.readings] == [
        ("readings,base_name=urn:dev:mac:0024befffe804ff1:,metric=temp,site=lyon", 21.5, T0),
        ("readings,base_name=urn:dev:mac:0024befffe804ff1:,metric=hum,site=lyon", 48.0, T0 + 10 * S),
        ("readings,base_name=urn:dev:mac:0024befffe804ff1:,metric=temp,site=lyon", 21.4, T0 - 5 * S),
    ]
    assert parsed.raw == parsed.readings and not parsed.raw_from_receipt


def test_raw_readings_timed_from_the_receipt_are_written_after_the_commit() -> None:
    """A redelivery after a kill -9 would stamp a relative time anew: written before the commit, the raw point
    would be stored twice. Like those stamped with the receive time itself, they wait for the commit."""
    received = T0 + 60 * S
    pack = b'[{"n":"temp","t":-5,"v":1},{"n":"temp","v":2},{"n":"temp","bt":1796659200,"v":3}]'
    parsed = _parser().parse(MessageBatch(received, [("senml/lyon", pack)]))
    assert [(r.value, r.ts_ns) for r in parsed.raw_from_receipt or []] == [(1.0, received - 5 * S)]
    assert [(r.value, r.ts_ns) for r in parsed.raw] == [(2.0, received), (3.0, T0)]
    lines = dict.fromkeys(("written", "after_commit"), 0)
    for key, batch in _raw_lines(parsed):
        assert key == "raw"
        lines["after_commit" if isinstance(batch, AfterCommitLines) else "written"] += len(batch)
    assert lines == {"written": 1, "after_commit": 2}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"metric": "temp"}, "metric"),
        ({"template": "senml/{metric}"}, "{metric} in template"),
        ({"timestamp_field": "t"}, "timestamp_field"),
        ({"timestamp_unit": "ms"}, "timestamp_unit"),
        ({"template": "senml/{base_name}"}, "format 'senml' writes a record's bn to the tag base_name"),
    ],
)
def test_settings_senml_has_no_use_for_are_refused_at_start(extra: dict[str, str], named: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        from_dict({"mqtt": {"subscriptions": [{"topic": "senml/+", "format": "senml", **extra}]}}, env={})
    [problem] = err.value.problems
    assert problem.startswith("mqtt.subscriptions[0]: format 'senml' ")
    assert named in problem
