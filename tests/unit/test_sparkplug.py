"""Sparkplug B: topics, payload decoding, and the edge node's state (aliases, sequence numbers, online state),
driven through the parser and the stateful logic as the dataflow drives them, without a server."""

from __future__ import annotations

import math
import pickle
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from collectors.mqtt.parse import MessageBatch, MQTTParser
from collectors.mqtt.payloads import PayloadError
from collectors.mqtt.sparkplug import SparkplugMessage, decode_payload, parse_topic
from fleetwatch import config as config_mod
from fleetwatch.cli import app
from fleetwatch.record import DeadLetter, Reading, parse_series
from flows import health
from flows.sparkplug import SparkplugLogic, SparkplugResult
from tests.conftest import REPO
from tests.sparkplug_payloads import (
    BOOLEAN,
    DOUBLE,
    FLOAT,
    INT8,
    INT16,
    INT32,
    INT64,
    OFFLINE_RULE,
    STRING,
    UINT32,
    UINT64,
)
from tests.sparkplug_payloads import payload as sp_payload
from tests.sparkplug_payloads import topic as sp_topic
from tests.unit.fuzzing import EXAMPLES

NOW_MS = time.time_ns() // 1_000_000
DAY_NS = 86_400 * 10**9


def make_config(**sub: Any) -> config_mod.Config:
    return config_mod.from_dict(
        {"mqtt": {"subscriptions": [{"topic": "spBv1.0/#", "format": "sparkplug_b", **sub}]}}, env={}
    )


class Node:
    """One edge node's messages through the parser and its stateful logic, as in the dataflow; ``restart()``
    resumes the logic from its snapshot as Bytewax does after a restart."""

    def __init__(self, **sub: Any) -> None:
        cfg = make_config(**sub)
        self.parser = MQTTParser(cfg.mqtt, cfg.windows)
        self.logic = SparkplugLogic(None, 5 * 60 * 10**9, 30 * DAY_NS)
        self.parse_dead: list[DeadLetter] = []

    def send(self, *messages: tuple[str, bytes]) -> SparkplugResult:
        parsed = self.parser.parse(MessageBatch(time.time_ns(), list(messages)))
        self.parse_dead += parsed.dead_letters
        out = SparkplugResult([], [], [], [])
        by_node: list[list[SparkplugMessage]] = [batch for _, batch in parsed.sparkplug or []]
        if by_node:
            results, _ = self.logic.on_batch(by_node)
            for result in results:
                for mine, theirs in zip(out, result, strict=True):
                    mine.extend(theirs)  # type: ignore[attr-defined]
        return out

    def restart(self) -> None:
        self.logic = SparkplugLogic(self.logic.snapshot(), 5 * 60 * 10**9, 30 * DAY_NS)


def values(readings: list[Reading]) -> dict[tuple[str, str], float]:
    """(device, metric) -> value."""
    out = {}
    for r in readings:
        _, tags = parse_series(r.series)
        out[(tags.get("device", ""), tags["metric"])] = r.value
    return out


def states(readings: list[Reading]) -> list[tuple[str, str, float]]:
    out = []
    for r in readings:
        measurement, tags = parse_series(r.series)
        assert measurement == "sparkplug_state"
        out.append((tags.get("device", ""), tags["metric"], r.value))
    return out


def nbirth(seq: int = 0, bd_seq: int = 1) -> tuple[str, bytes]:
    metrics = [
        ("bdSeq", None, INT64, bd_seq),
        ("Node Control/Rebirth", 1, BOOLEAN, False),
        ("Temperature", 10, FLOAT, 21.5),
        ("Running", 11, BOOLEAN, True),
        ("Firmware", 12, STRING, "1.2.3"),
        ("Offset", 13, INT16, -3),
    ]
    return sp_topic("plant", "NBIRTH", "edge1"), sp_payload(metrics, seq=seq, ts_ms=NOW_MS)


def dbirth(seq: int, device: str = "press") -> tuple[str, bytes]:
    metrics = [("Pressure", 20, DOUBLE, 4.25), ("Cycles", 21, UINT64, 2**40), ("Delta", 22, INT8, -1)]
    return sp_topic("plant", "DBIRTH", "edge1", device), sp_payload(metrics, seq=seq, ts_ms=NOW_MS)


