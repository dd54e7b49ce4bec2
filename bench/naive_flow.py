"""Reference for `make bench`: the straightforward per-message Bytewax flow that fleetwatch is compared to.

A paho network thread (``loop_start``) queues each message; a Bytewax source drains the queue, one item per
message; ``key_on`` the series; ``fold_window`` with an ``EventClock`` on the payload's timestamp and a
10 s ``TumblingWindower``; each closed window becomes a line-protocol point for the same batched InfluxDB
writer fleetwatch uses. No batching of messages, no manual acks, no pre-aggregation.

    python -m bench.naive_flow CONFIG_TOML STATUS_FILE
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import paho.mqtt.client as paho
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main
from paho.mqtt.enums import CallbackAPIVersion

from fleetwatch.config import load
from flows.sinks.influxdb import InfluxWriterThread, make_writer

cfg = load(sys.argv[1])
status_path = Path(sys.argv[2])
received = 0


class PahoPartition(StatelessSourcePartition[tuple[str, bytes]]):
    def __init__(self) -> None:
        self.q: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cfg.mqtt.client_id, clean_session=False)
        client.max_queued_messages_set(0)
        sub = cfg.mqtt.subscriptions[0]
        client.on_connect = lambda c, u, f, r, p: c.subscribe(sub.topic, sub.qos)
        client.on_message = lambda c, u, m: self.q.put((m.topic, m.payload))
        client.connect(cfg.mqtt.host, cfg.mqtt.port)
        client.loop_start()
        self.client = client

    def next_batch(self) -> list[tuple[str, bytes]]:
        # What the paho thread has queued, one item per message (up to 1,000 per call).
        global received
        items: list[tuple[str, bytes]] = []
        try:
            while len(items) < 1000:
                items.append(self.q.get_nowait())
        except queue.Empty:
            pass
        received += len(items)
        return items


class PahoSource(DynamicSource[tuple[str, bytes]]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> PahoPartition:
        return PahoPartition()


class WriterSink(DynamicSink[str]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[str]:
        writer = InfluxWriterThread(cfg.influxdb, make_writer(cfg.influxdb), lambda dead: None)

        class Part(StatelessSinkPartition[str]):
            def write_batch(self, items: list[str]) -> None:
                writer.put(items)

        return Part()


def parse(msg: tuple[str, bytes]) -> tuple[str, datetime, float]:
    topic, payload = msg
    doc = json.loads(payload)
    return topic, datetime.fromtimestamp(doc["ts"] / 1000, tz=UTC), float(doc["v"])


def status_writer() -> None:
    while True:
        time.sleep(0.5)
        status_path.write_text(json.dumps({"messages_in": received}))


flow = Dataflow("naive")
msgs = op.input("in", flow, PahoSource())
readings = op.map("parse", msgs, parse)
keyed = op.key_on("key", readings, lambda r: r[0])
clock = EventClock(lambda r: r[1], wait_for_system_duration=timedelta(seconds=2))
windower = TumblingWindower(length=timedelta(seconds=10), align_to=datetime(2020, 1, 1, tzinfo=UTC))
windows = fold_window(
    "fold",
    keyed,
    clock,
    windower,
    lambda: [0, 0.0],
    lambda acc, r: [acc[0] + 1, acc[1] + r[2]],
    lambda a, b: [a[0] + b[0], a[1] + b[1]],
)


def to_line(item: tuple[str, tuple[int, list[float]]]) -> str:
    topic, (window_id, (count, total)) = item
    start = int((windower.align_to + window_id * windower.length).timestamp() * 1e9)
    device = topic.split("/")[2]
    return f"readings_agg,device={device},metric=temp,window=10s count={count}i,sum={total} {start}"


op.output("influx", op.map("line", windows.down, to_line), WriterSink())
threading.Thread(target=status_writer, daemon=True).start()
cli_main(flow)
