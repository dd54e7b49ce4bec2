"""fleetwatch's configuration: one TOML file, validated whole at start.

Every section is a typed model with defaults. Unknown keys are errors (a typo must not silently fall back
to a default), and every error names the dotted key and what was expected::

    mqtt.subscriptions[0].qos: expected 0 or 1 (got 3)

Secrets are ``SecretStr`` so they never print. Each can be given inline, from a file (``*_file``), or from
an environment variable, which wins: see ``SECRET_ENV``.

This is the ground floor: every package imports it, so it imports nothing from ``collectors``, ``flows`` or
``dashboards``, not even inside a validator (tests/unit/test_layering.py). What a check needs from above lives
on the ground floor too: the ``[alerts]`` models (``fleetwatch.alerts_config``), the names of windows and
quantiles (``fleetwatch.labels``), the grammar of topic templates (``fleetwatch.topic_template``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from fleetwatch.alerts_config import AlertsConfig, load_rules
from fleetwatch.config_base import (
    Duration,
    PositiveDuration,
    Section,
    check_url_port,
    is_special_file,
    parse_duration,
    read_secret_file,
    url_without_secrets,
)
from fleetwatch.devices import InventoryError, load_devices
from fleetwatch.labels import duration_label, quantile_field
from fleetwatch.topic_template import TopicTemplate

# The base types live in config_base so that section models elsewhere can share them.
__all__ = ["Config", "ConfigError", "Duration", "Section", "from_dict", "load", "parse_duration"]


# ------------------------------------------------------------------------------------------- MQTT


class TLSConfig(Section):
    """TLS towards a broker or server. Off unless ``enabled``."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _client_cert_pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


TopicFormat = Literal["number", "json", "influx_line", "telegraf_json", "senml", "sparkplug_b"]
# Sparkplug B topics: spBv1.0/<group>/<type>/<node>[/<device>] (collectors/mqtt/sparkplug).
SPARKPLUG_NAMESPACE = "spBv1.0"
TimestampUnit = Literal["auto", "s", "ms", "us", "ns", "rfc3339"]


def _template_never_fits(topic_filter: str, template: TopicTemplate) -> str | None:
    """Why no topic the filter matches can fit the template, if that is certain from their levels."""
    levels = topic_filter.split("/")
    open_filter = levels[-1] == "#"
    if open_filter:
        levels = levels[:-1]
    for i, ((kind, text), level) in enumerate(zip(template.levels, levels, strict=False)):
        if kind == "literal" and level not in ("+", text):
            return f"level {i + 1} is {level!r} in the filter and {text!r} in the template"
    if not open_filter and len(template.levels) > len(levels):
        return f"the template has {len(template.levels)} levels, the filter's topics {len(levels)}"
    if not open_filter and not template.open_ended and len(template.levels) < len(levels):
        return f"the template has {len(template.levels)} levels, the filter's topics {len(levels)} (end it with '#')"
    return None


