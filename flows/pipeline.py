"""The dataflow, wired. Readings:

    MQTT source ──► parse ──┬─► readings ──► shard ──► windows ──┬─► aggregates ─┐
      (batches)             │                 ▲                  └─► late ───────┼─► InfluxDB sink
                            ├─► raw readings (write_raw) ─────────────────────────┤
                            ├─► Sparkplug B messages ──► edge nodes ──┬─► readings (to shard, above)
                            │     (by edge node)    (aliases, seq,    ├─► state, raw ───┘
                            │                         online state)   └─► dead letters ─┐
                            └─► dead letters ─────────────────────────────────────────┴─► dead-letter store

The Sparkplug B step exists only when a subscription has format "sparkplug_b".

Logs:

    file tail ───┐
                 ├─► parse ──► log events ──┬──────────────────────────────────────────► Elasticsearch sink
    syslog ──────┘                          └─► by service ──► rate windows ──┬─► log rates ─► Elasticsearch
                                                                             └─► log rates ─► InfluxDB sink

Alerts (when rules are configured):

    readings by shard ───────┐
    window results by shard ─┼─► observations ──► alert state machines ──┬─► notifiers (log, MQTT, webhooks)
    log rates by service ────┘   (rules' series)                         ├─► alerts ─► InfluxDB sink
                                                                         └─► alert history ─► Elasticsearch

The dead-letter store is the Elasticsearch dead-letter index (through the same sink, so dead letters are
stored before their epoch commits), or the local dead-letter file when Elasticsearch is disabled.

Every stream item is a batch (a list), never a single record: per-item overhead is paid per batch.
"""

from __future__ import annotations

import functools
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source

from collectors.logs.parsers import LogParser
from collectors.logs.tail import FileTailSource
from collectors.mqtt.parse import MessageBatch, MQTTParser, ParsedBatch
from collectors.mqtt.source import MQTTSource
from collectors.syslog.source import SyslogSource
from fleetwatch.config import Config, FileInputConfig, SyslogInputConfig
from fleetwatch.record import DeadLetter, LogEvent, LogLine, LogRate, Reading
from fleetwatch.retention import plan_or_none
from flows import health, schema
from flows.alerts.engine import (
    AlertInput,
    AlertLogic,
    AlertSnapshot,
    WatchedAggregates,
    WatchedReadings,
    observations_from_log_rates,
    watched_readings,
)
from flows.alerts.notify import alert_line
from flows.alerts.rules import RuleMatcher, load_rules
from flows.alerts.sink import AlertNotifySink
from flows.log_rates import LogRateLogic, ServiceLimits
from flows.sinks.buffer import saturated
from flows.sinks.dead_letters import DeadLetterFile, DeadLetterSink
from flows.sinks.elasticsearch import ElasticsearchSink, ElasticWriterThread, Record
from flows.sinks.es_retention import kind_retention
from flows.sinks.influxdb import AfterCommitLines, InfluxDBSink, LineWriter, make_writer
from flows.sparkplug import SparkplugLogic, SparkplugResult
from flows.windows import WindowLogic, WindowResult, WindowSnapshot, WindowSpec

FLOW_ID = "fleetwatch"
# The windows step, whose snapshots are markers into the window state log (flows.window_log).
WINDOWS_STEP_ID = f"{FLOW_ID}.windows"
# The alerts step, whose snapshots at fleet scale are markers into the alert state log.
ALERTS_STEP_ID = f"{FLOW_ID}.alerts"
# The InfluxDB sink, whose snapshots with recovery on are markers into its log of pending lines.
INFLUXDB_STEP_ID = f"{FLOW_ID}.influxdb"
# The Elasticsearch sink, whose snapshots with recovery on are markers into its log of pending documents.
ELASTICSEARCH_STEP_ID = f"{FLOW_ID}.elasticsearch"


def window_specs(cfg: Config) -> list[WindowSpec]:
    specs = [WindowSpec.tumbling(length) for length in cfg.windows.tumbling]
    specs += [WindowSpec.sliding(s.length, s.offset) for s in cfg.windows.sliding]
    return specs


