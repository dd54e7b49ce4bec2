"""dashboards.sync against a fake Grafana: grafana_client's HTTP session is replaced by an object that answers
like Grafana's API does for the calls sync makes, stores objects by uid and records every request. No Grafana
runs here; what is checked is the requests sync sends and that a second sync only updates."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import niquests
import pytest
from grafana_client.api import GrafanaApi

from dashboards import grafana_alerts, sync
from fleetwatch.record import AlertTransition

ENV = {
    "INFLUXDB_URL": "http://influxdb:8086",
    "INFLUXDB_DATABASE": "fleetwatch",
    "INFLUXDB_TOKEN": "influx-token",
    "ELASTICSEARCH_URL": "http://elasticsearch:9200",
    "ELASTICSEARCH_USER": "grafana",
    "ELASTICSEARCH_PASSWORD": "es-password",
}
DATASOURCE_UIDS = {"fleetwatch-influxdb", "fleetwatch-es-logs", "fleetwatch-es-alerts", "fleetwatch-es-dead-letters"}
DASHBOARD_UIDS = {f"fleetwatch-{name}" for name in ("fleet", "device", "logs", "alerts", "health")}


@dataclass
class Request:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self._body = body
        self.text = json.dumps(body)
        self.headers = {"Content-Type": "application/json"}

    def json(self) -> Any:
        return self._body


def _not_found(what: str) -> tuple[int, Any]:
    return 404, {"message": f"{what} not found"}


@dataclass
class FakeGrafana:
    """The slice of Grafana 11's HTTP API that sync uses, keyed by uid like the real one."""

    requests: list[Request] = field(default_factory=list)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    group_intervals: dict[tuple[str, str], int] = field(default_factory=dict)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 1

    # What grafana_client calls: session.request(method, url, json=..., headers=..., ...).
    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        path = url.split("/api", 1)[1]
        body = kwargs.get("json")
        self.requests.append(Request(method.upper(), path, body, dict(kwargs.get("headers") or {})))
        status, answer = self.route(method.upper(), path, body)
        return FakeResponse(status, answer)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if m := re.fullmatch(r"/datasources/uid/([^/]+)", path):
            uid = m.group(1)
            if uid not in self.datasources:
                return _not_found("data source")
            if method == "GET":
                return 200, self.datasources[uid]
            if method == "PUT":
                self.datasources[uid] = {**self.datasources[uid], **body}
                return 200, {"datasource": self.datasources[uid], "message": "Datasource updated"}
        if path == "/datasources" and method == "POST":
            if body["uid"] in self.datasources or any(d["name"] == body["name"] for d in self.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            self.datasources[body["uid"]] = {**body, "id": self._id(), "readOnly": False}
            return 200, {"datasource": self.datasources[body["uid"]], "message": "Datasource added"}
        if m := re.fullmatch(r"/folders/([^/]+)", path):
            folder = self.folders.get(m.group(1))
            return (200, folder) if folder else _not_found("folder")
        if path == "/folders":
            if method == "GET":
                return 200, list(self.folders.values())
            if any(f["title"] == body["title"] for f in self.folders.values()):
                return 409, {"message": "a folder with the same name already exists"}
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "id": self._id()}
            return 200, self.folders[body["uid"]]
        if m := re.fullmatch(r"/dashboards/uid/([^/]+)", path):
            stored = self.dashboards.get(m.group(1))
            return (200, stored) if stored else _not_found("dashboard")
        if path == "/dashboards/db" and method == "POST":
            dashboard = body["dashboard"]
            uid = dashboard["uid"]
            if uid in self.dashboards and not body.get("overwrite"):
                return 412, {"message": "a dashboard with the same uid already exists", "status": "name-exists"}
            version = self.dashboards[uid]["dashboard"]["version"] + 1 if uid in self.dashboards else 1
            self.dashboards[uid] = {
                "dashboard": {**dashboard, "id": self._id(), "version": version},
                "meta": {"folderUid": body["folderUid"], "provisioned": False},
            }
            return 200, {"uid": uid, "status": "success", "version": version}
        if m := re.fullmatch(r"/v1/provisioning/alert-rules/([^/]+)", path):
            uid = m.group(1)
            if uid not in self.rules:
                return _not_found("alert rule")
            if method == "GET":
                return 200, self.rules[uid]
            if method == "PUT":
                self.rules[uid] = {**body, "id": self.rules[uid]["id"], "provenance": self._provenance()}
                return 200, self.rules[uid]
            if method == "DELETE":
                del self.rules[uid]
                return 204, None
        if path == "/v1/provisioning/alert-rules" and method == "POST":
            if body["uid"] in self.rules:
                return 409, {"message": "conflict: a rule with this uid exists"}
            self.rules[body["uid"]] = {**body, "id": self._id(), "provenance": self._provenance()}
            self.group_intervals.setdefault((body["folderUID"], body["ruleGroup"]), 60)
            return 201, self.rules[body["uid"]]
        if m := re.fullmatch(r"/v1/provisioning/folder/([^/]+)/rule-groups/([^/]+)", path):
            key = (m.group(1), m.group(2))
            if key not in self.group_intervals:
                return _not_found("rule group")
            if method == "PUT":
                self.group_intervals[key] = body["interval"]
            rules = [r for r in self.rules.values() if (r["folderUID"], r["ruleGroup"]) == key]
            return 200, {"title": key[1], "folderUid": key[0], "interval": self.group_intervals[key], "rules": rules}
        if path == "/annotations" and method == "POST":
            self.annotations.append(body)
            return 200, {"id": len(self.annotations), "message": "Annotation added"}
        return 404, {"message": f"no route for {method} {path}"}

    def _provenance(self) -> str:
        # X-Disable-Provenance: true stores no provenance, as Grafana does.
        last = self.requests[-1].headers
        return "" if last.get("X-Disable-Provenance") == "true" else "api"

    def calls(self, method: str, prefix: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]


