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
from rich.table import Table

from fleetwatch.config import Config
from fleetwatch.simulator import SimulatorStats, run_simulator
from flows.windows import duration_label


def influxql(cfg: Config, query: str) -> list[dict[str, Any]]:
    """Run an InfluxQL query against the configured (v1) InfluxDB; series of the first statement."""
    http = urllib3.PoolManager()
    resp = http.request("GET", f"{cfg.influxdb.url}/query", fields={"db": cfg.influxdb.database, "q": query})
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
    elapsed: float, duration: float, sim: SimulatorStats, status: dict[str, Any], aggregated: float
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
    return table


def run_demo(config_path: Path, cfg: Config, duration: float, console: Console) -> int:
    started_ns = time.time_ns()
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

    sim_thread = threading.Thread(target=simulate_into_stats, daemon=True)
    time.sleep(2.0)  # the pipeline subscribes before the first reading is published
    sim_thread.start()
    start = time.monotonic()
    window_filter = f"\"window\"='10s' AND time >= {started_ns - 60_000_000_000}"
    interrupted = False
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while sim_thread.is_alive() and pipeline.poll() is None:
                aggregated = _scalar(cfg, f'SELECT sum("count") FROM "readings_agg" WHERE {window_filter}')
                live.update(
                    _progress_table(
                        time.monotonic() - start, duration, sim_stats, _read_status(status_file), aggregated
                    )
                )
                time.sleep(1.0)
            # Windows close after their end plus the allowed lateness; give the last ones time to land.
            settle = (
                cfg.windows.allowed_lateness.total_seconds() + max(t.total_seconds() for t in cfg.windows.tumbling) + 2
            )
            settle_until = time.monotonic() + min(settle, 20.0)
            while time.monotonic() < settle_until and pipeline.poll() is None:
                aggregated = _scalar(cfg, f'SELECT sum("count") FROM "readings_agg" WHERE {window_filter}')
                live.update(
                    _progress_table(
                        time.monotonic() - start, duration, sim_stats, _read_status(status_file), aggregated
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
        console.print(f"[red]simulator failed:[/red] {sim_error[0]}")
        return 1
    if pipeline.returncode not in (0, -signal.SIGINT, 130) and not interrupted:
        console.print(f"[red]pipeline exited with {pipeline.returncode}[/red]; see .fleetwatch/demo-pipeline.log")
        return 1
    _summary(cfg, console, started_ns, sim_stats, _read_status(status_file), dead_offset)
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


def _summary(
    cfg: Config, console: Console, started_ns: int, sim: SimulatorStats, status: dict[str, Any], dead_offset: int
) -> None:
    since = f"time >= {started_ns - 60_000_000_000}"
    table = Table(title="What landed where", show_header=True)
    table.add_column("store")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("MQTT", "published by the simulator (broken on purpose)", f"{sim.published:,} ({sim.bad:,})")
    table.add_row("pipeline", "messages received", f"{status.get('messages_in', 0):,}")
    db = f"{cfg.influxdb.url} db={cfg.influxdb.database}"
    for length in cfg.windows.tumbling:
        label = duration_label(length)
        points = _scalar(cfg, f'SELECT count("count") FROM "readings_agg" WHERE "window"=\'{label}\' AND {since}')
        readings = _scalar(cfg, f'SELECT sum("count") FROM "readings_agg" WHERE "window"=\'{label}\' AND {since}')
        table.add_row(
            f"InfluxDB {db}",
            f"readings_agg window={label}: points (readings in them; open windows not yet written)",
            f"{points:,.0f} ({readings:,.0f})",
        )
    late = _scalar(cfg, f'SELECT count("value") FROM "readings_late" WHERE {since}')
    table.add_row(f"InfluxDB {db}", "readings_late (late readings, raw)", f"{late:,.0f}")
    health_points = _scalar(cfg, f'SELECT count("messages_in") FROM "fleetwatch_health" WHERE {since}')
    table.add_row(f"InfluxDB {db}", "fleetwatch_health points", f"{health_points:,.0f}")
    reasons = _dead_letter_reasons(cfg.dead_letters.path, dead_offset)
    table.add_row(
        f"dead letters {cfg.dead_letters.path}",
        ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "-",
        f"{sum(reasons.values()):,}",
    )
    table.add_row("alerts", "threshold alerting is not built yet", "0")
    console.print(table)
