"""Push fleetwatch's Grafana objects to a running Grafana over its HTTP API (``fleetwatch grafana sync``).

For a Grafana that does not read fleetwatch's provisioning files (docker compose mounts them; a Grafana elsewhere
does not), ``sync`` creates or updates, by their fixed uids:

1. the data sources of ``provisioning/grafana/datasources/*.yaml``, with ``${VAR}`` taken from the environment as
   Grafana's own provisioning would;
2. the folder ``fleetwatch`` (uid ``fleetwatch``; an existing folder of that title is reused);
3. the dashboards ``dashboards/*.json``, into that folder (``overwrite``);
4. the alert rules of ``dashboards.grafana_alerts`` (the same rules as the provisioning file), through the alerting
   provisioning API with ``X-Disable-Provenance`` so they stay editable in the UI; fleetwatch rules no longer
   generated are deleted, and the group's evaluation interval is set.

Every object is looked up by uid first and updated when it exists, so syncing twice leaves the same state. Objects
that Grafana itself provisioned from files are read-only through the API: they are reported as skipped, not
changed.

``annotate`` posts one alert transition as a Grafana annotation (tags ``fleetwatch``, ``rule:<name>``,
``state:<state>``, ``severity:<severity>``), for the alert sink to mark transitions on every dashboard.

The contact point and notification policy (``contact-points.yaml``) are not synced: the policy tree is the whole
organisation's, and replacing it over the API would overwrite what others configured.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import niquests
import yaml
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from dashboards import grafana_alerts
from fleetwatch.record import AlertTransition

# provisioning/grafana ships as package data of `dashboards` (dashboards/provisioning links to it in a checkout), so
# the installed program finds it wherever it runs.
DATASOURCES_DIR = Path(str(resources.files("dashboards") / "provisioning" / "datasources"))
DASHBOARDS_DIR = Path(__file__).resolve().parent
TOKEN_ENV = "FLEETWATCH_GRAFANA_TOKEN"
# Keys of a provisioning-file data source that the data source API takes as they are. The file's "editable" and
# "version" have no API counterpart (a data source created over the API is editable).
_DATASOURCE_KEYS = (
    "name",
    "uid",
    "type",
    "access",
    "url",
    "user",
    "database",
    "basicAuth",
    "basicAuthUser",
    "withCredentials",
    "isDefault",
    "jsonData",
    "secureJsonData",
)
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class SyncError(Exception):
    """A sync step failed; the message names the object and Grafana's answer."""


@dataclass
class SyncReport:
    """What ``sync`` did, one ``(kind, uid)`` per object."""

    created: list[tuple[str, str]] = field(default_factory=list)
    updated: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    # (kind, uid, why)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created {kind} {uid}" for kind, uid in self.created]
        out += [f"updated {kind} {uid}" for kind, uid in self.updated]
        out += [f"deleted {kind} {uid}" for kind, uid in self.deleted]
        out += [f"skipped {kind} {uid}: {why}" for kind, uid, why in self.skipped]
        return out


def connect(url: str, token: str, timeout: float = 10.0) -> GrafanaApi:
    """A client for ``url`` (``http://host:3000``, optionally with a path prefix) with a service-account token."""
    # grafana_client appends "api" to the URL's path as it is: without a trailing slash, a Grafana served under
    # /grafana would be asked for /grafanaapi/...
    api: GrafanaApi = GrafanaApi.from_url(url.rstrip("/") + "/", credential=token, timeout=timeout)
    return api


# ------------------------------------------------------------------------------------------- helpers