@pytest.fixture
def grafana() -> FakeGrafana:
    return FakeGrafana()


@pytest.fixture
def api(grafana: FakeGrafana) -> GrafanaApi:
    client = sync.connect("http://grafana.test:3000", "sa-token")
    # The transport: every request grafana_client makes goes to the fake (it only calls .request).
    client.client.s = grafana  # type: ignore[assignment]
    return client


def run_sync(api: GrafanaApi) -> sync.SyncReport:
    return sync.sync("http://grafana.test:3000", "sa-token", env=ENV, api=api)


def test_first_sync_creates_everything_with_fixed_uids(grafana: FakeGrafana, api: GrafanaApi) -> None:
    report = run_sync(api)

    assert set(grafana.datasources) == DATASOURCE_UIDS
    influx = grafana.datasources["fleetwatch-influxdb"]
    # ${VAR} expanded from the given environment, as Grafana's file provisioning does.
    assert influx["url"] == "http://influxdb:8086"
    assert influx["jsonData"]["dbName"] == "fleetwatch"
    assert influx["secureJsonData"]["httpHeaderValue1"] == "Token influx-token"
    assert grafana.datasources["fleetwatch-es-logs"]["secureJsonData"]["basicAuthPassword"] == "es-password"
    assert "editable" not in influx  # a provisioning-file key the API does not take

    assert [(f["uid"], f["title"]) for f in grafana.folders.values()] == [("fleetwatch", "fleetwatch")]
    assert set(grafana.dashboards) == DASHBOARD_UIDS
    posts = grafana.calls("POST", "/dashboards/db")
    assert all(p.body["folderUid"] == "fleetwatch" and p.body["overwrite"] is True for p in posts)
    assert all(p.body["dashboard"]["id"] is None for p in posts)

    expected_rules = {r["uid"] for r in grafana_alerts.load_translation().rules}
    assert set(grafana.rules) == expected_rules
    for post in grafana.calls("POST", "/v1/provisioning/alert-rules"):
        assert post.headers["X-Disable-Provenance"] == "true"
        assert post.body["folderUID"] == "fleetwatch" and post.body["ruleGroup"] == "fleetwatch"
        assert post.body["orgID"] == 1
    assert grafana.rules["fleetwatch-humidity-band-warning"]["for"] == "2m"
    # The group came with Grafana's default interval: sync set fleetwatch's.
    assert grafana.group_intervals == {("fleetwatch", "fleetwatch"): 30}
    group_puts = grafana.calls("PUT", "/v1/provisioning/folder/fleetwatch/rule-groups/fleetwatch")
    assert len(group_puts) == 1 and group_puts[0].headers["X-Disable-Provenance"] == "true"

    assert {uid for kind, uid in report.created if kind == "datasource"} == DATASOURCE_UIDS
    assert ("folder", "fleetwatch") in report.created
    assert not report.updated[:-1] and report.updated[-1] == ("rule group", "fleetwatch/fleetwatch")
    assert not report.skipped and not report.deleted


