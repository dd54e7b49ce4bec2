"""collectors/syslog/source: the receiver on real UDP and TCP sockets on 127.0.0.1 (port 0), and framing."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

from collectors.syslog.source import (
    BOUND_ADDRESSES,
    SyslogPartition,
    SyslogSource,
    _Connection,
    decode,
    frame,
)
from fleetwatch.config import SyslogInputConfig
from fleetwatch.record import LogLine

RFC5424 = "<165>1 2026-01-01T00:00:03.5Z web1 nginx - - - upstream timed out"
RFC3164 = "<11>Jan  1 00:00:04 db1 postgres[77]: could not connect"
LIMIT = 256


@pytest.fixture
def udp() -> Iterator[SyslogPartition]:
    yield from _partition("udp")


@pytest.fixture
def tcp() -> Iterator[SyslogPartition]:
    yield from _partition("tcp")


def _partition(protocol: Literal["udp", "tcp"]) -> Iterator[SyslogPartition]:
    cfg = SyslogInputConfig(name=f"test-{protocol}", protocol=protocol, listen="127.0.0.1:0", max_event_bytes=LIMIT)
    source = SyslogSource([cfg])
    assert source.list_parts() == [cfg.name]
    part = source.build_part("syslog", cfg.name, None)
    try:
        yield part
    finally:
        part.close()
    assert cfg.name not in BOUND_ADDRESSES


def collect(part: SyslogPartition, n: int, timeout: float = 2.0) -> list[LogLine]:
    """Drive next_batch until n lines came (or the deadline passed), as the Bytewax worker would."""
    lines: list[LogLine] = []
    deadline = time.monotonic() + timeout
    while len(lines) < n and time.monotonic() < deadline:
        batches = list(part.next_batch())
        for batch in batches:
            assert batch, "no empty batches"
            lines.extend(batch)
        if not batches:
            time.sleep(0.002)
    return lines


def drain(part: SyslogPartition, seconds: float) -> list[LogLine]:
    """Whatever arrives in the next few ms."""
    return collect(part, 1_000_000, timeout=seconds)


def settle(part: SyslogPartition) -> list[LogLine]:
    """Whatever arrives in the next 50 ms (to check nothing more does)."""
    return drain(part, 0.05)


def connect(part: SyslogPartition) -> socket.socket:
    return socket.create_connection(part.address, timeout=2)


def texts(lines: list[LogLine]) -> list[str]:
    return [line.text for line in lines]


# ------------------------------------------------------------------------------------------- UDP


def test_udp_messages(udp: SyslogPartition) -> None:
    assert BOUND_ADDRESSES["test-udp"] == udp.address and udp.address[1] > 0
    before = time.time_ns()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(RFC5424.encode(), udp.address)
        sender.sendto(f"{RFC3164}\n".encode(), udp.address)  # the trailing newline is not part of it
        sender.sendto(b"\n", udp.address)  # nothing: no line
    lines = collect(udp, 2)
    assert texts(lines) == [RFC5424, RFC3164]
    for line in lines:
        assert (line.input_name, line.source, line.flags) == ("test-udp", "syslog:udp:127.0.0.1", ())
        assert before <= line.received_ns <= time.time_ns()
        assert len(line.doc_id) == 32 and set(line.doc_id) <= set("0123456789abcdef"), line.doc_id  # 128-bit hex
    assert lines[0].doc_id != lines[1].doc_id
    assert settle(udp) == []


def test_udp_oversize_and_invalid_utf8(udp: SyslogPartition) -> None:
    long = "<14>" + "x" * 1000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(long.encode(), udp.address)
        sender.sendto(b"<14>caf\xe9 \xff", udp.address)
    truncated, invalid = collect(udp, 2)
    assert (truncated.text, truncated.flags) == (long[:LIMIT], ("truncated",))
    assert (invalid.text, invalid.flags) == ("<14>caf\ufffd \ufffd", ("invalid_utf8",))


def test_idle_partition_asks_to_be_woken_soon(udp: SyslogPartition) -> None:
    assert list(udp.next_batch()) == []
    wake = udp.next_awake()
    assert wake is not None
    assert timedelta(0) < wake - datetime.now(UTC) <= timedelta(milliseconds=50)
    assert udp.snapshot() is None  # type: ignore[func-returns-value]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"<14>x", udp.address)
    assert texts(collect(udp, 1)) == ["<14>x"]
    assert udp.next_awake() is None  # busy: at once


# ------------------------------------------------------------------------------------------- TCP


def test_tcp_octet_counting(tcp: SyslogPartition) -> None:
    a, b = RFC5424.encode(), b"<14>1 - - - - - - multi\nline message"
    with connect(tcp) as conn:
        conn.sendall(b"%d %s%d %s" % (len(a), a, len(b), b))
        lines = collect(tcp, 2)
    assert texts(lines) == [RFC5424, "<14>1 - - - - - - multi\nline message"]
    assert {(line.source, line.flags) for line in lines} == {("syslog:tcp:127.0.0.1", ())}


def test_tcp_newline_framing(tcp: SyslogPartition) -> None:
    with connect(tcp) as conn:
        conn.sendall(f"{RFC3164}\n{RFC5424}\r\n\n<14>nul-terminated\0<14>last".encode())
        lines = collect(tcp, 3)
        assert texts(lines) == [RFC3164, RFC5424, "<14>nul-terminated"]
        assert settle(tcp) == []  # "<14>last" has no terminator yet
    # The peer closed: the unterminated message is emitted.
    assert texts(collect(tcp, 1)) == ["<14>last"]


def test_tcp_mixed_framing_in_one_connection(tcp: SyslogPartition) -> None:
    a = RFC5424.encode()
    with connect(tcp) as conn:
        # What the integration test sends, and a newline that some senders put after a counted message.
        conn.sendall(b"%d %s%s\n%d %s\n<14>tail\n" % (len(a), a, RFC3164.encode(), len(a), a))
        lines = collect(tcp, 4)
    assert texts(lines) == [RFC5424, RFC3164, RFC5424, "<14>tail"]


def test_tcp_messages_split_across_sends(tcp: SyslogPartition) -> None:
    a = RFC5424.encode()
    counted = b"%d %s" % (len(a), a)
    stream = counted + RFC3164.encode() + b"\r\n" + counted
    # Cut inside the count, right after it, inside the body, between CR and LF, and so on.
    cuts = [0, 1, 2, 3, 10, len(counted) - 1, len(counted) + 5, len(counted) + len(RFC3164) + 1, len(stream) - 3]
    with connect(tcp) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        got: list[LogLine] = []
        for start, end in zip(cuts, [*cuts[1:], len(stream)], strict=True):
            conn.sendall(stream[start:end])
            time.sleep(0.003)
            got += drain(tcp, 0.01)  # the partition sees each piece on its own
        got += collect(tcp, 3 - len(got))
    assert texts(got) == [RFC5424, RFC3164, RFC5424]


def test_tcp_oversize_messages(tcp: SyslogPartition) -> None:
    body = ("<14>x" + "é" * 400).encode()  # 805 bytes, two bytes a character from the 6th
    with connect(tcp) as conn:
        conn.sendall(b"%d %s" % (len(body), body) + b"<14>after counted\n")
        conn.sendall(body + b"\n<14>after newline\n")
        lines = collect(tcp, 4)
    # Cut at LIMIT bytes, minus the half character: not invalid UTF-8.
    expected = body[: LIMIT - 1].decode()
    assert [(line.text, line.flags) for line in lines] == [
        (expected, ("truncated",)),
        ("<14>after counted", ()),
        (expected, ("truncated",)),
        ("<14>after newline", ()),
    ]


def test_tcp_oversize_arriving_in_pieces(tcp: SyslogPartition) -> None:
    body = b"<14>" + b"y" * 5000
    with connect(tcp) as conn:
        conn.sendall(b"%d " % len(body))
        got: list[LogLine] = []
        for i in range(0, len(body), 100):
            conn.sendall(body[i : i + 100])
            time.sleep(0.001)
            got += drain(tcp, 0.002)
        conn.sendall(b"<14>next\n")
        got += collect(tcp, 2 - len(got))
        assert settle(tcp) == []
    assert [(line.text, line.flags) for line in got] == [
        (body[:LIMIT].decode(), ("truncated",)),
        ("<14>next", ()),
    ]


def test_several_connections(tcp: SyslogPartition) -> None:
    with connect(tcp) as one, connect(tcp) as two:
        one.sendall(b"<14>from one\n")
        two.sendall(b"<14>from two\n")
        one.sendall(b"<14>one again\n")
        lines = collect(tcp, 3)
    assert sorted(texts(lines)) == ["<14>from one", "<14>from two", "<14>one again"]
    assert len({line.doc_id for line in lines}) == 3


def test_close_releases_the_port() -> None:
    cfg = SyslogInputConfig(name="test-close", protocol="tcp", listen="127.0.0.1:0")
    part = SyslogSource([cfg]).build_part("syslog", "test-close", None)
    conn = connect(part)
    drain(part, 0.02)  # accepted
    part.close()
    assert "test-close" not in BOUND_ADDRESSES
    conn.close()
    with pytest.raises(OSError):
        socket.create_connection(part.address, timeout=1).close()


# ------------------------------------------------------------------------------------------- framing


def _frame_bytewise(stream: bytes, limit: int = LIMIT) -> list[tuple[bytes, bool]]:
    with socket.socket() as dummy:
        conn = _Connection(dummy, "127.0.0.1", "127.0.0.1:1")
        out: list[tuple[bytes, bool]] = []
        for i in range(len(stream)):
            conn.buf += stream[i : i + 1]
            frame(conn, limit, False, out)
        frame(conn, limit, True, out)
        return out


def test_framing_one_byte_at_a_time() -> None:
    a = RFC5424.encode()
    big = b"<14>" + b"z" * 300
    stream = b"%d %s" % (len(a), a) + b"plain\r\n\0" + b"%d %s" % (len(big), big) + big + b"\n" + b"12 34"
    assert _frame_bytewise(stream) == [
        (a, False),
        (b"plain", False),
        (big[:LIMIT], True),
        (big[:LIMIT], True),
        (b"34", True),  # a count of 12 and the peer closed after 2 bytes: what came, flagged
    ]


def test_framing_digits_without_a_space_are_text() -> None:
    assert _frame_bytewise(b"2026-01-01 started\n0 zero\n1234567890 ten digits\n") == [
        (b"2026-01-01 started", False),
        (b"0 zero", False),
        (b"1234567890 ten digits", False),
    ]


def test_framing_an_octet_count_far_past_the_limit_is_text_and_the_messages_after_it_are_read() -> None:
    # One bogus count must not have the rest of the connection skipped: the line is read as newline-framed.
    stream = b"999999999 <13>Dec  5 09:40:00 h app: one\n<13>Dec  5 09:40:01 h app: two\n"
    assert _frame_bytewise(stream) == [
        (b"999999999 <13>Dec  5 09:40:00 h app: one", False),
        (b"<13>Dec  5 09:40:01 h app: two", False),
    ]
    # A count past the limit but within reason is a frame, cut at the limit, its rest skipped.
    big = b"<14>" + b"z" * (4 * LIMIT)
    assert _frame_bytewise(b"%d %s<13>after\n" % (len(big), big)) == [(big[:LIMIT], True), (b"<13>after", False)]


def test_decode_flags() -> None:
    assert decode("é".encode(), False) == ("é", ())
    assert decode("aé".encode()[:2], True) == ("a", ("truncated",))  # cut inside a character
    assert decode(b"a\xffb", False) == ("a\ufffdb", ("invalid_utf8",))
    assert decode(b"a\xffb\xc3", True) == ("a\ufffdb\ufffd", ("truncated", "invalid_utf8"))


def test_framing_a_peer_that_closes_right_after_an_octet_count_gives_no_message() -> None:
    """Found by tests/unit/test_syslog_fuzz.py: an empty message, flagged truncated, came out."""
    for stream in (b"1 ", b"300 ", b"<13>a\n5 "):
        conn = _Connection(socket.socket(), "127.0.0.1", "127.0.0.1:1")
        out: list[tuple[bytes, bool]] = []
        conn.buf += stream
        frame(conn, LIMIT, True, out)
        conn.sock.close()
        assert out == ([(b"<13>a", False)] if stream.startswith(b"<13>") else [])
