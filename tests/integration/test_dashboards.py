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
    influx_panel_query,
    influx_variable_query,
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
from fleetwatch.config import Config, InfluxDBConfig, MQTTConfig, SimulatorConfig
from fleetwatch.retention import TierPlan
from fleetwatch.simulator import run_log_simulator, run_simulator
from flows.sinks.influxdb import InfluxWriterThread, V1Writer
from tests.conftest import (
    ES_URL,
    INFLUX_AUTH_TOML,
    INFLUX_PASSWORD_FILE,
    INFLUX_URL,
    INFLUX_USER,
    MQTT_HOST,
    MQTT_PORT,
    REPO,
    http,
    influx_credentials,
    influxql,
)
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
            # Grafana's own least-privilege user, not the `elastic` superuser.
            assert entry["basicAuthUser"] == "${ELASTICSEARCH_USER}"
            assert entry["secureJsonData"]["basicAuthPassword"] == "${ELASTICSEARCH_PASSWORD}"
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
    variables = {"site": site, "device": device}
    span = TimeRange.between(1_700_000_000_000_000_000, 1_700_003_600_000_000_000)
    bounds = (span.start_ns or 0, span.end_ns or 0)
    # Panel query: a multi-value variable is (a|b) of escaped values; a single-value one is escaped everywhere once
    # the query has it inside a regex; $timeFilter is the backend's, both bounds in ms.
    query = 'WHERE "site" =~ /^$site$/ AND "device" =~ /^$device$/ AND "d" = \'$device\' AND $timeFilter'
    assert influx_panel_query(query, variables, span, bounds, 10_000) == (
        'WHERE "site" =~ /^(s\\.0|s1)$/ AND "device" =~ /^d\\(1\\)$/ AND "d" = \'d\\(1\\)\' AND '
        "time >= 1700000000000ms and time <= 1700003600000ms"
    )
    # Variable query: the single-value variable goes in as it is.
    assert influx_variable_query(query, variables, span, bounds, 10_000).startswith(
        'WHERE "site" =~ /^(s\\.0|s1)$/ AND "device" =~ /^d(1)$/ AND "d" = \'d(1)\''
    )
    assert influx_panel_query("GROUP BY time($__interval) ${site:csv} [[device]] $nope", variables, span, bounds,
                              10_000) == "GROUP BY time(10s) s.0,s1 d(1) $nope"  # fmt: skip
    assert interpolate("service.name:$site AND d:$device", variables, "lucene") == (
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


# The device inventory of the simulated fleet: dev00005 is not listed (its readings go on without these tags).
INVENTORY = {f"dev{i:05d}": ("TH-2" if i % 2 else "TH-3", "facilities" if i < 3 else "lab") for i in range(5)}


def _config(tmp: Path, unique: str, log_dir: Path) -> Path:
    path = tmp / "fleetwatch.toml"
    devices = ["device,model,owner"] + [f"{d},{model},{owner}" for d, (model, owner) in INVENTORY.items()]
    (tmp / "devices.csv").write_text("\n".join(devices) + "\n")
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

[mqtt.devices]
file = "{tmp / "devices.csv"}"

[windows]
# Both retention tiers the dashboards read; the run is too short to close a 1 min window.
tumbling = ["10s", "1m"]
allowed_lateness = "2s"

[flow]
epoch_interval = "1s"
health_interval = "1s"

[recovery]
enabled = false

[influxdb]
{INFLUX_AUTH_TOML}
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
        stores = Stores(INFLUX_URL, unique, ES_URL, unique, influx_auth=influx_credentials())
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
            if annotation.needs_grafana:
                # Grafana's own annotations (fleetwatch posts transitions there) need a running Grafana: what is
                # checked here is the request, and in tests/unit/test_dashboard_semantics.py what it finds.
                if (annotation.grafana_request or {}).get("tags") != [generate.GRAFANA_ANNOTATION_TAG]:
                    problems.append(f"{result.uid} annotation {annotation.name!r}: {annotation.grafana_request}")
            elif annotation.error or not annotation.events:
                problems.append(f"{result.uid} annotation {annotation.name!r}: {annotation.error or 'no events'}")
    assert problems == []

    by_uid = {r.uid: r for r in run.results}
    fleet = by_uid["fleetwatch-fleet"]
    assert fleet.variables["site"].options == ["site0", "site1"]
    assert fleet.variables["device"].options == [f"dev{i:05d}" for i in range(6)]
    assert fleet.variables["metric"].options == ["humidity", "pressure", "temperature"]
    assert fleet.variables["model"].options == ["TH-2", "TH-3"]
    assert fleet.variables["owner"].options == ["facilities", "lab"]
    # The per-metric panel is repeated once per metric, side by side, as Grafana lays it out.
    repeated = [p for p in fleet.panels if p.scoped]
    assert [(p.title, p.grid[0], p.grid[2]) for p in repeated] == [
        ("humidity: 10 s window means", 0, 8),
        ("pressure: 10 s window means", 8, 8),
        ("temperature: 10 s window means", 16, 8),
    ]
    assert {s.name for s in repeated[0].series} == {f"dev{i:05d}" for i in range(6)}
    stats = {p.title: p.stat()[0].value for p in fleet.panels if p.type == "stat"}
    assert stats["Sites reporting"] == 2 and stats["Devices reporting"] == 6
    assert stats["Alerts firing"] is not None and stats["Alerts firing"] >= 1  # the silent device, at least
    latest = next(p for p in fleet.panels if p.title == "Latest values")
    assert latest.table()[0] == ["Time", "site", "device", "metric", "last value", "window mean", "readings in window"]

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
    # A multi-value variable's selection is a list, even of one value: Grafana makes it an alternation.
    # The inventory's tags at All are Grafana's custom all value ".*", which also matches a device without them.
    assert result.variable_queries["device"].endswith(
        'WHERE "site" =~ /^(site1)$/ AND "model" =~ /^.*$/ AND "owner" =~ /^.*$/'
    )
    assert [p.title for p in result.panels if p.scoped] == [
        "humidity: 10 s window means",
        "pressure: 10 s window means",
    ]
    table = next(p for p in result.panels if p.title == "Latest values")
    query = table.queries[0].text
    start_ms, end_ms = result.start_ns // 1_000_000, result.end_ns // 1_000_000
    assert end_ms - start_ms == 600_000
    assert '"metric" =~ /^(humidity|pressure)$/' in query and f"time >= {start_ms}ms and time <= {end_ms}ms" in query
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
        influx_auth=run.stores.influx_auth,
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


def test_log_counts_agree_with_the_documents_in_elasticsearch(run: Run) -> None:
    """The Logs dashboard's counts are the documents the user sees beside them (the volume histograms, the log
    lines): the same number Elasticsearch counts for the range and the selected services."""
    logs = next(r for r in run.results if r.uid == "fleetwatch-logs")
    services = logs.variables["service"].values
    assert sorted(services) == ["billing", "checkout", "search"]
    start_ms, end_ms = logs.start_ns // 1_000_000, logs.end_ns // 1_000_000

    def count(*extra: dict[str, object]) -> int:
        in_range = {"range": {"@timestamp": {"gte": start_ms, "lte": end_ms, "format": "epoch_millis"}}}
        body = {"query": {"bool": {"filter": [in_range, {"terms": {"service.name": services}}, *extra]}}}
        resp = http.request(
            "POST",
            f"{ES_URL}/{run.stores.index_prefix}-logs*/_count",
            body=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 200, resp.data
        return int(json.loads(resp.data)["count"])

    events = count()
    errors = count({"terms": {"log.level": ["error", "critical", "alert", "emergency"]}})
    assert events > 0 and 0 < errors < events
    stats = {p.title: p.stat() for p in logs.panels if p.type == "stat"}
    assert [v.value for v in stats["Log events"]] == [events]
    assert [v.value for v in stats["Errors"]] == [errors]
    assert [v.value for v in stats["Error rate"]] == [pytest.approx(errors / events)]
    for title in ("Log volume by level", "Log volume by service"):
        panel = next(p for p in logs.panels if p.title == title)
        assert sum(v for s in panel.series for _, v in s.non_null()) == events, title
    # log_rates counts only closed windows (and not events that arrived after theirs closed): fewer, and the panels
    # built on it say that they show windows.
    in_range = f"time >= {start_ms}ms AND time <= {end_ms}ms"
    windows = influxql(run.stores.database, f'SELECT sum("count") FROM "log_rates"."log_rates" WHERE {in_range}')[
        "series"
    ][0]["values"][0][1]
    assert windows <= events
    assert [p.title for p in logs.panels if "log_rates" in json.dumps(p.panel["targets"])] == [
        "Services logging",
        "Error rate by service (closed log-rate windows)",
        "Closed log-rate windows: info, warn, error",
    ]


def test_the_fleets_alerts_firing_counts_every_firing_alert(run: Run) -> None:
    by_uid = {r.uid: r for r in run.results}
    fleet = next(p for p in by_uid["fleetwatch-fleet"].panels if p.title == "Alerts firing")
    firing_now = next(p for p in by_uid["fleetwatch-alerts"].panels if p.title == "Firing now")
    active = next(p for p in by_uid["fleetwatch-alerts"].panels if p.title == "Active alerts")
    assert fleet.stat()[0].value == firing_now.stat()[0].value == len(active.table()[1]) >= 1


# ------------------------------------------------------------- device ids Grafana's substitution used to break

ODD_DEVICE = "dev.1+(a)/b"
NUMBER_LIKE_DEVICE = "10.0.0.7/eth0"
NORTH, SOUTH = "north.1", "south+(2)/x"


@dataclass
class OddStore:
    stores: Stores
    base_ms: int
    span: TimeRange
    readings: dict[str, int]  # device -> readings counted in its windows
    last: dict[tuple[str, str], float]  # (device, metric) -> last reading of its newest window


@pytest.fixture(scope="module")
def odd() -> Iterator[OddStore]:
    """A unique InfluxDB database written as the pipeline writes it, with device and site ids full of regex
    characters: windows of three devices, and alert transitions (three critical alerts firing, one of them on a log
    rate, and one alert that fired and resolved)."""
    unique = f"fwt{uuid.uuid4().hex[:10]}"
    now_ms = time.time_ns() // 1_000_000
    base_ms = now_ms - now_ms % 10_000 - 300_000
    layout = {
        (NORTH, ODD_DEVICE): ["humidity", "temperature"],
        (SOUTH, NUMBER_LIKE_DEVICE): ["temperature"],
        (SOUTH, "dev00002"): ["humidity", "temperature"],
    }
    lines: list[str] = []
    readings: dict[str, int] = {}
    last: dict[tuple[str, str], float] = {}
    for (site, device), metrics in layout.items():
        for m, metric in enumerate(metrics):
            for w in range(6):
                count, value = 5 + w, 20.0 + m * 10 + w
                readings[device] = readings.get(device, 0) + count
                last[(device, metric)] = value
                lines.append(
                    f"readings_agg,device={device},metric={metric},site={site},window=10s count={count}i,"
                    f"mean={value},min={value - 1},max={value + 1},first={value},last={value},sum={value * count},"
                    f"p50={value},p95={value + 0.5},p99={value + 0.9} {(base_ms + w * 10_000) * 1_000_000}"
                )

    def alert(rule: str, state: str, at_s: int, tags: str) -> str:
        firing = 1 if state == "firing" else 0
        return (
            f"alerts,rule={rule},severity=critical,state={state},{tags} value=45.0,threshold=40.0,firing={firing}i,"
            f'summary="[CRITICAL] {rule} {state}",started_ns={base_ms * 1_000_000}i '
            f"{(base_ms + at_s * 1000) * 1_000_000}"
        )

    odd_tags = f"device={ODD_DEVICE},metric=temperature,site={NORTH}"
    number_tags = f"device={NUMBER_LIKE_DEVICE},metric=temperature,site={SOUTH}"
    lines += [
        alert("hot", "firing", 5, number_tags),
        alert("hot", "resolved", 15, number_tags),
        alert("hot", "pending", 30, odd_tags),
        alert("hot", "firing", 31, odd_tags),
        alert("hot", "firing", 40, f"device=dev00002,metric=temperature,site={SOUTH}"),
        alert("error-burst", "firing", 50, "service=checkout"),
    ]
    try:
        _write_tiered(unique, lines)
        span = TimeRange.between((base_ms - 60_000) * 1_000_000, (now_ms + 5_000) * 1_000_000)
        yield OddStore(
            Stores(INFLUX_URL, unique, ES_URL, unique, influx_auth=influx_credentials()), base_ms, span, readings, last
        )
    finally:
        influxql("", f'DROP DATABASE "{unique}"', "POST")


def _write_tiered(db: str, lines: list[str]) -> int:
    """Write as the pipeline does: each line to its retention tier (the default [retention]), through the sink's
    own writer, which creates the database and its policies. Returns the lines older than their tier keeps."""
    cfg = InfluxDBConfig(url=INFLUX_URL, database=db, username=INFLUX_USER, password_file=INFLUX_PASSWORD_FILE)
    rejected: list[object] = []
    writer = InfluxWriterThread(cfg, V1Writer(cfg, TierPlan.from_config(Config())), rejected.extend)
    writer.put(lines)
    assert writer.flush(30)
    writer.close()
    assert rejected == []
    return writer.beyond_retention


def _run(odd: OddStore, uid: str, span: TimeRange | None = None, **variables: str | list[str]) -> DashboardResult:
    dashboard = next(d for d in load_dashboards() if d["uid"] == uid)
    result = run_dashboard(dashboard, odd.stores, span or odd.span, variables=variables or None)
    problems = [f"{p.title}: {p.errors}" for p in result.panels if p.errors]
    problems += [f"{a.name}: {a.error}" for a in result.annotations if a.error]
    assert problems == []
    return result


def _stat(result: DashboardResult, title: str) -> list[tuple[str, float | None, str]]:
    return [(v.name, v.value, v.text) for v in next(p for p in result.panels if p.title == title).stat()]


@pytest.mark.parametrize("device", [ODD_DEVICE, NUMBER_LIKE_DEVICE])
def test_the_device_dashboard_shows_a_device_whatever_its_id(odd: OddStore, device: str) -> None:
    result = _run(odd, "fleetwatch-device", device=device)
    metrics = sorted(m for d, m in odd.last if d == device)
    # The $metric variable's query has $device in it, substituted unescaped as Grafana does in variable queries.
    assert result.variables["metric"].options == metrics, result.variable_queries["metric"]
    assert _stat(result, "Readings aggregated")[0][1] == odd.readings[device]
    assert {name: value for name, value, _ in _stat(result, "Latest reading")} == {
        m: odd.last[(device, m)] for m in metrics
    }
    spreads = [p for p in result.panels if p.title.endswith(": mean with min-max band")]
    assert [p.title for p in spreads] == [f"{m}: mean with min-max band" for m in metrics]
    for panel in spreads:
        assert {s.name for s in panel.series if s.non_null()} == {"mean", "min", "max"}, panel.queries[0].text
    (annotation,) = [a for a in result.annotations if a.name == "Alerts on this device"]
    assert len(annotation.events) == 2 and _stat(result, "Alert transitions")[0][1] == 2


def test_the_fleet_shows_every_device_and_counts_firing_alerts_with_or_without_a_site(odd: OddStore) -> None:
    fleet = _run(odd, "fleetwatch-fleet")
    assert fleet.variables["site"].options == [NORTH, SOUTH]
    assert fleet.variables["device"].options == sorted(odd.readings)
    assert _stat(fleet, "Devices reporting")[0][1] == 3
    latest = next(p for p in fleet.panels if p.title == "Latest values")
    columns, rows = latest.table()
    assert {(r[columns.index("device")], r[columns.index("metric")]) for r in rows} == set(odd.last)
    temperature = next(p for p in fleet.panels if p.title == "temperature: 10 s window means")
    assert {s.name for s in temperature.series} == set(odd.readings)
    # Three critical alerts fire: two on readings, one on a log rate (no site, no device).
    assert _stat(fleet, "Alerts firing")[0][1:] == (3, "3")
    alerts = _run(odd, "fleetwatch-alerts")
    active = next(p for p in alerts.panels if p.title == "Active alerts")
    columns, rows = active.table()
    assert sorted(
        (r[columns.index("rule")], r[columns.index("device")] or r[columns.index("service")]) for r in rows
    ) == [
        ("error-burst", "checkout"),
        ("hot", ODD_DEVICE),
        ("hot", "dev00002"),
    ]
    assert _stat(alerts, "Firing now")[0][1] == 3
    # A site selected: its alerts, and the one without a site.
    south = _run(odd, "fleetwatch-fleet", site=[SOUTH])
    assert south.variables["device"].options == [NUMBER_LIKE_DEVICE, "dev00002"]
    assert _stat(south, "Alerts firing")[0][1] == 2
    (annotation,) = [a for a in south.annotations if a.name == "Alerts firing"]
    assert sorted(e.tags[0] for e in annotation.events) == ["error-burst", "hot", "hot"]


def test_no_firing_alert_shows_0(odd: OddStore) -> None:
    base_ns = odd.base_ms * 1_000_000
    # Nothing at all in the range: the query returns no rows, the panel says 0 (not "No data").
    before = TimeRange.between(base_ns - 3_600_000_000_000, base_ns - 1_800_000_000_000)
    assert _stat(_run(odd, "fleetwatch-fleet", before), "Alerts firing") == [("", None, "0")]
    # An alert that fired and resolved in the range: the query returns 0.
    resolved = TimeRange.between(base_ns, base_ns + 20_000_000_000)
    assert [v[1:] for v in _stat(_run(odd, "fleetwatch-fleet", resolved), "Alerts firing")] == [(0, "0")]


def _agg_line(window: str, device: str, value: float, at_ns: int) -> str:
    return (
        f"readings_agg,device={device},metric=temperature,site=north,window={window} count=6i,mean={value},"
        f"min={value},max={value},first={value},last={value},sum={value * 6},p50={value},p95={value},p99={value} "
        f"{at_ns}"
    )


def test_panels_read_the_tier_that_keeps_the_range(unique: str) -> None:
    """Aggregates of today and of 40 days ago, in both tiers as the pipeline writes them: the 10 s aggregates of
    40 days ago are past what their tier keeps (30 d) and are not stored. The last hour reads the 10 s tier,
    the last 90 days the 1 min tier (today's points and those of 40 days ago), and an hour 40 days ago the 1 min
    tier too, although its interval is the 10 s tier's."""
    now_ns = time.time_ns() // 60_000_000_000 * 60_000_000_000
    old_ns = now_ns - 40 * 86_400 * 1_000_000_000
    lines = []
    for base, value in ((now_ns - 30 * 60_000_000_000, 21.0), (old_ns, 5.0)):
        # 10 s windows read 21.5 today (5.5 then); 1 min windows 21.0 (5.0): each tier has its own values.
        lines += [_agg_line("10s", "dev1", value + 0.5, base + i * 10_000_000_000) for i in range(60)]
        lines += [_agg_line("1m", "dev1", value, base + i * 60_000_000_000) for i in range(10)]
    try:
        assert _write_tiered(unique, lines) == 60  # the old 10 s aggregates
        stores = Stores(INFLUX_URL, unique, ES_URL, unique, influx_auth=influx_credentials())
        fleet = next(d for d in load_dashboards() if d["uid"] == "fleetwatch-fleet")

        def means(span: TimeRange) -> tuple[set[float], int]:
            result = run_dashboard(fleet, stores, span)
            assert [p.errors for p in result.panels if p.errors] == []
            panel = next(p for p in result.panels if p.title == "temperature: 10 s window means")
            values = {v for s in panel.series for _, v in s.non_null()}
            readings = next(p for p in result.panels if p.title == "Readings aggregated").stat()
            return values, int(sum(v.value or 0 for v in readings))

        # Last hour: interval below a minute, the 10 s tier (60 windows of 6 readings).
        assert means(TimeRange.last("1h")) == ({21.5}, 360)
        # Last 90 days: a long interval, the 1 min tier, now and 40 days ago.
        assert means(TimeRange.last("90d")) == ({21.0, 5.0}, 120)
        # One hour 40 days ago: the 10 s tier no longer has it, the 1 min tier does.
        old = TimeRange.between(old_ns - 10 * 60_000_000_000, old_ns + 50 * 60_000_000_000)
        assert means(old) == ({5.0}, 60)
    finally:
        influxql("", f'DROP DATABASE "{unique}"', "POST")


def test_the_fleet_filters_by_the_device_inventorys_tags(run: Run) -> None:
    """$model and $owner narrow every panel to the devices the inventory gives those tags; All also keeps the
    devices the inventory does not list."""
    fleet = next(d for d in load_dashboards() if d["uid"] == "fleetwatch-fleet")

    def devices(**variables: str) -> tuple[list[str], float | None]:
        result = run_dashboard(fleet, run.stores, run.time_range, variables=variables or None)
        reporting = next(p for p in result.panels if p.title == "Devices reporting").stat()[0].value
        return result.variables["device"].options, reporting

    assert devices() == ([f"dev{i:05d}" for i in range(6)], 6)
    th2 = sorted(d for d, (model, _) in INVENTORY.items() if model == "TH-2")
    assert devices(model="TH-2") == (th2, len(th2))
    lab_th3 = sorted(d for d, (model, owner) in INVENTORY.items() if model == "TH-3" and owner == "lab")
    assert devices(model="TH-3", owner="lab") == (lab_th3, len(lab_th3))
