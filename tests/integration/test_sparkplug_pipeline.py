"""Sparkplug B end to end: generated edge-node messages through the real Mosquitto into `fleetwatch run` (Bytewax,
recovery on) and the real InfluxDB 1.x: births, data by alias, data before a birth and with an unknown alias (dead
letters), a restart between the births and the data, a sequence gap, deaths with the online state, and the ready-made
deadman rule firing on the death and resolving on the rebirth."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import INFLUX_AUTH_TOML, INFLUX_URL, MQTT_HOST, MQTT_PORT, influx_rows
from tests.integration.harness import Pipeline, wait_until
from tests.integration.test_readings_pipeline import Publisher
from tests.sparkplug_payloads import BOOLEAN, DOUBLE, FLOAT, INT16, INT64, OFFLINE_RULE, STRING
from tests.sparkplug_payloads import payload as sp_payload
from tests.sparkplug_payloads import topic as sp_topic


def write_config(path: Path, unique: str, db: str) -> Path:
    path.write_text(f"""
[mqtt]
host = "{MQTT_HOST}"
port = {MQTT_PORT}
client_id = "{unique}"
shared_group = "{unique}"

[[mqtt.subscriptions]]
topic = "spBv1.0/{unique}/#"
format = "sparkplug_b"
measurement = "plc"
write_raw = true

[flow]
epoch_interval = "500ms"
health_interval = "1s"

[recovery]
dir = "{path.parent / "recovery"}"

[retention]
# These queries read the database's default policy: one policy for everything.
enabled = false

[influxdb]
{INFLUX_AUTH_TOML}
url = "{INFLUX_URL}"
database = "{db}"
flush_interval = "100ms"

[elasticsearch]
enabled = false

[dead_letters]
path = "{path.parent / "dead.jsonl"}"

