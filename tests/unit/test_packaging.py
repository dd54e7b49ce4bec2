"""The wheel holds everything the installed program needs (issue 10 §1: a wheel that left out every subpackage
installed a `fleetwatch` that could not start). Built from the checkout, inspected here; installed and run in
tests/integration/test_installed.py."""

from __future__ import annotations

import ast
import configparser
import importlib
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest

from collectors.mqtt.source import MQTTSource
from fleetwatch.config import from_dict
from flows.windows import WindowLogic, WindowSpec
from tests.conftest import PACKAGES, REPO


@pytest.fixture(scope="module")
def wheel_files(built_wheel: Path) -> set[str]:
    with zipfile.ZipFile(built_wheel) as wheel:
        return set(wheel.namelist())


def source_files(pattern: str) -> set[str]:
    out = set()
    for name in PACKAGES:
        for path in (REPO / name).rglob(pattern):
            if "__pycache__" not in path.parts:
                out.add(path.relative_to(REPO).as_posix())
    return out


def test_every_package_directory_is_in_the_wheel(wheel_files: set[str]) -> None:
    packages = {p.removesuffix("/__init__.py") for p in source_files("__init__.py")}
    # Directories of modules without an __init__.py (collectors/mqtt) are packages too (namespace packages).
    packages |= {p.rsplit("/", 1)[0] for p in source_files("*.py")}
    assert {"collectors/mqtt", "collectors/logs", "collectors/syslog", "flows/alerts", "flows/sinks"} <= packages
    in_wheel = {p.rsplit("/", 1)[0] for p in wheel_files if p.endswith(".py")}
    assert packages - in_wheel == set(), "package directories missing from the wheel"


def test_every_module_is_in_the_wheel_and_nothing_else(wheel_files: set[str]) -> None:
    modules = source_files("*.py")
    shipped = {p for p in wheel_files if p.endswith(".py")}
    assert modules - shipped == set(), "modules missing from the wheel"
    assert shipped - modules == set(), "modules in the wheel that are not in the checkout's packages"
    assert not any(p.startswith(("tests/", "bench/")) for p in wheel_files)


def test_the_dashboards_and_grafana_provisioning_are_package_data(wheel_files: set[str]) -> None:
    dashboards = {p.relative_to(REPO).as_posix() for p in (REPO / "dashboards").glob("*.json")}
    assert len(dashboards) >= 5
    assert dashboards - wheel_files == set(), "dashboards missing from the wheel"
    grafana = REPO / "provisioning" / "grafana"
    provisioning = {f"dashboards/provisioning/{p.relative_to(grafana).as_posix()}" for p in grafana.rglob("*.yaml")}
    # What `fleetwatch grafana sync` reads (dashboards.sync.DATASOURCES_DIR), and the rest of Grafana's files.
    assert "dashboards/provisioning/datasources/fleetwatch.yaml" in provisioning
    assert provisioning - wheel_files == set(), "Grafana provisioning files missing from the wheel"


def test_the_link_that_ships_the_provisioning_files_points_at_them() -> None:
    link = REPO / "dashboards" / "provisioning"
    assert link.is_symlink() and link.resolve() == (REPO / "provisioning" / "grafana").resolve()


def test_the_console_script(built_wheel: Path, wheel_files: set[str]) -> None:
    (entry_points,) = [p for p in wheel_files if p.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(built_wheel) as wheel:
        parser = configparser.ConfigParser()
        parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"fleetwatch": "fleetwatch.cli:app"}


def compiled_modules() -> list[str]:
    """setup.py's COMPILED_MODULES, read without running setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    (listed,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILED_MODULES" for t in node.targets)
    ]
    return [ast.literal_eval(item) for item in listed.elts]  # type: ignore[attr-defined]


def test_the_hot_modules_are_compiled_in_the_wheel_and_their_source_ships_too(wheel_files: set[str]) -> None:
    modules = compiled_modules()
    assert {"flows/windows.py", "collectors/mqtt/parse.py"} <= set(modules)
    for module in modules:
        stem = module.removesuffix(".py")
        assert module in wheel_files
        assert [p for p in wheel_files if p.startswith(stem + ".cpython-") and p.endswith(".so")], module
    # mypyc's runtime for the group, at the wheel's top level.
    assert [p for p in wheel_files if p.startswith("fleetwatch_compiled__mypyc.") and p.endswith(".so")]


def test_the_installed_hot_modules_are_the_compiled_ones() -> None:
    # What the tests and benchmarks run: the import must pick the compiled module over the .py beside it.
    for module in compiled_modules():
        name = module.removesuffix(".py").replace("/", ".")
        file = importlib.import_module(name).__file__ or ""
        assert file.endswith(".so") and "site-packages" in file, (name, file)


def test_compiled_classes_that_extend_library_classes_answer_a_missing_attribute() -> None:
    # Compiled where mypy could not see Bytewax and paho, these classes had an Any base, and the first attribute
    # lookup that missed crashed the process (Bytewax's isinstance check of a source against a protocol does one).
    cfg = from_dict({"mqtt": {"subscriptions": [{"topic": "t/+/+", "template": "t/{device}/{metric}"}]}}, env={})
    source = MQTTSource(cfg.mqtt, 1, recovery_dir=None)
    logic = WindowLogic([WindowSpec.tumbling(timedelta(seconds=10))], timedelta(seconds=2), [], None)
    for obj in (source, logic):
        assert not hasattr(obj, "_no_such_attribute")
