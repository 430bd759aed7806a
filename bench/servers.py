"""The servers of the bench: the NSD upstream, the peers (dnsmasq, unbound) and netblock.

Each one renders its own config from the world, starts through `Procs` (pinned to the
server core) and is ready when it answers a known name on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
from procs import Proc, Procs, free_port
from world import REPO, World

VENV_PYTHON = REPO / ".venv" / "bin" / "python"


@dataclass
class Server:
    name: str
    port: int
    proc: Proc | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def ask(port: int, name: str, rdtype: str = "A", timeout: float = 1.0) -> dns.message.Message | None:
    query = dns.message.make_query(name, rdtype)
    try:
        return dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)
    except (dns.exception.Timeout, OSError):
        return None


class PortTaken(RuntimeError):
    """Another process bound the port between free_port() and the server's bind: retry."""


def with_port_retry(start: Callable[[], Server], tries: int = 3) -> Server:
    # free_port() cannot reserve a port: on a box shared with other test suites one is
    # sometimes taken before the server binds it; a new pick fixes that.
    for attempt in range(tries):
        try:
            return start()
        except PortTaken:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def wait_ready(server: Server, probe: str, deadline_s: float) -> float:
    """Seconds until the server answered `probe` with a real rcode; raises on death or timeout."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        assert server.proc is not None
        if not server.proc.alive():
            server.proc.popen.wait()
            tail = server.proc.log_tail()
            kind = PortTaken if "in use" in tail else RuntimeError
            raise kind(f"{server.name} exited during start-up:\n{tail}")
        reply = ask(server.port, probe, timeout=0.5)
        if reply is not None and reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return time.monotonic() - start
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} not answering after {deadline_s:.0f} s:\n"
        f"{server.proc.log_tail() if server.proc else ''}"
    )


# ---- NSD: the authoritative upstream ----------------------------------------------------


def _start_nsd(procs: Procs, world: World, probe: str, cpu: int | None = None) -> Server:
    root = procs.workdir / "nsd"
    zones = root / "zones"
    zones.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = [
        "server:",
        f"  ip-address: 127.0.0.1@{port}",
        f"  port: {port}",
        "  server-count: 1",
        '  username: ""',
        '  chroot: ""',
        f'  zonesdir: "{zones}"',
        f'  zonelistfile: "{root}/zone.list"',
        f'  xfrdfile: "{root}/xfrd.state"',
        f'  pidfile: "{root}/nsd.pid"',
        f'  logfile: "{root}/nsd.log"',
        '  database: ""',
        "  verbosity: 0",
        "  do-ip6: no",
        "  refuse-any: no",
        "remote-control:",
        "  control-enable: yes",
        f'  control-interface: "{root}/nsd.ctl"',
    ]
    for origin, text in sorted(world.zones.items()):
        (zones / f"{origin}.zone").write_text(text)
        conf += ["zone:", f"  name: {origin}", f'  zonefile: "{origin}.zone"']
    conf_path = root / "nsd.conf"
    conf_path.write_text("\n".join(conf) + "\n")
    check = subprocess.run(["nsd-checkconf", str(conf_path)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nsd-checkconf: {check.stderr or check.stdout}")
    server = Server("nsd", port, extra={"conf": conf_path})
    server.proc = procs.start("nsd", ["nsd", "-d", "-c", str(conf_path)], cpu=cpu)
    wait_ready(server, probe, 60)
    return server


def nsd_queries(nsd: Server) -> int:
    """Queries NSD answered so far (nsd-control stats_noreset: num.queries)."""
    out = subprocess.run(
        ["nsd-control", "-c", str(nsd.extra["conf"]), "stats_noreset"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    for line in out.stdout.splitlines():
        if line.startswith("num.queries="):
            return int(line.split("=", 1)[1])
    return -1


# ---- peers ---------------------------------------------------------------------------------


def _start_dnsmasq(procs: Procs, world: World, upstream: Server, probe: str, cpu: int) -> Server:
    from world import dnsmasq_allow_lines

    port = free_port()
    root = procs.workdir / "dnsmasq"
    root.mkdir(exist_ok=True)
    conf = [
        f"port={port}",
        "listen-address=127.0.0.1",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        "no-poll",
        f"server=127.0.0.1#{upstream.port}",
        *dnsmasq_allow_lines(world, upstream.address),
        "cache-size=100000",
        "dns-forward-max=1000",
        f"pid-file={root}/dnsmasq.pid",
        f"conf-file={world.dnsmasq_conf}",
    ]
    conf_path = root / "dnsmasq.conf"
    conf_path.write_text("\n".join(conf) + "\n")
    server = Server("dnsmasq", port, extra={"conf": conf_path})
    server.proc = procs.start("dnsmasq", ["dnsmasq", "-k", f"--conf-file={conf_path}"], cpu=cpu)
    server.extra["ready_s"] = wait_ready(server, probe, 120)
    return server


def _start_unbound(procs: Procs, world: World, upstream: Server, probe: str, cpu: int) -> Server:
    port = free_port()
    root = procs.workdir / "unbound"
    root.mkdir(exist_ok=True)
    conf = [
        "server:",
        f"  interface: 127.0.0.1@{port}",
        f"  port: {port}",
        "  num-threads: 1",
        "  do-ip6: no",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{root}"',
        f'  pidfile: "{root}/unbound.pid"',
        f'  logfile: "{root}/unbound.log"',
        "  use-syslog: no",
        "  verbosity: 0",
        "  access-control: 127.0.0.0/8 allow",
        '  module-config: "iterator"',
        "  do-not-query-localhost: no",
        "  qname-minimisation: no",
        "  msg-cache-size: 64m",
        "  rrset-cache-size: 128m",
        "  outgoing-range: 1024",
        "  num-queries-per-thread: 1024",
        "  so-reuseport: no",
        "  minimal-responses: yes",
        f'  include: "{world.unbound_conf}"',
        "forward-zone:",
        '  name: "."',
        f"  forward-addr: 127.0.0.1@{upstream.port}",
        "remote-control:",
        "  control-enable: no",
    ]
    conf_path = root / "unbound.conf"
    conf_path.write_text("\n".join(conf) + "\n")
    server = Server("unbound", port, extra={"conf": conf_path})
    server.proc = procs.start("unbound", ["unbound", "-d", "-c", str(conf_path)], cpu=cpu)
    server.extra["ready_s"] = wait_ready(server, probe, 180)
    return server


# ---- netblock ----------------------------------------------------------------------------


def netblock_config(
    root: Path,
    port: int,
    upstream: str,
    lists: list[Path],
    metrics_port: int,
    overrides: dict[str, dict[str, object]] | None = None,
) -> Path:
    """A netblock config with every feature on: events to SQLite + JSONL, metrics, device
    identity (defaults), policy watch; only the rate limit is lifted for the load generator."""
    import yaml

    config: dict[str, dict[str, object]] = {
        "server": {"listen": [f"127.0.0.1:{port}"]},
        "upstreams": {"servers": [upstream]},
        "policy": {"lists": [str(p) for p in lists]},
        "events": {"sqlite": str(root / "events.db"), "jsonl": str(root / "events.jsonl")},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "logging": {"level": "warning"},
        "access": {"rate_limit": {"queries": 100_000_000, "per_seconds": 1}},
    }
    for section, values in (overrides or {}).items():
        config.setdefault(section, {}).update(values)
    path = root / "netblock.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _start_netblock(
    procs: Procs,
    world: World,
    upstream: Server,
    probe: str,
    cpu: int,
    lists: list[Path] | None = None,
    name: str = "netblock",
    ready_s: float = 300,
    overrides: dict[str, dict[str, object]] | None = None,
) -> Server:
    port = free_port()
    metrics_port = free_port()
    root = procs.workdir / name
    root.mkdir(exist_ok=True)
    conf_path = netblock_config(
        root, port, upstream.address, lists or world.netblock_lists, metrics_port, overrides
    )
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    server = Server(name, port, extra={"conf": conf_path, "metrics_port": metrics_port, "root": root})
    module = ["-m", "netblock"]
    if name.endswith("-switch"):  # the same server under a 0.5 ms GIL switch interval
        module = [str(Path(__file__).resolve().parent / "netblock_switch.py")]
    server.proc = procs.start(name, [python, *module, "serve", "-c", str(conf_path)], cpu=cpu)
    server.extra["ready_s"] = wait_ready(server, probe, ready_s)
    return server


def metrics_text(server: Server, timeout: float = 5.0) -> str:
    import urllib.request

    port = server.extra.get("metrics_port")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
            return str(reply.read().decode())
    except OSError as exc:
        return f"# metrics unavailable: {exc}"


def start_nsd(*args: Any, **kwargs: Any) -> Server:
    return with_port_retry(lambda: _start_nsd(*args, **kwargs))


def start_dnsmasq(*args: Any, **kwargs: Any) -> Server:
    return with_port_retry(lambda: _start_dnsmasq(*args, **kwargs))


def start_unbound(*args: Any, **kwargs: Any) -> Server:
    return with_port_retry(lambda: _start_unbound(*args, **kwargs))


def start_netblock(*args: Any, **kwargs: Any) -> Server:
    return with_port_retry(lambda: _start_netblock(*args, **kwargs))