class SubscriptionConfig(Section):
    """One MQTT topic filter, how to read its topic levels and how to decode its payloads."""

    topic: str = Field(min_length=1)
    qos: int = 1
    # Topic levels to tags, Telegraf topic_parsing style: "sensors/{site}/{device}/{metric}".
    # "+" skips a level, "#" (last) swallows the rest. {metric} names the reading's metric; without it the
    # metric comes from the payload's field names (json, influx_line, telegraf_json, senml) or from `metric`. With it,
    # a JSON object's field "value" (or one named like the metric) is that metric, and any other numeric field
    # is "<metric>_<field>".
    template: str | None = None
    format: TopicFormat = "number"
    # For format = "number" without {metric} in the template.
    metric: str | None = None
    # Readings go to this InfluxDB measurement (raw) and <measurement>_agg (windows).
    measurement: str = "readings"
    # json: the field holding the event time, and its unit ("auto" guesses s/ms/us/ns by magnitude).
    timestamp_field: str | None = None
    timestamp_unit: TimestampUnit = "auto"
    # The zone of timestamps written without one ("2026-01-01T10:00:00": Tasmota sends its local time so), an
    # IANA name; those with a zone or an offset keep theirs.
    timestamp_timezone: str = "UTC"
    # json: fields that are not readings (beyond the timestamp field).
    ignore_fields: list[str] = Field(default_factory=list)
    # Also write every reading raw, not only the window aggregates.
    write_raw: bool = False

    @field_validator("qos")
    @classmethod
    def _qos(cls, qos: int) -> int:
        # QoS 2 is refused rather than run with a weaker guarantee than it promises: paho answers a QoS 2
        # PUBLISH with PUBREC at once, before the message is in a Bytewax snapshot, and keeps the exchange in
        # memory only, so the source cannot deduplicate QoS 2 redeliveries or hold its ack back as for QoS 1.
        if qos == 2:
            raise ValueError(
                "QoS 2 is not supported: fleetwatch does not deduplicate QoS 2 redeliveries; use qos = 1, "
                "which fleetwatch makes exactly-once (devices may still publish at QoS 2)"
            )
        if qos not in (0, 1):
            raise ValueError(f"expected 0 or 1 (got {qos})")
        return qos

    @field_validator("topic")
    @classmethod
    def _topic_filter(cls, topic: str) -> str:
        if topic.startswith(("$share/", "$queue/")):
            # fleetwatch shares the subscription itself (mqtt.shared_group); inside another $share/ it would
            # subscribe to a filter no topic matches.
            raise ValueError(
                f"expected a plain topic filter; name the group in mqtt.shared_group instead (got {topic!r})"
            )
        levels = topic.split("/")
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise ValueError(f"'#' must be a whole last level of the filter (got {topic!r})")
            if "+" in level and level != "+":
                raise ValueError(f"'+' must be a whole level of the filter (got {topic!r})")
        return topic

    @field_validator("measurement")
    @classmethod
    def _measurement(cls, name: str) -> str:
        # Line protocol leaves a name's trailing backslashes out, and reads a line that starts with "#" as a
        # comment: InfluxDB would drop every point of the measurement without a word.
        if not name.rstrip("\\"):
            raise ValueError(f"expected a measurement name (got {name!r})")
        if name.startswith("#"):
            raise ValueError(f"expected a measurement name not starting with '#' (got {name!r})")
        return name

    @field_validator("timestamp_timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"expected an IANA time zone name such as 'Europe/Berlin' (got {name!r})") from None
        return name

    @model_validator(mode="after")
    def _template_fits(self) -> SubscriptionConfig:
        if self.format == "sparkplug_b":
            return self._sparkplug_fits()
        if self.template is not None:
            template = TopicTemplate.parse(self.template)  # raises ValueError naming the problem
            if problem := _template_never_fits(self.topic, template):
                raise ValueError(f"template {self.template!r} can never fit topic filter {self.topic!r}: {problem}")
        if (
            self.format == "number"
            and self.metric is None
            and (self.template is None or "{metric}" not in self.template)
        ):
            raise ValueError("format 'number' needs {metric} in template or a metric name")
        if self.format == "senml":
            # A SenML record names its reading and gives its time (RFC 8428).
            unused = self._changed("metric", "timestamp_field", "timestamp_unit", "timestamp_timezone")
            if self.template is not None and "{metric}" in self.template:
                unused.insert(0, "{metric} in template")
            if unused:
                what = ", ".join(unused)
                raise ValueError(f"format 'senml' names each reading and its time: {what} would do nothing")
            if self.template is not None and "{base_name}" in self.template:
                raise ValueError("format 'senml' writes a record's bn to the tag base_name: name the level otherwise")
        if self.format in ("number", "influx_line"):
            # Settings of JSON payloads: accepted here, they would do nothing (a forgotten format = "json").
            unused = self._changed("timestamp_field", "timestamp_unit", "timestamp_timezone", "ignore_fields")
            if unused:
                what = "a bare value, without fields or a time" if self.format == "number" else "line protocol"
                raise ValueError(
                    f'format {self.format!r} reads {what}: {", ".join(unused)} would do nothing (format = "json"?)'
                )
        return self

    def _changed(self, *keys: str) -> list[str]:
        """Of ``keys``, the settings given a value other than their default (settings another format would read)."""
        fields = type(self).model_fields
        return [key for key in keys if getattr(self, key) != fields[key].get_default(call_default_factory=True)]

    def _sparkplug_fits(self) -> SubscriptionConfig:
        # The topic names the group, edge node and device, and the payload names each metric and its time.
        unused = self._changed("template", "metric", "timestamp_field", "timestamp_unit", "timestamp_timezone")
        if unused:
            raise ValueError(
                f"format 'sparkplug_b' takes its tags, metric names and times from the Sparkplug topic and "
                f"payload: remove {', '.join(unused)}"
            )
        first = self.topic.split("/")[0]
        if first not in (SPARKPLUG_NAMESPACE, "+", "#"):
            raise ValueError(
                f"format 'sparkplug_b' needs a filter on Sparkplug B topics, such as '{SPARKPLUG_NAMESPACE}/#' "
                f"or '{SPARKPLUG_NAMESPACE}/<group>/#' (got {self.topic!r})"
            )
        return self


class DevicesConfig(Section):
    """The device inventory (fleetwatch/devices.py): static tags added to every reading of a device."""

    # A CSV (device column, then one column per tag) or TOML (a table per device) file; off when not set.
    file: Path | None = None
    # The template tag that names the device.
    key: str = Field(default="device", min_length=1)
    # A device that is not in the file: "pass" (its readings go on without the extra tags) or "reject" (they
    # become dead letters, reason unknown_device). Counted either way (health: unknown_devices).
    missing: Literal["pass", "reject"] = "pass"
    # How often the file is checked for a change (a changed file is read again, without a restart).
    reload_interval: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _readable(self) -> DevicesConfig:
        if self.file is not None:
            try:
                load_devices(self.file)
            except InventoryError as exc:
                raise ValueError(str(exc)) from None
        return self


# The shortest pause between retries of a connection or a write: less would spin while a server is down.
_MIN_RETRY_DELAY = timedelta(milliseconds=10)
# The least max_future_skew: every clock is some milliseconds off, and with 0 (which is no "no limit" here, as it
# is for max_age) a reading or line stamped 1 ms ahead of the receive time was refused.
_MIN_FUTURE_SKEW = timedelta(seconds=1)


def _future_skew(skew: timedelta) -> timedelta:
    if skew < _MIN_FUTURE_SKEW:
        raise ValueError(
            f"expected at least {_MIN_FUTURE_SKEW.total_seconds():g}s: a reading stamped a few milliseconds ahead of "
            "the receive time, as every clock is now and then, would be refused (a large value accepts any)"
        )
    return skew


class MQTTConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    # Worker i connects as "<client_id>-<i>": stable across restarts, so the broker keeps its session.
    client_id: str = Field(default="fleetwatch", min_length=1, max_length=20)
    # Persistent session: the broker queues QoS >= 1 messages while fleetwatch is away.
    persistent_session: bool = True
    # MQTT 5 session expiry for persistent sessions.
    session_expiry: Duration = timedelta(days=1)
    keepalive: Duration = timedelta(seconds=30)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: TLSConfig = TLSConfig()
    reconnect_min_delay: Duration = timedelta(seconds=0.5)
    reconnect_max_delay: Duration = timedelta(seconds=30)
    # Payloads above this go to the dead letters instead of being decoded.
    max_payload_bytes: int = Field(default=65536, ge=1)
    # The parser caches what it derives from each topic (tags, series keys). Past either bound the cache
    # starts over, counted in mqtt_topic_cache_resets: a client sending endless new or 65,535-byte topics
    # costs CPU, not unbounded memory.
    topic_cache_max_topics: int = Field(default=1_000_000, ge=1)
    topic_cache_max_bytes: int = Field(default=1024**3, ge=1024**2)
    # With several workers, the subscriptions are shared ($share/<group>/<filter>) so the broker splits
    # the stream between them. Also used with one worker so its session name is stable when scaling.
    shared_group: str | None = "fleetwatch"
    subscriptions: list[SubscriptionConfig] = Field(default_factory=list)
    devices: DevicesConfig = DevicesConfig()

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        # A URL here would be looked up as a host name, and fail at every reconnect for good.
        if not host or "://" in host or "/" in host:
            raise ValueError(f"expected a host name or address, without scheme or path (got {host!r})")
        return host

    @field_validator("keepalive")
    @classmethod
    def _keepalive(cls, keepalive: timedelta) -> timedelta:
        # Whole seconds on the wire, at most 65535; under a second would be sent as 0, which turns it off.
        if not timedelta(seconds=1) <= keepalive <= timedelta(seconds=65535):
            raise ValueError(f"expected from 1s to 65535s (got {keepalive.total_seconds():g}s)")
        return keepalive

    @field_validator("session_expiry")
    @classmethod
    def _session_expiry(cls, expiry: timedelta) -> timedelta:
        if expiry > timedelta(seconds=2**32 - 1):
            raise ValueError(f"expected at most 4294967295s, MQTT 5's limit (got {expiry.total_seconds():g}s)")
        return expiry

    @field_validator("shared_group")
    @classmethod
    def _shared_group(cls, group: str | None) -> str | None:
        # The group is one topic level of $share/<group>/<filter>: a "/" would move the filter's start, and a
        # wildcard makes the broker refuse the subscription.
        if group and any(c in group for c in "/+#"):
            raise ValueError(f"expected a name without '/', '+' or '#' (got {group!r})")
        return group

    @model_validator(mode="after")
    def _checks(self) -> MQTTConfig:
        if self.reconnect_min_delay > self.reconnect_max_delay:
            raise ValueError("reconnect_min_delay must not exceed reconnect_max_delay")
        if self.reconnect_min_delay < _MIN_RETRY_DELAY:
            # Zero would reconnect in a busy loop while the broker is down, a log line each time.
            raise ValueError(f"reconnect_min_delay: expected at least {_MIN_RETRY_DELAY.total_seconds():g}s")
        if self.persistent_session and self.protocol == "5" and self.session_expiry < timedelta(seconds=1):
            # MQTT 5 ends a session of expiry 0 at the disconnect: what was published meanwhile would be lost.
            raise ValueError("session_expiry: expected at least 1s with persistent_session = true")
        first: dict[str, int] = {}
        for i, sub in enumerate(self.subscriptions):
            if sub.topic in first:
                # A topic goes to the first subscription whose filter matches it: this one would get nothing.
                raise ValueError(
                    f"subscriptions[{i}]: the same topic filter {sub.topic!r} as subscriptions[{first[sub.topic]}]"
                )
            first[sub.topic] = i
        if self.devices.file is not None and self.subscriptions:
            # Tags of influx_line, telegraf_json and Sparkplug B payloads are the devices' own: any may be it.
            # SenML's one tag is base_name.
            tagged = [
                s
                for s in self.subscriptions
                if s.format in ("influx_line", "telegraf_json", "sparkplug_b")
                or (s.format == "senml" and self.devices.key == "base_name")
                or (s.template is not None and f"{{{self.devices.key}}}" in s.template)
            ]
            if not tagged:
                raise ValueError(
                    f"devices.key: expected a tag of a subscription's template, such as {{{self.devices.key}}} "
                    f"(got {self.devices.key!r}, which no template has: no reading would find its device)"
                )
        return self

    def resolved_password(self) -> SecretStr | None:
        return read_secret_file(self.password_file, "mqtt.password_file") or self.password

    def sparkplug_subscriptions(self) -> list[SubscriptionConfig]:
        return [s for s in self.subscriptions if s.format == "sparkplug_b"]


# ------------------------------------------------------------------------------------------- flow


class SlidingWindowConfig(Section):
    length: Duration
    offset: Duration

    @model_validator(mode="after")
    def _offset(self) -> SlidingWindowConfig:
        if self.offset <= timedelta(0) or self.offset > self.length:
            raise ValueError("offset must be > 0 and <= length")
        if (self.length.total_seconds() / self.offset.total_seconds()) % 1:
            raise ValueError("length must be a whole multiple of offset")
        return self


# The statistics a window's line can carry (``windows.statistics``), in the order they are written.
WINDOW_STATISTICS = ("count", "min", "max", "mean", "sum", "first", "last", "stddev")


class WindowsConfig(Section):
    """Event-time windows over every series."""

    tumbling: list[Duration] = Field(default_factory=lambda: [timedelta(seconds=10), timedelta(minutes=1)])
    sliding: list[SlidingWindowConfig] = Field(default_factory=list)
    # A window stays open this long after its end (in event time) for out-of-order readings.
    allowed_lateness: Duration = timedelta(seconds=5)
    # Write each window's aggregate to InfluxDB once an eighth of the allowed lateness has passed, and again at
    # its close only if a late reading changed it (the same point, overwritten). Dashboards see a window
    # shortly after its end, and a fleet boundary reaches the store over the lateness instead of in one burst
    # after it. Off (or a lateness under 200 ms): a window is written once, at its close. Alert rules see
    # windows at their close either way.
    write_early: bool = True
    # Readings stamped further in the future than this (vs. receive time) are dead letters.
    max_future_skew: Duration = timedelta(minutes=5)
    # Readings older than this (vs. receive time) are dead letters; 0 accepts any age (history replay).
    max_age: Duration = timedelta(days=30)
    quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.95, 0.99])
    # The statistics each window's InfluxDB line carries besides the quantiles, as Telegraf's basicstats `stats`:
    # any of count, min, max, mean, sum, first, last, stddev; count is required (a window's weight). Every field is
    # work for the store at every boundary, a field per series: at 100,000 series InfluxDB 1.6 spends most of the
    # time a boundary takes (BENCHMARKS.md run AE). The provisioned dashboards read count, mean, min, max and last.
    # Alert rules see every statistic whatever is written.
    statistics: list[str] = Field(default_factory=lambda: list(WINDOW_STATISTICS))
    # At most this many series hold window state (about 1.5 KB each); a reading of a new series past it is a
    # dead letter (series_limit) until silent series are forgotten (an hour after their last window closed).
    # Each shard of the series (8 per worker with several workers) holds its share. 0: no limit.
    max_series: int = Field(default=2_000_000, ge=0)

    @field_validator("max_future_skew")
    @classmethod
    def _future_skew(cls, skew: timedelta) -> timedelta:
        return _future_skew(skew)

    @field_validator("tumbling")
    @classmethod
    def _positive(cls, lengths: list[timedelta]) -> list[timedelta]:
        if len(set(lengths)) < len(lengths):
            # Each would be computed and written twice, to the same points.
            raise ValueError("a window length is listed twice")
        for length in lengths:
            if length <= timedelta(0):
                raise ValueError("window lengths must be > 0")
            if (length.total_seconds() * 1000) % 1:
                raise ValueError("window lengths must be whole milliseconds")
        return lengths

    @field_validator("sliding")
    @classmethod
    def _sliding_once(cls, windows: list[SlidingWindowConfig]) -> list[SlidingWindowConfig]:
        shapes = [(w.length, w.offset) for w in windows]
        if len(set(shapes)) < len(shapes):
            # As a tumbling length listed twice: computed and written twice, to the same points.
            raise ValueError("a sliding window (length and offset) is listed twice")
        return windows

    @field_validator("statistics")
    @classmethod
    def _statistics(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in WINDOW_STATISTICS]
        if unknown:
            raise ValueError(f"unknown statistics {unknown}: expected any of {', '.join(WINDOW_STATISTICS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"statistics must not repeat a name (got {names})")
        if "count" not in names:
            raise ValueError("statistics must include count, every window's weight")
        return names

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, qs: list[float]) -> list[float]:
        for q in qs:
            if not 0.0 < q < 1.0:
                raise ValueError(f"quantiles must be between 0 and 1 exclusive (got {q})")
        return qs


