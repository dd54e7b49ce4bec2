"""The ``[alerts]`` section: alert rules (what to watch, when it is bad, and how bad), notification targets and
the engine's limits. Validated whole at start, like the rest of the config; evaluated by ``flows.alerts``.

A rule watches one of three targets:

- ``reading``: raw readings of ``<measurement>`` (series ``readings,device=d1,metric=temperature,site=s1``);
- ``window``: one statistic (``stat``) of the ``window`` aggregates of ``<measurement>_agg`` (series
  ``readings_agg,device=d1,metric=temperature,site=s1,window=1m``, as stored in InfluxDB);
- ``log_rate``: one figure (``stat``) of the log-rate windows of a service (series ``log_rates,service=checkout``).

Which series a rule watches: ``measurement`` and ``metric`` are globs, ``match`` maps tag names to globs
(``fnmatch``, case-sensitive). A tag the series does not carry counts as the empty string, as in the series key
itself (line protocol cannot carry empty tags), so ``"*"`` matches it and ``"s*"`` does not.

Kinds:

- ``threshold``: the value against ``warning`` and/or ``critical`` with ``condition`` (``>``, ``>=``, ``<``,
  ``<=``; ``outside`` a ``[low, high]`` pair means ``value < low or value > high``, ``inside`` means
  ``low <= value <= high``). ``critical`` must be strictly more severe than ``warning`` (further in the direction of
  the condition; for pairs a wider band for ``outside``, a narrower one for ``inside``), else ``warning`` could never
  be reached. Hysteresis: once firing at a severity, it holds while the value still passes ``<severity>_clear``
  with the same condition (default: the threshold itself), so a clear threshold lies on the "healthier" side of its
  threshold. ``for`` (event time) delays firing until the condition has held that long.
- ``rate_of_change``: as threshold, on ``|Δvalue| / Δt`` in seconds of event time between consecutive observations
  of the series (``rate_per = "second"``), or on ``|Δvalue|`` between consecutive windows (``rate_per = "window"``,
  window and log-rate targets).
- ``deadman``: fires when a series that was seen stops sending for ``silent_for`` (system time). Its severity is
  ``critical`` when a critical value is given (the number itself is not used), else ``warning``.

Errors name the key and what was expected, e.g. ``alerts.rules[2].critical: must be more severe than warning ...``.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

from fleetwatch.config_base import Duration, Section, check_url_port, parse_duration, url_without_secrets
from fleetwatch.labels import duration_label

Kind = Literal["threshold", "deadman", "rate_of_change"]
Target = Literal["reading", "window", "log_rate"]
Condition = Literal[">", ">=", "<", "<=", "outside", "inside"]
Threshold = float | tuple[float, float]

TARGETS: tuple[Target, ...] = ("reading", "window", "log_rate")
PAIR_CONDITIONS = ("outside", "inside")
# The fields of <measurement>_agg (flows.schema); other quantiles (p90, p99_9) exist when windows.quantiles has them.
WINDOW_STATS = ("count", "min", "max", "mean", "sum", "first", "last", "stddev", "p50", "p95", "p99")
_QUANTILE_STAT = re.compile(r"p\d+(?:_\d+)?")
# LogRate figures, then one per normalised level ("unknown": events without a recognised level).
LOG_RATE_STATS = (
    "count",
    "errors",
    "error_rate",
    *("trace", "debug", "info", "notice", "warn", "error", "critical", "alert", "emergency", "unknown"),
)
SUMMARY_FIELDS = ("rule", "severity", "value", "threshold", "state", "series")

# The defaults of the limits in [alerts]; the engine and the notifiers use them when built without a config.
DEFAULT_MAX_PENDING_NOTIFICATIONS = 10_000
DEFAULT_STATE_IDLE_AFTER = timedelta(hours=1)
DEFAULT_MAX_STATES = 500_000


class _Fields(dict[str, object]):
    """Summary fields; a tag the series does not carry formats as "" instead of failing."""

    def __missing__(self, key: str) -> object:
        return ""


def render_summary(template: str, fields: Mapping[str, object]) -> str:
    return template.format_map(_Fields(fields))


def _check_threshold(condition: str, value: Threshold) -> None:
    if condition in PAIR_CONDITIONS:
        if not isinstance(value, tuple):
            raise ValueError(f"condition {condition!r} needs a [low, high] pair (got {value!r})")
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise ValueError(f"expected a [low, high] pair of finite numbers with low <= high (got [{low}, {high}])")
    elif isinstance(value, tuple):
        raise ValueError(f"condition {condition!r} needs a single number (got {list(value)})")
    elif not math.isfinite(value):
        # inf passed: a rule that can never fire (> inf), or always fires (< inf).
        raise ValueError(f"expected a finite number (got {value})")


def _more_severe(condition: str, critical: Threshold, warning: Threshold) -> bool:
    if isinstance(critical, tuple) and isinstance(warning, tuple):
        (c_low, c_high), (w_low, w_high) = critical, warning
        if condition == "outside":  # a wider band is crossed later
            return c_low <= w_low and c_high >= w_high and critical != warning
        return w_low <= c_low and c_high <= w_high and critical != warning  # inside: a narrower band
    assert isinstance(critical, float) and isinstance(warning, float)
    return critical > warning if condition in (">", ">=") else critical < warning


def _clear_ok(condition: str, clear: Threshold, threshold: Threshold) -> bool:
    if isinstance(clear, tuple) and isinstance(threshold, tuple):
        if condition == "outside":  # clears once back inside a band no wider than the threshold's
            return threshold[0] <= clear[0] and clear[1] <= threshold[1]
        return clear[0] <= threshold[0] and clear[1] >= threshold[1]
    assert isinstance(clear, float) and isinstance(threshold, float)
    return clear <= threshold if condition in (">", ">=") else clear >= threshold


_CLEAR_SIDE = {
    ">": "<= its threshold",
    ">=": "<= its threshold",
    "<": ">= its threshold",
    "<=": ">= its threshold",
    "outside": "a band inside its threshold band",
    "inside": "a band containing its threshold band",
}
_SEVERE_SIDE = {
    ">": "critical > warning",
    ">=": "critical > warning",
    "<": "critical < warning",
    "<=": "critical < warning",
    "outside": "a critical band containing the warning band",
    "inside": "a critical band inside the warning band",
}


def _show(value: Threshold) -> str:
    return f"[{value[0]:g}, {value[1]:g}]" if isinstance(value, tuple) else f"{value:g}"


class AlertRule(Section):
    """One rule. See the module docstring for the meaning of each key."""

    # "for" is a Python keyword: the field is for_, the key in TOML is "for".
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Kind = "threshold"
    target: Target = "reading"
    measurement: str = Field(default="readings", min_length=1)
    metric: str = Field(default="*", min_length=1)
    match: dict[str, str] = Field(default_factory=dict)
    # The window label ("10s", "1m", "1m/10s"), normalised as flows.windows labels it ("60s" -> "1m").
    window: str = Field(default="", validate_default=True)
    # Normalised: "value" for readings; "count" for deadman rules on windows and log rates.
    stat: str = Field(default="", validate_default=True)
    condition: Condition = ">"
    warning: Threshold | None = None
    critical: Threshold | None = Field(default=None, validate_default=True)
    warning_clear: Threshold | None = None
    critical_clear: Threshold | None = None
    for_: Duration = Field(default=timedelta(0), alias="for")
    silent_for: Duration | None = Field(default=None, validate_default=True)
    rate_per: Literal["second", "window"] = "second"
    renotify: Duration = timedelta(0)
    summary: str | None = None

    # Field validators run in field order, so each sees the fields above it in info.data (a field that failed its
    # own validation is absent: its error is already reported). Validators without validate_default run only on
    # keys that were given, which is how "only for ..." keys are told apart from their defaults.

    @field_validator("measurement", "metric")
    @classmethod
    def _not_log_rate(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("target") == "log_rate":
            raise ValueError("not used by target 'log_rate' (select services with match = { service = '...' })")
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, window: str, info: ValidationInfo) -> str:
        target = info.data.get("target")
        if target == "window" and not window:
            raise ValueError("target 'window' needs the window length, such as '1m' or '1m/10s'")
        if target is not None and target != "window" and window:
            raise ValueError("only for target 'window'")
        if window:
            try:
                return "/".join(duration_label(parse_duration(part)) for part in window.split("/", 1))
            except ValueError:
                raise ValueError(f"expected a window length such as '1m' or '1m/10s' (got {window!r})") from None
        return window

    @field_validator("stat")
    @classmethod
    def _stat(cls, stat: str, info: ValidationInfo) -> str:
        target, kind = info.data.get("target"), info.data.get("kind")
        if target is None or kind is None:
            return stat
        if target == "reading":
            if stat not in ("", "value"):
                raise ValueError(f"target 'reading' has one value per reading: stat must be 'value' (got {stat!r})")
            return "value"
        allowed = WINDOW_STATS if target == "window" else LOG_RATE_STATS
        if not stat:
            if kind == "deadman":
                return "count"  # any stat would do: every closed window has a count
            raise ValueError(f"target {target!r} needs a stat: one of {', '.join(allowed)}")
        if stat not in allowed and not (target == "window" and _QUANTILE_STAT.fullmatch(stat)):
            raise ValueError(f"expected one of {', '.join(allowed)} (got {stat!r})")
        return stat

    @field_validator("condition")
    @classmethod
    def _condition(cls, condition: str, info: ValidationInfo) -> str:
        if info.data.get("kind") == "deadman":
            raise ValueError("not used by kind 'deadman' (it fires on silence: see silent_for)")
        return condition

    @field_validator("warning")
    @classmethod
    def _warning(cls, warning: Threshold | None, info: ValidationInfo) -> Threshold | None:
        if warning is not None and "condition" in info.data:
            _check_threshold(info.data["condition"], warning)
        return warning

    @field_validator("critical")
    @classmethod
    def _critical(cls, critical: Threshold | None, info: ValidationInfo) -> Threshold | None:
        data = info.data
        if "condition" not in data or "warning" not in data or "kind" not in data:
            return critical
        condition, warning = data["condition"], data["warning"]
        if critical is None:
            if warning is None and data["kind"] != "deadman":
                raise ValueError("give a warning threshold, a critical threshold, or both")
            return None
        _check_threshold(condition, critical)
        if warning is not None and data["kind"] != "deadman" and not _more_severe(condition, critical, warning):
            raise ValueError(
                f"must be more severe than warning for condition {condition!r}: expected {_SEVERE_SIDE[condition]}"
                f" (got critical {_show(critical)}, warning {_show(warning)})"
            )
        return critical

    @field_validator("warning_clear", "critical_clear")
    @classmethod
    def _clear(cls, clear: Threshold | None, info: ValidationInfo) -> Threshold | None:
        severity = "warning" if info.field_name == "warning_clear" else "critical"
        data = info.data
        if clear is None or severity not in data or "condition" not in data:
            return clear
        if data.get("kind") == "deadman":
            raise ValueError("not used by kind 'deadman'")
        threshold = data[severity]
        if threshold is None:
            raise ValueError(f"needs {severity}")
        condition = data["condition"]
        _check_threshold(condition, clear)
        if not _clear_ok(condition, clear, threshold):
            raise ValueError(
                f"for condition {condition!r} a clear threshold must be {_CLEAR_SIDE[condition]}"
                f" (got {_show(clear)}, {severity} {_show(threshold)})"
            )
        return clear

    @field_validator("for_")
    @classmethod
    def _for(cls, for_: timedelta, info: ValidationInfo) -> timedelta:
        if info.data.get("kind") == "deadman" and for_ > timedelta(0):
            raise ValueError("not used by kind 'deadman' (use silent_for)")
        return for_

    @field_validator("silent_for")
    @classmethod
    def _silent_for(cls, silent_for: timedelta | None, info: ValidationInfo) -> timedelta | None:
        kind = info.data.get("kind")
        if kind == "deadman" and (silent_for is None or silent_for <= timedelta(0)):
            raise ValueError("kind 'deadman' needs silent_for > 0, such as '5m'")
        if kind is not None and kind != "deadman" and silent_for is not None:
            raise ValueError("only for kind 'deadman'")
        return silent_for

    @field_validator("renotify")
    @classmethod
    def _renotify(cls, renotify: timedelta) -> timedelta:
        # A notification to every channel per series this often while firing: under a second floods them.
        if timedelta(0) < renotify < timedelta(seconds=1):
            raise ValueError(f"expected 0 (off) or at least 1s (got {renotify.total_seconds()}s)")
        return renotify

    @field_validator("rate_per")
    @classmethod
    def _rate_per(cls, rate_per: str, info: ValidationInfo) -> str:
        kind, target = info.data.get("kind"), info.data.get("target")
        if kind is not None and kind != "rate_of_change":
            raise ValueError("only for kind 'rate_of_change'")
        if rate_per == "window" and target == "reading":
            raise ValueError("'window' needs target 'window' or 'log_rate' (readings are not windows)")
        return rate_per

    @field_validator("summary")
    @classmethod
    def _summary(cls, summary: str | None) -> str | None:
        if summary is not None:
            sample = dict.fromkeys(SUMMARY_FIELDS, "x") | {"value": 1.5, "threshold": 1.0}
            try:
                render_summary(summary, sample)
            except (ValueError, IndexError, KeyError, AttributeError, TypeError) as exc:
                raise ValueError(
                    f"not a valid template ({exc}); use str.format fields {{{'}, {'.join(SUMMARY_FIELDS)}}}"
                    " or tag names, e.g. '{rule}: {value:.1f} on {device}'"
                ) from None
        return summary

    @property
    def deadman_severity(self) -> str:
        return "critical" if self.critical is not None else "warning"


# ------------------------------------------------------------------------------------------- config


# RFC 9110 field names are tokens; a value may not hold CR, LF or NUL (a line break would start a new header).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")


class WebhookConfig(Section):
    url: str
    # "generic": the AlertTransition as JSON; "slack": a Slack incoming-webhook message.
    format: Literal["generic", "slack"] = "generic"
    timeout: Duration = timedelta(seconds=5)
    # Retries back off exponentially up to this delay.
    max_retry_delay: Duration = timedelta(seconds=60)
    # Extra request headers (an Authorization token): secrets, never printed.
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL (got {url_without_secrets(url)!r}...)")
        check_url_port(url)
        return url

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        # Checked here, not by the HTTP client at the first alert: a pasted token's trailing line break would
        # otherwise stop the notifier then, with the value in the error. Messages name the header, never its value.
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name[:64]!r}: expected letters, digits and !#$%&'*+-.^_`|~ only")
            if _HEADER_VALUE_FORBIDDEN.search(value.get_secret_value()):
                raise ValueError(f"header {name}: its value has a line break or a NUL, which no HTTP header may hold")
        return headers

    @field_validator("timeout", "max_retry_delay")
    @classmethod
    def _positive(cls, delay: timedelta) -> timedelta:
        if delay <= timedelta(0):
            raise ValueError("expected a duration > 0")
        return delay


class GrafanaAnnotationsConfig(Section):
    """Alert transitions also posted as Grafana annotations (tags ``fleetwatch``, ``rule:…``, ``state:…``)."""

    url: str
    token: SecretStr | None = None
    token_file: Path | None = None
    # Annotate one dashboard; without it the annotations belong to the organisation (any dashboard's
    # annotation query on the tag ``fleetwatch`` shows them).
    dashboard_uid: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL (got {url_without_secrets(url)!r}...)")
        return url

    def resolved_token(self) -> str:
        if self.token_file is not None:
            try:
                return self.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"alerts.grafana.token_file: cannot read {self.token_file}: {exc.strerror}") from None
        return self.token.get_secret_value() if self.token else ""


class AlertsConfig(Section):
    rules: list[AlertRule] = Field(default_factory=list)
    # A TOML file of [[rules]] tables, merged with the inline rules (see load_rules).
    rules_file: Path | None = None
    # Transitions are published, retained, to <prefix>/<rule>/<measurement>/<tag values...>: one topic per
    # series, holding its current state.
    mqtt_topic_prefix: str = Field(default="alerts", min_length=1)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    grafana: GrafanaAnnotationsConfig | None = None
    # Ids of notifications sent, so a replay after a restart does not send them again.
    journal: Path = Path(".fleetwatch/alerts-sent.jsonl")
    # Notifications waiting for one channel (MQTT, a webhook, Grafana) while it is slow or down. The dataflow
    # never waits for a channel: beyond this, a notification is dropped for that channel (counted, logged,
    # journaled as "dropped"; it is still in the alert history), and this many are kept in each snapshot.
    max_pending_notifications: int = Field(default=DEFAULT_MAX_PENDING_NOTIFICATIONS, ge=1, le=1_000_000)
    # The state of a (rule, series) that is ok (not pending, not firing, not an armed deadman) is forgotten
    # once the series has been silent this long (system time), so series that come and go do not pile up.
    state_idle_after: Duration = DEFAULT_STATE_IDLE_AFTER
    # At most this many (rule, series) states per alert key (a shard of series, one per worker, or a
    # service's log rates); beyond it the least recently seen ok states are forgotten first. Pending and
    # firing alerts and armed deadman timers are never forgotten, so they may exceed it (logged).
    max_states: int = Field(default=DEFAULT_MAX_STATES, ge=1)

    @field_validator("state_idle_after")
    @classmethod
    def _idle(cls, idle: timedelta) -> timedelta:
        if idle <= timedelta(0):
            raise ValueError("expected a duration > 0")
        return idle

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[AlertRule]) -> list[AlertRule]:
        names = [r.name for r in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique (repeated: {', '.join(duplicates)})")
        return rules

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _topic(cls, prefix: str) -> str:
        if "+" in prefix or "#" in prefix:
            raise ValueError(f"a topic prefix cannot hold the wildcards + or # (got {prefix!r})")
        return prefix.rstrip("/")


def _dotted(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}"
    return key


def _describe(error: Any) -> str:
    key = _dotted(tuple(p for p in error["loc"] if not str(p).startswith("function-")))
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] not in ("value_error", "assertion_error") and "input" in error:
        message += f" (got {error['input']!r})"
    return f"{key}: {message}"


def load_rules(cfg: AlertsConfig) -> list[AlertRule]:
    """The inline rules, then those of ``rules_file``. Raises ``ValueError`` with one line per problem, each
    ``alerts.rules_file: <path>: rules[i].<key>: <expectation>``; names must be unique across both."""
    rules = list(cfg.rules)
    if cfg.rules_file is None:
        return rules
    where = f"alerts.rules_file: {cfg.rules_file}"
    try:
        data = tomllib.loads(cfg.rules_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{where}: file not found") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: expected UTF-8 text (byte {exc.start} is not)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: not valid TOML: {exc}") from None
    problems = [f"{where}: {key}: unknown key (expected [[rules]] tables)" for key in sorted(data) if key != "rules"]
    entries = data.get("rules", [])
    if not isinstance(entries, list):
        entries = []
        problems.append(f"{where}: rules: expected [[rules]] tables")
    inline = {rule.name: i for i, rule in enumerate(cfg.rules)}
    in_file: dict[str, int] = {}
    for i, entry in enumerate(entries):
        try:
            rule = AlertRule.model_validate(entry)
        except ValidationError as exc:
            problems += [f"{where}: rules[{i}]{_describe(e)}" for e in exc.errors()]
            continue
        if rule.name in inline:
            problems.append(
                f"{where}: rules[{i}].name: duplicate rule name {rule.name!r} (also alerts.rules[{inline[rule.name]}])"
            )
        elif rule.name in in_file:
            problems.append(
                f"{where}: rules[{i}].name: duplicate rule name {rule.name!r} (also rules[{in_file[rule.name]}])"
            )
        else:
            in_file[rule.name] = i
            rules.append(rule)
    if problems:
        raise ValueError("\n".join(problems))
    return rules
