"""The shipped catalogues against the reference data they were built from (table-driven).

The reference data (../shared/reference/endpoints) is copied into tests/data/reference, so the
tests run from any clone; refresh the copy when the reference changes.
Every row there must end up with the decision the notes call for.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from netblock.policy.match import Policy, compile_policy, guard_violations
from netblock.policy.reload import load_lists

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "reference" / "endpoints"  # a copy of shared/reference/endpoints
BLOCKLISTS = ROOT / "blocklists"


def _reference(name: str) -> dict:
    return yaml.safe_load((REFERENCE / name).read_text())


WECHAT = _reference("wechat.yaml")["entries"]
KASPERSKY = _reference("kaspersky.yaml")["entries"]
ALLOW = _reference("allow.yaml")
ENDPOINTS = [e for e in WECHAT + KASPERSKY if "domain" in e]
NETWORKS = [e for e in WECHAT + KASPERSKY if "cidr" in e]
WECOM = [a["domain"] for a in ALLOW["domains"] if a["status"] == "conditional-exception"]
# Hosts on shared Tencent zones are exact names even where the reference has a subtree.
SHARED_ZONES = (
    "qpic.cn", "qlogo.cn", "gtimg.com", "gtimg.cn", "tc.qq.com", "video.qq.com", "tencent-cloud.net",
)
GUARD_ROWS = [a for a in ALLOW["domains"] if a["status"] in ("do-not-block", "do-not-block-by-default")]


@pytest.fixture(scope="module")
def policy() -> Policy:
    lists, errors = load_lists(sorted(BLOCKLISTS.glob("*.yaml")))
    assert errors == []
    return compile_policy(lists)


def _on_shared_zone(name: str) -> bool:
    return any(name.endswith("." + zone) for zone in SHARED_ZONES)


def _decision(policy: Policy, name: str) -> str:
    rule = policy.match_name(name)
    return rule.action if rule else "resolve"


def test_reference_is_complete() -> None:
    # NOTES.md: 127 + 168 domain rows, 47 + 20 networks; guards against an accidental truncation.
    assert len([e for e in WECHAT if "domain" in e]) == 127
    assert len([e for e in KASPERSKY if "domain" in e]) == 168
    assert len(NETWORKS) == 67


HIGH = [e for e in ENDPOINTS if e["confidence"] == "high"]


@pytest.mark.parametrize("row", HIGH, ids=lambda e: e["domain"])
def test_every_high_confidence_endpoint_is_blocked(policy: Policy, row: dict) -> None:
    assert row["default_action"] == "block"
    assert _decision(policy, row["domain"]) == "block"
    if row["match"] == "subtree" and not _on_shared_zone(row["domain"]):
        assert _decision(policy, "probe-1." + row["domain"]) == "block"


@pytest.mark.parametrize("row", ENDPOINTS, ids=lambda e: e["domain"])
def test_every_endpoint_has_its_decision_and_provenance(policy: Policy, row: dict) -> None:
    expected = "block" if row["default_action"] == "block" else "monitor"
    assert _decision(policy, row["domain"]) == expected
    rule = policy.match_name(row["domain"])
    assert rule is not None
    if rule.pattern == row["domain"]:
        # The entry itself decides: its metadata came along.
        lst = next(lst for lst in policy.lists if lst.name == rule.list_name)
        entry = next(e for e in (*lst.domains, *lst.exact) if e.name == row["domain"])
        assert entry.role == row["role"]
        assert entry.meta["confidence"] == row["confidence"]
        assert entry.meta["sources"] == row["sources"]
        assert rule.kind == ("exact" if _on_shared_zone(row["domain"]) else row["match"])
        assert lst.policy.id == "CA-TBS-2023-10-30"
    else:
        assert row.get("covered_by") or row["match"] == "exact"


@pytest.mark.parametrize("row", NETWORKS, ids=lambda e: e["cidr"])
def test_every_network_is_listed(policy: Policy, row: dict) -> None:
    network = ipaddress.ip_network(row["cidr"])
    rule = policy.match_ip(network.network_address.packed)
    assert rule is not None
    assert rule.action == ("block" if row["default_action"] == "block" else "monitor")
    assert rule.pattern == str(network)


@pytest.mark.parametrize("row", GUARD_ROWS, ids=lambda a: a["domain"])
def test_every_guard_resolves(policy: Policy, row: dict) -> None:
    guards = {g.name for g in policy.guards}
    assert row["domain"] in guards
    assert _decision(policy, row["domain"]) == "resolve"
    if row["match"] != "exact":
        assert _decision(policy, "www." + row["domain"]) in ("resolve", "block")  # hosts under may be blocked
    assert row["reason"]


def test_guards_have_reasons(policy: Policy) -> None:
    lst = next(lst for lst in policy.lists if lst.guards)
    for entry in lst.guards:
        assert entry.meta.get("reason"), entry.name


@pytest.mark.parametrize("name", [*WECOM, "i.work.weixin.qq.com", "live.work.weixin.qq.com"])
def test_wecom_is_carved_out(policy: Policy, name: str) -> None:
    assert _decision(policy, name) == "allow"


@pytest.mark.parametrize("name, expected", [
    # WeChat itself, policy decision: stays blocked.
    ("mp.weixin.qq.com", "block"),
    ("open.weixin.qq.com", "block"),
    ("long.weixin.qq.com", "block"),
    ("weixin.qq.com", "block"),
    # Shared Tencent zones: only the WeChat hosts.
    ("mmbiz.qpic.cn", "block"),
    ("puui.qpic.cn", "resolve"),
    ("qpic.cn", "resolve"),
    ("thirdqq.qlogo.cn", "resolve"),
    ("wx.qlogo.cn", "block"),
    ("qq.com", "resolve"),
    ("mail.qq.com", "resolve"),
    ("exmail.qq.com", "resolve"),
    ("lbs.gtimg.com", "resolve"),
    ("wx.gtimg.com", "block"),
    # Kaspersky: all of kaspersky.com and the products; research and support monitored.
    ("kaspersky.com", "block"),
    ("www.kaspersky.com", "block"),
    ("activation-v2.kaspersky.com", "block"),
    ("s07.upd.kaspersky.com", "block"),
    ("dnl-05.geo.kaspersky.com", "block"),
    ("ksn-a-geo.kaspersky-labs.com", "block"),
    ("support.kaspersky.com", "monitor"),
    ("opentip.kaspersky.com", "monitor"),
    ("noransom.kaspersky.com", "monitor"),
    ("securelist.com", "monitor"),
    ("www.securelist.com", "monitor"),
    ("kasperskycontenthub.com", "monitor"),
    ("kas.pr", "monitor"),  # review
    ("wechatos.net", "monitor"),  # review
    # A blocked name as a suffix of a label, or as the start of another name: not blocked.
    ("notweixin.qq.com", "resolve"),
    ("kaspersky.com.example.net", "resolve"),
    ("xkaspersky.com", "resolve"),
    ("wechat.com.evil.test", "resolve"),
    ("mywechat.com", "resolve"),
])
def test_decisions(policy: Policy, name: str, expected: str) -> None:
    assert _decision(policy, name) == expected


def test_no_guard_is_covered_and_no_shared_zone_is_a_subtree(policy: Policy) -> None:
    assert guard_violations(policy.lists) == []
    for lst in policy.lists:
        for entry in lst.domains:
            assert not _on_shared_zone(entry.name) and entry.name not in SHARED_ZONES, entry.name
        assert "qq.com" not in {e.name for e in (*lst.domains, *lst.exact)}


def test_no_tencent_cloud_range_is_blocked(policy: Policy) -> None:
    # Never AS45090/AS132203 ranges: WeChat networks are single access IPs (a /25 waits in review).
    wechat = next(lst for lst in policy.lists if lst.name == "wechat")
    for entry in wechat.networks:
        assert ipaddress.ip_network(entry.name).num_addresses == 1, entry.name
    for cidr in ("43.128.0.0/15", "101.32.0.0/16", "129.226.0.0/16", "170.106.0.0/16", "2402:4e00::/32"):
        probe = ipaddress.ip_network(cidr)[77].packed
        assert policy.match_ip(probe) is None, cidr
