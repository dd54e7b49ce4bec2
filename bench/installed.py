"""The program the benchmarks run: the installed ``fleetwatch`` next to this interpreter, as users run it (the wheel
``make venv`` builds from this checkout and installs, byte-compiled at install), never the checkout's modules."""

from __future__ import annotations

import sys
from pathlib import Path

FLEETWATCH = Path(sys.executable).parent / "fleetwatch"


def fleetwatch_command(*args: str) -> list[str]:
    if not FLEETWATCH.exists():
        raise SystemExit(f"{FLEETWATCH} is missing: install the wheel first (make venv)")
    return [str(FLEETWATCH), *args]
