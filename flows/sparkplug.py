"""Sparkplug B edge nodes, as one Bytewax stateful step keyed by edge node (``<group>/<node>``).

The parse step decodes each Sparkplug message without state (``collectors.mqtt.sparkplug``); this step holds
what a message's meaning depends on, per edge node, as Bytewax state (so a restart with recovery on keeps it):

- **aliases and datatypes** from the births: NBIRTH declares the node's metrics, DBIRTH a device's; data
  messages then name a metric by alias alone and leave its datatype out. A new NBIRTH starts over (the
  node's devices must be born again). A metric whose alias (or name) no birth in effect declared is a dead
  letter (``sparkplug_unknown_alias``, ``sparkplug_unknown_metric``), as is data of a node or device that has
  no birth in effect (``sparkplug_no_birth``: before its first birth, or after its death).
- **the sequence number**: every message of a node's session but NDEATH carries ``seq``, 0..255, one more
  each time, from the NBIRTH's. A message with another number is a gap: counted (health
  ``sparkplug_seq_gaps`` and ``sparkplug_seq_missed``; the node's total in ``sparkplug_state``,
  ``metric=seq_gaps``), and its data is still used.
- **online state**: births set a node or device online, NDEATH (the MQTT will the broker publishes when the
  node's connection dies) sets the node and all its devices offline, DDEATH a device. An NDEATH whose
  ``bdSeq`` is not the one of the NBIRTH in effect belongs to an earlier session: ignored, counted
  (``sparkplug_stale_deaths``). Each change is a reading of ``sparkplug_state`` (``metric=online``, 1 or 0),
  written raw and watched by the alert rules, so ``online < 1`` is a ready deadman rule.

Readings: integers (signed ones from two's complement), floats, doubles and booleans (1/0). Strings, text,
UUIDs, bytes, files, DateTime, data sets, templates, property sets, arrays and null values are no readings:
they are skipped and counted (``sparkplug_metrics_ignored``). The protocol's own metrics (``bdSeq``,
``Node Control/…``, ``Device Control/…``) are not readings either. Event time: the metric's timestamp, else
the payload's (milliseconds), else the receive time; an NDEATH's state change is stamped with the receive
time (its payload was written when the node connected).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable
from typing import NamedTuple

from bytewax.operators import StatefulBatchLogic

from collectors.mqtt.payloads import PayloadError
from collectors.mqtt.sparkplug import DOUBLE, FLOAT, SparkplugMessage, SparkplugMetric, numeric_value
from fleetwatch.record import DeadLetter, Reading, series_key
from flows import health

STATE_MEASUREMENT = "sparkplug_state"
_MS = 1_000_000
_TARGET_CACHE_LIMIT = 100_000
_PROTOCOL_PREFIXES = ("Node Control/", "Device Control/")


def _protocol_metric(name: str) -> bool:
    return name == "bdSeq" or name.startswith(_PROTOCOL_PREFIXES)


class _Target(NamedTuple):
    name: str
    # The datatype the births declared (0: none).
    datatype: int
    # The reading's series key; None for a metric that is no reading (the protocol's own, ignore_fields).
    series: str | None


class SparkplugResult(NamedTuple):
    readings: list[Reading]
    # Readings of subscriptions with write_raw.
    raw: list[Reading]
    # sparkplug_state readings: online 1/0 per node and device, seq_gaps per node.
    state: list[Reading]
    dead_letters: list[DeadLetter]


class NodeState:
    """What one edge node's messages mean, from its births: kept in Bytewax state."""

    __slots__ = ("aliases", "bd_seq", "devices", "gaps", "metrics", "next_seq", "online")

    def __init__(self) -> None:
        self.online = False
        # The bdSeq of the NBIRTH in effect: an NDEATH with another is from an earlier session.
        self.bd_seq: int | None = None
        # The seq the next message should carry; None before the first birth.
        self.next_seq: int | None = None
        # alias -> (device, name, datatype), for the node ("") and its devices: aliases are unique per node.
        self.aliases: dict[int, tuple[str, str, int]] = {}
        # (device, name) -> datatype, for metrics sent by name.
        self.metrics: dict[tuple[str, str], int] = {}
        # device -> online; a device is known from its DBIRTH.
        self.devices: dict[str, bool] = {}
        self.gaps = 0

    def __getstate__(self) -> tuple[object, ...]:
        return (1, self.online, self.bd_seq, self.next_seq, self.aliases, self.metrics, self.devices, self.gaps)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        if state[0] != 1:
            raise ValueError(f"Sparkplug node state of an unknown version {state[0]!r}")
        (_, self.online, self.bd_seq, self.next_seq, self.aliases, self.metrics, self.devices, self.gaps) = state  # type: ignore[assignment]


