#!/usr/bin/env python3
"""`make bench`: netblock side by side with dnsmasq and unbound, on loopback only.

Method (reference/performance.md): one world (NSD upstream, a 100k-name blocklist
rendered for each server, query files per mix); dnsperf pinned to core 0 and each server
to core 1; a warm-up; 3 rounds with the servers in rotated order; medians of clean runs
(a run is repeated, at most twice, when other jobs used > 0.25 core during it); ratios
netblock / peer from the same round. Then latency at 2,000 q/s, memory, list scale, the
packet inspector (bench/inspector.py), reload under load, and optionally a 10-minute soak.
Every process is stopped by PID.

    bench/run.py --quick        a first look (short runs, one round)
    bench/run.py                the full suite
    bench/run.py --soak         the full suite plus the soak (issue 8)
    bench/run.py --only inspector   the inspector stage alone (no DNS servers)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dnsperf
import inspector
import report
import scale
import servers
from procs import Procs, busy_cores, open_fds, rss_mib, wait_idle
from world import REPO, World, build, scale_names, write_netblock_list

LOADGEN_CPU, SERVER_CPU = 0, 1
IDLE_LIMIT = 0.15  # cores busy with other work before a run starts
CONTENDED = 0.25  # cores used by other work during a run: repeat it
MIXES = ("a", "b", "c")
# Extra netblock rows for finding where the time goes (`--servers netblock,netblock-noevents,...`).
NETBLOCK_VARIANTS: dict[str, dict[str, dict[str, object]]] = {
    "netblock-noevents": {"events": {"enabled": False}},
    "netblock-nometrics": {"metrics": {"enabled": False}},
    "netblock-nowatch": {"policy": {"watch": False}},
    "netblock-switch": {},  # bench/netblock_switch.py: GIL switch interval 0.5 ms
    "netblock-nodevices": {"devices": {"neighbours": False, "edns_mac": False}},
    "netblock-bare": {"events": {"enabled": False}, "metrics": {"enabled": False},
                      "devices": {"neighbours": False, "edns_mac": False}, "policy": {"watch": False}},
}
MIX_TITLES = {"a": "100% blocked", "b": "100% cached", "c": "90/10"}


@dataclass
class Settings:
    quick: bool
    rounds: int
    seconds: float
    warm_passes: int
    latency_seconds: float
    idle_wait: float
    retries: int
    sizes: tuple[int, ...]
    soak_seconds: float = 0.0
    budget_s: float = 1800.0  # throughput + latency; past it, no more idle waits or repeats
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)

    def in_budget(self) -> bool:
        return time.monotonic() - self.started < self.budget_s


def settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        s = Settings(
            quick=True,
            rounds=1,
            seconds=3,
            warm_passes=3,
            latency_seconds=3,
            idle_wait=10,
            retries=0,
            sizes=(1_000, 100_000),
        )
    else:
        s = Settings(
            quick=False,
            rounds=3,
            seconds=10,
            warm_passes=10,
            latency_seconds=10,
            idle_wait=20,
            retries=2,
            sizes=(1_000, 100_000, 1_000_000),
        )
    if args.rounds:
        s.rounds = args.rounds
    if args.seconds:
        s.seconds = s.latency_seconds = args.seconds
    if args.soak:
        s.soak_seconds = args.soak_seconds
    if args.budget_minutes:
        s.budget_s = args.budget_minutes * 60
    return s


# ---- correctness: the same answers from every server -------------------------------------


def probes(world: World) -> list[tuple[str, str, str]]:
    """(name, type, expected rcode) every server must agree on before it is measured."""
    v = world.vendor
    out = [
        (v.block[0], "A", "NXDOMAIN"),
        ("www." + v.block[0], "AAAA", "NXDOMAIN"),
        (world.blocked[0], "A", "NXDOMAIN"),
        ("a.b." + world.blocked[-1], "A", "NXDOMAIN"),
        (world.resolvable[0][0], world.resolvable[0][1], "NOERROR"),
        ("nothere.z001.nbtest", "A", "NXDOMAIN"),
    ]
    out += [(name, "A", "NOERROR") for name in v.allow[:2]]
    out += [(name, "A", "NXDOMAIN") for name in v.exact[:1]]
    cname = next((n for n, t in world.resolvable if n.split(".")[1] == "z001" and t == "A"), None)
    if cname:
        out.append((cname, "A", "NOERROR"))
    return out


def check_answers(server: servers.Server, world: World) -> list[str]:
    problems = []
    for name, rdtype, expected in probes(world):
        reply = servers.ask(server.port, name, rdtype, timeout=2.0)
        got = servers.dns.rcode.to_text(reply.rcode()) if reply is not None else "no answer"
        if got != expected:
            problems.append(
                f"{server.name}: {name} {rdtype} -> {got}, expected {expected} "
                f"(reproduce: dig @127.0.0.1 -p {server.port} {name} {rdtype})"
            )
        elif expected == "NOERROR" and reply is not None and not reply.answer:
            problems.append(f"{server.name}: {name} {rdtype} -> NOERROR without answer records")
    return problems


# Every answer each server gave the load generator, all attempts included: netblock's stored
# events are compared with its NXDOMAIN count (one event per blocked answer).
ANSWERED: dict[str, dict[str, int]] = {}


def _counted(server: servers.Server, result: dnsperf.Result) -> dnsperf.Result:
    totals = ANSWERED.setdefault(server.name, {})
    for code, n in result.rcodes.items():
        totals[code] = totals.get(code, 0) + n
    return result


# ---- throughput ----------------------------------------------------------------------------


def measure_once(
    server: servers.Server, world: World, mix: str, s: Settings, nsd: servers.Server, **kwargs: Any
) -> tuple[dnsperf.Result, int]:
    wait_idle(IDLE_LIMIT, s.idle_wait if s.in_budget() else 0)
    before = servers.nsd_queries(nsd)
    result = _counted(server, dnsperf.run(
        server.port, world.mix(mix), cpu=LOADGEN_CPU, server_pid=server.pid, watch_pids=(nsd.pid,), **kwargs
    ))
    return result, servers.nsd_queries(nsd) - before


def throughput(
    active: list[servers.Server], world: World, s: Settings, nsd: servers.Server, log: list[str]
) -> dict[str, dict[str, list[dict[str, object]]]]:
    """rounds[server][mix] = [{round, chosen result, attempts}] with rotated server order."""
    out: dict[str, dict[str, list[dict[str, object]]]] = {sv.name: {m: [] for m in MIXES} for sv in active}
    for rnd in range(s.rounds):
        order = active[rnd % len(active) :] + active[: rnd % len(active)]
        for mix in MIXES:
            for server in order:
                attempts = []
                for attempt in range(1 + s.retries):
                    if attempt and not s.in_budget():
                        break
                    result, upstream = measure_once(server, world, mix, s, nsd, seconds=s.seconds)
                    attempts.append((result, upstream))
                    again = result.other_cores > CONTENDED and attempt < s.retries
                    print(
                        f"  round {rnd + 1} mix {mix} {server.name:8s} {result.qps:9.0f} q/s "
                        f"{result.us_per_query:6.1f} us/q  lost {result.lost}  "
                        f"other {result.other_cores:.2f} cores{'  (contended, again)' if again else ''}"
                    )
                    if result.other_cores <= CONTENDED:
                        break
                best = min(attempts, key=lambda a: a[0].other_cores)
                out[server.name][mix].append(
                    {"round": rnd, "result": best[0], "upstream": best[1], "attempts": len(attempts)}
                )
                if not server.proc or not server.proc.alive():
                    raise RuntimeError(
                        f"{server.name} died during mix {mix}:\n"
                        f"{server.proc.log_tail() if server.proc else ''}"
                    )
    return out


def summarise(
    rounds: dict[str, dict[str, list[dict[str, object]]]],
) -> dict[str, dict[str, dict[str, object]]]:
    summary: dict[str, dict[str, dict[str, object]]] = {}
    for name, mixes in rounds.items():
        summary[name] = {}
        for mix, entries in mixes.items():
            results = [e["result"] for e in entries]
            clean = [r for r in results if r.other_cores <= CONTENDED]  # type: ignore[attr-defined]
            used = clean if len(clean) >= min(3, len(results)) else results
            summary[name][mix] = {
                "qps": statistics.median(r.qps for r in used),  # type: ignore[attr-defined]
                "us_q": statistics.median(r.us_per_query for r in used),  # type: ignore[attr-defined]
                "lost": sum(r.lost for r in results),  # type: ignore[attr-defined]
                "sent": sum(r.sent for r in results),  # type: ignore[attr-defined]
                "rcodes": _sum_rcodes(results),
                "upstream": sum(int(e["upstream"]) for e in entries),  # type: ignore[call-overload]
                "starred": len(clean) < len(results),
                "samples": [round(r.qps) for r in results],  # type: ignore[attr-defined]
                "other": statistics.median(r.other_cores for r in results),  # type: ignore[attr-defined]
            }
    return summary


def _sum_rcodes(results: list[object]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in results:
        for code, n in r.rcodes.items():  # type: ignore[attr-defined]
            total[code] = total.get(code, 0) + n
    return total


def round_ratios(rounds: dict[str, dict[str, list[dict[str, object]]]], peer: str) -> dict[str, float]:
    """Median over rounds of netblock QPS / peer QPS measured in the same round."""
    ratios: dict[str, float] = {}
    if "netblock" not in rounds or peer not in rounds:
        return ratios
    for mix in MIXES:
        per_round = []
        for ours, theirs in zip(rounds["netblock"][mix], rounds[peer][mix], strict=False):
            q_peer = theirs["result"].qps  # type: ignore[attr-defined]
            if q_peer:
                per_round.append(ours["result"].qps / q_peer)  # type: ignore[attr-defined]
        if per_round:
            ratios[mix] = statistics.median(per_round)
    return ratios


# ---- latency at a fixed rate -------------------------------------------------------------


def latency(
    active: list[servers.Server], world: World, s: Settings, nsd: servers.Server
) -> dict[str, dict[str, float]]:
    samples: dict[str, list[dnsperf.Result]] = {sv.name: [] for sv in active}
    for rnd in range(s.rounds):
        order = active[rnd % len(active) :] + active[: rnd % len(active)]
        for server in order:
            result, _ = measure_once(
                server, world, "c", s, nsd, seconds=s.latency_seconds, qps=2000, verbose=True
            )
            samples[server.name].append(result)
            print(
                f"  latency round {rnd + 1} {server.name:8s} p50 {result.percentile(50):.3f} "
                f"p99 {result.percentile(99):.3f} p99.9 {result.percentile(99.9):.3f} ms  lost {result.lost}"
            )
    out = {}
    for name, results in samples.items():
        out[name] = {
            "p50": statistics.median(r.percentile(50) for r in results),
            "p90": statistics.median(r.percentile(90) for r in results),
            "p99": statistics.median(r.percentile(99) for r in results),
            "p99.9": statistics.median(r.percentile(99.9) for r in results),
            "max": max(r.max_latency_ms for r in results),
            "us_q": statistics.median(r.us_per_query for r in results),
            "lost": sum(r.lost for r in results),
            "servfail": sum(r.rcodes.get("SERVFAIL", 0) for r in results),
        }
    return out


# ---- reload of a 1M-name policy under load --------------------------------------------------


def reload_under_load(
    procs: Procs, world: World, nsd: servers.Server, s: Settings, size: int
) -> dict[str, object]:
    root = procs.workdir / "reload"
    root.mkdir(exist_ok=True)
    big = root / "big.yaml"
    names = scale_names(size)
    write_netblock_list(big, f"scale-{size}", names)
    probe_name = "reloadprobe.nbscale"  # blocked only by the reloaded file
    lists = [*world.netblock_lists, big]
    nb = servers.start_netblock(
        procs,
        world,
        nsd,
        world.resolvable[0][0],
        SERVER_CPU,
        lists=lists,
        name="netblock-reload",
        ready_s=900,
        overrides={"policy": {"watch": False}},
    )
    start_s = float(nb.extra["ready_s"])  # type: ignore[arg-type]
    rss_loaded = rss_mib(nb.pid)
    dnsperf.run(nb.port, world.mix("b"), passes=2, qps=40_000, cpu=LOADGEN_CPU, server_pid=nb.pid)
    duration = min(240.0, max(15.0, 2.5 * start_s + 10))
    holder: dict[str, dnsperf.Result] = {}
    errors: list[BaseException] = []

    def load() -> None:
        try:
            holder["r"] = dnsperf.run(
                nb.port,
                world.mix("c"),
                seconds=duration,
                qps=2000,
                verbose=True,
                cpu=LOADGEN_CPU,
                server_pid=nb.pid,
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(3)
    tmp = root / "big.yaml.new"
    write_netblock_list(tmp, f"scale-{size}", [*names, probe_name])
    os.replace(tmp, big)
    sent_at = time.monotonic()
    os.kill(nb.pid, signal.SIGHUP)
    reloaded_s = None
    peak_rss = rss_mib(nb.pid)
    while time.monotonic() - sent_at < duration - 4:
        reply = servers.ask(nb.port, probe_name, timeout=0.5)
        peak_rss = max(peak_rss, rss_mib(nb.pid))
        if reply is not None and reply.rcode() == servers.dns.rcode.NXDOMAIN:
            reloaded_s = time.monotonic() - sent_at
            break
        time.sleep(0.2)
    thread.join(timeout=duration + 120)
    if errors:
        raise errors[0]
    r = holder["r"]
    slow = sum(1 for x in r.latencies_ms if x > 50)
    procs.stop(nb.proc) if nb.proc else None
    return {
        "size": size,
        "start_s": start_s,
        "rss_loaded": rss_loaded,
        "peak_rss": peak_rss,
        "reload_s": reloaded_s,
        "duration": duration,
        "sent": r.sent,
        "completed": r.completed,
        "lost": r.lost,
        "max_ms": max(r.latencies_ms) if r.latencies_ms else float("nan"),
        "p99.9": r.percentile(99.9),
        "over_50ms": slow,
        "rcodes": r.rcodes,
    }


# ---- soak (issue 8) --------------------------------------------------------------------------


def event_counts(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    db = root / "events.db"
    if db.exists():
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
                # tables, and the `events` view (schema 2) so the count compares with earlier runs
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
                for table in tables:
                    counts[f"sqlite:{table}"] = conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
        except sqlite3.Error as exc:
            counts[f"sqlite error: {exc}"] = -1
    lines = 0
    for jsonl in root.glob("events.jsonl*"):  # rotated files too
        with jsonl.open("rb") as f:
            lines += sum(1 for _ in f)
    counts["jsonl lines"] = lines
    return counts


def soak(procs: Procs, world: World, nsd: servers.Server, s: Settings) -> dict[str, object]:
    nb = servers.start_netblock(procs, world, nsd, world.resolvable[0][0], SERVER_CPU, name="netblock-soak")
    root = Path(str(nb.extra["root"]))
    dnsperf.run(nb.port, world.mix("b"), passes=2, qps=40_000, cpu=LOADGEN_CPU, server_pid=nb.pid)
    time.sleep(2)
    events_before = event_counts(root)
    samples: list[tuple[float, float, int]] = []
    holder: dict[str, dnsperf.Result] = {}
    errors: list[BaseException] = []

    def load() -> None:
        try:
            holder["r"] = dnsperf.run(
                nb.port,
                world.mix("soak"),
                seconds=s.soak_seconds,
                qps=1000,
                cpu=LOADGEN_CPU,
                server_pid=nb.pid,
                timeout_s=2,
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=load)
    t0 = time.monotonic()
    thread.start()
    marks = [60.0, s.soak_seconds / 2, s.soak_seconds - 5]
    for mark in marks:
        while time.monotonic() - t0 < mark and thread.is_alive():
            time.sleep(1)
        samples.append((time.monotonic() - t0, rss_mib(nb.pid), open_fds(nb.pid)))
    thread.join(timeout=s.soak_seconds + 120)
    if errors:
        raise errors[0]
    time.sleep(3)  # the writer flushes every 0.5 s
    r = holder["r"]
    after = event_counts(root)
    metrics = servers.metrics_text(nb)
    procs.stop(nb.proc) if nb.proc else None
    return {
        "seconds": s.soak_seconds,
        "sent": r.sent,
        "completed": r.completed,
        "lost": r.lost,
        "rcodes": r.rcodes,
        "blocked_answers": r.rcodes.get("NXDOMAIN", 0),
        "samples": samples,
        "events": {k: after.get(k, 0) - events_before.get(k, 0) for k in after},
        "metrics_events": [
            line for line in metrics.splitlines() if line.startswith("netblock_events") or "dropped" in line
        ][:20],
    }


# ---- packet inspector (issue 6) -------------------------------------------------------------


def inspector_stage(workdir: Path, s: Settings, data: dict[str, object], findings: list[str]) -> None:
    print("bench: packet inspector (offline mixed capture; live 20,000 ClientHellos/s)")
    result = inspector.run(
        workdir / "inspector", s.quick, (LOADGEN_CPU, SERVER_CPU), s.idle_wait if s.in_budget() else 0
    )
    findings.extend(f"inspector {part}: {v['error']}" for part, v in result.items() if "error" in v)
    data["inspector"] = result


# ---- the whole run ---------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs, one round: a first look")
    parser.add_argument("--soak", action="store_true", help="add the soak: 1,000 q/s, 40%% blocked")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--budget-minutes", type=float, default=0.0,
                        help="time for throughput + latency before idle waits and repeats stop (default 30)")
    parser.add_argument("--seconds", type=float, default=0.0, help="length of each dnsperf run")
    parser.add_argument("--servers", default="netblock,dnsmasq,unbound")
    parser.add_argument("--skip", default="", help="comma list of: scale,reload,latency,inspector")
    parser.add_argument("--only", choices=["inspector"], help="run this stage alone, without the DNS servers")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    s = settings(args)
    skip = set(filter(None, args.skip.split(",")))
    wanted = [n.strip() for n in args.servers.split(",") if n.strip()]
    if os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        print("bench: needs 2 CPUs (one for dnsperf, one for the server)")
        return 2
    dns_tools = () if args.only else ("nsd", "dnsperf", *(t for t in ("dnsmasq", "unbound") if t in wanted))
    for tool in ("taskset", *dns_tools):
        if not shutil.which(tool):
            print(f"bench: {tool} not found (make system-deps installs it)")
            return 2

    workdir = Path(tempfile.mkdtemp(prefix="netblock-bench-"))
    command = " ".join(["bench/run.py", *sys.argv[1:]])
    started = time.time()
    print(f"bench: work directory {workdir}; box busy {busy_cores(1.0):.2f} cores before start")
    procs = Procs(workdir)
    data: dict[str, object] = {"settings": s, "command": command, "findings": []}
    findings: list[str] = data["findings"]  # type: ignore[assignment]
    interrupted = False
    # SIGTERM unwinds like Ctrl-C, so the `finally` below stops every process by PID.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.only == "inspector":
            data["only"] = args.only
            inspector_stage(workdir, s, data, findings)
            return 0  # the `finally` below renders and records it
        world = build(workdir / "world")
        data["world"] = {
            "zones": len(world.zones),
            "names": world.name_count,
            "pairs": len(world.resolvable),
            "blocked_entries": len(world.blocked) + len(world.vendor.block) + len(world.vendor.exact),
            "blocked_queries": len(world.blocked_queries),
        }
        probe = world.resolvable[0][0]
        nsd = servers.start_nsd(procs, world, probe, cpu=LOADGEN_CPU)
        active: list[servers.Server] = []
        for name in wanted:
            try:
                if name == "netblock":
                    server = servers.start_netblock(procs, world, nsd, probe, SERVER_CPU)
                elif name in NETBLOCK_VARIANTS:
                    server = servers.start_netblock(procs, world, nsd, probe, SERVER_CPU, name=name,
                                                    overrides=NETBLOCK_VARIANTS[name])
                elif name == "dnsmasq":
                    server = servers.start_dnsmasq(procs, world, nsd, probe, SERVER_CPU)
                elif name == "unbound":
                    server = servers.start_unbound(procs, world, nsd, probe, SERVER_CPU)
                else:
                    raise ValueError(f"unknown server {name}")
            except Exception as exc:
                findings.append(f"{name} did not start: {exc}")
                print(f"bench: {name} did not start: {exc}")
                continue
            active.append(server)
        if not active:
            raise RuntimeError("no server started (see findings)")
        memory: dict[str, dict[str, float]] = {
            sv.name: {
                "start_s": float(sv.extra.get("ready_s", 0)),  # type: ignore[arg-type]
                "idle": rss_mib(sv.pid),
            }
            for sv in active
        }
        for server in active:
            findings.extend(check_answers(server, world))
        print("bench: warm-up")
        for server in active:
            before = servers.nsd_queries(nsd)
            warm = dnsperf.run(
                server.port,
                world.mix("b"),
                passes=s.warm_passes,
                qps=40_000,
                cpu=LOADGEN_CPU,
                server_pid=server.pid,
            )
            asked = servers.nsd_queries(nsd) - before
            memory[server.name]["warm_upstream"] = asked
            if warm.lost or warm.rcodes.get("SERVFAIL"):
                findings.append(
                    f"{server.name}: warm-up lost {warm.lost} of {warm.sent}, "
                    f"SERVFAIL {warm.rcodes.get('SERVFAIL', 0)} (mix b at 40,000 q/s, {s.warm_passes} passes)"
                )
        findings.extend(f"after warm-up, {m}" for sv in active for m in check_answers(sv, world))
        print("bench: throughput")
        rounds = throughput(active, world, s, nsd, findings)
        data["throughput"] = summarise(rounds)
        data["ratios"] = {peer: round_ratios(rounds, peer) for peer in ("dnsmasq", "unbound")}
        if "latency" not in skip:
            print("bench: latency at 2,000 q/s (mix c)")
            data["latency"] = latency(active, world, s, nsd)
        for sv in active:
            memory[sv.name]["after"] = rss_mib(sv.pid)
        data["memory"] = memory
        data["answered"] = ANSWERED
        for sv in active:
            if sv.name == "netblock":
                data["netblock_metrics"] = [
                    line
                    for line in servers.metrics_text(sv).splitlines()
                    if line.startswith("netblock_") and not line.startswith("#")
                ]
                data["netblock_events"] = event_counts(Path(str(sv.extra["root"])))
                tail = sv.proc.log_tail(3000) if sv.proc else ""
                if tail.strip():
                    findings.append(f"netblock stderr (tail):\n{tail}")
        for sv in list(active):
            if sv.proc:
                procs.stop(sv.proc)
        if "scale" not in skip:
            print("bench: list scale")
            data["scale"] = scale.run(workdir, s.sizes, str(servers.VENV_PYTHON), s.rounds)
        if "inspector" not in skip:
            inspector_stage(workdir, s, data, findings)
        if "reload" not in skip and "netblock" in wanted:
            size = 1_000_000 if not s.quick else 100_000
            print(f"bench: reload of a {size:,}-name policy under 2,000 q/s")
            try:
                data["reload"] = reload_under_load(procs, world, nsd, s, size)
            except Exception as exc:
                findings.append(f"reload under load failed: {exc}")
        if s.soak_seconds and "netblock" in wanted:
            print(f"bench: soak {s.soak_seconds:.0f} s at 1,000 q/s, 40% blocked")
            data["soak"] = soak(procs, world, nsd, s)
    except KeyboardInterrupt:
        interrupted = True
        raise
    except Exception as exc:
        findings.append(f"the run stopped early: {type(exc).__name__}: {exc}")
        data["failed"] = True
        raise
    finally:
        procs.stop_all()
        data["elapsed_s"] = time.time() - started
        text = report.render(data)
        print(text)
        if not args.no_record and not interrupted:
            report.append(REPO / "bench" / "RESULTS.md", text)
            print("bench: appended to bench/RESULTS.md")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
