"""Access control: a client outside the allowed ranges, in a network namespace of its own
joined to the root namespace by a veth pair (198.18.0.0/15, the benchmark range), gets
REFUSED on UDP and TCP, or nothing with `action: drop`; configured ranges are served."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netblock.config import PRIVATE_NETWORKS, Access, RateLimit
from netblock.dns.admit import Admission
from test_reliability_tools import metric, scrape

from harness import Netblock, Nsd, free_port

ROOT = os.geteuid() == 0

CLIENT = """
import sys, dns.message, dns.query, dns.rcode
host, port = sys.argv[1], int(sys.argv[2])
for tcp in (False, True):
    q = dns.message.make_query("www.example.test", "A")
    try:
        r = (dns.query.tcp if tcp else dns.query.udp)(q, host, port=port, timeout=1.5)
        print(dns.rcode.to_text(r.rcode()))
    except Exception as exc:
        print("no-answer", type(exc).__name__)
import socket
for bad in (bytes.fromhex("12347900000100000000000000000100 01".replace(" ", "")),  # opcode 15
            bytes.fromhex("123401000000000000000000")):  # qdcount 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.sendto(bad, (host, port))
        try:
            print("answered", sock.recv(512)[3] & 15)
        except OSError as exc:
            print("no-answer", type(exc).__name__)
"""


class Namespace:
    """A network namespace with one veth link to the root namespace."""

    def __init__(self) -> None:
        tag = os.getpid() % 100_000
        self.name = f"nbacl{tag}"
        self.outer = f"nba{tag}"
        self.inner = f"nbb{tag}"
        third = tag % 250
        self.host_address = f"198.18.{third}.1"
        self.client_address = f"198.18.{third}.2"

    def _ip(self, *args: str, netns: bool = False) -> None:
        prefix = ["ip", "netns", "exec", self.name] if netns else []
        subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, timeout=10)

    def create(self) -> None:
        self.delete()
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        self._ip("link", "set", self.inner, "netns", self.name)
        self._ip("addr", "add", f"{self.host_address}/30", "dev", self.outer)
        self._ip("link", "set", self.outer, "up")
        self._ip("addr", "add", f"{self.client_address}/30", "dev", self.inner, netns=True)
        self._ip("link", "set", self.inner, "up", netns=True)
        self._ip("link", "set", "lo", "up", netns=True)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=10)

    def ask(self, port: int) -> list[str]:
        """UDP then TCP query from inside the namespace: rcode text or 'no-answer'; then two
        malformed packets, which must never be echoed to a client we do not serve (reflection)."""
        command = ["ip", "netns", "exec", self.name, sys.executable, "-c", CLIENT, self.host_address,
                   str(port)]
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return [" ".join(line.split()[:2]) if line.startswith("answered") else line.split()[0]
                for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    if not ROOT:
        pytest.skip("network namespaces need root (CI runs as root)")
    ns = Namespace()
    ns.create()
    try:
        yield ns
    finally:
        ns.delete()


def _server(tmp_path: Path, upstream: Nsd, ns: Namespace, access: dict[str, Any]) -> Netblock:
    port = free_port()
    config = {"server": {"listen": [f"127.0.0.1:{port}", f"{ns.host_address}:{port}"]}, "access": access}
    return Netblock(tmp_path, [upstream.address], config=config, port=port)


def test_outside_client_refused_on_udp_and_tcp(tmp_path: Path, upstream: Nsd, namespace: Namespace) -> None:
    requests = f'upstream="{upstream.address}"'
    with _server(tmp_path, upstream, namespace, {}) as server:
        forwarded = metric(scrape(server.metrics_port), "netblock_upstream_requests_total", requests)
        assert namespace.ask(server.port) == ["REFUSED", "REFUSED", "no-answer", "no-answer"]
        text = scrape(server.metrics_port)
        assert metric(text, "netblock_refused_total", 'reason="acl"') == 4
        # Nothing went upstream for the refused client.
        assert metric(text, "netblock_upstream_requests_total", requests) == forwarded
        assert server.query("www.example.test").rcode() == 0  # loopback is inside the defaults


def test_drop_action_answers_nothing_but_counts(tmp_path: Path, upstream: Nsd, namespace: Namespace) -> None:
    with _server(tmp_path, upstream, namespace, {"action": "drop"}) as server:
        assert namespace.ask(server.port) == ["no-answer"] * 4
        # Dropped on purpose, not lost on the way: the server saw and counted all four.
        assert metric(scrape(server.metrics_port), "netblock_refused_total", 'reason="acl"') == 4
        assert server.query("www.example.test").rcode() == 0


def test_allowed_range_is_configurable(tmp_path: Path, upstream: Nsd, namespace: Namespace) -> None:
    access = {"allow": [*PRIVATE_NETWORKS, f"{namespace.client_address}/32"]}
    with _server(tmp_path, upstream, namespace, access) as server:
        # Served: answers, and the malformed packets get unbound's NOTIMP and FORMERR.
        assert namespace.ask(server.port) == ["NOERROR", "NOERROR", "answered 4", "answered 1"]


@pytest.mark.parametrize(("client", "admitted"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("10.1.2.3", True), ("172.31.255.1", True),
    ("192.168.1.1", True), ("100.64.0.1", True), ("100.127.255.254", True), ("169.254.1.1", True),
    ("fd00::1", True), ("fe80::1%eth0", True), ("::ffff:10.0.0.1", True),
    ("8.8.8.8", False), ("198.18.0.2", False), ("172.32.0.1", False), ("100.128.0.1", False),
    ("2001:db8::1", False), ("::ffff:8.8.8.8", False), ("not-an-ip", False), ("", False),
])
def test_default_access_list(client: str, admitted: bool) -> None:
    assert (Admission(Access()).check(client, 0.0) == "") is admitted


def test_access_decisions_table_is_bounded() -> None:
    admission = Admission(Access(rate_limit=RateLimit(max_clients=1000)))
    for i in range(50_000):
        admission.check(f"8.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0.0)
    assert len(admission._allowed) <= 1000
    assert admission.check("8.8.8.8", 0.0) == "acl"
    assert admission.check("10.0.0.1", 0.0) == ""
