"""The gateway nftables rules with real packets: four network namespaces, a routed gateway.

    client 10.77.1.2 --lan0-- gateway --wan0-- outside: 10.77.2.53 (netblock's upstream)
                                      |                 10.77.2.8  (a "public resolver")
                                      +--nb0-- netblock host 10.77.3.53

The shipped file is loaded with only its defines edited, as an operator would. A tiny DNS
responder stands in for each server and answers with an address that says who answered.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import wait_for

REPO = Path(__file__).resolve().parent.parent
NFT = REPO / "deploy" / "nftables" / "netblock-gateway.nft"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")

PUBLIC_ANSWER = "198.18.0.6"  # what the outside resolvers say
NETBLOCK_ANSWER = "198.18.0.10"  # what the stand-in netblock says

RESPONDER = r"""
import socket, sys, threading, time
from dnslib import DNSRecord, RR, A
address, answer = sys.argv[1], sys.argv[2]
extra_tcp = [int(p) for p in sys.argv[3:]]

def reply(data):
    q = DNSRecord.parse(data)
    r = q.reply()
    r.add_answer(RR(q.q.qname, rdata=A(answer), ttl=60))
    return r.pack()

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 53))
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(reply(data), peer)

def tcp_dns():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, 53))
    s.listen()
    while True:
        c, _ = s.accept()
        c.settimeout(5)
        try:
            n = int.from_bytes(c.recv(2), "big")
            data = b""
            while len(data) < n:
                data += c.recv(n - len(data))
            out = reply(data)
            c.sendall(len(out).to_bytes(2, "big") + out)
        except OSError:
            pass
        c.close()

