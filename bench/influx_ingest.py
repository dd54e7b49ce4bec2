"""How fast the local InfluxDB takes a fleet's window boundary, with nothing else running:
``python -m bench.influx_ingest``. 100,000 aggregate lines of the fleet shape (the fields fleetwatch writes for a
window holding one value), 5,000 a request, from 1, 2 and 4 concurrent clients, with and without gzip. Each
configuration writes into a new database twice: first while the series are new to it, then as a later
boundary of the same series (the steady state). This is the floor under window end → visible at 100,000
series."""

from __future__ import annotations

import gzip
import threading
import time
import uuid

import urllib3

from bench.run import influxql
from bench.stack_credentials import influx_headers

URL = "http://127.0.0.1:8086"
POINTS = 100_000
PER_REQUEST = 5_000
http = urllib3.PoolManager(maxsize=8)


def boundary(ts_ns: int) -> list[bytes]:
    lines = []
    for i in range(POINTS):
        v = repr(20.0 + (i % 97) * 0.37)
        fields = f"count=1i,min={v},max={v},mean={v},sum={v},first={v},last={v},p50={v},p95={v},p99={v}"
        lines.append(f"readings_agg,device=d{i // 10},metric=m{i % 10},site=s{i % 100},window=10s {fields} {ts_ns}")
    return ["\n".join(lines[i : i + PER_REQUEST]).encode() for i in range(0, POINTS, PER_REQUEST)]


def write(db: str, bodies: list[bytes], clients: int, compress: bool) -> float:
    headers = influx_headers()
    if compress:
        bodies = [gzip.compress(b, 1) for b in bodies]
        headers["Content-Encoding"] = "gzip"
    pending = list(reversed(bodies))
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        while True:
            with lock:
                if not pending:
                    return
                body = pending.pop()
            response = http.request("POST", f"{URL}/write?db={db}&precision=ns", body=body, headers=headers)
            if response.status != 204:
                failures.append(f"{response.status}: {response.data[:200]!r}")

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"InfluxDB refused writes: {failures[0]}")
    return time.monotonic() - started


def main() -> None:
    start_ns = (time.time_ns() // 10**10 - 8640) * 10**10  # a day ago, on a 10 s boundary
    for compress in (True, False):
        for clients in (1, 2, 4):
            db = f"ingest{uuid.uuid4().hex[:8]}"
            influxql("", f'CREATE DATABASE "{db}"')
            try:
                for phase, offset in (("new series", 0), ("known series", 10**10)):
                    seconds = write(db, boundary(start_ns + offset), clients, compress)
                    print(
                        {"gzip": compress, "clients": clients, "phase": phase, "points_per_s": round(POINTS / seconds)},
                        flush=True,
                    )
            finally:
                influxql("", f'DROP DATABASE "{db}"')


if __name__ == "__main__":
    main()
