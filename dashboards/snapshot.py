"""PNG snapshots of the dashboards where Grafana is not running: each dashboard drawn with matplotlib from the
same query results Grafana would get (``dashboards.queries``), panels placed on Grafana's 24-column grid.

Time series are lines (bars when the panel draws bars, points when it draws points; min-max and quantile bands
shaded as the panel's ``fillBelowTo`` overrides say), with the dashboard's annotations as vertical marks; stats
are big numbers (bars when there are several); tables are tables; logs panels are the newest lines. Times are
UTC. A panel whose query fails says so in its box instead of failing the whole picture.

``render_snapshots`` is what ``fleetwatch snapshot`` runs; ``progress(done, total, description)`` is called as
panels are queried and dashboards drawn, for a progress bar.
"""

from __future__ import annotations

import math
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from dashboards.generate import DASHBOARDS_DIR
from dashboards.queries import (
    DashboardResult,
    PanelResult,
    Series,
    Stores,
    TimeRange,
    format_value,
    load_dashboards,
    panels_of,
    run_dashboard,
)

ProgressCallback = Callable[[int, int, str], None]

# Inches: figure width (about Grafana at 1920 px), and one grid row (Grafana's 30 px rows plus their margin).
FIG_WIDTH = 20.0
ROW_HEIGHT = 0.38
HEADER = 0.9
MARGIN = 0.25
DPI = 100
PALETTE = (
    "#7eb26d",
    "#eab839",
    "#6ed0e0",
    "#ef843c",
    "#e24d42",
    "#1f78c1",
    "#ba43a9",
    "#705da0",
    "#508642",
    "#cca300",
    "#447ebc",
    "#c15c17",
    "#890f02",
    "#0a437c",
    "#6d1f62",
    "#584477",
)
LEVEL_COLOURS = {"error": "#c4162a", "critical": "#8b0000", "alert": "#8b0000", "emergency": "#8b0000",
                 "warn": "#e08400", "info": "#1f60c4", "debug": "#555555"}  # fmt: skip
PANEL_BG, PANEL_EDGE = "#fbfbfb", "#d8d9da"


def render_snapshots(
    out_dir: Path,
    influx_url: str,
    database: str,
    es_url: str,
    index_prefix: str = "fleetwatch",
    time_range: TimeRange | str = "1h",
    progress: ProgressCallback | None = None,
    *,
    variables: Mapping[str, Mapping[str, str | Sequence[str]]] | None = None,
    es_auth: tuple[str, str] | None = None,
    influx_token: str | None = None,
    influx_auth: tuple[str, str] | None = None,
    directory: Path = DASHBOARDS_DIR,
    failures: list[str] | None = None,
) -> list[Path]:
    """One PNG per dashboard in ``out_dir`` (``<uid>.png``), drawn from the stores' data in ``time_range``
    (a ``TimeRange``, or ``"1h"``-style text: the last hour). ``variables``: selections by dashboard uid.
    ``failures``: gets "<dashboard>: <panel>: <error>" for each panel whose query failed (drawn in its place
    too). Returns the files written, in dashboard order."""
    stores = Stores(
        influx_url, database, es_url, index_prefix, es_auth=es_auth, influx_token=influx_token, influx_auth=influx_auth
    )
    span = time_range if isinstance(time_range, TimeRange) else TimeRange.parse(time_range)
    dashboards = load_dashboards(directory)
    # One step per panel (repeats counted once) and one per drawing.
    total = sum(len({p.get("id") for p in panels_of(d)}) + 1 for d in dashboards)
    done = 0

    def report(description: str) -> None:
        if progress is not None:
            progress(done, total, description)

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dashboard in dashboards:
        seen: set[int] = set()

        def on_panel(panel: PanelResult, title: str = dashboard["title"], seen: set[int] = seen) -> None:
            nonlocal done
            if panel.panel_id not in seen:
                seen.add(panel.panel_id)
                done += 1
                if panel.errors and failures is not None:
                    failures.append(f"{title}: {panel.title}: {panel.errors[0]}")
            report(f"{title}: {panel.title}")

        report(f"{dashboard['title']}: variables")
        result = run_dashboard(dashboard, stores, span, (variables or {}).get(dashboard["uid"]), on_panel)
        report(f"{dashboard['title']}: drawing")
        written.append(render_dashboard(result, out_dir / f"{dashboard['uid']}.png"))
        done += 1
        report(f"{dashboard['title']}: {written[-1].name}")
    return written


