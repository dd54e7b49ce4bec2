"""`make soak`: fleetwatch under steady load for a long time, readings and logs together. Memory must level
off and no queue may grow.

Readings at QoS 1 from the load generator (bench/publisher.c), JSON log lines appended to a file (renamed
away and started again every few minutes, as logrotate does), both through one `fleetwatch run` into the
local InfluxDB and Elasticsearch. Every 10 s the pipeline's resident memory and its status file (messages in,
log events, the sinks' queue depths) are sampled. After the warm-up (the first sixth of the run, at least
2 minutes), the result holds:

- the slope of resident memory, by least squares, in MB per minute (the bound: 1 MB per minute);
- the sinks' queue depths in the first and the last third of the measured part (a queue that grows is a
  sink that falls behind);
- whether every reading and every log line came in.

A queue counts as steady when its deepest point in the last third is at most twice that of the first third
plus one flush's worth. Environment: SOAK_MINUTES (30), SOAK_RATE (readings/s, 5,000), SOAK_SERIES (1,000),
SOAK_LOG_RATE (lines/s, 1,000), SOAK_ROTATE_MINUTES (5). Results go to bench/results/soak-<time>.json;
RELIABILITY.md records them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.installed import fleetwatch_command
from bench.run import PUBLISHER, REPO, RESULTS, build_publisher, influxql
from bench.stack_credentials import INFLUX_AUTH_TOML

MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
RATE = int(os.environ.get("SOAK_RATE", "5000"))
SERIES = int(os.environ.get("SOAK_SERIES", "1000"))
LOG_RATE = int(os.environ.get("SOAK_LOG_RATE", "1000"))
ROTATE_MINUTES = float(os.environ.get("SOAK_ROTATE_MINUTES", "5"))
SAMPLE_S = 10.0
MAX_MB_PER_MINUTE = 1.0
# Queue depths move with each flush (a batch is up to 5,000 points or documents): this much is not growth.
QUEUE_SLACK = 5_000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60 if var else 0.0


def write_logs(directory: Path, stop: threading.Event, written: list[int]) -> None:
    """LOG_RATE JSON lines a second into app.log, renamed to app.log.N every ROTATE_MINUTES."""
    path = directory / "app.log"
    out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - reopened at every rotation
    begin = last_rotation = time.monotonic()
    rotations = 0
    while not stop.is_set():
        now = time.monotonic()
        due = int((now - begin) * LOG_RATE) - written[0]
        for _ in range(due):
            i = written[0]
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
            out.write(json.dumps({"timestamp": ts, "level": "info", "message": f"request {i} served", "n": i}) + "\n")
            written[0] += 1
        out.flush()
        if now - last_rotation >= ROTATE_MINUTES * 60:
            out.close()
            rotations += 1
            path.rename(directory / f"app.log.{rotations}")
            out = open(path, "a", encoding="utf-8")  # noqa: SIM115
            last_rotation = now
        time.sleep(0.05)
    out.close()


def main() -> None:
    build_publisher()
    unique = f"soak{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="fwsoak"))
    logs = tmp / "logs"
    logs.mkdir()
    influxql("", f'CREATE DATABASE "{unique}"')
    config = tmp / "soak.toml"
    config.write_text(f"""
