"""fleetwatch shipping the benchmark file: ``fleetwatch run`` with one file input, from process start until
every line is searchable in Elasticsearch (the same clock as the references: start to ``_count`` = N).

Recovery, log rates (to InfluxDB and Elasticsearch) and deterministic ids stay on: this is the pipeline as
users run it, not a stripped-down copy.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.logs import es as eslib
from bench.logs.data import Kind

REPO = Path(__file__).resolve().parents[2]


def write_config(workdir: Path, path: Path, kind: Kind, prefix: str, concurrent_requests: int) -> Path:
    parser = '{ kind = "json" }' if kind == "json" else '{ kind = "syslog" }'
    config = workdir / f"{prefix}.toml"
    config.write_text(f"""
[logs]
rate_window = "1m"

[[logs.files]]
name = "bench"
paths = ["{path}"]
parser = {parser}
poll_interval = "50ms"

[recovery]
dir = "{workdir / prefix / "recovery"}"

[influxdb]
database = "fleetwatch_bench"

[elasticsearch]
index_prefix = "{prefix}"
concurrent_requests = {concurrent_requests}

[dead_letters]
path = "{workdir / prefix / "dead.jsonl"}"
""")
    return config


def run_fleetwatch(path: Path, kind: Kind, lines: int, workdir: Path, concurrent_requests: int = 2) -> float:
    """Lines per second, start to all searchable."""
    es = eslib.client()
    prefix = f"bench-fw-{uuid.uuid4().hex[:8]}"
    config = write_config(workdir, path, kind, prefix, concurrent_requests)
    log = open(workdir / f"{prefix}.log", "wb")  # noqa: SIM115 - closed below
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "fleetwatch", "run", "-c", str(config)], cwd=REPO, stderr=log)
    try:
        elapsed = eslib.wait_for_count(es, f"{prefix}-logs*", lines, start, timeout_s=900)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        es.options(ignore_status=404).indices.delete(index=f"{prefix}-*")
        es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-*")
    return lines / elapsed
