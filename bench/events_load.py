"""Events under load: N blocked queries per second for S seconds; every blocked answer stored?

    .venv/bin/python bench/events_load.py [--qps 1000] [--seconds 60] [--postgres DSN]

Starts a real NSD upstream and the real netblock server (tests/harness.py) on loopback,
drives dnsperf at a fixed rate with names that are all blocked, then compares the
NXDOMAIN answers dnsperf received with the events in the store and the JSON lines. Prints
one JSON summary; exits 1 if an event was lost. The CI version is
tests/test_events_server.py::test_short_load_every_blocked_answer_is_stored (5 s).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import Netblock, Nsd, wait_for  # noqa: E402

BLOCK_LIST = """\
name: loadwechat
vendor: Tencent WeChat (Weixin)
policy: {id: BENCH-1}
action: block
domains: [weixin.qq.com]
"""


def metric(nb: Netblock, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{nb.metrics_port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--postgres", help="store events in this PostgreSQL instead of SQLite")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (config, events, logs)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="netblock-events-load-"))
    (work / "lists").mkdir()
    (work / "lists" / "load.yaml").write_text(BLOCK_LIST)
    (work / "queries.txt").write_text("".join(f"q{i}.weixin.qq.com A\n" for i in range(5000)))
    events: dict[str, object] = {"flush_interval": 0.5, "jsonl_max_bytes": 0}  # one file: no rotation to count
    if args.postgres:
        events["postgres"] = args.postgres
    config = {"access": {"rate_limit": {"queries": 10_000_000}}, "events": events,
              "logging": {"level": "warning"}}
    with Nsd(work / "nsd") as nsd, Netblock(work / "nb", [nsd.address], lists=[work / "lists" / "load.yaml"],
                                             config=config) as nb:
        rss_before = rss_kib(nb.pid)
        started = time.monotonic()
        done = subprocess.run(
            ["dnsperf", "-s", "127.0.0.1", "-p", str(nb.port), "-a", "127.0.0.9",
             "-d", str(work / "queries.txt"), "-Q", str(args.qps), "-l", str(args.seconds),
             "-c", "8", "-t", "2"],
            capture_output=True, text=True, timeout=args.seconds + 120)
        sent_for = time.monotonic() - started
        match = re.search(r"NXDOMAIN (\d+)", done.stdout)
        blocked_answers = int(match.group(1)) if match else 0
        lost = re.search(r"Queries lost:\s+(\d+)", done.stdout)
        lag_started = time.monotonic()
        wait_for(lambda: metric(nb, "netblock_events_written_total")
                 + metric(nb, "netblock_events_dropped_total") >= blocked_answers, 60)
        lag = time.monotonic() - lag_started
        time.sleep(1)
        written = metric(nb, "netblock_events_written_total")
        dropped = metric(nb, "netblock_events_dropped_total")
        rss_after = rss_kib(nb.pid)
        stored = written
        if not args.postgres:
            with sqlite3.connect(nb.dir / "events.db") as conn:
                stored = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        jsonl_lines = sum(1 for _ in (nb.dir / "events.jsonl").open("rb"))
    summary = {
        "qps": args.qps, "seconds": args.seconds, "dnsperf_seconds": round(sent_for, 1),
        "blocked_answers": blocked_answers, "queries_lost": int(lost.group(1)) if lost else None,
        "events_stored": stored, "events_written_metric": written, "events_dropped_metric": dropped,
        "jsonl_lines": jsonl_lines, "seconds_until_all_stored": round(lag, 2),
        "server_rss_kib_before": rss_before, "server_rss_kib_after": rss_after,
        "nothing_lost": stored == blocked_answers == jsonl_lines and dropped == 0,
    }
    if args.keep:
        summary["work"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0 if summary["nothing_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
