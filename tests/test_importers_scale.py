"""Scale: a million imported names, in hosts and plain format, load whole and match.

The speed and memory targets (load in at most 3 s, at most 100 MB of RSS, lookup cost
within 10% of a 1k list) are measured by `make bench` (bench/scale.py), not here: CI
machines are shared and never assert timings. The figures are still printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

GENERATE = r"""
import random, string, sys
count, path, fmt = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rng = random.Random(count)
letters = string.ascii_lowercase + string.digits
def label():
    return "".join(rng.choices(letters, k=rng.randint(4, 12)))
with open(path, "w") as out:
    out.write("# generated test list\n")
    for i in range(count):
        name = f"{label()}.{label()}.{rng.choice(['com', 'net', 'org', 'cn'])}"
        out.write(("0.0.0.0 " + name if fmt == "hosts" else name) + "\n")
"""

MEASURE = r"""
import ctypes, gc, json, sys, time, timeit
from pathlib import Path
from netblock.names import to_wire
from netblock.policy.lists import load_list
from netblock.policy.match import compile_policy

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

listfile, probe_hit = sys.argv[1], sys.argv[2]
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
before = rss()
wall, cpu = time.perf_counter(), time.process_time()
lst, errors = load_list(listfile)
policy = compile_policy([lst])
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
assert not errors, errors
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # as PolicyHolder does after every build
added = rss() - before
miss = to_wire("www.not-listed.example.com")
hit = to_wire(probe_hit)
assert policy.match_wire(miss) is None and policy.match_wire(hit) is not None
def cost(wire):
    return min(timeit.repeat(lambda: policy.match_wire(wire), number=20000, repeat=7)) / 20000 * 1e6
print(json.dumps({"count": policy.entry_counts()["big"], "wall": wall, "cpu": cpu, "rss_mb": added / 2**20,
                  "miss_us": cost(miss), "hit_us": cost(hit)}))
"""


def _measure(tmp_path: Path, count: int, fmt: str = "hosts") -> dict[str, float]:
    feed = tmp_path / f"feed-{count}.{fmt}"
    subprocess.run([sys.executable, "-c", GENERATE, str(count), str(feed), fmt], check=True, timeout=300)
    listfile = tmp_path / f"big-{count}.yaml"
    listfile.write_text(f"name: big\ninclude:\n  - {{path: {feed.name}, format: {fmt}}}\n")
    with feed.open() as handle:
        handle.readline()
        probe = handle.readline().split()[-1]
    result = subprocess.run([sys.executable, "-c", MEASURE, str(listfile), probe], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures: dict[str, float] = json.loads(result.stdout)
    print(f"{fmt} {count:>9,} names: load {figures['wall']:.2f} s wall / {figures['cpu']:.2f} s CPU, "
          f"+{figures['rss_mb']:.1f} MiB RSS, lookup miss {figures['miss_us']:.2f} us, "
          f"hit {figures['hit_us']:.2f} us")
    return figures


@pytest.mark.slow
def test_a_million_hosts_lines_load_and_match(tmp_path: Path) -> None:
    figures = _measure(tmp_path, 1_000_000)
    assert figures["count"] >= 999_000  # random names: a handful of duplicates at most


@pytest.mark.slow
def test_plain_format_at_a_million(tmp_path: Path) -> None:
    figures = _measure(tmp_path, 1_000_000, "plain")
    assert figures["count"] >= 999_000
