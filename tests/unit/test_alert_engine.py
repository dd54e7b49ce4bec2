"""flows/alerts/engine: the alert state machine, driven by hand-made observations and a clock moved by hand."""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.record import AlertTransition, LogRate, Reading
from flows import clock as pipeline_clock
from flows import lifecycle
from flows.alerts.engine import (
    ALERT_LOG_FOLDER,
    AlertLogic,
    Observation,
    WatchedAggregates,
    WatchedReadings,
    aggregate_series,
    notification_id,
    observations_from_log_rates,
    watched_readings,
)
from flows.alerts.rules import AlertRule, RuleMatcher
from flows.window_log import LOG_FORMAT
from flows.windows import Aggregate

S = 1_000_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
SERIES = "readings,device=d1,metric=temperature,site=s1"


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def rule(**fields: Any) -> AlertRule:
    return AlertRule.model_validate({"name": "r", **fields})


def obs(value: float, at_s: float, series: str = SERIES) -> Observation:
    return Observation("reading", series, "value", value, T0 + int(at_s * S))


def feed_aggregates(logic: AlertLogic, aggregates: list[Aggregate]) -> list[AlertTransition]:
    out, _ = logic.on_batch([WatchedAggregates(aggregates)])
    return [t for batch in out for t in batch]


def feed(logic: AlertLogic, observations: list[Observation]) -> list[AlertTransition]:
    out, retain = logic.on_batch([observations])
    assert retain is False
    return [t for batch in out for t in batch]


def notify(logic: AlertLogic) -> list[AlertTransition]:
    out, _ = logic.on_notify()
    return [t for batch in out for t in batch]


def brief(transitions: list[AlertTransition]) -> list[tuple[str, str, float, float | None]]:
    return [(t.state, t.severity, t.value, t.threshold) for t in transitions]


def values(logic: AlertLogic, *pairs: tuple[float, float]) -> list[tuple[str, str, float, float | None]]:
    """Feed (value, at_s) pairs one batch each; the transitions in order."""
    out: list[AlertTransition] = []
    for value, at_s in pairs:
        out += feed(logic, [obs(value, at_s)])
    return brief(out)


def seq(*vals: float) -> tuple[tuple[float, float], ...]:
    return tuple((v, float(i)) for i, v in enumerate(vals))


@pytest.mark.parametrize(
    "condition,warning,critical,series_values,expected",
    [
        (
            ">",
            80,
            90,
            seq(70, 85, 95, 96, 85, 70),
            [
                ("firing", "warning", 85, 80),
                ("firing", "critical", 95, 90),
                ("firing", "warning", 85, 80),
                ("resolved", "warning", 70, 80),
            ],
        ),
        (
            ">=",
            80,
            90,
            seq(79.9, 80, 90, 89.9, 79.9),
            [
                ("firing", "warning", 80, 80),
                ("firing", "critical", 90, 90),
                ("firing", "warning", 89.9, 80),
                ("resolved", "warning", 79.9, 80),
            ],
        ),
        (
            "<",
            20,
            10,
            seq(25, 15, 5, 15, 25),
            [
                ("firing", "warning", 15, 20),
                ("firing", "critical", 5, 10),
                ("firing", "warning", 15, 20),
                ("resolved", "warning", 25, 20),
            ],
        ),
        (
            "<=",
            20,
            10,
            seq(20.1, 20, 10, 10.1, 20.1),
            [
                ("firing", "warning", 20, 20),
                ("firing", "critical", 10, 10),
                ("firing", "warning", 10.1, 20),
                ("resolved", "warning", 20.1, 20),
            ],
        ),
        (
            "outside",
            [10, 30],
            [0, 40],
            seq(20, 31, 41, -1, 5, 20),
            [
                ("firing", "warning", 31, 30),
                ("firing", "critical", 41, 40),
                ("firing", "warning", 5, 10),
                ("resolved", "warning", 20, 10),
            ],
        ),
        (
            "inside",
            [10, 30],
            [15, 25],
            seq(5, 10, 20, 12, 31),
            [
                ("firing", "warning", 10, 10),
                ("firing", "critical", 20, 15),
                ("firing", "warning", 12, 10),
                ("resolved", "warning", 31, 30),
            ],
        ),
    ],
)
def test_every_condition_with_escalation_and_de_escalation(
    condition: str,
    warning: Any,
    critical: Any,
    series_values: tuple[tuple[float, float], ...],
    expected: list[tuple[str, str, float, float]],
) -> None:
    logic = AlertLogic([rule(condition=condition, warning=warning, critical=critical)])
    assert values(logic, *series_values) == expected


def test_a_single_severity_and_critical_straight_away() -> None:
    logic = AlertLogic([rule(critical=90)])
    assert values(logic, *seq(95, 80)) == [("firing", "critical", 95, 90), ("resolved", "critical", 80, 90)]
    logic = AlertLogic([rule(warning=80, critical=90)])
    assert values(logic, *seq(99, 70)) == [("firing", "critical", 99, 90), ("resolved", "critical", 70, 90)]


def test_hysteresis_stops_a_value_wobbling_around_the_threshold_from_flapping() -> None:
    wobble = seq(79, 81, 79, 80.5, 78, 81, 76, 80.2, 74, 81, 74)
    flapping = AlertLogic([rule(warning=80)])
    assert [s for s, *_ in values(flapping, *wobble)] == ["firing", "resolved"] * 5
    steady = AlertLogic([rule(warning=80, warning_clear=75)])
    assert values(steady, *wobble) == [
        ("firing", "warning", 81, 80),
        ("resolved", "warning", 74, 75),
        ("firing", "warning", 81, 80),
        ("resolved", "warning", 74, 75),
    ]


