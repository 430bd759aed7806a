"""The forwarder end to end: the real server, a real NSD upstream, dig and dnspython."""

from __future__ import annotations

import subprocess
import sys
import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from test_reliability_tools import upstream_queries

from harness import Netblock, Nsd

BLOCKED_SPELLINGS = ["weixin.qq.com", "WeiXin.QQ.com", "a.b.weixin.qq.com", "weixin.qq.com."]
QTYPES = ["A", "AAAA", "HTTPS", "MX", "ANY"]


def _ede(response: dns.message.Message) -> list[dns.edns.EDEOption]:
    return [o for o in response.options if isinstance(o, dns.edns.EDEOption)]


def _assert_policy_answer(response: dns.message.Message, name: str) -> None:
    assert response.rcode() == dns.rcode.NXDOMAIN, response
    assert not response.answer
    soa = response.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name.to_text().lower() == "weixin.qq.com."
    assert soa[0].minimum == 300  # the list's block TTL
    flags = response.flags
    assert flags & dns.flags.QR and flags & dns.flags.RA and flags & dns.flags.RD
    assert not flags & (dns.flags.AA | dns.flags.TC | dns.flags.AD)
    assert response.question[0].name.to_text().lower() == name.lower().rstrip(".") + "."


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("name", BLOCKED_SPELLINGS)
def test_blocked_names_get_policy_answer_with_ede(netblock: Netblock, name: str, qtype: str, tcp: bool) -> None:
    response = netblock.query(name, qtype, tcp=tcp, use_edns=0)
    _assert_policy_answer(response, name)
    (ede,) = _ede(response)
    assert ede.code == dns.edns.EDECode.BLOCKED
    assert ede.text == "blocked by CA-TBS-2023-10-30: wechat (weixin.qq.com)"


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_blocked_without_edns_has_no_opt(netblock: Netblock, tcp: bool) -> None:
    response = netblock.query("weixin.qq.com", "A", tcp=tcp, use_edns=False)
    _assert_policy_answer(response, "weixin.qq.com")
    assert response.edns < 0 and not response.options


def test_question_case_is_echoed(netblock: Netblock) -> None:
    response = netblock.query("WeiXin.QQ.com", "A")
    assert response.question[0].name.to_text() == "WeiXin.QQ.com."


def test_allow_carve_out_under_blocked_zone_is_forwarded(netblock: Netblock) -> None:
    # work.weixin.qq.com is a WeCom carve-out: the upstream's answer comes through.
    response = netblock.query("work.weixin.qq.com", "A")
    assert not _ede(response)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer[0][0].to_text() == "192.0.2.80"
    assert netblock.query("long.weixin.qq.com", "A").rcode() == dns.rcode.NXDOMAIN
    check = subprocess.run([sys.executable, "-m", "netblock", "check", "work.weixin.qq.com", "-c",
                            str(netblock.config_path)], capture_output=True, text=True, timeout=30)
    assert "allowed" in check.stdout


def test_forwarded_answer_matches_upstream(netblock: Netblock, upstream: Nsd) -> None:
    for name, qtype in [("www.example.test", "A"), ("www.example.test", "AAAA"), ("example.test", "MX"),
                        ("txt.example.test", "TXT"), ("chain1.example.test", "A"), ("nothere.example.test", "A")]:
        direct = dns.query.udp(dns.message.make_query(name, qtype), "127.0.0.1", port=upstream.port, timeout=3)
        ours = netblock.query(name, qtype)
        assert ours.rcode() == direct.rcode()
        assert ours.flags == direct.flags | dns.flags.RA
        assert [r.to_text() for r in ours.answer] == [r.to_text() for r in direct.answer]


def test_repeated_query_comes_from_cache_with_decayed_ttl(netblock: Netblock, upstream: Nsd) -> None:
    first = netblock.query("mail.example.test", "TXT")  # a (name, type) nobody asked yet
    asked = upstream_queries(upstream, "TXT")
    time.sleep(1.1)
    second = netblock.query("mail.example.test", "TXT")
    assert upstream_queries(upstream, "TXT") == asked
    assert second.rcode() == first.rcode()
    first_ttl = first.authority[0].ttl if first.authority else first.answer[0].ttl
    second_ttl = second.authority[0].ttl if second.authority else second.answer[0].ttl
    assert second_ttl < first_ttl


def test_positive_cache_hit_decays(netblock: Netblock, upstream: Nsd) -> None:
    first = netblock.query("short.example.test", "A")
    asked = upstream_queries(upstream, "A")
    time.sleep(1.1)
    second = netblock.query("short.example.test", "A")
    assert upstream_queries(upstream, "A") == asked
    assert second.answer[0].to_text().split()[-1] == "192.0.2.30"
    assert second.answer[0].ttl < first.answer[0].ttl <= 30


def test_large_answer_truncated_over_udp_whole_over_tcp(netblock: Netblock) -> None:
    udp = netblock.query("big.example.test", "A", use_edns=False)
    assert udp.flags & dns.flags.TC
    assert not udp.answer
    tcp = netblock.query("big.example.test", "A", tcp=True, use_edns=False)
    assert not tcp.flags & dns.flags.TC
    assert len(tcp.answer[0]) == 120
    edns_udp = netblock.query("big.example.test", "A", use_edns=0, payload=1232)
    assert edns_udp.flags & dns.flags.TC  # 120 A records do not fit 1232 bytes either


def test_dig_retries_truncated_answer_over_tcp(netblock: Netblock) -> None:
    out = netblock.dig("big.example.test", "A", "+noedns", "+noall", "+answer")
    assert out.count("IN\tA\t10.0.") == 120


