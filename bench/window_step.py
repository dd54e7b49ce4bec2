"""The window step alone, outside Bytewax: what a reading costs at a given number of series.

``python -m bench.window_step`` drives one ``WindowLogic`` (the fleet shape of ``make bench``'s cardinality
ladder: 10 s + 1 min windows, quantiles 0.5/0.95/0.99, allowed lateness 2 s, the window state log on) with a
simulated clock: BENCH_STEP_RATE readings/s of simulated time for BENCH_STEP_SECONDS, round-robin over
BENCH_STEP_SERIES series, in batches of 1,000. The step turns every aggregate into its InfluxDB line, as in the
pipeline (ahead of the close, while the allowed lateness runs), and a snapshot is taken per simulated second, as
the pipeline's epoch does. Prints the CPU time per reading and per part.
No servers; the readings are built before the clock starts. It runs the installed wheel's modules (compiled, as
users run them) with the garbage collector tuned as ``fleetwatch run`` tunes it.
"""

from __future__ import annotations

import gc
import os
import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.installed import use_installed_modules

use_installed_modules()

from fleetwatch.record import Reading  # noqa: E402  (after use_installed_modules: the wheel's modules)
from fleetwatch.runner import GC_THRESHOLDS  # noqa: E402
from flows import schema  # noqa: E402
from flows import windows as windows_module  # noqa: E402
from flows.windows import WindowLogic, WindowSpec  # noqa: E402

SERIES = [int(s) for s in os.environ.get("BENCH_STEP_SERIES", "1000,100000").split(",")]
RATE = int(os.environ.get("BENCH_STEP_RATE", "60000"))
SECONDS = int(os.environ.get("BENCH_STEP_SECONDS", "30"))
BATCH = 1_000
S = 1_000_000_000


def run(series: int) -> dict[str, float]:
    keys = [f"readings,device=dev{i // 10},metric=m{i % 10},site=site{i % 100}" for i in range(series)]
    start_ns = (time.time_ns() // (60 * S) - 60 * 24) * 60 * S + 3 * S  # a day ago, 3 s past a minute
    clock = [start_ns]
    step = WindowLogic(
        [WindowSpec.tumbling(timedelta(seconds=10)), WindowSpec.tumbling(timedelta(minutes=1))],
        timedelta(seconds=2),
        (0.5, 0.95, 0.99),
        clock=lambda: clock[0],
        recovery_dir=Path(tempfile.mkdtemp(prefix="fw-window-step")),
        format_line=schema.aggregate_line,
    )
    rng = random.Random(1)
    total = RATE * SECONDS // BATCH
    batch_ns = BATCH * S // RATE
    batches = [
        [
            Reading("readings", keys[(b * BATCH + i) % series], rng.random() * 100, start_ns + b * batch_ns)
            for i in range(BATCH)
        ]
        for b in range(total)
    ]
    # The readings built here outlive the run, unlike the pipeline's: kept out of the collector's generations, they
    # would make each full collection walk 1.8 million tuples the pipeline never holds.
    gc.collect()
    gc.freeze()
    spent = {"on_batch": 0.0, "on_notify": 0.0, "snapshot": 0.0}
    aggregates = lines = 0
    next_epoch = start_ns + S
    for b, batch in enumerate(batches):
        clock[0] = start_ns + b * batch_ns
        t0 = time.process_time()
        results = list(step.on_batch([batch])[0])
        t1 = time.process_time()
        results += step.on_notify()[0]
        t2 = time.process_time()
        for result in results:
            aggregates += len(result.aggregates)
            lines += len(result.lines)
        spent["on_batch"] += t1 - t0
        spent["on_notify"] += t2 - t1
        if clock[0] >= next_epoch:
            t4 = time.process_time()
            step.snapshot()
            spent["snapshot"] += time.process_time() - t4
            next_epoch += S
    readings = total * BATCH
    cpu = sum(spent.values())
    return {
        "series": series,
        "readings": readings,
        "aggregates": aggregates,
        "lines": lines,
        "cpu_s": round(cpu, 2),
        "us_per_reading": round(cpu / readings * 1e6, 2),
        **{f"{part}_share": round(seconds / cpu, 3) for part, seconds in spent.items()},
    }


def main() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    print({"window_step_from": windows_module.__file__}, flush=True)
    for series in SERIES:
        print(run(series), flush=True)


if __name__ == "__main__":
    main()
