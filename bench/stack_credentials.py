"""The local stack's InfluxDB credentials, as scripts/stack.sh keeps them: the admin's password is generated into
the stack's secrets on first start. Benchmarks give them to every client that talks to InfluxDB (fleetwatch's
config, the InfluxQL queries that count what landed, Telegraf, Node-RED), never inline in a config file."""

from __future__ import annotations

import os
from pathlib import Path

import urllib3

REPO = Path(__file__).resolve().parent.parent
STACK_DIR = Path(os.environ.get("FLEETWATCH_STACK_DIR", REPO / ".stack"))
INFLUX_USER = "admin"
INFLUX_PASSWORD_FILE = STACK_DIR / "secrets" / f"influxdb-{INFLUX_USER}.password"
# The [influxdb] lines of a fleetwatch config: the password stays in its file.
INFLUX_AUTH_TOML = f'username = "{INFLUX_USER}"\npassword_file = "{INFLUX_PASSWORD_FILE}"'


def influx_password() -> str:
    return INFLUX_PASSWORD_FILE.read_text().strip()


def influx_headers() -> dict[str, str]:
    return urllib3.make_headers(basic_auth=f"{INFLUX_USER}:{influx_password()}")
