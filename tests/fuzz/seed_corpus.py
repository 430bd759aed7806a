"""Write the starting corpus: real queries and answers, list files and configs.

    .venv/bin/python tests/fuzz/seed_corpus.py

Query seeds are the 19 malformed-query cases of reference/reliability.md §2 plus blocked and
forwarded queries with every EDNS option we read; answer seeds are what a real NSD answers
for the test zone (started on loopback for the purpose); file seeds are the shipped lists
and configs plus broken variants. The dnslib regression seed of §3 goes into both DNS
corpora. Files are named by their SHA-1, as libFuzzer names them.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))

REGRESSION_SEED = base64.b64decode(
    "7n4BAQAAAAABAAAAAQEAAQEAAUNDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDukNDQ0NDQ0NDQ0NDAAAAQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0"
    "NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ1IBAYQBAQ==")


def save(target: str, data: bytes) -> None:
    folder = HERE / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def name(text: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in text.rstrip(".").split(".") if p) + b"\x00"


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def opt(size: int = 1232, version: int = 0, flags: int = 0, options: bytes = b"") -> bytes:
    return b"\x00" + struct.pack("!HHIH", 41, size, (version << 16) | flags, len(options)) + options


def option(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def queries() -> list[bytes]:
    www = name("www.example.test") + b"\x00\x01\x00\x01"
    out = [
        header() + www,
        header(ar=1) + www + opt(),
        header()[:5],
        header(qd=0),
        header(qd=2) + www + name("weixin.qq.com") + b"\x00\x01\x00\x01",
        header(qd=1),
        header(flags=0x8100) + www,
        header(flags=0x7900) + www,
        header() + b"\xc0\x0c\x00\x01\x00\x01",
        header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
        header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",
        header(ar=2) + www + opt() + opt(),
        header(ar=1) + www + opt(version=1),
        header(ar=1) + www + opt(size=100),
        header(ar=1) + www + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 4) + struct.pack("!HH", 10, 100),
        header() + www + b"\xde\xad\xbe\xef" * 4,
        header() + name("www.example.test") + b"\x00\xff\x00\x01",
        header() + name("www.example.test") + b"\x00\x01\x00\x03",
        header() + name("www.example.test") + b"\x00\xfc\x00\x01",
        REGRESSION_SEED,
    ]
    blocked = ["weixin.qq.com", "WeiXin.QQ.com", "a.b.weixin.qq.com", "work.weixin.qq.com", "kaspersky.com",
               "blocked.test", "sinkhole.test", "x.sinkhole.test", "nullmode.invalid", "refused.test",
               "weixin\\.qq.com"]
    for i, text in enumerate(blocked):
        qname = name(text) if "\\" not in text else b"\x0dweixin.qq.com\x00"
        for qtype in (1, 28, 65, 255):
            out.append(header(qid=i) + qname + struct.pack("!HH", qtype, 1))
        out.append(header(qid=i, ar=1) + qname + b"\x00\x01\x00\x01" + opt(flags=0x8000))
    edns_options = [option(8, b"\x00\x01\x18\x00\x0a\x00\x00"), option(8, b"\x00\x02\x38\x00" + b"\xfd" * 7),
                    option(65001, b"\x02\x42\xac\x11\x00\x02"), option(65073, b"02:42:AC:11:00:02"),
                    option(10, b"\x01" * 8), option(100, b"x"), option(3, b"")]
    for opt_value in edns_options:
        out.append(header(ar=1) + name("weixin.qq.com") + b"\x00\x01\x00\x01" + opt(options=opt_value))
        out.append(header(ar=1) + www + opt(options=opt_value, flags=0x0080))
    out.append(header(ar=1) + www + opt(size=512, flags=0x8000) + b"trailing")
    out.append(header(flags=0x0110, ar=1) + www + opt())  # CD
    out.append(header(flags=0x0140) + www)  # Z
    out.append(header(flags=0x0300) + www)  # TC
    return out


def answers() -> list[bytes]:
    import dns.message
    import dns.query

    from harness import Nsd

    out = [REGRESSION_SEED]
    with tempfile.TemporaryDirectory() as workdir, Nsd(Path(workdir)) as nsd:
        asks = [("www.example.test", "A"), ("www.example.test", "AAAA"), ("example.test", "MX"),
                ("example.test", "SOA"), ("example.test", "NS"), ("txt.example.test", "TXT"),
                ("chain1.example.test", "A"), ("cloak.example.test", "A"), ("cloak2.example.test", "A"),
                ("inside.example.test", "A"), ("nothere.example.test", "A"), ("www.example.test", "MX"),
                ("weixin.qq.com", "A"), ("work.weixin.qq.com", "A"), ("big.example.test", "A"),
                ("WwW.ExAmPlE.TeSt", "A"), ("short.example.test", "A")]
        for qname, qtype in asks:
            for edns, do in ((-1, False), (0, False), (0, True)):
                query = dns.message.make_query(qname, qtype, use_edns=edns, want_dnssec=do)
                wire = query.to_wire()
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(3)
                    sock.sendto(wire, ("127.0.0.1", nsd.port))
                    out.append(sock.recv(65535))
            response = dns.query.tcp(dns.message.make_query(qname, qtype), "127.0.0.1", port=nsd.port, timeout=3)
            out.append(response.to_wire())
    # Hand-made upstream oddities: a compression loop in a CNAME target, a second OPT, an OPT
    # in the answer section, a record running past the end, a SOA shorter than its fields.
    q = header(qid=0x4242, flags=0x8180, an=1) + name("loop.example.test") + b"\x00\x01\x00\x01"
    out.append(q + b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x02\xc0\x2d")
    out.append(q + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x10\x01\x02")
    q2 = header(qid=0x4242, flags=0x8183, ns=1, ar=2) + name("x.example.test") + b"\x00\x01\x00\x01"
    out.append(q2 + b"\xc0\x0e\x00\x06\x00\x01\x00\x00\x00\x3c\x00\x04\x00\x00\x00\x00" + opt() + opt())
    return out


def operator_files() -> tuple[list[bytes], list[bytes], list[bytes]]:
    lists = [p.read_bytes() for p in sorted((REPO / "blocklists").glob("*.yaml"))]
    lists += [p.read_bytes() for p in sorted((REPO / "tests" / "data" / "foundation").glob("*.yaml"))]
    lists += [b"", b"name: x\n", b"- a\n", b"name: x\ndomains: [weixin..qq.com]\n",
              b"name: x\nresponse: sinkhole\nsinkhole: [nope]\n", b"name: x\nnetworks: [10.0.0.0/33]\n",
              b"name: x\nguard: [qq.com]\ndomains: [qq.com]\n", b"name: x\nallow: [{name: a.b, match: exact}]\n",
              b"name: x\ndomains: &a [a.b]\nexact: *a\n", b"name: [1, 2]\nblock_ttl: -1\n",
              b"name: x\ndomains:\n  - {name: a.b, bogus: 1}\n", "name: x\ndomains: [wéixin.com]\n".encode()]
    importer_texts = [
        (0, "0.0.0.0 weixin.qq.com\n127.0.0.1 localhost\n::1 ip6-localhost\n1.2.3.4 a.b c.d # note\n"),
        (1, "weixin.qq.com\n# comment\nfull:wechat.com\ndomain:qq.com\nbad..name\n"),
        (2, "||weixin.qq.com^\n@@||work.weixin.qq.com^\n! comment\n||*.wechat.com^$third-party\n/regex/\n"),
        (3, "$TTL 300\n@ SOA ns hostmaster 1 2 3 4 5\nweixin.qq.com CNAME .\n*.wechat.com CNAME .\n"
            "24.0.113.0.203.rpz-ip CNAME .\nok.example CNAME rpz-passthru.\nx CNAME *.\n"),
    ]
    importers = [bytes((fmt,)) + text.encode() for fmt, text in importer_texts]
    configs = [p.read_bytes() for p in sorted((REPO / "config").glob("*.yaml"))]
    configs += [b"", b"server: {listen: ['127.0.0.1:53']}\n", b"upstreams: {servers: ['1.2.3.4:99999']}\n",
                b"access: {allow: [10.0.0.0/8], rate_limit: {queries: 5, per_seconds: 0}}\n",
                b"cache: {min_ttl: 10, max_ttl: 5}\n", b"unknown: 1\n", b"server: [1]\n",
                b"upstreams: {timeout: 1, attempt_timeout: 2}\n", b"server: {udp_payload: 100}\n"]
    return lists, importers, configs


def main() -> None:
    for data in queries():
        save("query", data)
    for data in answers():
        save("answer", data)
    lists, importers, configs = operator_files()
    for data in lists:
        save("lists", data)
    for data in importers:
        save("importers", data)
    for data in configs:
        save("config", data)
    for target in ("query", "answer", "lists", "importers", "config"):
        print(target, len(list((HERE / "corpus" / target).iterdir())))


if __name__ == "__main__":
    main()
