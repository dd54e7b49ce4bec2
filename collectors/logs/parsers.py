"""Log lines to Elastic Common Schema (ECS) documents, one ``LogParser`` per input.

Parser kinds (``ParserConfig.kind``): ``none`` (the line is the message), ``json`` (one object per line),
``logfmt``, ``regex`` (named groups), ``common``/``combined`` (Apache/nginx access logs), ``syslog``
(RFC 5424 and RFC 3164, detected per line, with or without ``<PRI>`` so syslog files parse too), ``cri``
(Kubernetes container logs) and ``docker`` (Docker's json-file driver); for these two the file tail joins the
partial records of a line first.

The document uses nested ECS objects::

    {"@timestamp": "2026-01-01T00:00:00.000Z", "message": "...",
     "log": {"level": "info", "file": {"path": "/var/log/app.log"}},
     "service": {"name": "api"}, "host": {"name": "gw-1"}, "event": {"dataset": "api.log"},
     "tags": ["multiline"], "fields": {"user": "bob"}}

Decisions, and why:

- **Never raises.** A line that cannot be parsed is still stored: message = the raw line, tag
  ``parse_failure``, ``error.message`` says why; service, dataset and host are set as usual.
- **Deterministic.** The same line gives the same document, so a replay after a restart overwrites instead
  of duplicating. No receive-time field is written, except ``@timestamp`` itself when the line has no usable
  timestamp (then it is the receive time), and the year of an RFC 3164 timestamp, which is inferred from it.
- **Timestamps** become UTC: RFC 3339/ISO 8601 (no zone: ``parser.timezone``), epoch s/ms/us/ns numbers
  (unit guessed by magnitude), Go's ``2026/12/05 10:00:00`` and C's ``Thu Jan  1 00:00:00 2026`` (no zone:
  ``parser.timezone``), RFC 2822 ``Thu, 01 Jan 2026 00:00:00 GMT``,
  ``parser.timestamp_format`` (strptime, tried first when set), access-log
  ``10/Oct/2000:13:55:36 -0700`` and RFC 3164 ``Oct 11 22:14:15`` (year: the receive year in the
  timezone; the previous year if that is more than a day ahead, the next one for a January stamp received
  in late December). A zone abbreviation (``%Z`` in the format, or a word after an ISO 8601 time, as in
  PostgreSQL's ``2026-12-05 10:00:00.123 UTC``) is read as Go's ``time.Parse`` reads it:
  UTC/GMT/Z, or an abbreviation of ``parser.timezone`` (CET and CEST for Europe/Berlin) with the offset it
  has there; any other is refused (``strptime`` itself takes only UTC and GMT, and drops even those).
  Unparseable: receive time, tag ``timestamp_invalid``; more than ``max_future_skew``
  ahead: receive time, tag ``timestamp_future``. In both cases the original value is kept as
  ``fields.<timestamp_field>`` (``fields.timestamp`` for syslog and access logs). ``@timestamp`` has
  millisecond precision, microsecond when the time has sub-millisecond digits.
- **Levels** are normalised by ``normalize_level``; ``log.level`` holds the normalised level. An unknown
  level leaves ``LogEvent.level`` empty (so the rate windows count it apart) and ``log.level`` holds the
  original, lower-cased, so nothing is lost.
- **Mapped fields** (json, logfmt, regex): ``parser.timestamp_field``, ``parser.level_field``,
  ``parser.message_field``, ``service``/``service.name`` and ``host``/``host.name`` (or the keys
  ``parser.service_field`` and ``parser.host_field`` name). A dotted name also finds a nested key. Every other
  key goes under ``fields`` as parsed (JSON types kept, nothing flattened). No message field: the raw line.
- **service.name**: the parsed service (syslog: the app-name/tag), else the input's ``service``, else the
  input's name. **event.dataset**: the input's ``dataset``, else ``<input service or name>.log``; it is
  fixed per input, so the number of datasets is bounded by the configuration, not by what lines say.
- **host.name**: the parsed host (syslog: HOSTNAME), else for syslog the peer address, else ``host_name``.
- **Syslog**: PRI gives ``log.syslog.priority``, ``log.syslog.facility.code/name`` and
  ``log.syslog.severity.code/name`` and the level; app-name/tag is ``process.name``, a numeric procid/pid
  ``process.pid`` (otherwise ``fields.procid``), MSGID ``log.syslog.msgid`` (ECS 8.7+), the version
  ``log.syslog.version``; structured data is kept as ``log.syslog.structured_data`` = ``{sd_id: {param:
  value}}`` (ECS's field; a param given twice becomes a list).
- **regex** uses ``re.search``: a pattern anchored with ``^`` fails fast on lines that do not match, an
  unanchored one is tried at every position.
- **Hot path.** Every pattern is compiled and every constant computed in ``__init__``; the last timestamp
  text and the formatted second are cached, since consecutive lines mostly share them.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email.utils import parsedate_to_datetime
from typing import Any, get_args
from zoneinfo import ZoneInfo

import orjson

from fleetwatch.config import FileInputConfig, LogLevelName, SyslogInputConfig
from fleetwatch.record import LogEvent, LogLine
from fleetwatch.times import from_iso, wall_time

_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# datetime's range, years 1 to 9999: what ECS dates (and @timestamp formatting) can hold.
_MIN_NS = -62_135_596_800 * _NS
_MAX_NS = 253_402_300_799 * _NS

# ------------------------------------------------------------------------------------------- levels

LEVELS: tuple[str, ...] = get_args(LogLevelName)

# Besides the usual names: .NET's console logger abbreviations (trce, dbug, fail, crit), Serilog's (vrb),
# Apache's trace1-8, PostgreSQL's debug1-5, Java's finest/finer/fine/severe, zap's dpanic (a panic in
# development builds only), MySQL's note and system (MySQL 8's start and stop messages), structlog's exception.
_ALIASES: dict[str, tuple[str, ...]] = {
    "trace": ("trace", "trc", "trce", "vrb", "verbose", "v", "finest", "finer", *(f"trace{n}" for n in range(1, 9))),
    "debug": ("debug", "dbg", "dbug", "d", "fine", "debug1", "debug2", "debug3", "debug4", "debug5"),
    "info": ("info", "inf", "i", "information", "informational", "log", "system"),
    "notice": ("notice", "ntc", "n", "note"),
    "warn": ("warn", "warning", "wrn", "w"),
    "error": ("error", "err", "eror", "e", "severe", "fail", "exception"),
    "critical": ("critical", "crit", "crt", "fatal", "ftl", "f", "dpanic"),
    "alert": ("alert", "alrt", "a"),
    "emergency": ("emergency", "emerg", "panic"),
}
# Syslog severities 0-7, then bunyan/pino levels.
_LEVEL_NUMBERS: dict[int, str] = {
    0: "emergency",
    1: "alert",
    2: "critical",
    3: "error",
    4: "warn",
    5: "notice",
    6: "info",
    7: "debug",
    10: "trace",
    20: "debug",
    30: "info",
    40: "warn",
    50: "error",
    60: "critical",
}
_LEVEL_NAMES: dict[str, str] = {}
_LEVEL_OFFSET = re.compile(r"([A-Za-z]+)[+-]\d+")
for _level, _names in _ALIASES.items():
    for _name in _names:
        # The usual spellings hit on the first lookup; anything else is stripped and lower-cased first.
        for _spelling in (_name, _name.upper(), _name.capitalize()):
            _LEVEL_NAMES[_spelling] = _level
for _number, _level in _LEVEL_NUMBERS.items():
    _LEVEL_NAMES[str(_number)] = _level


def normalize_level(value: object) -> str:
    """One of ``LEVELS``, or "" when the value is not a known level.

    Case-insensitive names and aliases (``WARNING``, ``W``, ``err``, ``fatal``, ``panic``, ...), syslog
    severities 0-7 and bunyan/pino numbers 10-60, as numbers or digit strings.

    >>> normalize_level("WARNING"), normalize_level(4), normalize_level("30"), normalize_level("loud")
    ('warn', 'warn', 'info', '')
    """
    if type(value) is str:
        level = _LEVEL_NAMES.get(value)
        if level is None:
            level = _LEVEL_NAMES.get(value.strip().lower(), "")
            if not level and (offset := _LEVEL_OFFSET.fullmatch(value.strip())) is not None:
                level = _LEVEL_NAMES.get(offset[1].lower(), "")  # Go slog's levels between levels: "INFO+2"
        return level
    if type(value) is int:  # not bool: True is no level
        return _LEVEL_NUMBERS.get(value, "")
    if type(value) is float and value.is_integer():
        return _LEVEL_NUMBERS.get(int(value), "")
    return ""


# ------------------------------------------------------------------------------------------- syslog tables

_FACILITIES = (
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    *(f"local{i}" for i in range(8)),
)
# RFC 5424 names, capitalised as ECS's example ("Error").
_SEVERITIES = ("Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug")
_SEVERITY_LEVELS = ("emergency", "alert", "critical", "error", "warn", "notice", "info", "debug")

_MONTH_ALT = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_MONTHS = {m: i for i, m in enumerate(_MONTH_ALT.split("|"), 1)}

# RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]. An SD element is
# "[" up to the "]" that is not inside a quoted value.
_RFC5424 = re.compile(
    r'<(\d{1,3})>(\d{1,2}) (\S+) (\S+) (\S+) (\S+) (\S+) (-|(?:\[(?:[^\]"]|"(?:[^"\\]|\\.)*")*\])+)(?: (.*))?\Z',
    re.DOTALL,
)
# Tokens of a scan of STRUCTURED-DATA from left to right, each matched at one position and never backtracked
# into: linear in the line. (A findall of whole elements tried every "[" inside values as an element's start,
# and a 3 KB line took 47 s.)
_SD_ID = re.compile(r'[^\s\]"=]*')
_SD_PARAM = re.compile(r'([^\s="\]]+)="((?:[^"\\]|\\.)*+)"', re.DOTALL)
_SD_SPACES = re.compile(r"\s*")
_SD_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*+"?', re.DOTALL)
_SD_OTHER = re.compile(r'[^\s\]"]+')
_SD_UNESCAPE = re.compile(r"\\([\"\\\]])")
# RFC 5424 names are at most 32 characters; longer ones are cut here. Elasticsearch indexes a flattened field as
# "<names>\0<value>" terms, and refuses a document whose term passes 32,766 bytes (the values are bounded by
# the mapping's ignore_above).
_SD_NAME_MAX = 255
# RFC 3164 as real senders write it: optional <PRI>; "Mmm dd hh:mm:ss" (day space-padded, optional year
# and fraction) or an RFC 3339 stamp (rsyslog's file format); optional HOSTNAME; TAG[PID]: MSG.
_BSD_TS = (
    rf"((?:({_MONTH_ALT}) +(\d{{1,2}}) (?:(\d{{4}}) )?(\d\d):(\d\d):(\d\d)(?:\.(\d{{1,6}}))?"
    r"|(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|z|[+-]\d\d:?\d\d)?)))"
)
_RFC3164 = re.compile(
    rf"(?:<(\d{{1,3}})>)?{_BSD_TS} (?:([^\s:\[\]]+) )?([^\s:\[\]]+)(?:\[([^\]]*)\])?: ?(.*)\Z",
    re.DOTALL,
)
# Header without a tag: the rest is the message.
_RFC3164_NO_TAG = re.compile(rf"(?:<(\d{{1,3}})>)?{_BSD_TS} (\S+) ?(.*)\Z", re.DOTALL)
_PRI_ONLY = re.compile(r"<(\d{1,3})>(.*)\Z", re.DOTALL)
_RFC5424_START = re.compile(r"<\d{1,3}>1 ")
_BSD_TS_ALONE = re.compile(_BSD_TS + r"\Z")

# ------------------------------------------------------------------------------------------- other kinds

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_COMMON = re.compile(rf"(\S+) (\S+) (\S+) \[([^\]]+)\] {_QUOTED} (\d{{3}}|-) (\d+|-)")
# The referrer and user agent are optional, as in Fluent Bit's apache2 parser: one server's vhosts may log in
# Common Log Format beside Combined ones.
_COMBINED = re.compile(rf"(\S+) (\S+) (\S+) \[([^\]]+)\] {_QUOTED} (\d{{3}}|-) (\d+|-)(?: {_QUOTED} {_QUOTED})?")
# Kubernetes' container runtimes: "<RFC 3339 time> <stream> <tags> <content>", tags "P" or "F" (":"-separated).
_CRI_RECORD = re.compile(r"(\S+) (stdout|stderr) [^ ]+(?: (.*))?\Z", re.DOTALL)
_CLF_TS = re.compile(r"(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")

# logfmt: key, key=value, key="quoted \" value"; the whole line must be such tokens.
_LOGFMT_TOKEN = r'[^\s="]+(?:=(?:"(?:[^"\\]|\\.)*"|[^\s"]*))?'
_LOGFMT_LINE = re.compile(rf"\s*(?:{_LOGFMT_TOKEN}(?:\s+|\Z))+")
_LOGFMT_PAIR = re.compile(r'([^\s="]+)(?:(=)("(?:[^"\\]|\\.)*"|[^\s"]*))?')

_EPOCH_TEXT = re.compile(r"-?(\d+)(?:\.(\d+))?\Z")
# RFC 3339 / ISO 8601 to the second, fraction, zone: the common case, read without datetime.fromisoformat.
_ISO_SECOND = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:\d\d|)\Z")

# The JSON scanner without json.loads's wrapper; a line is one object, checked by hand.
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_loads = orjson.loads
# orjson reads an integer outside the 64-bit range as a float, silently; every such float is at least this
# large (2**63 is 9.22e18), so a float below it came from a number written as one.
_ORJSON_INT_AS_FLOAT = 9.2e18
# Elasticsearch's long (what a JSON integer is mapped as) ends before this.
_LONG_END = 1 << 63
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


def _dt_ns(moment: datetime) -> int:
    """An aware datetime to ns since the epoch, exactly (``timestamp()`` is a float)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1_000


