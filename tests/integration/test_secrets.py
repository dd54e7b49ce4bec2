"""Secrets never leave fleetwatch: recognisable MQTT, InfluxDB and Elasticsearch credentials, and a webhook
whose URL path, query and headers carry tokens, set in the config of a real `fleetwatch run`. The run goes
through the paths that log (a webhook answering 503 and retried, a webhook that refuses the connection, a
dead letter, alert transitions), then every output is scanned: the process's log, its status file, the
alert journal, every document under the run's Elasticsearch prefix (dead letters, alert history), every
point of the run's InfluxDB database (health points, alerts), the bodies the webhook received and the alert
notifications on MQTT."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import ES_URL, INFLUX_URL, es_docs, influxql
from tests.integration.harness import Pipeline, free_port, wait_until
from tests.integration.test_alerts_pipeline import Subscriber
from tests.integration.test_readings_pipeline import Publisher

T0_MS = 1_767_225_600_000

SECRETS = {
    "mqtt password": "mqttpw-4b1d7c",
    "influxdb password": "influxpw-9e2f11",
    "influxdb token": "influxtok-77aa01",
    "elasticsearch api key": "esapikey-3c9d5e",
    "webhook path": "hookpath-5f0a3b",
    "webhook query": "hookquery-2d6e8c",
    "webhook header": "hookheader-8b4f2a",
    "second webhook path": "hookpath2-1a2b3c",
}


class Hook:
    """Answers 503 to the first notification and 204 after; records bodies and the paths asked."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.statuses: list[int] = []
        self.headers: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 503 if not hook.statuses else 204
                hook.statuses.append(status)
                hook.headers.append(self.headers.get("Authorization", ""))
                if status == 204:
                    hook.bodies.append(body)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_config(tmp_path: Path, unique: str, db: str, hook: Hook, influx_user: str) -> Path:
    path = tmp_path / "fleetwatch.toml"
    path.write_text(f"""
[mqtt]
client_id = "{unique}"
shared_group = "{unique}"
username = "fleetwatch-test"
password = "{SECRETS["mqtt password"]}"
[[mqtt.subscriptions]]
topic = "fwtest/{unique}/+/+"
qos = 1
template = "fwtest/+/{{device}}/+"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"

[windows]
tumbling = ["10s"]
allowed_lateness = "2s"
max_age = "0s"

[flow]
health_interval = "1s"

[recovery]
dir = "{tmp_path / "recovery"}"

[retention]
# These queries read the database's default policy: one policy for everything.
enabled = false

[influxdb]
url = "{INFLUX_URL}"
database = "{db}"
username = "{influx_user}"
password = "{SECRETS["influxdb password"]}"
# A user that is no admin: the test's database exists already.
create_database = false
flush_interval = "100ms"

[elasticsearch]
hosts = ["{ES_URL}"]
index_prefix = "{unique}"
api_key = "{SECRETS["elasticsearch api key"]}"
flush_interval = "100ms"

[alerts]
mqtt_topic_prefix = "fwalerts/{unique}"
journal = "{tmp_path / "alerts-sent.jsonl"}"

[[alerts.webhooks]]
url = "{hook.base}/hook/{SECRETS["webhook path"]}?token={SECRETS["webhook query"]}"
headers = {{ Authorization = "Bearer {SECRETS["webhook header"]}" }}

[[alerts.webhooks]]
url = "http://127.0.0.1:{free_port()}/down/{SECRETS["second webhook path"]}"
max_retry_delay = "1s"

[[alerts.rules]]
name = "hot"
target = "reading"
metric = "temp"
condition = ">"
warning = 30.0
summary = "{{device}} is {{value}} C"

[dead_letters]
path = "{tmp_path / "dead.jsonl"}"
""")
    return path


def test_no_secret_appears_in_any_output(
    tmp_path: Path, unique: str, influx_db: str, influx_user: tuple[str, Path], es_index: str
) -> None:
    # The InfluxDB password is a real one (the server asks for credentials): the test's own user gets it.
    user = influx_user[0]
    influxql("", f"SET PASSWORD FOR \"{user}\" = '{SECRETS['influxdb password']}'", "POST")
    hook = Hook()
    live = Subscriber(f"fwalerts/{unique}/#")
    config = write_config(tmp_path, unique, influx_db, hook, user)
    pipeline = Pipeline(config)
    pub = Publisher()
    try:
        for at_s, value in enumerate([20.0, 35.0, 25.0]):
            pub.send(f"fwtest/{unique}/d1/sensor", json.dumps({"ts": T0_MS + at_s * 1000, "temp": value}).encode())
        pub.send(f"fwtest/{unique}/d1/sensor", b"\xff not json")
        pub.flush()
        assert wait_until(lambda: len(hook.bodies) >= 2, 30), hook.statuses
        assert wait_until(lambda: len(live.messages) >= 2, 10)
        pipeline.wait_for("dead_letters", 1)
        time.sleep(2.5)  # health points and the refused webhook's retries
    finally:
        pipeline.stop()
        pub.close()
        live.close()
        hook.close()

    # The paths that log were taken.
    assert hook.statuses[0] == 503 and 204 in hook.statuses
    assert hook.headers[0] == f"Bearer {SECRETS['webhook header']}", "the header reached its webhook"
    log = pipeline.log_text()
    assert "answered HTTP 503" in log and "Connection refused" in log, "both webhooks' failures are logged"

    outputs: dict[str, str] = {"pipeline log": log}
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".jsonl", ".log", ".txt"}:
            outputs[str(path.relative_to(tmp_path))] = path.read_text(errors="replace")
    outputs["elasticsearch"] = json.dumps(es_docs(f"{unique}*"))
    for series in influxql(influx_db, "SHOW MEASUREMENTS").get("series", []):
        for (measurement,) in series["values"]:
            outputs[f"influxdb {measurement}"] = json.dumps(influxql(influx_db, f'SELECT * FROM "{measurement}"'))
    outputs["webhook bodies"] = "\n".join(b.decode() for b in hook.bodies)
    outputs["mqtt notifications"] = json.dumps(live.messages)

    assert "fleetwatch_health" in " ".join(outputs), "health points were written"
    assert '"dead' in outputs["elasticsearch"] or "not json" in outputs["elasticsearch"], "a dead letter was stored"
    leaks = [(what, where) for what, secret in SECRETS.items() for where, text in outputs.items() if secret in text]
    assert leaks == []
