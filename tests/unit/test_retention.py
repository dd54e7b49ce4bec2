"""Retention tiers without a server: the configuration, the tier of each line fleetwatch writes, the dashboards'
tier conditions, the data stream lifecycle in the index templates and which daily indices are expired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import NotFoundError

from dashboards.generate import PLAN, tier_conditions
from fleetwatch import config as config_mod
from fleetwatch.config import ConfigError
from fleetwatch.record import LogRate, Reading
from fleetwatch.retention import TierPlan, dashboard_windows_missing, plan_or_none, qualified
from flows import schema
from flows.alerts.notify import alert_line
from flows.sinks.elasticsearch import KINDS, IndexLayout, apply_lifecycles
from flows.sinks.es_retention import expired_daily_indices, kind_retention
from flows.windows import Aggregate


def _cfg(**sections: object) -> config_mod.Config:
    return config_mod.from_dict(dict(sections), env={})


def test_defaults_are_7d_raw_30d_for_10s_400d_for_1m_and_30d_for_logs() -> None:
    cfg = _cfg()
    plan = TierPlan.from_config(cfg)
    assert {t.name: t.duration for t in plan.tiers} == {
        "raw": timedelta(days=7),
        "agg_10s": timedelta(days=30),
        "agg_1m": timedelta(days=400),
        "log_rates": timedelta(days=400),
        "alerts": timedelta(days=400),
        "health": timedelta(days=30),
    }
    assert kind_retention(cfg) == {
        "logs": timedelta(days=30),
        "log-rates": timedelta(days=400),
        "dead-letters": timedelta(days=30),
        "alerts": timedelta(days=400),
    }
    assert set(kind_retention(cfg) or {}) == set(KINDS)


def test_windows_without_a_retention_get_one_by_their_length() -> None:
    cfg = _cfg(
        windows={"tumbling": ["5s", "10s", "5m"], "sliding": [{"length": "1m", "offset": "10s"}]},
        retention={"windows": {"10s": "3d"}},
    )
    tiers = {t.name: (t.window, t.duration.days) for t in TierPlan.from_config(cfg).tiers}
    assert tiers["agg_5s"] == ("5s", 30)
    assert tiers["agg_10s"] == ("10s", 3)
    assert tiers["agg_5m"] == ("5m", 400)
    assert tiers["agg_1m_10s"] == ("1m/10s", 400)
    assert [t.name for t in TierPlan.from_config(cfg).window_tiers()] == ["agg_5s", "agg_10s", "agg_5m"]


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        ({"retention": {"windows": {"5m": "30d"}}}, 'retention.windows."5m": no such window is computed'),
        ({"retention": {"raw": "30m"}}, "raw: expected a duration of at least 1h (got 30m)"),
        ({"retention": {"windows": {"10s": "10m"}}}, 'windows."10s": expected a duration of at least 1h'),
        ({"retention": {"logs": "soon"}}, "retention.logs: expected a duration"),
        ({"retention": {"kept": "7d"}}, "retention.kept: unknown key"),
        ({"influxdb": {"retention_policy": "autogen"}}, "influxdb.retention_policy: not used while [retention]"),
    ],
)
def test_bad_retention_config_names_the_key(sections: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _cfg(**sections)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_windows_of_other_lengths_need_no_retention_entry_and_keep_their_default() -> None:
    # The default retention.windows names "10s" and "1m": not an error when those windows are not computed.
    cfg = _cfg(windows={"tumbling": ["5m"]})
    tiers = {t.name: (t.window, t.duration.days) for t in TierPlan.from_config(cfg).tiers}
    assert tiers["agg_5m"] == ("5m", 400)
    assert "agg_10s" not in tiers


def test_retention_off_keeps_one_policy_and_allows_retention_policy() -> None:
    cfg = _cfg(retention={"enabled": False}, influxdb={"retention_policy": "autogen"})
    assert plan_or_none(cfg) is None and kind_retention(cfg) is None
    assert qualified(None, "readings_agg", window="10s") == '"readings_agg"'


def _aggregate(series: str, window: str) -> Aggregate:
    return Aggregate("readings", series, window, 0, 1, 2, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, None, ())


def test_every_line_fleetwatch_writes_goes_to_its_tier() -> None:
    router = PLAN.router()
    reading = Reading("readings", "readings,site=a,device=d1,metric=t", 2.5, 1)
    assert router.tier_of(schema.raw_line(reading)) == "raw"
    assert router.tier_of(schema.late_line(reading)) == "raw"
    assert router.tier_of(schema.aggregate_line(_aggregate(reading.series, "10s"))) == "agg_10s"
    assert router.tier_of(schema.aggregate_line(_aggregate(reading.series, "1m"))) == "agg_1m"
    rate = LogRate("api", 0, 60_000_000_000, {"info": 3})
    assert router.tier_of(schema.log_rate_line(rate)) == "log_rates"
    assert router.tier_of("fleetwatch_health,worker=0 readings=1i 1") == "health"
    assert router.tier_of("fleetwatch_process,host=h writers=1i 1") == "health"
    assert router.tier_of("alerts,rule=hot,state=firing value=1 1") == "alerts"
    # A window tag in an escaped tag value, a measurement named like an aggregate, a window not computed.
    assert router.tier_of(r"readings_agg,device=a\,window=1m,window=10s count=1i 1") == "agg_10s"
    assert router.tier_of(r"my\ readings_agg,window=1m count=1i 1") == "agg_1m"
    assert router.tier_of("readings_agg,window=3h count=1i 1") == "raw"
    assert router.tier_of("sensors,window=1m value=1 1") == "raw"
    groups = router.split(["a value=1 1", "alerts x=1 2", "b value=1 3"])
    assert groups == {"raw": ["a value=1 1", "b value=1 3"], "alerts": ["alerts x=1 2"]}


def test_alert_lines_go_to_the_alert_tier() -> None:
    from tests.unit.test_alert_payloads import transition

    assert PLAN.router().tier_of(alert_line(transition())) == "alerts"


def test_exactly_one_tier_target_answers_for_every_interval_and_age() -> None:
    """The dashboards' conditions, evaluated here in Python: for each interval and point age exactly one
    (tier, band) target holds, and it is a tier that still keeps a point of that age."""
    tiers = PLAN.window_tiers()
    keeps_s = [t.duration.total_seconds() for t in tiers]
    day = 86_400
    for interval_ms in (10_000, 20_000, 30_000, 59_999, 60_000, 120_000, 3_600_000, 86_400_000):
        for age_s in (0, 10 * day, 29 * day, 31 * day, 90 * day, 399 * day):
            answering = []
            for band in range(len(tiers)):
                for reader in range(band, len(tiers)):
                    text = tier_conditions(tiers, reader, band)
                    if _holds(text, interval_ms, age_s):
                        answering.append(reader)
            assert len(answering) == 1, (interval_ms, age_s, answering)
            assert age_s <= keeps_s[answering[0]]
            if interval_ms >= 60_000:
                assert tiers[answering[0]].name == "agg_1m"
            elif age_s < 30 * day:
                assert tiers[answering[0]].name == "agg_10s"


def _holds(conditions: str, interval_ms: int, age_s: int) -> bool:
    units = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
    for part in conditions.split(" AND "):
        left, op, right = part.split(" ", 2)
        if left == "$__interval_ms":
            value, bound = interval_ms, int(right)
        else:  # time >= now() - 30d  <=>  age <= 30d
            value, bound = -age_s, -int(right.removeprefix("now() - ")[:-1]) * units[right[-1]]
        if not (value >= bound if op == ">=" else value < bound):
            return False
    return True


def test_data_streams_carry_a_lifecycle_and_daily_indices_do_not() -> None:
    keep = {"logs": timedelta(days=30), "alerts": timedelta(days=400)}
    streams = IndexLayout("fw", True, 0, keep)
    assert streams.template("logs")["template"]["lifecycle"] == {"data_retention": "30d"}
    assert streams.template("alerts")["template"]["lifecycle"] == {"data_retention": "400d"}
    assert "lifecycle" not in streams.template("dead-letters")["template"]
    assert "lifecycle" not in IndexLayout("fw", False, 0, keep).template("logs")["template"]
    assert "lifecycle" not in IndexLayout("fw", True, 0, None).template("logs")["template"]


class _Indices:
    """The one call of the indices API that setting lifecycles makes; a stream not created yet answers 404."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.set: dict[str, str] = {}

    def put_data_lifecycle(self, name: str, data_retention: str) -> None:
        if name not in self.existing:
            meta = ApiResponseMeta(404, "1.1", HttpHeaders(), 0.0, NodeConfig("http", "localhost", 9200))
            raise NotFoundError("index_not_found_exception", meta, {"error": {"type": "index_not_found_exception"}})
        self.set[name] = data_retention


