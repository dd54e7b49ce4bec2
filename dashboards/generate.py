"""fleetwatch's Grafana dashboards as code: ``python -m dashboards.generate [--check]``.

The five dashboards are built with the Grafana Foundation SDK (the Grafana 11.6 build) and written to
``dashboards/<name>.json`` with sorted keys, two-space indentation and a final newline, so regenerating is
byte-identical and a diff shows only real changes. ``--check`` writes nothing and exits 1 naming the files whose
committed JSON differs from what this code builds (the tests run it too).

Every query refers only to what the pipeline writes (README, "InfluxDB schema" and "Elasticsearch documents"):
``readings_agg`` (the default subscription measurement ``readings``; tags ``site``, ``device``, ``metric``,
``window``), ``alerts``, ``log_rates`` and ``fleetwatch_health`` in InfluxDB, and the ``logs``, ``alerts`` and
``dead-letters`` indices in Elasticsearch. ``tests/integration/test_dashboards.py`` runs every query against
what a real pipeline run wrote and fails on any name the pipeline did not write.

Data sources are referred to by the fixed uids of ``provisioning/grafana/datasources/fleetwatch.yaml``;
``DATASOURCES`` below describes them for ``dashboards.queries``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import elasticsearch as es_b
from grafana_foundation_sdk.builders import expr as expr_b
from grafana_foundation_sdk.builders import logs as logs_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash
from grafana_foundation_sdk.models.elasticsearch import TermsOrder

from fleetwatch.config import Config
from fleetwatch.retention import Tier, TierPlan, qualified, window_length

DASHBOARDS_DIR = Path(__file__).resolve().parent
GRID_COLUMNS = 24

# ------------------------------------------------------------------------------------------- data sources

INFLUXDB_UID = "fleetwatch-influxdb"
ES_LOGS_UID = "fleetwatch-es-logs"
ES_ALERTS_UID = "fleetwatch-es-alerts"
ES_DEAD_LETTERS_UID = "fleetwatch-es-dead-letters"


@dataclass(frozen=True)
class Datasource:
    """What ``dashboards.queries`` needs to know of a provisioned data source to run its queries like Grafana."""

    uid: str
    type: str
    # The smallest $__interval Grafana picks (jsonData.timeInterval): the shortest window the pipeline writes.
    time_interval: str = "10s"
    # Elasticsearch: the index kind (``<prefix>-<kind>*``), the time field and the logs panel's fields.
    index_kind: str = ""
    time_field: str = "@timestamp"
    log_message_field: str = ""
    log_level_field: str = ""

    @property
    def ref(self) -> dash.DataSourceRef:
        return dash.DataSourceRef(type_val=self.type, uid=self.uid)


# Kept in step with provisioning/grafana/datasources/fleetwatch.yaml (a test compares them).
DATASOURCES: dict[str, Datasource] = {
    ds.uid: ds
    for ds in (
        Datasource(INFLUXDB_UID, "influxdb"),
        Datasource(
            ES_LOGS_UID, "elasticsearch", index_kind="logs", log_message_field="message", log_level_field="log.level"
        ),
        Datasource(ES_ALERTS_UID, "elasticsearch", index_kind="alerts"),
        Datasource(ES_DEAD_LETTERS_UID, "elasticsearch", index_kind="dead-letters"),
    )
}
INFLUXDB = DATASOURCES[INFLUXDB_UID].ref
ES_LOGS = DATASOURCES[ES_LOGS_UID].ref
ES_ALERTS = DATASOURCES[ES_ALERTS_UID].ref
ES_DEAD_LETTERS = DATASOURCES[ES_DEAD_LETTERS_UID].ref

# ------------------------------------------------------------------------- what the SDK build lacks


class InfluxQLQuery(cogvariants.Dataquery):
    """A raw InfluxQL target. The SDK's Grafana 11.6 build has no InfluxDB query model, so this writes the JSON
    that Grafana's InfluxDB data source saves for a query typed in raw mode."""

    def __init__(self, query: str) -> None:
        self.ref_id = "A"
        self.query = query
        self.result_format = "time_series"
        self.alias: str | None = None

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "datasource": INFLUXDB,
            "query": self.query,
            "rawQuery": True,
            "refId": self.ref_id,
            "resultFormat": self.result_format,
        }
        if self.alias is not None:
            payload["alias"] = self.alias
        return payload


