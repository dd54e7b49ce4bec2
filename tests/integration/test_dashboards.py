"""Dashboards as code, checked on real data: the committed JSON is what the code generates; every panel's queries,
run the way Grafana runs them against what a real `fleetwatch run` wrote (simulated fleet with a hot device, a
silent device, broken payloads and service logs with error bursts), return data of the shape the panel needs and
name nothing the pipeline did not write; and the PNG snapshots are drawn."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from matplotlib import image as mpimg
from paho.mqtt.enums import CallbackAPIVersion

from dashboards import generate
from dashboards.queries import (
    ALL,
    DashboardResult,
    Stores,
    TimeRange,
    Variable,
    calculate_interval_ms,
    es_search_body,
    format_variable,
    interpolate,
    interval_text,
    load_dashboards,
    references,
    run_all,
    run_dashboard,
    unknown_references,
    written_schema,
)
from dashboards.snapshot import render_snapshots
from fleetwatch.config import MQTTConfig, SimulatorConfig
from fleetwatch.simulator import run_log_simulator, run_simulator
from tests.conftest import ES_URL, INFLUX_URL, MQTT_HOST, MQTT_PORT, REPO, http, influxql
from tests.integration.harness import Pipeline

# Long enough for 10 s windows and log-rate windows to close, alerts to fire and resolve, and the health
# counters to have several points; short enough for the test to stay around a minute.
SIMULATE_S = 24.0

# ------------------------------------------------------------------------------------------- generation


def test_committed_dashboards_are_what_the_code_generates() -> None:
    assert generate.differing() == [], "run: python -m dashboards.generate"
    # The command line too, as CI and the README use it.
    check = subprocess.run(
        [sys.executable, "-m", "dashboards.generate", "--check"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr


def test_check_names_a_file_that_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in generate.DASHBOARDS:
        shutil.copy(generate.path_of(name), tmp_path)
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 0
    stale = generate.path_of("logs", tmp_path)
    stale.write_text(stale.read_text().replace('"Log events"', '"Log lines"', 1))
    (tmp_path / "health.json").unlink()
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(stale) in err and "health.json" in err and "fleet.json" not in err
    # Writing brings them back, byte for byte.
    assert sorted(p.name for p in generate.write_all(tmp_path)) == ["health.json", "logs.json"]
    assert generate.differing(tmp_path) == []


def test_dashboards_use_the_provisioned_datasources_with_fixed_uids() -> None:
    provisioned = yaml.safe_load((REPO / "provisioning/grafana/datasources/fleetwatch.yaml").read_text())
    by_uid = {ds["uid"]: ds for ds in provisioned["datasources"]}
    assert set(by_uid) == set(generate.DATASOURCES)
    for ds in generate.DATASOURCES.values():
        entry = by_uid[ds.uid]
        assert entry["type"] == ds.type and entry["jsonData"]["timeInterval"] == ds.time_interval
        if ds.type == "influxdb":
            assert entry["jsonData"]["version"] == "InfluxQL" and entry["jsonData"]["dbName"] == "${INFLUXDB_DATABASE}"
            assert entry["jsonData"]["httpHeaderName1"] == "Authorization"
            assert entry["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUXDB_TOKEN}"
        else:
            data = entry["jsonData"]
            assert data["index"] == f"fleetwatch-{ds.index_kind}*" and data["timeField"] == ds.time_field
            assert data.get("logMessageField", "") == ds.log_message_field
            assert data.get("logLevelField", "") == ds.log_level_field
            assert entry["basicAuthUser"] == "elastic"
            assert entry["secureJsonData"]["basicAuthPassword"] == "${ELASTIC_PASSWORD}"
    dashboards = load_dashboards()
    assert [d["uid"] for d in dashboards] == [f"fleetwatch-{name}" for name in generate.DASHBOARDS]
    text = json.dumps(dashboards)
    assert {uid for uid in generate.DATASOURCES if f'"uid": "{uid}"' in text} == set(generate.DATASOURCES)
    (provider,) = yaml.safe_load((REPO / "provisioning/grafana/dashboards/fleetwatch.yaml").read_text())["providers"]
    assert provider["folder"] == "fleetwatch" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


# ------------------------------------------------------------------- Grafana's semantics (no server needed)


def test_variables_intervals_and_searches_follow_grafana() -> None:
    site = Variable("site", ["s.0", "s1"], [ALL], multi=True, include_all=True)
    device = Variable("device", ["d(1)", "d2"], ["d(1)"])
    builtins = {"timeFilter": "time >= now() - 1h", "__interval": "10s", "__interval_ms": "10000"}
    variables = {"site": site, "device": device}
    query = 'WHERE "site" =~ /^$site$/ AND "device" =~ /^$device$/ AND "d" = \'$device\' AND $timeFilter'
    assert interpolate(query, variables, builtins, "regex") == (
        'WHERE "site" =~ /^(s\\.0|s1)$/ AND "device" =~ /^d\\(1\\)$/ AND "d" = \'d(1)\' AND time >= now() - 1h'
    )
    assert interpolate("GROUP BY time($__interval) ${site:csv} [[device]] $nope", variables, builtins, "regex") == (
        "GROUP BY time(10s) s.0,s1 d(1) $nope"
    )
    assert interpolate("service.name:$site AND d:$device", variables, {}, "lucene") == (
        'service.name:("s.0" OR "s1") AND d:d\\(1\\)'
    )
    custom_all = Variable("site", ["a", "b"], [ALL], multi=True, include_all=True, all_value=".*")
    assert format_variable(custom_all, "regex") == ".*"
    # Grafana's rounding: 1 h over 960 px is 3.75 s, rounded to 5 s, raised to the data source's 10 s.
    assert calculate_interval_ms(3_600_000, 960, "10s") == 10_000
    assert interval_text(calculate_interval_ms(86_400_000, 960, "10s")) == "2m"
    assert interval_text(500) == "500ms" and interval_text(3_600_000) == "1h"

    target = {
        "query": "service.name:x",
        "metrics": [{"id": "1", "type": "count"}],
        "bucketAggs": [
            {"id": "2", "type": "terms", "field": "log.level",
             "settings": {"size": "10", "order": "desc", "orderBy": "_count", "min_doc_count": "1"}},
            {"id": "3", "type": "date_histogram", "field": "@timestamp",
             "settings": {"interval": "auto", "min_doc_count": "0"}},
        ],
    }  # fmt: skip
    body = es_search_body(target, generate.DATASOURCES[generate.ES_LOGS_UID], "service.name:x", (1000, 2000), 10_000)
    assert body == {
        "size": 0,
        "query": {
            "bool": {
                "filter": [
                    {"range": {"@timestamp": {"format": "epoch_millis", "gte": 1000, "lte": 2000}}},
                    {"query_string": {"analyze_wildcard": True, "query": "service.name:x"}},
                ]
            }
        },
        "aggs": {
            "2": {
                "terms": {"field": "log.level", "size": 10, "min_doc_count": 1, "order": {"_count": "desc"}},
                "aggs": {
                    "3": {
                        "date_histogram": {
                            "field": "@timestamp",
                            "fixed_interval": "10000ms",
                            "min_doc_count": 0,
                            "extended_bounds": {"min": 1000, "max": 2000},
                            "format": "epoch_millis",
                        },
                        "aggs": {},
                    }
                },
            }
        },
    }
    logs = es_search_body({"metrics": [{"id": "1", "type": "logs"}]}, generate.DATASOURCES[generate.ES_LOGS_UID], "",
                          (1000, 2000), 10_000)  # fmt: skip
    assert logs["size"] == 500 and logs["sort"][0] == {"@timestamp": {"order": "desc", "unmapped_type": "boolean"}}
    assert logs["query"] == {"bool": {"filter": {"range": {"@timestamp": {"format": "epoch_millis", "gte": 1000,
                                                                           "lte": 2000}}}}}  # fmt: skip


# --------------------------------------------------------------------------------------- a pipeline run


@dataclass
class Run:
    stores: Stores
    time_range: TimeRange
    results: list[DashboardResult]


def _config(tmp: Path, unique: str, log_dir: Path) -> Path:
    path = tmp / "fleetwatch.toml"
    path.write_text(f"""
