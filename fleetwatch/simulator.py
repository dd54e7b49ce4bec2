"""Simulators for the demo and the tests.

Devices: a fleet of sensors publishing readings over MQTT, with a share of broken payloads. Topics are
``<prefix>/<site>/<device>/<metric>`` with a bare number payload (as ESPHome and Home Assistant publish).
Values follow a smooth daily-ish curve plus noise, deterministic for a seed, with anomalies for the alert
rules: a device running hot now and then, and a device that goes silent for a while.

Services: JSON-lines logs in a directory, one file per service, with a level mix and periodic error
bursts, and RFC 3164 syslog messages over UDP.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from collectors.mqtt.client import apply_credentials_and_tls
from fleetwatch.config import MQTTConfig, SimulatorConfig

# Broken payloads the pipeline must dead-letter, one of each kind.
BAD_PAYLOADS: tuple[bytes, ...] = (b"NaN", b"\xff\xfe\xfd", b"twenty", b"inf", b"9" * 70_000)

_BASE = {"temperature": 21.0, "humidity": 45.0, "pressure": 1013.0, "co2": 600.0, "battery": 95.0}


@dataclass
class SimulatorStats:
    published: int = 0
    bad: int = 0


def topics(cfg: SimulatorConfig) -> list[tuple[str, str]]:
    """(topic, metric) for every device and metric."""
    out = []
    for d in range(cfg.devices):
        site = f"site{d % cfg.sites}"
        for metric in cfg.metrics:
            out.append((f"{cfg.topic_prefix}/{site}/dev{d:05d}/{metric}", metric))
    return out


class SimulatorError(RuntimeError):
    """The simulator cannot publish: the broker cannot be reached, or refused it."""


def connect(mqtt: MQTTConfig, client_id: str, timeout: float = 10.0) -> paho.Client:
    """A publishing client connected as the config says (credentials, TLS, protocol), once the broker accepted
    it; else SimulatorError with the broker's answer."""
    protocol = paho.MQTTv5 if mqtt.protocol == "5" else paho.MQTTv311
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    client.max_queued_messages_set(0)
    apply_credentials_and_tls(client, mqtt)
    answered = threading.Event()
    refusal: list[str] = []

    def on_connect(client: paho.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            refusal.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    where = f"the MQTT broker at {mqtt.host}:{mqtt.port}"
    try:
        client.connect(mqtt.host, mqtt.port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        raise SimulatorError(f"cannot connect to {where}: {exc}") from None
    client.loop_start()
    if not answered.wait(timeout) or refusal:
        client.disconnect()
        client.loop_stop()
        answer = refusal[0] if refusal else f"no answer in {timeout:g} s"
        raise SimulatorError(f"{where} refused the simulator: {answer}")
    return client


def run_simulator(
    sim: SimulatorConfig,
    mqtt: MQTTConfig,
    duration: float,
    on_progress: Callable[[SimulatorStats], None] | None = None,
) -> SimulatorStats:
    rng = random.Random(sim.seed)
    # The seed makes the readings repeatable; the client id must differ between simulators running at once,
    # or the broker disconnects one for the other.
    client = connect(mqtt, f"fleetwatch-sim-{os.getpid()}-{os.urandom(3).hex()}")
    stats = SimulatorStats()
    all_topics = topics(sim)
    interval = sim.interval.total_seconds()
    start = time.monotonic()
    tick = 0
    try:
        anomaly_every = max(1.0, sim.anomaly_every.total_seconds())
        silent_from, silent_for = sim.silent_from.total_seconds(), sim.silent_for.total_seconds()
        silent_device = f"/dev{1 % sim.devices:05d}/"
        while time.monotonic() - start < duration:
            elapsed = time.monotonic() - start
            phase = (time.time() % 600) / 600 * 2 * math.pi
            # The device whose temperature runs hot now, if any.
            hot = ""
            if elapsed % anomaly_every < anomaly_every / 5:
                hot = f"/dev{int(elapsed // anomaly_every) * 7 % sim.devices:05d}/"
            silent = silent_for > 0 and silent_from <= elapsed < silent_from + silent_for
            for topic, metric in all_topics:
                if silent and silent_device in topic:
                    continue
                if rng.random() < sim.bad_ratio:
                    payload = BAD_PAYLOADS[stats.bad % len(BAD_PAYLOADS)]
                    stats.bad += 1
                else:
                    base = _BASE.get(metric, 50.0)
                    wave = math.sin(phase + zlib.crc32(topic.encode()) % 7)
                    value = base * (1 + 0.05 * wave) + rng.gauss(0, base * 0.01)
                    if hot and metric == "temperature" and hot in topic:
                        value += sim.anomaly_delta
                    payload = f"{value:.3f}".encode()
                client.publish(topic, payload, qos=sim.qos)
                stats.published += 1
            tick += 1
            if on_progress:
                on_progress(stats)
            sleep = start + tick * interval - time.monotonic()
            if sleep > 0:
                time.sleep(sleep)
    finally:
        # Let QoS 1 messages be delivered before leaving.
        deadline = time.monotonic() + 10
        while client.want_write() and time.monotonic() < deadline:
            time.sleep(0.05)
        client.disconnect()
        client.loop_stop()
    return stats


@dataclass
class LogSimulatorStats:
    lines: int = 0
    errors: int = 0
    syslog: int = 0


_LOG_MESSAGES = {
    "info": ["request served", "cache hit", "user signed in", "order created", "payment authorised"],
    "warn": ["slow upstream", "retrying request", "cache miss storm"],
    "error": ["upstream timed out", "database connection refused", "payment declined by gateway"],
}


def run_log_simulator(
    sim: SimulatorConfig,
    syslog_target: tuple[str, int] | None,
    duration: float,
    on_progress: Callable[[LogSimulatorStats], None] | None = None,
) -> LogSimulatorStats:
    """Write service logs for ``duration`` seconds; every ``log_burst_every`` one service logs errors only,
    for a fifth of the period."""
    rng = random.Random(sim.seed + 1)
    sim.log_dir.mkdir(parents=True, exist_ok=True)
    files = {svc: open(sim.log_dir / f"{svc}.log", "a", encoding="utf-8") for svc in sim.log_services}  # noqa: SIM115
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if syslog_target else None
    stats = LogSimulatorStats()
    burst_every = max(1.0, sim.log_burst_every.total_seconds())
    tick_s = 0.1
    per_tick = sim.log_lines_per_second * tick_s
    start = time.monotonic()
    owed = 0.0
    try:
        while time.monotonic() - start < duration:
            elapsed = time.monotonic() - start
            cycle = int(elapsed // burst_every)
            bursting = (
                sim.log_services[cycle % len(sim.log_services)] if elapsed % burst_every < burst_every / 5 else ""
            )
            owed += per_tick
            while owed >= 1:
                owed -= 1
                service = rng.choice(sim.log_services)
                roll = rng.random()
                level = "error" if service == bursting or roll < 0.02 else "warn" if roll < 0.1 else "info"
                now = datetime.now(UTC)
                line = {
                    "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "level": level,
                    "service": service,
                    "message": rng.choice(_LOG_MESSAGES[level]),
                    "duration_ms": round(rng.expovariate(1 / 40), 1),
                    "request_id": f"{rng.getrandbits(48):012x}",
                }
                files[service].write(json.dumps(line) + "\n")
                stats.lines += 1
                stats.errors += level == "error"
                if udp is not None and syslog_target is not None and rng.random() < 0.1:
                    severity = {"info": 6, "warn": 4, "error": 3}[level]
                    stamp = f"{now:%b} {now.day:2d} {now:%H:%M:%S}"  # RFC 3164 pads the day with a space
                    message = f"<{8 + severity}>{stamp} gateway-1 {service}[{100 + len(service)}]: {line['message']}"
                    udp.sendto(message.encode(), syslog_target)
                    stats.syslog += 1
            for fh in files.values():
                fh.flush()
            if on_progress:
                on_progress(stats)
            time.sleep(tick_s)
    finally:
        for fh in files.values():
            fh.close()
        if udp is not None:
            udp.close()
    return stats
