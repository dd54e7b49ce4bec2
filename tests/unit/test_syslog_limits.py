"""collectors/syslog/source under careless and hostile senders, on real sockets on 127.0.0.1: a UDP flood
faster than the flow reads (bounded memory, every drop counted), and on TCP the connection limit, the idle
timeout, slow-drip senders and endless messages."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from collectors.syslog.source import SyslogPartition, SyslogSource
from fleetwatch.config import ConfigError, SyslogInputConfig, from_dict
from fleetwatch.record import LogLine
from flows import health, lifecycle

LIMIT = 1024


def partition(max_batch: int = 4096, **cfg: Any) -> SyslogPartition:
    config = SyslogInputConfig(name=f"limits-{cfg.get('protocol', 'udp')}", listen="127.0.0.1:0", **cfg)
    return SyslogSource([config], max_batch=max_batch).build_part("syslog", config.name, None)


@pytest.fixture
def tcp(request: pytest.FixtureRequest) -> Iterator[SyslogPartition]:
    part = partition(protocol="tcp", max_event_bytes=LIMIT, **getattr(request, "param", {}))
    try:
        yield part
    finally:
        part.close()


def lines(part: SyslogPartition) -> list[LogLine]:
    return [line for batch in part.next_batch() for line in batch]


def collect_until(part: SyslogPartition, done: Any, timeout: float = 5.0) -> list[LogLine]:
    """Drive next_batch, as the Bytewax worker does, until ``done(lines so far)`` or the deadline."""
    got: list[LogLine] = []
    deadline = time.monotonic() + timeout
    while not done(got) and time.monotonic() < deadline:
        new = lines(part)
        got += new
        if not new:
            time.sleep(0.005)
    return got


def closed_by_peer(sock: socket.socket, timeout: float = 3.0) -> bool:
    """True when the other side closed the connection (EOF or reset) within the timeout."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# ------------------------------------------------------------------------------------------- UDP


def test_a_udp_flood_at_twice_the_read_rate_stays_bounded_and_every_drop_is_counted() -> None:
    """The flow reads one datagram for every two sent (max_batch 1, one next_batch per two sends): the
    kernel's receive buffer fills, and from then on it drops. Memory stays that buffer's; every datagram sent
    is either read or counted as dropped."""
    part = partition(max_batch=1, receive_buffer_bytes=64 * 1024, max_event_bytes=LIMIT)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    before = health.counters().syslog_udp_dropped
    sent = received = 0
    payload = b"<13>Jan  1 00:00:00 host app: " + b"x" * 170
    try:
        tracemalloc.start()
        for i in range(20_000):
            sender.sendto(payload, part.address)
            sent += 1
            if i % 2:
                received += len(lines(part))
        # The flow catches up; then one more datagram carries the kernel's final count of drops.
        received += len(collect_until(part, lambda got: False, timeout=0.3))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        sender.sendto(b"<13>last", part.address)
        sent += 1
        received += len(collect_until(part, lambda got: len(got) == 1))
    finally:
        tracemalloc.stop()
        sender.close()
        part.close()
    dropped = health.counters().syslog_udp_dropped - before
    assert dropped > 5_000, "the flood was not faster than the reads"
    assert received + dropped == sent
    # 4 MB were sent; the source held no more than a few batches of it.
    assert peak < 1_000_000, peak


def test_empty_udp_datagrams_are_counted_and_not_stored() -> None:
    """A datagram of nothing, or of line ends and NULs only, holds no message: counted, as an empty MQTT
    payload is, so that a misconfigured sender shows in the health measurement instead of vanishing."""
    part = partition(max_event_bytes=LIMIT)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    before = health.counters().syslog_udp_empty
    try:
        for payload in (b"", b"\n", b"\r\n\0", b"<13>kept"):
            sender.sendto(payload, part.address)
        got = collect_until(part, lambda got: len(got) == 1)
        time.sleep(0.05)
        got += lines(part)
    finally:
        sender.close()
        part.close()
    assert [line.text for line in got] == ["<13>kept"]
    assert health.counters().syslog_udp_empty - before == 3


# ------------------------------------------------------------------------------------------- TCP