class InfluxQL(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder of a raw InfluxQL target, in the SDK's style."""

    def __init__(self, query: str) -> None:
        self._internal = InfluxQLQuery(query)

    def build(self) -> InfluxQLQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def alias(self, alias: str) -> Self:
        """Series name pattern: ``$tag_<key>``, ``$col``, ``$m``."""
        self._internal.alias = alias
        return self

    def table(self) -> Self:
        """Rows instead of series (Grafana's "Format as: Table")."""
        self._internal.result_format = "table"
        return self


class _AnnotationWithTarget(dash.AnnotationQuery):
    """The SDK types an annotation's ``target`` as the built-in Grafana one; data-source annotations (InfluxDB,
    Elasticsearch) carry their own target and fields, added here as they are saved by Grafana."""

    def __init__(self, extra: dict[str, object], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra = extra

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(self.extra)
        return payload


class Annotation(cogbuilder.Builder[dash.AnnotationQuery]):
    def __init__(self, name: str, datasource: dash.DataSourceRef, color: str, extra: dict[str, object]) -> None:
        self._internal = _AnnotationWithTarget(
            extra, name=name, datasource=datasource, enable=True, hide=False, icon_color=color, built_in=None
        )

    def build(self) -> dash.AnnotationQuery:
        return self._internal


def builtin_annotation() -> cogbuilder.Builder[dash.AnnotationQuery]:
    """Grafana's own annotations and alerts, which every dashboard has (as Grafana exports them)."""
    return (
        dash_b.AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(dash.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
        .built_in(1)
    )


# The tag every annotation fleetwatch posts to Grafana carries (dashboards.sync.annotation_body: "fleetwatch",
# "rule:<rule>", "state:<state>", "severity:<severity>"). Without [alerts.grafana] dashboard_uid they are
# organisation annotations, which the built-in query (filtered by this dashboard's uid) never shows.
GRAFANA_ANNOTATION_TAG = "fleetwatch"


def grafana_tags_annotation(name: str, tags: Sequence[str], color: str, limit: int = 500) -> Annotation:
    """A query on Grafana's own annotations by tag (the "-- Grafana --" data source, filter "Tags"), as Grafana 11
    saves it: every annotation carrying all of ``tags`` (``matchAny`` off), on any dashboard or none. Tags are
    literal: a multi-value variable in a tag would be split into separate tags by Grafana."""
    target: dict[str, object] = {"limit": limit, "matchAny": False, "tags": list(tags), "type": "tags"}
    return Annotation(name, dash.DataSourceRef(type_val="grafana", uid="-- Grafana --"), color, {"target": target})


def grafana_alert_annotations() -> Annotation:
    return grafana_tags_annotation("Alert transitions (Grafana annotations)", [GRAFANA_ANNOTATION_TAG], "orange")


def influx_annotation(name: str, query: str, text_column: str, tags_column: str, color: str) -> Annotation:
    """An InfluxQL annotation query as Grafana 11 stores it (the legacy fields migrated into ``target``)."""
    target: dict[str, object] = {
        "fromAnnotations": True,
        "query": query,
        "rawQuery": True,
        "refId": "Anno",
        "tagsColumn": tags_column,
        "textColumn": text_column,
    }
    return Annotation(name, INFLUXDB, color, {"target": target})


def es_annotation(
    name: str, datasource: dash.DataSourceRef, lucene: str, text: str, tags: str, color: str
) -> Annotation:
    """An Elasticsearch annotation query: the Lucene query in ``target``, the fields beside it."""
    return Annotation(
        name,
        datasource,
        color,
        {
            "target": {"query": lucene, "refId": "Anno"},
            "tagsField": tags,
            "textField": text,
            "timeField": "@timestamp",
        },
    )


# ---------------------------------------------------------------------------------------------- helpers


def influx(query: str, ref: str = "A", alias: str | None = None) -> InfluxQL:
    """A raw InfluxQL target. ``alias="$col"`` names series by their column (``AS "..."``): Grafana's default,
    ``measurement.column``, is what overrides by name would otherwise have to match."""
    target = InfluxQL(query).ref_id(ref)
    return target.alias(alias) if alias is not None else target


def query_variable(
    name: str, label: str, query: str, *, multi: bool = True, include_all: bool = True, all_value: str | None = None
) -> dash_b.QueryVariable:
    """An InfluxQL variable (``SHOW TAG VALUES``), refreshed with the time range, sorted alphabetically."""
    variable = (
        dash_b.QueryVariable(name)
        .label(label)
        .datasource(INFLUXDB)
        .query(query)
        .multi(multi)
        .include_all(include_all)
        .refresh(dash.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash.VariableSort.ALPHABETICAL_ASC)
    )
    return variable.all_value(all_value) if all_value is not None else variable


def legend(right: bool = False) -> common_b.VizLegendOptions:
    return (
        common_b.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.TABLE if right else common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.RIGHT if right else common.LegendPlacement.BOTTOM)
        .calcs(["lastNotNull", "max"] if right else [])
    )


def timeseries(
    title: str,
    description: str,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    datasource: dash.DataSourceRef = INFLUXDB,
    unit: str = "short",
    w: int = 12,
    h: int = 8,
    bars: bool = False,
    points: bool = False,
    legend_right: bool = False,
) -> ts_b.Panel:
    panel = (
        ts_b.Panel()
        .title(title)
        .description(description)
        .datasource(datasource)
        .targets(list(targets))
        .unit(unit)
        .span(w)
        .height(h)
        .legend(legend(legend_right))
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.ALWAYS if points else common.VisibilityMode.AUTO)
        .span_nulls(False)
    )
    if bars:
        panel = (
            panel.draw_style(common.GraphDrawStyle.BARS)
            .fill_opacity(80)
            .stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL))
        )
    elif points:
        panel = panel.draw_style(common.GraphDrawStyle.POINTS).point_size(8)
    return panel


def band(panel: ts_b.Panel, upper: str, lower: str) -> ts_b.Panel:
    """Shade between two series (min-max, or p50-p99), the way Grafana draws bands: ``upper`` fills down to
    ``lower``; both edges are thin dashed lines, so the series in between stands out."""
    dashed = dash.DynamicConfigValue(id_val="custom.lineStyle", value={"dash": [4, 4], "fill": "dash"})
    return panel.override_by_name(
        upper,
        [
            dash.DynamicConfigValue(id_val="custom.fillBelowTo", value=lower),
            dash.DynamicConfigValue(id_val="custom.fillOpacity", value=20),
            dashed,
        ],
    ).override_by_name(lower, [dash.DynamicConfigValue(id_val="custom.fillOpacity", value=0), dashed])


# Grafana's named colours for log levels, as its logs volume colours them.
LEVEL_COLOURS = {
    "emergency": "dark-red",
    "alert": "dark-red",
    "critical": "dark-red",
    "error": "red",
    "warn": "orange",
    "notice": "yellow",
    "info": "green",
    "debug": "blue",
    "trace": "purple",
    "unknown": "text",
}


def level_colours(panel: ts_b.Panel) -> ts_b.Panel:
    """Series named after a log level in that level's colour (error red, warn orange, ...)."""
    for level, colour in LEVEL_COLOURS.items():
        panel = panel.override_by_name(
            level, [dash.DynamicConfigValue(id_val="color", value={"fixedColor": colour, "mode": "fixed"})]
        )
    return panel


