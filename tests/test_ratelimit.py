"""Per-client rate limit: one loopback client over its bucket is refused while another
client (another loopback source address) in the same second is not; an exempt relay is
never limited; the bucket table stays bounded under a flood of source addresses."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from netblock.config import Access, RateLimit, load_config
from netblock.dns.admit import Admission
from netblock.yamlsrc import SourceError
from test_reliability_tools import metric, scrape

from harness import Netblock, Nsd

LIMIT = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: Nsd) -> Iterator[Netblock]:
    config = {"access": {"rate_limit": {"queries": LIMIT, "per_seconds": 3600, "exempt": ["127.0.0.4/32"]}}}
    with Netblock(tmp_path_factory.mktemp("ratelimit"), [upstream.address], config=config) as nb:
        yield nb


def _rcodes(server: Netblock, source: str, count: int, tcp: bool = False) -> list[str]:
    out = []
    for i in range(count):
        query = dns.message.make_query("www.example.test" if i % 2 else "weixin.qq.com", "A")
        ask = dns.query.tcp if tcp else dns.query.udp
        response = ask(query, "127.0.0.1", port=server.port, timeout=2, source=source)
        out.append(dns.rcode.to_text(response.rcode()))
    return out


def test_client_over_limit_is_refused_and_another_is_not(server: Netblock) -> None:
    before = metric(scrape(server.metrics_port), "netblock_refused_total", 'reason="ratelimit"')
    # A token comes back every 180 s (20 an hour): none refills while the test runs.
    heavy = _rcodes(server, "127.0.0.2", LIMIT + 10)
    light = _rcodes(server, "127.0.0.3", 5)
    assert "REFUSED" not in heavy[:LIMIT]
    assert heavy[LIMIT:] == ["REFUSED"] * 10
    assert "REFUSED" not in light
    # TCP shares the bucket: still limited.
    assert _rcodes(server, "127.0.0.2", 2, tcp=True) == ["REFUSED", "REFUSED"]
    after = metric(scrape(server.metrics_port), "netblock_refused_total", 'reason="ratelimit"')
    assert after - before == 12


def test_blocked_attempts_over_the_limit_are_still_recorded(server: Netblock) -> None:
    """REFUSED for the flood, but every attempt at a vendor name stays evidence."""
    blocked = 'action="block",list="wechat",stage="query",vendor="Tencent WeChat (Weixin)"'
    before = metric(scrape(server.metrics_port), "netblock_blocked_total", blocked)
    codes = _rcodes(server, "127.0.0.5", LIMIT + 10)  # half of them weixin.qq.com
    assert codes[LIMIT:] == ["REFUSED"] * 10
    after = metric(scrape(server.metrics_port), "netblock_blocked_total", blocked)
    assert after - before == (LIMIT + 10) // 2


def test_exempt_relay_is_not_limited(server: Netblock) -> None:
    assert "REFUSED" not in _rcodes(server, "127.0.0.4", LIMIT * 3)


def test_bucket_refills() -> None:
    now = 1000.0  # a clock of our own: a busy CI machine cannot oversleep it
    admission = Admission(Access(rate_limit=RateLimit(queries=10, per_seconds=0.5)))
    assert all(admission.check("10.0.0.1", now) == "" for _ in range(10))
    assert admission.check("10.0.0.1", now) == "ratelimit"
    now += 0.12  # 0.12 s * 20 tokens/s = 2.4 tokens
    assert admission.check("10.0.0.1", now) == ""
    assert admission.check("10.0.0.1", now) == ""
    assert admission.check("10.0.0.1", now) == "ratelimit"


def test_drop_action() -> None:
    admission = Admission(Access(rate_limit=RateLimit(queries=1, action="drop")))
    assert admission.check("10.0.0.1", time.monotonic()) == ""
    assert admission.check("10.0.0.1", time.monotonic()) == "ratelimit"
    assert admission.drops("ratelimit") and not admission.drops("acl")


def test_tables_stay_bounded_under_many_source_addresses() -> None:
    limits = RateLimit(queries=5, max_clients=1000, exempt=("10.200.0.0/16",))
    admission = Admission(Access(allow=("10.0.0.0/8",), rate_limit=limits))
    limited = "10.255.255.254"
    for _ in range(5):
        admission.check(limited, time.monotonic())
    assert admission.check(limited, time.monotonic()) == "ratelimit"
    for i in range(200_000):
        client = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        assert admission.check(client, time.monotonic()) == ""
        assert len(admission._buckets) <= 1000
    assert len(admission._allowed) <= 1000
    assert len(admission._exempt) <= 1000
    # A client that just used a token keeps being limited correctly after the flood.
    fresh = "10.254.0.1"
    assert [admission.check(fresh, time.monotonic()) for _ in range(6)] == [""] * 5 + ["ratelimit"]


@pytest.mark.parametrize("max_clients", [0, 1, 2])
def test_tiny_table_sizes_still_bounded(max_clients: int) -> None:
    admission = Admission(Access(allow=("10.0.0.0/8",), rate_limit=RateLimit(max_clients=max_clients)))
    for i in range(1000):
        admission.check(f"10.0.{i >> 8}.{i & 255}", time.monotonic())
    assert len(admission._buckets) <= 2


@pytest.mark.parametrize(("text", "message"), [
    ("access:\n  rate_limit:\n    queries: 10\n    per_seconds: 0\n", "2: access.rate_limit: per_seconds must be"),
    ("tcp:\n  idle_timeout: 0\n", "2: tcp.idle_timeout: must be more than 0"),
    ("tcp:\n  max_queries_per_connection: 0\n", "2: tcp.max_queries_per_connection: must be at least 1"),
])
def test_settings_that_would_silently_stop_service_are_refused(tmp_path: Path, text: str, message: str) -> None:
    """A bucket that never refills would block every client for good after `queries`."""
    path = tmp_path / "netblock.yaml"
    path.write_text(text)
    with pytest.raises(SourceError, match=re.escape(f"{path}:{message}")):
        load_config(path)


def test_rate_limit_off_and_normal_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "netblock.yaml"
    path.write_text("access:\n  rate_limit:\n    queries: 0\n    per_seconds: 0\n")
    assert load_config(path).access.rate_limit.queries == 0
    assert Admission(load_config(path).access).check("10.0.0.1", time.monotonic()) == ""
