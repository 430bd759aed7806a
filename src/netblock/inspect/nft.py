"""nftables: timeout sets of blocked flows (dynamic), and the static rules `--print-nft` shows.

Set elements are added by a worker thread through libnftables (Debian python3-nftables,
~0.3 ms, no fork) or the `nft` command (~4 ms) when the binding is missing. The capture
loop only appends to a queue.
"""

from __future__ import annotations

import collections
import importlib.util
import ipaddress
import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("netblock.inspect")

TABLE = "netblock_inspect"
STATIC_TABLE = "netblock_static"
SYSTEM_BINDING = "/usr/lib/python3/dist-packages/nftables/__init__.py"


def _binding() -> Any | None:
    """libnftables through python3-nftables; a venv does not see Debian's dist-packages."""
    try:
        import nftables

        return nftables.Nftables()
    except ImportError:
        pass
    except Exception as exc:  # the binding loads libnftables.so and may fail there
        log.warning("python nftables binding unusable: %s", exc)
        return None
    try:
        spec = importlib.util.spec_from_file_location(
            "nftables", SYSTEM_BINDING, submodule_search_locations=[SYSTEM_BINDING.rsplit("/", 1)[0]]
        )
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault("nftables", module)
        spec.loader.exec_module(module)
        return module.Nftables()
    except Exception:  # missing or broken: fall back to the nft command
        return None


class Nft:
    """Runs nft script text, in process when possible."""

    def __init__(self, prefer_library: bool = True) -> None:
        self.library = _binding() if prefer_library else None
        self.command = shutil.which("nft")
        if self.library is None and self.command is None:
            raise RuntimeError("nftables enforcement needs python3-nftables or the nft command")

    @property
    def backend(self) -> str:
        return "libnftables" if self.library is not None else "nft"

    def run(self, script: str) -> tuple[bool, str]:
        if self.library is not None:
            rc, _out, err = self.library.cmd(script)
            return rc == 0, err
        assert self.command is not None
        done = subprocess.run(
            [self.command, "-f", "-"], input=script, capture_output=True, text=True, timeout=10, check=False
        )
        return done.returncode == 0, done.stderr


def dynamic_ruleset(timeout: int) -> str:
    """Sets of (client, server) pairs, (client, server, protocol, port) services, and single
    connections (client, protocol, client port, server, server port).

    A connection entry rejects both directions with a TCP reset made by the kernel from the
    packet it answers, so its sequence numbers are always right: whichever end speaks next
    is reset, and nothing else on the shared server address is touched."""
    lines = [f"table inet {TABLE} {{"]
    for fam, addr in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
        lines.append(f"  set pair{fam} {{ type {addr} . {addr}; flags timeout; timeout {timeout}s; }}")
        lines.append(
            f"  set flow{fam} {{ type {addr} . {addr} . inet_proto . inet_service; flags timeout; "
            f"timeout {timeout}s; }}"
        )
        lines.append(
            f"  set conn{fam} {{ type {addr} . inet_proto . inet_service . {addr} . inet_service; "
            f"flags timeout; timeout {timeout}s; }}"
        )
    lines.append("  chain forward {")
    lines.append("    type filter hook forward priority -10; policy accept;")
    for fam, ip in (("4", "ip"), ("6", "ip6")):
        forward = f"{ip} saddr . meta l4proto . th sport . {ip} daddr . th dport @conn{fam}"
        backward = f"{ip} daddr . meta l4proto . th dport . {ip} saddr . th sport @conn{fam}"
        lines += [
            f"    {forward} meta l4proto tcp reject with tcp reset",
            f"    {backward} meta l4proto tcp reject with tcp reset",
            f"    {forward} drop",
            f"    {backward} drop",
            f"    {ip} saddr . {ip} daddr @pair{fam} meta l4proto tcp reject with tcp reset",
            f"    {ip} saddr . {ip} daddr @pair{fam} drop",
            f"    {ip} daddr . {ip} saddr @pair{fam} drop",
            f"    {ip} saddr . {ip} daddr . meta l4proto . th dport @flow{fam} meta l4proto tcp reject with tcp reset",
            f"    {ip} saddr . {ip} daddr . meta l4proto . th dport @flow{fam} drop",
            f"    {ip} daddr . {ip} saddr . meta l4proto . th sport @flow{fam} drop",
        ]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


