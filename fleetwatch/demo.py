"""``fleetwatch demo``: the simulator and the pipeline together, live progress, then what landed where."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import urllib3
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from fleetwatch.config import Config
from fleetwatch.labels import duration_label
from fleetwatch.retention import plan_or_none, qualified
from fleetwatch.simulator import LogSimulatorStats, SimulatorStats, run_log_simulator, run_simulator


def es_request(cfg: Config, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request to the configured Elasticsearch; {} when it fails (the summary shows zeros then)."""
    from flows.sinks.elasticsearch import make_client

    try:
        with make_client(cfg.elasticsearch) as es:
            resp = es.perform_request(
                method, path, body=body, headers={"accept": "application/json", "content-type": "application/json"}
            )
            return dict(resp.body)
    except Exception:
        return {}


def _es_count(cfg: Config, kind: str, since_ms: int) -> int:
    index = f"{cfg.elasticsearch.index_prefix}-{kind}*"
    body = {"query": {"range": {"@timestamp": {"gte": since_ms, "format": "epoch_millis"}}}}
    return int(
        es_request(cfg, "POST", f"/{index}/_count?ignore_unavailable=true&allow_no_indices=true", body).get("count", 0)
    )


def influxql(cfg: Config, query: str) -> list[dict[str, Any]]:
    """Run an InfluxQL query against the configured (v1) InfluxDB; series of the first statement."""
    http = urllib3.PoolManager()
    credentials = cfg.influxdb.v1_credentials()
    headers = urllib3.make_headers(basic_auth=":".join(credentials)) if credentials else {}
    resp = http.request(
        "GET", f"{cfg.influxdb.url}/query", fields={"db": cfg.influxdb.database, "q": query}, headers=headers
    )
    if resp.status != 200:
        raise RuntimeError(f"InfluxDB answered {resp.status}: {resp.data[:200].decode('utf-8', 'replace')}")
    result = json.loads(resp.data)["results"][0]
    if "error" in result:
        raise RuntimeError(result["error"])
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def _scalar(cfg: Config, query: str) -> float:
    try:
        series = influxql(cfg, query)
    except Exception:
        return 0.0
    return float(series[0]["values"][0][1] or 0) if series else 0.0


def _read_status(path: Path) -> dict[str, Any]:
    try:
        status: dict[str, Any] = json.loads(path.read_text())
        return status
    except (OSError, ValueError):
        return {}


def _progress_table(
    elapsed: float,
    duration: float,
    sim: SimulatorStats,
    logs: LogSimulatorStats,
    status: dict[str, Any],
    aggregated: float,
) -> Table:
    table = Table(title=f"fleetwatch demo: {elapsed:4.0f}s / {duration:.0f}s", show_header=True)
    table.add_column("stage")
    table.add_column("count", justify="right")
    table.add_row("published by the simulator", f"{sim.published:,}")
    table.add_row("  of which deliberately broken", f"{sim.bad:,}")
    table.add_row("received by the pipeline", f"{status.get('messages_in', 0):,}")
    table.add_row("readings parsed", f"{status.get('readings', 0):,}")
    table.add_row("dead letters", f"{status.get('dead_letters', 0):,}")
    table.add_row("windows closed", f"{status.get('windows_closed', 0):,}")
    table.add_row("points written to InfluxDB", f"{status.get('points_written', 0):,}")
    table.add_row("readings in 10s aggregates (InfluxDB)", f"{aggregated:,.0f}")
    table.add_row("sink queue depth", f"{status.get('sink_queue_depth', 0):,}")
    table.add_row("log lines written (syslog messages sent)", f"{logs.lines:,} ({logs.syslog:,})")
    table.add_row(
        "log events parsed (parse failures)",
        f"{status.get('log_events', 0):,} ({status.get('log_parse_failures', 0):,})",
    )
    table.add_row("documents indexed in Elasticsearch", f"{status.get('docs_indexed', 0):,}")
    table.add_row("Elasticsearch queue depth", f"{status.get('es_queue_depth', 0):,}")
    return table