def render_dashboard(result: DashboardResult, path: Path) -> Path:
    """Draw one dashboard's results to ``path`` (PNG)."""
    rows = max((p.grid[1] + p.grid[3] for p in result.panels), default=1)
    height = HEADER + rows * ROW_HEIGHT + MARGIN
    fig = Figure(figsize=(FIG_WIDTH, height), dpi=DPI, facecolor="white")
    _header(fig, result, height)
    events = [e.time_ms for a in result.annotations for e in a.events]
    unit_w = (FIG_WIDTH - 2 * MARGIN) / 24
    for panel in result.panels:
        x, y, w, h = panel.grid
        # The panel's box in inches from the top left, then in figure fractions (matplotlib counts from the bottom).
        left, top = MARGIN + x * unit_w, HEADER + y * ROW_HEIGHT
        box = (left + 0.05, top + 0.05, w * unit_w - 0.1, h * ROW_HEIGHT - 0.1)
        _panel(fig, panel, box, height, result, events)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


# --------------------------------------------------------------------------------------------- layout


def _header(fig: Figure, result: DashboardResult, height: float) -> None:
    fig.text(MARGIN / FIG_WIDTH, 1 - 0.35 / height, result.title, fontsize=18, weight="bold", va="center")
    chosen = ", ".join(f"{name} = {var.text()}" for name, var in result.variables.items())
    start, end = (
        datetime.fromtimestamp(t / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S") for t in (result.start_ns, result.end_ns)
    )
    relative = f" (last {result.time_range.last_text})" if result.time_range.last_text else ""
    line = f"{start} to {end} UTC{relative}" + (f"   |   {chosen}" if chosen else "")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    fig.text(MARGIN / FIG_WIDTH, 1 - 0.7 / height, line, fontsize=10, color="#444444", va="center")
    fig.text(
        1 - MARGIN / FIG_WIDTH,
        1 - 0.35 / height,
        f"fleetwatch · {result.uid} · drawn {stamp}",
        fontsize=9,
        color="#888888",
        ha="right",
        va="center",
    )


def _rect(
    box: tuple[float, float, float, float], height: float, pad: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    """Figure-fraction rectangle of a box (inches from the top left) shrunk by pad (left, top, right, bottom)."""
    left, top, w, h = box
    pl, pt, pr, pb = pad
    return (
        (left + pl) / FIG_WIDTH,
        1 - (top + h - pb) / height,
        max(0.01, w - pl - pr) / FIG_WIDTH,
        max(0.01, h - pt - pb) / height,
    )


def _panel(
    fig: Figure,
    panel: PanelResult,
    box: tuple[float, float, float, float],
    height: float,
    result: DashboardResult,
    events: list[int],
) -> None:
    left, top, w, h = box
    frame = FancyBboxPatch(
        (left / FIG_WIDTH, 1 - (top + h) / height),
        w / FIG_WIDTH,
        h / height,
        boxstyle="round,pad=0,rounding_size=0.003",
        transform=fig.transFigure,
        facecolor=PANEL_BG,
        edgecolor=PANEL_EDGE,
        linewidth=1,
        zorder=-1,  # under the panel's axes
    )
    fig.patches.append(frame)
    fig.text(
        (left + 0.12) / FIG_WIDTH,
        1 - (top + 0.2) / height,
        _clip(panel.title, int(w * 9)),
        fontsize=11,
        weight="bold",
        va="center",
        color="#222222",
    )
    if panel.errors:
        _message(
            fig, box, height, "Query failed:\n" + "\n".join(textwrap.shorten(e, 160) for e in panel.errors), "#c4162a"
        )
        return
    if panel.type == "timeseries":
        _timeseries(fig, panel, box, height, result, events)
    elif panel.type == "stat":
        _stat(fig, panel, box, height)
    elif panel.type == "table":
        _table(fig, panel, box, height)
    elif panel.type == "logs":
        _logs(fig, panel, box, height)
    else:
        _message(fig, box, height, f"({panel.type} panels are not drawn in snapshots)", "#888888")


def _message(fig: Figure, box: tuple[float, float, float, float], height: float, text: str, colour: str) -> None:
    left, top, w, h = box
    fig.text(
        (left + w / 2) / FIG_WIDTH,
        1 - (top + h / 2 + 0.1) / height,
        text,
        ha="center",
        va="center",
        fontsize=10,
        color=colour,
        wrap=True,
    )


def _clip(text: str, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


# ---------------------------------------------------------------------------------------------- values


def _unit(panel: PanelResult) -> str:
    return str(panel.panel.get("fieldConfig", {}).get("defaults", {}).get("unit") or "short")


def _cell(value: Any, column: str) -> str:
    if column in ("Time", "time") and isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC).strftime("%H:%M:%S")
    if isinstance(value, str) and column in ("@timestamp", "started_at") and "T" in value:
        return value.replace("T", " ").split(".")[0].removesuffix("Z")
    if isinstance(value, float):
        return f"{value:.4g}"
    return _clip("" if value is None else str(value), 60)


# ---------------------------------------------------------------------------------------------- panels


def _custom(panel: PanelResult) -> dict[str, Any]:
    custom: dict[str, Any] = panel.panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}) or {}
    return custom


