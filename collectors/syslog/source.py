"""Syslog receiver as a Bytewax source: one partition per ``[[logs.syslog]]`` input, UDP or TCP.

Design, and why:

- **No threads.** The partition's sockets are non-blocking and polled with ``selectors`` (zero timeout) from
  ``next_batch``, which accepts TCP connections, reads what is there and emits every complete message read
  as one list of ``LogLine``: one item per batch, not per message. When nothing came, ``next_awake`` asks to
  be woken 20 ms later, so an idle receiver costs ~50 wake-ups a second and adds at most 20 ms of latency.
- **Framing.** UDP: one datagram is one message (trailing newline stripped). TCP: detected per message, as
  RFC 6587 allows: a leading ``<nonzero digit><digits> `` is an octet count (``<len> <msg>``); anything
  else runs to the next LF (a CR before it is dropped) or NUL. When a connection closes, a final
  unterminated message is still emitted. A message that starts with a digit and a space in a
  newline-framed stream is read as octet counted; syslog messages start with ``<PRI>``, so real senders
  are not affected.
- **Limits**, each in the input's config, for careless and hostile senders:
  - ``max_event_bytes``: a longer message is cut (at a UTF-8 character boundary) and flagged ``truncated``;
    the rest of it is read and dropped without being buffered. Invalid UTF-8 is replaced and flagged
    ``invalid_utf8``.
  - UDP, ``receive_buffer_bytes``: the kernel's socket buffer is the only queue, so memory stays bounded
    however fast senders are; what arrives while it is full is dropped by the kernel, which counts it
    (``SO_RXQ_OVFL``, Linux) on the next datagram it delivers; the source adds that to
    ``syslog_udp_dropped`` in the health points. Nothing is dropped without being counted.
  - TCP, ``max_connections``: one connection more is accepted and closed at once, counted in
    ``syslog_tcp_refused`` (leaving it in the listen backlog would hang its sender instead).
  - TCP, ``idle_timeout``: a connection silent that long is closed (its unterminated last message is still
    emitted), counted in ``syslog_tcp_idle_closed``.
  - A connection holds at most ``max_event_bytes`` plus a 10-byte octet count between reads (framing runs
    after every read), so TCP buffers stay under ``max_connections`` x ``max_event_bytes``.
  - Each call reads at most ``max_batch`` datagrams (up to 16 times that after a wait for Bytewax,
    ``collectors.polling``), accepts at most 64 connections and does a bounded number
    of reads per connection, and no socket call blocks: a sender that drips a byte at a time holds up no
    other sender.
- **No replay.** ``snapshot()`` returns None: UDP syslog is at-most-once (the kernel drops datagrams when
  the receive buffer is full, and nothing is acknowledged), and TCP syslog loses, at a crash, what was
  received but not yet committed in a Bytewax epoch (senders consider it delivered once written). So
  document ids need only be unique: ``blake2b(input:peer:received_ns:seq)``. A stop first takes what the
  sockets already hold (a connection's unterminated last message too), then ends the input.
- **Bound address.** ``listen`` may use port 0; the bound address is ``partition.address`` and also
  ``BOUND_ADDRESSES[input name]``, for tests and logs that cannot reach the partition object.
"""

from __future__ import annotations

import contextlib
import logging
import re
import selectors
import socket
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from hashlib import blake2b

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from collectors.polling import batch_limit
from fleetwatch.config import SyslogInputConfig
from fleetwatch.log_throttle import LogThrottle
from fleetwatch.record import LogLine
from flows import clock, health, lifecycle

log = logging.getLogger(__name__)

# Input name -> (host, port) actually bound, for port 0 listeners.
BOUND_ADDRESSES: dict[str, tuple[str, int]] = {}

