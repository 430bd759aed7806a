"""Spoofing defence (DNSpooq lessons): forged answers racing a slowed real upstream are
never accepted and are counted; upstream queries use random IDs and many source ports.

The forger is on loopback. A forged datagram from any address other than the upstream's
never reaches netblock's connected per-query socket (the kernel drops it), so that part only
checks that nothing is accepted. The part that matters is forgeries from the upstream's own
address and port to the live query sockets: those are sent through a raw socket (root) as
soon as the real query is seen, 200 ms before the real answer, with wrong IDs, a wrong
question or QR clear, and must all be counted as mismatches and dropped."""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from test_reliability_tools import FakeUpstream, answer_a, blast, header, metric, question, scrape, wire_name

from harness import Netblock, Nsd, free_port

POISON = b"\x06\x06\x06\x06"
ZONE = """$ORIGIN spoof.test.
$TTL 300
@        IN SOA ns1 hostmaster 1 3600 600 86400 300
@        IN NS  ns1
ns1      IN A   127.0.0.1
*        IN A   192.0.2.77
"""
QUERIES = 440
FORGED_PER_QUERY = 23  # 20 wrong IDs, right ID with a wrong name, a wrong type, QR clear


def _forgeries(query: bytes) -> list[bytes]:
    qid = query[0] << 8 | query[1]
    end = 12
    while query[end]:
        end += query[end] + 1
    name = query[12 : end + 1]
    qtype, qclass = struct.unpack_from("!HH", query, end + 1)
    ids = [i for i in random.sample(range(65536), 21) if i != qid][:20]
    base = answer_a(query, POISON)
    out = [struct.pack("!H", i) + base[2:] for i in ids]
    wrong_name = wire_name("evil.spoof.test") + struct.pack("!HH", qtype, qclass)
    out.append(answer_a(query[:12] + wrong_name, POISON))
    out.append(answer_a(query[:12] + name + struct.pack("!HH", 28 if qtype != 28 else 1, qclass), POISON))
    out.append(base[:2] + bytes((base[2] & 0x7F,)) + base[3:])  # QR clear: not an answer
    return out


class RawForger:
    """Sends UDP datagrams with a chosen source port from 127.0.0.1 (a raw socket)."""

    def __init__(self, source_port: int) -> None:
        self.source_port = source_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self.sent = 0

    def send(self, dest_port: int, payload: bytes) -> None:
        udp = struct.pack("!HHHH", self.source_port, dest_port, 8 + len(payload), 0)  # checksum 0: none
        self.sock.sendto(udp + payload, ("127.0.0.1", 0))
        self.sent += 1

    def close(self) -> None:
        self.sock.close()


