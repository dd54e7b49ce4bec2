"""Building MQTT packets by hand in the tests (the frame parser's own tests, its fuzzing, a fake broker)."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (the remaining length, property lengths)."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
