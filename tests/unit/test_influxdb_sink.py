"""What the InfluxDB sink says when the server refuses its credentials (the keys to check, never a secret), and when
it compresses its requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetwatch import config
from fleetwatch.config import InfluxDBConfig
from flows.sinks.influxdb import V1Writer, WriteError, credentials_hint, line_time_ns


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


def test_gzip_auto_compresses_only_when_influxdb_is_not_on_loopback(tmp_path: Path) -> None:
    compresses = {
        url: InfluxDBConfig(url=url).compresses()
        for url in (
            "http://127.0.0.1:8086",
            "http://127.0.0.2:8086",
            "http://localhost:8086",
            "http://[::1]:8086",
            "http://influxdb:8086",
            "https://eu-central-1-1.aws.cloud2.influxdata.com",
            "http://10.0.0.7:8086",
        )
    }
    assert compresses == {
        "http://127.0.0.1:8086": False,
        "http://127.0.0.2:8086": False,
        "http://localhost:8086": False,
        "http://[::1]:8086": False,
        "http://influxdb:8086": True,
        "https://eu-central-1-1.aws.cloud2.influxdata.com": True,
        "http://10.0.0.7:8086": True,
    }
    # Set explicitly, it holds whatever the host.
    assert InfluxDBConfig(url="http://127.0.0.1:8086", gzip=True).compresses()
    assert not InfluxDBConfig(url="http://influxdb:8086", gzip=False).compresses()
    # The request header follows.
    assert V1Writer(InfluxDBConfig(url="http://influxdb:8086"))._headers.get("Content-Encoding") == "gzip"
    assert "Content-Encoding" not in V1Writer(InfluxDBConfig())._headers
    # Anything else is refused at start, by key.
    path = tmp_path / "fleetwatch.toml"
    path.write_text('[influxdb]\ngzip = "sometimes"\n')
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env={})
    assert err.value.problems == ["influxdb.gzip: expected true, false or \"auto\" (got 'sometimes')"]


def test_a_store_that_cannot_be_reached_is_named_without_the_password_in_its_url() -> None:
    writer = V1Writer(InfluxDBConfig(url="http://admin:pw-in-url-3@127.0.0.1:1"))
    with pytest.raises(WriteError) as err:
        writer.prepare()
    assert "InfluxDB unreachable at http://127.0.0.1:1:" in str(err.value)
    assert "pw-in-url" not in str(err.value)
