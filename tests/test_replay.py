"""Remembered UDP answers, replayed by query bytes: exact bytes as each second passes, a
TC answer stays TC, expiry forgets them, every replay is counted, and the table stays
bounded without dropping everything at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dns.flags
import dns.message
import dns.rrset
import pytest

from netblock.config import Config
from netblock.dns import server as server_module
from netblock.dns import wire
from netblock.dns.server import DnsServer
from netblock.metrics import NetblockCollector

CLIENT = "127.0.0.1"
LISTS = Path(__file__).resolve().parents[1] / "blocklists"


class Clock:
    """time.monotonic for the server module: a test that never waits for a real second."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(server_module.time, "monotonic", clock)
    return clock


def _server(cache_size: int = 100) -> DnsServer:
    config = Config()
    config = dataclasses.replace(
        config, upstreams=dataclasses.replace(config.upstreams, servers=("127.0.0.1:9",)),
        cache=dataclasses.replace(config.cache, size=cache_size),
        policy=dataclasses.replace(config.policy, lists=(str(LISTS / "*.yaml"),), watch=False),
        events=dataclasses.replace(config.events, enabled=False))
    return DnsServer(config)


def _query(name: str, qid: int, edns: bool = True) -> bytes:
    message = dns.message.make_query(name, "A", use_edns=0 if edns else None)
    message.id = qid
    return message.to_wire()


def _upstream_answer(name: str, ttl: int, records: int = 1) -> bytes:
    message = dns.message.make_response(dns.message.make_query(name, "A"))
    addresses = [f"192.0.2.{i + 1}" for i in range(records)]
    message.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", *addresses))
    return message.to_wire()


def _forward_and_store(server: DnsServer, data: bytes, answer: bytes) -> bytes:
    """What resolve() does for a miss: store the upstream answer, reply from the entry."""
    query = server.handle(data, CLIENT, "udp")
    assert isinstance(query, wire.Query)
    entry = server._store((query.qname, query.qtype, query.qclass, query.do), answer)
    assert entry is not None
    # The next identical query is answered from the cache and remembered for replays.
    reply = server.handle(data, CLIENT, "udp")
    assert isinstance(reply, bytes)
    return reply


def test_replay_is_exact_each_second_and_keeps_this_clients_id_case_and_opt(clock: Clock) -> None:
    server = _server()
    name = "MiXeD.Example.TEST."
    _forward_and_store(server, _query(name, 1), _upstream_answer(name, 300, records=3))
    for seconds, qid in ((0.0, 2), (0.4, 3), (1.2, 4), (61.7, 5)):
        clock.now = 5000.0 + seconds
        data = _query(name, qid)
        replay = server.handle(data, CLIENT, "udp")
        assert isinstance(replay, bytes)
        # What the cache path builds from scratch for this query at this moment.
        query = wire.parse_query(data)
        assert isinstance(query, wire.Query)
        entry = server.cache.get((query.qname, 1, 1, False), clock.now)
        assert entry is not None
        assert replay == server._fit(query, server._from_entry(query, entry), "udp")
        message = dns.message.from_wire(replay)
        assert message.id == qid and message.edns == 0
        assert message.question[0].name.to_text() == name  # the client's case
        assert {rr.ttl for rr in message.answer} == {300 - int(seconds)}


