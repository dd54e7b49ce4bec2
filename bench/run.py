"""`make bench`: readings throughput against the local stack, with the broker's own limit as reference.

For each QoS: `mosquitto_sub` draining the stream (the broker's limit here), then `fleetwatch run` at rising
publish rates. The load comes from bench/publisher.c (libmosquitto), a separate process. A rate is
*sustained* when the pipeline has received everything within 2 s of the publisher's end (the backlog did
not grow). Loss is readings published against readings counted in the 10 s aggregates in InfluxDB.
Results are appended to bench/results/ and printed as a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import urllib3

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "bench" / "build"
RESULTS = REPO / "bench" / "results"
PUBLISHER = BUILD / "publisher"
http = urllib3.PoolManager()

DEVICES = int(os.environ.get("BENCH_DEVICES", "1000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "15"))
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "10000,20000,30000,40000,60000").split(",")]


def build_publisher() -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    if not Path("/usr/include/mosquitto.h").exists():
        subprocess.run(["apt-get", "install", "-y", "-qq", "libmosquitto-dev"], check=True)
    subprocess.run(["gcc", "-O2", "-o", str(PUBLISHER), str(REPO / "bench" / "publisher.c"), "-lmosquitto"], check=True)


def publish(qos: int, rate: float, seconds: float, prefix: str, event_start_ms: int = 0) -> float:
    out = subprocess.run(
        [
            str(PUBLISHER),
            "127.0.0.1",
            "1883",
            str(qos),
            str(rate),
            str(seconds),
            str(DEVICES),
            prefix,
            str(event_start_ms),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.split("seconds=")[1].split()[0])


def broker_limit(qos: int) -> float:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    n = 400_000
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-t", f"{prefix}/#", "-q", str(qos), "-C", str(n)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    start = time.monotonic()
    publish(qos, 10_000_000, n / 10_000_000, prefix)
    sub.wait(300)
    return n / (time.monotonic() - start)


def influxql(db: str, q: str) -> list:
    resp = http.request(
        "POST" if q.startswith(("CREATE", "DROP")) else "GET", "http://127.0.0.1:8086/query", fields={"db": db, "q": q}
    )
    result = json.loads(resp.data)["results"][0]
    return result.get("series", [])


def run_fleetwatch(qos: int, rate: int, history: bool = False) -> dict:
    unique = f"bench{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="fwbench"))
    influxql("", f'CREATE DATABASE "{unique}"')
    config = tmp / "bench.toml"
    config.write_text(f"""
[mqtt]
client_id = "{unique}"
shared_group = "{unique}"
[[mqtt.subscriptions]]
topic = "{unique}/+/+/+"
qos = {qos}
template = "{unique}/{{site}}/{{device}}/{{metric}}"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"
[windows]
tumbling = ["10s"]
allowed_lateness = "2s"
max_age = "0s"
[recovery]
dir = "{tmp / "recovery"}"
[influxdb]
database = "{unique}"
[dead_letters]
path = "{tmp / "dead.jsonl"}"
""")
    status = tmp / "status.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "run", "-c", str(config), "--status-file", str(status)],
        stderr=open(tmp / "pipeline.log", "w"),  # noqa: SIM115 - lives as long as the process
        cwd=REPO,
    )
    while not status.exists():
        time.sleep(0.1)
    time.sleep(1)
    event_start = 1_767_225_600_000 if history else 0  # 2026-01-01: days in the past
    publish_start = time.monotonic()
    sent_seconds = publish(qos, rate, SECONDS, unique, event_start)
    published = int(rate * SECONDS)
    received_at_end = json.loads(status.read_text()).get("messages_in", 0)
    drained_in = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if json.loads(status.read_text()).get("messages_in", 0) >= published:
            drained_in = time.monotonic() - publish_start - sent_seconds
            break
        time.sleep(0.1)
    # Close the last windows: live ones close on wall time; history needs event time to move on.
    if history:
        publish(qos, 1000, DEVICES / 1000, unique, event_start + 10_000_000)
    counted = 0.0
    settle = time.monotonic() + 30
    while time.monotonic() < settle:
        rows = influxql(
            unique,
            f'SELECT sum("count") FROM "readings_agg" WHERE time < {(event_start + 5_000_000) * 10**6}'
            if history
            else 'SELECT sum("count") FROM "readings_agg"',
        )
        counted = rows[0]["values"][0][1] if rows else 0
        if counted >= published:
            break
        time.sleep(0.5)
    rss_kb = 0
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss_kb = int(line.split()[1])
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    influxql("", f'DROP DATABASE "{unique}"')
    sustained = drained_in is not None and drained_in <= 2.0 and sent_seconds <= SECONDS * 1.05
    return {
        "qos": qos,
        "rate": rate,
        "history": history,
        "published": published,
        "publish_seconds": sent_seconds,
        "received_at_publish_end": received_at_end,
        "drained_after_s": drained_in,
        "sustained": sustained,
        "counted_in_aggregates": counted,
        "lost": published - counted,
        "peak_rss_mb": rss_kb / 1024,
    }


def _memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def main() -> None:
    build_publisher()
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{os.cpu_count()} cores, {platform.machine()}, {_memory_gb():.0f} GiB, "
        f"Python {platform.python_version()}, Linux {platform.release()}"
    )
    rows = []
    for qos in [int(q) for q in os.environ.get("BENCH_QOS", "0,1").split(",")]:
        limit = broker_limit(qos)
        print(f"QoS {qos}: mosquitto_sub drains {limit:,.0f} msg/s", flush=True)
        best = 0
        for rate in RATES:
            result = run_fleetwatch(qos, rate)
            print(json.dumps(result), flush=True)
            rows.append(result)
            if result["sustained"] and result["lost"] == 0:
                best = rate
            else:
                break
        history = run_fleetwatch(qos, best or RATES[0], history=True)
        print(json.dumps(history), flush=True)
        rows.append(history)
        rows.append({"qos": qos, "broker_limit": limit, "best_sustained": best})
    (RESULTS / f"readings-{int(time.time())}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"\nmachine: {machine}")


if __name__ == "__main__":
    main()
