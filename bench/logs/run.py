"""`make bench`, logs part: lines per second from a file to searchable in Elasticsearch, for JSON lines,
syslog text and plain traditional-format text (regex parser), for fleetwatch and, in the same run on the same
file and server, the two references: ``parallel_bulk`` with pre-built documents (the server's limit) and
rsyslog (imfile -> omelasticsearch).

Each measurement is start to ``_count`` = N on a fresh index, so every shipper pays its own start-up. Next to
the rates, the CPU each shipper's process used, as CPU-seconds per 100,000 lines (efficiency: on 2 cores
shared with Elasticsearch, what a shipper burns is taken from the server). A run during which other
processes took more than 0.1 core is marked NOT CLEAN. The results land in bench/results/logs-<time>.json and
are printed as JSON lines and a table.

Environment: ``BENCH_LOG_LINES`` (default 500,000), ``BENCH_LOG_KINDS`` (default ``json,syslog,text``),
``BENCH_LOG_REPEAT`` (runs of each shipper per kind, alternating; medians are reported; default 1),
``BENCH_LOG_PYSPY`` (a directory: profile the fleetwatch runs, see fleetwatch_ship.py), ``BENCH_LOG_ES_BATCH``
(fleetwatch's documents per bulk request instead of its default).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench.logs.cpu import CpuUsage
from bench.logs.data import KINDS, Kind, write_lines
from bench.logs.fleetwatch_ship import run_fleetwatch
from bench.logs.references import CLEAN_OTHER_CORES, measure_references

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
LINES = int(os.environ.get("BENCH_LOG_LINES", "500000"))
REPEAT = int(os.environ.get("BENCH_LOG_REPEAT", "1"))
LOG_KINDS: list[Kind] = [k for k in KINDS if k in os.environ.get("BENCH_LOG_KINDS", "json,syslog,text").split(",")]


def cpu_per_100k(cpu: CpuUsage, seconds: float, lines: int) -> float:
    """The shipper's CPU-seconds per 100,000 lines."""
    return cpu.pipeline * seconds * 100_000 / lines


def _median(runs: list[dict[str, float]], key: str) -> float:
    chosen = [r for r in runs if r["clean"]] or runs
    return statistics.median(r[key] for r in chosen)


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        workdir = Path(tmp)
        for kind in LOG_KINDS:
            runs: dict[str, list[dict[str, float]]] = {"fleetwatch": [], "raw_bulk": [], "rsyslog": []}
            path = write_lines(kind, workdir / f"fleetwatch-{kind}.log", LINES)
            for i in range(REPEAT):
                # fleetwatch and the references alternate, so a drift of the machine favours neither.
                order = ("references", "fleetwatch") if i % 2 == 0 else ("fleetwatch", "references")
                for who in order:
                    if who == "references":
                        for ref in measure_references(LINES, kind, workdir):
                            runs[ref.reference].append(_run(ref.lines_per_s, ref.cpu, ref.seconds, ref.first))
                            print(f"  {kind} {ref.reference}: {_describe(runs[ref.reference][-1], ref.cpu)}")
                    else:
                        fw = run_fleetwatch(path, kind, LINES, workdir)
                        runs["fleetwatch"].append(_run(fw.lines_per_s, fw.cpu, fw.seconds, fw.first))
                        print(f"  {kind} fleetwatch: {_describe(runs['fleetwatch'][-1], fw.cpu)}", flush=True)
            rate = {name: _median(r, "rate") for name, r in runs.items()}
            cpu = {name: _median(r, "cpu_100k") for name, r in runs.items()}
            steady = {name: _median(r, "steady_rate") for name, r in runs.items()}
            first = {name: _median(r, "first_doc_s") for name, r in runs.items() if name != "raw_bulk"}
            row = {
                "kind": kind,
                "lines": LINES,
                "runs": REPEAT,
                "fleetwatch": round(rate["fleetwatch"]),
                "raw_bulk": round(rate["raw_bulk"]),
                "rsyslog": round(rate["rsyslog"]),
                "vs_raw_bulk": round(rate["fleetwatch"] / rate["raw_bulk"], 2),
                "vs_rsyslog": round(rate["fleetwatch"] / rate["rsyslog"], 2),
                "fleetwatch_cpu_s_per_100k": round(cpu["fleetwatch"], 2),
                "rsyslog_cpu_s_per_100k": round(cpu["rsyslog"], 2),
                "cpu_vs_rsyslog": round(cpu["fleetwatch"] / cpu["rsyslog"], 2),
                # Start-up apart: when the first documents were searchable, and the rate from then on.
                "fleetwatch_first_doc_s": round(first["fleetwatch"], 2),
                "rsyslog_first_doc_s": round(first["rsyslog"], 2),
                "steady_vs_rsyslog": round(steady["fleetwatch"] / steady["rsyslog"], 2),
                "steady_vs_raw_bulk": round(steady["fleetwatch"] / steady["raw_bulk"], 2),
                "all_runs": runs,
            }
            print(json.dumps({k: v for k, v in row.items() if k != "all_runs"}), flush=True)
            rows.append(row)
    print(
        f"\n{'kind':<7} {'fleetwatch':>11} {'raw bulk':>9} {'rsyslog':>8} {'fw/bulk':>8} {'fw/rsyslog':>11}"
        f" {'fw cpu-s/100k':>14} {'rsyslog':>8} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['kind']:<7} {r['fleetwatch']:>11,} {r['raw_bulk']:>9,} {r['rsyslog']:>8,} "
            f"{r['vs_raw_bulk']:>8.2f} {r['vs_rsyslog']:>11.2f} {r['fleetwatch_cpu_s_per_100k']:>14.2f} "
            f"{r['rsyslog_cpu_s_per_100k']:>8.2f} {r['cpu_vs_rsyslog']:>6.2f}"
        )
    out = RESULTS / f"logs-{int(time.time())}.json"
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"results: {out}")


def _run(rate: float, cpu: CpuUsage, seconds: float, first: tuple[float, int] | None) -> dict[str, float]:
    first_s, first_count = first or (0.0, 0)
    return {
        "rate": rate,
        "seconds": seconds,
        "first_doc_s": first_s,
        "steady_rate": (LINES - first_count) / (seconds - first_s) if seconds > first_s else rate,
        "cpu_100k": cpu_per_100k(cpu, seconds, LINES),
        "es_cores": cpu.es,
        "pipeline_cores": cpu.pipeline,
        "other_cores": cpu.other,
        "clean": float(cpu.other <= CLEAN_OTHER_CORES),
    }


def _describe(run: dict[str, float], cpu: CpuUsage) -> str:
    note = "" if run["clean"] else "  NOT CLEAN"
    start = ""
    if run["first_doc_s"]:
        start = f"first searchable at {run['first_doc_s']:.2f} s, then {run['steady_rate']:,.0f}/s; "
    return f"{run['rate']:,.0f} lines/s, {run['cpu_100k']:.2f} cpu-s/100k lines; {start}{cpu}{note}"


if __name__ == "__main__":
    main()
