"""The InfluxDB schema fleetwatch writes. Dashboards and alerts are built on it: keep it stable.

- ``<m>`` (raw readings, opt-in per subscription): tags = template tags + ``metric``; field ``value``;
  time = event time.
- ``<m>_agg`` (window aggregates): tags = template tags + ``metric`` + ``window``; fields ``count`` (int),
  ``min``, ``max``, ``mean``, ``sum``, ``first``, ``last``, ``stddev`` (only when count > 1), ``p50``,
  ``p95``, ``p99``; time = window start.
- ``<m>_late`` (late readings, raw): tags as raw readings; field ``value``; time = event time.
- ``fleetwatch_health`` (the pipeline's own health): tag ``worker``; fields ``messages_in``, ``readings``,
  ``parse_errors``, ``dead_letters``, ``late_readings``, ``windows_closed``, ``points_written``,
  ``sink_retries``, ``sink_queue_depth``, ``lag_seconds``; time = write time.

``<m>`` is the subscription's ``measurement`` (default ``readings``). ``window`` is the window length
(``10s``, ``1m``; sliding windows ``1m/10s``).
"""

from __future__ import annotations

from fleetwatch.record import Reading
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


def quantile_field(q: float) -> str:
    """0.5 -> p50, 0.95 -> p95, 0.999 -> p99_9."""
    pct = f"{q * 100:.10g}"
    return "p" + pct.replace(".", "_")


def aggregate_line(agg: Aggregate) -> str:
    fields = (
        f"count={agg.count}i,min={_float(agg.min)},max={_float(agg.max)},mean={_float(agg.mean)},"
        f"sum={_float(agg.sum)},first={_float(agg.first)},last={_float(agg.last)}"
    )
    if agg.stddev is not None:
        fields += f",stddev={_float(agg.stddev)}"
    for q, value in agg.quantiles:
        fields += f",{quantile_field(q)}={_float(value)}"
    return f"{_renamed(agg.series, '_agg')},window={agg.window} {fields} {agg.start_ns}"


def raw_line(reading: Reading) -> str:
    return f"{reading.series} value={_float(reading.value)} {reading.ts_ns}"


def late_line(reading: Reading) -> str:
    return f"{_renamed(reading.series, '_late')} value={_float(reading.value)} {reading.ts_ns}"
