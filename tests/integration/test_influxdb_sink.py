"""flows/sinks/influxdb against the real servers: v2 writes through influxdb-client to VictoriaMetrics, and a
v1 write path that survives InfluxDB being stopped and started again."""

from __future__ import annotations

import subprocess
import time

import pytest

from fleetwatch.config import Config, InfluxDBConfig
from fleetwatch.record import DeadLetter
from fleetwatch.retention import TierPlan
from flows.sinks.influxdb import InfluxWriterThread, V1Writer, V2Writer
from tests.conftest import (
    INFLUX_PASSWORD_FILE,
    INFLUX_URL,
    INFLUX_USER,
    REPO,
    VM_URL,
    influx_rows,
    influxql,
    vm_export,
)

T0 = 1_767_225_600 * 1_000_000_000


@pytest.mark.parametrize("gzip", [True, False])
def test_v2_writer_lands_points_in_victoriametrics(vm_measurement: str, gzip: bool) -> None:
    # (on loopback "auto" sends plain bodies; gzip'd ones are what a remote server gets)
    cfg = InfluxDBConfig(api="v2", url=VM_URL, org="fleetwatch", bucket="fleetwatch", batch_size=100, gzip=gzip)
    rejected: list[DeadLetter] = []
    writer = InfluxWriterThread(cfg, V2Writer(cfg), rejected.extend)
    ts = (int(time.time()) - 60) * 1_000_000_000
    writer.put([f"{vm_measurement},device=d{i % 4} count={i}i,mean={i}.5 {ts + i * 1_000_000_000}" for i in range(40)])
    assert writer.flush(30)
    writer.close()
    deadline = time.monotonic() + 30  # VictoriaMetrics makes new samples searchable within seconds
    points = 0
    while time.monotonic() < deadline and points < 80:
        points = sum(len(series["values"]) for series in vm_export(vm_measurement))
        time.sleep(0.2)
    assert points == 80  # 40 points x 2 fields
    assert rejected == [] and writer.written == 40


def test_v1_writer_rides_out_an_influxdb_outage_without_losing_points(influx_db: str) -> None:
    cfg = InfluxDBConfig(
        url=INFLUX_URL,
        database=influx_db,
        username=INFLUX_USER,
        password_file=INFLUX_PASSWORD_FILE,
        batch_size=500,
        retry_max_delay="2s",
    )  # type: ignore[arg-type]
    rejected: list[DeadLetter] = []
    writer = InfluxWriterThread(cfg, V1Writer(cfg), rejected.extend)
    sent = 0
    subprocess.run([str(REPO / "scripts" / "stack.sh"), "down", "influxdb"], check=True)
    try:
        # Keep writing for 30 s while InfluxDB is down: the writer retries, nothing is dropped.
        end = time.monotonic() + 30
        while time.monotonic() < end:
            writer.put([f"outage,batch={sent // 1000} v={i}i {T0 + (sent + i) * 1000}" for i in range(1000)])
            sent += 1000
            time.sleep(0.5)
        assert writer.retries > 0
        assert len(writer.buffer) > 0
    finally:
        subprocess.run([str(REPO / "scripts" / "stack.sh"), "up", "influxdb"], check=True)
    assert writer.flush(60)
    writer.close()
    rows = influx_rows(influx_db, 'SELECT count("v") FROM "outage"')
    assert rows[0]["count"] == sent
    assert rejected == []


def test_v1_writer_sends_from_two_lanes_at_once_and_dead_letters_only_the_bad_line(influx_db: str) -> None:
    cfg = InfluxDBConfig(
        url=INFLUX_URL,
        database=influx_db,
        username=INFLUX_USER,
        password_file=INFLUX_PASSWORD_FILE,
        batch_size=1000,
        concurrent_requests=2,
        gzip=True,  # as sent to a server that is not on loopback
    )  # type: ignore[arg-type]
    rejected: list[DeadLetter] = []
    writer = InfluxWriterThread(cfg, V1Writer(cfg), rejected.extend)
    lines = [f"parts,device=d{i % 50} v={i}i {T0 + i * 1000}" for i in range(2000)]
    lines[1500] = f"parts,device=bad v=not-a-number {T0 + 777}"  # in the second request, from either lane
    writer.put(lines)
    assert writer.flush(30)
    writer.close()
    assert influx_rows(influx_db, 'SELECT count("v") FROM "parts"')[0]["count"] == 1999
    assert [letter.reason for letter in rejected] == ["influxdb_rejected"]
    assert b"device=bad" in rejected[0].raw
    # The point's own time, not the time of refusal: refused again after a replay, it is the same dead
    # letter (same id), stored once.
    assert rejected[0].received_ns == T0 + 777
    assert writer.written == 1999


def test_a_database_name_with_quotes_is_only_ever_a_name(influx_db: str) -> None:
    """Found by a review: the name went into InfluxQL unescaped, so `x"; DROP DATABASE "victim` created x and
    dropped another database. Quoted, it is one database of that exact name, with its retention policies."""
    odd = f'{influx_db}_x"; DROP DATABASE "{influx_db}'
    cfg = InfluxDBConfig(url=INFLUX_URL, database=odd, username=INFLUX_USER, password_file=INFLUX_PASSWORD_FILE)
    writer = V1Writer(cfg, TierPlan.from_config(Config()))
    escaped = odd.replace('"', '\\"')
    try:
        writer.prepare()
        databases = {row["name"] for row in influx_rows("", "SHOW DATABASES")}
        assert influx_db in databases and odd in databases
        policies = {row["name"] for row in influx_rows("", f'SHOW RETENTION POLICIES ON "{escaped}"')}
        assert {t.name for t in TierPlan.from_config(Config()).tiers} <= policies
    finally:
        influxql("", f'DROP DATABASE "{escaped}"', "POST")
