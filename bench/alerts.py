"""`make bench`, alerts part: latency from a triggering reading's publish to its notification (MQTT alert
received by a subscriber, webhook received by a local HTTP server), p50 and p99, while bench/publisher.c
keeps 10,000 msg/s of background readings flowing through the same pipeline.

A probe publishes one reading every 0.5 s on its own series, alternating above and below a threshold rule on
raw readings, so every probe reading is a transition (firing, then resolved). Each notification carries the
probe's event time, which identifies the probe it answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.installed import fleetwatch_command
from bench.logs import es as eslib
from bench.run import PUBLISHER, REPO, RESULTS, Peer, _warm_up, build_publisher, fleet_rules_toml, influxql
from bench.stack_credentials import INFLUX_AUTH_TOML

BACKGROUND_RATE = int(os.environ.get("BENCH_ALERT_LOAD", "10000"))
PROBES = int(os.environ.get("BENCH_ALERT_PROBES", "60"))
# The background's series (one per device), and whether rules watch every one of them: at fleet scale one rule
# on every reading and one on every 10 s window (thresholds never crossed), beside the probe's rule, with the
# fleet's windows (10 s and 1 min, quantiles on).
SERIES = int(os.environ.get("BENCH_ALERT_SERIES", "1000"))
FLEET_RULES = os.environ.get("BENCH_ALERT_FLEET_RULES", "0") != "0"
# BENCH_ALERT_WARM_UP=1: one reading per series first, until their aggregates are in InfluxDB, so that the
# probes measure a pipeline and a store that already hold every series (steady operation), as the
# fleet-scale rungs of bench/run.py do.
WARM_UP = os.environ.get("BENCH_ALERT_WARM_UP", "0") != "0"
# BENCH_ALERT_EPOCH_INTERVAL (e.g. "250ms"): the flow's epoch_interval, to see how the epoch shapes the latency.
EPOCH_INTERVAL = os.environ.get("BENCH_ALERT_EPOCH_INTERVAL", "")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    build_publisher()
    unique = f"bencha{uuid.uuid4().hex[:8]}"
    try:
        measure(unique)
    finally:
        remove_run_data(unique)


def remove_run_data(unique: str) -> None:
    """The run's InfluxDB database and Elasticsearch indices and templates. Left behind, each fleet-scale run
    kept its 100,000+ series in InfluxDB 1.x's in-memory index: after a dozen runs the server held 10 GB on the
    machine every later benchmark shares."""
    influxql("", f'DROP DATABASE "{unique}"')
    eslib.delete_pipeline_data(eslib.client(), unique)


def measure(unique: str) -> None:
    received_webhook: dict[int, float] = {}
    received_mqtt: dict[int, float] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received_webhook[round(body["value"])] = time.monotonic()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def on_alert(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if msg.payload and not msg.retain:
            received_mqtt[round(json.loads(msg.payload)["value"])] = time.monotonic()

    listener = paho.Client(CallbackAPIVersion.VERSION2)
    listener.on_message = on_alert
    listener.connect("127.0.0.1", 1883)
    listener.subscribe(f"{unique}-alerts/#", qos=1)
    listener.loop_start()

    windows = ["10s", "1m"] if FLEET_RULES else ["10s"]
    flow_toml = f'[flow]\nepoch_interval = "{EPOCH_INTERVAL}"' if EPOCH_INTERVAL else ""
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(f"""
[mqtt]
client_id = "{unique}"
shared_group = "{unique}"
[[mqtt.subscriptions]]
topic = "{unique}/+/+/+"
qos = 0
template = "{unique}/{{site}}/{{device}}/+"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"
[windows]
tumbling = {json.dumps(windows)}
allowed_lateness = "2s"
{flow_toml}
[recovery]
dir = "{Path(tmp) / "recovery"}"
[retention]
# As the references (Telegraf) write: everything in the database's default policy.
enabled = false