def test_hysteresis_per_severity() -> None:
    logic = AlertLogic([rule(warning=80, warning_clear=75, critical=90, critical_clear=85)])
    # 87: still critical (above its clear); 84: warning; 76: still warning (above the warning clear).
    assert values(logic, *seq(91, 87, 89, 84, 76, 88, 74)) == [
        ("firing", "critical", 91, 90),
        ("firing", "warning", 84, 80),
        ("resolved", "warning", 74, 75),
    ]
    band = AlertLogic([rule(condition="outside", warning=[10, 30], warning_clear=[12, 28])])
    assert values(band, *seq(31, 29, 27, 9, 11, 13)) == [
        ("firing", "warning", 31, 30),
        ("resolved", "warning", 27, 28),
        ("firing", "warning", 9, 10),
        ("resolved", "warning", 13, 12),
    ]


def test_a_level_held_by_hysteresis_says_so_not_that_the_value_passes_its_threshold() -> None:
    """From critical back to warning at 29, with warning > 30 and warning_clear 28: the warning holds, and its
    summary said "value 29 > 30", which is false."""
    logic = AlertLogic([rule(warning=30, warning_clear=28, critical=40)])
    out = feed(logic, [obs(41, 0), obs(29, 10)])
    assert [(t.state, t.severity) for t in out] == [("firing", "critical"), ("firing", "warning")]
    assert "value 41 > 40 on" in out[0].summary
    assert "value 29 > 28, held until it clears (fires at > 30) on" in out[1].summary