def test_existing_data_streams_get_the_lifecycle_and_missing_ones_are_left_to_the_template() -> None:
    es = SimpleNamespace(indices=_Indices({"fw-logs", "fw-alerts"}))
    cfg = _cfg(elasticsearch={"index_prefix": "fw"})
    apply_lifecycles(es, cfg.elasticsearch, kind_retention(cfg) or {})  # type: ignore[arg-type]
    assert es.indices.set == {"fw-logs": "30d", "fw-alerts": "400d"}


def test_a_daily_index_expires_once_its_whole_day_is_past_the_retention() -> None:
    keep = {"logs": timedelta(days=30), "log-rates": timedelta(days=400)}
    names = [
        "fw-logs-2026.11.01",
        "fw-logs-2026.11.02",
        "fw-log-rates-2026.11.01",
        "fw-logs-2026.02.30",  # not a date
        "fw-logs-2026.11.01-restored",
        "fw2-logs-2026.10.01",
        "fw-logs-x-2026.10.01",
    ]
    # 2026-11-01 ends at 2026-11-02 00:00, 30 days before 2026-12-02 00:00.
    assert expired_daily_indices(names, "fw", keep, datetime(2026, 12, 1, 23, 59, tzinfo=UTC)) == []
    assert expired_daily_indices(names, "fw", keep, datetime(2026, 12, 2, 0, 0, tzinfo=UTC)) == ["fw-logs-2026.11.01"]
    later = datetime(2027, 12, 7, tzinfo=UTC)
    assert expired_daily_indices(names, "fw", keep, later) == [
        "fw-log-rates-2026.11.01",
        "fw-logs-2026.11.01",
        "fw-logs-2026.11.02",
    ]


