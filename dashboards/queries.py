"""Run the dashboards' queries the way Grafana runs them, against the real InfluxDB and Elasticsearch.

Grafana cannot run everywhere fleetwatch runs (CI, this project's test machine), yet a dashboard is only as good
as its queries. This module reads the dashboard JSON and does what Grafana 11 does with it:

- template variables first, in order, each from its own query against the real store (``SHOW TAG VALUES ...``),
  with earlier variables substituted; the selection is the saved ``current`` value, else All when the variable
  includes All, else the first value (Grafana's defaults); ``variables=`` overrides it;
- then every panel's targets (a repeated panel once per value of its variable, as Grafana repeats it), and the
  dashboard's annotation queries;
- InfluxQL: ``$timeFilter``, ``$__interval``/``$__interval_ms`` (Grafana's rounding, never below the data source's
  ``timeInterval``), variables formatted as the InfluxDB data source does (a multi-value or All variable becomes a
  regex-escaped ``(a|b)``), sent to ``/query`` with ``epoch=ms``;
- Elasticsearch: the search body Grafana's backend builds (``size: 0``, an ``@timestamp`` range filter, a
  ``query_string`` for the Lucene query, nested ``terms`` / ``date_histogram`` aggregations and metric
  aggregations; for logs and raw data a sorted search with ``size``), variables in Lucene format, sent through
  ``_msearch`` to the index pattern of the target's data source.

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

    def influx_filter(self) -> str:
        """``$timeFilter``: relative ranges leave the end open, as Grafana's InfluxQL editor does; explicit ranges
        are nanosecond bounds (a bare integer compared with ``time`` is nanoseconds in InfluxQL)."""
        if self.last_text is not None:
            return f"time >= now() - {self.last_text}"
        return f"time >= {self.start_ns} and time <= {self.end_ns}"

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
    timeout: float = 30.0
    http: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(retries=False))

    def es_pattern(self, ds: Datasource) -> str:
        return f"{self.index_prefix}-{ds.index_kind}*"

    def influxql(self, query: str) -> dict[str, Any]:
        """One InfluxQL statement's result (``series`` may be absent: no data)."""
        headers = {"Authorization": f"Token {self.influx_token}"} if self.influx_token else {}
        resp = self.http.request(
            "GET",
            f"{self.influx_url}/query",
            fields={"db": self.database, "q": query, "epoch": "ms"},
            headers=headers,
            timeout=self.timeout,
        )
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
        resp = self.http.request(method, f"{self.es_url}{path}", body=body, headers=headers, timeout=self.timeout)
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
    """A template variable, resolved: its options (from its query) and what is selected."""

    name: str
    options: list[str]
    selected: list[str]
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    query: str = ""

    @property
    def values(self) -> list[str]:
        """The concrete values selected (All expanded)."""
        return list(self.options) if self.selected == [ALL] else list(self.selected)

    def scoped(self, value: str) -> Variable:
        """This variable set to one value: a repeated panel's copy."""
        return Variable(self.name, self.options, [value], self.multi, self.include_all, self.all_value, self.query)

    def text(self) -> str:
        if self.selected == [ALL]:
            return "All"
        return " + ".join(self.selected)


_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_LUCENE_SPECIAL = re.compile(r'([!*+\-=<>\s&|()\[\]{}^~?:\\/"])')


