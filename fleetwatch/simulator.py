"""Device simulator: a fleet of sensors publishing readings over MQTT, with a share of broken payloads.

Topics are ``<prefix>/<site>/<device>/<metric>`` with a bare number payload (as ESPHome and Home Assistant
publish). Values follow a smooth daily-ish curve plus noise, deterministic for a seed.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

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


def run_simulator(
    sim: SimulatorConfig,
    mqtt: MQTTConfig,
    duration: float,
    on_progress: Callable[[SimulatorStats], None] | None = None,
) -> SimulatorStats:
    rng = random.Random(sim.seed)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fleetwatch-sim-{rng.randrange(1 << 30)}")
    client.max_queued_messages_set(0)
    if mqtt.username:
        password = mqtt.resolved_password()
        client.username_pw_set(mqtt.username, password.get_secret_value() if password else None)
    client.connect(mqtt.host, mqtt.port, keepalive=30)
    client.loop_start()
    stats = SimulatorStats()
    all_topics = topics(sim)
    interval = sim.interval.total_seconds()
    start = time.monotonic()
    tick = 0
    try:
        while time.monotonic() - start < duration:
            phase = (time.time() % 600) / 600 * 2 * math.pi
            for topic, metric in all_topics:
                if rng.random() < sim.bad_ratio:
                    payload = BAD_PAYLOADS[stats.bad % len(BAD_PAYLOADS)]
                    stats.bad += 1
                else:
                    base = _BASE.get(metric, 50.0)
                    wave = math.sin(phase + zlib.crc32(topic.encode()) % 7)
                    value = base * (1 + 0.05 * wave) + rng.gauss(0, base * 0.01)
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
