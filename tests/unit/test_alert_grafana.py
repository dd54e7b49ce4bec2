"""Alert transitions as Grafana annotations: the notifier against a fake grafana-client API (no Grafana runs
here), retrying what a server would retry and giving up on a refused token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grafana_client.client import GrafanaServerError, GrafanaUnauthorizedError

from fleetwatch.record import AlertTransition
from flows.alerts.notify import GrafanaAnnotationNotifier, SentJournal
from flows.alerts.rules import GrafanaAnnotationsConfig

T0 = 1_767_225_600 * 1_000_000_000


def transition(state: str, nid: str) -> AlertTransition:
    tags = {"device": "d1", "metric": "temp"}
    return AlertTransition(
        "hot", "readings,device=d1,metric=temp", tags, state, "warning", 35.0, 30.0, T0, T0, "d1 hot", nid
    )


class FakeAnnotations:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.posted: list[dict[str, Any]] = []

    def add_annotation(self, **body: Any) -> dict[str, Any]:
        if self.failures:
            raise self.failures.pop(0)
        self.posted.append(body)
        return {"id": len(self.posted)}


class FakeApi:
    def __init__(self, failures: list[Exception]) -> None:
        self.annotations = FakeAnnotations(failures)


def notifier(tmp_path: Path, api: FakeApi) -> GrafanaAnnotationNotifier:
    cfg = GrafanaAnnotationsConfig(url="http://grafana.example:3000", token="t0ken")
    return GrafanaAnnotationNotifier(cfg, SentJournal(tmp_path / "journal.jsonl"), api=api)


def test_posts_each_transition_once_and_retries_a_failing_grafana(tmp_path: Path) -> None:
    api = FakeApi([GrafanaServerError(503, None, "unavailable")])
    n = notifier(tmp_path, api)
    n.put([transition("firing", "a1"), transition("resolved", "a2")])
    n.put([transition("firing", "a1")])  # a replay: the journal has it
    assert n.flush(10)
    n.close()
    assert len(api.annotations.posted) == 2 and n.retries == 1 and n.written == 2
    assert all("fleetwatch" in b["tags"] for b in api.annotations.posted)


def test_a_refused_token_is_given_up_not_retried(tmp_path: Path) -> None:
    api = FakeApi([GrafanaUnauthorizedError("invalid API key")])
    n = notifier(tmp_path, api)
    n.put([transition("firing", "b1")])
    assert n.flush(10)
    n.close()
    assert api.annotations.posted == [] and n.failed == 1 and n.retries == 0