class SlowProxy:
    """Relays queries to NSD and holds each real answer back `delay` seconds; tells the
    forger about every query the moment it arrives."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.port = free_port()
        self.delay = delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up.connect(("127.0.0.1", target_port))
        self.forger = RawForger(self.port)
        self.clients: dict[bytes, tuple[tuple[str, int], float]] = {}
        self.held: list[tuple[float, bytes, tuple[str, int]]] = []
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SlowProxy:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            due = [h for h in self.held if h[0] <= now]
            for item in due:
                self.held.remove(item)
                self.sock.sendto(item[1], item[2])
            wait = min((h[0] for h in self.held), default=now + 0.05) - now
            readable, _, _ = select.select([self.sock, self.up], [], [], max(0.0, min(wait, 0.05)))
            if self.sock in readable:
                data, peer = self.sock.recvfrom(65535)
                if len(data) < 12 or data[2] & 0x80:  # the blind sprayer hit our port: not a query
                    continue
                self.queries += 1
                self.clients[data[:2] + data[12:].lower()] = (peer, time.monotonic())
                for forged in _forgeries(data):
                    self.forger.send(peer[1], forged)
                self.up.send(data)
            if self.up in readable:
                data = self.up.recv(65535)
                end = 12
                while data[end]:
                    end += data[end] + 1
                found = None
                for key, value in self.clients.items():
                    if key[:2] == data[:2] and key[2:].startswith(data[12 : end + 5].lower()):
                        found = key, value
                        break
                if found is not None:
                    del self.clients[found[0]]
                    peer, arrived = found[1]
                    self.held.append((arrived + self.delay, data, peer))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.up.close()
        self.forger.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the forger needs a raw socket (root; CI runs as root)")
def test_forged_answers_racing_a_slow_upstream_are_never_accepted(tmp_path: Path) -> None:
    nsd = Nsd(tmp_path / "nsd", zones={"spoof.test": ZONE}).start()
    proxy = SlowProxy(nsd.port, delay=0.2).start()
    config = {"access": {"rate_limit": {"queries": 0}}, "upstreams": {"health_interval": 0}}
    try:
        with Netblock(tmp_path / "nb", [proxy.address], config=config) as server:
            before = metric(scrape(server.metrics_port), "netblock_upstream_mismatched_answers_total")
            forged_before = proxy.forger.sent
            proxied_before = proxy.queries
            queries = [header(qid=i + 1) + question(wire_name(f"n{i}.spoof.test")) for i in range(QUERIES)]
            # A blind forger elsewhere on loopback sprays the same poison at random ports.
            spray_stop = threading.Event()
            spray = threading.Thread(target=_spray, args=(spray_stop,), daemon=True)
            spray.start()
            try:
                results = blast(server.port, queries, window=50, timeout=60)
            finally:
                spray_stop.set()
                spray.join(5)
            answers = [r.answer for r in results]
            assert all(a is not None for a in answers), f"{sum(a is None for a in answers)} unanswered"
            for i, answer in enumerate(answers):
                assert answer is not None
                message = dns.message.from_wire(answer)
                assert message.rcode() == dns.rcode.NOERROR, (i, message)
                assert [r.to_text() for r in message.answer[0]] == ["192.0.2.77"], (i, message)
            forged = proxy.forger.sent - forged_before
            assert forged >= 10_000
            time.sleep(0.3)
            after = metric(scrape(server.metrics_port), "netblock_upstream_mismatched_answers_total")
            # Every forgery that reached a live query socket was counted (and dropped).
            assert proxy.queries - proxied_before == QUERIES  # one upstream query per name, no retries
            assert after - before == forged, (after - before, forged)
            # The cache holds the real answers only.
            for i in range(0, QUERIES, 37):
                cached = server.query(f"n{i}.spoof.test", "A")
                assert [r.to_text() for r in cached.answer[0]] == ["192.0.2.77"]
    finally:
        proxy.stop()
        nsd.stop()


def _spray(stop: threading.Event) -> None:
    """Forged answers from a plain socket on 127.0.0.1 to random ports: bounded, paced."""
    query = header(qid=1) + question(wire_name("n1.spoof.test"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for n in range(20_000):
            if stop.is_set():
                return
            forged = struct.pack("!H", n) + answer_a(query, POISON)[2:]
            try:
                sock.sendto(forged, ("127.0.0.1", random.randrange(32768, 61000)))
            except OSError:
                pass
            if n % 100 == 0:
                time.sleep(0.002)


def test_upstream_queries_use_random_ids_and_many_source_ports(tmp_path: Path) -> None:
    fake = FakeUpstream(lambda query, peer: answer_a(query)).start()
    config = {"access": {"rate_limit": {"queries": 0}}, "upstreams": {"health_interval": 0}}
    try:
        with Netblock(tmp_path / "nb", [fake.address], config=config) as server:
            fake.seen.clear()
            count = 10_000
            queries = [header(qid=i) + question(wire_name(f"p{i}.ports.test")) for i in range(count)]
            results = blast(server.port, queries, window=100, timeout=90)
            assert sum(r.answer is not None for r in results) == count
            seen = [s for s in fake.seen if s[3][:-4].endswith(b"\x05ports\x04test\x00")]
            assert len(seen) == count
            ports = {s[1] for s in seen}
            assert len(ports) >= 1_000, len(ports)
            print(f"{count} upstream queries: {len(ports)} source ports, {len({s[2] for s in seen})} IDs")
            ids = [s[2] for s in seen]
            # IDs from a uniform 16-bit source: about 9,270 distinct in 10,000 draws,
            # each 1/16 of the range about 625 times, and unrelated to the client's IDs.
            assert len(set(ids)) > 8_800
            buckets = Counter(i >> 12 for i in ids)
            assert all(450 < buckets[b] < 800 for b in range(16)), buckets
            client_ids = {f"p{i}.ports.test".encode(): i for i in range(count)}
            same = sum(1 for s in seen if client_ids.get(_name(s[3])) == s[2])
            assert same < 10, same
    finally:
        fake.stop()


def _name(question_bytes: bytes) -> bytes:
    labels, offset = [], 0
    while question_bytes[offset]:
        length = question_bytes[offset]
        labels.append(question_bytes[offset + 1 : offset + 1 + length])
        offset += length + 1
    return b".".join(labels)