class RecoveryConfig(Section):
    """Bytewax recovery: open windows and positions survive a restart."""

    enabled: bool = True
    dir: Path = Path(".fleetwatch/recovery")
    # How long superseded snapshots are kept (Bytewax backup_interval); 0 for a local disk.
    backup_interval: Duration = timedelta(0)


class FlowConfig(Section):
    # Bytewax epoch length: state snapshots and MQTT acknowledgements happen once per epoch.
    epoch_interval: PositiveDuration = timedelta(seconds=1)
    workers: int = Field(default=1, ge=1, le=64)
    # The pipeline's own health is written this often.
    health_interval: PositiveDuration = timedelta(seconds=10)

    @field_validator("health_interval")
    @classmethod
    def _health_interval(cls, interval: timedelta) -> timedelta:
        # Each report is a point in InfluxDB and a line of the log: more than one a second is a flood.
        if interval < timedelta(seconds=1):
            raise ValueError(f"expected at least 1s (got {interval.total_seconds():g}s)")
        return interval


# ------------------------------------------------------------------------------------------- stores


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is this machine's loopback (``localhost``, 127.0.0.0/8, ``::1``).

    >>> is_loopback_url("http://127.0.0.1:8086"), is_loopback_url("http://[::1]:8086")
    (True, True)
    >>> is_loopback_url("http://localhost:8086"), is_loopback_url("https://influxdb:8086")
    (True, False)
    """
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class InfluxDBConfig(Section):
    enabled: bool = True
    api: Literal["v1", "v2"] = "v1"
    url: str = "http://127.0.0.1:8086"
    # v1
    database: str = Field(default="fleetwatch", min_length=1)
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    create_database: bool = True
    # v2
    org: str = "fleetwatch"
    bucket: str = "fleetwatch"
    token: SecretStr | None = None
    token_file: Path | None = None
    # both
    # Points per write request.
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    # Write requests in flight at once, each sent by a thread of its own. InfluxDB stores one request on about
    # one core (more with its garbage collector), so each one more in flight takes a core from whatever shares
    # the store's machine. One is the default: on a small box that also runs the broker and fleetwatch, two in
    # flight made each window boundary's points take both cores, and the flow fell behind (BENCHMARKS.md, run
    # S). Raise it when InfluxDB has cores of its own.
    concurrent_requests: int = Field(default=1, ge=1, le=16)
    flush_interval: PositiveDuration = timedelta(milliseconds=250)
    # "auto": gzip'd unless InfluxDB is on this machine's loopback, where compressing costs CPU on both ends
    # and saves nothing (on the 2-core bench machine it decided whether 100,000 series kept up at 60,000
    # readings/s: BENCHMARKS.md, run S).
    gzip: bool | Literal["auto"] = "auto"
    timeout: PositiveDuration = timedelta(seconds=10)
    retry_max_delay: Duration = timedelta(seconds=30)
    # Points held in memory while InfluxDB is slow or down; beyond it the flow waits (backpressure).
    buffer_max_points: int = Field(default=200_000, ge=1)
    # And at most this many bytes of line protocol (a count alone lets lines of long topics take gigabytes).
    buffer_max_bytes: int = Field(default=256 * 1024**2, ge=1024**2)
    verify_tls: bool = True
    ca_file: Path | None = None

    @property
    def shown_url(self) -> str:
        """The URL as messages show it: without a user or password written into it."""
        return url_without_secrets(self.url)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL (got {url_without_secrets(url)!r}...)")
        check_url_port(url)
        return url.rstrip("/")

    @field_validator("gzip", mode="before")
    @classmethod
    def _gzip(cls, value: object) -> object:
        # One message for the key, rather than one per member of the union.
        if value is True or value is False or value == "auto":
            return value
        raise ValueError(f'expected true, false or "auto" (got {value!r})')

    @field_validator("retry_max_delay")
    @classmethod
    def _retry_delay(cls, delay: timedelta) -> timedelta:
        # Zero would retry in a busy loop while the server is down, a log line each time.
        if delay < _MIN_RETRY_DELAY:
            least = _MIN_RETRY_DELAY.total_seconds()
            raise ValueError(f"expected at least {least:g}s (got {delay.total_seconds():g}s)")
        return delay

    def compresses(self) -> bool:
        """Whether write requests are gzip'd: ``gzip`` as set, or for "auto", when the server is not on loopback."""
        if self.gzip != "auto":
            return self.gzip
        return not is_loopback_url(self.url)

    def resolved_password(self) -> SecretStr | None:
        return read_secret_file(self.password_file, "influxdb.password_file") or self.password

    def v1_credentials(self) -> tuple[str, str] | None:
        """(username, password) for a 1.x server's basic auth, or None without a username; for the InfluxQL
        queries fleetwatch runs besides its writes (the demo's summary, dashboard snapshots)."""
        if self.api != "v1" or not self.username:
            return None
        password = self.resolved_password()
        return self.username, password.get_secret_value() if password else ""

    def resolved_token(self) -> SecretStr | None:
        return read_secret_file(self.token_file, "influxdb.token_file") or self.token


