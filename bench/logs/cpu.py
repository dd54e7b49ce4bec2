"""Where the machine's CPU went during a timed run: Elasticsearch, the pipeline, and everything else.

On the 2-core machine Elasticsearch, the pipeline and anything else running (other people's tests, the
stack's other servers) share the cores, so a number is only comparable to another when "other" stayed
near zero during both. Read from /proc: the machine's busy time (/proc/stat) and the CPU time of given
processes (/proc/<pid>/stat, all threads).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, iowait) ticks of all cores. /proc/stat's first line: "cpu user nice system idle iowait irq
    softirq steal guest guest_nice"; guest time is already in user, busy is all but idle and iowait."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], fields[4]


def process_ticks(pid: int | None) -> int:
    """utime + stime of a process (all its threads); 0 when it is gone or None."""
    if pid is None:
        return 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    # The command name may hold spaces: the fields start after its closing parenthesis.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def server_pid(executable: bytes, marker: bytes = b"") -> int | None:
    """A running process whose executable's name contains ``executable`` and whose command line contains
    ``marker``: the local stack's servers run one each."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if executable in cmdline.split(b"\0", 1)[0].rsplit(b"/", 1)[-1] and marker in cmdline:
            return int(entry.name)
    return None


def elasticsearch_pid() -> int | None:
    """The local Elasticsearch server's process: a java process whose command line names Elasticsearch."""
    return server_pid(b"java", b"org.elasticsearch.bootstrap.Elasticsearch")


@dataclass(frozen=True)
class CpuUsage:
    """Average cores busy over a run."""

    es: float
    pipeline: float
    other: float  # everything else on the machine, this harness's polling included
    iowait: float  # idle with I/O outstanding: a slow disk (Elasticsearch fsyncs every bulk request)

    def __str__(self) -> str:
        return (
            f"es {self.es:.2f} / pipeline {self.pipeline:.2f} / other {self.other:.2f} cores, iowait {self.iowait:.2f}"
        )


class CpuMeter:
    """Start at the run's start; ``stop(pipeline_pid)`` at its end. The pipeline may start after the meter
    (rsyslogd): a process that did not exist at the start counts from zero."""

    def __init__(self, pipeline_pid: int | None = None) -> None:
        self.es_pid = elasticsearch_pid()
        self._pipeline_pid = pipeline_pid
        self._t0 = time.monotonic()
        self._busy0, self._iowait0 = machine_ticks()
        self._es0 = process_ticks(self.es_pid)
        self._pipe0 = process_ticks(pipeline_pid)

    def stop(self, pipeline_pid: int | None = None) -> CpuUsage:
        pid = pipeline_pid if pipeline_pid is not None else self._pipeline_pid
        seconds = max(time.monotonic() - self._t0, 1e-9)
        busy, iowait = machine_ticks()
        busy -= self._busy0
        iowait -= self._iowait0
        # Negative when the server was restarted during the run: its new process is not counted.
        es = max(process_ticks(self.es_pid) - self._es0, 0)
        pipe = process_ticks(pid) - (self._pipe0 if pid == self._pipeline_pid else 0)
        scale = TICK * seconds
        return CpuUsage(es / scale, pipe / scale, max(busy - es - pipe, 0) / scale, iowait / scale)


def conditions(cpu: CpuUsage, foreign_docs: int) -> str:
    """One line on how clean a run was: CPU split, and documents that others indexed meanwhile."""
    return f"{cpu}; {foreign_docs:,} foreign docs"