[mqtt]
client_id = "{unique}"
shared_group = "{unique}"
[[mqtt.subscriptions]]
topic = "fwtest/{unique}/+/+/+"
qos = 1
template = "fwtest/+/{{site}}/{{device}}/{{metric}}"
format = "number"
measurement = "readings"

[windows]
tumbling = ["10s"]
allowed_lateness = "2s"

[flow]
epoch_interval = "1s"
health_interval = "1s"

[recovery]
enabled = false

[influxdb]
url = "{INFLUX_URL}"
database = "{unique}"
flush_interval = "100ms"

[elasticsearch]
hosts = ["{ES_URL}"]
index_prefix = "{unique}"
flush_interval = "100ms"

[logs]
rate_window = "10s"
allowed_lateness = "2s"

[[logs.files]]
name = "services"
paths = ["{log_dir}/*.log"]
read_from = "start"
parser = {{ kind = "json", timestamp_field = "timestamp", level_field = "level", message_field = "message" }}

[dead_letters]
path = "{tmp / "dead-letters.jsonl"}"

[alerts]
mqtt_topic_prefix = "fwalerts/{unique}"
journal = "{tmp / "alerts-sent.jsonl"}"

# As in fleetwatch.example.toml: the simulator's hot device fires it, and it resolves when the device cools.
[[alerts.rules]]
name = "hot"
target = "reading"
measurement = "readings"
metric = "temperature"
condition = ">"
warning = 30.0
critical = 40.0
warning_clear = 28.0

