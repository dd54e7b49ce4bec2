"""Deterministic log files for the logs benchmark, and the ECS documents fleetwatch would index for them.

Three kinds of file, 130-260 bytes a line:

- ``json``: one JSON object a line, as a service's structured log writes it (timestamp, level, service,
  message, request_id, duration_ms, status); mostly info, some debug/warn/error.
- ``syslog``: RFC 3164 lines as rsyslog's file output writes them (``Nov 23 10:00:00 host app[pid]: msg``),
  no PRI, no year; several hosts and programs. fleetwatch reads them with its ``syslog`` parser.
- ``text``: the same lines as ``syslog`` (rsyslog's traditional file format, as in /var/log/syslog), read
  by fleetwatch's ``regex`` parser with the built-in ``rsyslog_traditional`` pattern.

The same seed and line count always give the same bytes, so every pipeline in a run ships the same file.
``build_documents`` parses the file back into the documents the raw bulk reference indexes: the ECS shape
fleetwatch's log sink writes, with the deterministic ``_id`` (input path + byte offset of the line) that lets
a replay overwrite rather than duplicate.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

Kind = Literal["json", "syslog", "text"]
KINDS: tuple[Kind, ...] = ("json", "syslog", "text")

# Event times start here; the machine's clock is near this date, and RFC 3164 lines carry no year, so
# build_documents (like rsyslog, which takes the current year) reads them as this year.
START = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
SYSLOG_YEAR = START.year
# host.name of the JSON-lines events: the file carries none (fleetwatch takes [logs].host_name).
FILE_HOST = "bench-host"
SEED = 20261123


class Document(NamedTuple):
    """One pre-built document: its deterministic _id and its ECS body."""

    id: str
    source: dict[str, Any]


def dataset(kind: Kind) -> str:
    return f"bench.{kind}"


def path_key(path: Path) -> str:
    """A short stable key for a file path: the prefix of every _id of that file."""
    return hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()


def doc_id(path: Path, offset: int) -> str:
    # Path + offset of the line's first byte: what a file tailer knows without parsing, stable across a
    # replay. rsyslog builds the same id from imfile's metadata (see rsyslog.py).
    return f"{path_key(path)}-{offset}"


# --- generators ----------------------------------------------------------------------------------------

_SERVICES = ("checkout", "payments", "inventory", "auth", "search", "shipping", "notifications", "gateway")
# Cumulative weights: ~80% info, 7% debug, 9% warn, 4% error: a production service at its normal log level.
_LEVELS = ("info", "debug", "warn", "error")
_LEVEL_WEIGHTS = (80, 7, 9, 4)
_ROUTES = (
    "/api/v1/orders",
    "/api/v1/orders/{id}",
    "/api/v1/cart/{id}/items",
    "/api/v1/users/{id}",
    "/api/v2/search",
    "/api/v1/payments/{id}/capture",
    "/healthz",
)
_METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
_INFO = (
    "{method} {route} completed",
    "order {id} created for customer {cust} with {n} items",
    "cache hit ratio {ratio} over the last 60s for key space {space}",
    "published event order.{evt} to topic orders-v2 partition {p}",
    "user {cust} authenticated via oidc provider corp-sso",
    "reserved {n} units of sku {sku} in warehouse eu-west-{p}",
)
_DEBUG = (
    "query plan for {space}: index scan on idx_{space}_created_at rows={n}",
    "retry budget remaining {n} for upstream {space}",
)
_WARN = (
    "slow upstream {space}: {ms} ms exceeds the 250 ms budget",
    "retrying {method} {route} after connection reset (attempt {n} of 3)",
    "rate limit at 85% for api key {sku}",
)
_ERROR = (
    "{method} {route} failed: upstream {space} returned 503 Service Unavailable",
    "payment {id} declined by processor: insufficient_funds",
    "timeout after 5000 ms waiting for lock on order {id}",
)
_BY_LEVEL = {"info": _INFO, "debug": _DEBUG, "warn": _WARN, "error": _ERROR}
_SPACES = ("sessions", "orders", "inventory", "pricing", "profiles")
_EVENTS = ("created", "paid", "shipped", "cancelled")

_HOSTS = ("web-01", "web-02", "app-01", "app-02", "db-01", "lb-01")
_PROGRAMS = ("sshd", "CRON", "nginx", "kernel", "systemd", "postfix/smtpd", "dockerd", "haproxy")
_PROGRAM_WEIGHTS = (10, 8, 30, 5, 10, 7, 15, 15)


def _fill(rng: random.Random, template: str) -> str:
    route = rng.choice(_ROUTES).replace("{id}", str(rng.randrange(10_000, 99_999)))
    return template.format(
        method=rng.choice(_METHODS),
        route=route,
        id=rng.randrange(1_000_000, 9_999_999),
        cust=f"c-{rng.randrange(100_000, 999_999)}",
        n=rng.randrange(1, 40),
        ratio=f"{rng.random():.3f}",
        space=rng.choice(_SPACES),
        evt=rng.choice(_EVENTS),
        p=rng.randrange(0, 12),
        sku=f"SKU-{rng.randrange(10_000, 99_999)}",
        ms=rng.randrange(250, 4000),
    )


def _pad(rng: random.Random, text: str, target: int) -> str:
    # Real messages carry context; key=value pairs bring the line to its drawn length.
    extras = ("client=10.0.{a}.{b}", "region=eu-west-1", "pod=api-{a}-{b}x7k", "trace={h}", "span={h8}")
    while len(text) < target:
        extra = rng.choice(extras).format(
            a=rng.randrange(256), b=rng.randrange(256), h=f"{rng.getrandbits(64):016x}", h8=f"{rng.getrandbits(32):08x}"
        )
        text = f"{text} {extra}"
    return text


def _json_lines(n: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    ts = START
    for _ in range(n):
        ts += timedelta(microseconds=rng.randrange(500, 5000))
        level = rng.choices(_LEVELS, _LEVEL_WEIGHTS)[0]
        status = {"info": 200, "debug": 200, "warn": rng.choice((200, 429)), "error": rng.choice((500, 502, 503))}
        record = {
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": level,
            "service": rng.choice(_SERVICES),
            # The fixed fields take ~150 bytes; the message brings the line to ~170-250.
            "message": _pad(rng, _fill(rng, rng.choice(_BY_LEVEL[level])), rng.randrange(20, 80)),
            "request_id": f"{rng.getrandbits(64):016x}",
            "duration_ms": round(rng.lognormvariate(2.5, 0.8), 1),
            "status": status[level],
        }
        # Compact, as structured loggers (zap, pino, structlog's JSONRenderer with orjson) write it.
        yield json.dumps(record, separators=(",", ":"))


def _syslog_message(rng: random.Random, program: str) -> str:
    ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    if program == "sshd":
        return (
            f"Accepted publickey for deploy from {ip} port {rng.randrange(30000, 60000)} ssh2: ED25519 "
            f"SHA256:{rng.getrandbits(128):032x}"
        )
    if program == "CRON":
        return f"(root) CMD (/usr/local/bin/backup.sh --incremental --target s3://backups/{rng.randrange(999)})"
    if program == "nginx":
        route = rng.choice(_ROUTES).replace("{id}", str(rng.randrange(10_000, 99_999)))
        return (
            f'{ip} - - "{rng.choice(_METHODS)} {route} HTTP/1.1" {rng.choice((200, 200, 200, 201, 304, 404, 502))} '
            f'{rng.randrange(200, 40000)} "-" "Mozilla/5.0 (X11; Linux x86_64)"'
        )
    if program == "kernel":
        return (
            f"[{rng.randrange(100000)}.{rng.randrange(999999):06d}] IN=eth0 OUT= SRC={ip} DST=10.0.0.1 "
            f"PROTO=TCP SPT={rng.randrange(1024, 65535)} DPT=22"
        )
    if program == "systemd":
        return f"Started session-{rng.randrange(1, 9999)}.scope - Session {rng.randrange(1, 9999)} of User deploy."
    if program == "postfix/smtpd":
        return f"connect from mail-{rng.randrange(99)}.example.net[{ip}]"
    if program == "dockerd":
        return (
            f'time="{START.date()}T10:00:00Z" level=info msg="ignoring event" container={rng.getrandbits(96):024x} '
            f"module=libcontainerd namespace=moby topic=/tasks/delete"
        )
    return (
        f"{ip}:{rng.randrange(1024, 65535)} [23/Nov/2026:10:00:00.000] fe-https be-api/api-{rng.randrange(1, 9)} "
        f"0/0/1/{rng.randrange(1, 400)}/{rng.randrange(1, 400)} 200 {rng.randrange(200, 9000)}"
    )


def _syslog_lines(n: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    ts = START
    for _ in range(n):
        ts += timedelta(microseconds=rng.randrange(500, 5000))
        program = rng.choices(_PROGRAMS, _PROGRAM_WEIGHTS)[0]
        # RFC 3164 as rsyslog's RSYSLOG_TraditionalFileFormat writes it: day padded with a space.
        stamp = f"{ts:%b} {ts.day:2d} {ts:%H:%M:%S}"
        tag = program if program == "kernel" else f"{program}[{rng.randrange(300, 65000)}]"
        text = _pad(rng, _syslog_message(rng, program), rng.randrange(100, 180))
        yield f"{stamp} {rng.choice(_HOSTS)} {tag}: {text}"


def write_lines(kind: Kind, path: Path, n: int, seed: int = SEED) -> Path:
    """Write n lines of the given kind to path (overwriting it); the same arguments give the same bytes."""
    lines = _json_lines(n, seed) if kind == "json" else _syslog_lines(n, seed)  # text: the syslog lines
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line)
            f.write("\n")
    return path


# --- documents -----------------------------------------------------------------------------------------


def _json_document(line: str, path: Path, offset: int) -> Document:
    record = json.loads(line)
    source = {
        "@timestamp": record["timestamp"],
        "message": record["message"],
        "log": {"level": record["level"], "file": {"path": str(path)}},
        "service": {"name": record["service"]},
        "host": {"name": FILE_HOST},
        "event": {"dataset": dataset("json")},
        # Fields beyond the ECS ones stay under "fields", as fleetwatch keeps a parser's extra fields.
        "fields": {k: record[k] for k in ("request_id", "duration_ms", "status")},
    }
    return Document(doc_id(path, offset), source)


@functools.lru_cache(maxsize=4096)
def _syslog_time(stamp: str) -> str:
    # Many lines share a second; strptime for each would make building 500k documents take half a minute.
    ts = datetime.strptime(f"{SYSLOG_YEAR} {stamp}", "%Y %b %d %H:%M:%S").replace(tzinfo=UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _syslog_document(line: str, path: Path, offset: int, kind: Kind = "syslog") -> Document:
    # "Nov 23 10:00:00 host prog[pid]: message"; lines from the generator always have this shape.
    stamp, rest = line[:15], line[16:]
    host, _, rest = rest.partition(" ")
    tag, _, message = rest.partition(": ")
    program, _, pid = tag.partition("[")
    source: dict[str, Any] = {
        "@timestamp": _syslog_time(stamp),
        "message": message,
        # No severity in a file line without PRI: log.level stays out, as fleetwatch leaves it unknown.
        "log": {"file": {"path": str(path)}},
        "service": {"name": program},
        "host": {"name": host},
        "event": {"dataset": dataset(kind)},
        "fields": {"pid": int(pid.rstrip("]"))} if pid else {},
    }
    return Document(doc_id(path, offset), source)


def build_documents(kind: Kind, path: Path) -> list[Document]:
    """The documents fleetwatch would index for the lines of path, in file order."""
    docs: list[Document] = []
    offset = 0
    with path.open("rb") as f:
        for raw in f:
            line = raw.rstrip(b"\n").decode("utf-8")
            docs.append(
                _json_document(line, path, offset) if kind == "json" else _syslog_document(line, path, offset, kind)
            )
            offset += len(raw)
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, default="json")
    parser.add_argument("--lines", type=int, default=10)
    parser.add_argument("path", type=Path)
    args = parser.parse_args()
    write_lines(args.kind, args.path, args.lines)
    sizes = [len(line) for line in args.path.read_bytes().splitlines()]
    print(f"{args.path}: {len(sizes)} lines, {min(sizes)}-{max(sizes)} bytes, mean {sum(sizes) / len(sizes):.0f}")


if __name__ == "__main__":
    main()
