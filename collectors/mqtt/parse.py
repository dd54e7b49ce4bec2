"""Turn a batch of MQTT messages into readings and dead letters.

This is the hot path: it runs once per message. What can be computed once per topic (which subscription
the topic belongs to, its tags, its series key) is cached per topic, so a message of a known topic with a
``number`` payload costs a dict lookup, a ``float()`` and a tuple.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

from collectors.mqtt.payloads import (
    PayloadError,
    Sample,
    decode_json,
    decode_line_protocol,
    decode_number,
)
from collectors.mqtt.topics import TopicTemplate, topic_matches
from fleetwatch.config import MQTTConfig, SubscriptionConfig, WindowsConfig
from fleetwatch.record import DeadLetter, Reading, series_key

# Topics seen are cached; fleets have many, but not unbounded, topics. Past this the cache starts over.
_TOPIC_CACHE_LIMIT = 1_000_000


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


@dataclass
class _TopicInfo:
    sub: SubscriptionConfig | None
    measurement: str
    tags: dict[str, str]
    # For format "number": the finished series key.
    series: str | None
    write_raw: bool
    # Series keys by metric name, for formats with several fields.
    by_metric: dict[str, str]


class MQTTParser:
    """Decodes MessageBatches with the subscriptions of one MQTT config."""

    def __init__(self, mqtt: MQTTConfig, windows: WindowsConfig) -> None:
        self._subs = mqtt.subscriptions
        self._templates = [TopicTemplate.parse(s.template) if s.template else None for s in self._subs]
        self._max_payload = mqtt.max_payload_bytes
        self._max_future_ns = int(windows.max_future_skew.total_seconds() * 1e9)
        self._max_age_ns = int(windows.max_age.total_seconds() * 1e9)
        self._topics: dict[str, _TopicInfo | str] = {}

    # -- per topic, cached

    def _resolve(self, topic: str) -> _TopicInfo | str:
        """Topic info, or the dead-letter detail when no subscription can read the topic."""
        for sub, template in zip(self._subs, self._templates, strict=True):
            if not topic_matches(sub.topic, topic):
                continue
            tags: dict[str, str] = {}
            if template is not None:
                found = template.tags(topic)
                if found is None:
                    return f"topic {topic!r} does not fit template {sub.template!r}"
                tags = found
            metric = tags.pop("metric", None) or sub.metric
            series = None
            if sub.format == "number":
                if not metric:
                    return f"no metric for topic {topic!r}"
                series = series_key(sub.measurement, {**tags, "metric": metric})
            return _TopicInfo(sub, sub.measurement, tags, series, sub.write_raw, {})
        return f"topic {topic!r} matches no subscription"

    def _info(self, topic: str) -> _TopicInfo | str:
        info = self._topics.get(topic)
        if info is None:
            if len(self._topics) >= _TOPIC_CACHE_LIMIT:
                self._topics.clear()
            info = self._topics[topic] = self._resolve(topic)
        return info

    def _series(self, info: _TopicInfo, sample: Sample) -> str:
        if sample.measurement is not None or sample.tags:
            tags = {**info.tags, **(sample.tags or {}), "metric": sample.metric}
            return series_key(sample.measurement or info.measurement, tags)
        series = info.by_metric.get(sample.metric)
        if series is None:
            series = info.by_metric[sample.metric] = series_key(
                info.measurement, {**info.tags, "metric": sample.metric}
            )
        return series

    # -- per batch

    def parse(self, batch: MessageBatch) -> ParsedBatch:
        received_ns = batch.received_ns
        # Bounds are taken against wall time, not receive time, so that a backlog the broker held while
        # fleetwatch was down is not judged by how long it waited.
        now_ns = time.time_ns()
        newest_ok = now_ns + self._max_future_ns
        oldest_ok = now_ns - self._max_age_ns if self._max_age_ns else -(2**63)
        readings: list[Reading] = []
        raw: list[Reading] = []
        dead: list[DeadLetter] = []
        max_payload = self._max_payload
        append = readings.append
        for topic, payload in batch.messages:
            info = self._info(topic)
            if isinstance(info, str):
                dead.append(DeadLetter("topic_mismatch", f"mqtt:{topic}", payload, received_ns, info))
                continue
            if len(payload) > max_payload:
                dead.append(
                    DeadLetter(
                        "oversized",
                        f"mqtt:{topic}",
                        payload,
                        received_ns,
                        f"payload of {len(payload)} bytes exceeds max_payload_bytes {max_payload}",
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
                if value - value == 0.0:  # finite
                    reading = Reading(info.measurement, series, value, received_ns)
                    append(reading)
                    if info.write_raw:
                        raw.append(reading)
                    continue
            try:
                samples = self._decode(info, payload)
            except PayloadError as err:
                dead.append(DeadLetter(err.reason, f"mqtt:{topic}", payload, received_ns, err.detail))
                continue
            for sample in samples:
                ts = received_ns if sample.ts_ns is None else sample.ts_ns
                if not oldest_ok <= ts <= newest_ok:
                    dead.append(
                        DeadLetter(
                            "timestamp_out_of_range",
                            f"mqtt:{topic}",
                            payload,
                            received_ns,
                            f"event time {ts} ns is outside the accepted skew",
                        )
                    )
                    break
            else:
                for sample in samples:
                    ts = received_ns if sample.ts_ns is None else sample.ts_ns
                    reading = Reading(
                        sample.measurement or info.measurement, self._series(info, sample), sample.value, ts
                    )
                    append(reading)
                    if info.write_raw:
                        raw.append(reading)
        return ParsedBatch(received_ns, len(batch.messages), readings, raw, dead)

    def _decode(self, info: _TopicInfo, payload: bytes) -> list[Sample]:
        sub = info.sub
        assert sub is not None
        if sub.format == "number":
            return [Sample("", decode_number(payload))]  # only reached for bad payloads: raises
        if sub.format == "json":
            return decode_json(
                payload,
                sub.timestamp_field,
                sub.timestamp_unit,
                frozenset(sub.ignore_fields),
                info.tags.get("metric") or sub.metric,
            )
        return decode_line_protocol(payload)
