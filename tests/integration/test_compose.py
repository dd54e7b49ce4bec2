"""docker-compose.yml renders with the real compose plugin, and what can be checked of the stack without a Docker
engine is checked.

`docker compose config` runs the docker compose v2 plugin that scripts/compose.sh builds from source (the first
run builds it: a few minutes; later runs reuse .stack/bin/docker-compose). Nothing is started: this machine has no
Docker engine, so images are neither pulled nor built, and the Dockerfile is only checked for what it copies. The
shell scripts the one-shot services run are run here, on this machine's shell, against files and a small local
HTTP server standing in for the paths and the server they would find in their containers."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dashboards import grafana_alerts
from fleetwatch import config as config_mod
from flows.alerts.rules import load_rules

REPO = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_SH = REPO / "scripts" / "compose.sh"
ENV_EXAMPLE = REPO / ".env.example"
LONG_RUNNING = {"mosquitto", "influxdb", "elasticsearch", "fleetwatch", "grafana"}
ONE_SHOT = {"file-permissions", "elasticsearch-setup"}
DEMO = {"simulator", "log-simulator"}
SERVICES = LONG_RUNNING | ONE_SHOT | DEMO
# What runs as which user inside its container (the files it mounts must be readable by it).
CONTAINER_USERS = {"mosquitto": 1883, "grafana": 472, "fleetwatch": 10001, "simulator": 10001, "log-simulator": 10001}
# Variables docker compose interpolates: ${NAME}, ${NAME:-default}, ${NAME:?error}; $$ is a literal $.
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
# An exact release: x.y.z (no floating tag such as 2, 2.7 or latest).
_EXACT_TAG = re.compile(r":\d+\.\d+\.\d+$")


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
def docker_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A docker configuration folder of the test's own, so that running scripts/compose.sh here never links a plugin
    into the real ~/.docker of whoever runs the tests."""
    return tmp_path_factory.mktemp("docker-config")


@pytest.fixture(scope="module")
def compose_cmd(docker_config: Path) -> list[str]:
    """scripts/compose.sh, which runs the pinned compose binary. Builds the plugin when it is missing."""
    env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
    built = subprocess.run([str(COMPOSE_SH), "path"], capture_output=True, text=True, check=False, env=env)
    if built.returncode != 0:
        if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
            pytest.skip(f"no docker compose plugin and no Go toolchain to build it: {built.stderr.strip()}")
        pytest.fail(f"scripts/compose.sh path failed:\n{built.stderr}")
    return [str(COMPOSE_SH)]


