"""A short seeded round of the chaos run (bench/chaos.py, `make chaos`): readings, log lines, syslog, bad inputs
and alert anomalies through the installed `fleetwatch run` while it is killed -9 and restarted, paused with
SIGSTOP, and the broker, InfluxDB and Elasticsearch are restarted or stopped, and the log file is rotated in
bursts by rename and by copytruncate. Then everything must be counted exactly: no reading, line, dead letter or
notification missing or twice. The run restarts the local stack's servers: nothing else may use them meanwhile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

MINUTES = float(os.environ.get("FLEETWATCH_CHAOS_TEST_MINUTES", "3"))
SEED = int(os.environ.get("FLEETWATCH_CHAOS_TEST_SEED", "20261202"))
KINDS = {"kill", "sigstop", "broker", "influxdb", "elasticsearch", "rotate_rename", "rotate_copytruncate"}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_seeded_round_of_faults_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    # bench/ is a tool of the checkout, run as such; it starts the installed `fleetwatch` next to this interpreter.
    run = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--seed", str(SEED), "--minutes", str(MINUTES), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
    assert out.exists(), f"no summary (exit {run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    summary = json.loads(out.read_text())
    assert summary["discrepancies"] == {}, json.dumps(summary, indent=1)[:6000]
    assert summary["drained_in_time"], summary
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    # Every kind of fault happened, and the load was there to be hurt by it.
    assert set(summary["faults"]) == KINDS, summary["faults"]
    assert summary["pipeline_starts"] == 1 + summary["faults"]["kill"]
    published = summary["published"]
    assert published["readings"] > 10_000 and published["log_lines"] > 3_000 and published["syslog_lines"] > 1_000
    assert published["bad_inputs"] >= 20 and published["notifications_expected"] >= 20
    assert summary["stored"]["readings_in_10s_aggregates"] == published["readings"]
