"""The logs pipeline end to end: files and syslog -> `fleetwatch run` (Bytewax) -> real Elasticsearch 8.x
(documents, log rates, dead letters) and real InfluxDB 1.x (log rates)."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import socket
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from fleetwatch.config import ElasticsearchConfig
from fleetwatch.record import DeadLetter, LogEvent, LogRate
from flows.sinks import elasticsearch as es_sink
from flows.sinks.elasticsearch import ElasticsearchSink, ElasticWriterThread, Record
from flows.sinks.pending_log import is_marker
from tests.conftest import ES_URL, INFLUX_AUTH_TOML, INFLUX_URL, REPO, es_docs, http, influx_rows
from tests.integration.harness import FLEETWATCH, Pipeline

T0 = "2026-01-01T00:00:"  # event times in the past: log-rate windows close on event time


def write_config(tmp_path: Path, unique: str, db: str, inputs: str, extra: str = "") -> Path:
    path = tmp_path / "fleetwatch.toml"
    path.write_text(f"""
[logs]
rate_window = "10s"
allowed_lateness = "1s"
host_name = "testhost"
{inputs}

[flow]
epoch_interval = "300ms"
health_interval = "1s"

[recovery]
dir = "{tmp_path / "recovery"}"

[retention]
# These queries read the database's default policy: one policy for everything.
enabled = false

[influxdb]
{INFLUX_AUTH_TOML}
url = "{INFLUX_URL}"
database = "{db}"
flush_interval = "100ms"

[elasticsearch]
hosts = ["{ES_URL}"]
index_prefix = "{unique}"
flush_interval = "100ms"
{extra}

[dead_letters]
path = "{tmp_path / "dead.jsonl"}"
""")
    return path


def json_line(i: int, service: str = "checkout", level: str = "info") -> str:
    return json.dumps(
        {
            "timestamp": f"{T0}{i % 60:02d}.{i % 1000:03d}Z",
            "level": level,
            "service": service,
            "message": f"request {i}",
            "seq": i,
        }
    )


def es_count(index: str) -> int:
    resp = http.request("GET", f"{ES_URL}/{index}/_count?ignore_unavailable=true&allow_no_indices=true")
    return int(json.loads(resp.data).get("count", 0)) if resp.status == 200 else 0


def wait_for_docs(index: str, expected: int, timeout: float = 60.0) -> list[dict]:
    """The documents of ``index`` once at least ``expected`` are searchable (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while es_count(index) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return es_docs(index)


def append(path: Path, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))


@pytest.mark.parametrize("mode", ["rename", "copytruncate"])
def test_rotation_and_a_kill_mid_file_keep_every_line_exactly_once(
    tmp_path: Path, unique: str, influx_db: str, es_index: str, mode: str
) -> None:
    """Lines keep coming while fleetwatch is killed (kill -9) mid-file and the file is rotated; in the end
    Elasticsearch holds exactly the lines written, once each, under deterministic ids."""
    logs = tmp_path / "logs"
    logs.mkdir()
    app, rotated = logs / "app.log", logs / "app.log.1"  # the rotated name does not match the glob
    inputs = f"""
[[logs.files]]
name = "app"
paths = ["{logs}/*.log"]
parser = {{ kind = "json" }}
poll_interval = "50ms"
"""
    config = write_config(tmp_path, unique, influx_db, inputs)
    written = [json_line(i) for i in range(6000)]
    append(app, written[:2000])
    pipeline = Pipeline(config)
    pipeline.wait_for("log_events", 500)
    append(app, written[2000:3000])
    # The file must be in a committed snapshot before the kill: only then does the restarted tail know the
    # file that the rotation below moves out of the glob (a pipeline killed before its first snapshot starts
    # from scratch, and cannot know a file it never recorded). Three epochs of 300 ms.
    time.sleep(1.0)
    pipeline.kill()
    if mode == "rename":
        # logrotate `create` while fleetwatch is down: the file moves away, the service still writes a few
        # lines to it (its open descriptor), then reopens the new file.
        app.rename(rotated)
        app.touch()
        append(rotated, written[3000:3500])
        append(app, written[3500:4000])
        pipeline = Pipeline(config)
    else:
        # copytruncate copies what the file holds and truncates it in place; what fleetwatch has not read
        # by then exists only in the copy, so fleetwatch is restarted first and catches up.
        pipeline = Pipeline(config)
        wait_for_docs(f"{unique}-logs*", 3000)
        rotated.write_bytes(app.read_bytes())
        with open(app, "r+b") as fh:
            fh.truncate(0)
        append(app, written[3000:3100])
        time.sleep(0.5)
        append(app, written[3100:4000])
    append(app, written[4000:5000])
    pipeline.kill()
    pipeline = Pipeline(config)
    append(app, written[5000:])
    docs = wait_for_docs(f"{unique}-logs*", len(written))
    pipeline.stop()
    assert sorted(d["fields"]["seq"] for d in docs) == list(range(len(written)))
    assert len({d["_id"] for d in docs}) == len(written)
    assert {d["log"]["file"]["path"] for d in docs} <= {str(app), str(rotated)}
    assert es_docs(f"{unique}-dead-letters*") == []


@pytest.mark.parametrize("limit", ["1024:", "300:300"])
def test_more_files_than_the_open_files_limit_neither_crash_nor_read_twice(
    tmp_path: Path, unique: str, influx_db: str, es_index: str, limit: str
) -> None:
    """1,500 files under a soft limit of 1,024 open files (systemd's default): the pipeline raises its soft
    limit to the hard one and reads every file once. Under a hard limit of 300 as well, the files past the
    tails' budget wait, named in a warning, while the pipeline runs on; none is read twice."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(1500):
        append(logs / f"f{i:04d}.log", [json_line(i)])
    inputs = f"""