class ElasticsearchConfig(Section):
    """Logs, log rates, dead letters (and, later, alert history) go to Elasticsearch 8.x."""

    enabled: bool = True
    hosts: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:9200"], min_length=1)
    # Auth: an API key (base64 "id:key" as Kibana shows it), or username and password.
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    verify_tls: bool = True
    # Index names start with this: <prefix>-logs, <prefix>-log-rates, <prefix>-dead-letters.
    index_prefix: str = Field(default="fleetwatch", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    # "auto" uses data streams when the server has the data-streams module, else daily indices
    # (<prefix>-logs-YYYY.MM.DD by event time).
    index_mode: Literal["auto", "data_stream", "daily"] = "auto"
    number_of_replicas: int = Field(default=0, ge=0)
    # Documents per bulk request. With two requests in flight, 2,500 shipped JSON lines and syslog text 7-9 %
    # faster than 1,000 (BENCHMARKS.md, runs L14-L18): the server's cost per request (one translog sync each) is
    # spread over more documents.
    batch_size: int = Field(default=2500, ge=1, le=50_000)
    # Bulk requests in flight at once, each sent by a thread of its own (one request keeps one server write
    # thread busy, and the server is not idle while the next request is encoded).
    concurrent_requests: int = Field(default=2, ge=1, le=16)
    flush_interval: PositiveDuration = timedelta(milliseconds=250)
    timeout: PositiveDuration = timedelta(seconds=30)
    retry_max_delay: Duration = timedelta(seconds=30)
    # Documents held in memory while Elasticsearch is slow or down; beyond it the flow waits.
    buffer_max_docs: int = Field(default=50_000, ge=1)
    # And at most about this many bytes of documents (dead letters of large payloads are as large as they are).
    buffer_max_bytes: int = Field(default=256 * 1024**2, ge=1024**2)

    @property
    def shown_hosts(self) -> str:
        """The hosts as messages show them: without a user or password written into their URLs."""
        return ", ".join(url_without_secrets(host) for host in self.hosts)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not host.startswith(("http://", "https://")):
                raise ValueError(f"expected http:// or https:// URLs (got {url_without_secrets(host)!r}...)")
            check_url_port(host)
        return [h.rstrip("/") for h in hosts]

    @model_validator(mode="after")
    def _one_auth(self) -> ElasticsearchConfig:
        if (self.api_key or self.api_key_file) and self.username:
            raise ValueError("give either api_key or username/password, not both")
        if self.ca_file is not None:
            plain = [url_without_secrets(h) for h in self.hosts if h.startswith("http://")]
            if plain:
                # The client refuses TLS options for a plain-HTTP node.
                raise ValueError(f"ca_file: expected https:// hosts only with a CA file (got {', '.join(plain)})")
        if self.retry_max_delay < _MIN_RETRY_DELAY:
            raise ValueError(f"retry_max_delay: expected at least {_MIN_RETRY_DELAY.total_seconds():g}s")
        return self

    def resolved_api_key(self) -> SecretStr | None:
        return read_secret_file(self.api_key_file, "elasticsearch.api_key_file") or self.api_key

    def resolved_password(self) -> SecretStr | None:
        return read_secret_file(self.password_file, "elasticsearch.password_file") or self.password

    def index(self, kind: str) -> str:
        return f"{self.index_prefix}-{kind}"


# ------------------------------------------------------------------------------------------- logs

# The levels a log event's log.level is normalised to, least severe first.
LogLevelName = Literal["trace", "debug", "info", "notice", "warn", "error", "critical", "alert", "emergency"]
LogParserName = Literal["none", "json", "logfmt", "regex", "common", "combined", "syslog", "cri", "docker"]
_INPUT_NAME = r"^[A-Za-z0-9_.-]+$"


# What rsyslog's file formats write after the time: "host sshd[123]: message".
_RSYSLOG_AFTER_TIME = r"(?P<host>\S+) (?P<service>[^\s\[:]+)(?:\[(?P<pid>\d+)\])?: ?(?P<message>(?s:.*))"
# Built-in patterns for kind "regex", chosen by name (``pattern = "rsyslog_traditional"``). A name can never
# be mistaken for a user's pattern: a user's pattern needs a named group, "(?P<...>".
REGEX_PATTERNS: dict[str, str] = {
    # rsyslog's default file format (RSYSLOG_TraditionalFileFormat: /var/log/syslog, /var/log/messages):
    # "Dec  2 09:40:14 host sshd[123]: message". No priority, no year (the year rule of RFC 3164 applies),
    # no zone (parser.timezone). The tag before "[pid]" is the service, the pid goes to fields.pid.
    "rsyslog_traditional": r"^(?P<timestamp>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) " + _RSYSLOG_AFTER_TIME,
    # rsyslog's high-precision file format (RSYSLOG_FileFormat, the default of newer distributions):
    # "2026-12-02T09:40:14.123456+01:00 host sshd[123]: message". The same fields as rsyslog_traditional.
    "rsyslog_file": (
        r"^(?P<timestamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) " + _RSYSLOG_AFTER_TIME
    ),
    # nginx's error log: "2026/12/05 10:00:00 [error] 1234#5678: *42 open() failed ..., client: 1.2.3.4". The
    # time has no zone (parser.timezone); fields.pid, fields.tid and the connection number.
    "nginx_error": (
        r"^(?P<timestamp>\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(?P<level>[a-z]+)\] (?P<pid>\d+)#(?P<tid>\d+): "
        r"(?:\*(?P<connection>\d+) )?(?P<message>(?s:.*))"
    ),
    # Apache httpd's error log, 2.4 ("[Thu Jan 01 00:00:00.123456 2026] [core:error] [pid 12:tid 34] [client
    # 1.2.3.4:5678] AH00126: ...") and 2.2 ("[Thu Jan 01 00:00:00 2026] [error] [client 1.2.3.4] ...").
    "apache_error": (
        r"^\[(?P<timestamp>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d(?:\.\d+)? \d{4})\] "
        r"\[(?:(?P<module>[^:\]\s]*):)?(?P<level>[a-z]+\d?)\] (?:\[pid (?P<pid>\d+)(?::tid (?P<tid>\d+))?\] )?"
        r"(?:\[client (?P<client>[^\]]+)\] )?(?P<message>(?s:.*))"
    ),
    # Kubernetes components and other Go programs using klog/glog: "I1205 10:00:00.123456    1234 main.go:42] message".
    # The letter is the level (I, W, E, F); the time has no year (RFC 3164's year rule) and no zone.
    "klog": (
        r"^(?P<level>[IWEF])(?P<timestamp>\d{4} \d\d:\d\d:\d\d\.\d+)\s+(?P<pid>\d+) (?P<source>[^\s\]]+)\] "
        r"(?P<message>(?s:.*))"
    ),
    # Spring Boot's console and file format, 3.x ("2026-12-05T10:00:00.123+01:00  INFO 4242 --- [shop] [main]
    # c.e.ShopApplication : Started") and 2.x (a space in the time, no application name). Stack traces follow
    # on lines of their own: multiline with start_pattern '^\d{4}-\d\d-\d\d'.
    "spring_boot": (
        r"^(?P<timestamp>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d[.,]\d+(?:Z|[+-]\d\d:?\d\d)?)\s+(?P<level>[A-Z]+) "
        r"(?P<pid>\d+) --- (?:\[(?P<application>[^\]]*)\] )?\[\s*(?P<thread>[^\]]*)\] (?P<logger>\S+)\s*: "
        r"(?P<message>(?s:.*))"
    ),
    # PostgreSQL's stderr log with the default log_line_prefix '%m [%p] ' (and Debian's '%m [%p] %q%u@%d '):
    # "2026-12-05 10:00:00.123 UTC [4242] app@shop ERROR:  message". The level is the severity (LOG, ERROR,
    # FATAL, ...); DETAIL, HINT, STATEMENT and CONTEXT lines continue the line before (README: multiline).
    "postgresql": (
        r"^(?P<timestamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? (?:[A-Za-z]{1,6}|[+-]\d\d(?::?\d\d)?)) "
        r"\[(?P<pid>\d+)\] "
        r"(?:(?P<user>[^@\s]*)@(?P<database>\S*) )?(?P<level>[A-Z][A-Z0-9]*):  (?P<message>(?s:.*))"
    ),
}


# The built-in patterns whose timestamps no automatic form reads: the strptime format that goes with them.
REGEX_TIMESTAMP_FORMATS: dict[str, str] = {"klog": "%m%d %H:%M:%S.%f"}


class ParserConfig(Section):
    """How the lines of one input become fields. ``common``/``combined`` are the Apache/nginx access-log
    formats; ``syslog`` reads RFC 5424 and RFC 3164."""

    kind: LogParserName = "none"
    # regex: a Python pattern with named groups; "timestamp", "level", "message", "service" and "host" are
    # mapped to ECS fields, other groups are kept under the input's field namespace. Or the name of a
    # built-in pattern (REGEX_PATTERNS): "rsyslog_traditional", "rsyslog_file", "nginx_error", "apache_error",
    # "klog", "spring_boot", "postgresql".
    pattern: str | None = None
    # Where the timestamp is and how it is written, for json/logfmt/regex (RFC 3339 and epoch numbers
    # are recognised without a format); a strptime format otherwise.
    timestamp_field: str = "timestamp"
    timestamp_format: str | None = None
    # Timezone for timestamps written without one (syslog RFC 3164, many access logs): an IANA name.
    timezone: str = "UTC"
    level_field: str = "level"
    # The level of a line that names none: Serilog's compact JSON (CLEF, level_field "@l") leaves Information
    # out, as some loggers leave out their default level. Unset: such a line has no level.
    default_level: LogLevelName | None = None
    message_field: str = "message"
    # The keys naming the service and the host (journald's "_SYSTEMD_UNIT" and "_HOSTNAME", bunyan's "name");
    # unset: "service"/"service.name" and "host"/"host.name". A dotted key also finds a nested one
    # ("log.level" reads {"log": {"level": ...}}), for every *_field.
    service_field: str | None = None
    host_field: str | None = None
    # cri and docker: how the application wrote the line inside the runtime's record. "json" or "logfmt": read
    # as those kinds are (the *_field settings apply to it), the runtime's time when the line has none; a line
    # that is not in that format stays the message.
    message_format: Literal["text", "json", "logfmt"] = "text"

    @property
    def time_format(self) -> str | None:
        """``timestamp_format``, or the one of the built-in pattern (``REGEX_TIMESTAMP_FORMATS``) when unset."""
        if self.timestamp_format is None and self.kind == "regex" and self.pattern is not None:
            return REGEX_TIMESTAMP_FORMATS.get(self.pattern)
        return self.timestamp_format

    @property
    def regex(self) -> str | None:
        """The regular expression of kind "regex": the built-in one named by ``pattern``, or ``pattern``."""
        if self.pattern is None:
            return None
        return REGEX_PATTERNS.get(self.pattern, self.pattern)

    @field_validator("timestamp_format")
    @classmethod
    def _strptime_format(cls, fmt: str | None) -> str | None:
        if fmt is None:
            return None
        try:
            datetime.strptime("", fmt)  # noqa: DTZ007 - only the format is looked at
        except ValueError as exc:
            # An empty text fits no useful format; a directive strptime does not know ("%Q") or a lone "%" is
            # an error of the format itself, which would make every line's time invalid.
            if "does not match format" not in str(exc):
                raise ValueError(f"expected a strptime format such as '%d/%b/%Y:%H:%M:%S %z' ({exc})") from None
        return fmt

    @model_validator(mode="after")
    def _pattern(self) -> ParserConfig:
        if self.kind != "regex" and self.pattern is not None:
            # It would be read past: a forgotten kind = "regex", most likely.
            raise ValueError(f"pattern is only read by kind 'regex' (got kind {self.kind!r})")
        if self.kind == "regex":
            builtin = ", ".join(f"'{name}'" for name in REGEX_PATTERNS)
            if not self.pattern:
                raise ValueError(f"kind 'regex' needs a pattern: a regular expression, or one of {builtin}")
            try:
                compiled = re.compile(self.regex or "")
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
            if not compiled.groupindex:
                raise ValueError(
                    f"pattern needs at least one named group, e.g. (?P<level>\\w+), or is one of {builtin}"
                )
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone: expected an IANA name such as 'Europe/Berlin' (got {self.timezone!r})"
            ) from None
        return self


