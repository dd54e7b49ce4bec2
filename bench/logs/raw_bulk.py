"""Reference: the raw bulk limit. Pre-built documents indexed with the client's ``parallel_bulk``.

The documents (bench/logs/data.py ``build_documents``) are built before the clock starts: what is timed is
serialising them, the bulk requests, and Elasticsearch indexing and refreshing them, up to the moment
``_count`` on the fresh index reaches the line count. No file is read and nothing is parsed, so no shipper
of the same file onto the same server can beat this by much: it is the ceiling for fleetwatch's sink.

Tuning on the 2-core machine (Elasticsearch shares the cores): ``python -m bench.logs.raw_bulk --threads 2,3
--chunk-size 2000,5000 --serializer json,orjson`` runs a grid; bench/logs/README.md has the one behind the
defaults.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch
from elasticsearch.helpers import parallel_bulk

from bench.logs import es as eslib
from bench.logs.cpu import CpuMeter, CpuUsage, conditions
from bench.logs.data import KINDS, Document, Kind, build_documents, write_lines

# The helper serialises in the caller's thread and sends from the pool. One thread = one request in flight:
# the server idles between a response and the next request. From 2 threads x 2,000 up the grid was flat
# within noise (README); 3 keeps both of the server's write threads busy while a response is parsed.
THREADS = 3
CHUNK_SIZE = 5000
SERIALIZER = "orjson"
TIMEOUT_S = 600.0
WARMUP_DOCS = 100_000


@dataclass(frozen=True)
class RawBulkResult:
    lines: int
    seconds: float  # start of parallel_bulk to all documents counted
    bulk_seconds: float  # start of parallel_bulk to the last bulk response
    threads: int
    chunk_size: int
    serializer: str
    cpu: CpuUsage
    foreign_docs: int  # documents others indexed on the server during the run

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds


def _actions(index: str, docs: list[Document]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        yield {"_index": index, "_id": doc.id, "_source": doc.source}


def run_raw_bulk(
    docs: list[Document],
    threads: int = THREADS,
    chunk_size: int = CHUNK_SIZE,
    serializer: str = SERIALIZER,
    client: Elasticsearch | None = None,
) -> RawBulkResult:
    """Index docs into a fresh index, time until all are searchable, delete the index."""
    es = client or eslib.client(serializer)
    index = eslib.fresh_index(es, "raw")
    try:
        indexed0 = eslib.indexing_total(es)
        meter = CpuMeter(os.getpid())
        start = time.monotonic()
        failed = 0
        for ok, _item in parallel_bulk(
            es,
            _actions(index, docs),
            thread_count=threads,
            chunk_size=chunk_size,
            # Chunks are bounded by count; 2,000 documents of ~400 bytes stay far below this.
            max_chunk_bytes=20 * 1024 * 1024,
            queue_size=threads,
            raise_on_error=False,
        ):
            failed += not ok
        bulk_seconds = time.monotonic() - start
        if failed:
            raise RuntimeError(f"raw bulk: {failed} of {len(docs)} documents were rejected")
        seconds = eslib.wait_for_count(es, index, len(docs), start, TIMEOUT_S)
        cpu = meter.stop()
        foreign = eslib.indexing_total(es) - indexed0 - len(docs)
    finally:
        eslib.delete_index(es, index)
    return RawBulkResult(len(docs), seconds, bulk_seconds, threads, chunk_size, serializer, cpu, foreign)


def warm_up(docs: list[Document]) -> None:
    """One untimed run: a server that was just (re)started runs its first minute of indexing interpreted
    and JIT-compiling, at a fraction of its speed."""
    eslib.with_retries("warm-up", functools.partial(run_raw_bulk, docs[:WARMUP_DOCS]))


def main() -> None:
    parser = argparse.ArgumentParser(description="The raw bulk reference alone, or a sweep of its tuning.")
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--kind", choices=KINDS, default="json")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fleetwatch-bench-logs"))
    parser.add_argument("--threads", default=str(THREADS), help="comma-separated thread counts")
    parser.add_argument("--chunk-size", default=str(CHUNK_SIZE), help="comma-separated chunk sizes")
    parser.add_argument("--serializer", default=SERIALIZER, help="comma-separated: json, orjson")
    args = parser.parse_args()
    kind: Kind = args.kind
    path = write_lines(kind, args.workdir / f"{kind}.log", args.lines)
    docs = build_documents(kind, path)
    warm_up(docs)
    grid = itertools.product(
        args.serializer.split(","),
        [int(t) for t in args.threads.split(",")],
        [int(c) for c in args.chunk_size.split(",")],
    )
    print(f"{'serializer':<10} {'threads':>7} {'chunk':>6} {'bulk s':>7} {'total s':>8} {'lines/s':>9}  cpu")
    for serializer, threads, chunk in grid:
        r = eslib.with_retries("raw_bulk", functools.partial(run_raw_bulk, docs, threads, chunk, serializer))
        timing = f"{r.bulk_seconds:>7.2f} {r.seconds:>8.2f} {r.lines_per_s:>9,.0f}"
        print(f"{serializer:<10} {threads:>7} {chunk:>6} {timing}  {conditions(r.cpu, r.foreign_docs)}", flush=True)


if __name__ == "__main__":
    main()