[[logs.files]]
name = "many"
paths = ["{logs}/*.log"]
parser = {{ kind = "json" }}
poll_interval = "200ms"
"""
    pipeline = Pipeline(write_config(tmp_path, unique, influx_db, inputs), prefix=["prlimit", f"--nofile={limit}"])
    if limit == "1024:":
        pipeline.wait_for("log_events", 1500, timeout=90)
        docs = wait_for_docs(f"{unique}-logs*", 1500)
        assert sorted(d["fields"]["seq"] for d in docs) == list(range(1500))
        assert "wait to be followed" not in pipeline.log_text()
    else:
        budget = 300 - 256
        pipeline.wait_for("log_events", budget, timeout=60)
        time.sleep(2)  # several polls: nothing more is opened, nothing is read again
        docs = wait_for_docs(f"{unique}-logs*", budget)
        assert sorted(d["fields"]["seq"] for d in docs) == list(range(budget))
        assert f"1456 file(s) wait to be followed, such as {logs}/f0044.log" in pipeline.log_text()
    pipeline.stop()


def test_an_input_renamed_over_existing_recovery_state_stops_the_start_with_what_to_do(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    port = _free_port(socket.SOCK_DGRAM)
    inputs = f'[[logs.syslog]]\nname = "{{}}"\nlisten = "127.0.0.1:{port}"\n'
    config = write_config(tmp_path, unique, influx_db, inputs.format("before"))
    Pipeline(config).stop()
    write_config(tmp_path, unique, influx_db, inputs.format("after"))
    result = subprocess.run(
        [str(FLEETWATCH), "run", "--config", str(config)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"the recovery state in {tmp_path / 'recovery'} was written by a config with other inputs" in result.stderr
    assert "it holds fleetwatch.syslog: before." in result.stderr, result.stderr[-3000:]
    # Found before the dataflow starts: no worker thread panics over a partition it does not know.
    assert "Traceback" not in result.stderr and "panicked" not in result.stderr


def test_a_dead_letter_file_or_alert_journal_it_cannot_append_to_stops_the_start_naming_the_key(
    tmp_path: Path, unique: str, influx_db: str
) -> None:
    """Found by a review: a directory as dead_letters.path passed the start, and the first dead letter then
    stopped the flow with a panic; an alert journal in /proc stopped the start with one."""
    port = _free_port(socket.SOCK_DGRAM)
    inputs = f'[[logs.syslog]]\nname = "s"\nlisten = "127.0.0.1:{port}"\n'
    (tmp_path / "dead").mkdir()
    journal_rule = (
        '[alerts]\njournal = "/proc/self/fleetwatch/journal.jsonl"\n'
        '[[alerts.rules]]\nname = "r"\ntarget = "log_rate"\nstat = "error_rate"\nwarning = 1.0\n'
    )
    cases = {
        "dead_letters.path": ("", f"dead_letters.path: cannot append to {tmp_path / 'dead'}"),
        "alerts.journal": (journal_rule, "alerts.journal: cannot create the folder /proc/self/fleetwatch"),
    }
    for key, (extra, message) in cases.items():
        config = write_config(tmp_path, unique, influx_db, inputs, extra)
        if key == "dead_letters.path":
            config.write_text(config.read_text().replace(str(tmp_path / "dead.jsonl"), str(tmp_path / "dead")))
        result = subprocess.run(
            [str(FLEETWATCH), "run", "--config", str(config)], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 2, result.stderr[-3000:]
        assert message in result.stderr, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "panicked" not in result.stderr


def test_parsers_multiline_and_log_rates(tmp_path: Path, unique: str, influx_db: str, es_index: str) -> None:
    """Every parser on its own file, malformed lines among them, a multiline stack trace, and the log
    rates per service and level in Elasticsearch and InfluxDB."""
    logs = tmp_path / "logs"
    logs.mkdir()
    a_minute_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    files = {
        "json": [json_line(1, "api", "WARN"), json_line(2, "api", "error"), '{"broken json', json_line(3, "api", "4")],
        "logfmt": [
            f'ts={T0}05Z level=info service=billing msg="charged card" amount=12.5',
            f"ts={T0}06Z level=err service=billing msg=declined",
            'level=info msg="unterminated',
        ],
        "nginx": [
            '10.0.0.1 - alice [01/Jan/2026:00:00:07 +0000] "GET /cart?id=1 HTTP/1.1" 200 512 "-" "curl/8.0"',
            '10.0.0.2 - - [01/Jan/2026:00:00:08 +0000] "POST /pay HTTP/1.1" 503 0 "https://shop/" "Mozilla/5.0"',
            "not an access log line",
        ],
        "regex": [f"{T0}09Z [ERROR] worker-3 queue full", "garbage"],
        # rsyslog's default file format (no priority, no year), a minute ago: the receive year applies.
        "traditional": [
            f"{a_minute_ago:%b} {a_minute_ago.day:2d} {a_minute_ago:%H:%M:%S} gw-1 sshd[123]: Accepted publickey",
            f"{a_minute_ago:%b} {a_minute_ago.day:2d} {a_minute_ago:%H:%M:%S} gw-1 kernel: [ 1.5] eth0: link up",
            "-- MARK --",
        ],
        "java": [
            f"{T0}01Z ERROR Unhandled exception",
            "java.lang.IllegalStateException: boom",
            "\tat com.shop.Cart.add(Cart.java:42)",
            "\tat com.shop.Api.handle(Api.java:7)",
            f"{T0}02Z INFO recovered",
        ],
        # Kubernetes (containerd): a line split into partial records, a record of the other stream between.
        "cri": [
            f"{T0}03.000000001Z stdout P a line the runtime split, ",
            f"{T0}03.5Z stderr F warning on stderr",
            f"{T0}04.123456789Z stdout F joined again",
            "a line from no runtime",
            f'{T0}07Z stdout F {{"level": "warn", "message": "JSON inside", "ts": "{T0}06.5Z"}}',
        ],
        # Docker's json-file driver (compact JSON, as Go writes it): a 40,000-character line split at 16 KiB, and
        # a whole line.
        "docker": [
            json.dumps(record, separators=(",", ":"))
            for record in (
                {"log": "x" * 16_384, "stream": "stdout", "time": f"{T0}05.1Z"},
                {"log": "x" * 16_384, "stream": "stdout", "time": f"{T0}05.1Z"},
                {"log": "x" * 7_232 + "\n", "stream": "stdout", "time": f"{T0}05.2Z"},
                {"log": "listening on :8080\n", "stream": "stderr", "time": f"{T0}06Z"},
            )
        ],
    }
    for name, lines in files.items():
        append(logs / f"{name}.log", lines)
    inputs = f"""
