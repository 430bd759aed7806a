"""Malformed queries (reference/reliability.md §2): the 19 cases as raw bytes to the real
server, checked against the documented answer and against a real unbound 1.17 side by side,
then a bounded random-packet blast after which the server still answers."""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from test_reliability_tools import (
    QNAME,
    Unbound,
    exchange,
    framed,
    header,
    metric,
    opt,
    question,
    rcode_of,
    scrape,
    tcp_frames,
    upstream_queries,
    wire_name,
)

from harness import Netblock, Nsd, wait_for

FORMERR, NOTIMP, REFUSED, BADVERS = 1, 4, 5, 16
BLOCKED_Q = question(wire_name("weixin.qq.com"))

# name -> (query bytes, expected full rcode or None for no answer)
CASES: dict[str, tuple[bytes, int | None]] = {
    "valid": (header() + question(), 0),
    "valid-edns": (header(ar=1) + question() + opt(), 0),
    "truncated-header": (header()[:5], None),
    "header-only-qdcount0": (header(qd=0), FORMERR),
    # A benign first question hiding a blocked second one: refused as a whole.
    "qdcount2": (header(qd=2) + question() + BLOCKED_Q, FORMERR),
    "qdcount1-no-question": (header(qd=1), FORMERR),
    "qr-set": (header(flags=0x8100) + question(wire_name("qr-reflect.example.test")), None),
    "opcode15": (header(flags=0x7900) + question(), NOTIMP),
    "pointer-loop": (header() + b"\xc0\x0c" + struct.pack("!HH", 1, 1), FORMERR),
    "label-64": (header() + b"\x40" + b"a" * 64 + b"\x00" + struct.pack("!HH", 1, 1), FORMERR),
    "name-over-255": (header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00" + struct.pack("!HH", 1, 1), FORMERR),
    "two-opt": (header(ar=2) + question() + opt() + opt(), FORMERR),
    "edns-version-1": (header(ar=1) + question() + opt(version=1), BADVERS),
    "edns-bufsize-100": (header(ar=1) + question() + opt(udp_size=100), 0),
    "opt-option-overrun": (header(ar=1) + question() + opt(options=struct.pack("!HH", 10, 100), rdlength=4),
                           0),
    "trailing-garbage": (header() + question() + b"\xde\xad\xbe\xef" * 4, 0),
    "qtype-any": (header() + question(qtype=255), 0),
    "qclass-ch": (header() + question(qclass=3), REFUSED),
    "axfr-udp": (header() + question(qtype=252), REFUSED),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: Nsd) -> Iterator[Netblock]:
    # Rate limiting off: the blast below is one client sending 20,000 packets.
    config = {"access": {"rate_limit": {"queries": 0}}}
    with Netblock(tmp_path_factory.mktemp("netblock"), [upstream.address], config=config) as nb:
        yield nb


def _check_reply(query: bytes, answer: bytes, expected: int) -> None:
    assert answer[:2] == query[:2], "ID not echoed"
    assert answer[2] & 0x80, "QR not set"
    assert not answer[2] & 0x02, "TC set"
    assert answer[4:6] == query[4:6], "qdcount not echoed"
    assert rcode_of(answer) == expected, (rcode_of(answer), expected)


def _alive(server: Netblock) -> None:
    assert server.proc is not None and server.proc.poll() is None
    response = server.query("www.example.test", "A")
    assert response.rcode() == dns.rcode.NOERROR and response.answer


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_case_answered_like_unbound(server: Netblock, unbound: Unbound, upstream: Nsd,
                                              case: str) -> None:
    query, expected = CASES[case]
    asked = upstream_queries(upstream, "A") if case == "qr-set" else 0
    ours = exchange(server.port, query, timeout=1.0 if expected is None else 3.0)
    theirs = exchange(unbound.port, query, timeout=1.0 if expected is None else 3.0)
    if expected is None:
        assert ours is None, f"answered {ours!r}"
        assert theirs is None  # the anchor agrees
    else:
        assert ours is not None, "no answer"
        _check_reply(query, ours, expected)
        assert theirs is not None
        _check_reply(query, theirs, expected)  # the reference table still describes unbound
    if case == "qr-set":
        time.sleep(0.2)
        assert upstream_queries(upstream, "A") == asked, "a QR=1 packet was forwarded upstream (reflection)"
    if case == "edns-version-1":
        message = dns.message.from_wire(ours)
        assert message.edns == 0 and message.rcode() == dns.rcode.BADVERS
        assert ours[3] & 0x0F == 0  # header rcode NOERROR, extended bits in the OPT
    _alive(server)


@pytest.mark.parametrize("case", ["valid", "header-only-qdcount0", "qdcount2", "opcode15", "pointer-loop",
                                  "edns-version-1", "axfr-udp"])
def test_malformed_case_over_tcp(server: Netblock, case: str) -> None:
    query, expected = CASES[case]
    if case == "axfr-udp":
        expected = REFUSED  # we do not serve transfers on TCP either
    (answer,) = tcp_frames(server.port, [framed(query)], expect=1, timeout=3)
    _check_reply(query, answer, expected)  # type: ignore[arg-type]


def test_tcp_garbage_with_correct_prefix_keeps_connection(server: Netblock) -> None:
    """Knot's cases: garbage, a message shorter than a header and trailing garbage inside a
    correct prefix; the connection stays and the good queries are answered."""
    good = header(qid=0x4242) + question()
    frames = [framed(b"\xff" * 40), framed(b"\x00\x01\x02"), framed(good)]
    frames += [framed(header(qid=0x5000 + i) + question() + b"garbage") for i in range(10)]
    answers = tcp_frames(server.port, frames, expect=11, timeout=5)
    assert len(answers) == 11  # the two bad messages are dropped silently
    by_id = {a[:2]: a for a in answers}
    assert struct.pack("!H", 0x4242) in by_id
    assert all(struct.pack("!H", 0x5000 + i) in by_id for i in range(10)), "trailing garbage: not 10/10"
    assert rcode_of(by_id[struct.pack("!H", 0x4242)]) == 0


def _mutants(rng: random.Random, count: int) -> Iterator[bytes]:
    seeds = [data for data, _ in CASES.values()] + [header() + BLOCKED_Q, header(ar=1) + BLOCKED_Q + opt()]
    for i in range(count):
        kind = i % 4
        if kind == 0:  # random bytes, up to 600
            yield rng.randbytes(rng.randrange(0, 600))
        elif kind == 1:  # random bytes behind a plausible query header
            yield header(qid=rng.randrange(65536), ar=rng.randrange(2)) + rng.randbytes(rng.randrange(0, 300))
        else:  # flipped, cut, duplicated or inserted bytes in a real query
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                op = rng.randrange(4)
                if op == 0 and data:
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                elif op == 1 and data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
                elif op == 2:
                    del data[rng.randrange(len(data) + 1):]
                else:
                    at = rng.randrange(len(data) + 1)
                    data[at:at] = rng.randbytes(rng.randrange(1, 20))
            if len(data) > 3:
                data[2] &= 0x7F  # mostly queries: exercise the paths past the QR check
            yield bytes(data)


def _backlog(port: int) -> int:
    """Bytes waiting in the server's UDP receive queue on 127.0.0.1 (/proc/net/udp)."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}":
            return int(fields[4].split(":")[1], 16)
    return 0


def test_random_packet_blast_leaves_server_answering(server: Netblock) -> None:
    before = scrape(server.metrics_port)
    rng = random.Random(20261128)
    sent = 0
    deadline = time.monotonic() + 60
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", server.port))
        for packet in _mutants(rng, 20_000):
            try:
                sock.send(packet)
            except (BlockingIOError, ConnectionRefusedError):
                pass
            sent += 1
            if sent % 200 == 0:  # drain answers and let the server breathe: a blast, not a flood
                while True:
                    try:
                        sock.recv(65535)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                # Until it has read what we sent: on a loaded machine a fixed pause let the
                # socket overflow, and the packets counted below never reached the server.
                wait_for(lambda: _backlog(server.port) == 0, 10, 0.002)
            assert time.monotonic() < deadline
    # The same over TCP: 500 random framed messages on 5 connections.
    for _ in range(5):
        tcp_frames(server.port, [framed(p) for p in _mutants(rng, 100)], expect=0, timeout=0.5)
    assert sent == 20_000
    time.sleep(0.5)
    _alive(server)
    assert server.query("www.example.test", "A", tcp=True).rcode() == dns.rcode.NOERROR
    after = scrape(server.metrics_port)
    udp = 'protocol="udp"'
    received = metric(after, "netblock_queries_total", udp) - metric(before, "netblock_queries_total", udp)
    assert received > 15_000  # the packets really reached the server
    assert metric(after, "netblock_dropped_total", 'reason="malformed"') > metric(
        before, "netblock_dropped_total", 'reason="malformed"')
    assert "Traceback" not in server.log()
    # Still blocks after the storm.
    assert server.query("weixin.qq.com", "A").rcode() == dns.rcode.NXDOMAIN


def test_qdcount2_hiding_blocked_name_never_reaches_upstream(server: Netblock, upstream: Nsd) -> None:
    asked = upstream_queries(upstream, "A")
    query = header(qd=2) + question(wire_name("weixin.qq.com")) + question(QNAME)
    answer = exchange(server.port, query)
    assert answer is not None and rcode_of(answer) == FORMERR
    time.sleep(0.2)
    assert upstream_queries(upstream, "A") == asked
