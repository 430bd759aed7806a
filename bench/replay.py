"""Replay a bench mix through `DnsServer.handle()` in process: µs per query, and a profile.

No sockets and no event loop: what is left is the query path itself (admit, packet cache,
parse, decide, answer, record), with the bench world's lists and the bench config (events,
metrics and device identity on). The events writer thread runs, as in production, unless
--no-writer. Queries that would be forwarded are counted, not sent.

    .venv/bin/python bench/replay.py --mix a            # blocked mix: µs/q, best of rounds
    .venv/bin/python bench/replay.py --mix a --profile  # plus the top of a cProfile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rdatatype

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import world as bench_world
from servers import netblock_config

from netblock.config import load_config
from netblock.dns.server import DnsServer, settle_collector


def packets(mix_file: Path, edns: bool) -> list[bytes]:
    out = []
    for number, line in enumerate(mix_file.read_text().splitlines()):
        name, rdtype = line.split()
        query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), use_edns=0 if edns else None)
        query.id = number & 0xFFFF
        out.append(query.to_wire())
    return out


def replay(server: DnsServer, queries: list[bytes]) -> tuple[float, dict[str, int]]:
    kinds = {"answered": 0, "forward": 0, "dropped": 0}
    handle = server.handle
    started = time.perf_counter()
    for data in queries:
        result = handle(data, "127.0.0.1", "udp")
        if result is None:
            kinds["dropped"] += 1
        elif result.__class__ is bytes:
            kinds["answered"] += 1
        else:
            kinds["forward"] += 1
    return (time.perf_counter() - started) / len(queries) * 1e6, kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", default="a", help="a (blocked), b (cached), c (90/10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--edns", action="store_true", help="queries carry EDNS (dnsperf's do not)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-writer", action="store_true", help="do not start the events writer thread")
    parser.add_argument("--world", type=Path, help="an existing bench world directory to reuse")
    args = parser.parse_args()

    root = args.world or Path(tempfile.mkdtemp(prefix="nb-replay-"))
    world = bench_world.build(root)
    conf = netblock_config(root, 53000, "127.0.0.1:53001", world.netblock_lists, 53002)
    server = DnsServer(load_config(conf))
    server.holder.load_initial()
    settle_collector()  # as DnsServer.start() does
    if not args.no_writer:
        server.events.start()
    queries = packets(world.mix(args.mix), args.edns)
    for round_number in range(args.rounds):
        per_query, kinds = replay(server, queries)
        print(f"round {round_number + 1}: {per_query:.2f} µs/q over {len(queries):,} queries {kinds}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        replay(server, queries)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    server.events.stop()
    print(f"events written {server.events.written:,}, dropped {server.events.dropped:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
