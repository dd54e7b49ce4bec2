"""The alert step alone, outside Bytewax: what a reading costs a rule on every reading at a given number of series.

``python -m bench.alert_step`` drives one ``AlertLogic`` with a threshold rule on every reading (never crossed, as
the fleet rules of ``bench/alerts.py``) and the alert state log on, with a simulated clock. Each batch of readings
goes through ``watched_readings`` (the series some rule watches, as a pipeline of several workers looks them up
before the alert step; with one worker the step's own lookup is the only one) and the logic's ``on_batch``, timed
together as "on_batch". BENCH_ALERT_STEP_RATE
readings/s of simulated time for BENCH_ALERT_STEP_SECONDS, round-robin over BENCH_ALERT_STEP_SERIES series, in
batches of 1,000, after one reading per series (the states exist, as in a running pipeline). A snapshot is taken
per simulated second, as the pipeline's epoch does. Prints the CPU time per reading, for the batches and for the
snapshots. No servers; the installed wheel's modules (compiled, as users run them), with the garbage collector
tuned as ``fleetwatch run`` tunes it.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path

from bench.installed import use_installed_modules

use_installed_modules()

from fleetwatch.alerts_config import AlertRule  # noqa: E402  (after use_installed_modules: the wheel's modules)
from fleetwatch.record import Reading  # noqa: E402
from fleetwatch.runner import GC_THRESHOLDS  # noqa: E402
from flows.alerts import engine  # noqa: E402
from flows.alerts.engine import AlertLogic, watched_readings  # noqa: E402
from flows.alerts.rules import RuleMatcher  # noqa: E402

SERIES = [int(s) for s in os.environ.get("BENCH_ALERT_STEP_SERIES", "1000,100000").split(",")]
RATE = int(os.environ.get("BENCH_ALERT_STEP_RATE", "200000"))
SECONDS = int(os.environ.get("BENCH_ALERT_STEP_SECONDS", "10"))
BATCH = 1_000
S = 1_000_000_000


def run(series: int) -> dict[str, float]:
    keys = [f"readings,device=dev{i // 10},metric=m{i % 10},site=site{i % 100}" for i in range(series)]
    rule = AlertRule.model_validate({"name": "fleet_reading", "target": "reading", "condition": ">", "warning": 1e12})
    matcher = RuleMatcher([rule])
    start_ns = time.time_ns()
    clock = [start_ns]
    logic = AlertLogic(
        matcher, clock=lambda: clock[0], recovery_dir=Path(tempfile.mkdtemp(prefix="fw-alert-step")), step_id="alerts"
    )

    def step(readings: list[Reading]) -> None:
        watched = watched_readings(readings, matcher)
        logic.on_batch([watched] if watched is not None else [])

    for first in range(0, series, BATCH):
        step([Reading("readings", key, 1.0, start_ns) for key in keys[first : first + BATCH]])
    logic.snapshot()
    spent = {"on_batch": 0.0, "snapshot": 0.0}
    total = RATE * SECONDS // BATCH
    next_epoch = start_ns + S
    n = 0
    for b in range(total):
        ts = start_ns + 1 + b * BATCH * S // RATE
        clock[0] = ts
        batch = [Reading("readings", keys[(n + i) % series], 1.0, ts) for i in range(BATCH)]
        n += BATCH
        t0 = time.process_time()
        step(batch)
        spent["on_batch"] += time.process_time() - t0
        if ts >= next_epoch:
            t0 = time.process_time()
            logic.snapshot()
            spent["snapshot"] += time.process_time() - t0
            next_epoch += S
    readings = total * BATCH
    return {
        "series": series,
        "readings": readings,
        "us_per_reading": round(sum(spent.values()) / readings * 1e6, 3),
        **{f"{part}_us": round(seconds / readings * 1e6, 3) for part, seconds in spent.items()},
    }


def main() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    print({"alert_step_from": engine.__file__}, flush=True)
    for series in SERIES:
        print(run(series), flush=True)


if __name__ == "__main__":
    main()
