"""Serve-stale (RFC 8767): with every upstream gone, an expired cached answer is served with
the configured short TTL and EDE 3 (Stale Answer), only within the configured window."""

from __future__ import annotations

import time
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode

from test_reliability_tools import metric, scrape

from harness import Netblock, Nsd

ZONE = """$ORIGIN stale.test.
$TTL 1
@        IN SOA ns1 hostmaster 1 3600 600 86400 1
@        IN NS  ns1
ns1      IN A   127.0.0.1
a        IN A   192.0.2.51
b        IN A   192.0.2.52
"""


def _ede_codes(response: dns.message.Message) -> list[int]:
    return [int(o.code) for o in response.options if isinstance(o, dns.edns.EDEOption)]


WINDOW = 6  # s: 1.3 s of waiting and a few ms of checks inside it, with room for a loaded machine


def test_expired_answer_served_stale_within_window(tmp_path: Path) -> None:
    nsd = Nsd(tmp_path / "nsd", zones={"stale.test": ZONE}).start()
    config = {"cache": {"serve_stale": True, "stale_ttl": 7, "stale_window": WINDOW, "min_ttl": 0},
              "upstreams": {"health_interval": 0}}
    try:
        with Netblock(tmp_path / "nb", [nsd.address], config=config) as server:
            fresh = server.query("a.stale.test", "A")
            assert fresh.answer[0].ttl <= 1 and not _ede_codes(fresh)
            cached_at = time.monotonic()
            nsd.stop()  # every upstream fails from now on
            time.sleep(1.3)  # past the 1 s TTL: expired, inside the window
            started = time.monotonic()
            stale = server.query("a.stale.test", "A")
            # Behaviour, not speed: stale comes as soon as the upstream attempt fails (refused:
            # milliseconds), never after the 2 s upstream timeout is over.
            assert time.monotonic() - started < 2.5
            assert stale.rcode() == dns.rcode.NOERROR
            assert [r.to_text() for r in stale.answer[0]] == ["192.0.2.51"]
            assert stale.answer[0].ttl == 7
            assert _ede_codes(stale) == [dns.edns.EDECode.STALE_ANSWER]
            plain = server.query("a.stale.test", "A", use_edns=False)  # no EDNS: stale, no OPT
            assert plain.answer[0].ttl == 7 and plain.edns < 0
            # Blocked names do not depend on the upstream.
            assert server.query("weixin.qq.com", "A").rcode() == dns.rcode.NXDOMAIN
            assert metric(scrape(server.metrics_port), "netblock_cache_stale_served_total") == 2
            # Past the window: SERVFAIL with EDE 22 (No Reachable Authority).
            time.sleep(max(0.0, cached_at + 1 + WINDOW + 0.5 - time.monotonic()))
            late = server.query("a.stale.test", "A")
            assert late.rcode() == dns.rcode.SERVFAIL
            assert _ede_codes(late) == [dns.edns.EDECode.NO_REACHABLE_AUTHORITY]
            # Never cached: nothing stale to give either.
            never = server.query("b.stale.test", "A")
            assert never.rcode() == dns.rcode.SERVFAIL
    finally:
        nsd.stop()


def test_serve_stale_off_gives_servfail(tmp_path: Path) -> None:
    nsd = Nsd(tmp_path / "nsd", zones={"stale.test": ZONE}).start()
    config = {"cache": {"serve_stale": False, "min_ttl": 0}, "upstreams": {"health_interval": 0}}
    try:
        with Netblock(tmp_path / "nb", [nsd.address], config=config) as server:
            assert server.query("a.stale.test", "A").rcode() == dns.rcode.NOERROR
            nsd.stop()
            time.sleep(1.3)
            assert server.query("a.stale.test", "A").rcode() == dns.rcode.SERVFAIL
    finally:
        nsd.stop()