# The simulator's silent device.
[[alerts.rules]]
name = "silent-device"
kind = "deadman"
target = "reading"
metric = "temperature"
silent_for = "4s"
critical = 1

# The simulated services' error bursts.
[[alerts.rules]]
name = "error-burst"
target = "log_rate"
stat = "errors"
match = {{ service = "*" }}
condition = ">="
warning = 3
critical = 50
""")
    return path


def _clear_retained(prefix: str) -> None:
    """The alert notifier retains each series' state on the broker: remove what this run left."""
    topics: set[str] = set()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: topics.add(m.topic) if m.retain and m.payload else None
    client.connect(MQTT_HOST, MQTT_PORT)
    client.subscribe(f"{prefix}/#", qos=1)
    client.loop_start()
    time.sleep(1.0)
    for topic in sorted(topics):
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One pipeline run on simulated readings and logs, shared by the tests below (it takes half a minute)."""
    unique = f"fwt{uuid.uuid4().hex[:10]}"
    tmp = tmp_path_factory.mktemp("dashboards")
    log_dir = tmp / "logs"
    sim = SimulatorConfig.model_validate(
        {
            "devices": 6,
            "sites": 2,
            "metrics": ["temperature", "humidity", "pressure"],
            "interval": "500ms",
            "topic_prefix": f"fwtest/{unique}",
            "qos": 1,
            "bad_ratio": 0.03,
            "seed": 7,
            # dev00000 runs hot for the first 2 s of every 10 (then dev00001, dev00002); dev00001 goes silent at 6 s.
            "anomaly_every": "10s",
            "anomaly_delta": 25.0,
            "silent_from": "6s",
            "silent_for": "10m",
            "log_dir": str(log_dir),
            "log_services": ["checkout", "billing", "search"],
            "log_lines_per_second": 40.0,
            "log_burst_every": "10s",
        }
    )
    started_ns = time.time_ns()
    pipeline = Pipeline(_config(tmp, unique, log_dir))
    errors: list[BaseException] = []

    def guarded(target: Callable[..., object], *args: object) -> threading.Thread:
        def body() -> None:
            try:
                target(*args)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        return thread

    try:
        threads = [
            guarded(run_simulator, sim, MQTTConfig(host=MQTT_HOST, port=MQTT_PORT), SIMULATE_S),
            guarded(run_log_simulator, sim, None, SIMULATE_S),
        ]
        for thread in threads:
            thread.join(SIMULATE_S + 30)
        assert not errors, errors
        # The last health points and log lines are written; less than the deadman's silent_for, so that only the
        # silent device is alerted as silent, not every device because the simulator stopped.
        time.sleep(2.5)
        pipeline.stop()
        http.request("POST", f"{ES_URL}/{unique}-*/_refresh")
        stores = Stores(INFLUX_URL, unique, ES_URL, unique)
        span = TimeRange.between(started_ns - 60_000_000_000, time.time_ns() + 5_000_000_000)
        yield Run(stores, span, run_all(stores, span))
    finally:
        if pipeline.proc.poll() is None:
            pipeline.kill()
        influxql("", f'DROP DATABASE "{unique}"', "POST")
        http.request("DELETE", f"{ES_URL}/{unique}*")
        http.request("DELETE", f"{ES_URL}/_index_template/{unique}-*")
        _clear_retained(f"fwalerts/{unique}")


def test_every_panel_returns_data_of_its_shape(run: Run) -> None:
    assert [r.uid for r in run.results] == [f"fleetwatch-{name}" for name in generate.DASHBOARDS]
    problems = []
    for result in run.results:
        for name, var in result.variables.items():
            if not var.options:
                problems.append(f"{result.uid}: variable ${name} has no values ({result.variable_queries[name]})")
        for panel in result.panels:
            problem = panel.shape_problem()
            if problem:
                queries = " | ".join(q.text for q in panel.queries)
                problems.append(f"{result.uid} #{panel.panel_id} {panel.title!r}: {problem} [{queries}]")
        for annotation in result.annotations:
            if annotation.error or not annotation.events:
                problems.append(f"{result.uid} annotation {annotation.name!r}: {annotation.error or 'no events'}")
    assert problems == []

    by_uid = {r.uid: r for r in run.results}
    fleet = by_uid["fleetwatch-fleet"]
    assert fleet.variables["site"].options == ["site0", "site1"]
    assert fleet.variables["device"].options == [f"dev{i:05d}" for i in range(6)]
    assert fleet.variables["metric"].options == ["humidity", "pressure", "temperature"]
    # The per-metric panel is repeated once per metric, side by side, as Grafana lays it out.
    repeated = [p for p in fleet.panels if p.scoped]
    assert [(p.title, p.grid[0], p.grid[2]) for p in repeated] == [
        ("humidity: 10 s window means", 0, 8),
        ("pressure: 10 s window means", 8, 8),
        ("temperature: 10 s window means", 16, 8),
    ]
    assert {s.name for s in repeated[0].series} == {f"dev{i:05d}" for i in range(6)}
    stats = {p.title: p.table()[1][0][-1] for p in fleet.panels if p.type == "stat"}
    assert stats["Sites reporting"] == 2 and stats["Devices reporting"] == 6
    assert stats["Alerts firing"] >= 1  # the silent device, at least

    alerts = by_uid["fleetwatch-alerts"]
    assert set(alerts.variables["rule"].options) == {"hot", "silent-device", "error-burst"}
    active = next(p for p in alerts.panels if p.title == "Active alerts")
    columns, rows = active.table()
    assert columns[:3] == ["Time", "rule", "severity"] and "firing" not in columns
    firing = {(r[columns.index("rule")], r[columns.index("device")]) for r in rows}
    assert ("silent-device", "dev00001") in firing
    history = next(p for p in alerts.panels if p.title == "History")
    states = {row[history.table()[0].index("state")] for row in history.table()[1]}
    assert {"firing", "resolved"} <= states

    health = by_uid["fleetwatch-health"]
    reasons = {s.name for s in next(p for p in health.panels if p.title == "Dead letters by reason").series}
    assert reasons & {"non_finite", "invalid_utf8", "not_a_number", "oversized"}

    logs = by_uid["fleetwatch-logs"]
    levels = {s.name for s in next(p for p in logs.panels if p.title == "Log volume by level").series}
    assert {"info", "warn", "error"} <= levels
    hits = next(p for p in logs.panels if p.type == "logs").hits
    assert {h["service.name"] for h in hits} == {"checkout", "billing", "search"}


def test_no_query_names_what_the_pipeline_did_not_write(run: Run) -> None:
    refs = references(load_dashboards())
    assert refs.measurements == {"readings_agg", "alerts", "log_rates", "fleetwatch_health"}
    assert set(refs.es_fields) == {"logs", "alerts", "dead-letters"}
    assert unknown_references(refs, written_schema(run.stores)) == []


def test_variables_multi_values_and_relative_ranges_are_interpolated_as_grafana_does(run: Run) -> None:
    fleet = next(d for d in load_dashboards() if d["uid"] == "fleetwatch-fleet")
    result = run_dashboard(
        fleet, run.stores, TimeRange.last("10m"), variables={"site": ["site1"], "metric": ["humidity", "pressure"]}
    )
    # Devices follow the site (its query uses $site); the metric panels repeat per selected metric.
    assert result.variables["device"].options == ["dev00001", "dev00003", "dev00005"]
    assert result.variable_queries["device"].endswith('WHERE "site" =~ /^site1$/')
    assert [p.title for p in result.panels if p.scoped] == [
        "humidity: 10 s window means",
        "pressure: 10 s window means",
    ]
    table = next(p for p in result.panels if p.title == "Latest values")
    query = table.queries[0].text
    assert '"metric" =~ /^(humidity|pressure)$/' in query and "time >= now() - 10m" in query
    assert "GROUP BY" in query and "$" not in query.replace("$/", "")
    columns, rows = table.table()
    assert {r[columns.index("site")] for r in rows} == {"site1"}
    assert {r[columns.index("metric")] for r in rows} == {"humidity", "pressure"}
    assert all(p.shape_problem() is None for p in result.panels)


def test_snapshots_are_one_readable_png_per_dashboard(run: Run, tmp_path: Path) -> None:
    calls: list[tuple[int, int, str]] = []
    paths = render_snapshots(
        tmp_path / "snapshots",
        run.stores.influx_url,
        run.stores.database,
        run.stores.es_url,
        run.stores.index_prefix,
        run.time_range,
        progress=lambda done, total, what: calls.append((done, total, what)),
    )
    assert [p.name for p in paths] == [f"fleetwatch-{name}.png" for name in generate.DASHBOARDS]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        assert len(data) > 10_000, (path, len(data))
        pixels = mpimg.imread(path)
        height, width = pixels.shape[:2]
        assert width == 2000 and 600 <= height <= 4000 and pixels.shape[2] in (3, 4), (path, pixels.shape)
        # Not a blank page: plenty of pixels differ from the white background.
        assert (pixels[..., :3] < 0.9).any(axis=2).mean() > 0.02, path
    done, total, _ = calls[-1]
    assert done == total and all(c[1] == total for c in calls)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
