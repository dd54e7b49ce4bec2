"""The record model that flows from collector to sink.

A ``Reading`` is one numeric sample of one series. Its ``series`` is the series key in InfluxDB line-protocol
form, ``<measurement>,<tag>=<value>,...`` with the tags sorted and escaped and ``metric`` among them, so the
key is also the prefix of the line that stores it: the sink never re-escapes tags on the hot path.

A ``DeadLetter`` is input that could not become a record: it keeps the reason, where it came from and the raw
bytes, so nothing bad vanishes.

Both are named tuples: the hot path creates one per message, and a tuple is the cheapest object that still
has names.
"""

from __future__ import annotations

import base64
import json
import re
from typing import NamedTuple

# tuple.__new__, for making the named tuples below (Reading, and Aggregate and Observation in flows) in the per-reading
# hot path: new_tuple(Reading, (measurement, series, value, ts_ns)). Calling a NamedTuple class runs its generated
# __new__, a frame of interpreted Python for each record, even from the modules compiled with mypyc (BENCHMARKS.md
# run AL).
new_tuple = tuple.__new__


class Reading(NamedTuple):
    measurement: str
    # "<measurement>,device=d1,metric=temperature,site=s1": tags sorted, line-protocol escaped.
    series: str
    value: float
    # Event time, nanoseconds since the Unix epoch (UTC).
    ts_ns: int


class DeadLetter(NamedTuple):
    # Short machine-readable reason, e.g. "oversized", "not_a_number", "timestamp_out_of_range".
    reason: str
    # Where it came from: "mqtt:<topic>", "influxdb:<measurement>", "file:<path>".
    source: str
    raw: bytes
    received_ns: int
    # Human-readable detail (the parser's message, the server's answer).
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "reason": self.reason,
                "source": self.source,
                "received_ns": self.received_ns,
                "detail": self.detail,
                # The raw bytes exactly, and a readable preview for people.
                "raw_base64": base64.b64encode(self.raw).decode("ascii"),
                "raw_preview": self.raw[:512].decode("utf-8", errors="replace"),
            },
            ensure_ascii=False,
        )


# Line protocol has no escape for a line break: one in a name would end the line and make the server refuse
# the whole batch. It is written as the two characters backslash and n, which the server keeps as they are (as
# Telegraf writes it; a name holding those two characters reads the same).
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r"})


# InfluxDB 1.x and 2.x read a backslash as an escape only before a character that is escaped (a comma, an equals
# sign or a space in a tag; a comma or a space in a measurement) and store every other backslash as it is:
# C:\temp\new is written as it is, and stored so (doubling its backslashes stored C:\temp\\new). Only a run of
# backslashes before an escaped character is doubled, or its last backslash would escape that character's own.
# At the end of a name a backslash cannot be written at all: it escapes the separator after it, and doubled it
# still does in InfluxDB 1.x (which refuses such a tag, and takes the tags after such a measurement as part of
# its name). It is left out there, as Telegraf leaves it out.
_TAG_BACKSLASHES = re.compile(r"\\+(?=[,= ])")
_MEASUREMENT_BACKSLASHES = re.compile(r"\\+(?=[, ])")
_DOUBLED = r"\g<0>\g<0>"


def escape_tag(text: str) -> str:
    r"""Escape a tag key or value for line protocol.

    >>> print(escape_tag("a b,c=d"), escape_tag("C:\\dir\\"), escape_tag("C:\\temp\\new"), escape_tag("a\\,b"))
    a\ b\,c\=d C:\dir C:\temp\new a\\\,b
    """
    if "\\" in text:
        text = _TAG_BACKSLASHES.sub(_DOUBLED, text.rstrip("\\"))
    return text.translate(_TAG_ESCAPES)


def escape_measurement(text: str) -> str:
    if "\\" in text:
        text = _MEASUREMENT_BACKSLASHES.sub(_DOUBLED, text.rstrip("\\"))
    return text.translate(_MEASUREMENT_ESCAPES)


def series_key(measurement: str, tags: dict[str, str]) -> str:
    """The canonical series key: escaped measurement, then tags sorted by key; empty keys and values are
    dropped because line protocol cannot carry them (also when they were only trailing backslashes), and so is
    a key that reads as an earlier one once its trailing backslashes are left out (the first in sorted order
    stays).

    >>> series_key("readings", {"site": "s 1", "device": "d1", "metric": "temp"})
    'readings,device=d1,metric=temp,site=s\\\\ 1'
    """
    parts = [escape_measurement(measurement)]
    used: set[str] = set()
    for key in sorted(tags):
        name, value = escape_tag(key), escape_tag(tags[key])
        if name and value and name not in used:
            parts.append(f"{name}={value}")
            used.add(name)
    return ",".join(parts)


