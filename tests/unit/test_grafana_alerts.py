"""dashboards.grafana_alerts: the committed provisioning files are what the generator writes, and each fleetwatch
condition becomes the Grafana threshold (and recovery threshold) that fires and recovers on the same values.

Grafana's predicates below are transcribed from its threshold expression (pkg/expr/threshold.go): no Grafana runs
here, so what is checked is the translation against those definitions and fleetwatch's engine."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from dashboards import grafana_alerts as ga
from fleetwatch import config as config_mod
from flows.alerts.engine import _TESTS as FLEETWATCH_TESTS
from flows.alerts.rules import AlertRule

GRAFANA: dict[str, Callable[[float, list[float]], bool]] = {
    "gt": lambda v, p: v > p[0],
    "gte": lambda v, p: v >= p[0],
    "lt": lambda v, p: v < p[0],
    "lte": lambda v, p: v <= p[0],
    "within_range": lambda v, p: p[0] < v < p[1],
    "outside_range": lambda v, p: v < p[0] or v > p[1],
    "within_range_included": lambda v, p: p[0] <= v <= p[1],
    "outside_range_included": lambda v, p: v <= p[0] or v >= p[1],
}
VALUES = [x / 2 for x in range(0, 201)]  # 0 .. 100 by 0.5, so every bound is hit exactly

CFG = config_mod.from_dict({}, env={})


def rule(**fields: Any) -> AlertRule:
    return AlertRule.model_validate({"name": "r", **fields})


def test_committed_files_are_generated() -> None:
    stale = ga.differing()
    assert stale == [], "run: python -m dashboards.grafana_alerts"
    assert ga.main(["--check"]) == 0


def test_generated_files_are_valid_yaml_of_grafana_provisioning() -> None:
    rules_doc = yaml.safe_load((ga.ALERTING_DIR / ga.RULES_FILE_NAME).read_text())
    assert rules_doc["apiVersion"] == 1
    (group,) = rules_doc["groups"]
    assert (group["name"], group["folder"], group["interval"]) == ("fleetwatch", "fleetwatch", "30s")
    assert group["rules"] == ga.load_translation().rules  # the hand-rolled YAML reads back as the same data
    for r in group["rules"]:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", r["uid"])
        assert r["data"][0]["datasourceUid"] == "fleetwatch-influxdb"
        assert r["condition"] == r["data"][-1]["refId"]
    contacts = yaml.safe_load((ga.ALERTING_DIR / ga.CONTACT_POINTS_FILE_NAME).read_text())
    receiver = contacts["contactPoints"][0]["receivers"][0]
    assert receiver["type"] == "webhook" and receiver["settings"]["url"] == "${ALERT_WEBHOOK_URL}"
    assert contacts["policies"][0]["receiver"] == contacts["contactPoints"][0]["name"]


def test_example_rules_translation() -> None:
    translation = ga.load_translation()
    by_uid = {r["uid"]: r for r in translation.rules}
    assert sorted(by_uid) == [
        "fleetwatch-error-burst-critical",
        "fleetwatch-error-burst-warning",
        "fleetwatch-humidity-band-warning",
        "fleetwatch-silent-device-critical",
    ]
    assert [s.rule for s in translation.skipped] == ["hot"]  # a raw-reading threshold
    header = (ga.ALERTING_DIR / ga.RULES_FILE_NAME).read_text().split("apiVersion")[0]
    assert "# - hot: threshold on raw readings" in header

    humidity = by_uid["fleetwatch-humidity-band-warning"]
    assert humidity["data"][0]["model"]["query"] == (
        'SELECT last("p95") AS "value" FROM "agg_1m"."readings_agg" WHERE "metric" = \'humidity\' AND "window" = \'1m\''
        " AND $timeFilter GROUP BY *"
    )
    assert humidity["for"] == "2m" and humidity["noDataState"] == "OK"
    assert humidity["labels"] == {"fleetwatch_rule": "humidity-band", "severity": "warning"}
    assert humidity["data"][2]["model"]["conditions"] == [
        {"evaluator": {"type": "outside_range", "params": [30.0, 70.0]}}
    ]

    burst = by_uid["fleetwatch-error-burst-critical"]
    assert 'FROM "log_rates"."log_rates" WHERE "window" = \'1m\' AND $timeFilter' in burst["data"][0]["model"]["query"]
    assert burst["data"][2]["model"]["conditions"][0]["evaluator"] == {"type": "gte", "params": [20.0]}
    assert burst["labels"]["severity"] == "critical"


@pytest.mark.parametrize("condition", [">", ">=", "<", "<=", "outside", "inside"])
def test_each_condition_fires_and_recovers_like_fleetwatch(condition: str) -> None:
    threshold: Any
    clear: Any
    if condition in ("outside", "inside"):
        threshold, clear = ((20.0, 80.0), (25.0, 75.0)) if condition == "outside" else ((40.0, 60.0), (35.0, 65.0))
    else:
        threshold, clear = (60.0, 55.0) if condition in (">", ">=") else (40.0, 45.0)
    translated = ga.threshold_condition(condition, threshold, clear)
    fire, recover = translated["evaluator"], translated["unloadEvaluator"]
    assert fire["type"] == ga.FIRE[condition] and recover["type"] == ga.RECOVER[condition]
    holds = FLEETWATCH_TESTS[condition]
    for value in VALUES:
        # Fires exactly where fleetwatch's condition holds against the threshold...
        assert GRAFANA[fire["type"]](value, fire["params"]) == holds(value, threshold), value
        # ...and, once firing, recovers exactly where it no longer holds against the clear threshold.
        assert GRAFANA[recover["type"]](value, recover["params"]) == (not holds(value, clear)), value


def test_no_recovery_threshold_without_hysteresis() -> None:
    assert ga.threshold_condition(">", 30.0, None) == {"evaluator": {"type": "gt", "params": [30.0]}}
    # A clear threshold equal to the threshold is fleetwatch's default: plain Grafana recovery already matches it.
    assert "unloadEvaluator" not in ga.threshold_condition("<", 5.0, 5.0)


def test_warning_and_critical_become_two_rules_with_their_clear_thresholds() -> None:
    r = rule(target="window", window="1m", stat="mean", condition=">", warning=30, critical=40, critical_clear=35)
    out = ga.translate_rule(r, CFG)
    assert isinstance(out, list)
    warning, critical = out
    assert (warning["labels"]["severity"], critical["labels"]["severity"]) == ("warning", "critical")
    assert warning["data"][-1]["model"]["conditions"] == [{"evaluator": {"type": "gt", "params": [30.0]}}]
    assert critical["data"][-1]["model"]["conditions"] == [
        {"evaluator": {"type": "gt", "params": [40.0]}, "unloadEvaluator": {"type": "lte", "params": [35.0]}}
    ]


def test_tag_globs_become_anchored_regexes() -> None:
    r = rule(
        target="window",
        window="10s",
        stat="max",
        measurement="tas*",
        metric="Temp?rature",
        match={"site": "s[0-9]*", "device": "*", "room": "a/b.c", "zone": "[!x]"},
        warning=1,
    )
    out = ga.translate_rule(r, CFG)
    assert isinstance(out, list)
    query = out[0]["data"][0]["model"]["query"]
    assert query == (
        'SELECT last("max") AS "value" FROM "agg_10s"./^tas.*_agg$/ WHERE "metric" =~ /^Temp.rature$/'
        ' AND "room" = \'a/b.c\' AND "site" =~ /^s[0-9].*$/ AND "zone" =~ /^[^x]$/ AND "window" = \'10s\''
        " AND $timeFilter GROUP BY *"
    )


@pytest.mark.parametrize(
    "pattern", ["*", "s*", "s?", "s[12]", "s[!1]*", "a.b", "a/b*", "x(y)+", "[]]", "[!]]x", "[unclosed", "^$"]
)
def test_glob_regex_matches_like_fnmatch(pattern: str) -> None:
    literal = ga.glob_regex(pattern)
    assert literal.startswith("/^") and literal.endswith("$/")
    # InfluxQL's regex literal, read back: "\/" is a "/", the rest is RE2 syntax that Python reads the same.
    compiled = re.compile(literal[1:-1].replace("\\/", "/"))
    samples = ["", "s", "s1", "s2", "s12", "sx", "a.b", "axb", "a/b", "a/bc", "x(y)+", "xy", "]", "]x", "[unclosed"]
    samples += ["^$", "x"]
    for sample in samples:
        assert bool(compiled.fullmatch(sample)) == fnmatch.fnmatchcase(sample, pattern), (pattern, sample)


def test_literal_tags_use_equality_and_quotes_are_escaped() -> None:
    assert ga.tag_filter("site", "*") is None
    assert ga.tag_filter("site", "it's") == "\"site\" = 'it\\'s'"
    assert ga.tag_filter('we"ird', "x*") == '"we\\"ird" =~ /^x.*$/'


def test_rate_of_change_on_windows_and_log_rates() -> None:
    per_window = rule(
        kind="rate_of_change", target="log_rate", stat="count", rate_per="window", match={"service": "api"}, warning=100
    )
    out = ga.translate_rule(per_window, CFG)
    assert isinstance(out, list)
    (r,) = out
    a, b, c, d = r["data"]
    assert a["model"]["query"] == (
        'SELECT difference("count") AS "value" FROM "log_rates"."log_rates" WHERE "service" = \'api\' '
        "AND \"window\" = '1m'"
        " AND $timeFilter GROUP BY *"
    )
    assert b["model"]["type"] == "reduce" and c["model"] == {**c["model"], "type": "math", "expression": "abs($B)"}
    assert d["model"]["expression"] == "C" and r["condition"] == "D"
    # Two windows must be in range for a difference.
    assert a["relativeTimeRange"]["from"] >= 2 * 60

    per_second = rule(kind="rate_of_change", target="window", window="10s", stat="mean", warning=0.5)
    out = ga.translate_rule(per_second, CFG)
    assert isinstance(out, list)
    query = out[0]["data"][0]["model"]["query"]
    assert 'SELECT derivative("mean", 1s) AS "value" FROM "agg_10s"."readings_agg"' in query


def test_raw_reading_rules_are_skipped_with_a_reason() -> None:
    for r in (
        rule(target="reading", metric="temperature", warning=30),
        rule(kind="rate_of_change", target="reading", warning=1),
    ):
        out = ga.translate_rule(r, CFG)
        assert isinstance(out, ga.Skipped)
        assert "raw readings" in out.reason


def test_deadman_alerts_on_no_data() -> None:
    r = rule(kind="deadman", target="window", window="1m", match={"device": "d1"}, silent_for="5m")
    out = ga.translate_rule(r, CFG)
    assert isinstance(out, list)
    (dead,) = out
    assert dead["noDataState"] == "Alerting" and dead["for"] == "0s"
    assert dead["labels"]["severity"] == "warning"  # no critical value given
    query = dead["data"][0]
    assert query["model"]["query"] == (
        'SELECT sum("count") AS "value" FROM "agg_1m"."readings_agg" WHERE "device" = \'d1\' AND "window" = \'1m\''
        " AND $timeFilter"
    )
    assert "GROUP BY" not in query["model"]["query"]
    # silent_for + two windows + lateness (5m + 2 x 1m + 5s).
    assert query["relativeTimeRange"] == {"from": 425, "to": 0}
    assert dead["data"][2]["model"]["conditions"] == [{"evaluator": {"type": "lt", "params": [1.0]}}]


def test_reading_deadman_watches_the_shortest_window_count() -> None:
    r = rule(kind="deadman", target="reading", metric="temperature", silent_for="30s", critical=1)
    out = ga.translate_rule(r, CFG)
    assert isinstance(out, list)
    assert "\"window\" = '10s'" in out[0]["data"][0]["model"]["query"]
    assert out[0]["labels"]["severity"] == "critical"


def test_summary_templates_translate_to_grafana() -> None:
    r = rule(
        target="window",
        window="1m",
        stat="mean",
        warning=30,
        summary="{rule} {severity}: {value:.1f} over {threshold} on {device} at {site}",
    )
    out = ga.translate_rule(r, CFG)
    assert isinstance(out, list)
    assert out[0]["annotations"]["summary"] == (
        'r warning: {{ printf "%.1f" $values.B.Value }} over 30 on {{ $labels.device }} at {{ $labels.site }}'
    )


def test_rule_uids_are_stable_and_short() -> None:
    assert ga.rule_uid("hot", "warning") == "fleetwatch-hot-warning"
    long = ga.rule_uid("a-very-long-rule-name-that-goes-on", "critical")
    assert len(long) <= 40 and long == ga.rule_uid("a-very-long-rule-name-that-goes-on", "critical")
    assert ga.rule_uid("a.b", "warning") != ga.rule_uid("a_b", "warning")


def test_renotify_becomes_a_policy_route() -> None:
    r = rule(target="window", window="1m", stat="mean", warning=30, renotify="10m")
    translation = ga.translate([r], CFG)
    assert translation.routes == [
        {"receiver": ga.CONTACT_POINT, "object_matchers": [["fleetwatch_rule", "=", "r"]], "repeat_interval": "10m"}
    ]
    assert ga.contact_points(translation)["policies"][0]["routes"] == translation.routes


def test_to_yaml_round_trips() -> None:
    data = {
        "a": [1, 2.5, "x: y", "", None, True],
        "b": {"c d": [{"e": "multi\nline", "f": []}, [1, 2]], "g": {}},
        "h": "${VAR} and $timeFilter",
        "i": "123",
        "j": "true",
    }
    assert yaml.safe_load("\n".join(ga.to_yaml(data))) == data


def test_for_is_passed_as_a_duration() -> None:
    r = rule(target="window", window="1m", stat="mean", warning=30, **{"for": "90s"})
    out = ga.translate_rule(r, CFG)
    assert isinstance(out, list)
    assert out[0]["for"] == "1m30s"
    no_wait = ga.translate_rule(rule(target="window", window="1m", stat="mean", warning=30), CFG)
    assert isinstance(no_wait, list) and no_wait[0]["for"] == "0s"
