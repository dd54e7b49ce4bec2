"""What ``dashboards.queries`` does with the committed dashboards where Grafana 11.6 would do the same, without a
store: how variables and ``$timeFilter`` go into InfluxQL (panel, annotation and variable queries each their own
way), what a stat panel shows (0 as 0), which annotations Grafana's own annotation query would find, and that
every InfluxDB table pins its column order. The same queries run against real stores in
``tests/integration/test_dashboards.py``."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from dashboards import generate
from dashboards.queries import (
    ALL,
    INFLUXQL,
    INFLUXQL_VARIABLE,
    PanelResult,
    QueryResult,
    Series,
    TimeRange,
    Variable,
    format_variable,
    grafana_annotation_request,
    grafana_annotations_found,
    influx_panel_query,
    influx_query_expr,
    influx_variable_query,
    interpolate,
    load_dashboards,
    panels_of,
    run_expression,
)
from dashboards.sync import annotation_body
from fleetwatch.record import AlertTransition

# 2023-11-14 22:13:20 UTC to one hour later.
START_NS, END_NS = 1_700_000_000_000_000_000, 1_700_003_600_000_000_000
SPAN = TimeRange.between(START_NS, END_NS)
ODD = "dev.1+(a)/b"


def _dashboard(uid: str) -> dict[str, Any]:
    return next(d for d in load_dashboards() if d["uid"] == uid)


def _panel(uid: str, title: str) -> dict[str, Any]:
    return next(p for p in panels_of(_dashboard(uid)) if p["title"] == title)


def _query(uid: str, title: str) -> str:
    return str(_panel(uid, title)["targets"][0]["query"])


# --------------------------------------------------------------------------------------------- $timeFilter


def test_time_filter_has_both_bounds_in_milliseconds_as_grafanas_backend_renders_it() -> None:
    variables = {
        name: Variable(name, ["a", "b"], [ALL], multi=True, include_all=True) for name in ("site", "device", "metric")
    }
    # The device inventory's tags, at All: Grafana's custom all value.
    variables |= {name: Variable(name, ["x"], [ALL], True, True, ".*") for name in ("model", "owner")}
    query = _query("fleetwatch-fleet", "Readings aggregated")
    sent = influx_panel_query(query, variables, SPAN, (START_NS, END_NS), 10_000)
    # Then the 10 s tier's conditions, with $__interval_ms substituted (fleetwatch/retention.py).
    assert sent.endswith(
        '"owner" =~ /^.*$/ AND time >= 1700000000000ms and time <= 1700003600000ms AND 10000 < 60000 '
        "AND time >= now() - 30d"
    )
    assert "$" not in sent.replace("$/", "")
    # A relative range too: the browser resolves now-1h to the request's from/to before the backend renders it.
    now = END_NS
    last_hour = TimeRange.last("1h")
    assert last_hour.backend_time_filter(last_hour.bounds_ns(now)) == (
        "time >= 1700000000000ms and time <= 1700003600000ms"
    )
    # Intervals are the backend's too; $interval (legacy) and $__interval_ms included.
    text = "GROUP BY time($__interval) $interval $__interval_ms AND $timeFilter AND $timeFilter"
    assert influx_panel_query(text, {}, SPAN, (START_NS, END_NS), 60_000) == (
        "GROUP BY time(1m) 1m 60000 AND time >= 1700000000000ms and time <= 1700003600000ms "
        "AND time >= 1700000000000ms and time <= 1700003600000ms"
    )


def test_a_variable_query_gets_the_browsers_time_filter_once_then_the_backends() -> None:
    bounds = last = TimeRange.last("1h").bounds_ns(END_NS)
    assert last == (START_NS, END_NS)
    query = 'SHOW TAG VALUES WITH KEY = "x" WHERE $timeFilter AND $timeFilter'
    assert influx_variable_query(query, {}, TimeRange.last("1h"), bounds, 10_000) == (
        'SHOW TAG VALUES WITH KEY = "x" WHERE time >= now() - 1h and time <= now() '
        "AND time >= 1700000000000ms and time <= 1700003600000ms"
    )
    assert TimeRange.last("90m").frontend_time_filter(bounds) == "time >= now() - 90m and time <= now()"
    assert TimeRange.last("1h30m").frontend_time_filter(bounds) == "time >= 1700000000000ms and time <= now()"


# -------------------------------------------------------------------------------------- variables in InfluxQL


def test_multi_value_variables_are_an_escaped_alternation_even_of_one_value() -> None:
    device = Variable("device", [ODD, "d2"], [ALL], multi=True, include_all=True)
    assert format_variable(device, INFLUXQL, "x") == r"(dev\.1\+\(a\)\/b|d2)"
    one = Variable("device", [ODD, "d2"], [ODD], multi=True, include_all=True)
    assert format_variable(one, INFLUXQL, "x") == r"(dev\.1\+\(a\)\/b)"
    # Each value of a list is escaped, numeric-looking or not; the same in a variable query.
    numeric = Variable("device", ["10.0.0.7/eth0"], ["10.0.0.7/eth0"], multi=True)
    assert format_variable(numeric, INFLUXQL_VARIABLE) == r"(10\.0\.0\.7\/eth0)"


def test_a_repeated_panels_value_is_a_string_escaped_unless_it_looks_like_a_number() -> None:
    metric = Variable("metric", ["a.b", "1.5x/y"], [ALL], multi=True, include_all=True)
    assert format_variable(metric.scoped_to("a.b"), INFLUXQL, "") == r"a\.b"
    # parseFloat("1.5x/y") is 1.5: Grafana leaves it as it is.
    assert format_variable(metric.scoped_to("1.5x/y"), INFLUXQL, "") == "1.5x/y"


def test_a_single_value_variable_is_escaped_only_in_a_panel_query_that_has_it_in_a_regex() -> None:
    device = Variable("device", [ODD], [ODD])
    in_regex = 'SELECT x FROM m WHERE "device" =~ /^$device$/ AND "d" = \'$device\''
    # Every occurrence is escaped once the query has the variable in a regex, in quotes too.
    assert interpolate(in_regex, {"device": device}, INFLUXQL) == (
        'SELECT x FROM m WHERE "device" =~ /^dev\\.1\\+\\(a\\)\\/b$/ AND "d" = \'dev\\.1\\+\\(a\\)\\/b\''
    )
    literal = "SELECT x FROM m WHERE \"device\" = '$device'"
    assert interpolate(literal, {"device": device}, INFLUXQL) == "SELECT x FROM m WHERE \"device\" = 'dev.1+(a)/b'"
    # In a variable query Grafana passes no query text: unescaped, even inside a regex (which then breaks).
    assert interpolate(in_regex, {"device": device}, INFLUXQL_VARIABLE).startswith(
        'SELECT x FROM m WHERE "device" =~ /^dev.1+(a)/b$/'
    )
    # A value that starts like a number is never escaped.
    number_like = Variable("device", ["10.0.0.7/eth0"], ["10.0.0.7/eth0"])
    assert influx_query_expr("10.0.0.7/eth0", number_like, in_regex) == "10.0.0.7/eth0"


def test_the_device_dashboard_puts_any_device_id_into_its_queries_as_itself() -> None:
    """The device dashboard's $device is single-value: its queries compare it as a string literal, so Grafana's
    unescaped (variable query) and escaped-or-not (panel query) substitution both give the id itself."""
    device = _dashboard("fleetwatch-device")
    variables = {"device": Variable("device", [ODD], [ODD])}
    metric_query = next(v for v in device["templating"]["list"] if v["name"] == "metric")["query"]
    assert influx_variable_query(metric_query, variables, SPAN, (START_NS, END_NS), 10_000).endswith(
        "WHERE \"device\" = 'dev.1+(a)/b'"
    )
    texts = [str(t["query"]) for p in panels_of(device) for t in p["targets"]]
    texts += [str(a["target"]["query"]) for a in device["annotations"]["list"] if a["datasource"]["type"] == "influxdb"]
    assert texts and all("$device" in t for t in texts)
    for text in texts:
        sent = influx_panel_query(text, variables, SPAN, (START_NS, END_NS), 10_000)
        assert "\"device\" = 'dev.1+(a)/b'" in sent, sent
        assert "=~ /^$device" not in text


def test_lucene_lists_are_quoted_even_of_one_value() -> None:
    service = Variable("service", ["a b", "c"], ["a b"], multi=True, include_all=True)
    assert interpolate("service.name:$service", {"service": service}, "lucene") == 'service.name:("a\\ b")'
    assert format_variable(service.scoped_to("a b"), "lucene") == "a\\ b"
    custom_all = Variable("site", ["a", "b"], [ALL], multi=True, include_all=True, all_value=".*")
    assert format_variable(custom_all, INFLUXQL, "") == ".*"


# ------------------------------------------------------------------------------------------- stat panels


def _stat(uid: str, title: str, *results: QueryResult) -> PanelResult:
    return PanelResult(uid, 1, "stat", title, (0, 0, 6, 4), _panel(uid, title), list(results))


def test_counts_that_return_nothing_show_0_and_a_value_shows_itself() -> None:
    for uid, title in [
        ("fleetwatch-fleet", "Alerts firing"),
        ("fleetwatch-alerts", "Firing now"),
        ("fleetwatch-alerts", "Transitions"),
        ("fleetwatch-device", "Alert transitions"),
        ("fleetwatch-logs", "Log events"),
        ("fleetwatch-logs", "Errors"),
    ]:
        shown = _stat(uid, title).stat()
        assert [(v.value, v.text) for v in shown] == [(None, "0")], (uid, title)
    firing = QueryResult("A", generate.INFLUXDB_UID, "", series=[Series("alerts.firing", [(0, 3.0)])])
    assert [v.text for v in _stat("fleetwatch-fleet", "Alerts firing", firing).stat()] == ["3"]
    none_firing = QueryResult("A", generate.INFLUXDB_UID, "", series=[Series("alerts.firing", [(0, 0.0)])])
    assert [(v.value, v.text) for v in _stat("fleetwatch-fleet", "Alerts firing", none_firing).stat()] == [(0, "0")]
    # Panels without a "nothing is 0" meaning still say there is no data.
    assert [v.text for v in _stat("fleetwatch-health", "Lag").stat()] == ["No data"]


def test_log_events_sum_the_elasticsearch_buckets_and_the_error_rate_divides_the_sums() -> None:
    events = Series("Count", [(1, 120.0), (2, 0.0), (3, 80.0)])
    errors = Series("Count", [(1, 6.0), (2, 0.0), (3, 4.0)])
    total = QueryResult("A", generate.ES_LOGS_UID, "", series=[events])
    assert [v.value for v in _stat("fleetwatch-logs", "Log events", total).stat()] == [200.0]

    panel = _panel("fleetwatch-logs", "Error rate")
    inputs = {
        "EVENTS": QueryResult("EVENTS", generate.ES_LOGS_UID, "", series=[events], hidden=True),
        "ERRORS": QueryResult("ERRORS", generate.ES_LOGS_UID, "", series=[errors], hidden=True),
    }
    results = list(inputs.values())
    for target in panel["targets"]:
        if target["datasource"]["uid"] == "__expr__":
            result = run_expression(target, inputs, 3)
            result.hidden = bool(target.get("hide"))
            inputs[result.ref_id] = result
            results.append(result)
    assert [r.ref_id for r in results if not r.hidden] == ["rate"] and not any(r.error for r in results)
    shown = PanelResult("fleetwatch-logs", 3, "stat", "Error rate", (0, 0, 6, 4), panel, results).stat()
    assert [(v.value, v.text) for v in shown] == [(0.05, "5%")]
    # No events at all: 0 / 0 is NaN in Grafana's math; the panel says so instead of NaN.
    empty = [QueryResult(r, generate.ES_LOGS_UID, "", series=[Series("Count", [(1, 0.0)])]) for r in inputs]
    zero = {r.ref_id: r for r in empty}
    for target in panel["targets"]:
        if target["datasource"]["uid"] == "__expr__":
            zero[target["refId"]] = run_expression(target, zero, 3)
    assert math.isnan(zero["rate"].series[0].points[0][1] or 0.0)
    shown = PanelResult("fleetwatch-logs", 3, "stat", "Error rate", (0, 0, 6, 4), panel, [zero["rate"]]).stat()
    assert [v.text for v in shown] == ["no events"]


# ---------------------------------------------------------------------------------------- Grafana annotations


def _transition(state: str, rule: str = "hot") -> AlertTransition:
    return AlertTransition(
        rule=rule,
        series="readings,device=d1,metric=temperature,site=s1",
        tags={"device": "d1", "metric": "temperature", "site": "s1"},
        state=state,
        severity="critical",
        value=41.5,
        threshold=40.0,
        started_ns=START_NS + 60_000_000_000,
        at_ns=START_NS + 600_000_000_000,
        summary="[CRITICAL] hot: value 41.5 > 40",
        notification_id="n1",
    )


@pytest.mark.parametrize("uid", ["fleetwatch-fleet", "fleetwatch-device", "fleetwatch-alerts"])
def test_alert_transitions_posted_to_grafana_show_on_the_dashboards_that_promise_them(uid: str) -> None:
    dashboard = _dashboard(uid)
    specs = dashboard["annotations"]["list"]
    builtin = next(s for s in specs if s.get("builtIn"))
    tagged = [s for s in specs if s["datasource"]["type"] == "grafana" and not s.get("builtIn")]
    assert len(tagged) == 1 and tagged[0]["enable"] and tagged[0]["target"]["type"] == "tags"
    # Organisation-wide, as fleetwatch posts them without [alerts.grafana] dashboard_uid.
    posted = [annotation_body(_transition("firing")), annotation_body(_transition("resolved"))]
    assert all(p["dashboard_uid"] is None for p in posted)
    request = grafana_annotation_request(tagged[0], {}, uid, (START_NS, END_NS))
    assert grafana_annotations_found(request, posted) == sorted(posted, key=lambda p: -p["time_from"])
    # The built-in query filters by this dashboard's uid: it finds none of them (the reported bug).
    assert grafana_annotations_found(grafana_annotation_request(builtin, {}, uid, (START_NS, END_NS)), posted) == []
    # Annotations without fleetwatch's tag, or outside the range, are not shown.
    other = {**posted[0], "tags": ["deploy"]}
    later = {**posted[0], "time_from": END_NS // 1_000_000 + 1, "time_to": None}
    assert grafana_annotations_found(request, [other, later]) == []


def test_grafana_tag_matching_follows_its_store() -> None:
    posted = {"dashboard_uid": None, "time_from": 5, "time_to": None, "tags": ["fleetwatch", "rule:hot"], "text": ""}
    request = {"from": 0, "to": 10, "limit": 100, "matchAny": False}
    assert grafana_annotations_found({**request, "tags": ["rule"]}, [posted]) == [posted]  # a bare key
    assert grafana_annotations_found({**request, "tags": ["rule:cold"]}, [posted]) == []
    assert grafana_annotations_found({**request, "tags": ["fleetwatch", "rule:cold"]}, [posted]) == []
    assert grafana_annotations_found({**request, "tags": ["fleetwatch", "rule:cold"], "matchAny": True}, [posted])
    # Template variables in tags: a list value becomes several tags.
    rule = Variable("rule", ["hot", "cold"], [ALL], multi=True, include_all=True)
    spec = {"target": {"type": "tags", "tags": ["rule:$rule"], "matchAny": True, "limit": 10}}
    assert grafana_annotation_request(spec, {"rule": rule}, "x", (0, 10_000_000))["tags"] == ["rule:hot", "cold"]


# --------------------------------------------------------------------------------------------------- tables

_GROUP_BY = re.compile(r"GROUP BY (.*)$")


@pytest.mark.parametrize(
    ("uid", "title"), [("fleetwatch-fleet", "Latest values"), ("fleetwatch-alerts", "Active alerts")]
)
def test_influx_tables_pin_every_column_they_return(uid: str, title: str) -> None:
    panel = _panel(uid, title)
    query = str(panel["targets"][0]["query"])
    group_by = _GROUP_BY.search(query)
    assert group_by is not None
    columns = {"Time", *re.findall(r'"(\w+)"', group_by.group(1))}
    outer_select = query[: query.index(" FROM ")]
    columns |= set(re.findall(r'AS "([^"]+)"', outer_select)) or set(re.findall(r'"(\w+)"', outer_select))
    organize = [t for t in panel["transformations"] if t["id"] == "organize"]
    assert len(organize) == 1
    index = organize[0]["options"]["indexByName"]
    hidden = {k for k, v in organize[0]["options"]["excludeByName"].items() if v}
    assert columns <= set(index) | hidden, columns - set(index) - hidden
    assert sorted(index.values()) == list(range(len(index)))
    if title == "Latest values":
        assert sorted(index, key=index.__getitem__) == [
            "Time", "site", "device", "metric", "last value", "window mean", "readings in window",
        ]  # fmt: skip