class MultilineConfig(Section):
    # A line matching this starts a new event; other lines belong to the event before (stack traces).
    start_pattern: str
    # A pending event is emitted after this long without a new line.
    flush_timeout: Duration = timedelta(seconds=1)

    @field_validator("start_pattern")
    @classmethod
    def _regex(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern


class FileInputConfig(Section):
    """Files tailed by glob; offsets are Bytewax state, so a restart resumes exactly."""

    name: str = Field(pattern=_INPUT_NAME)
    paths: list[str] = Field(min_length=1)
    # Paths the globs match but the tail leaves alone (fnmatch patterns, "*" spans "/"). By default the
    # compressed files logrotate leaves beside the logs ("app.log.2.gz" under "app.log*"): read as text they
    # would be a stream of invalid_utf8 events. An empty list reads everything the globs match.
    exclude: list[str] = Field(default_factory=lambda: ["*.gz", "*.bz2", "*.xz", "*.zst", "*.lz4", "*.zip"])
    # Where to start in a file seen for the first time: "start" or "end". Files that appear while running
    # are always read from the start.
    read_from: Literal["start", "end"] = "start"
    parser: ParserConfig = ParserConfig()
    multiline: MultilineConfig | None = None
    # ECS service.name and event.dataset unless a parsed field says otherwise.
    service: str | None = None
    dataset: str | None = None
    # Longer events are cut to this size and flagged "truncated".
    max_event_bytes: int = Field(default=65536, ge=256)
    poll_interval: PositiveDuration = timedelta(milliseconds=100)
    # The files' character encoding: UTF-8, UTF-16 ("utf-16-le", as Windows writes it, or "utf-16-be"), or a
    # single-byte one ("latin-1", "cp1252", "iso-8859-15", ...).
    encoding: str = "utf-8"

    @field_validator("paths")
    @classmethod
    def _paths(cls, paths: list[str]) -> list[str]:
        if any(not path.strip() for path in paths):
            raise ValueError("expected file paths or globs, not an empty one")
        return paths

    @field_validator("encoding")
    @classmethod
    def _single_byte(cls, name: str) -> str:
        import codecs

        expected = (
            f"expected 'utf-8', 'utf-16-le', 'utf-16-be' or a single-byte encoding such as 'latin-1' or 'cp1252' "
            f"(got {name!r})"
        )
        try:
            codec = codecs.lookup(name)
        except LookupError:
            raise ValueError(f"unknown encoding: {expected}") from None
        if codec.name in ("utf-8", "utf-16-le", "utf-16-be"):
            return name
        if codec.name == "utf-16":
            raise ValueError(
                "name the byte order: 'utf-16-le' (as Windows writes UTF-16) or 'utf-16-be'; a byte-order mark at "
                "the start of a file is left out either way"
            )
        # Lines are split on the byte "\n": each byte must be one character on its own, whatever comes before
        # it (UTF-16, Shift JIS and ISO-2022 are not), with no escapes read (unicode_escape) and no transform
        # of bytes (hex, base64, rot13).
        # (every byte, then the shift sequences of the stateful encodings: ISO-2022, HZ, SO/SI)
        sample = bytes(range(256)) + b"\x1b$B!!\x1b(B~{!!~}\x0e!!\x0f"
        try:
            whole = sample.decode(codec.name, errors="replace")
            alone = "".join(bytes([b]).decode(codec.name, errors="replace") for b in sample)
            escapes_kept = b"\\u00e9".decode(codec.name) == "\\u00e9"
        except (LookupError, TypeError, ValueError):
            raise ValueError(expected) from None
        one_per_byte = len(whole) == len(sample) and whole == alone
        if not getattr(codec, "_is_text_encoding", True) or not one_per_byte or not escapes_kept:
            raise ValueError(expected)
        return name

    @model_validator(mode="after")
    def _multiline_kind(self) -> FileInputConfig:
        import codecs

        if self.parser.kind in ("cri", "docker") and codecs.lookup(self.encoding).name != "utf-8":
            raise ValueError(f"encoding: parser kind {self.parser.kind!r} reads UTF-8 (container runtimes write it)")
        if self.multiline is not None and self.parser.kind in ("cri", "docker"):
            raise ValueError(
                f"multiline: not available with parser kind {self.parser.kind!r} (the partial records of a"
                " container's line are joined without it; lines of a stack trace are one event each)"
            )
        return self

    @field_validator("paths")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        # Relative globs are taken from the working directory at start, and kept absolute from then on
        # (offsets in the recovery state are per file).
        return [os.path.abspath(os.path.expanduser(p)) for p in paths]


class SyslogInputConfig(Section):
    """A syslog receiver: UDP datagrams, or TCP with RFC 6587 octet counting or newline framing (detected
    per message)."""

    name: str = Field(pattern=_INPUT_NAME)
    protocol: Literal["udp", "tcp"] = "udp"
    listen: str = "127.0.0.1:5514"
    parser: ParserConfig = ParserConfig(kind="syslog")
    service: str | None = None
    dataset: str | None = None
    # Longer messages are cut to this and tagged "truncated" (UDP and TCP).
    max_event_bytes: int = Field(default=65536, ge=256)
    # UDP: the socket receive buffer asked of the kernel (Linux caps it at net.core.rmem_max). What arrives
    # while it is full is dropped by the kernel and counted (syslog_udp_dropped).
    receive_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=4096, le=2**31 - 1)
    # TCP: connections held at once; one more is closed at once and counted (syslog_tcp_refused).
    max_connections: int = Field(default=1000, ge=1)
    # TCP: a connection that sends nothing for this long is closed (its unterminated last message is kept)
    # and counted (syslog_tcp_idle_closed).
    idle_timeout: Duration = timedelta(minutes=5)

    @field_validator("idle_timeout")
    @classmethod
    def _positive_timeout(cls, timeout: timedelta) -> timedelta:
        if timeout <= timedelta(0):
            raise ValueError("expected a duration > 0")
        return timeout

    @field_validator("listen")
    @classmethod
    def _listen(cls, listen: str) -> str:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port (got {listen!r})")
        return listen


