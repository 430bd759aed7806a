"""The shipped catalogues through the real server: blocked endpoints answer NXDOMAIN, every
guard and every WeCom carve-out resolves, monitored names resolve.

The upstream is an NSD on loopback serving stand-in com, cn and net zones whose wildcard
answers every name: whatever reaches it resolves, so a blocked name is netblock's answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest
import yaml

from harness import BLOCKLISTS, Netblock, Nsd

REFERENCE = Path(__file__).resolve().parent / "data" / "reference" / "endpoints"  # copy of shared/reference
ANSWER = "192.0.2.53"


def _zone(origin: str) -> str:
    return (f"$ORIGIN {origin}.\n$TTL 300\n"
            f"@ IN SOA ns1.{origin}. hostmaster.{origin}. 1 3600 600 86400 300\n"
            f"@ IN NS ns1.{origin}.\nns1 IN A 127.0.0.1\n* IN A {ANSWER}\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netblock]:
    zones = {tld: _zone(tld) for tld in ("com", "cn", "net")}
    with Nsd(tmp_path_factory.mktemp("tlds"), zones=zones) as nsd, \
            Netblock(tmp_path_factory.mktemp("nb"), [nsd.address], lists=[BLOCKLISTS / "*.yaml"],
                     config={"access": {"rate_limit": {"queries": 1_000_000}}}) as nb:
        yield nb


def _reference(name: str) -> dict:
    return yaml.safe_load((REFERENCE / name).read_text())


def _high_confidence() -> list[str]:
    rows = _reference("wechat.yaml")["entries"] + _reference("kaspersky.yaml")["entries"]
    return [r["domain"] for r in rows if "domain" in r and r["confidence"] == "high"]


def _guards() -> list[str]:
    return [r["domain"] for r in _reference("allow.yaml")["domains"]
            if r["status"] in ("do-not-block", "do-not-block-by-default")]


def _resolves(server: Netblock, name: str) -> bool:
    reply = server.query(name + ".", "A")
    return reply.rcode() == dns.rcode.NOERROR and any(ANSWER in rr.to_text() for rr in reply.answer)


def test_every_high_confidence_endpoint_is_answered_nxdomain(server: Netblock) -> None:
    names = _high_confidence()
    assert len(names) > 60
    wrong = [n for n in names if server.query(n + ".", "A").rcode() != dns.rcode.NXDOMAIN]
    assert wrong == []


def test_every_guard_resolves(server: Netblock) -> None:
    names = _guards()
    assert "qq.com" in names and "tencent.com" in names
    unresolved = [n for n in names if not _resolves(server, n)]
    assert unresolved == []


@pytest.mark.parametrize("name", [
    "work.weixin.qq.com", "i.work.weixin.qq.com", "qyapi.weixin.qq.com", "wework.qpic.cn",  # WeCom
    "support.kaspersky.com", "securelist.com",  # monitored, not blocked
    "notweixin.qq.com", "kaspersky.com.example.net", "puui.qpic.cn", "mail.qq.com",
])
def test_resolves(server: Netblock, name: str) -> None:
    assert _resolves(server, name)


@pytest.mark.parametrize("name", [
    "mp.weixin.qq.com", "open.weixin.qq.com", "mmbiz.qpic.cn", "s11.upd.kaspersky.com", "www.kaspersky.com",
])
def test_blocked(server: Netblock, name: str) -> None:
    assert server.query(name + ".", "A").rcode() == dns.rcode.NXDOMAIN
