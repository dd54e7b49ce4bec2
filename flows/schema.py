"""The InfluxDB schema fleetwatch writes. Dashboards and alerts are built on it: keep it stable.

- ``<m>`` (raw readings, opt-in per subscription): tags = template tags + ``metric``; field ``value``;
  time = event time.
- ``<m>_agg`` (window aggregates): tags = template tags + ``metric`` + ``window``; fields ``count`` (int),
  ``min``, ``max``, ``mean``, ``sum`` (not beyond a double), ``first``, ``last``, ``stddev`` (only when count > 1
  and not beyond a double), ``p50``,
  ``p95``, ``p99``; time = window start. ``windows.statistics`` and ``windows.quantiles`` choose among them
  (``count`` always).
- ``<m>_late`` (late readings, raw): tags as raw readings; field ``value``; time = event time.
- ``fleetwatch_health`` (the pipeline's own health): tag ``worker``; fields ``messages_in``, ``readings``,
  ``parse_errors``, ``dead_letters``, ``late_readings``, ``windows_closed``, ``windows_rewritten``, ``points_written``,
  ``sink_retries``, ``points_beyond_retention``, ``mqtt_protocol_errors``, ``mqtt_disconnects``,
  ``mqtt_redeliveries_dropped``,
  ``mqtt_retained_skipped``, ``mqtt_empty_payloads``,
  ``unknown_devices``, ``sparkplug_seq_gaps``, ``sparkplug_seq_missed``, ``sparkplug_stale_deaths``,
  ``sparkplug_metrics_ignored``,
  ``sparkplug_messages_ignored``, ``mqtt_topic_cache_resets``, ``syslog_udp_dropped``, ``syslog_udp_empty``,
  ``syslog_tcp_refused``, ``syslog_tcp_idle_closed``, ``sink_queue_depth``, ``lag_seconds``,
  ``log_events``, ``log_parse_failures``, ``late_log_events``, ``docs_indexed``, ``es_duplicates``,
  ``es_rejected``, ``es_retries``, ``es_queue_depth``, ``window_snapshots``, ``window_snapshot_bytes``,
  ``window_snapshot_encoded_bytes``, ``window_snapshot_seconds``, ``window_series``, ``sink_snapshots``,
  ``sink_snapshot_bytes``, ``sink_snapshot_seconds``; time = write time.

- ``sparkplug_state`` (Sparkplug B edge nodes, ``flows.sparkplug``): tags ``group``, ``node``, ``device`` (absent
  for the node itself), ``metric`` (``online``, ``seq_gaps``); field ``value`` (online 1/0, or the node's sequence
  gaps so far); time = the birth's time, or the receive time of a death.

- ``log_rates`` (log events per event-time window): tags ``service``, ``window``; fields ``count``,
  ``errors`` (error and worse), ``error_rate`` (errors / count), and one integer field per level seen
  (``info``, ``warn``, ``error``, ..., ``unknown``); time = window start.

Each measurement is written to its retention tier (``fleetwatch.retention``) when ``[retention]`` is on.

``<m>`` is the subscription's ``measurement`` (default ``readings``). ``window`` is the window length
(``10s``, ``1m``; sliding windows ``1m/10s``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

import orjson

from fleetwatch.config import WINDOW_STATISTICS
from fleetwatch.labels import duration_label, quantile_field
from fleetwatch.record import LogRate, Reading, escape_tag
from flows.windows import Aggregate


def _measurement_end(series: str) -> int:
    """Index of the first unescaped comma (end of the measurement) in a series key."""
    i = 0
    while True:
        i = series.find(",", i)
        if i <= 0 or series[i - 1] != "\\":
            return i if i >= 0 else len(series)
        i += 1


def _renamed(series: str, suffix: str) -> str:
    end = _measurement_end(series)
    return f"{series[:end]}{suffix}{series[end:]}"


def _float(value: float) -> str:
    return repr(float(value))


# A window's line has up to ten statistics, and at a fleet boundary 100,000 lines and more are formatted at once.
# repr of a double with 17 significant digits (a mean, a quantile between two readings) takes about 0.7 µs, most
# of a line's time; orjson formats all of a line's doubles in one call about five times faster. It gives the same
# digits (the shortest form that reads back as the same double), and differs only in notation: decimals where
# repr writes an exponent between 1e-5 and 1e-4, and exponents without padding (1e-7 for 1e-07). Line protocol
# and every store read both as the same double. The values here are finite (the window step keeps sums and
# deviations beyond a double out), so orjson never writes its null.
_dumps = orjson.dumps


def aggregate_line(agg: Aggregate) -> str:
    head = f"{_renamed(agg.series, '_agg')},window={agg.window}"
    if agg.count == 1:
        # One reading in the window (a fleet reporting every 10 s): every statistic is that value.
        v = repr(agg.min)
        fields = f"count=1i,min={v},max={v},mean={v},sum={v},first={v},last={v}"
        for q, _ in agg.quantiles:
            fields += f",{quantile_field(q)}={v}"
        return f"{head} {fields} {agg.start_ns}"
    total, stddev, quantiles = agg.sum, agg.stddev, agg.quantiles
    values = [agg.min, agg.max, agg.mean, agg.first, agg.last]
    if total is not None:
        values.append(total)
    if stddev is not None:
        values.append(stddev)
    values += [value for _, value in quantiles]
    text = _dumps(values).decode()[1:-1].split(",")
    fields = f"count={agg.count}i,min={text[0]},max={text[1]},mean={text[2]},"
    at = 5
    if total is not None:
        fields += f"sum={text[at]},"
        at += 1
    fields += f"first={text[3]},last={text[4]}"
    if stddev is not None:
        fields += f",stddev={text[at]}"
        at += 1
    for q, _ in quantiles:
        fields += f",{quantile_field(q)}={text[at]}"
        at += 1
    return f"{head} {fields} {agg.start_ns}"


def aggregate_formatter(statistics: Sequence[str]) -> Callable[[Aggregate], str]:
    """The line of a window carrying ``statistics`` (``windows.statistics``) and the quantiles:
    ``aggregate_line`` itself when that is every statistic."""
    if set(statistics) >= set(WINDOW_STATISTICS):
        return aggregate_line
    names = tuple(name for name in WINDOW_STATISTICS[1:] if name in statistics)

    def line(agg: Aggregate) -> str:
        return _chosen_statistics_line(agg, names)

    return line


def _chosen_statistics_line(agg: Aggregate, names: tuple[str, ...]) -> str:
    written: list[str] = []
    values: list[float] = []
    for name in names:
        value = getattr(agg, name)
        if value is not None:  # a sum or stddev beyond a double, the stddev of one value: no field
            written.append(name)
            values.append(value)
    for q, value in agg.quantiles:
        written.append(quantile_field(q))
        values.append(value)
    fields = f"count={agg.count}i"
    if values:
        text = _dumps(values).decode()[1:-1].split(",")
        fields += "," + ",".join([f"{name}={number}" for name, number in zip(written, text, strict=True)])
    return f"{_renamed(agg.series, '_agg')},window={agg.window} {fields} {agg.start_ns}"


def raw_line(reading: Reading) -> str:
    return f"{reading.series} value={_float(reading.value)} {reading.ts_ns}"


def late_line(reading: Reading) -> str:
    return f"{_renamed(reading.series, '_late')} value={_float(reading.value)} {reading.ts_ns}"


def log_rate_line(rate: LogRate) -> str:
    """``log_rates,service=<s>,window=<w> count=..i,errors=..i,error_rate=..,<level>=..i <window start>``:
    a field per level seen, so Grafana can stack them (``unknown`` for events without a level)."""
    total = rate.total
    fields = [f"count={total}i", f"errors={rate.errors}i", f"error_rate={rate.errors / total if total else 0.0!r}"]
    fields += [f"{level or 'unknown'}={n}i" for level, n in sorted(rate.by_level.items())]
    window = duration_label(timedelta(microseconds=rate.window_ns // 1000))
    return f"log_rates,service={escape_tag(rate.service)},window={window} {','.join(fields)} {rate.window_start_ns}"