def run_compose(cmd: list[str], env_file: Path, *args: str, docker_config: Path) -> subprocess.CompletedProcess[str]:
    # Only the env file may feed the interpolation: the variables are removed from the process environment.
    env = {k: v for k, v in os.environ.items() if k not in compose_variables()}
    env["DOCKER_CONFIG"] = str(docker_config)
    return subprocess.run(
        [*cmd, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
        timeout=120,
    )


@pytest.fixture
def render(compose_cmd: list[str], env_file: Path, docker_config: Path) -> Any:
    def rendered(*profile: str, env: Path = env_file) -> dict[str, Any]:
        result = run_compose(compose_cmd, env, *profile, "config", "--format", "json", docker_config=docker_config)
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    return rendered


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    shutil.copy(ENV_EXAMPLE, path)
    return path


def shell_script(service: dict[str, Any]) -> str:
    """The script a service runs with `sh -c`, as its shell will see it (compose writes $ as $$ in its output)."""
    (script,) = service["command"]
    return str(script).replace("$$", "$")


def seconds(duration: str) -> float:
    """A compose duration as `docker compose config` writes it: 1m15s, 90s, 1h."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


@pytest.mark.slow
def test_compose_config_validates(render: Any) -> None:
    config = render("--profile", "demo")
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
        else:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, how in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert how["condition"] == wanted, (name, dependency)
    assert services["simulator"]["profiles"] == ["demo"] and services["log-simulator"]["profiles"] == ["demo"]
    assert set(services["fleetwatch"]["depends_on"]) == {
        "file-permissions",
        "mosquitto",
        "influxdb",
        "elasticsearch",
        "elasticsearch-setup",
    }
    assert set(services["grafana"]["depends_on"]) == {
        "file-permissions",
        "influxdb",
        "elasticsearch",
        "elasticsearch-setup",
    }
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"

    # Secrets come from the env file.
    example = env_example()
    assert services["fleetwatch"]["environment"]["FLEETWATCH_INFLUXDB_TOKEN"] == example["INFLUXDB_TOKEN"]
    assert services["simulator"]["environment"]["FLEETWATCH_MQTT_USERNAME"] == "device"
    # Named volumes only for data (bind mounts are the repository's config files, read-only except for the one
    # service that makes them readable).
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert volume.get("read_only") or name == "file-permissions", (name, volume)
                assert Path(volume["source"]).exists(), (name, volume["source"])
            else:
                assert volume["type"] == "volume" and volume["source"] in config["volumes"], (name, volume)


@pytest.mark.slow
def test_images_are_exact_patched_releases(render: Any) -> None:
    services = render("--profile", "demo")["services"]
    images = {name: s["image"] for name, s in services.items() if "build" not in s}
    for name, image in images.items():
        assert _EXACT_TAG.search(image), f"{name}: {image} is not pinned to an exact release"
    assert images["mosquitto"] == "eclipse-mosquitto:2.0.22"
    assert images["influxdb"] == "influxdb:2.8.0"  # 2.7 is unmaintained
    assert images["elasticsearch"] == "docker.elastic.co/elasticsearch/elasticsearch:8.19.21"
    assert images["grafana"] == "grafana/grafana:11.6.16"
    # The one-shot services reuse images the stack pulls anyway.
    assert images["file-permissions"] == images["mosquitto"]
    assert images["elasticsearch-setup"] == images["elasticsearch"]


@pytest.mark.slow
def test_ports_are_published_on_loopback_unless_asked_otherwise(render: Any, env_file: Path, tmp_path: Path) -> None:
    published = {
        (name, port["target"]): port.get("host_ip")
        for name, service in render()["services"].items()
        for port in service.get("ports", [])
    }
    assert set(published) == {
        ("mosquitto", 1883),
        ("influxdb", 8086),
        ("elasticsearch", 9200),
        ("grafana", 3000),
        ("fleetwatch", 5514),
    }
    assert set(published.values()) == {"127.0.0.1"}
    # Without FLEETWATCH_BIND in .env the default is loopback too; with it, the address given.
    lines = [line for line in env_file.read_text().splitlines() if not line.startswith("FLEETWATCH_BIND=")]
    unset = tmp_path / "unset.env"
    unset.write_text("\n".join(lines) + "\n")
    ports = [p for s in render(env=unset)["services"].values() for p in s.get("ports", [])]
    assert {p.get("host_ip") for p in ports} == {"127.0.0.1"}
    other = tmp_path / "other.env"
    other.write_text("\n".join([*lines, "FLEETWATCH_BIND=192.0.2.10"]) + "\n")
    ports = [p for s in render(env=other)["services"].values() for p in s.get("ports", [])]
    assert {p.get("host_ip") for p in ports} == {"192.0.2.10"}


@pytest.mark.slow
def test_the_pipeline_and_grafana_do_not_use_the_elasticsearch_superuser(render: Any) -> None:
    services = render("--profile", "demo")["services"]
    example = env_example()
    # The pipeline logs in as "fleetwatch" (docker.toml) with its own password; Grafana as "grafana".
    pipeline_env = services["fleetwatch"]["environment"]
    assert pipeline_env["FLEETWATCH_ELASTICSEARCH_PASSWORD"] == example["ES_FLEETWATCH_PASSWORD"]
    docker = config_mod.load(REPO / "provisioning" / "fleetwatch" / "docker.toml", env={})
    assert docker.elasticsearch.username == "fleetwatch"
    grafana_env = services["grafana"]["environment"]
    assert (grafana_env["ELASTICSEARCH_USER"], grafana_env["ELASTICSEARCH_PASSWORD"]) == (
        "grafana",
        example["ES_GRAFANA_PASSWORD"],
    )
    passwords = {example["ELASTIC_PASSWORD"], example["ES_FLEETWATCH_PASSWORD"], example["ES_GRAFANA_PASSWORD"]}
    assert len(passwords) == 3
    for name in ("fleetwatch", "grafana", "simulator", "log-simulator"):
        env = services[name].get("environment", {})
        assert example["ELASTIC_PASSWORD"] not in env.values(), f"{name} gets the elastic password"
    datasources = (REPO / "provisioning/grafana/datasources/fleetwatch.yaml").read_text()
    assert "basicAuthUser: elastic" not in datasources and "${ELASTIC_PASSWORD}" not in datasources
    assert datasources.count("basicAuthUser: ${ELASTICSEARCH_USER}") == 3


class _Recorder(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, str | None, Any]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests.append((self.command, self.path, self.headers.get("Authorization"), json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"created": true}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.slow
def test_elasticsearch_setup_creates_least_privilege_roles_and_users(render: Any, recorder: str) -> None:
    """The setup script, run by bash as in its container, against a local server that records what it is sent
    (the local Elasticsearch runs without security, so it has no security API): the roles give the pipeline
    write and manage on fleetwatch-* and Grafana read only, and passwords with quotes and backslashes survive."""
    service = render()["services"]["elasticsearch-setup"]
    assert {k: v["condition"] for k, v in service["depends_on"].items()} == {"elasticsearch": "service_healthy"}
    script = shell_script(service).replace("http://elasticsearch:9200", recorder)
    awkward = 'p"a\\ss $word'
    env = {**os.environ, "ELASTIC_PASSWORD": "root-pw", "ES_FLEETWATCH_PASSWORD": awkward, "ES_GRAFANA_PASSWORD": "g"}
    result = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    sent = {path: body for _method, path, _auth, body in _Recorder.requests}
    assert all(auth and auth.startswith("Basic ") for _m, _p, auth, _b in _Recorder.requests)
    writer, reader = sent["/_security/role/fleetwatch_writer"], sent["/_security/role/fleetwatch_reader"]
    assert set(writer["cluster"]) == {"monitor", "manage_index_templates"}
    assert writer["indices"] == [
        {
            "names": ["fleetwatch-*"],
            "privileges": ["create_index", "create_doc", "write", "manage", "view_index_metadata"],
        }
    ]
    assert reader == {
        "cluster": ["monitor"],
        "indices": [{"names": ["fleetwatch-*"], "privileges": ["read", "view_index_metadata"]}],
    }
    assert sent["/_security/user/fleetwatch"] == {"password": awkward, "roles": ["fleetwatch_writer"]}
    assert sent["/_security/user/grafana"] == {"password": "g", "roles": ["fleetwatch_reader"]}
    # The pipeline's prefix is the one the roles cover.
    docker = config_mod.load(REPO / "provisioning" / "fleetwatch" / "docker.toml", env={})
    assert f"{docker.elasticsearch.index_prefix}-*" == "fleetwatch-*"


@pytest.mark.slow
def test_mounted_files_are_made_readable_whatever_the_umask(render: Any, tmp_path: Path) -> None:
    """Every file a service mounts from the repository is made readable by file-permissions before the service
    starts. Its script is run here on copies made under umask 077, as a strict checkout leaves them."""
    services = render("--profile", "demo")["services"]
    fixer = services["file-permissions"]
    fixed_roots = {Path(v["source"]): v["target"] for v in fixer["volumes"] if v["type"] == "bind"}
    script = shell_script(fixer)
    for name, service in services.items():
        binds = [v for v in service.get("volumes", []) if v["type"] == "bind"]
        if not binds or name == "file-permissions":
            continue
        assert name in CONTAINER_USERS, f"{name} mounts files: which user reads them?"
        assert service["depends_on"]["file-permissions"]["condition"] == "service_completed_successfully", name
        for bind in binds:
            source = Path(bind["source"])
            root = next((r for r in fixed_roots if source.is_relative_to(r)), None)
            assert root is not None, f"{name}: {source} is not under a folder file-permissions mounts"
            inside = f"{fixed_roots[root]}/{source.relative_to(root)}"
            assert any(inside.startswith(target) for target in re.findall(r"(/host/\S+)", script)), (
                f"{name}: file-permissions does not make {inside} readable"
            )

    # The script, on a copy of the mounted folders made with umask 077.
    copy = tmp_path / "host"
    for root, target in fixed_roots.items():
        shutil.copytree(root, copy / Path(target).relative_to("/host"), ignore=shutil.ignore_patterns("__pycache__"))
    for item in [copy, *copy.rglob("*")]:
        item.chmod(0o700 if item.is_dir() else 0o600)  # what a checkout under umask 077 leaves
    (tmp_path / "service-logs").mkdir(mode=0o700)
    probe = copy / "provisioning" / "grafana" / "datasources" / "fleetwatch.yaml"
    assert stat.S_IMODE(probe.stat().st_mode) == 0o600
    local = script.replace("/host/", f"{copy}/").replace("/service-logs", str(tmp_path / "service-logs"))
    if os.geteuid() != 0:  # chown to the pipeline's user needs root, as the service runs
        local = "\n".join(line for line in local.splitlines() if not line.startswith("chown"))
    result = subprocess.run(["sh", "-ec", local], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    for name, service in services.items():
        for bind in (v for v in service.get("volumes", []) if v["type"] == "bind" and name != "file-permissions"):
            source = Path(bind["source"])
            root = next(r for r in fixed_roots if source.is_relative_to(r))
            path = copy / Path(fixed_roots[root]).relative_to("/host") / source.relative_to(root)
            for item in [path, *path.rglob("*")]:
                mode = item.stat().st_mode
                assert mode & stat.S_IROTH, f"{item} is not readable by {name} (uid {CONTAINER_USERS[name]})"
                if item.is_dir():
                    assert mode & stat.S_IXOTH, f"{item} cannot be listed by {name}"
    logs = tmp_path / "service-logs"
    if os.geteuid() == 0:
        assert (logs.stat().st_uid, stat.S_IMODE(logs.stat().st_mode)) == (10001, 0o755)
    # Both services that use the service-logs volume keep the owner given above (no copy from their image).
    for name in ("fleetwatch", "log-simulator"):
        (mount,) = [v for v in services[name]["volumes"] if v.get("source") == "service-logs"]
        assert mount["volume"].get("nocopy") is True, name


@pytest.mark.slow
def test_elasticsearch_disk_watermarks_are_set(render: Any) -> None:
    env = render()["services"]["elasticsearch"]["environment"]
    prefix = "cluster.routing.allocation.disk.watermark."
    assert {k[len(prefix) :]: v for k, v in env.items() if k.startswith(prefix)} == {
        "low": "10gb",
        "high": "5gb",
        "flood_stage": "2gb",
    }


@pytest.mark.slow
def test_demo_profile_writes_service_logs_and_syslog_for_the_pipeline(render: Any) -> None:
    services = render("--profile", "demo")["services"]
    logs = services["log-simulator"]
    docker = config_mod.load(REPO / "provisioning" / "fleetwatch" / "docker.toml", env={})
    # It writes where the pipeline tails, in the volume the pipeline mounts, and sends syslog to its UDP input.
    assert str(docker.simulator.log_dir) == "/var/log/services"
    assert docker.logs.files[0].paths == ["/var/log/services/*.log"]
    (mount,) = [v for v in logs["volumes"] if v["type"] == "volume"]
    assert (mount["source"], mount["target"], mount.get("read_only", False)) == (
        "service-logs",
        "/var/log/services",
        False,
    )
    assert docker.logs.syslog[0].protocol == "udp" and docker.logs.syslog[0].listen.endswith(":5514")
    script = logs["command"][0]
    assert logs["entrypoint"] == ["python", "-c"] and '("fleetwatch", 5514)' in script
    # The script names only what the installed package has.
    compile(script, "log-simulator", "exec")
    from fleetwatch import simulator

    assert callable(simulator.run_log_simulator)
    assert logs["depends_on"]["fleetwatch"]["condition"] == "service_healthy"


@pytest.mark.slow
def test_simulators_only_in_the_demo_profile(render: Any) -> None:
    assert set(render()["services"]) == SERVICES - DEMO


@pytest.mark.slow
def test_missing_secret_is_refused(compose_cmd: list[str], tmp_path: Path, docker_config: Path) -> None:
    for secret in ("ELASTIC_PASSWORD", "ES_FLEETWATCH_PASSWORD", "ES_GRAFANA_PASSWORD"):
        env_file = tmp_path / f"{secret}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env_example().items() if k != secret))
        result = run_compose(compose_cmd, env_file, "config", "--quiet", docker_config=docker_config)
        assert result.returncode != 0
        assert f"set {secret} in .env" in result.stderr


@pytest.mark.slow
def test_pipeline_is_healthy_once_subscribed_and_has_time_to_flush(render: Any, tmp_path: Path) -> None:
    service = render()["services"]["fleetwatch"]
    # On SIGTERM the runner ends the dataflow (up to 30 s), then flushes the sinks (up to 30 s).
    assert seconds(service["stop_grace_period"]) > 60
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    status = tmp_path / "status.json"
    code = test[3].replace("/tmp/status.json", str(status))

    def health(**fields: Any) -> int:
        status.write_text(json.dumps(fields))
        return subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode

    assert health(time=time.time(), subscribed=True, messages_in=3) == 0
    assert health(time=time.time()) == 1  # running, but the broker has not acknowledged the subscriptions
    assert health(time=time.time(), subscribed=False) == 1
    assert health(time=time.time() - 31, subscribed=True) == 1  # not rewritten for 30 s: the pipeline is stuck
    assert health(time=time.time(), subscribed=True, stopped=True) == 1
    assert health(time=time.time(), subscribed=True, failures=["es-writer cannot go on"]) == 1
    status.unlink()
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode == 1


@pytest.mark.slow
def test_compose_sh_leaves_the_users_docker_configuration_alone(compose_cmd: list[str], tmp_path: Path) -> None:
    """DOCKER_CONFIG is the user's: scripts/compose.sh neither replaces it nor writes config.json, links the plugin
    into its cli-plugins folder when no docker-compose is there, and keeps one the user installed."""
    mine = tmp_path / "docker"
    mine.mkdir()
    config_json = '{"auths": {"registry.example": {"auth": "dXNlcjpwdw=="}}, "currentContext": "default"}'
    (mine / "config.json").write_text(config_json)
    env = {**os.environ, "DOCKER_CONFIG": str(mine)}
    result = subprocess.run([str(COMPOSE_SH), "version"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "v2.40.3" in result.stdout
    assert (mine / "config.json").read_text() == config_json
    link = mine / "cli-plugins" / "docker-compose"
    assert link.is_symlink() and link.resolve() == (REPO / ".stack" / "bin" / "docker-compose").resolve()
    if shutil.which("docker"):
        # The user's own docker CLI now finds it, with the user's configuration.
        plain = subprocess.run(["docker", "compose", "version"], env=env, capture_output=True, text=True, check=False)
        assert plain.returncode == 0 and "v2.40.3" in plain.stdout, plain.stderr

    theirs = tmp_path / "theirs"
    (theirs / "cli-plugins").mkdir(parents=True)
    own = theirs / "cli-plugins" / "docker-compose"
    own.write_text("#!/bin/sh\necho their own compose\n")
    own.chmod(0o755)
    env = {**os.environ, "DOCKER_CONFIG": str(theirs)}
    result = subprocess.run([str(COMPOSE_SH), "version"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "v2.40.3" in result.stdout, result.stderr
    assert own.read_text() == "#!/bin/sh\necho their own compose\n" and not own.is_symlink()
    assert "keeping your" in result.stderr


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
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = setuptools.get("packages")
    top_level = (
        {p.split(".")[0] for p in setuptools["packages"]["find"]["include"]} if isinstance(packages, dict) else packages
    )
    copied = {line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert set(top_level) <= copied, "the image must contain every package pyproject installs"


def test_docker_config_is_valid_and_has_the_example_rules() -> None:
    docker = config_mod.load(REPO / "provisioning" / "fleetwatch" / "docker.toml", env={})
    # The example config of the checkout (the Grafana rules are generated from it).
    example = config_mod.load(REPO / grafana_alerts.EXAMPLE_CONFIG.name, env={})
    assert docker.influxdb.api == "v2" and docker.influxdb.url == "http://influxdb:8086"
    assert docker.elasticsearch.hosts == ["http://elasticsearch:9200"] and docker.elasticsearch.username == "fleetwatch"
    assert docker.mqtt.host == "mosquitto"
    # The Grafana rules are generated from the example config: the stack runs the same ones in the stream.
    assert load_rules(docker.alerts) == load_rules(example.alerts)
    assert docker.windows == example.windows and docker.logs.rate_window == example.logs.rate_window
