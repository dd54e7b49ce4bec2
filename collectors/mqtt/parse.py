"""Turn a batch of MQTT messages into readings and dead letters.

This is the hot path: it runs once per message. What can be computed once per topic (which subscription
the topic belongs to, its tags, its series key) is cached per topic, so a message of a known topic with a
``number`` payload costs a dict lookup, a ``float()`` and a tuple.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import orjson

from collectors.mqtt.payloads import (
    PartlyInvalidUTF8,
    PayloadError,
    Sample,
    decode_json,
    decode_line_protocol,
    decode_number,
    decode_senml,
    decode_telegraf_json,
)
from collectors.mqtt.sparkplug import (
    IGNORED_MESSAGES,
    SparkplugMessage,
    SparkplugTopic,
    decode_payload,
    parse_topic,
)
from collectors.mqtt.topics import TopicTemplate, topic_matches
from fleetwatch.config import MQTTConfig, SubscriptionConfig, WindowsConfig
from fleetwatch.devices import Inventory, InventoryError, load_devices
from fleetwatch.record import DeadLetter, Reading, new_tuple, series_key
from flows import health

log = logging.getLogger(__name__)

# The flat-JSON fast path's decoder: orjson takes the payload's bytes as they are (checking the UTF-8) and builds
# the dict in about half the time of the standard library's C scanner with the decode before it. What it refuses
# (NaN, Infinity, lone surrogates, a byte order mark, UTF-16) goes to the general decoder, which judges it as
# before. It reads an integer beyond 64 bits as the float the general decoder would make of it.
_loads_json = orjson.loads

# Topics seen are cached, and per topic the series key of each field name. Fleets have many topics, but a
# careless or hostile client can send endless new topics (up to 65,535 bytes each) or JSON keys: past
# mqtt.topic_cache_max_topics topics, NAME_CACHE_LIMIT names or mqtt.topic_cache_max_bytes, the caches start
# over (a miss costs one template match, a few microseconds), counted in mqtt_topic_cache_resets.
NAME_CACHE_LIMIT = 2_000_000
# The memory of a cache entry, estimated without measuring it on the hot path: per topic, about 900 bytes of
# objects plus the topic three times (the key, the tags cut from it, the series key made of them); per field
# name, 150 bytes plus the name (once: names are interned) and its series key. Measured with tracemalloc in
# tests/unit/test_mqtt_limits.py, which checks that the estimate is not below what is held.
_TOPIC_ENTRY_BYTES = 900
_NAME_ENTRY_BYTES = 150


def _text_bytes(text: str) -> int:
    """A str's character storage: 1, 2 or 4 bytes per character, by its widest character (PEP 393)."""
    if text.isascii():
        return len(text)
    widest = max(text)
    return len(text) * (1 if widest < "\u0100" else 2 if widest < "\U00010000" else 4)


class MessageBatch(NamedTuple):
    """What the MQTT source emits: messages read in one go, with one receive time."""

    received_ns: int
    # (topic, payload)
    messages: list[tuple[str, bytes]]


class ParsedBatch(NamedTuple):
    received_ns: int
    messages: int
    readings: list[Reading]
    # The readings of subscriptions with write_raw, to be stored as they are.
    raw: list[Reading]
    dead_letters: list[DeadLetter]
    # Messages of devices missing from the device inventory ([mqtt.devices]), passed on or refused.
    unknown_devices: int = 0
    # Sparkplug B messages by edge node ("<group>/<node>"), in arrival order, for its stateful step.
    sparkplug: list[tuple[str, list[SparkplugMessage]]] | None = None
    # Sparkplug B messages that carry no readings (NCMD, DCMD, STATE).
    sparkplug_ignored: int = 0
    # Empty payloads: what a client publishes to delete a retained message (and Home Assistant to remove a
    # device), which subscribers receive too. No reading, and no bad input.
    empty_payloads: int = 0
    # write_raw readings whose time counts from their message's receive time (SenML's relative times), which a
    # redelivery would stamp anew: written after the commit, as those stamped with the receive time itself.
    raw_from_receipt: list[Reading] | None = None