def test_a_replay_is_checked_once_a_second_at_the_time_its_batch_came(clock: Clock,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    server = _server()
    name = "second.example.test."
    _forward_and_store(server, _query(name, 1), _upstream_answer(name, 300))
    refreshes: list[int] = []
    refresh = server._refresh

    def counted(packet: server_module.Packet, replay_key: bytes) -> bool:
        refreshes.append(server.second)
        return refresh(packet, replay_key)

    monkeypatch.setattr(server, "_refresh", counted)
    ttls = []
    for offset in (0.1, 0.5, 0.99, 1.0, 1.7, 3.2):
        # The batch's reading is what counts, not the clock when the query is handled.
        replay = server.handle(_query(name, 2), CLIENT, "udp", clock.now + offset)
        assert isinstance(replay, bytes)
        ttls.append(dns.message.from_wire(replay).answer[0].ttl)
    assert ttls == [300, 300, 300, 299, 299, 297]
    assert refreshes == [5000, 5001, 5003]  # once in each second


def test_an_entry_stored_within_a_second_is_replayed_until_its_whole_second_ends(clock: Clock) -> None:
    """Stored 0.9 s into a second with a 1 s TTL, an entry lives until that second ends (as
    unbound counts): replayed within it, forwarded again from the next one."""
    server = _server()
    name = "short-lived.example.test."
    clock.now = 5000.9
    data = _query(name, 1)
    _forward_and_store(server, data, _upstream_answer(name, 1))
    replay = server.handle(_query(name, 2), CLIENT, "udp", 5000.95)
    assert isinstance(replay, bytes) and dns.message.from_wire(replay).answer[0].ttl == 1
    assert isinstance(server.handle(_query(name, 3), CLIENT, "udp", 5001.0), wire.Query)


def test_a_batch_read_before_the_second_turned_cannot_replay_an_expired_answer(clock: Clock) -> None:
    """The second has turned (another query saw 5301.1) and the entry expired with it. A batch
    whose reading is older (5300.9) may still be answered from the cache, with what is left of
    the TTL (0), but must not make the remembered answer exact for the new second."""
    server = _server()
    name = "turned.example.test."
    _forward_and_store(server, _query(name, 1), _upstream_answer(name, 301))  # expires at 5301
    clock.now = 5301.1
    assert isinstance(server.handle(_query("other.example.test.", 7), CLIENT, "udp"), wire.Query)
    late = server.handle(_query(name, 2), CLIENT, "udp", 5300.9)
    assert isinstance(late, bytes) and dns.message.from_wire(late).answer[0].ttl == 0
    assert isinstance(server.handle(_query(name, 3), CLIENT, "udp", 5301.5), wire.Query)


def test_truncated_replay_stays_truncated(clock: Clock) -> None:
    server = _server()
    name = "big.example.test."
    data = _query(name, 1, edns=False)  # 512 octets: 40 addresses do not fit
    first = _forward_and_store(server, data, _upstream_answer(name, 300, records=40))
    assert dns.message.from_wire(first).flags & dns.flags.TC
    clock.now += 2.5  # past the second the replay was rendered for
    again = server.handle(_query(name, 9, edns=False), CLIENT, "udp")
    assert isinstance(again, bytes)
    assert again[2:] == first[2:] and again[:2] == b"\x00\x09"


def test_expired_answer_is_forgotten_and_forwarded_again(clock: Clock) -> None:
    server = _server()
    name = "short.example.test."
    data = _query(name, 1)
    _forward_and_store(server, data, _upstream_answer(name, 30))
    assert data[2:] in server.packets
    clock.now += 31
    assert isinstance(server.handle(data, CLIENT, "udp"), wire.Query)  # to the upstream again
    assert data[2:] not in server.packets


def test_replays_are_counted_as_responses_cache_hits_and_fast_durations(clock: Clock) -> None:
    server = _server()
    name = "counted.example.test."
    data = _query(name, 1)
    _forward_and_store(server, data, _upstream_answer(name, 300))
    hits_before = server.stats.all_cache_hits()
    queries_before = server.stats.all_queries()["udp"]
    responses_before = server.stats.all_responses().get(("cache", "NOERROR"), 0)
    for qid in range(2, 12):
        assert isinstance(server.handle(_query(name, qid), CLIENT, "udp"), bytes)
    assert server.stats.all_cache_hits() - hits_before == 10
    assert server.stats.all_queries()["udp"] - queries_before == 10
    assert server.stats.all_responses()[("cache", "NOERROR")] - responses_before == 10
    durations = server.stats.all_request_durations()
    assert durations.counts[0] >= 10 and sum(durations.counts) >= 11
    scraped = {(m.name, tuple(sorted(s.labels.items()))): s.value
               for m in NetblockCollector(server).collect() for s in m.samples}
    assert scraped[("netblock_cache_hits", ())] == server.stats.all_cache_hits()
    assert scraped[("netblock_queries", (("protocol", "udp"),))] == queries_before + 10
    assert scraped[("netblock_responses", (("rcode", "NOERROR"), ("source", "cache")))] == responses_before + 10


def test_blocked_replays_are_each_an_event(clock: Clock) -> None:
    server = _server()
    server.holder.load_initial()  # the shipped lists
    recorded: list[tuple[object, ...]] = []
    server.events.record = lambda *event: recorded.append(event)  # type: ignore[method-assign]
    for qid in range(1, 6):
        answer = server.handle(_query("weixin.qq.com", qid), CLIENT, "udp")
        assert isinstance(answer, bytes) and answer[3] & 0x0F == wire.NXDOMAIN and answer[:2] == bytes((0, qid))
    assert len(recorded) == 5
    assert {event[3] for event in recorded} == {b"\x06weixin\x02qq\x03com\x00"}
    assert server.stats.all_blocked() == {("wechat", "query", "block"): 5}  # 1 answered, 4 replayed
    assert sum(server.stats.replayed) == 4


def test_table_is_bounded_and_forgets_the_oldest_eighth(clock: Clock) -> None:
    server = _server(cache_size=40)  # room for 80 remembered answers
    server.holder.load_initial()
    names = [f"n{i}.weixin.qq.com" for i in range(200)]
    for name in names:
        server.handle(_query(name, 1), CLIENT, "udp")
        assert len(server.policy_packets) <= server.packets_max == 80
    assert len(server.policy_packets) > 80 - 80 // 8 - 1  # never emptied at once
    assert _query(names[-1], 1)[2:] in server.policy_packets  # the newest stay
    assert _query(names[0], 1)[2:] not in server.policy_packets


def test_a_reload_forgets_every_remembered_answer(clock: Clock) -> None:
    from netblock.policy.match import Policy

    server = _server()
    server.holder.load_initial()
    data = _query("weixin.qq.com", 1)
    server.handle(data, CLIENT, "udp")
    assert isinstance(server.handle(data, CLIENT, "udp"), bytes)  # replayed: blocked
    server._install(Policy())  # a policy that blocks nothing
    assert isinstance(server.handle(data, CLIENT, "udp"), wire.Query)  # forwarded, not replayed


def test_a_rate_limited_client_gets_refused_not_a_replay(clock: Clock) -> None:
    server = _server()
    server.holder.load_initial()
    server.admission.capacity, server.admission.refill = 3.0, 0.0  # 3 queries, never refilled
    data = _query("weixin.qq.com", 1)
    answers = [server.handle(data, CLIENT, "udp") for _ in range(5)]
    assert [a[3] & 0x0F for a in answers] == [wire.NXDOMAIN] * 3 + [wire.REFUSED] * 2  # type: ignore[index]


def test_a_query_padded_with_junk_is_answered_but_not_remembered(clock: Clock) -> None:
    server = _server()
    server.holder.load_initial()
    padded = _query("weixin.qq.com", 1, edns=False) + b"\x00" * 60_000  # ARCOUNT 0: the rest is ignored
    answer = server.handle(padded, CLIENT, "udp")
    assert isinstance(answer, bytes) and answer[3] & 0x0F == wire.NXDOMAIN
    assert not server.packets and not server.policy_packets


def test_a_reload_thread_frees_the_old_answers_while_the_loop_serves_the_new_policy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Swapped from a reload thread: the loop only takes the policy and empty tables; the
    tables of the old answers are emptied afterwards, by a worker thread."""
    import asyncio
    import threading

    from netblock.policy.match import Policy

    server = _server()
    server.holder.load_initial()
    for i in range(150):
        server.handle(_query(f"n{i}.weixin.qq.com", 1), CLIENT, "udp")
    old_cache, old_policy_packets = server.cache.entries, server.policy_packets
    cached = len(old_cache)
    assert len(old_policy_packets) == 150
    install, empty = server._install, server_module._empty_gradually
    seen: list[tuple[str, list[int]]] = []

    def watched_install(policy: Policy) -> list[dict[object, object]]:
        held = install(policy)
        seen.append((threading.current_thread().name, [len(table) for table in held]))
        return held

    def watched_empty(tables: list[dict[object, object]]) -> None:
        seen.append((threading.current_thread().name, [len(table) for table in tables]))
        empty(tables)

    server._install = watched_install  # type: ignore[method-assign]
    monkeypatch.setattr(server_module, "_empty_gradually", watched_empty)

    async def swap() -> None:
        server.loop = asyncio.get_running_loop()
        blank = Policy()
        await server.loop.run_in_executor(None, server._on_swap, blank)
        for _ in range(500):  # the swap is queued on the loop, the freeing in a worker: 5 s at most
            if len(seen) == 2 and not old_policy_packets:
                break
            await asyncio.sleep(0.01)
        assert server.policy is blank

    asyncio.run(swap())
    assert seen[0] == ("MainThread", [cached, 0, 150])  # on the loop: handed over whole
    assert seen[1][0] != "MainThread" and seen[1][1] == [cached, 0, 150]
    assert not old_policy_packets and not old_cache and not server.policy_packets and not server.packets
    assert isinstance(server.handle(_query("n1.weixin.qq.com", 1), CLIENT, "udp"), wire.Query)  # not replayed
