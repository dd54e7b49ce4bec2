"""collectors/syslog/source: properties of TCP framing and of message decoding over generated input (hypothesis).

- Messages framed by RFC 6587 (octet counting, or LF, CR LF or NUL as trailer), mixed in one stream and split
  at random points as TCP reads are, come out exactly as sent: the ones above ``max_event_bytes`` cut to it and
  flagged ``truncated``.
- Any bytes, split anywhere: framing never raises, gives messages of at most ``max_event_bytes``, never more
  bytes than came, the same messages however the stream was split, and never holds more than
  ``max_event_bytes`` plus an octet count's header between reads (a sender cannot grow the buffer).
- Decoding any bytes gives text and the flags that say what happened to it.

FLEETWATCH_FUZZ_EXAMPLES sets the number of examples of each property (a few hundred by default).
"""

from __future__ import annotations

import socket
from itertools import pairwise

from hypothesis import example, given
from hypothesis import strategies as st

from collectors.syslog.source import _Connection, decode, frame
from tests.unit.fuzzing import FUZZ

LIMIT = 256
# An octet count is at most 9 digits and a space: what may wait in the buffer beyond a message's kept part.
HEADER = 10


def new_connection() -> _Connection:
    return _Connection(socket.socket(), "127.0.0.1", "127.0.0.1:1")


def frame_in_pieces(stream: bytes, cuts: list[int], limit: int = LIMIT) -> list[tuple[bytes, bool]]:
    """Framing as the receiver does it: each read appended to what was left, the last one with ``final``."""
    conn = new_connection()
    out: list[tuple[bytes, bool]] = []
    try:
        bounds = [0, *sorted(set(cuts)), len(stream)]
        for i, (start, stop) in enumerate(pairwise(bounds)):
            conn.buf += stream[start:stop]
            frame(conn, limit, i == len(bounds) - 2, out)
            assert len(conn.buf) <= limit + HEADER, "the buffer holds at most one message's kept part"
    finally:
        conn.sock.close()
    assert not conn.buf
    return out


# Message bytes for LF framing: no LF or NUL inside, no CR at the end (a CR before the LF is dropped), and not
# starting like an octet count (RFC 6587 detects the framing by that).
LINE_BYTES = (
    st.binary(min_size=1, max_size=2 * LIMIT)
    .map(lambda b: b.replace(b"\n", b"").replace(b"\0", b"").rstrip(b"\r"))
    .filter(lambda b: b != b"" and not (b[:1].isdigit() and b[:1] != b"0"))
)


@st.composite
def framed_messages(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bool]]]:
    """A stream of messages, each octet counted or ended by LF, CR LF or NUL, and what the receiver must give."""
    stream = b""
    expected: list[tuple[bytes, bool]] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["octets", "lf", "crlf", "nul"]))
        if kind == "octets":
            message = draw(st.binary(min_size=1, max_size=2 * LIMIT))
            stream += str(len(message)).encode() + b" " + message
        else:
            message = draw(LINE_BYTES)
            stream += message + {"lf": b"\n", "crlf": b"\r\n", "nul": b"\0"}[kind]
        expected.append((message[:LIMIT], len(message) > LIMIT))
    return stream, expected


@FUZZ
@given(case=framed_messages(), data=st.data())
@example(case=(b"300 " + b"x" * 300 + b"<1>a\n", [(b"x" * LIMIT, True), (b"<1>a", False)]), data=None)
def test_framed_messages_split_anywhere_come_out_as_sent(
    case: tuple[bytes, list[tuple[bytes, bool]]], data: st.DataObject | None
) -> None:
    stream, expected = case
    cuts = [] if data is None else data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    assert frame_in_pieces(stream, cuts) == expected


@FUZZ
@given(
    stream=st.binary(max_size=3 * LIMIT)
    | st.lists(st.sampled_from([b"1", b"9", b"0", b" ", b"\n", b"\r", b"\0", b"x" * 100, b"300 ", b"<13>"])).map(
        b"".join
    ),
    data=st.data(),
)
@example(stream=b"999999999 " + b"x" * 10, data=None)
@example(stream=b"1234567890 x", data=None)
def test_any_bytes_split_anywhere_frame_the_same_within_the_limit(stream: bytes, data: st.DataObject | None) -> None:
    whole = frame_in_pieces(stream, [])
    cuts = [] if data is None else data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    assert frame_in_pieces(stream, cuts) == whole
    for message, truncated in whole:
        assert 0 < len(message) <= LIMIT
        assert truncated or message in stream
    assert sum(len(m) for m, _ in whole) <= len(stream)


@FUZZ
@given(raw=st.binary(max_size=64), truncated=st.booleans())
def test_decoding_any_bytes_gives_text_and_says_what_happened(raw: bytes, truncated: bool) -> None:
    text, flags = decode(raw, truncated)
    assert ("truncated" in flags) == truncated
    try:
        exact = raw.decode("utf-8")
    except UnicodeDecodeError:
        exact = None
    if exact is not None:
        assert (text, "invalid_utf8" in flags) == (exact, False)
    elif "invalid_utf8" not in flags:
        # Only a cut through the last character is forgiven, and only of a truncated message.
        assert truncated and raw.startswith(text.encode()) and len(raw) - len(text.encode()) < 4
    text.encode("utf-8")  # always storable
