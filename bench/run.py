"""`make bench`: readings throughput, loss, latency and memory against the local stack, with references.

For each QoS, in the same run, on the same stream and the same InfluxDB:

- `mosquitto_sub` draining the stream: the broker's limit on this machine;
- `fleetwatch run` at rising publish rates (live event times), then the best rate again as a history replay;
- the naive per-message Bytewax flow (bench/naive_flow.py) at rising rates;
- Node-RED 5 (bench/nodered/) at rising rates, when BENCH_NODERED is not 0;
- Telegraf 1.37 (bench/telegraf/, built from its Go module with only the plugins it needs) at rising rates,
  when BENCH_TELEGRAF is not 0.

Then the cardinality ladder (BENCH_SERIES, default 1,000, 100,000 and 1,000,000 series, 10 s + 1 min windows,
quantiles on): fleetwatch and Telegraf at rising rates per series count, each run after a warm-up that sends
one reading per series (a fleet's series are known to the store and the pipeline before the measured load, as
in steady operation; without it a 20 s run at 100,000 series mostly measures the store creating series). At
100,000 series fleetwatch climbs once more with the fleet rules on (a threshold rule on every reading and one on
every 10 s window, as in the alerts bench; BENCH_FLEET_RULES_SERIES, BENCH_FLEET_RULES_RATES).

The load comes from bench/publisher.c (libmosquitto), a separate process. A rate is *sustained* when the
pipeline has received everything within 2 s of the publisher's end (the backlog did not grow). *Lost* is
readings published minus readings counted in the 10 s aggregates in InfluxDB. *Latency* is window end to
point visible in InfluxDB, from polling the aggregate count per window every 100 ms; the p99 is also given per
window boundary, and apart for the boundaries written under load (the generators still ran when the boundary's
allowed lateness ended: in a 20 s rung the first) and after it (on an idle machine). *CPU* is taken from the
measured publish's start until the pipeline has drained (or stopped waiting): the pipeline process's CPU per
message received, its cores, InfluxDB's cores and the whole machine's; the cost per message is far less noisy
than whether a rate was sustained, since all of them share the 2 cores. Each JSON result line is printed and
the whole run lands in bench/results/.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple

import urllib3

from bench.installed import fleetwatch_command
from bench.logs.cpu import TICK, machine_ticks, process_ticks, server_pid
from bench.stack_credentials import INFLUX_AUTH_TOML, INFLUX_USER, influx_headers, influx_password

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "bench" / "build"
RESULTS = REPO / "bench" / "results"
PUBLISHER = BUILD / "publisher"
http = urllib3.PoolManager()

S = 1_000_000_000
DEVICES = int(os.environ.get("BENCH_DEVICES", "1000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "20000,40000,60000,80000").split(",")]
NAIVE_RATES = [int(r) for r in os.environ.get("BENCH_NAIVE_RATES", "5000,10000,20000,30000").split(",")]
NODERED_RATES = [int(r) for r in os.environ.get("BENCH_NODERED_RATES", "10000,20000,30000,40000,60000").split(",")]
QOS_LEVELS = [int(q) for q in os.environ.get("BENCH_QOS", "0,1").split(",")]
SUB_RATES = [int(r) for r in os.environ.get("BENCH_SUB_RATES", "40000,60000,80000,100000,120000,150000").split(",")]
TELEGRAF_RATES = [int(r) for r in os.environ.get("BENCH_TELEGRAF_RATES", "20000,40000,60000,80000").split(",")]
PUBLISHERS = int(os.environ.get("BENCH_PUBLISHERS", "2"))
# Series counts of the cardinality ladder, and the rates climbed at each.
# Kill -9 and restart under QoS 1 load at these series counts, at this rate.
RESTART_SERIES = [int(s) for s in os.environ.get("BENCH_RESTART_SERIES", "100000").split(",") if s]
RESTART_RATE = int(os.environ.get("BENCH_RESTART_RATE", "5000"))
SERIES_LADDER = [int(s) for s in os.environ.get("BENCH_SERIES", "1000,100000,1000000").split(",") if s]
# BENCH_FLEET_RULES=1: every fleetwatch rung also evaluates a threshold rule on every reading and one on every 10 s
# window (never crossed), as bench/alerts.py's fleet rules: what the alert states cost at a rung's rate and series.
FLEET_RULES = os.environ.get("BENCH_FLEET_RULES", "0") != "0"
# The cardinality ladder climbs fleetwatch once more with the fleet rules at these series counts (issue 11, target 4:
# with one rule on every reading and one on every window at 100,000 series, target 1 still holds), from the lowest
# of these rates; BENCH_FLEET_RULES_SERIES= (empty) leaves it out.
FLEET_RULES_SERIES = [int(s) for s in os.environ.get("BENCH_FLEET_RULES_SERIES", "100000").split(",") if s]
_FLEET_RULES_RATES_DEFAULT = "40000,60000,80000,100000,120000,150000,180000,200000"
FLEET_RULES_RATES = [int(r) for r in os.environ.get("BENCH_FLEET_RULES_RATES", _FLEET_RULES_RATES_DEFAULT).split(",")]
# Each climbs until a rate is not sustained: to the rates where fleetwatch failed in earlier runs, so that the
# ratio of the two best rates (issue 11, target 1) is one of limits, not of where a ladder ended. At 1,000 series
# the two generators could not publish 280,000/s while fleetwatch read (23.1 s for 20 s, BENCHMARKS.md run AI):
# that rung is where this machine ends, fleetwatch included. At 100,000 series the ladder ended at 150,000/s until
# run AM's driver runs sustained 190,000-200,000/s; it now climbs to the 1,000-series ladder's top sustained rate
# (240,000/s in runs AM and AN).
SERIES_RATES = {
    1_000: [20_000, 40_000, 60_000, 80_000, 100_000, 120_000, 150_000, 180_000, 210_000, 240_000, 280_000],
    100_000: [10_000, 20_000, 40_000, 60_000, 80_000, 100_000, 120_000, 150_000, 180_000, 200_000, 220_000, 240_000],
    1_000_000: [5_000, 10_000, 15_000, 20_000],
}
WARM_UP_RATE = 10_000
# Telegraf climbs the cardinality ladder up to this many series: issue 11 asks for it at 1,000 and 100,000. At
# 100,000 series it peaked at 5.8 GB (run AF); a million would hold ten times the series on a 24 GiB machine.
TELEGRAF_MAX_SERIES = int(os.environ.get("BENCH_TELEGRAF_MAX_SERIES", "100000"))
# What a window's line carries, for fleetwatch and Telegraf alike: Telegraf's basicstats with these stats (it says
# "stdev") and its quantile aggregator with fleetwatch's default quantiles (p50, p95, p99). Every field is work for
# InfluxDB at each boundary, so both write the same nine. Before run AE fleetwatch wrote its default eleven (first
# and last too).
STATISTICS = ["count", "min", "max", "mean", "sum", "stddev"]
TELEGRAF_VERSION = "v1.37.2"
TELEGRAF = BUILD / "telegraf"
TELEGRAF_TAGS = (
    "custom,inputs.mqtt_consumer,inputs.internal,aggregators.basicstats,aggregators.quantile,"
    "outputs.influxdb,outputs.file,parsers.json,serializers.json"
)
HISTORY_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: days in the past


def build_publisher() -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    if not Path("/usr/include/mosquitto.h").exists():
        subprocess.run(["apt-get", "install", "-y", "-qq", "libmosquitto-dev"], check=True)
    subprocess.run(["gcc", "-O2", "-o", str(PUBLISHER), str(REPO / "bench" / "publisher.c"), "-lmosquitto"], check=True)


def build_telegraf() -> None:
    """Telegraf from its Go module, with only the plugins the peer config uses (its `custom` build tag)."""
    marker = BUILD / "telegraf.build"
    wanted = f"{TELEGRAF_VERSION} {TELEGRAF_TAGS}"
    if TELEGRAF.exists() and marker.exists() and marker.read_text() == wanted:
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    go = os.environ.get("GO", "go" if shutil.which("go") else "/usr/local/go/bin/go")
    env = {**os.environ, "GOBIN": str(BUILD), "CGO_ENABLED": "0"}
    subprocess.run(
        [go, "install", "-tags", TELEGRAF_TAGS, f"github.com/influxdata/telegraf/cmd/telegraf@{TELEGRAF_VERSION}"],
        check=True,
        env=env,
    )
    marker.write_text(wanted)


def publish(
    qos: int, rate: float, seconds: float, prefix: str, event_start_ms: int = 0, devices: int = DEVICES
) -> float:
    """Run PUBLISHERS load generators in parallel, each at rate/PUBLISHERS; the wall time they took.
    One libmosquitto client tops out near 35,000 msg/s at QoS 1 here (it waits for the broker's acks
    within a 1,000-message window), so QoS 1 loads above that need several."""
    args = [str(qos), str(rate / PUBLISHERS), str(seconds), str(devices), prefix, str(event_start_ms)]
    procs = [
        subprocess.Popen(
            [str(PUBLISHER), "127.0.0.1", "1883", *args, str(index), str(PUBLISHERS)], stdout=subprocess.PIPE, text=True
        )
        for index in range(PUBLISHERS)
    ]
    start = time.monotonic()
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"publisher failed: {out}")
    # Wall time until the last generator is done: at QoS 1 that includes the broker's acknowledgements, so
    # a generator that could not keep the rate shows here.
    return time.monotonic() - start


def broker_limit(qos: int, rates: list[int]) -> int:
    """The highest rate of the ladder that `mosquitto_sub` receives in full within 2 s of the load
    generators' end: the broker's limit on this machine, measured the way the pipelines are."""
    best = 0
    for rate in rates:
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        published = int(rate / PUBLISHERS * SECONDS) * PUBLISHERS
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-t", f"{prefix}/#", "-q", str(qos)], stdout=subprocess.PIPE
        )
        received = [0]

        def count(stream: IO[bytes] = sub.stdout, received: list[int] = received) -> None:  # type: ignore[assignment]
            for chunk in iter(lambda: stream.read1(1 << 16), b""):
                received[0] += chunk.count(b"\n")

        counter = threading.Thread(target=count, daemon=True)
        counter.start()
        time.sleep(0.5)
        start = time.monotonic()
        sent = publish(qos, rate, SECONDS, prefix)
        ended = time.monotonic()
        while received[0] < published and time.monotonic() < ended + 30:
            time.sleep(0.05)
        drained_after = time.monotonic() - ended
        sub.terminate()
        sub.wait()
        result = {
            "reference": "mosquitto_sub",
            "qos": qos,
            "rate": rate,
            "published": published,
            "received": received[0],
            "publish_seconds": round(ended - start, 2),
            "drained_after_s": round(drained_after, 2),
            "sustained": received[0] >= published and drained_after <= 2.0 and sent <= SECONDS * 1.05,
        }
        print(json.dumps(result), flush=True)
        if not result["sustained"]:
            break
        best = rate
    return best


def influxql(db: str, q: str) -> list:
    resp = http.request(
        "POST" if q.startswith(("CREATE", "DROP")) else "GET",
        "http://127.0.0.1:8086/query",
        fields={"db": db, "q": q, "epoch": "ns"},
        headers=influx_headers(),
    )
    # A refused query (401, a syntax error, a missing database) must stop the benchmark, not read as "no
    # points yet": the pollers would wait out their timeouts and report the pipeline as slow.
    if resp.status != 200:
        raise RuntimeError(f"InfluxQL {q!r} on {db!r}: HTTP {resp.status}: {resp.data[:300]!r}")
    result = json.loads(resp.data)["results"][0]
    if "error" in result:
        raise RuntimeError(f"InfluxQL {q!r} on {db!r}: {result['error']}")
    return result.get("series", [])


# The allowed lateness of the pipelines under test (bench_config).
ALLOWED_LATENESS_S = 2

# Above this many devices the latency poller watches only the publisher's sampled devices (bench/publisher.c,
# site "sample", 500 of them evenly spaced). Counting every series every 100 ms costs InfluxDB 1.x a
# query over all of them: at 100,000 series that kept a core busy and slowed the writes of the pipeline
# under test. A regular expression or a list of devices is no cheaper; one tag equality is an index lookup.
LATENCY_SAMPLE_FROM = 10_000


def device_sample(devices: int) -> str:
    """The InfluxQL condition that keeps the latency sample's series."""
    return " AND \"site\" = 'sample'" if devices > LATENCY_SAMPLE_FROM else ""


