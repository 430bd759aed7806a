"""Real parts for the integration tests: an NSD upstream and the netblock server, on loopback.

Every process started here is stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import yaml

REPO = Path(__file__).resolve().parent.parent
BLOCKLISTS = REPO / "blocklists"

TEST_ZONE_ORIGIN = "example.test"
# A synthetic world: plain names, CNAME chains, a CNAME into a blocked vendor name, an
# address inside the test lists' blocked network, and an answer too big for UDP.
TEST_ZONE = """$ORIGIN example.test.
$TTL 3600
@        IN SOA ns1 hostmaster 1 3600 600 86400 300
@        IN NS  ns1
ns1      IN A   127.0.0.1
www      IN A   192.0.2.10
www      IN AAAA 2001:db8::10
mail     IN A   192.0.2.25
@        IN MX  10 mail
txt      IN TXT "netblock test zone"
short    30 IN A 192.0.2.30
chain1   IN CNAME chain2
chain2   IN CNAME chain3
chain3   IN CNAME www
cloak    IN CNAME weixin.qq.com.
cloak2   IN CNAME tracker.blocked.test.
inside   IN A   203.0.113.7
outside  IN A   198.51.100.7
""" + "".join(f"big      IN A   10.0.{i // 250}.{i % 250 + 1}\n" for i in range(120))

BLOCKED_TEST_ZONE = """$ORIGIN blocked.test.
$TTL 3600
@        IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 300
@        IN NS  ns1.example.test.
tracker  IN A   192.0.2.99
"""


# A stand-in for the vendor's zone, on loopback: what the upstream would answer if netblock
# let a query through. Carve-outs must reach it; blocked names must never.
VENDOR_TEST_ZONE = """$ORIGIN weixin.qq.com.
$TTL 3600
@        IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 300
@        IN NS  ns1.example.test.
@        IN A   192.0.2.200
work     IN A   192.0.2.80
long     IN A   192.0.2.81
"""


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port")


def terminate(proc: subprocess.Popen[Any], grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _answers(address: str, port: int, name: str = "example.test.", timeout: float = 0.5) -> bool:
    try:
        dns.query.udp(dns.message.make_query(name, "SOA"), address, port=port, timeout=timeout)
        return True
    except Exception:
        return False


class Nsd:
    """An authoritative NSD on 127.0.0.1 serving the given zones: the real upstream."""

    def __init__(self, workdir: Path, zones: dict[str, str] | None = None, port: int | None = None) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.zones = zones if zones is not None else {TEST_ZONE_ORIGIN: TEST_ZONE, "blocked.test": BLOCKED_TEST_ZONE,
                                               "weixin.qq.com": VENDOR_TEST_ZONE}
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.dir / "nsd.conf"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write(self) -> None:
        zone_blocks = []
        for origin, text in self.zones.items():
            (self.dir / f"{origin}.zone").write_text(text)
            zone_blocks.append(f"zone:\n  name: {origin}\n  zonefile: {origin}.zone\n")
        self.conf.write_text(f"""server:
  ip-address: 127.0.0.1@{self.port}
  username: ""
  chroot: ""
  zonesdir: {self.dir}
  database: ""
  pidfile: {self.dir}/nsd.pid
  xfrdfile: {self.dir}/xfrd.state
  zonelistfile: {self.dir}/zone.list
  logfile: {self.dir}/nsd.log
  server-count: 1
  verbosity: 1
  refuse-any: no
remote-control:
  control-enable: yes
  control-interface: {self.dir}/nsd.sock
""" + "".join(zone_blocks))

    def start(self) -> Nsd:
        self._write()
        self.proc = subprocess.Popen(["nsd", "-d", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        first = next(iter(self.zones))
        if not wait_for(lambda: _answers("127.0.0.1", self.port, first + "."), 10):
            self.stop()
            raise RuntimeError(f"nsd did not start: {(self.dir / 'nsd.log').read_text(errors='replace')}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def queries(self) -> int:
        """How many queries NSD has answered so far."""
        out = subprocess.run(["nsd-control", "-c", str(self.conf), "stats_noreset"], capture_output=True,
                             text=True, timeout=10).stdout
        match = re.search(r"^num\.queries=(\d+)", out, re.M)
        return int(match.group(1)) if match else 0

    def __enter__(self) -> Nsd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class Netblock:
    """The real server as a subprocess, with a generated config in workdir."""

    def __init__(self, workdir: Path, upstreams: list[str], lists: list[str | Path] | None = None,
                 config: dict[str, Any] | None = None, port: int | None = None) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.config_path = self.dir / "netblock.yaml"
        self.stderr_path = self.dir / "netblock.stderr"
        settings: dict[str, Any] = {
            "server": {"listen": [f"127.0.0.1:{self.port}", f"[::1]:{self.port}"], "instance": "test"},
            "upstreams": {"servers": upstreams, "timeout": 2.0, "attempt_timeout": 1.0,
                          "health_interval": 30.0},
            "policy": {"lists": [str(p) for p in (lists or [BLOCKLISTS / "*.yaml"])], "watch_interval": 0.2},
            "events": {"sqlite": str(self.dir / "events.db"), "jsonl": str(self.dir / "events.jsonl"),
                       "flush_interval": 0.1},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "logging": {"level": "info"},
        }
        self.settings = _merge(settings, config or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.settings, sort_keys=False))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "netblock", "serve", "-c", str(self.config_path)]

    def start(self, timeout: float = 10.0, expect_fail: bool = False) -> Netblock:
        self.write_config()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=err, env=env,
                                         cwd=REPO)
        if expect_fail:
            return self
        if not wait_for(lambda: self.proc.poll() is not None or _answers("127.0.0.1", self.port,
                                                                          "netblock-probe.invalid."), timeout):
            log = self.log()
            self.stop()
            raise RuntimeError(f"netblock did not answer within {timeout}s:\n{log}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"netblock exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = terminate(self.proc, grace=10.0)  # the event writer drains for up to 5 s
        self.proc = None
        return code

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def query(self, name: str, rdtype: str | int = "A", tcp: bool = False, timeout: float = 3.0,
              source: str | None = None, **make_kwargs: Any) -> dns.message.Message:
        make_kwargs.setdefault("use_edns", 0)
        message = dns.message.make_query(name, rdtype, **make_kwargs)
        if tcp:
            return dns.query.tcp(message, "127.0.0.1", port=self.port, timeout=timeout, source=source)
        return dns.query.udp(message, "127.0.0.1", port=self.port, timeout=timeout, source=source,
                             ignore_trailing=True)

    def dig(self, *args: str) -> str:
        return subprocess.run(["dig", "@127.0.0.1", "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=20).stdout

    def __enter__(self) -> Netblock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
