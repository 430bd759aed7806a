"""The answer cache: TTL decay, negative caching from the SOA, SERVFAIL, LRU bound."""

from __future__ import annotations

import dataclasses

import dns.message
import dns.rcode
import dns.rrset
import pytest

from netblock.config import Config
from netblock.dns import wire
from netblock.dns.cache import AnswerCache, Entry
from netblock.dns.server import DnsServer
from netblock.stats import Stats


def _server(**cache: object) -> DnsServer:
    config = Config()
    config = dataclasses.replace(config, upstreams=dataclasses.replace(config.upstreams, servers=("127.0.0.1:9",)),
                                 cache=dataclasses.replace(config.cache, **cache),
                                 events=dataclasses.replace(config.events, enabled=False))
    return DnsServer(config)


def _answer(name: str, rcode: int = dns.rcode.NOERROR, records: tuple[str, ...] | list[str] = (),
            authority: tuple[str, ...] | list[str] = ()) -> bytes:
    query = dns.message.make_query(name, "A", use_edns=0)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for text in records:  # "TTL ADDRESS"
        ttl, address = text.split()
        response.answer.append(dns.rrset.from_text(name + ".", int(ttl), "IN", "A", address))
    for text in authority:  # "OWNER TTL CLASS TYPE RDATA..."
        owner, ttl, rdclass, rdtype, rdata = text.split(maxsplit=4)
        response.authority.append(dns.rrset.from_text(owner, int(ttl), rdclass, rdtype, rdata))
    return response.to_wire()


def _key(name: str) -> tuple[bytes, int, int, bool]:
    return (wire.parse_query(dns.message.make_query(name, "A").to_wire()).qname, 1, 1, False)  # type: ignore[union-attr]


def test_positive_ttl_is_the_smallest_record_ttl() -> None:
    server = _server()
    entry = server._store(_key("a.example"), _answer("a.example", records=["300 192.0.2.1", "60 192.0.2.2"]))
    assert entry is not None and round(entry.expires - entry.stored) == 60


def test_negative_ttl_from_soa_minimum_rfc2308() -> None:
    server = _server()
    soa = "example. 3600 IN SOA ns.example. host.example. 1 3600 600 86400 120"
    entry = server._store(_key("nx.example"), _answer("nx.example", dns.rcode.NXDOMAIN, authority=[soa]))
    assert entry is not None and round(entry.expires - entry.stored) == 120  # min(SOA TTL, minimum)
    capped = _server(negative_ttl=30)._store(_key("nx.example"),
                                             _answer("nx.example", dns.rcode.NXDOMAIN, authority=[soa]))
    assert capped is not None and round(capped.expires - capped.stored) == 30


def test_servfail_cached_briefly_and_refused_not_at_all() -> None:
    server = _server(servfail_ttl=3)
    entry = server._store(_key("sf.example"), _answer("sf.example", dns.rcode.SERVFAIL))
    assert entry is not None and round(entry.expires - entry.stored) == 3
    assert len(server.cache) == 1
    server._store(_key("ref.example"), _answer("ref.example", dns.rcode.REFUSED))
    assert len(server.cache) == 1


@pytest.mark.parametrize(("min_ttl", "max_ttl", "expected"), [(0, 10, 10), (600, 86400, 600)])
def test_min_and_max_ttl(min_ttl: int, max_ttl: int, expected: int) -> None:
    entry = _server(min_ttl=min_ttl, max_ttl=max_ttl)._store(_key("t.example"), _answer("t.example",
                                                              records=["300 192.0.2.1"]))
    assert entry is not None and round(entry.expires - entry.stored) == expected


def test_ttls_decay_when_rendered() -> None:
    server = _server()
    entry = server._store(_key("d.example"), _answer("d.example", records=["300 192.0.2.1"]))
    assert entry is not None
    rendered = dns.message.from_wire(b"\x00\x00" + entry.render(entry.stored + 42.5))
    assert rendered.answer[0].ttl == 258
    assert dns.message.from_wire(b"\x00\x00" + entry.render(entry.stored + 1000)).answer[0].ttl == 0


def test_entries_age_and_expire_at_the_turn_of_a_whole_second() -> None:
    """As unbound counts: stored 0.9 s into second 1000 with a 60 s lifetime, an entry is
    one second old from 1001.0 on and gone at 1060.0, up to a second early and never late.
    So an entry fresh at any moment of a second is fresh for all of it (replays rely on it)."""
    stats = Stats()
    cache = AnswerCache(10, stats)
    response = dns.message.make_response(dns.message.make_query("w.example", "A"))
    response.answer.append(dns.rrset.from_text("w.example.", 300, "IN", "A", "192.0.2.1"))
    answer = response.to_wire()
    entry = Entry(answer[2:], [o - 2 for o in wire.scan_answer(answer).ttl_offsets], [300], 1000.9, 60, 0)
    cache.put(_key("w.example"), entry)
    assert (entry.stored, entry.expires) == (1000, 1060)
    assert dns.message.from_wire(b"\x00\x00" + entry.render(1000.95)).answer[0].ttl == 300
    assert dns.message.from_wire(b"\x00\x00" + entry.render(1001.0)).answer[0].ttl == 299
    assert cache.get(_key("w.example"), 1059.999) is entry
    assert cache.get(_key("w.example"), 1060.0) is None
    # A reading from before the second it was stored in ages it by nothing, not by -1.
    assert dns.message.from_wire(b"\x00\x00" + entry.render(999.5)).answer[0].ttl == 300


def test_lru_bound_evicts_least_recently_used() -> None:
    stats = Stats()
    cache = AnswerCache(2, stats)
    entries = {name: Entry(b"", [], [], 0.0, 100, 0) for name in (b"a", b"b", b"c")}
    cache.put((b"a", 1, 1, False), entries[b"a"])
    cache.put((b"b", 1, 1, False), entries[b"b"])
    assert cache.get((b"a", 1, 1, False), 1.0) is entries[b"a"]  # a is now the most recent
    cache.put((b"c", 1, 1, False), entries[b"c"])
    assert cache.get((b"b", 1, 1, False), 1.0) is None
    assert cache.get((b"a", 1, 1, False), 1.0) is entries[b"a"]
    assert len(cache) == 2 and stats.cache_evictions == 1


def test_malformed_upstream_answer_is_not_cached() -> None:
    server = _server()
    good = _answer("m.example", records=["300 192.0.2.1"])
    assert server._store(_key("m.example"), good[:-3]) is None
    assert len(server.cache) == 0 and server.stats.dropped["bad-upstream-answer"] == 1