def stat(
    title: str,
    description: str,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    datasource: dash.DataSourceRef = INFLUXDB,
    unit: str = "short",
    w: int = 6,
    h: int = 4,
    calc: str = "lastNotNull",
    red_from: float | None = None,
    no_value: str | None = None,
    when_null: str | None = None,
) -> stat_b.Panel:
    """A big number. ``no_value``: the text when the queries return nothing at all (Grafana's "No data" otherwise),
    for counts whose "nothing" means 0. ``when_null``: the text when the reduced value is null or NaN."""
    steps = [dash.Threshold(value=None, color="green")]
    if red_from is not None:
        steps.append(dash.Threshold(value=red_from, color="red"))
    panel = (
        stat_b.Panel()
        .title(title)
        .description(description)
        .datasource(datasource)
        .targets(list(targets))
        .unit(unit)
        .span(w)
        .height(h)
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_b.ReduceDataOptions().calcs([calc]).values(False))
        .thresholds(dash_b.ThresholdsConfig().mode(dash.ThresholdsMode.ABSOLUTE).steps(steps))
    )
    if no_value is not None:
        panel = panel.no_value(no_value)
    if when_null is not None:
        panel = panel.mappings(
            [
                dash.SpecialValueMap(
                    options=dash.DashboardSpecialValueMapOptions(
                        match=dash.SpecialValueMatch.NULL_AND_NAN, result=dash.ValueMappingResult(text=when_null)
                    )
                )
            ]
        )
    return panel


def table(
    title: str,
    description: str,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    datasource: dash.DataSourceRef = INFLUXDB,
    w: int = 24,
    h: int = 8,
    transformations: Sequence[dash.DataTransformerConfig] = (),
) -> table_b.Panel:
    panel = (
        table_b.Panel()
        .title(title)
        .description(description)
        .datasource(datasource)
        .targets(list(targets))
        .span(w)
        .height(h)
        .cell_height(common.TableCellHeight.SM)
        .filterable(True)
    )
    for transformation in transformations:
        panel = panel.with_transformation(transformation)
    return panel


# InfluxDB answers a table-format query grouped by tags with one frame per series: merge them into one table.
MERGE = dash.DataTransformerConfig(id_val="merge", options={})


def organize(order: Sequence[str], hide: Sequence[str] = ()) -> dash.DataTransformerConfig:
    """Column order (and columns hidden) of a table."""
    return dash.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": {name: True for name in hide},
            "indexByName": {name: i for i, name in enumerate(order)},
            "renameByName": {},
        },
    )


def es_count_by(datasource: dash.DataSourceRef, lucene: str, field: str, size: int = 10) -> es_b.Dataquery:
    """Documents per time bucket and per value of a keyword field: Grafana's "Count, group by Terms, then Date
    Histogram" (the buckets nest in list order, the date histogram innermost)."""
    return (
        es_b.Dataquery()
        .ref_id("A")
        .datasource(datasource)
        .query(lucene)
        .time_field("@timestamp")
        .metrics([es_b.Count().id("1")])
        .bucket_aggs(
            [
                es_b.Terms()
                .id("2")
                .field(field)
                .settings(
                    es_b.ElasticsearchTermsSettings()
                    .size(str(size))
                    .order(TermsOrder.DESC)
                    .order_by("_count")
                    .min_doc_count("1")
                ),
                es_b.DateHistogram()
                .id("3")
                .field("@timestamp")
                .settings(es_b.ElasticsearchDateHistogramSettings().interval("auto").min_doc_count("0")),
            ]
        )
    )


def es_count(datasource: dash.DataSourceRef, lucene: str, ref: str = "A", hide: bool = False) -> es_b.Dataquery:
    """Documents per time bucket ("Count, group by Date Histogram"): a stat summing it shows the documents in the
    time range, the number the logs panel and the volume histograms count."""
    query = (
        es_b.Dataquery()
        .ref_id(ref)
        .datasource(datasource)
        .query(lucene)
        .time_field("@timestamp")
        .metrics([es_b.Count().id("1")])
        .bucket_aggs(
            [
                es_b.DateHistogram()
                .id("2")
                .field("@timestamp")
                .settings(es_b.ElasticsearchDateHistogramSettings().interval("auto").min_doc_count("0"))
            ]
        )
    )
    return query.hide(True) if hide else query


EXPRESSIONS = dash.DataSourceRef(type_val="__expr__", uid="__expr__")


def reduce_sum(ref: str, source: str) -> expr_b.TypeReduce:
    """Server-side expression: each series of ``source`` summed to one number (no mode: strict, NaN if a value
    is null or NaN)."""
    return expr_b.TypeReduce().ref_id(ref).datasource(EXPRESSIONS).expression(source).reducer("sum").hide(True)


def math_expression(ref: str, expression: str) -> expr_b.TypeMath:
    """Server-side expression: arithmetic over other queries' results (``$ref``)."""
    return expr_b.TypeMath().ref_id(ref).datasource(EXPRESSIONS).expression(expression)


# --------------------------------------------------------------------------------------------- queries

# Aggregate queries are written once, for the 10 s windows of "readings_agg"; ``with_tiers`` makes each one a
# target per retention tier when the dashboard is built (fleetwatch/retention.py).
AGG = '"readings_agg"'
WINDOW = "\"window\" = '10s'"
# The device inventory's tags ([mqtt.devices], fleetwatch/devices.py) the fleet can be filtered by. "All" is
# ".*", which also matches a device the inventory does not list (its tag is empty).
INVENTORY_TAGS = (("model", "Model"), ("owner", "Owner"))
INVENTORY = " AND ".join(f'"{tag}" =~ /^${tag}$/' for tag, _ in INVENTORY_TAGS)
# Multi-value variables (with All) in a regex: Grafana formats their value as (a|b) of escapeRegex'd values in
# panel and variable queries alike, so any tag value matches itself, whatever it contains.
SITE = '"site" =~ /^$site$/'
DEVICE = '"device" =~ /^$device$/'
METRIC = '"metric" =~ /^$metric$/'
# Alerts on log rates (and any series without these tags) have no site or device: a tag InfluxDB does not have
# compares equal to ''. The fleet's alert panels show them whatever sites and devices are selected.
SITE_OR_NONE = f"({SITE} OR \"site\" = '')"
DEVICE_OR_NONE = f"({DEVICE} OR \"device\" = '')"
# The device dashboard's single-value $device as a string literal, never in a regex: Grafana puts a single-value
# variable into a variable query unescaped, and into a panel query unescaped when it looks like a number
# ("10.0.0.7/eth0"), so a device id with ".", "+", "(" or "/" would break or widen a regex. Inside quotes it is
# itself (only a "'" or "\\" in an id would need escaping, which Grafana does not do).
ONE_DEVICE = "\"device\" = '$device'"
# The tags alerts carry besides rule/state/severity: a reading or window series' tags, or a log rate's service.
ALERT_SERIES = '"rule", "site", "device", "metric", "service"'


