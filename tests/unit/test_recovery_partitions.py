"""The start-up check of Bytewax's stored partitions against the flow about to resume from them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from bytewax.recovery import init_db_dir
from bytewax.testing import TestingSource

from fleetwatch.runner import unknown_stored_partitions


class _TwoPartSink(FixedPartitionedSink[int, None]):
    def list_parts(self) -> list[str]:
        return ["store-0", "store-1"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> StatefulSinkPartition[int, None]:
        raise AssertionError("the check builds no partition")


def _flow() -> Dataflow:
    flow = Dataflow("check")
    items = op.input("readings", flow, TestingSource([1, 2]))
    op.output("store", op.key_on("key", items, str), _TwoPartSink())
    return flow


def _store(directory: Path, rows: list[tuple[str, str, int, bytes | None]], part: int = 0) -> None:
    """Rows in Bytewax's snapshot table of one of two recovery partitions (a key's snapshots share one)."""
    if not any(directory.glob("part-*.sqlite3")):
        init_db_dir(directory, 2)
    connection = sqlite3.connect(directory / f"part-{part}.sqlite3")
    with connection:
        connection.executemany(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)", rows
        )
    connection.close()


def test_partitions_the_flow_lists_pass(tmp_path: Path) -> None:
    flow = _flow()
    source_part = TestingSource([1]).list_parts()[0]
    _store(tmp_path, [("check.readings", source_part, 3, b"state"), ("check.store", "store-0", 3, b"state")])
    _store(tmp_path, [("check.store", "store-1", 3, b"state")], part=1)
    assert unknown_stored_partitions(tmp_path, flow) == {}


def test_a_partition_of_a_removed_input_or_lost_worker_is_named_per_step(tmp_path: Path) -> None:
    _store(
        tmp_path,
        [
            ("check.readings", "mqtt-1", 4, b"state"),
            ("check.readings", "old-input", 2, b"state"),
            # Not an input or output step: keyed state resumes under any key.
            ("check.windows", "sensor-7", 5, b"state"),
        ],
    )
    _store(tmp_path, [("check.store", "store-2", 5, b"state"), ("check.store", "store-1", 5, b"state")], part=1)
    assert unknown_stored_partitions(tmp_path, _flow()) == {
        "check.readings": ["mqtt-1", "old-input"],
        "check.store": ["store-2"],
    }


def test_a_partition_whose_newest_snapshot_discarded_its_state_is_not_resumed(tmp_path: Path) -> None:
    _store(tmp_path, [("check.readings", "gone", 2, b"state"), ("check.readings", "gone", 3, None)])
    assert unknown_stored_partitions(tmp_path, _flow()) == {}