def test_for_pending_then_firing_and_pending_cancelled() -> None:
    logic = AlertLogic([rule(warning=80, **{"for": "30s"})])
    out = feed(logic, [obs(85, 0), obs(86, 10)]) + feed(logic, [obs(87, 30)])
    assert [(t.state, t.severity, t.started_ns - T0, t.at_ns - T0) for t in out] == [
        ("pending", "warning", 0, 0),
        ("firing", "warning", 0, 30 * S),
    ]
    logic = AlertLogic([rule(warning=80, critical=90, **{"for": "30s"})])
    out = feed(logic, [obs(85, 0), obs(70, 10), obs(85, 20), obs(95, 45), obs(91, 50), obs(60, 60)])
    assert [(t.state, t.severity, t.value, (t.started_ns - T0) // S, (t.at_ns - T0) // S) for t in out] == [
        ("pending", "warning", 85, 0, 0),
        ("ok", "warning", 70, 0, 10),
        ("pending", "warning", 85, 20, 20),
        # Severity rose while pending: it fires with the one that holds when `for` has elapsed.
        ("firing", "critical", 91, 20, 50),
        ("resolved", "critical", 60, 20, 60),
    ]
    assert out[1].summary == "[ok] r: value 70, no longer > 80 on " + SERIES


def test_out_of_order_observations_are_ignored() -> None:
    logic = AlertLogic([rule(warning=80)])
    assert values(logic, (85, 10), (70, 5), (70, 15)) == [
        ("firing", "warning", 85, 80),
        ("resolved", "warning", 70, 80),
    ]
    nan = AlertLogic([rule(warning=80)])
    assert values(nan, (85, 1), (float("nan"), 2)) == [("firing", "warning", 85, 80)]


def test_renotify_in_event_time() -> None:
    logic = AlertLogic([rule(warning=80, critical=90, renotify="1m")])
    out: list[AlertTransition] = []
    for value, at_s in [(85, 0), (85, 30), (85, 60), (86, 90), (95, 100), (95, 150), (95, 160), (70, 170)]:
        out += feed(logic, [obs(value, at_s)])
    assert [(t.state, t.severity, (t.at_ns - T0) // S, t.renotify) for t in out] == [
        ("firing", "warning", 0, False),
        ("firing", "warning", 60, True),
        ("firing", "critical", 100, False),
        ("firing", "critical", 160, True),
        ("resolved", "critical", 170, False),
    ]
    assert out[1].summary.startswith("[WARNING, still firing] r: value 85 > 80 on ")


def test_rate_of_change_per_second() -> None:
    logic = AlertLogic([rule(kind="rate_of_change", warning=1.0, critical=3.0)])
    # 10 -> 15 in 10 s: 0.5/s; -> 40 in 10 s: 2.5/s; -> 0 in 10 s: 4/s; -> 1 in 10 s: 0.1/s.
    assert values(logic, (10, 0), (15, 10), (40, 20), (0, 30), (1, 40)) == [
        ("firing", "warning", 2.5, 1.0),
        ("firing", "critical", 4.0, 3.0),
        ("resolved", "critical", 0.1, 3.0),
    ]


def aggregate(mean: float, start_s: int, window: str = "1m", p95: float = 0.0, series: str = SERIES) -> Aggregate:
    start = T0 + start_s * S
    return Aggregate(
        "readings", series, window, start, start + 60 * S, 3, 0.0, 1.0, mean, 3 * mean, 0.0, 1.0, None, ((0.95, p95),)
    )


def test_rate_of_change_per_window_on_aggregates() -> None:
    r = rule(kind="rate_of_change", target="window", window="1m", stat="mean", rate_per="window", warning=5)
    matcher = RuleMatcher([r])
    logic = AlertLogic(matcher)
    out: list[AlertTransition] = []
    for i, mean in enumerate([10, 12, 20, 21]):
        out += feed_aggregates(logic, [aggregate(mean, 60 * i)])
    agg_series = "readings_agg,device=d1,metric=temperature,site=s1,window=1m"
    assert [(t.state, t.value, t.series, t.at_ns) for t in out] == [
        ("firing", 8.0, agg_series, T0 + 120 * S),
        ("resolved", 1.0, agg_series, T0 + 180 * S),
    ]
    assert out[0].tags == {"device": "d1", "metric": "temperature", "site": "s1", "window": "1m"}
    assert out[0].summary == f"[WARNING] r: change per window 8 > 5 on {agg_series}"


def test_window_target_on_aggregates_only_produces_the_stats_rules_need() -> None:
    r = rule(
        target="window", window="60s", stat="p95", metric="temp*", critical=100, summary="{device}: p95 {value:.0f}"
    )
    matcher = RuleMatcher([r])
    other = "readings,device=d2,metric=humidity,site=s1"
    aggs = [aggregate(50, 0, p95=120), aggregate(50, 0, window="10s", p95=120), aggregate(50, 0, p95=120, series=other)]
    logic = AlertLogic(matcher)
    # Only the 1 min window of the series the rule watches makes a state, and only its p95 is looked at.
    (fired,) = feed_aggregates(logic, aggs)
    assert (fired.state, fired.severity, fired.value, fired.summary) == ("firing", "critical", 120.0, "d1: p95 120")
    assert (fired.series, fired.at_ns) == (aggregate_series(aggs[0]), T0)
    assert {name: list(states) for name, states in logic.states.items()} == {"r": [aggregate_series(aggs[0])]}
    # A window without the stat gives no observation: a stddev rule on one value makes no state.
    sd = AlertLogic([rule(name="sd", target="window", window="1m", stat="stddev", warning=1)])
    assert feed_aggregates(sd, [aggregate(50, 0)]) == [] and sd.state_count() == 0


def test_log_rate_target_on_log_rates() -> None:
    r = rule(target="log_rate", stat="error_rate", match={"service": "check*"}, warning=0.1, critical=0.5)
    errors = rule(name="errors", target="log_rate", stat="error", warning=10)
    matcher = RuleMatcher([r, errors])
    rates = [
        LogRate("checkout", T0, 60 * S, {"error": 30, "info": 70}),
        LogRate("search", T0, 60 * S, {"error": 90, "info": 10}),
    ]
    observations = observations_from_log_rates(rates, matcher)
    assert [(o.series, o.stat_key, o.value) for o in observations] == [
        ("log_rates,service=checkout", "error", 30.0),
        ("log_rates,service=checkout", "error_rate", 0.3),
        ("log_rates,service=search", "error", 90.0),
    ]
    logic = AlertLogic(matcher)
    out = feed(logic, observations)
    # Without errors the "error" level counts zero, so the errors rule resolves too.
    out += feed(logic, observations_from_log_rates([LogRate("checkout", T0 + 60 * S, 60 * S, {"info": 5})], matcher))
    assert [(t.rule, t.series, t.state, t.severity, t.value) for t in out] == [
        ("errors", "log_rates,service=checkout", "firing", "warning", 30.0),
        ("r", "log_rates,service=checkout", "firing", "warning", 0.3),
        ("errors", "log_rates,service=search", "firing", "warning", 90.0),
        ("errors", "log_rates,service=checkout", "resolved", "warning", 0.0),
        ("r", "log_rates,service=checkout", "resolved", "warning", 0.0),
    ]
    assert out[1].tags == {"service": "checkout"}
    # A service gone quiet: the empty window flows.log_rates writes after its last resolves what still fires.
    quiet = feed(logic, observations_from_log_rates([LogRate("search", T0 + 60 * S, 60 * S, {})], matcher))
    assert [(t.rule, t.series, t.state, t.value) for t in quiet] == [
        ("errors", "log_rates,service=search", "resolved", 0.0)
    ]


def test_glob_matching_selects_series_and_readings_conversion_skips_the_rest() -> None:
    matcher = RuleMatcher([rule(metric="temp*", match={"site": "s[12]", "device": "d*"}, warning=80)])
    readings = [
        Reading("readings", SERIES, 85.0, T0),
        Reading("readings", "readings,device=d1,metric=temperature,site=s3", 85.0, T0),
        Reading("readings", "readings,device=d1,metric=humidity,site=s1", 85.0, T0),
        Reading("readings", "readings,device=x1,metric=temperature,site=s2", 85.0, T0),
        Reading("readings", "readings,device=d7,metric=temp_core,site=s2", 85.0, T0),
    ]
    watched = watched_readings(readings, matcher)
    assert watched is not None
    assert [r.series for r in watched.readings] == [SERIES, "readings,device=d7,metric=temp_core,site=s2"]
    assert watched_readings(readings[1:4], matcher) is None
    every = readings[:1] + readings[4:]
    kept = watched_readings(every, RuleMatcher([rule(metric="temp*", warning=80)]))
    assert kept is not None and kept.readings is every  # every reading watched: the batch itself, not a copy
    fired_by_logic: list[list[AlertTransition]] = []
    for given in (
        WatchedReadings(readings),
        [Observation("reading", r.series, "value", r.value, r.ts_ns) for r in readings],
    ):
        out, _ = AlertLogic(matcher).on_batch([given])  # the logic filters as well, readings or observations
        fired_by_logic.append([t for batch in out for t in batch])
    for fired in fired_by_logic:
        assert [(t.series, t.tags["device"]) for t in fired] == [
            (SERIES, "d1"),
            ("readings,device=d7,metric=temp_core,site=s2", "d7"),
        ]


def test_readings_meet_the_same_states_as_observations_under_one_rule_and_under_several() -> None:
    """A logic's cache holds a series' one watch as it is and several in a tuple: fed as readings or as
    observations, one rule or three on a series (a deadman among them), the transitions and states are the same."""
    single = "readings,device=d2,metric=humidity,site=s1"  # one rule watches it; three watch SERIES (device d1)
    several = [
        rule(name="hot", warning=80, match={"device": "d1"}),
        rule(name="hotter", critical=90, match={"device": "d1"}),
        rule(name="quiet", kind="deadman", silent_for="1h"),
    ]
    values = [(85.0, 0), (95.0, 10), (70.0, 20), (92.0, 5)]  # the last is out of order
    readings = [Reading("readings", series, v, T0 + at * S) for v, at in values for series in (SERIES, single)]
    fed: list[tuple[list[tuple[str, str, str, str]], dict[str, dict[str, tuple[int, int]]]]] = []
    observations = [Observation("reading", r.series, "value", r.value, r.ts_ns) for r in readings]
    for batch in (WatchedReadings(readings), observations):
        logic = AlertLogic(several, clock=Clock(T0))
        out, _ = logic.on_batch([batch])
        transitions = [(t.rule, t.series, t.state, t.severity) for b in out for t in b]
        states = {name: {k: (st.phase, st.last_ts) for k, st in by.items()} for name, by in logic.states.items()}
        fed.append((transitions, states))
    assert fed[0] == fed[1]
    transitions, states = fed[0]
    assert transitions == [
        ("hot", SERIES, "firing", "warning"),
        ("hotter", SERIES, "firing", "critical"),
        ("hot", SERIES, "resolved", "warning"),
        ("hotter", SERIES, "resolved", "critical"),
    ]
    assert {name: sorted(by) for name, by in states.items()} == {
        "hot": [SERIES],
        "hotter": [SERIES],
        "quiet": sorted([SERIES, single]),
    }
    assert states["hot"][SERIES][1] == T0 + 20 * S  # the reading out of order changed nothing


def test_deadman_fires_on_silence_in_system_time_renotifies_and_resolves() -> None:
    clock = Clock(T0 + 1000 * S)  # system time; event times (T0 + ...) are behind it, as they may be
    dead = rule(kind="deadman", silent_for="60s", renotify="30s", critical=0)
    logic = AlertLogic([dead], clock=clock)
    assert logic.notify_at() is None  # series are known only once seen
    assert feed(logic, [obs(1, 0)]) == []
    assert logic.notify_at() is not None and int(logic.notify_at().timestamp()) * S == T0 + 1060 * S  # type: ignore[union-attr]
    # Data keeps arriving: the early wake-up only moves the deadline.
    clock.now = T0 + 1050 * S
    assert feed(logic, [obs(2, 50)]) == []
    clock.now = T0 + 1060 * S
    assert notify(logic) == []
    assert int(logic.notify_at().timestamp()) * S == T0 + 1110 * S  # type: ignore[union-attr]
    clock.now = T0 + 1109 * S
    assert notify(logic) == []
    clock.now = T0 + 1110 * S
    (fired,) = notify(logic)
    assert (fired.state, fired.severity, fired.value, fired.threshold) == ("firing", "critical", 60.0, 60.0)
    # Deterministic event times: the last observation's event time + silent_for.
    assert fired.started_ns == fired.at_ns == T0 + 110 * S
    assert fired.summary == f"[CRITICAL] r: no data for 60s (silent_for 60s) on {SERIES}"
    clock.now = T0 + 1140 * S
    (again,) = notify(logic)
    assert (again.state, again.renotify, again.at_ns, again.value) == ("firing", True, T0 + 140 * S, 90.0)
    clock.now = T0 + 1150 * S
    assert notify(logic) == []
    (resolved,) = feed(logic, [obs(3, 150)])
    assert (resolved.state, resolved.severity, resolved.value, resolved.at_ns) == (
        "resolved",
        "critical",
        100.0,
        T0 + 150 * S,
    )
    assert resolved.started_ns == T0 + 110 * S
    # Armed again: silent for another minute fires a new episode (warning: no critical given).
    clock.now = T0 + 1300 * S
    (refired,) = notify(logic)
    assert (refired.state, refired.at_ns) == ("firing", T0 + 210 * S)
    warn = AlertLogic([rule(kind="deadman", silent_for="1m")], clock=clock)
    feed(warn, [obs(1, 0)])
    clock.now += 60 * S
    assert [t.severity for t in notify(warn)] == ["warning"]


def test_deadman_ignores_out_of_order_data_and_other_series() -> None:
    clock = Clock(T0)
    logic = AlertLogic([rule(kind="deadman", silent_for="60s", match={"device": "d1"})], clock=clock)
    feed(logic, [obs(1, 100), obs(1, 5, series="readings,device=d2,metric=temperature,site=s1")])
    clock.now = T0 + 30 * S
    feed(logic, [obs(1, 50)])  # older than the last one seen: no sign of life
    clock.now = T0 + 60 * S
    assert [(t.state, t.series) for t in notify(logic)] == [("firing", SERIES)]


def test_snapshot_and_resume_keep_firing_and_pending(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0)
    rules = [
        rule(name="hot", warning=80, renotify="10m"),
        rule(name="slow", warning=80, **{"for": "30s"}, match={"device": "d2"}),
        rule(name="quiet", kind="deadman", silent_for="60s", match={"device": "d3"}),
    ]
    d2 = "readings,device=d2,metric=temperature,site=s1"
    d3 = "readings,device=d3,metric=temperature,site=s1"
    logic = AlertLogic(rules, clock=clock)
    feed(logic, [obs(85, 0), obs(85, 10, series=d2), obs(1, 0, series=d3)])
    clock.now = T0 + 60 * S
    assert [t.rule for t in notify(logic)] == ["quiet"]
    snapshot = logic.snapshot()
    assert pickle.loads(pickle.dumps(snapshot)) == snapshot, "Bytewax pickles it"

    # Restarted 10 minutes later: nothing is re-sent, and the deadman does not count the downtime again.
    clock.now = T0 + 660 * S
    restored = AlertLogic(rules, snapshot, clock=clock)
    assert notify(restored) == []
    out = feed(restored, [obs(86, 20), obs(85, 40, series=d2)])
    assert [(t.rule, t.state, t.started_ns) for t in out] == [("slow", "firing", T0 + 10 * S)]
    assert [(t.rule, t.state) for t in feed(restored, [obs(70, 30), obs(2, 600, series=d3)])] == [
        ("hot", "resolved"),
        ("quiet", "resolved"),
    ]
    # A rule dropped from the config drops its state; the others carry on. The log says which were firing
    # (found by a review: nothing resolves them, and their retained topics stay "firing").
    with caplog.at_level(logging.WARNING, logger="flows.alerts.engine"):
        trimmed = AlertLogic(rules[:1], snapshot, clock=clock)
    assert list(trimmed.states) == ["hot"]
    assert [r.getMessage() for r in caplog.records] == [
        "alert rule 'quiet' is no longer configured: 1 of its series were firing, and no resolved notification "
        "will be sent for them (their retained MQTT topics <prefix>/quiet/# keep that state until cleared)"
    ]
    assert values(trimmed, (70, 30)) == [("resolved", "warning", 70, 80)]


def test_an_armed_deadman_restarts_its_clock_on_resume() -> None:
    clock = Clock(T0)
    rules = [rule(kind="deadman", silent_for="60s")]
    logic = AlertLogic(rules, clock=clock)
    feed(logic, [obs(1, 0)])
    snapshot = logic.snapshot()
    clock.now = T0 + 3600 * S
    restored = AlertLogic(rules, snapshot, clock=clock)
    assert notify(restored) == []
    clock.now += 60 * S
    (fired,) = notify(restored)
    assert fired.at_ns == T0 + 60 * S  # still the event-time deadline: ids do not depend on the restart


def test_notification_ids_are_deterministic() -> None:
    def run(start_ns: int) -> list[str]:
        clock = Clock(start_ns)
        rules = [
            rule(warning=80, critical=90, renotify="1m", **{"for": "10s"}),
            rule(name="dead", kind="deadman", silent_for="60s", renotify="60s"),
        ]
        logic = AlertLogic(rules, clock=clock)
        out = feed(logic, [obs(v, t) for t, v in enumerate([85, 85, 95, 85, 70, 85] * 20)])
        for _ in range(3):
            clock.now += 60 * S
            out += notify(logic)
        return [t.notification_id for t in out]

    first, second, other_wall_clock = run(T0), run(T0), run(T0 + 12_345 * S)
    assert first == second == other_wall_clock
    assert len(set(first)) == len(first) > 20
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in first), first  # 128-bit hex
    assert notification_id("r", SERIES, "firing", "warning", 1, 2, False) != notification_id(
        "r", SERIES, "firing", "warning", 1, 2, True
    )


def test_unknown_targets_are_errors() -> None:
    logic = AlertLogic([rule(warning=1)])
    with pytest.raises(ValueError, match="unknown alert target"):
        logic.on_batch([[Observation("metrics", SERIES, "value", 1.0, T0)]])


# ------------------------------------------------------------------------------------------- stops, stalls, memory


@pytest.fixture
def stopped() -> Iterator[None]:
    """The process was asked to stop (SIGTERM): the end of input is a pause."""
    lifecycle.request_stop()
    yield
    lifecycle.reset()


@pytest.fixture
def stalled() -> Iterator[int]:
    """The flow spent an hour stalled on a store: the pipeline clock is an hour behind wall time."""
    hour = 3600 * S
    pipeline_clock.add_stall(hour)
    yield hour
    pipeline_clock.add_stall(-hour)


def test_a_stop_emits_nothing_at_the_end_of_input_and_keeps_every_state(stopped: None) -> None:
    clock = Clock(T0)
    rules = [rule(name="hot", warning=80), rule(name="quiet", kind="deadman", silent_for="60s")]
    logic = AlertLogic(rules, clock=clock)
    assert [t.state for t in feed(logic, [obs(85, 0)])] == ["firing"]
    out, retain = logic.on_eof()
    assert (list(out), retain) == ([], False)
    restored = AlertLogic(rules, logic.snapshot(), clock=clock)
    assert restored.states["hot"][SERIES].phase == logic.states["hot"][SERIES].phase
    # Still firing after the restart: it resolves, it does not fire again.
    assert [t.state for t in feed(restored, [obs(70, 1)])] == ["resolved"]


def test_notify_at_is_wall_time_after_a_stall(stalled: int) -> None:
    # The pipeline clock (no test clock): a deadline on it, handed to Bytewax as it is, would be an hour in
    # the past, and Bytewax would call on_notify again and again.
    logic = AlertLogic([rule(kind="deadman", silent_for="60s")])
    feed(logic, [obs(1, 0)])
    due = logic.notify_at()
    assert due is not None
    assert time.time() + 55 < due.timestamp() < time.time() + 61


def test_a_test_clock_is_wall_time_and_pipeline_time_at_once(stalled: int) -> None:
    clock = Clock(T0)
    logic = AlertLogic([rule(kind="deadman", silent_for="60s")], clock=clock)
    feed(logic, [obs(1, 0)])
    assert logic.notify_at() == datetime.fromtimestamp((T0 + 60 * S) / 1e9, UTC)


def series_of(i: int) -> str:
    return f"readings,device=d{i},metric=temperature,site=s1"


def test_churning_series_stay_under_the_cap_and_active_alerts_survive() -> None:
    clock = Clock(T0)
    rules = [rule(name="hot", warning=80), rule(name="slow", warning=80, **{"for": "1h"})]
    logic = AlertLogic(rules, clock=clock, max_states=10_000, idle_after=timedelta(hours=1))
    fired = feed(logic, [obs(85, 0, series_of(0))])
    assert [(t.rule, t.state) for t in fired] == [("hot", "firing"), ("slow", "pending")]
    # 100,000 series pass through once each, in batches as a worker sees them; none of them alerts.
    for start in range(1, 100_001, 1_000):
        clock.now += S
        assert feed(logic, [obs(20, start, series_of(i)) for i in range(start, start + 1_000)]) == []
        assert logic.state_count() <= 10_000 + 2_000  # the cap, plus the batch that went over it
    assert logic.state_count() <= 10_000
    assert logic.evicted == 2 * 100_001 - logic.state_count()
    assert not logic.matcher.cache("reading")  # the logic keeps its series' rules: no second copy in the matcher
    # The firing one and the pending one were never forgotten: the next reading resolves and cancels them.
    assert [(t.rule, t.state) for t in feed(logic, [obs(20, 200_000, series_of(0))])] == [
        ("hot", "resolved"),
        ("slow", "ok"),
    ]
    # An evicted series starts again from nothing: a new episode, not a stale one.
    assert [(t.rule, t.state) for t in feed(logic, [obs(90, 200_001, series_of(5))])] == [
        ("hot", "firing"),
        ("slow", "pending"),
    ]


def test_idle_states_are_forgotten_after_idle_after_and_an_empty_key_is_discarded() -> None:
    clock = Clock(T0)
    rules = [rule(name="hot", warning=80), rule(name="quiet", kind="deadman", silent_for="2h", match={"device": "d9"})]
    logic = AlertLogic(rules, clock=clock, idle_after=timedelta(hours=1))
    feed(logic, [obs(85, 0, series_of(1)), obs(20, 0, series_of(2)), obs(20, 0, series_of(9))])
    assert logic.state_count() == 4  # hot: d1 (firing), d2, d9; quiet: d9
    # Something to sweep: the logic asks to be woken although no deadman is due before 2 h.
    due = logic.notify_at()
    assert due is not None and due <= datetime.fromtimestamp((T0 + 3600 * S) / 1e9, UTC)
    clock.now += 3600 * S + 1
    out, discard = logic.on_notify()
    assert (list(out), discard) == ([], False)
    # d2 and d9 were idle for an hour under "hot" and are forgotten; the firing d1 stays, and so does the
    # armed deadman of d9 (its silence is what it watches).
    assert {(name, series) for name, states in logic.states.items() for series in states} == {
        ("hot", series_of(1)),
        ("quiet", series_of(9)),
    }
    assert logic.evicted == 2
    # d9 again: a new "hot" state; its "quiet" state is the one held (forgetting one rule's state of a series
    # drops the series' cached watches, and the watch made again finds the state still held).
    quiet = logic.states["quiet"][series_of(9)]
    feed(logic, [obs(20, 3600, series_of(9))])
    assert logic.state_count() == 3 and logic.states["quiet"][series_of(9)] is quiet
    assert quiet.last_ts == T0 + 3600 * S
    # A log-rate key (one service): once nothing is left, the key itself is dropped from Bytewax's state.
    service = AlertLogic([rule(name="errors", target="log_rate", stat="errors", warning=5)], clock=clock)
    feed(service, [Observation("log_rate", "log_rates,service=api", "errors", 1.0, T0)])
    clock.now += 2 * 3600 * S
    out, discard = service.on_notify()
    assert (list(out), discard, service.state_count()) == ([], True, 0)


def test_a_snapshot_after_changes_restores_every_state_as_it_is() -> None:
    """A snapshot encodes only the states changed since the last one and keeps the others' records: after
    changes, evictions and new series, what it restores must equal the live states, field by field. A
    snapshot of the earlier format (the states pickled whole) still resumes."""
    clock = Clock(T0)
    rules = [rule(name="hot", warning=80), rule(name="roc", kind="rate_of_change", warning=5)]
    logic = AlertLogic(rules, clock=clock)
    feed(logic, [obs(70 + i, i, series=f"readings,device=d{i},metric=temperature") for i in range(20)])
    logic.snapshot()
    feed(logic, [obs(90, 30, series="readings,device=d3,metric=temperature")])  # d3 fires
    feed(logic, [obs(1, 31, series="readings,device=new,metric=temperature")])
    logic._evict(logic._rules["hot"], "readings,device=d5,metric=temperature")
    snapshot = logic.snapshot()

    def fields(states: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple]]:
        return {name: {s: st.__getstate__() for s, st in by.items()} for name, by in states.items()}

    restored = AlertLogic(rules, snapshot, clock=clock)
    live = fields(logic.states)
    assert fields(restored.states) == {
        name: {s: (*f[:7], clock.now, *f[8:]) for s, f in by.items()} for name, by in live.items()
    }, "sys_seen is the restart's time; every other field as saved"
    assert "readings,device=d5,metric=temperature" not in restored.states["hot"]
    assert live["hot"]["readings,device=d3,metric=temperature"][0] == 2  # firing

    old_format = pickle.dumps({"version": 1, "states": logic.states})
    assert fields(AlertLogic(rules, old_format, clock=clock).states) == fields(restored.states)