@pytest.mark.parametrize("tcp", [{"max_connections": 3}], indirect=True)
def test_a_connection_beyond_max_connections_is_closed_at_once_and_counted(tcp: SyslogPartition) -> None:
    before = health.counters().syslog_tcp_refused
    held = [socket.create_connection(tcp.address, timeout=2) for _ in range(3)]
    try:
        for i, sock in enumerate(held):
            sock.sendall(f"<13>held {i}\n".encode())
        got = collect_until(tcp, lambda got: len(got) == 3)
        assert sorted(line.text for line in got) == ["<13>held 0", "<13>held 1", "<13>held 2"]
        extra = socket.create_connection(tcp.address, timeout=2)
        collect_until(tcp, lambda got: health.counters().syslog_tcp_refused > before, timeout=2)
        assert closed_by_peer(extra)
        extra.close()
        assert health.counters().syslog_tcp_refused - before == 1
        # The three held connections still deliver; once one goes, a new one is taken.
        held[0].sendall(b"<13>still here\n")
        assert [line.text for line in collect_until(tcp, lambda got: len(got) == 1)] == ["<13>still here"]
        held.pop(0).close()
        collect_until(tcp, lambda got: False, timeout=0.1)
        held.append(socket.create_connection(tcp.address, timeout=2))
        held[-1].sendall(b"<13>new\n")
        assert [line.text for line in collect_until(tcp, lambda got: len(got) == 1)] == ["<13>new"]
        assert health.counters().syslog_tcp_refused - before == 1
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("tcp", [{"idle_timeout": "300ms"}], indirect=True)
def test_a_silent_connection_is_closed_after_idle_timeout_and_its_last_message_kept(tcp: SyslogPartition) -> None:
    before = health.counters().syslog_tcp_idle_closed
    silent = socket.create_connection(tcp.address, timeout=2)
    talking = socket.create_connection(tcp.address, timeout=2)
    try:
        silent.sendall(b"<13>complete\n<13>no newline yet")
        got: list[LogLine] = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # the talking one sends every 100 ms, past the timeout
            talking.sendall(b"<13>tick\n")
            got += collect_until(tcp, lambda got: False, timeout=0.1)
        texts = [line.text for line in got]
        assert texts.count("<13>complete") == 1
        assert texts.count("<13>no newline yet") == 1
        assert texts.count("<13>tick") >= 10
        assert closed_by_peer(silent)
        talking.sendall(b"<13>open\n")
        assert [line.text for line in collect_until(tcp, lambda got: len(got) == 1)] == ["<13>open"]
        assert health.counters().syslog_tcp_idle_closed - before == 1
    finally:
        silent.close()
        talking.close()


def test_a_stop_takes_what_the_sockets_already_hold_then_ends_the_input(tcp: SyslogPartition) -> None:
    """A TCP sender's send succeeded once its bytes reached the receiver's socket: a stop (SIGTERM) dropped them
    with the connection. They are taken first, an unterminated last message too, as when the peer closes."""
    sender = socket.create_connection(tcp.address, timeout=2)
    try:
        collect_until(tcp, lambda got: False, timeout=0.2)  # accepted
        sender.sendall(b"<13>sent before the stop\n<13>half at the stop")
        time.sleep(0.1)  # in the receiver's socket, not read yet
        lifecycle.request_stop()
        assert [line.text for line in lines(tcp)] == ["<13>sent before the stop", "<13>half at the stop"]
        with pytest.raises(StopIteration):
            tcp.next_batch()
        assert closed_by_peer(sender)
    finally:
        lifecycle.reset()
        sender.close()


def test_a_slow_drip_sender_holds_up_no_other_sender(tcp: SyslogPartition) -> None:
    """One sender writes a byte every 10 ms; another sends 2,000 messages meanwhile: they all arrive while
    the slow one's single message is still coming, and that one arrives whole."""
    slow_message = b"<13>slow " + b"s" * 100 + b"\n"
    dripping = threading.Event()
    done_dripping = threading.Event()

    def drip() -> None:
        with socket.create_connection(tcp.address, timeout=2) as sock:
            for byte in slow_message:
                sock.sendall(bytes([byte]))
                dripping.set()
                time.sleep(0.01)
            done_dripping.set()
            time.sleep(0.2)

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        assert dripping.wait(2)
        with socket.create_connection(tcp.address, timeout=2) as fast:
            fast.sendall(b"".join(f"<13>fast {i}\n".encode() for i in range(2_000)))
            got = collect_until(tcp, lambda got: len(got) == 2_000)
        assert not done_dripping.is_set(), "the fast sender waited for the slow one"
        assert [line.text for line in got] == [f"<13>fast {i}" for i in range(2_000)]
        rest = collect_until(tcp, lambda got: len(got) == 1)
        assert [line.text for line in rest] == [slow_message.decode().rstrip("\n")]
    finally:
        dripper.join()


def test_an_endless_message_is_cut_at_max_event_bytes_and_never_buffered(tcp: SyslogPartition) -> None:
    """8 MB without a line end: one message of max_event_bytes, tagged truncated; the rest is read and dropped
    as it comes, so the receiver's memory does not follow the sender's."""
    chunk = b"y" * 65_536
    with socket.create_connection(tcp.address, timeout=2) as sock:
        tracemalloc.start()
        try:
            got: list[LogLine] = []
            for _ in range(128):
                sock.sendall(chunk)
                got += lines(tcp)
            sock.sendall(b"\n<13>after\n")
            got += collect_until(tcp, lambda got: len(got) == 1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert [(line.text, line.flags) for line in got] == [("y" * LIMIT, ("truncated",)), ("<13>after", ())]
    assert peak < 2_000_000, peak


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_connections", 0), ("idle_timeout", "0s"), ("receive_buffer_bytes", 100), ("max_event_bytes", 10)],
)
def test_a_limit_out_of_range_is_a_config_error_naming_it(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"logs": {"syslog": [{"name": "s", key: value}]}}, env={})
    assert [p.split(":")[0] for p in err.value.problems] == [f"logs.syslog[0].{key}"]