def run_demo(config_path: Path, cfg: Config, duration: float, console: Console) -> int:
    started_ns = time.time_ns()
    Path(".fleetwatch").mkdir(exist_ok=True)
    status_file = Path(".fleetwatch/demo-status.json")
    status_file.unlink(missing_ok=True)
    dead_path = cfg.dead_letters.path
    dead_offset = dead_path.stat().st_size if dead_path.exists() else 0
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "run", "--config", str(config_path), "--status-file", str(status_file)],
        stderr=open(".fleetwatch/demo-pipeline.log", "w"),  # noqa: SIM115 - lives as long as the process
    )
    sim_stats = SimulatorStats()
    sim_error: list[BaseException] = []

    def simulate_into_stats() -> None:
        try:
            result = run_simulator(
                cfg.simulator, cfg.mqtt, duration, on_progress=lambda s: sim_stats.__dict__.update(s.__dict__)
            )
            sim_stats.__dict__.update(result.__dict__)
        except BaseException as exc:
            sim_error.append(exc)

    log_stats = LogSimulatorStats()

    def write_logs() -> None:
        try:
            target = None
            if cfg.logs.syslog:
                host, _, port = cfg.logs.syslog[0].listen.rpartition(":")
                target = (host, int(port)) if cfg.logs.syslog[0].protocol == "udp" else None
            run_log_simulator(
                cfg.simulator, target, duration, on_progress=lambda s: log_stats.__dict__.update(s.__dict__)
            )
        except BaseException as exc:
            sim_error.append(exc)

    sim_thread = threading.Thread(target=simulate_into_stats, daemon=True)
    log_thread = threading.Thread(target=write_logs, daemon=True)
    time.sleep(2.0)  # the pipeline subscribes before the first reading is published
    sim_thread.start()
    if cfg.logs.files or cfg.logs.syslog:
        log_thread.start()
    start = time.monotonic()
    window_filter = f"\"window\"='10s' AND time >= {started_ns - 60_000_000_000}"
    agg_10s = qualified(plan_or_none(cfg), "readings_agg", window="10s")
    interrupted = False
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while sim_thread.is_alive() and pipeline.poll() is None:
                aggregated = _scalar(cfg, f'SELECT sum("count") FROM {agg_10s} WHERE {window_filter}')
                live.update(
                    _progress_table(
                        time.monotonic() - start,
                        duration,
                        sim_stats,
                        log_stats,
                        _read_status(status_file),
                        aggregated,
                    )
                )
                time.sleep(1.0)
            # Windows close after their end plus the allowed lateness; give the last ones time to land.
            settle = (
                cfg.windows.allowed_lateness.total_seconds() + max(t.total_seconds() for t in cfg.windows.tumbling) + 2
            )
            settle_until = time.monotonic() + min(settle, 20.0)
            while time.monotonic() < settle_until and pipeline.poll() is None:
                aggregated = _scalar(cfg, f'SELECT sum("count") FROM {agg_10s} WHERE {window_filter}')
                live.update(
                    _progress_table(
                        time.monotonic() - start,
                        duration,
                        sim_stats,
                        log_stats,
                        _read_status(status_file),
                        aggregated,
                    )
                )
                time.sleep(1.0)
    except KeyboardInterrupt:
        interrupted = True
    if pipeline.poll() is None:
        pipeline.send_signal(signal.SIGINT)
        try:
            pipeline.wait(60)
        except subprocess.TimeoutExpired:
            pipeline.kill()
    if sim_error:
        console.print(f"[red]simulator failed:[/red] {escape(str(sim_error[0]))}", highlight=False, soft_wrap=True)
        return 1
    if pipeline.returncode not in (0, -signal.SIGINT, 130) and not interrupted:
        console.print(f"[red]pipeline exited with {pipeline.returncode}[/red]; see .fleetwatch/demo-pipeline.log")
        return 1
    _summary(cfg, console, started_ns, sim_stats, log_stats, _read_status(status_file), dead_offset)
    from fleetwatch.cli import render_dashboard_snapshots

    paths = render_dashboard_snapshots(
        cfg, Path(".fleetwatch/snapshots"), f"{started_ns - 60 * 10**9}..{time.time_ns()}"
    )
    console.print("Dashboard snapshots (the Grafana dashboards' panels, from the same queries):")
    for path in paths:
        console.print(f"  {path}", highlight=False, markup=False, soft_wrap=True)
    return 0


def _dead_letter_reasons(path: Path, offset: int) -> Counter[str]:
    reasons: Counter[str] = Counter()
    if not path.exists():
        return reasons
    with open(path, encoding="utf-8") as fh:
        fh.seek(offset)
        for line in fh:
            reasons[json.loads(line)["reason"]] += 1
    return reasons


