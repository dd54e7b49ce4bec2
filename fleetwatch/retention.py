"""Retention tiers: where each kind of InfluxDB point is kept, and for how long (``[retention]``).

Every kind of point has a tier, and every tier is a retention policy in InfluxDB 1.x (a bucket in 2.x) with
its own duration (defaults in parentheses):

- ``raw``: raw readings ``<m>`` and late readings ``<m>_late`` (7 days);
- ``agg_<window>``: ``<m>_agg`` of one window length (``agg_10s`` 30 days, ``agg_1m`` 400 days);
- ``log_rates``: ``log_rates`` (400 days);
- ``alerts``: ``alerts`` (400 days);
- ``health``: ``fleetwatch_health`` and ``fleetwatch_process`` (30 days).

Any other measurement (``sparkplug_state``, the measurements of line-protocol payloads) is in ``raw``.

A window's tier is ``agg_`` and its label with ``/`` as ``_`` (``agg_1m``, sliding ``agg_1m_10s``). In InfluxDB
1.x the tiers are retention policies of ``influxdb.database``; in 2.x they are buckets
``<influxdb.bucket>_<tier>`` with a DBRP mapping (database ``<influxdb.bucket>``, retention policy ``<tier>``),
so InfluxQL reads every tier as ``"<tier>"."<measurement>"`` on both. A query names the tier it reads:
``qualified``.

The tier of a line is found from the line itself (``LineRouter``): the measurement's suffix, and for aggregates
the ``window`` tag, which ``flows.schema`` writes last among the tags. This module is on the ground floor (it
imports only the configuration), so the sink, the dashboards and the demo all use the same names.

>>> from fleetwatch.config import Config
>>> plan = TierPlan.from_config(Config())
>>> [(t.name, t.duration.days) for t in plan.tiers]
[('raw', 7), ('agg_10s', 30), ('agg_1m', 400), ('log_rates', 400), ('alerts', 400), ('health', 30)]
>>> plan.router().tier_of("readings_agg,site=a,device=d1,metric=t,window=1m count=1i 0")
'agg_1m'
>>> qualified(plan, "readings_agg", window="10s")
'"agg_10s"."readings_agg"'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from fleetwatch.config import Config, RetentionConfig, computed_windows
from fleetwatch.config_base import parse_duration
from fleetwatch.labels import duration_label

RAW, LOG_RATES, ALERTS, HEALTH = "raw", "log_rates", "alerts", "health"
# Measurements fleetwatch writes whose tier is fixed by name.
_FIXED = {"log_rates": LOG_RATES, "alerts": ALERTS, "fleetwatch_health": HEALTH, "fleetwatch_process": HEALTH}
# A window not named in retention.windows: shorter than a minute keeps as long as the 10 s default, else as
# long as the 1 m default.
_SHORT_WINDOW_DEFAULT = timedelta(days=30)
_LONG_WINDOW_DEFAULT = timedelta(days=400)


def window_tier(label: str) -> str:
    """``10s`` -> ``agg_10s``; sliding ``1m/10s`` -> ``agg_1m_10s``."""
    return "agg_" + label.replace("/", "_")


def window_length(label: str) -> timedelta:
    """The length of a window from its label (``1m/10s`` -> one minute)."""
    return parse_duration(label.split("/", 1)[0])


@dataclass(frozen=True)
class Tier:
    name: str
    duration: timedelta
    # For aggregate tiers: the window label whose aggregates it holds.
    window: str | None = None

    @property
    def influx_duration(self) -> str:
        """The duration as InfluxQL writes it (``7d``, ``400d``, ``36h``)."""
        return duration_label(self.duration)


@dataclass(frozen=True)
class TierPlan:
    tiers: tuple[Tier, ...]

    @classmethod
    def from_config(cls, cfg: Config) -> TierPlan:
        """The tiers of a configuration: one per kind, one per computed window."""
        return _plan(cfg.retention, computed_windows(cfg))

    def tier(self, name: str) -> Tier:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    def window_tiers(self) -> list[Tier]:
        """Aggregate tiers of tumbling windows, shortest window first (the dashboards' order of choice)."""
        tumbling = [t for t in self.tiers if t.window is not None and "/" not in t.window]
        return sorted(tumbling, key=lambda t: window_length(t.window or "0s"))

    def router(self) -> LineRouter:
        return LineRouter(self)


def dashboard_windows_missing(cfg: Config) -> str | None:
    """When the configuration does not compute a tumbling window the committed dashboards read (they are
    generated for the default windows, ``dashboards/generate.py``), what to tell the user: those panel targets
    and variables would fail with "retention policy not found", or draw nothing."""
    if not cfg.influxdb.enabled:
        return None
    wanted = {t.window for t in TierPlan.from_config(Config()).window_tiers() if t.window is not None}
    missing = sorted(wanted - computed_windows(cfg), key=window_length)
    if not missing:
        return None
    # The tiers are retention policies: with retention off, everything is in the database's default one.
    tiers = f" (tiers {', '.join(window_tier(label) for label in missing)})" if cfg.retention.enabled else ""
    return (
        f"the provisioned Grafana dashboards read the {', '.join(missing)} windows{tiers}, which "
        f"windows.tumbling does not compute: their panels fail or stay empty until it includes "
        f"{' and '.join(missing)}, or the dashboards are generated for these windows (README.md, Dashboards)"
    )


def _plan(retention: RetentionConfig, windows: set[str]) -> TierPlan:
    tiers = [Tier(RAW, retention.raw)]
    ordered = sorted(windows, key=lambda label: (window_length(label), label))
    for label in ordered:
        default = _SHORT_WINDOW_DEFAULT if window_length(label) < timedelta(minutes=1) else _LONG_WINDOW_DEFAULT
        tiers.append(Tier(window_tier(label), retention.windows.get(label, default), label))
    tiers += [Tier(LOG_RATES, retention.log_rates), Tier(ALERTS, retention.alerts), Tier(HEALTH, retention.health)]
    return TierPlan(tuple(tiers))


def _measurement_end(line: str) -> int:
    """Index of the first unescaped comma or space: the end of a line's measurement."""
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c in ", ":
            return i
        i += 1
    return n


def _tag_section_end(line: str, start: int) -> int:
    """Index of the first unescaped space from ``start``: the end of the tag set."""
    i = start
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c == " ":
            return i
        i += 1
    return n


class LineRouter:
    """The tier of each line protocol line fleetwatch writes. Cached per measurement and window, since a
    fleet writes the same few measurements over and over."""

    def __init__(self, plan: TierPlan) -> None:
        self._windows = {t.window: t.name for t in plan.tiers if t.window is not None}
        self._fixed = dict(_FIXED)

    def tier_of(self, line: str) -> str:
        if "\\" in line:
            end = _measurement_end(line)
            tags_end = -1
        else:  # no escapes (nearly every line): the first comma or space ends the measurement
            tags_end = line.find(" ")
            comma = line.find(",", 0, tags_end)
            end = comma if comma >= 0 else tags_end
        measurement = line[:end]
        fixed = self._fixed.get(measurement)
        if fixed is not None:
            return fixed
        if measurement.endswith("_agg") and end < len(line) and line[end] == ",":
            if tags_end < 0:
                tags_end = _tag_section_end(line, end)
            # flows.schema writes the window tag last; a line-protocol payload's own tags come before it.
            at = line.rfind(",window=", end, tags_end)
            if at >= 0:
                tier = self._windows.get(line[at + 8 : tags_end])
                if tier is not None:
                    return tier
        return RAW

    def split(self, lines: list[str]) -> dict[str, list[str]]:
        """Lines grouped by tier, each group in its original order."""
        groups: dict[str, list[str]] = {}
        for line in lines:
            tier = self.tier_of(line)
            group = groups.get(tier)
            if group is None:
                groups[tier] = [line]
            else:
                group.append(line)
        return groups


def qualified(plan: TierPlan | None, measurement: str, *, window: str | None = None, tier: str | None = None) -> str:
    """An InfluxQL source: ``"<tier>"."<measurement>"`` when tiers are on (``plan`` not None), else
    ``"<measurement>"`` (the database's default policy). The tier is ``tier``, the window's, or the one the
    measurement's name gives (raw readings when none)."""
    quoted = '"' + measurement.replace('"', '\\"') + '"'
    if plan is None:
        return quoted
    if tier is None:
        tier = window_tier(window) if window is not None else _FIXED.get(measurement, RAW)
    return f'"{tier}".{quoted}'


def plan_or_none(cfg: Config) -> TierPlan | None:
    """The tiers when ``[retention]`` is enabled, else None (everything in one policy or bucket)."""
    return TierPlan.from_config(cfg) if cfg.retention.enabled else None