# A zone abbreviation in a timestamp (strptime's %Z): a word of letters, and the names that mean UTC.
_ZONE_WORD = re.compile(r"(?<![A-Za-z])[A-Za-z]{1,6}(?![A-Za-z])")
_UTC_NAMES = frozenset({"UTC", "GMT", "Z", "UT", "UCT"})
# C's asctime/ctime (and Apache's error log, with microseconds): "Thu Jan  1 00:00:00 2026".
_CTIME = re.compile(r"[A-Z][a-z]{2} ([A-Z][a-z]{2}) ([ \d]?\d) (\d\d):(\d\d):(\d\d)(?:\.(\d+))? (\d{4})\Z")
# RFC 2822 / HTTP dates: "Thu, 01 Jan 2026 00:00:00 GMT", "1 Jan 2026 00:00:00 +0100"; the zone an offset or a
# name RFC 822 defines (any other is no zone it knows, and parsedate would read it as UTC).
_RFC2822 = re.compile(
    r"(?:[A-Z][a-z]{2}, )?\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d(?::\d\d)? (?:[+-]\d{4}|UTC?|GMT|Z|[ECMP][SD]T)\Z"
)


def _rfc2822_ns(text: str) -> int | None:
    """An RFC 2822 date (``_RFC2822``); "-0000", an unknown offset by the RFC, is read as UTC."""
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return _dt_ns(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


# A date written with slashes, then a time: "2026/12/05 10:00:00" (Go's log package).
_SLASHED_DATE = re.compile(r"\d{4}/\d\d/\d\d[ T]\d\d:\d\d")
# An ISO 8601 time followed by a zone word, as PostgreSQL's %m and Rails write it: "2026-12-05 10:00:00.123 UTC".
_ISO_ZONE_WORD = re.compile(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?) ([A-Za-z]{1,6})\Z")
# Java's ZonedDateTime and RFC 9557: an ISO 8601 time followed by its zone's name in brackets,
# "2026-12-07T18:00:00.123+01:00[Europe/Berlin]" (the offset rules; without one, the named zone does).
_BRACKETED_ZONE = re.compile(r"(\d{4}-\d\d-\d\d[T ][^\[\]]+)\[([A-Za-z0-9_+\-/]{1,64})\]\Z")


def _bracketed_zone_ns(moment_text: str, zone_name: str) -> int | None:
    try:
        moment = from_iso(moment_text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC if zone_name in ("UTC", "Z") else ZoneInfo(zone_name))
    except (ValueError, KeyError, OSError):  # (ZoneInfoNotFoundError is a KeyError; "Europe" a directory)
        return None
    return _dt_ns(moment)


# The same with a numeric offset after the space: PostgreSQL's %m writes a zone without an abbreviation so
# ("2026-12-07 15:30:09.000 -03" in America/Sao_Paulo, "+0545" in Asia/Kathmandu).
_ISO_SPACED_OFFSET = re.compile(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?) ([+-]\d\d)(?::?(\d\d))?\Z")


def _zone_named(name: str, naive: datetime, tz: ZoneInfo | None) -> tzinfo | None:
    """The offset a zone abbreviation has at ``naive`` in ``tz`` (None: UTC): UTC's names, or an abbreviation of
    ``tz`` itself, which also tells the two readings of a wall time that a clock change repeats apart.

    >>> berlin, repeated = ZoneInfo("Europe/Berlin"), datetime(2026, 10, 25, 2, 30)
    >>> _zone_named("CEST", repeated, berlin), _zone_named("CET", repeated, berlin)
    (datetime.timezone(datetime.timedelta(seconds=7200)), datetime.timezone(datetime.timedelta(seconds=3600)))
    >>> _zone_named("gmt", datetime(2026, 1, 1), berlin), _zone_named("EST", datetime(2026, 1, 1), berlin)
    (datetime.timezone.utc, None)
    """
    upper = name.upper()
    if upper in _UTC_NAMES:
        return UTC
    if tz is None:
        return None
    for fold in (0, 1):
        aware = naive.replace(tzinfo=tz, fold=fold)
        if (aware.tzname() or "").upper() == upper:
            return timezone(aware.utcoffset() or timedelta(0))
    # The zone's other season named ("CEST" on a January date): the offset that name has there, as Go reads it.
    for month in (1, 7):
        probe = datetime(naive.year, month, 1, tzinfo=tz)
        if (probe.tzname() or "").upper() == upper:
            return timezone(probe.utcoffset() or timedelta(0))
    return None


def _strptime_zone_named(text: str, offset_format: str, tz: ZoneInfo | None) -> datetime | None:
    """``text`` read with a format whose ``%Z`` was made ``%z`` (``offset_format``): the zone word is found by
    trying the words of ``text`` from the end, each in turn replaced by an offset strptime accepts."""
    words = list(_ZONE_WORD.finditer(text))
    for word in reversed(words):
        try:
            # (the format has %z in the place of %Z: the stand-in offset is replaced below)
            naive = datetime.strptime(text[: word.start()] + "+0000" + text[word.end() :], offset_format)  # noqa: DTZ007
        except ValueError:
            continue
        zone = _zone_named(word[0], naive.replace(tzinfo=None), tz)
        return None if zone is None else naive.replace(tzinfo=zone)
    return None


def _epoch_ns(value: float) -> int | None:
    """Epoch number to ns, unit by magnitude: seconds until year 5138, then ms, us, ns."""
    magnitude = abs(value)  # compared to floats exactly, even for ints too large to be floats
    scale = _NS if magnitude < 1e11 else 1_000_000 if magnitude < 1e14 else 1_000 if magnitude < 1e17 else 1
    if type(value) is int:
        return value * scale
    if not math.isfinite(value):
        return None
    # Whole and fraction apart: 1767225600.25 * 1e9 as one float product is off by 128 ns.
    whole = int(value)
    return whole * scale + round((value - whole) * scale)


def _unescape_quoted(inner: str) -> str:
    """A logfmt or access-log quoted value without its quotes: JSON-style escapes (Go's strconv.Quote,
    Apache's ``\\"``)."""
    if "\\" not in inner:
        return inner
    try:
        text = json.loads(f'"{inner}"')
        if type(text) is str:
            return text
    except ValueError:
        pass
    return inner.replace('\\"', '"').replace("\\\\", "\\")


class _Unparseable(Exception):
    """The line is not of the input's kind; the message is the reason stored in ``error.message``."""


_MISSING = object()
# Distinct service and host names whose {"name": ...} objects a parser shares; beyond that, one per document.
_SHARED_NAMES = 10_000

# What a kind's parse method returns to ``_finish``: ts_ns (None: missing or invalid), the raw timestamp
# (None: there was none), the raw level (None: none), message, service, host, ECS objects to add, fields.
_Parsed = tuple[int | None, object, object, str, str | None, str | None, dict[str, Any] | None, dict[str, Any]]


def _holds_huge_number(value: dict[str, Any] | list[Any]) -> bool:
    """A float of magnitude 2**63 or more anywhere in a decoded JSON value (perhaps an integer orjson could not
    hold), or an integer past Elasticsearch's long (orjson reads integers up to 2**64 - 1 exactly)."""
    items: Iterable[Any] = value.values() if type(value) is dict else value
    for item in items:
        kind = type(item)
        if kind is float:
            if not -_ORJSON_INT_AS_FLOAT < item < _ORJSON_INT_AS_FLOAT:
                return True
        elif kind is int:
            if item >= _LONG_END:
                return True
        elif (kind is dict or kind is list) and _holds_huge_number(item):
            return True
    return False


def _storable(value: Any) -> Any:
    """A value the standard library's JSON scanner read, as Elasticsearch can store it: NaN, infinities and
    integers past 64 bits as their text (JSON has no NaN; Elasticsearch's long ends at 2**63), lone surrogates
    ("\\ud800", which UTF-8 cannot encode) replaced. One such value in a line must not cost the whole event."""
    kind = type(value)
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if kind is float:
        return value if math.isfinite(value) else "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    if kind is int:
        return value if -_LONG_END <= value < _LONG_END else str(value)
    if kind is dict:
        return {_storable(k): _storable(v) for k, v in value.items()}
    if kind is list:
        return [_storable(v) for v in value]
    return value


class LogParser:
    """Parses the lines of one input. Build one per input and keep it: ``__init__`` does the expensive part.

    ``host_name`` is the ``host.name`` of events that do not carry one; ``max_future_skew_ns`` is how far
    ahead of the receive time an event time may be before the receive time replaces it.
    """

    def __init__(self, input_cfg: FileInputConfig | SyslogInputConfig, host_name: str, max_future_skew_ns: int) -> None:
        parser = input_cfg.parser
        self.kind = parser.kind
        self.input_name = input_cfg.name
        self._service = input_cfg.service or input_cfg.name
        self._dataset = input_cfg.dataset or f"{self._service}.log"
        self._host = host_name
        self._skew = max_future_skew_ns
        self._tz: ZoneInfo | None = None if parser.timezone in ("UTC", "Etc/UTC") else ZoneInfo(parser.timezone)
        ts_format = self._ts_format = parser.time_format
        # A format naming the zone by abbreviation (%Z) is read with an offset in its place (_strptime_zone_named).
        self._zone_format = (
            ts_format.replace("%Z", "%z") if ts_format and "%Z" in ts_format and "%z" not in ts_format else None
        )
        # A format without a year (Android logcat's "%m-%d %H:%M:%S.%f", syslog-like "%b %d %H:%M:%S") is read
        # in a leap year (so that Feb 29 parses), then placed in a year by the RFC 3164 rule (_yearless_ns).
        self._yearless = ts_format is not None and not any(
            directive in ts_format for directive in ("%Y", "%y", "%G", "%c", "%x")
        )
        self._ts_field = parser.timestamp_field
        self._level_field = parser.level_field
        self._default_level = parser.default_level
        self._msg_field = parser.message_field
        self._service_field = parser.service_field
        self._host_field = parser.host_field
        self._pattern = re.compile(parser.regex) if parser.kind == "regex" and parser.regex else None
        # With multiline, an event is several lines (a stack trace).
        self._multiline = getattr(input_cfg, "multiline", None) is not None
        # Where a rejected timestamp is kept under "fields".
        self._ts_key = (
            "timestamp"
            if parser.kind in ("syslog", "common", "combined", "cri")
            else "time"
            if parser.kind == "docker"
            else parser.timestamp_field
        )
        # json and logfmt (and the lines inside cri/docker records): a *_field left at its default also finds
        # the keys the usual loggers write instead (_FALLBACK_KEYS), so that zero configuration reads logrus,
        # zap, pino, bunyan, slog, ECS, Serilog and Google Cloud lines. A key set in the config is the only one,
        # and a regex names its own groups.
        chosen = (
            parser.model_fields_set if parser.kind != "regex" else {"timestamp_field", "level_field", "message_field"}
        )
        self._ts_fallbacks = () if "timestamp_field" in chosen else _FALLBACK_KEYS["timestamp"]
        self._level_fallbacks = () if "level_field" in chosen else _FALLBACK_KEYS["level"]
        self._msg_fallbacks = () if "message_field" in chosen else _FALLBACK_KEYS["message"]
        # Where this line's timestamp was found (a fallback key, or timestamp_field); json and logfmt keep an
        # unreadable one there (_ts_key), the lines inside container records too (_container_line).
        self._ts_found = parser.timestamp_field
        self._own_ts_key = parser.kind in ("json", "logfmt")
        kinds: dict[str, Callable[[str, int], _Parsed]] = {
            "none": self._parse_none,
            "json": self._parse_json,
            "logfmt": self._parse_logfmt,
            "regex": self._parse_regex,
            "common": self._parse_access,
            "combined": self._parse_access,
            "syslog": self._parse_syslog,
            "cri": self._parse_cri,
            "docker": self._parse_docker,
        }
        # cri and docker: the kind that reads the application's line inside the runtime's record.
        inner_kinds: dict[str, Callable[[str, int], _Parsed]] = {"json": self._parse_json, "logfmt": self._parse_logfmt}
        self._inner = inner_kinds.get(parser.message_format)
        self._parse_kind = kinds[parser.kind]
        self._access = _COMBINED if parser.kind == "combined" else _COMMON
        # One-entry caches: consecutive lines mostly share a timestamp text and a second.
        self._last_ts_text = ""
        self._last_ts_ns: int | None = None
        self._fmt_ns: int | None = None
        self._fmt_text = ""
        self._bsd_text = ""
        self._bsd_match: re.Match[str] | None = None
        self._fmt_sec: int | None = None
        self._fmt_prefix = ""
        self._fmt_day: int | None = None
        self._fmt_date = ""
        self._failures = 0
        self._last_source = ""
        self._last_file: dict[str, str] | None = None
        # Parts of the document that many documents have alike are shared between them (documents are
        # read, never changed, after parsing): {"name": ...} of services and hosts, event, log.file.
        self._names: dict[str, dict[str, str]] = {}
        self._event = {"dataset": self._dataset}
        # The last RFC 3339 timestamp whose text is already what "@timestamp" would be (UTC, milliseconds),
        # and its value: that text is used as it is.
        self._canonical_ts = ""
        self._canonical_ns: int | None = None
        self._last_host = self._default_host("")
        # The last RFC 3164 stamp without a year: (text, receive year) -> (ns in that year, in the year before).
        self._bsd_key: tuple[str, int] = ("", 0)
        self._bsd_cached: tuple[int | None, object] = (None, _MISSING)
        # The last RFC 3339 second and zone seen, and that second in ns (None: not a valid time).
        self._iso_second = ""
        self._iso_zone = ""
        self._iso_ns: int | None = None
        # The year containing the last receive time, in the parser's timezone: [start_ns, end_ns).
        self._year = (0, 0, 0)

    # -- entry point

    def parse(self, line: LogLine) -> LogEvent:
        """The line as an ECS document. Never raises: a line that fails is stored with ``parse_failure``."""
        try:
            parsed = self._parse_kind(line.text, line.received_ns)
        except _Unparseable as exc:
            return self._failure(line, str(exc))
        except Exception as exc:  # a bug must cost one line its fields, not stop the flow
            return self._failure(line, f"{type(exc).__name__}: {exc}"[:200])
        try:
            return self._finish(line, *parsed)
        except Exception as exc:
            return self._failure(line, f"{type(exc).__name__}: {exc}"[:200])

    def _finish(
        self,
        line: LogLine,
        ts_ns: int | None,
        ts_raw: object,
        level_raw: object,
        message: str,
        service: str | None,
        host: str | None,
        extra: dict[str, Any] | None,
        fields: dict[str, Any],
    ) -> LogEvent:
        tags = list(line.flags) if line.flags else None
        received = line.received_ns
        own_time = True
        if ts_ns is None or not _MIN_NS <= ts_ns <= _MAX_NS:
            ts_ns, own_time = received, False
            if ts_raw is not None:
                tags = [*tags, "timestamp_invalid"] if tags else ["timestamp_invalid"]
                fields[self._ts_key] = ts_raw
        elif ts_ns - received > self._skew:
            ts_ns, own_time = received, False
            tags = [*tags, "timestamp_future"] if tags else ["timestamp_future"]
            fields[self._ts_key] = ts_raw
        log: dict[str, Any] = {}
        level = ""
        if level_raw is not None and level_raw != "":
            level = (_LEVEL_NAMES.get(level_raw) if type(level_raw) is str else None) or normalize_level(level_raw)
            log["level"] = level or (level_raw if type(level_raw) is str else _dumps(level_raw)).strip().lower()
        elif self._default_level is not None:
            level = log["level"] = self._default_level
        source = line.source
        if source != self._last_source:
            self._last_source = source
            path = source[5:] if source.startswith("file:") else None
            self._last_file = None if path is None else {"path": path}
            self._last_host = self._default_host(source)
        if self._last_file is not None:
            log["file"] = self._last_file
        if extra is not None and "log" in extra:
            log.update(extra.pop("log"))
        service = service or self._service
        stamp = ts_raw if ts_raw is self._canonical_ts and ts_ns == self._canonical_ns else self._format_ts(ts_ns)
        doc: dict[str, Any] = {"@timestamp": stamp, "message": message}
        if log:
            doc["log"] = log
        doc["service"] = self._name_object(service)
        host = host or self._last_host
        if host:
            doc["host"] = self._name_object(host)
        doc["event"] = self._event
        if extra:
            doc.update(extra)
        if tags:
            doc["tags"] = tags
        if fields:
            doc["fields"] = fields
        return LogEvent(line.doc_id, ts_ns, level, service, doc, own_time)

    def _name_object(self, name: str) -> dict[str, str]:
        """``{"name": name}``, one object per name shared by the documents (they are read, never changed):
        fewer objects to build and free per line."""
        obj = self._names.get(name)
        if obj is None:
            obj = {"name": name}
            if len(self._names) < _SHARED_NAMES:
                self._names[name] = obj
        return obj

    def take_failures(self) -> int:
        """Lines stored with ``parse_failure`` since the last call (for the health counters)."""
        failures, self._failures = self._failures, 0
        return failures

    def _failure(self, line: LogLine, reason: str) -> LogEvent:
        """The raw line as the message, with the reason. Plain string work: this must not fail."""
        self._failures += 1
        source = line.source
        try:
            timestamp = self._format_ts(line.received_ns)
        except (OverflowError, ValueError):  # a receive time outside years 1-9999: a broken clock
            timestamp = "1970-01-01T00:00:00.000Z"
        doc: dict[str, Any] = {"@timestamp": timestamp, "message": line.text}
        if source.startswith("file:"):
            doc["log"] = {"file": {"path": source[5:]}}
        doc["service"] = {"name": self._service}
        host = self._default_host(source)
        if host:
            doc["host"] = {"name": host}
        doc["event"] = {"dataset": self._dataset}
        doc["tags"] = [*line.flags, "parse_failure"]
        doc["error"] = {"message": reason}
        return LogEvent(line.doc_id, line.received_ns, "", self._service, doc, False)

    def _default_host(self, source: str) -> str:
        # Syslog without a HOSTNAME: the sender's address ("syslog:<proto>:<peer>") is the best there is.
        if source.startswith("syslog:") and source.count(":") >= 2:
            return source.split(":", 2)[2]
        return self._host

    def _format_ts(self, ts_ns: int) -> str:
        if ts_ns == self._fmt_ns:  # syslog stamps have whole seconds: runs of lines share one
            return self._fmt_text
        self._fmt_ns = ts_ns
        self._fmt_text = self._format_ts_uncached(ts_ns)
        return self._fmt_text

    def _format_ts_uncached(self, ts_ns: int) -> str:
        sec, frac = divmod(ts_ns, _NS)
        if sec != self._fmt_sec:
            day, rest = divmod(sec, 86_400)
            if day != self._fmt_day:
                date = _EPOCH + timedelta(days=day)
                self._fmt_date = f"{date.year:04d}-{date.month:02d}-{date.day:02d}T"
                self._fmt_day = day
            hh, rest = divmod(rest, 3600)
            mm, ss = divmod(rest, 60)
            self._fmt_prefix = f"{self._fmt_date}{hh:02d}:{mm:02d}:{ss:02d}"
            self._fmt_sec = sec
        us = frac // 1_000
        if us % 1_000:
            return f"{self._fmt_prefix}.{us:06d}Z"
        return f"{self._fmt_prefix}.{us // 1_000:03d}Z"

    # -- timestamps

    def timestamp_ns(self, value: object, received_ns: int) -> int | None:
        """A timestamp field's value to ns since the epoch (UTC), or None if it is not one."""
        if type(value) is str:
            return self._text_ns(value, received_ns)
        if type(value) is int or type(value) is float:  # not bool
            return _epoch_ns(value)
        return None

    def _text_ns(self, text: str, received_ns: int) -> int | None:
        if text == self._last_ts_text:
            return self._last_ts_ns
        if self._ts_format is None and not text[:1].isalpha():  # RFC 3164 stamps start with the month
            iso = _ISO_SECOND.match(text)
            if iso is not None:
                # Consecutive lines mostly share the second and differ in the fraction: the second (with its
                # zone) is converted once, the fraction added; truncated to microseconds, as fromisoformat.
                second, frac, zone = iso.group(1, 2, 3)
                if second != self._iso_second or zone != self._iso_zone:
                    self._iso_second, self._iso_zone = second, zone
                    self._iso_ns = self._text_ns_uncached(second + zone, received_ns)
                if self._iso_ns is not None:
                    iso_ns = self._iso_ns + (int((frac + "00000")[:6]) * 1_000 if frac else 0)
                    if zone == "Z" and frac is not None and len(frac) == 3 and text[19] == ".":
                        self._canonical_ts, self._canonical_ns = text, iso_ns
                    return iso_ns
        ns = self._text_ns_uncached(text.strip(), received_ns)
        # (RFC 3164 stamps, and times in a format without a year, depend on the receive year)
        if ns is not None and not text[:1].isalpha() and not self._yearless:
            self._last_ts_text, self._last_ts_ns = text, ns
        return ns

    def _text_ns_uncached(self, text: str, received_ns: int) -> int | None:
        if not text:
            return None
        if self._zone_format is not None:
            # (Yearless formats: read in a leap year, as below.)
            moment_or_none = (
                _strptime_zone_named(f"2000 {text}", f"%Y {self._zone_format}", self._tz)
                if self._yearless
                else _strptime_zone_named(text, self._zone_format, self._tz)
            )
            if moment_or_none is not None:
                return self._yearless_ns(moment_or_none, received_ns) if self._yearless else _dt_ns(moment_or_none)
        elif self._ts_format is not None:
            try:
                if self._yearless:
                    moment = datetime.strptime(f"2000 {text}", f"%Y {self._ts_format}")  # noqa: DTZ007 - zone below
                else:
                    moment = datetime.strptime(text, self._ts_format)  # noqa: DTZ007 - the zone is added below
            except ValueError:
                pass
            else:
                moment = moment if moment.tzinfo else moment.replace(tzinfo=self._tz or UTC)
                return self._yearless_ns(moment, received_ns) if self._yearless else _dt_ns(moment)
        first = text[0]
        if first.isdigit() or first == "-":
            epoch = _EPOCH_TEXT.match(text)
            if epoch is not None:
                return self._epoch_text_ns(text, epoch)
            try:
                moment = from_iso(text)
            except ValueError:
                zoned = _ISO_ZONE_WORD.match(text)
                if zoned is not None:
                    return self._iso_zone_word_ns(zoned)
                bracketed = _BRACKETED_ZONE.match(text)
                if bracketed is not None:
                    return _bracketed_zone_ns(bracketed[1], bracketed[2])
                offset = _ISO_SPACED_OFFSET.match(text)
                if offset is not None:
                    try:
                        return _dt_ns(from_iso(f"{offset[1]}{offset[2]}:{offset[3] or '00'}"))
                    except ValueError:
                        return None
                if _SLASHED_DATE.match(text) is not None:
                    # Go's log package and many C programs: "2026/12/05 10:00:00.123456", no zone.
                    return self._text_ns_uncached(f"{text[:4]}-{text[5:7]}-{text[8:]}", received_ns)
                clf = _CLF_TS.match(text)
                if clf is not None:
                    return self._clf_ns(clf)
                return _rfc2822_ns(text) if _RFC2822.match(text) is not None else None
            return _dt_ns(moment if moment.tzinfo else moment.replace(tzinfo=self._tz or UTC))
        if first.isalpha():
            # The match is kept for the next line with the same text; the value depends on the receive time.
            if text == self._bsd_text:
                bsd = self._bsd_match
            else:
                bsd = _BSD_TS_ALONE.match(text)
                self._bsd_text, self._bsd_match = text, bsd
            if bsd is not None:
                return self._bsd_ns(bsd, 2, received_ns)
            ctime = _CTIME.match(text)
            if ctime is not None:
                return self._ctime_ns(ctime)
            if _RFC2822.match(text) is not None:
                return _rfc2822_ns(text)
        return None

    def _ctime_ns(self, match: re.Match[str]) -> int | None:
        """``Thu Jan  1 00:00:00 2026`` (C's asctime, Python's time.ctime) and Apache's error log
        ``Thu Jan 01 00:00:00.123456 2026``: no zone, so parser.timezone."""
        mon, day, hh, mm, ss, frac, year = match.groups()
        month = _MONTHS.get(mon)
        if month is None:
            return None
        micro = int((frac + "00000")[:6]) if frac else 0
        try:
            moment = wall_time(int(year), month, int(day), int(hh), int(mm), int(ss), micro, self._tz or UTC)
        except ValueError:
            return None
        return _dt_ns(moment)

    @staticmethod
    def _epoch_text_ns(text: str, match: re.Match[str]) -> int | None:
        whole, frac = match.group(1), match.group(2)
        if frac is None:
            return _epoch_ns(int(text))
        # Exact decimal arithmetic: "1767225600.123456789" as a float would lose the nanoseconds.
        magnitude = int(whole)
        digits, scale = (
            (9, _NS)
            if magnitude < 1e11
            else (6, 1_000_000)
            if magnitude < 1e14
            else (3, 1_000)
            if magnitude < 1e17
            else (0, 1)
        )
        ns = magnitude * scale + (int((frac + "000000000")[:digits]) if digits else 0)
        return -ns if text[0] == "-" else ns

    def _iso_zone_word_ns(self, match: re.Match[str]) -> int | None:
        """``2026-12-05 10:00:00.123 UTC``: the zone word is read as ``%Z`` is (``_zone_named``)."""
        try:
            naive = from_iso(match[1])
        except ValueError:
            return None
        zone = _zone_named(match[2], naive, self._tz)
        return None if zone is None else _dt_ns(naive.replace(tzinfo=zone))

    def _clf_ns(self, match: re.Match[str]) -> int | None:
        """``10/Oct/2000:13:55:36 -0700``."""
        day, mon, year, hh, mm, ss, sign, oh, om = match.groups()
        month = _MONTHS.get(mon)
        if month is None:
            return None
        try:
            moment = wall_time(int(year), month, int(day), int(hh), int(mm), int(ss), 0, UTC)
        except ValueError:
            return None
        offset = (int(oh) * 3600 + int(om) * 60) * _NS
        return _dt_ns(moment) - (offset if sign == "+" else -offset)

    def _bsd_ns(self, match: re.Match[str], first: int, received_ns: int) -> int | None:
        """An RFC 3164 stamp: group ``first - 1`` is the whole stamp, then month, day, year, h, m, s,
        fraction, and the RFC 3339 alternative."""
        iso = match.group(first + 7)
        if iso is not None:
            return self._text_ns(iso, received_ns)
        start, end, recv_year = self._year
        if not start <= received_ns < end:
            recv_year = datetime.fromtimestamp(received_ns // _NS, self._tz or UTC).year
            start = _dt_ns(datetime(recv_year, 1, 1, tzinfo=self._tz or UTC))
            end = _dt_ns(datetime(recv_year + 1, 1, 1, tzinfo=self._tz or UTC))
            self._year = (start, end, recv_year)
        key = (match.group(first - 1), recv_year)
        if key == self._bsd_key:
            ns, previous = self._bsd_cached
        else:
            ns, previous = self._bsd_in_year(match, first, recv_year), _MISSING
            self._bsd_key, self._bsd_cached = key, (ns, previous)
        if match.group(first + 2) is not None:  # the stamp has its year
            return ns
        # No year: the receive year, unless that puts the stamp more than a day ahead (a December message
        # received in January), or it is a January stamp received in the last day of December from a
        # sender whose clock is already in the new year.
        if ns is None or ns - received_ns > _DAY_NS:
            if previous is _MISSING:
                previous = self._bsd_in_year(match, first, recv_year - 1)
                self._bsd_cached = (ns, previous)
            return previous  # type: ignore[return-value]
        if end - received_ns < _DAY_NS and match.group(first) == "Jan":
            following = self._bsd_in_year(match, first, recv_year + 1)
            if following is not None and following - received_ns <= _DAY_NS:
                return following
        return ns

    @staticmethod
    def _yearless_ns(moment: datetime, received_ns: int) -> int | None:
        """A time written without its year, in the year the RFC 3164 rule gives (``_bsd_ns``): the receive
        year, or the one before if that puts it more than a day ahead, or the next for a January time received
        in the last day of December."""
        tz = moment.tzinfo
        year = datetime.fromtimestamp(received_ns // _NS, tz).year

        def in_year(y: int) -> int | None:
            try:
                return _dt_ns(moment.replace(year=y))
            except ValueError:  # Feb 29 of a year that has none, or past year 9999
                return None

        ns = in_year(year)
        if ns is None or ns - received_ns > _DAY_NS:
            return in_year(year - 1)
        if moment.month == 1 and received_ns - ns > 300 * _DAY_NS:
            following = in_year(year + 1)
            if following is not None and following - received_ns <= _DAY_NS:
                return following
        return ns

    def _bsd_in_year(self, match: re.Match[str], first: int, default_year: int) -> int | None:
        mon, day, year, hh, mm, ss, frac = match.group(
            first, first + 1, first + 2, first + 3, first + 4, first + 5, first + 6
        )
        try:
            moment = wall_time(
                int(year) if year else default_year,
                _MONTHS[mon],
                int(day),
                int(hh),
                int(mm),
                int(ss),
                int((frac + "00000")[:6]) if frac else 0,
                self._tz or UTC,
            )
        except ValueError:  # Feb 29 of a year that has none, day 31 of a short month
            return None
        return _dt_ns(moment)

    # -- kinds

    def _parse_none(self, text: str, received_ns: int) -> _Parsed:
        return None, None, None, text, None, None, None, {}

    def _mapped(self, obj: dict[str, Any], text: str, received_ns: int) -> _Parsed:
        """json, logfmt and regex: take the mapped keys out; the rest are the fields."""
        ts_raw = obj.pop(self._ts_field, None)
        if ts_raw is None and "." in self._ts_field:
            ts_raw = _pop_path(obj, self._ts_field)
        self._ts_found = self._ts_field
        if ts_raw is None and self._ts_fallbacks:
            found, ts_raw = _pop_first(obj, self._ts_fallbacks)
            if ts_raw is not None:
                self._ts_found = found
        if self._own_ts_key:
            self._ts_key = self._ts_found  # an unreadable timestamp is kept under its own key
        level_raw = obj.pop(self._level_field, None)
        if level_raw is None and "." in self._level_field:
            level_raw = _pop_path(obj, self._level_field)
        if level_raw is None and self._level_fallbacks:
            level_raw = _pop_first(obj, self._level_fallbacks)[1]
        message = obj.pop(self._msg_field, None)
        msg_key = self._msg_field
        if message is None and "." in self._msg_field:
            message = _pop_path(obj, self._msg_field)
        if message is None and self._msg_fallbacks:
            msg_key, message = _pop_first(obj, self._msg_fallbacks)
        if message is None:
            message = text
        elif type(message) is not str:
            # journald's JSON export (its key MESSAGE) writes a message that is not valid UTF-8 as its bytes.
            if msg_key == "MESSAGE" and type(message) is list and all(_is_byte(b) for b in message):
                message = bytes(message).decode("utf-8", errors="replace")
            else:
                message = _dumps(message)
        elif message[-1:] == "\n":
            # Docker's json-file driver keeps the line's own newline in "log": not part of the message.
            message = message.rstrip("\r\n")
        if self._service_field is None and self._host_field is None:
            # A plain string name (a regex group, most JSON) is taken here; _take_name reads the other shapes.
            service = obj.get("service")
            if type(service) is str and service and "service.name" not in obj:
                del obj["service"]
            else:
                service = _take_name(obj, "service") if "service" in obj or "service.name" in obj else None
            host = obj.get("host")
            if type(host) is str and host and "host.name" not in obj:
                del obj["host"]
            else:
                host = _take_name(obj, "host") if "host" in obj or "host.name" in obj else None
            if host is None and type(obj.get("hostname")) is str and obj["hostname"]:
                host = obj.pop("hostname")  # bunyan's and pino's key
            elif host is None and type(obj.get("_HOSTNAME")) is str and obj["_HOSTNAME"]:
                host = obj.pop("_HOSTNAME")  # journald's
        else:
            service = self._named_by_field(obj, self._service_field, "service")
            host = self._named_by_field(obj, self._host_field, "host")
        ts_ns = None if ts_raw is None else self.timestamp_ns(ts_raw, received_ns)
        return ts_ns, ts_raw, level_raw, message, service, host, None, obj

    @staticmethod
    def _named_by_field(obj: dict[str, Any], key: str | None, default: str) -> str | None:
        """With ``service_field`` or ``host_field`` set: a non-empty string at ``key`` names the service (or
        host) and leaves the fields; anything else stays a field. Unset: ``default`` as ``_mapped`` reads it."""
        if key is None:
            return _take_name(obj, default) if default in obj or f"{default}.name" in obj else None
        value = obj.get(key, _MISSING)
        if value is _MISSING and "." in key:
            value = _get_path(obj, key)
        if type(value) is not str or not value:
            return None
        if obj.pop(key, None) is None:
            _pop_path(obj, key)
        return value

    def _parse_json(self, text: str, received_ns: int) -> _Parsed:
        start = 0
        if text[:1] != "{":
            # (a byte-order mark starts the first line of files some Windows programs write)
            text = text.strip().removeprefix("\ufeff").lstrip()
            if text[:1] != "{":
                raise _Unparseable("not a JSON object")
        # orjson first (twice as fast); what it refuses goes through the standard library's scanner, which
        # also takes NaN and lone surrogates, and words the errors. orjson reads an integer outside the 64-bit
        # range as a float, silently: a line with a float that large goes to the standard library too, which
        # keeps such integers exact, and so does a line with an integer from 2**63 to 2**64 - 1, which orjson
        # reads but Elasticsearch's long cannot hold (_storable keeps it as text). (Looking for 19 digits in a
        # row in the text instead cost three times what orjson takes to decode the line.)
        try:
            fast = _loads(text)
        except orjson.JSONDecodeError:
            pass
        else:
            if type(fast) is dict and not _holds_huge_number(fast):
                return self._mapped(fast, text, received_ns)
        try:
            obj, end = _scan_json(text, start)
        except StopIteration:
            raise _Unparseable("invalid JSON") from None
        except ValueError as exc:
            raise _Unparseable(f"invalid JSON: {exc}") from None
        if end != len(text) and text[end:].strip():
            raise _Unparseable(f"invalid JSON: extra data at column {end + 1}")
        return self._mapped(_storable(obj), text, received_ns)

    def _parse_logfmt(self, text: str, received_ns: int) -> _Parsed:
        if "=" not in text or _LOGFMT_LINE.fullmatch(text) is None:
            raise _Unparseable("not logfmt (key=value pairs)")
        obj: dict[str, Any] = {}
        for key, eq, value in _LOGFMT_PAIR.findall(text):
            if not eq:
                obj[key] = True
            elif value[:1] == '"':
                obj[key] = _unescape_quoted(value[1:-1])
            else:
                obj[key] = value
        return self._mapped(obj, text, received_ns)

    def _parse_regex(self, text: str, received_ns: int) -> _Parsed:
        assert self._pattern is not None  # config guarantees a pattern for kind "regex"
        match = self._pattern.search(text)
        if match is None and self._multiline and "\n" in text:
            # A pattern ending in "$" (as grok and Fluent Bit patterns do, where it matches at a line's end)
            # matches only the first line of a multiline event: the rest is appended to the message below.
            match = self._pattern.search(text, 0, text.index("\n"))
        if match is None:
            raise _Unparseable("line does not match the pattern")
        obj = match.groupdict()
        if None in obj.values():  # groups that did not take part are left out
            obj = {k: v for k, v in obj.items() if v is not None}
        if self._multiline and text[match.end() : match.end() + 1] == "\n" and self._msg_field in obj:
            # A pattern written for one line stops at the first line break of a multiline event: the lines
            # after it belong to the message (they were in no field of the document).
            obj[self._msg_field] += text[match.end() :]
        return self._mapped(obj, text, received_ns)

    def _parse_cri(self, text: str, received_ns: int) -> _Parsed:
        """A CRI record (the file tail has joined its partial records): the runtime's time, the stream as
        ``fields.stream``, the content as the message."""
        match = _CRI_RECORD.match(text)
        if match is None:
            raise _Unparseable("not a CRI log record (<time> <stdout|stderr> <P|F> <content>)")
        ts_text, stream, content = match.group(1, 2, 3)
        return self._container_line(content or "", ts_text, {"stream": stream}, received_ns)

    def _parse_docker(self, text: str, received_ns: int) -> _Parsed:
        """A record of Docker's json-file driver (the file tail has joined its partial records): ``{"log":
        "<line>\\n", "stream": "stdout", "time": "<RFC 3339>"}``. The line, without its newline, is the message;
        the stream, and the ``attrs`` of ``--log-opt labels/env``, are kept under fields."""
        try:
            record = _loads(text)
        except orjson.JSONDecodeError:
            record = None
        if type(record) is not dict or type(record.get("log")) is not str:
            raise _Unparseable('not a Docker json-file record ({"log": ..., "stream": ..., "time": ...})')
        line = record.pop("log")
        if line[-1:] == "\n":
            line = line[:-2] if line[-2:] == "\r\n" else line[:-1]
        return self._container_line(line, record.pop("time", None), record, received_ns)

    def _container_line(self, line: str, ts_raw: object, fields: dict[str, Any], received_ns: int) -> _Parsed:
        """The application's line inside a container runtime's record, read with ``message_format``."""
        ts_ns = None if ts_raw is None else self.timestamp_ns(ts_raw, received_ns)
        if self._inner is not None and line:
            try:
                inner = self._inner(line, received_ns)
            except _Unparseable:
                pass  # not in that format (a line the application wrote otherwise): the message as it is
            else:
                line_ns, line_ts_raw, level, message, service, host, extra, line_fields = inner
                if line_ns is None:
                    if line_ts_raw is not None:
                        line_fields[self._ts_found] = line_ts_raw  # unreadable: kept, the runtime's time used
                    line_ns, line_ts_raw = ts_ns, ts_raw
                # (the runtime's stream and attrs win over the application's keys of those names)
                return line_ns, line_ts_raw, level, message, service, host, extra, {**line_fields, **fields}
        return ts_ns, ts_raw, None, line, None, None, None, fields

    def _parse_access(self, text: str, received_ns: int) -> _Parsed:
        match = self._access.match(text)
        if match is None:
            raise _Unparseable(f"not a {self.kind} access log line")
        address, _ident, user, ts_text, request, status, size = match.group(1, 2, 3, 4, 5, 6, 7)
        ts_ns = self._text_ns(ts_text, received_ns)
        extra: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        http: dict[str, Any] = {}
        url = None
        if "\\" in request:
            request = _unescape_quoted(request)
        parts = request.split(" ")
        if len(parts) == 3 and parts[2].startswith("HTTP/"):
            http["request"] = {"method": parts[0]}
            url = parts[1]
            http["version"] = parts[2][5:]
        elif len(parts) == 2:
            http["request"] = {"method": parts[0]}
            url = parts[1]
        elif request and request != "-":
            fields["request"] = request  # not "METHOD URL PROTOCOL": a scanner, TLS to a plain port
        level = "info"
        response: dict[str, Any] = {}
        if status != "-":
            code = int(status)
            response["status_code"] = code
            level = "error" if code >= 500 else "warn" if code >= 400 else "info"
        if size != "-":
            response["body"] = {"bytes": int(size)}
        if response:
            http["response"] = response
        if self._access is _COMBINED:
            referrer, agent = match.group(8, 9)  # (None, None): a Common Log Format line
            if referrer != "-" and referrer:
                http.setdefault("request", {})["referrer"] = _unescape_quoted(referrer)
            if agent != "-" and agent:
                extra["user_agent"] = {"original": _unescape_quoted(agent)}
        if http:
            extra["http"] = http
        if url is not None:
            extra["url"] = {"original": url}
        extra["source"] = {"address": address}
        if user != "-":
            extra["user"] = {"name": user}
        return ts_ns, ts_text, level, text, None, None, extra, fields

    def _parse_syslog(self, text: str, received_ns: int) -> _Parsed:
        if text[:1] == "<":
            match = _RFC5424.match(text)
            if match is not None:
                return self._syslog_5424(match, received_ns)
            if _RFC5424_START.match(text):
                # "<PRI>1 " is RFC 5424's start and no RFC 3164 one: the rest of its header is broken (cut
                # short, structured data not closed), and read as the other formats it would lose its time.
                raise _Unparseable("an RFC 5424 header (<PRI>1 ...) whose fields or structured data do not parse")
        extra: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        match = _RFC3164.match(text)
        if match is not None:
            pri, ts_raw, host, app, procid, message = match.group(1, 2, 11, 12, 13, 14)
            level = self._syslog_pri(pri, extra)
            self._syslog_process(app, procid, extra, fields)
            return self._bsd_ns(match, 3, received_ns), ts_raw, level, message, app, host, extra, fields
        match = _RFC3164_NO_TAG.match(text)
        if match is not None:
            pri, ts_raw, host, message = match.group(1, 2, 11, 12)
            level = self._syslog_pri(pri, extra)
            return self._bsd_ns(match, 3, received_ns), ts_raw, level, message, None, host, extra, fields
        match = _PRI_ONLY.match(text)
        if match is None:
            raise _Unparseable("not a syslog message (RFC 5424 or RFC 3164)")
        level = self._syslog_pri(match.group(1), extra)
        return None, None, level, match.group(2), None, None, extra, fields

    def _syslog_5424(self, match: re.Match[str], received_ns: int) -> _Parsed:
        pri, version, ts_text, host, app, procid, msgid, sd, message = match.groups()
        extra: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        level = self._syslog_pri(pri, extra)
        syslog = extra["log"]["syslog"]
        syslog["version"] = version
        if msgid != "-":
            syslog["msgid"] = msgid
        if ts_text == "-":
            ts_ns, ts_raw = None, None
        else:
            ts_raw = ts_text
            ts_ns = self._text_ns(ts_text, received_ns)
        app = None if app == "-" else app
        self._syslog_process(app, None if procid == "-" else procid, extra, fields)
        if sd != "-":
            # ECS's log.syslog.structured_data (a flattened field in the index: senders name their parameters).
            syslog["structured_data"] = _structured_data(sd)
        if message is None:
            message = ""
        elif message[:1] == "\ufeff":
            message = message[1:]
        return ts_ns, ts_raw, level, message, app, None if host == "-" else host, extra, fields

    @staticmethod
    def _syslog_pri(pri: str | None, extra: dict[str, Any]) -> str | None:
        if pri is None:
            return None
        value = int(pri)
        if value > 191:
            raise _Unparseable(f"syslog PRI {value} is out of range (0-191)")
        facility, severity = value >> 3, value & 7
        extra["log"] = {
            "syslog": {
                "priority": value,
                "facility": {"code": facility, "name": _FACILITIES[facility]},
                "severity": {"code": severity, "name": _SEVERITIES[severity]},
            }
        }
        return _SEVERITY_LEVELS[severity]

    @staticmethod
    def _syslog_process(app: str | None, procid: str | None, extra: dict[str, Any], fields: dict[str, Any]) -> None:
        process: dict[str, Any] = {}
        if app:
            process["name"] = app
        if procid:
            # process.pid is a long: a PROCID that is no such number (RFC 5424 allows any 128 printable
            # characters; str.isdigit also takes "²") is kept as it is written.
            if procid.isascii() and procid.isdigit() and int(procid) < 2**63:
                process["pid"] = int(procid)
            else:
                fields["procid"] = procid
        if process:
            extra["process"] = process


def _is_byte(value: object) -> bool:
    return type(value) is int and 0 <= value < 256


# The keys a json or logfmt line's time, level and message are looked for under when the *_field setting is left
# at its default and that key is absent: logrus, bunyan, pino and slog write "time", zap "ts", Serilog's CLEF
# "@t"/"@l"/"@m" (and "@mt", its message template, which CompactJsonFormatter writes instead of "@m"), ECS
# "@timestamp" and "log.level", Google Cloud "severity", python-json-logger "levelname", structlog "event" (taken
# only when it is a string: ECS's event is an object), and journald's JSON export (`journalctl -o json`:
# "__REALTIME_TIMESTAMP" in microseconds, "PRIORITY" a syslog severity, "MESSAGE"), and Grafana's logfmt "t"
# (taken only when it is a string, as "event").
_FALLBACK_KEYS: dict[str, tuple[str, ...]] = {
    "timestamp": ("@timestamp", "time", "ts", "@t", "__REALTIME_TIMESTAMP", "t"),
    "level": ("log.level", "severity", "levelname", "lvl", "loglevel", "@l", "PRIORITY"),
    "message": ("msg", "@m", "event", "@mt", "MESSAGE"),
}


def _pop_first(obj: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, Any]:
    """The first of ``keys`` (a dotted one also nested) present with a value, taken out of ``obj``: (key,
    value), or ("", None). "event" and "t" count only as strings."""
    for key in keys:
        value = obj.get(key)
        nested = value is None and "." in key
        if nested:
            value = _get_path(obj, key)
        if value is None or value is _MISSING or ((key == "event" or key == "t") and type(value) is not str):
            continue
        if nested:
            _pop_path(obj, key)
        else:
            del obj[key]
        return key, value
    return "", None


def _get_path(obj: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` in nested objects (``log.level`` in ``{"log": {"level": ...}}``), or
    ``_MISSING``."""
    node: Any = obj
    for part in key.split("."):
        if type(node) is not dict or part not in node:
            return _MISSING
        node = node[part]
    return node


def _pop_path(obj: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` in nested objects, taken out (None when there is none); objects left
    empty by it go too."""
    parts = key.split(".")
    trail: list[dict[str, Any]] = [obj]
    for part in parts[:-1]:
        node = trail[-1].get(part)
        if type(node) is not dict:
            return None
        trail.append(node)
    value = trail[-1].pop(parts[-1], _MISSING)
    if value is _MISSING:
        return None
    for parent, part in zip(reversed(trail[:-1]), reversed(parts[:-1]), strict=True):
        if parent[part]:
            break
        del parent[part]
    return value


def _take_name(obj: dict[str, Any], key: str) -> str | None:
    """``key`` as a string, ``key.name``, or ``{key: {"name": ...}}``: the name, taken out of ``obj``;
    other keys of a nested object stay in the fields."""
    dotted_key = f"{key}.name"
    value = obj.get(key)
    name = None
    dotted = obj.pop(dotted_key, None)
    if type(dotted) is str and dotted:
        name = dotted
    elif dotted is not None:
        obj[dotted_key] = dotted  # not a name: keep it as a field
    if type(value) is str:
        if value:
            del obj[key]
            name = name or value
    elif type(value) is dict and type(value.get("name")) is str and value["name"]:
        rest = {k: v for k, v in value.items() if k != "name"}
        name = name or value["name"]
        if rest:
            obj[key] = rest
        else:
            del obj[key]
    return name


def _structured_data(sd: str) -> dict[str, dict[str, Any]]:
    """RFC 5424 STRUCTURED-DATA: ``{sd_id: {param: value}}``, a repeated param as a list. What is not a
    ``name="value"`` parameter (``a=unquoted``) is skipped; the raw line keeps it."""
    out: dict[str, dict[str, Any]] = {}
    pos, end = 0, len(sd)
    while pos < end and sd[pos] == "[":
        id_match = _SD_ID.match(sd, pos + 1)
        assert id_match is not None  # (it matches the empty string)
        sd_id = id_match.group()[:_SD_NAME_MAX]
        # (an element without an ID is read past, its parameters left out)
        element: dict[str, Any] = out.setdefault(sd_id, {}) if sd_id else {}
        pos = id_match.end()
        while pos < end and sd[pos] != "]":
            pos = _SD_SPACES.match(sd, pos).end()  # type: ignore[union-attr]  # (matches the empty string)
            if pos >= end or sd[pos] == "]":
                break
            param = _SD_PARAM.match(sd, pos)
            if param is not None:
                name, value = param.group(1)[:_SD_NAME_MAX], param.group(2)
                if "\\" in value:
                    value = _SD_UNESCAPE.sub(r"\1", value)
                if name in element:
                    previous = element[name]
                    element[name] = [*previous, value] if type(previous) is list else [previous, value]
                else:
                    element[name] = value
                pos = param.end()
                continue
            skipped = (_SD_QUOTED if sd[pos] == '"' else _SD_OTHER).match(sd, pos)
            pos = skipped.end() if skipped is not None and skipped.end() > pos else pos + 1
        pos += 1  # (the "]")
    return out