def _overrides(panel: PanelResult) -> dict[str, dict[str, Any]]:
    """Per series name, the custom properties its overrides set (``custom.fillBelowTo`` -> ``fillBelowTo``)."""
    out: dict[str, dict[str, Any]] = {}
    for override in panel.panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") != "byName":
            continue
        props = out.setdefault(str(matcher.get("options")), {})
        for prop in override.get("properties", []):
            props[str(prop.get("id", "")).removeprefix("custom.")] = prop.get("value")
    return out


# Grafana's named colours (the ones the dashboards use).
NAMED_COLOURS = {"dark-red": "#c4162a", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a",
                 "green": "#73bf69", "blue": "#5794f2", "purple": "#b877d9", "text": "#8e8e8e"}  # fmt: skip


def _colours(series: list[Series], overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The palette in order, except where an override fixes a series' colour."""
    out = {}
    for i, s in enumerate(series):
        fixed = (overrides.get(s.name, {}).get("color") or {}).get("fixedColor")
        out[s.name] = NAMED_COLOURS.get(fixed, fixed) if fixed else PALETTE[i % len(PALETTE)]
    return out


def _timeseries(
    fig: Figure,
    panel: PanelResult,
    box: tuple[float, float, float, float],
    height: float,
    result: DashboardResult,
    events: list[int],
) -> None:
    """Lines, points or stacked bars; x is epoch seconds, labelled as UTC times."""
    series = [s for s in panel.series if s.non_null()]
    ax = fig.add_axes(_rect(box, height, (0.75, 0.45, 0.15, 0.7)))
    ax.set_facecolor("white")
    start, end = result.start_ns / 1e9, result.end_ns / 1e9
    ax.set_xlim(start, end)
    _time_axis(ax, start, end)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e6e6e6", linewidth=0.6)
    ax.set_xlabel("time (UTC)", fontsize=8, color="#555555")
    unit = _unit(panel)
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: format_value(v, unit)))
    if not series:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes, color="#888888")
        return
    custom = _custom(panel)
    overrides = _overrides(panel)
    style = custom.get("drawStyle", "line")
    colours = _colours(series, overrides)
    if style == "bars":
        _bars(ax, series, colours, panel.interval_ms, stacked=(custom.get("stacking") or {}).get("mode") == "normal")
    else:
        by_name = {s.name: s for s in series}
        for s in series:
            props = overrides.get(s.name, {})
            times, values = _xy(s)
            dashed = bool((props.get("lineStyle") or {}).get("fill") == "dash")
            if style == "points":
                ax.scatter(times, values, s=18, color=colours[s.name], label=s.name, zorder=3)
            else:
                ax.plot(
                    times,
                    values,
                    color=colours[s.name],
                    linewidth=1.0 if dashed else 1.4,
                    linestyle="--" if dashed else "-",
                    # A line needs two points: lone points are drawn as dots.
                    marker="o" if len(times) < 3 else "",
                    markersize=3,
                    label=s.name,
                )
            lower = by_name.get(str(props.get("fillBelowTo", "")))
            if lower is not None:
                _band(ax, s, lower, colours[s.name])
    values = [v for s in series for _, v in s.non_null()]
    if min(values) == max(values):
        # A flat line (often all zeros: no retries, nothing late) sits at the bottom of a readable scale.
        low = min(0.0, values[0])
        ax.set_ylim(low, max(1.0, values[0] * 2) if values[0] >= 0 else 0.0)
    for stamp in events:
        if start <= stamp / 1000 <= end:
            ax.axvline(stamp / 1000, color="#c4162a", alpha=0.45, linewidth=0.9, linestyle=":")
    _legend(ax, len(series), bool(events))