class LogsConfig(Section):
    files: list[FileInputConfig] = Field(default_factory=list)
    syslog: list[SyslogInputConfig] = Field(default_factory=list)
    # Log-rate windows (event time): counts by service and level, and the error rate.
    rate_window: Duration = timedelta(minutes=1)
    allowed_lateness: Duration = timedelta(seconds=5)
    # Events stamped further in the future than this are stored with the receive time instead, and tagged.
    max_future_skew: Duration = timedelta(minutes=5)
    # The host.name of file events (syslog messages carry their own).
    host_name: str | None = None
    # A service that has no open log-rate window and has not logged for this long (system time) is
    # forgotten: its event clock goes, so an event of it later than this is counted in a new window.
    rate_idle_after: Duration = timedelta(hours=1)
    # At most this many services hold log-rate state per process; beyond it the least recently seen of those
    # without an open window are forgotten first (counted). A service with an open window is never
    # forgotten, so more may hold state while their windows are open.
    rate_max_services: int = Field(default=20_000, ge=1)

    @field_validator("max_future_skew")
    @classmethod
    def _future_skew(cls, skew: timedelta) -> timedelta:
        return _future_skew(skew)

    @model_validator(mode="after")
    def _unique_names(self) -> LogsConfig:
        names = [i.name for i in self.files] + [i.name for i in self.syslog]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"input names must be unique (repeated: {', '.join(duplicates)})")
        listeners: dict[tuple[str, str], int] = {}
        for i, syslog in enumerate(self.syslog):
            # Two listeners of one protocol on one address: the second could not bind it.
            first = listeners.setdefault((syslog.protocol, syslog.listen), i)
            if first != i:
                raise ValueError(f"syslog[{i}].listen: {syslog.protocol} {syslog.listen} is syslog[{first}]'s already")
        if self.rate_window <= timedelta(0):
            raise ValueError("rate_window must be > 0")
        if self.rate_idle_after <= timedelta(0):
            raise ValueError("rate_idle_after must be > 0")
        return self


