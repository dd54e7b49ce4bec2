"""The Elasticsearch sink's pure logic: index names, ids, documents, templates and client auth. Its writes
are tested against the real server in tests/integration."""

from __future__ import annotations

from fleetwatch.config import ElasticsearchConfig
from fleetwatch.record import DeadLetter, LogRate
from flows.sinks.elasticsearch import (
    DEAD_LETTERS,
    KINDS,
    LOGS,
    IndexLayout,
    dead_letter_id,
    iso_timestamp,
    make_client,
    to_action,
)

S = 1_000_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z


def test_daily_indices_follow_the_record_time_and_data_streams_have_one_name() -> None:
    daily = IndexLayout("fw", data_streams=False, replicas=0)
    assert daily.target(LOGS, T0 - 1) == "fw-logs-2025.12.31"
    assert daily.target(LOGS, T0) == "fw-logs-2026.01.01"
    streams = IndexLayout("fw", data_streams=True, replicas=0)
    assert streams.target(LOGS, T0) == "fw-logs"
    assert "data_stream" in streams.template(LOGS) and "data_stream" not in daily.template(LOGS)


def test_templates_map_text_keyword_and_date_deliberately() -> None:
    layout = IndexLayout("fw", data_streams=False, replicas=0)
    for kind in KINDS:
        body = layout.template(kind)
        assert body["index_patterns"] == [f"fw-{kind}*"]
        assert body["template"]["mappings"]["properties"]["@timestamp"] == {"type": "date"}
    logs = layout.template(LOGS)["template"]["mappings"]["properties"]
    assert logs["message"]["type"] == "text"
    assert logs["log"]["properties"]["level"]["type"] == "keyword"
    assert logs["service"]["properties"]["name"]["type"] == "keyword"
    dead = layout.template(DEAD_LETTERS)["template"]["mappings"]
    # Raw input is kept but never indexed, so the dead-letter index cannot refuse it.
    assert dead["properties"]["raw"] == {"type": "text", "index": False}


def test_ids_are_deterministic_so_a_replay_is_answered_409() -> None:
    letter = DeadLetter("not_a_number", "mqtt:s/1/t", b"abc", T0, "detail")
    assert dead_letter_id(letter) == dead_letter_id(DeadLetter(*letter))
    assert dead_letter_id(letter) != dead_letter_id(letter._replace(received_ns=T0 + 1))
    rate = LogRate("api", T0, 60 * S, {"info": 2})
    assert to_action(rate).doc_id == to_action(LogRate("api", T0, 60 * S, {"info": 2})).doc_id
    doc = to_action(letter).source
    assert (doc["reason"], doc["raw"], doc["raw_base64"], doc["@timestamp"]) == (
        "not_a_number",
        "abc",
        "YWJj",
        "2026-01-01T00:00:00.000000Z",
    )


def test_iso_timestamp_keeps_microseconds_in_utc() -> None:
    assert iso_timestamp(T0 + 123_456_789) == "2026-01-01T00:00:00.123456Z"


def test_client_auth_by_api_key_or_user_and_password() -> None:
    with make_client(ElasticsearchConfig(api_key="aWQ6a2V5")) as es:
        assert es._headers["authorization"] == "ApiKey aWQ6a2V5"
    with make_client(ElasticsearchConfig(username="fw", password="s3cret")) as es:
        assert es._headers["authorization"].startswith("Basic ")
    with make_client(ElasticsearchConfig()) as es:
        assert "authorization" not in es._headers
