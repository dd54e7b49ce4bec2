"""The program as users install it (issue 10 §1): the wheel built from this checkout, installed with pip into a
fresh virtualenv outside the checkout, and run from another directory: its help, a config check, every module
importable, the Grafana files it pushes found, and a short run of readings into InfluxDB and log lines into
Elasticsearch against the local stack, counted exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import (
    ES_URL,
    INFLUX_AUTH_TOML,
    INFLUX_PASSWORD_FILE,
    INFLUX_URL,
    INFLUX_USER,
    MQTT_HOST,
    MQTT_PORT,
    PACKAGES,
    REPO,
    http,
    influx_rows,
)
from tests.integration.harness import crash_lines, log_tail

READINGS = 40
LOG_LINES = 25


@pytest.fixture(scope="module")
def installed(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a new virtualenv with the wheel (and its dependencies) installed, as the README's
    `pip install` does it (urllib3-future built from source so it does not replace urllib3)."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    assert not venv.resolve().is_relative_to(REPO)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-binary", "urllib3-future", str(built_wheel)],
        env={**os.environ, "URLLIB3_NO_OVERRIDE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return venv / "bin"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the checkout, with no fleetwatch sources in it."""
    work = tmp_path / "work"
    work.mkdir()
    return work


def run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH or the like from the test's environment: only the installed files may be found.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_help(installed: Path, elsewhere: Path) -> None:
    result = run([str(installed / "fleetwatch"), "--help"], elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    for command in ("run", "check-config", "simulate", "demo", "snapshot", "grafana"):
        assert command in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_version_is_the_installed_distribution(installed: Path, elsewhere: Path) -> None:
    result = run([str(installed / "fleetwatch"), "--version"], elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = run([str(installed / "pip"), "show", "fleetwatch"], elsewhere).stdout
    version = next(line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("Version:"))
    assert result.stdout.strip() == f"fleetwatch {version}"


def test_help_shows_config_sections_as_written(installed: Path, elsewhere: Path) -> None:
    # A config section in brackets is literal text in the help, not a style tag that vanishes.
    result = run([str(installed / "fleetwatch"), "retention", "--help"], elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "([retention])" in " ".join(result.stdout.split())


def test_the_demo_runs_in_an_empty_directory_with_the_installed_example(installed: Path, elsewhere: Path) -> None:
    # As the README's first command, without the checkout: the example config comes with the wheel, and the
    # demo makes the folder it writes to.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {
        "FLEETWATCH_INFLUXDB_USERNAME": INFLUX_USER,
        "FLEETWATCH_INFLUXDB_PASSWORD_FILE": str(INFLUX_PASSWORD_FILE),
    }
    result = subprocess.run(
        [str(installed / "fleetwatch"), "demo", "--duration", "6"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    pngs = sorted(p.name for p in (elsewhere / ".fleetwatch" / "snapshots").glob("*.png"))
    assert "fleetwatch-fleet.png" in pngs, pngs
    assert crash_lines((elsewhere / ".fleetwatch" / "demo-pipeline.log").read_text()) == []


def test_check_config_of_the_example(installed: Path, elsewhere: Path) -> None:
    result = run([str(installed / "fleetwatch"), "check-config", str(REPO / "fleetwatch.example.toml")], elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stderr and "alert rule(s)" in result.stderr, result.stderr


def test_every_module_imports_from_site_packages(installed: Path, elsewhere: Path) -> None:
    code = f"""
import importlib, json, pathlib, sys
out = {{}}
for top in {list(PACKAGES)!r}:
    root = pathlib.Path(importlib.import_module(top).__file__).parent
    for path in sorted(root.rglob("*.py")):
        if path.stem == "__main__":
            continue
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = importlib.import_module(name).__file__
print(json.dumps(out))
"""
    result = run([str(installed / "python"), "-c", code], elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    modules = json.loads(result.stdout)
    site = str(installed.parent / "lib")
    assert all(path.startswith(site) for path in modules.values()), modules
    for name in ("collectors.mqtt.source", "collectors.logs.tail", "collectors.syslog.source", "flows.alerts.engine"):
        assert name in modules
    assert "flows.sinks.influxdb" in modules and "dashboards.sync" in modules


def test_grafana_sync_finds_what_it_pushes(installed: Path, elsewhere: Path) -> None:
    code = """
import json
from dashboards import sync
found = sorted(p.name for p in sync.DATASOURCES_DIR.glob("*.yaml"))
uids = sorted(d["uid"] for d in sync.load_dashboards())
print(json.dumps({"dir": str(sync.DATASOURCES_DIR), "datasources": found, "dashboards": uids}))
"""
    result = run([str(installed / "python"), "-c", code], elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    assert found["dir"].startswith(str(installed.parent / "lib")), found
    assert found["datasources"] == ["fleetwatch.yaml"]
    assert len(found["dashboards"]) == len(list((REPO / "dashboards").glob("*.json")))


def es_count(index: str) -> int:
    http.request("POST", f"{ES_URL}/{index}/_refresh?ignore_unavailable=true&allow_no_indices=true")
    resp = http.request("GET", f"{ES_URL}/{index}/_count?ignore_unavailable=true&allow_no_indices=true")
    assert resp.status == 200, resp.data
    return int(json.loads(resp.data)["count"])


def test_a_short_run_stores_readings_and_log_lines(
    installed: Path, elsewhere: Path, unique: str, influx_db: str, es_index: str
) -> None:
    logs = elsewhere / "logs"
    logs.mkdir()
    with open(logs / "app.log", "w") as f:
        for i in range(LOG_LINES):
            f.write(json.dumps({"level": "info", "service": "api", "message": f"line {i}", "seq": i}) + "\n")
    # Relative paths on purpose: they are the working directory's, not the checkout's.
    config = elsewhere / "fleetwatch.toml"
    config.write_text(f"""
[mqtt]
host = "{MQTT_HOST}"
port = {MQTT_PORT}
client_id = "{unique}"
shared_group = "{unique}"

[[mqtt.subscriptions]]
topic = "{unique}/+/+"
qos = 1
template = "+/{{device}}/{{metric}}"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"
measurement = "{unique}"
write_raw = true

[flow]
epoch_interval = "300ms"

[recovery]
dir = "recovery"

[retention]
# These queries read the database's default policy: one policy for everything.
enabled = false

[influxdb]
{INFLUX_AUTH_TOML}
url = "{INFLUX_URL}"
database = "{unique}"
flush_interval = "100ms"

[elasticsearch]
hosts = ["{ES_URL}"]
index_prefix = "{unique}"
flush_interval = "100ms"

[[logs.files]]
name = "app"
paths = ["logs/*.log"]
parser = {{ kind = "json" }}

[dead_letters]
path = "dead.jsonl"
""")
    check = run([str(installed / "fleetwatch"), "check-config", "fleetwatch.toml"], elsewhere)
    assert check.returncode == 0, check.stdout + check.stderr
    status = elsewhere / "status.json"
    duration = 30
    with open(elsewhere / "pipeline.log", "wb") as log:
        proc = subprocess.Popen(
            [
                str(installed / "fleetwatch"),
                "run",
                "-c",
                "fleetwatch.toml",
                "--duration",
                str(duration),
                "--status-file",
                str(status),
            ],
            cwd=elsewhere,
            stdout=log,
            stderr=log,
        )
    started = time.monotonic()

    def counters() -> dict:
        try:
            return dict(json.loads(status.read_text()))
        except (OSError, ValueError):
            return {}

    def log_text() -> str:
        return (elsewhere / "pipeline.log").read_text(errors="replace")

    try:
        while counters().get("ready") is not True:
            assert proc.poll() is None, f"exited with {proc.returncode} before it was ready:\n{log_tail(log_text())}"
            assert time.monotonic() - started < duration - 10, f"not ready in time:\n{log_tail(log_text())}"
            time.sleep(0.05)
        pub = paho.Client(CallbackAPIVersion.VERSION2)
        pub.connect(MQTT_HOST, MQTT_PORT)
        pub.loop_start()
        now_ms = time.time_ns() // 1_000_000
        infos = [
            pub.publish(f"{unique}/d{i % 4}/temp", json.dumps({"ts": now_ms - i, "v": i}).encode(), qos=1)
            for i in range(READINGS)
        ]
        for info in infos:
            info.wait_for_publish(30)
        pub.disconnect()
        pub.loop_stop()
        assert time.monotonic() - started < duration - 3, "published too late to be read before the run ends"
        try:
            code = proc.wait(duration + 60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fleetwatch run --duration {duration} did not exit:\n{log_tail(log_text())}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log_text()
    assert code == 0, f"fleetwatch run --duration exited with {code}:\n{log_tail(text)}"
    assert crash_lines(text) == [], log_tail(text)
    final = counters()
    assert final.get("stopped") is True, final
    assert (final.get("messages_in"), final.get("log_events"), final.get("dead_letters")) == (READINGS, LOG_LINES, 0)
    # Stored, exactly: --duration ends with the sinks flushed.
    rows = influx_rows(unique, f'SELECT count("value") FROM "{unique}"')
    assert [r["count"] for r in rows] == [READINGS]
    assert es_count(f"{unique}-logs*") == LOG_LINES
    assert es_count(f"{unique}-dead-letters*") == 0
    # Everything it wrote is in its working directory.
    assert (elsewhere / "recovery").is_dir()
