"""collectors/logs/tail: real files in tmp_path, the partition driven directly as Bytewax would drive it
(build_part, next_batch, snapshot, close, build_part from the snapshot)."""

from __future__ import annotations

import codecs
import functools
import gzip
import json
import os
import pickle
import shutil
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from collectors.logs import tail
from collectors.logs.tail import MAX_BATCH_LINES, FileTailPartition, FileTailSource, TailState, doc_id, file_key
from fleetwatch.config import FileInputConfig
from fleetwatch.record import LogLine

STACK_START = r"^\d{4}-\d{2}-\d{2} "


def config(paths: list[Path], **kwargs: Any) -> FileInputConfig:
    return FileInputConfig(name="app", paths=[str(p) for p in paths], poll_interval=0.01, **kwargs)


def build(cfg: FileInputConfig, state: TailState | None = None) -> FileTailPartition:
    source = FileTailSource([cfg], host_name="h1", rotate_wait=0.03)
    assert source.list_parts() == ["app"]
    return source.build_part("tail", "app", state)


def batch(part: FileTailPartition) -> list[LogLine]:
    out: list[LogLine] = []
    for lines in part.next_batch():
        out += lines
    return out


def drain(part: FileTailPartition, quiet: float = 0.08) -> list[LogLine]:
    """Everything the partition emits until it has been quiet for ``quiet`` seconds, sleeping as
    ``next_awake`` asks (a worker would)."""
    out: list[LogLine] = []
    last = time.monotonic()
    deadline = last + 5
    while time.monotonic() < deadline:
        got = batch(part)
        now = time.monotonic()
        if got:
            out += got
            last = now
        elif now - last >= quiet:
            return out
        wake = part.next_awake()
        if wake is not None:
            time.sleep(min(max((wake - datetime.now(UTC)).total_seconds(), 0.0), 0.02))
    raise AssertionError("the partition never went quiet")


def write(path: Path, data: str | bytes, mode: str = "ab") -> None:
    with path.open(mode) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def lines(prefix: str, start: int, stop: int) -> list[str]:
    return [f"{prefix} {i:05d}" for i in range(start, stop)]


def text(items: list[str]) -> str:
    return "".join(f"{item}\n" for item in items)


def by_id(events: list[LogLine]) -> dict[str, str]:
    """doc_id -> text over all events; an id seen twice must carry the same text."""
    seen: dict[str, str] = {}
    for event in events:
        assert seen.setdefault(event.doc_id, event.text) == event.text, event
    return seen


