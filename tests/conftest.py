"""Shared fixtures. Integration tests talk to the real servers of the local stack (`make stack-up`); each
test gets unique topics, databases, measurements and indices, and removes them afterwards.

The tests run the installed fleetwatch (the wheel `make venv` builds and installs, not the checkout): pytest runs
with --import-mode=importlib, so the checkout is not on sys.path, and the session stops at once when fleetwatch,
collectors, flows or dashboards would be imported from anywhere but site-packages, or when the installed files are
not this checkout's (run `make venv`; FLEETWATCH_ALLOW_STALE_INSTALL=1 to test another install on purpose).

In CI (CI or FLEETWATCH_NO_SKIP set) a skipped test is a failure, unless it is in ALLOWED_SKIPS with its reason."""

from __future__ import annotations

import filecmp
import fnmatch
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

REPO = Path(__file__).resolve().parent.parent
STACK_DIR = Path(os.environ.get("FLEETWATCH_STACK_DIR", REPO / ".stack"))
MQTT_HOST, MQTT_PORT, MQTT_AUTH_PORT = "127.0.0.1", 1883, 1884
INFLUX_URL = "http://127.0.0.1:8086"
VM_URL = "http://127.0.0.1:8428"
ES_URL = "http://127.0.0.1:9200"
# The local InfluxDB asks for credentials (scripts/stack.sh): its admin's password is generated into the stack's
# secrets on first start. Pipelines read it from that file (INFLUX_AUTH_TOML), never from their config.
INFLUX_USER = "admin"
INFLUX_PASSWORD_FILE = STACK_DIR / "secrets" / f"influxdb-{INFLUX_USER}.password"
INFLUX_AUTH_TOML = f'username = "{INFLUX_USER}"\npassword_file = "{INFLUX_PASSWORD_FILE}"'

PACKAGES = ("fleetwatch", "collectors", "flows", "dashboards")
# Tests that may be skipped in CI: node id (or a prefix of it) -> why that is acceptable. Keep it empty unless a
# test cannot run on the CI machine for a reason that is no fault of the code.
ALLOWED_SKIPS: dict[str, str] = {}
# pytest-timeout: every test gets the ini default (600 s); these get longer, with the reason.
LONG_TESTS: dict[str, tuple[int, str]] = {
    "tests/integration/test_compose.py": (1200, "the first test builds the docker compose plugin from source"),
    "tests/integration/test_installed.py": (1200, "builds the wheel and installs it with its dependencies"),
}

http = urllib3.PoolManager()


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in {"", "0", "false", "no"}


def installed_package_problems() -> list[str]:
    """Where the packages the tests import come from, if not from site-packages, and which installed files differ
    from the checkout's."""
    site = {Path(p).resolve() for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}
    problems = []
    for name in PACKAGES:
        module = importlib.import_module(name)
        where = Path(module.__file__ or "").resolve()
        if not any(where.is_relative_to(s) for s in site):
            problems.append(f"{name} is imported from {where}, not from the installed wheel in {sorted(site)}")
    if problems or _truthy("FLEETWATCH_ALLOW_STALE_INSTALL"):
        return problems
    for name in PACKAGES:
        installed = Path(importlib.import_module(name).__file__ or "").parent
        source = REPO / name
        mine = {p.relative_to(source) for p in source.rglob("*.py") if "__pycache__" not in p.parts}
        theirs = {p.relative_to(installed) for p in installed.rglob("*.py") if "__pycache__" not in p.parts}
        if name == "dashboards":
            mine |= {p.relative_to(source) for p in source.glob("*.json")}
            theirs |= {p.relative_to(installed) for p in installed.glob("*.json")}
            grafana = REPO / "provisioning" / "grafana"
            mine |= {Path("provisioning") / p.relative_to(grafana) for p in grafana.glob("*/*.yaml")}
            theirs |= {p.relative_to(installed) for p in installed.glob("provisioning/*/*.yaml")}
        for rel in sorted(mine ^ theirs):
            problems.append(f"{name}/{rel}: {'not installed' if rel in mine else 'installed but not in the checkout'}")
        for rel in sorted(mine & theirs):
            if not filecmp.cmp(source / rel, installed / rel, shallow=False):
                problems.append(f"{name}/{rel}: the installed file differs from the checkout's")
    return problems


