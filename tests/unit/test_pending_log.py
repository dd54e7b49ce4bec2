"""The InfluxDB sink's log of pending lines (flows.sinks.pending_log): what a snapshot holds with recovery on."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from flows.sinks.pending_log import PENDING_LOG_FOLDER, PendingLog, is_marker
from flows.window_log import LogMarker, WindowLogError, remove_unreferenced

STEP = "fleetwatch.influxdb"


def _lines(n: int) -> list[str]:
    # A string field may hold an escaped quote, a newline, and any UTF-8.
    return [
        f'readings,device=d{i},metric=t note="a\\"b\nc ü {i}",value={i}.5 {1_700_000_000_000_000_000 + i}'
        for i in range(n)
    ]


def _store(directory: Path, epoch: int, marker: object) -> None:
    partition = sqlite3.connect(directory / "part-0.sqlite3")
    partition.execute(
        "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
        (STEP, "influxdb-0", epoch, pickle.dumps(marker)),
    )
    partition.commit()
    partition.close()


def _drop_stored(directory: Path, epoch: int) -> None:
    partition = sqlite3.connect(directory / "part-0.sqlite3")
    partition.execute("DELETE FROM snaps WHERE step_id = ? AND snap_epoch = ?", (STEP, epoch))
    partition.commit()
    partition.close()


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / PENDING_LOG_FOLDER).iterdir())


def test_a_boundarys_lines_go_to_the_log_and_the_snapshot_is_a_small_marker(tmp_path: Path) -> None:
    """100,000 pending lines (a boundary at 100,000 series): Bytewax gets a marker of a few dozen bytes, and a
    restart reads back every line, in order, byte for byte."""
    lines = _lines(100_000)
    log = PendingLog(tmp_path, STEP)
    snapshot = log.save(lines, 1)
    assert is_marker(snapshot)
    assert log.saved_bytes >= sum(len(line.encode()) for line in lines)
    assert len(pickle.dumps(snapshot)) < 200
    stored_marker: LogMarker = pickle.loads(pickle.dumps(snapshot))
    assert PendingLog(tmp_path, STEP, stored_marker).load(stored_marker) == lines


def test_nothing_pending_writes_no_file(tmp_path: Path) -> None:
    assert PendingLog(tmp_path, STEP).save([], 1) == []
    assert _files(tmp_path) == []


def test_a_generation_is_deleted_once_no_stored_snapshot_refers_to_it(tmp_path: Path) -> None:
    """Bytewax keeps a key's older snapshot until a newer one is committed, then drops it: the log keeps every
    generation a stored snapshot names, and deletes the others at a later snapshot."""
    init_db_dir(tmp_path, 1)
    log = PendingLog(tmp_path, STEP)
    first = log.save(_lines(10), 1)
    _store(tmp_path, 1, first)
    second = log.save(_lines(20), 2)
    _store(tmp_path, 2, second)
    log.save(_lines(5), 3)
    assert len(_files(tmp_path)) == 3  # the first is still stored: a restart may resume from it
    _drop_stored(tmp_path, 1)
    log.save(_lines(5), 4)
    assert first[3] not in [int(name.rsplit(".", 1)[1]) for name in _files(tmp_path)]
    assert PendingLog(tmp_path, STEP, second).load(second) == _lines(20)  # type: ignore[arg-type]


def test_a_resumed_partition_deletes_the_generation_it_resumed_from_once_superseded(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    before_crash = PendingLog(tmp_path, STEP).save(_lines(10), 1)
    assert is_marker(before_crash)
    _store(tmp_path, 1, before_crash)
    resumed = PendingLog(tmp_path, STEP, before_crash)
    assert resumed.load(before_crash) == _lines(10)
    after = resumed.save(_lines(3), 2)
    _store(tmp_path, 2, after)
    _drop_stored(tmp_path, 1)
    resumed.save(_lines(1), 3)
    assert f"{before_crash[2]}.{before_crash[3]}" not in _files(tmp_path)
    assert f"{before_crash[2]}.{after[3]}" in _files(tmp_path)


def test_at_start_logs_no_snapshot_refers_to_are_removed(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    kept = PendingLog(tmp_path, STEP).save(_lines(3), 1)
    PendingLog(tmp_path, STEP).save(_lines(3), 1)  # a run that died before its first commit
    _store(tmp_path, 1, kept)
    assert remove_unreferenced(tmp_path, STEP, PENDING_LOG_FOLDER) == 1
    assert _files(tmp_path) == [f"{kept[2]}.{kept[3]}"]


def test_a_missing_or_damaged_log_stops_the_resume_with_its_path(tmp_path: Path) -> None:
    marker = PendingLog(tmp_path, STEP).save(_lines(3), 1)
    assert is_marker(marker)
    path = tmp_path / PENDING_LOG_FOLDER / f"{marker[2]}.{marker[3]}"
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(WindowLogError, match="is damaged"):
        PendingLog(tmp_path, STEP, marker).load(marker)
    path.unlink()
    with pytest.raises(WindowLogError, match=f"{path} is missing"):
        PendingLog(tmp_path, STEP, marker).load(marker)