def _es_terms(cfg: Config, kind: str, field: str, since_ms: int) -> Counter[str]:
    """Documents of one kind since the demo started, counted by a keyword field."""
    index = f"{cfg.elasticsearch.index_prefix}-{kind}*"
    body = {
        "size": 0,
        "query": {"range": {"@timestamp": {"gte": since_ms, "format": "epoch_millis"}}},
        "aggs": {"terms": {"terms": {"field": field, "size": 50}}},
    }
    es_request(cfg, "POST", f"/{index}/_refresh?ignore_unavailable=true&allow_no_indices=true")
    result = es_request(cfg, "POST", f"/{index}/_search?ignore_unavailable=true&allow_no_indices=true", body)
    buckets = result.get("aggregations", {}).get("terms", {}).get("buckets", [])
    return Counter({b["key"]: int(b["doc_count"]) for b in buckets})


def _summary(
    cfg: Config,
    console: Console,
    started_ns: int,
    sim: SimulatorStats,
    logs: LogSimulatorStats,
    status: dict[str, Any],
    dead_offset: int,
) -> None:
    since = f"time >= {started_ns - 60_000_000_000}"
    plan = plan_or_none(cfg)
    table = Table(title="What landed where", show_header=True)
    table.add_column("store")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("MQTT", "published by the simulator (broken on purpose)", f"{sim.published:,} ({sim.bad:,})")
    table.add_row("pipeline", "messages received", f"{status.get('messages_in', 0):,}")
    db = f"{cfg.influxdb.shown_url} db={cfg.influxdb.database}"
    for length in cfg.windows.tumbling:
        label = duration_label(length)
        agg = qualified(plan, "readings_agg", window=label)
        points = _scalar(cfg, f'SELECT count("count") FROM {agg} WHERE "window"=\'{label}\' AND {since}')
        readings = _scalar(cfg, f'SELECT sum("count") FROM {agg} WHERE "window"=\'{label}\' AND {since}')
        table.add_row(
            f"InfluxDB {db}",
            f"readings_agg window={label}: points (readings in them; open windows not yet written)",
            f"{points:,.0f} ({readings:,.0f})",
        )
    late = _scalar(cfg, f'SELECT count("value") FROM {qualified(plan, "readings_late")} WHERE {since}')
    table.add_row(f"InfluxDB {db}", "readings_late (late readings, raw)", f"{late:,.0f}")
    health = qualified(plan, "fleetwatch_health")
    health_points = _scalar(cfg, f'SELECT count("messages_in") FROM {health} WHERE {since}')
    table.add_row(f"InfluxDB {db}", "fleetwatch_health points", f"{health_points:,.0f}")
    since_ms = started_ns // 1_000_000 - 60_000
    if cfg.logs.files or cfg.logs.syslog:
        rates = _scalar(cfg, f'SELECT count("count") FROM {qualified(plan, "log_rates")} WHERE {since}')
        table.add_row("files / syslog", "log lines written (syslog messages sent)", f"{logs.lines:,} ({logs.syslog:,})")
        table.add_row(f"InfluxDB {db}", "log_rates points (service x window)", f"{rates:,.0f}")
    if cfg.elasticsearch.enabled:
        es = cfg.elasticsearch.shown_hosts
        es_request(cfg, "POST", f"/{cfg.elasticsearch.index_prefix}-*/_refresh?ignore_unavailable=true")
        table.add_row(f"Elasticsearch {es}", "log documents", f"{_es_count(cfg, 'logs', since_ms):,}")
        table.add_row(f"Elasticsearch {es}", "log-rate documents", f"{_es_count(cfg, 'log-rates', since_ms):,}")
        reasons = _es_terms(cfg, "dead-letters", "reason", since_ms)
        where = f"Elasticsearch {cfg.elasticsearch.index_prefix}-dead-letters"
    else:
        reasons = _dead_letter_reasons(cfg.dead_letters.path, dead_offset)
        where = f"dead letters {cfg.dead_letters.path}"
    table.add_row(where, ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "-", f"{sum(reasons.values()):,}")
    if cfg.elasticsearch.enabled:
        states = _es_terms(cfg, "alerts", "state", since_ms)
        rules = _es_terms(cfg, "alerts", "rule", since_ms)
        table.add_row(
            f"Elasticsearch {cfg.elasticsearch.index_prefix}-alerts",
            "alert transitions: "
            + (", ".join(f"{k}={v}" for k, v in sorted(states.items())) or "-")
            + (f" (rules: {', '.join(f'{k}={v}' for k, v in sorted(rules.items()))})" if rules else ""),
            f"{sum(states.values()):,}",
        )
    alerts = _scalar(cfg, f'SELECT count("value") FROM {qualified(plan, "alerts")} WHERE {since}')
    table.add_row(f"InfluxDB {db}", "alerts points", f"{alerts:,.0f}")
    console.print(table)