def plain(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen()
    while True:
        c, _ = s.accept()
        c.sendall(b"hello\n")
        c.close()

for target, args in [(udp, ()), (tcp_dns, ())] + [(plain, (p,)) for p in extra_tcp]:
    threading.Thread(target=target, args=args, daemon=True).start()
print("ready", flush=True)
time.sleep(120)  # bounded life even if the test dies without stopping us
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {result.stderr}")
    return result


class Lab:
    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:5]
        self.ns = {role: f"nbt{role}{tag}" for role in ("c", "g", "o", "n")}
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []

    def ex(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns[role], *args, check=check)

    def build(self) -> None:
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
        tag = self.ns["c"][-5:]
        links = [("c", "c0", "g", "lan0"), ("o", "o0", "g", "wan0"), ("n", "n0", "g", "nb0")]
        for role, inner, _gw, outer in links:
            temp_a, temp_b = f"va{role}{tag}", f"vb{role}{tag}"
            sh("ip", "link", "add", temp_a, "type", "veth", "peer", "name", temp_b)
            sh("ip", "link", "set", temp_a, "netns", self.ns[role])
            sh("ip", "link", "set", temp_b, "netns", self.ns["g"])
            self.ex(role, "ip", "link", "set", temp_a, "name", inner)
            self.ex("g", "ip", "link", "set", temp_b, "name", outer)
        addresses = {
            ("c", "c0"): ["10.77.1.2/24"],
            ("g", "lan0"): ["10.77.1.1/24"],
            ("g", "wan0"): ["10.77.2.1/24"],
            ("g", "nb0"): ["10.77.3.1/24"],
            ("o", "o0"): ["10.77.2.53/24", "10.77.2.8/24"],
            ("n", "n0"): ["10.77.3.53/24"],
        }
        for (role, dev), addrs in addresses.items():
            for addr in addrs:
                self.ex(role, "ip", "addr", "add", addr, "dev", dev)
            self.ex(role, "ip", "link", "set", dev, "up")
        for role in self.ns:
            self.ex(role, "ip", "link", "set", "lo", "up")
        for role, gw in (("c", "10.77.1.1"), ("o", "10.77.2.1"), ("n", "10.77.3.1")):
            self.ex(role, "ip", "route", "add", "default", "via", gw)
        self.ex("g", "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def load_rules(self) -> None:
        text = NFT.read_text()
        defines = {
            "LAN_IFS": '{ "lan0" }',
            "NETBLOCK_V4": "10.77.3.53",
            "UPSTREAMS_V4": "{ 10.77.2.53 }",
            "NETBLOCK_V6": "fd77:3::53",
            "UPSTREAMS_V6": "{ fd77:2::53 }",
        }
        for name, value in defines.items():
            text, n = re.subn(rf"^define {name} = .*$", f"define {name} = {value}", text, flags=re.M)
            assert n == 1, name
        rules = self.tmp / "gateway.nft"
        rules.write_text(text)
        self.ex("g", "nft", "-f", str(rules))
        # Operators add hard-coded DoH addresses the same way; here our "public resolver".
        self.ex("g", "nft", "add", "element", "inet", "netblock_dns", "doh_v4", "{ 10.77.2.8 }")

    def responder(self, role: str, address: str, answer: str, *tcp_ports: int) -> None:
        script = self.tmp / "responder.py"
        script.write_text(RESPONDER)
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns[role],
                sys.executable,
                str(script),
                address,
                answer,
                *map(str, tcp_ports),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr

    def teardown(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(5)
        for name in self.ns.values():
            sh("ip", "netns", "delete", name, check=False)

    def dig(self, role: str, server: str, *extra: str) -> str:
        return self.ex(
            role, "dig", "+short", "+time=2", "+tries=1", f"@{server}", "probe.test", "A", *extra, check=False
        ).stdout.strip()

    def connect(self, role: str, address: str, port: int) -> str:
        code = (
            "import socket,sys\ntry:\n s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n"
            " print('open', s.recv(16).decode().strip())\nexcept TimeoutError: print('timeout')\n"
            "except OSError as e: print('refused', e.errno)\n"
        )
        return self.ex(role, sys.executable, "-c", code, address, str(port)).stdout.strip()

    def counter(self, name: str) -> int:
        out = self.ex("g", "nft", "list", "counter", "inet", "netblock_dns", name).stdout
        match = re.search(r"packets (\d+)", out)
        assert match, out
        return int(match.group(1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("nft-lab"))
    try:
        lab.build()
        lab.load_rules()
        lab.responder("o", "10.77.2.53", PUBLIC_ANSWER, 853, 443)
        lab.responder("o", "10.77.2.8", PUBLIC_ANSWER, 853, 443)
        lab.responder("n", "10.77.3.53", NETBLOCK_ANSWER)
        yield lab
    finally:
        lab.teardown()


def test_device_dns_to_a_public_resolver_is_answered_by_netblock(lab: Any):
    before = lab.counter("dns_redirected")
    assert lab.dig("c", "10.77.2.8") == NETBLOCK_ANSWER
    assert lab.dig("c", "10.77.2.8", "+tcp") == NETBLOCK_ANSWER
    assert lab.dig("c", "10.77.2.53") == NETBLOCK_ANSWER  # even netblock's own upstream
    assert lab.dig("c", "10.77.3.53") == NETBLOCK_ANSWER  # asking netblock directly works
    assert lab.counter("dns_redirected") - before >= 3


def test_only_netblock_reaches_the_upstream(lab: Any):
    assert lab.dig("n", "10.77.2.53") == PUBLIC_ANSWER
    assert lab.dig("n", "10.77.2.53", "+tcp") == PUBLIC_ANSWER
    assert lab.connect("n", "10.77.2.53", 853) == "open hello"  # DoT to its upstream
    # netblock's address may not use resolvers other than its upstreams either.
    out = lab.dig("n", "10.77.2.8")
    assert PUBLIC_ANSWER not in out and "unreachable" in out, out  # rejected with ICMP, not silently dropped


def test_dot_and_doh_from_devices_are_rejected(lab: Any):
    dot, doh = lab.counter("dot_rejected"), lab.counter("doh_rejected")
    # Rejected, not dropped: the device learns at once and falls back to plain DNS (= netblock).
    assert lab.connect("c", "10.77.2.53", 853).startswith("refused")
    assert lab.connect("c", "10.77.2.8", 443).startswith("refused")
    assert lab.counter("dot_rejected") > dot and lab.counter("doh_rejected") > doh
    # Ordinary HTTPS to an address that is not a DoH resolver passes.
    assert lab.connect("c", "10.77.2.53", 443) == "open hello"


def test_rules_survive_a_reload(lab: Any):
    lab.load_rules()  # the same path an operator takes after an edit: nft -f again
    text = lab.ex("g", "nft", "list", "ruleset").stdout
    assert text.count("table inet netblock_dns") == 1
    assert wait_for(lambda: lab.dig("c", "10.77.2.8") == NETBLOCK_ANSWER, 5)
