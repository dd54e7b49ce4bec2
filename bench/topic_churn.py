"""How fast the MQTT parser takes topics it has never seen, short and of 65,535 bytes (MQTT's largest), with
the topic cache bounded: ``python -m bench.topic_churn``. No servers: the parser alone, in this process, from the
installed wheel."""

from __future__ import annotations

import time

from bench.installed import use_installed_modules

use_installed_modules()

from collectors.mqtt.parse import MessageBatch, MQTTParser  # noqa: E402  (after use_installed_modules: the wheel's)
from fleetwatch.config import from_dict  # noqa: E402

BATCH = 500


def parser(**mqtt: object) -> MQTTParser:
    subscriptions = [{"topic": "s/+/+/+", "template": "s/{site}/{device}/{metric}"}]
    cfg = from_dict({"mqtt": {"subscriptions": subscriptions, **mqtt}}, env={})
    return MQTTParser(cfg.mqtt, cfg.windows)


def topic(batch: int, i: int, size: int) -> str:
    head = f"s/site/dev{batch}_{i}_"
    return head + "d" * max(0, size - len(head) - 5) + "/temp"


def run(label: str, size: int, count: int, **mqtt: object) -> None:
    p = parser(**mqtt)
    spent = 0.0
    readings = dead_letters = 0
    for b in range(count // BATCH):
        messages = [(topic(b, i, size), b"1.5") for i in range(BATCH)]
        start = time.perf_counter()
        parsed = p.parse(MessageBatch(time.time_ns(), messages))
        spent += time.perf_counter() - start
        readings += len(parsed.readings)
        # (a 65,535-byte topic makes a series key past InfluxDB's limit: a dead letter, after the same parsing)
        dead_letters += len(parsed.dead_letters)
    handled = readings + dead_letters
    print(
        f"{label}: {handled:,} new topics ({readings:,} readings, {dead_letters:,} dead letters) in {spent:.2f} s "
        f"of parsing = {handled / spent:,.0f} new topics/s; cache at the end {p.cached_topics():,} topics, "
        f"{p.cached_bytes() / 2**20:.1f} MiB estimated"
    )


if __name__ == "__main__":
    run("30-byte topics", 30, 200_000, topic_cache_max_topics=50_000)
    run("60,000-byte topics", 60_000, 20_000, topic_cache_max_bytes=64 * 1024**2)
    run("65,535-byte topics", 65_535, 20_000, topic_cache_max_bytes=64 * 1024**2)