def snapshot(grafana: FakeGrafana) -> str:
    """Everything sync manages except dashboard versions, which Grafana bumps at every save."""
    intervals = {"/".join(key): value for key, value in grafana.group_intervals.items()}
    state = [grafana.datasources, grafana.folders, sorted(grafana.dashboards), grafana.rules, intervals]
    return json.dumps(state, sort_keys=True)


def test_second_sync_only_updates(grafana: FakeGrafana, api: GrafanaApi) -> None:
    run_sync(api)
    state = snapshot(grafana)
    first = len(grafana.requests)

    report = run_sync(api)

    second = grafana.requests[first:]
    creates = [
        r
        for r in second
        if r.method == "POST" and r.path in ("/datasources", "/folders", "/v1/provisioning/alert-rules")
    ]
    assert creates == []
    # Every object was looked up by uid first, then updated in place.
    assert {r.path for r in second if r.method == "PUT" and r.path.startswith("/datasources/uid/")} == {
        f"/datasources/uid/{uid}" for uid in DATASOURCE_UIDS
    }
    rule_puts = {r.path.rsplit("/", 1)[1] for r in second if r.method == "PUT" and "/alert-rules/" in r.path}
    assert rule_puts == set(grafana.rules)
    assert all(
        r.headers["X-Disable-Provenance"] == "true" for r in second if r.method == "PUT" and "/alert-rules/" in r.path
    )
    assert not report.created and not report.deleted and not report.skipped
    # Same objects, no duplicates: only dashboard versions moved (Grafana keeps a version per save).
    assert set(grafana.datasources) == DATASOURCE_UIDS and set(grafana.dashboards) == DASHBOARD_UIDS
    assert all(d["dashboard"]["version"] == 2 for d in grafana.dashboards.values())
    assert snapshot(grafana) == state
    # The interval was right already: the group is not written again.
    assert not [r for r in second if r.method == "PUT" and "/rule-groups/" in r.path]


def test_objects_provisioned_from_files_are_skipped(grafana: FakeGrafana, api: GrafanaApi) -> None:
    # Grafana's own provisioning (docker compose) made these: read-only over the API.
    grafana.datasources["fleetwatch-influxdb"] = {"uid": "fleetwatch-influxdb", "name": "x", "readOnly": True}
    grafana.folders["a1b2c3"] = {"uid": "a1b2c3", "title": "fleetwatch", "id": 1}
    grafana.dashboards["fleetwatch-fleet"] = {"dashboard": {"uid": "fleetwatch-fleet"}, "meta": {"provisioned": True}}
    rule = grafana_alerts.load_translation().rules[0]
    grafana.rules[rule["uid"]] = {**rule, "folderUID": "a1b2c3", "ruleGroup": "fleetwatch", "provenance": "file"}

    report = run_sync(api)

    skipped = {(kind, uid) for kind, uid, _ in report.skipped}
    assert ("datasource", "fleetwatch-influxdb") in skipped
    assert ("dashboard", "fleetwatch-fleet") in skipped
    assert ("alert rule", rule["uid"]) in skipped
    assert grafana.rules[rule["uid"]]["provenance"] == "file"
    # The folder of that title was reused (its uid), not duplicated.
    assert ("folder", "a1b2c3") in skipped and set(grafana.folders) == {"a1b2c3"}
    assert all(p.body["folderUid"] == "a1b2c3" for p in grafana.calls("POST", "/dashboards/db"))
    assert not grafana.calls("PUT", "/datasources/uid/fleetwatch-influxdb")


def test_rules_no_longer_generated_are_deleted(grafana: FakeGrafana, api: GrafanaApi) -> None:
    run_sync(api)
    stale = {**next(iter(grafana.rules.values())), "uid": "fleetwatch-renamed-warning", "provenance": ""}
    grafana.rules[stale["uid"]] = stale
    foreign = {**stale, "uid": "someone-elses-rule"}
    grafana.rules[foreign["uid"]] = foreign

    report = run_sync(api)

    assert report.deleted == [("alert rule", "fleetwatch-renamed-warning")]
    assert "someone-elses-rule" in grafana.rules and "fleetwatch-renamed-warning" not in grafana.rules


