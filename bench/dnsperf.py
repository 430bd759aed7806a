"""Running dnsperf pinned to the load-generator core and reading its figures."""

from __future__ import annotations

import math
import os
import re
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import CLK_TCK, cpu_ticks


@dataclass
class Result:
    argv: list[str]
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    runtime: float = 0.0
    avg_latency_ms: float = 0.0
    max_latency_ms: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # with -v only
    server_cpu_s: float = 0.0
    dnsperf_cpu_s: float = 0.0
    wall_s: float = 0.0
    other_cores: float = 0.0  # CPU used by everything else on the box during the run
    text: str = ""

    @property
    def us_per_query(self) -> float:
        return self.server_cpu_s * 1e6 / self.completed if self.completed else float("nan")

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))  # nearest rank
        return ordered[index]


_NUM = r"([0-9.]+)"


def parse(text: str, result: Result) -> Result:
    def grab(pattern: str) -> str | None:
        m = re.search(pattern, text)
        return m.group(1) if m else None

    result.sent = int(grab(r"Queries sent:\s+(\d+)") or 0)
    result.completed = int(grab(r"Queries completed:\s+(\d+)") or 0)
    result.lost = int(grab(r"Queries lost:\s+(\d+)") or 0)
    result.qps = float(grab(r"Queries per second:\s+" + _NUM) or 0)
    result.runtime = float(grab(r"Run time \(s\):\s+" + _NUM) or 0)
    result.avg_latency_ms = float(grab(r"Average Latency \(s\):\s+" + _NUM) or 0) * 1000
    result.max_latency_ms = float(grab(r"max " + _NUM + r"\)") or 0) * 1000
    codes = grab(r"Response codes:\s+(.*)")
    if codes:
        for code, count in re.findall(r"([A-Z]+) (\d+)", codes):
            result.rcodes[code] = int(count)
    for line in text.splitlines():
        if line.startswith("> "):
            parts = line.split()
            try:
                result.latencies_ms.append(float(parts[-1]) * 1000)
            except (ValueError, IndexError):
                pass
    return result


def run(
    port: int,
    query_file: Path,
    *,
    seconds: float | None = None,
    passes: int | None = None,
    qps: int | None = None,
    clients: int = 10,
    outstanding: int = 100,
    verbose: bool = False,
    cpu: int | None = 0,
    server_pid: int | None = None,
    timeout_s: float = 2.0,
    watch_pids: tuple[int, ...] = (),
) -> Result:
    """One dnsperf run; CPU of the server (and of everything else) is measured around it."""
    argv = [
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        str(port),
        "-d",
        str(query_file),
        "-c",
        str(clients),
        "-q",
        str(outstanding),
        "-T",
        "1",
        "-t",
        str(timeout_s),
    ]
    if seconds is not None:
        argv += ["-l", str(seconds)]
    if passes is not None:
        argv += ["-n", str(passes)]
    if qps is not None:
        argv += ["-Q", str(qps)]
    if verbose:
        argv.append("-v")
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    result = Result(argv=argv)
    bound = (seconds or 0) + (passes or 0) * 60 + 60  # hard bound on the whole run
    out_path = Path(f"/tmp/bench-dnsperf-{os.getpid()}.out")
    server0 = cpu_ticks(server_pid) if server_pid else 0
    watched0 = sum(cpu_ticks(p) for p in watch_pids)
    from procs import system_busy_ticks

    busy0, _ = system_busy_ticks()
    start = time.monotonic()
    with out_path.open("w") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        usage = _wait(popen, bound)
    finally:
        if popen.returncode is None:
            popen.kill()
            popen.wait(timeout=10)
    result.wall_s = time.monotonic() - start
    busy1, _ = system_busy_ticks()
    server1 = cpu_ticks(server_pid) if server_pid else 0
    watched1 = sum(cpu_ticks(p) for p in watch_pids)
    result.server_cpu_s = (server1 - server0) / CLK_TCK
    result.dnsperf_cpu_s = usage.ru_utime + usage.ru_stime if usage else 0.0
    other = (
        (busy1 - busy0) / CLK_TCK
        - result.server_cpu_s
        - result.dnsperf_cpu_s
        - (watched1 - watched0) / CLK_TCK
    )
    result.other_cores = max(0.0, other / result.wall_s) if result.wall_s else 0.0
    result.text = out_path.read_text(errors="replace")
    out_path.unlink(missing_ok=True)
    if popen.returncode not in (0, None):
        raise RuntimeError(f"dnsperf failed ({popen.returncode}): {' '.join(argv)}\n{result.text[-2000:]}")
    return parse(result.text, result)


def _wait(popen: subprocess.Popen[bytes], bound: float) -> resource.struct_rusage | None:
    """wait4() the child so its own CPU time is known; killed past `bound` seconds."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
        if pid == popen.pid:
            popen.returncode = os.waitstatus_to_exitcode(status)
            return usage
        time.sleep(0.05)
    popen.kill()
    _, status, usage = os.wait4(popen.pid, 0)
    popen.returncode = os.waitstatus_to_exitcode(status)
    raise RuntimeError(f"dnsperf still running after {bound:.0f} s: killed")
