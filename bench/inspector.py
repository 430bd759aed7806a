#!/usr/bin/env python3
"""The packet inspector's speed targets (issue 6), measured for `make bench`.

- offline: the gateway-like mixed capture the unit tests build (tests/inspect/nbi_gen.py
  `mixed_frames(60_000)`), replayed from a pcap by the real Inspector in a fresh interpreter
  pinned to one core; best of a few passes, and CPU µs per packet (robust to a busy box).
  Target: >= 40,000 packets/s.
- live: the client/router/server namespaces of the inspector tests (tests/inspect/nbi_topo.py),
  `netblock inspect --interface` on the router pinned to one core, and tests/inspect/nbi_flood.py
  sending ClientHello frames from the client namespace at 20,000/s for a few seconds on the
  other core. Target: >= 90% of the rate offered, every sent hello inspected, 0 kernel drops.
  Needs root (namespaces, AF_PACKET): as another user it is reported as not measured.

CI tests never assert these rates (tests/test_inspect_units.py and test_inspect_e2e.py check
that every packet is inspected); this module is the one place they are checked.

    bench/inspector.py [--quick]        both measurements, printed as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HELPERS = REPO / "tests" / "inspect"  # nbi_gen, nbi_topo, nbi_flood: shared with the tests, not copied
sys.path.insert(0, str(HERE))

from procs import CLK_TCK, cpu_ticks, wait_idle  # noqa: E402 - bench modules are imported by path

OFFLINE_TARGET = 40_000  # packets/s on the mixed capture (issue 6)
LIVE_RATE = 20_000  # ClientHellos/s offered (issue 6)
OFFLINE_FRAMES = 60_000  # as tests/test_inspect_units.py
BLOCKED_EVERY = 100  # one hello in 100 names weixin.qq.com: the event path is exercised too
IDLE_LIMIT = 0.15  # as bench/run.py: cores busy with other work before a measurement starts


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def write_config(workdir: Path, resolver: str, events: bool) -> Path:
    """The configuration of the inspector tests: shipped lists, one netblock resolver."""
    store = f"{{jsonl: {workdir / 'events.jsonl'}, sqlite: ''}}" if events else "{enabled: false}"
    path = workdir / "netblock.yaml"
    path.write_text(
        f"policy: {{lists: [{REPO}/blocklists/*.yaml], watch: false}}\n"
        f"events: {store}\n"
        "devices: {neighbours: false}\n"
        f"inspector: {{resolvers: [{resolver}], doh_list: {REPO}/blocklists/doh-resolvers.yaml}}\n"
    )
    return path


# ---- offline ------------------------------------------------------------------------------


def _offline_child(workdir: Path, passes: int) -> dict[str, Any]:
    """Runs in the pinned interpreter: build the mix, replay it `passes` times."""
    sys.path.insert(0, str(HELPERS))
    import nbi_gen as gen

    from netblock.config import load_config
    from netblock.inspect.runner import Inspector

    frames = gen.mixed_frames(OFFLINE_FRAMES)
    pcap = workdir / "mix.pcap"
    gen.write_pcap(pcap, frames)
    config = load_config(write_config(workdir, "10.9.0.53", events=False))
    rates, cpu_us = [], []
    summary: dict[str, Any] = {}
    for _ in range(passes):
        inspector = Inspector(config, ())
        inspector.events = inspector.sink.events = None  # the parsers and detection, as the unit test
        wall, cpu = time.perf_counter(), time.process_time()
        summary = inspector.run_pcap(str(pcap))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append(summary["frames"] / wall)
        cpu_us.append(cpu / summary["frames"] * 1e6)
    return {
        "frames": len(frames),
        "packets": summary["packets"],
        "by_stage": summary["by_stage"],
        "samples": [round(r) for r in rates],
        "pps": max(rates),
        "cpu_us": min(cpu_us),
    }


def offline(workdir: Path, cpu: int = 1, passes: int = 3, idle_wait: float = 10) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    busy = wait_idle(IDLE_LIMIT, idle_wait)
    argv = [python(), str(Path(__file__).resolve()), "--offline-child", str(workdir), str(passes)]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu), *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"offline replay failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out.update(busy_before=busy, target=OFFLINE_TARGET, met=out["pps"] >= OFFLINE_TARGET)
    return out


# ---- live ---------------------------------------------------------------------------------


def live(
    workdir: Path,
    rate: int = LIVE_RATE,
    seconds: float = 3.0,
    cpus: tuple[int, int] = (0, 1),
    idle_wait: float = 10,
) -> dict[str, Any]:
    """cpus = (flood, inspector)."""
    base: dict[str, Any] = {"measured": False, "rate": rate, "seconds": seconds}
    if os.geteuid() != 0:
        return {**base, "reason": "needs root (network namespaces, AF_PACKET)"}
    missing = [tool for tool in ("ip", "taskset") if not shutil.which(tool)]
    if missing:
        return {**base, "reason": f"{', '.join(missing)} not found"}
    sys.path.insert(0, str(HELPERS))
    import nbi_topo as topo

    workdir.mkdir(parents=True, exist_ok=True)
    net = topo.Topology("b", workdir)
    try:
        net.up()
        config = write_config(workdir, "10.200.2.53", events=True)
        ready = workdir / "ready"
        log = workdir / "inspector.log"
        proc = net.spawn(
            net.rtr,
            "taskset",
            "-c",
            str(cpus[1]),
            topo.PY,
            "-m",
            "netblock.inspect.cli",
            "inspect",
            "-c",
            str(config),
            "--interface",
            net.rtr_cif,
            "--ready-file",
            str(ready),
            stdout=subprocess.PIPE,
            log=log,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the inspector did not start: {log.read_text(errors='replace')[-1500:]}")
            time.sleep(0.05)
        router_mac = json.loads(net.ns(net.rtr, "ip", "-j", "link", "show", net.rtr_cif).stdout)[0]["address"]
        busy = wait_idle(IDLE_LIMIT, idle_wait)
        ticks = cpu_ticks(proc.pid)  # ip netns exec and taskset exec: the PID is the inspector's
        flood = net.ns(
            net.cli,
            "taskset",
            "-c",
            str(cpus[0]),
            topo.PY,
            str(topo.HERE / "nbi_flood.py"),
            "c0",
            router_mac,
            str(rate),
            str(seconds),
            str(BLOCKED_EVERY),
            timeout=seconds * 10 + 60,
        )
        time.sleep(1.0)  # what is still in the socket buffer gets read
        ticks = cpu_ticks(proc.pid) - ticks
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"the inspector exited {proc.returncode}: {log.read_text(errors='replace')[-1500:]}")
        summary = json.loads(out.decode().strip().splitlines()[-1])["summary"]
    finally:
        net.down()
    sent_text, elapsed_text = flood.stdout.split()
    sent, elapsed = int(sent_text), float(elapsed_text)
    offered = sent / elapsed if elapsed > 0 else 0.0
    packets, drops = int(summary["packets"]), int(summary["kernel_drops"])
    return {
        **base,
        "measured": True,
        "sent": sent,
        "elapsed": elapsed,
        "offered": offered,
        "packets": packets,
        "kernel_drops": drops,
        "sni": summary["by_stage"].get("sni", 0),
        "sni_expected": len(range(0, sent, BLOCKED_EVERY)),
        "cpu_us": ticks / CLK_TCK / packets * 1e6 if packets else float("nan"),
        "busy_before": busy,
        "met": offered >= 0.9 * rate and drops == 0 and packets >= sent,
    }


# ---- both, as one bench stage ------------------------------------------------------------


def run(workdir: Path, quick: bool = False, cpus: tuple[int, int] = (0, 1), idle_wait: float = 10) -> dict[str, Any]:
    """{"offline": figures, "live": figures}; a part that fails holds {"error": text}."""
    out: dict[str, Any] = {}
    try:
        out["offline"] = offline(workdir / "offline", cpus[1], passes=2 if quick else 3, idle_wait=idle_wait)
        o = out["offline"]
        print(f"  offline mix: {o['pps']:,.0f} packets/s (samples {o['samples']}), {o['cpu_us']:.1f} µs CPU/packet")
    except Exception as exc:  # reported in the section, the live part still runs
        out["offline"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        out["live"] = live(workdir / "live", seconds=2.0 if quick else 3.0, cpus=cpus, idle_wait=idle_wait)
        v = out["live"]
        if v["measured"]:
            print(
                f"  live: offered {v['offered']:,.0f} hellos/s, inspected {v['packets']:,} of {v['sent']:,}, "
                f"kernel drops {v['kernel_drops']}, {v['cpu_us']:.1f} µs CPU/packet"
            )
        else:
            print(f"  live: not measured ({v['reason']})")
    except Exception as exc:
        out["live"] = {"measured": False, "error": f"{type(exc).__name__}: {exc}"}
    return out


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--offline-child":
        print(json.dumps(_offline_child(Path(sys.argv[2]), int(sys.argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer offline passes, a 2 s live run")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="netblock-bench-inspector-"))
    try:
        print(json.dumps(run(workdir, quick=args.quick), indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
