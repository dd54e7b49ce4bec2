"""collectors/logs/parsers: properties of every parser kind over generated lines (hypothesis), through the
public ``LogParser.parse``.

- Any text, for every kind (and a ``regex`` input, and a ``timestamp_format``): an ECS document comes out, with
  a valid ``@timestamp`` (years 1 to 9999), a known level, a service and a dataset. A line that does not
  parse is tagged ``parse_failure`` and ``error.message`` says why in the parser's words, never the text of an
  exception nobody foresaw.
- Lines written in each format from generated values (JSON objects, logfmt pairs with quoting, RFC 5424 with
  structured data, RFC 3164, access logs) parse without failure and give back what was written.

FLEETWATCH_FUZZ_EXAMPLES sets the number of examples of each property (a few hundred by default).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from collectors.logs.parsers import LEVELS, LogParser
from fleetwatch.config import FileInputConfig, LogParserName, ParserConfig, SyslogInputConfig
from fleetwatch.record import LogEvent, LogLine
from tests.unit.fuzzing import FUZZ

S = 1_000_000_000
R = 1_767_225_600 * S  # receive time: 2026-01-01T00:00:00Z
SKEW = 300 * S
KINDS: list[LogParserName] = ["none", "json", "logfmt", "regex", "common", "combined", "syslog", "cri", "docker"]
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.(\d{3}|\d{6})Z\Z")
# What error.message starts with when a kind's own check failed, not a Python exception.
EXCEPTION_NAME = re.compile(r"[A-Z][A-Za-z]*(Error|Exception|Warning): ")


def make_parser(kind: LogParserName, syslog: bool = False, **extra: Any) -> LogParser:
    parser = ParserConfig(kind=kind, pattern=r"(?P<level>\w+) (?P<message>.*)" if kind == "regex" else None, **extra)
    if syslog:
        return LogParser(SyslogInputConfig(name="sys", parser=parser), "host-1", SKEW)
    return LogParser(FileInputConfig(name="app", paths=["/var/log/app.log"], parser=parser), "host-1", SKEW)


def parse(parser: LogParser, text: str, received: int = R, source: str = "file:/var/log/app.log") -> LogEvent:
    return parser.parse(LogLine(text, parser.input_name, source, "id-1", received))


def check_document(event: LogEvent, text: str) -> None:
    doc: dict[str, Any] = event.doc
    assert ISO.match(str(doc["@timestamp"])), doc["@timestamp"]
    stamp = datetime.fromisoformat(str(doc["@timestamp"]).replace("Z", "+00:00"))
    assert stamp.astimezone(UTC) == datetime.fromtimestamp(event.ts_ns // S, UTC).replace(microsecond=stamp.microsecond)
    assert event.level in (*LEVELS, "")
    assert event.service and doc["service"] == {"name": event.service}
    assert doc["event"]["dataset"]
    assert isinstance(doc["message"], str)
    tags = doc.get("tags", [])
    if "parse_failure" in tags:
        assert doc["message"] == text
        reason = doc["error"]["message"]
        assert reason and not EXCEPTION_NAME.match(reason), f"a bug, not a reason: {reason}"


LINES = st.one_of(
    st.text(max_size=80),
    st.text(st.sampled_from('<>[]{}":=- 0123456789TZ.,\\/abcJanOct\t\n'), max_size=60),
    st.sampled_from(
        [
            "<191>1 - - - - - -",
            "<192>1 - - - - - - x",
            "<13>Feb 29 00:00:00 h app: x",
            "<13>Jan  1 00:00:00 2023 h app[1]: x",
            '{"timestamp": 1e400}',
            '{"timestamp": -99999999999999999999999}',
            '{"timestamp": "9999-12-31T23:59:59.999999-01:00"}',
            '{"level": {"a": 1}, "message": [1]}',
            '{"service": {"name": 5}, "host.name": ""}',
            'level=warn msg="a \\"b\\" \\ud800" ts=0001-01-01T00:00:00+01:00',
            '1.2.3.4 - - [31/Dec/9999:23:59:59 -0100] "GET / HTTP/1.1" 200 5',
            "timestamp=99999999999999999999999999.5",
        ]
    ),
)


@FUZZ
@given(text=LINES, kind=st.sampled_from(KINDS), syslog=st.booleans(), fmt=st.sampled_from([None, "%Y %j"]))
@example(text="timestamp=-1e400", kind="logfmt", syslog=False, fmt=None)
@example(text="timestamp=-99999999999", kind="logfmt", syslog=False, fmt=None)
def test_any_line_gives_a_document_or_a_parse_failure_with_a_reason(
    text: str, kind: LogParserName, syslog: bool, fmt: str | None
) -> None:
    parser = make_parser(kind, syslog, timestamp_format=fmt)
    source = "syslog:udp:10.0.0.1" if syslog else "file:/var/log/app.log"
    for received in (R, 0):
        check_document(parse(parser, text, received, source), text)


# ------------------------------------------------------------------------------------------- JSON

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
JSON_VALUES = st.recursive(
    JSON_SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# Keys the json kind maps to ECS fields; everything else must come back under "fields" as it was. Besides the
# configured keys, the json kind reads the usual other names of a time, a level and a message when the configured
# one is absent (collectors/logs/parsers.py, _FALLBACK_KEYS; "log" for a nested "log.level").
MAPPED = {"timestamp", "level", "message", "service", "service.name", "host", "host.name"} | {
    *("@timestamp", "time", "ts", "@t"),
    *("log", "log.level", "severity", "levelname", "lvl", "loglevel", "@l"),
    *("msg", "@m", "event", "@mt"),
    *("__REALTIME_TIMESTAMP", "PRIORITY", "MESSAGE", "hostname", "_HOSTNAME", "t"),  # journald's, Grafana's
}


def as_stored(value: Any) -> Any:
    """A JSON value as a log event keeps it: an integer past Elasticsearch's 64-bit long as its exact digits."""
    if type(value) is int and not -(2**63) <= value < 2**63:
        return str(value)
    if type(value) is dict:
        return {k: as_stored(v) for k, v in value.items()}
    if type(value) is list:
        return [as_stored(v) for v in value]
    return value