def test_cname_to_blocked_name_is_blocked(netblock: Netblock) -> None:
    for _ in range(2):  # the upstream answer, then the cached one
        response = netblock.query("cloak.example.test", "A")
        assert response.rcode() == dns.rcode.NXDOMAIN
        assert not response.answer
        assert response.authority[0].name.to_text() == "cloak.example.test."
        (ede,) = _ede(response)
        assert "wechat (weixin.qq.com)" in ede.text
    response = netblock.query("cloak2.example.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert "testnet (blocked.test)" in _ede(response)[0].text


def test_address_inside_blocked_network_is_blocked(netblock: Netblock) -> None:
    response = netblock.query("inside.example.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert "203.0.113.0/24" in _ede(response)[0].text
    outside = netblock.query("outside.example.test", "A")
    assert outside.rcode() == dns.rcode.NOERROR and outside.answer


def test_monitor_mode_resolves_and_check_says_monitored(netblock: Netblock) -> None:
    response = netblock.query("mail.example.test", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer[0].to_text().endswith("192.0.2.25")
    check = subprocess.run([sys.executable, "-m", "netblock", "check", "mail.example.test", "--json", "-c",
                            str(netblock.config_path)], capture_output=True, text=True, timeout=30)
    assert '"decision": "monitored"' in check.stdout
    assert '"list": "testmonitor"' in check.stdout


@pytest.mark.parametrize(("name", "qtype", "rcode", "answer"), [
    ("x.nodata.test", "A", dns.rcode.NOERROR, None),
    ("null.test", "A", dns.rcode.NOERROR, "0.0.0.0"),
    ("null.test", "AAAA", dns.rcode.NOERROR, "::"),
    ("null.test", "MX", dns.rcode.NOERROR, None),
    ("sinkhole.test", "A", dns.rcode.NOERROR, "192.0.2.66"),
    ("sinkhole.test", "AAAA", dns.rcode.NOERROR, "2001:db8::66"),
    ("refused.test", "A", dns.rcode.REFUSED, None),
])
def test_response_modes(netblock: Netblock, name: str, qtype: str, rcode: int, answer: str | None) -> None:
    response = netblock.query(name, qtype)
    assert response.rcode() == rcode
    assert _ede(response)[0].code == dns.edns.EDECode.BLOCKED
    if answer is None:
        assert not response.answer
        if rcode == dns.rcode.NOERROR:
            assert response.authority[0].rdtype == dns.rdatatype.SOA  # NODATA carries the SOA
    else:
        assert response.answer[0][0].to_text() == answer


def test_qdcount_two_with_blocked_second_question_is_formerr(netblock: Netblock) -> None:
    message = dns.message.make_query("www.example.test", "A")
    message.question.append(dns.message.make_query("weixin.qq.com", "A").question[0])
    response = dns.query.udp(message, "127.0.0.1", port=netblock.port, timeout=3, ignore_unexpected=True,
                             one_rr_per_rrset=True)
    assert response.rcode() == dns.rcode.FORMERR


def test_ipv6_listener(netblock: Netblock) -> None:
    message = dns.message.make_query("weixin.qq.com", "A", use_edns=0)
    response = dns.query.udp(message, "::1", port=netblock.port, timeout=3)
    assert response.rcode() == dns.rcode.NXDOMAIN
    response = dns.query.tcp(dns.message.make_query("www.example.test", "AAAA"), "::1", port=netblock.port,
                             timeout=3)
    assert response.answer[0][0].to_text() == "2001:db8::10"


def test_tcp_several_queries_on_one_connection(netblock: Netblock) -> None:
    import socket
    import struct

    names = ["weixin.qq.com", "www.example.test", "chain1.example.test", "kaspersky.com", "txt.example.test"]
    messages = [dns.message.make_query(n, "A", id=1000 + i) for i, n in enumerate(names)]
    with socket.create_connection(("127.0.0.1", netblock.port), timeout=5) as sock:
        # Pipelined: all queries first, then read; answers may come in any order.
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (m.to_wire() for m in messages)))
        answers = {}
        buffer = b""
        while len(answers) < len(messages):
            while len(buffer) < 2 or len(buffer) < 2 + struct.unpack("!H", buffer[:2])[0]:
                chunk = sock.recv(65535)
                assert chunk, "connection closed early"
                buffer += chunk
            length = struct.unpack("!H", buffer[:2])[0]
            response = dns.message.from_wire(buffer[2 : 2 + length])
            buffer = buffer[2 + length :]
            answers[response.id] = response
    for i, name in enumerate(names):
        response = answers[1000 + i]
        assert response.question[0].name.to_text() == name + "."
        blocked = name in ("weixin.qq.com", "kaspersky.com")
        assert response.rcode() == (dns.rcode.NXDOMAIN if blocked else dns.rcode.NOERROR)


def _metric(netblock: Netblock, name: str, labels: str) -> float:
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{netblock.metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(part in match.group(1) for part in labels.split(",")):
            total += float(match.group(2))
    return total


@pytest.mark.parametrize(("name", "labels"), [
    ("repeat.weixin.qq.com", 'list="wechat",stage="query",action="block"'),
    ("cloak.example.test", 'list="wechat",stage="cname",action="block"'),
    ("mail.example.test", 'list="testmonitor",stage="query",action="monitor"'),
])
def test_every_repeated_attempt_is_counted(netblock: Netblock, name: str, labels: str) -> None:
    """Identical queries are answered from remembered bytes, yet each one is an attempt."""
    netblock.query(name, "A")  # may go upstream; the next ones are replays
    before = _metric(netblock, "netblock_blocked_total", labels)
    message = dns.message.make_query(name, "A", use_edns=0)
    for _ in range(25):
        dns.query.udp(message, "127.0.0.1", port=netblock.port, timeout=3)
    assert _metric(netblock, "netblock_blocked_total", labels) - before == 25
