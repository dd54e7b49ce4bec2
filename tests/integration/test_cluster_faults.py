"""A 2-process Bytewax cluster under faults, its processes on two "hosts" (network namespaces this test makes,
loopback only): one process killed, and the link between them cut for 10 s. After each, the counts are exact:
every reading published at QoS 1 is in the 10 s aggregates once.

What the operator runs is what is tested: each process is `fleetwatch run -i I -a A,B` and a supervisor
(systemd's Restart=, compose's restart:) starts again whatever exits (README, *Running a cluster*). The test plays
the supervisor: it starts a process again once it has exited."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import INFLUX_URL, MQTT_HOST, MQTT_PORT, influx_rows
from tests.integration.harness import Pipeline
from tests.integration.netns import TwoHosts, netns_available
from tests.integration.test_readings_pipeline import T0, Publisher, S, reading, write_config

INFLUX_PORT = int(INFLUX_URL.rsplit(":", 1)[1])
# Bytewax's own port on each host (each namespace has its own ports).
CLUSTER_PORT = 2101
DEVICES = 10
# How long the surviving process may take to notice that its peer is gone and exit.
PEER_LOSS_EXIT_S = 60.0


@pytest.fixture
def hosts() -> TwoHosts:
    why = netns_available()
    assert why is None, f"this test needs network namespaces (ip netns, as root): {why}"
    made = TwoHosts([MQTT_PORT, INFLUX_PORT])
    yield made  # type: ignore[misc]
    made.close()


class HostedCluster:
    """Process 0 on host a, process 1 on host b, one worker each, one recovery directory (shared storage)."""

    def __init__(self, hosts: TwoHosts, directory: Path, unique: str, db: str) -> None:
        self.hosts = hosts
        self.addresses = ",".join(f"{hosts.link_address[h]}:{CLUSTER_PORT}" for h in ("a", "b"))
        self.configs = {}
        for host in ("a", "b"):
            config = write_config(directory / f"fleetwatch-{host}.toml", unique, db)
            text = config.read_text()
            text = text.replace(f'host = "{MQTT_HOST}"', f'host = "{hosts.servers_address[host]}"')
            text = text.replace(f'url = "{INFLUX_URL}"', f'url = "http://{hosts.servers_address[host]}:{INFLUX_PORT}"')
            text = text.replace(f'[elasticsearch]\nindex_prefix = "{unique}"', "[elasticsearch]\nenabled = false")
            config.write_text(text)
            self.configs[host] = config
        self.procs: dict[str, Pipeline] = {}

    def start(self, *which: str) -> None:
        for host in which or ("a", "b"):
            process_id = "0" if host == "a" else "1"
            self.procs[host] = Pipeline(
                self.configs[host],
                1,
                ["--process-id", process_id, "--addresses", self.addresses],
                prefix=self.hosts.run_prefix(host),
                log_name=f"pipeline-{host}.log",
            )

    def messages_in(self) -> int:
        return sum(int(p.counters().get("messages_in", 0)) for p in self.procs.values())

    def wait_for_messages(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.messages_in() < count:
            assert time.monotonic() < deadline, f"the cluster took in {self.messages_in()} of {count} messages"
            time.sleep(0.1)

    def stop(self) -> None:
        """Every process at once: one alone cannot finish its last epoch without the other."""
        for p in self.procs.values():
            p.send_stop()
        for p in self.procs.values():
            p.await_stop()


def publish(pub: Publisher, unique: str, first: int, count: int) -> None:
    """Readings ``first`` .. ``first + count - 1``, spread over the devices, event times 10 ms apart from T0."""
    for i in range(first, first + count):
        pub.send(*reading(unique, f"d{i % DEVICES}", i * 0.01, 1.0))
    pub.flush()


def counted(db: str) -> int:
    query = f'SELECT sum("count") FROM "readings_agg" WHERE "window" = \'10s\' AND time < {T0 + 100 * S}'
    rows = influx_rows(db, query)
    return int(rows[0]["sum"]) if rows else 0


def close_windows_and_count(pub: Publisher, unique: str, db: str, expected: int, timeout: float = 60.0) -> int:
    """Readings far ahead in event time close every window of the test; then the counts as they land."""
    for d in range(DEVICES):
        pub.send(*reading(unique, f"d{d}", 500.0, 0.0))
    pub.flush()
    deadline = time.monotonic() + timeout
    total = counted(db)
    while total < expected and time.monotonic() < deadline:
        time.sleep(0.3)
        total = counted(db)
    time.sleep(2)  # anything counted twice would land now
    return counted(db)


def test_a_killed_process_stops_its_peer_and_the_restarted_cluster_counts_every_reading_once(
    tmp_path: Path, unique: str, influx_db: str, hosts: TwoHosts
) -> None:
    cluster = HostedCluster(hosts, tmp_path, unique, influx_db)
    cluster.start()
    pub = Publisher()
    publish(pub, unique, 0, 3000)
    cluster.wait_for_messages(1000)
    cluster.procs["b"].kill()
    # The survivor cannot go on without its peer's partitions: it must stop by itself, with an error, so that
    # its supervisor restarts it; a process that stays up doing nothing would look healthy.
    survivor = cluster.procs["a"]
    try:
        code: int | None = survivor.proc.wait(PEER_LOSS_EXIT_S)
    except subprocess.TimeoutExpired:
        code = None
    assert code is not None, f"process 0 runs {PEER_LOSS_EXIT_S:.0f} s after its peer was killed:\n{survivor.tail()}"
    assert code == 1, f"process 0 exited with {code} after losing its peer:\n{survivor.tail()}"
    survivor.finish()
    assert "process 0 lost the cluster" in survivor.log_text(), survivor.tail()
    survivor.assert_clean_log("after losing its peer")
    publish(pub, unique, 3000, 3000)  # while the cluster is down: the broker keeps it for the sessions
    cluster.start()
    total = close_windows_and_count(pub, unique, influx_db, 6000)
    pub.close()
    cluster.stop()
    assert total == 6000


def test_a_link_cut_for_ten_seconds_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, unique: str, influx_db: str, hosts: TwoHosts
) -> None:
    cluster = HostedCluster(hosts, tmp_path, unique, influx_db)
    cluster.start()
    pub = Publisher()
    publish(pub, unique, 0, 3000)
    cluster.wait_for_messages(1000)
    assert hosts.link_works()
    hosts.cut()
    cut_at = time.monotonic()
    assert not hosts.link_works(), "the link still carries traffic after the cut"
    publish(pub, unique, 3000, 2000)
    time.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))
    hosts.mend()
    assert hosts.link_works()
    publish(pub, unique, 5000, 1000)
    # Either the processes rode out the cut, or they stopped with an error and the supervisor starts them again.
    exited = [h for h, p in cluster.procs.items() if p.proc.poll() is not None]
    for host in exited:
        assert cluster.procs[host].proc.returncode != 0
        cluster.procs[host].finish()
    if exited:
        for host, p in cluster.procs.items():
            if host not in exited:
                p.proc.wait(PEER_LOSS_EXIT_S)
                p.finish()
        cluster.start()
    total = close_windows_and_count(pub, unique, influx_db, 6000)
    late = {host: p.counters().get("late_readings") for host, p in cluster.procs.items()}
    pub.close()
    cluster.stop()
    assert total == 6000, (
        f"{total} of 6000 readings in the 10 s aggregates; restarted after the cut: {exited or 'none'}; "
        f"late readings per host: {late}"
    )


def test_readings_held_in_a_link_cut_count_in_the_window_that_was_open_when_it_began(
    tmp_path: Path, unique: str, influx_db: str, hosts: TwoHosts
) -> None:
    """The cut begins mid-window: readings up to 15 s are in the windows, [10 s, 20 s) is open and would close
    on wall time about 7 s later. The cut holds every worker for 10 s, with readings taken in before it. Time in
    which the cluster cannot go on is not quiet time of the series: the window waits for them, and none is
    late."""
    cluster = HostedCluster(hosts, tmp_path, unique, influx_db)
    cluster.start()
    pub = Publisher()
    publish(pub, unique, 0, 1500)
    cluster.wait_for_messages(1500)
    time.sleep(2)  # the epochs that carried readings up to 15 s complete
    hosts.cut()
    cut_at = time.monotonic()
    publish(pub, unique, 1500, 3500)
    time.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))
    hosts.mend()
    publish(pub, unique, 5000, 1000)
    assert not [h for h, p in cluster.procs.items() if p.proc.poll() is not None], "a process exited in the cut"
    total = close_windows_and_count(pub, unique, influx_db, 6000)
    late = {host: p.counters().get("late_readings") for host, p in cluster.procs.items()}
    pub.close()
    cluster.stop()
    assert total == 6000 and set(late.values()) == {0}, f"{total} of 6000 counted; late readings per host: {late}"