# Tick spacings for the time axis, seconds.
_TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800,
               604800)  # fmt: skip


def _time_axis(ax: Axes, start: float, end: float, ticks: int = 6) -> None:
    """Round-time ticks (every 10 s, 5 min, 1 h, ...), about ``ticks`` of them, labelled in UTC."""
    span = max(end - start, 1.0)
    step = next((s for s in _TICK_STEPS if span / s <= ticks), _TICK_STEPS[-1])
    first = math.ceil(start / step) * step
    positions = [first + i * step for i in range(int((end - first) // step) + 1)]
    fmt = "%H:%M:%S" if step < 60 else "%H:%M" if span <= 86400 else "%m-%d %H:%M"
    ax.set_xticks(positions, [datetime.fromtimestamp(p, UTC).strftime(fmt) for p in positions])


def _xy(s: Series) -> tuple[list[float], list[float]]:
    points = s.non_null()
    return [t / 1000 for t, _ in points], [v for _, v in points]


def _band(ax: Axes, upper: Series, lower: Series, colour: str) -> None:
    below = dict(lower.non_null())
    points = [(t / 1000, v, below[t]) for t, v in upper.non_null() if t in below]
    if points:
        ax.fill_between(
            [t for t, _, _ in points],
            [lo for _, _, lo in points],
            [hi for _, hi, _ in points],
            color=colour,
            alpha=0.18,
            linewidth=0,
        )


def _bars(ax: Axes, series: list[Series], colours: Mapping[str, str], interval_ms: int, stacked: bool) -> None:
    """Bars per time bucket, stacked as the panel stacks them."""
    width = max(interval_ms, 1000) / 1000 * 0.8
    base: dict[int, float] = {}
    for s in series:
        points = s.non_null()
        bottoms = [base.get(t, 0.0) if stacked else 0.0 for t, _ in points]
        ax.bar(
            [t / 1000 for t, _ in points],
            [v for _, v in points],
            width=width,
            bottom=bottoms,
            color=colours[s.name],
            label=s.name,
            align="edge",
            alpha=0.85 if stacked else 0.6,
            linewidth=0,
        )
        if stacked:
            for t, v in points:
                base[t] = base.get(t, 0.0) + v


def _legend(ax: Axes, count: int, annotated: bool) -> None:
    handles, labels = ax.get_legend_handles_labels()
    limit = 10
    if count > limit:
        handles, labels = handles[:limit], labels[:limit]
        labels[-1] = f"{labels[-1]} (+{count - limit} more)"
    if annotated:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="#c4162a", linestyle=":", alpha=0.7))
        labels.append("alert annotations")
    ax.legend(
        handles,
        [_clip(label, 40) for label in labels],
        fontsize=7,
        loc="upper left",
        framealpha=0.8,
        ncol=min(5, max(1, math.ceil(len(labels) / 3))),
    )


def _stat(fig: Figure, panel: PanelResult, box: tuple[float, float, float, float], height: float) -> None:
    shown = panel.stat()
    left, top, w, h = box
    if len(shown) == 1:
        value = shown[0].value
        # A missing value (no data, a null) shows the panel's text for it, greyed unless the panel set one.
        colour = _threshold_colour(panel, value) if value is not None or shown[0].text != "No data" else "#888888"
        fig.text(
            (left + w / 2) / FIG_WIDTH,
            1 - (top + h * 0.58) / height,
            shown[0].text,
            ha="center",
            va="center",
            fontsize=30 if value is not None or len(shown[0].text) < 8 else 18,
            weight="bold",
            color=colour,
        )
        return
    values = [(v.name, v.value) for v in shown]
    unit = _unit(panel)
    ax = fig.add_axes(_rect(box, height, (max(1.2, w * 0.25), 0.45, 0.4, 0.15)))
    names = [_clip(n, 30) for n, _ in values][::-1]
    numbers = [float(v) if isinstance(v, int | float) else 0.0 for _, v in values][::-1]
    bars = ax.barh(names, numbers, color=[_threshold_colour(panel, v) for v in numbers], alpha=0.8)
    for bar, number in zip(bars, numbers, strict=True):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            " " + format_value(number, unit),
            va="center",
            fontsize=9,
            weight="bold",
        )
    ax.tick_params(labelsize=8)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlim(0, max([*numbers, 1e-9]) * 1.3)