class _Refusal(NamedTuple):
    """A topic no subscription can read: every message on it is a dead letter with this reason."""

    reason: str
    detail: str


@dataclass(slots=True)
class _TopicInfo:
    sub: SubscriptionConfig | None
    measurement: str
    tags: dict[str, str]
    # For format "number": the finished series key.
    series: str | None
    write_raw: bool
    # Series keys by metric name, for formats with several fields: the first name seen in two slots of its
    # own, the others in a dict. Most device topics carry one metric, and a dict for it cost 184 bytes a
    # topic (18 MB at 100,000 series).
    first_metric: str | None
    first_series: str
    more_metrics: dict[str, str] | None
    # The metric named by the template or the subscription (bare JSON values).
    metric: str | None = None
    # JSON fields that are not readings: ignore_fields and the timestamp field.
    skip: frozenset[str] = frozenset()
    # Format json: the metric the template's {metric} names, under which a JSON object's fields are read
    # (``json_field_metric``); None when the topic names none.
    topic_metric: str | None = None
    # JSON fast path: format json, and the timestamp field with a fixed epoch unit (ns per unit) if any.
    flat_json: bool = False
    ts_field: str | None = None
    ts_scale: int = 0
    # The topic's device is not in the device inventory (its readings are passed on without its tags).
    unknown_device: bool = False
    # format "sparkplug_b": the topic's group, message type, edge node and device.
    sparkplug: SparkplugTopic | None = None
    # Two of the topic's field names may have one series ("value" and the topic's metric; "t" and "t\\", whose
    # trailing backslash is left out): a message's readings are then reduced to one per series (_last_of_each_point).
    aliased: bool = False


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo:
    """A subscription's ``timestamp_timezone`` (validated with the config)."""
    return UTC if name == "UTC" else ZoneInfo(name)


def json_field_metric(topic_metric: str, field: str) -> str:
    """The metric of a JSON object's numeric field, on a topic whose template names the metric: the topic's
    metric for a field named ``value`` or named like the metric, ``<metric>_<field>`` for any other (as if the
    object were nested under the metric's name, the way nested fields are named). Without this, the per-metric
    topics of one device that all send ``{"value": ...}`` were one series, and their windows mixed, say,
    temperatures with humidities.

    >>> [json_field_metric("temperature", f) for f in ("value", "temperature", "battery")]
    ['temperature', 'temperature', 'temperature_battery']
    """
    if field == "value" or field == topic_metric:
        return topic_metric
    return f"{topic_metric}_{field}"


