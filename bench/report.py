"""The bench report: one Markdown section per run, printed and appended to bench/RESULTS.md."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from world import REPO

TARGETS = [
    # (label, issue, peer, min ratio)
    ("netblock >= 0.8 x dnsmasq QPS, every mix", "issue 2", "dnsmasq", 0.8),
    ("netblock >= 1.0 x dnsmasq QPS, every mix", "issue 7", "dnsmasq", 1.0),
    ("netblock >= 0.8 x unbound QPS, every mix", "issue 7", "unbound", 0.8),
]


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {
        "dnsmasq": _cmd(["dnsmasq", "--version"]).splitlines()[0:1],
        "unbound": [line for line in _cmd(["unbound", "-V"]).splitlines() if line.startswith("Version")][:1],
        "nsd": _cmd(["nsd", "-v"]).splitlines()[0:1],
        "dnsperf": [line for line in _cmd(["dnsperf", "-h"]).splitlines() if "Version" in line][:1],
    }
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": _cmd(["git", "rev-parse", "--short", "HEAD"]),
        "dirty": "yes" if _cmd(["git", "status", "--porcelain", "--", "src"]) else "no",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "peers": "; ".join(v[0] for v in versions.values() if v),
    }


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(data: dict[str, Any]) -> str:
    m = machine()
    s = data["settings"]
    lines = [
        f"## {m['date']} — commit {m['commit']}{' (src modified)' if m['dirty'] == 'yes' else ''}"
        f" — {data['only'] + ' stage only' if data.get('only') else ('quick' if s.quick else 'full') + ' run'}"
        f"{' (STOPPED EARLY, see findings)' if data.get('failed') else ''}",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, Python {m['python']}. "
        f"Peers: {m['peers']}.",
        f"Command: {'' if data.get('only') else '`make bench` / '}`.venv/bin/python {data['command']}` "
        f"(elapsed {data.get('elapsed_s', 0) / 60:.1f} min).",
    ]
    world = data.get("world")
    if world:
        lines.append(
            f"World: NSD with {world['zones']} zones ({world['names']:,} synthetic names, "
            f"{world['pairs']:,} resolvable name/type pairs); blocklist of {world['blocked_entries']:,} "
            f"entries (vendor lists + synthetic); {world['blocked_queries']:,} blocked queries."
        )
        lines.append(
            "dnsperf: `taskset -c 0 dnsperf -s 127.0.0.1 -p PORT -d mix-X.txt -c 10 -q 100 -T 1 -t 2 "
            f"-l {_f(s.seconds, 0)}`; "
            f"servers under `taskset -c 1`; warm-up `-n {s.warm_passes} -Q 40000` over mix b; "
            f"{s.rounds} round(s), servers in rotated order; "
            f"latency `-Q 2000 -l {_f(s.latency_seconds, 0)} -v` on mix c."
        )
    lines.append("")

    tp = data.get("throughput")
    if tp:
        lines += [
            "### Saturation, one core each",
            "",
            "| Server | (a) blocked QPS | µs/q | (b) cached QPS | µs/q | (c) 90/10 QPS | µs/q | lost "
            "| upstream q | other cores a / b / c | samples a / b / c |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for name, mixes in tp.items():
            row = [name]
            for mix in ("a", "b", "c"):
                e = mixes[mix]
                row += [_f(e["qps"], 0) + ("*" if e["starred"] else ""), _f(e["us_q"])]
            row.append(_f(sum(e["lost"] for e in mixes.values())))
            row.append(_f(sum(e["upstream"] for e in mixes.values())))
            row.append(" / ".join(f"{mixes[mix]['other']:.2f}" for mix in ("a", "b", "c")))
            row.append(" / ".join(",".join(str(x) for x in mixes[mix]["samples"]) for mix in ("a", "b", "c")))
            lines.append("| " + " | ".join(row) + " |")
        lines += [
            "",
            "`*` = a contended run (other jobs used > 0.25 core) is in the median. "
            "upstream q = queries NSD answered during the measured runs (0 when every answer came from "
            "the cache or the blocklist).",
            "",
        ]
        rcodes = {name: {mix: mixes[mix]["rcodes"] for mix in mixes} for name, mixes in tp.items()}
        lines.append(
            "Response codes: "
            + "; ".join(
                f"{name} "
                + ", ".join(
                    f"{mix}: " + " ".join(f"{k} {v:,}" for k, v in sorted(codes.items()))
                    for mix, codes in mixes.items()
                )
                for name, mixes in rcodes.items()
            )
        )
        lines.append("")

    ratios = data.get("ratios") or {}
    if any(ratios.values()):
        lines += [
            "### Ratios netblock / peer (median of per-round ratios)",
            "",
            "| Peer | (a) blocked | (b) cached | (c) 90/10 | CPU µs/q c, peer ÷ netblock |",
            "|---|---:|---:|---:|---:|",
        ]
        for peer, r in ratios.items():
            if not r:
                continue
            eff = "-"
            if tp and peer in tp and "netblock" in tp:
                eff = _f(tp[peer]["c"]["us_q"] / tp["netblock"]["c"]["us_q"], 2)
            lines.append(
                f"| {peer} | {_f(r.get('a'), 2)} | {_f(r.get('b'), 2)} | {_f(r.get('c'), 2)} | {eff} |"
            )
        lines.append("")
        for label, issue, peer, floor in TARGETS:
            r = ratios.get(peer) or {}
            if len(r) == 3:
                ok = all(v >= floor for v in r.values())
                lines.append(
                    f"- {issue}: {label}: **{'met' if ok else 'NOT met'}** "
                    f"({', '.join(f'{k} {v:.2f}' for k, v in r.items())})"
                )
        lines.append("")

    lat = data.get("latency")
    if lat:
        lines += [
            "### Latency at 2,000 q/s, mix c (median of rounds)",
            "",
            "| Server | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | CPU µs/q | lost | SERVFAIL |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, v in lat.items():
            lines.append(
                f"| {name} | {_f(v['p50'], 3)} | {_f(v['p90'], 3)} | {_f(v['p99'], 3)} | "
                f"{_f(v['p99.9'], 3)} | {_f(v['max'], 2)} | {_f(v['us_q'])} | {v['lost']} | {v['servfail']} |"
            )
        if "netblock" in lat and "unbound" in lat and lat["unbound"]["p99"]:
            ratio = lat["netblock"]["p99"] / lat["unbound"]["p99"]
            lines.append("")
            lines.append(
                f"- issue 7: p99 <= 1.5 x unbound's: **{'met' if ratio <= 1.5 else 'NOT met'}** "
                f"({ratio:.2f} x)"
            )
        lines.append("")

    mem = data.get("memory")
    if mem:
        lines += [
            "### Memory and start-up",
            "",
            "| Server | ready after s | RSS idle MiB | RSS after runs MiB | warm-up upstream queries |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, v in mem.items():
            lines.append(
                f"| {name} | {_f(v.get('start_s'), 2)} | {_f(v.get('idle'))} | {_f(v.get('after'))} | "
                f"{_f(v.get('warm_upstream'))} |"
            )
        lines.append("")

    sc = data.get("scale")
    if sc:
        lines += [
            "### List scale (in-process: netblock.policy load_list + compile_policy, "
            "a fresh interpreter per size and round, medians of the rounds)",
            "",
            "| Names | load s (parse + compile) | RSS added MiB | lookup miss ns (5 labels) "
            "| lookup hit ns |",
            "|---:|---:|---:|---:|---:|",
        ]
        for v in sc:
            if "error" in v:
                lines.append(f"| {v['size']:,} | error: {v['error']} | | | |")
                continue
            lines.append(
                f"| {v['size']:,} | {_f(v['load_s'], 2)} ({_f(v['parse_s'], 2)} + {_f(v['compile_s'], 2)}) | "
                f"{_f(v['rss_added_mib'])} | {_f(v['miss_ns'], 0)} | {_f(v['hit_ns'], 0)} |"
            )
        big = [v for v in sc if v.get("size") == 1_000_000 and "error" not in v]
        small = [v for v in sc if v.get("size") == 1_000 and "error" not in v]
        if big and small:
            b, sm = big[0], small[0]
            lines += [
                "",
                f"- issue 7: 1M names load <= 3 s: **{'met' if b['load_s'] <= 3 else 'NOT met'}** "
                f"({b['load_s']:.1f} s); "
                f"<= 100 MB added: **{'met' if b['rss_added_mib'] * 1.048576 <= 100 else 'NOT met'}** "
                f"({b['rss_added_mib']:.0f} MiB); lookup within 10% of 1k: "
                f"**{'met' if max(b['miss_ns'] / sm['miss_ns'], b['hit_ns'] / sm['hit_ns']) <= 1.1 else 'NOT met'}** "
                f"(miss {b['miss_ns']:.0f} vs {sm['miss_ns']:.0f} ns, "
                f"hit {b['hit_ns']:.0f} vs {sm['hit_ns']:.0f} ns)",
            ]
        lines.append("")

    ins = data.get("inspector")
    if ins:
        lines += _inspector(ins.get("offline") or {}, ins.get("live") or {})

    rl = data.get("reload")
    if rl:
        lines += [
            f"### Reload of a {rl['size']:,}-name policy under 2,000 q/s (mix c, SIGHUP)",
            "",
            f"Start-up with it: {_f(rl['start_s'], 1)} s, RSS {_f(rl['rss_loaded'])} MiB, peak during reload "
            f"{_f(rl['peak_rss'])} MiB. Reload visible after {_f(rl['reload_s'], 1)} s. "
            f"dnsperf {rl['duration']:.0f} s: sent {rl['sent']:,}, completed {rl['completed']:,}, "
            f"lost {rl['lost']:,}; "
            f"worst latency {_f(rl['max_ms'], 1)} ms, p99.9 {_f(rl['p99.9'], 2)} ms, "
            f"{rl['over_50ms']:,} answers slower than 50 ms; rcodes {rl['rcodes']}.",
            "",
            f"- issue 7: no query slower than 50 ms during the reload: "
            f"**{'met' if rl['over_50ms'] == 0 and rl['lost'] == 0 else 'NOT met'}**",
            "",
        ]

    sk = data.get("soak")
    if sk:
        lines += [
            f"### Soak: {sk['seconds']:.0f} s at 1,000 q/s, 40% blocked",
            "",
            f"Sent {sk['sent']:,}, completed {sk['completed']:,}, lost {sk['lost']:,}; "
            f"rcodes {sk['rcodes']}. "
            f"Blocked answers {sk['blocked_answers']:,}; events stored during the soak: {sk['events']}.",
            "RSS / open fds: "
            + ", ".join(f"{t:.0f} s: {rss:.1f} MiB / {fds} fds" for t, rss, fds in sk["samples"]),
            "",
        ]
        if sk.get("metrics_events"):
            lines += ["```", *sk["metrics_events"], "```", ""]

    nbm = data.get("netblock_metrics")
    if nbm:
        keep = [
            line
            for line in nbm
            if any(k in line for k in ("dropped", "error", "servfail", "lost", "events", "upstream"))
            and "_bucket" not in line
        ]
        if keep:
            lines += ["netblock metrics after the runs (selection):", "", "```", *keep[:40], "```", ""]
    if data.get("netblock_events"):
        blocked = (data.get("answered") or {}).get("netblock", {}).get("NXDOMAIN", 0)
        lines.append(f"netblock events stored after the runs: {data['netblock_events']}; NXDOMAIN answers "
                     f"dnsperf counted in all measured runs (repeats included, warm-up and probes not): "
                     f"{blocked:,}")
        lines.append("")

    findings = data.get("findings") or []
    if findings:
        lines += ["### Findings", ""]
        for f in findings:
            lines.append("- " + f.replace("\n", "\n  "))
        lines.append("")
    return "\n".join(lines) + "\n"


def _inspector(off: dict[str, Any], live: dict[str, Any]) -> list[str]:
    rows = []
    if "pps" in off:
        rows.append(
            f"| offline: pcap replay of `nbi_gen.mixed_frames({off['frames']:,})` (gateway mix), "
            f"`taskset -c 1`, events off | {_f(off['pps'], 0)} packets/s (best of {len(off['samples'])}) | "
            f"{_f(off['cpu_us'])} | samples {', '.join(f'{x:,}' for x in off['samples'])}; "
            f"{off['packets']:,} of {off['frames']:,} inspected; by stage {off['by_stage']}; "
            f"box busy {off['busy_before']:.2f} cores before |"
        )
    if live.get("measured"):
        rows.append(
            f"| live: `nbi_flood.py` ClientHello frames from the client namespace (`taskset -c 0`), "
            f"`netblock inspect --interface` on the router (`taskset -c 1`), events on, "
            f"{_f(live['seconds'], 0)} s | {_f(live['offered'], 0)} hellos/s offered | {_f(live['cpu_us'])} | "
            f"sent {live['sent']:,}, inspected {live['packets']:,}, kernel drops {live['kernel_drops']:,}; "
            f"sni {live['sni']:,} (expected {live['sni_expected']:,}); "
            f"box busy {live['busy_before']:.2f} cores before |"
        )
    lines = ["### Packet inspector (bench/inspector.py; helpers from tests/inspect/)", ""]
    if rows:
        lines += ["| Run | Rate | CPU µs/packet | Detail |", "|---|---:|---:|---|", *rows, ""]
    if "pps" in off:
        offline_state = f"**{'met' if off['met'] else 'NOT met'}** ({_f(off['pps'], 0)} packets/s)"
    else:
        offline_state = f"**error** ({off.get('error', 'not run')})"
    if live.get("measured"):
        live_state = (
            f"**{'met' if live['met'] else 'NOT met'}** (offered {_f(live['offered'], 0)}/s, "
            f"inspected {live['packets']:,} of {live['sent']:,}, kernel drops {live['kernel_drops']:,})"
        )
    elif "error" in live:
        live_state = f"**error** ({live['error']})"
    else:
        live_state = f"**not measured** ({live.get('reason', 'not run')})"
    lines += [
        f"- issue 6: offline >= {off.get('target', 40_000):,} packets/s on a mixed capture: {offline_state}",
        f"- issue 6: live capture of {live.get('rate', 20_000):,} ClientHellos/s without drops "
        f"(>= 90% offered, every hello inspected, 0 kernel drops): {live_state}",
        "",
    ]
    return lines


def append(path: Path, text: str) -> None:
    header = (
        "# Benchmark results\n\nEach section is one `make bench` run (bench/run.py), appended by the "
        "bench itself. Method: ../shared/reference/performance.md; notes at the top, runs below.\n\n"
    )
    if not path.exists():
        path.write_text(header)
    with path.open("a") as out:
        out.write("\n" + text)
