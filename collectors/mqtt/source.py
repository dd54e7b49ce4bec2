"""MQTT source for Bytewax on paho-mqtt 2.x.

Design, and why:

- **No network thread.** paho's ``loop_start()`` thread would fight the Bytewax worker for the GIL on every
  message. Instead ``next_batch`` drives paho's loop itself (``loop_read``/``loop_write``/``loop_misc``),
  without blocking, and emits everything read as one ``MessageBatch``: one item per batch, not per message.
- **Frames parsed in bulk.** paho reads a packet with several ``recv()`` calls and ~12 µs of Python; the
  client here reads 256 KiB at a time, parses QoS 0/1 PUBLISH frames itself (``frames.py``) and hands every
  other packet to paho from memory.
- **Persistent session.** Partition *i* connects as ``<client_id>-<i>``, with ``clean_session`` off
  (MQTT 3.1.1) or ``clean_start`` off and a session expiry (MQTT 5), so while fleetwatch is away the
  broker keeps the subscriptions and queues QoS >= 1 messages for it.
- **Acks follow committed state.** With ``manual_ack``, QoS 1 messages are acknowledged only once the epoch
  that carried them is committed in Bytewax's recovery store (``flows.recovery_progress``). A crash before
  that leaves them unacked; the broker redelivers them to the restarted pipeline, which resumes from the last
  committed snapshot. Without recovery, messages are acked when the next batch is read (they have entered
  the dataflow). QoS 2
  subscriptions are refused by the configuration: paho answers a QoS 2 PUBLISH with PUBREC at once, before
  the message is in a snapshot, and keeps that exchange in memory only, so QoS 2 cannot follow the state.
- **Shared subscriptions.** Filters are subscribed as ``$share/<group>/<filter>`` so that the workers (and
  processes) of one pipeline split the stream.
- **Reconnect** with capped exponential backoff; the dataflow keeps running (and windows keep closing on
  wall time) while the broker is away. A malformed packet from the broker is a protocol error: the
  connection is closed (as MQTT requires), logged with the reason, counted (``protocol_errors()``) and
  reconnected after the backoff, which grows while connections keep failing that way.
- **Backpressure.** While a sink buffer is saturated, nothing is read: the broker queues, TCP flow control
  holds the rest, and keepalives still go out.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from collectors.mqtt.client import apply_credentials_and_tls
from collectors.mqtt.frames import (
    LIMIT,
    OTHER_PACKET,
    Ack,
    MalformedPacket,
    content_key,
    read_publishes,
)
from collectors.mqtt.parse import MessageBatch
from collectors.mqtt.topics import topic_matches
from collectors.polling import batch_limit
from fleetwatch.config import MQTTConfig
from flows import clock, health, lifecycle
from flows.recovery_progress import EpochCommits

log = logging.getLogger(__name__)

_READ_CHUNK = 256 * 1024
# After a restart or reconnect, redeliveries of already-counted messages arrive first: look for them at least
# this long after the connection is up, and until a new message shows that they are through.
_DEDUP_WINDOW = 30.0
# A PUBACK the broker had not read when it stopped is lost with it (and with a kill -9, every one since its
# last autosave, 30 s in provisioning/): the message comes back after the reconnect, DUP set, though it was
# counted and acknowledged. So acknowledged messages are remembered for this long, up to one per packet id.
_ACKS_REMEMBERED_S = 30.0
_ACKS_REMEMBERED = 65_535
# While acknowledgements wait for their epoch to commit, the recovery store is read this often.
_COMMIT_POLL_S = 0.05
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id (MQTT 3.1.1 and 5)
# MQTT 5 DISCONNECT reason code "Session taken over".
_SESSION_TAKEN_OVER = 0x8E
# A connection that lasted less than this was not a working one: the next attempt waits for the backoff.
# After this many such connections in a row, closed by the broker, the log says what may be the cause.
_SHORT_CLOSES_TOLD = 3
_WORKING_CONNECTION = 1.0
# What paho 2.1's packet reader raises, instead of returning MQTT_ERR_PROTOCOL, on packets it cannot decode
# (found by feeding it random packets of every type). Any of them means a malformed packet.
_PAHO_DECODE_ERRORS = (struct.error, IndexError, KeyError, ValueError, MQTTException)

# Protocol errors (malformed packets from the broker) per client id, since the process started. Each one
# closed a connection. Workers run on their own threads, hence the lock.
_protocol_errors: Counter[str] = Counter()
_protocol_errors_lock = threading.Lock()


def protocol_errors() -> dict[str, int]:
    """Connections closed because the broker sent a malformed packet, per client id."""
    with _protocol_errors_lock:
        return dict(_protocol_errors)


class _BufferedClient(paho.Client):
    """A paho client that reads its socket 256 KiB at a time and parses QoS 0/1 PUBLISH frames itself
    (``frames.read_publishes``); every other packet is passed to paho's own reader, one whole packet at a
    time, from the same buffer. QoS 1 acknowledgements go out in one write. Relies on paho 2.1's
    ``_sock_recv``, ``_packet_read`` and ``_packet_queue`` (the version is pinned)."""

    def __init__(self, *args: Any, v5: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fw_buf = b""
        self._fw_pos = 0
        self._fw_v5 = v5
        # Seconds to wait for the broker to close its side after our DISCONNECT (see fw_disconnect).
        self._fw_linger = 0.0
        # Why the last connection was closed for a protocol error, until fw_take_protocol_error reads it.
        self._fw_protocol_error: str | None = None
        # The reason code of the broker's MQTT 5 DISCONNECT, when it sent one.
        self._fw_disconnect_reason: int | None = None

    def fw_reset_buffer(self) -> None:
        self._fw_buf = b""
        self._fw_pos = 0

    def fw_take_disconnect_reason(self) -> int | None:
        """The reason code of the DISCONNECT the broker just sent (MQTT 5), or None; reading clears it."""
        reason, self._fw_disconnect_reason = self._fw_disconnect_reason, None
        return reason

    def _handle_disconnect(self) -> None:
        # paho 2.1 reads a DISCONNECT's reason code only when properties follow it; Mosquitto sends the code
        # alone (e0 01 8e for "session taken over"), and paho reports a normal disconnection.
        packet = self._in_packet["packet"]
        self._fw_disconnect_reason = packet[0] if self._in_packet["remaining_length"] >= 1 and packet else None
        super()._handle_disconnect()

    def fw_take_protocol_error(self) -> str | None:
        """The reason the connection was just closed for a protocol error, or None; reading clears it."""
        reason, self._fw_protocol_error = self._fw_protocol_error, None
        return reason

    def _fw_close_for_protocol_error(self, reason: str) -> None:
        """MQTT's answer to a malformed packet: close the network connection (3.1.1 §4.8, 5.0 §4.13).
        paho's disconnect handling runs, and with it ``on_disconnect``."""
        name = self._client_id.decode(errors="replace")
        log.error(
            "MQTT %s: malformed packet from the broker, a protocol error (%s); closing the connection", name, reason
        )
        with _protocol_errors_lock:
            _protocol_errors[name] += 1
        # Read on the worker's thread (the source has no network thread): the worker's health counters.
        health.counters().mqtt_protocol_errors += 1
        self._fw_protocol_error = reason
        self.fw_reset_buffer()
        self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)

    def _fw_fill(self) -> bool | None:
        """Append what the socket has. True: got bytes; False: nothing now; None: closed or failed."""
        try:
            data = super()._sock_recv(_READ_CHUNK)
        except BlockingIOError:
            return False
        except (OSError, ConnectionError):
            return None
        if not data:
            return None
        rest = self._fw_buf[self._fw_pos :]
        self._fw_buf = rest + data if rest else data
        self._fw_pos = 0
        return True

    def _fw_paho_reads_one(self) -> bool:
        """Let paho read and handle exactly one packet; False once the connection is gone."""
        buf, pos = self._fw_buf, self._fw_pos
        kind = f"0x{buf[pos]:02x}" if pos < len(buf) else "unknown"
        try:
            rc = self._packet_read()
        except _PAHO_DECODE_ERRORS as exc:
            self._fw_close_for_protocol_error(f"paho cannot decode the packet of type {kind}: {exc!r}")
            return False
        if rc == MQTTErrorCode.MQTT_ERR_PROTOCOL:
            self._fw_close_for_protocol_error(f"paho rejected the packet of type {kind}")
        elif rc > 0:
            self._loop_rc_handle(rc)
        return self.socket() is not None

    def fw_read(
        self,
        messages: list[tuple[str, bytes]],
        acks: list[Ack],
        limit: int,
        redelivered: dict[int, int | None] | None = None,
    ) -> int:
        """Read what the socket has, up to ``limit`` messages, without blocking.

        While ``redelivered`` is given (packet ids of messages counted already, see ``MQTTPartition``), a
        QoS 1 PUBLISH with DUP set goes through paho (and ``on_message``), which decides whether it was counted;
        ``read_publishes`` checks it first, so both paths refuse the same packets (paho takes a topic with
        U+0000, and raises on one that is not UTF-8). A PUBLISH without DUP is a new message: its packet id is
        forgotten there, before the next packet is looked at. A malformed packet closes the connection (see
        ``_fw_close_for_protocol_error``); nothing is raised. Returns the number of QoS 1 messages read
        without paho (none with DUP while ``redelivered`` is given); 0 once the connection is gone."""
        got = len(messages)
        fast_acks = 0
        while True:
            acked_before = len(acks)
            try:
                pos, status = read_publishes(
                    self._fw_buf, self._fw_pos, self._fw_v5, messages, acks, limit, redelivered is not None
                )
            except MalformedPacket as exc:
                self._fw_close_for_protocol_error(exc.reason)
                return 0
            finally:
                fast_acks += len(acks) - acked_before
                if redelivered:
                    for mid, _, _ in acks[acked_before:]:
                        redelivered.pop(mid, None)
            self._fw_pos = pos
            if status == LIMIT:
                break
            if status == OTHER_PACKET:
                if not self._fw_paho_reads_one():
                    return 0
                continue
            filled = self._fw_fill()
            if filled is None:
                self._fw_paho_reads_one()  # paho sees the closed socket and runs its disconnect handling
                return 0
            if not filled:
                break
        if len(messages) > got:
            # paho decides on keepalive pings from the time of the last packet it read.
            self._last_msg_in = time.monotonic()
        return fast_acks

    def fw_ack(self, acks: list[Ack]) -> None:
        """Acknowledge messages. QoS 1 PUBACKs go out as one write: paho's ``ack()`` costs a packet, a
        wake-up write and a socket write each, which at fleet rates is more than reading the message."""
        pubacks = bytearray()
        for mid, qos, _ in acks:
            if qos == 1:
                pubacks += _PUBACK.pack(0x40, 2, mid)
            else:
                self.ack(mid, qos)
        if pubacks:
            self._packet_queue(paho.PUBACK, bytes(pubacks), 0, 0)

    def fw_disconnect(self, timeout: float) -> None:
        """Disconnect so that every acknowledgement already written reaches the broker.

        Closing a socket while the broker's messages still wait unread in it makes the kernel reset the
        connection, and on a reset the broker drops what it had not read yet: the last PUBACKs. Those
        messages would come back after the restart and be counted twice. So after the DISCONNECT the
        socket is read (and the bytes discarded: nothing is acknowledged for them, the broker sends
        them again) until the broker closes its side, then closed."""
        self._fw_linger = timeout
        self.disconnect()
        deadline = time.monotonic() + timeout
        while self.socket() is not None and self.want_write() and time.monotonic() < deadline:
            self.loop_write()
            time.sleep(0.002)

    def _sock_close(self) -> None:
        sock = self._sock
        linger, self._fw_linger = self._fw_linger, 0.0
        if linger > 0 and isinstance(sock, socket.socket):  # TLS sockets are socket.socket too
            deadline = time.monotonic() + linger
            try:
                sock.setblocking(True)
                while (remaining := deadline - time.monotonic()) > 0:
                    sock.settimeout(min(remaining, 0.1))
                    try:
                        if not sock.recv(65536):
                            break  # the broker closed its side: nothing unread is left
                    except TimeoutError:
                        continue
            except OSError:
                pass
        super()._sock_close()

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho reads whole packets that are already buffered; the socket is only read when it is empty.
        pos = self._fw_pos
        buf = self._fw_buf
        if pos >= len(buf):
            return super()._sock_recv(bufsize)
        end = pos + bufsize
        self._fw_pos = min(end, len(buf))
        return buf[pos:end]