@FUZZ
@given(obj=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in MAPPED), JSON_VALUES, max_size=6))
@example(obj={"": 2**63})
def test_a_json_line_keeps_every_other_key_under_fields(obj: dict[str, Any]) -> None:
    line = json.dumps(obj)
    event = parse(make_parser("json"), line)
    check_document(event, line)
    assert "tags" not in event.doc
    assert event.doc.get("fields", {}) == as_stored(obj)
    assert event.doc["message"] == line


# ------------------------------------------------------------------------------------------- logfmt

LOGFMT_KEYS = st.text(
    st.characters(codec="utf-8", exclude_categories=["Zs", "Cc"], exclude_characters='="'), min_size=1, max_size=8
).filter(lambda k: k not in MAPPED and not any(c.isspace() for c in k))


@FUZZ
@given(pairs=st.dictionaries(LOGFMT_KEYS, st.text(max_size=12), min_size=1, max_size=5), level=st.sampled_from(LEVELS))
def test_logfmt_pairs_come_back_as_written(pairs: dict[str, str], level: str) -> None:
    def written(value: str) -> str:
        if value and not any(c.isspace() or c in '"=\\' for c in value):
            return value
        return json.dumps(value, ensure_ascii=False)  # Go's strconv.Quote writes the same escapes

    line = " ".join([f"level={level}", *(f"{k}={written(v)}" for k, v in pairs.items())])
    event = parse(make_parser("logfmt"), line)
    check_document(event, line)
    assert "tags" not in event.doc, event.doc
    assert event.level == level
    assert event.doc.get("fields", {}) == pairs


# ------------------------------------------------------------------------------------------- syslog

PRINTUSASCII = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
SD_NAMES = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='= ]"'), min_size=1, max_size=8
)
# hypothesis takes naive bounds and adds the zone itself.
MOMENTS = st.datetimes(datetime(1971, 1, 1), datetime(2099, 12, 31), timezones=st.just(UTC))  # noqa: DTZ001