[[logs.files]]
name = "json"
paths = ["{logs}/json.log"]
parser = {{ kind = "json" }}
[[logs.files]]
name = "logfmt"
paths = ["{logs}/logfmt.log"]
parser = {{ kind = "logfmt", timestamp_field = "ts", message_field = "msg" }}
[[logs.files]]
name = "nginx"
paths = ["{logs}/nginx.log"]
service = "shop-nginx"
parser = {{ kind = "combined" }}
[[logs.files]]
name = "regex"
paths = ["{logs}/regex.log"]
service = "worker"
parser = {{ kind = "regex", pattern = '^(?P<timestamp>\\S+) \\[(?P<level>\\w+)\\] (?P<thread>\\S+) (?P<message>.*)$' }}
[[logs.files]]
name = "traditional"
paths = ["{logs}/traditional.log"]
parser = {{ kind = "regex", pattern = "rsyslog_traditional" }}
[[logs.files]]
name = "java"
paths = ["{logs}/java.log"]
service = "cart"
multiline = {{ start_pattern = '^\\d{{4}}-\\d\\d-\\d\\d', flush_timeout = "300ms" }}
parser = {{ kind = "regex", pattern = '^(?P<timestamp>\\S+) (?P<level>[A-Z]+) (?P<message>(?s:.*))$' }}
[[logs.files]]
name = "cri"
paths = ["{logs}/cri.log"]
service = "k8s-app"
parser = {{ kind = "cri", message_format = "json", timestamp_field = "ts" }}
[[logs.files]]
name = "docker"
paths = ["{logs}/docker.log"]
service = "web"
parser = {{ kind = "docker" }}
"""
    config = write_config(tmp_path, unique, influx_db, inputs)
    pipeline = Pipeline(config)
    expected_docs = 4 + 3 + 3 + 2 + 3 + 2 + 4 + 2
    docs = wait_for_docs(f"{unique}-logs*", expected_docs)
    # A service's 10 s window closes when its clock passes the end plus the lateness: the newest event time
    # advanced by wall time while the service is quiet, so within ~10 s here.
    deadline = time.monotonic() + 30
    rates = es_docs(f"{unique}-log-rates*")
    while not {"api", "billing"} <= {r["service"]["name"] for r in rates} and time.monotonic() < deadline:
        time.sleep(0.5)
        rates = es_docs(f"{unique}-log-rates*")
    pipeline.stop()
    assert len(docs) == expected_docs
    by_message = {d["message"]: d for d in docs}

    api_levels = sorted(d["log"]["level"] for d in docs if d["service"]["name"] == "api")
    assert api_levels == ["error", "warn", "warn"]
    broken = by_message['{"broken json']
    assert "parse_failure" in broken["tags"] and broken["service"]["name"] == "json"

    charged = by_message["charged card"]
    assert charged["@timestamp"].startswith("2026-01-01T00:00:05")
    assert (charged["service"]["name"], charged["log"]["level"], charged["fields"]["amount"]) == (
        "billing",
        "info",
        "12.5",
    )
    assert "parse_failure" in by_message['level=info msg="unterminated']["tags"]

    get = next(d for d in docs if d["service"]["name"] == "shop-nginx" and "GET" in d["message"])
    assert get["http"]["request"]["method"] == "GET" and get["http"]["response"]["status_code"] == 200
    assert get["url"]["original"] == "/cart?id=1" and get["user_agent"]["original"] == "curl/8.0"
    post = next(d for d in docs if d["service"]["name"] == "shop-nginx" and "POST" in d["message"])
    assert post["log"]["level"] == "error"
    assert "parse_failure" in by_message["not an access log line"]["tags"]

    queue = by_message["queue full"]
    assert (queue["log"]["level"], queue["fields"]["thread"], queue["host"]["name"]) == (
        "error",
        "worker-3",
        "testhost",
    )
    assert "parse_failure" in by_message["garbage"]["tags"]

    sshd = by_message["Accepted publickey"]
    assert sshd["@timestamp"] == f"{a_minute_ago:%Y-%m-%dT%H:%M:%S}.000Z"
    assert (sshd["service"]["name"], sshd["host"]["name"], sshd["fields"]) == ("sshd", "gw-1", {"pid": "123"})
    kernel = by_message["[ 1.5] eth0: link up"]
    assert (kernel["service"]["name"], kernel["@timestamp"]) == ("kernel", sshd["@timestamp"])
    mark = by_message["-- MARK --"]
    assert "parse_failure" in mark["tags"] and mark["service"]["name"] == "traditional"

    trace = next(d for d in docs if d["service"]["name"] == "cart" and d["log"]["level"] == "error")
    assert trace["message"].splitlines() == [
        "Unhandled exception",
        "java.lang.IllegalStateException: boom",
        "\tat com.shop.Cart.add(Cart.java:42)",
        "\tat com.shop.Api.handle(Api.java:7)",
    ]
    assert "multiline" in trace["tags"]

    joined = by_message["a line the runtime split, joined again"]
    assert (joined["@timestamp"], joined["fields"], joined["service"]["name"]) == (
        "2026-01-01T00:00:03.000Z",
        {"stream": "stdout"},
        "k8s-app",
    )
    assert "tags" not in joined
    assert by_message["warning on stderr"]["fields"] == {"stream": "stderr"}
    assert "parse_failure" in by_message["a line from no runtime"]["tags"]
    inside = by_message["JSON inside"]
    assert (inside["log"]["level"], inside["@timestamp"], inside["fields"]) == (
        "warn",
        "2026-01-01T00:00:06.500Z",
        {"stream": "stdout"},
    )
    long_line = by_message["x" * 40_000]
    assert (long_line["@timestamp"], long_line["fields"], "tags" in long_line) == (
        "2026-01-01T00:00:05.100Z",
        {"stream": "stdout"},
        False,
    )
    assert by_message["listening on :8080"]["fields"] == {"stream": "stderr"}

    # Log rates: per service and 10 s window, counts by level and the error rate.
    es_rates = {(r["service"]["name"], r["@timestamp"][:19]): r for r in rates}
    api = es_rates[("api", "2026-01-01T00:00:00")]
    assert (api["count"], api["errors"], api["levels"]) == (3, 1, {"warn": 2, "error": 1})
    assert api["error_rate"] == pytest.approx(1 / 3)
    influx = influx_rows(
        influx_db, 'SELECT "count", "errors", "warn" FROM "log_rates" WHERE "service" = \'api\' AND "count" > 0'
    )
    assert [(r["count"], r["errors"], r["warn"]) for r in influx] == [(3, 1, 2)]
    billing = es_rates[("billing", "2026-01-01T00:00:00")]
    assert (billing["count"], billing["errors"], billing["levels"]) == (2, 1, {"info": 1, "error": 1})


def test_a_backlog_with_an_unparseable_line_fills_every_log_rate_window(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """A file written before the first start, read from its start: ten minutes of lines, one a second, and one
    line that is not JSON among them. Every 10 s window gets its count; the unparseable line (stamped with its
    receive time in Elasticsearch) counts among its neighbours, and nothing is late."""
    logs = tmp_path / "logs"
    logs.mkdir()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    lines = [
        json.dumps({"timestamp": (start + timedelta(seconds=i)).isoformat(), "level": "info", "message": f"r{i}"})
        for i in range(600)
    ]
    lines.insert(300, "a crash dump line that is not JSON")
    append(logs / "app.log", lines)
    inputs = f"""
