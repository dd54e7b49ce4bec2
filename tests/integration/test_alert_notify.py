"""Alert notifications against real servers: the stack's Mosquitto (and a private one that can be stopped),
a real local HTTP server for webhooks, and the alert history records in Elasticsearch and InfluxDB."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetwatch.config import MQTTConfig
from fleetwatch.record import AlertTransition
from flows.alerts.notify import (
    MQTTNotifier,
    SentJournal,
    WebhookNotifier,
    alert_doc,
    alert_line,
    alert_mappings,
    alert_payload,
    slack_payload,
)
from flows.alerts.rules import WebhookConfig
from tests.conftest import ES_URL, INFLUX_URL, MQTT_HOST, MQTT_PORT, http, influx_headers, influx_rows
from tests.integration.harness import PrivateBroker, free_port, wait_until

AT_NS = 1_795_428_000_123_456_789


def transition(notification_id: str, state: str = "firing", **changes: Any) -> AlertTransition:
    t = AlertTransition(
        rule="high_temp",
        series="readings,device=d1,metric=temperature,site=s1",
        tags={"device": "d1", "metric": "temperature", "site": "s1"},
        state=state,
        severity="critical",
        value=31.5,
        threshold=30.0,
        started_ns=AT_NS - 60_000_000_000,
        at_ns=AT_NS,
        summary="temperature 31.5 > 30 on d1",
        notification_id=notification_id,
    )
    return t._replace(**changes)


# ------------------------------------------------------------------------------------------- MQTT


class Subscriber:
    """Collects the messages of ``<prefix>/#``; retained ones arrive right after subscribing."""

    def __init__(self, topic_filter: str, port: int = MQTT_PORT) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda c, u, m, r, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.connect(MQTT_HOST, port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "not subscribed"

    def wait_for(self, count: int, timeout: float = 10.0, settle: float = 0.3) -> list[paho.MQTTMessage]:
        """At least ``count`` messages, then ``settle`` seconds for any that should not come."""
        wait_until(lambda: len(self.messages) >= count, timeout)
        time.sleep(settle)
        return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def clear_retained(topic_filter: str, port: int = MQTT_PORT) -> None:
    """Publish an empty retained payload to every topic under the filter that still holds one."""
    sub = Subscriber(topic_filter, port)
    retained = {m.topic for m in sub.wait_for(1, timeout=0.5, settle=0.2) if m.retain and m.payload}
    infos = [sub.client.publish(topic, b"", qos=1, retain=True) for topic in retained]
    for info in infos:
        info.wait_for_publish(5)
    sub.close()


@pytest.fixture
def prefix(unique: str) -> Iterator[str]:
    prefix = f"fwtest/{unique}/alerts"
    yield prefix
    clear_retained(f"{prefix}/#")


@pytest.fixture
def mqtt_cfg() -> MQTTConfig:
    return MQTTConfig(host=MQTT_HOST, port=MQTT_PORT, reconnect_max_delay=timedelta(seconds=1))


def test_mqtt_publishes_the_current_state_retained(prefix: str, mqtt_cfg: MQTTConfig, tmp_path: Path) -> None:
    journal = SentJournal(tmp_path / "sent.jsonl")
    notifier = MQTTNotifier(mqtt_cfg, prefix, journal)
    try:
        firing = transition("n-firing")
        notifier.put([firing])
        assert notifier.flush(10)
        topic = f"{prefix}/high_temp/readings/d1/temperature/s1"
        assert notifier.topic(firing) == topic

        # A subscriber arriving after the publish gets the retained current state.
        late = Subscriber(f"{prefix}/#")
        (msg,) = late.wait_for(1)
        late.close()
        assert (msg.topic, msg.retain, msg.qos) == (topic, True, 1)
        assert json.loads(msg.payload) == alert_payload(firing)

        resolved = transition("n-resolved", "resolved", at_ns=AT_NS + 10**9)
        notifier.put([resolved])
        assert notifier.flush(10)
        later = Subscriber(f"{prefix}/#")
        (msg,) = later.wait_for(1)
        later.close()
        assert msg.topic == topic and msg.retain
        assert json.loads(msg.payload)["state"] == "resolved"
        assert json.loads(msg.payload) == alert_payload(resolved)
        assert (notifier.written, notifier.skipped, notifier.failed) == (2, 0, 0)
        assert journal.status("mqtt", "n-firing") == journal.status("mqtt", "n-resolved") == "sent"
    finally:
        notifier.close(5)
        journal.close()


def test_mqtt_topics_of_other_series_and_odd_tags(prefix: str, mqtt_cfg: MQTTConfig, tmp_path: Path) -> None:
    journal = SentJournal(tmp_path / "sent.jsonl")
    notifier = MQTTNotifier(mqtt_cfg, prefix + "/", journal)
    sub = Subscriber(f"{prefix}/#")
    try:
        rates = transition("n-rates", rule="errors", series="log_rates,service=checkout", tags={"service": "checkout"})
        odd = transition("n-odd", series="readings,device=a+b,metric=x/y,site=#", tags={})
        notifier.put([rates, odd])
        assert notifier.flush(10)
        got = sub.wait_for(2)
        assert sorted(m.topic for m in got) == [
            f"{prefix}/errors/log_rates/checkout",
            f"{prefix}/high_temp/readings/a_b~6258e1/x_y~04c4de/_~c10c04",
        ]
    finally:
        sub.close()
        notifier.close(5)
        journal.close()


def test_mqtt_publishes_a_notification_once_also_after_a_restart(
    prefix: str, mqtt_cfg: MQTTConfig, tmp_path: Path
) -> None:
    path = tmp_path / "sent.jsonl"
    sub = Subscriber(f"{prefix}/#")
    first, second, third = (transition(f"n-{i}", at_ns=AT_NS + i) for i in range(3))
    journal = SentJournal(path)
    notifier = MQTTNotifier(mqtt_cfg, prefix, journal)
    try:
        notifier.put([first, first])
        notifier.put([first])
        assert notifier.flush(10)
        notifier.put([second])
        assert notifier.flush(10)
        # second comes after first on the same topic: once it is here, any copy of first would be too.
        got = sub.wait_for(2)
        assert [json.loads(m.payload)["notification_id"] for m in got] == ["n-0", "n-1"]
        assert (notifier.written, notifier.skipped) == (2, 2)
    finally:
        notifier.close(5)
        journal.close()

    # A restart: Bytewax replays the uncommitted epoch, the engine emits the same transitions again.
    journal = SentJournal(path)
    notifier = MQTTNotifier(mqtt_cfg, prefix, journal)
    try:
        notifier.put([first, second, third])
        assert notifier.flush(10)
        got = sub.wait_for(3)
        assert [json.loads(m.payload)["notification_id"] for m in got] == ["n-0", "n-1", "n-2"]
        assert (notifier.written, notifier.skipped) == (1, 2)
    finally:
        sub.close()
        notifier.close(5)
        journal.close()


def test_mqtt_broker_down_then_up_delivers_without_loss(tmp_path: Path) -> None:
    broker = PrivateBroker(tmp_path, free_port())
    cfg = MQTTConfig(host=MQTT_HOST, port=broker.port, reconnect_max_delay=timedelta(seconds=1))
    journal = SentJournal(tmp_path / "sent.jsonl")
    # Down at start: paho keeps trying, the notifier waits for the PUBACK and retries.
    notifier = MQTTNotifier(cfg, "alerts", journal, publish_timeout=0.5)
    try:
        first = transition("n-0")
        notifier.put([first])
        assert not notifier.flush(1.5)
        assert notifier.retries >= 1 and notifier.written == 0
        broker.start()
        assert notifier.flush(15)
        sub = Subscriber("alerts/#", broker.port)
        (msg,) = sub.wait_for(1)
        assert json.loads(msg.payload)["notification_id"] == "n-0" and msg.retain

        # Down in the middle: the broker restarts empty (no persistence), the resolved state arrives.
        broker.stop()
        sub.close()
        resolved = transition("n-1", "resolved")
        notifier.put([resolved])
        assert not notifier.flush(1.5)
        broker.start()
        assert notifier.flush(15)
        sub = Subscriber("alerts/#", broker.port)
        (msg,) = sub.wait_for(1)
        sub.close()
        assert json.loads(msg.payload)["notification_id"] == "n-1"
        assert notifier.written == 2 and journal.seen("mqtt", "n-1")
    finally:
        notifier.close(5)
        journal.close()
        broker.stop()


# ------------------------------------------------------------------------------------------- webhooks

SECRET_PATH = "/hooks/T000/B000/s3cretPathToken"
SECRET_HEADER = "Bearer s3cretHeaderToken"

# Request number -> (status, seconds to wait before answering, extra response headers).
Answer = Callable[[int], tuple[int, float, dict[str, str]]]


class Hook:
    """A real HTTP server on 127.0.0.1 recording every POST: path, headers, JSON body, the status answered."""

    def __init__(self, port: int = 0, answer: Answer | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer: Answer = answer or (lambda n: (200, 0.0, {}))
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, delay, headers = hook.answer(len(hook.requests))
                hook.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body), "status": status}
                )
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def statuses(self) -> list[int]:
        return [r["status"] for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def webhook_cfg(port: int, **changes: Any) -> WebhookConfig:
    values: dict[str, Any] = {
        "url": f"http://127.0.0.1:{port}{SECRET_PATH}",
        "timeout": "2s",
        "max_retry_delay": "0.5s",
        "headers": {"Authorization": SECRET_HEADER},
    }
    return WebhookConfig(**(values | changes))


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Everything fleetwatch logs; afterwards, no secret of the webhook may be in it."""
    caplog.set_level(logging.DEBUG, logger="flows")
    yield caplog
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret" not in text
    assert "B000" not in text


def test_webhook_generic_and_slack_bodies(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    hook = Hook()
    journal = SentJournal(tmp_path / "sent.jsonl")
    generic = WebhookNotifier(webhook_cfg(hook.port), journal, channel="generic")
    slack = WebhookNotifier(webhook_cfg(hook.port, format="slack"), journal, channel="slack")
    try:
        firing, resolved = transition("n-0"), transition("n-1", "resolved")
        generic.put([firing, resolved])
        assert generic.flush(10)
        slack.put([firing, resolved])
        assert slack.flush(10)
        assert [r["body"] for r in hook.requests] == [
            alert_payload(firing),
            alert_payload(resolved),
            slack_payload(firing),
            slack_payload(resolved),
        ]
        for request, notification_id in zip(hook.requests, ["n-0", "n-1"] * 2, strict=True):
            assert request["path"] == SECRET_PATH
            assert request["headers"]["Authorization"] == SECRET_HEADER
            assert request["headers"]["Content-Type"].startswith("application/json")
            assert request["headers"]["X-Fleetwatch-Notification-Id"] == notification_id
        assert journal.status("generic", "n-1") == journal.status("slack", "n-1") == "sent"
        assert (generic.written, slack.written, generic.retries, slack.retries) == (2, 2, 0, 0)
    finally:
        generic.close(5)
        slack.close(5)
        journal.close()
        hook.close()


def test_webhook_retries_429_and_503_then_delivers_once(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    answers = [(429, 0.0, {"Retry-After": "0.3"}), (503, 0.0, {}), (503, 0.0, {}), (500, 0.0, {})]
    hook = Hook(answer=lambda n: answers[n] if n < len(answers) else (200, 0.0, {}))
    journal = SentJournal(tmp_path / "sent.jsonl")
    notifier = WebhookNotifier(webhook_cfg(hook.port), journal)
    try:
        notifier.put([transition("n-0")])
        assert notifier.flush(10)
        assert hook.statuses == [429, 503, 503, 500, 200]
        assert {r["body"]["notification_id"] for r in hook.requests} == {"n-0"}
        assert (notifier.written, notifier.retries, notifier.failed) == (1, 4, 0)
        # Put again (a replay): the journal has it.
        notifier.put([transition("n-0")])
        assert notifier.flush(10)
        assert len(hook.requests) == 5 and notifier.skipped == 1
        assert any("HTTP 429" in r.getMessage() for r in logs.records)
    finally:
        notifier.close(5)
        journal.close()
        hook.close()


def test_webhook_server_down_then_up_delivers_exactly_once(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    port = free_port()
    journal = SentJournal(tmp_path / "sent.jsonl")
    notifier = WebhookNotifier(webhook_cfg(port), journal)
    hook: Hook | None = None
    try:
        notifier.put([transition("n-0"), transition("n-1", "resolved")])
        # Nothing listens: connection refused, retried with backoff; put never waited.
        time.sleep(3)
        assert notifier.written == 0 and notifier.retries >= 3
        hook = Hook(port)
        assert notifier.flush(10)
        assert [r["body"]["notification_id"] for r in hook.requests] == ["n-0", "n-1"]
        assert hook.statuses == [200, 200] and notifier.written == 2
        assert any("ConnectionError" in r.getMessage() for r in logs.records)
    finally:
        notifier.close(5)
        journal.close()
        if hook is not None:
            hook.close()


def test_webhook_slow_server_is_retried(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    hook = Hook(answer=lambda n: (200, 1.5 if n == 0 else 0.0, {}))
    journal = SentJournal(tmp_path / "sent.jsonl")
    notifier = WebhookNotifier(webhook_cfg(hook.port, timeout="0.3s"), journal)
    try:
        notifier.put([transition("n-0")])
        assert notifier.flush(10)
        # The first request timed out on our side (the receiver got it: at least once, hence the id header).
        assert [r["headers"]["X-Fleetwatch-Notification-Id"] for r in hook.requests] == ["n-0", "n-0"]
        assert (notifier.written, notifier.retries) == (1, 1)
        assert any("ReadTimeoutError" in r.getMessage() for r in logs.records)
    finally:
        notifier.close(5)
        journal.close()
        hook.close()


def test_webhook_400_is_given_up_not_retried(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    hook = Hook(answer=lambda n: (400, 0.0, {}) if n == 0 else (200, 0.0, {}))
    journal = SentJournal(tmp_path / "sent.jsonl")
    notifier = WebhookNotifier(webhook_cfg(hook.port), journal)
    try:
        started = time.monotonic()
        notifier.put([transition("n-0"), transition("n-1", "resolved")])
        assert notifier.flush(10)
        assert time.monotonic() - started < 2
        # n-0 refused once and given up; the queue carried on with n-1.
        assert [r["body"]["notification_id"] for r in hook.requests] == ["n-0", "n-1"]
        assert hook.statuses == [400, 200]
        assert (notifier.failed, notifier.written, notifier.retries) == (1, 1, 0)
        assert journal.status("webhook", "n-0") == "failed"
        (error,) = [r for r in logs.records if r.levelno == logging.ERROR]
        assert "HTTP 400" in error.getMessage() and "n-0" in error.getMessage()
    finally:
        notifier.close(5)
        journal.close()
        hook.close()


# ------------------------------------------------------------------------------------------- history


def test_alert_docs_index_with_the_alerts_mapping(es_index: str) -> None:
    index = f"{es_index}-alerts"
    resp = http.request(
        "PUT",
        f"{ES_URL}/{index}",
        body=json.dumps({"mappings": alert_mappings()}),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, resp.data
    docs = [
        alert_doc(transition("n-0")),
        alert_doc(transition("n-1", "resolved", threshold=None, tags={"service": "checkout"})),
    ]
    for doc in docs:
        resp = http.request(
            "PUT",
            f"{ES_URL}/{index}/_create/{doc['notification_id']}?refresh=true",
            body=json.dumps(doc),
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 201, resp.data
    mapping = json.loads(http.request("GET", f"{ES_URL}/{index}/_mapping").data)[index]["mappings"]
    tags = mapping["properties"]["tags"]["properties"]
    assert {key: field["type"] for key, field in tags.items()} == dict.fromkeys(
        ["device", "metric", "service", "site"], "keyword"
    )
    query = {"query": {"bool": {"filter": [{"term": {"tags.device": "d1"}}, {"term": {"state": "firing"}}]}}}
    resp = http.request(
        "POST", f"{ES_URL}/{index}/_search", body=json.dumps(query), headers={"Content-Type": "application/json"}
    )
    hits = json.loads(resp.data)["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == ["n-0"]


def test_alert_lines_keep_both_transitions_at_one_instant(influx_db: str) -> None:
    pending = transition("n-0", "pending", severity="warning")
    firing = transition("n-1", "firing", severity="warning")
    resp = http.request(
        "POST",
        f"{INFLUX_URL}/write?db={influx_db}&precision=ns",
        body="\n".join([alert_line(pending), alert_line(firing)]).encode(),
        headers=influx_headers(),
    )
    assert resp.status == 204, resp.data
    rows = influx_rows(influx_db, "SELECT * FROM alerts WHERE rule = 'high_temp' GROUP BY \"state\"")
    by_state = {row["state"]: row for row in rows}
    assert set(by_state) == {"pending", "firing"}
    assert by_state["firing"]["firing"] == 1 and by_state["pending"]["firing"] == 0
    assert by_state["firing"]["value"] == 31.5 and by_state["firing"]["threshold"] == 30.0
    assert by_state["firing"]["summary"] == "temperature 31.5 > 30 on d1"
    assert by_state["firing"]["started_ns"] == AT_NS - 60_000_000_000
    assert by_state["firing"]["device"] == "d1" and by_state["firing"]["severity"] == "warning"