def test_many_states_go_to_the_alert_state_log_and_resume_exactly(tmp_path: Path) -> None:
    """With recovery on and many states, a snapshot is a marker into the alert state log: an epoch writes the
    states that changed, not all of them. Resuming from the marker gives back every state as it was at that
    snapshot, evictions included; frames written after it (an epoch that never committed) are not applied."""
    clock = Clock(T0)
    rules = [rule(name="hot", warning=80), rule(name="roc", kind="rate_of_change", warning=5)]
    fleet = [f"readings,device=d{i},metric=temperature" for i in range(3000)]
    logic = AlertLogic(rules, clock=clock, recovery_dir=tmp_path, step_id="flow.alerts")
    feed(logic, [obs(50.0 + i % 7, 1, series=s) for i, s in enumerate(fleet)])
    first = logic.snapshot()
    assert first[0] == LOG_FORMAT and logic._log is not None
    whole_frame = logic._log.generation_bytes

    # One epoch's changes: a device fires, a new one arrives, one is forgotten.
    feed(logic, [obs(90, 30, series=fleet[3]), obs(1, 31, series="readings,device=new,metric=temperature")])
    logic._evict(logic._rules["hot"], fleet[5])
    marker = logic.snapshot()
    assert (marker[2], marker[3], marker[4]) == (first[2], first[3], first[4] + 1), "the same log, one frame on"
    changes_frame = logic._log.generation_bytes - whole_frame
    assert changes_frame < whole_frame / 100, (changes_frame, whole_frame)

    def fields(states: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple]]:
        return {
            name: {s: st.__getstate__()[:7] + st.__getstate__()[8:] for s, st in by.items()}
            for name, by in states.items()
        }

    at_marker = fields(logic.states)
    feed(logic, [obs(95, 40, series=fleet[7])])  # after the marker: this epoch never commits
    logic.snapshot()

    restored = AlertLogic(
        rules, pickle.loads(pickle.dumps(marker)), clock=clock, recovery_dir=tmp_path, step_id="flow.alerts"
    )
    assert fields(restored.states) == at_marker
    assert fleet[5] not in restored.states["hot"] and fleet[5] in restored.states["roc"]
    assert restored.states["hot"][fleet[3]].phase == 2  # firing
    assert restored.states["hot"][fleet[7]].phase == 0
    # The restored logic starts a new generation with every state at its first snapshot.
    again = restored.snapshot()
    assert again[2] == marker[2] and again[3] > marker[3]
    assert fields(AlertLogic(rules, again, clock=clock, recovery_dir=tmp_path, step_id="flow.alerts").states) == (
        fields(restored.states)
    )