def _file_stamp(path: Path | None) -> tuple[int, int] | None:
    """What tells a changed file: its modification time and size (None when absent)."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


# InfluxDB's limit on a series key (tsdb.MaxKeyLength), less room for what an aggregate adds ("_agg" and
# ",window=<label>") or a late reading ("_late"): a key the raw point fits but its aggregate does not would
# have every window of the series refused.
MAX_SERIES_KEY_BYTES = 65_535 - 64


def _scaled(stamp: int, ns_per_unit: int) -> int:
    """``stamp * ns_per_unit``, in parts. Compiled, a product with a factor of 2**30 or more (a millisecond epoch is
    about 2**41) is computed on boxed ints: about 2 % of the worker's time at 100,000 series. The parts here stay
    below that for stamps in seconds, milliseconds and microseconds of this millennium (any other stamp still gets
    the exact product, by that general path)."""
    if ns_per_unit == 1:
        return stamp
    high = (stamp >> 30) * ns_per_unit
    return (high << 30) + (stamp & 0x3FFFFFFF) * ns_per_unit


def _event_time_text(ts_ns: int) -> str:
    """An event time for a person: RFC 3339, or how far out of range it is (a 1e300 timestamp has 300 digits)."""
    if -(2**63) <= ts_ns < 2**63:  # what a time in nanoseconds can be at all (1677 to 2262)
        seconds, ns = divmod(ts_ns, 1_000_000_000)
        return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{ns:09d}Z"
    return "a time after the year 2262" if ts_ns > 0 else "a time before the year 1677"


def _out_of_range_detail(outside: list[tuple[Sample, int]], total: int, now_ns: int) -> str:
    """Which readings of a message were refused for their event time, and against which bound."""
    sample, ts = outside[0]
    bound = "max_future_skew" if ts > now_ns else "max_age"
    name = f"{sample.measurement}.{sample.metric}" if sample.measurement else sample.metric
    first = f"{name!r} at {_event_time_text(ts)} (past windows.{bound})"
    if total == 1:
        return f"event time out of range: {first}"
    kept = total - len(outside)
    return f"{len(outside)} of {total} readings have an event time out of range, {kept} kept; the first: {first}"


def _encodable(series: str) -> str:
    """A series key that can be written: JSON escapes such as ``"\\ud800"`` give lone surrogates, which
    no store accepts and which would make the writer refuse a whole batch; and it fits InfluxDB's limit. A NUL
    (``"\\u0000"`` in a JSON key) is refused as it is in a topic: InfluxDB would store it, and no query names it."""
    if "\x00" in series:
        raise PayloadError("undecodable", f"name {series!r} holds a NUL character")
    size = len(series)
    if not series.isascii():
        try:
            size = len(series.encode("utf-8"))
        except UnicodeEncodeError:
            raise PayloadError("invalid_utf8", f"name {series!r} is not valid Unicode (a lone surrogate)") from None
    if size > MAX_SERIES_KEY_BYTES:
        raise PayloadError(
            "series_too_long",
            f"series key of {size} bytes ({series[:100]!r}...): InfluxDB takes at most {MAX_SERIES_KEY_BYTES} for it",
        )
    return series


def _last_of_each_point(kept: list[tuple[Reading, bool]]) -> list[tuple[Reading, bool]]:
    """A message's readings, the last of each series and time only. Two readings of one message can be one point:
    JSON names that flatten alike ({"a_0": 1, "a": [5]}), a name and itself with a trailing backslash, "value"
    and the topic's metric, two SenML records. InfluxDB stores the last as the point; the windows take only that
    one too, or the aggregates would count a value the raw point does not have."""
    last = {(reading.series, reading.ts_ns): i for i, (reading, _) in enumerate(kept)}
    if len(last) == len(kept):
        return kept
    chosen = set(last.values())
    return [item for i, item in enumerate(kept) if i in chosen]


class MQTTParser:
    """Decodes MessageBatches with the subscriptions of one MQTT config."""

    def __init__(self, mqtt: MQTTConfig, windows: WindowsConfig) -> None:
        self._subs = mqtt.subscriptions
        self._templates = [TopicTemplate.parse(s.template) if s.template else None for s in self._subs]
        # Per subscription, shared by its topics' cache entries (one set per topic was 200 bytes a series).
        # The timestamp is no reading; nested ("params.ts"), it is flattened as "params_ts".
        self._skips = [
            frozenset(s.ignore_fields)
            | ({s.timestamp_field, s.timestamp_field.replace(".", "_")} if s.timestamp_field else frozenset())
            for s in self._subs
        ]
        self._scales = [{"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}.get(s.timestamp_unit, 0) for s in self._subs]
        self._max_payload = mqtt.max_payload_bytes
        self._max_future_ns = int(windows.max_future_skew.total_seconds() * 1e9)
        self._max_age_ns = int(windows.max_age.total_seconds() * 1e9)
        self._topics: dict[str, _TopicInfo | _Refusal] = {}
        self.topic_cache_limit = mqtt.topic_cache_max_topics
        self.name_cache_limit = NAME_CACHE_LIMIT
        self.cache_bytes_limit = mqtt.topic_cache_max_bytes
        self._names = 0  # series keys cached in every topic's by_metric
        self._cache_bytes = 0  # estimated memory of both caches
        self._devices = mqtt.devices
        self._inventory: Inventory = load_devices(mqtt.devices.file) if mqtt.devices.file else {}
        self._inventory_stamp = _file_stamp(mqtt.devices.file)
        self._inventory_checked = time.monotonic()
        # Times the inventory file changed and could not be read (the previous inventory stays in use).
        self.inventory_errors = 0

    def cached_topics(self) -> int:
        return len(self._topics)

    def cached_names(self) -> int:
        return self._names

    def cached_bytes(self) -> int:
        """The estimated memory held by the topic and name caches."""
        return self._cache_bytes

    def _forget(self) -> None:
        self._topics.clear()
        self._names = 0
        self._cache_bytes = 0
        health.counters().mqtt_topic_cache_resets += 1

    # -- per topic, cached

    def _resolve(self, topic: str) -> _TopicInfo | _Refusal:
        """Topic info, or why its messages are dead letters."""
        for sub, template, skip, scale in zip(self._subs, self._templates, self._skips, self._scales, strict=True):
            if not topic_matches(sub.topic, topic):
                continue
            tags: dict[str, str] = {}
            sparkplug = None
            if sub.format == "sparkplug_b":
                try:
                    sparkplug = parse_topic(topic)
                except PayloadError as err:
                    return _Refusal(err.reason, err.detail)
                tags = {"group": sparkplug.group, "node": sparkplug.node, "device": sparkplug.device}
                if not sparkplug.device:
                    del tags["device"]
            elif template is not None:
                found = template.tags(topic)
                if found is None:
                    return _Refusal("topic_mismatch", f"topic {topic!r} does not fit template {sub.template!r}")
                tags = found
            unknown_device = False
            # A Sparkplug edge node's own messages have no device level: the inventory is keyed by device.
            if self._devices.file is not None and (sparkplug is None or self._devices.key in tags):
                device = tags.get(self._devices.key)
                extra = self._inventory.get(device) if device is not None else None
                if extra is None:
                    unknown_device = True
                    if self._devices.missing == "reject":
                        return _Refusal(
                            "unknown_device",
                            f"device {device!r} of topic {topic!r} is not in {self._devices.file}",
                        )
                else:
                    # The topic's own tags win: they name the series the device has always written.
                    tags = {**extra, **tags}
            topic_metric = tags.pop("metric", None)
            metric = topic_metric or sub.metric
            if metric is not None:
                # A fleet has few metric names and many topics: one string per name, not one per topic.
                metric = sys.intern(metric)
            series = None
            if sub.format == "number":
                if not metric or not metric.rstrip("\\"):  # (trailing backslashes are left out of a tag)
                    return _Refusal("topic_mismatch", f"no metric for topic {topic!r}")
                try:
                    series = _encodable(series_key(sub.measurement, {**tags, "metric": metric}))
                except PayloadError as err:
                    return _Refusal(err.reason, err.detail)
            return _TopicInfo(
                sub,
                sub.measurement,
                tags,
                series,
                sub.write_raw,
                None,
                "",
                None,
                metric,
                skip,
                topic_metric=metric if topic_metric and sub.format == "json" else None,
                flat_json=sub.format == "json",
                ts_field=sub.timestamp_field,
                ts_scale=scale,
                unknown_device=unknown_device,
                sparkplug=sparkplug,
            )
        return _Refusal("topic_mismatch", f"topic {topic!r} matches no subscription")

    def _info(self, topic: str) -> _TopicInfo | _Refusal:
        info = self._topics.get(topic)
        if info is None:
            if len(self._topics) >= self.topic_cache_limit or self._cache_bytes >= self.cache_bytes_limit:
                self._forget()
            info = self._topics[topic] = self._resolve(topic)
            self._cache_bytes += _TOPIC_ENTRY_BYTES + 3 * _text_bytes(topic)
        return info

    def _series(self, info: _TopicInfo, sample: Sample) -> str:
        if sample.measurement is not None or sample.tags:
            tags = {**info.tags, **(sample.tags or {}), "metric": sample.metric}
            return _encodable(series_key(sample.measurement or info.measurement, tags))
        name = sample.metric
        if name == info.first_metric:
            return info.first_series
        more = info.more_metrics
        series = more.get(name) if more is not None else None
        if series is None:
            metric = name if info.topic_metric is None else json_field_metric(info.topic_metric, name)
            series = _encodable(series_key(info.measurement, {**info.tags, "metric": metric}))
            if "\\" in name or "\n" in name or "\r" in name or (metric == info.topic_metric and name != metric):
                # Its series may be another name's (a trailing backslash is left out, a line break is written as
                # backslash n, "value" is the topic's metric): checked by name, not by a scan of the topic's
                # series, which would cost a payload of thousands of names a scan for each.
                info.aliased = True
            if self._names >= self.name_cache_limit or self._cache_bytes >= self.cache_bytes_limit:
                self._forget()  # (this message's topic is resolved again with the next message)
            name = sys.intern(name)  # as the metric above: one string per name, shared by every topic
            if info.first_metric is None:
                info.first_metric, info.first_series = name, series
            elif more is None:
                info.more_metrics = {name: series}
            else:
                more[name] = series
            self._names += 1
            self._cache_bytes += _NAME_ENTRY_BYTES + _text_bytes(sample.metric) + _text_bytes(series)
        return series

    # -- per batch

    def parse(self, batch: MessageBatch) -> ParsedBatch:
        # Bounds are taken against wall time, not receive time, so that a backlog the broker held while
        # fleetwatch was down is not judged by how long it waited.
        now_ns = time.time_ns()
        newest_ok = now_ns + self._max_future_ns
        oldest_ok = now_ns - self._max_age_ns if self._max_age_ns else -(2**63)
        readings: list[Reading] = []
        raw: list[Reading] = []
        raw_from_receipt: list[Reading] = []
        dead: list[DeadLetter] = []
        max_payload = self._max_payload
        append = readings.append
        # (locals: compiled, a module-level name is looked up in the module's dict at every use, per message here)
        make, reading_type, loads_json = new_tuple, Reading, _loads_json
        if self._devices.file is not None:
            self._reload_inventory_if_changed()
        unknown_devices = 0
        empty_payloads = 0
        sparkplug: dict[str, list[SparkplugMessage]] | None = None
        sparkplug_ignored = 0
        # Each message gets a receive time of its own, a nanosecond apart in arrival order: two messages of a
        # batch without a timestamp of their own are two points of the same series in the store, and two
        # identical bad payloads two dead letters, not one written over the other.
        received_ns = batch.received_ns - 1
        for topic, payload in batch.messages:
            received_ns += 1
            try:
                info = self._info(topic)
                if isinstance(info, _Refusal):
                    dead.append(DeadLetter(info.reason, f"mqtt:{topic}", payload, received_ns, info.detail))
                    unknown_devices += info.reason == "unknown_device"
                    continue
                if info.unknown_device:
                    unknown_devices += 1
                if len(payload) > max_payload:
                    # Its first max_payload_bytes only: a client that publishes 80 MB must not make an 80 MB dead
                    # letter (held in memory, indexed, written to the dead-letter file).
                    dead.append(
                        DeadLetter(
                            "oversized",
                            f"mqtt:{topic}",
                            payload[:max_payload],
                            received_ns,
                            f"payload of {len(payload)} bytes exceeds max_payload_bytes {max_payload}; raw holds its "
                            f"first {max_payload} bytes",
                        )
                    )
                    continue
                series = info.series
                if series is not None:
                    # format "number", the common case, inline.
                    try:
                        value = float(payload)
                    except ValueError:
                        value = math.nan
                    if value - value == 0.0 and b"_" not in payload:  # finite, and no "1_000"
                        reading = make(reading_type, (info.measurement, series, value, received_ns))
                        append(reading)
                        if info.write_raw:
                            raw.append(reading)
                        continue
                if info.flat_json:
                    # A flat JSON object of numbers (the common device payload), inline; anything else
                    # (nesting, booleans, strings, errors) takes the general decoder below.
                    try:
                        doc = loads_json(payload)
                    except ValueError:  # (orjson.JSONDecodeError, also for nesting past its depth limit)
                        doc = None
                    ts = received_ns
                    if type(doc) is dict and info.ts_field is not None:
                        raw_ts = doc.get(info.ts_field)
                        # Only integer epochs in a fixed unit here; the general decoder handles the rest.
                        if type(raw_ts) is int and info.ts_scale:
                            ts = _scaled(raw_ts, info.ts_scale)
                        else:
                            doc = None
                    if type(doc) is dict and oldest_ok <= ts <= newest_ok:
                        first_metric, more_metrics = info.first_metric, info.more_metrics
                        found: list[Reading] = []
                        # (`field`, a name of its own: compiled, `value` is a float everywhere in parse())
                        for key, field in doc.items():
                            kind = type(field)
                            if (kind is float or kind is int) and key not in info.skip:
                                try:
                                    number = float(field)
                                except OverflowError:
                                    break  # an integer beyond float range: the general decoder refuses it
                                if number - number != 0:
                                    break
                                if key == first_metric:
                                    series = info.first_series
                                else:
                                    series = more_metrics.get(key) if more_metrics is not None else None
                                    if series is None:
                                        if not key.rstrip("\\"):
                                            break  # no name: the general decoder refuses it
                                        series = self._series(info, Sample(key, 0.0))
                                        first_metric = info.first_metric  # (the call may have set them)
                                        more_metrics = info.more_metrics
                                found.append(make(reading_type, (info.measurement, series, number, ts)))
                            elif kind is not str and field is not None and key not in info.skip:
                                break  # nested, boolean or list: general decoder
                        else:
                            if found:
                                if info.aliased and len(found) > 1:
                                    found = [r for r, _ in _last_of_each_point([(r, False) for r in found])]
                                readings.extend(found)
                                if info.write_raw:
                                    raw.extend(found)
                                continue
                if info.sparkplug is not None:
                    # After the fast paths above (which a Sparkplug topic never takes), so they pay nothing for it.
                    if info.sparkplug.kind in IGNORED_MESSAGES:
                        sparkplug_ignored += 1
                        continue
                    if sparkplug is None:
                        sparkplug = {}
                    message = self._sparkplug(info, info.sparkplug, topic, payload, received_ns)
                    sparkplug.setdefault(info.sparkplug.node_key, []).append(message)
                    continue
                partly = False
                try:
                    samples = self._decode(info, payload, received_ns)
                except PartlyInvalidUTF8 as err:
                    # A dead letter, and its readings all the same (the bad bytes were in strings).
                    dead.append(DeadLetter(err.reason, f"mqtt:{topic}", payload, received_ns, err.detail))
                    samples, partly = err.samples, True
                except PayloadError as err:
                    if not payload:  # (looked at here, off the fast paths, which an empty payload fails)
                        empty_payloads += 1
                        continue
                    dead.append(DeadLetter(err.reason, f"mqtt:{topic}", payload, received_ns, err.detail))
                    continue
                # Each reading on its own, as InfluxDB's /write takes the good lines of a request: one line of
                # a line-protocol payload (or one item of a buffered JSON array) outside the accepted range
                # costs that reading, not the message's others. The message is then one dead letter too.
                outside: list[tuple[Sample, int]] = []
                kept: list[tuple[Reading, bool]] = []
                for sample in samples:
                    ts = received_ns if sample.ts_ns is None else sample.ts_ns
                    if not oldest_ok <= ts <= newest_ok:
                        outside.append((sample, ts))
                        continue
                    reading = Reading(
                        sample.measurement or info.measurement, self._series(info, sample), sample.value, ts
                    )
                    kept.append((reading, sample.from_receipt))
                for reading, from_receipt in _last_of_each_point(kept) if len(kept) > 1 else kept:
                    append(reading)
                    if info.write_raw:
                        (raw_from_receipt if from_receipt else raw).append(reading)
                if outside:
                    detail = _out_of_range_detail(outside, len(samples), now_ns)
                    if partly:  # one dead letter a message: the invalid UTF-8 one says this too
                        dead[-1] = dead[-1]._replace(detail=f"{dead[-1].detail}; {detail}")
                    else:
                        dead.append(DeadLetter("timestamp_out_of_range", f"mqtt:{topic}", payload, received_ns, detail))
            except PayloadError as err:
                dead.append(DeadLetter(err.reason, f"mqtt:{topic}", payload, received_ns, err.detail))
            except Exception as exc:
                # A payload no decoder foresaw must still end as a dead letter: an exception here would stop
                # the pipeline, and the broker would redeliver the same message after every restart.
                dead.append(
                    DeadLetter("undecodable", f"mqtt:{topic}", payload, received_ns, f"{type(exc).__name__}: {exc}")
                )
        return ParsedBatch(
            batch.received_ns,
            len(batch.messages),
            readings,
            raw,
            dead,
            unknown_devices,
            list(sparkplug.items()) if sparkplug else None,
            sparkplug_ignored,
            empty_payloads,
            raw_from_receipt,
        )

    @staticmethod
    def _sparkplug(
        info: _TopicInfo, topic_parts: SparkplugTopic, topic: str, payload: bytes, received_ns: int
    ) -> SparkplugMessage:
        """Decode a Sparkplug B payload (stateless); aliases, sequence and state are the edge node's stateful
        step (flows.sparkplug). Raises PayloadError for bytes that are no Sparkplug B payload."""
        sub = info.sub
        assert sub is not None
        seq, ts_ms, metrics = decode_payload(payload)
        return SparkplugMessage(
            topic,
            topic_parts.kind,
            topic_parts.group,
            topic_parts.node,
            topic_parts.device,
            info.tags,
            info.measurement,
            info.write_raw,
            info.skip,
            seq,
            ts_ms,
            metrics,
            payload,
            received_ns,
        )

    def _reload_inventory_if_changed(self) -> None:
        """Read the device inventory again when its file changed (checked every ``reload_interval``). The
        cached topics are resolved again with the new tags; window state is not touched (a series whose tags
        changed is a new series from then on). A file that cannot be read keeps the previous inventory."""
        now = time.monotonic()
        if now - self._inventory_checked < self._devices.reload_interval.total_seconds():
            return
        self._inventory_checked = now
        path = self._devices.file
        assert path is not None
        stamp = _file_stamp(path)
        if stamp == self._inventory_stamp:
            return
        self._inventory_stamp = stamp
        try:
            inventory = load_devices(path)
        except InventoryError as exc:
            self.inventory_errors += 1
            log.error("device inventory %s changed but cannot be used, keeping the previous one: %s", path, exc)
            return
        self._inventory = inventory
        self._topics.clear()
        self._names = 0
        self._cache_bytes = 0
        log.info("device inventory %s read again: %d devices", path, len(inventory))

    def _decode(self, info: _TopicInfo, payload: bytes, received_ns: int) -> list[Sample]:
        sub = info.sub
        assert sub is not None
        if sub.format == "number":
            # Reached for what float() refuses: bad payloads (it raises), or a number after a byte-order mark.
            return [Sample(info.metric or "", decode_number(payload))]
        if sub.format == "json":
            zone = _zone(sub.timestamp_timezone)
            return decode_json(payload, sub.timestamp_field, sub.timestamp_unit, info.skip, info.metric, zone)
        if sub.format == "telegraf_json":
            return decode_telegraf_json(payload, sub.timestamp_unit, info.skip)
        if sub.format == "senml":
            return decode_senml(payload, received_ns, info.skip)
        return decode_line_protocol(payload)