_READ_CHUNK = 256 * 1024
_DATAGRAM_MAX = 65_535
# TCP reads per connection per next_batch: bounds the time one sender can hold the worker.
_MAX_READS = 16
# Linux's socket option that stamps each datagram with the count of datagrams the socket dropped so far.
_SO_RXQ_OVFL: int | None = getattr(socket, "SO_RXQ_OVFL", 40 if sys.platform.startswith("linux") else None)
_ANCILLARY = socket.CMSG_SPACE(4)
# Connections accepted per next_batch: a connection flood cannot stall the worker either.
_MAX_ACCEPTS = 64
# How often connections are checked against idle_timeout (at most).
_IDLE_SWEEP_SECONDS = 1.0
# Refused connections are logged at most this often (they are all counted).
_REFUSAL_LOG_SECONDS = 60.0
_IDLE_WAKE = timedelta(milliseconds=20)
_OCTET_COUNT = re.compile(rb"[1-9][0-9]{0,8} ")
# An octet count past 16 MiB (or 16 times max_event_bytes, if more) is not taken for one: a frame past the limit
# is cut there and its rest skipped, and one bogus count ("999999999 ") would have the rest of the connection
# skipped with it. rsyslog falls back to newline framing on such a count as well ("framing error ... change to
# octet stuffing"); so does fleetwatch, for that message.
_OCTET_COUNT_MAX = 16 << 20
_DIGITS = re.compile(rb"[0-9]{1,9}\Z")


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` to (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def decode(raw: bytes, truncated: bool) -> tuple[str, tuple[str, ...]]:
    """Text and flags of one message. A cut inside a multi-byte character is not invalid UTF-8: the
    partial character is dropped."""
    flags: tuple[str, ...] = ("truncated",) if truncated else ()
    try:
        return raw.decode("utf-8"), flags
    except UnicodeDecodeError as exc:
        if truncated and exc.reason == "unexpected end of data":
            try:
                return raw[: exc.start].decode("utf-8"), flags
            except UnicodeDecodeError:
                pass
    return raw.decode("utf-8", errors="replace"), (*flags, "invalid_utf8")


class _Connection:
    """A TCP peer and the bytes read from it that do not yet make a message."""

    __slots__ = ("buf", "discarding", "last_active", "peer", "peer_ip", "skip", "sock")

    def __init__(self, sock: socket.socket, peer_ip: str, peer: str) -> None:
        self.sock = sock
        self.peer_ip = peer_ip
        self.peer = peer
        self.buf = bytearray()
        # time.monotonic() of the last bytes read, for idle_timeout.
        self.last_active = time.monotonic()
        # Bytes still to drop of an oversize octet-counted message.
        self.skip = 0
        # Dropping the rest of an oversize newline-framed message, up to its terminator.
        self.discarding = False


def frame(conn: _Connection, limit: int, final: bool, out: list[tuple[bytes, bool]]) -> None:
    """Move the complete messages in ``conn.buf`` to ``out`` as (bytes, truncated); with ``final`` (the
    peer closed) also the unterminated rest."""
    buf = conn.buf
    n = len(buf)
    pos = 0
    while pos < n:
        if conn.skip:
            step = min(conn.skip, n - pos)
            conn.skip -= step
            pos += step
            continue
        if conn.discarding:
            lf = buf.find(b"\n", pos)
            nul = buf.find(b"\0", pos, lf if lf >= 0 else n)
            end = nul if nul >= 0 else lf
            if end < 0:
                pos = n
                break
            conn.discarding = False
            pos = end + 1
            continue
        if 0x31 <= buf[pos] <= 0x39:  # a nonzero digit: perhaps an octet count
            header = _OCTET_COUNT.match(buf, pos)
            if header is not None and int(buf[pos : header.end() - 1]) > max(_OCTET_COUNT_MAX, 16 * limit):
                header = None
            if header is not None:
                start = header.end()
                length = int(buf[pos : start - 1])
                avail = n - start
                if length <= limit:
                    if avail < length:
                        if final:  # the peer closed inside the message: keep what came (if any)
                            if n > start:
                                out.append((bytes(buf[start:n]), True))
                            pos = n
                        break
                    out.append((bytes(buf[start : start + length]), False))
                    pos = start + length
                    continue
                if avail < limit and not final:
                    break  # wait for the part that is kept
                if avail:  # (nothing, when the peer closed right after the count)
                    out.append((bytes(buf[start : start + limit]), True))
                conn.skip = length - limit
                pos = start + min(limit, avail)
                continue
            if not final and _DIGITS.match(buf, pos):
                break  # digits up to the end: the space that would make them a count may be next
        lf = buf.find(b"\n", pos)
        nul = buf.find(b"\0", pos, lf if lf >= 0 else n)
        end = nul if nul >= 0 else lf
        if end < 0:
            if n - pos > limit:
                out.append((bytes(buf[pos : pos + limit]), True))
                conn.discarding = True
                pos = n
            elif final:
                _append_line(buf, pos, n, limit, out)
                pos = n
            break
        _append_line(buf, pos, end, limit, out)
        pos = end + 1
    del buf[:pos]


def _append_line(buf: bytearray, start: int, end: int, limit: int, out: list[tuple[bytes, bool]]) -> None:
    if end > start and buf[end - 1] == 0x0D:  # CR LF
        end -= 1
    if end == start:
        return  # blank lines and a newline after an octet-counted message carry nothing
    if end - start > limit:
        out.append((bytes(buf[start : start + limit]), True))
    else:
        out.append((bytes(buf[start:end]), False))


def _peer_ip(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    ip = address[0]
    # A dual-stack listener sees IPv4 senders as IPv4-mapped IPv6 addresses.
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def open_listener(cfg: SyslogInputConfig) -> tuple[socket.socket, bool]:
    """The input's bound, non-blocking socket (TCP: listening), and whether the kernel reports the UDP
    datagrams it drops. Raises OSError (address in use, no permission, no such address)."""
    udp = cfg.protocol == "udp"
    host, port = parse_listen(cfg.listen)
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    family, _, proto, _, sockaddr = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    count_drops = False
    try:
        if udp:
            with contextlib.suppress(OSError):  # a smaller buffer still works
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.receive_buffer_bytes)
            if _SO_RXQ_OVFL is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
                    count_drops = True
        else:
            # A restart must not wait for the old connections' TIME_WAIT. (Not for UDP: on Linux it
            # would let two receivers share the port and split the stream silently.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        if not udp:
            sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock, count_drops


def listen_problems(inputs: list[SyslogInputConfig]) -> list[str]:
    """What keeps an input from listening, one line each, found before the dataflow starts: a socket that
    cannot be bound inside Bytewax's worker stops it with a panic and a traceback that names neither the
    input nor its address."""
    problems = []
    for cfg in inputs:
        try:
            sock, _ = open_listener(cfg)
        except OSError as exc:
            problems.append(
                f"logs.syslog {cfg.name!r}: cannot listen on {cfg.protocol} {cfg.listen}: {exc.strerror or exc}"
            )
        else:
            sock.close()
    return problems


class SyslogSource(FixedPartitionedSource[list[LogLine], None]):
    """One partition per syslog input (key: the input name); each binds its socket when built."""

    def __init__(self, inputs: list[SyslogInputConfig], *, max_batch: int = 4096) -> None:
        self.inputs = {cfg.name: cfg for cfg in inputs}
        self.max_batch = max_batch

    def list_parts(self) -> list[str]:
        return list(self.inputs)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> SyslogPartition:
        return SyslogPartition(self.inputs[for_part], self.max_batch)


class SyslogPartition(StatefulSourcePartition[list[LogLine], None]):
    def __init__(self, cfg: SyslogInputConfig, max_batch: int = 4096) -> None:
        self.cfg = cfg
        self._max_batch = max_batch
        self._last_call = time.monotonic()
        self._limit = cfg.max_event_bytes
        self._udp = cfg.protocol == "udp"
        self._source_prefix = f"syslog:{cfg.protocol}:"
        self._seq = 0
        self._idle = False
        # A stop's last batch (what the sockets held) was handed on: the next call ends the input.
        self._stop_drained = False
        self._max_connections = cfg.max_connections
        self._idle_timeout = cfg.idle_timeout.total_seconds()
        self._next_sweep = time.monotonic() + min(_IDLE_SWEEP_SECONDS, self._idle_timeout)
        self._refusals = LogThrottle(_REFUSAL_LOG_SECONDS)
        # The kernel's count of dropped datagrams at the last one read (a uint32 that wraps).
        self._kernel_drops = 0
        self._count_drops = False
        sock, self._count_drops = open_listener(cfg)
        if self._udp and not self._count_drops:
            log.warning(
                "syslog %s: this system cannot report UDP datagrams dropped on a full receive buffer; "
                "syslog_udp_dropped stays 0",
                cfg.name,
            )
        self._sock = sock
        bound = sock.getsockname()
        self.address: tuple[str, int] = (bound[0], bound[1])
        BOUND_ADDRESSES[cfg.name] = self.address
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ, None)
        self._connections: dict[int, _Connection] = {}
        if self._udp:
            log.info(
                "syslog %s: listening on udp %s:%d, receive buffer %d bytes",
                cfg.name,
                *self.address,
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            )
        else:
            log.info("syslog %s: listening on tcp %s:%d", cfg.name, *self.address)
        health.set_ready(f"syslog:{cfg.name}", True)

    # -- reading

    def _line(self, raw: bytes, truncated: bool, peer_ip: str, peer: str, received_ns: int) -> LogLine:
        text, flags = decode(raw, truncated)
        seq = self._seq
        self._seq = seq + 1
        doc_id = blake2b(f"{self.cfg.name}:{peer}:{received_ns}:{seq}".encode(), digest_size=16).hexdigest()
        return LogLine(text, self.cfg.name, self._source_prefix + peer_ip, doc_id, received_ns, flags)

    def _read_datagrams(self, out: list[LogLine], received_ns: int, max_datagrams: int) -> None:
        limit = self._limit
        sock = self._sock
        kernel_drops = self._kernel_drops
        try:
            for _ in range(max_datagrams):
                try:
                    data, ancillary, _flags, address = sock.recvmsg(_DATAGRAM_MAX, _ANCILLARY)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # e.g. ICMP errors reported on the socket: nothing to read
                    log.debug("syslog %s: recvmsg: %s", self.cfg.name, exc)
                    return
                for level, kind, value in ancillary:
                    if level == socket.SOL_SOCKET and kind == _SO_RXQ_OVFL and len(value) >= 4:
                        kernel_drops = int.from_bytes(value[:4], sys.byteorder)
                self._datagram(data, address, limit, out, received_ns)
        finally:
            if kernel_drops != self._kernel_drops:
                health.counters().syslog_udp_dropped += (kernel_drops - self._kernel_drops) % 2**32
                self._kernel_drops = kernel_drops

    def _datagram(
        self, data: bytes, address: tuple[str, int], limit: int, out: list[LogLine], received_ns: int
    ) -> None:
        data = data.rstrip(b"\r\n\0")
        if not data:
            health.counters().syslog_udp_empty += 1  # (no message to store; counted, as an empty MQTT payload is)
            return
        peer_ip = _peer_ip(address)
        truncated = len(data) > limit
        if truncated:
            data = data[:limit]
        out.append(self._line(data, truncated, peer_ip, f"{peer_ip}:{address[1]}", received_ns))

    def _accept(self, out: list[LogLine], received_ns: int) -> None:
        for _ in range(_MAX_ACCEPTS):
            try:
                sock, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, aborted handshake: try again next call
                log.warning("syslog %s: accept failed: %s", self.cfg.name, exc)
                return
            if len(self._connections) >= self._max_connections:
                sock.close()
                self._refused(address)
                continue
            sock.setblocking(False)
            peer_ip = _peer_ip(address)
            conn = _Connection(sock, peer_ip, f"{peer_ip}:{address[1]}")
            self._connections[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._read_stream(conn, out, received_ns)  # the first message often came with the handshake

    def _refused(self, address: tuple[str, int]) -> None:
        health.counters().syslog_tcp_refused += 1
        refusals = self._refusals.count()
        if refusals:
            log.warning(
                "syslog %s: %d connection(s) refused at max_connections %d (the latest from %s)",
                self.cfg.name,
                refusals,
                self._max_connections,
                _peer_ip(address),
            )

    def _read_stream(self, conn: _Connection, out: list[LogLine], received_ns: int) -> None:
        closed = False
        messages: list[tuple[bytes, bool]] = []
        for _ in range(_MAX_READS):
            try:
                data = conn.sock.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # reset by the peer: what was read still counts
                log.debug("syslog %s: %s: %s", self.cfg.name, conn.peer, exc)
                data = b""
            if not data:
                closed = True
                break
            conn.buf += data
            conn.last_active = time.monotonic()
            # Framed after every read, so the buffer never holds more than one message's kept part.
            frame(conn, self._limit, False, messages)
            if len(data) < _READ_CHUNK:
                break  # drained; more arrives as a new readable event
        if closed:
            frame(conn, self._limit, True, messages)
        self._emit(conn, messages, out, received_ns)
        if closed:
            self._drop(conn)

    def _emit(
        self, conn: _Connection, messages: list[tuple[bytes, bool]], out: list[LogLine], received_ns: int
    ) -> None:
        for raw, truncated in messages:
            out.append(self._line(raw, truncated, conn.peer_ip, conn.peer, received_ns))

    def _close_idle(self, out: list[LogLine], received_ns: int) -> None:
        """Close the connections that sent nothing for idle_timeout; what they sent is still emitted."""
        now = time.monotonic()
        self._next_sweep = now + min(_IDLE_SWEEP_SECONDS, self._idle_timeout)
        for conn in list(self._connections.values()):
            if now - conn.last_active < self._idle_timeout:
                continue
            messages: list[tuple[bytes, bool]] = []
            frame(conn, self._limit, True, messages)
            self._emit(conn, messages, out, received_ns)
            self._drop(conn)
            health.counters().syslog_tcp_idle_closed += 1
            log.info("syslog %s: %s closed after %s without data", self.cfg.name, conn.peer, self.cfg.idle_timeout)

    def _drain_at_stop(self) -> list[LogLine]:
        """What the sockets hold at a stop: every connection's buffered bytes, its unterminated last message
        too (as when the peer closes), then the connection is closed; the datagrams queued."""
        received_ns = time.time_ns()
        out: list[LogLine] = []
        if self._udp:
            self._read_datagrams(out, received_ns, 16 * self._max_batch)
        for conn in list(self._connections.values()):
            self._read_stream(conn, out, received_ns)
            if conn.sock.fileno() >= 0:  # (still open: the peer did not close it)
                messages: list[tuple[bytes, bool]] = []
                frame(conn, self._limit, True, messages)
                self._emit(conn, messages, out, received_ns)
                self._drop(conn)
        if out:
            log.info("syslog %s: stopping; %d message(s) already received taken", self.cfg.name, len(out))
        return out

    def _drop(self, conn: _Connection) -> None:
        self._connections.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()

    # -- Bytewax

    def next_batch(self) -> Iterable[list[LogLine]]:
        if lifecycle.stopping():
            # End of input, once what the kernel already holds for this receiver is taken: a TCP sender's data
            # was acknowledged to it when it reached the socket, and its send succeeded. What senders have not
            # delivered yet is theirs to resend: TCP senders reconnect to the next start, and UDP has no resend
            # (see the module docstring).
            if self._stop_drained:
                raise StopIteration
            self._stop_drained = True
            held = self._drain_at_stop()
            return [held] if held else []
        received_ns = time.time_ns()
        now = time.monotonic()
        # After a wait for Bytewax (collectors.polling) the socket holds more: take it before the kernel drops.
        max_datagrams = batch_limit(self._max_batch, 16 * self._max_batch, now - self._last_call)
        self._last_call = now
        out: list[LogLine] = []
        for key, _ in self._selector.select(0):
            conn = key.data
            if conn is None:
                if self._udp:
                    self._read_datagrams(out, received_ns, max_datagrams)
                else:
                    self._accept(out, received_ns)
            elif conn.sock.fileno() >= 0:  # not closed by an earlier event of this round
                self._read_stream(conn, out, received_ns)
        if self._connections and time.monotonic() >= self._next_sweep:
            self._close_idle(out, received_ns)
        self._idle = not out
        return [out] if out else []

    def next_awake(self) -> datetime | None:
        # Idle: look again in 20 ms. Busy: at once, there may be more.
        clock.beat(time.monotonic() + (_IDLE_WAKE.total_seconds() if self._idle else 0.0))
        return datetime.now(UTC) + _IDLE_WAKE if self._idle else None

    def snapshot(self) -> None:
        # Syslog cannot be replayed: nothing to resume from (see the module docstring).
        return None

    def close(self) -> None:
        for conn in list(self._connections.values()):
            self._drop(conn)
        self._selector.close()
        self._sock.close()
        if BOUND_ADDRESSES.get(self.cfg.name) == self.address:
            del BOUND_ADDRESSES[self.cfg.name]
