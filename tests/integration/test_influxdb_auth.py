"""fleetwatch against an InfluxDB 1.x that asks for credentials (the local stack's, see scripts/stack.sh).

A refused credential is a configuration error, not a store outage: at start and while running, `fleetwatch run`
stops with exit status 1 and a message naming the key that holds the credential, never the password itself, and
never retries it quietly. A user that is no admin (ALL privileges on one database, what a least-privilege
deployment gives fleetwatch) writes with ``create_database = false``; with the default it is told what to change."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import (
    INFLUX_AUTH_TOML,
    INFLUX_PASSWORD_FILE,
    INFLUX_URL,
    MQTT_HOST,
    MQTT_PORT,
    influx_rows,
    influxql,
)
from tests.integration.harness import FLEETWATCH, Pipeline, crash_lines, log_tail, wait_until
from tests.integration.test_readings_pipeline import Publisher


def write_config(tmp_path: Path, unique: str, db: str, credentials: str, extra: str = "") -> Path:
    path = tmp_path / "fleetwatch.toml"
    path.write_text(f"""
[mqtt]
host = "{MQTT_HOST}"
port = {MQTT_PORT}
client_id = "{unique}"
shared_group = "{unique}"

[[mqtt.subscriptions]]
topic = "fwauth/{unique}/+/+"
qos = 1
template = "fwauth/+/{{device}}/{{metric}}"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"
write_raw = true

[flow]
epoch_interval = "500ms"
health_interval = "1s"

[recovery]
dir = "{tmp_path / "recovery"}"

[retention]
# One policy for everything: a user that is no admin may not create the tiers' policies.
enabled = false

[influxdb]
url = "{INFLUX_URL}"
database = "{db}"
flush_interval = "100ms"
{credentials}
{extra}

[elasticsearch]
enabled = false

[dead_letters]
path = "{tmp_path / "dead.jsonl"}"
""")
    return path


def run_until_exit(config: Path, timeout: float = 90.0) -> tuple[int, str]:
    """`fleetwatch run` that is expected to stop by itself: its exit status and its output."""
    done = subprocess.run(
        [str(FLEETWATCH), "run", "--config", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def publish_readings(unique: str, device: str, count: int) -> None:
    pub = Publisher()
    now_ms = time.time_ns() // 1_000_000
    for i in range(count):
        pub.send(f"fwauth/{unique}/{device}/temp", json.dumps({"ts": now_ms - 1_000 * i, "v": float(i)}).encode())
    pub.close()


def raw_count(db: str) -> int:
    rows = influx_rows(db, 'SELECT count("value") FROM "readings"')
    return int(rows[0]["count"]) if rows else 0


WRONG_PASSWORD = "wrong-influx-password-5d1e"


@pytest.mark.parametrize("credentials", ["none", "wrong password"])
def test_refused_credentials_stop_the_pipeline_at_start_naming_the_key(
    tmp_path: Path, unique: str, influx_db: str, credentials: str
) -> None:
    password_file = tmp_path / "influxdb.password"
    password_file.write_text(WRONG_PASSWORD + "\n")
    lines = "" if credentials == "none" else f'username = "admin"\npassword_file = "{password_file}"'
    code, output = run_until_exit(write_config(tmp_path, unique, influx_db, lines))
    assert code == 1, log_tail(output)
    assert "HTTP 401" in output, log_tail(output)
    if credentials == "none":
        assert "the server asks for credentials: set influxdb.username and influxdb.password_file" in output
    else:
        assert f"refused influxdb.username 'admin' with the password of influxdb.password_file ({password_file})" in (
            output
        )
    assert "exiting with status 1" in output
    # A configuration error is one clear line, not a crash: no traceback, no panic; and no secret.
    assert [line for line in crash_lines(output) if "CRITICAL" not in line] == [], log_tail(output)
    assert WRONG_PASSWORD not in output
    assert INFLUX_PASSWORD_FILE.read_text().strip() not in output
    assert raw_count(influx_db) == 0


def test_a_user_that_is_no_admin_writes_and_a_password_changed_while_running_stops_the_pipeline(
    tmp_path: Path, unique: str, influx_db: str, influx_user: tuple[str, Path]
) -> None:
    user, password_file = influx_user
    old_password = password_file.read_text().strip()
    config = write_config(
        tmp_path,
        unique,
        influx_db,
        f'username = "{user}"\npassword_file = "{password_file}"',
        # The database exists (an admin made it); creating it is an admin's statement in InfluxDB 1.x.
        "create_database = false",
    )
    pipeline = Pipeline(config)
    publish_readings(unique, "d1", 20)
    assert wait_until(lambda: raw_count(influx_db) == 20, 30), raw_count(influx_db)

    # The credential is revoked while fleetwatch runs: the next write (health points, every second) is
    # refused, and the process stops instead of retrying a 401 forever.
    new_password = "changed-" + old_password
    influxql("", f"SET PASSWORD FOR \"{user}\" = '{new_password}'", "POST")
    code = pipeline.proc.wait(60)
    pipeline.finish()
    log = pipeline.log_text()
    assert code == 1, log_tail(log)
    assert "refused a write: HTTP 401" in log, log_tail(log)
    assert f"refused influxdb.username '{user}' with the password of influxdb.password_file ({password_file})" in log
    assert "exiting with status 1" in log
    assert [line for line in crash_lines(log) if "CRITICAL" not in line] == [], log_tail(log)
    assert old_password not in log and new_password not in log


def test_a_user_that_is_no_admin_is_told_to_turn_off_create_database(
    tmp_path: Path, unique: str, influx_db: str, influx_user: tuple[str, Path]
) -> None:
    user, password_file = influx_user
    config = write_config(tmp_path, unique, influx_db, f'username = "{user}"\npassword_file = "{password_file}"')
    code, output = run_until_exit(config)
    assert code == 1, log_tail(output)
    assert f'CREATE DATABASE "{influx_db}" refused: HTTP 403' in output, log_tail(output)
    assert "create it as an admin and set influxdb.create_database = false" in output
    assert password_file.read_text().strip() not in output


def test_the_stack_credentials_from_their_file_write_and_read(tmp_path: Path, unique: str, influx_db: str) -> None:
    """What every other pipeline test does, said once: the stack's credentials, read from the secrets file."""
    pipeline = Pipeline(write_config(tmp_path, unique, influx_db, INFLUX_AUTH_TOML))
    publish_readings(unique, "d2", 5)
    assert wait_until(lambda: raw_count(influx_db) == 5, 30), raw_count(influx_db)
    pipeline.stop()
    assert INFLUX_PASSWORD_FILE.read_text().strip() not in pipeline.log_text()