def test_missing_environment_variable_fails_before_any_request(grafana: FakeGrafana, api: GrafanaApi) -> None:
    env = {k: v for k, v in ENV.items() if k != "INFLUXDB_TOKEN"}
    with pytest.raises(sync.SyncError, match=r"fleetwatch-influxdb .*INFLUXDB_TOKEN"):
        sync.sync("http://grafana.test:3000", "sa-token", env=env, api=api)
    assert grafana.requests == []


def test_grafana_errors_name_the_object(grafana: FakeGrafana, api: GrafanaApi, monkeypatch: Any) -> None:
    def refuse(method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "POST" and path == "/folders":
            return 403, {"message": "You'll need additional permissions to perform this action."}
        return FakeGrafana.route(grafana, method, path, body)

    monkeypatch.setattr(grafana, "route", refuse)
    with pytest.raises(sync.SyncError, match=r"folder fleetwatch: Client Error 403: You'll need additional"):
        run_sync(api)


def test_unreachable_grafana_is_a_sync_error(api: GrafanaApi) -> None:
    class Refused:
        def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
            raise niquests.ConnectionError("[Errno 111] Connection refused")

    api.client.s = Refused()  # type: ignore[assignment]
    with pytest.raises(sync.SyncError, match=r"data source fleetwatch-influxdb: cannot reach Grafana: .*refused"):
        run_sync(api)


def test_expand_env_follows_grafana_provisioning() -> None:
    missing: set[str] = set()
    value = {"a": ["${X}/$Y", "$$literal", 3], "b": "$NOPE"}
    assert sync.expand_env(value, {"X": "x", "Y": "y"}, missing) == {"a": ["x/y", "$literal", 3], "b": ""}
    assert missing == {"NOPE"}


def _transition(state: str) -> AlertTransition:
    return AlertTransition(
        rule="hot",
        series="readings,device=d1,metric=temperature,site=s1",
        tags={"device": "d1", "metric": "temperature", "site": "s1"},
        state=state,
        severity="critical",
        value=41.5,
        threshold=40.0,
        started_ns=1_700_000_000_000_000_000,
        at_ns=1_700_000_060_000_000_000,
        summary="[CRITICAL] hot: value 41.5 > 40",
        notification_id="n1",
    )


def test_annotate_posts_the_transition_with_tags(grafana: FakeGrafana, api: GrafanaApi) -> None:
    annotation_id = sync.annotate("http://grafana.test:3000", "sa-token", _transition("firing"), api=api)

    assert annotation_id == 1
    (request,) = grafana.requests
    assert (request.method, request.path) == ("POST", "/annotations")
    assert request.body["tags"] == ["fleetwatch", "rule:hot", "state:firing", "severity:critical"]
    assert request.body["time"] == 1_700_000_060_000 and request.body["timeEnd"] is None
    assert "readings,device=d1" in request.body["text"] and "value 41.5" in request.body["text"]
    assert "dashboardUID" not in request.body  # an organisation annotation


def test_annotate_resolved_spans_the_episode(grafana: FakeGrafana, api: GrafanaApi) -> None:
    sync.annotate("http://grafana.test:3000", "t", _transition("resolved"), dashboard_uid="fleetwatch-alerts", api=api)

    body = grafana.requests[0].body
    assert (body["time"], body["timeEnd"]) == (1_700_000_000_000, 1_700_000_060_000)
    assert body["dashboardUID"] == "fleetwatch-alerts"


def test_token_goes_in_the_authorization_header() -> None:
    api = sync.connect("http://grafana.test:3000/grafana", "sa-token")
    seen: dict[str, Any] = {}

    class Recorder:
        def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
            prepared: Any = type("R", (), {"headers": {}})()
            kwargs["auth"](prepared)
            seen.update(url=url, authorization=prepared.headers["Authorization"])
            return FakeResponse(200, {"id": 7})

    api.client.s = Recorder()  # type: ignore[assignment]
    assert sync.annotate("", "", _transition("firing"), api=api) == 7
    assert seen == {"url": "http://grafana.test:3000/grafana/api/annotations", "authorization": "Bearer sa-token"}


def test_datasource_without_uid_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ds.yaml").write_text("apiVersion: 1\ndatasources:\n  - name: x\n    type: influxdb\n")
    with pytest.raises(sync.SyncError, match="has no uid"):
        sync.load_datasources(tmp_path, env={})
