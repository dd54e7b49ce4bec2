"""The names fleetwatch gives windows and quantiles where it stores them: the ``window`` tag of
``<measurement>_agg`` (``10s``, ``1m``, ``1m/10s``) and the quantile fields (``p50``, ``p99_9``).

The configuration checks alert rules against them (a rule must watch a window and a quantile the pipeline
computes), and the configuration is the ground floor, which imports nothing from ``flows``: so the names are
made here, and ``flows.windows`` and ``flows.schema`` use these same functions to write them.
"""

from __future__ import annotations

import functools
from datetime import timedelta


def duration_ns(delta: timedelta) -> int:
    """Exact integer nanoseconds: total_seconds() is a float and would round long windows."""
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def duration_label(delta: timedelta) -> str:
    """``10s``, ``1m``, ``1h30m``, ``250ms``: the window tag value in InfluxDB."""
    ms = duration_ns(delta) // 1_000_000
    if ms % 1000:
        return f"{ms}ms"
    seconds = ms // 1000
    out = ""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


@functools.cache  # once per configured quantile: it is called for every aggregate written
def quantile_field(q: float) -> str:
    """0.5 -> p50, 0.95 -> p95, 0.999 -> p99_9."""
    pct = f"{q * 100:.10g}"
    return "p" + pct.replace(".", "_")
