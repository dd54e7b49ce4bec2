"""collectors/mqtt/parse under careless and hostile clients: payloads at max_payload_bytes, topics of 65,535
bytes (MQTT's largest), and a stream of new topics with the topic cache bounded by mqtt.topic_cache_max_topics
and mqtt.topic_cache_max_bytes."""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Any

from collectors.mqtt.parse import MessageBatch, MQTTParser
from fleetwatch.config import from_dict
from fleetwatch.record import parse_series
from flows import health

MAX_TOPIC = 65_535
# The longest topic of make_parser's template whose series key still fits InfluxDB's limit with an aggregate's
# "_agg" and window tag (collectors.mqtt.parse.MAX_SERIES_KEY_BYTES).
FITTING_TOPIC = MAX_TOPIC - 100


def make_parser(**mqtt: Any) -> MQTTParser:
    cfg = from_dict(
        {
            "mqtt": {
                "subscriptions": [
                    {"topic": "s/+/+/+", "template": "s/{site}/{device}/{metric}"},
                    {"topic": "j/+", "template": "j/{device}", "format": "json"},
                ],
                **mqtt,
            }
        },
        env={},
    )
    return MQTTParser(cfg.mqtt, cfg.windows)


def long_topic(prefix: str, suffix: str, size: int = MAX_TOPIC, char: str = "d") -> str:
    """``prefix`` + ``char`` repeated + ``suffix``, exactly ``size`` bytes of UTF-8."""
    room = size - len(prefix.encode()) - len(suffix.encode())
    width = len(char.encode())
    return prefix + char * (room // width) + "x" * (room % width) + suffix


def test_a_payload_at_max_payload_bytes_is_read_and_one_byte_more_is_a_dead_letter() -> None:
    parser = make_parser(max_payload_bytes=1_000)
    at_limit = b"21.5" + b" " * 996
    json_at_limit = b'{"t": 21.5, "pad": "' + b"p" * 978 + b'"}'
    assert len(at_limit) == len(json_at_limit) == 1_000
    parsed = parser.parse(
        MessageBatch(
            time.time_ns(), [("s/a/d1/temp", at_limit), ("j/d1", json_at_limit), ("s/a/d1/temp", at_limit + b" ")]
        )
    )
    assert [r.value for r in parsed.readings] == [21.5, 21.5]
    [dead] = parsed.dead_letters
    # The dead letter keeps the first max_payload_bytes: a huge payload does not make a huge dead letter.
    assert (dead.reason, dead.raw) == ("oversized", at_limit)
    assert "1001 bytes exceeds max_payload_bytes 1000; raw holds its first 1000 bytes" in dead.detail


def test_a_huge_payload_makes_a_dead_letter_of_max_payload_bytes() -> None:
    parser = make_parser(max_payload_bytes=1_000)
    huge = b"3" * 20_000_000
    [dead] = parser.parse(MessageBatch(time.time_ns(), [("s/a/d1/temp", huge)])).dead_letters
    assert dead.reason == "oversized"
    assert dead.raw == huge[:1_000]
    assert "20000000 bytes" in dead.detail


def test_a_65535_byte_topic_is_read_in_full_or_refused_as_a_dead_letter() -> None:
    parser = make_parser()
    ascii_topic = long_topic("s/site/", "/temp", FITTING_TOPIC)
    wide_topic = long_topic("s/site/", "/temp", FITTING_TOPIC, char="\U0001f600")  # 4-byte characters
    longest = long_topic("s/site/", "/temp")
    unmatched = long_topic("other/", "/temp")
    too_deep = long_topic("s/site/", "/temp/extra")
    for topic in (longest, unmatched, too_deep):
        assert len(topic.encode()) == MAX_TOPIC
    messages = [(ascii_topic, b"1"), (wide_topic, b"2"), (longest, b"3"), (unmatched, b"4"), (too_deep, b"5")]
    parsed = parser.parse(MessageBatch(time.time_ns(), messages))
    assert [r.value for r in parsed.readings] == [1.0, 2.0]
    for reading, topic in zip(parsed.readings, (ascii_topic, wide_topic), strict=True):
        measurement, tags = parse_series(reading.series)
        assert (measurement, tags["site"], tags["metric"]) == ("readings", "site", "temp")
        assert tags["device"] == topic.split("/")[2]
    # A device level of 65,510 bytes: the raw point's key would fit InfluxDB, the aggregate's would not.
    assert [(d.reason, d.source) for d in parsed.dead_letters] == [
        ("series_too_long", f"mqtt:{longest}"),
        ("topic_mismatch", f"mqtt:{unmatched}"),
        ("topic_mismatch", f"mqtt:{too_deep}"),
    ]


def test_new_topics_beyond_topic_cache_max_topics_start_the_cache_over_and_are_counted() -> None:
    """Ten batches of 10,000 new topics each (as a client sending 10,000 new topics a second for 10 s): every
    message is still read, and the cache never holds more than its limit."""
    parser = make_parser(topic_cache_max_topics=25_000)
    before = health.counters().mqtt_topic_cache_resets
    for second in range(10):
        batch = [(f"s/site/dev{second}_{i}/temp", b"1.5") for i in range(10_000)]
        parsed = parser.parse(MessageBatch(time.time_ns(), batch))
        assert len(parsed.readings) == 10_000 and not parsed.dead_letters
        assert parser.cached_topics() <= 25_000
    assert health.counters().mqtt_topic_cache_resets - before == 3  # at 25,000, 50,000 and 75,000 topics


def held_bytes(parser: MQTTParser, batches: Any) -> tuple[int, int]:
    """Parse each batch; return the memory the parser holds afterwards (tracemalloc) and its largest
    estimate of the cache on the way."""
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        largest = 0
        for batch in batches:
            parser.parse(MessageBatch(time.time_ns(), batch))
            largest = max(largest, parser.cached_bytes())
            del batch
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - start, largest
    finally:
        tracemalloc.stop()


def test_the_cache_estimate_is_not_below_what_the_cache_holds() -> None:
    """What topic_cache_max_bytes bounds is an estimate; it must not be below the memory really held, for
    short topics, 65,535-byte topics (of 1-, 2- and 4-byte characters) and JSON field names alike. The
    batches are made while memory is traced, as the source makes them: the cache keeps their topics."""
    json_payload = b'{"temperature": 1, "humidity": 2, "pressure_hpa": 3}'

    def short(b: int) -> list[tuple[str, bytes]]:
        return [(f"s/site/dev{b}_{i}/temperature", b"1.5") for i in range(1_000)]

    def long(b: int, char: str) -> list[tuple[str, bytes]]:
        return [(long_topic(f"s/site/{b}_{i}_", "/temp", FITTING_TOPIC, char=char), b"1.5") for i in range(10)]

    def fields(b: int) -> list[tuple[str, bytes]]:
        return [(f"j/dev{b}_{i}", json_payload) for i in range(1_000)]

    cases: list[Any] = [
        (short(b) for b in range(5)),
        (long(b, "d") for b in range(5)),
        (long(b, "é") for b in range(5)),
        (long(b, "€") for b in range(5)),
        (long(b, "\U0001f600") for b in range(5)),
        (fields(b) for b in range(2)),
    ]
    for batches in cases:
        parser = make_parser()
        held, estimated = held_bytes(parser, batches)
        assert parser.cached_bytes() == estimated
        assert held <= estimated, (held, estimated)
        assert held > estimated / 2, "the estimate is so far above what is held that the bound means little"


def test_10000_new_65535_byte_topics_keep_the_cache_within_topic_cache_max_bytes() -> None:
    """10,000 new 65,535-byte topics (in batches of 500: 655 MB of topics) through a parser whose cache may
    hold 32 MiB: the memory it holds stays within that."""
    limit = 32 * 1024**2
    parser = make_parser(topic_cache_max_bytes=limit)
    before = health.counters().mqtt_topic_cache_resets

    def batches() -> Any:
        for b in range(20):
            yield [(long_topic(f"s/site/{b}_{i}_", "/temp"), b"1.5") for i in range(500)]

    held, estimated = held_bytes(parser, batches())
    assert estimated <= limit + 1_200 + 3 * MAX_TOPIC  # one entry past the limit starts the cache over
    assert held <= limit + 1_200 + 3 * MAX_TOPIC
    assert health.counters().mqtt_topic_cache_resets - before >= 10_000 * 3 * MAX_TOPIC // limit - 1
