"""Running the dataflow: workers, cluster processes, Bytewax recovery, progress and a clean stop."""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import signal
import sqlite3
import threading
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from types import FrameType

from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.outputs import FixedPartitionedSink
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from collectors.syslog.source import listen_problems
from fleetwatch.config import Config
from fleetwatch.retention import dashboard_windows_missing, plan_or_none
from flows import clock, health, lifecycle
from flows.alerts.engine import ALERT_LOG_FOLDER
from flows.alerts.sink import notification_stats
from flows.pipeline import (
    ALERTS_STEP_ID,
    ELASTICSEARCH_STEP_ID,
    INFLUXDB_STEP_ID,
    WINDOWS_STEP_ID,
    FlowOptions,
    build_flow,
)
from flows.sinks.dead_letters import DeadLetterFile
from flows.sinks.elasticsearch import PENDING_DOCS_FOLDER, make_client
from flows.sinks.es_retention import RetentionJob, kind_retention
from flows.sinks.influxdb import InfluxWriterThread, make_writer
from flows.sinks.pending_log import PENDING_LOG_FOLDER
from flows.sinks.writer import flush_all_writers, writers_alive, writers_failing, writers_written
from flows.window_log import remove_unreferenced

log = logging.getLogger(__name__)


def prepare_recovery(cfg: Config, partitions: int, process_id: int | None = None) -> RecoveryConfig | None:
    """Create the recovery partitions on first use (process 0 of a cluster does it); reuse them after."""
    if not cfg.recovery.enabled:
        return None
    directory = cfg.recovery.dir
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob("part-*.sqlite3")):
        if process_id in (None, 0):
            init_db_dir(directory, partitions)
        else:
            deadline = time.monotonic() + 60
            while len(list(directory.glob("part-*.sqlite3"))) < partitions:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"recovery partitions in {directory} were not created by process 0")
                time.sleep(0.1)
            time.sleep(0.5)  # let process 0 finish writing the partitions' schema
    if process_id in (None, 0):
        removed = remove_unreferenced(directory, WINDOWS_STEP_ID)
        removed += remove_unreferenced(directory, ALERTS_STEP_ID, ALERT_LOG_FOLDER)
        removed += remove_unreferenced(directory, INFLUXDB_STEP_ID, PENDING_LOG_FOLDER)
        removed += remove_unreferenced(directory, ELASTICSEARCH_STEP_ID, PENDING_DOCS_FOLDER)
        if removed:
            log.info("fleetwatch: removed %d state log file(s) no snapshot refers to", removed)
    return RecoveryConfig(str(directory), backup_interval=cfg.recovery.backup_interval)


def _append_problem(path: Path) -> str | None:
    """Why a file cannot be appended to, if it cannot. A missing file is not created here: its writer creates
    it, and makes its directory entry durable then."""
    if path.is_dir():
        return "Is a directory"
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as exc:
            return exc.strerror or str(exc)
        return None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"cannot create files in {path.parent}"
    return None


def unknown_stored_partitions(recovery_dir: Path, flow: Dataflow) -> dict[str, list[str]]:
    """Per input or output step, the partitions the recovery state holds that ``flow`` does not list.

    Bytewax resumes each stored partition on the worker its routing map gives it, and panics (a Rust backtrace
    from a worker thread) on one it does not know: the state of an input that was renamed or removed, or of a
    worker that a smaller worker count no longer has. Read before the dataflow starts, the same mismatch is a
    start-up error that says what to do."""
    listed: dict[str, set[str]] = {}
    steps = list(flow.substeps)
    while steps:
        step = steps.pop()
        steps.extend(step.substeps)
        partitioned = getattr(step, "source", None) or getattr(step, "sink", None)
        if isinstance(partitioned, FixedPartitionedSource | FixedPartitionedSink):
            listed[step.step_id] = set(partitioned.list_parts())
    if not listed:
        return {}
    unknown: dict[str, set[str]] = {}
    marks = ",".join("?" * len(listed))
    # The newest snapshot of each partition; one whose state was discarded (NULL) is not resumed.
    query = f"""
        SELECT step_id, state_key FROM snaps AS s
        WHERE step_id IN ({marks}) AND ser_change IS NOT NULL AND snap_epoch = (
            SELECT MAX(snap_epoch) FROM snaps WHERE step_id = s.step_id AND state_key = s.state_key)"""
    for part in sorted(recovery_dir.glob("part-*.sqlite3")):
        connection = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5)
        try:
            for step_id, key in connection.execute(query, list(listed)):
                if key not in listed[step_id]:
                    unknown.setdefault(step_id, set()).add(key)
        finally:
            connection.close()
    return {step_id: sorted(keys) for step_id, keys in sorted(unknown.items())}


