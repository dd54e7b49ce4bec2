"""Reference: rsyslog from Debian shipping the same file, ``imfile`` → ``omelasticsearch``.

A private rsyslogd instance in the foreground (``rsyslogd -n -f <conf> -i <pidfile>``), with its own work
directory under a temp dir. It leaves the system's syslog alone:

- only ``imfile`` is loaded: no imuxsock (``/dev/log``) and no imklog; ``-n`` loads nothing by itself;
- ``processInternalMessages="on"``: rsyslogd's own messages go through this instance's default ruleset, into
  a file in the temp dir. With it off (the default) rsyslogd hands them to syslog(3), i.e. to ``/dev/log``
  and the system's logger, because Debian builds it without liblogging-stdlog;
- its state (imfile's offsets) lives in its own ``workDirectory``; a fresh one per run makes imfile read the
  file from the beginning.

Fairness. rsyslog builds the same documents as the raw bulk reference (bench/logs/data.py), same _id
included, into a fresh index with the same mapping (bench/logs/es.py):

- JSON lines are parsed with ``mmjsonparse`` (``cookie=""``: plain JSON, no ``@cee:``), and a template maps
  the fields into the ECS shape. Shipping the raw line as ``message`` would be cheaper but would not be the
  same work: fleetwatch parses the JSON;
- syslog lines are parsed with ``mmnormalize`` (liblognorm, rulebase RULEBASE below: timestamp, host,
  program, pid, message), since rsyslog's RFC 3164 parser reads no hostname from a file line (see
  RULEBASE); the timestamp becomes RFC 3339 with ``format_time``;
- ``_id`` is imfile's metadata: ``<path key>-<byte offset of the line>``, exactly ``data.doc_id``; so
  Elasticsearch does the same id look-ups as for the raw bulk reference, and a retried request can't
  inflate the count.

Elasticsearch 8: rsyslog 8.2302 (Debian 12) writes ``"_type":"events"`` into every bulk action line unless
``esVersion.major="8"``; Elasticsearch 8 rejects each such request with HTTP 400. Newer rsyslog (8.2510+)
probes the server's version with ``GET /``, which the local test server (the integ-test-zip distribution)
answers with 405, so keep the explicit setting there too.
"""

from __future__ import annotations

import argparse
import functools
import glob
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from elasticsearch import Elasticsearch

from bench.logs import es as eslib
from bench.logs import raw_bulk
from bench.logs.cpu import CpuMeter, CpuUsage, conditions
from bench.logs.data import FILE_HOST, KINDS, Kind, build_documents, dataset, path_key, write_lines

APT_COMMAND = "apt-get install -y rsyslog rsyslog-elasticsearch"
# Debian's multiarch module directory; the glob also finds other architectures.
MODULE_GLOB = "/usr/lib/*/rsyslog/omelasticsearch.so"
TIMEOUT_S = 600.0

# Queue tuning (see bench/logs/README.md for the sweep): rsyslog sends one bulk request per dequeued batch
# (up to maxbytes), from each worker thread of the queue that runs the action.
BATCH = 1024
WORKERS = 2
MAXBYTES = "16m"
QUEUE_SIZE = 200_000


@dataclass(frozen=True)
class RsyslogResult:
    lines: int
    seconds: float  # rsyslogd started to all documents counted
    batch: int
    workers: int
    version: str
    cpu: CpuUsage
    foreign_docs: int  # documents others indexed on the server during the run
    first: tuple[float, int]  # seconds after the start when documents were first searchable, and how many

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds


def rsyslogd_path() -> str | None:
    return shutil.which("rsyslogd") or next((p for p in ("/usr/sbin/rsyslogd",) if os.access(p, os.X_OK)), None)


def missing() -> list[str]:
    """What is not installed, as Debian package names (empty when both are there)."""
    out = []
    if rsyslogd_path() is None:
        out.append("rsyslog")
    if not glob.glob(MODULE_GLOB):
        out.append("rsyslog-elasticsearch")
    return out


def ensure_installed() -> None:
    """Install rsyslog and its Elasticsearch output from Debian when missing (as root); else say how.

    In a container without an init system (or with a policy-rc.d that denies starts, as here), installing
    the package does not start the system rsyslog service; on a machine with systemd it does."""
    if not missing():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"rsyslog reference needs {', '.join(missing())}: run `sudo {APT_COMMAND}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = APT_COMMAND.split()
    if subprocess.run(install, env=env, check=False).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    if missing():
        raise RuntimeError(f"still missing after `{APT_COMMAND}`: {', '.join(missing())}")


def version() -> str:
    binary = rsyslogd_path()
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout
    return out.split(" compiled", 1)[0].strip() or "unknown"


