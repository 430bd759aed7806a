"""Upstream failures: blocked names still answered, others SERVFAIL in time, failover."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.rcode
import pytest

from harness import Netblock, Nsd, free_port


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An upstream address that takes queries and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_upstream_down_blocked_answered_others_servfail(tmp_path: Path, blackhole: str) -> None:
    config = {"upstreams": {"timeout": 1.5, "attempt_timeout": 1.0}, "cache": {"serve_stale": False}}
    with Netblock(tmp_path, [blackhole], config=config) as server:
        blocked = server.query("weixin.qq.com", "A", timeout=1.0)
        assert blocked.rcode() == dns.rcode.NXDOMAIN
        # The server gives up after its 1.5 s timeout; the client waits 8 s, so only a server
        # that never answers fails here (behaviour, with room for a loaded machine).
        other = server.query("www.example.test", "A", timeout=8.0)
        assert other.rcode() == dns.rcode.SERVFAIL
        ede = [o for o in other.options if isinstance(o, dns.edns.EDEOption)]
        assert ede and ede[0].code == dns.edns.EDECode.NO_REACHABLE_AUTHORITY
        # Still answering blocked names while forwarding is failing.
        assert server.query("a.kaspersky.com", "A", timeout=1.0).rcode() == dns.rcode.NXDOMAIN


def test_refused_upstream_port_fails_fast(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: ICMP port unreachable
    with Netblock(tmp_path, [closed], config={"cache": {"serve_stale": False}}) as server:
        assert server.query("www.example.test", "A", timeout=4.0).rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize("dead_kind", ["blackhole", "closed"])
def test_two_upstreams_one_down_no_servfail(tmp_path: Path, upstream: Nsd, blackhole: str, dead_kind: str) -> None:
    dead = blackhole if dead_kind == "blackhole" else f"127.0.0.1:{free_port()}"
    with Netblock(tmp_path, [dead, upstream.address]) as server:
        names = [f"{label}.example.test" for label in ("www", "mail", "txt", "chain1", "short", "outside")]
        for name in names * 2:  # at most one 1 s attempt at the dead one first: 6 s is room
            response = server.query(name, "A", timeout=6.0)
            assert response.rcode() == dns.rcode.NOERROR, (name, response)


def test_upstream_returns_after_outage(tmp_path: Path) -> None:
    port = free_port()
    with Netblock(tmp_path / "nb", [f"127.0.0.1:{port}"], config={
        "upstreams": {"health_interval": 0.5, "down_seconds": 0.5}, "cache": {"serve_stale": False},
    }) as server:
        assert server.query("www.example.test", "A", timeout=4.0).rcode() == dns.rcode.SERVFAIL
        with Nsd(tmp_path / "nsd", port=port):
            # A SERVFAIL may be cached for a few seconds (servfail_ttl); a question not asked
            # during the outage must get through at once.
            response = server.query("mail.example.test", "A", timeout=4.0)
            assert response.rcode() == dns.rcode.NOERROR
