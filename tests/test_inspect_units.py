"""Inspector parsers and detection on real protocol bytes made in-process (OpenSSL
ClientHellos through a memory BIO, aioquic Initials), the RFC 9001 Appendix A vector,
fuzzing of every parser, and a mixed capture replayed with every packet inspected.
Speed targets are checked by `make bench` (bench/inspector.py), never here."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "inspect"))

import nbi_gen as gen

from netblock.config import load_config
from netblock.inspect import dnsmsg, http, packet, quic, tls
from netblock.inspect.detect import Detection, Engine
from netblock.inspect.flows import Stream, Table
from netblock.inspect.runner import Inspector, load

REPO = Path(__file__).resolve().parent.parent
CLIENT, SERVER = gen.ip4("10.9.0.2"), gen.ip4("198.51.100.7")
CLIENT6, SERVER6 = gen.ip4("fd00:9::2"), gen.ip4("2001:db8::7")
RESOLVER = "10.9.0.53"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def write_config(tmp: Path, enforce: bool = False) -> Path:
    path = tmp / "netblock.yaml"
    path.write_text(
        f"policy: {{lists: [{REPO}/blocklists/*.yaml], watch: false}}\n"
        f"events: {{jsonl: {tmp}/events.jsonl, sqlite: ''}}\n"
        "devices: {neighbours: false}\n"
        f"inspector: {{resolvers: [{RESOLVER}], doh_list: {REPO}/blocklists/doh-resolvers.yaml}}\n"
    )
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_config(write_config(tmp_path_factory.mktemp("inspect")))


_LOADED: dict[str, object] = {}


def engine_for(config, enforcing: bool = False) -> tuple[Engine, list[Detection]]:  # type: ignore[no-untyped-def]
    loaded = _LOADED.get(config.path)
    if loaded is None:
        loaded = _LOADED[config.path] = load(config)
    found: list[Detection] = []
    engine = Engine(
        loaded.policy,
        found.append,
        doh=loaded.doh,  # type: ignore[attr-defined]
        doh_list_name=loaded.doh_name,
        resolvers=loaded.resolvers,  # type: ignore[attr-defined]
        enforcing=enforcing,
        max_flows=1000,
    )
    return engine, found


def feed(engine: Engine, *ips: bytes) -> None:
    for ts, ip in enumerate(ips):
        pkt = packet.decode(gen.ether(ip), packet.LINK_ETHERNET, 1000.0 + ts)
        assert pkt is not None
        engine.handle(pkt)


# -- QUIC: RFC 9001 Appendix A ---------------------------------------------------------


def test_rfc9001_initial_keys() -> None:
    keys = quic.client_initial_keys(gen.RFC9001_DCID, quic.V1)
    assert keys.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert keys.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert keys.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_rfc9001_client_initial_decrypts() -> None:
    initials, failed = quic.decrypt_initials(gen.RFC9001_CLIENT_INITIAL, quic.KeyCache())
    assert not failed and len(initials) == 1
    initial = initials[0]
    assert initial.packet_number == 2
    assert initial.frames.startswith(gen.RFC9001_FRAMES_START)
    crypto = b"".join(data for _offset, data in quic.crypto_frames(initial.frames))
    status, hello = tls.parse_handshake(crypto)
    assert status == tls.OK and hello is not None
    assert hello.sni == "example.com" and hello.alpn == ("alpn",)
    # One flipped ciphertext bit: the GCM tag no longer verifies.
    tampered = bytearray(gen.RFC9001_CLIENT_INITIAL)
    tampered[100] ^= 1
    initials, failed = quic.decrypt_initials(bytes(tampered), quic.KeyCache())
    assert initials == [] and failed


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_quic_hello_over_two_initials_in_any_order(version: str) -> None:
    datagrams = gen.quic_initials("weixin.qq.com", version, big=True)
    assert len(datagrams) == 2  # the hello really spans two Initials
    for order in (datagrams, datagrams[::-1]):
        cache, assembler = quic.KeyCache(), quic.CryptoAssembler()
        for datagram in order:
            assert quic.is_long_header_initial(datagram)
            initials, _ = quic.decrypt_initials(datagram, cache)
            assert initials and initials[0].version == (quic.V2 if version == "v2" else quic.V1)
            for offset, data in quic.crypto_frames(initials[0].frames):
                assembler.add(offset, data)
        status, hello = tls.parse_handshake(assembler.contiguous())
        assert status == tls.OK and hello is not None and hello.sni == "weixin.qq.com"
        assert len(hello.alpn) == 46


def test_quic_v2_uses_its_own_salt_and_type_bits() -> None:
    v2 = gen.quic_initials("weixin.qq.com", "v2")[0]
    assert (v2[0] >> 4) & 3 == 1  # an Initial is 0b01 in v2
    as_v1 = v2[:1] + (1).to_bytes(4, "big") + v2[5:]  # same bytes claiming v1: wrong keys
    initials, _ = quic.decrypt_initials(as_v1, quic.KeyCache())
    assert initials == []


# -- TLS -------------------------------------------------------------------------------


def test_tls_versions_and_alpn_from_openssl() -> None:
    status, hello = tls.parse_stream(gen.client_hello("weixin.qq.com"))
    assert status == tls.OK and hello is not None
    assert hello.sni == "weixin.qq.com" and 0x0304 in hello.versions and hello.alpn == ("h2", "http/1.1")
    status, hello = tls.parse_stream(gen.client_hello("weixin.qq.com", tls12=True))
    assert status == tls.OK and hello is not None and 0x0304 not in hello.versions
    status, hello = tls.parse_stream(gen.client_hello(None))
    assert status == tls.OK and hello is not None and hello.sni is None


def test_tls_every_truncation_needs_more() -> None:
    records = gen.client_hello("a.weixin.qq.com")
    for cut in range(len(records)):
        assert tls.parse_stream(records[:cut])[0] == tls.NEED_MORE, cut


def _refragment(records: bytes, size: int) -> bytes:
    """The same handshake in TLS records of `size` bytes (xray fragment, GoodbyeDPI)."""
    handshake = records[5:]
    out = b""
    for start in range(0, len(handshake), size):
        chunk = handshake[start : start + size]
        out += b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
    return out


@pytest.mark.parametrize("size", [1, 2, 7, 64, 333])
def test_tls_record_fragmentation(size: int) -> None:
    fragmented = _refragment(gen.client_hello("weixin.qq.com"), size)
    status, hello = tls.parse_stream(fragmented)
    assert status == tls.OK and hello is not None and hello.sni == "weixin.qq.com"


def _synthetic_hello(extensions: list[tuple[int, bytes]]) -> bytes:
    exts = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in extensions)
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + len(exts).to_bytes(2, "big") + exts
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def _sni_ext(name: str) -> tuple[int, bytes]:
    entry = b"\x00" + len(name).to_bytes(2, "big") + name.encode()
    return 0, len(entry).to_bytes(2, "big") + entry


def test_tls_ech_and_esni_flags() -> None:
    status, hello = tls.parse_stream(_synthetic_hello([_sni_ext("cloudflare-ech.com"), (0xFE0D, b"\x00\x00\x01")]))
    assert status == tls.OK and hello is not None and hello.ech == 0 and hello.sni == "cloudflare-ech.com"
    status, hello = tls.parse_stream(_synthetic_hello([(0xFFCE, b"\x00"), (0x0A0A, b"")]))
    assert status == tls.OK and hello is not None and hello.esni and hello.ech is None and hello.sni is None


def test_not_tls_and_malformed() -> None:
    assert tls.parse_stream(b"GET / HTTP/1.1\r\n")[0] == tls.NOT_TLS
    broken = bytearray(_synthetic_hello([_sni_ext("weixin.qq.com")]))
    broken[-20] = 0xFF  # SNI entry length beyond the extension
    assert tls.parse_stream(bytes(broken))[0] == tls.MALFORMED


# -- HTTP, DNS ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_head", "host"),
    [
        (b"GET / HTTP/1.1\r\nHost: Dl.Kaspersky.com:80\r\nAccept: */*\r\n\r\n", "dl.kaspersky.com"),
        (b"CONNECT weixin.qq.com:443 HTTP/1.1\r\nHost: weixin.qq.com:443\r\n\r\n", "weixin.qq.com"),
        (b"GET http://user@Wx.QQ.com:8080/a?b HTTP/1.1\r\nHost: proxy\r\n\r\n", "wx.qq.com"),
        (b"POST /x HTTP/1.1\r\nhost:[2001:db8::1]:80\r\n\r\n", "2001:db8::1"),
    ],
)
def test_http_hosts(request_head: bytes, host: str) -> None:
    assert http.parse_request(request_head)[:2] == (http.OK, host)


def test_http_partial_heads() -> None:
    head = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: weixin.qq.com\r\n\r\n"
    assert http.parse_request(head[:20])[0] == http.NEED_MORE
    assert http.parse_request(b"GE")[0] == http.NEED_MORE
    assert http.parse_request(b"\x17\x03\x03")[0] == http.NOT_HTTP


def test_dns_query_name() -> None:
    assert dnsmsg.query_name(gen.dns_query("Dns.Google", 28)) == ("dns.google", 28)
    tcp_query = len(gen.dns_query("a.b")).to_bytes(2, "big") + gen.dns_query("a.b")
    assert dnsmsg.query_name(tcp_query, tcp=True) == ("a.b", 1)
    response = bytearray(gen.dns_query("a.b"))
    response[2] |= 0x80
    assert dnsmsg.query_name(bytes(response)) is None


# -- flows ----------------------------------------------------------------------------


def test_stream_reorders_and_tolerates_duplicates() -> None:
    stream = Stream(1000)
    stream.add(1010, 1, b"klmnopqrst")
    stream.add(1000, 1, b"abcdefghij")
    stream.add(1005, 1, b"fghij")
    assert stream.contiguous() == b"abcdefghijklmnopqrst"
    assert stream.end_seq == 1020
    wrapped = Stream(0xFFFFFFF0)
    wrapped.add(0xFFFFFFF0, 1, bytes(16))
    wrapped.add(0, 1, b"xy")
    assert wrapped.contiguous() == bytes(16) + b"xy"


def test_table_is_bounded_and_expires() -> None:
    table: Table[int] = Table(size=100, timeout=10.0)
    for i in range(1000):
        table.put(i, i, now=float(i) / 100)
    assert len(table) == 100 and table.evicted == 900
    assert table.get(999, now=10.0) == 999
    table.sweep(now=100.0)
    assert len(table) == 0


# -- detection on frames --------------------------------------------------------------


def test_split_hello_out_of_order_is_caught(config) -> None:  # type: ignore[no-untyped-def]
    engine, found = engine_for(config)
    hello = gen.client_hello("a.weixin.qq.com")
    pieces = [(i, hello[i : i + 76]) for i in range(0, len(hello), 76)]
    first, rest = pieces[0], pieces[1:]
    random.Random(1).shuffle(rest)
    segments = [first, *rest, rest[0]]  # and one duplicate
    feed(engine, *(gen.tcp(CLIENT, SERVER, 40000, 443, 5000 + off, 9, 0x18, data) for off, data in segments))
    assert [(d.stage, d.name, d.rule.list_name) for d in found] == [("sni", "a.weixin.qq.com", "wechat")]
    assert found[0].end_seq == 5000 + len(hello)
    assert found[0].rule.action == "monitor"  # not enforcing


def test_label_boundaries_and_allow_carve_out(config) -> None:  # type: ignore[no-untyped-def]
    engine, found = engine_for(config, enforcing=True)
    for port, name in enumerate(["notweixin.qq.com", "work.weixin.qq.com", "x.weixin.qq.com", "www.example.org"]):
        feed(engine, gen.tcp(CLIENT, SERVER, 41000 + port, 443, 1, 1, 0x18, gen.client_hello(name)))
    assert [(d.name, d.rule.action) for d in found] == [("x.weixin.qq.com", "block")]


def test_ipv6_vlan_http_and_quic(config) -> None:  # type: ignore[no-untyped-def]
    engine, found = engine_for(config)
    ip6 = gen.tcp(CLIENT6, SERVER6, 42000, 443, 1, 1, 0x18, gen.client_hello("www.kaspersky.com"))
    frame = gen.ether(ip6)
    tagged = frame[:12] + b"\x81\x00\x00\x0a" + frame[12:]  # VLAN 10
    pkt = packet.decode(tagged, packet.LINK_ETHERNET, 1.0)
    assert pkt is not None
    engine.handle(pkt)
    feed(
        engine,
        gen.tcp(CLIENT, SERVER, 42001, 80, 1, 1, 0x18, b"GET / HTTP/1.1\r\nHost: dl.kaspersky.com\r\n\r\n"),
    )
    for datagram in gen.quic_initials("weixin.qq.com", "v2", big=True):
        feed(engine, gen.udp(CLIENT, SERVER, 42002, 443, datagram))
    assert [(d.stage, d.name, d.client_ip) for d in found] == [
        ("sni", "www.kaspersky.com", "fd00:9::2"),
        ("http-host", "dl.kaspersky.com", "10.9.0.2"),
        ("quic", "weixin.qq.com", "10.9.0.2"),
    ]
    assert found[0].mac == "02:00:00:00:00:01" and found[2].version == quic.V2


def test_foreign_dns_dot_doq_and_doh(config) -> None:  # type: ignore[no-untyped-def]
    engine, found = engine_for(config, enforcing=True)
    feed(
        engine,
        gen.udp(CLIENT, gen.ip4(RESOLVER), 43000, 53, gen.dns_query("ok.example.org")),  # netblock itself
        gen.udp(CLIENT, gen.ip4("203.0.113.9"), 43001, 53, gen.dns_query("weixin.qq.com")),
        gen.tcp(
            CLIENT,
            gen.ip4("203.0.113.9"),
            43002,
            53,
            1,
            1,
            0x18,
            len(gen.dns_query("x.org")).to_bytes(2, "big") + gen.dns_query("x.org"),
        ),
        gen.tcp(CLIENT, gen.ip4("203.0.113.9"), 43003, 853, 77, 0, 0x02),  # DoT SYN
        gen.tcp(CLIENT, gen.ip4("203.0.113.9"), 43003, 853, 77, 0, 0x02),  # its retransmission
        gen.udp(CLIENT, gen.ip4("203.0.113.9"), 43004, 853, b"\xc0" + bytes(40)),  # DoQ
        gen.tcp(CLIENT, SERVER, 43005, 443, 1, 1, 0x18, gen.client_hello("dns.google")),  # DoH by name
        gen.tcp(CLIENT, gen.ip4("9.9.9.9"), 43006, 443, 1, 0, 0x02),  # DoH by address
    )
    got = [(d.stage, d.name, d.protocol, d.rule.action) for d in found]
    assert got == [
        ("dns-bypass", "weixin.qq.com", "udp", "block"),
        ("dns-bypass", "x.org", "tcp", "block"),
        ("dot", "203.0.113.9", "tcp", "block"),
        ("dot", "203.0.113.9", "udp", "block"),
        ("doh", "dns.google", "tcp", "block"),
        ("doh", "9.9.9.9", "tcp", "block"),
    ]
    assert found[0].rule.list_name == "inspector" and found[4].rule.list_name == "doh-resolvers"


def test_blocked_network_syn(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "ranges.yaml").write_text("name: ranges\naction: block\nnetworks: [192.0.2.0/24, 2001:db8:77::/48]\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"policy: {{lists: [{lists}/*.yaml], watch: false}}\ninspector: {{doh_list: ''}}\n")
    engine, found = engine_for(load_config(cfg), enforcing=True)
    feed(
        engine,
        gen.tcp(CLIENT, gen.ip4("192.0.2.55"), 44000, 8080, 1, 0, 0x02),
        gen.udp(CLIENT6, gen.ip4("2001:db8:77::1"), 44001, 5000, b"x"),
        gen.tcp(CLIENT, gen.ip4("192.0.3.1"), 44002, 8080, 1, 0, 0x02),
    )
    assert [(d.stage, d.name, d.rule.pattern) for d in found] == [
        ("ip", "192.0.2.55", "192.0.2.0/24"),
        ("ip", "2001:db8:77::1", "2001:db8:77::/48"),
    ]


def test_ech_and_missing_sni_are_noted(config) -> None:  # type: ignore[no-untyped-def]
    engine, found = engine_for(config)
    feed(
        engine,
        gen.tcp(CLIENT, SERVER, 45000, 443, 1, 1, 0x18, gen.client_hello(None)),
        gen.tcp(
            CLIENT,
            SERVER,
            45001,
            443,
            1,
            1,
            0x18,
            _synthetic_hello([_sni_ext("cloudflare-ech.com"), (0xFE0D, b"\x00")]),
        ),
    )
    assert found == [] and engine.notes["no-sni"] == 1 and engine.notes["ech"] == 1


# -- fuzzing: no input raises ----------------------------------------------------------

_HELLO = gen.client_hello("weixin.qq.com")
_QUIC = gen.quic_initials("weixin.qq.com")[0]


def _mutate(seed: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(0, 8))):
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    return bytes(buf[:cut]) if data.draw(st.booleans()) else bytes(buf)


@FUZZ
@given(st.data())
def test_fuzz_tls(data: st.DataObject) -> None:
    mutated = _mutate(_HELLO, data)
    assert tls.parse_stream(mutated)[0] in (tls.OK, tls.NEED_MORE, tls.NOT_TLS, tls.MALFORMED)
    tls.parse_handshake(mutated[5:])


@FUZZ
@given(st.data())
def test_fuzz_quic(data: st.DataObject) -> None:
    mutated = _mutate(_QUIC, data)
    initials, _ = quic.decrypt_initials(mutated, quic.KeyCache(4))
    for initial in initials:
        quic.crypto_frames(initial.frames)
    quic.crypto_frames(mutated)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_http_dns_frames(raw: bytes) -> None:
    http.parse_request(raw)
    http.parse_request(b"GET " + raw)
    dnsmsg.query_name(raw)
    dnsmsg.query_name(raw, tcp=True)
    for linktype in (
        packet.LINK_ETHERNET,
        packet.LINK_RAW,
        packet.LINK_SLL,
        packet.LINK_SLL2,
        packet.LINK_NFLOG,
        packet.LINK_NULL,
    ):
        packet.decode(raw, linktype)


_FRAMES = [
    gen.ether(gen.tcp(CLIENT, SERVER, 46000, 443, 1, 1, 0x18, _HELLO)),
    gen.ether(gen.udp(CLIENT, SERVER, 46001, 443, _QUIC)),
    gen.ether(gen.udp(CLIENT, SERVER, 46002, 53, gen.dns_query("a.example"))),
    gen.ether(gen.tcp(CLIENT6, SERVER6, 46003, 80, 1, 1, 0x18, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")),
]


@FUZZ
@given(st.data())
def test_fuzz_engine_frames(config, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    engine, _found = engine_for(config, enforcing=True)
    for _ in range(3):
        frame = _mutate(data.draw(st.sampled_from(_FRAMES)), data)
        pkt = packet.decode(frame, packet.LINK_ETHERNET, 1.0)
        if pkt is not None:
            engine.handle(pkt)


# -- offline mixed capture, CLI --------------------------------------------------------


def expected_stages(frames: list[bytes]) -> dict[str, int]:
    """What the mix must yield, read off the frames themselves (all IPv4 without options)."""
    out = {"sni": 0, "quic": 0, "dns-bypass": 0}
    for i, frame in enumerate(frames):
        proto, dport = frame[23], int.from_bytes(frame[36:38], "big")
        if proto == 6 and b"weixin.qq.com" in frame:  # the blocked hello: its SNI is plain text
            out["sni"] += 1
        elif proto == 17 and dport == 443 and frame[42] & 0xC0 == 0xC0:
            out["quic"] += i % 2  # mixed_frames alternates initials[i % 2]; [1] names weixin.qq.com
        elif proto == 17 and dport == 53:  # to 10.0.0.53, not the configured resolver
            out["dns-bypass"] += 1
    return out


def test_offline_mixed_capture_inspects_every_packet(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every frame of the gateway-like mix is decoded and inspected, and each blocked name and
    foreign DNS query comes out exactly once. Its rate target is bench/inspector.py's."""
    frames = gen.mixed_frames(60_000)
    path = tmp_path / "mix.pcap"
    gen.write_pcap(path, frames)
    inspector = Inspector(config, ())
    inspector.events = inspector.sink.events = None
    summary = inspector.run_pcap(str(path))
    print(f"offline mixed capture: {summary['pps']:,} packets/s (informational; `make bench` checks the target)")
    assert summary["frames"] == summary["decoded"] == summary["packets"] == len(frames)
    expected = expected_stages(frames)
    assert min(expected.values()) > 100  # the mix holds every kind, so the equality below means something
    assert summary["by_stage"] == expected
    assert summary["detections"] == sum(expected.values())
    assert not any(summary["notes"].values()), summary["notes"]  # no ECH, no missing SNI, all decrypted


