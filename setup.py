"""The wheel's compiled modules: the per-reading hot path, compiled with mypyc.

Everything else about the package is in pyproject.toml. The modules below run once or more for every reading
(read, parse, window, aggregate, alert rules, line protocol); compiled from the same typed source, they cost about
30 % less CPU per message at 100,000 series (BENCHMARKS.md, run W). The .py files ship beside the compiled ones,
and Python imports the compiled one.

``FLEETWATCH_PURE_PYTHON=1`` builds a pure-Python wheel instead (for a platform without a C compiler): the same
behaviour, slower. Without it a failed compilation fails the build, so a slow wheel is never built by accident.
"""

from __future__ import annotations

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


def compiled_extensions() -> list[Extension]:
    if os.environ.get("FLEETWATCH_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    # The build environment holds mypy and setuptools only: the libraries these modules import (Bytewax, paho)
    # are typed Any there, as they are where their stubs are partial. The project's mypy settings (strict, for
    # `make lint`) are not the compiler's business: --config-file= leaves them out.
    return mypycify(
        ["--config-file=", "--ignore-missing-imports", "--python-version=3.11", *COMPILED_MODULES],
        group_name="fleetwatch_compiled",
    )


setup(ext_modules=compiled_extensions())
