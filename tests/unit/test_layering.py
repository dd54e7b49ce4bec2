"""The ground floor imports nothing above it.

``fleetwatch.config``, ``fleetwatch.config_base`` and ``fleetwatch.record`` are imported by every package, so
they (and the ``fleetwatch`` modules they import in turn) must not import ``collectors``, ``flows`` or
``dashboards``: not at the top, and not lazily inside a function or a validator either, which is where such
an import hides until a config with that key is loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import REPO

UPPER = ("collectors", "flows", "dashboards")
GROUND_FLOOR = ("fleetwatch.config", "fleetwatch.config_base", "fleetwatch.record")


def _module_path(module: str) -> Path:
    path = REPO / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, wherever the import statement is (functions and methods too), and every
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    found: list[tuple[int, str]] = []
    package = "fleetwatch"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the fleetwatch package
                found.append((node.lineno, f"{package}.{node.module or ''}".rstrip(".")))
            elif node.module:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _ground_floor() -> dict[str, list[tuple[int, str]]]:
    """The ground-floor modules and the fleetwatch modules they import, transitively, with their imports."""
    todo, seen = list(GROUND_FLOOR), {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        imports = _imports(_module_path(module))
        seen[module] = imports
        for _, name in imports:
            if name.split(".")[0] == "fleetwatch" and _module_path(name).exists():
                todo.append(name)
    return seen


def test_the_ground_floor_source_imports_nothing_above_it() -> None:
    modules = _ground_floor()
    assert set(GROUND_FLOOR) <= set(modules)
    offending = [
        f"{_module_path(module).relative_to(REPO)}:{line}: imports {name}"
        for module, imports in sorted(modules.items())
        for line, name in imports
        if name.split(".")[0] in UPPER
    ]
    assert offending == []


def test_the_scan_sees_an_import_hidden_in_a_function(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "import importlib\n"
        "def f():\n"
        "    from flows.windows import duration_label\n"
        "    return importlib.import_module('collectors.mqtt.topics')\n"
    )
    assert [name for _, name in _imports(path)] == ["importlib", "flows.windows", "collectors.mqtt.topics"]


def test_loading_a_full_config_in_a_fresh_interpreter_imports_nothing_above_the_ground_floor(tmp_path: Path) -> None:
    # Every section that has validators, alert rules of every target and a rules file included: validators
    # run only on the keys that are given, so the example config alone would not reach them all.
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nname = "from-file"\ntarget = "log_rate"\nstat = "errors"\nwarning = 5\n')
    config = tmp_path / "c.toml"
    config.write_text(
        (REPO / "fleetwatch.example.toml")
        .read_text(encoding="utf-8")
        .replace("[alerts]\n", f'[alerts]\nrules_file = "{rules}"\n', 1)
    )
    code = (
        "import json, sys\n"
        "import fleetwatch.config, fleetwatch.record, fleetwatch.config_base\n"
        f"cfg = fleetwatch.config.load({str(config)!r}, env={{}})\n"
        "assert cfg.mqtt.subscriptions and cfg.alerts.rules and cfg.alerts.rules_file\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{UPPER!r})))\n"
    )
    # Not from the checkout's directory: the child imports what the tests import (the installed package).
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_alert_rule_models_are_the_same_objects_in_flows() -> None:
    """flows.alerts.rules re-uses the ground floor's models: a rule validated by the config is the rule the
    engine evaluates."""
    from fleetwatch import alerts_config
    from flows.alerts import rules

    for name in ("AlertRule", "AlertsConfig", "WebhookConfig", "GrafanaAnnotationsConfig", "load_rules"):
        assert getattr(rules, name) is getattr(alerts_config, name)


@pytest.mark.parametrize(
    "delta",
    [
        timedelta(milliseconds=250),
        timedelta(seconds=1),
        timedelta(seconds=10),
        timedelta(seconds=60),
        timedelta(seconds=90),
        timedelta(minutes=5),
        timedelta(hours=1, minutes=30),
        timedelta(days=1),
        timedelta(days=1, seconds=1),
        timedelta(microseconds=1500),
        timedelta(0),
    ],
)
def test_window_labels_are_the_ones_the_windows_write(delta: timedelta) -> None:
    # The config checks a rule's window against the labels of the configured windows; the windows write
    # their own labels into InfluxDB. The two must agree, or a valid rule would watch nothing.
    from fleetwatch.labels import duration_label
    from flows import windows

    spec = windows.WindowSpec.tumbling(delta)
    assert duration_label(delta) == spec.label


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99, 0.999, 0.9999, 0.01, 0.125])
def test_quantile_fields_are_the_ones_the_schema_writes(q: float) -> None:
    from fleetwatch.labels import quantile_field
    from flows import schema
    from flows.windows import Aggregate

    line = schema.aggregate_line(
        Aggregate("m", "m,metric=t", "10s", 0, 1, 2, 1.0, 2.0, 1.5, 3.0, 1.0, 2.0, 0.7, ((q, 1.5),))
    )
    assert f",{quantile_field(q)}=1.5 " in line


def test_the_mqtt_parser_reads_topic_templates_with_the_class_the_config_validates_them_with() -> None:
    from collectors.mqtt.topics import TopicTemplate as Collector
    from fleetwatch.topic_template import TopicTemplate as Config

    assert Collector is Config