def escape_regex(value: str) -> str:
    """Grafana's escapeRegex, plus ``/`` (InfluxQL's regex delimiter)."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _lucene_escape(value: str) -> str:
    return _LUCENE_SPECIAL.sub(r"\\\1", value)


def format_variable(var: Variable, fmt: str, in_regex: bool = True) -> str:
    """A variable's value in a query, in one of Grafana's formats: ``regex`` (the InfluxDB data source's default,
    its interpolateQueryExpr: a single value of a single-value variable goes in as it is unless the query uses it
    inside ``/.../``), ``lucene`` (Elasticsearch's), ``raw``, ``pipe``, ``csv``, ``singlequote``, ``doublequote``,
    ``text``."""
    if var.selected == [ALL] and var.all_value is not None:
        # A custom all value goes in as it is, in every format (Grafana does not escape it).
        return var.all_value
    values = var.values
    if fmt == "text":
        return var.text()
    if fmt == "regex":
        if len(var.selected) == 1 and var.selected != [ALL] and not var.multi and not var.include_all:
            return escape_regex(values[0]) if in_regex else values[0]
        escaped = [escape_regex(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "lucene":
        if len(values) == 1 and var.selected != [ALL]:
            return _lucene_escape(values[0])
        if not values:
            return "__empty__"
        return "(" + " OR ".join(f'"{_lucene_escape(v)}"' for v in values) + ")"
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"  # raw, Grafana's glob-like default


# $var, ${var}, ${var:format}, [[var]], [[var:format]]
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]")


def _inside_regex(text: str, at: int) -> bool:
    """Whether position ``at`` of an InfluxQL query is inside a ``/.../`` regex literal (an odd number of
    unescaped slashes before it, outside quotes)."""
    slashes, quote = 0, ""
    i = 0
    while i < at:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"" and slashes % 2 == 0:
            quote = c
        elif c == "/":
            slashes += 1
        i += 1
    return slashes % 2 == 1


def interpolate(text: str, variables: Mapping[str, Variable], builtins: Mapping[str, str], default_format: str) -> str:
    """Replace variables as Grafana's template service does; unknown names are left as they are."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(5) or default_format
        if name in builtins:
            return builtins[name]
        if name in variables:
            return format_variable(variables[name], fmt, _inside_regex(text, match.start()))
        return match.group(0)

    return _VARIABLE.sub(replace, text)


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
    def series(self) -> list[Series]:
        return [s for q in self.queries for s in q.series]

    @property
    def errors(self) -> list[str]:
        return [f"{q.ref_id}: {q.error}" for q in self.queries if q.error]

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """The panel's rows (every target's, merged by column name)."""
        columns: list[str] = []
        rows: list[dict[str, Any]] = []
        for q in self.queries:
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
        return [h for q in self.queries for h in q.hits]

    def shape_problem(self) -> str | None:
        """Why the data does not have the shape the panel needs, or None: a time series needs a series with a
        non-null point, a stat or a table a row, a logs panel a hit with a message."""
        if self.errors:
            return "query failed: " + "; ".join(self.errors)
        if self.type == "timeseries":
            if not any(s.non_null() for s in self.series):
                return f"no series with a non-null point ({len(self.series)} series)"
        elif self.type in ("stat", "table"):
            if not self.table()[1]:
                return "no rows"
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
) -> tuple[dict[str, Variable], dict[str, str]]:
    """Each query variable's options from its own query (earlier variables substituted), and its selection.
    Returns the variables and each one's interpolated query."""
    variables: dict[str, Variable] = {}
    texts: dict[str, str] = {}
    builtins = {"timeFilter": time_range.influx_filter()}
    for spec in dashboard.get("templating", {}).get("list", []):
        name = spec["name"]
        if spec.get("type") != "query":
            raise QueryError(f"variable {name}: only query variables are supported, not {spec.get('type')!r}")
        query = spec["query"] if isinstance(spec["query"], str) else str(spec["query"].get("query", ""))
        ds = _datasource(spec.get("datasource"))
        if ds.type != "influxdb":
            raise QueryError(f"variable {name}: only InfluxDB variables are supported")
        text = interpolate(query, variables, builtins, "regex")
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
    resolved, texts = resolve_variables(dashboard, stores, time_range, variables)
    layout = _layout(panels_of(dashboard), resolved)
    panels: list[PanelResult] = []
    for panel, grid, scoped in layout:
        scope = dict(resolved)
        scope.update({name: resolved[name].scoped(value) for name, value in scoped.items()})
        result = run_panel(dashboard, panel, grid, scope, stores, time_range, (start_ns, end_ns))
        result.scoped = dict(scoped)
        panels.append(result)
        if on_panel is not None:
            on_panel(result)
    annotations = [
        run_annotation(spec, resolved, stores, time_range, (start_ns, end_ns))
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
    """Every target of one panel (one copy of a repeated panel)."""
    w = grid[2]
    start_ns, end_ns = bounds_ns
    resolution = int(panel.get("maxDataPoints") or max(1, round(w / GRID_COLUMNS * SCREEN_WIDTH_PX)))
    results: list[QueryResult] = []
    interval_ms = 0
    for target in panel.get("targets", []):
        if target.get("hide"):
            continue
        ref = target.get("refId", "A")
        try:
            ds = _datasource(target.get("datasource"), panel.get("datasource"))
        except QueryError as exc:
            results.append(QueryResult(ref, "", "", error=str(exc)))
            continue
        interval_ms = calculate_interval_ms(
            (end_ns - start_ns) // 1_000_000, resolution, panel.get("interval") or ds.time_interval
        )
        builtins = _builtins(time_range, interval_ms)
        try:
            if ds.type == "influxdb":
                results.append(run_influx_target(target, variables, builtins, stores))
            else:
                results.append(run_es_target(target, ds, variables, builtins, stores, bounds_ns, interval_ms))
        except (QueryError, urllib3.exceptions.HTTPError, OSError) as exc:
            results.append(QueryResult(ref, ds.uid, "", error=str(exc)))
    results = _transform(results, panel.get("transformations", []))
    title = interpolate(panel.get("title", ""), variables, {}, "text")
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


def _builtins(time_range: TimeRange, interval_ms: int) -> dict[str, str]:
    text = interval_text(interval_ms)
    return {
        "timeFilter": time_range.influx_filter(),
        "__interval": text,
        "interval": text,
        "__interval_ms": str(interval_ms),
    }


# ----------------------------------------------------------------------------------------------- InfluxDB


def run_influx_target(
    target: Mapping[str, Any], variables: Mapping[str, Variable], builtins: Mapping[str, str], stores: Stores
) -> QueryResult:
    query = interpolate(str(target.get("query", "")), variables, builtins, "regex")
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
    builtins: Mapping[str, str],
    stores: Stores,
    bounds_ns: tuple[int, int],
    interval_ms: int,
) -> QueryResult:
    lucene = interpolate(str(target.get("query") or ""), variables, builtins, "lucene")
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
) -> AnnotationResult:
    """An annotation query: InfluxQL (``target.query``, text and tags columns) or Elasticsearch (the Lucene query
    in ``target.query``, ``timeField``/``textField``/``tagsField``), as Grafana 11 runs them."""
    name = str(spec.get("name", ""))
    try:
        ds = _datasource(spec.get("datasource"))
    except QueryError as exc:
        return AnnotationResult(name, "", "", error=str(exc))
    target = spec.get("target") or {}
    try:
        if ds.type == "influxdb":
            query = interpolate(
                str(target.get("query") or spec.get("query") or ""),
                variables,
                {"timeFilter": time_range.influx_filter()},
                "regex",
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
        lucene = interpolate(str(spec.get("query") or target.get("query") or ""), variables, {}, "lucene")
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
_FROM = re.compile(r'\bFROM\s+"((?:[^"\\]|\\.)+)"', re.IGNORECASE)
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
    others = set(_QUOTED.findall(query)) - measurements - aliases - tags
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
            if spec.get("builtIn"):
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
    """``SHOW MEASUREMENTS``, ``SHOW FIELD KEYS``, ``SHOW TAG KEYS``, and each index kind's ``_mapping``."""
    schema = Schema()
    for series in stores.influxql("SHOW MEASUREMENTS").get("series", []):
        for (name,) in series["values"]:
            quoted = name.replace('"', '\\"')
            fields = stores.influxql(f'SHOW FIELD KEYS FROM "{quoted}"').get("series", [])
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
