"""Inspector parsers on captures the test makes itself: curl, openssl s_client and aioquic
in three network namespaces, tcpdump on the router, the inspector reading each pcap
(offline mode, the same code path as live capture after the socket)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "inspect"))

import nbi_topo as topo

from netblock.config import load_config
from netblock.inspect import quic
from netblock.inspect.capture import read_file
from netblock.inspect.packet import decode
from netblock.inspect.runner import Inspector

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not topo.is_root(), reason="needs root: network namespaces and tcpdump"),
]

SCENARIOS = {
    "tls13_v4": lambda t: t.curl("https://weixin.qq.com/", "weixin.qq.com", topo.SRV4),
    "tls13_v6": lambda t: t.curl("https://www.kaspersky.com/", "www.kaspersky.com", topo.SRV6),
    "tls12_v4": lambda t: t.s_client(topo.SRV4, "-tls1_2", "-servername", "weixin.qq.com").returncode,
    "tls12_v6": lambda t: t.s_client(topo.SRV6, "-tls1_2", "-servername", "a.weixin.qq.com").returncode,
    "no_sni": lambda t: t.s_client(topo.SRV4, "-noservername").returncode,
    "split_v4": lambda t: t.curl("https://weixin.qq.com/", "weixin.qq.com", topo.SRV4, "--interface", topo.SPLIT4),
    "split_v6": lambda t: t.curl("https://weixin.qq.com/", "weixin.qq.com", topo.SRV6, "--interface", topo.SPLIT6),
    "http": lambda t: t.curl("http://dl.kaspersky.com/", "Dl.Kaspersky.com", topo.SRV4),
    "quic_v1": lambda t: t.quic(topo.SRV4, "weixin.qq.com", "v1"),
    "quic_v2": lambda t: t.quic(topo.SRV4, "weixin.qq.com", "v2"),
    "quic_two_initials": lambda t: t.quic(topo.SRV6, "weixin.qq.com", "v1", "--big-hello"),
}


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    work = tmp_path_factory.mktemp("captures")
    net = topo.Topology("p", work)
    try:
        net.up()
        net.tls_servers()
        net.http_server()
        net.quic_server()
        made: dict[str, Path] = {}
        for name, action in SCENARIOS.items():
            path = work / f"{name}.pcap"
            capture = net.tcpdump(path)
            code = action(net)
            net.stop_tcpdump(capture)
            assert code == 0, f"{name}: the client failed ({code}) without any inspector"
            made[name] = path
        yield made
    finally:
        net.down()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("cfg")
    path = tmp / "netblock.yaml"
    path.write_text(
        f"policy: {{lists: [{REPO}/blocklists/*.yaml], watch: false}}\nevents: {{enabled: false}}\n"
        f"inspector: {{doh_list: {REPO}/blocklists/doh-resolvers.yaml}}\n"
    )
    return load_config(path)


def inspect(config, path: Path) -> tuple[list, dict]:  # type: ignore[no-untyped-def]
    inspector = Inspector(config, (), keep=100)
    summary = inspector.run_pcap(str(path))
    return list(inspector.sink.recent), summary


def client_payload_segments(path: Path, port: int = 443) -> int:
    count = 0
    for ts, linktype, frame in read_file(str(path)):
        pkt = decode(frame, linktype, ts)
        if pkt is not None and pkt.proto == 6 and pkt.dport == port and pkt.payload:
            count += 1
    return count


@pytest.mark.parametrize(
    ("scenario", "name", "client"),
    [
        ("tls13_v4", "weixin.qq.com", topo.CLI4),
        ("tls13_v6", "www.kaspersky.com", topo.CLI6),
        ("tls12_v4", "weixin.qq.com", topo.CLI4),
        ("tls12_v6", "a.weixin.qq.com", topo.CLI6),
    ],
)
def test_tls_hello(captures, config, scenario: str, name: str, client: str) -> None:  # type: ignore[no-untyped-def]
    found, _summary = inspect(config, captures[scenario])
    assert [(d.stage, d.name, d.client_ip, d.server_ip.split(":")[0] != "") for d in found] == [
        ("sni", name, client, True)
    ]
    if scenario.startswith("tls13"):
        assert found[0].alpn == ("h2", "http/1.1")  # curl offers both


def test_tls12_only_hello_has_no_tls13_version(captures, config) -> None:  # type: ignore[no-untyped-def]
    from netblock.inspect import tls

    for ts, linktype, frame in read_file(str(captures["tls12_v4"])):
        pkt = decode(frame, linktype, ts)
        if pkt is not None and pkt.payload[:1] == b"\x16" and pkt.dport == 443:
            status, hello = tls.parse_stream(pkt.payload)
            assert status == tls.OK and hello is not None and 0x0304 not in hello.versions
            return
    pytest.fail("no ClientHello in the capture")


def test_no_sni_is_noted_not_reported(captures, config) -> None:  # type: ignore[no-untyped-def]
    found, summary = inspect(config, captures["no_sni"])
    assert found == [] and summary["notes"]["no-sni"] == 1


@pytest.mark.parametrize(("scenario", "client"), [("split_v4", topo.SPLIT4), ("split_v6", topo.SPLIT6)])
def test_split_hello(captures, config, scenario: str, client: str) -> None:  # type: ignore[no-untyped-def]
    assert client_payload_segments(captures[scenario]) >= 4  # the MSS really split it
    found, _ = inspect(config, captures[scenario])
    assert [(d.stage, d.name, d.client_ip) for d in found] == [("sni", "weixin.qq.com", client)]


def test_http_host(captures, config) -> None:  # type: ignore[no-untyped-def]
    found, _ = inspect(config, captures["http"])
    assert [(d.stage, d.name, d.server_ip) for d in found] == [("http-host", "dl.kaspersky.com", topo.SRV4)]


@pytest.mark.parametrize(
    ("scenario", "version", "client"),
    [
        ("quic_v1", quic.V1, topo.CLI4),
        ("quic_v2", quic.V2, topo.CLI4),
        ("quic_two_initials", quic.V1, topo.CLI6),
    ],
)
def test_quic(captures, config, scenario: str, version: int, client: str) -> None:  # type: ignore[no-untyped-def]
    found, _ = inspect(config, captures[scenario])
    assert [(d.stage, d.name, d.version, d.client_ip) for d in found] == [("quic", "weixin.qq.com", version, client)]
    if scenario == "quic_two_initials":
        assert len(found[0].alpn) == 47  # the whole hello, from both Initials


def test_pcapng_reads_the_same(captures, config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import nbi_gen

    pcapng = tmp_path / "tls.pcapng"
    nbi_gen.write_pcapng(pcapng, [(ts, frame) for ts, _lt, frame in read_file(str(captures["tls13_v4"]))])
    assert pcapng.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    found, _ = inspect(config, pcapng)
    assert [(d.stage, d.name) for d in found] == [("sni", "weixin.qq.com")]