def ddata(seq: int, metrics: list[Any], device: str = "press") -> tuple[str, bytes]:
    return sp_topic("plant", "DDATA", "edge1", device), sp_payload(
        metrics, seq=seq, ts_ms=NOW_MS + 1000, send_datatypes=False
    )


def ndeath(bd_seq: int = 1) -> tuple[str, bytes]:
    return sp_topic("plant", "NDEATH", "edge1"), sp_payload([("bdSeq", None, INT64, bd_seq)], ts_ms=NOW_MS - 10**6)


@pytest.fixture(autouse=True)
def fresh_counters() -> None:
    counters = health.counters()
    for name in ("sparkplug_seq_gaps", "sparkplug_seq_missed", "sparkplug_stale_deaths", "sparkplug_metrics_ignored"):
        setattr(counters, name, 0)


# ------------------------------------------------------------------------------------------- topics and payloads


def test_topics() -> None:
    assert parse_topic("spBv1.0/g/NDATA/n") == ("g", "NDATA", "n", "")
    assert parse_topic("spBv1.0/g/DDATA/n/d").node_key == "g/n"
    for bad in ("spBv1.0/g/DDATA/n", "spBv1.0/g/NDATA/n/d", "spBv1.0/g/XDATA/n", "spAv1.0/g/NDATA/n", "spBv1.0/g"):
        with pytest.raises(PayloadError) as err:
            parse_topic(bad)
        assert err.value.reason == "sparkplug_topic"


def test_payload_fields_and_timestamps() -> None:
    raw = sp_payload([("a", 5, FLOAT, 1.5)], seq=9, ts_ms=NOW_MS, metric_ts_ms={"a": NOW_MS - 5})
    seq, ts_ms, (metric,) = decode_payload(raw)
    assert (seq, ts_ms) == (9, NOW_MS)
    assert (metric.name, metric.alias, metric.ts_ms, metric.datatype, metric.value) == ("a", 5, NOW_MS - 5, FLOAT, 1.5)
    with pytest.raises(PayloadError):
        decode_payload(b"\xff\xff\xff")


# ------------------------------------------------------------------------------------------- births, aliases, data


def test_births_declare_aliases_that_data_uses_and_values_keep_their_sign() -> None:
    node = Node()
    birth = node.send(nbirth(), dbirth(1))
    assert values(birth.readings) == {
        ("", "Temperature"): 21.5,
        ("", "Running"): 1.0,
        ("", "Offset"): -3.0,
        ("press", "Pressure"): 4.25,
        ("press", "Cycles"): float(2**40),
        ("press", "Delta"): -1.0,
    }
    assert states(birth.state) == [("", "online", 1.0), ("press", "online", 1.0)]
    # A string (Firmware) is no reading: counted, not a dead letter; the protocol's own metrics are not readings.
    assert health.counters().sparkplug_metrics_ignored == 1
    assert birth.dead_letters == []

    data = node.send(ddata(2, [(None, 20, DOUBLE, 5.5), (None, 22, INT8, -7)]))
    assert values(data.readings) == {("press", "Pressure"): 5.5, ("press", "Delta"): -7.0}
    assert {r.ts_ns for r in data.readings} == {(NOW_MS + 1000) * 1_000_000}
    _, tags = parse_series(data.readings[0].series)
    assert tags == {"group": "plant", "node": "edge1", "device": "press", "metric": "Pressure"}
    assert data.readings[0].measurement == "readings"


def test_data_before_any_birth_and_unknown_aliases_are_dead_letters() -> None:
    node = Node()
    before = node.send(ddata(5, [(None, 20, DOUBLE, 5.5)]))
    assert [d.reason for d in before.dead_letters] == ["sparkplug_no_birth"]
    assert before.readings == []

    node.send(nbirth(), dbirth(1))
    # Alias 99 was never declared; alias 10 is the node's, not the device's; a name no birth declared.
    data = node.send(
        ddata(
            2,
            [(None, 99, DOUBLE, 1.0), (None, 10, FLOAT, 2.0), ("Unknown", None, DOUBLE, 3.0), (None, 20, DOUBLE, 4.0)],
        )
    )
    assert [d.reason for d in data.dead_letters] == [
        "sparkplug_unknown_alias",
        "sparkplug_unknown_alias",
        "sparkplug_unknown_metric",
    ]
    assert "alias 99" in data.dead_letters[0].detail and "press" in data.dead_letters[0].detail
    assert data.dead_letters[0].source == "mqtt:spBv1.0/plant/DDATA/edge1/press"
    assert values(data.readings) == {("press", "Pressure"): 4.0}

    # A device that has no DBIRTH.
    other = node.send(ddata(3, [(None, 20, DOUBLE, 1.0)], device="mixer"))
    assert [d.reason for d in other.dead_letters] == ["sparkplug_no_birth"]


