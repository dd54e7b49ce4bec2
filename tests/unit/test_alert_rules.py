"""flows/alerts/rules: rule validation (errors name the key), rules files, and series matching."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from flows.alerts.rules import AlertRule, AlertsConfig, RuleMatcher, WebhookConfig, load_rules

SERIES = "readings,device=d1,metric=temperature,site=s1"


def rule(**fields: Any) -> AlertRule:
    return AlertRule.model_validate({"name": "r", **fields})


def file_problems(tmp_path: Path, text: str, inline: list[dict[str, Any]] | None = None) -> list[str]:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    cfg = AlertsConfig.model_validate({"rules": inline or [], "rules_file": str(path)})
    with pytest.raises(ValueError) as err:
        load_rules(cfg)
    return str(err.value).splitlines()


def test_defaults_and_normalisation() -> None:
    r = rule(warning=80, critical=90, **{"for": "1m"})
    assert (r.kind, r.target, r.measurement, r.metric, r.stat, r.condition) == (
        "threshold",
        "reading",
        "readings",
        "*",
        "value",
        ">",
    )
    assert r.for_ == timedelta(minutes=1) and r.renotify == timedelta(0)
    assert rule(target="window", window="60s", stat="p95", warning=1).window == "1m"
    assert rule(target="window", window="60s/10s", stat="mean", warning=1).window == "1m/10s"
    assert rule(kind="deadman", target="window", window="10s", silent_for="5m").stat == "count"
    assert rule(kind="deadman", silent_for="5m").deadman_severity == "warning"
    assert rule(kind="deadman", silent_for="5m", critical=0).deadman_severity == "critical"
    assert rule(condition="outside", warning=[10, 30]).warning == (10.0, 30.0)
    assert rule(target="log_rate", stat="error", warning=5).stat == "error"


@pytest.mark.parametrize(
    "fields,key,fragment",
    [
        ({"warning": 90, "critical": 80}, "critical", "must be more severe than warning"),
        ({"condition": "<", "warning": 10, "critical": 20}, "critical", "critical < warning"),
        ({"condition": ">=", "warning": 10, "critical": 10}, "critical", "more severe"),
        ({"condition": "outside", "warning": [0, 10], "critical": [1, 20]}, "critical", "containing the warning band"),
        ({"condition": "inside", "warning": [0, 10], "critical": [-1, 5]}, "critical", "inside the warning band"),
        ({"warning": 80, "warning_clear": 85}, "warning_clear", "must be <= its threshold"),
        ({"condition": "<", "critical": 10, "critical_clear": 5}, "critical_clear", "must be >= its threshold"),
        ({"condition": "outside", "warning": [0, 10], "warning_clear": [-1, 5]}, "warning_clear", "inside its"),
        ({"warning_clear": 5, "critical": 10}, "warning_clear", "needs warning"),
        ({}, "critical", "give a warning threshold, a critical threshold, or both"),
        ({"condition": "outside", "warning": 5}, "warning", "needs a [low, high] pair"),
        ({"condition": "outside", "warning": [5, 1]}, "warning", "low <= high"),
        ({"warning": [1, 2]}, "warning", "needs a single number"),
        # Found by a review: a rule that can never fire (> inf) was accepted, and a renotify of 1ms floods.
        ({"warning": float("inf")}, "warning", "expected a finite number (got inf)"),
        ({"condition": "outside", "warning": [float("-inf"), 5]}, "warning", "pair of finite numbers"),
        ({"warning": 1, "renotify": "1ms"}, "renotify", "expected 0 (off) or at least 1s (got 0.001s)"),
        ({"kind": "deadman"}, "silent_for", "kind 'deadman' needs silent_for"),
        ({"kind": "deadman", "silent_for": "1m", "for": "1m"}, "for", "use silent_for"),
        ({"kind": "deadman", "silent_for": "1m", "condition": "<"}, "condition", "not used by kind 'deadman'"),
        ({"warning": 1, "silent_for": "1m"}, "silent_for", "only for kind 'deadman'"),
        ({"target": "window", "stat": "mean", "warning": 1}, "window", "target 'window' needs the window length"),
        ({"target": "window", "window": "1x", "stat": "mean", "warning": 1}, "window", "window length such as"),
        ({"window": "1m", "warning": 1}, "window", "only for target 'window'"),
        ({"target": "window", "window": "1m", "warning": 1}, "stat", "target 'window' needs a stat"),
        ({"target": "window", "window": "1m", "stat": "median", "warning": 1}, "stat", "expected one of count"),
        ({"target": "log_rate", "stat": "fatal", "warning": 1}, "stat", "error_rate"),
        ({"stat": "max", "warning": 1}, "stat", "stat must be 'value'"),
        ({"target": "log_rate", "stat": "errors", "metric": "x", "warning": 1}, "metric", "not used by target"),
        ({"warning": 1, "rate_per": "window"}, "rate_per", "only for kind 'rate_of_change'"),
        ({"kind": "rate_of_change", "warning": 1, "rate_per": "window"}, "rate_per", "readings are not windows"),
        ({"warning": 1, "summary": "{0} is bad"}, "summary", "not a valid template"),
        ({"warning": 1, "summary": "{value:zz}"}, "summary", "not a valid template"),
        ({"warning": 1, "for": "soon"}, "for", "duration"),
        ({"name": "high temp", "warning": 1}, "name", "pattern"),
        ({"warning": 1, "severity": "page"}, "severity", "Extra inputs"),
    ],
)
def test_rule_errors_name_the_key(fields: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        AlertRule.model_validate({"name": "r", **fields})
    errors = err.value.errors()
    assert [e["loc"] for e in errors] == [(key,)], errors
    assert fragment in errors[0]["msg"]


def test_the_error_message_reads_well() -> None:
    with pytest.raises(ValidationError) as err:
        rule(warning=90, critical=80)
    assert err.value.errors()[0]["msg"] == (
        "Value error, must be more severe than warning for condition '>': expected critical > warning"
        " (got critical 80, warning 90)"
    )


def test_inline_names_must_be_unique() -> None:
    with pytest.raises(ValidationError) as err:
        AlertsConfig.model_validate({"rules": [{"name": "a", "warning": 1}, {"name": "a", "warning": 2}]})
    assert err.value.errors()[0]["loc"] == ("rules",)
    assert "repeated: a" in err.value.errors()[0]["msg"]


def test_rules_file_merges_with_inline_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\nname = "hot"\nwarning = 80\nmatch = { site = "s*" }\n\n'
        '[[rules]]\nname = "quiet"\nkind = "deadman"\nsilent_for = "5m"\n'
    )
    cfg = AlertsConfig.model_validate({"rules": [{"name": "cold", "condition": "<", "warning": 0}], "rules_file": path})
    rules = load_rules(cfg)
    assert [r.name for r in rules] == ["cold", "hot", "quiet"]
    assert rules[1].match == {"site": "s*"}
    assert load_rules(AlertsConfig()) == []


def test_rules_file_errors_name_file_index_and_key(tmp_path: Path) -> None:
    problems = file_problems(
        tmp_path,
        '[[rules]]\nname = "ok"\nwarning = 1\n\n'
        '[[rules]]\nname = "bad"\nwarning = 90\ncritical = 80\n\n'
        '[[rules]]\nname = "worse"\nkind = "deadman"\ntypo = 1\n\n'
        '[[rules]]\nname = "cold"\nwarning = 1\n\n'
        '[[rules]]\nname = "ok"\nwarning = 2\n',
        inline=[{"name": "cold", "condition": "<", "warning": 0}],
    )
    where = f"alerts.rules_file: {tmp_path / 'rules.toml'}"
    assert problems[0].startswith(f"{where}: rules[1].critical: must be more severe than warning")
    assert f"{where}: rules[2].silent_for: kind 'deadman' needs silent_for > 0, such as '5m'" in problems
    assert f"{where}: rules[2].typo: unknown key" in problems
    assert f"{where}: rules[3].name: duplicate rule name 'cold' (also alerts.rules[0])" in problems
    assert f"{where}: rules[4].name: duplicate rule name 'ok' (also rules[0])" in problems
    assert len(problems) == 5


def test_rules_file_not_found_bad_toml_and_unknown_tables(tmp_path: Path) -> None:
    missing = AlertsConfig(rules_file=tmp_path / "nope.toml")
    with pytest.raises(ValueError, match=r"alerts.rules_file: .*nope.toml: file not found"):
        load_rules(missing)
    assert file_problems(tmp_path, "rules = = 1")[0].endswith("not valid TOML: Invalid value (at line 1, column 9)")
    assert file_problems(tmp_path, '[[rule]]\nname = "x"\n')[0].endswith(
        "rule: unknown key (expected [[rules]] tables)"
    )


def test_notification_settings() -> None:
    cfg = AlertsConfig.model_validate({"webhooks": [{"url": "https://hooks.example/x", "format": "slack"}]})
    assert cfg.mqtt_topic_prefix == "alerts" and cfg.journal == Path(".fleetwatch/alerts-sent.jsonl")
    hook = cfg.webhooks[0]
    assert (hook.timeout, hook.max_retry_delay, hook.headers) == (timedelta(seconds=5), timedelta(seconds=60), {})
    for bad, key in [({"url": "hooks.example"}, "url"), ({"url": "http://h", "timeout": "0s"}, "timeout")]:
        with pytest.raises(ValidationError) as err:
            WebhookConfig.model_validate(bad)
        assert err.value.errors()[0]["loc"] == (key,)
    with pytest.raises(ValidationError):
        AlertsConfig(mqtt_topic_prefix="alerts/#")


def test_globs_on_metric_measurement_and_tags() -> None:
    rules = [
        rule(name="temps", metric="temp*", match={"site": "s[12]"}, warning=1),
        rule(name="d1_any", match={"device": "d1"}, warning=1),
        rule(name="other_measurement", measurement="mach*", match={"zone": "z*"}, warning=1),
        rule(name="needs_zone", match={"zone": "z*"}, warning=1),
        rule(name="any_zone", match={"zone": "*"}, warning=1),
    ]
    matcher = RuleMatcher(rules)

    def names(series: str) -> list[str]:
        return [r.name for r in matcher.rules_for("reading", series)]

    assert names(SERIES) == ["temps", "d1_any", "any_zone"]
    assert names("readings,device=d2,metric=temperature,site=s3") == ["any_zone"]
    assert names("readings,device=d2,metric=humidity,site=s2") == ["any_zone"]
    # measurement defaults to "readings".
    assert names("machines,device=d1,metric=rpm,zone=z1") == ["other_measurement"]
    assert names("readings,device=d1,metric=rpm,zone=z1") == ["d1_any", "needs_zone", "any_zone"]
    # Escaped tag values are matched unescaped.
    assert names(r"readings,device=d1,metric=temp\ 2,site=s2") == ["temps", "d1_any", "any_zone"]
    # Cached: the same tuple object, and a target without rules answers ().
    assert matcher.rules_for("reading", SERIES) is matcher.rules_for("reading", SERIES)
    assert matcher.cache("reading")[SERIES] == matcher.rules_for("reading", SERIES)
    assert matcher.match("reading", SERIES) is matcher.rules_for("reading", SERIES)  # one shared tuple per rule set
    assert matcher.rules_for("log_rate", "log_rates,service=x") == ()
    with pytest.raises(ValueError, match="unknown alert target"):
        matcher.rules_for("metrics", SERIES)


def test_window_and_log_rate_matching() -> None:
    matcher = RuleMatcher(
        [
            rule(name="p95", target="window", window="1m", stat="p95", metric="temp*", warning=1),
            rule(name="mean", target="window", window="1m", stat="mean", warning=1),
            rule(name="errors", target="log_rate", stat="error_rate", match={"service": "check*"}, warning=0.1),
        ]
    )
    agg = "readings_agg,device=d1,metric=temperature,site=s1,window=1m"
    assert [r.name for r in matcher.rules_for("window", agg)] == ["p95", "mean"]
    assert matcher.stats_for("window", agg) == ("mean", "p95")
    assert matcher.rules_for("window", agg.replace("window=1m", "window=10s")) == ()
    assert matcher.rules_for("window", SERIES) == ()  # a raw series is not a window series
    assert [r.name for r in matcher.rules_for("log_rate", "log_rates,service=checkout")] == ["errors"]
    assert matcher.rules_for("log_rate", "log_rates,service=billing") == ()
    assert matcher.targets == {"window", "log_rate"}