class NftSets:
    """Owns the dynamic table; `block_pair`/`block_flow` queue an element for the worker."""

    def __init__(self, nft: Nft, timeout: int = 300) -> None:
        self.nft = nft
        self.timeout = timeout
        self.queue: collections.deque[str] = collections.deque(maxlen=10_000)
        self.added = 0
        self.errors = 0
        self.last_error = ""
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="inspect-nft", daemon=True)

    def install(self) -> None:
        ok, err = self.nft.run(f"add table inet {TABLE}\ndelete table inet {TABLE}\n" + dynamic_ruleset(self.timeout))
        if not ok:
            raise RuntimeError(f"nft: cannot install table inet {TABLE}: {err.strip()}")
        self._thread.start()

    def remove(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.nft.run(f"delete table inet {TABLE}\n")

    def block_pair(self, client: bytes, server: bytes, timeout: int | None = None) -> None:
        fam = "4" if len(client) == 4 else "6"
        self._queue(f"pair{fam}", f"{_ip(client)} . {_ip(server)}", timeout)

    def block_flow(self, client: bytes, server: bytes, protocol: str, port: int, timeout: int | None = None) -> None:
        fam = "4" if len(client) == 4 else "6"
        self._queue(f"flow{fam}", f"{_ip(client)} . {_ip(server)} . {protocol} . {port}", timeout)

    def block_connection(
        self,
        client: bytes,
        protocol: str,
        client_port: int,
        server: bytes,
        server_port: int,
        timeout: int | None = None,
    ) -> None:
        fam = "4" if len(client) == 4 else "6"
        element = f"{_ip(client)} . {protocol} . {client_port} . {_ip(server)} . {server_port}"
        self._queue(f"conn{fam}", element, timeout or min(self.timeout, 120))

    def _queue(self, set_name: str, element: str, timeout: int | None) -> None:
        self.queue.append(f"add element inet {TABLE} {set_name} {{ {element} timeout {timeout or self.timeout}s }}")
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            lines = []
            while self.queue:
                lines.append(self.queue.popleft())
            if lines:
                ok, err = self.nft.run("\n".join(lines) + "\n")
                if ok:
                    self.added += len(lines)
                else:
                    self.errors += 1
                    self.last_error = err.strip()
                    log.warning("nft: %s", self.last_error)
            if self._stop and not self.queue:
                return


def _ip(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def static_ruleset(resolvers: Iterable[str], doh_networks: Iterable[str], blocked_networks: Iterable[str]) -> str:
    """Rules that need no packet inspection: DNS only to netblock, no DoT/DoQ, no DoH
    resolvers, nothing to blocked ranges. For a gateway's forward path."""

    def split(items: Iterable[str]) -> tuple[list[str], list[str]]:
        nets = [ipaddress.ip_network(i, strict=False) for i in items]
        return ([str(n) for n in nets if n.version == 4], [str(n) for n in nets if n.version == 6])

    res4, res6 = split(resolvers)
    doh4, doh6 = split(doh_networks)
    blk4, blk6 = split(blocked_networks)
    out = ["# netblock inspect --print-nft: load with `nft -f FILE`", f"table inet {STATIC_TABLE} {{"]

    def add_set(name: str, kind: str, elements: list[str]) -> None:
        body = f"  set {name} {{ type {kind}; flags interval;"
        if elements:
            body += " elements = { " + ", ".join(elements) + " };"
        out.append(body + " }")

    add_set("resolvers4", "ipv4_addr", res4)
    add_set("resolvers6", "ipv6_addr", res6)
    add_set("doh4", "ipv4_addr", doh4)
    add_set("doh6", "ipv6_addr", doh6)
    add_set("blocked4", "ipv4_addr", blk4)
    add_set("blocked6", "ipv6_addr", blk6)
    out += ["  chain forward {", "    type filter hook forward priority -5; policy accept;"]
    if res4 or res6:
        out += [
            "    # DNS goes to netblock only (Kaspersky falls back to public resolvers)",
            "    meta nfproto ipv4 meta l4proto { tcp, udp } th dport 53 ip daddr != @resolvers4 "
            "counter reject with icmpx admin-prohibited",
            "    meta nfproto ipv6 meta l4proto { tcp, udp } th dport 53 ip6 daddr != @resolvers6 "
            "counter reject with icmpx admin-prohibited",
        ]
    else:
        out.append("    # inspector.resolvers is empty: no rule for port 53")
    out += [
        "    # DNS over TLS and DNS over QUIC",
        "    tcp dport 853 counter reject with tcp reset",
        "    udp dport 853 counter reject with icmpx admin-prohibited",
        "    # known DoH resolvers (blocklists/doh-resolvers.yaml)",
        "    ip daddr @doh4 tcp dport 443 counter reject with tcp reset",
        "    ip6 daddr @doh6 tcp dport 443 counter reject with tcp reset",
        "    ip daddr @doh4 udp dport 443 counter drop",
        "    ip6 daddr @doh6 udp dport 443 counter drop",
        "    # blocked vendor networks",
        "    ip daddr @blocked4 meta l4proto tcp counter reject with tcp reset",
        "    ip6 daddr @blocked6 meta l4proto tcp counter reject with tcp reset",
        "    ip daddr @blocked4 counter drop",
        "    ip6 daddr @blocked6 counter drop",
        "  }",
        "}",
    ]
    return "\n".join(out) + "\n"