[alerts]
mqtt_topic_prefix = "fwalerts/{unique}"
journal = "{path.parent / "alerts-sent.jsonl"}"
{OFFLINE_RULE}
""")
    return path


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dead_letters(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def rows(db: str, query: str, want: int, timeout: float = 20.0) -> list[dict]:
    found: list[dict] = []

    def enough() -> bool:
        nonlocal found
        found = influx_rows(db, query)
        return len(found) >= want

    wait_until(enough, timeout)
    return found


@pytest.mark.parametrize("restart", ["stop", "kill"])
def test_births_aliases_restart_gap_deaths_and_the_offline_rule(
    tmp_path: Path, unique: str, influx_db: str, restart: str
) -> None:
    """``stop``: SIGINT once the births are in a committed snapshot. ``kill``: SIGKILL as soon as they are counted,
    maybe before their epoch is committed: the broker then delivers them again (QoS 1) to the restarted process."""
    config = write_config(tmp_path / "fleetwatch.toml", unique, influx_db)
    dead_path = tmp_path / "dead.jsonl"
    group = unique
    pub = Publisher(qos=1)

    def send(kind: str, body: bytes, device: str = "") -> None:
        pub.send(sp_topic(group, kind, "edge1", device), body)

    pipeline = Pipeline(config)
    # Data before any birth: fleetwatch cannot know what alias 10 is.
    send("NDATA", sp_payload([(None, 10, FLOAT, 1.0)], seq=5, ts_ms=now_ms(), send_datatypes=False))
    births_ms = now_ms()
    node_birth = [
        ("bdSeq", None, INT64, 0),
        ("Node Control/Rebirth", 1, BOOLEAN, False),
        ("Temperature", 10, FLOAT, 21.5),
        ("Firmware", 11, STRING, "1.2.3"),
    ]
    send("NBIRTH", sp_payload(node_birth, seq=0, ts_ms=births_ms))
    send(
        "DBIRTH",
        sp_payload([("Pressure", 20, DOUBLE, 4.25), ("Offset", 21, INT16, -3)], seq=1, ts_ms=births_ms),
        "press",
    )
    pub.flush()
    pipeline.wait_for("messages_in", 3)
    pipeline.wait_for("dead_letters", 1)
    if restart == "kill":
        pipeline.kill()
    else:
        time.sleep(1.5)  # an epoch or more: the births are in a committed snapshot
        pipeline.stop()

    # After the restart the data names its metrics by alias alone: only the restored state knows them.
    pipeline = Pipeline(config)
    data_ms = now_ms()
    send(
        "DDATA",
        sp_payload([(None, 20, DOUBLE, 5.5), (None, 21, INT16, -7)], seq=2, ts_ms=data_ms, send_datatypes=False),
        "press",
    )
    send("NDATA", sp_payload([(None, 10, FLOAT, 22.0)], seq=3, ts_ms=data_ms, send_datatypes=False))
    # seq 4, 5 and 6 never arrive.
    send("DDATA", sp_payload([(None, 20, DOUBLE, 6.5)], seq=7, ts_ms=data_ms + 1, send_datatypes=False), "press")
    # An alias no birth declared.
    send("DDATA", sp_payload([(None, 99, DOUBLE, 0.0)], seq=8, ts_ms=data_ms + 2, send_datatypes=False), "press")
    pub.flush()
    pipeline.wait_for("messages_in", 4)
    pipeline.wait_for("dead_letters", 1)
    assert pipeline.counters()["sparkplug_seq_gaps"] == 1
    assert pipeline.counters()["sparkplug_seq_missed"] == 3

    # The broker publishes the node's will (NDEATH) when its connection dies; then the node comes back.
    send("NDEATH", sp_payload([("bdSeq", None, INT64, 0)], ts_ms=births_ms - 60_000))
    pub.flush()
    offline = rows(influx_db, "SELECT * FROM alerts WHERE \"state\" = 'firing'", 2)
    reborn_ms = now_ms() + 1
    send("NBIRTH", sp_payload([*node_birth[:1], ("Temperature", 10, FLOAT, 23.0)], seq=0, ts_ms=reborn_ms))
    send("DBIRTH", sp_payload([("Pressure", 20, DOUBLE, 7.0)], seq=1, ts_ms=reborn_ms), "press")
    pub.close()
    resolved = rows(influx_db, "SELECT * FROM alerts WHERE \"state\" = 'resolved'", 2)
    pipeline.wait_for("messages_in", 7)
    time.sleep(1.0)
    pipeline.stop()

    # Readings, by alias after the restart too, with the sign of an Int16.
    readings = influx_rows(influx_db, 'SELECT * FROM "plc" GROUP BY *')
    got = sorted((r.get("device") or "", r["metric"], r["value"]) for r in readings)
    assert got == [
        ("", "Temperature", 21.5),
        ("", "Temperature", 22.0),
        ("", "Temperature", 23.0),
        ("press", "Offset", -7.0),
        ("press", "Offset", -3.0),
        ("press", "Pressure", 4.25),
        ("press", "Pressure", 5.5),
        ("press", "Pressure", 6.5),
        ("press", "Pressure", 7.0),
    ]
    assert {(r["group"], r["node"]) for r in readings} == {(group, "edge1")}

    # Online state: births 1, the death 0 for the node and its device, the rebirth 1; and the node's gap count.
    state = influx_rows(influx_db, 'SELECT * FROM "sparkplug_state" GROUP BY *')
    online = sorted((r.get("device") or "", r["value"]) for r in state if r["metric"] == "online")
    assert online == [("", 0.0), ("", 1.0), ("", 1.0), ("press", 0.0), ("press", 1.0), ("press", 1.0)]
    assert [r["value"] for r in state if r["metric"] == "seq_gaps"] == [1.0]

    # The deadman rule fired for the node and its device on the death, and resolved on the births.
    assert sorted(r.get("device") or "" for r in offline) == ["", "press"]
    assert {r["rule"] for r in offline} == {"sparkplug-offline"}
    assert {r["severity"] for r in offline} == {"critical"}
    assert any(r["summary"] == f"Sparkplug {group}/edge1 press is offline" for r in offline), offline
    assert sorted(r.get("device") or "" for r in resolved) == ["", "press"]

    letters = dead_letters(dead_path)
    # After a kill, the epoch of the first dead letter may be delivered and refused again (at least once).
    reasons = [d["reason"] for d in letters]
    first = reasons.count("sparkplug_no_birth")
    assert reasons == ["sparkplug_no_birth"] * first + ["sparkplug_unknown_alias"]
    assert first == 1 or (restart == "kill" and first == 2)
    assert letters[0]["source"] == f"mqtt:spBv1.0/{group}/NDATA/edge1"
    assert "alias 99" in letters[-1]["detail"]