# What a backslash escapes in a series key's measurement, and in its tag keys and values (see escape_tag).
_ESCAPED_IN_MEASUREMENT = ", "
_ESCAPED_IN_TAG = ",= "


def parse_series(series: str) -> tuple[str, dict[str, str]]:
    """Split a series key back into measurement and tags (alerts and tests need the tags)."""
    if "\\" not in series:
        # Most keys escape nothing: split them whole. The alerts match every new series of a fleet by its tags,
        # 100,000 at a window boundary, and the loop below takes 6 us a key.
        measurement, *pairs = series.split(",")
        tags: dict[str, str] = {}
        for pair in pairs:
            key, equals, value = pair.partition("=")
            if not equals:
                break  # not a key of series_key's making: the loop below reads it as it always has
            tags[key] = value
        else:
            return measurement, tags
    parts: list[list[str]] = [[]]  # measurement, then alternating tag keys and values
    at, end = 0, len(series)
    while at < end:
        ch = series[at]
        if ch == "\\":
            after = at + 1
            while after < end and series[after] == "\\":
                after += 1
            run = after - at
            escaped = _ESCAPED_IN_MEASUREMENT if len(parts) == 1 else _ESCAPED_IN_TAG
            if after < end and series[after] in escaped:
                # escape_tag doubled the run and escaped the character: half the run is the name's own.
                parts[-1].append("\\" * (run // 2))
                if run % 2:
                    parts[-1].append(series[after])
                    after += 1
            else:
                parts[-1].append("\\" * run)  # backslashes before anything else are themselves
            at = after
            continue
        if ch == "," or (ch == "=" and len(parts) % 2 == 0):
            parts.append([])
        else:
            parts[-1].append(ch)
        at += 1
    words = ["".join(p) for p in parts]
    return words[0], dict(zip(words[1::2], words[2::2], strict=True))


class LogLine(NamedTuple):
    """One log event as a collector read it, before parsing: a line, a grouped multiline event, or one
    syslog message."""

    # Decoded text (invalid UTF-8 replaced), multiline events joined with "\n", at most max_event_bytes.
    text: str
    # The configured input it came from ([[logs.files]] or [[logs.syslog]] name): selects the parser.
    input_name: str
    # "file:<path>" or "syslog:<udp|tcp>:<peer address>".
    source: str
    # Deterministic document id: the same event read again (a replay after restart) gets the same id.
    doc_id: str
    received_ns: int
    # "truncated", "invalid_utf8", "multiline".
    flags: tuple[str, ...] = ()


class LogEvent(NamedTuple):
    """A parsed log event: an Elastic Common Schema document plus the fields the log-rate windows need."""

    doc_id: str
    # Event time (the parsed timestamp, else the receive time), nanoseconds since the Unix epoch (UTC).
    ts_ns: int
    # Normalised: trace, debug, info, notice, warn, error, critical, alert, emergency ("" if unknown).
    level: str
    service: str
    # The ECS document as indexed: "@timestamp", "message", "log.level", "service.name", ...
    doc: dict[str, object]
    # False when ts_ns is the receive time because the line had no usable timestamp of its own (none, invalid,
    # too far ahead, a parse failure): the log-rate windows then count it where its service's clock stands.
    own_time: bool = True


class LogRate(NamedTuple):
    """Log events of one service in one event-time window, by normalised level."""

    service: str
    window_start_ns: int
    window_ns: int
    # Level -> events; "" counts events without a recognised level.
    by_level: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_level.values())

    @property
    def errors(self) -> int:
        """error and worse."""
        return sum(self.by_level.get(level, 0) for level in ("error", "critical", "alert", "emergency"))


class AlertTransition(NamedTuple):
    """A change of state of one alert rule on one series (or a re-notification while firing)."""

    rule: str
    # The series the rule watched: a readings series key, or "log_rates,service=<name>" for log rates.
    series: str
    tags: dict[str, str]
    # "pending", "firing" or "resolved" (the state entered); "ok" is where a cancelled pending goes.
    state: str
    # "warning" or "critical" while pending/firing; the severity that was firing when resolved.
    severity: str
    # The value that caused the transition, and the threshold it was compared with.
    value: float
    threshold: float | None
    # Event time (ns) the current episode started (condition first true), and of this transition.
    started_ns: int
    at_ns: int
    summary: str
    # Deterministic: rule, series, state, severity and times. Notifiers skip ids already sent, so a replay
    # after a restart does not notify twice.
    notification_id: str
    renotify: bool = False