def test_an_ok_window_state_is_recorded_when_it_changes_not_at_every_window(tmp_path: Path) -> None:
    """At a fleet's 10 s boundary a window rule sees every series, and nearly all stay ok. Those observations
    change only the state's newest event time, which a window rule does not need after a restart (a series'
    windows close once each, in order): the epoch's frame in the alert state log holds no record for them, while a
    reading rule's states are recorded at every reading. A logic resumed from that epoch's marker evaluates the
    windows after it exactly as the one that went on: the same transitions, and the same phases."""
    clock = Clock(T0)
    rules = [
        rule(name="hot_window", target="window", window="10s", stat="mean", warning=80),
        rule(name="hot", warning=80),
    ]
    fleet = [f"readings_agg,device=d{i},metric=temperature,window=10s" for i in range(3000)]
    readings = [f"readings,device=d{i},metric=temperature" for i in range(3000)]

    def window(at_s: int, hot: frozenset[int] = frozenset()) -> list[Observation]:
        return [
            Observation("window", s, "mean", 90.0 if i in hot else 50.0, T0 + at_s * S) for i, s in enumerate(fleet)
        ]

    def build(resume: Any = None) -> AlertLogic:
        return AlertLogic(rules, resume, clock=clock, recovery_dir=tmp_path, step_id="flow.alerts")

    logic = build()
    feed(logic, window(0))
    logic.snapshot()
    assert logic._log is not None
    before = logic._log.generation_bytes
    feed(logic, window(10, hot=frozenset({7})))  # one series fires, 2,999 stay ok
    marker = logic.snapshot()
    window_frame = logic._log.generation_bytes - before
    assert 0 < window_frame < 1000, f"one state's record, not {window_frame} bytes"

    feed(logic, [obs(50.0, 10, series=s) for s in readings])  # new states: recorded
    logic.snapshot()
    before = logic._log.generation_bytes
    feed(logic, [obs(51.0, 20, series=s) for s in readings])  # still ok: its newest time (readings can be late)
    logic.snapshot()
    assert logic._log.generation_bytes - before > 3000 * 8

    resumed = build(pickle.loads(pickle.dumps(marker)))
    later = [window(20, frozenset({7, 8})), window(30, frozenset({8, 9})), window(40)]
    expected = [brief(feed(logic, batch)) for batch in later]
    assert expected[0] == [("firing", "warning", 90.0, 80.0)]  # d8; d7 stays firing
    assert [brief(feed(resumed, batch)) for batch in later] == expected
    assert {s: st.phase for s, st in resumed.states["hot_window"].items()} == {
        s: st.phase for s, st in logic.states["hot_window"].items()
    }


