"""Alert rules in the stream: which rules watch a series (``RuleMatcher``).

The rule models, their validation and ``load_rules`` are the ``[alerts]`` section of the configuration, in
``fleetwatch.alerts_config`` (the configuration imports nothing from ``flows``); they are re-exported here, so
``flows.alerts.rules.AlertRule`` is the very class the configuration validates. The module docstring there says
what each key of a rule means.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from fnmatch import translate

from fleetwatch.alerts_config import (
    DEFAULT_MAX_PENDING_NOTIFICATIONS,
    DEFAULT_MAX_STATES,
    DEFAULT_STATE_IDLE_AFTER,
    LOG_RATE_STATS,
    PAIR_CONDITIONS,
    SUMMARY_FIELDS,
    TARGETS,
    WINDOW_STATS,
    AlertRule,
    AlertsConfig,
    Condition,
    GrafanaAnnotationsConfig,
    Kind,
    Target,
    Threshold,
    WebhookConfig,
    load_rules,
    render_summary,
)
from fleetwatch.record import parse_series

__all__ = [
    "DEFAULT_MAX_PENDING_NOTIFICATIONS",
    "DEFAULT_MAX_STATES",
    "DEFAULT_STATE_IDLE_AFTER",
    "LOG_RATE_STATS",
    "PAIR_CONDITIONS",
    "SUMMARY_FIELDS",
    "TARGETS",
    "WINDOW_STATS",
    "AlertRule",
    "AlertsConfig",
    "Condition",
    "GrafanaAnnotationsConfig",
    "Kind",
    "RuleMatcher",
    "Target",
    "Threshold",
    "WebhookConfig",
    "load_rules",
    "render_summary",
]

# ------------------------------------------------------------------------------------------- matching

# Bounds the per-series caches (series churn, e.g. devices renamed over months): cleared when full.
_CACHE_MAX = 1_000_000


def _glob(pattern: str) -> Callable[[str], object]:
    return re.compile(translate(pattern)).match


class _Selector:
    """A rule's series selection, compiled."""

    __slots__ = ("measurement", "metric", "rule", "tags", "window")

    def __init__(self, rule: AlertRule) -> None:
        self.rule = rule
        self.measurement = _glob(rule.measurement)
        self.metric = _glob(rule.metric)
        self.window = rule.window
        self.tags = tuple((key, _glob(pattern)) for key, pattern in rule.match.items())

    def matches(self, target: str, measurement: str, tags: dict[str, str]) -> bool:
        if target == "log_rate":
            if measurement != "log_rates":
                return False
        else:
            if target == "window":
                if not measurement.endswith("_agg") or tags.get("window") != self.window:
                    return False
                measurement = measurement[: -len("_agg")]
            if not self.measurement(measurement) or not self.metric(tags.get("metric", "")):
                return False
        return all(glob(tags.get(key, "")) for key, glob in self.tags)


def unknown_target(target: str) -> ValueError:
    """The error for a target that is not one of ``TARGETS`` (one wording wherever a target is looked up)."""
    return ValueError(f"unknown alert target {target!r} (expected one of {', '.join(TARGETS)})")


class RuleMatcher:
    """Which rules watch a series. The answer is cached per (target, series): the hot path is one dict lookup,
    and most series match no rule. Thread-safe enough to share between the logics of one process (entries are
    idempotent, dict operations atomic)."""

    def __init__(self, rules: Sequence[AlertRule]) -> None:
        self.rules = tuple(rules)
        self._selectors: dict[str, tuple[_Selector, ...]] = {
            t: tuple(_Selector(r) for r in self.rules if r.target == t) for t in TARGETS
        }
        self._caches: dict[str, dict[str, tuple[AlertRule, ...]]] = {t: {} for t in TARGETS}
        self.targets = frozenset(t for t in TARGETS if self._selectors[t])
        # The window labels some window rule watches: an aggregate of another length is skipped before its
        # series is even built (at fleet scale a 1 min boundary closes one per series, for no rule).
        self.windows = frozenset(r.window for r in self.rules if r.target == "window")
        # Each distinct set of rules a series can match, as one tuple shared by every series matching it (by
        # rule names), and the stats it needs in a stable order, by that tuple's id (the tuples live here).
        self._sets: dict[tuple[str, ...], tuple[AlertRule, ...]] = {}
        self._stats: dict[int, tuple[str, ...]] = {}

    def cache(self, target: str) -> Mapping[str, tuple[AlertRule, ...]]:
        """The live cache of a target, for hot loops: ``.get(series)`` is None when not yet known, then ask
        ``rules_for``."""
        return self._caches[target]

    def rules_for(self, target: str, series: str) -> tuple[AlertRule, ...]:
        """The rules watching ``series`` (a series key: see the module docstring for each target's form)."""
        cache = self._caches.get(target)
        if cache is None:
            raise unknown_target(target)
        found = cache.get(series)
        if found is None:
            found = self.match(target, series)
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[series] = found
        return found

    def match(self, target: str, series: str) -> tuple[AlertRule, ...]:
        """``rules_for`` without the cache, for a caller that keeps the answer itself (an alert logic keeps each
        series' rules with their states: an entry here as well would be a second one, about 50 bytes a series)."""
        selectors = self._selectors.get(target)
        if selectors is None:
            raise unknown_target(target)
        if not selectors:
            return ()
        measurement, tags = parse_series(series)
        found = tuple(s.rule for s in selectors if s.matches(target, measurement, tags))
        return self._sets.setdefault(tuple(r.name for r in found), found)

    def stats_for(self, target: str, series: str) -> tuple[str, ...]:
        """The stats some rule needs from the series (window and log-rate targets), sorted, each once."""
        rules = self.rules_for(target, series)
        stats = self._stats.get(id(rules))
        if stats is None:
            # (every tuple rules_for returns is kept in _sets, or is the empty tuple: its id stays its own)
            stats = self._stats[id(rules)] = tuple(sorted({rule.stat for rule in rules}))
        return stats
