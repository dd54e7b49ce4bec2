"""Running `fleetwatch run` as a separate process, the way users run it, and watching its progress.

The process is the installed console script (the virtualenv's ``bin/fleetwatch``, next to the interpreter running
pytest), started in the test's own directory, never in the checkout. A pipeline is a failure of its test when it
crashes or leaves a crash in its log: ``stop()`` and ``kill()`` check the exit code and the log, and the autouse
fixture in conftest checks every pipeline the test did not stop itself. A test that expects a failure says so:
``stop(expect_exit=1, expect_in_log="...")``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO

# The installed program: what `pip install` puts next to the interpreter.
FLEETWATCH = Path(sys.executable).parent / "fleetwatch"
# What a healthy pipeline never writes: a Python traceback, a Rust panic, a thread that died, a critical log line.
# A CRITICAL line is matched by its log level field (after the timestamp), not anywhere in the text: an alert
# notification's own text says "[CRITICAL]" for its severity.
CRASH = re.compile(
    r"Traceback \(most recent call last\)|panicked at|Exception in thread|Fatal Python error"
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ CRITICAL "
)
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def log_tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def crash_lines(text: str) -> list[str]:
    """The lines of a log that show a crash (empty when the log is clean); tests/unit/test_harness.py."""
    return [line for line in text.splitlines() if CRASH.search(line)]


class Counted:
    """Waiting on the progress counters that `fleetwatch run --status-file` writes."""

    def counters(self) -> dict:
        raise NotImplementedError

    def wait_for(self, key: str, value: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.counters().get(key, 0) < value:
            assert time.monotonic() < deadline, f"{key} stayed at {self.counters().get(key)} < {value}"
            time.sleep(0.1)


# Every pipeline started, so that none is left running and none that crashed passes unnoticed (see conftest).
running: list[Pipeline] = []
# The processes of a Bytewax cluster started so far, by their --addresses: a cluster's dataflow starts (and its
# processes get ready) only once every process has joined.
forming: dict[str, list[Pipeline]] = {}


def _cluster_addresses(args: list[str]) -> str | None:
    for flag in ("--addresses", "-a"):
        if flag in args[:-1]:
            return args[args.index(flag) + 1]
    return None


class Pipeline(Counted):
    def __init__(
        self,
        config: Path,
        workers: int = 1,
        cluster: list[str] | None = None,
        ready_timeout: float = READY_TIMEOUT,
        prefix: list[str] | None = None,
        log_name: str = "pipeline.log",
    ) -> None:
        """``cluster``: extra arguments (``-i``, ``-a``) for one process of a multi-process cluster. ``prefix``: a
        command that runs the program elsewhere (``ip netns exec <host>``; it execs the program, same pid).
        ``log_name``: the log file in the config's directory (the processes of a cluster each have their own).

        Returns once the status file says ``ready``: every MQTT partition has its SUBACK (the broker holds messages
        for the session from then on), every syslog socket is bound and every file input has done its first scan.
        A cluster's processes are ready only together: the last one started waits for all of them.
        """
        assert FLEETWATCH.exists(), f"{FLEETWATCH} is missing: install the wheel (make venv)"
        self.workdir = config.parent.resolve()
        assert not self.workdir.is_relative_to(REPO), f"run pipelines outside the checkout, not in {self.workdir}"
        self.status = self.workdir / f"status-{time.monotonic_ns()}.json"
        self.log_path = self.workdir / log_name
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        # Several pipelines of one test share the log: this one's part starts here.
        self.log_start = self.log.tell()
        self.log_end: int | None = None
        # Set once the test has stopped or killed it and its exit and log were checked.
        self.checked = False
        self.proc = subprocess.Popen(
            [
                *(prefix or []),
                str(FLEETWATCH),
                "run",
                "--config",
                str(config.resolve()),
                "--workers",
                str(workers),
                "--status-file",
                str(self.status),
                *(cluster or []),
            ],
            cwd=self.workdir,
            stdout=self.log,
            stderr=self.log,
        )
        running.append(self)
        addresses = _cluster_addresses(cluster or [])
        if addresses is None:
            self.wait_ready(ready_timeout)
            return
        members = forming.setdefault(addresses, [])
        members.append(self)
        if len(members) == len(addresses.split(",")):
            del forming[addresses]
            for member in members:
                member.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.counters().get("ready") is not True:
            code = self.proc.poll()
            assert code is None, f"pipeline exited with {code} before it was ready:\n{self.tail()}"
            assert time.monotonic() < deadline, (
                f"pipeline not ready after {timeout:.0f} s (status: {self.counters() or 'none'}):\n{self.tail()}"
            )
            time.sleep(0.05)

    def counters(self) -> dict:
        try:
            return dict(json.loads(self.status.read_text()))
        except (OSError, ValueError):
            return {}

    def log_text(self) -> str:
        """This pipeline's part of the log (up to its kill, once killed)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_start)
            data = f.read() if self.log_end is None else f.read(self.log_end - self.log_start)
        return data.decode(errors="replace")

    def tail(self) -> str:
        return f"--- {self.log_path} (last lines) ---\n{log_tail(self.log_text())}"

    def assert_clean_log(self, what: str) -> None:
        bad = crash_lines(self.log_text())
        assert not bad, f"{what}: the log shows a crash: {bad[:5]}\n{self.tail()}"

    def stop(
        self,
        sig: signal.Signals = signal.SIGINT,
        *,
        expect_exit: int = 0,
        expect_in_log: str | None = None,
        timeout: float = STOP_TIMEOUT,
    ) -> None:
        """Stop as a user does (Ctrl-C, or SIGTERM as `docker stop`): the process must flush, exit with
        ``expect_exit`` and leave a clean log. A test that expects a failure gives the exit code and a text the
        log must contain (then the log may show the crash)."""
        self.send_stop(sig)
        self.await_stop(sig, expect_exit=expect_exit, expect_in_log=expect_in_log, timeout=timeout)

    def send_stop(self, sig: signal.Signals = signal.SIGINT) -> None:
        code = self.proc.poll()
        assert code is None, f"pipeline had already exited with {code} before stop():\n{self.tail()}"
        self.proc.send_signal(sig)

    def await_stop(
        self,
        sig: signal.Signals = signal.SIGINT,
        *,
        expect_exit: int = 0,
        expect_in_log: str | None = None,
        timeout: float = STOP_TIMEOUT,
    ) -> None:
        """The second half of ``stop``: the processes of a cluster are all signalled first, then awaited."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self.finish()
            raise AssertionError(
                f"pipeline did not exit within {timeout:.0f} s of {sig.name}:\n{self.tail()}"
            ) from None
        self.finish()
        assert code == expect_exit, f"pipeline exited with {code} on {sig.name}, expected {expect_exit}:\n{self.tail()}"
        if expect_in_log is not None:
            assert expect_in_log in self.log_text(), f"{expect_in_log!r} not in the pipeline's log:\n{self.tail()}"
            return
        self.assert_clean_log(f"stopped with {sig.name}")
        if expect_exit == 0:
            assert self.counters().get("stopped") is True, f"status file does not say stopped:\n{self.tail()}"

    def kill(self) -> None:
        """SIGKILL (a crash of the machine, as far as fleetwatch can tell): it must have been running, and its log
        clean up to the kill."""
        code = self.proc.poll()
        assert code is None, f"pipeline had already exited with {code} before kill():\n{self.tail()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log_end = self.log_path.stat().st_size
        self.finish()
        self.assert_clean_log("before SIGKILL")

    def finish(self) -> None:
        self.checked = True
        if not self.log.closed:
            self.log.close()


def leftover_problems() -> list[str]:
    """Stop every pipeline the test did not stop or kill through the harness, and say which ones crashed: a log
    with a crash, or a process that exited by itself with an error (or was stopped by the test directly, without
    the harness, and did not exit cleanly)."""
    problems = []
    forming.clear()
    while running:
        pipeline = running.pop()
        if pipeline.checked:
            continue
        code = pipeline.proc.poll()
        if code is None:
            pipeline.proc.kill()
            pipeline.proc.wait(10)
        elif code != 0:
            problems.append(f"pipeline {pipeline.proc.args} exited with {code}:\n{pipeline.tail()}")
            pipeline.finish()
            continue
        bad = crash_lines(pipeline.log_text())
        if bad:
            problems.append(f"pipeline {pipeline.proc.args} left a crash in its log: {bad[:5]}\n{pipeline.tail()}")
        pipeline.finish()
    return problems


def kill_leftovers() -> None:
    """Stop every pipeline still running, without judging them."""
    forming.clear()
    while running:
        pipeline = running.pop()
        if pipeline.proc.poll() is None:
            pipeline.proc.kill()
            pipeline.proc.wait(10)
        pipeline.finish()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """A Mosquitto of the test's own on a free port, to stop and start (the stack's broker is shared). With
    ``persistence``, it keeps sessions and queued messages across a restart in ``directory``, tuned as
    provisioning/mosquitto/mosquitto.conf tunes the stack's broker."""

    def __init__(self, directory: Path, port: int, persistence: bool = False) -> None:
        self.port = port
        self.config = directory / "mosquitto.conf"
        settings = [f"listener {port} 127.0.0.1", "allow_anonymous true", f"persistence {str(persistence).lower()}"]
        if persistence:
            (directory / "mosquitto-data").mkdir(exist_ok=True)
            settings += [
                # Started as root, mosquitto drops to its own user, which cannot write in the test's private
                # directory: its save on shutdown would fail ("Permission denied") and it would come back empty.
                *(["user root"] if os.geteuid() == 0 else []),
                f"persistence_location {directory / 'mosquitto-data'}/",
                "max_queued_messages 10000000",
                "max_inflight_messages 65535",
            ]
        self.config.write_text("\n".join(settings) + "\n")
        self.log = directory / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=out, stderr=out)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False

        assert wait_until(listening, 5), self.log.read_text()

    def freeze(self) -> None:
        """SIGSTOP: the broker reads nothing more; what clients send waits in its sockets."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        """SIGTERM: with persistence, the broker saves its sessions and queues before it exits. A frozen
        broker exits as soon as it runs again, without reading what waits in its sockets."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.send_signal(signal.SIGCONT)
            self.proc.wait(15)
            self.proc = None
