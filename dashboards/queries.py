"""Run the dashboards' queries the way Grafana runs them, against the real InfluxDB and Elasticsearch.

Grafana cannot run everywhere fleetwatch runs (CI, this project's test machine), yet a dashboard is only as good
as its queries. This module reads the dashboard JSON and does what Grafana 11 does with it:

- template variables first, in order, each from its own query against the real store (``SHOW TAG VALUES ...``),
  with earlier variables substituted; the selection is the saved ``current`` value, else All when the variable
  includes All, else the first value (Grafana's defaults); ``variables=`` overrides it;
- then every panel's targets (a repeated panel once per value of its variable, as Grafana repeats it), and the
  dashboard's annotation queries;
- InfluxQL, substituted as Grafana 11.6 does it (browser, then backend): variables through the InfluxDB data
  source's ``interpolateQueryExpr`` (``influx_query_expr``: number-like values unescaped, multi-value lists as
  ``(a|b)`` of escaped values, a single-value variable escaped only in a panel query that has it in a regex, never
  in a variable query), then ``$timeFilter`` with both bounds in ms and ``$__interval``/``$__interval_ms``
  (Grafana's rounding, never below the data source's ``timeInterval``); sent to ``/query`` with ``epoch=ms``;
- Elasticsearch: the search body Grafana's backend builds (``size: 0``, an ``@timestamp`` range filter, a
  ``query_string`` for the Lucene query, nested ``terms`` / ``date_histogram`` aggregations and metric
  aggregations; for logs and raw data a sorted search with ``size``), variables in Lucene format, sent through
  ``_msearch`` to the index pattern of the target's data source;
- server-side expressions (``reduce``, ``math``) over the panel's other results; what a stat panel shows
  (``PanelResult.stat``); queries on Grafana's own annotations as the request Grafana would make
  (``grafana_annotation_request``) and what its store would answer (``grafana_annotations_found``).

Stores are overridable (``Stores``: InfluxDB database and Elasticsearch index prefix), so tests run the committed
dashboards against a pipeline run of their own. ``references`` / ``written_schema`` / ``unknown_references``
check that no query names a measurement, field, tag, index or document field the pipeline did not write.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from dashboards.generate import DASHBOARDS, DASHBOARDS_DIR, DATASOURCES, Datasource
from fleetwatch.config_base import url_without_secrets

ALL = "$__all"
# Grafana sizes $__interval by the panel's width in pixels (its maxDataPoints); this is a 1920 px wide screen.
SCREEN_WIDTH_PX = 1920
GRID_COLUMNS = 24
# Grafana's default for horizontally repeated panels without maxPerRow.
DEFAULT_MAX_PER_ROW = 4


class QueryError(RuntimeError):
    """A store refused a query (the message is the store's)."""


# -------------------------------------------------------------------------------------- time and interval

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": 31_536_000_000}


def duration_ms(text: str) -> int:
    """``"10s"`` -> 10000; ``"1h30m"`` -> 5400000."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return round(sum(float(n) * _UNIT_MS[u] for n, u in parts))


@dataclass(frozen=True)
class TimeRange:
    """The dashboard's time range: relative to now (``TimeRange.last("1h")``, Grafana's ``now-1h`` to ``now``) or
    explicit (``TimeRange.between(start_ns, end_ns)``)."""

    last_text: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None

    @classmethod
    def last(cls, duration: str) -> TimeRange:
        duration_ms(duration)
        return cls(last_text=duration)

    @classmethod
    def between(cls, start_ns: int, end_ns: int) -> TimeRange:
        if end_ns <= start_ns:
            raise ValueError("the time range ends before it starts")
        return cls(start_ns=start_ns, end_ns=end_ns)

    @classmethod
    def parse(cls, text: str) -> TimeRange:
        """``"1h"`` / ``"now-1h"`` (relative) or ``"<start_ns>..<end_ns>"``."""
        if ".." in text:
            start, end = text.split("..", 1)
            return cls.between(int(start), int(end))
        return cls.last(text.removeprefix("now-"))

    def bounds_ns(self, now_ns: int | None = None) -> tuple[int, int]:
        if self.last_text is not None:
            now = time.time_ns() if now_ns is None else now_ns
            return now - duration_ms(self.last_text) * 1_000_000, now
        assert self.start_ns is not None and self.end_ns is not None
        return self.start_ns, self.end_ns

    def backend_time_filter(self, bounds_ns: tuple[int, int]) -> str:
        """``$timeFilter`` as Grafana 11's InfluxQL backend renders it for panel and annotation queries: both bounds
        in whole milliseconds, for a relative range too (the browser resolves ``now-1h`` into the request's
        from/to). pkg/tsdb/influxdb/influxql/models/query.go: ``renderTimeFilter`` is
        ``fmt.Sprintf("time >= %s and time <= %s", from, to)`` with ``epochMStoInfluxTime`` giving
        ``fmt.Sprintf("%dms", tr.From.UnixNano() / int64(time.Millisecond))``; ``Build`` replaces every
        ``$timeFilter`` of a raw query with it."""
        return f"time >= {bounds_ns[0] // 1_000_000}ms and time <= {bounds_ns[1] // 1_000_000}ms"

    def frontend_time_filter(self, bounds_ns: tuple[int, int]) -> str:
        """``$timeFilter`` as the InfluxDB data source's ``getTimeFilter`` renders it in the browser, which is what a
        variable query gets (public/app/plugins/datasource/influxdb/variables.ts replaces it before sending):
        ``'time >= ' + from + ' and time <= ' + until`` where ``getInfluxTime`` turns ``now`` into ``now()``,
        ``now-<n><d|h|m|s>`` into ``now() - <n><unit>`` and anything else into ``<epoch ms>ms``."""
        if self.last_text is not None:
            relative = re.fullmatch(r"(\d+)([dhms])", self.last_text)
            start = f"now() - {int(relative[1])}{relative[2]}" if relative else f"{bounds_ns[0] // 1_000_000}ms"
            return f"time >= {start} and time <= now()"
        return self.backend_time_filter(bounds_ns)

    def describe(self) -> str:
        if self.last_text is not None:
            return f"last {self.last_text}"
        start, end = self.bounds_ns()
        fmt = "%Y-%m-%d %H:%M:%S"
        return f"{time.strftime(fmt, time.gmtime(start / 1e9))} to {time.strftime(fmt, time.gmtime(end / 1e9))} UTC"


# Grafana's kbn.roundInterval: (upper bound of the raw interval in ms, the interval used).
_ROUNDING = (
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000), (3_500, 2_000),
    (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000), (45_000, 30_000), (90_000, 60_000),
    (210_000, 120_000), (450_000, 300_000), (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000),
    (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000), (16_200_000, 10_800_000),
    (32_400_000, 21_600_000), (86_400_000, 43_200_000), (604_800_000, 86_400_000), (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
)  # fmt: skip


def round_interval_ms(raw_ms: float) -> int:
    for bound, interval in _ROUNDING:
        if raw_ms < bound:
            return interval
    return 31_536_000_000


def interval_text(ms: int) -> str:
    """Grafana's secondsToHms: the largest whole unit (``10s``, ``1m``, ``500ms``)."""
    seconds = ms / 1000
    for unit, size in (("y", 31_536_000), ("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    if seconds >= 1:
        return f"{int(seconds)}s"
    return f"{ms}ms"


def calculate_interval_ms(range_ms: int, resolution: int, low_limit: str | None) -> int:
    """Grafana's rangeutil.calculateInterval: the range over the panel's data points, rounded, never below the
    data source's (or panel's) minimum interval."""
    interval = round_interval_ms(range_ms / max(1, resolution))
    if low_limit:
        interval = max(interval, duration_ms(low_limit))
    return interval


# ----------------------------------------------------------------------------------------------- stores


@dataclass
class Stores:
    """Where the queries go. ``database`` and ``index_prefix`` replace what the provisioned data sources name, so
    the committed dashboards can run against a test's unique database and indices."""

    influx_url: str
    database: str
    es_url: str
    index_prefix: str = "fleetwatch"
    es_auth: tuple[str, str] | None = None
    influx_token: str | None = None
    # InfluxDB 1.x with authentication: username and password (basic auth, as Grafana's InfluxQL data source).
    influx_auth: tuple[str, str] | None = None
    timeout: float = 30.0
    http: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(retries=False))

    def es_pattern(self, ds: Datasource) -> str:
        return f"{self.index_prefix}-{ds.index_kind}*"

    def influxql(self, query: str) -> dict[str, Any]:
        """One InfluxQL statement's result (``series`` may be absent: no data)."""
        headers = {"Authorization": f"Token {self.influx_token}"} if self.influx_token else {}
        if self.influx_auth is not None:
            headers = urllib3.make_headers(basic_auth=f"{self.influx_auth[0]}:{self.influx_auth[1]}")
        try:
            resp = self.http.request(
                "GET",
                f"{self.influx_url}/query",
                fields={"db": self.database, "q": query, "epoch": "ms"},
                headers=headers,
                timeout=self.timeout,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise QueryError(f"InfluxDB at {url_without_secrets(self.influx_url)} cannot be reached: {exc}") from None
        try:
            body = json.loads(resp.data)
        except ValueError as exc:
            raise QueryError(f"InfluxDB answered {resp.status}: {resp.data[:200]!r}") from exc
        if resp.status != 200 or "error" in body:
            raise QueryError(f"InfluxDB answered {resp.status}: {body.get('error', body)}")
        result: dict[str, Any] = body["results"][0]
        if "error" in result:
            raise QueryError(f"InfluxDB: {result['error']}")
        return result

    def es(self, method: str, path: str, body: bytes | None = None, ndjson: bool = False) -> dict[str, Any]:
        headers = {"Content-Type": "application/x-ndjson" if ndjson else "application/json"}
        if self.es_auth is not None:
            headers.update(urllib3.make_headers(basic_auth=f"{self.es_auth[0]}:{self.es_auth[1]}"))
        try:
            resp = self.http.request(method, f"{self.es_url}{path}", body=body, headers=headers, timeout=self.timeout)
        except urllib3.exceptions.HTTPError as exc:
            raise QueryError(f"Elasticsearch at {url_without_secrets(self.es_url)} cannot be reached: {exc}") from None
        try:
            parsed: dict[str, Any] = json.loads(resp.data)
        except ValueError as exc:
            raise QueryError(f"Elasticsearch answered {resp.status}: {resp.data[:200]!r}") from exc
        if resp.status != 200:
            raise QueryError(f"Elasticsearch answered {resp.status}: {parsed.get('error', parsed)}")
        return parsed

    def msearch(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        """One search through ``_msearch``, as Grafana sends them; the response of that search."""
        header = {"ignore_unavailable": True, "index": index, "search_type": "query_then_fetch"}
        payload = (json.dumps(header) + "\n" + json.dumps(body) + "\n").encode()
        response: dict[str, Any] = self.es("POST", "/_msearch?max_concurrent_shard_requests=5", payload, ndjson=True)[
            "responses"
        ][0]
        if "error" in response:
            raise QueryError(f"Elasticsearch: {response['error']}")
        return response


# -------------------------------------------------------------------------------------------- variables


@dataclass
class Variable:
    """A template variable, resolved: its options (from its query) and what is selected. ``scoped`` marks a
    repeated panel's copy, which Grafana gives the one value it repeats for."""

    name: str
    options: list[str]
    selected: list[str]
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    query: str = ""
    scoped: bool = False

    @property
    def values(self) -> list[str]:
        """The concrete values selected (All expanded)."""
        return list(self.options) if self.selected == [ALL] else list(self.selected)

    def value(self) -> str | list[str]:
        """The value as Grafana's template service hands it to a formatter: a repeated panel's copy has its value
        as a string (scopedVars ``{text, value}``); All is the list of every option; a multi-value variable's
        selection is a list, even of one value; a single-value variable's selection is a string."""
        if self.scoped:
            return self.selected[0]
        if self.selected == [ALL]:
            return list(self.options)
        if self.multi:
            return list(self.selected)
        return self.selected[0] if self.selected else ""

    def scoped_to(self, value: str) -> Variable:
        """This variable set to one value: a repeated panel's copy."""
        return Variable(
            self.name, self.options, [value], self.multi, self.include_all, self.all_value, self.query, scoped=True
        )

    def text(self) -> str:
        if self.selected == [ALL]:
            return "All"
        return " + ".join(self.selected)


# Ways a variable goes into a query. The first two are the InfluxDB data source's own formatter
# (``interpolateQueryExpr``) as Grafana calls it for a panel or annotation query, which passes the query text so
# the formatter can look for the variable inside a ``/.../`` regex, and for a variable query (variables.ts calls
# ``templateSrv.replace(query, scopedVars, this.datasource.interpolateQueryExpr)``: the template service calls a
# format function as ``format(value, variable, this.formatValue)``, so the third argument is a function, never
# the query, and a single-value variable goes in unescaped). The others are Grafana's named formats
# (``${var:lucene}`` ...); ``lucene`` is the Elasticsearch data source's default, ``text`` a panel title's.
INFLUXQL = "influxql"
INFLUXQL_VARIABLE = "influxql-variable"

# Grafana's escapeRegex (packages/grafana-data/src/text/string.ts): /[\\^$*+?.()|[\]{}\/]/g -> '\\$&'; the
# slash is one of them, so a value cannot end InfluxQL's /.../ early.
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
# Grafana's luceneEscape.
_LUCENE_SPECIAL = re.compile(r'([!*+\-=<>\s&|()\[\]{}^~?:\\/"])')
# JavaScript's parseFloat accepts a value when it *starts* like a number ("10.0.0.1/eth0" is 10): the prefix it reads.
_JS_FLOAT_PREFIX = re.compile(r"\s*[+-]?(?:Infinity|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
# interpolateQueryExpr's search for regexes in the query (``=~ /.../`` or ``!~ /.../``), ported as it is.
_INFLUX_REGEX_MATCHER = re.compile(
    r"(\s*(=|!)~\s*)/((?![*+?])(?:[^\r\n\[/\\]|\\.|\[(?:[^\r\n\]\\]|\\.)*\])+)/"
    r"((?:g(?:im?|mi?)?|i(?:gm?|mg?)?|m(?:gi?|ig?)?)?)",
    re.MULTILINE,
)


def escape_regex(value: str) -> str:
    """Grafana's escapeRegex."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _lucene_escape(value: str) -> str:
    return _LUCENE_SPECIAL.sub(r"\\\1", value)


def js_number_like(value: str) -> bool:
    """``!isNaN(parseFloat(value))`` in JavaScript: the value starts like a number."""
    return _JS_FLOAT_PREFIX.match(value) is not None


def influx_query_expr(value: str | list[str], var: Variable, query: str | None) -> str:
    """The InfluxDB data source's ``interpolateQueryExpr(value, variable, query)`` (Grafana 11.6,
    public/app/plugins/datasource/influxdb/datasource.ts), step by step:

    1. a string value that parses as a float (``!isNaN(parseFloat(value))``) goes in as it is, unescaped;
    2. a multi-value variable: a string value is escapeRegex'd, a list becomes ``(a|b)`` of escaped values, even a
       list of one (``(a)``);
    3. otherwise, without the query text (a variable query) the value goes in as it is;
    4. otherwise the value is escaped (a list as ``(a|b)``) only if the query has a ``=~ /.../`` or ``!~ /.../``
       regex in which ``$<name>`` appears, anywhere in the query: then every occurrence is escaped, in quotes too;
       else every occurrence goes in as it is.
    """
    if isinstance(value, str) and js_number_like(value):
        return value

    def escaped() -> str:
        if isinstance(value, str):
            return escape_regex(value)
        return "(" + "|".join(escape_regex(v) for v in value) + ")"

    if var.multi:
        return escaped()
    if query is not None:
        in_regex = re.compile(rf"/(?:\^)?(.*)(\${var.name})(.*)(?:\$)?/", re.MULTILINE)
        if any(in_regex.search(m.group(0)) for m in _INFLUX_REGEX_MATCHER.finditer(query)):
            return escaped()
    # A JavaScript array returned from a format function becomes "a,b" in the query.
    return value if isinstance(value, str) else ",".join(value)


def format_variable(var: Variable, fmt: str, query: str | None = None) -> str:
    """A variable's value in a query: ``influxql`` (a panel or annotation query, ``query`` its text),
    ``influxql-variable`` (a variable query), or one of Grafana's named formats (``lucene``, ``regex``, ``pipe``,
    ``csv``, ``raw``, ``singlequote``, ``doublequote``, ``text``, ``glob``: the template service's default)."""
    if var.selected == [ALL] and var.all_value is not None and not var.scoped and fmt != "text":
        # A custom all value is not formatted (Grafana's TemplateSrv skips formatting it, except for text).
        return var.all_value
    value = var.value()
    if fmt == INFLUXQL:
        return influx_query_expr(value, var, query)
    if fmt == INFLUXQL_VARIABLE:
        return influx_query_expr(value, var, None)
    if fmt == "text":
        return var.text() if not var.scoped else var.selected[0]
    values = [value] if isinstance(value, str) else value
    if fmt == "regex":
        if isinstance(value, str):
            return escape_regex(value)
        escaped = [escape_regex(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "lucene":
        if isinstance(value, str):
            return _lucene_escape(value)
        if not values:
            return "__empty__"
        return "(" + " OR ".join(f'"{_lucene_escape(v)}"' for v in values) + ")"
    if fmt == "pipe":
        return "|".join(values)
    if fmt in ("csv", "raw"):
        return ",".join(values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    # glob: a string as it is, a list of several as {a,b}.
    if isinstance(value, str):
        return value
    return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"


# $var, ${var}, ${var:format}, [[var]], [[var:format]]
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]")


def interpolate(
    text: str, variables: Mapping[str, Variable], default_format: str, builtins: Mapping[str, str] | None = None
) -> str:
    """Replace variables as Grafana's template service does in the browser (``templateSrv.replace``): each
    ``$var`` / ``${var:format}`` / ``[[var]]`` in ``default_format`` unless it names its own; ``builtins`` are
    scoped variables with a fixed text (``__interval`` ...). Unknown names are left as they are."""
    fixed = builtins or {}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(5) or default_format
        if name in fixed:
            return fixed[name]
        if name in variables:
            return format_variable(variables[name], fmt, text)
        return match.group(0)

    return _VARIABLE.sub(replace, text)


# The InfluxDB data source's applyTemplateVariables keeps these for the backend to fill in.
_INFLUX_FRONTEND_BUILTINS = {"__interval": "$__interval", "__interval_ms": "$__interval_ms"}


def influx_backend_builtins(query: str, time_range: TimeRange, bounds_ns: tuple[int, int], interval_ms: int) -> str:
    """What Grafana's InfluxQL backend does to a raw query after the browser substituted the variables
    (``Query.Build``): every ``$timeFilter``, then ``$interval``, ``$__interval_ms`` and ``$__interval``, in that
    order, by plain string replacement."""
    text = interval_text(interval_ms)
    query = query.replace("$timeFilter", time_range.backend_time_filter(bounds_ns))
    query = query.replace("$interval", text)
    query = query.replace("$__interval_ms", str(interval_ms))
    return query.replace("$__interval", text)


def influx_panel_query(
    query: str,
    variables: Mapping[str, Variable],
    time_range: TimeRange,
    bounds_ns: tuple[int, int],
    interval_ms: int,
) -> str:
    """A panel's (or an annotation's) raw InfluxQL as Grafana 11.6 sends it to InfluxDB: the browser replaces the
    variables with ``interpolateQueryExpr`` given the query text (applyTemplateVariables / annotationEvents), the
    backend then replaces ``$timeFilter`` and the intervals."""
    browser = interpolate(query, variables, INFLUXQL, _INFLUX_FRONTEND_BUILTINS)
    return influx_backend_builtins(browser, time_range, bounds_ns, interval_ms)


def influx_variable_query(
    query: str,
    variables: Mapping[str, Variable],
    time_range: TimeRange,
    bounds_ns: tuple[int, int],
    interval_ms: int,
) -> str:
    """A variable's InfluxQL query as Grafana 11.6 sends it: variables.ts replaces the variables (a single-value
    one unescaped, see ``influx_query_expr``) and the first ``$timeFilter`` (JavaScript's ``String.replace`` with
    a string pattern replaces once) with the browser's time filter; ``metricFindQuery`` then sends it through
    ``DataSourceWithBackend.query``, which applies applyTemplateVariables once more (to the substituted text),
    and the backend replaces what is left."""
    browser = interpolate(query, variables, INFLUXQL_VARIABLE)
    browser = browser.replace("$timeFilter", time_range.frontend_time_filter(bounds_ns), 1)
    return influx_panel_query(browser, variables, time_range, bounds_ns, interval_ms)


# ------------------------------------------------------------------------------------------------ results


@dataclass
class Series:
    """One line of a time-series panel."""

    name: str
    points: list[tuple[int, float | None]]  # (epoch ms, value)
    labels: dict[str, str] = field(default_factory=dict)

    def non_null(self) -> list[tuple[int, float]]:
        return [(t, v) for t, v in self.points if v is not None and not (isinstance(v, float) and math.isnan(v))]


@dataclass
class QueryResult:
    """What one target returned: series (time series), a table (columns and rows), and/or log hits."""

    ref_id: str
    datasource: str
    text: str  # the interpolated InfluxQL, or the Elasticsearch search body as JSON
    series: list[Series] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    hits: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    # A hidden target: run because an expression uses it, its own result not shown (Grafana drops it).
    hidden: bool = False


@dataclass
class StatValue:
    """One value of a stat panel: the field's name, the panel's reducer applied to it, and the text shown."""

    name: str
    value: float | None
    text: str


def _reduce(calc: str, values: Sequence[float | None]) -> float | None:
    """Grafana's field reducers the dashboards use (``lastNotNull``, ``last``, ``sum``, ``mean``, ``max``, ``min``,
    ``count``, ``firstNotNull``, ``first``); nulls are skipped, NaN is "not null" only for the arithmetic ones."""
    present = [v for v in values if v is not None]
    finite = [v for v in present if not math.isnan(v)]
    if calc == "lastNotNull":
        return finite[-1] if finite else None
    if calc == "firstNotNull":
        return finite[0] if finite else None
    if calc == "last":
        return values[-1] if values else None
    if calc == "first":
        return values[0] if values else None
    if calc == "count":
        return float(len(values))
    if not present:
        return None
    if calc == "sum":
        return float(sum(present))
    if calc == "mean":
        return float(sum(present)) / len(present)
    if calc == "max":
        return max(present)
    if calc == "min":
        return min(present)
    raise QueryError(f"reducer {calc!r} is not supported here")


def format_value(value: Any, unit: str = "short") -> str:
    """A value as Grafana would print it, roughly: SI suffixes, percent, seconds, per second."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    number = float(value)
    if unit == "s" and 0 < abs(number) < 1:
        number, unit = number * 1000, "ms"
        if abs(number) < 1:
            return f"{number * 1000:.3g} µs"
    suffix = {"s": " s", "cps": "/s", "ms": " ms"}.get(unit, "")
    if abs(number) >= 1e3:
        for size, letter in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(number) >= size:
                return f"{number / size:.4g}{letter}{suffix}"
    if number == int(number) and abs(number) < 1e6:
        return f"{int(number)}{suffix}"
    return f"{number:.4g}{suffix}"


def _special_mapping(mappings: Iterable[Mapping[str, Any]], value: float | None) -> str | None:
    """The text of a special-value mapping (``null``, ``nan``, ``null+nan``) that matches, else None."""
    is_null = value is None
    is_nan = value is not None and math.isnan(value)
    for mapping in mappings:
        options = mapping.get("options") or {}
        match = options.get("match")
        if mapping.get("type") == "special" and (
            (match == "null" and is_null)
            or (match == "nan" and is_nan)
            or (match == "null+nan" and (is_null or is_nan))
        ):
            return str((options.get("result") or {}).get("text") or "")
    return None


@dataclass
class PanelResult:
    dashboard_uid: str
    panel_id: int
    type: str
    title: str  # with variables replaced
    grid: tuple[int, int, int, int]  # x, y, w, h, repeats laid out as Grafana lays them out
    panel: dict[str, Any]
    queries: list[QueryResult]
    scoped: dict[str, str] = field(default_factory=dict)  # a repeated copy's variable value
    interval_ms: int = 0

    @property
    def shown(self) -> list[QueryResult]:
        """The results the panel shows (hidden targets left out)."""
        return [q for q in self.queries if not q.hidden]

    @property
    def series(self) -> list[Series]:
        return [s for q in self.shown for s in q.series]

    @property
    def errors(self) -> list[str]:
        return [f"{q.ref_id}: {q.error}" for q in self.queries if q.error]

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """The panel's rows (every target's, merged by column name)."""
        columns: list[str] = []
        rows: list[dict[str, Any]] = []
        for q in self.shown:
            if q.columns:
                columns += [c for c in q.columns if c not in columns]
                rows += [dict(zip(q.columns, row, strict=True)) for row in q.rows]
            elif q.series:
                # A time-series query shown as a table: one row per series, its last value (stat panels too).
                for s in q.series:
                    points = s.non_null()
                    if points:
                        if "name" not in columns:
                            columns += ["name", "value"]
                        rows.append({"name": s.name, "value": points[-1][1]})
        return columns, [[row.get(c) for c in columns] for row in rows]

    @property
    def hits(self) -> list[dict[str, Any]]:
        return [h for q in self.shown for h in q.hits]

    def stat(self) -> list[StatValue]:
        """What a stat panel shows: one value per numeric field (each series; each numeric column of a table),
        reduced with the panel's ``reduceOptions.calcs``, its text after the panel's special-value mappings. No
        field at all is Grafana's "no data": one value, None, shown as the panel's ``noValue`` (else "No data")."""
        options = self.panel.get("options") or {}
        calc = ((options.get("reduceOptions") or {}).get("calcs") or ["lastNotNull"])[0]
        defaults = (self.panel.get("fieldConfig") or {}).get("defaults") or {}
        unit = str(defaults.get("unit") or "short")
        fields: list[tuple[str, list[float | None]]] = [(s.name, [v for _, v in s.points]) for s in self.series]
        for q in self.shown:
            for i, column in enumerate(q.columns):
                numbers = [_number(row[i]) for row in q.rows]
                if column not in ("Time", "time") and any(n is not None for n in numbers):
                    fields.append((column, numbers))
        if not fields:
            return [StatValue("", None, str(defaults.get("noValue") or "No data"))]
        out = []
        for name, values in fields:
            value = _reduce(calc, values)
            text = _special_mapping(defaults.get("mappings") or [], value)
            if text is None:
                text = str(defaults.get("noValue") or "") if value is None else format_value(value, unit)
            out.append(StatValue(name, value, text))
        return out

    def unpinned_columns(self) -> list[str]:
        """Columns of an InfluxDB table whose place no ``organize`` transformation fixes. Grafana's InfluxQL
        backend makes a table's tag columns from a map, so their order changes from one refresh to the next unless
        the panel orders them (this module sorts them, which would hide that)."""
        order: dict[str, int] = {}
        for spec in self.panel.get("transformations") or []:
            if spec.get("id") == "organize" and not spec.get("disabled"):
                order.update((spec.get("options") or {}).get("indexByName") or {})
        out: list[str] = []
        for q in self.shown:
            ds = DATASOURCES.get(q.datasource)
            if ds is not None and ds.type == "influxdb":
                out += [c for c in q.columns if c not in order and c not in out]
        return out

    def shape_problem(self) -> str | None:
        """Why the data does not have the shape the panel needs, or None: a time series needs a series with a
        non-null point, a stat or a table a row, a logs panel a hit with a message."""
        if self.errors:
            return "query failed: " + "; ".join(self.errors)
        if self.type == "timeseries":
            if not any(s.non_null() for s in self.series):
                return f"no series with a non-null point ({len(self.series)} series)"
        elif self.type == "stat":
            if all(v.value is None for v in self.stat()):
                return "no value"
        elif self.type == "table":
            if not self.table()[1]:
                return "no rows"
            unpinned = self.unpinned_columns()
            if unpinned:
                return f"column order not pinned by an organize transformation: {unpinned}"
        elif self.type == "logs" and not any("message" in hit for hit in self.hits):
            return f"no hit with a message ({len(self.hits)} hits)"
        return None


@dataclass
class AnnotationEvent:
    time_ms: int
    text: str
    tags: list[str]


@dataclass
class AnnotationResult:
    name: str
    datasource: str
    text: str
    events: list[AnnotationEvent] = field(default_factory=list)
    error: str | None = None
    # A query on Grafana's own annotations: the /api/annotations parameters (None: Grafana makes no request).
    grafana_request: dict[str, Any] | None = None

    @property
    def needs_grafana(self) -> bool:
        return self.datasource == GRAFANA_UID


@dataclass
class DashboardResult:
    uid: str
    title: str
    time_range: TimeRange
    start_ns: int
    end_ns: int
    variables: dict[str, Variable]
    panels: list[PanelResult]
    annotations: list[AnnotationResult]
    variable_queries: dict[str, str] = field(default_factory=dict)  # interpolated


# ------------------------------------------------------------------------------------------- dashboards


def load_dashboards(directory: Path = DASHBOARDS_DIR) -> list[dict[str, Any]]:
    """The committed dashboards, in the order of ``dashboards.generate.DASHBOARDS``."""
    return [json.loads((directory / f"{name}.json").read_text(encoding="utf-8")) for name in DASHBOARDS]


def _datasource(ref: Mapping[str, Any] | None, fallback: Mapping[str, Any] | None = None) -> Datasource:
    uid = (ref or {}).get("uid") or (fallback or {}).get("uid")
    if uid not in DATASOURCES:
        raise QueryError(f"unknown data source {uid!r} (provisioned: {', '.join(DATASOURCES)})")
    return DATASOURCES[uid]


def panels_of(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel with queries; panels inside collapsed rows included, rows themselves not."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


def resolve_variables(
    dashboard: Mapping[str, Any],
    stores: Stores,
    time_range: TimeRange,
    overrides: Mapping[str, str | Sequence[str]] | None = None,
    bounds_ns: tuple[int, int] | None = None,
) -> tuple[dict[str, Variable], dict[str, str]]:
    """Each query variable's options from its own query (earlier variables substituted as Grafana substitutes
    them in a variable query, see ``influx_variable_query``), and its selection. Returns the variables and each
    one's query as sent."""
    variables: dict[str, Variable] = {}
    texts: dict[str, str] = {}
    bounds = bounds_ns or time_range.bounds_ns()
    for spec in dashboard.get("templating", {}).get("list", []):
        name = spec["name"]
        if spec.get("type") != "query":
            raise QueryError(f"variable {name}: only query variables are supported, not {spec.get('type')!r}")
        query = spec["query"] if isinstance(spec["query"], str) else str(spec["query"].get("query", ""))
        ds = _datasource(spec.get("datasource"))
        if ds.type != "influxdb":
            raise QueryError(f"variable {name}: only InfluxDB variables are supported")
        # A variable query has no panel width: $__interval (unused by these dashboards) is taken over a full screen.
        interval_ms = calculate_interval_ms((bounds[1] - bounds[0]) // 1_000_000, SCREEN_WIDTH_PX, ds.time_interval)
        text = influx_variable_query(query, variables, time_range, bounds, interval_ms)
        texts[name] = text
        options = _variable_options(stores.influxql(text), spec.get("regex") or "", int(spec.get("sort") or 0))
        selected = _selection(spec, options, (overrides or {}).get(name))
        variables[name] = Variable(
            name,
            options,
            selected,
            bool(spec.get("multi")),
            bool(spec.get("includeAll")),
            spec.get("allValue") or None,
            query,
        )
    return variables, texts


def _variable_options(result: Mapping[str, Any], regex: str, sort: int) -> list[str]:
    values: list[str] = []
    for series in result.get("series", []):
        columns = series["columns"]
        # SHOW TAG VALUES answers (key, value); other queries: the first column that is not time.
        index = (
            columns.index("value") if "value" in columns else (1 if columns[0] == "time" and len(columns) > 1 else 0)
        )
        values += [str(row[index]) for row in series["values"] if row[index] is not None]
    if regex:
        pattern = re.compile(regex.strip("/"))
        kept = []
        for v in values:
            m = pattern.search(v)
            if m:
                kept.append(m.group("value") if "value" in pattern.groupindex else m.group(1) if m.groups() else v)
        values = kept
    values = list(dict.fromkeys(values))
    if sort in (1, 2):
        values.sort(reverse=sort == 2)
    elif sort in (3, 4):
        values.sort(key=lambda v: float(re.sub(r"[^\d.-]", "", v) or 0), reverse=sort == 4)
    elif sort in (5, 6):
        values.sort(key=str.lower, reverse=sort == 6)
    return values


def _selection(spec: Mapping[str, Any], options: list[str], override: str | Sequence[str] | None) -> list[str]:
    if override is not None:
        chosen = [override] if isinstance(override, str) else list(override)
        return [ALL] if chosen in (["All"], [ALL]) else chosen
    current = spec.get("current") or {}
    value = current.get("value")
    if value:
        chosen = [value] if isinstance(value, str) else list(value)
        if chosen == [ALL] or all(v in options for v in chosen):
            return chosen
    if spec.get("includeAll"):
        return [ALL]
    return options[:1]


def run_dashboard(
    dashboard: Mapping[str, Any],
    stores: Stores,
    time_range: TimeRange,
    variables: Mapping[str, str | Sequence[str]] | None = None,
    on_panel: Callable[[PanelResult], None] | None = None,
) -> DashboardResult:
    """Resolve the variables, then run every panel's queries (repeats expanded) and the annotation queries."""
    start_ns, end_ns = time_range.bounds_ns()
    resolved, texts = resolve_variables(dashboard, stores, time_range, variables, (start_ns, end_ns))
    layout = _layout(panels_of(dashboard), resolved)
    panels: list[PanelResult] = []
    for panel, grid, scoped in layout:
        scope = dict(resolved)
        scope.update({name: resolved[name].scoped_to(value) for name, value in scoped.items()})
        result = run_panel(dashboard, panel, grid, scope, stores, time_range, (start_ns, end_ns))
        result.scoped = dict(scoped)
        panels.append(result)
        if on_panel is not None:
            on_panel(result)
    annotations = [
        run_annotation(spec, resolved, stores, time_range, (start_ns, end_ns), str(dashboard.get("uid", "")))
        for spec in dashboard.get("annotations", {}).get("list", [])
        if not spec.get("builtIn") and spec.get("enable", True)
    ]
    return DashboardResult(
        dashboard["uid"], dashboard["title"], time_range, start_ns, end_ns, resolved, panels, annotations, texts
    )


def _layout(
    panels: list[dict[str, Any]], variables: Mapping[str, Variable]
) -> list[tuple[dict[str, Any], tuple[int, int, int, int], dict[str, str]]]:
    """Panels with their grid positions, repeated panels expanded as Grafana lays them out: horizontally up to
    maxPerRow a row (then wrapping), or vertically; the panels below move down by the rows the copies add."""
    ordered = sorted(panels, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    # Per original row (y), the most height a repeated panel of it adds.
    added: dict[int, tuple[int, int]] = {}  # y -> (bottom, extra height)
    copies: dict[int, list[tuple[tuple[int, int, int, int], dict[str, str]]]] = {}
    for panel in ordered:
        pos = panel["gridPos"]
        x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        repeat = panel.get("repeat")
        if not repeat or repeat not in variables:
            copies[id(panel)] = [((x, y, w, h), {})]
            continue
        values = variables[repeat].values or [""]
        n = len(values)
        if panel.get("repeatDirection", "h") == "v":
            placed = [((x, y + i * h, w, h), {repeat: v}) for i, v in enumerate(values)]
            extra = (n - 1) * h
        else:
            per_row = max(1, min(n, int(panel.get("maxPerRow") or DEFAULT_MAX_PER_ROW)))
            width = max(1, GRID_COLUMNS // per_row)
            placed = [
                ((x + (i % per_row) * width if per_row > 1 else x, y + (i // per_row) * h, width, h), {repeat: v})
                for i, v in enumerate(values)
            ]
            extra = (math.ceil(n / per_row) - 1) * h
        copies[id(panel)] = placed
        bottom, most = added.get(y, (y + h, 0))
        added[y] = (max(bottom, y + h), max(most, extra))
    out = []
    for panel in ordered:
        y = panel["gridPos"]["y"]
        shift = sum(extra for bottom, extra in added.values() if bottom <= y)
        for (x, py, w, h), scoped in copies[id(panel)]:
            out.append((panel, (x, py + shift, w, h), scoped))
    return out


def run_panel(
    dashboard: Mapping[str, Any],
    panel: Mapping[str, Any],
    grid: tuple[int, int, int, int],
    variables: Mapping[str, Variable],
    stores: Stores,
    time_range: TimeRange,
    bounds_ns: tuple[int, int],
) -> PanelResult:
    """Every target of one panel (one copy of a repeated panel). With server-side expressions among the targets,
    hidden targets run too (an expression may use them; Grafana's query runner hands the whole request to the
    expression service before filtering hidden queries out, grafana/grafana#84977) and only their results are
    left out of the panel; otherwise hidden targets do not run."""
    w = grid[2]
    start_ns, end_ns = bounds_ns
    resolution = int(panel.get("maxDataPoints") or max(1, round(w / GRID_COLUMNS * SCREEN_WIDTH_PX)))
    targets = list(panel.get("targets", []))
    has_expressions = any(_is_expression(t) for t in targets)
    results: list[QueryResult] = []
    by_ref: dict[str, QueryResult] = {}
    interval_ms = 0
    for target in targets:
        if _is_expression(target) or (target.get("hide") and not has_expressions):
            continue
        ref = str(target.get("refId", "A"))
        try:
            ds = _datasource(target.get("datasource"), panel.get("datasource"))
        except QueryError as exc:
            results.append(QueryResult(ref, "", "", error=str(exc)))
            continue
        interval_ms = calculate_interval_ms(
            (end_ns - start_ns) // 1_000_000, resolution, panel.get("interval") or ds.time_interval
        )
        try:
            if ds.type == "influxdb":
                result = run_influx_target(target, variables, stores, time_range, bounds_ns, interval_ms)
            else:
                result = run_es_target(target, ds, variables, stores, bounds_ns, interval_ms)
        except (QueryError, urllib3.exceptions.HTTPError, OSError) as exc:
            result = QueryResult(ref, ds.uid, "", error=str(exc))
        result.hidden = bool(target.get("hide"))
        results.append(result)
        by_ref[ref] = result
    for target in targets:
        if _is_expression(target):
            result = run_expression(target, by_ref, end_ns // 1_000_000)
            result.hidden = bool(target.get("hide"))
            results.append(result)
            by_ref[result.ref_id] = result
    results = _transform(results, panel.get("transformations", []))
    title = interpolate(panel.get("title", ""), variables, "text")
    return PanelResult(
        dashboard.get("uid", ""),
        int(panel.get("id", 0)),
        panel.get("type", ""),
        title,
        grid,
        dict(panel),
        results,
        interval_ms=interval_ms,
    )


# ------------------------------------------------------------------------------------- server-side expressions

EXPRESSION_UID = "__expr__"


def _is_expression(target: Mapping[str, Any]) -> bool:
    return str((target.get("datasource") or {}).get("uid", "")) == EXPRESSION_UID


def run_expression(target: Mapping[str, Any], inputs: Mapping[str, QueryResult], at_ms: int) -> QueryResult:
    """A Grafana server-side expression over the panel's other results: ``reduce`` (a series to one number per
    series: sum, mean, min, max, count, last, median; mode ``""`` is strict, NaN when a value is null or NaN,
    ``dropNN`` drops them) and ``math`` (``+ - * /`` and parentheses over ``$refId`` and numbers; numbers and
    series combine when each side has one item or their labels are equal; division by zero gives Inf or NaN, as
    Go's float64 does). A number is a one-point series at the range's end."""
    ref = str(target.get("refId", ""))
    kind = str(target.get("type", ""))
    expression = str(target.get("expression", ""))
    result = QueryResult(ref, EXPRESSION_UID, f"{kind}: {expression}")
    try:
        if kind == "reduce":
            source = inputs.get(expression.strip().lstrip("$").strip("{}"))
            if source is None:
                raise QueryError(f"reduce: no query {expression!r}")
            if source.error:
                raise QueryError(f"reduce: {source.ref_id} failed")
            mode = str((target.get("settings") or {}).get("mode") or "")
            reducer = str(target.get("reducer", "mean"))
            result.series = [
                Series(s.name, [(at_ms, _sse_reduce(reducer, [v for _, v in s.points], mode))], dict(s.labels))
                for s in source.series
            ]
        elif kind == "math":
            value = _MathParser(expression, inputs, at_ms).parse()
            result.series = value if isinstance(value, list) else [Series(ref, [(at_ms, value)])]
        else:
            raise QueryError(f"expression type {kind!r} is not supported here")
    except QueryError as exc:
        result.error = str(exc)
    return result


def _sse_reduce(reducer: str, values: Sequence[float | None], mode: str) -> float | None:
    numbers = [math.nan if v is None else v for v in values]
    if mode == "dropNN":
        numbers = [v for v in numbers if not math.isnan(v)]
    elif any(math.isnan(v) for v in numbers):
        return math.nan
    if reducer == "count":
        return float(len(numbers))
    if reducer == "sum":
        return float(sum(numbers))
    if not numbers:
        return math.nan
    if reducer == "mean":
        return sum(numbers) / len(numbers)
    if reducer == "min":
        return min(numbers)
    if reducer == "max":
        return max(numbers)
    if reducer == "last":
        return numbers[-1]
    if reducer == "median":
        ordered = sorted(numbers)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    raise QueryError(f"reducer {reducer!r} is not supported here")


MathValue = float | list[Series]


def _go_divide(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return a / b


_OPERATORS: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _go_divide,
}


def _combine(op: str, left: MathValue, right: MathValue) -> MathValue:
    fn = _OPERATORS[op]

    def apply(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else fn(a, b)

    if isinstance(left, float) and isinstance(right, float):
        return fn(left, right)
    if isinstance(left, float) or isinstance(right, float):
        scalar = left if isinstance(left, float) else right
        items = right if isinstance(left, float) else left
        assert isinstance(items, list) and isinstance(scalar, float)
        first = isinstance(left, float)
        return [
            Series(s.name, [(t, apply(scalar, v) if first else apply(v, scalar)) for t, v in s.points], dict(s.labels))
            for s in items
        ]
    assert isinstance(left, list) and isinstance(right, list)
    pairs = (
        [(left[0], right[0])]
        if len(left) == 1 and len(right) == 1
        else [(a, b) for a in left for b in right if a.labels == b.labels]
    )
    out = []
    for a, b in pairs:
        if len(a.points) == 1 and len(b.points) == 1:
            points = [(a.points[0][0], apply(a.points[0][1], b.points[0][1]))]
        else:
            other = dict(b.points)
            points = [(t, apply(v, other[t])) for t, v in a.points if t in other]
        out.append(Series(a.name, points, dict(a.labels or b.labels)))
    return out


class _MathParser:
    """A recursive-descent reader of a math expression: sum := term (('+'|'-') term)*, term := factor
    (('*'|'/') factor)*, factor := number | $ref | ${ref} | '(' sum ')' | '-' factor."""

    _TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|\$\{(\w+)\}|\$(\w+)|(.))")

    def __init__(self, text: str, inputs: Mapping[str, QueryResult], at_ms: int) -> None:
        self.tokens: list[tuple[str, str]] = []
        for number, braced, ref, char in self._TOKEN.findall(text):
            if number:
                self.tokens.append(("number", number))
            elif braced or ref:
                self.tokens.append(("ref", braced or ref))
            elif char.strip():
                self.tokens.append(("op", char))
        self.inputs, self.at_ms, self.i = inputs, at_ms, 0

    def parse(self) -> MathValue:
        value = self._sum()
        if self.i != len(self.tokens):
            raise QueryError(f"math: unexpected {self.tokens[self.i][1]!r}")
        return value

    def _peek(self) -> str:
        return self.tokens[self.i][1] if self.i < len(self.tokens) and self.tokens[self.i][0] == "op" else ""

    def _sum(self) -> MathValue:
        value = self._term()
        while self._peek() in ("+", "-"):
            op = self.tokens[self.i][1]
            self.i += 1
            value = _combine(op, value, self._term())
        return value

    def _term(self) -> MathValue:
        value = self._factor()
        while self._peek() in ("*", "/"):
            op = self.tokens[self.i][1]
            self.i += 1
            value = _combine(op, value, self._factor())
        return value

    def _factor(self) -> MathValue:
        if self.i >= len(self.tokens):
            raise QueryError("math: the expression ends early")
        kind, text = self.tokens[self.i]
        self.i += 1
        if kind == "number":
            return float(text)
        if kind == "ref":
            source = self.inputs.get(text)
            if source is None:
                raise QueryError(f"math: no query ${text}")
            if source.error:
                raise QueryError(f"math: {text} failed")
            return [Series(s.name, list(s.points), dict(s.labels)) for s in source.series]
        if text == "(":
            value = self._sum()
            if self._peek() != ")":
                raise QueryError("math: a parenthesis is not closed")
            self.i += 1
            return value
        if text == "-":
            return _combine("*", -1.0, self._factor())
        raise QueryError(f"math: unexpected {text!r}")


# ----------------------------------------------------------------------------------------------- InfluxDB


def run_influx_target(
    target: Mapping[str, Any],
    variables: Mapping[str, Variable],
    stores: Stores,
    time_range: TimeRange,
    bounds_ns: tuple[int, int],
    interval_ms: int,
) -> QueryResult:
    query = influx_panel_query(str(target.get("query", "")), variables, time_range, bounds_ns, interval_ms)
    result = QueryResult(str(target.get("refId", "A")), str(target.get("datasource", {}).get("uid", "")), query)
    raw = stores.influxql(query)
    if target.get("resultFormat") == "table":
        _influx_table(raw, result)
    else:
        result.series = _influx_series(raw, target.get("alias") or "")
    return result


def _influx_series(raw: Mapping[str, Any], alias: str) -> list[Series]:
    out = []
    for series in raw.get("series", []):
        columns: list[str] = series["columns"]
        tags: dict[str, str] = {k: v for k, v in (series.get("tags") or {}).items() if v != ""}
        measurement = series.get("name", "")
        for i, column in enumerate(columns):
            if column == "time":
                continue
            points = [(int(row[0]), _number(row[i])) for row in series["values"]]
            out.append(Series(_series_name(measurement, column, tags, alias), points, dict(tags)))
    return out


def _series_name(measurement: str, column: str, tags: Mapping[str, str], alias: str) -> str:
    """Grafana's names: the alias with ``$m``, ``$col``, ``$tag_<key>`` replaced, else ``measurement.column
    {tags}``."""
    if alias:

        def replace(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            if name in ("m", "measurement"):
                return measurement
            if name == "col":
                return column
            if name.startswith("tag_"):
                return tags.get(name[4:], "")
            return match.group(0)

        return re.sub(r"\$(\w+)|\[\[(\w+)\]\]", replace, alias)
    name = f"{measurement}.{column}"
    if tags:
        name += " {" + ", ".join(f"{k}: {v}" for k, v in sorted(tags.items())) + "}"
    return name


def _influx_table(raw: Mapping[str, Any], result: QueryResult) -> None:
    """Grafana's table format: Time, the series' tags, then the value columns; every series' rows in one table
    (what the ``merge`` transformation makes of the frames)."""
    for series in raw.get("series", []):
        tags: dict[str, str] = series.get("tags") or {}
        columns = ["Time" if c == "time" else c for c in series["columns"]]
        names = (
            [columns[0], *sorted(tags), *columns[1:]] if columns and columns[0] == "Time" else [*sorted(tags), *columns]
        )
        for name in names:
            if name not in result.columns:
                result.columns.append(name)
        for values in series["values"]:
            row = dict(zip(columns, values, strict=True))
            row.update(tags)
            result.rows.append([row.get(c) for c in result.columns])
    width = len(result.columns)
    result.rows = [row + [None] * (width - len(row)) for row in result.rows]


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ Elasticsearch


def es_search_body(
    target: Mapping[str, Any], ds: Datasource, lucene: str, bounds_ms: tuple[int, int], interval_ms: int
) -> dict[str, Any]:
    """The search Grafana 11's Elasticsearch backend builds for a target (pkg/tsdb/elasticsearch/data_query.go)."""
    start_ms, end_ms = bounds_ms
    time_field = ds.time_field
    range_filter = {"range": {time_field: {"format": "epoch_millis", "gte": start_ms, "lte": end_ms}}}
    filters: list[dict[str, Any]] = [range_filter]
    if lucene.strip():
        filters.append({"query_string": {"analyze_wildcard": True, "query": lucene}})
    body: dict[str, Any] = {"query": {"bool": {"filter": filters[0] if len(filters) == 1 else filters}}, "size": 0}
    metrics: list[dict[str, Any]] = list(target.get("metrics") or [{"id": "1", "type": "count"}])
    first = metrics[0]
    if first["type"] in ("logs", "raw_data", "raw_document"):
        settings = first.get("settings") or {}
        size = _int_setting(settings.get("limit" if first["type"] == "logs" else "size"), 500)
        body.update(
            {
                "size": size,
                "sort": [{time_field: {"order": "desc", "unmapped_type": "boolean"}}, {"_doc": {"order": "desc"}}],
                "docvalue_fields": [time_field],
                "script_fields": {},
                "fields": [{"field": time_field, "format": "strict_date_optional_time_nanos"}],
            }
        )
        if first["type"] == "logs":
            # The logs panel's volume histogram and highlighting come with the same search.
            body["highlight"] = {
                "fields": {"*": {}},
                "fragment_size": 2147483647,
                "post_tags": ["@/HIGHLIGHT@"],
                "pre_tags": ["@HIGHLIGHT@"],
            }
            body["aggs"] = {"1": {"date_histogram": _date_histogram(time_field, {}, bounds_ms, interval_ms)}}
        return body
    aggs: dict[str, Any] = {}
    level = aggs
    for bucket in target.get("bucketAggs") or []:
        settings = bucket.get("settings") or {}
        if bucket["type"] == "date_histogram":
            agg: dict[str, Any] = {
                "date_histogram": _date_histogram(bucket.get("field") or time_field, settings, bounds_ms, interval_ms)
            }
        elif bucket["type"] == "terms":
            terms: dict[str, Any] = {"field": bucket["field"], "size": _int_setting(settings.get("size"), 500)}
            if "min_doc_count" in settings:
                terms["min_doc_count"] = _int_setting(settings["min_doc_count"], 0)
            if settings.get("orderBy"):
                order_by = settings["orderBy"]
                # Ordering by a count metric is ordering by _count; "_term" is "_key" since Elasticsearch 6.
                if order_by == "_term" or any(m["id"] == order_by and m["type"] == "count" for m in metrics):
                    order_by = "_key" if order_by == "_term" else "_count"
                terms["order"] = {order_by: settings.get("order", "desc")}
            if "missing" in settings:
                terms["missing"] = settings["missing"]
            agg = {"terms": terms}
        else:
            raise QueryError(f"bucket aggregation {bucket['type']!r} is not supported here")
        agg["aggs"] = {}
        level[str(bucket["id"])] = agg
        level = agg["aggs"]
    for metric in metrics:
        if metric["type"] == "count" or metric.get("hide"):
            continue
        if metric["type"] not in ("avg", "sum", "min", "max", "cardinality", "value_count"):
            raise QueryError(f"metric {metric['type']!r} is not supported here")
        level[str(metric["id"])] = {metric["type"]: {"field": metric["field"], **(metric.get("settings") or {})}}
    body["aggs"] = aggs
    return body


def _date_histogram(
    field_name: str, settings: Mapping[str, Any], bounds_ms: tuple[int, int], interval_ms: int
) -> dict[str, Any]:
    interval = str(settings.get("interval") or "auto")
    return {
        "extended_bounds": {"max": bounds_ms[1], "min": bounds_ms[0]},
        "field": field_name,
        # "auto" is Grafana's $__interval_ms, in milliseconds.
        "fixed_interval": f"{interval_ms}ms" if interval == "auto" else interval,
        "format": "epoch_millis",
        "min_doc_count": _int_setting(settings.get("min_doc_count"), 0),
    }


def _int_setting(value: Any, default: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    # As Grafana: 0 (or a blank) means the default for sizes; min_doc_count 0 is asked for with default 0.
    return number if number or default == 0 else default


def run_es_target(
    target: Mapping[str, Any],
    ds: Datasource,
    variables: Mapping[str, Variable],
    stores: Stores,
    bounds_ns: tuple[int, int],
    interval_ms: int,
) -> QueryResult:
    # The Elasticsearch data source interpolates in the browser, in Lucene format, with the panel's intervals.
    builtins = {"__interval": interval_text(interval_ms), "__interval_ms": str(interval_ms)}
    lucene = interpolate(str(target.get("query") or ""), variables, "lucene", builtins)
    bounds_ms = (bounds_ns[0] // 1_000_000, bounds_ns[1] // 1_000_000)
    body = es_search_body(target, ds, lucene, bounds_ms, interval_ms)
    result = QueryResult(str(target.get("refId", "A")), ds.uid, json.dumps(body, sort_keys=True))
    response = stores.msearch(stores.es_pattern(ds), body)
    metrics = list(target.get("metrics") or [{"id": "1", "type": "count"}])
    kind = metrics[0]["type"]
    hits = [_flatten_hit(hit) for hit in response.get("hits", {}).get("hits", [])]
    if kind == "logs":
        result.hits = hits
        result.columns = [ds.time_field, ds.log_level_field, "service.name", ds.log_message_field or "message"]
        result.rows = [[hit.get(c) for c in result.columns] for hit in hits]
    elif kind in ("raw_data", "raw_document"):
        result.hits = hits
        columns: list[str] = []
        for hit in hits:
            columns += [c for c in hit if c not in columns]
        result.columns = columns
        result.rows = [[hit.get(c) for c in columns] for hit in hits]
    else:
        result.series = _es_series(response.get("aggregations", {}), list(target.get("bucketAggs") or []), metrics)
    return result


def _flatten_hit(hit: Mapping[str, Any]) -> dict[str, Any]:
    """A hit as Grafana shows it: ``_source`` flattened to dotted names, plus ``_id`` and ``_index``."""
    out: dict[str, Any] = {"_id": hit.get("_id"), "_index": hit.get("_index")}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out[prefix] = value

    walk("", hit.get("_source", {}))
    return out


def _es_series(aggs: Mapping[str, Any], buckets: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> list[Series]:
    """Series from nested bucket aggregations: one per terms key (path), points from the date histogram."""
    shown = [m for m in metrics if not m.get("hide")]
    out: list[Series] = []

    def walk(level: Mapping[str, Any], depth: int, labels: dict[str, str]) -> None:
        spec = buckets[depth]
        node = level.get(str(spec["id"]), {})
        if spec["type"] == "date_histogram":
            for metric in shown:
                points = [(int(b["key"]), _metric_value(b, metric)) for b in node.get("buckets", [])]
                name = " ".join(labels.values())
                if len(shown) > 1 or not name:
                    name = f"{name} {_metric_label(metric)}".strip()
                out.append(Series(name, points, dict(labels)))
            return
        for bucket in node.get("buckets", []):
            key = str(bucket.get("key_as_string", bucket["key"]))
            walk(bucket, depth + 1, {**labels, str(spec.get("field", spec["id"])): key})

    if buckets:
        walk(aggs, 0, {})
    return out


def _metric_value(bucket: Mapping[str, Any], metric: Mapping[str, Any]) -> float | None:
    if metric["type"] == "count":
        return float(bucket["doc_count"])
    return _number(bucket.get(str(metric["id"]), {}).get("value"))


def _metric_label(metric: Mapping[str, Any]) -> str:
    return "Count" if metric["type"] == "count" else f"{metric['type'].capitalize()} {metric.get('field', '')}".strip()


# ------------------------------------------------------------------------------------------ transformations


def _transform(results: list[QueryResult], transformations: Iterable[Mapping[str, Any]]) -> list[QueryResult]:
    """The transformations the dashboards use: ``merge`` (done already: tables come merged) and ``organize``
    (hide and order columns)."""
    for spec in transformations:
        if spec.get("disabled") or spec.get("id") != "organize":
            continue
        options = spec.get("options") or {}
        hidden = {k for k, v in (options.get("excludeByName") or {}).items() if v}
        order: dict[str, int] = options.get("indexByName") or {}
        for result in results:
            if not result.columns:
                continue
            index = {c: i for i, c in enumerate(result.columns)}
            # Listed columns in their order, the others after them as they came.
            keep = sorted(
                (c for c in result.columns if c not in hidden), key=lambda c: (order.get(c, len(order)), index[c])
            )
            result.rows = [[row[index[c]] for c in keep] for row in result.rows]
            result.columns = keep
    return results


# ---------------------------------------------------------------------------------------------- annotations


def run_annotation(
    spec: Mapping[str, Any],
    variables: Mapping[str, Variable],
    stores: Stores,
    time_range: TimeRange,
    bounds_ns: tuple[int, int],
    dashboard_uid: str = "",
) -> AnnotationResult:
    """An annotation query: InfluxQL (``target.query``, text and tags columns) or Elasticsearch (the Lucene query
    in ``target.query``, ``timeField``/``textField``/``tagsField``), as Grafana 11 runs them. A query on Grafana's
    own annotations cannot run without Grafana: its result carries the request Grafana would make
    (``grafana_request``, see ``grafana_annotation_request``) and no events."""
    name = str(spec.get("name", ""))
    if _is_grafana(spec.get("datasource")):
        request = grafana_annotation_request(spec, variables, dashboard_uid, bounds_ns)
        return AnnotationResult(name, GRAFANA_UID, json.dumps(request, sort_keys=True), grafana_request=request)
    try:
        ds = _datasource(spec.get("datasource"))
    except QueryError as exc:
        return AnnotationResult(name, "", "", error=str(exc))
    target = spec.get("target") or {}
    try:
        if ds.type == "influxdb":
            # annotationEvents: the browser substitutes with interpolateQueryExpr given the annotation's query, the
            # backend replaces $timeFilter (/api/ds/query with the dashboard's range).
            interval_ms = calculate_interval_ms(
                (bounds_ns[1] - bounds_ns[0]) // 1_000_000, SCREEN_WIDTH_PX, ds.time_interval
            )
            query = influx_panel_query(
                str(target.get("query") or spec.get("query") or ""), variables, time_range, bounds_ns, interval_ms
            )
            result = AnnotationResult(name, ds.uid, query)
            raw = stores.influxql(query)
            text_col, tags_col = target.get("textColumn") or "", target.get("tagsColumn") or ""
            for series in raw.get("series", []):
                columns = series["columns"]
                for values in series["values"]:
                    row = dict(zip(columns, values, strict=True))
                    row.update(series.get("tags") or {})
                    tags = [str(row[c.strip()]) for c in tags_col.split(",") if c.strip() and row.get(c.strip())]
                    result.events.append(AnnotationEvent(int(row["time"]), str(row.get(text_col) or ""), tags))
            return result
        lucene = interpolate(str(spec.get("query") or target.get("query") or ""), variables, "lucene")
        start_ms, end_ms = bounds_ns[0] // 1_000_000, bounds_ns[1] // 1_000_000
        time_field = str(spec.get("timeField") or "@timestamp")
        filters: list[dict[str, Any]] = [
            {
                "bool": {
                    "minimum_should_match": 1,
                    "should": [{"range": {time_field: {"format": "epoch_millis", "from": start_ms, "to": end_ms}}}],
                }
            }
        ]
        if lucene:
            filters.append({"query_string": {"query": lucene}})
        body = {"query": {"bool": {"filter": filters}}, "size": 10000}
        result = AnnotationResult(name, ds.uid, json.dumps(body, sort_keys=True))
        response = stores.msearch(stores.es_pattern(ds), body)
        text_field = str(spec.get("textField") or "tags")
        tags_field = str(spec.get("tagsField") or "")
        for hit in response.get("hits", {}).get("hits", []):
            flat = _flatten_hit(hit)
            stamp = flat.get(time_field)
            raw_tags = flat.get(tags_field) if tags_field else None
            tags = raw_tags.split(",") if isinstance(raw_tags, str) else [str(t) for t in raw_tags or []]
            result.events.append(AnnotationEvent(_iso_ms(stamp), str(flat.get(text_field) or ""), tags))
        return result
    except (QueryError, urllib3.exceptions.HTTPError, OSError) as exc:
        return AnnotationResult(name, ds.uid, "", error=str(exc))


GRAFANA_UID = "-- Grafana --"
_TAG_DELIMITER = "__delimiter__"


def _is_grafana(ref: Mapping[str, Any] | None) -> bool:
    return (ref or {}).get("type") == "grafana" or (ref or {}).get("uid") in (GRAFANA_UID, "grafana")


def grafana_annotation_request(
    spec: Mapping[str, Any], variables: Mapping[str, Variable], dashboard_uid: str, bounds_ns: tuple[int, int]
) -> dict[str, Any] | None:
    """The ``/api/annotations`` parameters of an annotation query on Grafana's own store, as Grafana 11's
    "-- Grafana --" data source builds them (public/app/plugins/datasource/grafana/datasource.ts,
    ``getAnnotations``): ``from``/``to`` in ms, ``limit``, ``matchAny``; type ``dashboard`` (the built-in query)
    filters by ``dashboardUID`` and drops the tags; type ``tags`` needs at least one tag (else no request: None),
    each rendered by the template service with a list value joined by ``__delimiter__`` and split again. Legacy
    fields beside ``target`` are moved into it first (``prepareAnnotation``)."""
    target = dict(spec.get("target") or {})
    if not target:
        target = {
            "type": spec.get("type") or "dashboard",
            "limit": spec.get("limit") or 100,
            "tags": spec.get("tags") or [],
            "matchAny": bool(spec.get("matchAny")),
        }
    params: dict[str, Any] = {
        "from": bounds_ns[0] // 1_000_000,
        "to": bounds_ns[1] // 1_000_000,
        "limit": target.get("limit"),
        "matchAny": target.get("matchAny"),
    }
    if target.get("type") == "dashboard":
        params["dashboardUID"] = dashboard_uid
        return params
    tags = target.get("tags")
    if not isinstance(tags, list) or not tags:
        return None

    def render(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        if name not in variables:
            return match.group(0)
        value = variables[name].value()
        return value if isinstance(value, str) else _TAG_DELIMITER.join(value)

    params["tags"] = [t for tag in tags for t in _VARIABLE.sub(render, str(tag)).split(_TAG_DELIMITER)]
    return params


def _tag_pairs(tags: Iterable[str]) -> list[tuple[str, str]]:
    """Grafana's tag.ParseTagPairs: ``key:value`` (the text up to the second colon) or a bare key, both trimmed of
    spaces; an empty key is dropped."""
    pairs = []
    for text in tags:
        if ":" in text:
            parts = text.split(":")
            key, value = parts[0].strip(" "), parts[1].strip(" ")
        else:
            key, value = text.strip(" "), ""
        if key:
            pairs.append((key, value))
    return pairs


def grafana_annotations_found(
    request: Mapping[str, Any] | None, annotations: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """Which annotations Grafana's store answers ``request`` with (pkg/services/annotations/annotationsimpl/
    xorm_store.go): ``dashboardUID`` when given; ``epoch <= to AND epoch_end >= from``; per filter tag a key match
    (a bare key) or a key and value match, counted over the annotation's tags, then ``count > 0`` with ``matchAny``
    else ``count == number of filter tags``; newest first, ``limit`` (default 100). An annotation is a mapping as
    fleetwatch posts it through grafana-client (``dashboards.sync.annotation_body``: ``dashboard_uid``,
    ``time_from``, ``time_to``, ``tags``, ``text``)."""
    if request is None:
        return []
    wanted = _tag_pairs(request.get("tags") or [])
    found = []
    for annotation in annotations:
        if "dashboardUID" in request and (annotation.get("dashboard_uid") or "") != request["dashboardUID"]:
            continue
        epoch = int(annotation["time_from"])
        epoch_end = int(annotation.get("time_to") or epoch)
        if not (epoch <= int(request["to"]) and epoch_end >= int(request["from"])):
            continue
        if wanted:
            count = sum(
                1
                for key, value in _tag_pairs(annotation.get("tags") or [])
                if any(key == k and (not v or value == v) for k, v in wanted)
            )
            if not (count > 0 if request.get("matchAny") else count == len(wanted)):
                continue
        found.append(annotation)
    found.sort(key=lambda a: -int(a["time_from"]))
    return found[: int(request.get("limit") or 100)]


def _iso_ms(stamp: Any) -> int:
    from datetime import datetime

    if isinstance(stamp, int | float):
        return int(stamp)
    return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() * 1000)


def run_all(
    stores: Stores,
    time_range: TimeRange,
    directory: Path = DASHBOARDS_DIR,
    variables: Mapping[str, Mapping[str, str | Sequence[str]]] | None = None,
) -> list[DashboardResult]:
    """Every committed dashboard; ``variables`` by dashboard uid."""
    return [run_dashboard(d, stores, time_range, (variables or {}).get(d["uid"])) for d in load_dashboards(directory)]


# ------------------------------------------------------------------------------------- references vs. schema


@dataclass
class References:
    """Names the dashboards' queries use. InfluxDB: measurements; per measurement the names that must be tags
    (``GROUP BY``, ``WITH KEY``) and the names that must be a field or a tag. Elasticsearch: per index kind,
    document fields (aggregation fields, Lucene field names, annotation and log fields)."""

    measurements: set[str] = field(default_factory=set)
    tags: dict[str, set[str]] = field(default_factory=dict)
    names: dict[str, set[str]] = field(default_factory=dict)
    es_fields: dict[str, set[str]] = field(default_factory=dict)


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)+)"')
# FROM "<measurement>" or FROM "<retention policy>"."<measurement>" (a retention tier, fleetwatch/retention.py).
_FROM = re.compile(r'\bFROM\s+(?:"(?:[^"\\]|\\.)+"\.)?"((?:[^"\\]|\\.)+)"', re.IGNORECASE)
_POLICY = re.compile(r'\bFROM\s+"((?:[^"\\]|\\.)+)"\."', re.IGNORECASE)
_ALIAS = re.compile(r'\bAS\s+"((?:[^"\\]|\\.)+)"', re.IGNORECASE)
_WITH_KEY = re.compile(r'\bWITH\s+KEY\s*=\s*"((?:[^"\\]|\\.)+)"', re.IGNORECASE)
_GROUP_BY = re.compile(r"\bGROUP\s+BY\s+(.*?)(?=\bfill\s*\(|\)|\bLIMIT\b|\bORDER\b|$)", re.IGNORECASE | re.DOTALL)
_LUCENE_FIELD = re.compile(r"(?:^|[\s(])([@A-Za-z_][\w.@-]*):(?!//)")


def influxql_references(query: str, refs: References) -> None:
    measurements = set(_FROM.findall(query))
    aliases = set(_ALIAS.findall(query))
    tags = set(_WITH_KEY.findall(query))
    for clause in _GROUP_BY.findall(query):
        tags |= set(_QUOTED.findall(clause))
    others = set(_QUOTED.findall(query)) - measurements - aliases - tags - set(_POLICY.findall(query))
    refs.measurements |= measurements
    for m in measurements:
        refs.tags.setdefault(m, set()).update(tags)
        refs.names.setdefault(m, set()).update(others)


def lucene_fields(query: str) -> set[str]:
    return set(_LUCENE_FIELD.findall(query))


def references(dashboards: Iterable[Mapping[str, Any]]) -> References:
    """Every name the dashboards' targets, variables and annotations use."""
    refs = References()

    def es(ds: Datasource, names: Iterable[str]) -> None:
        refs.es_fields.setdefault(ds.index_kind, set()).update(n for n in names if n)

    for dashboard in dashboards:
        for spec in dashboard.get("templating", {}).get("list", []):
            query = spec["query"] if isinstance(spec["query"], str) else str(spec["query"].get("query", ""))
            influxql_references(query, refs)
        for spec in dashboard.get("annotations", {}).get("list", []):
            if spec.get("builtIn") or _is_grafana(spec.get("datasource")):
                continue
            ds = _datasource(spec.get("datasource"))
            target = spec.get("target") or {}
            if ds.type == "influxdb":
                influxql_references(str(target.get("query", "")), refs)
            else:
                query = str(spec.get("query") or target.get("query") or "")
                es(
                    ds,
                    [
                        *lucene_fields(query),
                        spec.get("timeField") or "@timestamp",
                        spec.get("textField") or "",
                        spec.get("tagsField") or "",
                    ],
                )
        for panel in panels_of(dashboard):
            for target in panel.get("targets", []):
                if _is_expression(target):
                    continue
                ds = _datasource(target.get("datasource"), panel.get("datasource"))
                if ds.type == "influxdb":
                    influxql_references(str(target.get("query", "")), refs)
                    continue
                names = {ds.time_field, *lucene_fields(str(target.get("query") or ""))}
                names |= {b.get("field", "") for b in target.get("bucketAggs") or []}
                names |= {m.get("field", "") for m in target.get("metrics") or []}
                if any(m["type"] == "logs" for m in target.get("metrics") or []):
                    names |= {ds.log_message_field, ds.log_level_field}
                es(ds, names)
    return refs


@dataclass
class Schema:
    """What the stores hold: InfluxDB measurements with their field and tag keys; Elasticsearch document fields
    per index kind (of the indices that exist)."""

    fields: dict[str, set[str]] = field(default_factory=dict)
    tags: dict[str, set[str]] = field(default_factory=dict)
    es_fields: dict[str, set[str]] = field(default_factory=dict)


def written_schema(stores: Stores) -> Schema:
    """``SHOW MEASUREMENTS``, ``SHOW FIELD KEYS`` (of every retention policy), ``SHOW TAG KEYS``, and each index kind's
    ``_mapping``."""
    schema = Schema()
    # Field keys are kept per retention policy (fleetwatch writes each kind to its tier): every policy's count.
    policies = [row[0] for s in stores.influxql("SHOW RETENTION POLICIES").get("series", []) for row in s["values"]]
    for series in stores.influxql("SHOW MEASUREMENTS").get("series", []):
        for (name,) in series["values"]:
            quoted = name.replace('"', '\\"')
            fields = []
            for policy in policies:
                rp = policy.replace('"', '\\"')
                fields += stores.influxql(f'SHOW FIELD KEYS FROM "{rp}"."{quoted}"').get("series", [])
            tags = stores.influxql(f'SHOW TAG KEYS FROM "{quoted}"').get("series", [])
            schema.fields[name] = {row[0] for s in fields for row in s["values"]}
            schema.tags[name] = {row[0] for s in tags for row in s["values"]}
    for ds in DATASOURCES.values():
        if ds.type != "elasticsearch" or ds.index_kind in schema.es_fields:
            continue
        try:
            mappings = stores.es("GET", f"/{stores.es_pattern(ds)}/_mapping?allow_no_indices=true")
        except QueryError:
            continue
        names: set[str] = set()
        for index in mappings.values():
            _mapping_fields("", index.get("mappings", {}).get("properties", {}), names)
        if mappings:
            schema.es_fields[ds.index_kind] = names
    return schema


def _mapping_fields(prefix: str, properties: Mapping[str, Any], out: set[str]) -> None:
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        out.add(path)
        _mapping_fields(f"{path}.", spec.get("properties", {}), out)
        for sub in spec.get("fields", {}):
            out.add(f"{path}.{sub}")


def unknown_references(refs: References, schema: Schema) -> list[str]:
    """Names the dashboards use that the stores do not hold, one message each (empty: all known)."""
    problems = []
    for m in sorted(refs.measurements):
        if m not in schema.fields:
            problems.append(f"InfluxDB measurement {m!r} was not written")
            continue
        for tag in sorted(refs.tags.get(m, set()) - schema.tags[m]):
            problems.append(f"InfluxDB {m!r}: {tag!r} is not a tag")
        for name in sorted(refs.names.get(m, set()) - schema.tags[m] - schema.fields[m]):
            problems.append(f"InfluxDB {m!r}: {name!r} is neither a field nor a tag")
    for kind, names in sorted(refs.es_fields.items()):
        if kind not in schema.es_fields:
            problems.append(f"Elasticsearch: no index for the {kind!r} data source")
            continue
        for name in sorted(names - schema.es_fields[kind]):
            problems.append(f"Elasticsearch {kind!r}: no field {name!r} in the mapping")
    return problems