def _status(cfg: Config) -> dict[str, object]:
    status: dict[str, object] = asdict(health.totals())
    status["time"] = time.time()
    parts = health.readiness()
    mqtt = [ready for name, ready in parts.items() if name.startswith("mqtt:")]
    status["subscribed"] = bool(mqtt) and all(mqtt)
    # Ready: every input partition of this process is ready (MQTT subscriptions acknowledged, syslog
    # sockets bound, files scanned), and when readings are configured, at least one MQTT partition is.
    status["ready"] = (
        bool(parts) and all(parts.values()) and (bool(mqtt) or not cfg.mqtt.subscriptions) and not lifecycle.stopping()
    )
    status["failures"] = lifecycle.failures()
    # Time the flow has waited for its stores (sinks' buffers full, or an epoch waiting for a failing store).
    status["stalled_seconds"] = round(clock.stalled_so_far_ns() / 1e9, 3)
    status.update(_process_gauges())
    return status


def _process_gauges() -> dict[str, int]:
    """What belongs to the process, not to a worker: writer threads alive (a dead one stops the process,
    so fewer alive than registered means it is on its way out), and alert notifications dropped because a
    target stayed down longer than its queue lasts."""
    alive, registered = writers_alive()
    notifiers = notification_stats().values()
    return {
        "writers_alive": alive,
        "writers": registered,
        # Writers whose last attempt failed: a store down, a webhook answering 500 (the log says which).
        "writers_failing": writers_failing(),
        "notifications_dropped": sum(stats.get("dropped", 0) for stats in notifiers),
        "notifications_pending": sum(stats.get("pending", 0) for stats in notifiers),
        "notification_retries": sum(stats.get("retries", 0) for stats in notifiers),
    }


def _process_fields() -> str:
    return ",".join(f"{name}={value}i" for name, value in _process_gauges().items())


def _start_retention_job(cfg: Config, process_id: int | None) -> RetentionJob | None:
    """Expired daily Elasticsearch indices are deleted by one process of a cluster (the first), on a thread."""
    retention = kind_retention(cfg)
    if retention is None or not cfg.elasticsearch.enabled or process_id not in (None, 0):
        return None
    job = RetentionJob(cfg.elasticsearch, retention, cfg.retention.check_interval.total_seconds(), make_client)
    job.start()
    return job


# Python's cyclic collector, tuned for the window state: at 100,000 series the state is about a million
# tracked objects (series, window and key objects), and the default thresholds (700, 10, 10) walked all of them
# in a full collection every few hundred thousand allocations: 13 % of the worker's time in a py-spy
# profile at 100,000 series. Young collections every 50,000 allocations instead of 700, and a full one at
# most every 10 million allocations (seconds apart at fleet rates), so cyclic garbage is still collected.
GC_THRESHOLDS = (50_000, 20, 10)


