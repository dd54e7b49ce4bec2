"""Dead letters in a durable local JSON-lines file: one object per bad input, with the reason, the source,
the raw bytes (base64) and a readable preview.

Every batch is flushed and fsync'd before ``write_batch`` returns, so a dead letter counted is a dead letter
kept. The logs pipeline moves dead letters to Elasticsearch; this file stays the fallback.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from fleetwatch.record import DeadLetter


class DeadLetterFile:
    """Appends dead letters to one file; safe to share between worker threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        text = "".join(letter.to_json() + "\n" for letter in letters)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


class DeadLetterSink(DynamicSink[list[DeadLetter]]):
    def __init__(self, store: DeadLetterFile) -> None:
        self.store = store

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.store)


class _DeadLetterPartition(StatelessSinkPartition[list[DeadLetter]]):
    def __init__(self, store: DeadLetterFile) -> None:
        self._store = store

    def write_batch(self, items: list[list[DeadLetter]]) -> None:
        self._store.write([letter for batch in items for letter in batch])
