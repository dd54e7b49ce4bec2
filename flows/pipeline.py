"""The readings dataflow, wired:

    MQTT source ──► parse ──┬─► readings ──► shard ──► windows ──┬─► aggregates ─┐
      (batches)             │                                    └─► late ───────┼─► InfluxDB sink
                            ├─► raw readings (write_raw) ─────────────────────────┘
                            └─► dead letters ──► dead-letter store

Every stream item is a batch (a list), never a single reading: per-item overhead is paid per batch.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from collectors.mqtt.parse import MessageBatch, MQTTParser, ParsedBatch
from collectors.mqtt.source import MQTTSource
from fleetwatch.config import Config
from fleetwatch.record import Reading
from flows import health, schema
from flows.sinks.buffer import saturated
from flows.sinks.dead_letters import DeadLetterFile, DeadLetterSink
from flows.sinks.influxdb import InfluxDBSink, LineWriter, make_writer
from flows.windows import WindowLogic, WindowResult, WindowSpec


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


def build_flow(cfg: Config, options: FlowOptions | None = None) -> Dataflow:
    options = options or FlowOptions()
    flow = Dataflow("fleetwatch")
    parser = MQTTParser(cfg.mqtt, cfg.windows)
    source = options.source or MQTTSource(
        cfg.mqtt, options.total_workers, ack_on_snapshot=options.recovery, saturated=saturated
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
        if parsed.readings:
            stats.lag_seconds = max(0.0, (time.time_ns() - parsed.readings[-1].ts_ns) / 1e9)
        return parsed

    parsed = op.map("parse", batches, parse)

    dead_store = DeadLetterFile(Path(cfg.dead_letters.path))
    dead = op.filter_map("dead_letters", parsed, lambda p: p.dead_letters or None)
    op.output("dead_letter_store", dead, DeadLetterSink(dead_store))

    # More shards than workers keeps the load even; one shard when there is one worker.
    sharder = Sharder(1 if options.total_workers == 1 else options.total_workers * 8)
    keyed = op.flat_map("shard", parsed, lambda p: sharder.split(p.readings))
    specs = window_specs(cfg)

    def build_windows(resume: bytes | None) -> WindowLogic:
        return WindowLogic(
            specs, cfg.windows.allowed_lateness, cfg.windows.quantiles, resume, clock=options.window_clock
        )

    windowed = op.stateful_batch("windows", keyed, build_windows)

    def to_lines(result: WindowResult) -> list[str] | None:
        stats = health.counters()
        stats.windows_closed += len(result.aggregates)
        stats.late_readings += len(result.late)
        lines = [schema.aggregate_line(a) for a in result.aggregates]
        lines += [schema.late_line(r) for r in result.late]
        return lines or None

    # Lines stay keyed (by shard; raw readings by "raw") so the stateful InfluxDB sink can partition them.
    window_lines = op.filter_map_value("window_lines", windowed, to_lines)
    raw_lines = op.filter_map(
        "raw_lines", parsed, lambda p: ("raw", [schema.raw_line(r) for r in p.raw]) if p.raw else None
    )
    all_lines = op.merge("influx_lines", window_lines, raw_lines)
    if cfg.influxdb.enabled:
        op.output(
            "influxdb",
            all_lines,
            InfluxDBSink(
                cfg.influxdb,
                dead_store.write,
                options.writer_factory,
                partitions=options.total_workers,
            ),
        )
    return flow