[[logs.files]]
name = "app"
paths = ["{logs}/*.log"]
service = "backlog"
parser = {{ kind = "json" }}
"""
    pipeline = Pipeline(write_config(tmp_path, unique, influx_db, inputs))
    wait_for_docs(f"{unique}-logs*", 601)
    deadline = time.monotonic() + 60  # a backlog's windows stay open 30 s after they opened (flows.log_rates)
    query = 'SELECT "count" FROM "log_rates" WHERE "service" = \'backlog\' AND "count" > 0'  # (not the quiet one)
    while len(rows := influx_rows(influx_db, query)) < 60 and time.monotonic() < deadline:
        time.sleep(0.5)
    counters = pipeline.counters()
    pipeline.stop()
    assert counters["late_log_events"] == 0
    assert len(rows) == 60 and sum(r["count"] for r in rows) == 601
    assert sorted(r["count"] for r in rows) == [10] * 59 + [11]


def test_rotated_files_read_newest_first_at_a_first_start_are_all_counted_in_the_rates(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """Found by a review: app.log, app.log.1 and app.log.2 read from their start, app.log first (the globs'
    order). With one clock per service, app.log moved it past the older files' windows: 200 of 300 lines were
    late and left out of the rates. Each file has its own clock now, and a backlog's windows wait for them."""
    logs = tmp_path / "logs"
    logs.mkdir()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n, name in enumerate(["app.log.2", "app.log.1", "app.log"]):
        lines = [
            json.dumps({"timestamp": (start + timedelta(seconds=100 * n + i)).isoformat(), "level": "info", "i": i})
            for i in range(100)
        ]
        append(logs / name, lines)
    inputs = f"""
[[logs.files]]
name = "app"
paths = ["{logs}/app.log*"]
service = "rotated"
parser = {{ kind = "json" }}
"""
    pipeline = Pipeline(write_config(tmp_path, unique, influx_db, inputs))
    wait_for_docs(f"{unique}-logs*", 300)
    deadline = time.monotonic() + 60
    query = 'SELECT "count" FROM "log_rates" WHERE "service" = \'rotated\' AND "count" > 0'  # (not the quiet one)
    while len(rows := influx_rows(influx_db, query)) < 30 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # nothing more comes
    rows = influx_rows(influx_db, query)
    counters = pipeline.counters()
    pipeline.stop()
    assert counters["late_log_events"] == 0
    assert [r["count"] for r in rows] == [10] * 30


def test_syslog_over_udp_and_tcp(tmp_path: Path, unique: str, influx_db: str, es_index: str) -> None:
    udp_port, tcp_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    inputs = f"""
[[logs.syslog]]
name = "syslog-udp"
protocol = "udp"
listen = "127.0.0.1:{udp_port}"
[[logs.syslog]]
name = "syslog-tcp"
protocol = "tcp"
listen = "127.0.0.1:{tcp_port}"
"""
    pipeline = Pipeline(write_config(tmp_path, unique, influx_db, inputs))
    rfc5424 = "<165>1 2026-01-01T00:00:03.5Z web1 nginx 42 ID47 - upstream timed out"
    rfc3164 = "<11>Jan  1 00:00:04 db1 postgres[77]: could not connect"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(rfc5424.encode(), ("127.0.0.1", udp_port))
        udp.sendto(rfc3164.encode(), ("127.0.0.1", udp_port))
    with socket.create_connection(("127.0.0.1", tcp_port)) as tcp:
        framed = f"{len(rfc5424.encode())} {rfc5424}".encode() + (rfc3164 + "\n").encode()
        tcp.sendall(framed)
    docs = wait_for_docs(f"{unique}-logs*", 4, timeout=30)
    pipeline.stop()
    assert len(docs) == 4
    by_host: dict[str, list[dict]] = {}
    for d in docs:
        by_host.setdefault(d["host"]["name"], []).append(d)
    assert sorted(by_host) == ["db1", "web1"]
    assert all(d["message"] == "upstream timed out" and d["service"]["name"] == "nginx" for d in by_host["web1"])
    assert all(d["log"]["level"] == "notice" for d in by_host["web1"])
    assert all(d["message"] == "could not connect" and d["log"]["level"] == "error" for d in by_host["db1"])
    assert all(d["process"]["pid"] == 77 for d in by_host["db1"])
    assert sorted(d["@timestamp"][:21] for d in by_host["web1"]) == ["2026-01-01T00:00:03.5"] * 2