def _q(value: str) -> str:
    """A RainerScript string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _c(text: str) -> str:
    """A template constant."""
    return f"constant(value={_q(text)})"


def _template(kind: Kind) -> str:
    # Same shape and key order as data.build_documents. Strings go through format="json" (escaped);
    # numbers are written bare.
    if kind == "json":
        parts = [
            _c('{"@timestamp":"'),
            'property(name="$!timestamp" format="json")',
            _c('","message":"'),
            'property(name="$!message" format="json")',
            _c('","log":{"level":"'),
            'property(name="$!level" format="json")',
            _c('","file":{"path":"'),
            'property(name="$!metadata!filename" format="json")',
            _c('"}},"service":{"name":"'),
            'property(name="$!service" format="json")',
            _c(f'"}},"host":{{"name":"{FILE_HOST}"}},"event":{{"dataset":"{dataset("json")}"}}'),
            _c(',"fields":{"request_id":"'),
            'property(name="$!request_id" format="json")',
            _c('","duration_ms":'),
            'property(name="$!duration_ms")',
            _c(',"status":'),
            'property(name="$!status")',
            _c("}}"),
        ]
    else:
        parts = [
            _c('{"@timestamp":"'),
            'property(name="$.ts")',
            _c('","message":"'),
            'property(name="$!msg" format="json")',
            _c('","log":{"file":{"path":"'),
            'property(name="$!metadata!filename" format="json")',
            _c('"}},"service":{"name":"'),
            'property(name="$!prog" format="json")',
            _c('"},"host":{"name":"'),
            'property(name="$!host" format="json")',
            _c(f'"}},"event":{{"dataset":"{dataset(kind)}"}},"fields":'),
            # A JSON subtree set by the ruleset: {"pid": N}, or {} for lines without a pid (kernel).
            'property(name="$!fields")',
            _c("}"),
        ]
    return 'template(name="ecs" type="list") {\n  ' + "\n  ".join(parts) + "\n}"


# liblognorm rulebase for the syslog lines: "Nov 23 10:00:00 host prog[pid]: msg", or without "[pid]".
# rsyslog's own RFC 3164 parser (imfile needParse="on") can't be used: it takes a hostname only from
# messages that network inputs flag, so for a file line it reads the host as the tag.
RULEBASE = """version=2
rule=:%ts:date-rfc3164{"format":"timestamp-unix"}% %host:word% %prog:char-to{"extradata":"["}%\
[%pid:number{"format":"number"}%]: %msg:rest%
rule=:%ts:date-rfc3164{"format":"timestamp-unix"}% %host:word% %prog:char-to{"extradata":":"}%: %msg:rest%
"""


def config(
    kind: Kind,
    path: Path,
    index: str,
    workdir: Path,
    batch: int,
    workers: int,
    maxbytes: str,
    queue_size: int = QUEUE_SIZE,
) -> str:
    """The rsyslog.conf of one run (the syslog and text kinds also need RULEBASE in workdir/syslog.rb)."""
    if kind == "json":
        modules = ["imfile", "mmjsonparse", "omelasticsearch"]
        parse = 'action(type="mmjsonparse" cookie="")\n  if $parsesuccess != "OK" then stop'
    else:
        modules = ["imfile", "mmnormalize", "omelasticsearch"]
        parse = "\n  ".join(
            [
                f'action(type="mmnormalize" useRawMsg="on" ruleBase={_q(str(workdir / "syslog.rb"))})',
                'if $parsesuccess != "OK" then stop',
                # RFC 3339 in UTC, as data.build_documents writes it.
                'set $.ts = format_time($!ts, "date-rfc3339");',
                # "fields" must be an object even without a pid: set a member, then remove it.
                'set $!fields!none = "";',
                "unset $!fields!none;",
                'if $!pid != "" then set $!fields!pid = $!pid;',
            ]
        )
    loads = "\n".join(
        'module(load="imfile" mode="inotify")' if m == "imfile" else f"module(load={_q(m)})" for m in modules
    )
    id_template = (
        f'template(name="docid" type="list") {{ {_c(path_key(path) + "-")} property(name="$!metadata!fileoffset") }}'
    )
    return f"""# Generated by bench/logs/rsyslog.py: a private instance, not the system syslog.
global(
  workDirectory={_q(str(workdir))}
  processInternalMessages="on"
  maxMessageSize="64k"
)
{loads}

{_template(kind)}
{id_template}

# The file's messages: own queue, so batch size and the number of concurrent bulk requests are set here;
# the actions run in the queue's worker threads (direct mode), one bulk request per batch and worker.
ruleset(name="ship"
        queue.type="linkedList" queue.size="{queue_size}"
        queue.dequeueBatchSize="{batch}" queue.workerThreads="{workers}") {{
  {parse}
  action(type="omelasticsearch"
         server="127.0.0.1" serverport="9200" usehttps="off"
         searchIndex={_q(index)} esVersion.major="8"
         template="ecs" bulkid="docid" dynbulkid="on"
         bulkmode="on" maxbytes="{maxbytes}"
         errorFile={_q(str(workdir / "es-errors.json"))}
         action.resumeRetryCount="-1")
}}