def _threshold_colour(panel: PanelResult, value: Any) -> str:
    steps = panel.panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    colour = "#299c46"
    for step in steps:
        limit = step.get("value")
        if limit is None or (isinstance(value, int | float) and value >= limit):
            colour = {"green": "#299c46", "red": "#d44a3a"}.get(step.get("color"), step.get("color") or colour)
    return colour


def _table(fig: Figure, panel: PanelResult, box: tuple[float, float, float, float], height: float) -> None:
    columns, rows = panel.table()
    if not rows:
        _message(fig, box, height, "No data", "#888888")
        return
    left, top, w, h = box
    fit = max(1, int((h - 0.55) / 0.24) - 1)
    shown = rows[:fit]
    ax = fig.add_axes(_rect(box, height, (0.1, 0.4, 0.1, 0.1)))
    ax.axis("off")
    text = [[_cell(v, c) for v, c in zip(row, columns, strict=True)] for row in shown]
    table = ax.table(cellText=text, colLabels=columns, loc="upper left", cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    cell_h = 0.24 / max(0.1, h - 0.5)
    for (r, _c), cell in table.get_celld().items():
        cell.set_height(cell_h)
        cell.set_edgecolor("#e0e0e0")
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#eef0f2")
    table.auto_set_column_width(list(range(len(columns))))
    if len(rows) > fit:
        fig.text(
            (left + w - 0.15) / FIG_WIDTH,
            1 - (top + h - 0.12) / height,
            f"{len(rows) - fit} more rows",
            ha="right",
            fontsize=8,
            color="#666666",
        )


def _logs(fig: Figure, panel: PanelResult, box: tuple[float, float, float, float], height: float) -> None:
    hits = panel.hits
    if not hits:
        _message(fig, box, height, "No logs", "#888888")
        return
    left, top, w, h = box
    line_h = 0.2
    fit = max(1, int((h - 0.5) / line_h))
    chars = int(w * 13)
    for i, hit in enumerate(hits[:fit]):
        stamp = str(hit.get("@timestamp", "")).replace("T", " ").removesuffix("Z")[:23]
        level = str(hit.get("log.level", "") or "")
        service = str(hit.get("service.name", "") or "")
        line = f"{stamp}  {level.upper():<8} {service:<12} {hit.get('message', '')}"
        fig.text(
            (left + 0.15) / FIG_WIDTH,
            1 - (top + 0.5 + i * line_h) / height,
            _clip(line, chars),
            fontsize=8,
            family="monospace",
            va="center",
            color=LEVEL_COLOURS.get(level, "#222222"),
        )
    if len(hits) > fit:
        fig.text(
            (left + w - 0.15) / FIG_WIDTH,
            1 - (top + h - 0.12) / height,
            f"newest {fit} of {len(hits)} events shown",
            ha="right",
            fontsize=8,
            color="#666666",
        )
