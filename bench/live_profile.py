"""Profile a live netblock under dnsperf load with py-spy: where the server's CPU goes.

Starts the bench world (NSD upstream, netblock with every feature on, pinned like `make
bench`), drives one mix with dnsperf on the other core and samples netblock with py-spy.

    .venv/bin/python bench/live_profile.py --mix a [--seconds 10] [--variant netblock-bare]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dnsperf
import servers
from procs import Procs
from run import LOADGEN_CPU, NETBLOCK_VARIANTS, SERVER_CPU
from world import build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", default="a")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--variant", default="netblock", choices=["netblock", *NETBLOCK_VARIANTS])
    parser.add_argument("--world", type=Path, help="an existing bench world directory to reuse")
    parser.add_argument("--out", type=Path, default=Path("/tmp/netblock-profile.txt"))
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workdir = Path(tempfile.mkdtemp(prefix="netblock-profile-"))
    world = build(args.world or workdir / "world")
    procs = Procs(workdir)
    sampler: subprocess.Popen[bytes] | None = None
    try:
        probe = world.resolvable[0][0]
        nsd = servers.start_nsd(procs, world, probe, cpu=LOADGEN_CPU)
        server = servers.start_netblock(procs, world, nsd, probe, SERVER_CPU, name=args.variant,
                                        overrides=NETBLOCK_VARIANTS.get(args.variant))
        dnsperf.run(server.port, world.mix(args.mix), passes=1, cpu=LOADGEN_CPU)  # warm-up
        sampler = subprocess.Popen([spy, "record", "--pid", str(server.pid), "--duration", str(int(args.seconds)),
                                    "--rate", "500", "--format", "raw", "--output", str(args.out), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = dnsperf.run(server.port, world.mix(args.mix), seconds=args.seconds, cpu=LOADGEN_CPU,
                             server_pid=server.pid)
        sampler.wait(timeout=args.seconds + 30)
        print(f"{args.variant} mix {args.mix}: {result.qps:,.0f} q/s; folded stacks in {args.out}")
    finally:
        if sampler is not None and sampler.poll() is None:
            sampler.kill()  # stopped by PID like every process of the bench
            sampler.wait(5)
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