def test_aliases_survive_a_restart_from_the_snapshot() -> None:
    node = Node()
    node.send(nbirth(), dbirth(1))
    node.restart()
    data = node.send(
        ddata(2, [(None, 21, UINT64, 7)]),
        (sp_topic("plant", "NDATA", "edge1"), sp_payload([(None, 10, FLOAT, 19.0)], seq=3, send_datatypes=False)),
    )
    assert data.dead_letters == []
    assert values(data.readings) == {("press", "Cycles"): 7.0, ("", "Temperature"): 19.0}
    assert health.counters().sparkplug_seq_gaps == 0


def test_a_value_that_does_not_fit_its_datatype_is_a_dead_letter() -> None:
    node = Node()
    node.send(nbirth())
    # Temperature is a Float; a double_value is not where a Float travels. NaN is not a reading.
    wrong = sp_payload(
        [(None, 10, DOUBLE, 1.0), ("Offset", None, INT16, None), (None, 10, FLOAT, float("nan"))],
        seq=1,
        send_datatypes=False,
    )
    out = node.send((sp_topic("plant", "NDATA", "edge1"), wrong))
    assert [d.reason for d in out.dead_letters] == ["sparkplug_bad_metric", "sparkplug_bad_metric", "non_finite"]


def test_nulls_are_ignored_and_counted_and_ignore_fields_skip_metrics() -> None:
    node = Node(ignore_fields=["Running"])
    out = node.send(nbirth())
    assert ("", "Running") not in values(out.readings)
    data = sp_payload([("Temperature", None, None, None)], seq=1, nulls=("Temperature",), send_datatypes=False)
    out = node.send((sp_topic("plant", "NDATA", "edge1"), data))
    assert out.readings == [] and out.dead_letters == []
    assert health.counters().sparkplug_metrics_ignored == 2  # Firmware (a string) and the null


def test_metric_timestamps_win_and_out_of_range_times_are_dead_letters() -> None:
    node = Node()
    node.send(nbirth())
    old = NOW_MS - 40 * 86_400_000
    # Metrics by name without their datatype: the birth's applies (Float, Int16).
    raw = sp_payload(
        [("Temperature", None, FLOAT, 1.0), ("Offset", None, INT16, 2)],
        seq=1,
        ts_ms=NOW_MS,
        metric_ts_ms={"Temperature": NOW_MS - 2000, "Offset": old},
        send_datatypes=False,
    )
    out = node.send((sp_topic("plant", "NDATA", "edge1"), raw))
    assert [(r.value, r.ts_ns) for r in out.readings] == [(1.0, (NOW_MS - 2000) * 1_000_000)]
    assert [d.reason for d in out.dead_letters] == ["timestamp_out_of_range"]


# ------------------------------------------------------------------------------------------- sequence numbers


def test_a_sequence_gap_is_counted_and_the_data_still_used() -> None:
    node = Node()
    node.send(nbirth(seq=0), dbirth(1))
    node.send(ddata(2, [(None, 20, DOUBLE, 1.0)]))
    out = node.send(ddata(6, [(None, 20, DOUBLE, 2.0)]))  # 3, 4 and 5 are missing
    assert values(out.readings) == {("press", "Pressure"): 2.0}
    assert states(out.state) == [("", "seq_gaps", 1.0)]
    counters = health.counters()
    assert (counters.sparkplug_seq_gaps, counters.sparkplug_seq_missed) == (1, 3)
    # The count goes on from the message after the gap, and wraps at 255.
    node.send(*[ddata(s % 256, [(None, 20, DOUBLE, 0.0)]) for s in range(7, 260)])
    assert counters.sparkplug_seq_gaps == 1


# ------------------------------------------------------------------------------------------- online state


