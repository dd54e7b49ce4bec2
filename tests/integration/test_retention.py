"""Retention tiers against the real stores: InfluxDB 1.6.7 retention policies per tier, the v2 bucket setup
against a server that has no buckets API (VictoriaMetrics), and expired daily Elasticsearch indices deleted by
`fleetwatch retention` and by `fleetwatch run`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import urllib3
from paho.mqtt.enums import CallbackAPIVersion

from fleetwatch import config as config_mod
from fleetwatch.config import InfluxDBConfig
from fleetwatch.retention import TierPlan
from flows.sinks.influxdb import InfluxWriterThread, V1Writer, V2Writer, WriteError
from tests.conftest import (
    ES_URL,
    INFLUX_AUTH_TOML,
    INFLUX_PASSWORD_FILE,
    INFLUX_URL,
    INFLUX_USER,
    MQTT_HOST,
    MQTT_PORT,
    VM_URL,
    influx_rows,
    influxql,
)
from tests.integration.harness import Pipeline

S = 1_000_000_000
DAY = 86_400 * S
http = urllib3.PoolManager()


def _plan(**retention: object) -> TierPlan:
    return TierPlan.from_config(config_mod.from_dict({"retention": retention}, env={}))


def _policies(db: str) -> dict[str, str]:
    rows = influx_rows(db, f'SHOW RETENTION POLICIES ON "{db}"')
    return {row["name"]: row["duration"] for row in rows}


def _count(db: str, source: str) -> int:
    rows = influx_rows(db, f"SELECT count(*) FROM {source}")
    return int(next(v for k, v in rows[0].items() if k.startswith("count_"))) if rows else 0


def test_v1_tiers_are_retention_policies_and_each_line_lands_in_its_own(unique: str) -> None:
    db = unique
    cfg = InfluxDBConfig(
        url=INFLUX_URL, database=db, username=INFLUX_USER, password_file=INFLUX_PASSWORD_FILE, batch_size=1000
    )
    plan = _plan()
    now = time.time_ns()
    lines = [
        f"readings,device=d1,metric=t value=1.0 {now}",
        f"readings_late,device=d1,metric=t value=2.0 {now}",
        f"readings_agg,device=d1,metric=t,window=10s count=3i,mean=1.0 {now}",
        f"readings_agg,device=d1,metric=t,window=1m count=9i,mean=1.0 {now}",
        f"log_rates,service=api,window=1m count=4i {now}",
        f"alerts,rule=hot,state=firing,severity=critical value=1.0 {now}",
        f"fleetwatch_health,worker=0 messages_in=5i {now}",
        # Older than the raw tier keeps (7 d) and than the 10 s tier (30 d), but within the 1 m tier (400 d).
        f"readings,device=d1,metric=t value=3.0 {now - 8 * DAY}",
        f"readings_agg,device=d1,metric=t,window=10s count=3i,mean=1.0 {now - 40 * DAY}",
        f"readings_agg,device=d1,metric=t,window=1m count=9i,mean=1.0 {now - 40 * DAY}",
        # Before 1970: a negative time.
        "log_rates,service=old,window=1m count=1i -60000000000",
    ]
    rejected: list[object] = []
    try:
        writer = InfluxWriterThread(cfg, V1Writer(cfg, plan), rejected.extend)
        writer.put(lines)
        assert writer.flush(30)
        writer.close()

        assert _policies(db) == {
            "autogen": "0s",
            "raw": "168h0m0s",
            "agg_10s": "720h0m0s",
            "agg_1m": "9600h0m0s",
            "log_rates": "9600h0m0s",
            "alerts": "9600h0m0s",
            "health": "720h0m0s",
        }
        assert _count(db, '"raw"."readings"') == 1
        assert _count(db, '"raw"."readings_late"') == 1
        assert _count(db, '"agg_10s"."readings_agg" WHERE "window" = \'10s\'') == 1
        assert _count(db, '"agg_1m"."readings_agg" WHERE "window" = \'1m\'') == 2
        assert _count(db, '"agg_10s"."readings_agg" WHERE "window" = \'1m\'') == 0
        assert _count(db, '"log_rates"."log_rates"') == 1
        assert _count(db, '"alerts"."alerts"') == 1
        assert _count(db, '"health"."fleetwatch_health"') == 1
        # Nothing in the database's default policy, nothing refused: the three expired points were counted.
        assert influx_rows(db, "SHOW MEASUREMENTS") and _count(db, '"autogen"."readings_agg"') == 0
        assert writer.beyond_retention == 3 and rejected == []
        assert writer.written == len(lines) - 3

        # A second start with other durations changes the policies in place, and keeps their data.
        cfg2 = InfluxDBConfig(url=INFLUX_URL, database=db, username=INFLUX_USER, password_file=INFLUX_PASSWORD_FILE)
        again = InfluxWriterThread(cfg2, V1Writer(cfg2, _plan(raw="2d", windows={"10s": "3d"})), rejected.extend)
        again.put([f"readings,device=d2,metric=t value=1.0 {now}"])
        assert again.flush(30)
        again.close()
        policies = _policies(db)
        assert policies["raw"] == "48h0m0s" and policies["agg_10s"] == "72h0m0s"
        assert policies["agg_1m"] == "9600h0m0s"
        assert _count(db, '"raw"."readings"') == 2
    finally:
        influxql("", f'DROP DATABASE "{db}"', "POST")


def test_v2_without_a_buckets_api_is_a_clear_setup_error() -> None:
    """VictoriaMetrics serves InfluxDB's v2 write API but not its buckets API, as a token without bucket rights
    would refuse it: the setup must fail at once, naming every bucket and mapping to create."""
    cfg = InfluxDBConfig(api="v2", url=VM_URL, org="fleetwatch", bucket="fleet")
    writer = V2Writer(cfg, _plan())
    try:
        with pytest.raises(WriteError) as caught:
            writer.prepare()
    finally:
        writer.close()
    message = str(caught.value)
    assert not caught.value.retryable
    assert "HTTP 400" in message or "HTTP 404" in message
    for bucket, rp, duration in (("fleet_raw", "raw", "7d"), ("fleet_agg_1m", "agg_1m", "400d")):
        assert f"--name {bucket} --retention {duration}" in message
        assert f"--db fleet --rp {rp}" in message
    assert "retention.enabled = false" in message


def _es(method: str, path: str, body: dict | None = None) -> dict:
    resp = http.request(
        method,
        f"{ES_URL}{path}",
        body=json.dumps(body) if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, resp.data
    return dict(json.loads(resp.data))


def _indices(prefix: str) -> set[str]:
    return set(_es("GET", f"/{prefix}-*?expand_wildcards=open,closed&allow_no_indices=true"))


def _day(days_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y.%m.%d")


def _dated_indices(prefix: str) -> dict[str, bool]:
    """Daily indices dated in the past, created on the real server: name -> expired under the defaults
    (logs and dead letters 30 d, log rates and alerts 400 d)."""
    expected = {
        f"{prefix}-logs-{_day(45)}": True,
        f"{prefix}-logs-{_day(31)}": True,
        f"{prefix}-logs-{_day(29)}": False,
        f"{prefix}-logs-{_day(0)}": False,
        f"{prefix}-dead-letters-{_day(40)}": True,
        f"{prefix}-log-rates-{_day(45)}": False,
        f"{prefix}-alerts-{_day(401)}": True,
        f"{prefix}-alerts-{_day(45)}": False,
        # Where records of days past retention went: deleted at every run.
        f"{prefix}-logs-expired": True,
        f"{prefix}-alerts-expired": True,
        # Not a name fleetwatch gives a daily index: never touched.
        f"{prefix}-logs-{_day(45)}-restored": False,
        f"{prefix}-other-{_day(45)}": False,
        f"{prefix}-other-expired": False,
    }
    for name in expected:
        _es("PUT", f"/{name}", {"settings": {"number_of_replicas": 0}})
    return expected


def _retention_config(tmp_path: Path, prefix: str, extra: str = "") -> Path:
    path = tmp_path / "fleetwatch.toml"
    path.write_text(f"""
