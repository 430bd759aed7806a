"""UDP and TCP listeners, and `handle()`: the one place a query walks through.

handle() reads top to bottom (DESIGN.md, "One query, one pass"): parse, admit, decide,
answer a blocked name, answer from the cache, or hand the query to `resolve()`, which
forwards, inspects the answer, stores and replies. The query path only increments ints
and appends event tuples; everything slow runs in threads.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import itertools
import logging
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

from netblock.config import Config, parse_hostport
from netblock.dns import batchio, wire
from netblock.dns.admit import Admission
from netblock.dns.cache import AnswerCache, CacheKey, Entry
from netblock.dns.upstream import Upstreams
from netblock.events import EventRecorder
from netblock.names import from_wire
from netblock.policy.match import Policy
from netblock.policy.reload import PolicyHolder
from netblock.policy.rule import Rule
from netblock.stats import RCODE_NAMES, ReplayKind, Stats

log = logging.getLogger("netblock.server")

_H = struct.Struct("!H")
_EMPTY_POLICY = Policy()
SWITCH_INTERVAL = 0.0005  # seconds
RECEIVE_BUFFER = 4 * 1024 * 1024  # octets: a burst of queries waits here, not dropped
# Queries remembered for replays are at most this long: the bytes are the key, and a query
# padded with junk after its question must not make each entry tens of kilobytes.
REMEMBER_MAX = 512  # octets
FULL_COLLECTION_EVERY = 100  # middle-generation collections (CPython's default: 10)


def settle_collector() -> None:
    """Tune the cyclic garbage collector for serving, once the policy is loaded."""
    # The policy and the code are long-lived: keep them out of future collections, so the
    # cyclic GC walks what the query path allocates (a reloaded policy is not frozen: its
    # objects are few, big lists live in flat arrays).
    gc.collect()
    gc.freeze()
    # Remembered answers and cache entries live long enough to reach the oldest
    # generation, and each full collection walks all of them: by default one runs every
    # time they grow a quarter, ~2 µs a blocked query (bench/replay.py: 12.5 -> 10.4
    # µs/q). Young cycles are still collected at once.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def _empty_gradually(tables: list[dict[Any, Any]]) -> None:
    """Empty big tables an entry per step: the event loop gets the GIL between any two."""
    for table in tables:
        while table:
            table.popitem()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class DnsServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = Stats()
        self.started = time.time()
        self.cache = AnswerCache(config.cache.size, self.stats)
        self.upstreams = Upstreams(config, self.stats)
        self.admission = Admission(config.access)
        self.events = EventRecorder.from_config(config, self.stats)
        self.holder = PolicyHolder(config, self._on_swap, self.stats)
        self.policy: Policy = _EMPTY_POLICY
        self.udp_payload = config.server.udp_payload
        self.inspect_answers = config.policy.inspect_answers
        self.trusted_relays = tuple(ipaddress.ip_network(n, strict=False) for n in config.devices.trusted_relays)
        self.inflight: dict[CacheKey, asyncio.Future[Entry | None]] = {}
        # Query bytes after the ID -> remembered answer: cached answers, and policy answers
        # (blocked names) apart, so that a flood of distinct blocked names does not spread the
        # cached ones over a table many times larger (more cache misses on every replay).
        self.packets: dict[bytes, Packet] = {}
        self.policy_packets: dict[bytes, Packet] = {}
        # Remembered answers in all: the cached ones (one per spelling of a query) and the
        # blocked ones, which the cache does not hold: room for twice the cache.
        self.packets_max = max(2 * config.cache.size, 1)
        # The whole monotonic second now, as one int object: a remembered answer holds the
        # very object of the second it was checked in, so replaying it within that second
        # takes an identity test, not a read of a float kept elsewhere in memory.
        self.second = int(time.monotonic())
        self.second_ends = self.second + 1
        self.tcp_connections = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.transports: list[Any] = []
        self.tcp_servers: list[asyncio.Server] = []
        self.stopping: asyncio.Event | None = None

    # ------------------------------------------------------------------ the query path

    def handle(self, data: bytes, client: str, proto: str, now: float | None = None) -> bytes | wire.Query | None:
        """Answer now (bytes), forward (the parsed Query: see resolve()), or drop (None).
        `now`: time.monotonic() when the query came (read here if not given)."""
        stats = self.stats
        if now is None:
            now = time.monotonic()
        if now >= self.second_ends:
            self._next_second(now)
        # 1. admit: before any work on the packet
        refusal = self.admission.check(client, now)
        # 2. the same bytes after the ID as a recent UDP query: the same answer, replayed
        if proto == "udp" and not refusal:
            replay_key = data[2:]
            packet = self.packets.get(replay_key)
            if packet is None:
                packet = self.policy_packets.get(replay_key)
            if packet is not None and (packet.second is self.second or self._refresh(packet, replay_key)):
                if packet.rule is not None:
                    # a packet with a rule keeps its query
                    self._event(packet.query, client, packet.rule, packet.stage, "udp")  # type: ignore[arg-type]
                stats.replayed[packet.slot] += 1  # the query, its answer, its duration, the attempt
                return data[:2] + packet.tail
        stats.queries[proto] += 1
        if refusal:
            return self._refuse(data, refusal, client, proto)
        started = time.perf_counter()
        # 3. parse
        query = wire.parse_query(data)
        if query.__class__ is not wire.Query:
            if query == wire.DROP:
                stats.drop("malformed")
                return None
            return self._done(wire.error_echo(data, query), "error", query, started)  # type: ignore[arg-type]
        assert isinstance(query, wire.Query)
        if query.edns_version:
            return self._done(wire.simple_answer(query, wire.BADVERS, self.udp_payload), "error",
                              wire.BADVERS, started)
        if query.qclass != wire.CLASS_IN or query.qtype in (wire.AXFR, wire.IXFR):
            return self._done(wire.simple_answer(query, wire.REFUSED, self.udp_payload), "refused",
                              wire.REFUSED, started)
        # 4. decide
        rule = self.policy.match_wire(query.qname)
        if rule is not None and rule.action != "allow":
            self._record(query, client, rule, "query", proto)
            # 5. answer a blocked name
            if rule.action == "block":
                return self._reply(data, query, wire.blocked_answer(query, rule, self.udp_payload), proto,
                                   "blocked", started, None, rule, "query")
        else:
            rule = None
        # 6. cache
        key = (query.qname, query.qtype, query.qclass, query.do)
        entry = self.cache.get(key, now)
        if entry is not None:
            if entry.rule is not None:
                self._record(query, client, entry.rule, entry.stage, proto)
                answer = wire.blocked_answer(query, entry.rule, self.udp_payload, name_matched=False)
                # A replay records one attempt: not when a monitor rule recorded another.
                return self._reply(data, query, answer, proto, "blocked", started, entry, entry.rule, entry.stage,
                                   remember=rule is None)
            return self._reply(data, query, self._from_entry(query, entry), proto, "cache", started, entry, rule,
                               "query")
        # 7.-9. forward, inspect, store and reply: resolve()
        return query

    def _refuse(self, data: bytes, reason: str, client: str, proto: str) -> bytes | None:
        stats = self.stats
        stats.refused[reason] = stats.refused.get(reason, 0) + 1
        if reason == "acl" and self.admission.drops(reason):
            return None
        query = wire.parse_query(data)
        if not isinstance(query, wire.Query):
            return None  # a malformed packet from a client we do not serve: no answer at all
        if reason == "ratelimit":
            # One of our devices beaconing to a vendor faster than the limit: still evidence.
            rule = self.policy.match_wire(query.qname)
            if rule is not None and rule.action != "allow":
                self._record(query, client, rule, "query", proto)
            if self.admission.drops(reason):
                return None
        return self._done(wire.simple_answer(query, wire.REFUSED, self.udp_payload), "refused", wire.REFUSED,
                          time.perf_counter())

    def _reply(self, data: bytes, query: wire.Query, answer: bytes, proto: str, source: str, started: float,
               entry: Entry | None, rule: Rule | None, stage: str, remember: bool = True) -> bytes:
        """An answer found without forwarding: fitted to UDP, remembered for replays, counted."""
        answer = self._fit(query, answer, proto)
        if proto == "udp" and remember and len(data) <= REMEMBER_MAX:
            self._remember(data, query, answer, entry, rule, stage, source)
        return self._done(answer, source, None, started)

    def _remember(self, data: bytes, query: wire.Query, answer: bytes, entry: Entry | None, rule: Rule | None,
                  stage: str, source: str) -> None:
        if len(self.packets) + len(self.policy_packets) >= self.packets_max:
            self._forget_oldest()
        rcode = answer[3] & 0x0F
        kind = ReplayKind(source, RCODE_NAMES.get(rcode, str(rcode)), entry is not None)
        if rule is not None:
            kind = kind._replace(list_name=rule.list_name, stage=stage, action=rule.action)
        slot = self.stats.replay_slot(kind)
        # Only replays that are events need the query (name, type, MAC); a cached answer
        # re-reads it from the bytes when its TTLs are re-rendered.
        packet = Packet(query if rule is not None else None, answer[2:], entry, rule, stage, slot,
                        source == "cache")
        if entry is not None:
            self.packets[data[2:]] = packet  # _refresh() checks it on its first replay
        else:
            packet.second = self.second  # a policy answer: exact until the policy changes
            self.policy_packets[data[2:]] = packet

    def _forget_oldest(self) -> None:
        """Make room: the oldest eighth of the larger table goes, a bounded pause (dropping
        all the remembered answers at once froze the loop for ~20 ms at 100,000)."""
        packets = max(self.packets, self.policy_packets, key=len)
        for key in list(itertools.islice(packets, max(len(packets) // 8, 1))):
            del packets[key]

    def _next_second(self, now: float) -> None:
        """A new whole second: every remembered answer is checked again on its next replay."""
        self.second = int(now)
        self.second_ends = self.second + 1

    def _refresh(self, packet: Packet, replay_key: bytes) -> bool:
        """Make a remembered answer exact for all of this second: its entry fresh from the
        second's start, its TTLs aged to it. False (and forgotten) if the entry expired.
        Entries expire at the turn of a second (cache.Entry): checked at the second itself,
        not at a reading within it: a batch read a little earlier cannot stretch them."""
        entry = packet.entry
        second = self.second
        if entry is not None:  # a policy answer has none: it never goes out of date
            if entry.expires <= second:
                del self.packets[replay_key]
                return False
            tail = packet.tail
            if packet.ages and not tail[0] & 0x02:  # a whole answer (a TC one holds no TTLs)
                # This client's header and question, the records with this second's TTLs (as
                # rendered for every client of the entry), and its OPT after them.
                body, start = entry.render(second), entry.records_at
                packet.tail = tail[:start] + body[start:] + tail[len(body):]
        packet.second = second
        return True

    async def resolve(self, query: wire.Query, client: str, proto: str) -> bytes:
        """Forward a cache miss (coalescing identical questions), inspect, store, reply."""
        started = time.perf_counter()
        key = (query.qname, query.qtype, query.qclass, query.do)
        future = self.inflight.get(key)
        if future is None:
            if len(self.inflight) >= self.config.upstreams.max_in_flight:
                self.stats.inflight_rejected += 1
                return self._done(self._servfail(query, b"too many queries in flight"), "error", wire.SERVFAIL,
                                  started)
            future = asyncio.get_running_loop().create_future()
            self.inflight[key] = future
            try:
                answer = await self.upstreams.resolve(query.qname, query.qtype, query.qclass, query.do,
                                                      tcp=proto == "tcp")
                future.set_result(self._store(key, answer) if answer is not None else None)
            except Exception:  # never leave waiters hanging on a bug
                log.exception("forwarding %s failed", from_wire(query.qname))
                future.set_result(None)
            finally:
                del self.inflight[key]
        entry = await future
        if entry is None:
            stale = self.cache.get_stale(key, time.monotonic()) if self.config.cache.serve_stale else None
            if stale is None or stale.rule is not None:
                return self._done(self._servfail(query, b"no upstream answered"), "error", wire.SERVFAIL, started)
            self.stats.cache_stale_served += 1
            reply = self._from_entry(query, stale, stale=True)
            return self._done(self._fit(query, reply, proto), "stale", None, started)
        if entry.rule is not None:
            self._record(query, client, entry.rule, entry.stage, proto)
            answer = wire.blocked_answer(query, entry.rule, self.udp_payload, name_matched=False)
            return self._done(self._fit(query, answer, proto), "blocked", None, started)
        return self._done(self._fit(query, self._from_entry(query, entry), proto), "upstream", None, started)

    # ------------------------------------------------------------------ answers

    def _done(self, answer: bytes, source: str, rcode: int | None, started: float) -> bytes:
        stats = self.stats
        if rcode is None:
            rcode = answer[3] & 0x0F
        label = (source, RCODE_NAMES.get(rcode, str(rcode)))
        stats.responses[label] = stats.responses.get(label, 0) + 1
        stats.request_duration.observe(time.perf_counter() - started)
        return answer

    def _fit(self, query: wire.Query, answer: bytes, proto: str) -> bytes:
        """Over UDP, an answer larger than the client can take becomes a TC answer."""
        if proto != "udp":
            return answer
        limit = min(query.udp_size, self.udp_payload) if query.edns else 512
        if len(answer) <= limit:
            return answer
        return wire.truncated(query, answer, self.udp_payload)

    def _servfail(self, query: wire.Query, why: bytes) -> bytes:
        ede = wire.ede_option(wire.EDE_NO_REACHABLE_AUTHORITY, why) if query.edns else b""
        return wire.simple_answer(query, wire.SERVFAIL, self.udp_payload, ede)

    def _from_entry(self, query: wire.Query, entry: Entry, stale: bool = False) -> bytes:
        """A cached answer for this client: its ID, RD bit, question case and OPT; aged TTLs."""
        body = entry.render(time.monotonic(), self.config.cache.stale_ttl if stale else 0)
        arcount = (body[8] << 8 | body[9]) + (1 if query.edns else 0)
        end_question = 10 + len(query.question)
        # RD and CD from this client (RFC 4035 3.2.2: CD is copied); RA set: we offer
        # recursion whatever the upstream said.
        flags = bytes(((body[0] & 0xFE) | (query.flags >> 8 & 0x01), (body[1] & 0xEF) | 0x80 | (query.flags & 0x10)))
        reply = (query.data[:2] + flags + body[2:8]
                 + _H.pack(arcount) + query.question + body[end_question:])
        if query.edns:
            ede = wire.ede_option(wire.EDE_STALE_ANSWER) if stale else b""
            reply += wire.opt_record(self.udp_payload, query.do, 0, ede)
        return reply

    def _store(self, key: CacheKey, answer: bytes) -> Entry | None:
        """Inspect an upstream answer and cache it; None if it is malformed."""
        try:
            scan = wire.scan_answer(answer)
        except wire.MalformedAnswer:
            self.stats.drop("bad-upstream-answer")
            return None
        body = answer[2:]
        offsets = [o - 2 for o in scan.ttl_offsets]
        if scan.opt_span is not None:  # our own OPT goes back in per client
            start, end = scan.opt_span
            body = answer[2:start] + answer[end:]
            offsets = [o if o < start - 2 else o - (end - start) for o in offsets]
            arcount = (body[8] << 8 | body[9]) - 1
            body = body[:8] + _H.pack(arcount) + body[10:]
        ttls = [struct.unpack_from("!I", body, o)[0] & 0x7FFFFFFF for o in offsets]
        now = time.monotonic()
        cache = self.config.cache
        entry = Entry(body, offsets, ttls, now, self._lifetime(scan, body), cache.stale_window if cache.serve_stale
                      else 0)
        entry.records_at = scan.end_question - 2
        if self.inspect_answers and (scan.cnames or scan.addresses):
            self._inspect(answer, scan, entry)
        if entry.expires > now:
            self.cache.put(key, entry)
        return entry

    def _lifetime(self, scan: wire.Scan, body: bytes) -> int:
        cache = self.config.cache
        rcode = scan.rcode
        if rcode == wire.SERVFAIL:
            return cache.servfail_ttl
        if rcode not in (wire.NOERROR, wire.NXDOMAIN):
            return 0
        ancount = body[4] << 8 | body[5]
        if rcode == wire.NXDOMAIN or ancount == 0:
            ttl = scan.negative_ttl if scan.negative_ttl is not None else 60
            return max(cache.min_ttl, min(ttl, cache.negative_ttl))
        ttl = scan.min_ttl if scan.min_ttl is not None else 0
        return max(cache.min_ttl, min(ttl, cache.max_ttl)) if ttl else 0

    def _inspect(self, answer: bytes, scan: wire.Scan, entry: Entry) -> None:
        """A CNAME into a blocked name, or an address in a blocked network, blocks the answer."""
        policy = self.policy
        for offset in scan.cnames:
            try:
                rule = policy.match_wire(wire.read_name(answer, offset))
            except wire.MalformedAnswer:
                continue
            if rule is not None and rule.action == "block":
                entry.rule, entry.stage = rule, "cname"
                return
        for address in scan.addresses:
            rule = policy.match_ip(address)
            if rule is not None and rule.action == "block":
                entry.rule, entry.stage = rule, "answer-ip"
                return

    # ------------------------------------------------------------------ events

    def _record(self, query: wire.Query, client: str, rule: Rule, stage: str, proto: str) -> None:
        """Count a blocked (or monitored) attempt and record its event."""
        key = (rule.list_name, stage, rule.action)
        self.stats.blocked[key] = self.stats.blocked.get(key, 0) + 1
        self._event(query, client, rule, stage, proto)

    def _event(self, query: wire.Query, client: str, rule: Rule, stage: str, proto: str) -> None:
        if query.ecs is not None and self.trusted_relays:
            client = self._ecs_client(query.ecs, client)
        # The wire name as sent: the writer thread renders it, off the query path.
        self.events.record(time.time(), client, query.mac, query.question[:-4], query.qtype, rule, stage, proto)

    def _ecs_client(self, ecs: bytes, client: str) -> str:
        """The device behind a trusted relay, from its EDNS Client Subnet option."""
        try:
            address = ipaddress.ip_address(client)
            if not any(address in network for network in self.trusted_relays) or len(ecs) < 4:
                return client
            family, source_prefix = _H.unpack_from(ecs)[0], ecs[2]
            raw = ecs[4:]
            if family == 1:
                return str(ipaddress.IPv4Address(raw.ljust(4, b"\x00")[:4])) if source_prefix else client
            if family == 2:
                return str(ipaddress.IPv6Address(raw.ljust(16, b"\x00")[:16])) if source_prefix else client
        except ValueError:
            pass
        return client

    # ------------------------------------------------------------------ policy

    def _on_swap(self, policy: Policy) -> None:
        """Called by the policy holder, from a reload thread or, at start-up, the loop."""
        loop = self.loop
        if loop is None or not loop.is_running() or _running_loop() is loop:
            self._install(policy)
        else:
            loop.call_soon_threadsafe(self._swap, policy)

    def _swap(self, policy: Policy) -> None:
        """On the loop: the policy and empty tables at once. The answers remembered under
        the old policy (~100,000) are freed by a worker thread a few at a time: freed here in
        one C call, they stopped answering for ~11 ms."""
        held = self._install(policy)
        assert self.loop is not None
        try:
            self.loop.run_in_executor(None, _empty_gradually, held)
        except RuntimeError:  # the executor is shut down: we are exiting, they go with us
            pass

    def _install(self, policy: Policy) -> list[dict[Any, Any]]:
        """Serve this policy from now on. Answers decided and inspected under the old one go;
        the tables that held them are returned."""
        self.policy = policy
        held: list[dict[Any, Any]] = [self.cache.clear(), self.packets, self.policy_packets]
        self.packets, self.policy_packets = {}, {}
        return held

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.holder.load_initial()  # raises on a broken list: never serve unfiltered
        settle_collector()
        # The event writer, the policy watcher and the metrics server share the interpreter
        # with answering; a thread that wants the GIL waits a whole switch interval. 0.5 ms
        # instead of 5 took p99 at 2,000 q/s from 1.87 to 1.17 ms (bench/RESULTS.md).
        sys.setswitchinterval(SWITCH_INTERVAL)
        for address in self.config.server.listen:
            await self._listen(address)
        if self.config.server.user and os.geteuid() == 0:
            from netblock.privileges import drop_privileges

            drop_privileges(self.config.server.user)
        self.events.start()
        self.upstreams.start_health_checks(self.config.upstreams.health_interval)
        start_watching = getattr(self.holder, "start_watching", None)
        if start_watching is not None and self.config.policy.watch:
            start_watching()
        self.loop.add_signal_handler(signal.SIGHUP, self._reload_in_thread)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        log.info("serving on %s with policy %s (%s), upstreams %s", ", ".join(self.config.server.listen),
                 self.policy.digest, ", ".join(f"{k}={v}" for k, v in self.policy.entry_counts().items()),
                 ", ".join(s.address for s in self.upstreams.servers))

    def _reload_in_thread(self) -> None:
        assert self.loop is not None
        self.loop.run_in_executor(None, self.holder.reload)

    async def _listen(self, address: str) -> None:
        assert self.loop is not None
        host, port = parse_hostport(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        reuse = self.config.server.reuse_port
        try:
            sock = self._udp_socket(host, port, family, reuse)
            if self.config.server.batch_io and batchio.available():
                self.transports.append(BatchUdpListener(self, sock))
            else:
                transport, _ = await self.loop.create_datagram_endpoint(lambda: UdpListener(self), sock=sock)
                self.transports.append(transport)
            self.tcp_servers.append(await asyncio.start_server(
                self._tcp_client, host, port, family=family, reuse_address=True, reuse_port=reuse or None,
                backlog=1024))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror or exc}") from None

    @staticmethod
    def _udp_socket(host: str, port: int, family: int, reuse_port: bool) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                # IPv6 only, as the TCP listeners are: "[::]:53" next to "0.0.0.0:53" (the
                # production config) must not collide with it on Linux's dual-stack default.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def serve_forever(self) -> None:
        await self.start()
        assert self.stopping is not None
        await self.stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        for transport in self.transports:
            transport.close()
        for server in self.tcp_servers:
            server.close()
        self.upstreams.stop_health_checks()
        stop_watching = getattr(self.holder, "stop", None)
        if stop_watching is not None:
            stop_watching()
        await asyncio.get_running_loop().run_in_executor(None, self.events.stop)

    # ------------------------------------------------------------------ TCP

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tcp = self.config.tcp
        if self.tcp_connections >= tcp.max_connections:
            self.stats.tcp_connections_rejected += 1
            writer.close()
            return
        self.tcp_connections += 1
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        pending: set[asyncio.Task[None]] = set()
        try:
            for _ in range(tcp.max_queries_per_connection):
                try:
                    prefix = await asyncio.wait_for(reader.readexactly(2), tcp.idle_timeout)
                    data = await asyncio.wait_for(reader.readexactly(_H.unpack(prefix)[0]), tcp.idle_timeout)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                result = self.handle(data, client, "tcp")
                if result is None:
                    continue
                if isinstance(result, bytes):
                    _tcp_send(writer, result)
                    continue
                task = asyncio.get_running_loop().create_task(self._tcp_forward(result, client, writer))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending, timeout=self.config.upstreams.timeout + 1)
            # A client that does not read its answers must not keep them (and the socket)
            # in memory after we are done with it: flush within the idle timeout or abort.
            if not writer.is_closing():
                writer.transport.set_write_buffer_limits(0)  # drain() now waits for an empty buffer
                await asyncio.wait_for(writer.drain(), tcp.idle_timeout)
        except (TimeoutError, ConnectionError):
            writer.transport.abort()
        finally:
            self.tcp_connections -= 1
            writer.close()

    async def _tcp_forward(self, query: wire.Query, client: str, writer: asyncio.StreamWriter) -> None:
        _tcp_send(writer, await self.resolve(query, client, "tcp"))


_TCP_WRITE_LIMIT = 256 * 1024


def _tcp_send(writer: asyncio.StreamWriter, answer: bytes) -> None:
    """Write one answer, unless the client has stopped reading: then drop the connection
    rather than buffer up to max_queries_per_connection answers of 64 KB for it."""
    if writer.is_closing():
        return
    if writer.transport.get_write_buffer_size() > _TCP_WRITE_LIMIT:
        writer.transport.abort()
        return
    writer.write(_H.pack(len(answer)) + answer)


class Packet:
    """A remembered UDP answer: the reply after its ID, and what it came from."""

    __slots__ = ("ages", "entry", "query", "rule", "second", "slot", "stage", "tail")

    def __init__(self, query: wire.Query | None, tail: bytes, entry: Entry | None, rule: Rule | None, stage: str,
                 slot: int, ages: bool) -> None:
        self.query = query  # the first query with these bytes, for events: name, type and MAC
        self.tail = tail
        self.entry = entry  # the cache entry behind it, whose expiry and TTLs it follows
        self.rule = rule  # a blocking or monitoring rule: every replay is an event
        self.stage = stage
        self.slot = slot  # where its replays are counted: Stats.replayed
        self.ages = ages  # its TTLs decay (a cached upstream answer)
        self.second: int | None = None  # DnsServer.second when last made exact; see _refresh()


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        result = self.server.handle(data, addr[0], "udp")
        if result is None:
            return
        if result.__class__ is bytes:
            self.transport.sendto(result, addr)  # type: ignore[union-attr]
            return
        asyncio.get_running_loop().create_task(self._forward(result, addr))  # type: ignore[arg-type]

    async def _forward(self, query: wire.Query, addr: tuple[Any, ...]) -> None:
        answer = await self.server.resolve(query, addr[0], "udp")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for clients that went away: nothing to do


class BatchUdpListener:
    """UDP queries read and answered a batch per system call (batchio), each through
    handle(); forwarded ones are answered when their upstream answer comes."""

    MAX_ROUNDS = 8  # batches per wakeup before the event loop gets its turn
    CLIENTS_MAX = 65536  # remembered source addresses (decoded once each)

    def __init__(self, server: DnsServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.io = batchio.BatchSocket(sock)
        self.clients: dict[bytes, tuple[str, Any]] = {}  # raw sockaddr -> (client address, sendto address)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        io, handle, clients, stats = self.io, self.server.handle, self.clients, self.server.stats
        monotonic = time.monotonic
        for _ in range(self.MAX_ROUNDS):
            batch = io.receive()
            now = monotonic()  # one reading for the batch: it came in one system call
            answers = []
            for i, (data, raw) in enumerate(batch):
                client = clients.get(raw)
                if client is None:
                    client = self._new_client(raw)
                try:
                    result = handle(data, client[0], "udp", now)
                except Exception:  # a bug must cost one query, not the batch around it
                    log.exception("query from %s failed", client[0])
                    continue
                if result is None:
                    continue
                if result.__class__ is bytes:
                    answers.append((i, result))
                else:
                    self.loop.create_task(self._forward(result, client[1]))  # type: ignore[arg-type]
            if answers:
                full, refused = io.send(answers)
                if full:
                    stats.drop("send-buffer-full", full)
                if refused:
                    stats.drop("send-refused", refused)
            if len(batch) < batchio.BATCH:
                return

    def _new_client(self, raw: bytes) -> tuple[str, Any]:
        if len(self.clients) >= self.CLIENTS_MAX:  # a flood of spoofed sources: stay bounded
            self.clients.clear()
        client = self.clients[raw] = batchio.source_address(raw)
        return client

    async def _forward(self, query: wire.Query, address: Any) -> None:
        answer = await self.server.resolve(query, address[0], "udp")
        if self.sock.fileno() >= 0:
            self._send(answer, address)

    def _send(self, answer: bytes, address: Any) -> None:
        try:
            self.sock.sendto(answer, address)
        except OSError as exc:
            self.server.stats.drop("send-buffer-full" if isinstance(exc, BlockingIOError) else "send-refused")

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
