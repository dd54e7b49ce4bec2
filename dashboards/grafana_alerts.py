"""Grafana alert rules generated from fleetwatch's own: ``python -m dashboards.grafana_alerts [--check]``.

fleetwatch evaluates its rules in the stream (``flows.alerts``); this module writes the same rules as Grafana 11
file-provisioned alert rules, for teams whose notifications go through Grafana:

- ``provisioning/grafana/alerting/fleetwatch-rules.yaml``: one rule group ``fleetwatch`` in the folder
  ``fleetwatch``, queries in InfluxQL on the data source ``fleetwatch-influxdb``;
- ``provisioning/grafana/alerting/contact-points.yaml``: a webhook contact point (``${ALERT_WEBHOOK_URL}``, expanded
  by Grafana from its environment) and the notification policy tree routing every fleetwatch alert to it.

The rules come from ``fleetwatch.example.toml`` (``--config`` for another file). Output is byte-identical between
runs, so ``--check`` (write nothing, exit 1 if a committed file differs) keeps the committed files honest.

How a rule translates (``translate_rule``):

- threshold on ``window`` (``<measurement>_agg``, field ``stat``, tag ``window``) or ``log_rate`` (``log_rates``):
  query A ``SELECT last("<stat>") ... GROUP BY *`` (one alert instance per series), B reduces it to its last value,
  C is the threshold; ``warning`` and ``critical`` become two Grafana rules labelled ``severity``;
- conditions ``>`` ``>=`` ``<`` ``<=`` ``outside`` ``inside`` -> ``gt`` ``gte`` ``lt`` ``lte`` ``outside_range``
  ``within_range_included`` (fleetwatch's ``inside`` includes its bounds; Grafana's ``within_range`` does not);
- ``<severity>_clear`` -> Grafana's recovery threshold (``unloadEvaluator``: the alert stops when it is true);
- ``for`` -> ``for``; tag and metric globs -> anchored regular expressions (``=~ /^s.*$/``), plain names -> ``=``;
- ``rate_of_change`` on windows and log rates -> ``difference()`` (per window) or ``derivative(.., 1s)`` (per
  second) in InfluxQL, then ``abs()`` in a math expression;
- ``deadman`` -> a ``count`` query over the silence window whose *absence* is the alert (``noDataState:
  Alerting``); raw readings are not stored by default, but every reading is counted in the window aggregates, so
  a reading deadman watches the ``count`` of the shortest window.

Rules Grafana cannot express are skipped, each with its reason in the generated file's header.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import string
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from fleetwatch import config as config_mod
from fleetwatch.labels import duration_label
from fleetwatch.retention import TierPlan, plan_or_none, qualified, window_tier
from flows.alerts.rules import AlertRule, Threshold, load_rules

REPO_DIR = Path(__file__).resolve().parent.parent
# Package data (links into the repository in a checkout), so that the installed program finds them too.
_DATA = Path(str(resources.files("dashboards")))
EXAMPLE_CONFIG = _DATA / "fleetwatch.example.toml"
ALERTING_DIR = _DATA / "provisioning" / "alerting"
RULES_FILE_NAME = "fleetwatch-rules.yaml"
CONTACT_POINTS_FILE_NAME = "contact-points.yaml"

# Fixed names shared with provisioning/grafana/datasources/fleetwatch.yaml and dashboards.sync.
DATASOURCE_UID = "fleetwatch-influxdb"
FOLDER_TITLE = "fleetwatch"
FOLDER_UID = "fleetwatch"
GROUP = "fleetwatch"
CONTACT_POINT = "fleetwatch-webhook"
# Grafana evaluates the whole group at this interval. fleetwatch's windows are 10 s and up, so evaluating more
# often mostly re-reads the same window.
INTERVAL = timedelta(seconds=30)
EXPR_UID = "__expr__"

# fleetwatch condition -> Grafana threshold type (fires when true).
FIRE = {
    ">": "gt",
    ">=": "gte",
    "<": "lt",
    "<=": "lte",
    "outside": "outside_range",
    "inside": "within_range_included",
}
# fleetwatch condition -> Grafana recovery threshold type. fleetwatch keeps firing while the value still passes
# the clear threshold with the same condition, so it recovers when the negation is true.
RECOVER = {
    ">": "lte",
    ">=": "lt",
    "<": "gte",
    "<=": "gt",
    "outside": "within_range_included",
    "inside": "outside_range",
}
SEVERITIES = ("warning", "critical")


@dataclass(frozen=True)
class Skipped:
    rule: str
    reason: str


@dataclass(frozen=True)
class Translation:
    rules: list[dict[str, Any]]
    skipped: list[Skipped]
    # Notification-policy routes for rules that re-notify (fleetwatch `renotify`).
    routes: list[dict[str, Any]]


# ------------------------------------------------------------------------------------------- InfluxQL


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_GLOB_CHARS = re.compile(r"[*?\[]")
# Outside a class: what RE2 treats as special, plus "/" (InfluxQL's regex delimiter).
_RE_SPECIAL = set("\\.+*?()|[]{}^$/")


def glob_regex(pattern: str) -> str:
    """An ``fnmatch`` glob (``*``, ``?``, ``[seq]``, ``[!seq]``; case-sensitive, whole string) as an anchored
    InfluxQL regex literal, ``/^...$/``."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            # As fnmatch: a "]" right after "[" or "[!" is a member; without a closing "]" the "[" is literal.
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            body = pattern[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            escaped = "".join("\\" + ch if ch in "\\]/[^" else ch for ch in body)
            out.append("[" + ("^" if negate else "") + escaped + "]")
        else:
            out.append("\\" + c if c in _RE_SPECIAL else c)
    return "/^" + "".join(out) + "$/"


def tag_filter(tag: str, pattern: str) -> str | None:
    """The WHERE term for one tag glob; None when it matches everything (fleetwatch counts a missing tag as "",
    which "*" matches, as does InfluxQL's regex on a missing tag)."""
    if pattern == "*":
        return None
    if not _GLOB_CHARS.search(pattern):
        return f"{_ident(tag)} = {_literal(pattern)}"
    return f"{_ident(tag)} =~ {glob_regex(pattern)}"


def _source(rule: AlertRule, window: str, plan: TierPlan | None) -> str:
    """The measurement a rule reads, in its retention tier when tiers are on (``"agg_1m"."readings_agg"``)."""
    if rule.target == "log_rate":
        return qualified(plan, "log_rates")
    policy = f"{_ident(window_tier(window))}." if plan is not None else ""
    if not _GLOB_CHARS.search(rule.measurement):
        return policy + _ident(f"{rule.measurement}_agg")
    return policy + glob_regex(rule.measurement)[:-2] + "_agg$/"


def _where(rule: AlertRule, window: str) -> str:
    terms = []
    if rule.target != "log_rate":
        terms.append(tag_filter("metric", rule.metric))
    terms += [tag_filter(tag, pattern) for tag, pattern in sorted(rule.match.items())]
    terms.append(f"{_ident('window')} = {_literal(window)}")
    return " AND ".join([t for t in terms if t] + ["$timeFilter"])


# ------------------------------------------------------------------------------------------- rules


def _seconds(delta: timedelta) -> int:
    return max(1, int(-(-delta.total_seconds() // 1)))


def _window_of(rule: AlertRule, cfg: config_mod.Config) -> tuple[str, timedelta, timedelta] | None:
    """The window label a rule's points carry, its length and the lateness after which it is written."""
    if rule.target == "window":
        length = config_mod.parse_duration(rule.window.split("/", 1)[0])
        return rule.window, length, cfg.windows.allowed_lateness
    if rule.target == "log_rate":
        return duration_label(cfg.logs.rate_window), cfg.logs.rate_window, cfg.logs.allowed_lateness
    # A reading deadman: the shortest window counts the readings soonest.
    lengths = sorted(cfg.windows.tumbling)
    if lengths:
        return duration_label(lengths[0]), lengths[0], cfg.windows.allowed_lateness
    if cfg.windows.sliding:
        s = min(cfg.windows.sliding, key=lambda s: s.length)
        label = f"{duration_label(s.length)}/{duration_label(s.offset)}"
        return label, s.length, cfg.windows.allowed_lateness
    return None


def rule_uid(name: str, severity: str) -> str:
    """A Grafana rule uid (letters, digits, - and _; at most 40 characters), stable for a rule and severity."""
    uid = re.sub(r"[^A-Za-z0-9_-]", "_", f"fleetwatch-{name}-{severity}")
    if len(uid) > 40 or uid != f"fleetwatch-{name}-{severity}":
        digest = hashlib.sha1(f"{name}/{severity}".encode()).hexdigest()[:8]
        uid = f"{uid[:31]}-{digest}"
    return uid


def _params(value: Threshold) -> list[float]:
    return [float(value[0]), float(value[1])] if isinstance(value, tuple) else [float(value)]


def _show(value: Threshold) -> str:
    return f"[{value[0]:g}, {value[1]:g}]" if isinstance(value, tuple) else f"{value:g}"


def _query(ref: str, query: str, seconds: int) -> dict[str, Any]:
    return {
        "refId": ref,
        "relativeTimeRange": {"from": seconds, "to": 0},
        "datasourceUid": DATASOURCE_UID,
        "model": {
            "refId": ref,
            "query": query,
            "rawQuery": True,
            "resultFormat": "time_series",
            "intervalMs": 1000,
            "maxDataPoints": 43200,
        },
    }


def _expression(ref: str, model: dict[str, Any]) -> dict[str, Any]:
    return {
        "refId": ref,
        "relativeTimeRange": {"from": 0, "to": 0},
        "datasourceUid": EXPR_UID,
        "model": {"refId": ref, "datasource": {"type": EXPR_UID, "uid": EXPR_UID}, **model},
    }


def _reduce(ref: str, source: str) -> dict[str, Any]:
    # dropNN: a window without the field (stddev of a single reading) is skipped, not an error.
    return _expression(ref, {"type": "reduce", "expression": source, "reducer": "last", "settings": {"mode": "dropNN"}})


def threshold_condition(condition: str, threshold: Threshold, clear: Threshold | None) -> dict[str, Any]:
    """One Grafana threshold condition: the evaluator, and the recovery threshold when the rule has hysteresis."""
    out: dict[str, Any] = {"evaluator": {"type": FIRE[condition], "params": _params(threshold)}}
    if clear is not None and clear != threshold:
        out["unloadEvaluator"] = {"type": RECOVER[condition], "params": _params(clear)}
    return out


def _describe_target(rule: AlertRule, window: str) -> str:
    """What a rule watches, for people: ``readings_agg window 1m, metric humidity, site s*``."""
    if rule.target == "log_rate":
        parts = [f"log_rates window {window}"]
    elif rule.target == "window":
        parts = [f"{rule.measurement}_agg window {window}"]
    else:
        parts = [f"{rule.measurement} (counted in the {window} windows)"]
    if rule.target != "log_rate" and rule.metric != "*":
        parts.append(f"metric {rule.metric}")
    parts += [f"{tag} {pattern}" for tag, pattern in sorted(rule.match.items()) if pattern != "*"]
    return ", ".join(parts)


# The series an alert instance is about: its labels from the query (GROUP BY *), as tag=value pairs.
_SERIES = (
    "{{ range $k, $v := $labels }}"
    '{{ if and (ne $k "fleetwatch_rule") (ne $k "severity") }}{{ $k }}={{ $v }} {{ end }}'
    "{{ end }}"
)


def _summary(rule: AlertRule, severity: str, threshold: str, value_ref: str | None, target: str) -> str:
    """The rule's summary template (str.format fields) as a Grafana annotation template."""
    if rule.summary is None:
        if value_ref is None:
            return f"[{severity.upper()}] {rule.name}: no data for {threshold} from {target}"
        stat = rule.stat if rule.kind != "rate_of_change" else f"change of {rule.stat} per {rule.rate_per}"
        value = f"{{{{ $values.{value_ref}.Value }}}}"
        return f"[{severity.upper()}] {rule.name}: {stat} {value} {rule.condition} {threshold} on {_SERIES}".rstrip()
    out = []
    for literal, field, spec, _conversion in string.Formatter().parse(rule.summary):
        out.append(literal.replace("{{", '{{ "{{" }}'))
        if field is None:
            continue
        if field == "rule":
            out.append(rule.name)
        elif field == "severity":
            out.append(severity)
        elif field == "threshold":
            out.append(threshold)
        elif field == "state":
            out.append("firing")
        elif field == "series":
            out.append(_SERIES)
        elif field == "value":
            if value_ref is None:
                out.append("no data")
            elif spec and re.fullmatch(r"\.?\d*[fge]", spec):
                out.append(f'{{{{ printf "%{spec}" $values.{value_ref}.Value }}}}')
            else:
                out.append(f"{{{{ $values.{value_ref}.Value }}}}")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", field):
            out.append(f"{{{{ $labels.{field} }}}}")
        else:
            out.append(f"{{{{ index $labels {json.dumps(field)} }}}}")
    return "".join(out)


def _rule(
    rule: AlertRule,
    severity: str,
    data: list[dict[str, Any]],
    condition: str,
    *,
    for_: timedelta,
    no_data: str,
    summary: str,
    description: str,
) -> dict[str, Any]:
    return {
        "uid": rule_uid(rule.name, severity),
        "title": f"{rule.name} ({severity})",
        "condition": condition,
        "data": data,
        "noDataState": no_data,
        "execErrState": "Error",
        "for": duration_label(for_),
        "annotations": {"summary": summary, "description": description},
        "labels": {"fleetwatch_rule": rule.name, "severity": severity},
        "isPaused": False,
    }


def translate_rule(rule: AlertRule, cfg: config_mod.Config) -> list[dict[str, Any]] | Skipped:
    """The Grafana rules (one per severity) for a fleetwatch rule, or why Grafana cannot express it."""
    if rule.target == "reading" and rule.kind != "deadman":
        return Skipped(
            rule.name,
            f"{rule.kind} on raw readings: evaluated per reading in the stream; InfluxDB holds raw readings only"
            " for subscriptions with write_raw, and Grafana samples at its evaluation interval, so readings"
            " between two evaluations would never be seen",
        )
    window = _window_of(rule, cfg)
    if window is None:
        return Skipped(rule.name, "no window is computed (windows.tumbling and windows.sliding are empty)")
    label, length, lateness = window
    source, where = _source(rule, label, plan_or_none(cfg)), _where(rule, label)
    target = _describe_target(rule, label)

    if rule.kind == "deadman":
        assert rule.silent_for is not None  # validated: deadman needs silent_for
        severity = rule.deadman_severity
        # Points are stamped at window start and written once the window closes (end + lateness), so the newest
        # visible point of a series that sends is at most 2 windows + lateness old: the range adds that much.
        seconds = _seconds(rule.silent_for + 2 * length + lateness)
        query = f"SELECT sum({_ident('count')}) AS {_ident('value')} FROM {source} WHERE {where}"
        condition = {"evaluator": {"type": "lt", "params": [1.0]}}
        data = [
            _query("A", query, seconds),
            _reduce("B", "A"),
            _expression("C", {"type": "threshold", "expression": "B", "conditions": [condition]}),
        ]
        description = (
            f"fleetwatch deadman rule {rule.name!r}: nothing from {target} for {seconds}s"
            f" (silent_for {duration_label(rule.silent_for)} + two windows + lateness). Grafana sees the whole"
            " selection fall silent, not one series among others."
        )
        summary = _summary(rule, severity, duration_label(rule.silent_for), None, target)
        # The silence is the query's range: waiting `for` on top would double it.
        return [
            _rule(
                rule,
                severity,
                data,
                "C",
                for_=timedelta(0),
                no_data="Alerting",
                summary=summary,
                description=description,
            )
        ]

    factor = 3 if rule.kind == "rate_of_change" else 2
    seconds = _seconds(factor * length + lateness + INTERVAL)
    if rule.kind == "rate_of_change":
        select = (
            f"difference({_ident(rule.stat)})" if rule.rate_per == "window" else f"derivative({_ident(rule.stat)}, 1s)"
        )
        value_ref, last = "C", "D"
        head = [
            _query("A", f"SELECT {select} AS {_ident('value')} FROM {source} WHERE {where} GROUP BY *", seconds),
            _reduce("B", "A"),
            _expression("C", {"type": "math", "expression": "abs($B)"}),
        ]
        what = f"|change| of {rule.stat} per {rule.rate_per}"
    else:
        value_ref, last = "B", "C"
        query = f"SELECT last({_ident(rule.stat)}) AS {_ident('value')} FROM {source} WHERE {where} GROUP BY *"
        head = [_query("A", query, seconds), _reduce("B", "A")]
        what = rule.stat
    out = []
    for severity in SEVERITIES:
        threshold: Threshold | None = getattr(rule, severity)
        if threshold is None:
            continue
        clear: Threshold | None = getattr(rule, f"{severity}_clear")
        cond = threshold_condition(rule.condition, threshold, clear)
        data = [*head, _expression(last, {"type": "threshold", "expression": value_ref, "conditions": [cond]})]
        description = f"fleetwatch rule {rule.name!r}: {what} of {target} {rule.condition} {_show(threshold)}"
        if "unloadEvaluator" in cond:
            assert clear is not None
            description += f", firing until it no longer passes {_show(clear)}"
        if rule.for_:
            description += f", for {duration_label(rule.for_)}"
        summary = _summary(rule, severity, _show(threshold), value_ref, target)
        out.append(
            _rule(rule, severity, data, last, for_=rule.for_, no_data="OK", summary=summary, description=description)
        )
    return out


def translate(rules: Sequence[AlertRule], cfg: config_mod.Config) -> Translation:
    translated: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    routes: list[dict[str, Any]] = []
    for rule in rules:
        result = translate_rule(rule, cfg)
        if isinstance(result, Skipped):
            skipped.append(result)
            continue
        translated += result
        if rule.renotify > timedelta(0):
            routes.append(
                {
                    "receiver": CONTACT_POINT,
                    "object_matchers": [["fleetwatch_rule", "=", rule.name]],
                    # Grafana refuses a repeat interval shorter than the group interval.
                    "repeat_interval": duration_label(max(rule.renotify, timedelta(minutes=5))),
                }
            )
    return Translation(translated, skipped, routes)


def load_translation(config_path: Path = EXAMPLE_CONFIG) -> Translation:
    # No environment: the generated files must not depend on who runs the generator.
    cfg = config_mod.load(config_path, env={})
    return translate(load_rules(cfg.alerts), cfg)


# ------------------------------------------------------------------------------------------- files


def rule_group(translation: Translation) -> dict[str, Any]:
    """The rule group as Grafana's file provisioning writes it."""
    return {
        "orgId": 1,
        "name": GROUP,
        "folder": FOLDER_TITLE,
        "interval": duration_label(INTERVAL),
        "rules": translation.rules,
    }


def contact_points(translation: Translation) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "contactPoints": [
            {
                "orgId": 1,
                "name": CONTACT_POINT,
                "receivers": [
                    {
                        "uid": CONTACT_POINT,
                        "type": "webhook",
                        # Expanded by Grafana from its environment when it reads the file.
                        "settings": {"url": "${ALERT_WEBHOOK_URL}", "httpMethod": "POST"},
                        "disableResolveMessage": False,
                    }
                ],
            }
        ],
        "policies": [
            {
                "orgId": 1,
                "receiver": CONTACT_POINT,
                "group_by": ["grafana_folder", "alertname", "severity"],
                "group_wait": "30s",
                "group_interval": "5m",
                # fleetwatch's renotify defaults to never; a day is the closest Grafana allows for a default.
                "repeat_interval": "24h",
                "routes": translation.routes,
            }
        ],
    }


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        # JSON strings are valid YAML double-quoted scalars: no value is ever read as a number or boolean.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | dict) and not value:
        return "[]" if isinstance(value, list) else "{}"
    raise TypeError(f"not a YAML scalar: {value!r}")


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, list | dict) or not value


def _key(key: str) -> str:
    return key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)


def to_yaml(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML lines; lists of scalars in flow style. Deterministic: keys keep their order."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_scalar(item):
                lines.append(f"{pad}{_key(key)}: {_scalar(item)}")
            elif isinstance(item, list) and all(_is_scalar(v) for v in item):
                lines.append(f"{pad}{_key(key)}: [{', '.join(_scalar(v) for v in item)}]")
            else:
                lines.append(f"{pad}{_key(key)}:")
                lines += to_yaml(item, indent + 2)
    elif isinstance(value, list):
        for item in value:
            if _is_scalar(item):
                lines.append(f"{pad}- {_scalar(item)}")
            elif isinstance(item, list) and all(_is_scalar(v) for v in item):
                lines.append(f"{pad}- [{', '.join(_scalar(v) for v in item)}]")
            else:
                inner = to_yaml(item, indent + 2)
                inner[0] = f"{pad}- {inner[0][indent + 2 :]}"
                lines += inner
    else:
        lines.append(pad + _scalar(value))
    return lines


def _comment(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        # A wrapped list item keeps its indent under the "- ".
        indent = "  " if line.startswith("- ") else ""
        wrapped = textwrap.wrap(line, width=114, subsequent_indent=indent, break_on_hyphens=False) or [""]
        out += [f"# {part}".rstrip() for part in wrapped]
    return out


def render_rules(translation: Translation, source: str) -> str:
    header = [
        f"Grafana 11 alert rules generated from the [[alerts.rules]] of {source}",
        "by `python -m dashboards.grafana_alerts` (dashboards/grafana_alerts.py). Do not edit: regenerate.",
        "",
        "fleetwatch evaluates the same rules in the stream, per reading and per closed window, within",
        "milliseconds. These are for notifications routed through Grafana. Differences:",
        "- Grafana evaluates every " + duration_label(INTERVAL) + " and `for` is wall time (fleetwatch: event time).",
        "- warning and critical are two rules: at critical, the warning rule fires too.",
        "- a deadman fires when the whole selection is silent (Grafana's no-data state), one to two windows plus",
        "  the lateness after fleetwatch's would; a single silent series among others is fleetwatch's alone.",
        "",
        "Translated: " + (", ".join(sorted({r["labels"]["fleetwatch_rule"] for r in translation.rules})) or "none"),
    ]
    if translation.skipped:
        header += ["", "Skipped (Grafana cannot express them):"]
        header += [f"- {s.rule}: {s.reason}" for s in translation.skipped]
    body = {"apiVersion": 1, "groups": [rule_group(translation)] if translation.rules else []}
    return "\n".join(_comment("\n".join(header)) + to_yaml(body)) + "\n"


def render_contact_points(translation: Translation) -> str:
    header = [
        "Grafana 11 contact point and notification policy for fleetwatch's Grafana alert rules",
        f"({RULES_FILE_NAME}), generated by `python -m dashboards.grafana_alerts`. Do not edit: regenerate.",
        "",
        "The webhook URL comes from Grafana's environment: ALERT_WEBHOOK_URL (docker-compose.yml passes it).",
        "The policy tree replaces the organisation's: it routes every alert to the webhook, and re-notifies",
        "at each fleetwatch rule's `renotify` where one is set.",
    ]
    return "\n".join(_comment("\n".join(header)) + to_yaml(contact_points(translation))) + "\n"


def render_all(config_path: Path = EXAMPLE_CONFIG) -> dict[str, str]:
    """File name -> content."""
    translation = load_translation(config_path)
    if config_path == EXAMPLE_CONFIG:
        source = EXAMPLE_CONFIG.name
    else:
        try:
            source = str(config_path.resolve().relative_to(REPO_DIR))
        except ValueError:
            source = str(config_path)
    return {
        RULES_FILE_NAME: render_rules(translation, source),
        CONTACT_POINTS_FILE_NAME: render_contact_points(translation),
    }


def differing(directory: Path = ALERTING_DIR, config_path: Path = EXAMPLE_CONFIG) -> list[Path]:
    out = []
    for name, content in render_all(config_path).items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            out.append(path)
    return out


def write_all(directory: Path = ALERTING_DIR, config_path: Path = EXAMPLE_CONFIG) -> list[Path]:
    """Write the files that differ; returns them."""
    changed = []
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in render_all(config_path).items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards.grafana_alerts", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    parser.add_argument("--config", type=Path, default=EXAMPLE_CONFIG, help="fleetwatch config with the rules")
    parser.add_argument("--dir", type=Path, default=ALERTING_DIR, help="where the provisioning files are")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = differing(args.dir, args.config)
            for path in stale:
                print(f"differs from the generated file: {path}", file=sys.stderr)
            if stale:
                print("run: python -m dashboards.grafana_alerts", file=sys.stderr)
            return 1 if stale else 0
        for path in write_all(args.dir, args.config):
            print(f"wrote {path}")
    except config_mod.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