def pytest_configure(config: pytest.Config) -> None:
    problems = installed_package_problems()
    if problems:
        raise pytest.UsageError(
            "the tests must run the installed wheel of this checkout; run `make venv` (it builds and installs it):\n  "
            + "\n  ".join(problems[:20])
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        for prefix, (seconds, _why) in LONG_TESTS.items():
            if item.nodeid.startswith(prefix) and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(seconds))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """In CI, a skip that is not allowed is a failure: a test that cannot run there tests nothing."""
    report: pytest.TestReport = yield
    if not report.skipped or hasattr(report, "wasxfail"):
        return report
    if not (_truthy("CI") or _truthy("FLEETWATCH_NO_SKIP")):
        return report
    if any(report.nodeid.startswith(prefix) for prefix in ALLOWED_SKIPS):
        return report
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI, where skips fail the run: {reason}\n"
        "Make it run in CI, or add it to ALLOWED_SKIPS in tests/conftest.py with the reason it may not."
    )
    return report


@pytest.fixture(autouse=True)
def no_pipeline_left_running() -> Iterator[None]:
    """Every `fleetwatch run` the test started is stopped; one that crashed, or left a crash in its log, fails the
    test even when the test did not stop it itself."""
    yield
    from tests.integration.harness import leftover_problems

    problems = leftover_problems()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def sources_stop_beating() -> Iterator[None]:
    """A source a test called beats the pipeline clock's heartbeat (flows.clock): once the test is done with it,
    its silence must not stop the clock under the next test."""
    yield
    from flows import clock

    clock.stop_watching()


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if fnmatch.fnmatch(name, pattern[3:]):
                return True
        elif fnmatch.fnmatch(rel, pattern.rstrip("/")):
            return True
    return False


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fleetwatch's wheel, built as the Docker image's build stage and `pip install .` build it: from the files
    of the checkout that .dockerignore lets through, copied elsewhere (so that setuptools' build/ directory cannot
    clash with a `make venv` building in the checkout)."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    src = tmp_path_factory.mktemp("wheel-src") / "fleetwatch"

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel_dir = Path(directory).relative_to(REPO).as_posix()
        return {n for n in names if _dockerignored(n if rel_dir == "." else f"{rel_dir}/{n}", patterns)}

    shutil.copytree(REPO, src, symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = out.glob("fleetwatch-*.whl")
    return wheel


@pytest.fixture
def unique() -> str:
    return f"fwt{uuid.uuid4().hex[:10]}"


def mqtt_password(user: str) -> str:
    return (STACK_DIR / "secrets" / f"mqtt-{user}.password").read_text().strip()


def influx_headers(user: str = INFLUX_USER, password: str | None = None) -> dict[str, str]:
    """Basic auth for the local InfluxDB: the stack's admin unless another user is given."""
    if password is None:
        password = influx_credentials()[1]
    return urllib3.make_headers(basic_auth=f"{user}:{password}")


def influx_credentials() -> tuple[str, str]:
    """The stack's admin credentials, for clients that take them as a pair (dashboards.queries.Stores)."""
    return INFLUX_USER, INFLUX_PASSWORD_FILE.read_text().strip()


def influxql(db: str, query: str, method: str = "GET") -> dict:
    resp = http.request(method, f"{INFLUX_URL}/query", fields={"db": db, "q": query}, headers=influx_headers())
    assert resp.status == 200, resp.data
    result = json.loads(resp.data)["results"][0]
    assert "error" not in result, result
    return result


def influx_rows(db: str, query: str) -> list[dict]:
    """Rows of the first series as dicts (column -> value)."""
    result = influxql(db, query)
    rows = []
    for series in result.get("series", []):
        for values in series["values"]:
            row = dict(zip(series["columns"], values, strict=True))
            row.update(series.get("tags", {}))
            rows.append(row)
    return rows


@pytest.fixture
def influx_db(unique: str) -> Iterator[str]:
    influxql("", f'CREATE DATABASE "{unique}"', "POST")
    yield unique
    influxql("", f'DROP DATABASE "{unique}"', "POST")


@pytest.fixture
def influx_user(influx_db: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A user of the test's own that is no admin, with ALL privileges on ``influx_db`` only (what a
    least-privilege deployment gives fleetwatch), and the file holding its password; dropped afterwards."""
    user = f"{influx_db}-writer"
    password = uuid.uuid4().hex
    influxql("", f"CREATE USER \"{user}\" WITH PASSWORD '{password}'", "POST")
    influxql("", f'GRANT ALL ON "{influx_db}" TO "{user}"', "POST")
    password_file = tmp_path / "influxdb-writer.password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    yield user, password_file
    influxql("", f'DROP USER "{user}"', "POST")


@pytest.fixture
def es_index(unique: str) -> Iterator[str]:
    """A unique index prefix; its indices and fleetwatch's templates for it are removed afterwards."""
    yield unique
    http.request("DELETE", f"{ES_URL}/{unique}*")
    http.request("DELETE", f"{ES_URL}/_index_template/{unique}-*")


def es_docs(index: str, query: dict | None = None, fields: list[str] | None = None) -> list[dict]:
    """Every document (``_source`` plus ``_id``) of an index pattern, after a refresh; scrolls past 10,000."""
    http.request("POST", f"{ES_URL}/{index}/_refresh")
    body: dict = {"size": 5_000, "query": query or {"match_all": {}}, "sort": ["_doc"]}
    if fields is not None:
        body["_source"] = fields
    docs: list[dict] = []
    resp = _es_json("POST", f"/{index}/_search?scroll=1m&ignore_unavailable=true&allow_no_indices=true", body)
    while resp["hits"]["hits"]:
        docs += [{**hit["_source"], "_id": hit["_id"]} for hit in resp["hits"]["hits"]]
        resp = _es_json("POST", "/_search/scroll", {"scroll": "1m", "scroll_id": resp["_scroll_id"]})
    if "_scroll_id" in resp:
        # 404 when the search found no index to scroll: nothing to free.
        http.request(
            "DELETE",
            f"{ES_URL}/_search/scroll",
            body=json.dumps({"scroll_id": resp["_scroll_id"]}),
            headers={"Content-Type": "application/json"},
        )
    return docs


def _es_json(method: str, path: str, body: dict) -> dict:
    resp = http.request(method, f"{ES_URL}{path}", body=json.dumps(body), headers={"Content-Type": "application/json"})
    assert resp.status == 200, resp.data
    return dict(json.loads(resp.data))


@pytest.fixture
def vm_measurement(unique: str) -> Iterator[str]:
    yield unique
    http.request("POST", f"{VM_URL}/api/v1/admin/tsdb/delete_series", fields={"match[]": f'{{__name__=~"{unique}.*"}}'})


def vm_export(measurement: str) -> list[dict]:
    """Series VictoriaMetrics holds for an InfluxDB measurement (field f of measurement m is metric m_f).
    Each call asks with a new time range: VictoriaMetrics caches the (empty) answer of a search per range."""
    resp = http.request(
        "GET",
        f"{VM_URL}/api/v1/export",
        fields={"match[]": f'{{__name__=~"{measurement}_.*"}}', "start": "0", "end": str(int(time.time()) + 3600)},
    )
    return [json.loads(line) for line in resp.data.decode().splitlines() if line]
