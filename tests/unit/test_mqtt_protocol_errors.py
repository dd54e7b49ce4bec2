"""collectors/mqtt/source: a malformed packet from the broker is a protocol error. The partition closes the
connection, logs and counts it, and reconnects after a growing backoff; nothing is raised into the dataflow.

The broker is a fake one on 127.0.0.1 (port 0) that answers CONNECT and SUBSCRIBE and then sends the bytes
each test scripts for that connection."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from collectors.mqtt.source import MQTTPartition, MQTTSource, protocol_errors
from fleetwatch.config import MQTTConfig, SubscriptionConfig
from flows import health
from tests.unit.mqtt_packets import varint

MIN_DELAY = 0.1


def publish(topic: bytes, payload: bytes, v5: bool) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (b"\x00" if v5 else b"") + payload
    return b"\x30" + varint(len(body)) + body


class FakeBroker:
    """Accepts connections one after another. Each gets a CONNACK (``connack``, or a valid one), a SUBACK,
    then ``scripts[i]`` (the last script again for later connections); it stays open until the client
    closes it, or, with ``close_after_pubacks``, until the first connection brought that many PUBACKs (a broker
    that stops before it reads them: its session still holds those messages). Records when each connection was
    accepted and whether the client closed it."""

    def __init__(
        self, scripts: list[bytes], v5: bool, connack: bytes | None = None, close_after_pubacks: int = 0
    ) -> None:
        self.scripts = scripts
        self.close_after_pubacks = close_after_pubacks
        self.pubacks: list[bytes] = []
        self.v5 = v5
        self.connack = connack
        self.accepted: list[float] = []
        self.closed_by_client = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-broker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            self.accepted.append(time.monotonic())
            with conn:
                conn.settimeout(0.2)
                self._serve(conn, self.scripts[min(len(self.accepted), len(self.scripts)) - 1])

    def _recv(self, conn: socket.socket, size: int) -> bytes | None:
        """Up to ``size`` bytes, waiting through the socket's timeouts until the test ends; None once the
        client closed the connection (or the test ended)."""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(size)
            except TimeoutError:
                continue
            except OSError:
                return None
            return chunk or None
        return None

    def _read_packet(self, conn: socket.socket) -> bytes | None:
        """The next packet (first byte and body), or None once the client closed the connection."""
        data = b""
        while len(data) < 2 or data[-1] & 0x80:
            chunk = self._recv(conn, 1)
            if chunk is None:
                return None
            data += chunk
        length, shift = 0, 0
        for byte in data[1:]:
            length |= (byte & 0x7F) << shift
            shift += 7
        body = b""
        while len(body) < length:
            chunk = self._recv(conn, length - len(body))
            if chunk is None:
                return None
            body += chunk
        return data[:1] + body

    def _serve(self, conn: socket.socket, script: bytes) -> None:
        connect = self._read_packet(conn)
        if connect is None or connect[0] != 0x10:
            return
        conn.sendall(self.connack or (b"\x20\x03\x00\x00\x00" if self.v5 else b"\x20\x02\x00\x00"))
        if self.connack is None:
            subscribe = self._read_packet(conn)
            if subscribe is None or subscribe[0] != 0x82:
                return  # the test ended while this connection was being set up
            mid = subscribe[1:3]
            conn.sendall(b"\x90\x04" + mid + b"\x00\x01" if self.v5 else b"\x90\x03" + mid + b"\x01")
            conn.sendall(script)
        while (packet := self._read_packet(conn)) is not None:
            if packet[0] == 0xE0:
                return  # DISCONNECT: the broker closes its side (the partition's close() waits for that)
            if packet[0] == 0x40:
                self.pubacks.append(packet)
                if len(self.accepted) == 1 and len(self.pubacks) == self.close_after_pubacks:
                    return
        if not self._stop.is_set():
            self.closed_by_client += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()


@pytest.fixture
def client_id() -> str:
    """Unique per test: protocol_errors() counts per client id for the whole process."""
    return f"fwt{uuid.uuid4().hex[:8]}"


@contextmanager
def partition(
    broker: FakeBroker, client_id: str, v5: bool, resume_mids: list[int] | None = None
) -> Iterator[MQTTPartition]:
    cfg = MQTTConfig(
        host="127.0.0.1",
        port=broker.port,
        protocol="5" if v5 else "3.1.1",
        client_id=client_id,
        reconnect_min_delay=timedelta(seconds=MIN_DELAY),
        reconnect_max_delay=timedelta(seconds=1),
        subscriptions=[SubscriptionConfig(topic="t/#", metric="v")],
    )
    part = MQTTSource(cfg, recovery_dir=Path("unused-until-a-snapshot")).build_part("mqtt", "mqtt-0", resume_mids)
    try:
        yield part
    finally:
        part.close()
        broker.close()


def drive(part: MQTTPartition, done: Callable[[], bool], timeout: float = 3.0) -> list[tuple[str, bytes]]:
    """next_batch as the Bytewax worker calls it, until ``done()`` (or the timeout); what it emitted."""
    messages: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        for batch in part.next_batch():
            messages.extend(batch.messages)
        time.sleep(0.002)
    return messages


# (case, bytes after the SUBACK, MQTT 5, what the logged reason says): each found by frames.py or by paho.
BAD = [
    ("PUBLISH with remaining length 0", b"\x30\x00", False, "remaining length 0"),
    ("topic not UTF-8", publish(b"t/\xff", b"1", False), False, "not well-formed UTF-8"),
    ("topic with U+0000", publish(b"t/\x00", b"1", True), True, "U+0000"),
    ("QoS 3", b"\x36\x06\x00\x01t\x00\x01x", False, "QoS 3"),
    ("MQTT 5 property length past the end", b"\x30\x05\x00\x01t\x09x", True, "property length"),
    ("QoS 2 PUBLISH paho cannot decode", b"\x34\x00", False, "paho cannot decode the packet of type 0x34"),
    ("PINGRESP with a body, paho refuses", b"\xd0\x01\x00", True, "paho rejected the packet of type 0xd0"),
]


@pytest.mark.parametrize(("bad", "v5", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_malformed_packet_closes_the_connection_and_the_partition_reconnects(
    bad: bytes, v5: bool, reason: str, client_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="collectors.mqtt.source")
    good = publish(b"t/1", b"1.5", v5)
    broker = FakeBroker([good + bad + publish(b"t/lost", b"9", v5), publish(b"t/2", b"2.5", v5)], v5)
    counted_before = health.counters().mqtt_protocol_errors
    with partition(broker, client_id, v5) as part:
        messages: list[tuple[str, bytes]] = []
        messages += drive(part, lambda: len(broker.accepted) == 2)
        messages += drive(part, lambda: False, timeout=0.2)  # what the second connection brings
        assert messages == [("t/1", b"1.5"), ("t/2", b"2.5")]
        assert len(broker.accepted) == 2 and broker.closed_by_client == 1
        assert broker.accepted[1] - broker.accepted[0] >= MIN_DELAY
        assert protocol_errors()[f"{client_id}-0"] == 1
        assert health.counters().mqtt_protocol_errors == counted_before + 1, "in the health points too"
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "protocol error" in errors[0] and reason in errors[0]


def test_a_broker_that_keeps_sending_a_malformed_packet_is_retried_ever_more_slowly(
    client_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An unacknowledged malformed message comes back after every reconnect: the backoff must grow."""
    caplog.set_level(logging.WARNING, logger="collectors.mqtt.source")
    broker = FakeBroker([b"\x30\x00"], v5=False)
    with partition(broker, client_id, False) as part:
        drive(part, lambda: len(broker.accepted) == 5)
        delays = [
            float(m.group(1))
            for r in caplog.records
            if (m := re.search(r"disconnected \(protocol error\); reconnecting in ([0-9.]+)s", r.getMessage()))
        ]
        assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
        gaps = [b - a for a, b in pairwise(broker.accepted)]
        assert len(gaps) == 4 and all(gap >= delay for gap, delay in zip(gaps, delays, strict=True))
        assert protocol_errors()[f"{client_id}-0"] == len(delays)