[influxdb]
database = "{unique}"
{INFLUX_AUTH_TOML}
[elasticsearch]
index_prefix = "{unique}"
[alerts]
mqtt_topic_prefix = "{unique}-alerts"
journal = "{Path(tmp) / "journal.jsonl"}"
[[alerts.webhooks]]
url = "http://127.0.0.1:{server.server_address[1]}/hook"
[[alerts.rules]]
name = "probe"
target = "reading"
metric = "trigger"
condition = ">"
warning = 0.5
{fleet_rules_toml("v") if FLEET_RULES else ""}""")
        status = Path(tmp) / "status.json"
        pipeline = subprocess.Popen(
            fleetwatch_command("run", "-c", str(config), "--status-file", str(status)),
            cwd=REPO,
            stderr=open(Path(tmp) / "pipeline.log", "w"),  # noqa: SIM115 - lives as long as the process
        )
        time.sleep(5)
        warmed_up = _warm_up(0, unique, SERIES, status, Peer(), windows) if WARM_UP else 0
        seconds = PROBES * 0.5 + 5
        load = subprocess.Popen(
            [str(PUBLISHER), "127.0.0.1", "1883", "0", str(BACKGROUND_RATE), str(seconds), str(SERIES), unique, "0"],
            stdout=subprocess.DEVNULL,
        )
        probe = paho.Client(CallbackAPIVersion.VERSION2)
        probe.connect("127.0.0.1", 1883)
        probe.loop_start()
        time.sleep(2)
        sent: dict[int, float] = {}
        sent_wall: dict[int, float] = {}
        for i in range(1, PROBES + 1):
            # Odd probes are above the threshold (firing), even ones below (resolved); the value names the probe.
            value = i if i % 2 else -i
            payload = json.dumps({"ts": time.time_ns() // 1_000_000, "trigger": value})
            sent[value] = time.monotonic()
            sent_wall[value] = time.time()
            probe.publish(f"{unique}/probe/p1/x", payload, qos=1)
            time.sleep(0.5)
        load.wait()
        load_ended = time.monotonic()
        # Sustained: everything published is in within 2 s of the load's end.
        expected = warmed_up + int(BACKGROUND_RATE * seconds) + PROBES
        while time.monotonic() - load_ended < 10:
            received = json.loads(status.read_text()).get("messages_in", 0) if status.exists() else 0
            if received >= expected:
                break
            time.sleep(0.05)
        caught_up_s = time.monotonic() - load_ended
        time.sleep(3)
        pipeline.send_signal(signal.SIGINT)
        pipeline.wait(60)
        probe.loop_stop()
        listener.loop_stop()
        server.shutdown()

    # (when each notified probe was sent, its latency): percentiles over the latencies, and the slow ones by time
    mqtt_by_sent = sorted((t, (received_mqtt[v] - t) * 1000, v) for v, t in sent.items() if v in received_mqtt)
    mqtt_ms = [ms for _, ms, _ in mqtt_by_sent]
    first_sent = min(sent.values(), default=0.0)
    hook_ms = [(received_webhook[v] - t) * 1000 for v, t in sent.items() if v in received_webhook]
    result = {
        "background_msg_s": BACKGROUND_RATE,
        "series": SERIES,
        "fleet_rules": FLEET_RULES,
        "warm_up": WARM_UP,
        "received": received,
        "expected": expected,
        "caught_up_after_load_s": round(caught_up_s, 2),
        "sustained": received >= expected and caught_up_s <= 2.0,
        "probes": len(sent),
        "mqtt_received": len(mqtt_ms),
        "webhook_received": len(hook_ms),
        "mqtt_p50_ms": round(percentile(mqtt_ms, 0.5), 1) if mqtt_ms else None,
        "mqtt_p99_ms": round(percentile(mqtt_ms, 0.99), 1) if mqtt_ms else None,
        "webhook_p50_ms": round(percentile(hook_ms, 0.5), 1) if hook_ms else None,
        "webhook_p99_ms": round(percentile(hook_ms, 0.99), 1) if hook_ms else None,
        # The slow ones, by when they were sent (seconds after the first probe): bursts show as clusters.
        "mqtt_over_500ms": [[round(t - first_sent, 1), round(ms)] for t, ms, _ in mqtt_by_sent if ms > 500],
        # The same, by the wall clock's second of the minute: where they fall against the window boundaries
        # (every 10 s; the 1 min windows end at 0).
        "mqtt_over_500ms_second_of_minute": [round(sent_wall[v] % 60, 1) for _, ms, v in mqtt_by_sent if ms > 500],
    }
    print(json.dumps(result), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"alerts-{int(time.time())}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
