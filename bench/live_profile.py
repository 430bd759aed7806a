"""Profile a live netblock under dnsperf load: where the server's CPU goes, per query.

Starts the bench world (NSD upstream, netblock with every feature on, pinned like `make
bench`), drives each mix in turn with dnsperf on the other core and samples netblock:

- `--sampler perf` (the default; Debian's linux-perf): `perf record` with the software
  clock, which works on this VM (no hardware counters here); prints, for each mix, the microseconds a query spends
  in each C function and kernel symbol (share of the samples x 1e6 / q/s, the server holding
  its core), and with two or more mixes, how much more the others spend than the first;
- `--sampler py-spy`: Python stacks, folded, in --out (py-spy does not read every CPython
  build; the perf profile names the interpreter's functions, not ours).

    .venv/bin/python bench/live_profile.py --mixes b,c          # where (c) spends more than (b)
    .venv/bin/python bench/live_profile.py --mixes a --sampler py-spy --out /tmp/stacks.txt
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dnsperf
import servers
from procs import Procs
from run import LOADGEN_CPU, NETBLOCK_VARIANTS, SERVER_CPU
from world import build

TOP = 25  # symbols printed


def perf_costs(data: Path, qps: float) -> dict[str, float]:
    """µs a query per 'dso symbol', from a perf.data file of the server under qps q/s."""
    report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso,sym", "--stdio"],
                            capture_output=True, text=True, check=True, timeout=300).stdout
    costs: dict[str, float] = {}
    if qps <= 0:
        return costs
    for line in report.splitlines():
        fields = line.split()
        if len(fields) < 3 or line.startswith("#") or not fields[0].endswith("%"):
            continue
        costs[" ".join(fields[1:])] = float(fields[0][:-1]) / 100 * 1e6 / qps
    return costs


def print_costs(by_mix: dict[str, dict[str, float]]) -> None:
    mixes = list(by_mix)
    first = by_mix[mixes[0]]
    print("µs a query (all threads of the server)")
    print("  " + "  ".join(f"{m:>7s}" for m in mixes) + "  symbol")
    print("  " + "  ".join(f"{sum(by_mix[m].values()):7.3f}" for m in mixes) + "  (total)")
    symbols = set().union(*(set(c) for c in by_mix.values()))
    if len(mixes) > 1:  # ordered by how much more the last mix spends than the first
        last = by_mix[mixes[-1]]
        order = sorted(symbols, key=lambda s: last.get(s, 0.0) - first.get(s, 0.0), reverse=True)
    else:
        order = sorted(symbols, key=lambda s: first.get(s, 0.0), reverse=True)
    for symbol in order[:TOP]:
        print("  " + "  ".join(f"{by_mix[m].get(symbol, 0.0):7.3f}" for m in mixes) + f"  {symbol}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixes", default="a", help="comma-separated: a, b, c (the bench mixes)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--variant", default="netblock", choices=["netblock", *NETBLOCK_VARIANTS])
    parser.add_argument("--sampler", default="perf", choices=["perf", "py-spy"])
    parser.add_argument("--world", type=Path, help="an existing bench world directory to reuse")
    parser.add_argument("--out", type=Path, default=Path("/tmp/netblock-profile"),
                        help="perf: a directory for the perf.data files; py-spy: a file prefix")
    args = parser.parse_args()
    mixes = args.mixes.split(",")
    tool = "perf" if args.sampler == "perf" else "py-spy"
    found = shutil.which(tool) or str(Path(sys.executable).with_name(tool))
    if not Path(found).exists():
        parser.error(f"{tool} is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="netblock-profile-"))
    world = build(args.world or workdir / "world")
    procs = Procs(workdir)
    sampler: subprocess.Popen[bytes] | None = None
    by_mix: dict[str, dict[str, float]] = {}
    try:
        probe = world.resolvable[0][0]
        nsd = servers.start_nsd(procs, world, probe, cpu=LOADGEN_CPU)
        server = servers.start_netblock(procs, world, nsd, probe, SERVER_CPU, name=args.variant,
                                        overrides=NETBLOCK_VARIANTS.get(args.variant))
        dnsperf.run(server.port, world.mix("b"), passes=3, qps=40_000, cpu=LOADGEN_CPU, server_pid=server.pid)
        for mix in mixes:
            dnsperf.run(server.port, world.mix(mix), passes=1, cpu=LOADGEN_CPU)  # its answers remembered
            if args.sampler == "perf":
                args.out.mkdir(parents=True, exist_ok=True)
                out = args.out / f"perf-{args.variant}-{mix}.data"
                command = [found, "record", "-e", "cpu-clock", "-F", "4000", "-q", "-o", str(out), "-p",
                           str(server.pid)]
            else:
                out = args.out.with_name(f"{args.out.name}-{mix}.txt")
                command = [found, "record", "--pid", str(server.pid), "--duration", str(int(args.seconds)),
                           "--rate", "500", "--format", "raw", "--output", str(out), "--nonblocking"]
            log = out.with_name(out.name + ".log")
            with log.open("wb") as errors:
                sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
            time.sleep(0.5)  # time to attach before the load starts
            if sampler.poll() is not None:  # refused (perf_event_paranoid, no such pid...): say why
                parser.error(f"{tool} stopped at once: {log.read_text().strip()}")
            result = dnsperf.run(server.port, world.mix(mix), seconds=args.seconds, cpu=LOADGEN_CPU,
                                 server_pid=server.pid)
            if args.sampler == "perf":
                sampler.send_signal(signal.SIGINT)  # perf writes its file on SIGINT
            sampler.wait(timeout=args.seconds + 30)
            sampler = None
            print(f"{args.variant} mix {mix}: {result.qps:,.0f} q/s (sampled, so below make bench's); {out}")
            if args.sampler == "perf":
                by_mix[mix] = perf_costs(out, result.qps)
    finally:
        if sampler is not None and sampler.poll() is None:
            sampler.kill()  # stopped by PID like every process of the bench
            sampler.wait(5)
        procs.stop_all()
    if by_mix:
        print_costs(by_mix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
