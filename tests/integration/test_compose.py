"""docker-compose.yml renders with the real compose plugin, and what can be checked of the stack without a Docker
engine is checked.

`docker compose config` runs the docker compose v2 plugin that scripts/compose.sh builds from source (the first
run builds it: a few minutes; later runs reuse .stack/bin/docker-compose). Nothing is started: this machine has no
Docker engine, so images are neither pulled nor built, and the Dockerfile is only checked for what it copies."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dashboards import grafana_alerts
from fleetwatch import config as config_mod
from flows.alerts.rules import load_rules

REPO = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
SERVICES = {"mosquitto", "influxdb", "elasticsearch", "fleetwatch", "grafana", "simulator"}
# Variables docker compose interpolates: ${NAME}, ${NAME:-default}, ${NAME:?error}; $$ is a literal $.
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


def compose_variables() -> set[str]:
    return set(_VAR.findall(COMPOSE_FILE.read_text()))


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    """How to run the plugin: through the docker CLI with the project's DOCKER_CONFIG (scripts/compose.sh), or the
    plugin binary itself where there is no docker CLI. Builds the plugin when it is missing."""
    built = subprocess.run([str(REPO / "scripts" / "compose.sh"), "path"], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
            pytest.skip(f"no docker compose plugin and no Go toolchain to build it: {built.stderr.strip()}")
        pytest.fail(f"scripts/compose.sh path failed:\n{built.stderr}")
    plugin = built.stdout.strip().splitlines()[-1]
    return [str(REPO / "scripts" / "compose.sh")] if shutil.which("docker") else [plugin]


def run_compose(cmd: list[str], env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Only the env file may feed the interpolation: the variables are removed from the process environment.
    env = {k: v for k, v in os.environ.items() if k not in compose_variables()}
    return subprocess.run(
        [*cmd, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
        timeout=120,
    )


def rendered(cmd: list[str], env_file: Path, *profile: str) -> dict[str, Any]:
    result = run_compose(cmd, env_file, *profile, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    shutil.copy(ENV_EXAMPLE, path)
    return path


@pytest.mark.slow
def test_compose_config_validates(compose_cmd: list[str], env_file: Path) -> None:
    config = rendered(compose_cmd, env_file, "--profile", "demo")
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, how in service.get("depends_on", {}).items():
            assert how["condition"] == "service_healthy", (name, dependency)
    assert services["simulator"]["profiles"] == ["demo"]
    assert set(services["fleetwatch"]["depends_on"]) == {"mosquitto", "influxdb", "elasticsearch"}
    assert set(services["grafana"]["depends_on"]) == {"influxdb", "elasticsearch"}
    assert services["grafana"]["image"] == "grafana/grafana:11.6.0"
    assert services["elasticsearch"]["image"].endswith(":8.19.21")
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"

    # Secrets come from the env file.
    example = env_example()
    assert services["fleetwatch"]["environment"]["FLEETWATCH_INFLUXDB_TOKEN"] == example["INFLUXDB_TOKEN"]
    assert services["grafana"]["environment"]["ELASTIC_PASSWORD"] == example["ELASTIC_PASSWORD"]
    assert services["simulator"]["environment"]["FLEETWATCH_MQTT_USERNAME"] == "device"
    # Named volumes only for data (bind mounts are the repository's config files).
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert volume.get("read_only"), (name, volume)
                assert Path(volume["source"]).exists(), (name, volume["source"])
            else:
                assert volume["type"] == "volume" and volume["source"] in config["volumes"], (name, volume)


@pytest.mark.slow
def test_simulator_only_in_the_demo_profile(compose_cmd: list[str], env_file: Path) -> None:
    assert set(rendered(compose_cmd, env_file)["services"]) == SERVICES - {"simulator"}


@pytest.mark.slow
def test_missing_secret_is_refused(compose_cmd: list[str], tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env_example().items() if k != "ELASTIC_PASSWORD"))
    result = run_compose(compose_cmd, env_file, "config", "--quiet")
    assert result.returncode != 0
    assert "set ELASTIC_PASSWORD in .env" in result.stderr


@pytest.mark.slow
def test_pipeline_healthcheck_reads_the_status_file(compose_cmd: list[str], env_file: Path, tmp_path: Path) -> None:
    test = rendered(compose_cmd, env_file)["services"]["fleetwatch"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    status = tmp_path / "status.json"
    code = test[3].replace("/tmp/status.json", str(status))

    def health(**fields: Any) -> int:
        status.write_text(json.dumps(fields))
        return subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode

    assert health(time=time.time(), messages_in=3) == 0
    assert health(time=time.time() - 31) == 1  # not rewritten for 30 s: the pipeline is stuck
    assert health(time=time.time(), stopped=True) == 1
    status.unlink()
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode == 1


# ------------------------------------------------------------------------------------------- no plugin needed


def test_env_example_has_every_variable() -> None:
    missing = compose_variables() - set(env_example())
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_dockerfile_copies_what_exists() -> None:
    # `docker build` needs an engine; the sources the Dockerfile copies are what can be checked here.
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources = line.split()[1:-1]
            for source in sources:
                assert (REPO / source).exists(), line
    package = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = {line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert set(package) <= copied, "the image must contain every package pyproject installs"


def test_docker_config_is_valid_and_has_the_example_rules() -> None:
    docker = config_mod.load(REPO / "provisioning" / "fleetwatch" / "docker.toml", env={})
    example = config_mod.load(grafana_alerts.EXAMPLE_CONFIG, env={})
    assert docker.influxdb.api == "v2" and docker.influxdb.url == "http://influxdb:8086"
    assert docker.elasticsearch.hosts == ["http://elasticsearch:9200"] and docker.elasticsearch.username == "elastic"
    assert docker.mqtt.host == "mosquitto"
    # The Grafana rules are generated from the example config: the stack runs the same ones in the stream.
    assert load_rules(docker.alerts) == load_rules(example.alerts)
    assert docker.windows == example.windows and docker.logs.rate_window == example.logs.rate_window