def last_state(where: str, columns: str = "") -> str:
    """Each alert's latest transition in the range (per rule and series; ``state`` and ``severity`` are tags, so
    they are left out of the grouping and read from the same point as ``last``)."""
    extra = f", {columns}" if columns else ""
    return (
        f'SELECT last("firing") AS "firing"{extra} FROM "alerts" WHERE {where} AND $timeFilter GROUP BY {ALERT_SERIES}'
    )


def _health_total(function: str, field: str, label: str, ref: str) -> InfluxQL:
    """A ``fleetwatch_health`` counter summed over workers: the counters are totals since each worker started, so
    the rate (or increase) is taken per series (``GROUP BY *``: worker, and process in a cluster), then summed."""
    per_second = ", 1s" if function == "non_negative_derivative" else ""
    inner = (
        f'SELECT {function}(max("{field}"){per_second}) AS "n" FROM "fleetwatch_health" WHERE $timeFilter '
        "GROUP BY time($__interval), *"
    )
    query = f'SELECT sum("n") AS "{label}" FROM ({inner}) WHERE $timeFilter GROUP BY time($__interval) fill(none)'
    return influx(query, ref, alias="$col")


def health_rate(field: str, label: str, ref: str) -> InfluxQL:
    """Per second."""
    return _health_total("non_negative_derivative", field, label, ref)


def health_increase(field: str, label: str, ref: str) -> InfluxQL:
    """Per $__interval."""
    return _health_total("non_negative_difference", field, label, ref)


def health_spread(expression: str, alias: str) -> str:
    """How much counters grew over the range, summed over workers."""
    inner = f'SELECT {expression} AS "n" FROM "fleetwatch_health" WHERE $timeFilter GROUP BY *'
    return f'SELECT sum("n") AS "{alias}" FROM ({inner})'


# ------------------------------------------------------------------------------------------ dashboards


def _base(uid: str, title: str, description: str) -> dash_b.Dashboard:
    return (
        dash_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["fleetwatch"])
        .time("now-1h", "now")
        .refresh("10s")
        .timezone("browser")
        .tooltip(dash.DashboardCursorSync.CROSSHAIR)
        .editable()
        .link(
            dash_b.DashboardLink("fleetwatch")
            .type(dash.DashboardLinkType.DASHBOARDS)
            .tags(["fleetwatch"])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
        .annotation(builtin_annotation())
    )


def fleet() -> dash_b.Dashboard:
    scope = f"{WINDOW} AND {SITE} AND {DEVICE} AND {METRIC} AND {INVENTORY}"
    dashboard = _base(
        "fleetwatch-fleet",
        "Fleet overview",
        "Which sites and devices report, their latest values and the 10 s window means per metric.",
    ).with_variable(query_variable("site", "Site", f'SHOW TAG VALUES FROM {AGG} WITH KEY = "site"'))
    for tag, label in INVENTORY_TAGS:
        dashboard = dashboard.with_variable(
            query_variable(tag, label, f'SHOW TAG VALUES FROM {AGG} WITH KEY = "{tag}" WHERE {SITE}', all_value=".*")
        )
    return (
        dashboard.with_variable(
            query_variable(
                "device", "Device", f'SHOW TAG VALUES FROM {AGG} WITH KEY = "device" WHERE {SITE} AND {INVENTORY}'
            )
        )
        .with_variable(query_variable("metric", "Metric", f'SHOW TAG VALUES FROM {AGG} WITH KEY = "metric"'))
        .annotation(
            influx_annotation(
                "Alerts firing",
                f'SELECT "summary", "rule", "severity" FROM "alerts" WHERE "state" = \'firing\' AND {SITE_OR_NONE} '
                f"AND {DEVICE_OR_NONE} AND $timeFilter",
                "summary",
                "rule",
                "red",
            )
        )
        .annotation(grafana_alert_annotations())
        .with_panel(
            stat(
                "Sites reporting",
                "Sites with at least one closed 10 s window in the time range.",
                [
                    influx(
                        f'SELECT count("reporting") FROM (SELECT last("count") AS "reporting" FROM {AGG} '
                        f'WHERE {WINDOW} AND {SITE} AND {INVENTORY} AND $timeFilter GROUP BY "site")'
                    )
                ],
                no_value="0",
            )
        )
        .with_panel(
            stat(
                "Devices reporting",
                "Devices with at least one closed 10 s window in the time range.",
                [
                    influx(
                        f'SELECT count("reporting") FROM (SELECT last("count") AS "reporting" FROM {AGG} '
                        f'WHERE {WINDOW} AND {SITE} AND {DEVICE} AND {INVENTORY} AND $timeFilter GROUP BY "device")'
                    )
                ],
                no_value="0",
            )
        )
        .with_panel(
            stat(
                "Readings aggregated",
                "Readings counted in the 10 s windows of the time range (open windows are not written yet).",
                [influx(f'SELECT sum("count") FROM {AGG} WHERE {scope} AND $timeFilter')],
                no_value="0",
            )
        )
        .with_panel(
            stat(
                "Alerts firing",
                "Alerts (rule and series) whose latest transition in the time range is firing: on the selected "
                "sites and devices, and every alert on a series without a site or device (log rates).",
                [
                    influx(
                        f'SELECT sum("firing") AS "firing" FROM ({last_state(f"{SITE_OR_NONE} AND {DEVICE_OR_NONE}")})'
                    )
                ],
                red_from=1,
                no_value="0",
            )
        )
        .with_panel(
            table(
                "Latest values",
                "Per series, the last reading of the newest closed 10 s window, with that window's mean and count.",
                [
                    influx(
                        f'SELECT last("last") AS "last value", "mean" AS "window mean", "count" AS "readings in '
                        f'window" FROM {AGG} WHERE {scope} AND $timeFilter GROUP BY "site", "device", "metric"'
                    ).table()
                ],
                w=14,
                h=9,
                # Grafana builds the tag columns from a map: without an order they change places between refreshes.
                transformations=[
                    MERGE,
                    organize(["Time", "site", "device", "metric", "last value", "window mean", "readings in window"]),
                ],
            )
        )
        .with_panel(
            timeseries(
                "Readings aggregated, by site",
                "Readings per $__interval in closed 10 s windows, stacked by site: a gap or drop is a site that "
                "stopped reporting.",
                [
                    influx(
                        f'SELECT sum("count") FROM {AGG} WHERE {scope} AND $timeFilter '
                        'GROUP BY time($__interval), "site" fill(none)',
                        alias="$tag_site",
                    )
                ],
                w=10,
                h=9,
                bars=True,
            )
        )
        .with_panel(
            timeseries(
                "$metric: 10 s window means",
                "Mean of each 10 s window per device (repeated per selected metric).",
                [
                    influx(
                        f'SELECT mean("mean") FROM {AGG} WHERE {scope} AND $timeFilter '
                        'GROUP BY time($__interval), "device" fill(none)',
                        alias="$tag_device",
                    )
                ],
                w=8,
                h=9,
            )
            .repeat("metric")
            .repeat_direction("h")
            .max_per_row(3)
        )
    )


