"""Running `fleetwatch run` as a separate process, the way users run it, and watching its progress."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO


class Counted:
    """Waiting on the progress counters that `fleetwatch run --status-file` writes."""

    def counters(self) -> dict:
        raise NotImplementedError

    def wait_for(self, key: str, value: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.counters().get(key, 0) < value:
            assert time.monotonic() < deadline, f"{key} stayed at {self.counters().get(key)} < {value}"
            time.sleep(0.1)


# Every pipeline process started, so a failed test does not leave one running (see conftest).
running: list[subprocess.Popen[bytes]] = []


def kill_leftovers() -> None:
    while running:
        proc = running.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class Pipeline(Counted):
    def __init__(self, config: Path, workers: int = 1, cluster: list[str] | None = None) -> None:
        """``cluster``: extra arguments (``-i``, ``-a``) for one process of a multi-process cluster."""
        self.status = config.parent / f"status-{time.monotonic_ns()}.json"
        self.log = open(config.parent / "pipeline.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetwatch",
                "run",
                "--config",
                str(config),
                "--workers",
                str(workers),
                "--status-file",
                str(self.status),
                *(cluster or []),
            ],
            cwd=REPO,
            stdout=self.log,
            stderr=self.log,
        )
        running.append(self.proc)
        # Subscribed (the broker holds messages for the session from then on) once progress is reported.
        deadline = time.monotonic() + 30
        while not self.status.exists():
            assert self.proc.poll() is None, "pipeline exited at start"
            assert time.monotonic() < deadline, "pipeline did not start"
            time.sleep(0.1)
        time.sleep(1.0)

    def counters(self) -> dict:
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        self.log.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()