def test_reads_from_start_in_capped_batches_then_follows_the_file(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    expected = lines("line", 0, 5000)
    # One CRLF line: the "\r" is not part of the text.
    write(log, text(expected[:10]).replace("\n", "\r\n", 1) + text(expected[10:]))
    part = build(config([tmp_path / "*.log"]))
    first = batch(part)
    assert 0 < len(first) <= MAX_BATCH_LINES
    events = first + drain(part)
    assert [e.text for e in events] == expected
    assert len({e.doc_id for e in events}) == len(expected)
    assert {(e.input_name, e.source, e.flags) for e in events} == {("app", f"file:{log}", ())}
    # Idle: the worker is told to come back at the next poll, not to spin.
    # (the clock is read on both sides of the call: a loaded machine may pause the test between them)
    before = datetime.now(UTC)
    wake = part.next_awake()
    after = datetime.now(UTC)
    assert wake is not None and wake.tzinfo is not None
    assert before <= wake <= after + timedelta(seconds=0.02)

    write(log, text(["appended"]))
    assert [e.text for e in drain(part)] == ["appended"]
    part.close()


def test_read_from_end_skips_existing_lines_but_not_new_files(tmp_path: Path) -> None:
    old = tmp_path / "old.log"
    write(old, text(lines("old", 0, 10)))
    part = build(config([tmp_path / "*.log"], read_from="end"))
    assert drain(part) == []
    write(old, text(["old new"]))
    # A file that appears while running is read from its start.
    write(tmp_path / "later.log", text(["later 1", "later 2"]))
    events = drain(part)
    assert sorted((e.source.rsplit("/", 1)[1], e.text) for e in events) == [
        ("later.log", "later 1"),
        ("later.log", "later 2"),
        ("old.log", "old new"),
    ]
    state = part.snapshot()
    part.close()

    # After a restart with state, a file that appeared meanwhile is read from its start too.
    write(tmp_path / "meanwhile.log", text(["m 1", "m 2"]))
    write(old, text(["old after restart"]))
    part = build(config([tmp_path / "*.log"], read_from="end"), state)
    assert sorted(e.text for e in drain(part)) == ["m 1", "m 2", "old after restart"]
    part.close()


def test_rename_rotation_with_a_restart_mid_file_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    cfg = config([log])  # the glob does not match app.log.1
    write(log, text(lines("a", 0, 3000)))
    part = build(cfg)
    first = batch(part)
    state = pickle.loads(pickle.dumps(part.snapshot()))  # mid-file: one capped batch read; Bytewax pickles it
    assert len(first) < 3000
    write(log, text(lines("a", 3000, 3100)))
    run1 = first + drain(part)
    assert [e.text for e in run1] == lines("a", 0, 3100)
    part.close()  # a crash: what was read after the snapshot is read again

    # logrotate "create": rename, the writer finishes a few lines in the old file, then a new file.
    os.rename(log, tmp_path / "app.log.1")
    write(tmp_path / "app.log.1", text(lines("a", 3100, 3150)))
    write(log, text(lines("a", 3150, 3300)))
    part = build(cfg, state)
    run2 = drain(part)
    ids = by_id(run1 + run2)
    assert sorted(ids.values()) == lines("a", 0, 3300)
    assert len(ids) == 3300
    # The replayed lines keep their ids.
    replayed = {e.text: e.doc_id for e in run1[len(first) :]}
    assert {e.text: e.doc_id for e in run2 if e.text in replayed} == replayed
    assert {e.source for e in run2} == {f"file:{tmp_path}/app.log.1", f"file:{log}"}
    # The rotated file, read to its end and quiet, is forgotten.
    assert [(f.path, f.offset) for f in part.snapshot().files] == [(str(log), log.stat().st_size)]
    part.close()


def test_rotation_while_running_with_the_same_first_line_and_a_partial_last_line(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    part = build(config([log]))
    write(log, text(["=== started ===", "one", "two"]))
    before = drain(part)
    write(log, "last words without newline")
    os.rename(log, tmp_path / "app.log.1")
    write(log, text(["=== started ===", "three"]))
    after = drain(part)
    # The partial last line of the rotated file is emitted once that file is finished.
    assert sorted(e.text for e in after) == ["=== started ===", "last words without newline", "three"]
    # Same first line, same offsets, different files: different ids.
    assert len({e.doc_id for e in before + after}) == 6
    assert [f.path for f in part.snapshot().files] == [str(log)]
    part.close()


def test_copytruncate_with_a_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    cfg = config([log])
    write(log, text(lines("b", 0, 100)))
    part = build(cfg)
    run1 = drain(part)
    state = part.snapshot()
    write(log, text(lines("b", 100, 150)))
    run1 += drain(part)
    shutil.copyfile(log, tmp_path / "app.log.1")
    os.truncate(log, 0)
    write(log, text(lines("b", 150, 170)))
    run1 += drain(part)
    assert [e.text for e in run1] == lines("b", 0, 170)
    # Offset 0 again, but a new generation: the new first line does not take the old one's id.
    assert len({e.doc_id for e in run1}) == 170
    part.close()

    part = build(cfg, state)  # the snapshot is from before the truncation
    run2 = drain(part)
    assert [e.text for e in run2] == lines("b", 150, 170)
    ids = by_id(run1 + run2)
    assert sorted(ids.values()) == lines("b", 0, 170)
    # Truncated and rewritten past the old position between two polls: noticed by the first line.
    with log.open("r+b") as f:
        f.truncate(0)
        f.write(text(lines("c", 0, 200)).encode())
    run3 = drain(part)
    assert [e.text for e in run3] == lines("c", 0, 200)
    assert not {e.doc_id for e in run3} & set(ids)
    part.close()


def test_copytruncate_rewritten_to_the_same_size_between_two_polls_is_read_again(tmp_path: Path) -> None:
    """Lines of equal length: the file is truncated and rewritten to exactly the size already read before the
    tail looks again. Its size says nothing changed; its first line and modification time say otherwise."""
    log = tmp_path / "app.log"
    part = build(config([log]))
    write(log, text(lines("a", 0, 20)))
    first = drain(part)
    assert [e.text for e in first] == lines("a", 0, 20)
    size = log.stat().st_size
    with log.open("r+b") as f:
        f.truncate(0)
        f.write(text(lines("b", 0, 20)).encode())
    assert log.stat().st_size == size
    second = drain(part)
    assert [e.text for e in second] == lines("b", 0, 20)
    assert not {e.doc_id for e in second} & {e.doc_id for e in first}
    part.close()


def test_content_replaced_in_place_while_not_running_is_read_again(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, text(lines("old", 0, 10)))
    part = build(config([log]))
    old_ids = {e.doc_id for e in drain(part)}
    state = part.snapshot()
    part.close()
    with log.open("r+b") as f:  # same inode, longer than the saved offset, another first line
        f.write(text(lines("new", 0, 30)).encode())
    part = build(config([log]), state)
    events = drain(part)
    assert [e.text for e in events] == lines("new", 0, 30)
    assert not {e.doc_id for e in events} & old_ids
    part.close()


def test_a_new_file_with_the_old_ones_inode_and_header_while_not_running_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    """Deleted and written again while fleetwatch was stopped, a log can get the same inode back (ext4 reuses a
    freed one at once) and, with a header line, the same first line. Longer than the saved offset, it was
    resumed there: its first lines were lost without a word. The bytes before the saved offset tell it apart.
    (Rewritten in place here: the same inode for certain.)"""
    log = tmp_path / "app.log"
    header = "#Fields: date time cs-method cs-uri-stem sc-status"
    write(log, text([header, *lines("old", 0, 10)]))
    part = build(config([log]))
    old_ids = {e.doc_id for e in drain(part)}
    state = pickle.loads(pickle.dumps(part.snapshot()))
    part.close()
    with log.open("r+b") as f:
        f.write(text([header, *lines("new", 0, 30)]).encode())
    part = build(config([log]), state)
    events = drain(part)
    assert [e.text for e in events] == [header, *lines("new", 0, 30)]
    assert not {e.doc_id for e in events} & old_ids
    # The same file, unchanged and then grown, resumes where it was: nothing twice.
    state = pickle.loads(pickle.dumps(part.snapshot()))
    part.close()
    write(log, text(lines("more", 0, 3)))
    part = build(config([log]), state)
    assert [e.text for e in drain(part)] == lines("more", 0, 3)
    part.close()


PYTHON_TRACE = [
    "2024-05-01 10:00:01 ERROR request failed",
    "Traceback (most recent call last):",
    '  File "app.py", line 3, in <module>',
    "    main()",
    "ValueError: bad input",
]
JAVA_TRACE = [
    "2024-05-01 10:00:02 ERROR java failure",
    "java.lang.IllegalStateException: boom",
    "\tat com.example.App.run(App.java:10)",
    "\tat com.example.App.main(App.java:5)",
    "Caused by: java.io.IOException: disk full",
    "\t... 2 more",
]


def test_multiline_groups_stack_traces_and_flushes_the_last_event_after_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    cfg = config([log], multiline={"start_pattern": STACK_START, "flush_timeout": 0.2})
    write(log, text(["2024-05-01 10:00:00 INFO starting", *PYTHON_TRACE, *JAVA_TRACE, "2024-05-01 10:00:03 INFO done"]))
    part = build(cfg)
    events = batch(part)
    assert [(e.text, e.flags) for e in events] == [
        ("2024-05-01 10:00:00 INFO starting", ()),
        ("\n".join(PYTHON_TRACE), ("multiline",)),
        ("\n".join(JAVA_TRACE), ("multiline",)),
    ]
    # The last event may still get continuation lines: held until the flush timeout.
    wake = part.next_awake()
    assert wake is not None and (wake - datetime.now(UTC)).total_seconds() <= 0.2
    assert drain(part, quiet=0.1) == []
    assert [(e.text, e.flags) for e in drain(part, quiet=0.3)] == [("2024-05-01 10:00:03 INFO done", ())]
    part.close()


def test_restart_while_a_multiline_event_is_pending_reemits_it_whole_with_the_same_id(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    cfg = config([log], multiline={"start_pattern": STACK_START, "flush_timeout": 0.2})
    write(log, text(["2024-05-01 09:59:59 INFO before", *PYTHON_TRACE]))
    part = build(cfg)
    assert [e.text for e in batch(part)] == ["2024-05-01 09:59:59 INFO before"]
    state = part.snapshot()  # the trace is pending
    first = drain(part, quiet=0.3)
    assert [e.text for e in first] == ["\n".join(PYTHON_TRACE)]
    part.close()

    part = build(cfg, state)
    write(log, text(["2024-05-01 10:00:05 INFO after"]))
    again = drain(part, quiet=0.3)
    assert [(e.text, e.doc_id) for e in again[:1]] == [(first[0].text, first[0].doc_id)]
    # The id is that of the event's first byte, in this file's generation.
    (entry,) = state.files
    assert entry.offset == len("2024-05-01 09:59:59 INFO before\n")  # the pending event's start
    assert first[0].doc_id == doc_id(entry.fingerprint, entry.generation, entry.offset)
    assert [e.text for e in again[1:]] == ["2024-05-01 10:00:05 INFO after"]
    part.close()


T_CRI = "2026-01-01T00:00:0{}.123456789Z"


def test_cri_partial_records_are_joined_into_one_line_and_other_records_pass(tmp_path: Path) -> None:
    log = tmp_path / "pod_app-0.log"
    records = [
        f"{T_CRI.format(1)} stdout F plain line",
        f"{T_CRI.format(2)} stdout P first half, ",
        f"{T_CRI.format(2)} stderr F an error between the parts",
        f"{T_CRI.format(2)} stdout P second half, ",
        f"{T_CRI.format(3)} stdout F end",
        f"{T_CRI.format(4)} stdout F ",
        "not a CRI record",
        f"{T_CRI.format(5)} stderr P cut off when the container stopped",
    ]
    write(log, text(records))
    part = build(config([log], parser={"kind": "cri"}))
    events = drain(part, quiet=1.3)  # the unfinished run waits a second for its last record
    starts = [0]
    for record in records:
        starts.append(starts[-1] + len(record) + 1)
    key = file_key(part.snapshot().files[0].fingerprint, 0)
    # The stderr line read while the run waited comes after it: nothing is emitted past the run's start, the
    # offset a snapshot commits meanwhile.
    assert [(e.text, e.flags, e.doc_id) for e in events] == [
        (records[0], (), f"{key}-{starts[0]:x}"),
        (f"{T_CRI.format(2)} stdout F first half, second half, end", (), f"{key}-{starts[1]:x}"),
        (records[2], (), f"{key}-{starts[2]:x}"),
        (records[5], (), f"{key}-{starts[5]:x}"),
        (records[6], (), f"{key}-{starts[6]:x}"),
        (records[7], ("partial",), f"{key}-{starts[7]:x}"),
    ]
    part.close()


def test_a_restart_inside_a_run_of_cri_partial_records_emits_the_line_whole_once(tmp_path: Path) -> None:
    log = tmp_path / "pod_app-0.log"
    cfg = config([log], parser={"kind": "cri"}, max_event_bytes=300)
    head = f"{T_CRI.format(1)} stdout P "
    write(log, text([f"{T_CRI.format(0)} stdout F before", head + "a" * 200]))
    part = build(cfg)
    assert [e.text for e in batch(part)] == [f"{T_CRI.format(0)} stdout F before"]
    state = part.snapshot()  # the run is pending: the offset is its start
    part.close()
    part = build(cfg, state)
    write(log, text([head + "b" * 200, f"{T_CRI.format(1)} stdout F tail"]))
    (event,) = drain(part)
    # Cut at max_event_bytes, on the joined line.
    assert event.text == f"{T_CRI.format(1)} stdout F " + "a" * 200 + "b" * (300 - len(head) - 200)
    assert event.flags == ("truncated",)
    assert event.doc_id.endswith(f"-{len(T_CRI.format(0)) + len(' stdout F before') + 1:x}")
    part.close()


def _docker(log: str, stream: str = "stdout", at: int = 1) -> str:
    return json.dumps({"log": log, "stream": stream, "time": T_CRI.format(at)}, separators=(",", ":"))


def _container_record(kind: str, stream: str, content: str, partial: bool) -> str:
    """One record of a container runtime's log file: CRI's "<time> <stream> <P|F> <content>", or Docker's JSON."""
    if kind == "docker":
        return _docker(content if partial else content + "\n", stream)
    return f"{T_CRI.format(1)} {stream} {'P' if partial else 'F'} {content}"


def test_docker_json_lines_split_at_16k_are_joined_into_one_record(tmp_path: Path) -> None:
    log = tmp_path / "abc-json.log"
    records = [
        _docker("plain line\n", at=1),
        _docker("first part, ", at=2),
        _docker("an error between the parts\n", stream="stderr", at=2),
        _docker('second part with a quote " and a backslash \\, ', at=2),
        _docker("end\n", at=3),
        _docker("C:\\n", at=4),  # ends with a backslash and an "n", not with a newline: a partial record
    ]
    write(log, text(records))
    part = build(config([log], parser={"kind": "docker"}))
    events = drain(part, quiet=1.3)
    assert [(json.loads(e.text), e.flags) for e in events] == [
        (json.loads(records[0]), ()),
        (
            {
                "log": 'first part, second part with a quote " and a backslash \\, end\n',
                "stream": "stdout",
                "time": T_CRI.format(2),
            },
            (),
        ),
        (json.loads(records[2]), ()),
        (json.loads(records[5]), ("partial",)),
    ]
    starts = [0]
    for record in records:
        starts.append(starts[-1] + len(record) + 1)
    assert [e.doc_id.rsplit("-", 1)[1] for e in events] == [f"{starts[i]:x}" for i in (0, 1, 2, 5)]
    part.close()


def test_docker_records_written_back_with_spaces_or_other_key_order_are_joined_too(tmp_path: Path) -> None:
    """The file as a tool that re-serializes JSON writes it: the records are still the driver's, and a line it
    split is still one event."""
    log = tmp_path / "abc-json.log"
    records = [
        json.dumps({"log": "first part \u00e9 <b>, ", "stream": "stdout", "time": T_CRI.format(1)}),
        json.dumps({"time": T_CRI.format(1), "stream": "stdout", "log": "end\n"}),
        json.dumps({"log": "whole\n", "stream": "stderr", "time": T_CRI.format(2)}, ensure_ascii=False),
        '{"log": 5, "stream": "stdout"}',
        "not a record",
    ]
    write(log, text(records))
    events = drain(build(config([log], parser={"kind": "docker"})), quiet=1.3)
    assert [json.loads(e.text) if e.text.startswith("{") else e.text for e in events] == [
        {"log": "first part \u00e9 <b>, end\n", "stream": "stdout", "time": T_CRI.format(1)},
        {"log": "whole\n", "stream": "stderr", "time": T_CRI.format(2)},
        {"log": 5, "stream": "stdout"},
        "not a record",
    ]
    assert [e.flags for e in events] == [(), (), (), ()]


def test_a_joined_docker_record_cut_at_the_size_limit_stays_json(tmp_path: Path) -> None:
    """The joined "log" passes max_event_bytes: it is cut, and never inside an escape sequence."""
    limit = 256
    for pad in range(8):
        log = tmp_path / f"pad{pad}-json.log"
        write(log, text([_docker("a" * 150), _docker("x" * pad + '\u00e9\\"' * 8), _docker("end\n")]))
        part = build(config([log], parser={"kind": "docker"}, max_event_bytes=limit))
        (event,) = drain(part)
        assert event.flags == ("truncated",) and len(event.text.encode()) <= limit
        assert json.loads(event.text)["log"].startswith("a" * 150 + "x" * pad)
        part.close()


def test_container_records_past_max_event_bytes_are_cut_in_their_content_and_stay_records(tmp_path: Path) -> None:
    """Escapes can make a Docker record of a 16 KiB part several times longer: a record past the limit is read
    whole, and its content cut, so that it is still a record (JSON, with its stream and time) and still joins
    the rest of its line."""
    limit = 256
    docker = tmp_path / "abc-json.log"
    write(docker, text([_docker("<" * 300), _docker("end\n"), _docker("<" * 400 + "\n", at=2)]))
    events = drain(build(config([docker], parser={"kind": "docker"}, max_event_bytes=limit)))
    assert [e.flags for e in events] == [("truncated",), ("truncated",)]
    assert all(len(e.text.encode()) <= limit for e in events)
    first, second = (json.loads(e.text) for e in events)
    assert first["log"].strip("<") == "" and first["time"] == T_CRI.format(1) and second["time"] == T_CRI.format(2)
    cri = tmp_path / "pod_app-0.log"
    write(cri, text([f"{T_CRI.format(1)} stdout F " + "x" * 400, f"{T_CRI.format(2)} stdout F ok"]))
    events = drain(build(config([cri], parser={"kind": "cri"}, max_event_bytes=limit)))
    head = f"{T_CRI.format(1)} stdout F "
    assert [(e.text, e.flags) for e in events] == [
        (head + "x" * (limit - len(head)), ("truncated",)),
        (f"{T_CRI.format(2)} stdout F ok", ()),
    ]


def test_container_runs_never_emit_past_the_committed_offset_and_wait_a_second_for_their_own_stream(
    tmp_path: Path,
) -> None:
    """While a run waits for its last record, the other stream's lines are held: a restart from a snapshot
    taken meanwhile reads them again, and they must not have been emitted before. Those lines do not keep
    the run waiting past a second without a record of its own."""
    log = tmp_path / "pod_app-0.log"
    cfg = config([log], parser={"kind": "cri"})
    write(log, text([f"{T_CRI.format(1)} stdout P half, ", f"{T_CRI.format(1)} stderr F err 1"]))
    part = build(cfg)
    assert drain(part, quiet=0.3) == []
    state = part.snapshot()
    assert state.files[0].offset == 0
    deadline = time.monotonic() + 1.6
    events: list[LogLine] = []
    n = 2
    while time.monotonic() < deadline:  # stderr keeps coming, stdout never finishes its line
        write(log, text([f"{T_CRI.format(2)} stderr F err {n}"]))
        n += 1
        events += batch(part)
        time.sleep(0.05)
    events += drain(part, quiet=0.2)
    assert events[0].text == f"{T_CRI.format(1)} stdout P half, " and events[0].flags == ("partial",)
    assert [e.text.rsplit(" ", 1)[1] for e in events[1:]] == [str(i) for i in range(1, n)]
    part.close()
    # A restart from the snapshot taken while the run waited: the same events, the same ids, once each.
    again = build(cfg, state)
    replay = drain(again, quiet=1.3)
    assert [(e.text, e.doc_id) for e in replay] == [(e.text, e.doc_id) for e in events]
    again.close()


def test_runs_of_both_streams_at_once_are_each_joined_whole_and_a_restart_between_them_emits_each_once(
    tmp_path: Path,
) -> None:
    """A container writing long lines to stdout and stderr at the same time: the runtime interleaves the partial
    records of both. Each stream's line is one event, whole, with the id of its first record."""
    log = tmp_path / "pod_app-0.log"
    cfg = config([log], parser={"kind": "cri"})
    records = [
        f"{T_CRI.format(1)} stdout P out 1, ",
        f"{T_CRI.format(1)} stderr P err 1, ",
        f"{T_CRI.format(1)} stdout P out 2, ",
        f"{T_CRI.format(1)} stderr F err end",
        f"{T_CRI.format(2)} stderr F err whole",
        f"{T_CRI.format(2)} stderr P err 3, ",
        f"{T_CRI.format(2)} stdout F out end",
        f"{T_CRI.format(3)} stderr F err 3 end",
    ]
    starts = [0]
    for record in records:
        starts.append(starts[-1] + len(record) + 1)
    write(log, text(records[:5]))
    part = build(cfg)
    assert batch(part) == []  # both runs wait; the stderr lines are held behind the stdout run
    state = part.snapshot()
    assert state.files[0].offset == 0  # the older run's start
    write(log, text(records[5:]))
    events = drain(part)
    key = file_key(part.snapshot().files[0].fingerprint, 0)
    expected = [
        (f"{T_CRI.format(1)} stdout F out 1, out 2, out end", (), f"{key}-{starts[0]:x}"),
        (f"{T_CRI.format(1)} stderr F err 1, err end", (), f"{key}-{starts[1]:x}"),
        (records[4], (), f"{key}-{starts[4]:x}"),
        (f"{T_CRI.format(2)} stderr F err 3, err 3 end", (), f"{key}-{starts[5]:x}"),
    ]
    assert [(e.text, e.flags, e.doc_id) for e in events] == expected
    part.close()
    # A restart from the snapshot taken while both runs waited: the same events, the same ids, once each.
    again = build(cfg, state)
    assert [(e.text, e.flags, e.doc_id) for e in drain(again)] == expected
    again.close()


@pytest.mark.parametrize("kind", ["cri", "docker"])
def test_a_restart_while_the_younger_run_waits_does_not_store_the_older_lines_end_again(
    tmp_path: Path, kind: str
) -> None:
    """Found by a review: stdout's split line ended (and was emitted) while stderr's still waited. The committed
    offset is then stderr's first record, before stdout's last ones: a restart read those again and stored the
    end of the stdout line a second time, as an event of its own (3 documents for 2 lines)."""
    log = tmp_path / "pod_app-0.log"
    cfg = config([log], parser={"kind": kind})
    record = functools.partial(_container_record, kind)

    write(log, text([record("stdout", "A1-", True), record("stderr", "B1-", True), record("stdout", "A2", False)]))
    write(log, text([record("stderr", "B2-", True)]))
    part = build(cfg)
    first = drain(part)
    assert [e.text.rsplit(" ", 1)[-1] if kind == "cri" else json.loads(e.text)["log"] for e in first] == (
        ["A1-A2"] if kind == "cri" else ["A1-A2\n"]
    )
    state = part.snapshot()  # stderr's run waits: the offset is its start
    part.close()
    a2_starts = len(text([record("stdout", "A1-", True), record("stderr", "B1-", True)]))
    assert (state.files[0].skip_stream, state.files[0].skip_until) == ("stdout", a2_starts + 1)
    # Restarted twice before stderr's line ends: the snapshot between keeps leaving stdout's end out.
    again = build(cfg, state)
    write(log, text([record("stdout", "A3", False), record("stderr", "B3-", True)]))
    assert drain(again) == []  # stdout's A3 is held behind stderr's run, as before the restart
    state = again.snapshot()
    again.close()
    third = build(cfg, state)
    write(log, text([record("stderr", "Bend", False)]))
    events = drain(third)
    third.close()
    contents = [e.text.split(" ", 3)[-1] if kind == "cri" else json.loads(e.text)["log"] for e in events]
    expected = ["B1-B2-B3-Bend", "A3"] if kind == "cri" else ["B1-B2-B3-Bend\n", "A3\n"]
    assert contents == expected
    assert first[0].doc_id not in {e.doc_id for e in events}


@pytest.mark.parametrize("kind", ["cri", "docker"])
def test_a_restart_after_a_waiting_line_was_flushed_unfinished_does_not_store_its_end_again(
    tmp_path: Path, kind: str
) -> None:
    """Found by a review: stdout's split line waited a second without its last record and was emitted unfinished,
    while stderr's still waited; a restart from stderr's start read stdout's last record again and stored it
    as an event of its own. Only the records of the emitted line are left out: stdout's next line is read."""
    log = tmp_path / "pod_app-0.log"
    cfg = config([log], parser={"kind": kind})
    record = functools.partial(_container_record, kind)

    def content(event: LogLine) -> str:
        return event.text.split(" ", 3)[-1] if kind == "cri" else json.loads(event.text)["log"].rstrip("\n")

    write(log, text([record("stdout", "X1|", True), record("stderr", "Y1|", True), record("stdout", "X2|", True)]))
    part = build(cfg)
    first: list[LogLine] = []
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline and not first:  # stderr keeps coming; stdout's line waits a second
        write(log, text([record("stderr", "Y|", True)]))
        first += batch(part)
        time.sleep(0.2)
    assert [(content(e), e.flags) for e in first] == [("X1|X2|", ("partial",))]
    state = part.snapshot()
    part.close()
    again = build(cfg, state)
    write(log, text([record("stderr", "Yend", False), record("stdout", "X3end", False)]))
    events = drain(again)
    again.close()
    assert [content(e) for e in events][-1] == "X3end"
    assert not any(content(e) == "X2|" for e in events)
    assert [content(e).startswith("Y1|") for e in events] == [True, False]


def test_a_run_of_the_other_stream_that_never_ends_is_emitted_partial_after_the_older_run(tmp_path: Path) -> None:
    log = tmp_path / "pod_app-0.log"
    write(
        log,
        text(
            [
                f"{T_CRI.format(1)} stdout P out 1, ",
                f"{T_CRI.format(1)} stderr P cut off when the container stopped",
                f"{T_CRI.format(1)} stdout F out end",
            ]
        ),
    )
    part = build(config([log], parser={"kind": "cri"}))
    events = drain(part, quiet=1.3)  # the unfinished stderr run waits a second for its last record
    assert [(e.text, e.flags) for e in events] == [
        (f"{T_CRI.format(1)} stdout F out 1, out end", ()),
        (f"{T_CRI.format(1)} stderr P cut off when the container stopped", ("partial",)),
    ]
    part.close()
    # Both unfinished: the older first; the stderr run's own second ends it even while stdout goes on.
    log2 = tmp_path / "pod_app-1.log"
    write(log2, text([f"{T_CRI.format(1)} stdout P a, ", f"{T_CRI.format(1)} stderr P b, "]))
    part = build(config([log2], parser={"kind": "cri"}))
    events = drain(part, quiet=1.3)
    assert [(e.text, e.flags) for e in events] == [
        (f"{T_CRI.format(1)} stdout P a, ", ("partial",)),
        (f"{T_CRI.format(1)} stderr P b, ", ("partial",)),
    ]
    part.close()


def test_compressed_rotations_beside_the_logs_are_left_alone_and_exclude_names_more(tmp_path: Path) -> None:
    """Under a glob such as ``app.log*``, logrotate's ``app.log.2.gz`` would be read as text: a stream of
    invalid_utf8 events. By default compressed files are excluded; ``exclude`` replaces that list."""
    write(tmp_path / "app.log", text(["current"]))
    write(tmp_path / "app.log.1", text(["rotated"]))
    write(tmp_path / "app.log.2.gz", gzip.compress(text(["compressed"]).encode()))
    write(tmp_path / "app.log.debug", text(["debug"]))
    glob_all = [tmp_path / "app.log*"]

    def followed(part: FileTailPartition) -> list[str]:
        return sorted(Path(entry.path).name for entry in part.snapshot().files)

    part = build(config(glob_all))
    assert sorted(e.text for e in drain(part)) == ["current", "debug", "rotated"]
    assert followed(part) == ["app.log", "app.log.1", "app.log.debug"]
    part.close()
    part = build(config(glob_all, exclude=["*.debug", "*.gz"]))
    assert sorted(e.text for e in drain(part)) == ["current", "rotated"]
    part.close()
    part = build(config(glob_all, exclude=[]))
    drain(part)
    assert followed(part) == ["app.log", "app.log.1", "app.log.2.gz", "app.log.debug"]
    part.close()


def test_a_single_byte_encoding_reads_the_characters_the_file_has(tmp_path: Path) -> None:
    log = tmp_path / "legacy.log"
    write(log, "Müller: Größe 3½\nok\n".encode("latin-1") + b"\x81 undefined in cp1252\n")
    events = drain(build(config([log], encoding="latin-1")))
    expected = [("Müller: Größe 3½", ()), ("ok", ()), ("\x81 undefined in cp1252", ())]
    assert [(e.text, e.flags) for e in events] == expected
    cp1252 = drain(build(config([log], encoding="cp1252")))
    assert [(e.text, e.flags) for e in cp1252][2] == ("\ufffd undefined in cp1252", ("invalid_encoding",))
    # UTF-8, the default: the same bytes are invalid, replaced and flagged.
    assert drain(build(config([log])))[0].flags == ("invalid_utf8",)


def test_a_multiline_start_pattern_reads_lines_in_the_files_encoding(tmp_path: Path) -> None:
    log = tmp_path / "legacy.log"
    write(log, "Änderung 1\n  detail\nÄnderung 2\n".encode("latin-1"))
    cfg = config([log], encoding="latin-1", multiline={"start_pattern": "^[A-ZÄÖÜ]", "flush_timeout": 0.1})
    assert [e.text for e in drain(build(cfg), quiet=0.3)] == ["Änderung 1\n  detail", "Änderung 2"]


@pytest.mark.parametrize("multiline", [None, {"start_pattern": "^[0-9]", "flush_timeout": 0.1}])
def test_a_utf8_byte_order_mark_is_left_out_of_the_first_line(tmp_path: Path, multiline: dict | None) -> None:
    """Notepad and .NET's File.AppendAllText write one: every parser (regex, logfmt, access logs, cri) would
    otherwise see it as part of the first line's first key or value. Only the file's start is a mark; the same
    bytes later in a file are text."""
    log = tmp_path / "app.log"
    write(log, codecs.BOM_UTF8 + "1 first\n2 second \ufeff\n".encode())
    cfg = config([log], multiline=multiline) if multiline else config([log])
    events = drain(build(cfg), quiet=0.3)
    assert [e.text for e in events] == ["1 first", "2 second \ufeff"]
    assert events[0].doc_id.endswith("-0")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_files_as_windows_writes_them(tmp_path: Path, encoding: str) -> None:
    """SQL Server's ERRORLOG, PowerShell transcripts: a byte-order mark, CRLF, characters beyond the BMP, a
    newline's two bytes across two other characters ("ਊĀ", "Āਊ"), a line cut mid-character by a writer, and a
    restart."""
    log = tmp_path / "ERRORLOG"
    bom = codecs.BOM_UTF16_LE if encoding == "utf-16-le" else codecs.BOM_UTF16_BE
    lines = ["2026-01-01 10:00:00.12 Server  Microsoft SQL Server 2022", "Größe ਊĀ Āਊ 😀 ok", ""]
    data = bom + "".join(f"{line}\r\n" for line in lines).encode(encoding)
    write(log, data + "half".encode(encoding) + "l".encode(encoding)[:1])  # an odd last byte
    cfg = config([log], encoding=encoding)
    part = build(cfg)
    events = drain(part)
    assert [(e.text, e.flags) for e in events] == [(line, ()) for line in lines]
    state = part.snapshot()
    part.close()
    write(log, "l".encode(encoding)[1:] + " line\r\n".encode(encoding))
    again = build(cfg, state)
    assert [e.text for e in drain(again)] == ["halfl line"]
    offsets = [e.doc_id.rsplit("-", 1)[1] for e in events]
    assert offsets[0] == "0" and all(int(o, 16) % 2 == 0 for o in offsets)
    again.close()
    # A line past max_event_bytes is cut between characters, never inside a surrogate pair.
    long = tmp_path / "long"
    long.mkdir()
    write(long / "ERRORLOG", ("x" + "😀" * 100 + "\r\nafter\r\n").encode(encoding))
    cut = drain(build(config([long / "ERRORLOG"], encoding=encoding, max_event_bytes=256)))
    assert [(e.text, e.flags) for e in cut] == [("x" + "😀" * 63, ("truncated",)), ("after", ())]
    # read_from = end starts after the last whole line.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    write(fresh / "ERRORLOG", data + "partial".encode(encoding))
    tail = build(config([fresh / "ERRORLOG"], encoding=encoding, read_from="end"))
    write(fresh / "ERRORLOG", " line\r\nnext\r\n".encode(encoding))
    assert [e.text for e in drain(tail)] == ["partial line", "next"]
    tail.close()


def test_an_encoding_that_writes_characters_in_several_bytes_is_refused_at_start() -> None:
    for name in ("utf-16", "utf-32", "shift_jis", "iso2022_jp", "hz", "rot13", "hex", "raw_unicode_escape", "nope"):
        with pytest.raises(ValueError, match="encoding"):
            FileInputConfig(name="app", paths=["/tmp/x.log"], encoding=name)


def test_long_events_are_truncated_on_a_character_boundary_and_the_rest_skipped(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, text(["é" * 1000, "short"]))
    # A line still being written is cut as soon as it passes the limit; its rest never becomes an event.
    write(log, "x" * 1000)
    part = build(config([log], max_event_bytes=256))
    events = drain(part)
    assert [(len(e.text.encode()), e.flags) for e in events] == [(256, ("truncated",)), (5, ()), (256, ("truncated",))]
    assert events[0].text == "é" * 128 and events[1].text == "short"
    write(log, "x" * 500 + "\nnext\n")
    assert [e.text for e in drain(part)] == ["next"]
    part.close()


def test_an_enormous_line_is_not_held_in_memory(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, b"y" * 20_000_000 + b"\nafter\n")
    part = build(config([log], max_event_bytes=1024))
    tracemalloc.start()
    try:
        events = drain(part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(len(e.text), e.flags) for e in events] == [(1024, ("truncated",)), (5, ())]
    assert peak < 2_000_000
    part.close()


def test_multiline_events_are_truncated_and_their_further_lines_dropped(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    trace = ["2024-05-01 10:00:00 ERROR big", *(f"\tat frame{i:03d}" for i in range(100)), "2024-05-01 10:00:01 next"]
    write(log, text(trace))
    part = build(config([log], max_event_bytes=256, multiline={"start_pattern": STACK_START, "flush_timeout": 0.1}))
    events = drain(part, quiet=0.2)
    assert [e.flags for e in events] == [("truncated", "multiline"), ()]
    assert "\n".join(trace[:-1]).startswith(events[0].text) and len(events[0].text.encode()) <= 256
    assert events[1].text == trace[-1]
    part.close()


def test_invalid_utf8_is_replaced_and_flagged(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, b"caf\xe9 latin-1\nfine \xc3\xa9\n")
    part = build(config([log]))
    assert [(e.text, e.flags) for e in drain(part)] == [("caf\ufffd latin-1", ("invalid_utf8",)), ("fine é", ())]
    part.close()


def test_a_partial_line_waits_for_its_newline_across_a_restart(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "first\nsecond, half")
    part = build(config([log]))
    assert [e.text for e in drain(part, quiet=0.2)] == ["first"]
    state = part.snapshot()
    assert [f.offset for f in state.files] == [len("first\n")]
    write(log, " written")
    assert drain(part) == []
    part.close()

    part = build(config([log]), state)
    write(log, " and done\n")
    events = drain(part)
    assert [e.text for e in events] == ["second, half written and done"]
    assert events[0].doc_id == doc_id(state.files[0].fingerprint, 0, len("first\n"))
    part.close()


def test_ids_do_not_depend_on_how_the_first_line_was_written(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, text(lines("old", 0, 50)))
    part = build(config([log]))
    drain(part)
    state = part.snapshot()
    os.truncate(log, 0)  # copytruncate; the new first line arrives in two writes
    write(log, "new fir")
    assert drain(part) == []
    write(log, text(["st line", "next"]))
    run1 = drain(part)
    assert [e.text for e in run1] == ["new first line", "next"]
    part.close()

    part = build(config([log]), state)  # from before the truncation: the new content is read again
    assert [(e.text, e.doc_id) for e in drain(part)] == [(e.text, e.doc_id) for e in run1]
    part.close()


def test_a_new_file_with_the_fingerprint_of_another_gets_ids_of_its_own(tmp_path: Path, monkeypatch: Any) -> None:
    """A file's fingerprint is its inode number and its first line. A file deleted and created again may get
    the same inode (ext4 reuses freed ones at once) and, with a header line, the same first line; the same
    inode on another filesystem too. Its ids were then the first file's, and Elasticsearch refused its events
    as duplicates. Here every inode reads as the same, so that only the first line decides."""
    from collectors.logs import tail

    same_inode = tail._fingerprint
    monkeypatch.setattr(tail, "_fingerprint", lambda ino, head: same_inode(7, head))
    header = "#Software: Microsoft Internet Information Services 10.0"
    first, second, third = tmp_path / "u_ex1.log", tmp_path / "u_ex2.log", tmp_path / "u_ex3.log"
    part = build(config([tmp_path / "*.log"]))
    write(first, text([header, "day1 request 1", "day1 request 2"]))
    day1 = drain(part)
    first.unlink()
    time.sleep(0.1)
    drain(part)  # the deleted file is finished, its fingerprint remembered
    before_day2 = pickle.loads(pickle.dumps(part.snapshot()))
    write(second, text([header, "day2 request 1", "day2 request 2", "day2 request 3"]))
    write(third, text([header, "day2 other 1"]))  # at the same time, the same first line
    day2 = drain(part)
    part.close()
    expected = [header, "day2 request 1", "day2 request 2", "day2 request 3", header, "day2 other 1"]
    assert sorted(e.text for e in day2) == sorted(expected)
    assert len(by_id(day1 + day2)) == len(day1) + len(day2), "no id shared by two files"
    # A restart from before the new files were seen gives them the same ids again (exactly once).
    again = build(config([tmp_path / "*.log"]), before_day2)
    assert by_id(drain(again)) == by_id(day2)
    again.close()


def test_a_glob_that_cannot_read_its_directory_does_not_make_followed_files_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "app.log"
    write(log, text(lines("a", 0, 100)))
    part = build(config([tmp_path / "*.log"]))
    first = drain(part)
    # Out of descriptors (or denied), glob's scandir fails and glob returns nothing: for longer than
    # rotate_wait, while the file grows.
    real_glob = tail.glob.glob
    monkeypatch.setattr(tail.glob, "glob", lambda pattern, recursive=False: [])
    write(log, text(lines("a", 100, 150)))
    during = drain(part, quiet=0.2)
    monkeypatch.setattr(tail.glob, "glob", real_glob)
    write(log, text(lines("a", 150, 200)))
    after = drain(part)
    events = first + during + after
    assert [e.text for e in events] == lines("a", 0, 200)
    assert len(by_id(events)) == 200
    assert [f.generation for f in part.snapshot().files] == [0]
    assert any("the globs missed 1 followed file(s) still at their paths" in r.message for r in caplog.records)
    part.close()


def test_files_past_the_open_files_budget_wait_for_followed_files_to_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    budget = tail._OpenFiles.held + 2
    monkeypatch.setattr(tail, "open_files_budget", lambda: budget)
    for i in range(4):
        write(tmp_path / f"f{i}.log", text(lines(f"f{i}", 0, 10)))
    part = build(config([tmp_path / "*.log"]))
    assert sorted(e.text for e in drain(part)) == lines("f0", 0, 10) + lines("f1", 0, 10)
    assert tail._OpenFiles.held == budget
    assert any("2 file(s) wait to be followed, such as" in r.message for r in caplog.records)
    # The first two are rotated away: once finished, their descriptors go to the two that waited.
    for i in range(2):
        os.rename(tmp_path / f"f{i}.log", tmp_path / f"f{i}.log.1")
    rest = drain(part, quiet=0.3)
    assert sorted(e.text for e in rest) == lines("f2", 0, 10) + lines("f3", 0, 10)
    assert sorted(f.path for f in part.snapshot().files) == [str(tmp_path / "f2.log"), str(tmp_path / "f3.log")]
    part.close()
    assert tail._OpenFiles.held == budget - 2


def test_a_symlinked_file_rotated_while_not_running_is_found_beside_its_target(tmp_path: Path) -> None:
    # Kubernetes: /var/log/containers/<pod>_<ns>_<container>-<id>.log links to /var/log/pods/.../0.log, which
    # the kubelet rotates in its own directory (0.log -> 0.log.<time>) and writes anew.
    pods, containers = tmp_path / "pods", tmp_path / "containers"
    pods.mkdir()
    containers.mkdir()
    write(pods / "0.log", text(lines("a", 0, 100)))
    (containers / "pod_ns_app-1.log").symlink_to(pods / "0.log")
    cfg = config([containers / "*.log"])
    part = build(cfg)
    run1 = drain(part)
    state = pickle.loads(pickle.dumps(part.snapshot()))
    part.close()

    write(pods / "0.log", text(lines("a", 100, 150)))
    os.rename(pods / "0.log", pods / "0.log.20261205-094000")
    write(pods / "0.log", text(lines("b", 0, 20)))
    part = build(cfg, state)
    run2 = drain(part, quiet=0.2)
    assert [e.text for e in run1 + run2 if e.text.startswith("a")] == lines("a", 0, 150)
    assert sorted(e.text for e in run2 if e.text.startswith("b")) == lines("b", 0, 20)
    assert len(by_id(run1 + run2)) == 170
    part.close()