class RetentionConfig(Section):
    """How long each kind of data is kept (fleetwatch/retention.py turns this into the stores' tiers).

    InfluxDB: one retention policy (1.x) or bucket (2.x) per tier, created at start. Elasticsearch: the data
    stream lifecycle where the server has data streams, else fleetwatch deletes daily indices past their age
    every ``check_interval``."""

    enabled: bool = True
    # Raw readings, and late readings (stored raw).
    raw: Duration = timedelta(days=7)
    # Window aggregates, per window label ("10s", "1m", sliding "1m/10s"). A window not named here keeps its
    # aggregates 30 days when it is shorter than a minute, 400 days otherwise.
    windows: dict[str, Duration] = Field(default_factory=lambda: {"10s": timedelta(days=30), "1m": timedelta(days=400)})
    # Log documents (Elasticsearch).
    logs: Duration = timedelta(days=30)
    # Log rates (InfluxDB log_rates and the Elasticsearch log-rates index).
    log_rates: Duration = timedelta(days=400)
    # Dead letters (Elasticsearch).
    dead_letters: Duration = timedelta(days=30)
    # Alert history (InfluxDB alerts and the Elasticsearch alerts index).
    alerts: Duration = timedelta(days=400)
    # The pipeline's own health points (InfluxDB fleetwatch_health and fleetwatch_process).
    health: Duration = timedelta(days=30)
    # How often fleetwatch deletes expired daily Elasticsearch indices (when the server has no lifecycle).
    check_interval: PositiveDuration = timedelta(hours=1)

    @model_validator(mode="after")
    def _long_enough(self) -> RetentionConfig:
        # InfluxDB's shortest retention policy is one hour; the other stores have no reason to go lower.
        named = {"raw": self.raw, "logs": self.logs, "log_rates": self.log_rates}
        named |= {"dead_letters": self.dead_letters, "alerts": self.alerts, "health": self.health}
        named |= {f'windows."{label}"': d for label, d in self.windows.items()}
        for key, duration in named.items():
            if duration < timedelta(hours=1):
                raise ValueError(f"{key}: expected a duration of at least 1h (got {duration_label(duration)})")
        if self.check_interval <= timedelta(0):
            raise ValueError("check_interval must be > 0")
        return self


class DeadLetterConfig(Section):
    # Dead letters go to the Elasticsearch dead-letter index when Elasticsearch is enabled; this durable
    # JSON-lines file holds them otherwise, and while Elasticsearch refuses them.
    path: Path = Path(".fleetwatch/dead-letters.jsonl")


class SimulatorConfig(Section):
    devices: int = Field(default=50, ge=1)
    sites: int = Field(default=3, ge=1)
    metrics: list[str] = Field(default_factory=lambda: ["temperature", "humidity", "pressure"])
    interval: Duration = timedelta(seconds=1)
    topic_prefix: str = "sensors"
    qos: int = Field(default=1, ge=0, le=2)
    # Share of messages that are deliberately broken (dead-letter demo).
    bad_ratio: float = Field(default=0.002, ge=0.0, le=1.0)
    seed: int = 42
    # Anomalies for the alert demo: every anomaly_every, one device's temperature jumps by anomaly_delta
    # for a fifth of the period; and device 1 goes silent from silent_from for silent_for (0 = never).
    anomaly_every: Duration = timedelta(seconds=30)
    anomaly_delta: float = 25.0
    silent_from: Duration = timedelta(seconds=10)
    silent_for: Duration = timedelta(seconds=40)
    # Service logs for the logs pipeline: JSON lines written to <log_dir>/<service>.log, plus syslog
    # messages sent to the first [[logs.syslog]] input. Every burst_every, one service throws errors.
    log_dir: Path = Path(".fleetwatch/demo-logs")
    log_services: list[str] = Field(default_factory=lambda: ["checkout", "billing", "search"])
    log_lines_per_second: float = Field(default=30.0, ge=0.0)
    log_burst_every: Duration = timedelta(seconds=20)


class Config(Section):
    mqtt: MQTTConfig = MQTTConfig()
    windows: WindowsConfig = WindowsConfig()
    flow: FlowConfig = FlowConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    influxdb: InfluxDBConfig = InfluxDBConfig()
    elasticsearch: ElasticsearchConfig = ElasticsearchConfig()
    logs: LogsConfig = LogsConfig()
    dead_letters: DeadLetterConfig = DeadLetterConfig()
    retention: RetentionConfig = RetentionConfig()
    alerts: AlertsConfig = AlertsConfig()
    simulator: SimulatorConfig = SimulatorConfig()


# Environment variables that override secrets (and the hosts most often changed per machine).
SECRET_ENV: dict[str, tuple[str, str]] = {
    "FLEETWATCH_MQTT_USERNAME": ("mqtt", "username"),
    "FLEETWATCH_MQTT_PASSWORD": ("mqtt", "password"),
    "FLEETWATCH_INFLUXDB_USERNAME": ("influxdb", "username"),
    "FLEETWATCH_INFLUXDB_PASSWORD": ("influxdb", "password"),
    "FLEETWATCH_INFLUXDB_PASSWORD_FILE": ("influxdb", "password_file"),
    "FLEETWATCH_INFLUXDB_TOKEN": ("influxdb", "token"),
    "FLEETWATCH_ELASTICSEARCH_USERNAME": ("elasticsearch", "username"),
    "FLEETWATCH_ELASTICSEARCH_PASSWORD": ("elasticsearch", "password"),
    "FLEETWATCH_ELASTICSEARCH_API_KEY": ("elasticsearch", "api_key"),
}


class ConfigError(Exception):
    """The configuration is invalid. ``problems`` holds one ``key: expectation`` line per error."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid configuration\n" + "\n".join(f"  {p}" for p in problems))


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(loc: tuple[int | str, ...]) -> str:
    """The key as TOML writes it: ``logs.files[0].parser``; a key that is not a bare key is quoted
    (``mqtt."max payload"``, ``mqtt.""``), so that the message always shows which key it is."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            name = str(part)
            if not _BARE_KEY.fullmatch(name):
                name = json.dumps(name, ensure_ascii=False)
            key += f".{name}" if key else name
    return key or "(top level)"


# Keys whose values are secrets (and a webhook's headers, which carry tokens).
_SECRET_KEYS = frozenset({"password", "token", "api_key", "headers"})


# Keys whose values are URLs, which may carry a password or a webhook's secret path.
_URL_KEYS = frozenset({"url", "hosts", "host"})


def _describe(error: Any) -> str:
    key = _dotted(tuple(p for p in error["loc"] if not str(p).startswith("function-")))
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    # A secret given with the wrong type is still a secret: the message names the key, not the value.
    secret = any(str(part) in _SECRET_KEYS for part in error["loc"])
    if kind not in ("value_error", "assertion_error") and "input" in error and not secret:
        message += f" (got {_shown_input(error['input'], error['loc'])})"
    return f"{key}: {message}"


