"""Alert notification payloads, history records, topics and the sent-notifications journal (no servers)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.record import AlertTransition
from flows.alerts.notify import (
    SentJournal,
    alert_doc,
    alert_line,
    alert_payload,
    alert_topic,
    log_transition,
    rfc3339,
    slack_payload,
)

# 2026-11-23T10:00:00.123456789Z
AT_NS = 1_795_428_000_123_456_789
STARTED_NS = AT_NS - 60_000_000_000


def transition(**changes: Any) -> AlertTransition:
    t = AlertTransition(
        rule="high_temp",
        series="readings,device=d1,metric=temperature,site=s\\ 1",
        tags={"device": "d1", "metric": "temperature", "site": "s 1"},
        state="firing",
        severity="critical",
        value=31.5,
        threshold=30.0,
        started_ns=STARTED_NS,
        at_ns=AT_NS,
        summary="temperature 31.5 > 30 on d1",
        notification_id="n-1",
    )
    return t._replace(**changes)


def test_rfc3339_is_utc_with_microseconds() -> None:
    assert rfc3339(AT_NS) == "2026-11-23T10:00:00.123456Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"


def test_alert_payload_is_the_transition_as_json() -> None:
    payload = alert_payload(transition())
    assert payload == {
        "rule": "high_temp",
        "series": "readings,device=d1,metric=temperature,site=s\\ 1",
        "tags": {"device": "d1", "metric": "temperature", "site": "s 1"},
        "state": "firing",
        "severity": "critical",
        "value": 31.5,
        "threshold": 30.0,
        "started_at": "2026-11-23T09:59:00.123456Z",
        "at": "2026-11-23T10:00:00.123456Z",
        "summary": "temperature 31.5 > 30 on d1",
        "notification_id": "n-1",
        "renotify": False,
    }
    json.dumps(payload, allow_nan=False)


def test_alert_payload_has_no_nan_or_infinity() -> None:
    payload = alert_payload(transition(value=math.nan, threshold=None))
    assert payload["value"] is None and payload["threshold"] is None
    assert alert_payload(transition(value=math.inf))["value"] is None


@pytest.mark.parametrize(
    "state,severity,colour",
    [
        ("firing", "critical", "#d40e0d"),
        ("firing", "warning", "#daa038"),
        ("pending", "critical", "#439fe0"),
        ("resolved", "critical", "#2eb886"),
        ("ok", "warning", "#2eb886"),
    ],
)
def test_slack_payload_colour_follows_severity_and_resolution(state: str, severity: str, colour: str) -> None:
    body = slack_payload(transition(state=state, severity=severity))
    assert isinstance(body["text"], str) and body["text"]
    (attachment,) = body["attachments"]
    assert attachment["color"] == colour
    assert attachment["title"] == f"high_temp: {state}"


def test_slack_payload_text_and_fields() -> None:
    body = slack_payload(transition(summary="a <b> & c", renotify=True))
    assert "*FIRING (still firing)*" in body["text"]
    assert "high_temp" in body["text"] and "(critical)" in body["text"]
    # Slack would read <b> as a link and & as an entity.
    assert "a &lt;b&gt; &amp; c" in body["text"]
    attachment = body["attachments"][0]
    assert attachment["fallback"].startswith("[FIRING (still firing)] high_temp (critical) on readings,")
    fields = {f["title"]: f["value"] for f in attachment["fields"]}
    assert fields["Value"] == "31.5" and fields["Threshold"] == "30" and fields["Severity"] == "critical"
    assert fields["device"] == "d1" and fields["site"] == "s 1"
    assert attachment["ts"] == AT_NS // 1_000_000_000
    no_threshold = slack_payload(transition(threshold=None))["attachments"][0]["fields"]
    assert {f["title"]: f["value"] for f in no_threshold}["Threshold"] == "-"
    json.dumps(body, allow_nan=False)


def test_alert_doc_fields() -> None:
    doc = alert_doc(transition(state="resolved", threshold=None))
    assert doc == {
        "@timestamp": "2026-11-23T10:00:00.123456Z",
        "rule": "high_temp",
        "series": "readings,device=d1,metric=temperature,site=s\\ 1",
        "tags": {"device": "d1", "metric": "temperature", "site": "s 1"},
        "state": "resolved",
        "severity": "critical",
        "value": 31.5,
        "threshold": None,
        "started_at": "2026-11-23T09:59:00.123456Z",
        "summary": "temperature 31.5 > 30 on d1",
        "notification_id": "n-1",
        "renotify": False,
    }


def test_alert_line() -> None:
    assert alert_line(transition()) == (
        "alerts,device=d1,metric=temperature,rule=high_temp,severity=critical,site=s\\ 1,state=firing "
        'value=31.5,threshold=30.0,firing=1i,summary="temperature 31.5 > 30 on d1",'
        f"started_ns={STARTED_NS}i {AT_NS}"
    )


def test_alert_line_without_threshold_or_finite_value_and_with_awkward_summary() -> None:
    line = alert_line(transition(state="resolved", value=math.nan, threshold=None, summary='say "hi"\\\nbye'))
    assert " firing=0i," in line
    assert "value=" not in line and "threshold=" not in line
    assert 'summary="say \\"hi\\"\\\\ bye"' in line


def test_alert_line_is_unique_per_state_and_keeps_clashing_tags() -> None:
    # Same series, same instant: the state tag makes them two points.
    pending = alert_line(transition(state="pending", series="readings,device=d1", tags={"device": "d1"}))
    firing = alert_line(transition(state="firing", series="readings,device=d1", tags={"device": "d1"}))
    assert pending.split(" ")[0] == "alerts,device=d1,rule=high_temp,severity=critical,state=pending"
    assert firing.split(" ")[0] == "alerts,device=d1,rule=high_temp,severity=critical,state=firing"
    line = alert_line(transition(tags={"state": "x", "device": ""}))
    assert line.startswith("alerts,rule=high_temp,series_state=x,severity=critical,state=firing ")


def test_alert_topic_layout_and_sanitising() -> None:
    assert alert_topic("fleet/alerts/", transition()) == "fleet/alerts/high_temp/readings/d1/temperature/s 1"
    odd = transition(series="readings,device=a+b,metric=x/y,site=#", rule="r")
    assert alert_topic("p", odd) == "p/r/readings/a_b~6258e1/x_y~04c4de/_~c10c04"
    # Found by a review: "a/b" and "a_b" shared one retained topic, and one series' state overwrote the other's.
    plain = transition(series="readings,device=a_b,metric=x_y,site=_", rule="r")
    assert alert_topic("p", plain) == "p/r/readings/a_b/x_y/_"
    assert alert_topic("p", transition(series="log_rates,service=checkout")) == "p/high_temp/log_rates/checkout"
    # Escaped characters are part of the value, not separators.
    assert alert_topic("p", transition(series="m\\,1,k=v\\=w")) == "p/high_temp/m,1/v=w"


def test_log_transition_levels(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flows.alerts.notify")
    log_transition(transition())
    log_transition(transition(state="resolved"))
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert "alert high_temp firing (critical)" in caplog.records[0].getMessage()
    assert "id=n-1" in caplog.records[1].getMessage()


# ------------------------------------------------------------------------------------------- journal


def test_journal_remembers_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "sent.jsonl"
    journal = SentJournal(path)
    assert not journal.seen("mqtt", "a")
    journal.record("mqtt", "a")
    journal.record("webhook", "b", "failed")
    assert journal.seen("mqtt", "a") and not journal.seen("webhook", "a")
    journal.close()
    again = SentJournal(path)
    assert again.seen("mqtt", "a") and again.seen("webhook", "b")
    assert again.status("webhook", "b") == "failed" and again.status("mqtt", "a") == "sent"
    assert again.status("mqtt", "b") is None
    again.close()


def test_journal_is_one_process_at_a_time(tmp_path: Path) -> None:
    journal = SentJournal(tmp_path / "sent.jsonl")
    with pytest.raises(RuntimeError, match="in use"):
        SentJournal(tmp_path / "sent.jsonl")
    journal.close()
    SentJournal(tmp_path / "sent.jsonl").close()


def test_journal_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "sent.jsonl"
    path.write_text('{"channel":"mqtt","id":"a","status":"sent"}\n{"channel":"mqtt","id":"b"')
    journal = SentJournal(path)
    assert journal.seen("mqtt", "a") and not journal.seen("mqtt", "b")
    journal.record("mqtt", "c")
    journal.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "c"]
    reopened = SentJournal(path)
    assert reopened.seen("mqtt", "c") and len(reopened) == 2
    reopened.close()


def test_journal_is_bounded_and_compacts(tmp_path: Path) -> None:
    path = tmp_path / "sent.jsonl"
    journal = SentJournal(path, max_entries=3)
    for i in range(10):
        journal.record("mqtt", f"id{i}")
        assert len(path.read_text().splitlines()) <= 2 * 3
    assert len(journal) == 3
    assert [journal.seen("mqtt", f"id{i}") for i in range(10)] == [False] * 7 + [True] * 3
    journal.record_many("mqtt", ["x", "y"])
    journal.close()
    reopened = SentJournal(path, max_entries=3)
    assert [reopened.seen("mqtt", i) for i in ("id8", "id9", "x", "y")] == [False, True, True, True]
    reopened.close()
    assert not (tmp_path / "sent.jsonl.tmp").exists()


def test_json_body_survives_a_lone_surrogate() -> None:
    from flows.alerts.notify import _json_bytes

    body = _json_bytes(alert_payload(transition(tags={"device": "d\udcff"})))
    assert json.loads(body)["tags"]["device"] == "d\udcff"
    assert json.loads(_json_bytes(alert_payload(transition(summary="25 °C"))))["summary"] == "25 °C"
