"""The inspector live on a router between a client and a server namespace, enforcing.

openssl s_server holds one certificate for weixin.qq.com (blocked) and example.org
(allowed) on the same server address. With enforcement on, the blocked name fails while
the allowed name on the same IP works, QUIC to the blocked name fails, a ClientHello split
by a small MSS is caught, and every attempt is an event for the client's device. DNS to a
foreign resolver and a DoT SYN are detected. Two enforcement modes: passive (raw-socket
resets + nftables timeout sets) and inline (NFQUEUE).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "inspect"))

import nbi_topo as topo

REPO = Path(__file__).resolve().parent.parent
METRICS_PORT = 19153  # inside the router namespace: nothing else listens there

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not topo.is_root(), reason="needs root: network namespaces, raw sockets, nftables"),
]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[topo.Topology]:
    work = tmp_path_factory.mktemp("e2e")
    t = topo.Topology("e", work)
    try:
        t.up()
        t.tls_servers()
        t.http_server()
        t.quic_server()
        yield t
    finally:
        t.down()


def client_mac(t: topo.Topology) -> str:
    info = json.loads(t.ns(t.cli, "ip", "-j", "link", "show", "c0").stdout)
    return str(info[0]["address"]).upper().replace(":", "-")


class Running:
    def __init__(self, t: topo.Topology, mode: str, work: Path) -> None:
        self.work = work
        self.events = work / "events.jsonl"
        config = work / "netblock.yaml"
        config.write_text(
            f"policy: {{lists: [{REPO}/blocklists/*.yaml], watch: false}}\n"
            f"events: {{jsonl: {self.events}, sqlite: '', flush_interval: 0.1}}\n"
            "devices: {neighbours: false}\n"
            f"inspector: {{resolvers: [10.200.2.53], doh_list: {REPO}/blocklists/doh-resolvers.yaml,"
            f" metrics_listen: '127.0.0.1:{METRICS_PORT}'}}\n"
        )
        ready = work / "ready"
        ready.unlink(missing_ok=True)
        self.t = t
        self.proc = t.spawn(
            t.rtr,
            topo.PY,
            "-m",
            "netblock.inspect.cli",
            "inspect",
            "-c",
            str(config),
            "--interface",
            t.rtr_cif,
            "--enforce",
            mode,
            "--nft-timeout",
            "30",
            "--ready-file",
            str(ready),
            stdout=subprocess.PIPE,
            log=work / "inspector.log",
        )
        deadline = time.monotonic() + 20
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"inspector did not start: {(work / 'inspector.log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> dict:  # type: ignore[type-arg]
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, (self.work / "inspector.log").read_text()
        return json.loads(out.decode().strip().splitlines()[-1])["summary"]  # type: ignore[no-any-return]

    def metrics(self) -> dict[tuple[str, str], float]:
        text = self.t.ns(self.t.rtr, "curl", "-s", f"http://127.0.0.1:{METRICS_PORT}/metrics").stdout
        out = {}
        for line in text.splitlines():
            if line.startswith("netblock_inspector_detections_total{"):
                labels, value = line.rsplit(" ", 1)
                parts = dict(p.split("=", 1) for p in labels[labels.index("{") + 1 : -1].split(","))
                out[(parts["kind"].strip('"'), parts["list"].strip('"'))] = float(value)
        return out

    def documents(self) -> list[dict]:  # type: ignore[type-arg]
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.strip()]


def dot_syn(t: topo.Topology) -> None:
    code = (
        "import socket\ns=socket.socket()\ns.settimeout(1)\n"
        "try:\n    s.connect(('10.200.2.2', 853))\nexcept OSError:\n    pass\n"
    )
    t.ns(t.cli, topo.PY, "-c", code, check=False)


def foreign_dns(t: topo.Topology) -> None:
    t.ns(t.cli, "dig", "@10.200.2.2", "+tries=1", "+time=1", "kaspersky-labs.com", "A", check=False)


@pytest.mark.parametrize("mode", ["rst,nft", "nfqueue"])
def test_enforcement_end_to_end(net: topo.Topology, mode: str, tmp_path: Path) -> None:
    if mode == "nfqueue":
        pytest.importorskip("netfilterqueue", reason="netfilterqueue is a test dependency (pyproject)")
    s4, s6 = topo.SRV4, topo.SRV6
    assert net.curl("https://weixin.qq.com/", "weixin.qq.com", s4) == 0  # reachable without the inspector
    inspector = Running(net, mode, tmp_path)
    try:
        allowed_before = net.curl("https://example.org/", "example.org", s4)
        quic_allowed = net.quic(s4, "example.org", "v1")
        blocked = net.curl("https://weixin.qq.com/", "weixin.qq.com", s4)
        allowed_after = net.curl("https://example.org/", "example.org", s4)
        blocked_v6 = net.curl("https://www.kaspersky.com/", "www.kaspersky.com", s6)
        split = net.curl("https://weixin.qq.com/", "weixin.qq.com", s4, "--interface", topo.SPLIT4)
        plain_http = net.curl("http://dl.kaspersky.com/", "dl.kaspersky.com", s4)
        quic_blocked = net.quic(s4, "weixin.qq.com", "v1", timeout=3)
        foreign_dns(net)
        dot_syn(net)
        time.sleep(0.5)  # the event writer's flush interval
        metrics = inspector.metrics()
    finally:
        summary = inspector.stop()
    assert allowed_before == 0 and allowed_after == 0, "the allowed name on the same IP must work"
    assert quic_allowed == 0
    assert blocked != 0 and blocked_v6 != 0 and split != 0 and plain_http != 0, summary
    assert quic_blocked != 0, summary
    docs = inspector.documents()
    mac = client_mac(net)
    seen = {(d["netblock"]["stage"], d["dns"]["question"]["name"], d["client"]["ip"]) for d in docs}
    expected = {
        ("sni", "weixin.qq.com", topo.CLI4),
        ("sni", "www.kaspersky.com", topo.CLI6),
        ("sni", "weixin.qq.com", topo.SPLIT4),
        ("http-host", "dl.kaspersky.com", topo.CLI4),
        ("quic", "weixin.qq.com", topo.CLI4),
        ("dns-bypass", "kaspersky-labs.com", topo.CLI4),
        ("dot", topo.SRV4, topo.CLI4),
    }
    assert expected <= seen, (seen, summary)
    assert not any(d["dns"]["question"]["name"] == "example.org" for d in docs)
    # One metric per detection, by kind and list: never a client or a name as a label.
    assert metrics[("sni", "wechat")] >= 2 and metrics[("quic", "wechat")] >= 1, metrics
    assert metrics[("dns-bypass", "inspector")] >= 1 and metrics[("dot", "inspector")] >= 1, metrics
    stages = ("sni", "quic", "http-host", "dns-bypass", "dot", "doh", "ip")
    assert sum(n for (kind, _list), n in metrics.items() if kind in stages) == summary["detections"]
    for doc in docs:
        assert doc["event"]["action"] == "block"
        assert doc["client"].get("mac") == mac  # the client's device, from its frames
    if mode == "rst,nft":
        assert summary["resets_sent"] >= 8 and summary["nft_elements"] >= 1 and summary["nft_errors"] == 0
        # The dynamic table goes away with the inspector: nothing stays blocked by accident.
        assert net.ns(net.rtr, "nft", "list", "table", "inet", "netblock_inspect", check=False).returncode != 0
    else:
        assert summary["dropped"] >= 5 and summary["errors"] == 0
        assert "NBINSPECT" not in net.ns(net.rtr, "iptables", "-S").stdout
    assert net.curl("https://weixin.qq.com/", "weixin.qq.com", s4) == 0  # reachable again after stop


def test_detect_only_blocks_nothing(net: topo.Topology, tmp_path: Path) -> None:
    """--enforce '' (no modes): events say monitor and every connection works."""
    running = Running(net, "", tmp_path)
    try:
        code = net.curl("https://weixin.qq.com/", "weixin.qq.com", topo.SRV4)
        quic_code = net.quic(topo.SRV4, "weixin.qq.com", "v2")
        time.sleep(0.5)
    finally:
        summary = running.stop()
    assert code == 0 and quic_code == 0
    stages = sorted((d["netblock"]["stage"], d["event"]["action"]) for d in running.documents())
    assert stages == [("quic", "monitor"), ("sni", "monitor")], summary
    assert summary["kernel_drops"] == 0


def test_live_capture_inspects_every_hello_sent(net: topo.Topology, tmp_path: Path) -> None:
    """Every ClientHello frame sent from the client reaches the inspector and each blocked one is
    matched at stage sni. 2,000 frames fit the 32 MiB socket buffer many times over, so no drop
    is possible even if the inspector gets no CPU during the burst. Speed (20,000 hellos/s) is
    checked by `make bench` (bench/inspector.py), not here."""
    rate, seconds, blocked_every = 2_000, 1.0, 100
    running = Running(net, "", tmp_path)
    try:
        router_mac = json.loads(net.ns(net.rtr, "ip", "-j", "link", "show", net.rtr_cif).stdout)[0]["address"]
        done = net.ns(
            net.cli,
            topo.PY,
            str(Path(topo.HERE) / "nbi_flood.py"),
            "c0",
            router_mac,
            str(rate),
            str(seconds),
            str(blocked_every),
            timeout=60,
        )
        sent = int(done.stdout.split()[0])
        time.sleep(1.0)  # the inspector reads what is still in its socket buffer
    finally:
        summary = running.stop()
    print(f"live: sent {sent} hellos, inspected {summary['packets']}, kernel drops {summary['kernel_drops']}")
    assert sent == int(rate * seconds)
    assert summary["kernel_drops"] == 0
    assert summary["packets"] >= sent
    assert summary["by_stage"].get("sni", 0) == len(range(0, sent, blocked_every))
    assert summary["detections"] == summary["by_stage"]["sni"], summary
    docs = running.documents()
    assert len(docs) == summary["detections"] and {d["dns"]["question"]["name"] for d in docs} == {"weixin.qq.com"}


def test_print_nft_rules_load_and_block_foreign_dns(net: topo.Topology, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "ranges.yaml").write_text("name: ranges\naction: block\nnetworks: [192.0.2.0/24, 2001:db8:77::/48]\n")
    config = tmp_path / "netblock.yaml"
    config.write_text(
        f"policy: {{lists: ['{lists}/*.yaml', '{REPO}/blocklists/doh-resolvers.yaml'], watch: false}}\n"
        f"inspector: {{resolvers: [10.200.2.53, 'fd00:200:2::53'], "
        f"doh_list: {REPO}/blocklists/doh-resolvers.yaml}}\n"
    )
    done = subprocess.run(
        [topo.PY, "-m", "netblock.inspect.cli", "inspect", "-c", str(config), "--print-nft"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rules = done.stdout
    assert "192.0.2.0/24" in rules and "8.8.8.8" in rules and "10.200.2.53" in rules
    path = tmp_path / "static.nft"
    path.write_text(rules)
    net.ns(net.rtr, "nft", "-f", str(path))
    try:
        # Foreign DNS over TCP is now refused at the router; the server itself is reachable.
        probe = (
            "import socket,sys\ns=socket.socket()\ns.settimeout(2)\n"
            "try:\n    s.connect((sys.argv[1], int(sys.argv[2])))\n    print('open')\n"
            "except ConnectionRefusedError:\n    print('refused')\n"
            "except OSError as e:\n    print('error', e)\n"
        )
        # ICMP admin-prohibited from the router (EHOSTUNREACH), not the server's reset.
        assert net.ns(net.cli, topo.PY, "-c", probe, topo.SRV4, "53", check=False).stdout.startswith("error")
        assert net.ns(net.cli, topo.PY, "-c", probe, topo.SRV4, "853", check=False).stdout.strip() == "refused"
        assert net.ns(net.cli, topo.PY, "-c", probe, topo.SRV4, "443", check=False).stdout.strip() == "open"
        counters = net.ns(net.rtr, "nft", "list", "table", "inet", "netblock_static").stdout
        assert "packets 0" not in counters.split("th dport 53")[1].splitlines()[0]
    finally:
        net.ns(net.rtr, "nft", "delete", "table", "inet", "netblock_static", check=False)


@pytest.mark.parametrize("library", [True, False], ids=["libnftables", "nft-command"])
def test_nft_sets_through_both_backends(net: topo.Topology, library: bool) -> None:
    """Elements land in the timeout sets through python3-nftables and through the nft command."""
    code = (
        "import socket, sys, time\n"
        "from netblock.inspect.nft import Nft, NftSets\n"
        "nft = Nft(prefer_library=sys.argv[1] == '1')\n"
        "print(nft.backend)\n"
        "sets = NftSets(nft, 60)\n"
        "sets.install()\n"
        "sets.block_connection(socket.inet_aton('10.200.1.2'), 'tcp', 40000, socket.inet_aton('10.200.2.2'), 443)\n"
        "sets.block_flow(socket.inet_pton(socket.AF_INET6, 'fd00:200:1::2'), "
        "socket.inet_pton(socket.AF_INET6, 'fd00:200:2::2'), 'udp', 853)\n"
        "sets.block_pair(socket.inet_aton('10.200.1.2'), socket.inet_aton('192.0.2.1'))\n"
        "deadline = time.monotonic() + 5\n"
        "while sets.added < 3 and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "import subprocess\n"
        "listing = subprocess.run(['nft', 'list', 'table', 'inet', 'netblock_inspect'], capture_output=True,"
        " text=True)\n"
        "print(listing.stdout)\n"
        "sets.remove()\n"
        "print('errors', sets.errors, sets.last_error)\n"
    )
    done = net.ns(net.rtr, topo.PY, "-c", code, "1" if library else "0", timeout=30)
    lines = done.stdout
    assert lines.splitlines()[0] == ("libnftables" if library else "nft")
    assert "10.200.1.2 . tcp . 40000 . 10.200.2.2 . 443" in lines
    assert "fd00:200:1::2 . fd00:200:2::2 . udp . 853" in lines
    assert "10.200.1.2 . 192.0.2.1" in lines
    assert "errors 0" in lines
    assert net.ns(net.rtr, "nft", "list", "table", "inet", "netblock_inspect", check=False).returncode != 0
