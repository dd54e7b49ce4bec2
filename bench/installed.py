"""The program the benchmarks run: the installed ``fleetwatch`` next to this interpreter, as users run it (the wheel
``make venv`` builds from this checkout and installs, byte-compiled at install), never the checkout's modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

FLEETWATCH = Path(sys.executable).parent / "fleetwatch"

# A harness started with PYTHONPATH pointing at a checkout (to import ``bench`` from outside the repository) would
# pass it on to every program it starts, and the installed ``fleetwatch`` would then import the checkout's
# modules instead of the wheel's. Dropped here, before any benchmark starts a process: the harness itself has
# already imported what it needs.
os.environ.pop("PYTHONPATH", None)


def fleetwatch_command(*args: str) -> list[str]:
    if not FLEETWATCH.exists():
        raise SystemExit(f"{FLEETWATCH} is missing: install the wheel first (make venv)")
    return [str(FLEETWATCH), *args]
