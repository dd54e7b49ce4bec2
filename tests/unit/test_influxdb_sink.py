"""What the InfluxDB sink says when the server refuses its credentials: the keys to check, never a secret."""

from __future__ import annotations

from pathlib import Path

from fleetwatch.config import InfluxDBConfig
from flows.sinks.influxdb import credentials_hint, line_time_ns


def test_a_refused_credential_names_the_keys_that_hold_it_and_not_the_secret() -> None:
    hints = {
        "no user": credentials_hint(InfluxDBConfig()),
        "file": credentials_hint(InfluxDBConfig(username="fw", password_file=Path("/run/secrets/pw"))),
        "inline": credentials_hint(InfluxDBConfig(username="fw", password="hunter2-secret")),  # type: ignore[arg-type]
        "no password": credentials_hint(InfluxDBConfig(username="fw")),
        "v2 no token": credentials_hint(InfluxDBConfig(api="v2")),
        "v2 token file": credentials_hint(InfluxDBConfig(api="v2", token_file=Path("/run/secrets/tok"))),
    }
    assert hints == {
        "no user": "the server asks for credentials: set influxdb.username and influxdb.password_file "
        "(or FLEETWATCH_INFLUXDB_USERNAME and FLEETWATCH_INFLUXDB_PASSWORD)",
        "file": "the server refused influxdb.username 'fw' with the password of influxdb.password_file "
        "(/run/secrets/pw)",
        "inline": "the server refused influxdb.username 'fw' with the password of influxdb.password "
        "(or FLEETWATCH_INFLUXDB_PASSWORD)",
        "no password": "the server refused influxdb.username 'fw' with no password: set influxdb.password_file",
        "v2 no token": "the server asks for a token: set influxdb.token_file (or FLEETWATCH_INFLUXDB_TOKEN)",
        "v2 token file": "the server refused the token of influxdb.token_file",
    }


def test_a_refused_line_is_dead_lettered_at_its_own_time() -> None:
    assert line_time_ns('m,device=a v=1.5,s="x y" 1767225600000000000') == 1_767_225_600_000_000_000
    assert line_time_ns("m v=-1i -5") == -5
    assert line_time_ns("m v=1i") == 0  # no timestamp: the fields end the line
    assert line_time_ns("m v=1i ²") == 0
