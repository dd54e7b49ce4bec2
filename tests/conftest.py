"""Shared fixtures. Integration tests talk to the real servers of the local stack (`make stack-up`); each
test gets unique topics, databases, measurements and indices, and removes them afterwards."""

from __future__ import annotations

import json
import os
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

http = urllib3.PoolManager()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def no_pipeline_left_running() -> Iterator[None]:
    yield
    from tests.integration.harness import kill_leftovers

    kill_leftovers()


@pytest.fixture
def unique() -> str:
    return f"fwt{uuid.uuid4().hex[:10]}"


def mqtt_password(user: str) -> str:
    return (STACK_DIR / "secrets" / f"mqtt-{user}.password").read_text().strip()


def influxql(db: str, query: str, method: str = "GET") -> dict:
    resp = http.request(method, f"{INFLUX_URL}/query", fields={"db": db, "q": query})
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