def _raise_open_files_limit() -> None:
    """Raise the soft limit of open files to the hard one, as Go programs do at start: every followed log file,
    syslog client and server connection holds a descriptor, and the soft limit is often 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.info("fleetwatch: open-files limit stays at %d (cannot raise it to %d: %s)", soft, target, exc)


def _tune_garbage_collector() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def _write_status(path: Path, status: dict[str, object]) -> None:
    # A name of this process's own: two processes given the same file must not rename each other's.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def _status_writer(cfg: Config, path: Path, stop: threading.Event, interval: float = 0.25) -> None:
    failing = ""
    while not stop.wait(interval):
        try:
            _write_status(path, _status(cfg))
        except OSError as exc:
            # A full disk or a removed directory passes; the status file is for watching, the pipeline goes
            # on. Said once per kind of failure, and again when it works.
            if str(exc) != failing:
                log.warning("fleetwatch: cannot write the status file %s: %s (retrying)", path, exc)
                failing = str(exc)
        else:
            if failing:
                log.info("fleetwatch: the status file %s is written again", path)
                failing = ""


# How long the dataflow may take to end after a stop is asked for (sources end, the last snapshot is
# committed), and how long the sinks then get to flush. A supervisor's grace period must exceed both.
STOP_TIMEOUT = 30.0
FLUSH_TIMEOUT = 30.0
# How long the flush waits for a writer whose store or target is failing, with recovery on (what it holds is in
# the last snapshot, and the next start sends it); without recovery it gets the whole FLUSH_TIMEOUT.
FAILING_FLUSH_GRACE = 2.0


def _stop_after_duration(duration: float) -> None:
    # As a first Ctrl-C does (the watchdog bounds it too); a signal still forces the exit.
    log.info(
        "fleetwatch: --duration of %g s reached, stopping (sources end, the last epoch is committed, sinks flush)",
        duration,
    )
    lifecycle.request_stop()


class _Stopper:
    """SIGINT and SIGTERM ask the dataflow to end (``lifecycle.request_stop``); a second signal, or a stop
    that takes longer than ``STOP_TIMEOUT``, exits at once with a non-zero status."""

    def __init__(self) -> None:
        self._signals = 0
        self._watchdog: threading.Thread | None = None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.error("fleetwatch: second %s, exiting without waiting for the flush", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(130)
        log.info(
            "fleetwatch: %s received, stopping (sources end, the last epoch is committed, sinks flush); "
            "a second signal forces the exit",
            signal.Signals(signum).name,
        )
        lifecycle.request_stop()
        self.start_watchdog()

    def watch_for_stop(self) -> None:
        lifecycle.wait_for_stop()
        self.start_watchdog()

    def start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="fleetwatch-stop-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        time.sleep(STOP_TIMEOUT + FLUSH_TIMEOUT + 5.0)
        log.critical("fleetwatch: the stop did not complete within %.0fs; exiting", STOP_TIMEOUT + FLUSH_TIMEOUT)
        logging.shutdown()
        os._exit(1)


def run_pipeline(
    cfg: Config,
    *,
    workers: int,
    process_id: int | None = None,
    addresses: list[str] | None = None,
    status_file: Path | None = None,
    duration: float | None = None,
) -> int:
    """Run until a stop (SIGINT/SIGTERM, or ``duration`` seconds), then flush the sinks. Returns the exit
    status: 0 after a clean stop, 1 when a part of the pipeline failed or output was left unwritten that no
    snapshot keeps."""
    processes = len(addresses) if addresses else 1
    _raise_open_files_limit()
    total_workers = workers * processes
    # (One process: in a cluster the process that owns an input's partition binds it, and another process of
    # the same host would find the port taken by it.)
    problems = listen_problems(cfg.logs.syslog) if processes == 1 else []
    if problems:
        for problem in problems:
            log.error("fleetwatch: %s", problem)
        return 1
    folders = {"dead_letters.path": cfg.dead_letters.path.parent}
    if cfg.recovery.enabled:
        folders["recovery.dir"] = cfg.recovery.dir
    files = {"dead_letters.path": cfg.dead_letters.path}
    if cfg.alerts.rules or cfg.alerts.rules_file is not None:
        folders["alerts.journal"] = cfg.alerts.journal.parent
        files["alerts.journal"] = cfg.alerts.journal
    for key, folder in folders.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("fleetwatch: %s: cannot create the folder %s: %s", key, folder, exc.strerror)
            return 2
    for key, path in files.items():
        # Found here, not at the first dead letter or alert, where the flow would stop with a traceback.
        refusal = _append_problem(path)
        if refusal:
            log.error("fleetwatch: %s: cannot append to %s: %s", key, path, refusal)
            return 2
    recovery = prepare_recovery(cfg, max(1, total_workers), process_id)
    flow = build_flow(
        cfg, FlowOptions(total_workers=total_workers, recovery=recovery is not None, process_id=process_id)
    )
    # Process 0 checks for the cluster (every process builds the same flow): it made the partitions' tables before
    # this, while another process may get here before they exist.
    if recovery is not None and process_id in (None, 0):
        try:
            unknown = unknown_stored_partitions(cfg.recovery.dir, flow)
        except sqlite3.Error as exc:
            log.error("fleetwatch: recovery.dir: cannot read the recovery state in %s: %s", cfg.recovery.dir, exc)
            return 2
        if unknown:
            log.error(
                "fleetwatch: the recovery state in %s was written by a config with other inputs or outputs, or "
                "more workers (%d now): it holds %s. Restore the config and worker count, or start with an empty "
                "recovery.dir (what that state had not yet written is then lost); exiting with status 2",
                cfg.recovery.dir,
                max(1, total_workers),
                "; ".join(f"{step_id}: {', '.join(keys)}" for step_id, keys in unknown.items()),
            )
            return 2
    stopper = _Stopper()
    stopper.install()
    # A failure stops the dataflow as a signal does (lifecycle.fail); the watchdog bounds that path too.
    threading.Thread(target=stopper.watch_for_stop, name="fleetwatch-stop", daemon=True).start()
    stop = threading.Event()
    health_writer = None
    if cfg.influxdb.enabled:
        health_sink = InfluxWriterThread(
            cfg.influxdb,
            make_writer(cfg.influxdb, plan_or_none(cfg)),
            DeadLetterFile(cfg.dead_letters.path).write,
            "health-writer",
        )
        tags = f",process={process_id}" if process_id is not None else ""
        health_writer = health.HealthWriter(
            health_sink.put, cfg.flow.health_interval.total_seconds(), tags, process_fields=_process_fields
        )
        health_writer.start()
    retention_job = _start_retention_job(cfg, process_id)
    status_thread = None
    if status_file is not None:
        status_file.parent.mkdir(parents=True, exist_ok=True)
        status_thread = threading.Thread(target=_status_writer, args=(cfg, status_file, stop), daemon=True)
        status_thread.start()
    if duration is not None:
        timer = threading.Timer(duration, _stop_after_duration, args=(duration,))
        timer.daemon = True
        timer.start()
    if (warning := dashboard_windows_missing(cfg)) is not None:
        log.warning("fleetwatch: %s", warning)
    log.info(
        "fleetwatch: %d worker(s) x %d process(es), recovery %s",
        workers,
        processes,
        "in " + str(cfg.recovery.dir) if recovery else "off",
    )
    _tune_garbage_collector()
    cluster_lost: str | None = None
    state_mismatch: str | None = None
    try:
        cli_main(
            flow,
            workers_per_process=workers,
            process_id=process_id,
            addresses=addresses,
            epoch_interval=cfg.flow.epoch_interval if cfg.flow.epoch_interval > timedelta(0) else None,
            recovery_config=recovery,
        )
    except RuntimeError as exc:
        # The recovery state names partitions this config does not have (an input renamed or removed).
        if "routing map" not in str(exc):
            raise
        state_mismatch = str(exc)
    except BaseException as exc:
        # In a cluster, Bytewax's communication threads panic when a peer process dies or its connection
        # breaks; the dataflow cannot go on without the peer's workers. Not a bug of this process: no
        # traceback, an error that says what to do, and the exit status that makes a supervisor start it
        # again (every process of the cluster must start again; they resume from the last snapshot).
        if processes == 1 or type(exc).__name__ != "PanicException":
            raise
        cluster_lost = str(exc)
    finally:
        # However the dataflow ended, the flush below is bounded too.
        stopper.start_watchdog()
        if health_writer is not None:
            health_writer.stop()
        if retention_job is not None:
            retention_job.stop()
        left = flush_all_writers(timeout=FLUSH_TIMEOUT, failing_grace=FAILING_FLUSH_GRACE if recovery else None)
        stop.set()
        if status_thread is not None:
            # Both write the status file through the same temporary file: the last word is the final status.
            status_thread.join(5)
        if status_file is not None:
            final = _status(cfg)
            final["stopped"] = True
            try:
                _write_status(status_file, final)
            except OSError as exc:
                log.warning("fleetwatch: cannot write the final status to %s: %s", status_file, exc)
    written = ", ".join(f"{name} {n}" for name, n in sorted(writers_written().items()) if n) or "nothing"
    failures = lifecycle.failures()
    if state_mismatch is not None:
        log.error(
            "fleetwatch: the recovery state in %s was written by a config with other inputs (%s): an input was "
            "renamed or removed. Restore the config, or start with an empty recovery.dir (what that state had "
            "not yet written is then lost); exiting with status 2",
            cfg.recovery.dir,
            state_mismatch.split(")", 1)[-1].strip(),
        )
        return 2
    if cluster_lost is not None:
        log.error(
            "fleetwatch: process %s lost the cluster (%s): a peer process stopped or cannot be reached at %s; "
            "exiting with status 1. Start every process of the cluster again: they resume from the last snapshot",
            process_id,
            cluster_lost,
            ",".join(addresses or []),
        )
        return 1
    if left:
        unwritten = ", ".join(f"{name} {n}" for name, n in sorted(left.items()))
        if recovery is not None:
            log.warning(
                "fleetwatch: stopped; written: %s; unwritten, kept in the last snapshot: %s", written, unwritten
            )
        else:
            log.error("fleetwatch: stopped; written: %s; LOST (recovery is off): %s", written, unwritten)
            return 1
    else:
        log.info("fleetwatch: stopped; written: %s; nothing left unwritten", written)
    if failures:
        log.error("fleetwatch: exiting with status 1: %s", "; ".join(failures))
        return 1
    return 0