def test_a_malformed_connack_waits_for_the_backoff_before_the_next_attempt(client_id: str) -> None:
    broker = FakeBroker([b""], v5=False, connack=b"\x20\x00")
    with partition(broker, client_id, False) as part:
        drive(part, lambda: len(broker.accepted) == 3)
        gaps = [b - a for a, b in pairwise(broker.accepted)]
        assert len(gaps) == 2 and gaps[0] >= MIN_DELAY and gaps[1] >= 2 * MIN_DELAY
        assert protocol_errors()[f"{client_id}-0"] >= 2


def test_while_redeliveries_are_deduplicated_paho_gets_only_checked_publishes(client_id: str) -> None:
    """With packet ids to deduplicate, every packet goes through paho, which would take a topic with U+0000
    (and raise on one that is not UTF-8): frames.py checks each PUBLISH first, so the paths agree."""
    broker = FakeBroker([publish(b"t/1", b"1", False) + publish(b"t/\x00", b"2", False), b""], v5=False)
    with partition(broker, client_id, False, resume_mids=[7]) as part:
        messages = drive(part, lambda: len(broker.accepted) == 2)
        messages += drive(part, lambda: False, timeout=0.2)
        assert messages == [("t/1", b"1")]
        assert protocol_errors()[f"{client_id}-0"] == 1 and len(broker.accepted) == 2


@pytest.mark.parametrize("disconnect", [b"\xe0\x01\x8e", b"\xe0\x02\x8e\x00"], ids=["code alone", "no properties"])
def test_a_session_taken_over_is_an_error_that_says_so(
    disconnect: bytes, client_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An MQTT 5 broker that gives the session to another client with the same id says so in its DISCONNECT
    (reason 0x8E), which paho 2.1 reads only when properties follow it."""
    caplog.set_level(logging.WARNING, logger="collectors.mqtt.source")
    broker = FakeBroker([disconnect], v5=True)
    before = health.counters().mqtt_disconnects
    with partition(broker, client_id, True) as part:
        drive(part, lambda: len(broker.accepted) == 2)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all("another client connected with the same client id" in e for e in errors), errors
    assert health.counters().mqtt_disconnects >= before + 1
