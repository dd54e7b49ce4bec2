"""The wheel's compiled modules: the per-reading hot path, compiled with mypyc.

Everything else about the package is in pyproject.toml. The modules below run once or more for every reading
(read, parse, window, aggregate, alert rules, line protocol); compiled from the same typed source, they cost about
30 % less CPU per message at 100,000 series (BENCHMARKS.md, run W). The .py files ship beside the compiled ones,
and Python imports the compiled one.

``FLEETWATCH_PURE_PYTHON=1`` builds a pure-Python wheel instead (for a platform without a C compiler): the same
behaviour, slower. Without it a failed compilation fails the build, so a slow wheel is never built by accident.
"""

from __future__ import annotations

import importlib.util
import os

from setuptools import Extension, setup

COMPILED_MODULES = [
    "collectors/mqtt/frames.py",
    "collectors/mqtt/parse.py",
    "collectors/mqtt/source.py",
    "flows/alerts/engine.py",
    "flows/alerts/rules.py",
    "flows/schema.py",
    "flows/windows.py",
]

# The libraries whose classes compiled classes extend.
_TYPED_BASES = ["bytewax", "paho.mqtt"]


def compiled_extensions() -> list[Extension]:
    if os.environ.get("FLEETWATCH_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    # The compiled classes extend Bytewax's and paho's (WindowLogic, AlertLogic, MQTTSource, the MQTT client).
    # Where mypy cannot find those libraries their bases are Any, and mypyc then builds classes that crash the
    # process (a segmentation fault at the first attribute lookup that misses). pyproject.toml's build
    # requirements bring them; a build that lacks them stops here instead of shipping such a wheel.
    missing = [name for name in _TYPED_BASES if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"setup.py: cannot compile without {', '.join(missing)} in the build environment (pyproject.toml "
            "[build-system] requires them); FLEETWATCH_PURE_PYTHON=1 builds the pure-Python wheel"
        )
    # The project's mypy settings (strict, for `make lint`) are not the compiler's business: --config-file= leaves
    # them out.
    return mypycify(
        ["--config-file=", "--ignore-missing-imports", "--python-version=3.11", *COMPILED_MODULES],
        group_name="fleetwatch_compiled",
    )


setup(ext_modules=compiled_extensions())