class Sharder:
    """Splits a batch of readings by shard of series, so each series always meets the same window state
    whatever worker read it. The shard of a series is crc32-based (stable across processes, unlike
    ``hash``) and cached."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._cache: dict[str, str] = {}

    def shard_of(self, series: str) -> str:
        shard = self._cache.get(series)
        if shard is None:
            if len(self._cache) > 1_000_000:
                self._cache.clear()
            shard = self._cache[series] = str(zlib.crc32(series.encode()) % self.shards)
        return shard

    def split(self, readings: list[Reading]) -> list[tuple[str, list[Reading]]]:
        if self.shards == 1:
            return [("0", readings)] if readings else []
        parts: dict[str, list[Reading]] = {}
        cache = self._cache
        for reading in readings:
            shard = cache.get(reading.series) or self.shard_of(reading.series)
            part = parts.get(shard)
            if part is None:
                parts[shard] = [reading]
            else:
                part.append(reading)
        return list(parts.items())


@dataclass
class FlowOptions:
    total_workers: int = 1
    recovery: bool = False
    # Tests inject their own source and clocks; production uses MQTT and wall time.
    source: Source[MessageBatch] | None = None
    window_clock: Callable[[], int] | None = None
    writer_factory: Callable[..., LineWriter] = make_writer
    # This process's index in a cluster (alert notifications keep one journal per process).
    process_id: int | None = None


@dataclass
class _AlertInputs:
    """The streams alert rules watch: raw readings and window results by shard, log rates by service."""

    readings: Stream[tuple[str, list[Reading]]] | None = None
    windows: Stream[tuple[str, WindowResult]] | None = None
    log_rates: Stream[tuple[str, list[LogRate]]] | None = None
    # Whether some rule watches windows: only then does the close of a window written early give its aggregate.
    window_rules: bool = False


def build_flow(cfg: Config, options: FlowOptions | None = None) -> Dataflow:
    options = options or FlowOptions()
    flow = Dataflow(FLOW_ID)
    dead_file = DeadLetterFile(Path(cfg.dead_letters.path))
    influx_streams: list[Stream[tuple[str, list[str]]]] = []
    es_streams: list[Stream[tuple[str, list[Record]]]] = []
    dead_streams: list[Stream[list[DeadLetter]]] = []
    rules = load_rules(cfg.alerts)
    matcher = RuleMatcher(rules) if rules else None
    watched = _AlertInputs(window_rules=matcher is not None and "window" in matcher.targets)

    if cfg.mqtt.subscriptions or options.source is not None:
        lines, dead = _readings(flow, cfg, options, watched)
        influx_streams.append(lines)
        dead_streams.append(dead)
    if cfg.logs.files or cfg.logs.syslog:
        rate_lines, records = _logs(flow, cfg, options, watched)
        influx_streams.append(rate_lines)
        es_streams.append(records)
    if matcher is not None:
        alert_lines, alert_records = _alerts(flow, cfg, options, watched, matcher)
        influx_streams.append(alert_lines)
        es_streams.append(alert_records)

    # What a store refuses later (InfluxDB answers 400) is a dead letter too; it reaches the dead-letter
    # store from the writer thread, outside the dataflow.
    on_rejected: Callable[[list[DeadLetter]], None] = dead_file.write
    if cfg.elasticsearch.enabled:
        retention = kind_retention(cfg)
        dead_letter_writer = ElasticWriterThread(
            cfg.elasticsearch, dead_file.write, "es-dead-letters", retention=retention
        )
        on_rejected = lambda letters: dead_letter_writer.put(list[Record](letters))  # noqa: E731
        for i, dead in enumerate(dead_streams):
            es_streams.append(op.map(f"dead_letters_{i}", dead, lambda d: ("dead", list[Record](d))))
        if es_streams:
            records = es_streams[0] if len(es_streams) == 1 else op.merge("es_records", *es_streams)
            sink = ElasticsearchSink(
                cfg.elasticsearch,
                dead_file.write,
                partitions=options.total_workers,
                retention=retention,
                recovery_dir=cfg.recovery.dir if options.recovery else None,
            )
            op.output("elasticsearch", records, sink)
    else:
        for i, dead in enumerate(dead_streams):
            op.output(f"dead_letter_file_{i}", dead, DeadLetterSink(dead_file))

    if cfg.influxdb.enabled and influx_streams:
        lines = influx_streams[0] if len(influx_streams) == 1 else op.merge("influx_lines", *influx_streams)
        influx = InfluxDBSink(
            cfg.influxdb,
            on_rejected,
            options.writer_factory,
            partitions=options.total_workers,
            plan=plan_or_none(cfg),
            recovery_dir=cfg.recovery.dir if options.recovery else None,
        )
        op.output("influxdb", lines, influx)
    return flow


def _readings(
    flow: Dataflow, cfg: Config, options: FlowOptions, watched: _AlertInputs
) -> tuple[Stream[tuple[str, list[str]]], Stream[list[DeadLetter]]]:
    """MQTT readings to keyed InfluxDB lines, and their dead letters."""
    parser = MQTTParser(cfg.mqtt, cfg.windows)
    source = options.source or MQTTSource(
        cfg.mqtt,
        options.total_workers,
        recovery_dir=cfg.recovery.dir if options.recovery else None,
        saturated=saturated,
    )
    batches = op.input("mqtt", flow, source)

    def parse(batch: MessageBatch) -> ParsedBatch:
        parsed = parser.parse(batch)
        stats = health.counters()
        stats.messages_in += parsed.messages
        stats.readings += len(parsed.readings)
        if parsed.dead_letters:
            stats.parse_errors += len(parsed.dead_letters)
            stats.add_dead([d.reason for d in parsed.dead_letters])
        if parsed.unknown_devices:
            stats.unknown_devices += parsed.unknown_devices
        if parsed.sparkplug_ignored:
            stats.sparkplug_messages_ignored += parsed.sparkplug_ignored
        if parsed.empty_payloads:
            stats.mqtt_empty_payloads += parsed.empty_payloads
        if parsed.readings:
            stats.lag_seconds = max(0.0, (time.time_ns() - parsed.readings[-1].ts_ns) / 1e9)
        return parsed

    parsed = op.map("parse", batches, parse)
    dead = op.filter_map("dead_letters", parsed, lambda p: p.dead_letters or None)

    # More shards than workers keeps the load even; one shard when there is one worker.
    sharder = Sharder(1 if options.total_workers == 1 else options.total_workers * 8)
    keyed = op.flat_map("shard", parsed, lambda p: sharder.split(p.readings))
    raw_lines = op.flat_map("raw_lines", parsed, _raw_lines)
    if cfg.mqtt.sparkplug_subscriptions():
        sparkplug = _sparkplug(cfg, parsed)
        # Sparkplug readings join the others by shard; their online state goes to InfluxDB raw and to the
        # alert rules, not to the windows.
        keyed = op.merge(
            "readings_by_shard", keyed, op.flat_map("sparkplug_shard", sparkplug, lambda r: sharder.split(r.readings))
        )
        state = op.flat_map("sparkplug_state_shard", sparkplug, lambda r: sharder.split(r.state))
        watched_readings = op.merge("watched_readings", keyed, state)
        raw_lines = op.merge(
            "raw_and_state_lines",
            raw_lines,
            op.filter_map(
                "sparkplug_raw_lines",
                sparkplug,
                # Some carry their receive time (a death; a metric without a timestamp): written after the commit,
                # as are the few others with them.
                lambda r: (
                    ("raw", AfterCommitLines(schema.raw_line(x) for x in r.raw + r.state)) if r.raw or r.state else None
                ),
            ),
        )
        dead = op.merge(
            "all_dead_letters", dead, op.filter_map("sparkplug_dead", sparkplug, lambda r: r.dead_letters or None)
        )
    else:
        watched_readings = keyed
    specs = window_specs(cfg)

    # With recovery on, the window state goes to its own change log beside Bytewax's partitions, and snapshots
    # only refer to it (flows.window_log): what an epoch writes follows the readings, not the series held.
    log_dir = cfg.recovery.dir if options.recovery else None

    # Each shard holds its share of the series limit.
    max_series = cfg.windows.max_series
    shard_max_series = -(-max_series // sharder.shards)

    def build_windows(resume: WindowSnapshot | bytes | None) -> WindowLogic:
        return WindowLogic(
            specs,
            cfg.windows.allowed_lateness,
            cfg.windows.quantiles,
            resume,
            clock=options.window_clock,
            recovery_dir=log_dir,
            step_id=WINDOWS_STEP_ID,
            max_series=shard_max_series,
            format_line=schema.aggregate_formatter(cfg.windows.statistics),
            write_early=cfg.windows.write_early,
            closed_written=watched.window_rules,
        )

    windowed = op.stateful_batch("windows", keyed, build_windows)
    watched.readings, watched.windows = watched_readings, windowed

    def refused_series(item: tuple[str, WindowResult]) -> list[DeadLetter] | None:
        refused = item[1].refused
        if not refused:
            return None
        health.counters().add_dead(["series_limit"] * len(refused))
        detail = (
            f"windows.max_series ({max_series}) reached: a reading of a new series is refused until silent series "
            "are forgotten (an hour after their last window closed)"
        )
        # The reading as the raw line it would have been (the payload is not kept past parsing), stamped with
        # its event time, so that a replay gives the same dead letter.
        return [
            DeadLetter("series_limit", f"series:{r.series}", schema.raw_line(r).encode(), r.ts_ns, detail)
            for r in refused
        ]

    dead = op.merge("dead_letters_and_refused", dead, op.filter_map("series_limit", windowed, refused_series))

    def to_lines(result: WindowResult) -> list[str] | None:
        health.counters().late_readings += len(result.late)  # (the window step counts its closes)
        lines = list(result.lines)  # (the windows' lines, formatted by the window step: see build_windows)
        lines += [schema.late_line(r) for r in result.late]
        return lines or None

    # Lines stay keyed (by shard; raw readings by "raw") so the stateful InfluxDB sink can partition them.
    window_lines = op.filter_map_value("window_lines", windowed, to_lines)
    return op.merge("reading_lines", window_lines, raw_lines), dead


def _raw_lines(parsed: ParsedBatch) -> list[tuple[str, list[str]]]:
    """The raw lines of a batch's write_raw readings, keyed "raw" for the InfluxDB sink. A reading stamped with its
    message's receive time (the payload had no time) is in ``AfterCommitLines``, written once its epoch commits:
    its messages' receive times are ``received_ns`` onwards, a nanosecond apart (``MQTTParser.parse``). So are
    those whose time counts from the receive time (``ParsedBatch.raw_from_receipt``)."""
    if not parsed.raw and not parsed.raw_from_receipt:
        return []
    first, end = parsed.received_ns, parsed.received_ns + parsed.messages
    stamped: list[str] = []
    received: list[str] = [schema.raw_line(reading) for reading in parsed.raw_from_receipt or ()]
    for reading in parsed.raw:
        (received if first <= reading.ts_ns < end else stamped).append(schema.raw_line(reading))
    out: list[tuple[str, list[str]]] = []
    if stamped:
        out.append(("raw", stamped))
    if received:
        out.append(("raw", AfterCommitLines(received)))
    return out


def _sparkplug(cfg: Config, parsed: Stream[ParsedBatch]) -> Stream[SparkplugResult]:
    """Sparkplug B messages through the stateful step of their edge node (flows.sparkplug)."""
    max_future_ns = int(cfg.windows.max_future_skew.total_seconds() * 1e9)
    max_age_ns = int(cfg.windows.max_age.total_seconds() * 1e9)

    def build(resume: bytes | None) -> SparkplugLogic:
        return SparkplugLogic(resume, max_future_ns, max_age_ns)

    nodes = op.flat_map("sparkplug_nodes", parsed, lambda p: p.sparkplug or [])
    results = op.stateful_batch("sparkplug", nodes, build)
    return op.map("sparkplug_results", results, lambda kv: kv[1])


def _logs(
    flow: Dataflow, cfg: Config, options: FlowOptions, watched: _AlertInputs
) -> tuple[Stream[tuple[str, list[str]]], Stream[tuple[str, list[Record]]]]:
    """Log files and syslog to Elasticsearch documents, and log rates to InfluxDB lines."""
    host_name = cfg.logs.host_name or socket.gethostname()
    skew_ns = int(cfg.logs.max_future_skew.total_seconds() * 1e9)
    inputs_cfg: list[FileInputConfig | SyslogInputConfig] = [*cfg.logs.files, *cfg.logs.syslog]
    parsers = {i.name: LogParser(i, host_name, skew_ns) for i in inputs_cfg}
    inputs: list[Stream[list[LogLine]]] = []
    if cfg.logs.files:
        inputs.append(op.input("log_files", flow, FileTailSource(cfg.logs.files, host_name, saturated=saturated)))
    if cfg.logs.syslog:
        inputs.append(op.input("syslog", flow, SyslogSource(cfg.logs.syslog)))
    lines = inputs[0] if len(inputs) == 1 else op.merge("log_lines", *inputs)

    def parse(batch: list[LogLine]) -> list[LogEvent] | None:
        events = [parsers[line.input_name].parse(line) for line in batch]
        stats = health.counters()
        stats.log_events += len(events)
        failures = sum(parser.take_failures() for parser in parsers.values())
        if failures:
            stats.log_parse_failures += failures
        return events or None

    events = op.filter_map("parse_logs", lines, parse)

    def by_service(batch: list[LogEvent]) -> list[tuple[str, list[LogEvent]]]:
        parts: dict[str, list[LogEvent]] = {}
        for event in batch:
            parts.setdefault(event.service, []).append(event)
        return list(parts.items())

    # One per process: the cap on services holding log-rate state is shared by every worker's logics.
    limits = ServiceLimits(cfg.logs.rate_max_services, cfg.logs.rate_idle_after)

    def build_rates(resume: Any) -> LogRateLogic:
        return LogRateLogic(
            cfg.logs.rate_window, cfg.logs.allowed_lateness, resume, clock=options.window_clock, limits=limits
        )

    rates = op.stateful_batch("log_rates", op.flat_map("by_service", events, by_service), build_rates)
    watched.log_rates = rates
    rate_lines = op.map_value("log_rate_lines", rates, lambda batch: [schema.log_rate_line(r) for r in batch])

    # A batch's documents go to one Elasticsearch partition, picked by its first id: spread, no per-item cost.
    docs = op.map("log_docs", events, lambda batch: (batch[0].doc_id[:4], list[Record](batch)))
    rate_docs = op.map("log_rate_docs", rates, lambda kv: (kv[0], list[Record](kv[1])))
    return rate_lines, op.merge("log_records", docs, rate_docs)


def _alerts(
    flow: Dataflow, cfg: Config, options: FlowOptions, watched: _AlertInputs, matcher: RuleMatcher
) -> tuple[Stream[tuple[str, list[str]]], Stream[tuple[str, list[Record]]]]:
    """Alert rules on what the rules watch; transitions to the notifiers, InfluxDB and Elasticsearch."""
    observed: list[Stream[tuple[str, AlertInput]]] = []
    # Readings and windows stay keyed by shard, so a series always meets the same alert state.
    if watched.readings is not None and "reading" in matcher.targets:
        only_watched: Callable[[list[Reading]], WatchedReadings | None]
        if options.total_workers == 1:
            # Nothing to spare between workers: the alert step's own lookup of each series skips the readings
            # no rule watches, and a lookup here would be a second one.
            only_watched = WatchedReadings
        else:
            # The readings go to the alert step's worker (the windows' exchange is its own): only those of
            # series some rule watches, found with one cached lookup each.
            only_watched = functools.partial(watched_readings, matcher=matcher)
        observed.append(op.filter_map_value("alert_readings", watched.readings, only_watched))
    if watched.windows is not None and "window" in matcher.targets:
        # The windows' results are on the alert step's worker already: the step skips what no rule watches.
        observed.append(
            op.filter_map_value(
                "alert_windows",
                watched.windows,
                lambda result: WatchedAggregates(result.aggregates) if result.aggregates else None,
            )
        )
    if watched.log_rates is not None and "log_rate" in matcher.targets:
        observed.append(
            op.map(
                "alert_log_rates",
                watched.log_rates,
                lambda kv: ("log:" + kv[0], observations_from_log_rates(kv[1], matcher)),
            )
        )
    if not observed:
        raise ValueError("alert rules are configured, but no input they watch (readings, windows, log rates) is")
    merged = observed[0] if len(observed) == 1 else op.merge("alert_observations", *observed)

    def build_alerts(resume: AlertSnapshot | bytes | None) -> AlertLogic:
        return AlertLogic(
            matcher,
            resume,
            clock=options.window_clock,
            idle_after=cfg.alerts.state_idle_after,
            max_states=cfg.alerts.max_states,
            recovery_dir=cfg.recovery.dir if options.recovery else None,
            step_id=ALERTS_STEP_ID,
        )

    transitions = op.filter_map_value(
        "alert_transitions", op.stateful_batch("alerts", merged, build_alerts), lambda ts: ts or None
    )
    sink = AlertNotifySink(cfg.alerts, cfg.mqtt, options.total_workers, options.process_id)
    op.output("alert_notifications", transitions, sink)
    lines = op.map_value("alert_lines", transitions, lambda ts: [alert_line(t) for t in ts])
    records = op.map_value("alert_records", transitions, lambda ts: list[Record](ts))
    return lines, records
