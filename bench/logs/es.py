"""Elasticsearch helpers shared by the logs benchmark's pipelines: one index mapping, one clock.

Every pipeline writes into a fresh index with the same explicit mapping and settings, and is timed the same
way: from its start until ``_count`` on its index reaches the line count. ``_count`` sees only refreshed
segments, so "counted" means "searchable"; the index refreshes on its own every second and the poll never
forces a refresh (a forced refresh would make the pipeline under test pay for the measurement).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from elasticsearch import ApiError, Elasticsearch, TransportError
from elasticsearch import ConnectionError as EsConnectionError

T = TypeVar("T")

ES_URL = os.environ.get("BENCH_ES_URL", "http://127.0.0.1:9200")
POLL_S = 0.1

SETTINGS: dict[str, Any] = {
    "number_of_shards": 1,
    "number_of_replicas": 0,
    # Explicit, so the scheduled refresh keeps running even though nothing searches the index (a shard
    # with the default interval goes search-idle after 30 s and skips refreshes until it is searched).
    "refresh_interval": "1s",
}

MAPPINGS: dict[str, Any] = {
    # Strings under "fields" (request_id, ...) are identifiers: keyword, not text + keyword.
    "dynamic_templates": [
        {"fields_strings": {"path_match": "fields.*", "match_mapping_type": "string", "mapping": {"type": "keyword"}}}
    ],
    "properties": {
        "@timestamp": {"type": "date"},
        "message": {"type": "text"},
        "log": {"properties": {"level": {"type": "keyword"}, "file": {"properties": {"path": {"type": "keyword"}}}}},
        "service": {"properties": {"name": {"type": "keyword"}}},
        "host": {"properties": {"name": {"type": "keyword"}}},
        "event": {"properties": {"dataset": {"type": "keyword"}}},
        "fields": {"type": "object", "dynamic": True},
    },
}


def client(serializer: str = "json", **kwargs: Any) -> Elasticsearch:
    """A client for the local server; serializer "orjson" swaps the stdlib JSON serializer for orjson."""
    options: dict[str, Any] = {"request_timeout": 120, **kwargs}
    if serializer == "orjson":
        from elasticsearch.serializer import OrjsonSerializer

        options["serializer"] = OrjsonSerializer()
    return Elasticsearch(ES_URL, **options)


def wait_ready(es: Elasticsearch, timeout_s: float = 180.0) -> None:
    """Wait until the server answers, at least yellow: other users of the shared local stack restart it (the
    outage tests do), and a run must not start against a server that is coming up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            health = es.options(request_timeout=5).cluster.health(wait_for_status="yellow", timeout="2s")
            if not health.get("timed_out"):
                return
            problem = f"status {health.get('status')}"
        except (EsConnectionError, TransportError, ApiError) as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"Elasticsearch at {ES_URL} not ready after {timeout_s:.0f} s: {problem}")
        time.sleep(1)


def fresh_index(es: Elasticsearch, prefix: str) -> str:
    wait_ready(es)
    name = f"bench-logs-{prefix}-{uuid.uuid4().hex[:8]}"
    es.indices.create(index=name, settings=SETTINGS, mappings=MAPPINGS)
    # Wait for the primary, so the first bulk request does not pay for shard allocation.
    es.cluster.health(index=name, wait_for_status="green", timeout="30s")
    return name


def delete_index(es: Elasticsearch, name: str) -> None:
    """Delete an index of a run; when the server is down (restarted by someone else), wait for it first."""
    try:
        es.options(ignore_status=404).indices.delete(index=name)
    except (EsConnectionError, TransportError):
        wait_ready(es)
        es.options(ignore_status=404).indices.delete(index=name)


def delete_pipeline_data(es: Elasticsearch, prefix: str) -> None:
    """What a fleetwatch run under ``index_prefix = prefix`` created: its indices and its index templates."""
    es.options(ignore_status=404).indices.delete(index=f"{prefix}-*")
    es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-*")


OUTAGE = (EsConnectionError, TransportError)


def with_retries(label: str, run: Callable[[], T], attempts: int = 3) -> T:
    """Run one timed run again when the server went away during it (the shared local stack's outage tests
    restart it): such a run measures the restart, not the pipeline."""
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except OUTAGE as exc:
            if attempt == attempts:
                raise
            print(f"  {label}: Elasticsearch went away ({type(exc).__name__}); waiting, then again", flush=True)
            wait_ready(Elasticsearch(ES_URL))
    raise AssertionError("unreachable")


# What ``_count`` answers while a new index's shards are not yet started (the pipeline creates its indices
# when the first documents arrive): 503 with ``search_phase_execution_exception`` / "all shards failed", or
# ``no_shard_available_action_exception``. The index is coming, not broken: the poll goes on.
_NOT_READY_YET = 503


def count(es: Elasticsearch, index: str) -> int | None:
    """Documents searchable in ``index`` (a name or a pattern; none yet is 0), or None while its shards are
    still being allocated."""
    try:
        return int(es.count(index=index, ignore_unavailable=True, allow_no_indices=True)["count"])
    except ApiError as exc:
        if exc.meta.status == _NOT_READY_YET:
            return None
        raise


def wait_for_count(
    es: Elasticsearch,
    index: str,
    n: int,
    start: float,
    timeout_s: float,
    alive: Callable[[], bool] | None = None,
    first: list[tuple[float, int]] | None = None,
) -> float:
    """Poll _count every POLL_S until it reaches n; the seconds since start (time.monotonic()) when it did.
    ``first`` gets the seconds and the count of the first poll that saw documents: the shipper's start-up
    (process, index creation, first refresh) is in the time before it, its steady rate after it.

    Raises TimeoutError with the last count when n is not reached within timeout_s of start, or as soon as
    alive() says the pipeline has exited."""
    seen = 0
    while True:
        counted = count(es, index)
        now = time.monotonic()
        if counted is not None:
            seen = counted
            if seen and first is not None and not first:
                first.append((now - start, seen))
            if seen >= n:
                return now - start
        if now - start > timeout_s:
            state = "" if counted is not None else " (its shards still not started)"
            raise TimeoutError(f"{index}: {seen} of {n} documents searchable after {now - start:.1f} s{state}")
        if alive is not None and not alive():
            raise TimeoutError(f"{index}: the pipeline exited with {seen} of {n} documents searchable")
        time.sleep(POLL_S)


def indexing_total(es: Elasticsearch) -> int:
    """Documents the server indexed since it started, all indices: the difference over a run minus the run's
    own documents is other people's indexing that shared the server with it."""
    nodes = es.nodes.stats(
        metric="indices", index_metric="indexing", filter_path="nodes.*.indices.indexing.index_total"
    )
    return sum(int(n["indices"]["indexing"]["index_total"]) for n in nodes.get("nodes", {}).values())


def sample_sources(es: Elasticsearch, index: str, ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """The stored _source of the given ids (None for a missing one): to compare what pipelines indexed."""
    docs = es.mget(index=index, ids=ids)["docs"]
    return {d["_id"]: (d["_source"] if d.get("found") else None) for d in docs}