input(type="imfile" file={_q(str(path))} tag="bench:" ruleset="ship"
      readMode="0" freshStartTail="off" addMetadata="on")

# rsyslogd's own messages (default ruleset): to a file of this run.
action(type="omfile" file={_q(str(workdir / "rsyslogd.log"))})
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(none)"


def run_rsyslog(
    kind: Kind,
    path: Path,
    lines: int,
    batch: int = BATCH,
    workers: int = WORKERS,
    maxbytes: str = MAXBYTES,
    queue_size: int = QUEUE_SIZE,
    client: Elasticsearch | None = None,
    keep_index: bool = False,
) -> tuple[RsyslogResult, str]:
    """Ship path (lines lines of the given kind) with a private rsyslogd; time until all are searchable.

    Returns the result and the index name (already deleted unless keep_index)."""
    ensure_installed()
    binary = rsyslogd_path()
    assert binary is not None
    es = client or eslib.client()
    index = eslib.fresh_index(es, "rsyslog")
    with tempfile.TemporaryDirectory(prefix="bench-rsyslog-") as tmp:
        work = Path(tmp)
        conf = work / "rsyslog.conf"
        conf.write_text(config(kind, path, index, work, batch, workers, maxbytes, queue_size))
        (work / "syslog.rb").write_text(RULEBASE)
        check = subprocess.run([binary, "-N1", "-f", str(conf)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            eslib.delete_index(es, index)
            raise RuntimeError(f"rsyslogd rejects the generated config:\n{check.stderr}{check.stdout}")
        log = (work / "stderr.log").open("wb")
        indexed0 = eslib.indexing_total(es)
        meter = CpuMeter()
        start = time.monotonic()
        proc = subprocess.Popen(
            [binary, "-n", "-f", str(conf), "-i", str(work / "rsyslogd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
        try:
            first: list[tuple[float, int]] = []
            seconds = eslib.wait_for_count(
                es, index, lines, start, TIMEOUT_S, alive=lambda: proc.poll() is None, first=first
            )
            cpu = meter.stop(proc.pid)
            foreign = eslib.indexing_total(es) - indexed0 - lines
        except TimeoutError as exc:
            raise RuntimeError(
                f"{exc}\nrsyslogd log:\n{_tail(work / 'rsyslogd.log')}\nstderr:\n{_tail(work / 'stderr.log')}"
                f"\nbulk errors:\n{_tail(work / 'es-errors.json', 3)}"
            ) from None
        finally:
            _stop(proc)
            log.close()
            if not keep_index:
                eslib.delete_index(es, index)
    return RsyslogResult(lines, seconds, batch, workers, version(), cpu, foreign, first[0]), index


def main() -> None:
    parser = argparse.ArgumentParser(description="The rsyslog reference alone, or a sweep of its queue tuning.")
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--kind", choices=KINDS, default="json")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fleetwatch-bench-logs"))
    parser.add_argument("--batch", default=str(BATCH), help="comma-separated queue.dequeueBatchSize values")
    parser.add_argument("--workers", default=str(WORKERS), help="comma-separated queue.workerThreads values")
    parser.add_argument("--queue-size", default=str(QUEUE_SIZE), help="comma-separated queue.size values")
    parser.add_argument("--print-config", action="store_true", help="print the generated rsyslog.conf and exit")
    args = parser.parse_args()
    kind: Kind = args.kind
    if args.print_config:
        print(config(kind, args.workdir / f"{kind}.log", "INDEX", Path("/tmp/WORKDIR"), BATCH, WORKERS, MAXBYTES))
        return
    if missing():
        print(f"missing: {', '.join(missing())}; install with: {APT_COMMAND}", file=sys.stderr)
        ensure_installed()
    path = write_lines(kind, args.workdir / f"{kind}.log", args.lines)
    raw_bulk.warm_up(build_documents(kind, path))
    print(version())
    print(f"{'batch':>6} {'workers':>7} {'queue':>8} {'seconds':>8} {'lines/s':>9}  cpu")
    grid = itertools.product(
        [int(b) for b in args.batch.split(",")],
        [int(w) for w in args.workers.split(",")],
        [int(q) for q in args.queue_size.split(",")],
    )
    for batch, workers, queue_size in grid:
        run = functools.partial(run_rsyslog, kind, path, args.lines, batch, workers, queue_size=queue_size)
        r, _ = eslib.with_retries("rsyslog", run)
        rate = f"{r.seconds:>8.2f} {r.lines_per_s:>9,.0f}"
        print(f"{batch:>6} {workers:>7} {queue_size:>8} {rate}  {conditions(r.cpu, r.foreign_docs)}", flush=True)


if __name__ == "__main__":
    main()