class VisibilityPoller:
    """Polls the per-window aggregate count of a sample of devices; each increase is that many points becoming
    visible then. The 10 s windows make the rung's latency; a 1 min window, when the rung has one, is measured
    beside it (at a minute boundary both end together, and the order they are written in moves latency from
    one to the other)."""

    def __init__(
        self,
        db: str,
        since_ns: int,
        count_field: str = "count",
        stamp_is_window_end: bool = False,
        devices: int = DEVICES,
        windows: tuple[str, ...] = ("10s",),
    ) -> None:
        self.db = db
        self.since_ns = since_ns
        self.count_field = count_field
        self.sample = device_sample(devices)
        # fleetwatch stamps an aggregate with its window's start; Telegraf with the time it pushed it, which
        # is the end of its window (plus its delay), so its latency is measured from the stamp itself.
        self.end_offset_ns = 0 if stamp_is_window_end else 10 * S
        self.stamp_is_window_end = stamp_is_window_end
        self.seen: dict[int, int] = {}
        # The 1 min windows' latencies, and their counts so far, by window start.
        self.minute = "1m" in windows
        self.seen_minute: dict[int, int] = {}
        self.by_minute_window: dict[int, list[float]] = {}
        # The latencies by window start: a boundary's p99 shows what the p99 over the run hides (which boundary
        # was slow: a minute boundary's, the first one's).
        self.by_window: dict[int, list[float]] = {}
        # When a sampled point last became visible (monotonic).
        self.last_seen = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            now = time.time_ns()
            self._poll(now, "10s", f"time >= {self.since_ns}", self.end_offset_ns, self.seen, self.by_window)
            if self.minute:
                # The 1 min windows that end after the measured readings began (fleetwatch stamps a window's start).
                offset_ns = 0 if self.stamp_is_window_end else 60 * S
                since = f"time > {self.since_ns - offset_ns}"
                self._poll(now, "1m", since, offset_ns, self.seen_minute, self.by_minute_window)

    def _poll(
        self,
        now: int,
        window: str,
        since: str,
        end_offset_ns: int,
        seen: dict[int, int],
        by_window: dict[int, list[float]],
    ) -> None:
        """One count of the sampled points of ``window`` per window start; what is new became visible ``now``."""
        rows = influxql(
            self.db,
            f'SELECT count("{self.count_field}") FROM "readings_agg" WHERE {since} '
            f"AND \"window\" = '{window}'{self.sample} GROUP BY time({window})",
        )
        for start, count in rows[0]["values"] if rows else []:
            before = seen.get(start, 0)
            if count and count > before:
                latency = (now - (start + end_offset_ns)) / S
                by_window.setdefault(start, []).extend([latency] * (count - before))
                seen[start] = count
                self.last_seen = time.monotonic()

    def wait_quiet(self, after_ns: int, quiet_s: float, deadline: float) -> None:
        """Until wall time ``after_ns`` has passed and, since then, no sampled point has become visible for
        ``quiet_s`` (or until the monotonic deadline)."""
        reached: float | None = None
        while time.monotonic() < deadline:
            if reached is None and time.time_ns() >= after_ns:
                reached = time.monotonic()
            if reached is not None and time.monotonic() - max(reached, self.last_seen) >= quiet_s:
                return
            time.sleep(0.1)

    def result(self, load_until_ns: int) -> dict:
        """The latency figures. ``load_until_ns``: when the generators stopped. A window's lines were written under
        load when the load still ran as its allowed lateness ended; a 20 s rung has one such window boundary (its
        first), and the next is written once the generators are done, on an idle machine."""
        self.stop.set()
        self.thread.join()
        lat = sorted(latency for window in self.by_window.values() for latency in window)
        if not lat:
            return {}

        def under_load(start: int) -> bool:
            return start + self.end_offset_ns + ALLOWED_LATENESS_S * S <= load_until_ns

        by_load: dict[bool, list[float]] = {True: [], False: []}
        for start, window in self.by_window.items():
            by_load[under_load(start)].extend(window)
        loaded, idle = sorted(by_load[True]), sorted(by_load[False])
        minute = sorted(latency for window in self.by_minute_window.values() for latency in window)
        # A 1 min window ends inside a 20 s rung in some runs and not in others.
        minute_figures = (
            {
                "latency_1m_p50_s": minute[len(minute) // 2],
                "latency_1m_p99_s": _p99(minute),
                "latency_1m_points": len(minute),
            }
            if minute
            else {}
        )
        return {
            **minute_figures,
            "latency_p50_s": lat[len(lat) // 2],
            "latency_p99_s": _p99(lat),
            "latency_points": len(lat),
            "latency_p99_under_load_s": _p99(loaded) if loaded else None,
            "latency_p99_after_load_s": _p99(idle) if idle else None,
            # Per window, by its start (seconds past the minute) in time order: p99, the sampled points, and whether
            # its lines were written under load.
            "latency_p99_by_window": [
                {
                    "start_s": start // S % 60,
                    "p99_s": round(_p99(sorted(window)), 3),
                    "points": len(window),
                    "under_load": under_load(start),
                }
                for start, window in sorted(self.by_window.items())
            ],
        }


def _p99(ordered: list[float]) -> float:
    return ordered[int(len(ordered) * 0.99)]


def bench_config(tmp: Path, unique: str, qos: int, windows: str = '["10s"]', rules: bool = FLEET_RULES) -> Path:
    config = tmp / "bench.toml"
    config.write_text(f"""
[mqtt]
client_id = "{unique}"
shared_group = "{unique}"
[[mqtt.subscriptions]]
topic = "{unique}/+/+/+"
qos = {qos}
template = "{unique}/{{site}}/{{device}}/{{metric}}"
format = "json"
timestamp_field = "ts"
timestamp_unit = "ms"
[windows]
tumbling = {windows}
allowed_lateness = "{ALLOWED_LATENESS_S}s"
max_age = "0s"
statistics = {json.dumps(STATISTICS)}
[recovery]
dir = "{tmp / "recovery"}"
[retention]
# As the references (Telegraf) write: everything in the database's default policy.
enabled = false

[influxdb]
database = "{unique}"
{INFLUX_AUTH_TOML}
[dead_letters]
path = "{tmp / "dead.jsonl"}"
""")
    if rules:
        config.write_text(
            config.read_text()
            + f"""
[alerts]
mqtt_topic_prefix = "{unique}-alerts"
journal = "{tmp / "journal.jsonl"}"
"""
            # (the rungs' topics name their metric: every series is watched)
            + fleet_rules_toml()
        )
    return config


def fleet_rules_toml(metric: str | None = None) -> str:
    """The fleet rules: a threshold rule on every reading and one on every 10 s window (on the mean), never crossed,
    so that they cost what watching every series costs without notifying; ``metric`` narrows both to one metric."""
    only = f'metric = "{metric}"\n' if metric else ""
    return f"""
[[alerts.rules]]
name = "fleet_reading"
target = "reading"
{only}condition = ">"
warning = 1e12
[[alerts.rules]]
name = "fleet_window"
target = "window"
window = "10s"
stat = "mean"
{only}condition = ">"
warning = 1e12
"""


Launcher = Callable[[Path, Path, str, int], subprocess.Popen[bytes]]


class Peer(NamedTuple):
    """How the harness reads a pipeline's output: the aggregate count field and what its stamps mean."""

    count_field: str = "count"
    stamp_is_window_end: bool = False


PEERS = {"telegraf": Peer("v_count", True)}


def launch_fleetwatch(config: Path, status: Path, unique: str, qos: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        fleetwatch_command("run", "-c", str(config), "--status-file", str(status)),
        stderr=open(config.parent / "pipeline.log", "w"),
        cwd=REPO,
    )


def launch_naive(config: Path, status: Path, unique: str, qos: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.naive_flow", str(config), str(status)],
        stderr=open(config.parent / "pipeline.log", "w"),
        cwd=REPO,
    )


def launch_nodered(config: Path, status: Path, unique: str, qos: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["bash", str(REPO / "bench" / "nodered" / "run.sh"), f"{unique}/+/+/+", str(qos), unique, str(status), unique],
        stdout=subprocess.DEVNULL,
        stderr=open(config.parent / "pipeline.log", "w"),
        start_new_session=True,
    )


def _telegraf_aggregators(windows: list[str]) -> str:
    blocks = []
    for window in windows:
        period = window.replace("1m", "60s")
        for kind, options in (
            ("basicstats", f"stats = {json.dumps([s.replace('stddev', 'stdev') for s in STATISTICS])}"),
            # t-digest: 1.37.2's exact algorithms index past the end of a window holding one value
            # (a fleet reporting every 10 s) and the process panics.
            ("quantile", 'quantiles = [0.5, 0.95, 0.99]\n  algorithm = "t-digest"'),
        ):
            blocks.append(
                f'[[aggregators.{kind}]]\n  period = "{period}"\n  delay = "2s"\n  grace = "2s"\n'
                f'  drop_original = true\n  namepass = ["readings"]\n  name_override = "readings_agg"\n'
                f'  {options}\n  [aggregators.{kind}.tags]\n    window = "{window}"\n'
            )
    return "\n".join(blocks)


def launch_telegraf(config: Path, status: Path, unique: str, qos: int) -> subprocess.Popen[bytes]:
    """Telegraf with the peer config; a thread turns its internal `metrics_gathered` count into the same
    status file fleetwatch writes, so "received while publishing" is read the same way."""
    windows = json.loads(config.with_name("windows.json").read_text())
    internal = config.parent / "internal.jsonl"
    conf = (REPO / "bench" / "telegraf" / "telegraf.conf.in").read_text()
    for key, value in {
        "TOPIC": f"{unique}/+/+/+",
        "QOS": str(qos),
        "CLIENT_ID": unique,
        "PERSISTENT": "true" if qos else "false",
        "DATABASE": unique,
        "INTERNAL_OUT": str(internal),
        "AGGREGATORS": _telegraf_aggregators(windows),
    }.items():
        conf = conf.replace(f"@{key}@", value)
    conf_path = config.parent / "telegraf.conf"
    conf_path.write_text(conf)
    proc = subprocess.Popen(
        [str(TELEGRAF), "--config", str(conf_path)],
        # Telegraf reads ${...} in its config from the environment: the password stays out of the file.
        env={**os.environ, "FW_INFLUXDB_USER": INFLUX_USER, "FW_INFLUXDB_PASSWORD": influx_password()},
        stdout=subprocess.DEVNULL,
        stderr=open(config.parent / "pipeline.log", "w"),  # noqa: SIM115 - lives as long as the process
    )

    def relay() -> None:
        received = 0
        offset = 0
        while proc.poll() is None:
            if internal.exists():
                with internal.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                complete = chunk.rfind(b"\n") + 1
                offset += complete
                for line in chunk[:complete].splitlines():
                    metric = json.loads(line)
                    if metric.get("tags", {}).get("input") == "mqtt_consumer":
                        received = int(metric["fields"].get("metrics_gathered", received))
                _write_json(status, {"messages_in": received})
            time.sleep(0.2)

    threading.Thread(target=relay, daemon=True).start()
    return proc


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def _status(status: Path) -> dict:
    try:
        return dict(json.loads(status.read_text()))
    except (OSError, ValueError):
        return {}


def _messages_in(status: Path) -> int:
    return int(_status(status).get("messages_in", 0))


def _process_and_children(pid: int) -> list[int]:
    """A pipeline's process and its descendants: Node-RED runs under a shell."""
    found, i = [pid], 0
    while i < len(found):
        try:
            children = subprocess.run(["pgrep", "-P", str(found[i])], capture_output=True, text=True).stdout
        except OSError:
            break
        found += [int(child) for child in children.split()]
        i += 1
    return found


def _peak_rss_mb(pid: int) -> float:
    """VmHWM of the process and its descendants."""
    total = 0
    for p in _process_and_children(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total = max(total, int(line.split()[1]))
        except OSError:
            pass
    return total / 1024


def _warm_up(qos: int, unique: str, devices: int, status: Path, peer: Peer, windows: list[str]) -> int:
    """One reading per series, live, then wait until the pipeline has them and their aggregates of every
    window length are in InfluxDB: the store then knows every series, as in steady operation (creating
    100,000 new series costs InfluxDB 1.x more than a core for a while, and that is not what a rung
    measures). Returns the messages received by then, after waiting past the next 10 s boundary so that
    the measured readings start in windows of their own."""
    # 10,000/s: what both pipelines take in while every message is a new series (a faster warm-up at QoS 0
    # is partly dropped by the broker, and the run then holds fewer series than it says).
    publish(qos, min(WARM_UP_RATE, devices), max(1.0, devices / WARM_UP_RATE), unique, 0, devices)
    before, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 30:
        received = _messages_in(status)
        if received >= devices:
            break
        if received != before:
            before, still_since = received, time.monotonic()
        time.sleep(0.2)
    received = _messages_in(status)
    deadline = time.monotonic() + 80 + devices / 5_000
    for window in windows:
        while time.monotonic() < deadline:
            query = f'SELECT sum("{peer.count_field}") FROM "readings_agg" WHERE "window" = \'{window}\''
            rows = influxql(unique, query)
            if rows and rows[0]["values"][0][1] >= received:
                break
            time.sleep(1)
    boundary = (time.time_ns() // (10 * S) + 1) * 10 * S
    time.sleep(max(0.0, (boundary - time.time_ns()) / S) + 0.1)
    return _messages_in(status)


def run_pipeline(
    name: str,
    launch: Launcher,
    qos: int,
    rate: int,
    history: bool = False,
    devices: int = DEVICES,
    windows: str = '["10s"]',
    warm_up: bool = False,
    rules: bool = FLEET_RULES,
) -> dict:
    """One rung: start the pipeline, optionally warm it up, publish `rate` for SECONDS, then measure. ``rules``:
    fleetwatch also evaluates the fleet rules (``fleet_rules_toml``)."""
    peer = PEERS.get(name, Peer())
    unique = f"bench{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="fwbench"))
    influxql("", f'CREATE DATABASE "{unique}"')
    config = bench_config(tmp, unique, qos, windows, rules and name == "fleetwatch")
    (tmp / "windows.json").write_text(windows)
    status = tmp / "status.json"
    proc = launch(config, status, unique, qos)
    deadline = time.monotonic() + 120
    while not status.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start; see {tmp / 'pipeline.log'}")
        time.sleep(0.1)
    time.sleep(2)
    warm_received = _warm_up(qos, unique, devices, status, peer, json.loads(windows)) if warm_up else 0
    before_snapshots = _status(status)
    # The measured readings' windows start here; a peer that stamps the window's end stamps them 10 s later
    # (and the warm-up's window at this boundary).
    measured_from_ns = time.time_ns() // (10 * S) * 10 * S if warm_up else 0
    if warm_up and peer.stamp_is_window_end:
        measured_from_ns += 10 * S
    event_start = HISTORY_START_MS if history else 0
    poller = (
        None
        if history
        else VisibilityPoller(
            unique,
            measured_from_ns or time.time_ns() - 10 * S,
            peer.count_field,
            peer.stamp_is_window_end,
            devices,
            tuple(json.loads(windows)),
        )
    )
    cpu = _CpuSpan(proc.pid, _messages_in(status))
    publish_start = time.monotonic()
    sent_seconds = publish(qos, rate, SECONDS, unique, event_start, devices)
    published_until_ns = time.time_ns()
    published = int(rate / PUBLISHERS * SECONDS) * PUBLISHERS
    received_at_end = _messages_in(status) - warm_received
    drained_in = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _messages_in(status) - warm_received >= published:
            drained_in = time.monotonic() - publish_start - sent_seconds
            break
        time.sleep(0.05)
    cpu_figures = cpu.stop(_messages_in(status))
    if history:  # event time must move on to close the last replayed windows
        publish(qos, 1000, devices / 1000, unique, event_start + 10_000_000, devices)
    counted = 0.0
    if poller is not None:
        # The count below reads every series' aggregates: at 100,000 series a query of about 0.3 s on both
        # cores, every 0.5 s. Run while the last windows are still being written, it slowed their writes and so
        # the latency measured for them; it waits until the last window is due and the sampled series have
        # had nothing new for a while. The count has its own budget after that wait: sharing one, a slow rung
        # (1,000,000 series at 20,000/s, run AO) spent it all on the wait and was never counted.
        # (the last window with readings ends at the next 10 s boundary)
        last_end_ns = (published_until_ns // (10 * S) + 1) * 10 * S
        poller.wait_quiet(last_end_ns + ALLOWED_LATENESS_S * S, 2.0, time.monotonic() + 60)
    settle = time.monotonic() + 40
    window_filter = f"WHERE \"window\" = '10s' AND time >= {measured_from_ns}"
    if history:
        window_filter += f" AND time < {(event_start + 5_000_000) * 10**6}"
    while time.monotonic() < settle:
        rows = influxql(unique, f'SELECT sum("{peer.count_field}") FROM "readings_agg" {window_filter}')
        counted = rows[0]["values"][0][1] if rows else 0
        if counted >= published:
            break
        time.sleep(0.5)
    latency = poller.result(published_until_ns) if poller else {}
    rss = _peak_rss_mb(proc.pid)
    snapshots = _snapshot_figures(before_snapshots, _status(status))
    os.killpg(proc.pid, signal.SIGINT) if name == "node-red" else proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    influxql("", f'DROP DATABASE "{unique}"')
    # The rung's recovery state is up to a few hundred MB at fleet scale; its logs and config stay for a look.
    shutil.rmtree(tmp / "recovery", ignore_errors=True)
    sustained = drained_in is not None and drained_in <= 2.0 and sent_seconds <= SECONDS * 1.05
    return {
        "pipeline": name,
        "fleet_rules": rules and name == "fleetwatch",
        "qos": qos,
        "rate": rate,
        "history": history,
        "devices": devices,
        "windows": json.loads(windows),
        "warm_up": warm_up,
        # Readings the pipeline had received by the end of the warm-up (one per series when all arrived).
        "warm_up_received": warm_received,
        "published": published,
        "publish_seconds": round(sent_seconds, 2),
        "received_at_publish_end": received_at_end,
        "drained_after_s": None if drained_in is None else round(drained_in, 2),
        "sustained": sustained,
        "counted_in_aggregates": counted,
        "lost": published - counted,
        "peak_rss_mb": round(rss, 1),
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in latency.items()},
        **cpu_figures,
        **snapshots,
    }


class _CpuSpan:
    """CPU used from its start to ``stop``: the pipeline's (its process and descendants) per message received and
    in cores, InfluxDB's and the machine's in cores."""

    def __init__(self, pipeline_pid: int, messages: int) -> None:
        self.pids, self.influxd = _process_and_children(pipeline_pid), server_pid(b"influxd")
        self.t0, self.messages = time.monotonic(), messages
        self.pipeline, self.influx, self.busy = self._pipeline_ticks(), process_ticks(self.influxd), machine_ticks()[0]

    def _pipeline_ticks(self) -> int:
        return sum(process_ticks(pid) for pid in self.pids)

    def stop(self, messages: int) -> dict[str, float]:
        seconds = time.monotonic() - self.t0
        pipeline = (self._pipeline_ticks() - self.pipeline) / TICK
        return {
            "cpu_us_per_message": round(pipeline / max(1, messages - self.messages) * 1e6, 2),
            "cpu_pipeline_cores": round(pipeline / seconds, 2),
            "cpu_influxdb_cores": round((process_ticks(self.influxd) - self.influx) / TICK / seconds, 2),
            "cpu_machine_cores": round((machine_ticks()[0] - self.busy) / TICK / seconds, 2),
        }


def _snapshot_figures(before: dict, after: dict) -> dict:
    """fleetwatch's snapshots during the measured part: per epoch, the window state's bytes written, bytes
    encoded anew (the series that changed) and time taken, and the same for the InfluxDB sink's pending lines."""
    epochs = after.get("window_snapshots", 0) - before.get("window_snapshots", 0)
    if epochs <= 0:
        return {}

    def per_epoch(name: str, count: str = "window_snapshots") -> float:
        return (after.get(name, 0) - before.get(name, 0)) / max(1, after.get(count, 0) - before.get(count, 0))

    return {
        "snapshot_epochs": epochs,
        "snapshot_bytes_per_epoch": round(per_epoch("window_snapshot_bytes")),
        "snapshot_encoded_bytes_per_epoch": round(per_epoch("window_snapshot_encoded_bytes")),
        "snapshot_ms_per_epoch": round(per_epoch("window_snapshot_seconds") * 1000, 2),
        # The InfluxDB sink's lines waiting for the store, written to its log at each epoch (per sink partition).
        "sink_snapshot_bytes_per_epoch": round(per_epoch("sink_snapshot_bytes", "sink_snapshots")),
        "sink_snapshot_ms_per_epoch": round(per_epoch("sink_snapshot_seconds", "sink_snapshots") * 1000, 2),
        "series_held": after.get("window_series", 0),
    }


def climb(name: str, launch: Launcher, qos: int, rates: list[int], rows: list[dict], **options: object) -> int:
    """Rising rates until one is not sustained or loses data; the best sustained rate."""
    best = 0
    for rate in rates:
        result = run_pipeline(name, launch, qos, rate, **options)  # type: ignore[arg-type]
        print(json.dumps(result), flush=True)
        rows.append(result)
        if result["sustained"] and result["lost"] == 0:
            best = rate
        else:
            break
    return best


def cardinality_ladder(pipelines: list[tuple[str, Launcher]], rows: list[dict]) -> list[dict]:
    """The fleet shape at each series count (10 s + 1 min windows, quantiles on, QoS 0, warmed up): the best
    sustained rate of each pipeline, and fleetwatch's against its own rate at the smallest count."""
    summary = []
    for series in SERIES_LADDER:
        rates = SERIES_RATES.get(series) or [10_000, 20_000, 40_000]
        fleet_shape = {"devices": series, "windows": '["10s", "1m"]', "warm_up": True}
        best = {
            name: climb(name, launch, 0, rates, rows, **fleet_shape)
            for name, launch in pipelines
            if name != "telegraf" or series <= TELEGRAF_MAX_SERIES
        }
        if series in FLEET_RULES_SERIES and not FLEET_RULES:
            best["fleetwatch_rules"] = climb(
                "fleetwatch", launch_fleetwatch, 0, FLEET_RULES_RATES, rows, rules=True, **fleet_shape
            )
        summary.append({"series": series, **{f"best_{k}": v for k, v in best.items()}})
        print(json.dumps(summary[-1]), flush=True)
    return summary


def restart_at_scale(series: int, rate: int) -> dict:
    """Kill -9 under QoS 1 load at ``series`` series, then start again at once: how long until the new process
    is ready and until it writes its first new aggregate, and whether every reading is counted exactly once
    (the warm-up's one per series plus the measured load, in the 10 s and the 1 min aggregates alike)."""
    unique = f"bench{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="fwbench"))
    influxql("", f'CREATE DATABASE "{unique}"')
    windows = ["10s", "1m"]
    config = bench_config(tmp, unique, 1, json.dumps(windows))
    status = tmp / "status.json"
    proc = launch_fleetwatch(config, status, unique, 1)
    deadline = time.monotonic() + 120
    while not status.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fleetwatch did not start; see {tmp / 'pipeline.log'}")
        time.sleep(0.1)
    warm = _warm_up(1, unique, series, status, Peer(), windows)
    published_box: list[float] = []
    load = threading.Thread(target=lambda: published_box.append(publish(1, rate, SECONDS, unique, 0, series)))
    load.start()
    time.sleep(SECONDS / 2)
    rss = _peak_rss_mb(proc.pid)
    proc.kill()
    proc.wait(30)

    def points() -> int:
        rows = influxql(unique, 'SELECT count("count") FROM "readings_agg"')
        return int(rows[0]["values"][0][1]) if rows else 0

    before = points()
    restarted = time.monotonic()
    status = tmp / "status-restarted.json"
    proc = launch_fleetwatch(config, status, unique, 1)
    ready_s = first_aggregate_s = None
    while time.monotonic() - restarted < 120 and first_aggregate_s is None:
        if proc.poll() is not None:
            raise RuntimeError(f"fleetwatch exited after the restart; see {tmp / 'pipeline.log'}")
        if ready_s is None and status.exists() and _status(status).get("ready"):
            ready_s = time.monotonic() - restarted
        if points() > before:
            first_aggregate_s = time.monotonic() - restarted
        time.sleep(0.2)
    load.join()
    published = int(rate / PUBLISHERS * SECONDS) * PUBLISHERS
    expected = series + published
    counted: dict[str, float] = {}
    settle = time.monotonic() + 150
    while time.monotonic() < settle:
        for window in windows:
            rows = influxql(unique, f'SELECT sum("count") FROM "readings_agg" WHERE "window" = \'{window}\'')
            counted[window] = rows[0]["values"][0][1] if rows else 0
        if all(c >= expected for c in counted.values()):
            break
        time.sleep(1)
    time.sleep(2)  # anything counted twice shows now
    for window in windows:
        rows = influxql(unique, f'SELECT sum("count") FROM "readings_agg" WHERE "window" = \'{window}\'')
        counted[window] = rows[0]["values"][0][1] if rows else 0
    rss = max(rss, _peak_rss_mb(proc.pid))
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    influxql("", f'DROP DATABASE "{unique}"')
    # The rung's recovery state is up to a few hundred MB at fleet scale; its logs and config stay for a look.
    shutil.rmtree(tmp / "recovery", ignore_errors=True)
    return {
        "restart_at_scale": True,
        "series": series,
        "qos": 1,
        "rate": rate,
        "warm_up_received": warm,
        "published": published,
        "expected_counted": expected,
        **{f"counted_{w}": c for w, c in counted.items()},
        "exact": all(c == expected for c in counted.values()),
        "ready_after_restart_s": None if ready_s is None else round(ready_s, 2),
        "first_aggregate_after_restart_s": None if first_aggregate_s is None else round(first_aggregate_s, 2),
        "peak_rss_mb": round(rss, 1),
    }


def _memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def main() -> None:
    build_publisher()
    telegraf = os.environ.get("BENCH_TELEGRAF", "1") != "0"
    if telegraf:
        build_telegraf()
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{os.cpu_count()} cores, {platform.machine()}, {_memory_gb():.0f} GiB, "
        f"Python {platform.python_version()}, Linux {platform.release()}"
    )
    print(f"machine: {machine}", flush=True)
    rows: list[dict] = []
    summary: list[dict] = []
    pipelines: list[tuple[str, Launcher, list[int]]] = [
        ("fleetwatch", launch_fleetwatch, RATES),
        ("naive", launch_naive, NAIVE_RATES),
    ]
    if os.environ.get("BENCH_NODERED", "1") != "0":
        pipelines.append(("node-red", launch_nodered, NODERED_RATES))
    if telegraf:
        pipelines.append(("telegraf", launch_telegraf, TELEGRAF_RATES))
    for qos in QOS_LEVELS:
        limit = broker_limit(qos, SUB_RATES)
        best = {name: climb(name, launch, qos, rates, rows) for name, launch, rates in pipelines}
        history = run_pipeline("fleetwatch", launch_fleetwatch, qos, best["fleetwatch"] or RATES[0], history=True)
        print(json.dumps(history), flush=True)
        rows.append(history)
        summary.append({"qos": qos, "best_mosquitto_sub": limit, **{f"best_{k}": v for k, v in best.items()}})
        print(json.dumps(summary[-1]), flush=True)
    fleet: list[tuple[str, Launcher]] = [("fleetwatch", launch_fleetwatch)]
    if telegraf:
        fleet.append(("telegraf", launch_telegraf))
    summary += cardinality_ladder(fleet, rows)
    for series in RESTART_SERIES:
        restart = restart_at_scale(series, RESTART_RATE)
        print(json.dumps(restart), flush=True)
        rows.append(restart)
    out = RESULTS / f"readings-{int(time.time())}.json"
    out.write_text(json.dumps({"machine": machine, "rows": rows, "summary": summary}, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
