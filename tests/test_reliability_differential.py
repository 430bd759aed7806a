"""Differential test in the manner of CZ.NIC respdiff (reference/reliability.md §4, T5):
1,000 queries (80 % ordinary, 20 % blocked) to netblock forwarding to a real unbound, and
to that unbound directly. Compared like respdiff: opcode, rcode, flags, question and the
answer's record types. Ordinary names: no difference at all. Blocked names: every one
differs, and only in rcode and answer. No query goes unanswered."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from conftest import FOUNDATION_LISTS
from test_reliability_tools import Unbound, blast

from harness import BLOCKLISTS, Netblock, Nsd

ORDINARY = [("www.example.test", "A"), ("www.example.test", "AAAA"), ("example.test", "MX"),
            ("example.test", "SOA"), ("example.test", "NS"), ("txt.example.test", "TXT"),
            ("chain1.example.test", "A"), ("mail.example.test", "A"), ("outside.example.test", "A"),
            ("www.example.test", "TXT"), ("work.weixin.qq.com", "A"), ("short.example.test", "A")]
BLOCKED = [("weixin.qq.com", "A"), ("WeiXin.QQ.com", "AAAA"), ("long.weixin.qq.com", "A"),
           ("weixin.qq.com", "MX"), ("tracker.blocked.test", "A"), ("cloak.example.test", "A")]


def _queries(rng: random.Random, count: int) -> tuple[list[bytes], list[bool]]:
    wires, blocked = [], []
    for i in range(count):
        is_blocked = i % 5 == 0
        if is_blocked:
            name, rdtype = rng.choice(BLOCKED)
        elif rng.random() < 0.15:
            name, rdtype = f"nothere{rng.randrange(50)}.example.test", "A"  # NXDOMAIN from the zone
        else:
            name, rdtype = rng.choice(ORDINARY)
        query = dns.message.make_query(name, rdtype, use_edns=rng.choice([False, 0]),
                                       want_dnssec=rng.random() < 0.2)
        query.id = i
        wires.append(query.to_wire())
        blocked.append(is_blocked)
    return wires, blocked


def _fields(answer: bytes) -> dict[str, object]:
    message = dns.message.from_wire(answer)
    return {
        "opcode": message.opcode(),
        "rcode": dns.rcode.to_text(message.rcode()),
        "flags": dns.flags.to_text(message.flags),
        "question": [q.to_text() for q in message.question],
        "answertypes": sorted({dns.rdatatype.to_text(r.rdtype) for r in message.answer}),
    }


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, upstream: Nsd) -> Iterator[tuple[Unbound, Netblock]]:
    with Unbound(tmp_path_factory.mktemp("unbound"), upstream.address) as unbound:
        config = {"access": {"rate_limit": {"queries": 0}}}
        lists = [BLOCKLISTS / "*.yaml", FOUNDATION_LISTS / "*.yaml"]  # the test lists block blocked.test
        with Netblock(tmp_path_factory.mktemp("nb"), [f"127.0.0.1:{unbound.port}"], lists=lists,
                      config=config) as netblock:
            yield unbound, netblock


def test_respdiff_style_comparison_with_unbound(pair: tuple[Unbound, Netblock]) -> None:
    unbound, netblock = pair
    wires, blocked = _queries(random.Random(8767), 1000)
    blast(unbound.port, wires, window=20, timeout=60)  # warm unbound: both answer from its cache
    theirs = blast(unbound.port, wires, window=20, timeout=60)
    ours = blast(netblock.port, wires, window=20, timeout=60)
    assert all(r.answer is not None for r in theirs), "unbound timed out"
    assert all(r.answer is not None for r in ours), f"{sum(r.answer is None for r in ours)} timeouts"
    differences: Counter[str] = Counter()
    blocked_fields: Counter[str] = Counter()
    for mine, reference, is_blocked in zip(ours, theirs, blocked, strict=True):
        assert mine.answer is not None and reference.answer is not None
        a, b = _fields(mine.answer), _fields(reference.answer)
        differing = sorted(k for k in a if a[k] != b[k])
        if is_blocked:
            assert differing, ("a blocked name answered like the upstream", b)
            blocked_fields.update(differing)
        else:
            differences.update(differing)
            assert not differing, (differing, a, b)
    assert not differences
    # Blocked answers differ from the real ones in rcode and answer only: flags, opcode and
    # question are what a resolver would send.
    assert set(blocked_fields) <= {"rcode", "answertypes"}, blocked_fields
    assert blocked_fields["rcode"] == blocked.count(True)
