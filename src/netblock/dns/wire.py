"""DNS messages on raw bytes: query parsing, answer scanning and answer builders.

A general DNS library costs about ten times the whole fast path per query
(reference/performance.md), so queries are parsed and blocked answers built here by hand.
Malformed queries get what unbound 1.17 gives them (reference/reliability.md §2): a
silent drop, or the query echoed back with QR and an error rcode.
"""

from __future__ import annotations

import struct

from netblock.policy.rule import Rule, ede_text

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, OPT, IXFR, AXFR, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 41, 251, 252, 255
CLASS_IN = 1

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode: upper 8 bits in OPT, lower 4 in the header

EDE_OTHER, EDE_STALE_ANSWER, EDE_BLOCKED, EDE_PROHIBITED = 0, 3, 15, 18
EDE_NETWORK_ERROR, EDE_NO_REACHABLE_AUTHORITY = 23, 22

OPT_ECS, OPT_COOKIE, OPT_EDE = 8, 10, 15
OPT_MAC_RAW, OPT_MAC_TEXT = 65001, 65073  # dnsmasq add-mac; Pi-hole's text form

DROP = -1  # parse_query result: send nothing

_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_HHHH = struct.Struct("!HHHH")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength


class Query:
    """A parsed query. `qname` is lower-cased wire form; `question` is as the client sent it."""

    __slots__ = ("data", "do", "ecs", "edns", "edns_version", "flags", "mac", "qclass", "qname",
                 "qtype", "question", "udp_size")

    def __init__(self, data: bytes, flags: int, qname: bytes, question: bytes, qtype: int, qclass: int) -> None:
        self.data = data
        self.flags = flags
        self.qname = qname
        self.question = question
        self.qtype = qtype
        self.qclass = qclass
        self.edns = False
        self.edns_version = 0
        self.udp_size = 512
        self.do = False
        self.mac = ""
        self.ecs: bytes | None = None

    @property
    def id_bytes(self) -> bytes:
        return self.data[:2]

    @property
    def name(self) -> str:
        from netblock.names import from_wire

        return from_wire(self.question[:-4])


def parse_query(data: bytes) -> Query | int:
    """A Query, DROP, or an rcode to answer with `error_echo`."""
    size = len(data)
    if size < 12:
        return DROP
    flags = data[2] << 8 | data[3]
    if flags & 0x8000:  # a response sent to us: never answer or forward it (reflection)
        return DROP
    if flags & 0x0200:
        return FORMERR
    if flags & 0x7800:
        return NOTIMP
    qdcount, ancount, nscount, arcount = _HHHH.unpack_from(data, 4)
    if qdcount != 1 or ancount or nscount or arcount > 1:
        return FORMERR
    # The question name: uncompressed labels, each at most 63 octets, at most 255 in all.
    offset = 12
    while True:
        if offset >= size:
            return FORMERR
        length = data[offset]
        if length == 0:
            offset += 1
            break
        if length > 63:  # compression pointer or label type 0x40/0x80
            return FORMERR
        offset += length + 1
        if offset - 12 > 255:
            return FORMERR
    if offset - 12 > 255 or offset + 4 > size:
        return FORMERR
    qtype, qclass = _HH.unpack_from(data, offset)
    question = data[12 : offset + 4]
    query = Query(data, flags, data[12:offset].lower(), question, qtype, qclass)
    if arcount:
        result = _parse_opt(data, offset + 4, query)
        if result is not None:
            return result
    return query


def _parse_opt(data: bytes, offset: int, query: Query) -> int | None:
    size = len(data)
    if offset + 11 > size:
        return FORMERR
    if data[offset] != 0:  # not an OPT (owner must be root): e.g. a TSIG we do not use
        return None
    rtype, udp_size, ttl, rdlength = _RR.unpack_from(data, offset + 1)
    if rtype != OPT:
        return None
    start = offset + 11
    end = start + rdlength
    if end > size:
        return FORMERR
    query.edns = True
    query.udp_size = max(udp_size, 512)
    query.edns_version = (ttl >> 16) & 0xFF
    query.do = bool(ttl & 0x8000)
    pos = start
    while pos + 4 <= end:
        code, length = _HH.unpack_from(data, pos)
        value = data[pos + 4 : pos + 4 + length]
        if pos + 4 + length > end:
            break  # an option running past the record: ignore the rest, as unbound does
        if code == OPT_MAC_RAW and length == 6:
            query.mac = value.hex(":")
        elif code == OPT_MAC_TEXT and length:
            query.mac = value.decode("ascii", "replace").strip().lower()
        elif code == OPT_ECS:
            query.ecs = value
        pos += 4 + length
    return None


