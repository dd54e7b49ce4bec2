"""Where a profiled fleetwatch run spent its time: py-spy's collapsed stacks (``BENCH_LOG_PYSPY``) summed
by thread and by stage.

    .venv/bin/python -m bench.logs.profile /tmp/pyspy/json-1796205138.txt

Shares are of all samples (the thread holding the GIL, 100 per second): "inclusive" counts a sample for a
stage when the stage's function is anywhere on its stack.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# Stage -> a function of it, as py-spy names frames: "function (module path)".
STAGES = {
    "parse (LogParser.parse)": "parse (collectors/logs/parsers.py",
    "tail (next_batch)": "next_batch (collectors/logs/tail.py",
    "log rates": "(flows/log_rates.py",
    "encode (encode_batch)": "encode_batch (flows/sinks/elasticsearch.py",
    "bulk requests (_bulk)": "_bulk (flows/sinks/elasticsearch.py",
    "snapshots": "snapshot (",
    "garbage collection": "gc_collect",
}


def summarise(path: Path) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """Total samples, samples by thread, inclusive samples by stage, self samples by function."""
    total = 0
    threads: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        thread = next((f for f in frames if f.startswith("thread (")), "?")
        threads[thread.split('"')[1] if '"' in thread else thread] += count
        for stage, needle in STAGES.items():
            if any(needle in f for f in frames):
                stages[stage] += count
        leaves[frames[-1]] += count
    return total, threads, stages, leaves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    total, threads, stages, leaves = summarise(args.path)
    print(f"{total} samples")
    for name, n in threads.most_common():
        print(f"  thread {name}: {n / total:.0%}")
    for name, n in stages.most_common():
        print(f"  {name}: {n / total:.0%}")
    print("self time:")
    for name, n in leaves.most_common(args.top):
        print(f"  {n / total:6.1%}  {name[:120]}")


if __name__ == "__main__":
    main()