[elasticsearch]
hosts = ["{ES_URL}"]
index_prefix = "{prefix}"
{extra}
""")
    return path


def test_fleetwatch_retention_deletes_daily_indices_past_their_age(tmp_path: Path, es_index: str) -> None:
    expected = _dated_indices(es_index)
    config = _retention_config(tmp_path, es_index)
    fleetwatch = Path(sys.executable).with_name("fleetwatch")

    dry = subprocess.run([fleetwatch, "retention", "-c", config, "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    would = {line.removeprefix("would delete ") for line in dry.stdout.splitlines()}
    assert would == {name for name, expired in expected.items() if expired}
    assert _indices(es_index) == set(expected)

    done = subprocess.run([fleetwatch, "retention", "-c", config], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _indices(es_index) == {name for name, expired in expected.items() if not expired}
    assert {line.removeprefix("deleted ") for line in done.stdout.splitlines()} == would

    # Idempotent: a second run finds nothing more.
    second = subprocess.run([fleetwatch, "retention", "-c", config], capture_output=True, text=True)
    assert second.returncode == 0 and second.stdout == ""


def test_the_pipeline_deletes_expired_daily_indices_at_start(tmp_path: Path, unique: str, es_index: str) -> None:
    """`fleetwatch run` runs the same job on a timer; the local server has no data streams (and no ILM), so
    the sink uses daily indices and this job is what expires them."""
    expected = _dated_indices(es_index)
    log_file = tmp_path / "app.log"
    log_file.write_text('{"level": "info", "message": "hello"}\n')
    config = _retention_config(
        tmp_path,
        es_index,
        f"""