def test_deaths_set_the_node_and_its_devices_offline_and_a_stale_death_is_ignored() -> None:
    node = Node()
    node.send(nbirth(bd_seq=4), dbirth(1), dbirth(2, device="mixer"))
    device_death = node.send((sp_topic("plant", "DDEATH", "edge1", "mixer"), sp_payload([], seq=3, ts_ms=NOW_MS)))
    assert states(device_death.state) == [("mixer", "online", 0.0)]

    # The will of an earlier session (bdSeq 3) arriving late: the node stays online.
    stale = node.send(ndeath(bd_seq=3))
    assert stale.state == []
    assert health.counters().sparkplug_stale_deaths == 1

    before = time.time_ns()
    death = node.send(ndeath(bd_seq=4))
    assert sorted(states(death.state)) == [("", "online", 0.0), ("press", "online", 0.0)]
    # Stamped with the receive time: an NDEATH's payload was written when the node connected.
    assert all(r.ts_ns >= before for r in death.state)

    after = node.send(ddata(4, [(None, 20, DOUBLE, 1.0)]))
    assert [d.reason for d in after.dead_letters] == ["sparkplug_no_birth"]
    # A new session: the node is born again; its devices only with their own births.
    reborn = node.send(nbirth(bd_seq=5))
    assert states(reborn.state) == [("", "online", 1.0)]
    assert [d.reason for d in node.send(ddata(1, [(None, 20, DOUBLE, 1.0)])).dead_letters] == ["sparkplug_no_birth"]


def test_the_state_snapshot_is_bytes_that_resume() -> None:
    node = Node()
    node.send(nbirth(bd_seq=4), dbirth(1))
    snapshot = node.logic.snapshot()
    assert isinstance(snapshot, bytes)
    state = pickle.loads(snapshot)
    assert (state.online, state.bd_seq, state.next_seq, state.devices) == (True, 4, 2, {"press": True})


# ------------------------------------------------------------------------------------------- parser and config


def test_the_parser_groups_by_edge_node_and_refuses_what_is_no_sparkplug() -> None:
    cfg = make_config()
    parser = MQTTParser(cfg.mqtt, cfg.windows)
    batch = [
        nbirth(),
        (sp_topic("plant", "NBIRTH", "edge2"), sp_payload([], seq=0)),
        dbirth(1),
        (sp_topic("plant", "NCMD", "edge1"), sp_payload([("Node Control/Rebirth", None, BOOLEAN, True)])),
        ("spBv1.0/STATE/scada", b'{"online": true}'),
        (sp_topic("plant", "NDATA", "edge1"), b"\xff\xff"),
        ("spBv1.0/plant/NDATA", b""),
    ]
    parsed = parser.parse(MessageBatch(time.time_ns(), batch))
    assert [(key, [m.kind for m in ms]) for key, ms in parsed.sparkplug or []] == [
        ("plant/edge1", ["NBIRTH", "DBIRTH"]),
        ("plant/edge2", ["NBIRTH"]),
    ]
    assert parsed.sparkplug_ignored == 2
    assert [d.reason for d in parsed.dead_letters] == ["undecodable", "sparkplug_topic"]
    assert parsed.readings == []


def test_config_refuses_keys_sparkplug_does_not_use_and_several_workers() -> None:
    with pytest.raises(config_mod.ConfigError) as err:
        make_config(template="spBv1.0/{group}/+/{node}")
    assert "mqtt.subscriptions[0]: format 'sparkplug_b' takes its tags" in str(err.value)
    assert "remove template" in str(err.value)
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.from_dict({"mqtt": {"subscriptions": [{"topic": "plant/#", "format": "sparkplug_b"}]}}, env={})
    assert "needs a filter on Sparkplug B topics" in str(err.value)
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.from_dict(
            {"flow": {"workers": 2}, "mqtt": {"subscriptions": [{"topic": "spBv1.0/#", "format": "sparkplug_b"}]}},
            env={},
        )
    assert "flow.workers: Sparkplug B subscriptions need each edge node's messages in order" in str(err.value)


def test_int32_and_uint32_use_their_full_width() -> None:
    node = Node()
    birth = sp_payload([("a", 1, INT32, -(2**31)), ("b", 2, UINT32, 2**32 - 1)], seq=0, ts_ms=NOW_MS)
    out = node.send((sp_topic("plant", "NBIRTH", "edge1"), birth))
    assert values(out.readings) == {("", "a"): float(-(2**31)), ("", "b"): float(2**32 - 1)}