def device() -> dash_b.Dashboard:
    scope = f"{WINDOW} AND {ONE_DEVICE} AND {METRIC}"
    spread = (
        timeseries(
            "$metric: mean with min-max band",
            "Per 10 s window: the mean, and the band between the smallest and the largest reading.",
            [
                influx(
                    f'SELECT mean("mean") AS "mean", min("min") AS "min", max("max") AS "max" FROM {AGG} '
                    f"WHERE {scope} AND $timeFilter GROUP BY time($__interval) fill(none)",
                    alias="$col",
                )
            ],
            h=8,
        )
        .repeat("metric")
        .repeat_direction("v")
    )
    quantiles = (
        timeseries(
            "$metric: quantiles p50 / p95 / p99",
            "Exact quantiles of each 10 s window (linear interpolation), shaded between p50 and p99.",
            [
                influx(
                    f'SELECT mean("p50") AS "p50", mean("p95") AS "p95", mean("p99") AS "p99" FROM {AGG} '
                    f"WHERE {scope} AND $timeFilter GROUP BY time($__interval) fill(none)",
                    alias="$col",
                )
            ],
            h=8,
        )
        .repeat("metric")
        .repeat_direction("v")
    )
    return (
        _base(
            "fleetwatch-device",
            "Device detail",
            "Every metric of one device: window means with their min-max band, and quantile bands.",
        )
        .with_variable(
            query_variable(
                "device", "Device", f'SHOW TAG VALUES FROM {AGG} WITH KEY = "device"', multi=False, include_all=False
            )
        )
        .with_variable(
            query_variable("metric", "Metric", f'SHOW TAG VALUES FROM {AGG} WITH KEY = "metric" WHERE {ONE_DEVICE}')
        )
        .annotation(
            influx_annotation(
                "Alerts on this device",
                f'SELECT "summary", "rule", "severity" FROM "alerts" WHERE {ONE_DEVICE} AND $timeFilter',
                "summary",
                "rule",
                "red",
            )
        )
        .annotation(grafana_alert_annotations())
        .with_panel(
            stat(
                "Readings aggregated",
                "Readings of this device in the closed 10 s windows of the time range.",
                [influx(f'SELECT sum("count") FROM {AGG} WHERE {scope} AND $timeFilter')],
                no_value="0",
            )
        )
        .with_panel(
            stat(
                "Latest reading",
                "The last reading of the newest closed 10 s window, per metric.",
                [
                    influx(
                        f'SELECT last("last") FROM {AGG} WHERE {scope} AND $timeFilter GROUP BY "metric"',
                        alias="$tag_metric",
                    )
                ],
                w=12,
            )
        )
        .with_panel(
            stat(
                "Alert transitions",
                "Alert transitions of this device's series in the time range (pending, firing, resolved).",
                [influx(f'SELECT count("firing") FROM "alerts" WHERE {ONE_DEVICE} AND $timeFilter')],
                red_from=1,
                no_value="0",
            )
        )
        .with_panel(band(spread, "max", "min"))
        .with_panel(band(quantiles, "p99", "p50"))
    )


