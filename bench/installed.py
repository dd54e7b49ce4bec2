"""The program the benchmarks run: the installed ``fleetwatch`` next to this interpreter, as users run it (the wheel
``make venv`` builds from this checkout and installs, byte-compiled at install), never the checkout's modules."""

from __future__ import annotations

import importlib.util
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


# The product's packages, as the wheel installs them (the per-reading modules compiled by mypyc).
PRODUCT_PACKAGES = ("collectors", "fleetwatch", "flows")


def use_installed_modules() -> None:
    """Make this process import the product's packages from the installed wheel, never from the checkout.

    ``python -m bench.<name>`` from the repository root puts the checkout first on ``sys.path``, and a benchmark
    that runs fleetwatch's modules in its own process would then time the checkout's pure-Python source instead
    of the compiled modules users run: at 100,000 series the window step took 4.7 µs a reading from the checkout
    and 3.1 from the wheel. Call it before importing any of those packages; ``bench`` itself stays importable
    (its modules are found through the package, not ``sys.path``)."""
    checkout = Path(__file__).resolve().parent.parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or os.curdir).resolve() != checkout]
    for name in PRODUCT_PACKAGES:
        if name in sys.modules:
            raise SystemExit(f"bench: {name} was imported before use_installed_modules()")
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SystemExit(f"bench: {name} is not installed next to {sys.executable}: install the wheel (make venv)")
        if Path(spec.origin).resolve().parent.parent == checkout:
            raise SystemExit(f"bench: {name} would be imported from the checkout ({spec.origin}), not the wheel")
