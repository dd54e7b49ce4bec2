"""The MQTT parser alone: what a message costs at a given number of topics.

``python -m bench.parse_step`` feeds one ``MQTTParser`` (the subscription and JSON format of ``make bench``: one topic
per series, ``{"ts": <ms>, "v": <value>}``) batches of 1,000 messages, round-robin over BENCH_PARSE_TOPICS topics,
for BENCH_PARSE_MESSAGES messages after a first pass over every topic (the topic cache filled, as in a running
pipeline). Prints the CPU time per message. No servers; the installed wheel's modules (compiled, as users run them),
with the garbage collector tuned as ``fleetwatch run`` tunes it.
"""

from __future__ import annotations

import gc
import os
import time

from bench.installed import use_installed_modules

use_installed_modules()

from collectors.mqtt import parse as parse_module  # noqa: E402  (after use_installed_modules: the wheel's modules)
from collectors.mqtt.parse import MessageBatch, MQTTParser  # noqa: E402
from fleetwatch.config import from_dict  # noqa: E402
from fleetwatch.runner import GC_THRESHOLDS  # noqa: E402

TOPICS = [int(t) for t in os.environ.get("BENCH_PARSE_TOPICS", "1000,100000").split(",")]
MESSAGES = int(os.environ.get("BENCH_PARSE_MESSAGES", "2000000"))
BATCH = 1_000


def parser() -> MQTTParser:
    subscriptions = [
        {"topic": "b/+/+/+", "template": "b/{site}/{device}/{metric}", "format": "json"}
        | {"timestamp_field": "ts", "timestamp_unit": "ms"}
    ]
    cfg = from_dict({"mqtt": {"subscriptions": subscriptions}}, env={})
    return MQTTParser(cfg.mqtt, cfg.windows)


def run(topics: int) -> dict[str, float]:
    names = [f"b/site{d % 10}/dev{d:05d}/temp" for d in range(topics)]
    now_ms = time.time_ns() // 1_000_000
    batches = []
    for b in range(max(MESSAGES, topics) // BATCH):
        messages = []
        for i in range(BATCH):
            n = b * BATCH + i
            # Topics and payloads as a client's arrive: new objects every message, none shared with the cache.
            messages.append((names[n % topics].encode().decode(), b'{"ts":%d,"v":%d.%d}' % (now_ms, n % 97, n % 10)))
        batches.append(messages)
    p = parser()
    for messages in batches[: max(1, topics // BATCH)]:  # every topic once: the cache is warm, as in a running flow
        p.parse(MessageBatch(time.time_ns(), messages))
    # The batches built here outlive the run, unlike the pipeline's: kept out of the collector's generations.
    gc.collect()
    gc.freeze()
    readings = 0
    spent = 0.0
    for messages in batches[: MESSAGES // BATCH]:
        start = time.process_time()
        parsed = p.parse(MessageBatch(time.time_ns(), messages))
        spent += time.process_time() - start
        readings += len(parsed.readings)
        if parsed.dead_letters:
            raise SystemExit(f"bench: dead letters from the bench's own messages: {parsed.dead_letters[0]}")
    gc.unfreeze()
    return {
        "topics": topics,
        "messages": MESSAGES,
        "readings": readings,
        "cpu_s": round(spent, 2),
        "us_per_message": round(spent / MESSAGES * 1e6, 3),
    }


def main() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    print({"parser_from": parse_module.__file__}, flush=True)
    for topics in TOPICS:
        print(run(topics), flush=True)


if __name__ == "__main__":
    main()
