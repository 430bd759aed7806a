"""Forwarding to upstream resolvers: UDP with TCP fallback, failover and health.

Each upstream query gets a fresh ID from a cryptographic source and its own connected
UDP socket, so the kernel picks a random source port and drops datagrams from any other
address; an answer is accepted only when ID and question match too (DNSpooq lessons,
reference/reliability.md §7). Mismatches are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
import time

from netblock.config import Config, parse_hostport, resolv_conf_servers
from netblock.dns import wire
from netblock.stats import Stats, UpstreamStats

log = logging.getLogger("netblock.upstream")

_LEN = struct.Struct("!H")


class UpstreamError(Exception):
    pass


class Upstream:
    def __init__(self, address: str, stats: UpstreamStats) -> None:
        self.host, self.port = parse_hostport(address)
        self.address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.stats = stats
        self.down_until = 0.0
        self.healthy = True
        self.probed = False  # no health probe has been answered or failed yet

    def mark(self, ok: bool, down_seconds: float) -> None:
        if ok:
            self.down_until = 0.0
        else:
            self.down_until = time.monotonic() + down_seconds
        self.healthy = ok
        self.stats.healthy = ok


class Upstreams:
    def __init__(self, config: Config, stats: Stats) -> None:
        self.config = config.upstreams
        self.udp_payload = config.server.udp_payload
        self.stats = stats
        addresses = self.config.servers or resolv_conf_servers(self.config.resolv_conf)
        if not addresses:
            raise UpstreamError(f"no upstream servers configured and none in {self.config.resolv_conf}")
        self.servers = [Upstream(a, stats.upstream(a)) for a in addresses]
        self._health_task: asyncio.Task[None] | None = None

    def any_healthy(self) -> bool:
        return any(server.healthy for server in self.servers)

    def ordered(self) -> list[Upstream]:
        """Healthy servers in configured order, then the ones marked down, soonest back first."""
        now = time.monotonic()
        up = [s for s in self.servers if s.down_until <= now]
        down = sorted((s for s in self.servers if s.down_until > now), key=lambda s: s.down_until)
        return up + down

    async def resolve(self, qname: bytes, qtype: int, qclass: int, do: bool, tcp: bool) -> bytes | None:
        """An upstream answer to the question, or None when every upstream failed in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout
        for server in self.ordered():
            remaining = deadline - loop.time()
            if remaining <= 0.005:
                break
            timeout = min(self.config.attempt_timeout, remaining)
            started = loop.time()
            server.stats.requests += 1
            try:
                if tcp:
                    answer = await self._tcp(server, qname, qtype, qclass, do, timeout)
                else:
                    answer = await self._udp(server, qname, qtype, qclass, do, timeout)
                    if answer[2] & 0x02:  # truncated: the same server over TCP
                        answer = await self._tcp(server, qname, qtype, qclass, do,
                                                 max(deadline - loop.time(), 0.05))
            except (TimeoutError, OSError, UpstreamError, asyncio.IncompleteReadError) as exc:
                server.stats.errors += 1
                if isinstance(exc, TimeoutError):
                    server.stats.timeouts += 1
                server.mark(False, self.config.down_seconds)
                continue
            server.stats.latency.observe(loop.time() - started)
            if answer[3] & 0x0F == wire.REFUSED:  # a misconfigured upstream: ask the next one
                server.stats.errors += 1
                continue
            server.mark(True, 0)
            return answer
        return None

    async def _udp(self, server: Upstream, qname: bytes, qtype: int, qclass: int, do: bool,
                   timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        qid = secrets.randbits(16)
        message = wire.build_query(qid, qname, qtype, qclass, do, self.udp_payload)
        sock = socket.socket(server.family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        future: asyncio.Future[bytes] = loop.create_future()
        stats = self.stats

        def readable() -> None:
            for _ in range(64):  # bounded: a flood of forgeries cannot hold the loop
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    return
                except OSError as exc:  # ICMP port unreachable and friends
                    if not future.done():
                        future.set_exception(exc)
                    return
                if wire.answer_matches(data, qid, qname, qtype, qclass):
                    if not future.done():
                        future.set_result(data)
                    return
                stats.upstream_mismatches += 1

        try:
            sock.connect((server.host, server.port))
            sock.send(message)
            loop.add_reader(sock.fileno(), readable)
            try:
                return await asyncio.wait_for(future, timeout)
            finally:
                loop.remove_reader(sock.fileno())
        finally:
            sock.close()

    async def _tcp(self, server: Upstream, qname: bytes, qtype: int, qclass: int, do: bool,
                   timeout: float) -> bytes:
        qid = secrets.randbits(16)
        message = wire.build_query(qid, qname, qtype, qclass, do, self.udp_payload)
        return await asyncio.wait_for(self._tcp_exchange(server, message, qid, qname, qtype, qclass), timeout)

    async def _tcp_exchange(self, server: Upstream, message: bytes, qid: int, qname: bytes, qtype: int,
                            qclass: int) -> bytes:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(_LEN.pack(len(message)) + message)
            await writer.drain()
            length = _LEN.unpack(await reader.readexactly(2))[0]
            data = await reader.readexactly(length)
        finally:
            writer.close()
        if not wire.answer_matches(data, qid, qname, qtype, qclass):
            self.stats.upstream_mismatches += 1
            raise UpstreamError("TCP answer does not match the question")
        return data

    # ------------------------------------------------------------------ health

    def start_health_checks(self, interval: float) -> None:
        if interval <= 0:
            return
        for server in self.servers:  # not ready until a probe has been answered
            server.healthy = server.stats.healthy = False
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop(interval))

    def stop_health_checks(self) -> None:
        if self._health_task:
            self._health_task.cancel()

    async def _health_loop(self, interval: float) -> None:
        """Probe every upstream with `. NS` so readiness and failover follow reality."""
        while True:
            await asyncio.gather(*(self._probe(server) for server in self.servers))
            await asyncio.sleep(interval)

    async def _probe(self, server: Upstream) -> None:
        try:
            await self._udp(server, b"\x00", wire.NS, wire.CLASS_IN, False, self.config.attempt_timeout)
        except (TimeoutError, OSError, UpstreamError):
            if server.healthy or not server.probed:
                log.warning("upstream %s is not answering", server.address)
            server.probed = True
            server.mark(False, self.config.down_seconds)
            return
        if not server.healthy:
            log.info("upstream %s is answering%s", server.address, " again" if server.probed else "")
        server.probed = True
        server.mark(True, 0)