def logs() -> dash_b.Dashboard:
    service = '"service" =~ /^$service$/'
    lucene = "service.name:$service"
    # log_rates' "errors": error and worse, of the normalised levels.
    errors = f"{lucene} AND log.level:(error OR critical OR alert OR emergency)"
    return (
        _base(
            "fleetwatch-logs",
            "Logs",
            "Log volume by level and by service, error rates, and the log events themselves.",
        )
        .with_variable(query_variable("service", "Service", 'SHOW TAG VALUES FROM "log_rates" WITH KEY = "service"'))
        # The counts are the log events stored in Elasticsearch in the time range: the documents the volume
        # histograms and the log lines below show. log_rates counts only closed windows, and an event whose window
        # had closed is left out of it, so its totals are lower; its panels say so.
        .with_panel(
            stat(
                "Log events",
                "Log events in Elasticsearch in the time range: the documents the volume panels and the log lines "
                "below show.",
                [es_count(ES_LOGS, lucene)],
                datasource=ES_LOGS,
                calc="sum",
                no_value="0",
            )
        )
        .with_panel(
            stat(
                "Errors",
                "Log events at level error or worse (error, critical, alert, emergency) in Elasticsearch.",
                [es_count(ES_LOGS, errors)],
                datasource=ES_LOGS,
                calc="sum",
                red_from=1,
                no_value="0",
            )
        )
        .with_panel(
            stat(
                "Error rate",
                "Errors over log events in the time range (the two numbers beside it).",
                [
                    es_count(ES_LOGS, lucene, "EVENTS", hide=True),
                    es_count(ES_LOGS, errors, "ERRORS", hide=True),
                    reduce_sum("events", "EVENTS"),
                    reduce_sum("errors", "ERRORS"),
                    math_expression("rate", "$errors / $events"),
                ],
                datasource=ES_LOGS,
                unit="percentunit",
                red_from=0.05,
                when_null="no events",
            )
        )
        .with_panel(
            stat(
                "Services logging",
                "Services with at least one closed log-rate window (log_rates) in the time range.",
                [
                    influx(
                        'SELECT count("n") FROM (SELECT last("count") AS "n" FROM "log_rates" '
                        f'WHERE {service} AND $timeFilter GROUP BY "service")'
                    )
                ],
                no_value="0",
            )
        )
        .with_panel(
            level_colours(
                timeseries(
                    "Log volume by level",
                    "Log events in Elasticsearch per $__interval, by normalised log.level (every level, as stored).",
                    [es_count_by(ES_LOGS, lucene, "log.level")],
                    datasource=ES_LOGS,
                    bars=True,
                )
            )
        )
        .with_panel(
            timeseries(
                "Log volume by service",
                "Log events in Elasticsearch per $__interval, stacked by service.name.",
                [es_count_by(ES_LOGS, lucene, "service.name", size=100)],
                datasource=ES_LOGS,
                bars=True,
            )
        )
        .with_panel(
            timeseries(
                "Error rate by service (closed log-rate windows)",
                "errors / count of each closed log-rate window (log_rates), the rate log-rate alert rules compare.",
                [
                    influx(
                        f'SELECT mean("error_rate") FROM "log_rates" WHERE {service} AND $timeFilter '
                        'GROUP BY time($__interval), "service" fill(none)',
                        alias="$tag_service",
                    )
                ],
                unit="percentunit",
            )
        )
        .with_panel(
            level_colours(
                timeseries(
                    "Closed log-rate windows: info, warn, error",
                    "The per-level counts of log_rates per $__interval, what log-rate alert rules see: only windows "
                    "that closed, without events that arrived after their window closed, so below the Elasticsearch "
                    "counts (a field exists once a level was seen).",
                    [
                        influx(
                            'SELECT sum("info") AS "info", sum("warn") AS "warn", sum("error") AS "error" '
                            f'FROM "log_rates" WHERE {service} AND $timeFilter GROUP BY time($__interval) fill(none)',
                            alias="$col",
                        )
                    ],
                    bars=True,
                )
            )
        )
        .with_panel(
            logs_b.Panel()
            .title("Newest log events")
            .description("The newest 500 log events of the selected services (Elasticsearch).")
            .datasource(ES_LOGS)
            .targets(
                [
                    es_b.Dataquery()
                    .ref_id("A")
                    .datasource(ES_LOGS)
                    .query(lucene)
                    .time_field("@timestamp")
                    .metrics([es_b.Logs().id("1").settings(es_b.ElasticsearchLogsSettings().limit("500"))])
                    .bucket_aggs([])
                ]
            )
            .span(24)
            .height(14)
            .show_time(True)
            .wrap_log_message(True)
            .enable_log_details(True)
            .sort_order(common.LogsSortOrder.DESCENDING)
            .dedup_strategy(common.LogsDedupStrategy.NONE)
        )
    )


def alerts() -> dash_b.Dashboard:
    rule = '"rule" =~ /^$rule$/'
    lucene = "rule:$rule"
    columns = '"severity", "value", "threshold", "summary"'
    return (
        _base(
            "fleetwatch-alerts",
            "Alerts",
            "Alerts evaluated in the stream: what fires now, the transitions, and the full history.",
        )
        .with_variable(query_variable("rule", "Rule", 'SHOW TAG VALUES FROM "alerts" WITH KEY = "rule"'))
        .with_variable(query_variable("metric", "Metric", f'SHOW TAG VALUES FROM {AGG} WITH KEY = "metric"'))
        .annotation(
            es_annotation(
                "Alert transitions",
                ES_ALERTS,
                f"{lucene} AND (state:firing OR state:resolved)",
                "summary",
                "rule",
                "red",
            )
        )
        .annotation(grafana_alert_annotations())
        .with_panel(
            stat(
                "Firing now",
                "Alerts (rule and series) whose latest transition in the time range is firing.",
                [influx(f'SELECT sum("firing") AS "firing" FROM ({last_state(rule)})')],
                w=8,
                red_from=1,
                no_value="0",
            )
        )
        .with_panel(
            stat(
                "Transitions",
                "Alert transitions in the time range: pending, firing, resolved, and re-notifications.",
                [influx(f'SELECT count("firing") FROM "alerts" WHERE {rule} AND $timeFilter')],
                w=8,
                no_value="0",
            )
        )
        .with_panel(
            stat(
                "Critical transitions",
                "Transitions at severity critical.",
                [
                    influx(
                        f'SELECT count("firing") FROM "alerts" WHERE {rule} AND "severity" = \'critical\' '
                        "AND $timeFilter"
                    )
                ],
                w=8,
                red_from=1,
                no_value="0",
            )
        )
        .with_panel(
            table(
                "Active alerts",
                "Per rule and series, the latest transition when it is firing: severity, value, threshold, summary.",
                [
                    influx(
                        f'SELECT "firing", {columns} FROM ({last_state(rule, columns)}) WHERE "firing" = 1 '
                        f"GROUP BY {ALERT_SERIES}"
                    ).table()
                ],
                transformations=[
                    MERGE,
                    organize(
                        [
                            "Time",
                            "rule",
                            "severity",
                            "site",
                            "device",
                            "metric",
                            "service",
                            "value",
                            "threshold",
                            "summary",
                        ],
                        hide=["firing"],
                    ),
                ],
            )
        )
        .with_panel(
            timeseries(
                "Transitions by state",
                "Alert history documents (Elasticsearch) per $__interval, by state.",
                [es_count_by(ES_ALERTS, lucene, "state")],
                datasource=ES_ALERTS,
                bars=True,
            )
        )
        .with_panel(
            timeseries(
                "Values that caused transitions",
                "The value each transition carries, by rule.",
                [
                    influx(
                        f'SELECT max("value") FROM "alerts" WHERE {rule} AND $timeFilter '
                        'GROUP BY time($__interval), "rule" fill(none)',
                        alias="$tag_rule",
                    )
                ],
                points=True,
            )
        )
        .with_panel(
            timeseries(
                "$metric: largest reading of each 10 s window",
                "Window maxima per device, with the alert transitions as annotations (repeated per metric).",
                [
                    influx(
                        f'SELECT max("max") FROM {AGG} WHERE {WINDOW} AND {METRIC} AND $timeFilter '
                        'GROUP BY time($__interval), "device" fill(none)',
                        alias="$tag_device",
                    )
                ],
                w=8,
            )
            .repeat("metric")
            .repeat_direction("h")
            .max_per_row(3)
        )
        .with_panel(
            table(
                "History",
                "Every alert transition (Elasticsearch alert history), newest first.",
                [
                    es_b.Dataquery()
                    .ref_id("A")
                    .datasource(ES_ALERTS)
                    .query(lucene)
                    .time_field("@timestamp")
                    .metrics([es_b.RawData().id("1").settings(es_b.ElasticsearchRawDataSettings().size("500"))])
                    .bucket_aggs([])
                ],
                datasource=ES_ALERTS,
                h=10,
                transformations=[
                    organize(
                        [
                            "@timestamp",
                            "rule",
                            "state",
                            "severity",
                            "series",
                            "value",
                            "threshold",
                            "summary",
                            "started_at",
                        ],
                        hide=["_id", "_index", "_type", "highlight", "sort", "notification_id", "renotify"],
                    )
                ],
            )
        )
    )


