"""`make bench`, logs part: lines per second from a file to searchable in Elasticsearch, for JSON lines and
syslog text, for fleetwatch and, in the same run on the same file and server, the two references:
``parallel_bulk`` with pre-built documents (the server's limit) and rsyslog (imfile -> omelasticsearch).

Each measurement is start to ``_count`` = N on a fresh index, so every shipper pays its own start-up. The
results land in bench/results/logs-<time>.json and are printed as JSON lines and a table.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bench.logs.data import KINDS, Kind, write_lines
from bench.logs.fleetwatch_ship import run_fleetwatch
from bench.logs.references import run_references

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
LINES = int(os.environ.get("BENCH_LOG_LINES", "500000"))
LOG_KINDS: list[Kind] = [k for k in KINDS if k in os.environ.get("BENCH_LOG_KINDS", "json,syslog").split(",")]


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        workdir = Path(tmp)
        for kind in LOG_KINDS:
            references = run_references(LINES, kind, workdir)
            path = write_lines(kind, workdir / f"fleetwatch-{kind}.log", LINES)
            fleetwatch = run_fleetwatch(path, kind, LINES, workdir)
            row = {
                "kind": kind,
                "lines": LINES,
                "fleetwatch": round(fleetwatch),
                **{name: round(rate) for name, rate in references.items()},
                "vs_raw_bulk": round(fleetwatch / references["raw_bulk"], 2),
                "vs_rsyslog": round(fleetwatch / references["rsyslog"], 2),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'kind':<7} {'fleetwatch':>11} {'raw bulk':>9} {'rsyslog':>8} {'fw/bulk':>8} {'fw/rsyslog':>11}")
    for r in rows:
        print(
            f"{r['kind']:<7} {r['fleetwatch']:>11,} {r['raw_bulk']:>9,} {r['rsyslog']:>8,} "
            f"{r['vs_raw_bulk']:>8.2f} {r['vs_rsyslog']:>11.2f}"
        )
    out = RESULTS / f"logs-{int(time.time())}.json"
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
