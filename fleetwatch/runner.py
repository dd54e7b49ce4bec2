"""Running the dataflow: workers, cluster processes, Bytewax recovery, progress and a clean stop."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from types import FrameType

from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from fleetwatch.config import Config
from flows import health
from flows.pipeline import FlowOptions, build_flow
from flows.sinks.dead_letters import DeadLetterFile
from flows.sinks.influxdb import InfluxWriterThread, make_writer
from flows.sinks.writer import flush_all_writers

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
    return RecoveryConfig(str(directory), backup_interval=cfg.recovery.backup_interval)


def _status_writer(path: Path, stop: threading.Event, interval: float = 0.25) -> None:
    while not stop.wait(interval):
        status = asdict(health.totals())
        status["time"] = time.time()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, path)


def run_pipeline(
    cfg: Config,
    *,
    workers: int,
    process_id: int | None = None,
    addresses: list[str] | None = None,
    status_file: Path | None = None,
    duration: float | None = None,
) -> None:
    """Run until interrupted (SIGINT/SIGTERM) or ``duration`` seconds; then flush the sinks."""
    processes = len(addresses) if addresses else 1
    total_workers = workers * processes
    recovery = prepare_recovery(cfg, max(1, total_workers), process_id)
    flow = build_flow(
        cfg, FlowOptions(total_workers=total_workers, recovery=recovery is not None, process_id=process_id)
    )

    # SIGTERM stops like Ctrl-C, so that sinks are flushed on `docker stop` too.
    def _interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    stop = threading.Event()
    health_writer = None
    if cfg.influxdb.enabled:
        health_sink = InfluxWriterThread(
            cfg.influxdb, make_writer(cfg.influxdb), DeadLetterFile(cfg.dead_letters.path).write, "health-writer"
        )
        tags = f",process={process_id}" if process_id is not None else ""
        health_writer = health.HealthWriter(health_sink.put, cfg.flow.health_interval.total_seconds(), tags)
        health_writer.start()
    if status_file is not None:
        status_file.parent.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=_status_writer, args=(status_file, stop), daemon=True).start()
    if duration is not None:
        timer = threading.Timer(duration, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
    log.info(
        "fleetwatch: %d worker(s) x %d process(es), recovery %s",
        workers,
        processes,
        "in " + str(cfg.recovery.dir) if recovery else "off",
    )
    try:
        cli_main(
            flow,
            workers_per_process=workers,
            process_id=process_id,
            addresses=addresses,
            epoch_interval=cfg.flow.epoch_interval if cfg.flow.epoch_interval > timedelta(0) else None,
            recovery_config=recovery,
        )
    except KeyboardInterrupt:
        log.info("fleetwatch: stopping")
    except BytewaxRuntimeError as err:
        # Bytewax turns Ctrl-C into this error; anything else is a real failure.
        if "signal received" not in str(err):
            raise
        log.info("fleetwatch: stopping")
    finally:
        if health_writer is not None:
            health_writer.stop()
        flushed = flush_all_writers(timeout=30.0)
        if not flushed:
            log.error("fleetwatch: some points could not be written before exit")
        stop.set()
        if status_file is not None:
            status = asdict(health.totals())
            status["time"] = time.time()
            status["stopped"] = True
            status_file.write_text(json.dumps(status))
