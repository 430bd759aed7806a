"""Overload: a blackholed upstream under 5,000 queries/s, and TCP connections that never
finish a query. The in-flight cap holds (observed at the fake upstream), the excess gets a
fast, counted SERVFAIL, memory stays flat, service comes back quickly when the upstream
does; idle and half-sent TCP connections neither stop service nor live past the timeout."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode

from test_reliability_tools import (
    FakeUpstream,
    answer_a,
    blast,
    exchange,
    header,
    metric,
    opt,
    question,
    rss_kb,
    scrape,
    wire_name,
)

from harness import Netblock, Nsd, wait_for

CAP = 50
TIMEOUT = 1.0


def _ede_text(answer: bytes) -> str:
    message = dns.message.from_wire(answer)
    texts = [o.text or "" for o in message.options if isinstance(o, dns.edns.EDEOption)]
    return texts[0] if texts else ""


def test_blackholed_upstream_at_5000_qps(tmp_path: Path) -> None:
    fake = FakeUpstream(handler=None).start()  # receives, records, never answers
    config = {"access": {"rate_limit": {"queries": 0}},
              "upstreams": {"max_in_flight": CAP, "timeout": TIMEOUT, "attempt_timeout": TIMEOUT,
                            "health_interval": 0}}
    try:
        with Netblock(tmp_path / "nb", [fake.address], config=config) as server:
            server.query("weixin.qq.com", "A")  # warm: the blocked path is up
            time.sleep(TIMEOUT + 0.2)  # the start-up probe has timed out and left
            baseline = rss_kb(server.pid)
            rejected_before = metric(scrape(server.metrics_port), "netblock_inflight_rejected_total")
            fake.seen.clear()
            peak = [baseline]
            blocked_latency: list[float] = []
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_kb(server.pid))
                    started = time.monotonic()
                    answer = exchange(server.port, header(qid=9) + question(wire_name("weixin.qq.com")), 2)
                    if answer is not None and answer[3] & 0x0F == 3:
                        blocked_latency.append(time.monotonic() - started)
                    time.sleep(0.1)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            count = 15_000  # 3 s at 5,000/s
            queries = [header(qid=i, ar=1) + question(wire_name(f"o{i}.load.test")) + opt()
                       for i in range(count)]
            try:
                results = blast(server.port, queries, rate=5000, timeout=30, late=TIMEOUT + 1)
            finally:
                stop.set()
                watcher.join(5)
            after = scrape(server.metrics_port)
            # Fill every slot with queries the blackhole swallows, then the upstream returns:
            # how long until a new name resolves?
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as filler:
                for i in range(CAP + 10):
                    stuck = header(qid=i) + question(wire_name(f"f{i}.load.test"))
                    filler.sendto(stuck, ("127.0.0.1", server.port))
                time.sleep(0.1)
            fake.handler = lambda query, peer: answer_a(query)
            returned = time.monotonic()
            recovered = None
            for i in range(60):
                answer = exchange(server.port, header(qid=i) + question(wire_name(f"r{i}.load.test")), 0.2)
                if answer is not None and answer[3] & 0x0F == 0:
                    recovered = time.monotonic() - returned
                    break
                time.sleep(0.05)
            final_rss = rss_kb(server.pid)

            arrivals = sorted(t for t, _port, _id, q in fake.seen if q[:-4].endswith(b"\x04load\x04test\x00"))
            # Every query admitted upstream holds a slot for TIMEOUT seconds, so any window
            # shorter than that sees at most CAP arrivals. Half of it: the fake upstream's thread
            # may stamp an arrival late on a loaded machine, and a slot never frees early.
            window = TIMEOUT / 2
            most = max(sum(1 for t in arrivals[i:] if t - start < window) for i, start in enumerate(arrivals))
            assert 0 < most <= CAP, most
            answered = [r for r in results if r.answer is not None]
            assert len(answered) >= count * 0.99, f"{count - len(answered)} lost"
            assert all(r.answer is not None and r.answer[3] & 0x0F == 2 for r in answered)
            fast = [r for r in answered
                    if r.answer is not None and _ede_text(r.answer) == "too many queries in flight"]
            rejected = metric(after, "netblock_inflight_rejected_total") - rejected_before
            lost = count - len(answered)
            assert len(fast) <= rejected <= len(fast) + lost
            # Every other answer waited on the upstream: one arrival there each (the cap above
            # bounds those). Counted, not assumed from a 3 s blast: a loaded server takes longer
            # over the queries and admits CAP more per TIMEOUT of it.
            admitted = sum(1 for _t, _port, _id, q in fake.seen
                           if q[1:2] == b"o" and q[:-4].endswith(b"\x04load\x04test\x00"))
            waited = len(answered) - len(fast)
            assert waited <= admitted <= waited + lost, (waited, admitted, lost)
            # Behaviour, not speed: the excess is answered at once (about 1 ms here), not held
            # until a slot frees, which takes TIMEOUT.
            latencies = sorted(r.latency for r in fast)
            assert latencies[len(latencies) // 2] < TIMEOUT / 4, latencies[len(latencies) // 2]  # median
            assert latencies[int(len(latencies) * 0.99)] < TIMEOUT
            # The admitted ones get their SERVFAIL when the upstream timeout ends, not later.
            slow = [r for r in answered if r not in fast]
            assert all(TIMEOUT - 0.1 < r.latency < TIMEOUT + 0.5 for r in slow)
            # Blocked names never wait on the upstream (a few ms here; waiting would take TIMEOUT).
            assert blocked_latency and max(blocked_latency) < TIMEOUT, blocked_latency
            assert peak[0] - baseline < 50 * 1024, (baseline, peak[0])
            assert final_rss - baseline < 50 * 1024
            # The must-show: service back within 2 s of the upstream's return. Behaviour:
            # the stuck queries free their slots at TIMEOUT; nothing else has to wait.
            assert recovered is not None and recovered <= 2.0, recovered
            print(f"cap {CAP}: max {most} upstream arrivals per {window:.1f}s, {rejected:.0f} rejected, "
                  f"median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
                  f"RSS {baseline} -> peak {peak[0]} KB, "
                  f"blocked max {max(blocked_latency) * 1000:.1f} ms, recovered in {recovered:.2f}s")
    finally:
        fake.stop()


def _connect(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        sock.sendall(payload)
    sock.setblocking(False)
    return sock


def _closed_at(socks: list[socket.socket], deadline: float) -> dict[socket.socket, float]:
    """When the server closed each connection (EOF or reset), until `deadline`."""
    closed: dict[socket.socket, float] = {}
    while len(closed) < len(socks) and time.monotonic() < deadline:
        open_socks = [s for s in socks if s not in closed]
        readable, _, _ = select.select(open_socks, [], [], 0.1)
        for sock in readable:
            try:
                data = sock.recv(4096)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if not data:
                closed[sock] = time.monotonic()
    return closed


def test_idle_and_half_sent_tcp_connections(tmp_path: Path, upstream: Nsd) -> None:
    idle_timeout = 2.0
    config = {"tcp": {"idle_timeout": idle_timeout, "max_connections": 400}}
    with Netblock(tmp_path / "nb", [upstream.address], config=config) as server:
        started = time.monotonic()
        query = header(qid=1) + question()
        socks = [_connect(server.port, b"") for _ in range(100)]  # idle
        socks += [_connect(server.port, b"\x00") for _ in range(100)]  # one byte of the prefix
        socks += [_connect(server.port, len(query).to_bytes(2, "big") + query[:5]) for _ in range(100)]  # cut
        try:
            # Service goes on over UDP and TCP while all 300 are held open.
            assert server.query("www.example.test", "A").rcode() == dns.rcode.NOERROR
            assert server.query("www.example.test", "A", tcp=True).rcode() == dns.rcode.NOERROR
            assert server.query("weixin.qq.com", "A", tcp=True).rcode() == dns.rcode.NXDOMAIN
            closed = _closed_at(socks, started + idle_timeout + 4)
            assert len(closed) == 300, f"{300 - len(closed)} connections still open"
            ages = [at - started for at in closed.values()]
            # Behaviour: closed by the idle timeout, not before and not at a second one (the
            # slack is for accepting 300 connections on a loaded machine).
            assert min(ages) >= idle_timeout - 0.3 and max(ages) <= idle_timeout + 1.5, (min(ages), max(ages))
            assert "Traceback" not in server.log()
        finally:
            for sock in socks:
                sock.close()


def test_connection_limit_refuses_promptly(tmp_path: Path, upstream: Nsd) -> None:
    limit = 20
    config = {"tcp": {"idle_timeout": 2.0, "max_connections": limit}}
    with Netblock(tmp_path / "nb", [upstream.address], config=config) as server:
        held = [_connect(server.port, b"") for _ in range(limit)]
        try:
            time.sleep(0.2)
            before = metric(scrape(server.metrics_port), "netblock_tcp_connections_rejected_total")
            started = time.monotonic()
            extra = [_connect(server.port, b"") for _ in range(5)]
            closed = _closed_at(extra, started + 1.5)
            # Over the limit: closed at once (milliseconds), not queued until a slot frees
            # (the held ones idle out 1.8 s from now).
            assert len(closed) == 5 and max(closed.values()) - started < 1.0
            rejected = metric(scrape(server.metrics_port), "netblock_tcp_connections_rejected_total")
            assert rejected - before == 5
            assert server.query("www.example.test", "A").rcode() == dns.rcode.NOERROR  # UDP unaffected
            for sock in extra:
                sock.close()
            # Once the idle ones time out, TCP serves again.
            _closed_at(held, time.monotonic() + 4)
            assert server.query("www.example.test", "A", tcp=True).rcode() == dns.rcode.NOERROR
        finally:
            for sock in held:
                sock.close()


HUGE_ZONE = ("$ORIGIN huge.test.\n$TTL 300\n@ IN SOA ns1 h 1 3600 600 86400 300\n@ IN NS ns1\nns1 IN A 127.0.0.1\n"
             + "".join(f'big IN TXT "{i:04d}{"x" * 240}"\n' for i in range(220)))  # a 56 KB answer


def test_tcp_clients_that_never_read_cannot_hold_memory(tmp_path: Path) -> None:
    """50 connections each pipelining 100 queries for a 56 KB answer and never reading:
    without a bound the server buffered ~280 MB and kept every socket after closing it."""
    nsd = Nsd(tmp_path / "nsd", zones={"huge.test": HUGE_ZONE}).start()
    config = {"tcp": {"idle_timeout": 2.0}, "access": {"rate_limit": {"queries": 0}}}
    try:
        with Netblock(tmp_path / "nb", [nsd.address], config=config) as server:
            warm = server.query("big.huge.test", "TXT", tcp=True)
            assert len(warm.answer[0]) == 220
            baseline = rss_kb(server.pid)
            fds = len(list(Path(f"/proc/{server.pid}/fd").iterdir()))
            query = header(qid=1) + question(wire_name("big.huge.test"), qtype=16)
            frame = len(query).to_bytes(2, "big") + query
            socks = []
            try:
                for _ in range(50):
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.connect(("127.0.0.1", server.port))
                    sock.sendall(frame * 100)
                    socks.append(sock)
                peak = baseline
                deadline = time.monotonic() + 2.0 + 2.0  # idle timeout + slack
                while time.monotonic() < deadline:
                    peak = max(peak, rss_kb(server.pid))
                    time.sleep(0.1)
                assert peak - baseline < 50 * 1024, (baseline, peak)
                # Every one of those sockets is gone from the server, and it still serves.
                assert wait_for(lambda: len(list(Path(f"/proc/{server.pid}/fd").iterdir())) <= fds, 10)
                assert server.query("big.huge.test", "TXT", tcp=True).answer
                assert "Traceback" not in server.log()
            finally:
                for sock in socks:
                    sock.close()
    finally:
        nsd.stop()


def test_tcp_connection_flood_then_service(tmp_path: Path, upstream: Nsd) -> None:
    """Knot's flood case, bounded: 3,000 connections opened in bursts of 200 and dropped
    (some after half a query); the server answers afterwards and holds no extra sockets."""
    config = {"tcp": {"idle_timeout": 2.0}}
    with Netblock(tmp_path / "nb", [upstream.address], config=config) as server:
        fds = len(list(Path(f"/proc/{server.pid}/fd").iterdir()))
        query = header(qid=1) + question()
        deadline = time.monotonic() + 60
        for burst in range(15):
            socks = []
            for i in range(200):
                sock = socket.socket()
                sock.settimeout(5)
                try:
                    sock.connect(("127.0.0.1", server.port))
                    if i % 2:
                        sock.sendall(len(query).to_bytes(2, "big") + query[:7])
                except OSError:
                    pass
                socks.append(sock)
            for sock in socks:
                sock.close()
            assert time.monotonic() < deadline, f"burst {burst} too slow"
        assert server.query("www.example.test", "A").rcode() == dns.rcode.NOERROR
        assert server.query("www.example.test", "A", tcp=True).rcode() == dns.rcode.NOERROR
        assert wait_for(lambda: len(list(Path(f"/proc/{server.pid}/fd").iterdir())) <= fds, 5)
        assert "Traceback" not in server.log()