def _shown_input(value: Any, loc: tuple[Any, ...]) -> str:
    """A wrong value as a message may show it. A table or list given in place of something else is named, not
    printed: it may hold a password, a token or a webhook URL (``[alerts.webhooks]`` for ``[[...]]``). A URL
    is shown without its user info, path and query."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, str) and any(str(part) in _URL_KEYS for part in loc):
        return repr(url_without_secrets(value))
    return repr(value)


def from_dict(data: dict[str, Any], source: str = "config", env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed config; secrets from ``env`` (default: the process environment) win."""
    if env is None:
        env = os.environ
    merged: dict[str, Any] = {
        section: dict(value) if isinstance(value, dict) else value for section, value in data.items()
    }
    # The *_FILE variables first: a secret given itself in the environment wins over any file, from the
    # config or the environment (``resolved_password`` reads the file first when there is one).
    for var, (section, key) in sorted(SECRET_ENV.items(), key=lambda item: not item[1][1].endswith("_file")):
        if env.get(var):
            target = merged.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = env[var]
                if not key.endswith("_file"):
                    target.pop(f"{key}_file", None)
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None
    problems = alert_rule_problems(cfg) + sparkplug_problems(cfg) + retention_problems(cfg)
    problems += secret_file_problems(cfg) + tls_file_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def sparkplug_workers_problem(workers: int) -> str:
    return (
        "Sparkplug B subscriptions need each edge node's messages in order, which only one MQTT connection "
        f"gives: expected 1 worker (got {workers})"
    )


def secret_file_problems(cfg: Config) -> list[str]:
    """Secret files that cannot be read: found at start, with the key, rather than when a client first needs
    them (the message names the file, never its content)."""
    files = [("mqtt.password_file", cfg.mqtt.password_file)]
    if cfg.influxdb.enabled:
        files += [
            ("influxdb.password_file", cfg.influxdb.password_file),
            ("influxdb.token_file", cfg.influxdb.token_file),
        ]
    if cfg.elasticsearch.enabled:
        files += [
            ("elasticsearch.password_file", cfg.elasticsearch.password_file),
            ("elasticsearch.api_key_file", cfg.elasticsearch.api_key_file),
        ]
    if cfg.alerts.grafana is not None:
        files.append(("alerts.grafana.token_file", cfg.alerts.grafana.token_file))
    problems = []
    for key, path in files:
        try:
            read_secret_file(path, key)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def tls_file_problems(cfg: Config) -> list[str]:
    """Certificate and key files of enabled TLS that cannot be read: found at start, with the key, rather than
    as a failure inside the first connection."""
    files: list[tuple[str, Path | None]] = []
    if cfg.mqtt.tls.enabled:
        tls = cfg.mqtt.tls
        files += [("mqtt.tls.ca_file", tls.ca_file), ("mqtt.tls.cert_file", tls.cert_file)]
        files += [("mqtt.tls.key_file", tls.key_file)]
    if cfg.influxdb.enabled:
        files.append(("influxdb.ca_file", cfg.influxdb.ca_file))
    if cfg.elasticsearch.enabled:
        files.append(("elasticsearch.ca_file", cfg.elasticsearch.ca_file))
    problems = []
    for key, path in files:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            problems.append(f"{key}: expected a readable file (got {str(path)!r}: {exc.strerror})")
    if not problems:
        problems += _tls_load_problems(cfg)
    return problems


def _tls_load_problems(cfg: Config) -> list[str]:
    """Readable certificate files that TLS cannot load (not PEM, a key of another certificate): found at start,
    as the first connection would find them."""
    import ssl

    cas: list[tuple[str, Path]] = []
    tls = cfg.mqtt.tls
    if tls.enabled and tls.ca_file is not None:
        cas.append(("mqtt.tls.ca_file", tls.ca_file))
    for key, store in (("influxdb", cfg.influxdb), ("elasticsearch", cfg.elasticsearch)):
        if store.enabled and store.ca_file is not None:
            cas.append((f"{key}.ca_file", store.ca_file))
    problems = []
    for key, ca_file in cas:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"{key}: expected PEM certificates TLS can load (got {_ssl_reason(exc)})")
    if tls.enabled and tls.cert_file is not None and tls.key_file is not None:
        try:
            # An empty password, not OpenSSL's prompt on the terminal: an encrypted key (which the MQTT client
            # cannot use either) is reported, not waited on.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(tls.cert_file, tls.key_file, password=b"")
        except (ssl.SSLError, OSError) as exc:
            problems.append(
                "mqtt.tls.cert_file and key_file: expected a PEM certificate and its own unencrypted PEM key "
                f"(got {_ssl_reason(exc)})"
            )
    return problems


def _ssl_reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc.strerror or exc)


def run_problems(cfg: Config) -> list[str]:
    """What a valid config still lacks to be run: something to read, and somewhere to write."""
    problems = []
    if not (cfg.mqtt.subscriptions or cfg.logs.files or cfg.logs.syslog):
        problems.append(
            "expected at least one input: [[mqtt.subscriptions]], [[logs.files]] or [[logs.syslog]] (got none)"
        )
    if not (cfg.influxdb.enabled or cfg.elasticsearch.enabled):
        problems.append("expected influxdb.enabled or elasticsearch.enabled: with both off nothing is stored")
    return problems


def sparkplug_problems(cfg: Config) -> list[str]:
    if cfg.flow.workers > 1 and cfg.mqtt.sparkplug_subscriptions():
        return [f"flow.workers: {sparkplug_workers_problem(cfg.flow.workers)}"]
    return []


def alert_rule_problems(cfg: Config) -> list[str]:
    """Rules from ``alerts.rules_file`` are validated here too, and every rule on a window statistic must
    name a window and a quantile the pipeline computes."""
    try:
        rules = load_rules(cfg.alerts)
    except ValueError as exc:
        return str(exc).splitlines()
    windows = computed_windows(cfg)
    quantiles = {quantile_field(q) for q in cfg.windows.quantiles}
    problems = []
    for rule in rules:
        if rule.target != "window":
            continue
        if rule.window not in windows:
            problems.append(
                f"alerts: rule {rule.name!r}: window {rule.window!r} is not computed "
                f"(windows: {', '.join(sorted(windows)) or 'none'})"
            )
        if rule.stat[:1] == "p" and rule.stat[1:2].isdigit() and rule.stat not in quantiles:
            problems.append(
                f"alerts: rule {rule.name!r}: stat {rule.stat!r} is not computed "
                f"(windows.quantiles gives {', '.join(sorted(quantiles)) or 'none'})"
            )
    return problems


def computed_windows(cfg: Config) -> set[str]:
    """The labels of every window the pipeline computes: ``10s``, ``1m``, sliding ``1m/10s``."""
    windows = {duration_label(t) for t in cfg.windows.tumbling}
    return windows | {f"{duration_label(s.length)}/{duration_label(s.offset)}" for s in cfg.windows.sliding}


def retention_problems(cfg: Config) -> list[str]:
    """A retention for a window the pipeline does not compute is a typo; a tier policy next to a single
    ``influxdb.retention_policy`` is a contradiction."""
    if not cfg.retention.enabled:
        return []
    problems = []
    windows = computed_windows(cfg)
    # Only labels the file names: the defaults ("10s", "1m") are for the default windows, and a window not
    # named keeps its aggregates as long as the default of its length.
    named = cfg.retention.windows if "windows" in cfg.retention.model_fields_set else {}
    for label in named:
        if label not in windows:
            problems.append(
                f'retention.windows."{label}": no such window is computed (windows: {", ".join(sorted(windows))})'
            )
    if cfg.influxdb.retention_policy:
        problems.append(
            "influxdb.retention_policy: not used while [retention] is enabled (each tier is written to its own "
            "policy); remove it, or set retention.enabled = false to write everything to that one policy"
        )
    return problems


def load(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML file; raise ``ConfigError`` naming every bad key."""
    path = Path(path)
    try:
        if is_special_file(path):
            # A FIFO or a device: reading it could block the start for ever.
            raise ConfigError(str(path), ["not a regular file"])
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except OSError as exc:  # a directory, no permission
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text (TOML is): byte {exc.start}: {exc.reason}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return from_dict(data, str(path), env)