def test_an_ok_reading_state_is_logged_as_its_newest_event_time_and_resumes_exactly(tmp_path: Path) -> None:
    """A reading rule's state changes at nearly every reading, and while it stays ok only in its newest event
    time, which guards against readings out of order. The alert state log takes that time alone, not the whole
    record: the epoch's frame is well under the records of its series. A logic resumed from that epoch's marker
    holds every state exactly, so a late reading above the threshold is ignored there as in the logic that went
    on, and the readings after it give the same transitions."""
    clock = Clock(T0)
    rules = [rule(name="hot", warning=80)]
    fleet = [f"readings,device=d{i:04d},metric=temperature" for i in range(3000)]

    def build(resume: Any = None) -> AlertLogic:
        return AlertLogic(rules, resume, clock=clock, recovery_dir=tmp_path, step_id="flow.alerts")

    logic = build()
    feed(logic, [obs(50.0, 10, series=s) for s in fleet])  # new states: whole records
    logic.snapshot()
    assert logic._log is not None
    before = logic._log.generation_bytes
    feed(logic, [obs(51.0, 20, series=s) for s in fleet])
    marker = logic.snapshot()
    frame = logic._log.generation_bytes - before
    whole_records = 3000 * (4 + len(fleet[0]) + 58)
    assert 3000 * 8 < frame < whole_records * 0.7, f"{frame} bytes for 3,000 times ({whole_records} as records)"

    resumed = build(pickle.loads(pickle.dumps(marker)))
    assert {s: st.__getstate__()[:7] for s, st in resumed.states["hot"].items()} == {
        s: st.__getstate__()[:7] for s, st in logic.states["hot"].items()
    }
    later = [
        [obs(95.0, 15, series=fleet[0])],  # older than the newest (20 s): ignored
        [obs(95.0, 30, series=fleet[1]), obs(52.0, 30, series=fleet[0])],
    ]
    expected = [brief(feed(logic, batch)) for batch in later]
    assert expected == [[], [("firing", "warning", 95.0, 80.0)]]
    assert [brief(feed(resumed, batch)) for batch in later] == expected