def health() -> dash_b.Dashboard:
    per_worker = "GROUP BY time($__interval), * fill(none)"
    return (
        _base(
            "fleetwatch-health",
            "Pipeline health",
            "fleetwatch's own counters (fleetwatch_health, one series per worker): throughput, lag, late items, "
            "dead letters, retries and queues.",
        )
        .with_panel(
            stat(
                "Workers reporting",
                "Workers that wrote health points in the time range.",
                [
                    influx(
                        'SELECT count("up") FROM (SELECT last("messages_in") AS "up" FROM "fleetwatch_health" '
                        "WHERE $timeFilter GROUP BY *)"
                    )
                ],
                no_value="0",
            )
        )
        .with_panel(
            stat(
                "Lag",
                "Wall time minus the newest event time processed, latest, worst worker.",
                [
                    influx(
                        'SELECT max("lag") FROM (SELECT last("lag_seconds") AS "lag" FROM "fleetwatch_health" '
                        "WHERE $timeFilter GROUP BY *)"
                    )
                ],
                unit="s",
                red_from=30,
            )
        )
        .with_panel(
            stat(
                "Dead letters",
                "Dead letters in the time range, all workers.",
                [influx(health_spread('spread("dead_letters")', "dead letters"))],
                red_from=1,
            )
        )
        .with_panel(
            stat(
                "Sink retries",
                "InfluxDB and Elasticsearch write retries in the time range.",
                [influx(health_spread('spread("sink_retries") + spread("es_retries")', "retries"))],
                red_from=1,
            )
        )
        .with_panel(
            timeseries(
                "Throughput",
                "Per second, summed over workers (non-negative derivative of the counters).",
                [
                    health_rate("messages_in", "MQTT messages in", "A"),
                    health_rate("readings", "readings", "B"),
                    health_rate("points_written", "InfluxDB points", "C"),
                    health_rate("log_events", "log events", "D"),
                    health_rate("docs_indexed", "documents indexed", "E"),
                ],
                unit="cps",
                legend_right=True,
            )
        )
        .with_panel(
            timeseries(
                "Lag",
                "How far behind live each worker is: wall time minus the newest event time processed.",
                [
                    influx(
                        f'SELECT max("lag_seconds") FROM "fleetwatch_health" WHERE $timeFilter {per_worker}',
                        alias="worker $tag_worker",
                    )
                ],
                unit="s",
            )
        )
        .with_panel(
            timeseries(
                "Late items",
                "Readings and log events whose window had already closed, per $__interval (stored raw / in "
                "Elasticsearch, not in the aggregates).",
                [
                    health_increase("late_readings", "late readings", "A"),
                    health_increase("late_log_events", "late log events", "B"),
                ],
                w=8,
                bars=True,
            )
        )
        .with_panel(
            timeseries(
                "Dead letters and rejects",
                "Per $__interval: dead letters, parse errors, log lines that failed parsing, documents refused.",
                [
                    health_increase("dead_letters", "dead letters", "A"),
                    health_increase("parse_errors", "parse errors", "B"),
                    health_increase("log_parse_failures", "log parse failures", "C"),
                    health_increase("es_rejected", "refused by Elasticsearch", "D"),
                ],
                w=8,
                bars=True,
            )
        )
        .with_panel(
            timeseries(
                "Dead letters by reason",
                "The dead-letter index (Elasticsearch) per $__interval, by reason.",
                [es_count_by(ES_DEAD_LETTERS, "", "reason", size=20)],
                datasource=ES_DEAD_LETTERS,
                w=8,
                bars=True,
            )
        )
        .with_panel(
            timeseries(
                "Sink retries",
                "Write retries per $__interval (the sinks retry with capped backoff; nothing is dropped).",
                [
                    health_increase("sink_retries", "InfluxDB", "A"),
                    health_increase("es_retries", "Elasticsearch", "B"),
                ],
                bars=True,
            )
        )
        .with_panel(
            timeseries(
                "Queue depths",
                "Items waiting in each sink's buffer, per worker; a full buffer applies backpressure.",
                [
                    influx(
                        'SELECT max("sink_queue_depth") AS "InfluxDB", max("es_queue_depth") AS "Elasticsearch" '
                        f'FROM "fleetwatch_health" WHERE $timeFilter {per_worker}',
                        alias="$col (worker $tag_worker)",
                    )
                ],
            )
        )
    )


# name (file stem) -> builder
DASHBOARDS: dict[str, Callable[[], dash_b.Dashboard]] = {
    "fleet": fleet,
    "device": device,
    "logs": logs,
    "alerts": alerts,
    "health": health,
}

# ---------------------------------------------------------------------------------------------- output


def flow_layout(panels: Sequence[dash.Panel | dash.RowPanel]) -> None:
    """Place panels left to right on Grafana's 24-column grid, wrapping to a new row when one does not fit (the
    SDK's own placement does not wrap). A horizontally repeated panel gets a row of its own: its copies fill it."""
    x = y = row_height = 0
    for panel in panels:
        pos = panel.grid_pos
        assert pos is not None
        repeated = isinstance(panel, dash.Panel) and bool(panel.repeat) and panel.repeat_direction != "v"
        if x + pos.w > GRID_COLUMNS or (repeated and x > 0):
            x, y, row_height = 0, y + row_height, 0
        pos.x, pos.y = x, y
        x += GRID_COLUMNS if repeated else pos.w
        row_height = max(row_height, pos.h)
        if x >= GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0