[mqtt]
client_id = "{unique}"
shared_group = "{unique}"
[[mqtt.subscriptions]]
topic = "{unique}/+/+/+"
qos = 1
template = "{unique}/{{site}}/{{device}}/{{metric}}"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"
[windows]
tumbling = ["10s", "1m"]
allowed_lateness = "2s"
max_age = "0s"
[recovery]
dir = "{tmp / "recovery"}"
[influxdb]
database = "{unique}"
{INFLUX_AUTH_TOML}
[elasticsearch]
index_prefix = "{unique}"
[[logs.files]]
name = "app"
paths = ["{logs}/app.log*"]
read_from = "start"
parser = {{ kind = "json", timestamp_field = "timestamp", level_field = "level", message_field = "message" }}
service = "soak"
[dead_letters]
path = "{tmp / "dead.jsonl"}"
""")
    status = tmp / "status.json"
    pipeline = subprocess.Popen(
        fleetwatch_command("run", "-c", str(config), "--status-file", str(status)),
        cwd=REPO,
        stderr=open(tmp / "pipeline.log", "w"),  # noqa: SIM115 - lives as long as the process
    )
    while not (status.exists() and json.loads(status.read_text()).get("ready")):
        if pipeline.poll() is not None:
            raise RuntimeError(f"fleetwatch did not start; see {tmp / 'pipeline.log'}")
        time.sleep(0.2)
    seconds = MINUTES * 60
    stop = threading.Event()
    lines_written = [0]
    writer = threading.Thread(target=write_logs, args=(logs, stop, lines_written), daemon=True)
    writer.start()
    load = subprocess.Popen(
        [str(PUBLISHER), "127.0.0.1", "1883", "1", str(RATE), str(seconds), str(SERIES), unique, "0"],
        stdout=subprocess.DEVNULL,
    )
    begin = time.monotonic()
    samples: list[dict] = []
    while load.poll() is None:
        time.sleep(SAMPLE_S)
        if pipeline.poll() is not None:
            raise RuntimeError(f"fleetwatch exited during the soak; see {tmp / 'pipeline.log'}")
        counters = json.loads(status.read_text())
        samples.append(
            {
                "t": round(time.monotonic() - begin, 1),
                "rss_mb": round(rss_mb(pipeline.pid), 1),
                "messages_in": counters.get("messages_in", 0),
                "log_events": counters.get("log_events", 0),
                "sink_queue_depth": counters.get("sink_queue_depth", 0),
                "es_queue_depth": counters.get("es_queue_depth", 0),
            }
        )
        print(json.dumps(samples[-1]), flush=True)
    stop.set()
    writer.join()
    published = int(RATE * seconds)
    deadline = time.monotonic() + 60
    counters = {}
    while time.monotonic() < deadline:
        counters = json.loads(status.read_text())
        if counters.get("messages_in", 0) >= published and counters.get("log_events", 0) >= lines_written[0]:
            break
        time.sleep(0.5)
    pipeline.send_signal(signal.SIGINT)
    pipeline.wait(120)

    warm_up = max(120.0, seconds / 6)
    measured = [s for s in samples if s["t"] >= warm_up]
    third = max(1, len(measured) // 3)
    result = {
        "minutes": MINUTES,
        "readings_per_s": RATE,
        "series": SERIES,
        "log_lines_per_s": LOG_RATE,
        "rotate_minutes": ROTATE_MINUTES,
        "warm_up_s": warm_up,
        "rss_mb_first": measured[0]["rss_mb"] if measured else None,
        "rss_mb_last": measured[-1]["rss_mb"] if measured else None,
        "rss_slope_mb_per_min": round(slope_per_minute([(s["t"], s["rss_mb"]) for s in measured]), 3)
        if len(measured) > 2
        else None,
        "sink_queue_max_first_third": max((s["sink_queue_depth"] for s in measured[:third]), default=0),
        "sink_queue_max_last_third": max((s["sink_queue_depth"] for s in measured[-third:]), default=0),
        "es_queue_max_first_third": max((s["es_queue_depth"] for s in measured[:third]), default=0),
        "es_queue_max_last_third": max((s["es_queue_depth"] for s in measured[-third:]), default=0),
        "readings_published": published,
        "readings_in": counters.get("messages_in", 0),
        "log_lines_written": lines_written[0],
        "log_events_in": counters.get("log_events", 0),
        "samples": samples,
    }
    slope = result["rss_slope_mb_per_min"]
    result["memory_levels_off"] = slope is not None and slope <= MAX_MB_PER_MINUTE
    result["everything_in"] = result["readings_in"] >= published and result["log_events_in"] >= lines_written[0]
    # A queue grows when a sink falls behind: its depth late in the run far above its depth early on.
    result["queues_steady"] = all(
        result[f"{q}_max_last_third"] <= 2 * result[f"{q}_max_first_third"] + QUEUE_SLACK
        for q in ("sink_queue", "es_queue")
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"soak-{int(time.time())}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}), flush=True)
    print(f"results: {out}")
    influxql("", f'DROP DATABASE "{unique}"')
    if not (result["memory_levels_off"] and result["everything_in"] and result["queues_steady"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