class SparkplugLogic(StatefulBatchLogic[list[SparkplugMessage], SparkplugResult, bytes]):
    """One edge node. Snapshots are pickled bytes (immutable, as Bytewax asks)."""

    def __init__(self, resume: bytes | None, max_future_ns: int, max_age_ns: int) -> None:
        self.node: NodeState = pickle.loads(resume) if resume is not None else NodeState()
        self._max_future_ns = max_future_ns
        self._max_age_ns = max_age_ns
        # (measurement, ignore_fields, device, alias or name) -> what the metric is; not state, built again
        # after a restart, and cleared by every birth (which may declare aliases anew).
        self._targets: dict[tuple[str, frozenset[str], str, int | str], _Target] = {}

    def on_batch(self, values: list[list[SparkplugMessage]]) -> tuple[Iterable[SparkplugResult], bool]:
        out = SparkplugResult([], [], [], [])
        now_ns = time.time_ns()
        for messages in values:
            for message in messages:
                try:
                    self._message(message, now_ns, out)
                except Exception as exc:
                    # As in the parser: a message nothing foresaw is a dead letter, never an exception that stops
                    # the pipeline (the broker would redeliver it after every restart).
                    self._dead(out, message, "undecodable", f"{type(exc).__name__}: {exc}")
        stats = health.counters()
        stats.readings += len(out.readings)
        if out.dead_letters:
            stats.parse_errors += len(out.dead_letters)
            stats.add_dead([d.reason for d in out.dead_letters])
        if out.readings:
            stats.lag_seconds = max(0.0, (now_ns - out.readings[-1].ts_ns) / 1e9)
        if out.readings or out.state or out.dead_letters:
            return [out], StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.node, protocol=pickle.HIGHEST_PROTOCOL)

    # -- per message

    def _message(self, message: SparkplugMessage, now_ns: int, out: SparkplugResult) -> None:
        node = self.node
        kind = message.kind
        if kind == "NDEATH":
            self._death(message, out)
            return
        if kind == "NBIRTH":
            self._node_birth(message, out)
        elif node.next_seq is None or not node.online:
            self._dead(out, message, "sparkplug_no_birth", f"{kind} of edge node {self._node_name(message)}")
            return
        else:
            self._follow_seq(message, out)
            if kind == "DBIRTH":
                self._device_birth(message, out)
            elif kind == "DDEATH":
                if node.devices.get(message.device):
                    node.devices[message.device] = False
                    out.state.append(self._state(message, 0.0, self._stamp(message, message.received_ns)))
                return
            elif kind == "DDATA" and not node.devices.get(message.device):
                self._dead(
                    out,
                    message,
                    "sparkplug_no_birth",
                    f"DDATA of device {message.device!r} of edge node {self._node_name(message)}",
                )
                return
        self._readings(message, now_ns, out)

    def _node_birth(self, message: SparkplugMessage, out: SparkplugResult) -> None:
        node = self.node
        node.aliases = {}
        node.metrics = {}
        self._targets.clear()
        # The node's devices are known only once born again.
        node.devices = {d: False for d in node.devices}
        node.next_seq = ((message.seq or 0) + 1) % 256
        node.bd_seq = None
        for metric in message.metrics:
            if metric.name == "bdSeq" and isinstance(metric.value, int):
                node.bd_seq = metric.value
            self._declare("", metric)
        node.online = True
        out.state.append(self._state(message, 1.0, self._stamp(message, message.received_ns)))

    def _device_birth(self, message: SparkplugMessage, out: SparkplugResult) -> None:
        node = self.node
        device = message.device
        self._targets.clear()
        for alias in [a for a, (d, _, _) in node.aliases.items() if d == device]:
            del node.aliases[alias]
        for key in [k for k in node.metrics if k[0] == device]:
            del node.metrics[key]
        for metric in message.metrics:
            self._declare(device, metric)
        node.devices[device] = True
        out.state.append(self._state(message, 1.0, self._stamp(message, message.received_ns)))

    def _declare(self, device: str, metric: SparkplugMetric) -> None:
        if not metric.name:
            return  # a birth must name every metric; the data then cannot be resolved (dead letters say so)
        self.node.metrics[(device, metric.name)] = metric.datatype
        if metric.alias is not None:
            self.node.aliases[metric.alias] = (device, metric.name, metric.datatype)

    def _death(self, message: SparkplugMessage, out: SparkplugResult) -> None:
        node = self.node
        bd_seq = next(
            (m.value for m in message.metrics if m.name == "bdSeq" and isinstance(m.value, int)),
            None,
        )
        if node.bd_seq is not None and bd_seq is not None and bd_seq != node.bd_seq:
            health.counters().sparkplug_stale_deaths += 1
            return
        if not node.online:
            return  # already offline (a death seen twice, or before any birth)
        node.online = False
        node.next_seq = None
        # An NDEATH's payload was written when the node connected (it is the MQTT will): receive time.
        at = message.received_ns
        for device, online in node.devices.items():
            if online:
                node.devices[device] = False
                out.state.append(
                    self._state_of(message, {**message.tags, "device": device}, 0.0, at),
                )
        out.state.append(self._state(message, 0.0, at))

    def _follow_seq(self, message: SparkplugMessage, out: SparkplugResult) -> None:
        node = self.node
        seq = message.seq
        if seq is None:
            return  # a seq is required; without one there is nothing to follow
        expected = node.next_seq
        node.next_seq = (seq + 1) % 256
        if expected is None or seq == expected:
            return
        node.gaps += 1
        stats = health.counters()
        stats.sparkplug_seq_gaps += 1
        stats.sparkplug_seq_missed += (seq - expected) % 256
        out.state.append(
            self._state_of(message, self._node_tags(message), float(node.gaps), message.received_ns, "seq_gaps")
        )

    def _readings(self, message: SparkplugMessage, now_ns: int, out: SparkplugResult) -> None:
        node = self.node
        device = message.device
        measurement = message.measurement
        skip = message.ignore
        targets = self._targets
        payload_ts = self._stamp(message, message.received_ns)
        newest_ok = now_ns + self._max_future_ns
        oldest_ok = now_ns - self._max_age_ns if self._max_age_ns else -(2**63)
        ignored = 0
        for metric in message.metrics:
            name = metric.name
            datatype = metric.datatype
            alias = metric.alias
            if alias is not None and not (name and datatype):
                target = targets.get((measurement, skip, device, alias))
                if target is None:
                    declared = node.aliases.get(alias)
                    if declared is None or declared[0] != device:
                        self._dead(
                            out,
                            message,
                            "sparkplug_unknown_alias",
                            f"alias {alias} is not declared by the births of {self._where(message)}",
                        )
                        continue
                    target = self._target(message, (measurement, skip, device, alias), declared[1], declared[2])
            else:
                target = targets.get((measurement, skip, device, name))
                if target is None:
                    declared_type = node.metrics.get((device, name), 0)
                    target = self._target(message, (measurement, skip, device, name), name, declared_type)
            datatype = datatype or target.datatype
            if not datatype:
                self._dead(
                    out,
                    message,
                    "sparkplug_unknown_metric",
                    f"metric {name!r} has no datatype and is not declared by the births of {self._where(message)}",
                )
                continue
            series = target.series
            if series is None:
                continue  # the protocol's own metrics, and ignore_fields
            if metric.is_null:
                ignored += 1
                continue
            field = metric.field
            if (field == "double_value" and datatype == DOUBLE) or (field == "float_value" and datatype == FLOAT):
                # The common case, without a call: a float as it is, if finite.
                value = metric.value
                assert isinstance(value, float)
                if value - value != 0.0:
                    self._dead(out, message, "non_finite", f"metric {target.name!r} is {value}")
                    continue
            else:
                try:
                    number = numeric_value(metric, datatype)
                except PayloadError as err:
                    self._dead(out, message, err.reason, err.detail)
                    continue
                if number is None:
                    ignored += 1
                    continue
                value = number
            ts = metric.ts_ms * _MS if metric.ts_ms is not None else payload_ts
            if not oldest_ok <= ts <= newest_ok:
                self._dead(
                    out,
                    message,
                    "timestamp_out_of_range",
                    f"metric {target.name!r}: event time {ts} ns is outside the accepted skew",
                )
                continue
            reading = Reading(measurement, series, value, ts)
            out.readings.append(reading)
            if message.write_raw:
                out.raw.append(reading)
        if ignored:
            health.counters().sparkplug_metrics_ignored += ignored

    def _target(
        self, message: SparkplugMessage, key: tuple[str, frozenset[str], str, int | str], name: str, datatype: int
    ) -> _Target:
        """What a metric of the message's device names (by alias or by name): cached until the next birth."""
        targets = self._targets
        if len(targets) >= _TARGET_CACHE_LIMIT:
            targets.clear()
        series = None
        if not _protocol_metric(name) and name not in message.ignore:
            series = series_key(message.measurement, {**message.tags, "metric": name})
        target = targets[key] = _Target(name, datatype, series)
        return target

    # -- helpers

    @staticmethod
    def _stamp(message: SparkplugMessage, default_ns: int) -> int:
        return message.ts_ms * _MS if message.ts_ms is not None else default_ns

    @staticmethod
    def _node_tags(message: SparkplugMessage) -> dict[str, str]:
        return {k: v for k, v in message.tags.items() if k != "device"}

    def _state(self, message: SparkplugMessage, online: float, at: int) -> Reading:
        tags = message.tags if message.device else self._node_tags(message)
        return self._state_of(message, tags, online, at)

    @staticmethod
    def _state_of(
        message: SparkplugMessage, tags: dict[str, str], value: float, at: int, metric: str = "online"
    ) -> Reading:
        return Reading(STATE_MEASUREMENT, series_key(STATE_MEASUREMENT, {**tags, "metric": metric}), value, at)

    @staticmethod
    def _node_name(message: SparkplugMessage) -> str:
        return f"{message.group}/{message.node}"

    def _where(self, message: SparkplugMessage) -> str:
        node = self._node_name(message)
        return f"device {message.device!r} of edge node {node}" if message.device else f"edge node {node}"

    @staticmethod
    def _dead(out: SparkplugResult, message: SparkplugMessage, reason: str, detail: str) -> None:
        out.dead_letters.append(
            DeadLetter(reason, f"mqtt:{message.topic}", message.payload, message.received_ns, detail)
        )
