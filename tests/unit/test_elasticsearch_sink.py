"""The Elasticsearch sink's pure logic: index names, ids, documents, templates and client auth. Its writes
are tested against the real server in tests/integration."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from fleetwatch.config import ElasticsearchConfig
from fleetwatch.record import DeadLetter, LogEvent, LogRate
from flows.sinks.elasticsearch import (
    DEAD_LETTERS,
    KINDS,
    LOGS,
    IndexLayout,
    Record,
    dead_letter_id,
    encode_batch,
    iso_timestamp,
    make_client,
    parse_byte_size,
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


def test_records_of_days_past_retention_share_one_index_per_kind() -> None:
    """A sender's timestamps pick the day: days the retention job would delete at once go to one index, not
    an index (a shard) each."""
    day = 86_400 * S
    kept = IndexLayout("fw", data_streams=False, replicas=0, retention={LOGS: timedelta(days=30)})
    today = time.time_ns() // day * day
    assert kept.target(LOGS, today) == f"fw-logs-{datetime.fromtimestamp(today // S, UTC):%Y.%m.%d}"
    assert kept.target(LOGS, today - 29 * day).startswith("fw-logs-2")
    for old in (today - 31 * day, T0 - 3650 * day, -60 * S, -(2**62)):
        assert kept.target(LOGS, old) == "fw-logs-expired"
    # A kind without retention, or retention off: the day's index, whatever the day.
    assert kept.target("alerts", T0 - 3650 * day) == "fw-alerts-2016.01.04"
    assert IndexLayout("fw", False, 0).target(LOGS, T0 - 3650 * day) == "fw-logs-2016.01.04"
    # Data streams have no index per day.
    assert IndexLayout("fw", True, 0, {LOGS: timedelta(days=30)}).target(LOGS, -60 * S) == "fw-logs"


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
    # Log events keep a value that does not fit its field's type; the strict kinds refuse it.
    assert layout.template(LOGS)["template"]["settings"]["index.mapping.ignore_malformed"] is True
    assert "index.mapping.ignore_malformed" not in layout.template(DEAD_LETTERS)["template"]["settings"]


def test_a_template_digest_changes_with_its_body_and_only_with_it() -> None:
    """A start skips writing a template whose recorded digest matches: the digest must change with anything
    that changes what the server would apply (here replicas, the layout and retention), and not otherwise."""
    digests = {
        (replicas, streams, kind): IndexLayout("fw", streams, replicas).template(kind)["_meta"]["digest"]
        for replicas in (0, 1)
        for streams in (False, True)
        for kind in KINDS
    }
    assert len(set(digests.values())) == len(digests)
    assert IndexLayout("fw", False, 0).template(LOGS) == IndexLayout("fw", False, 0).template(LOGS)
    kept = IndexLayout("fw", True, 0, {LOGS: timedelta(days=7)}).template(LOGS)["_meta"]["digest"]
    assert kept != digests[(0, True, LOGS)]


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


def test_a_log_rate_of_events_without_a_level_names_it_unknown() -> None:
    """Elasticsearch refuses an empty field name; InfluxDB stores the same count as ``unknown``."""
    rate = LogRate("sshd", T0, 10 * S, {"": 3, "error": 1})
    doc = to_action(rate).source
    assert doc["levels"] == {"unknown": 3, "error": 1}
    assert (doc["count"], doc["errors"]) == (4, 1)


def _event(doc_id: str, doc: dict[str, Any], ts_ns: int = T0) -> LogEvent:
    return LogEvent(doc_id, ts_ns, "info", "api", doc)


def test_each_unserialisable_document_becomes_its_own_dead_letter() -> None:
    """One bad record never fails its batch: the others are encoded, each bad one is a dead letter with the
    reason, where it was going and the input as well as it can be written down."""
    layout = IndexLayout("fw", data_streams=False, replicas=0)
    batch: list[Record] = [
        _event("ok-1", {"message": "fine"}),
        _event("surrogate-key", {"message": "x", "fields": {"\ud800": 1}}),
        _event("surrogate-value", {"message": "\udc00"}),
        _event("nan", {"message": "x", "fields": {"ratio": float("nan")}}),
        _event("inf", {"message": "x", "values": [1.0, float("-inf")]}),
        _event("object", {"message": "x", "fields": {"obj": object()}}),
        _event("huge-int", {"message": "x", "n": 2**70}),
        _event("too-large", {"message": "y" * 5000}),
        _event("bad-time", {"message": "x"}, ts_ns=2**80),
        _event("ok-2", {"message": "also fine"}),
    ]
    encoded, dead, unstorable = encode_batch(batch, layout, max_doc_bytes=4096)
    assert [e.action.doc_id for e in encoded] == ["ok-1", "ok-2"]
    assert [json.loads(e.body) for e in encoded] == [{"message": "fine"}, {"message": "also fine"}]
    assert encoded[0].index == "fw-logs-2026.01.01"

    assert len(dead) == 8
    reasons = sorted(letter.reason for letter in dead)
    assert reasons == ["too_large"] + ["unserializable"] * 7
    by_id = {letter.detail.split()[1]: letter for letter in dead}  # "document <id> ..."
    assert set(by_id) == {
        "surrogate-key",
        "surrogate-value",
        "nan",
        "inf",
        "object",
        "huge-int",
        "too-large",
        "bad-time",
    }
    # The raw input survives: lone surrogates escaped, non-finite numbers as JSON writes them.
    assert json.loads(by_id["surrogate-key"].raw)["fields"] == {"\ud800": 1}
    assert json.loads(by_id["surrogate-value"].raw)["message"] == "\udc00"
    assert "fields.ratio" in by_id["nan"].detail and b"NaN" in by_id["nan"].raw
    assert "values[1]" in by_id["inf"].detail
    assert "object object" in by_id["object"].raw.decode()
    assert by_id["too-large"].source == "elasticsearch:fw-logs-2026.01.01/too-large"
    assert "4096" in by_id["too-large"].detail
    # Dead letters are kept under the record's own time (deterministic ids), except when that time is the
    # problem.
    assert by_id["nan"].received_ns == T0
    assert by_id["bad-time"].received_ns != 2**80
    # Every dead letter can itself be indexed, and the oversized input is also kept whole in the local file.
    for letter in dead:
        assert orjson.dumps(to_action(letter).source)
    assert [json.loads(u.raw)["message"] for u in unstorable] == ["y" * 5000]


def test_a_dead_letter_with_lone_surrogates_in_its_text_is_still_indexable() -> None:
    letter = DeadLetter("not_a_number", "mqtt:s/\udcff/t", b"\xff", T0, "bad \ud800 value")
    encoded, dead, unstorable = encode_batch([letter], IndexLayout("fw", False, 0), max_doc_bytes=1 << 20)
    assert (len(encoded), dead, unstorable) == (1, [], [])
    doc = json.loads(encoded[0].body)
    assert doc["source"] == "mqtt:s/\\udcff/t" and doc["detail"] == "bad \\ud800 value"


def test_server_byte_sizes_are_read_as_elasticsearch_writes_them() -> None:
    assert parse_byte_size("100mb") == 100 * 1024 * 1024
    assert parse_byte_size("1gb") == 1 << 30
    assert parse_byte_size("512KB") == 512 * 1024
    assert parse_byte_size("2048b") == parse_byte_size("2048") == 2048
    assert parse_byte_size("lots") is None


def test_the_year_is_four_digits_in_timestamps_and_daily_index_names() -> None:
    """A syslog sender may stamp a message in year 1: strftime's %Y wrote "1", giving an @timestamp no parser
    reads and an index name (<prefix>-logs-1.01.01) that retention never matched, so never deleted."""
    year_one = int((datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**9
    assert iso_timestamp(year_one) == "0001-01-01T00:00:00.000000Z"
    assert IndexLayout("fw", False, 0).target("logs", year_one) == "fw-logs-0001.01.01"
