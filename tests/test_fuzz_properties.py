"""Property-based fuzzing in `make test` (hypothesis, derandomised, bounded): structured
queries, upstream answers, list files and configs through the same targets `make fuzz`
runs under atheris. The long runs are `make fuzz`; these keep every target honest per PR."""

from __future__ import annotations

import struct

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets

FAST = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

labels = st.one_of(
    st.sampled_from([b"weixin", b"qq", b"com", b"kaspersky", b"www", b"example", b"test", b"blocked", b"a",
                     b"WeiXin", b"sinkhole", b"xn--wixin-gra"]),
    st.binary(min_size=1, max_size=63),
)
names = st.lists(labels, min_size=0, max_size=8).map(lambda ls: b"".join(bytes((len(x),)) + x for x in ls) + b"\x00")
options = st.lists(st.tuples(st.sampled_from([3, 8, 10, 12, 15, 100, 65001, 65073, 0, 65535]),
                             st.binary(max_size=40)), max_size=4)


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    flags = draw(st.one_of(st.just(0x0100), st.integers(0, 0xFFFF)))
    qd = draw(st.one_of(st.just(1), st.integers(0, 3)))
    ar = draw(st.integers(0, 2))
    qname = draw(names)
    qtype = draw(st.one_of(st.sampled_from([1, 28, 65, 255, 252, 251, 41, 0, 666]), st.integers(0, 65535)))
    qclass = draw(st.sampled_from([1, 3, 254, 255, 0]))
    data = struct.pack("!HHHHHH", draw(st.integers(0, 65535)), flags, qd, 0, 0, ar) + qname
    data += struct.pack("!HH", qtype, qclass)
    for _ in range(ar):
        opts = b"".join(struct.pack("!HH", c, len(v)) + v for c, v in draw(options))
        version = draw(st.sampled_from([0, 0, 1, 255]))
        ttl = version << 16 | draw(st.sampled_from([0, 0x8000, 0x0080, 0xFFFF]))
        size = draw(st.sampled_from([0, 100, 512, 1232, 4096, 65535]))
        length = len(opts) + draw(st.sampled_from([0, 0, 0, 1, -1, 50]))
        data += b"\x00" + struct.pack("!HHIH", 41, size, ttl, max(0, length)) + opts
    data += draw(st.one_of(st.just(b""), st.binary(max_size=20)))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    qname = draw(names)
    qtype = draw(st.sampled_from([1, 28, 5, 15, 16, 255]))
    records = []
    for _ in range(draw(st.integers(0, 6))):
        owner = draw(st.sampled_from([b"\xc0\x0c", b"\x00", qname, b"\xc0\xff", b"\xc0\x0e"]))
        rtype = draw(st.sampled_from([1, 28, 5, 6, 41, 16, 46, 65]))
        rdata = draw(st.one_of(
            st.binary(max_size=40),
            names,
            st.just(b"\xc0\x0c"),
            st.just(bytes((203, 0, 113, 7))),
            st.just(b"\x06weixin\x02qq\x03com\x00"),
            st.just(b"\x01a\x00\x01b\x00" + struct.pack("!IIIII", 1, 2, 3, 4, 5)),
        ))
        ttl = draw(st.sampled_from([0, 1, 300, 0x7FFFFFFF, 0xFFFFFFFF]))
        length = len(rdata) + draw(st.sampled_from([0, 0, 0, 1, -1]))
        records.append(owner + struct.pack("!HHIH", rtype, 1, ttl, max(0, length)) + rdata)
    counts = [0, 0, 0]
    for _ in records:
        counts[draw(st.integers(0, 2))] += 1
    flags = draw(st.sampled_from([0x8180, 0x8183, 0x8182, 0x8580, 0x8380, 0x0100]))
    header = struct.pack("!HHHHHH", draw(st.integers(0, 65535)), flags, 1, *counts)
    return header + qname + struct.pack("!HH", qtype, 1) + b"".join(records)


@FAST
@given(queries())
def test_structured_queries(data: bytes) -> None:
    targets.query(data)


@FAST
@given(st.binary(max_size=700))
def test_random_query_bytes(data: bytes) -> None:
    targets.query(data)


@FAST
@given(answers())
def test_structured_upstream_answers(data: bytes) -> None:
    targets.answer(data)


@FAST
@given(st.binary(max_size=700))
def test_random_answer_bytes(data: bytes) -> None:
    targets.answer(data)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 100_000), st.floats(allow_nan=False),
                         st.text(max_size=30), st.sampled_from(["weixin.qq.com", "10.0.0.0/8", "127.0.0.1:53",
                                                                "nxdomain", "sinkhole 192.0.2.1", "drop"]))
yaml_values = st.recursive(yaml_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)), max_leaves=12)
LIST_KEYS = ["name", "vendor", "policy", "action", "response", "sinkhole", "block_ttl", "domains", "exact",
             "networks", "allow", "guard", "bogus"]
CONFIG_KEYS = {"server": ["listen", "user", "udp_payload", "reuse_port"],
               "upstreams": ["servers", "timeout", "attempt_timeout", "max_in_flight"],
               "cache": ["size", "min_ttl", "max_ttl", "serve_stale", "stale_ttl"],
               "access": ["allow", "action", "rate_limit"], "tcp": ["idle_timeout", "max_connections"]}
CONFIG_SUBKEYS = [key for keys in CONFIG_KEYS.values() for key in keys]


@SLOW
@given(st.dictionaries(st.sampled_from(LIST_KEYS), yaml_values, max_size=8))
def test_structured_list_files(document: dict[str, object]) -> None:
    targets.lists(yaml.safe_dump(document).encode())


@SLOW
@given(st.dictionaries(st.sampled_from(list(CONFIG_KEYS)),
                       st.one_of(yaml_values, st.dictionaries(st.sampled_from(CONFIG_SUBKEYS),
                                                              yaml_values, max_size=4)), max_size=5))
def test_structured_configs(document: dict[str, object]) -> None:
    targets.config(yaml.safe_dump(document).encode())


@SLOW
@given(st.text(max_size=400))
def test_random_text_files(text: str) -> None:
    targets.lists(text.encode())
    targets.config(text.encode())


host_lines = st.one_of(
    st.builds(lambda ip, n: f"{ip} {n}", st.sampled_from(["0.0.0.0", "127.0.0.1", "::", "1.2.3.4", "x"]),
              st.from_regex(r"[a-z0-9.*_-]{1,30}", fullmatch=True)),
    st.from_regex(r"(\|\||@@\|\|)?[a-z0-9.*-]{1,30}\^?(\$[a-z,=-]{0,20})?", fullmatch=True),
    st.sampled_from(["# c", "! c", "", "$TTL 30", "weixin.qq.com CNAME .", "*.qq.com CNAME rpz-drop."]),
    st.text(max_size=40),
)


@SLOW
@given(st.integers(0, 3), st.lists(host_lines, max_size=12))
def test_imported_list_formats(fmt: int, lines: list[str]) -> None:
    targets.importers(bytes((fmt,)) + "\n".join(lines).encode())
