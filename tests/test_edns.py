"""EDNS and header compliance: ISC genreport's checks (reference/reliability.md §4) in
recursive mode (-R: RD set), as dnspython queries.

Forwarded names: netblock forwards to a real unbound, and every check must give what
unbound itself gives (rcode, opcode, flags, OPT version, EDNS flags and options, answer).
Blocked names: only the policy answer may differ from a normal answer (`nxdomain`); never
one of genreport's problem tags: aa, noopt, badversion, echoed, mbz, z, toobig."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from test_reliability_tools import Unbound

from harness import Netblock


@dataclass(frozen=True)
class Check:
    flags: int = 0  # header flags on top of RD
    edns: int | None = None  # EDNS version, None: no OPT
    dnssec: bool = False
    ednsflags: int = 0  # besides DO
    payload: int = 1232
    options: tuple[dns.edns.Option, ...] = ()
    qtype: str = "SOA"
    tcp: bool = False
    opcode: int = 0
    zflag: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


UNKNOWN_OPTION = dns.edns.GenericOption(100, b"")
OPTLIST = (dns.edns.GenericOption(dns.edns.NSID, b""), dns.edns.ECSOption("0.0.0.0", 0),
           dns.edns.GenericOption(9, b""), dns.edns.CookieOption(b"\x01" * 8, b""))

CHECKS = {
    # the EDNS set
    "dns": Check(),
    "edns": Check(edns=0),
    "edns1": Check(edns=1),
    "edns@512": Check(edns=0, dnssec=True, payload=512, qtype="DNSKEY"),
    "ednsopt": Check(edns=0, options=(UNKNOWN_OPTION,)),
    "edns1opt": Check(edns=1, options=(UNKNOWN_OPTION,)),
    "do": Check(edns=0, dnssec=True),
    "ednsflags": Check(edns=0, ednsflags=0x0080),
    "optlist": Check(edns=0, options=OPTLIST),
    "signed": Check(edns=0, dnssec=True),
    "ednstcp": Check(edns=0, tcp=True),
    # the FULL set adds
    "aa": Check(flags=dns.flags.AA),
    "ad": Check(flags=dns.flags.AD),
    "cd": Check(flags=dns.flags.CD),
    "ra": Check(flags=dns.flags.RA),
    "rd": Check(),
    "tc": Check(flags=dns.flags.TC),
    "zflag": Check(zflag=True),
    "opcode": Check(opcode=15),
    "opcodeflg": Check(opcode=15, flags=dns.flags.TC | dns.flags.RA | dns.flags.CD | dns.flags.AD, zflag=True),
    "type666": Check(qtype="TYPE666"),
    "tcp": Check(tcp=True),
    "docd": Check(edns=0, dnssec=True, flags=dns.flags.CD),
    "edns1do": Check(edns=1, dnssec=True),
}
HEADER_ERRORS = {"tc", "opcode", "opcodeflg"}  # answered before the name is looked at


def ask(check: Check, name: str, port: int) -> dns.message.Message | bytes:
    query = dns.message.make_query(name, check.qtype, use_edns=check.edns if check.edns is not None else False,
                                   payload=check.payload, options=list(check.options), want_dnssec=check.dnssec)
    query.flags = dns.flags.RD | check.flags
    if check.edns is not None:
        query.ednsflags |= check.ednsflags
    query.set_opcode(dns.opcode.Opcode.make(check.opcode) if check.opcode else dns.opcode.QUERY)
    wire = bytearray(query.to_wire())
    if check.zflag:
        wire[3] |= 0x40
    if check.tcp:
        import socket
        import struct

        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            size = struct.unpack("!H", _recv(sock, 2))[0]
            raw = _recv(sock, size)
    else:
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(bytes(wire), ("127.0.0.1", port))
            raw = sock.recv(65535)
    if check.edns is not None and not check.tcp:
        assert len(raw) <= max(check.payload, 512), "toobig"
    try:
        return dns.message.from_wire(raw)
    except dns.exception.DNSException:
        return raw  # header-level errors echo what dnspython may refuse (opcode 15)


def _recv(sock: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def signature(reply: dns.message.Message | bytes) -> dict[str, Any]:
    """What genreport looks at."""
    if isinstance(reply, bytes):
        return {"header": reply[2:4].hex(), "counts": reply[4:12].hex()}
    return {
        "rcode": dns.rcode.to_text(reply.rcode()),
        "opcode": reply.opcode(),
        "flags": dns.flags.to_text(reply.flags),
        "z": bool(reply.flags & 0x0040),
        "edns": reply.edns,
        "ednsflags": reply.ednsflags if reply.edns >= 0 else None,
        "options": sorted(int(o.otype) for o in reply.options),
        "answer": sorted(f"{r.name} {dns.rdatatype.to_text(r.rdtype)} {sorted(x.to_text() for x in r)}"
                         for r in reply.answer),
        "authority_types": sorted(dns.rdatatype.to_text(r.rdtype) for r in reply.authority),
    }


@pytest.fixture(scope="module")
def forwarder(tmp_path_factory: pytest.TempPathFactory, unbound: Unbound) -> Iterator[Netblock]:
    config = {"access": {"rate_limit": {"queries": 0}}}
    with Netblock(tmp_path_factory.mktemp("nb"), [f"127.0.0.1:{unbound.port}"], config=config) as server:
        yield server


@pytest.mark.parametrize("check", list(CHECKS))
def test_forwarded_answer_matches_unbound(forwarder: Netblock, unbound: Unbound, check: str) -> None:
    ask(CHECKS[check], "example.test", unbound.port)  # warm unbound's cache: both answer from it
    theirs = signature(ask(CHECKS[check], "example.test", unbound.port))
    ours = signature(ask(CHECKS[check], "example.test", forwarder.port))
    assert ours == theirs


@pytest.mark.parametrize("check", list(CHECKS))
def test_blocked_answer_has_no_compliance_faults(forwarder: Netblock, unbound: Unbound, check: str) -> None:
    spec = CHECKS[check]
    reply = ask(spec, "weixin.qq.com", forwarder.port)
    if check in HEADER_ERRORS:  # the same as unbound's answer, whatever the name
        assert signature(reply) == signature(ask(spec, "weixin.qq.com", unbound.port))
        return
    assert isinstance(reply, dns.message.Message)
    problems = []
    flags = reply.flags
    if flags & dns.flags.AA:
        problems.append("aa")
    if flags & 0x0040:
        problems.append("z")
    if flags & (dns.flags.TC | dns.flags.AD):
        problems.append("flags")
    if not flags & dns.flags.QR or not flags & dns.flags.RD or not flags & dns.flags.RA:
        problems.append("qr/rd/ra")
    if bool(flags & dns.flags.CD) != bool(spec.flags & dns.flags.CD):
        problems.append("cd not echoed")
    if spec.edns is None and reply.edns >= 0:
        problems.append("unexpected opt")
    if spec.edns is not None:
        if reply.edns < 0:
            problems.append("noopt")
        else:
            if reply.edns != 0:
                problems.append("badversion")
            if any(int(o.otype) in (100, dns.edns.NSID, dns.edns.ECS, 9, dns.edns.COOKIE) for o in reply.options):
                problems.append("echoed")
            if reply.ednsflags & 0x7FFF:
                problems.append("mbz")
            if bool(reply.ednsflags & dns.flags.DO) != spec.dnssec:
                problems.append("do not echoed")
    expected = dns.rcode.BADVERS if spec.edns == 1 else dns.rcode.NXDOMAIN
    if reply.rcode() != expected:
        problems.append(f"rcode {dns.rcode.to_text(reply.rcode())}")
    if expected == dns.rcode.NXDOMAIN:
        if [r.rdtype for r in reply.authority] != [dns.rdatatype.SOA]:
            problems.append("nosoa")
        if spec.edns is not None:
            codes = [int(o.code) for o in reply.options if isinstance(o, dns.edns.EDEOption)]
            if codes != [dns.edns.EDECode.BLOCKED]:
                problems.append("no EDE 15")
    assert not problems, (problems, reply.to_text())