def test_date_like_values_and_many_structured_data_names_do_not_make_the_logs_index_refuse_lines(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """A far-future timestamp is kept as text in fields.timestamp: it must not map that field as a date, or the
    next line whose timestamp is not a date at all is refused. Syslog senders name their structured data
    freely: 1,200 parameter names (past the index's 1,000 fields) must not make the index refuse lines, nor
    must a value or a name of 40,000 characters (past the longest term Elasticsearch indexes), nor a PROCID
    beyond a long."""
    logs = tmp_path / "logs"
    logs.mkdir()
    udp_port = _free_port(socket.SOCK_DGRAM)
    inputs = f"""
[[logs.files]]
name = "app"
paths = ["{logs}/*.log"]
parser = {{ kind = "json" }}
[[logs.syslog]]
name = "syslog-udp"
protocol = "udp"
listen = "127.0.0.1:{udp_port}"
max_event_bytes = 65536
"""
    pipeline = Pipeline(write_config(tmp_path, unique, influx_db, inputs))
    append(logs / "app.log", [json.dumps({"timestamp": "2999-01-01T00:00:00Z", "message": "from the future"})])
    wait_for_docs(f"{unique}-logs*", 1)
    append(logs / "app.log", [json.dumps({"timestamp": "2026-13-45T99:99:99Z", "message": "not a date"})])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for d in range(12):
            params = " ".join(f'p{d}_{i}="{i}"' for i in range(100))
            line = f"<14>1 2026-01-01T00:00:0{d % 10}Z h app - - [flood@1 {params}] line {d}"
            udp.sendto(line.encode(), ("127.0.0.1", udp_port))
        for line in (
            f'<14>1 2026-01-01T00:00:00Z h app - - [big@1 p="{"v" * 40_000}"] long value',
            f'<14>1 2026-01-01T00:00:00Z h app - - [big@1 {"k" * 40_000}="v"] long name',
            "<14>1 2026-01-01T00:00:00Z h app 9223372036854775808 - - huge procid",
        ):
            udp.sendto(line.encode(), ("127.0.0.1", udp_port))
    docs = wait_for_docs(f"{unique}-logs*", 17, timeout=30)
    dead = es_docs(f"{unique}-dead-letters*")
    pipeline.stop()
    assert dead == []
    tags = {d["message"]: d.get("tags", []) for d in docs}
    assert tags["from the future"] == ["timestamp_future"] and tags["not a date"] == ["timestamp_invalid"]
    flood = [d for d in docs if d["message"].startswith("line ")]
    assert len(flood) == 12 and all(len(d["log"]["syslog"]["structured_data"]["flood@1"]) == 100 for d in flood)
    by_message = {d["message"]: d for d in docs}
    assert by_message["long value"]["log"]["syslog"]["structured_data"] == {"big@1": {"p": "v" * 40_000}}
    assert by_message["long name"]["log"]["syslog"]["structured_data"] == {"big@1": {"k" * 255: "v"}}
    assert by_message["huge procid"]["fields"] == {"procid": "9223372036854775808"}


def test_mapping_conflict_ends_in_the_dead_letter_index(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """A value that does not fit its field's type is kept unindexed, as Elastic's logs templates do; an object
    where a value was (or the reverse) cannot be stored at all, and is a dead letter."""
    logs = tmp_path / "logs"
    logs.mkdir()
    first = json.dumps({"timestamp": f"{T0}01Z", "message": "fast", "duration_ms": 12, "err": "timeout"})
    malformed = json.dumps({"timestamp": f"{T0}02Z", "message": "slow", "duration_ms": "very slow"})
    conflict = json.dumps({"timestamp": f"{T0}03Z", "message": "shape", "err": {"code": 7}})
    append(logs / "app.log", [first])
    inputs = f"""
[[logs.files]]
name = "app"
paths = ["{logs}/*.log"]
parser = {{ kind = "json" }}
"""
    pipeline = Pipeline(write_config(tmp_path, unique, influx_db, inputs))
    # The first document maps fields.duration_ms as a number and fields.err as a keyword.
    wait_for_docs(f"{unique}-logs*", 1)
    # The same line twice (a repeated log line, the same second): two documents refused, two dead letters.
    append(logs / "app.log", [malformed, conflict, conflict])
    dead = wait_for_docs(f"{unique}-dead-letters*", 2)
    pipeline.wait_for("es_rejected", 2)
    pipeline.wait_for("dead_letters", 2)
    assert pipeline.counters()["dead_letters_by_reason"] == {"mapping_conflict": 2}
    docs = wait_for_docs(f"{unique}-logs*", 2)
    pipeline.stop()
    assert sorted(d["message"] for d in docs) == ["fast", "slow"]
    resp = http.request("GET", f"{ES_URL}/{unique}-logs*/_search?q=message:slow")
    [slow] = json.loads(resp.data)["hits"]["hits"]
    assert slow["_ignored"] == ["fields.duration_ms"] and slow["_source"]["fields"]["duration_ms"] == "very slow"
    assert len(dead) == 2 and {d["reason"] for d in dead} == {"mapping_conflict"}
    # The source names the index and the refused document's own id.
    second = len(first) + 1 + len(malformed) + 1
    third = second + len(conflict) + 1
    assert sorted(d["source"].rsplit("-", 1)[1] for d in dead) == sorted([f"{second:x}", f"{third:x}"])
    assert all(d["source"].startswith(f"elasticsearch:{unique}-logs-") for d in dead)
    assert all("err" in d["detail"] for d in dead)
    assert all(json.loads(d["raw"])["fields"]["err"] == {"code": 7} for d in dead)


def test_a_service_logging_a_key_per_request_does_not_get_other_services_refused(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """1,100 lines that each bring a field of their own, past the 1,000 fields a daily index maps; then a
    line of another service with a field not seen yet. Every document is stored: fields past the limit are
    kept in the document unindexed, and named in _ignored."""
    logs = tmp_path / "logs"
    logs.mkdir()
    noisy = [json.dumps({"timestamp": f"{T0}01Z", "message": f"noisy {i}", f"user_{i}": "x"}) for i in range(1100)]
    append(logs / "noisy.log", noisy)
    inputs = f"""
[[logs.files]]
name = "app"
paths = ["{logs}/*.log"]
parser = {{ kind = "json" }}
"""
    pipeline = Pipeline(write_config(tmp_path, unique, influx_db, inputs))
    wait_for_docs(f"{unique}-logs*", 1100)
    append(logs / "other.log", [json.dumps({"timestamp": f"{T0}02Z", "message": "other", "user": "bob"})])
    docs = wait_for_docs(f"{unique}-logs*", 1101)
    counters = pipeline.counters()
    pipeline.stop()
    assert len(docs) == 1101
    assert counters.get("dead_letters", 0) == 0, counters
    resp = http.request("GET", f"{ES_URL}/{unique}-logs*/_search?q=message:other")
    [other] = json.loads(resp.data)["hits"]["hits"]
    assert other["_source"]["fields"]["user"] == "bob"


def test_elasticsearch_outage_of_30s_under_load_loses_nothing(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    app = logs / "app.log"
    inputs = f"""
[[logs.files]]
name = "app"
paths = ["{logs}/*.log"]
parser = {{ kind = "json" }}
"""
    extra = 'buffer_max_docs = 2000\nretry_max_delay = "2s"'
    pipeline = Pipeline(write_config(tmp_path, unique, influx_db, inputs, extra))
    stack = str(REPO / "scripts" / "stack.sh")
    sent, max_depth = 0, 0
    read_at_20s: int | None = None  # log events read 20 s into the outage
    subprocess.run([stack, "down", "elasticsearch"], check=True, capture_output=True)
    try:
        start = time.monotonic()
        while time.monotonic() - start < 30:
            append(app, [json_line(sent + i) for i in range(200)])
            sent += 200
            time.sleep(0.1)
            status = pipeline.counters()
            max_depth = max(max_depth, status.get("es_queue_depth", 0))
            if read_at_20s is None and time.monotonic() - start >= 20:
                read_at_20s = status.get("log_events", 0)
        during = pipeline.counters()
        assert during.get("es_retries", 0) > 0
        # The file is the buffer: the sink's queue never went past its bound (buffer_max_docs = 2000), the tail
        # stopped reading, and the 20,000 lines of the last 10 s stayed in the file (the status file is up to
        # 250 ms old: 500 lines at this rate).
        assert max_depth <= 2000, max_depth
        assert read_at_20s is not None and during.get("log_events", 0) - read_at_20s <= 500, (read_at_20s, during)
    finally:
        subprocess.run([stack, "up", "elasticsearch"], check=True, capture_output=True)
    append(app, [json_line(sent + i) for i in range(200)])
    sent += 200
    docs = wait_for_docs(f"{unique}-logs*", sent, timeout=120)
    pipeline.stop()
    assert sorted(d["fields"]["seq"] for d in docs) == list(range(sent))


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_syslog_files_without_a_level_are_counted_as_unknown(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """/var/log/syslog as rsyslog writes it has no priority, so its events have no level. Their log rates land in
    Elasticsearch with ``levels.unknown``, as in InfluxDB, instead of being refused into the dead-letter index."""
    logs = tmp_path / "logs"
    logs.mkdir()
    append(
        logs / "syslog",
        [
            "Jan  1 00:00:01 web1 sshd[812]: Accepted publickey for alice from 10.0.0.7 port 50122 ssh2",
            "Jan  1 00:00:02 web1 sshd[812]: pam_unix(sshd:session): session opened for user alice",
            "Jan  1 00:00:03 web1 CRON[901]: (root) CMD (run-parts /etc/cron.hourly)",
            "Jan  1 00:00:04 web1 sshd[815]: Connection closed by 10.0.0.9 port 40110 [preauth]",
        ],
    )
    append(logs / "auth.log", ["Jan  1 00:00:05 web1 sshd[816]: Invalid user admin from 10.0.0.9 port 40112"])
    inputs = f"""
[[logs.files]]
name = "syslog"
paths = ["{logs}/syslog", "{logs}/auth.log"]
parser = {{ kind = "syslog", timezone = "UTC" }}
"""
    pipeline = Pipeline(write_config(tmp_path, unique, influx_db, inputs))
    docs = wait_for_docs(f"{unique}-logs*", 5)
    deadline = time.monotonic() + 40
    rates = es_docs(f"{unique}-log-rates*")
    while {r["service"]["name"] for r in rates} != {"sshd", "CRON"} and time.monotonic() < deadline:
        time.sleep(0.5)
        rates = es_docs(f"{unique}-log-rates*")
    pipeline.stop()
    assert len(docs) == 5 and all("level" not in d.get("log", {}) for d in docs)
    by_service = {r["service"]["name"]: r for r in rates}
    assert set(by_service) == {"sshd", "CRON"}, rates
    sshd = by_service["sshd"]
    assert (sshd["@timestamp"][:19], sshd["count"], sshd["errors"], sshd["levels"]) == (
        "2026-01-01T00:00:00",
        4,
        0,
        {"unknown": 4},
    )
    assert by_service["CRON"]["levels"] == {"unknown": 1}
    influx = influx_rows(
        influx_db, 'SELECT "count", "unknown" FROM "log_rates" WHERE "service" = \'sshd\' AND "count" > 0'
    )
    assert [(r["count"], r["unknown"]) for r in influx] == [(4, 4)]
    assert es_docs(f"{unique}-dead-letters*") == []
    # A healthy start against a server without data streams marks no node failed (issue 10 §6).
    assert "has failed for" not in pipeline.log_text()


def _es_config(unique: str, **extra: object) -> ElasticsearchConfig:
    return ElasticsearchConfig.model_validate(
        {"hosts": [ES_URL], "index_prefix": unique, "flush_interval": "100ms", "concurrent_requests": 1, **extra}
    )


def _event(doc_id: str, doc: dict, second: int = 1) -> LogEvent:
    ts_ns = 1_767_225_600_000_000_000 + second * 1_000_000_000  # 2026-01-01T00:00:0<second>Z
    return LogEvent(doc_id, ts_ns, "info", "api", {"@timestamp": f"{T0}{second:02d}Z", **doc})


def _raw(letter: dict) -> bytes:
    return base64.b64decode(letter["raw_base64"])


# Above the local server's http.max_content_length (100mb, the default).
OVERSIZED = 101 * 1024 * 1024


def test_documents_that_cannot_be_sent_are_dead_letters_and_the_rest_of_the_batch_lands(
    unique: str, es_index: str
) -> None:
    """Lone surrogates, NaN, values JSON has no type for and a document larger than the server takes each become
    one dead letter (reason, raw input); the other documents of the same batch are stored and the writer goes on."""
    unstorable: list[DeadLetter] = []
    writer = ElasticWriterThread(_es_config(unique), unstorable.extend, "es-test")
    try:
        batch: list[Record] = [
            _event("ok-1", {"message": "first"}),
            _event("surrogate", {"message": "x", "fields": {"\ud800": 1}}),
            _event("nan", {"message": "x", "fields": {"ratio": float("nan")}}),
            _event("object", {"message": "x", "fields": {"obj": object()}}),
            _event("huge", {"message": "y" * OVERSIZED}),
            _event("ok-2", {"message": "second"}),
        ]
        writer.put(batch)
        assert writer.flush(60), "the batch was not written"
        writer.put([_event("ok-3", {"message": "after the bad ones"}, second=2)])
        assert writer.flush(30) and writer.alive()
        assert writer.failure is None
    finally:
        writer.close(30)
    assert sorted(d["_id"] for d in es_docs(f"{unique}-logs*")) == ["ok-1", "ok-2", "ok-3"]
    dead = {d["detail"].split()[1]: d for d in es_docs(f"{unique}-dead-letters*")}
    assert set(dead) == {"surrogate", "nan", "object", "huge"}
    assert {k: d["reason"] for k, d in dead.items()} == {
        "surrogate": "unserializable",
        "nan": "unserializable",
        "object": "unserializable",
        "huge": "too_large",
    }
    assert all(d["source"].startswith(f"elasticsearch:{unique}-logs-2026.01.01/") for d in dead.values())
    assert json.loads(_raw(dead["surrogate"]))["fields"] == {"\ud800": 1}
    assert "fields.ratio" in dead["nan"]["detail"] and b"NaN" in _raw(dead["nan"])
    assert "object object" in _raw(dead["object"]).decode()
    # The oversized document: its beginning in the index, all of it in the local dead-letter file.
    assert _raw(dead["huge"]).startswith(b'{"@timestamp":"2026-01-01T00:00:01Z","message":"yyy')
    assert [(u.reason, len(u.raw) > OVERSIZED) for u in unstorable] == [("too_large", True)]


def test_a_request_the_server_refuses_as_too_large_is_split_down_to_the_document(
    unique: str, es_index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When fleetwatch cannot know the limit (a proxy in front of the server takes less than the server says), the
    server's 413 is the answer: the request is sent again in parts, and only the document too large on its own is
    a dead letter."""
    monkeypatch.setattr(es_sink, "server_max_content_length", lambda es: 1 << 30)
    unstorable: list[DeadLetter] = []
    writer = ElasticWriterThread(_es_config(unique, index_mode="daily"), unstorable.extend, "es-test")
    try:
        writer.put([_event("ok-1", {"message": "a"}), _event("huge", {"message": "y" * OVERSIZED}), _event("ok-2", {})])
        assert writer.flush(60) and writer.alive()
    finally:
        writer.close(30)
    assert sorted(d["_id"] for d in es_docs(f"{unique}-logs*")) == ["ok-1", "ok-2"]
    (dead,) = es_docs(f"{unique}-dead-letters*")
    assert dead["reason"] == "too_large" and "413" in dead["detail"]
    assert [(u.reason, len(u.raw) > OVERSIZED) for u in unstorable] == [("too_large", True)]


def test_a_request_refused_whole_for_one_document_stores_the_others_and_a_long_service_has_a_short_id(
    unique: str, es_index: str
) -> None:
    """Found by a review: a sender's 600-character APP-NAME made a log-rate _id past Elasticsearch's 512 bytes, the
    server refused the whole bulk request with a 400, and every document in it became a dead letter, good log
    lines of other senders included. The rate's id is now short; and a request refused whole is split down to the
    document, so only a document the server cannot take at all is a dead letter."""
    unstorable: list[DeadLetter] = []
    writer = ElasticWriterThread(_es_config(unique, index_mode="daily"), unstorable.extend, "es-test")
    long_service = "p" * 600
    try:
        writer.put(
            [
                _event("ok-1", {"message": "a"}),
                _event("x" * 600, {"message": "an _id Elasticsearch cannot take"}),
                LogRate(long_service, 1_767_225_600 * 10**9, 60 * 10**9, {"info": 7}),
                _event("ok-2", {"message": "b"}),
            ]
        )
        assert writer.flush(60) and writer.alive()
    finally:
        writer.close(30)
    assert sorted(d["_id"] for d in es_docs(f"{unique}-logs-*")) == ["ok-1", "ok-2"]
    (rate,) = es_docs(f"{unique}-log-rates*")
    assert rate["service"]["name"] == long_service and rate["_id"].startswith("p" * 100 + "~")
    (dead,) = es_docs(f"{unique}-dead-letters*")
    assert dead["reason"] == "elasticsearch_rejected" and "x" * 100 in dead["source"]
    assert unstorable == []


def test_a_clean_start_logs_no_warning_and_installs_the_templates_once(
    unique: str, es_index: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The sink's partition and the dead-letter writer start as `fleetwatch run` starts them: no node marked failed
    by the data-stream probe, each index template PUT once per process, and the documents stored."""
    _capture_requests(caplog)
    cfg = _es_config(unique)
    unstorable: list[DeadLetter] = []
    dead_letters = ElasticWriterThread(cfg, unstorable.extend, "es-dead-letters")
    partition = ElasticsearchSink(cfg, unstorable.extend).build_part("elasticsearch", "elasticsearch-0", None)
    try:
        partition.write_batch([[_event("ok-1", {"message": "hello"})]])
        dead_letters.put([DeadLetter("not_a_number", "mqtt:s/1/t", b"abc", 1_767_225_600_000_000_000)])
        assert dead_letters.flush(30) and dead_letters.alive()
        partition.close()
    finally:
        dead_letters.close(30)
    assert len(es_docs(f"{unique}-logs*")) == 1 and len(es_docs(f"{unique}-dead-letters*")) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sorted(_template_puts(caplog)) == sorted(f"{unique}-{kind}" for kind in es_sink.KINDS)
    assert unstorable == []


def test_documents_unindexed_at_a_snapshot_wait_in_the_sinks_log_and_a_resumed_partition_indexes_them(
    unique: str, es_index: str, tmp_path: Path
) -> None:
    """With recovery on, an epoch that ends while Elasticsearch is unreachable: Bytewax is handed a marker of a
    few dozen bytes, not the documents; the documents wait in the sink's log in the recovery directory, and a
    partition resumed from the marker (after a crash, Elasticsearch back) indexes every one of them."""
    init_db_dir(tmp_path, 1)
    # What Bytewax records when a run starts (its first execution, from epoch 1): the dead-letter gate reads it.
    with sqlite3.connect(tmp_path / "part-0.sqlite3") as partitions:
        partitions.execute("INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (0, 1, 1)")
    unstorable: list[DeadLetter] = []
    # Nothing listens on port 1: every request fails, so every document is still pending at the snapshot.
    down = ElasticsearchSink(_es_config(unique, hosts=["http://127.0.0.1:1"]), unstorable.extend, recovery_dir=tmp_path)
    events = [_event(f"doc-{i}", {"message": f"line {i} " + "x" * 300}, second=i % 60) for i in range(1_200)]
    partition = down.build_part("fleetwatch.elasticsearch", "elasticsearch-0", None)
    partition.write_batch([events[:700], events[700:]])
    marker = partition.snapshot()
    partition.writer.close(0.5)  # the crash: the documents never reached Elasticsearch
    assert is_marker(marker)
    assert len(pickle.dumps(marker)) < 200
    assert [p.parent.name for p in tmp_path.glob("*/*")] == [es_sink.PENDING_DOCS_FOLDER]

    stored_marker = pickle.loads(pickle.dumps(marker))
    resumed = ElasticsearchSink(_es_config(unique), unstorable.extend, recovery_dir=tmp_path).build_part(
        "fleetwatch.elasticsearch", "elasticsearch-0", stored_marker
    )
    assert resumed.writer.flush(60) and resumed.writer.alive()
    resumed.close()
    docs = es_docs(f"{unique}-logs*")
    assert sorted(d["_id"] for d in docs) == sorted(e.doc_id for e in events)
    assert {d["_id"]: d["message"] for d in docs} == {e.doc_id: e.doc["message"] for e in events}
    assert unstorable == []


def _capture_requests(caplog: pytest.LogCaptureFixture) -> None:
    """Capture INFO records, the Elasticsearch client's requests included. ``fleetwatch`` commands set that
    client's logger to WARNING (a line per request is noise), and a command run earlier in the same process
    leaves it so: the root level alone would then capture no request."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="elastic_transport")


def _template_puts(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The index templates written, by name. The client logs every request:
    "PUT http://.../_index_template/<name> [status:200 duration:...]"."""
    requests = [r.getMessage() for r in caplog.records if r.name.startswith("elastic_transport")]
    return [m.split()[1].rsplit("/", 1)[1] for m in requests if m.startswith("PUT ") and "/_index_template/" in m]


def test_a_restart_finds_its_templates_in_place_and_writes_none_a_changed_one_is_written_again(
    unique: str, es_index: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each template write is a cluster-state update: a process that starts against templates it wrote before
    reads them in one request and writes none. One that differs (here, changed by hand) is written again, alone."""
    _capture_requests(caplog)

    def start(cfg: ElasticsearchConfig) -> list[str]:
        # A new process: nothing of an earlier setup in memory.
        monkeypatch.setattr(es_sink, "_setups", {})
        caplog.clear()
        unstorable: list[DeadLetter] = []
        writer = ElasticWriterThread(cfg, unstorable.extend, "es-test")
        try:
            writer.put([_event(f"doc-{time.monotonic_ns()}", {"message": "hello"})])
            assert writer.flush(30) and writer.alive()
        finally:
            writer.close(30)
        assert unstorable == []
        return _template_puts(caplog)

    cfg = _es_config(unique, index_mode="daily")
    assert sorted(start(cfg)) == sorted(f"{unique}-{kind}" for kind in es_sink.KINDS)
    assert start(cfg) == []
    assert any("index templates already in place" in r.getMessage() for r in caplog.records)
    # The dead-letter template on its own, changed by hand: only it is written again.
    resp = http.request(
        "PUT",
        f"{ES_URL}/_index_template/{unique}-dead-letters",
        body=json.dumps({"index_patterns": [f"{unique}-dead-letters*"], "priority": 200, "_meta": {"x": 1}}),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, resp.data
    assert start(cfg) == [f"{unique}-dead-letters"]
    stored = json.loads(http.request("GET", f"{ES_URL}/_index_template/{unique}-dead-letters").data)
    layout = es_sink.IndexLayout(unique, False, cfg.number_of_replicas)
    assert stored["index_templates"][0]["index_template"]["_meta"] == layout.template(es_sink.DEAD_LETTERS)["_meta"]


def test_a_template_the_server_refuses_stops_the_pipeline_with_its_answer(
    tmp_path: Path, unique: str, influx_db: str, es_index: str
) -> None:
    """A 4xx at setup is no record's fault and retrying cannot fix it: `fleetwatch run` exits non-zero and says
    which template and what the server answered, instead of running on with a dead writer."""
    conflicting = {"index_patterns": [f"{unique}-logs*"], "priority": 200, "template": {}}
    resp = http.request(
        "PUT",
        f"{ES_URL}/_index_template/{unique}-other",
        body=json.dumps(conflicting),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, resp.data
    logs = tmp_path / "logs"
    logs.mkdir()
    inputs = f"""
[[logs.files]]
name = "app"
paths = ["{logs}/*.log"]
parser = {{ kind = "json" }}
"""
    config = write_config(tmp_path, unique, influx_db, inputs)
    # No --duration: the refusal alone must end the process.
    with subprocess.Popen(
        [str(FLEETWATCH), "run", "--config", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(f"fleetwatch run kept running after the server refused its template:\n{output[-3000:]}")
    assert proc.returncode != 0, output
    assert f"refused index template '{unique}-logs'" in output, output
    assert "HTTP 400 illegal_argument_exception" in output and f"{unique}-other" in output, output


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_a_syslog_port_in_use_stops_the_start_with_one_line_naming_the_input(
    tmp_path: Path, unique: str, influx_db: str, protocol: str
) -> None:
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if protocol == "tcp":
            taken.listen(1)
        port = taken.getsockname()[1]
        inputs = f"""
[[logs.syslog]]
name = "edge-{protocol}"
protocol = "{protocol}"
listen = "127.0.0.1:{port}"
"""
        config = write_config(tmp_path, unique, influx_db, inputs)
        done = subprocess.run(
            [str(FLEETWATCH), "run", "--config", str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"logs.syslog 'edge-{protocol}': cannot listen on {protocol} 127.0.0.1:{port}: Address already in use" in (
        " ".join(output.split())
    ), output
    assert "Traceback" not in output and "panicked" not in output, output