def test_cli_pcap_json_and_events(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    frames = [gen.ether(gen.tcp(CLIENT, SERVER, 47000, 443, 1, 1, 0x18, gen.client_hello("weixin.qq.com")))]
    gen.write_pcap(tmp_path / "one.pcap", frames)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "netblock.inspect.cli",
            "inspect",
            "-c",
            str(cfg),
            "--pcap",
            str(tmp_path / "one.pcap"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["name"] == "weixin.qq.com" and lines[0]["stage"] == "sni"
    assert lines[-1]["summary"]["detections"] == 1
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[0]["client"]["ip"] == "10.9.0.2" and events[0]["netblock"]["stage"] == "sni"
    assert events[0]["client"]["mac"] == "02-00-00-00-00-01"


def test_cli_bad_doh_list_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "doh.yaml"
    bad.write_text("name: doh\ndomains:\n  - 'not a name!'\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"policy: {{lists: [{REPO}/blocklists/*.yaml], watch: false}}\ninspector: {{doh_list: {bad}}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "netblock.inspect.cli", "inspect", "-c", str(cfg), "--pcap", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"{bad}:3" in done.stderr


def test_reload_swaps_lists_and_keeps_them_on_errors(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    vendor = lists / "vendor.yaml"
    vendor.write_text("name: vendor\ndomains: [old.example]\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"policy: {{lists: [{lists}/*.yaml], watch: false}}\nevents: {{enabled: false}}\ninspector: {{doh_list: ''}}\n"
    )
    inspector = Inspector(load_config(cfg), (), keep=10)

    def hello(name: str, port: int) -> None:
        pkt = packet.decode(gen.ether(gen.tcp(CLIENT, SERVER, port, 443, 1, 1, 0x18, gen.client_hello(name))))
        assert pkt is not None
        inspector.engine.handle(pkt)

    hello("new.example", 48000)
    vendor.write_text("name: vendor\ndomains: [old.example, new.example]\n")
    assert inspector.reload()
    hello("new.example", 48001)
    vendor.write_text("name: vendor\ndomains: ['bad name!']\n")
    assert not inspector.reload()  # refused: the last good lists stay
    hello("new.example", 48002)
    assert [(d.name, d.pkt.sport) for d in inspector.sink.recent] == [
        ("new.example", 48001),
        ("new.example", 48002),
    ]
    assert inspector.stats.reload_successes == 1 and inspector.stats.reload_failures == 1


def test_notes_are_counted_as_metrics(config) -> None:  # type: ignore[no-untyped-def]
    inspector = Inspector(config, ())
    inspector.events = inspector.sink.events = None
    pkt = packet.decode(gen.ether(gen.tcp(CLIENT, SERVER, 49000, 443, 1, 1, 0x18, gen.client_hello(None))))
    assert pkt is not None
    inspector.engine.handle(pkt)
    assert inspector.stats.inspector_detections == {("no-sni", "inspector"): 1}


def test_reset_segments_have_valid_checksums() -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    from netblock.inspect.rst import tcp_segment

    raw4 = tcp_segment(CLIENT, SERVER, 40000, 443, 0xFFFFFFFF + 5, 77, 0x14)
    packet4 = IP(raw4)
    assert packet4[TCP].seq == 4 and packet4[TCP].ack == 77 and packet4[TCP].flags == "RA"
    fresh = IP(raw4)
    del fresh[TCP].chksum
    assert IP(bytes(fresh))[TCP].chksum == packet4[TCP].chksum
    raw6 = tcp_segment(CLIENT6, SERVER6, 40000, 443, 1, 2, 0x04)
    packet6 = IPv6(raw6)
    fresh6 = IPv6(raw6)
    del fresh6[TCP].chksum
    assert IPv6(bytes(fresh6))[TCP].chksum == packet6[TCP].chksum and packet6[TCP].flags == "R"


def test_follow_up_resets_for_later_segments_of_a_killed_flow(config) -> None:  # type: ignore[no-untyped-def]
    engine, found = engine_for(config, enforcing=True)
    followed: list[int] = []
    engine.on_killed = lambda pkt: followed.append(pkt.seq)
    hello = gen.client_hello("weixin.qq.com")
    feed(engine, gen.tcp(CLIENT, SERVER, 50000, 443, 100, 9, 0x18, hello))
    assert len(found) == 1
    engine.kill(found[0].pkt)
    feed(engine, gen.tcp(CLIENT, SERVER, 50000, 443, 100 + len(hello), 900, 0x18, b"\x14\x03\x03\x00\x01\x01"))
    feed(engine, gen.tcp(CLIENT, SERVER, 50001, 443, 5, 9, 0x18, b"\x17\x03\x03\x00\x01\x01"))  # another flow
    assert followed == [100 + len(hello)]


def test_doh_address_only_on_443_and_once_per_flow(config) -> None:  # type: ignore[no-untyped-def]
    engine, found = engine_for(config, enforcing=True)
    google = gen.ip4("8.8.8.8")
    query = gen.dns_query("weixin.qq.com")
    feed(
        engine,
        gen.tcp(CLIENT, google, 51000, 53, 1, 0, 0x02),  # TCP DNS SYN: not DoH
        gen.tcp(CLIENT, google, 51000, 53, 2, 1, 0x18, len(query).to_bytes(2, "big") + query),
        gen.udp(CLIENT, google, 51001, 443, b"\x40" + bytes(30)),  # short UDP 443 datagram: DoH/3 traffic
        gen.udp(CLIENT, google, 51001, 443, b"\x40" + bytes(30)),
    )
    assert [(d.stage, d.protocol, d.pkt.dport) for d in found] == [("dns-bypass", "tcp", 53), ("doh", "udp", 443)]


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    base = [sys.executable, "-m", "netblock.inspect.cli", "inspect", "-c", str(cfg)]
    bad_mode = subprocess.run(
        [*base, "--interface", "lo", "--enforce", "rst,drop"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad_mode.returncode == 1 and "unknown mode 'drop'" in bad_mode.stderr
    no_interface = subprocess.run(base, capture_output=True, text=True, timeout=60, check=False)
    assert no_interface.returncode == 1 and "no interface" in no_interface.stderr
    missing = subprocess.run(
        [*base, "--interface", "nbi-no-such-if0"], capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 1 and "netblock inspect:" in missing.stderr