def test_a_configuration_without_a_window_the_dashboards_read_is_warned_about() -> None:
    """The committed dashboards read the default windows' tiers (dashboards/generate.py's PLAN): with only 10 s
    windows computed, every panel target and variable reading agg_1m fails ("retention policy not found")."""
    assert {t.window for t in PLAN.window_tiers()} == {"10s", "1m"}
    assert dashboard_windows_missing(_cfg()) is None
    assert dashboard_windows_missing(_cfg(windows={"tumbling": ["10s", "1m", "1h"]})) is None
    warning = dashboard_windows_missing(_cfg(windows={"tumbling": ["10s"]}))
    assert warning is not None and "read the 1m windows (tiers agg_1m)" in warning
    warning = dashboard_windows_missing(_cfg(windows={"tumbling": ["5m"]}))
    assert warning is not None and "read the 10s, 1m windows (tiers agg_10s, agg_1m)" in warning
    # No InfluxDB, no dashboards reading it.
    assert dashboard_windows_missing(_cfg(windows={"tumbling": ["10s"]}, influxdb={"enabled": False})) is None
    # With retention off there are no tiers to name (found by a review: "tiers agg_1m" with retention disabled).
    warning = dashboard_windows_missing(_cfg(windows={"tumbling": ["10s"]}, retention={"enabled": False}))
    assert warning is not None and "read the 1m windows, which windows.tumbling does not compute" in warning