def subscription_filter(topic: str, shared_group: str | None) -> str:
    return f"$share/{shared_group}/{topic}" if shared_group else topic


# A partition's snapshot: the packet ids counted and not yet acknowledged, and the topic filters the session
# was subscribed to (older snapshots: the ids alone).
MQTTState = tuple[list[int], list[str]]


class MQTTSource(FixedPartitionedSource[MessageBatch, MQTTState | list[int]]):
    """One partition per connection; run as many partitions as workers so each worker reads.

    ``saturated`` is polled before each read (sink backpressure); ``recovery_dir`` is Bytewax's recovery
    directory when recovery is on: messages are then acknowledged once their epoch is committed there.
    """

    def __init__(
        self,
        cfg: MQTTConfig,
        partitions: int = 1,
        *,
        recovery_dir: Path | None = None,
        max_batch: int = 4096,
        max_batch_after_wait: int = 65_536,
        saturated: Callable[[], bool] = lambda: False,
    ) -> None:
        self.cfg = cfg
        self.partitions = partitions
        self.recovery_dir = recovery_dir
        self.ack_on_snapshot = recovery_dir is not None
        self.max_batch = max_batch
        # After a wait (see collectors.polling): the broker's in-flight window of QoS 1 messages at most.
        self.max_batch_after_wait = max_batch_after_wait
        self.saturated = saturated

    def list_parts(self) -> list[str]:
        return [f"mqtt-{i}" for i in range(self.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: MQTTState | list[int] | None) -> MQTTPartition:
        index = int(for_part.rsplit("-", 1)[1])
        mids, filters = resume_state if isinstance(resume_state, tuple) else (resume_state or [], None)
        return MQTTPartition(self, f"{self.cfg.client_id}-{index}", mids, filters)


class MQTTPartition(StatefulSourcePartition[MessageBatch, MQTTState | list[int]]):
    """Acknowledgement protocol (with recovery on), so that every QoS 1 message counts exactly once:

    - The messages read in an epoch are acknowledged once Bytewax's recovery store shows that epoch
      committed (its snapshots written, every worker past it; ``RecoveryProgress``), checked at each snapshot
      and every few tens of milliseconds while acks wait. The epoch of a snapshot is counted from the epoch
      the execution resumed from: Bytewax snapshots a source partition once at the end of every epoch.
    - The snapshot holds the packet ids counted but not yet acknowledged. After a restart from that
      snapshot, the broker redelivers them (same packet id, DUP set); they are acked and dropped instead of
      being counted again.
    - After a broker disconnect, the same holds for the messages counted and not acknowledged, and also for
      those acknowledged in the last ``_ACKS_REMEMBERED_S``: their PUBACKs may have been lost with the
      broker. A redelivery (DUP set) is dropped when its packet id and content match such a message. A
      PUBLISH without DUP that reuses a remembered packet id shows that the broker had the PUBACK: the id
      is forgotten.
    """

    def __init__(
        self, source: MQTTSource, client_id: str, resume_mids: list[int], resume_filters: list[str] | None = None
    ) -> None:
        self._src = source
        self._cfg = cfg = source.cfg
        # Register this worker's health counters now (on its thread), so health is reported from the
        # start, before any message.
        health.counters()
        self.client_id = client_id
        self._messages: list[tuple[str, bytes]] = []
        self._unacked: list[Ack] = []
        # Acks of snapshotted epochs, oldest first, each sent once its epoch is committed.
        self._epoch_acks: deque[tuple[int, list[Ack]]] = deque()
        # Acks sent, oldest first, with when: the PUBACKs a broker that stops may not have read.
        self._recent_acks: deque[tuple[float, list[Ack]]] = deque()
        self._recent_ack_count = 0
        self._epochs = EpochCommits(source.recovery_dir, f"MQTT {client_id}") if source.recovery_dir else None
        self._next_commit_check = 0.0
        self._last_call = time.monotonic()
        # Packet ids already counted whose redelivery must be dropped, with the content key to match (None:
        # any content; a snapshot keeps packet ids only). They are forgotten once the connection has been up
        # for _DEDUP_WINDOW and a new QoS 1 message (no DUP) came: the broker resends what it has in flight
        # before anything new. Timed from the CONNACK, not the disconnect: a broker that takes long to come
        # back (or a process paused meanwhile) must not see the redeliveries counted.
        self._redelivered: dict[int, int | None] = dict.fromkeys(resume_mids)
        self._dedup_until = 0.0
        self._new_since_connect = False
        self._connected = False
        # Whether the broker had this session at the last CONNACK, the topic filters the session was
        # subscribed to before it (None: not known, from a snapshot of an earlier version or none), and the
        # filters subscribed since (see _on_message: retained messages).
        self._session_present = False
        self._filters_before: list[str] | None = None
        self._subscribed: list[str] | None = resume_filters
        self._connected_at = 0.0
        # Connections in a row the broker closed before they worked (see _on_disconnect).
        self._short_closes = 0
        self._pending_subscribe: int | None = None
        # While a sink is saturated this source does not read, and the window clock stands still.
        self._stall = clock.StallMark()
        health.set_ready(f"mqtt:{client_id}", False)
        self._backoff = cfg.reconnect_min_delay.total_seconds()
        self._next_attempt = 0.0
        self._idle = False
        v5 = cfg.protocol == "5"
        self._client = client = _BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else not cfg.persistent_session,
            manual_ack=True,
            v5=v5,
        )
        client.max_queued_messages_set(0)
        apply_credentials_and_tls(client, cfg)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._connect()

    # -- paho callbacks (run inside next_batch, on the worker thread)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            # Bad credentials or a broker that is not accepting yet: paho closes the socket next; wait
            # before the next attempt instead of hammering the broker (and the log) in a tight loop.
            log.error(
                "MQTT %s: broker refused connection: %s; retrying in %.1fs", self.client_id, reason, self._backoff
            )
            self._delay_next_attempt()
            return
        self._connected = True
        self._session_present = bool(flags.session_present)
        self._filters_before = self._subscribed if self._session_present else None
        self._connected_at = time.monotonic()
        self._dedup_until = self._connected_at + _DEDUP_WINDOW
        self._new_since_connect = False
        # The backoff is not reset here but when a connection ends after having worked (_on_disconnect): a
        # broker that accepts and then at once drops the connection, or sends a malformed packet (the same
        # one again after every reconnect, as an unacknowledged message is), is retried ever more slowly.
        log.info(
            "MQTT %s: connected to %s:%d (session present: %s)",
            self.client_id,
            self._cfg.host,
            self._cfg.port,
            flags.session_present,
        )
        # MQTT 5: the broker sends a topic's retained message only for a subscription the session did not have
        # (Retain Handling 1); MQTT 3.1.1 sends it at every SUBSCRIBE (see _on_message).
        subs: list[tuple[str, Any]] = [
            (
                subscription_filter(s.topic, self._cfg.shared_group),
                SubscribeOptions(qos=s.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
                if self._cfg.protocol == "5"
                else s.qos,
            )
            for s in self._cfg.subscriptions
        ]
        if subs:
            _, self._pending_subscribe = client.subscribe(subs)
        else:
            health.set_ready(f"mqtt:{self.client_id}", True)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        refused = [code for code in reasons if code.is_failure]
        for code in refused:
            log.error("MQTT %s: subscription refused: %s", self.client_id, code)
        if mid == self._pending_subscribe and not refused:
            self._pending_subscribe = None
            self._subscribed = [s.topic for s in self._cfg.subscriptions]
            health.set_ready(f"mqtt:{self.client_id}", True)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        protocol_error = self._client.fw_take_protocol_error()
        reason_code = self._client.fw_take_disconnect_reason()
        if self._connected:
            health.counters().mqtt_disconnects += 1
            if reason_code == _SESSION_TAKEN_OVER:
                # MQTT 5 says why (3.1.1 only closes the connection): the broker gives this session, and the
                # messages queued for it, to whichever client connected last with this id.
                log.error(
                    "MQTT %s: the broker closed this session because another client connected with the same client "
                    "id; that client now receives this session's messages. mqtt.client_id must be unique",
                    self.client_id,
                )
            worked = time.monotonic() - self._connected_at >= _WORKING_CONNECTION
            if worked:
                self._backoff = self._cfg.reconnect_min_delay.total_seconds()
                self._short_closes = 0
            elif protocol_error is None and reason_code != _SESSION_TAKEN_OVER:
                self._short_closes += 1
                if self._short_closes == _SHORT_CLOSES_TOLD:
                    # What MQTT 3.1.1 (and brokers that send no reason) leave to guess: the same client id
                    # used twice (two fleetwatch processes with one config) makes the broker close each
                    # connection as the other one connects.
                    log.error(
                        "MQTT %s: the broker closed %d connections in a row within %.0f s of accepting them: another "
                        "client connecting with this client id (mqtt.client_id must be unique, also between "
                        "fleetwatch processes) or a broker limit does this",
                        self.client_id,
                        self._short_closes,
                        _WORKING_CONNECTION,
                    )
            if protocol_error is not None or not worked:
                # A broker that accepts and then drops at once, or that sent a malformed packet, must not be
                # reconnected to in a tight loop.
                log.warning(
                    "MQTT %s: disconnected (%s); reconnecting in %.1fs",
                    self.client_id,
                    "protocol error" if protocol_error is not None else reason,
                    self._backoff,
                )
                self._delay_next_attempt()
            else:
                log.warning("MQTT %s: disconnected (%s); reconnecting", self.client_id, reason)
                self._next_attempt = 0.0  # a connection that worked: try again at once
        elif protocol_error is not None:
            # Before the CONNACK (a malformed one): the same broker would answer the next attempt the same way.
            log.warning("MQTT %s: protocol error while connecting; retrying in %.1fs", self.client_id, self._backoff)
            self._delay_next_attempt()
        self._connected = False
        health.set_ready(f"mqtt:{self.client_id}", False)
        # Packet ids belong to the session: the broker redelivers what it has no PUBACK for, with the same
        # ids. Those already counted are dropped on arrival (and acked then). Later acks of an id win.
        counted: dict[int, int | None] = {}
        for _, acks in self._recent_acks:
            counted.update((mid, key) for mid, qos, key in acks if qos == 1)
        for _, acks in self._epoch_acks:
            counted.update((mid, key) for mid, qos, key in acks if qos == 1)
        counted.update((mid, key) for mid, qos, key in self._unacked if qos == 1)
        self._redelivered.update(counted)
        self._new_since_connect = False
        self._unacked.clear()
        # The epochs stay: the redeliveries of their messages are acked in the current epoch instead.
        for _, acks in self._epoch_acks:
            acks.clear()
        self._client.fw_reset_buffer()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        topic, payload = msg.topic, msg.payload
        key = content_key(topic, payload)
        if msg.qos and not msg.dup:
            self._new_since_connect = True
        if msg.retain and msg.qos and not msg.dup and self._resent_retained(topic):
            # A retained message the broker sends again because the subscription was made again. A session
            # that was present and had that subscription received the message when it was published (live
            # messages come without RETAIN; at QoS 1 the broker queued it while fleetwatch was away), and
            # counted it then: counting it now would count it once more at each reconnect, stamped with the
            # reconnect's time when it carries none of its own. (With DUP it is the redelivery of one sent
            # before and not acknowledged: counted below unless counted already. At QoS 0 nothing was
            # queued, so the resent one may be the only copy: counted.)
            if msg.qos:
                self._unacked.append((msg.mid, msg.qos, key))
            health.counters().mqtt_retained_skipped += 1
            return
        if msg.qos and msg.mid in self._redelivered:
            counted_key = self._redelivered.pop(msg.mid)
            if msg.dup and msg.qos == 1 and counted_key in (key, None):
                self._unacked.append((msg.mid, msg.qos, key))  # counted already: acked, not counted again
                health.counters().mqtt_redeliveries_dropped += 1
                return
        self._messages.append((topic, payload))
        if msg.qos:
            self._unacked.append((msg.mid, msg.qos, key))

    def _resent_retained(self, topic: str) -> bool:
        before = self._filters_before
        return before is not None and any(topic_matches(f, topic) for f in before)

    # -- connection

    def _connect(self) -> None:
        cfg = self._cfg
        props = None
        if cfg.protocol == "5":
            # No TopicAliasMaximum: it is 0 then, the broker may send no topic aliases, and frames.py rightly
            # treats a zero-length topic as a protocol error. Allowing aliases needs frames.py to resolve them.
            props = Properties(PacketTypes.CONNECT)
            expiry = int(cfg.session_expiry.total_seconds()) if cfg.persistent_session else 0
            props.SessionExpiryInterval = expiry
            props.ReceiveMaximum = 65535
        self._client.fw_reset_buffer()
        try:
            self._client.connect(
                cfg.host,
                cfg.port,
                keepalive=int(cfg.keepalive.total_seconds()),
                clean_start=not cfg.persistent_session if cfg.protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY,
                properties=props,
            )
            sock = self._client.socket()
            if sock is None:
                raise ConnectionError("no socket after connect")
            # paho leaves the socket blocking with a keepalive-long timeout; next_batch must never block.
            sock.setblocking(False)
        except (OSError, ValueError) as exc:
            self._schedule_retry(exc)

    def _delay_next_attempt(self) -> None:
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._cfg.reconnect_max_delay.total_seconds())

    def _schedule_retry(self, exc: Exception) -> None:
        log.warning(
            "MQTT %s: cannot connect to %s:%d (%s); retrying in %.1fs",
            self.client_id,
            self._cfg.host,
            self._cfg.port,
            exc,
            self._backoff,
        )
        self._delay_next_attempt()

    def _ack(self, acks: list[Ack]) -> None:
        """Acknowledge ``acks`` and remember them (see ``_on_disconnect``); the list is kept, not reused."""
        if not acks or self._client.socket() is None:
            return
        self._client.fw_ack(acks)
        self._client.loop_write()
        now = time.monotonic()
        recent = self._recent_acks
        recent.append((now, acks))
        self._recent_ack_count += len(acks)
        while recent and (
            recent[0][0] < now - _ACKS_REMEMBERED_S or self._recent_ack_count - len(recent[0][1]) >= _ACKS_REMEMBERED
        ):
            self._recent_ack_count -= len(recent.popleft()[1])

    # -- Bytewax

    def next_batch(self) -> Iterable[MessageBatch]:
        # Every call counts, also one that does not read (disconnected, saturated sinks): only a wait for
        # Bytewax may raise the read limit, never a stall of fleetwatch's own.
        now = time.monotonic()
        gap, self._last_call = now - self._last_call, now
        if lifecycle.stopping():
            # End of input: Bytewax completes the dataflow and commits a last snapshot. What is not read
            # yet stays unacknowledged in the broker's session for the next start.
            raise StopIteration
        client = self._client
        if client.socket() is None:
            if time.monotonic() >= self._next_attempt:
                self._connect()
            self._idle = True
            return []
        if not self._src.ack_on_snapshot:
            if self._unacked:
                acks, self._unacked = self._unacked, []
                self._ack(acks)
        elif self._epoch_acks and time.monotonic() >= self._next_commit_check:
            self._ack_committed()
        if self._src.saturated():
            self._stall.set(True)
            client.loop_misc()
            client.loop_write()
            self._idle = True
            return []
        self._stall.set(False)
        messages = self._messages
        redelivered = self._redelivered
        if redelivered and self._connected and self._new_since_connect and now > self._dedup_until:
            redelivered.clear()
        limit = batch_limit(self._src.max_batch, self._src.max_batch_after_wait, gap)
        if client.fw_read(messages, self._unacked, limit, redelivered or None):
            self._new_since_connect = True
        if client.socket() is not None:
            client.loop_write()
            client.loop_misc()
        if not messages:
            self._idle = True
            return []
        self._idle = False
        self._messages = []
        return [MessageBatch(time.time_ns(), messages)]

    def next_awake(self) -> datetime | None:
        # Poll every 2 ms while idle; immediately while messages are flowing.
        clock.beat(time.monotonic() + (0.002 if self._idle else 0.0))
        if self._idle:
            return datetime.now(UTC) + timedelta(milliseconds=2)
        return None

    def snapshot(self) -> MQTTState:
        filters = list(self._subscribed or [])
        if self._epochs is None:
            return [], filters
        self._epoch_acks.append((self._epochs.end_epoch(), self._unacked))
        self._unacked = []
        self._ack_committed()
        return [mid for _, acks in self._epoch_acks for mid, qos, _ in acks if qos == 1], filters

    def _ack_committed(self) -> None:
        """Acknowledge the messages of every epoch the recovery store shows committed."""
        assert self._epochs is not None
        self._next_commit_check = time.monotonic() + _COMMIT_POLL_S
        committed = self._epochs.committed()
        acks = self._epoch_acks
        while acks and acks[0][0] <= committed:
            _, epoch_acks = acks.popleft()
            self._ack(epoch_acks)

    def close(self) -> None:
        """Bytewax calls this before the last snapshot is committed, so with recovery on nothing is
        acknowledged here: the messages of the last epoch are redelivered at the next start, and dropped
        there as already counted when that snapshot was committed (their packet ids are in it), or counted
        then if it was not. Without recovery, what entered the dataflow is acknowledged."""
        if not self._src.ack_on_snapshot:
            acks, self._unacked = self._unacked, []
            self._ack(acks)
        if self._epochs is not None:
            self._epochs.close()
        self._stall.set(False)
        health.set_ready(f"mqtt:{self.client_id}", False)
        client = self._client
        if client.socket() is None:
            return
        self._connected = False  # a disconnect asked for, not one to warn about
        # A clean DISCONNECT keeps the broker from publishing a will and tells it the session is parked
        # on purpose; the PUBACKs queued before it must arrive.
        client.fw_disconnect(timeout=2.0)