# The retention tiers the dashboards read: fleetwatch's default [retention] (7 d raw, 10 s windows 30 d, 1 min
# windows 400 d). Each measurement is read from its tier's policy ("agg_1m"."readings_agg").
PLAN = TierPlan.from_config(Config())
_FIXED_TIER = re.compile(r'\bFROM\s+"(alerts|log_rates|fleetwatch_health|fleetwatch_process)"')
_AGG_FROM = f"FROM {AGG}"


def tier_conditions(tiers: Sequence[Tier], reader: int, band: int) -> str:
    """When tier ``reader`` serves the panels whose ``$__interval`` falls in tier ``band``'s band (at least its
    window, less than the next one's): for the times it keeps and no finer tier of the band keeps. A tier is
    used for intervals at least its window long, so a long range reads the coarse tier; and a range older than
    a fine tier keeps (a short range 60 days ago) reads the next tier that still holds it. Exactly one target
    answers for any interval and instant, so the targets never draw the same point twice."""
    length_ms = [int(window_length(t.window or "0s").total_seconds() * 1000) for t in tiers]
    keeps = [t.influx_duration for t in tiers]
    conditions = []
    if band > 0:
        conditions.append(f"$__interval_ms >= {length_ms[band]}")
    if band < len(tiers) - 1:
        conditions.append(f"$__interval_ms < {length_ms[band + 1]}")
    if reader < len(tiers) - 1:
        conditions.append(f"time >= now() - {keeps[reader]}")
    if reader > band:
        conditions.append(f"time < now() - {keeps[reader - 1]}")
    return " AND ".join(conditions)


def _tier_targets(target: dict[str, Any]) -> list[dict[str, Any]]:
    """An aggregate target (10 s windows) as one target per (tier, interval band) it may serve."""
    query = str(target["query"])
    assert WINDOW in query and "$timeFilter" in query, f"an aggregate query names the 10 s window: {query}"
    tiers = PLAN.window_tiers()
    keeps = [t.duration for t in tiers]
    assert keeps == sorted(keeps), "a coarser window tier must keep at least as long as a finer one"
    out = []
    for band in range(len(tiers)):
        for reader in range(band, len(tiers)):
            tier = tiers[reader]
            text = query.replace(_AGG_FROM, f"FROM {qualified(PLAN, 'readings_agg', tier=tier.name)}")
            text = text.replace(WINDOW, f"\"window\" = '{tier.window}'")
            text = text.replace("$timeFilter", f"$timeFilter AND {tier_conditions(tiers, reader, band)}")
            ref = target["refId"] if reader == band == 0 else f"{target['refId']}_{tier.name}"
            if reader > band:
                ref += f"_for_{tiers[band].name}"
            out.append({**target, "query": text, "refId": ref})
    return out


def _fixed_tiers(query: str) -> str:
    """Measurements with one tier, read from it; aggregates in variables and annotations from the longest."""
    query = _FIXED_TIER.sub(lambda m: f"FROM {qualified(PLAN, m.group(1))}", query)
    longest = PLAN.window_tiers()[-1].name
    return query.replace(_AGG_FROM, f"FROM {qualified(PLAN, 'readings_agg', tier=longest)}")


def with_tiers(data: dict[str, Any]) -> dict[str, Any]:
    """Every InfluxQL query of a built dashboard reads its retention tier: aggregate panel targets become one
    target per tier (``tier_conditions``), variables and annotations read the tier that keeps longest, and the
    other measurements their own."""
    for spec in data.get("templating", {}).get("list", []):
        if isinstance(spec.get("query"), str):
            spec["query"] = _fixed_tiers(spec["query"])
        if isinstance(spec.get("definition"), str):
            spec["definition"] = _fixed_tiers(spec["definition"])
    for spec in data.get("annotations", {}).get("list", []):
        target = spec.get("target")
        if isinstance(target, dict) and isinstance(target.get("query"), str):
            target["query"] = _fixed_tiers(target["query"])
    panels = list(data.get("panels", []))
    for panel in panels:
        panels.extend(panel.get("panels", []))
        targets: list[dict[str, Any]] = []
        for target in panel.get("targets", []):
            query = target.get("query")
            if isinstance(query, str) and target.get("rawQuery") and _AGG_FROM in query:
                targets += _tier_targets(target)
            elif isinstance(query, str) and target.get("rawQuery"):
                targets.append({**target, "query": _fixed_tiers(query)})
            else:
                targets.append(target)
        if "targets" in panel:
            panel["targets"] = targets
    return data


def build(name: str) -> dict[str, Any]:
    """One dashboard as Grafana JSON (a plain dict)."""
    model = DASHBOARDS[name]().build()
    flow_layout(model.panels or [])
    # Panel ids, in layout order: Grafana needs them unique per dashboard, and fixed ids keep links stable.
    for i, panel in enumerate(model.panels or [], start=1):
        panel.id_val = i
    data: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return with_tiers(data)


def render(name: str) -> str:
    """The file content: sorted keys and fixed formatting, so the same code gives the same bytes."""
    return json.dumps(build(name), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def path_of(name: str, directory: Path = DASHBOARDS_DIR) -> Path:
    return directory / f"{name}.json"


def differing(directory: Path = DASHBOARDS_DIR) -> list[Path]:
    """The dashboard files whose content is not what the code builds (missing files included)."""
    out = []
    for name in DASHBOARDS:
        path = path_of(name, directory)
        if not path.exists() or path.read_text(encoding="utf-8") != render(name):
            out.append(path)
    return out


def write_all(directory: Path = DASHBOARDS_DIR) -> list[Path]:
    """Write every dashboard; returns the files that changed."""
    changed = differing(directory)
    for path in changed:
        path.write_text(render(path.stem), encoding="utf-8")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    parser.add_argument("--dir", type=Path, default=DASHBOARDS_DIR, help="where the JSON files are")
    args = parser.parse_args(argv)
    if args.check:
        stale = differing(args.dir)
        for path in stale:
            print(f"differs from the generated dashboard: {path}", file=sys.stderr)
        if stale:
            print("run: python -m dashboards.generate", file=sys.stderr)
        return 1 if stale else 0
    for path in write_all(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