def expand_env(value: Any, env: Mapping[str, str], missing: set[str]) -> Any:
    """``$VAR`` and ``${VAR}`` in every string, ``$$`` for a literal ``$``: Grafana's provisioning rules. Names
    not in ``env`` are collected in ``missing``: Grafana would put an empty string there, which for a URL or a
    password is never what was meant."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(2)
            if name not in env:
                missing.add(name)
                return ""
            return env[name]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, missing) for v in value]
    return value


def load_datasources(directory: Path = DATASOURCES_DIR, env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The data sources of the provisioning files, as data source API bodies."""
    env = os.environ if env is None else env
    out = []
    for path in sorted(directory.glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for entry in doc.get("datasources") or []:
            missing: set[str] = set()
            body = {k: expand_env(entry[k], env, missing) for k in _DATASOURCE_KEYS if k in entry}
            if not body.get("uid"):
                raise SyncError(f"{path}: data source {entry.get('name')!r} has no uid (sync finds objects by uid)")
            if missing:
                raise SyncError(
                    f"data source {body['uid']} ({path.name}): environment variable(s) not set: "
                    + ", ".join(sorted(missing))
                )
            out.append(body)
    return out


def load_dashboards(directory: Path = DASHBOARDS_DIR) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(dashboard, dict) or not dashboard.get("uid"):
            raise SyncError(f"{path}: not a dashboard with a uid")
        out.append(dashboard)
    return out


def _is_not_found(exc: GrafanaException) -> bool:
    return isinstance(exc, GrafanaClientError) and exc.status_code == 404


def _fail(what: str, exc: GrafanaException) -> SyncError:
    return SyncError(f"{what}: {exc.message}")


class _Grafana:
    """grafana_client's element APIs. Its methods carry no annotations, so they are held as Any (mypy strict
    would reject every call otherwise); the return values are plain JSON."""

    def __init__(self, api: GrafanaApi) -> None:
        self.api: Any = api

    def get(self, what: str, fetch: Any, *args: Any) -> Any | None:
        """The object, or None when Grafana answers 404."""
        try:
            return self.call(what, fetch, *args)
        except SyncError as exc:
            if isinstance(exc.__cause__, GrafanaException) and _is_not_found(exc.__cause__):
                return None
            raise

    def call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except GrafanaException as exc:
            raise _fail(what, exc) from exc
        except niquests.RequestException as exc:
            # grafana_client wraps timeouts and HTTP errors, not a refused connection or a DNS failure.
            raise SyncError(f"{what}: cannot reach Grafana: {exc}") from exc


# ------------------------------------------------------------------------------------------- sync


def _sync_datasources(g: _Grafana, datasources: list[dict[str, Any]], report: SyncReport) -> None:
    ds_api = g.api.datasource
    for body in datasources:
        uid = body["uid"]
        what = f"data source {uid}"
        existing = g.get(what, ds_api.get_datasource_by_uid, uid)
        if existing is None:
            g.call(what, ds_api.create_datasource, body)
            report.created.append(("datasource", uid))
        elif existing.get("readOnly"):
            report.skipped.append(("datasource", uid, "provisioned from a file in this Grafana (read-only)"))
        else:
            g.call(what, ds_api.update_datasource_by_uid, uid, body)
            report.updated.append(("datasource", uid))


def _sync_folder(g: _Grafana, report: SyncReport) -> str:
    """The folder's uid: ``fleetwatch``, or that of an existing folder titled ``fleetwatch`` (Grafana's own
    provisioning creates it by title, with a generated uid)."""
    uid, title = grafana_alerts.FOLDER_UID, grafana_alerts.FOLDER_TITLE
    folders = g.api.folder
    if g.get(f"folder {uid}", folders.get_folder, uid) is not None:
        return uid
    for folder in g.call("folders", folders.get_all_folders) or []:
        if folder.get("title") == title:
            report.skipped.append(("folder", str(folder["uid"]), f"exists with title {title!r}: reused"))
            return str(folder["uid"])
    g.call(f"folder {uid}", folders.create_folder, title, uid=uid)
    report.created.append(("folder", uid))
    return uid


def _sync_dashboards(g: _Grafana, dashboards: list[dict[str, Any]], folder_uid: str, report: SyncReport) -> None:
    dash_api = g.api.dashboard
    for dashboard in dashboards:
        uid = dashboard["uid"]
        what = f"dashboard {uid}"
        existing = g.get(what, dash_api.get_dashboard, uid)
        if existing is not None and (existing.get("meta") or {}).get("provisioned"):
            report.skipped.append(("dashboard", uid, "provisioned from a file in this Grafana (read-only)"))
            continue
        # The numeric id is per Grafana instance: matching by uid (with overwrite) is what makes this idempotent.
        body = {
            "dashboard": {**dashboard, "id": None},
            "folderUid": folder_uid,
            "overwrite": True,
            "message": "fleetwatch grafana sync",
        }
        g.call(what, dash_api.update_dashboard, body)
        (report.created if existing is None else report.updated).append(("dashboard", uid))


def _sync_alert_rules(g: _Grafana, rules: list[dict[str, Any]], folder_uid: str, report: SyncReport) -> None:
    prov = g.api.alertingprovisioning
    group = grafana_alerts.GROUP
    wanted = set()
    for rule in rules:
        uid = rule["uid"]
        wanted.add(uid)
        what = f"alert rule {uid}"
        body = {**rule, "orgID": 1, "folderUID": folder_uid, "ruleGroup": group}
        existing = g.get(what, prov.get_alertrule, uid)
        if existing is None:
            g.call(what, prov.create_alertrule, body, disable_provenance=True)
            report.created.append(("alert rule", uid))
        elif existing.get("provenance") not in (None, ""):
            report.skipped.append(("alert rule", uid, f"provisioned by {existing['provenance']} (read-only)"))
        else:
            g.call(what, prov.update_alertrule, uid, body, disable_provenance=True)
            report.updated.append(("alert rule", uid))
    what = f"rule group {folder_uid}/{group}"
    current = g.get(what, prov.get_rule_group, folder_uid, group)
    if current is None:
        return
    # Rules of ours that the config no longer has (renamed or removed) would otherwise keep firing.
    for rule in current.get("rules") or []:
        uid = str(rule.get("uid", ""))
        if uid.startswith("fleetwatch-") and uid not in wanted and rule.get("provenance") in (None, ""):
            g.call(f"alert rule {uid}", prov.delete_alertrule, uid)
            report.deleted.append(("alert rule", uid))
    interval = int(grafana_alerts.INTERVAL.total_seconds())
    if current.get("interval") != interval:
        # A group created by the rule API gets Grafana's default interval; the group API sets ours.
        current = g.get(what, prov.get_rule_group, folder_uid, group) or current
        g.call(
            what, prov.update_rule_group, folder_uid, group, {**current, "interval": interval}, disable_provenance=True
        )
        report.updated.append(("rule group", f"{folder_uid}/{group}"))


def sync(
    url: str,
    token: str,
    *,
    env: Mapping[str, str] | None = None,
    datasources_dir: Path = DATASOURCES_DIR,
    dashboards_dir: Path = DASHBOARDS_DIR,
    config_path: Path = grafana_alerts.EXAMPLE_CONFIG,
    api: GrafanaApi | None = None,
) -> SyncReport:
    """Create or update fleetwatch's data sources, folder, dashboards and alert rules in the Grafana at ``url``.

    ``token`` is a service-account token with the Editor role or above (Admin for data sources). ``env`` fills the
    data sources' ``${VAR}`` (default: this process's environment). ``config_path`` is the fleetwatch config whose
    rules become Grafana rules. ``api`` replaces the client built from ``url`` and ``token`` (tests). Everything
    is read and validated before the first request, so a bad file changes nothing."""
    datasources = load_datasources(datasources_dir, env)
    dashboards = load_dashboards(dashboards_dir)
    try:
        rules = grafana_alerts.load_translation(config_path).rules
    except Exception as exc:  # ConfigError, ValueError from a rules file: what is wrong is in the message
        raise SyncError(f"alert rules from {config_path}: {exc}") from exc
    g = _Grafana(api if api is not None else connect(url, token))
    report = SyncReport()
    _sync_datasources(g, datasources, report)
    folder_uid = _sync_folder(g, report)
    _sync_dashboards(g, dashboards, folder_uid, report)
    _sync_alert_rules(g, rules, folder_uid, report)
    return report


# ------------------------------------------------------------------------------------------- annotations


def annotation_body(transition: AlertTransition, dashboard_uid: str | None = None) -> dict[str, Any]:
    """The annotation for one transition: a point at the transition, or for ``resolved`` a region spanning the
    episode (started_ns to the resolution)."""
    at_ms = transition.at_ns // 1_000_000
    start_ms = transition.started_ns // 1_000_000 if transition.state == "resolved" else at_ms
    return {
        "dashboard_uid": dashboard_uid,
        "time_from": start_ms,
        "time_to": at_ms if start_ms != at_ms else None,
        "tags": [
            "fleetwatch",
            f"rule:{transition.rule}",
            f"state:{transition.state}",
            f"severity:{transition.severity}",
        ],
        "text": f"{transition.summary} ({transition.series})",
    }


def annotate(
    url: str,
    token: str,
    transition: AlertTransition,
    *,
    dashboard_uid: str | None = None,
    api: GrafanaApi | None = None,
) -> int | None:
    """Post ``transition`` as a Grafana annotation; returns its id. Without ``dashboard_uid`` it is an
    organisation annotation, shown by any dashboard's annotation query on the tag ``fleetwatch``. Pass a
    long-lived ``api`` (``connect``) when annotating often: each call without one opens a new client."""
    g = _Grafana(api if api is not None else connect(url, token))
    body = annotation_body(transition, dashboard_uid)
    answer = g.call(f"annotation for {transition.rule}", g.api.annotations.add_annotation, **body)
    annotation_id = answer.get("id") if isinstance(answer, dict) else None
    return int(annotation_id) if annotation_id is not None else None
