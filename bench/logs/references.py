"""The logs benchmark's references, on the same file, the same documents and the same Elasticsearch.

    .venv/bin/python -m bench.logs.references --lines 300000 --kind json [--repeat 3]

- ``raw_bulk``: the pre-built documents through ``elasticsearch.helpers.parallel_bulk`` (bench/logs/raw_bulk.py);
- ``rsyslog``: Debian's rsyslog, ``imfile`` → ``omelasticsearch``, shipping the file (bench/logs/rsyslog.py).

Each is lines per second from start to all lines searchable (``_count`` on a fresh index, same mapping).
fleetwatch's targets: ≥ 70% of raw_bulk, ≥ 1.5x rsyslog. Every run also prints where the CPU went: on
2 cores, a run during which "other" was well above zero (someone else's tests, an Elasticsearch restart)
is not comparable.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.logs import es as eslib
from bench.logs import raw_bulk, rsyslog
from bench.logs.cpu import CpuUsage, conditions
from bench.logs.data import KINDS, Kind, build_documents, write_lines

REFERENCES = ("raw_bulk", "rsyslog")
# A run shared the machine with someone else's load when more than this went to other processes.
CLEAN_OTHER_CORES = 0.1


@dataclass(frozen=True)
class Run:
    reference: str
    kind: Kind
    lines: int
    seconds: float
    cpu: CpuUsage
    foreign_docs: int
    # Seconds after the start when documents were first searchable, and how many (None for raw bulk, whose
    # clock starts at its first request into an index made beforehand).
    first: tuple[float, int] | None = None

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds

    @property
    def clean(self) -> bool:
        """Nothing else loaded the cores or the server during the run."""
        return self.cpu.other <= CLEAN_OTHER_CORES and self.foreign_docs == 0


def summarise(runs: list[Run]) -> float:
    """Median lines/s over the clean runs, or over all when none was clean."""
    chosen = [r for r in runs if r.clean] or runs
    return statistics.median(r.lines_per_s for r in chosen)


def measure_references(
    lines: int, kind: Kind, workdir: Path, repeat: int = 1, report: Callable[[Run], None] | None = None
) -> list[Run]:
    """Write the benchmark file into workdir and run both references on it, repeat times each, after an
    untimed warm-up; report is called with each run as it ends.

    The order alternates (raw, rsyslog, rsyslog, raw, ...) so a drift of the machine during the runs
    (segment merges of earlier runs, someone else's load) does not favour one reference."""
    path = write_lines(kind, workdir / f"{kind}-{lines}.log", lines)
    docs = build_documents(kind, path)
    raw_bulk.warm_up(docs)
    # Move the documents out of the collector's sight: otherwise every full collection during the timed
    # part walks ~lines x 10 objects.
    gc.collect()
    gc.freeze()
    runs: list[Run] = []
    try:
        for i in range(repeat):
            for name in REFERENCES if i % 2 == 0 else reversed(REFERENCES):
                if name == "raw_bulk":
                    raw = eslib.with_retries(name, lambda: raw_bulk.run_raw_bulk(docs))
                    runs.append(Run(name, kind, lines, raw.seconds, raw.cpu, raw.foreign_docs))
                else:
                    rs, _ = eslib.with_retries(name, lambda: rsyslog.run_rsyslog(kind, path, lines))
                    runs.append(Run(name, kind, lines, rs.seconds, rs.cpu, rs.foreign_docs, rs.first))
                if report is not None:
                    report(runs[-1])
    finally:
        gc.unfreeze()
    return runs


def run_references(lines: int, kind: Literal["json", "syslog"], workdir: Path, repeat: int = 1) -> dict[str, float]:
    """Lines per second of each reference on lines lines of kind: {"raw_bulk": ..., "rsyslog": ...}, the
    median over the clean ones of repeat runs each (see Run.clean)."""
    runs = measure_references(lines, kind, workdir, repeat)
    return {name: summarise([r for r in runs if r.reference == name]) for name in REFERENCES}


def _server_version() -> str:
    # GET / (client.info()) answers 405 on the local test server (integ-test-zip); the nodes API has it.
    nodes = eslib.client().nodes.info(filter_path="nodes.*.version")["nodes"]
    return ",".join(sorted({n["version"] for n in nodes.values()}))


def _print_run(r: Run) -> None:
    rate = f"{r.seconds:6.2f} s {r.lines_per_s:>9,.0f} lines/s"
    note = "" if r.clean else "  NOT CLEAN"
    print(f"  {r.kind:<6} {r.reference:<8} {rate}  {conditions(r.cpu, r.foreign_docs)}{note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Logs benchmark references: raw bulk limit and rsyslog.")
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--kind", choices=[*KINDS, "both"], default="json")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each reference; the table shows medians")
    parser.add_argument("--workdir", type=Path, default=None, help="where the log files go (default: a temp dir)")
    args = parser.parse_args()
    kinds: list[Kind] = list(KINDS) if args.kind == "both" else [args.kind]
    print(
        f"{args.lines:,} lines; Elasticsearch {_server_version()}; {rsyslog.version()}; "
        f"Python {platform.python_version()}\nraw_bulk: parallel_bulk thread_count={raw_bulk.THREADS} "
        f"chunk_size={raw_bulk.CHUNK_SIZE} serializer={raw_bulk.SERIALIZER}; rsyslog: dequeueBatchSize="
        f"{rsyslog.BATCH} workerThreads={rsyslog.WORKERS}",
        flush=True,
    )
    summary: list[tuple[Kind, dict[str, list[Run]]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        workdir = args.workdir or Path(tmp)
        for kind in kinds:
            runs = measure_references(args.lines, kind, workdir, args.repeat, _print_run)
            summary.append((kind, {name: [r for r in runs if r.reference == name] for name in REFERENCES}))
    print(f"\n{'kind':<7} {'reference':<9} {'lines/s':>9} {'clean':>6}  range (clean)    fleetwatch target")
    for kind, by_ref in summary:
        for name, runs in by_ref.items():
            rate = summarise(runs)
            chosen = [r for r in runs if r.clean] or runs
            spread = f"{min(r.lines_per_s for r in chosen):,.0f}-{max(r.lines_per_s for r in chosen):,.0f}"
            clean = f"{sum(r.clean for r in runs)}/{len(runs)}"
            target = f">= {0.7 * rate:,.0f} (70%)" if name == "raw_bulk" else f">= {1.5 * rate:,.0f} (1.5x)"
            print(f"{kind:<7} {name:<9} {rate:>9,.0f} {clean:>6}  {spread:<15}  {target}")


if __name__ == "__main__":
    main()