def test_the_documented_offline_rule_is_the_tested_one_and_valid() -> None:
    readme = (REPO / "README.md").read_text()
    assert OFFLINE_RULE.strip() in readme
    example = (REPO / "fleetwatch.example.toml").read_text()
    uncommented = "\n".join(line.removeprefix("# ") for line in example.splitlines())
    assert OFFLINE_RULE.strip() in uncommented
    cfg = config_mod.from_dict(tomllib.loads(OFFLINE_RULE), env={})
    (rule,) = cfg.alerts.rules
    assert (rule.target, rule.kind, rule.condition, rule.critical) == ("reading", "threshold", "<", 1.0)


def test_a_metric_name_that_is_not_utf8_is_a_dead_letter() -> None:
    name = b"\xff\xfe"
    metric = b"\x0a" + bytes([len(name)]) + name  # Metric.name (field 1), raw bytes
    node = Node()
    out = node.send((sp_topic("plant", "NBIRTH", "edge1"), b"\x12" + bytes([len(metric)]) + metric))
    assert out.readings == [] and out.state == []
    assert [d.reason for d in node.parse_dead] == ["invalid_utf8"]


# ------------------------------------------------------------------------------------------- any message sequence

_KINDS = ["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH"]
_TYPES = [INT8, INT16, INT32, INT64, UINT32, UINT64, FLOAT, DOUBLE, BOOLEAN, STRING, 0, 13, 16, 33, 250]


def _value(draw: st.DrawFn, datatype: int) -> Any:
    if datatype in (FLOAT, DOUBLE):
        return draw(st.floats(allow_nan=True, allow_infinity=True, width=32 if datatype == FLOAT else 64))
    if datatype == BOOLEAN:
        return draw(st.booleans())
    if datatype == STRING:
        return draw(st.text(max_size=5))
    return (
        draw(st.integers(-(2**31), 2**32 - 1))
        if datatype in (INT8, INT16, INT32, UINT32)
        else draw(st.integers(-(2**63), 2**64 - 1))
    )


@st.composite
def _messages(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(_KINDS))
    device = draw(st.sampled_from(["d1", "d2"])) if kind.startswith("D") else ""
    metrics = []
    for _ in range(draw(st.integers(0, 4))):
        datatype = draw(st.sampled_from(_TYPES))
        name = draw(st.sampled_from([None, "a", "b", "bdSeq", "Node Control/Rebirth", "x\ny, z=1"]))
        alias = draw(st.none() | st.integers(0, 5))
        value = _value(draw, datatype) if datatype in VALUE_TYPES else None
        metrics.append((name, alias, datatype if datatype in VALUE_TYPES else None, value))
    raw = sp_payload(
        metrics,
        seq=draw(st.none() | st.integers(0, 300)),
        ts_ms=draw(st.none() | st.integers(0, 2**45)),
        send_datatypes=draw(st.booleans()),
        nulls=("a",) if draw(st.booleans()) else (),
    )
    return sp_topic("plant", kind, "edge1", device), raw


VALUE_TYPES = {INT8, INT16, INT32, INT64, UINT32, UINT64, FLOAT, DOUBLE, BOOLEAN, STRING}


@settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True)
@given(st.lists(_messages(), max_size=12), st.integers(0, 12))
def test_any_sequence_of_messages_gives_readings_dead_letters_or_counts_never_an_error(
    messages: list[tuple[str, bytes]], restart_at: int
) -> None:
    node = Node()
    for i, message in enumerate(messages):
        if i == restart_at:
            node.restart()
        out = node.send(message)
        # An exception inside the logic would show as an "undecodable" dead letter of a well-formed payload.
        assert [d for d in out.dead_letters if d.reason == "undecodable"] == []
        assert all(math.isfinite(r.value) for r in out.readings + out.state)
        assert all(parse_series(r.series)[1]["group"] == "plant" for r in out.readings + out.state)
    assert node.parse_dead == []
    resumed = SparkplugLogic(node.logic.snapshot(), 0, 0)
    assert pickle.dumps(resumed.node) == pickle.dumps(node.logic.node)


def test_run_refuses_several_workers_for_sparkplug(tmp_path: Path) -> None:
    config = tmp_path / "fleetwatch.toml"
    config.write_text('[[mqtt.subscriptions]]\ntopic = "spBv1.0/#"\nformat = "sparkplug_b"\n')
    result = CliRunner().invoke(app, ["run", "-c", str(config), "--workers", "2"])
    assert result.exit_code == 2
    assert "Sparkplug B subscriptions need each edge node's messages in order" in result.output