[retention]
logs = "30d"
check_interval = "1h"

[influxdb]
enabled = false

[[logs.files]]
name = "app"
paths = ["{log_file}"]
parser = {{ kind = "json" }}
service = "app"

[recovery]
enabled = false

[dead_letters]
path = "{tmp_path / "dead.jsonl"}"
""",
    )
    expired = {name for name, gone in expected.items() if gone}
    pipeline = Pipeline(config)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and expired & _indices(es_index):
            time.sleep(0.2)
        left = _indices(es_index)
        assert not expired & left, left
        assert {name for name, gone in expected.items() if not gone} <= left
        # Lines of 40 days long past the logs' retention (a sender's clock, an old file): one index for all of
        # them (until the job's next run), not one each. Today's line goes to today's index.
        with log_file.open("a") as f:
            for year in range(1960, 2000):
                f.write(json.dumps({"timestamp": f"{year}-03-04T00:00:00Z", "message": f"old {year}"}) + "\n")
        stamps = []
        while time.monotonic() < deadline + 30 and len(stamps) < 40:
            time.sleep(0.2)
            _es("POST", f"/{es_index}-logs-expired/_refresh?ignore_unavailable=true")
            hits = _es("GET", f"/{es_index}-logs-expired/_search?size=100&ignore_unavailable=true")
            stamps = sorted(h["_source"]["@timestamp"] for h in hits.get("hits", {}).get("hits", []))
        assert stamps == [f"{year}-03-04T00:00:00.000Z" for year in range(1960, 2000)]
        assert _indices(es_index) - left == {f"{es_index}-logs-expired"}
    finally:
        pipeline.stop()
    log = pipeline.log_text()
    assert f"deleted {es_index}-logs-{_day(45)}" in log


def test_replayed_history_lands_in_the_tiers_that_still_keep_it(tmp_path: Path, unique: str, es_index: str) -> None:
    """Readings of today and of 10 days ago through the broker and `fleetwatch run` with the default tiers: the
    old raw reading is past the raw tier (7 d) and counted, not sent; its 10 s and 1 min aggregates are kept."""
    config = tmp_path / "fleetwatch.toml"
    config.write_text(f"""
[mqtt]
host = "{MQTT_HOST}"
port = {MQTT_PORT}
client_id = "{unique}"
shared_group = "{unique}"

[[mqtt.subscriptions]]
topic = "fwret/{unique}/+/+"
qos = 1
template = "fwret/+/{{device}}/{{metric}}"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"
write_raw = true

[windows]
tumbling = ["10s", "1m"]
allowed_lateness = "1s"
max_age = "0s"

[flow]
epoch_interval = "500ms"
health_interval = "1s"

[recovery]
enabled = false

[influxdb]
{INFLUX_AUTH_TOML}
url = "{INFLUX_URL}"
database = "{unique}"
flush_interval = "100ms"

[elasticsearch]
index_prefix = "{es_index}"

[dead_letters]
path = "{tmp_path / "dead.jsonl"}"
""")
    now_ns = time.time_ns()
    old_ns = now_ns - 10 * DAY
    pipeline = Pipeline(config)
    try:
        client = paho.Client(CallbackAPIVersion.VERSION2)
        client.connect(MQTT_HOST, MQTT_PORT)
        client.loop_start()
        # The old reading first: the second one, 10 days later in the same series, closes its windows.
        for ts, value in ((old_ns, 1.5), (now_ns, 2.5)):
            payload = json.dumps({"ts": ts // 1_000_000, "v": value})
            client.publish(f"fwret/{unique}/d1/temp", payload, qos=1).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()

        # Only the old reading's windows: today's close later, by the wall clock.
        old_only = "WHERE time < now() - 1d"
        beyond = 'SELECT max("points_beyond_retention") AS "n" FROM "health"."fleetwatch_health"'

        def landed() -> bool:
            health = influx_rows(unique, beyond)
            return bool(health and health[0]["n"] == 1 and _count(unique, f'"agg_1m"."readings_agg" {old_only}') == 1)

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not landed():
            time.sleep(0.5)
        assert landed(), pipeline.tail()
        assert [r["value"] for r in influx_rows(unique, 'SELECT "value" FROM "raw"."readings"')] == [2.5]
        old = influx_rows(unique, f'SELECT "mean", "window" FROM "agg_10s"."readings_agg" {old_only}')
        assert [(r["mean"], r["window"]) for r in old] == [(1.5, "10s")]
        assert influx_rows(unique, f'SELECT "mean" FROM "agg_1m"."readings_agg" {old_only}')[0]["mean"] == 1.5
        assert influx_rows(unique, 'SELECT count("value") FROM "autogen"."readings"') == []
    finally:
        pipeline.stop()
        influxql("", f'DROP DATABASE "{unique}"', "POST")
