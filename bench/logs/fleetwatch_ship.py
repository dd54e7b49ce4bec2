"""fleetwatch shipping the benchmark file: ``fleetwatch run`` with one file input, from process start until
every line is searchable in Elasticsearch (the same clock as the references: start to ``_count`` = N).

Recovery, log rates (to InfluxDB and Elasticsearch) and deterministic ids stay on: this is the pipeline as
users run it, not a stripped-down copy.

With ``BENCH_LOG_PYSPY=<dir>``, py-spy samples the pipeline during the run (100 Hz, the thread holding the
GIL: ``--threads --gil``) and writes ``<dir>/<kind>-<time>.txt`` (collapsed stacks, for
``bench/logs/profile.py``). py-spy takes CPU of its own: profiled runs show where the time goes, their rates
are not results.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.installed import fleetwatch_command
from bench.logs import es as eslib
from bench.logs.cpu import CpuMeter, CpuUsage
from bench.logs.data import Kind
from bench.stack_credentials import INFLUX_AUTH_TOML

REPO = Path(__file__).resolve().parents[2]

# The parser each kind of file is read with.
PARSERS: dict[Kind, str] = {
    "json": '{ kind = "json" }',
    "syslog": '{ kind = "syslog" }',
    "text": '{ kind = "regex", pattern = "rsyslog_traditional" }',
}


@dataclass(frozen=True)
class FleetwatchResult:
    lines: int
    seconds: float  # process start to all documents counted
    cpu: CpuUsage
    foreign_docs: int  # documents others indexed on the server during the run
    first: tuple[float, int]  # seconds after the start when documents were first searchable, and how many

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds


def write_config(workdir: Path, path: Path, kind: Kind, prefix: str, concurrent_requests: int) -> Path:
    config = workdir / f"{prefix}.toml"
    # BENCH_LOG_ES_BATCH: documents per bulk request, to compare against the default.
    es_batch = f"batch_size = {int(os.environ['BENCH_LOG_ES_BATCH'])}" if os.environ.get("BENCH_LOG_ES_BATCH") else ""
    config.write_text(f"""
[logs]
rate_window = "1m"

[[logs.files]]
name = "bench"
paths = ["{path}"]
parser = {PARSERS[kind]}
poll_interval = "50ms"

[recovery]
dir = "{workdir / prefix / "recovery"}"

[influxdb]
database = "fleetwatch_bench"
{INFLUX_AUTH_TOML}

[elasticsearch]
index_prefix = "{prefix}"
concurrent_requests = {concurrent_requests}
{es_batch}

[dead_letters]
path = "{workdir / prefix / "dead.jsonl"}"
""")
    return config


def _profiler(pid: int, kind: Kind) -> subprocess.Popen[bytes] | None:
    out_dir = os.environ.get("BENCH_LOG_PYSPY")
    if not out_dir:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(out_dir) / f"{kind}-{int(time.time())}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "100",
        "--threads",
        "--gil",
        "--format",
        "raw",
        "-o",
        str(out),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_fleetwatch(path: Path, kind: Kind, lines: int, workdir: Path, concurrent_requests: int = 2) -> FleetwatchResult:
    """Start to all searchable, with the CPU the pipeline process used meanwhile."""
    es = eslib.client()
    prefix = f"bench-fw-{uuid.uuid4().hex[:8]}"
    config = write_config(workdir, path, kind, prefix, concurrent_requests)
    log = open(workdir / f"{prefix}.log", "wb")  # noqa: SIM115 - closed below
    indexed0 = eslib.indexing_total(es)
    meter = CpuMeter()
    start = time.monotonic()
    # The installed program (byte-compiled at install, as users have it), not the checkout's modules.
    command = fleetwatch_command("run", "-c", str(config))
    proc = subprocess.Popen(command, cwd=workdir, stderr=log)
    profiler = _profiler(proc.pid, kind)
    try:
        first: list[tuple[float, int]] = []
        elapsed = eslib.wait_for_count(
            es, f"{prefix}-logs*", lines, start, timeout_s=900, alive=lambda: proc.poll() is None, first=first
        )
        cpu = meter.stop(proc.pid)
        foreign = eslib.indexing_total(es) - indexed0 - lines
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        eslib.delete_pipeline_data(es, prefix)
    return FleetwatchResult(lines, elapsed, cpu, foreign, first[0])
