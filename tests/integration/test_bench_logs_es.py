"""The logs benchmark's `_count` poll (bench/logs/es.py) against the real Elasticsearch: it must survive the
server's ordinary states. A pipeline creates its indices when its first documents arrive, and until a new
index's shard is started `_count` answers 503 (all shards failed); the benchmark used to die on that."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def _bench_es() -> ModuleType:
    # bench/ is a tool of the checkout, not part of the wheel: load its one module by path, without putting
    # the checkout on sys.path (the tests import fleetwatch from the installed wheel only).
    spec = importlib.util.spec_from_file_location("bench_logs_es", REPO / "bench" / "logs" / "es.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_count_poll_waits_for_an_index_whose_shard_is_not_started_yet(es_index: str) -> None:
    eslib = _bench_es()
    es = eslib.client()
    name = f"{es_index}-logs-unstarted"
    # A shard that cannot be allocated until the setting is lifted: the state a new index is in for a while.
    es.indices.create(
        index=name,
        settings={"number_of_shards": 1, "number_of_replicas": 0, "index.routing.allocation.require._name": "none"},
        wait_for_active_shards="0",
    )
    assert eslib.count(es, name) is None, "the server answers 503 while the shard is not started"
    assert eslib.count(es, f"{es_index}-nothing-yet-*") == 0, "a pattern with no index yet counts 0"

    def allocate_then_index() -> None:
        time.sleep(1.0)
        es.indices.put_settings(index=name, settings={"index.routing.allocation.require._name": None})
        es.cluster.health(index=name, wait_for_status="green", timeout="30s")
        es.bulk(operations=[op for i in range(3) for op in ({"index": {"_index": name}}, {"n": i})], refresh=True)

    writer = threading.Thread(target=allocate_then_index)
    started = time.monotonic()
    writer.start()
    elapsed = eslib.wait_for_count(es, name, 3, started, timeout_s=60)
    writer.join()
    assert 1.0 <= elapsed < 60
    assert eslib.count(es, name) == 3