@FUZZ
@given(
    pri=st.integers(0, 191),
    moment=MOMENTS,
    host=PRINTUSASCII,
    app=PRINTUSASCII,
    procid=PRINTUSASCII,
    msgid=PRINTUSASCII,
    sd=st.dictionaries(SD_NAMES, st.dictionaries(SD_NAMES, st.text(max_size=8), max_size=3), max_size=3),
    message=st.text(max_size=30),
)
def test_rfc5424_messages_come_back_as_written(
    pri: int,
    moment: datetime,
    host: str,
    app: str,
    procid: str,
    msgid: str,
    sd: dict[str, dict[str, str]],
    message: str,
) -> None:
    def param(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")

    structured = "".join(
        f"[{sd_id}" + "".join(f' {k}="{param(v)}"' for k, v in params.items()) + "]" for sd_id, params in sd.items()
    )
    stamp = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
    line = f"<{pri}>1 {stamp} {host} {app} {procid} {msgid} {structured or '-'} {message}"
    event = parse(make_parser("syslog", syslog=True), line, received=R, source="syslog:tcp:10.0.0.1")
    check_document(event, line)
    doc: dict[str, Any] = event.doc
    assert "parse_failure" not in doc.get("tags", []), doc
    expected_host = None if host == "-" else host
    assert doc["host"]["name"] == (expected_host or "10.0.0.1")
    assert doc["log"]["syslog"]["priority"] == pri
    assert doc["log"]["syslog"]["severity"]["code"] == pri & 7
    assert doc["message"] == message.removeprefix("\ufeff")
    assert doc["log"]["syslog"].get("structured_data", {}) == sd
    if moment.timestamp() * S - R <= SKEW:
        assert doc["@timestamp"] == moment.strftime("%Y-%m-%dT%H:%M:%S.") + (
            f"{moment.microsecond:06d}Z" if moment.microsecond % 1000 else f"{moment.microsecond // 1000:03d}Z"
        )


@FUZZ
@given(
    pri=st.integers(0, 191),
    moment=st.datetimes(datetime(2025, 1, 2), datetime(2025, 12, 30), timezones=st.just(UTC)),  # noqa: DTZ001
    host=PRINTUSASCII.filter(lambda h: not re.search(r"[:\[\]]", h)),
    tag=PRINTUSASCII.filter(lambda t: not re.search(r"[:\[\]]", t)),
    pid=st.none() | st.integers(1, 99999),
    message=st.text(max_size=30).filter(lambda m: m[:1] != " "),
)
def test_rfc3164_messages_come_back_as_written(
    pri: int, moment: datetime, host: str, tag: str, pid: int | None, message: str
) -> None:
    stamp = f"{moment:%b} {moment.day:2d} {moment:%H:%M:%S}"
    line = f"<{pri}>{stamp} {host} {tag}{'' if pid is None else f'[{pid}]'}: {message}"
    # Received in the same year (2025), within a day: the year is inferred from the receive time.
    received = int(moment.timestamp()) * S
    event = parse(make_parser("syslog", syslog=True), line, received=received, source="syslog:udp:10.0.0.1")
    check_document(event, line)
    doc: dict[str, Any] = event.doc
    assert "tags" not in doc, doc
    assert (doc["host"]["name"], doc["service"]["name"], doc["message"]) == (host, tag, message)
    assert doc["@timestamp"] == moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert doc.get("process", {}).get("pid") == pid


# ------------------------------------------------------------------------------------------- access logs


@FUZZ
@given(
    address=st.ip_addresses().map(str),
    user=PRINTUSASCII,
    moment=MOMENTS,
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    path=PRINTUSASCII.map(lambda p: "/" + p.replace('"', "%22").replace("\\", "%5C")),
    status=st.integers(100, 599),
    size=st.integers(0, 10**12),
    referrer=st.text(max_size=12),
    agent=st.text(max_size=12),
)
def test_combined_access_lines_come_back_as_written(
    address: str,
    user: str,
    moment: datetime,
    method: str,
    path: str,
    status: int,
    size: int,
    referrer: str,
    agent: str,
) -> None:
    def quoted(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)[1:-1]  # nginx's escape=json

    stamp = f"{moment:%d/%b/%Y:%H:%M:%S} +0000"
    line = (
        f'{address} - {user} [{stamp}] "{method} {path} HTTP/1.1" {status} {size} "{quoted(referrer)}" '
        f'"{quoted(agent)}"'
    )
    event = parse(make_parser("combined"), line, received=int(moment.timestamp()) * S)
    check_document(event, line)
    doc: dict[str, Any] = event.doc
    assert "tags" not in doc, doc
    assert doc["source"] == {"address": address}
    assert doc["url"] == {"original": path}
    assert doc["http"]["response"] == {"status_code": status, "body": {"bytes": size}}
    assert doc["http"]["request"].get("referrer") == (referrer if referrer not in ("", "-") else None)
    assert doc.get("user_agent", {}).get("original") == (agent if agent not in ("", "-") else None)
    assert doc["@timestamp"] == moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert event.level == ("error" if status >= 500 else "warn" if status >= 400 else "info")


def test_an_integer_past_the_64_bit_range_stays_exact_as_text() -> None:
    """Found by the property above: orjson read -9223372036854775809 as a float, and 2**63 as an integer that
    Elasticsearch's long cannot hold; such lines go through the standard library's scanner. Neither JSON
    encoders nor Elasticsearch's long take them as numbers: their digits are kept as text, and the integers at
    the range's ends stay numbers."""
    obj = {"big": -9_223_372_036_854_775_809, "huge": 10**30, "deep": {"list": [1.5, {"id": 2**64}]}}
    # (orjson reads these two as integers, exactly: Elasticsearch's long still cannot hold them)
    unsigned = {"": 2**63, "u64": 2**64 - 1}
    edges = {"low": -(2**63), "high": 2**63 - 1}
    event = parse(make_parser("json"), json.dumps(obj | unsigned | edges))
    assert event.doc.get("fields") == {
        "big": "-9223372036854775809",
        "huge": "1" + "0" * 30,
        "deep": {"list": [1.5, {"id": "18446744073709551616"}]},
        "": "9223372036854775808",
        "u64": "18446744073709551615",
        **edges,
    }


def test_a_large_float_written_as_one_stays_a_float() -> None:
    event = parse(make_parser("json"), '{"message": "m", "ratio": 1e300, "nested": [-2.5e19]}')
    assert event.doc.get("fields") == {"ratio": 1e300, "nested": [-2.5e19]}