def error_echo(data: bytes, rcode: int) -> bytes:
    """Unbound's answer to a bad header: the query itself with QR and the rcode set."""
    return data[:2] + bytes(((data[2] | 0x80) & 0xFD, (data[3] & 0xF0) | rcode)) + data[4:]


def _flags(query: Query, rcode: int, aa: bool = False) -> bytes:
    # QR, RD copied, RA set; AA, TC, Z and AD clear; CD copied.
    return bytes((0x80 | (0x04 if aa else 0) | ((query.flags >> 8) & 0x01),
                  0x80 | (query.flags & 0x10) | (rcode & 0x0F)))


def opt_record(udp_size: int, do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    ttl = (ext_rcode & 0xFF) << 24 | (0x8000 if do else 0)
    return b"\x00" + _RR.pack(OPT, udp_size, ttl, len(options)) + options


def ede_option(info_code: int, text: bytes = b"") -> bytes:
    return _HH.pack(OPT_EDE, 2 + len(text)) + _H.pack(info_code) + text


def simple_answer(query: Query, rcode: int, udp_size: int = 1232, ede: bytes = b"") -> bytes:
    """Header + question (+ OPT when the query had EDNS): SERVFAIL, REFUSED, BADVERS ..."""
    ext = rcode >> 4
    if query.edns:
        opt = opt_record(udp_size, query.do, ext, ede)
        return query.data[:2] + _flags(query, rcode) + b"\x00\x01\x00\x00\x00\x00\x00\x01" + query.question + opt
    return query.data[:2] + _flags(query, rcode) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + query.question


_SOA_TAIL = b"\x08netblock\x07invalid\x00\x0ahostmaster\x08netblock\x07invalid\x00"


def blocked_answer(query: Query, rule: Rule, udp_size: int = 1232, name_matched: bool = True) -> bytes:
    """The policy answer for a blocked name, per the list's response mode. `name_matched`
    is False when the rule matched something else (a CNAME target, an answer address)."""
    response = rule.response
    mode = response.mode
    ttl = rule.block_ttl
    answers: tuple[bytes, ...] = ()
    if mode == "refused":
        rcode = REFUSED
    else:
        rcode = NXDOMAIN if mode == "nxdomain" else NOERROR
        if mode in ("null", "sinkhole") and query.qtype in (A, AAAA):
            answers = _address_records(query, response.sinkhole_v4, response.sinkhole_v6, mode, ttl)
    ancount = len(answers)
    authority = b"" if rcode == REFUSED or answers else _soa(query, rule, ttl, name_matched)
    counts = _HHHH.pack(1, ancount, 1 if authority else 0, 1 if query.edns else 0)
    message = query.data[:2] + _flags(query, rcode) + counts + query.question + b"".join(answers) + authority
    if query.edns:
        message += opt_record(udp_size, query.do, 0, ede_option(EDE_BLOCKED, ede_text(rule)))
    return message


def _address_records(
    query: Query, v4: tuple[bytes, ...], v6: tuple[bytes, ...], mode: str, ttl: int
) -> tuple[bytes, ...]:
    if query.qtype == A:
        addresses = v4 if mode == "sinkhole" else (b"\x00\x00\x00\x00",)
    else:
        addresses = v6 if mode == "sinkhole" else (b"\x00" * 16,)
    return tuple(b"\xc0\x0c" + _RR.pack(query.qtype, CLASS_IN, ttl, len(a)) + a for a in addresses)


_soa_records: dict[int, bytes] = {}  # block TTL -> the SOA record after its owner name


def _soa(query: Query, rule: Rule, ttl: int, name_matched: bool) -> bytes:
    # The SOA owner is the blocked zone: a pointer into the question name where the
    # matching suffix starts, so clients cache the negative answer for the whole zone.
    # A domain pattern of n characters is n + 2 octets in wire form.
    owner_offset = max(len(query.qname) - len(rule.pattern) - 2, 0) if name_matched else 0
    record = _soa_records.get(ttl)
    if record is None:
        rdata = _SOA_TAIL + struct.pack("!IIIII", 1, 3600, 600, 86400, ttl)
        record = _soa_records[ttl] = _RR.pack(SOA, CLASS_IN, ttl, len(rdata)) + rdata
    return _H.pack(0xC000 | (12 + owner_offset)) + record


def truncated(query: Query, answer: bytes, udp_size: int) -> bytes:
    """An answer too large for UDP: header with TC, the question, and OPT if the query had it."""
    flags = bytes((answer[2] | 0x02, answer[3]))
    counts = b"\x00\x01\x00\x00\x00\x00" + (b"\x00\x01" if query.edns else b"\x00\x00")
    opt = opt_record(udp_size, query.do) if query.edns else b""
    return query.data[:2] + flags + counts + query.question + opt


def build_query(qid: int, qname: bytes, qtype: int, qclass: int, do: bool, udp_size: int) -> bytes:
    """Our own upstream query: recursion desired, EDNS with our buffer size and the DO bit."""
    return (_H.pack(qid) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" + qname + _HH.pack(qtype, qclass)
            + opt_record(udp_size, do))


# ---------------------------------------------------------------- upstream answers


class Scan:
    """What forwarding needs from an upstream answer, found in one walk of its records."""

    __slots__ = ("addresses", "cnames", "end_question", "min_ttl", "negative_ttl", "opt_span", "rcode",
                 "ttl_offsets")

    def __init__(self) -> None:
        self.rcode = 0
        self.end_question = 0
        self.ttl_offsets: list[int] = []
        self.min_ttl: int | None = None
        self.negative_ttl: int | None = None  # from the SOA of a negative answer (RFC 2308)
        self.opt_span: tuple[int, int] | None = None
        self.cnames: list[int] = []  # offsets of CNAME targets in the answer section
        self.addresses: list[bytes] = []  # A/AAAA rdata in the answer section


class MalformedAnswer(ValueError):
    pass


def skip_name(data: bytes, offset: int) -> int:
    """Offset just past a (possibly compressed) name."""
    size = len(data)
    while True:
        if offset >= size:
            raise MalformedAnswer("name runs past the end")
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 2 > size:
                raise MalformedAnswer("pointer runs past the end")
            return offset + 2
        if length & 0xC0:
            raise MalformedAnswer("unknown label type")
        offset += length + 1


def read_name(data: bytes, offset: int) -> bytes:
    """A (possibly compressed) name as lower-cased uncompressed wire form."""
    out = bytearray()
    jumps = 0
    size = len(data)
    while True:
        if offset >= size:
            raise MalformedAnswer("name runs past the end")
        length = data[offset]
        if length == 0:
            out.append(0)
            return bytes(out).lower()
        if length & 0xC0 == 0xC0:
            if offset + 2 > size:
                raise MalformedAnswer("pointer runs past the end")
            jumps += 1
            if jumps > 64:
                raise MalformedAnswer("compression loop")
            offset = (length & 0x3F) << 8 | data[offset + 1]
            continue
        if length & 0xC0:
            raise MalformedAnswer("unknown label type")
        out += data[offset : offset + length + 1]
        if len(out) > 255:
            raise MalformedAnswer("name longer than 255 octets")
        offset += length + 1


def scan_answer(data: bytes) -> Scan:
    """Walk every record once: TTL offsets, the OPT record, CNAME targets, addresses."""
    if len(data) < 12:
        raise MalformedAnswer("shorter than a header")
    scan = Scan()
    scan.rcode = data[3] & 0x0F
    qdcount, ancount, nscount, arcount = _HHHH.unpack_from(data, 4)
    if qdcount != 1:
        raise MalformedAnswer("answer without exactly one question")
    offset = skip_name(data, 12) + 4
    scan.end_question = offset
    total = ancount + nscount + arcount
    size = len(data)
    negative = ancount == 0
    for index in range(total):
        rr_start = offset
        offset = skip_name(data, offset)
        if offset + 10 > size:
            raise MalformedAnswer("record header runs past the end")
        rtype, _rclass, ttl, rdlength = _RR.unpack_from(data, offset)
        rdata = offset + 10
        end = rdata + rdlength
        if end > size:
            raise MalformedAnswer("record data runs past the end")
        if rtype == OPT:
            if index < ancount + nscount or scan.opt_span is not None:
                raise MalformedAnswer("misplaced or second OPT record")
            scan.opt_span = (rr_start, end)
        else:
            ttl &= 0x7FFFFFFF
            scan.ttl_offsets.append(offset + 4)
            if scan.min_ttl is None or ttl < scan.min_ttl:
                scan.min_ttl = ttl
            if index < ancount:
                if rtype == CNAME:
                    scan.cnames.append(rdata)
                elif (rtype == A and rdlength == 4) or (rtype == AAAA and rdlength == 16):
                    scan.addresses.append(data[rdata:end])
            elif negative and rtype == SOA and index < ancount + nscount and rdlength >= 22:
                minimum = struct.unpack_from("!I", data, end - 4)[0]
                scan.negative_ttl = min(ttl, minimum)
        offset = end
    return scan


def answer_matches(data: bytes, qid: int, qname: bytes, qtype: int, qclass: int) -> bool:
    """True if an upstream datagram answers our query: ID, QR, and the same question."""
    if len(data) < 12 + len(qname) + 4 or _H.unpack_from(data, 0)[0] != qid or not data[2] & 0x80:
        return False
    if _H.unpack_from(data, 4)[0] != 1:
        return False
    end = 12 + len(qname)
    return data[12:end].lower() == qname and _HH.unpack_from(data, end) == (qtype, qclass)