def test_a_log_generation_written_in_parts_resumes_on_its_own_to_the_exact_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new generation of the alert state log takes the states a part at each snapshot, while states change,
    fire, are forgotten and come back. From every marker, before, during and after the parts, a logic resumed
    from the marker's own generation file alone (every other file deleted) holds exactly the states of the one
    that wrote it."""
    import random

    from flows import window_log

    monkeypatch.setattr(window_log, "_COMPACT_MIN_BYTES", 0)
    monkeypatch.setattr(window_log, "_BASE_PART_MIN", 300)
    rng = random.Random(7)
    clock = Clock(T0)
    rules = [rule(name="hot", warning=80), rule(name="roc", kind="rate_of_change", warning=5)]
    fleet = [f"readings,device=d{i},metric=temperature" for i in range(3000)]

    def build(directory: Path, resume: Any = None) -> AlertLogic:
        return AlertLogic(rules, resume, clock=clock, recovery_dir=directory, step_id="flow.alerts")

    def fields(states: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple]]:
        return {
            name: {s: st.__getstate__()[:7] + st.__getstate__()[8:] for s, st in by.items()}
            for name, by in states.items()
        }

    logic = build(tmp_path / "live")
    feed(logic, [obs(50.0, 1, series=s) for s in fleet])
    generations, in_parts = set(), 0
    for epoch in range(60):
        at = 2 + epoch
        feed(logic, [obs(rng.choice([50.0, 60.0, 85.0, 95.0]), at, series=rng.choice(fleet)) for _ in range(400)])
        for _ in range(rng.randint(0, 30)):
            name = rng.choice(["hot", "roc"])
            series = rng.choice(fleet)
            if series in logic.states[name]:
                logic._evict(logic._rules[name], series)
        marker = logic.snapshot()
        assert logic._log is not None
        in_parts += logic._log.writing_next
        generations.add(marker[3])
        alone = tmp_path / f"alone-{epoch}" / ALERT_LOG_FOLDER
        alone.mkdir(parents=True)
        name = f"{marker[2]}.{marker[3]}"
        (alone / name).write_bytes((tmp_path / "live" / ALERT_LOG_FOLDER / name).read_bytes())
        assert fields(build(alone.parent, pickle.loads(pickle.dumps(marker))).states) == fields(logic.states)
    assert len(generations) >= 3 and in_parts >= 10, (generations, in_parts)


def test_few_states_stay_in_the_snapshot_and_alert_logs_are_cleaned_apart_from_window_logs(tmp_path: Path) -> None:
    from flows.window_log import remove_unreferenced

    clock = Clock(T0)
    service = AlertLogic([rule(name="hot", warning=80)], clock=clock, recovery_dir=tmp_path, step_id="flow.alerts")
    feed(service, [obs(85, 0)])
    assert isinstance(service.snapshot(), dict), "a service's few states are not worth a log file"
    assert not (tmp_path / ALERT_LOG_FOLDER).exists()

    fleet = AlertLogic([rule(name="hot", warning=80)], clock=clock, recovery_dir=tmp_path, step_id="flow.alerts")
    feed(fleet, [obs(1, 0, series=f"readings,device=d{i},metric=t") for i in range(1500)])
    assert fleet.snapshot()[0] == LOG_FORMAT
    window_log = tmp_path / "window-log" / "w.0"
    window_log.parent.mkdir()
    window_log.write_bytes(b"")
    # No Bytewax store refers to the alert log here: it goes; the window logs are another step's.
    assert remove_unreferenced(tmp_path, "flow.alerts", ALERT_LOG_FOLDER) == 1
    assert window_log.exists() and not any((tmp_path / ALERT_LOG_FOLDER).iterdir())
