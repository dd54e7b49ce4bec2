"""Sparkplug B drain rate: how fast `fleetwatch run` reads a broker backlog of Sparkplug NDATA, next to the same
readings as flat JSON, through the same broker, windows (10 s + 1 min, quantiles) and InfluxDB.

    python -m bench.sparkplug          # BENCH_SPB_MESSAGES (default 50,000) messages of 10 metrics each

For each format: the pipeline starts, the edge nodes' births go through (Sparkplug only), the pipeline stops, a
backlog is published at QoS 1 into its persistent session, the pipeline starts again. The figure is the time from
that start to the last reading counted, less the start-up time with nothing queued (measured at the first start).
The backlog takes the publisher out of the measurement. The result lines are printed and land in
bench/results/sparkplug-*.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.installed import fleetwatch_command
from bench.run import RESULTS, _status, influxql
from bench.stack_credentials import INFLUX_AUTH_TOML
from collectors.mqtt.sparkplug import sparkplug_payload_pb2 as pb

MESSAGES = int(os.environ.get("BENCH_SPB_MESSAGES", "50000"))
NODES = 100
METRICS = 10
DOUBLE = 10


def config(tmp: Path, unique: str, fmt: str) -> Path:
    if fmt == "sparkplug_b":
        sub = f'topic = "spBv1.0/{unique}/#"\nformat = "sparkplug_b"'
    else:
        # The same event times as the Sparkplug payloads carry (milliseconds), so both meet the windows alike.
        sub = (
            f'topic = "{unique}/+"\ntemplate = "{unique}/{{node}}"\nformat = "json"\n'
            'timestamp_field = "ts"\ntimestamp_unit = "ms"'
        )
    path = tmp / f"{fmt}.toml"
    path.write_text(f"""
[mqtt]
client_id = "{unique}"
shared_group = "{unique}"
[[mqtt.subscriptions]]
{sub}
qos = 1
[recovery]
dir = "{tmp / "recovery"}"
[influxdb]
database = "{unique}"
{INFLUX_AUTH_TOML}
[elasticsearch]
enabled = false
[dead_letters]
path = "{tmp / "dead.jsonl"}"
""")
    return path


def sparkplug_payload(seq: int, value: float, birth: bool) -> bytes:
    """A birth names each metric and its datatype; data (NDATA) sends aliases and values only."""
    message = pb.Payload(timestamp=time.time_ns() // 1_000_000, seq=seq % 256)
    for i in range(METRICS):
        metric = message.metrics.add(alias=i, double_value=value + i)
        if birth:
            metric.name, metric.datatype = f"m{i}", DOUBLE
    return message.SerializeToString()


def start(path: Path, status: Path) -> tuple[subprocess.Popen[bytes], float]:
    """The process, once its subscription is acknowledged, and the seconds that took."""
    started = time.monotonic()
    proc = subprocess.Popen(
        fleetwatch_command("run", "-c", str(path), "--status-file", str(status)),
        stderr=open(path.parent / "pipeline.log", "a"),  # noqa: SIM115
        cwd=path.parent,
    )
    while _status(status).get("ready") is not True:
        assert proc.poll() is None, (path.parent / "pipeline.log").read_text()[-3000:]
        time.sleep(0.02)
    return proc, time.monotonic() - started


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(90) == 0


def publish(messages: list[tuple[str, bytes]]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    for start in range(0, len(messages), 5000):  # in chunks: paho refuses to queue without end
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages[start : start + 5000]]
        for info in infos:
            info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def run(fmt: str) -> dict[str, object]:
    unique = f"benchspb{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        path = config(tmp, unique, fmt)
        # Start-up (imports, Bytewax, connection, subscription) with nothing queued: taken off the drain time.
        proc, startup = start(path, tmp / "status-1.json")
        if fmt == "sparkplug_b":
            births = []
            for node in range(NODES):
                births.append((f"spBv1.0/{unique}/NBIRTH/n{node}", sparkplug_payload(0, 0.0, birth=True)))
            publish(births)
            while _status(tmp / "status-1.json").get("readings", 0) < NODES * METRICS:
                time.sleep(0.05)
            time.sleep(1.5)  # the births in a committed snapshot
        stop(proc)
        backlog = []
        for k in range(MESSAGES):
            node, seq = k % NODES, 1 + k // NODES
            if fmt == "sparkplug_b":
                backlog.append((f"spBv1.0/{unique}/NDATA/n{node}", sparkplug_payload(seq, float(k), birth=False)))
            else:
                doc: dict[str, float | int] = {f"m{i}": float(k) + i for i in range(METRICS)}
                doc["ts"] = time.time_ns() // 1_000_000
                backlog.append((f"{unique}/n{node}", json.dumps(doc).encode()))
        publish(backlog)
        status = tmp / "status-2.json"
        started = time.monotonic()
        proc, _ = start(path, status)
        want = MESSAGES * METRICS
        while _status(status).get("readings", 0) < want:
            assert time.monotonic() - started < 600, _status(status)
            time.sleep(0.02)
        seconds = time.monotonic() - started - startup
        counters = _status(status)
        stop(proc)
        influxql("", f'DROP DATABASE "{unique}"')
    return {
        "format": fmt,
        "messages": MESSAGES,
        "readings": want,
        "startup_seconds": round(startup, 2),
        "seconds": round(seconds, 2),
        "messages_per_s": round(MESSAGES / seconds),
        "readings_per_s": round(want / seconds),
        "dead_letters": counters.get("dead_letters", 0),
        "sparkplug_seq_gaps": counters.get("sparkplug_seq_gaps", 0),
    }


def main() -> None:
    rows = [run("sparkplug_b"), run("json")]
    for row in rows:
        print(json.dumps(row))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"sparkplug-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
