"""A real Prometheus scrapes the real netblock; PromQL sees the traffic we sent. promtool on the rules."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import BLOCKLISTS, Netblock, free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "deploy" / "prometheus"
FOUNDATION_LISTS = Path(__file__).resolve().parent / "data" / "foundation"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} missing: apt-get install prometheus (listed in tests/apt-packages.txt)"
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_check_rules():
    result = run(tool("promtool"), "check", "rules", str(RULES_DIR / "netblock-rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_test_rules():
    result = run(tool("promtool"), "test", "rules", "netblock-rules.test.yml", cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_tests_cover_every_alert():
    import yaml

    rules = yaml.safe_load((RULES_DIR / "netblock-rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {
        "NetblockDown",
        "NetblockAllUpstreamsDown",
        "NetblockServfailRatioHigh",
        "NetblockPolicyReloadFailing",
        "NetblockEventsDropped",
        "NetblockDeviceRepeatedlyBlocked",
        "NetblockInspectorBypassDetected",
    }
    tests = yaml.safe_load((RULES_DIR / "netblock-rules.test.yml").read_text())
    firing = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert firing == alerts  # each alert is shown firing at least once


def test_promtool_check_shipped_scrape_config():
    result = run(tool("promtool"), "check", "config", "--syntax-only", "prometheus.yml", cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


# --- a real Prometheus ------------------------------------------------------------------------


class Prometheus:
    def __init__(self, workdir: Path, target: str, job_extra: str = "") -> None:
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        shutil.copy(RULES_DIR / "netblock-rules.yml", workdir / "netblock-rules.yml")
        (workdir / "prometheus.yml").write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [netblock-rules.yml]
scrape_configs:
  - job_name: netblock
{job_extra}    static_configs:
      - targets: ["{target}"]
""")

    def start(self) -> Prometheus:
        log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--web.enable-lifecycle",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if not wait_for(self.ready, 30, 0.2):
            self.stop()
            raise RuntimeError("prometheus did not become ready:\n" + self.log())
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def vector(self, query: str, by: str) -> dict[str, float]:
        return {
            r["metric"].get(by, ""): float(r["value"][1]) for r in self.api("query", query=query)["result"]
        }

    def log(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream) -> Iterator[tuple[Netblock, Prometheus]]:
    work = tmp_path_factory.mktemp("prom-stack")
    lists = [BLOCKLISTS / "*.yaml", FOUNDATION_LISTS / "*.yaml"]
    with Netblock(work / "netblock", [upstream.address], lists=lists) as server:
        (work / "prom").mkdir()
        prom = Prometheus(work / "prom", f"127.0.0.1:{server.metrics_port}").start()
        try:
            yield server, prom
        finally:
            prom.stop()


def counters(server: Netblock) -> tuple[dict[str, float], dict[str, float]]:
    """(blocked by list, responses by source/rcode) straight from netblock's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    blocked: dict[str, float] = {}
    responses: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "netblock_blocked_total":
                blocked[s.labels["list"]] = blocked.get(s.labels["list"], 0) + s.value
            elif s.name == "netblock_responses_total":
                key = f"{s.labels['source']}/{s.labels['rcode']}"
                responses[key] = responses.get(key, 0) + s.value
    return blocked, responses


def test_prometheus_scrapes_known_traffic(stack):
    server, prom = stack
    assert wait_for(lambda: prom.vector('up{job="netblock"}', "job") == {"netblock": 1.0}, 20, 0.25), (
        prom.log()
    )
    blocked0, responses0 = counters(server)

    # Known traffic: 3 WeChat, 2 Kaspersky, 4 test-list names blocked; one name resolved
    # upstream then answered twice from the cache (once over TCP).
    for name in ("weixin.qq.com", "a.b.weixin.qq.com", "wechat.com"):
        assert server.query(name).rcode() == 3
    for name in ("dnl-01.geo.kaspersky.com", "kaspersky-labs.com"):
        assert server.query(name).rcode() == 3
    for i in range(4):
        assert server.query(f"host{i}.blocked.test").rcode() == 3
    assert server.query("www.example.test").answer
    assert server.query("www.example.test").answer
    assert server.query("www.example.test", tcp=True).answer

    expect_blocked = dict(blocked0)
    for list_name, n in (("wechat", 3), ("kaspersky", 2), ("testnet", 4)):
        expect_blocked[list_name] = expect_blocked.get(list_name, 0) + n
    expect_responses = dict(responses0)
    for key, n in (("blocked/NXDOMAIN", 9), ("upstream/NOERROR", 1), ("cache/NOERROR", 2)):
        expect_responses[key] = expect_responses.get(key, 0) + n
    # netblock itself agrees before we ask Prometheus (a count may land just after its reply).
    wait_for(lambda: counters(server) == (expect_blocked, expect_responses), 5, 0.1)
    assert counters(server) == (expect_blocked, expect_responses)

    blocked_q = "sum by (list) (netblock_blocked_total)"
    responses_q = 'sum by (key) (label_join(netblock_responses_total, "key", "/", "source", "rcode"))'
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (
            prom.vector(blocked_q, "list") == expect_blocked
            and prom.vector(responses_q, "key") == expect_responses
        ):
            break
        time.sleep(0.25)
    assert prom.vector(blocked_q, "list") == expect_blocked
    assert prom.vector(responses_q, "key") == expect_responses
    # Per-vendor view the dashboard uses.
    vendors = prom.vector('sum by (vendor) (netblock_blocked_total{list=~"wechat|kaspersky"})', "vendor")
    assert vendors == {
        "Tencent WeChat (Weixin)": float(expect_blocked["wechat"]),
        "Kaspersky": float(expect_blocked["kaspersky"]),
    }


def test_prometheus_sees_policy_and_health(stack):
    server, prom = stack
    assert wait_for(lambda: prom.vector("netblock_policy_loaded", "job") == {"netblock": 1.0}, 20, 0.25)
    entries = prom.vector("netblock_policy_entries", "list")
    assert entries["wechat"] > 100 and entries["kaspersky"] > 100 and entries["testnet"] == 3
    assert prom.vector("max(netblock_upstream_healthy)", "") == {"": 1.0}
    digest = prom.api("query", query="netblock_policy_info")["result"][0]["metric"]["digest"]
    assert digest and digest in server.log()
    # The alert rules load in a real Prometheus, evaluate without errors, and none fires.
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 7
    assert wait_for(
        lambda: all(
            r.get("lastEvaluation", "").startswith("20") for r in prom.api("rules")["groups"][0]["rules"]
        ),
        10,
    )
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert all(r["health"] == "ok" for r in rules), rules
    assert [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"] == []


def test_dashboard_queries_run_in_real_prometheus(stack):
    """Every Grafana panel query parses and evaluates; the core panels show our traffic."""
    server, prom = stack
    server.query("weixin.qq.com")  # so the blocked panels have something, whatever ran before
    dashboard = json.loads((REPO / "deploy" / "grafana" / "netblock.json").read_text())
    substitutions = {"$__rate_interval": "1m", "$__range": "10m", "$instance": ".*"}
    assert wait_for(lambda: prom.vector("netblock_policy_loaded", "job"), 20, 0.25)
    results = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in substitutions.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, expr
            # api() asserts status success: a PromQL syntax error is a 400 and fails here.
            results[(panel["title"], target["refId"])] = prom.api("query", query=expr)["result"]
    for title in ("Policy entries per list", "Healthy upstreams", "Policy reload", "Cache entries"):
        assert results[(title, "A")], title
    # Panels over counters need our traffic and two scrapes; re-run the blocked-by-vendor one.
    vendor = next(
        t["expr"]
        for p in dashboard["panels"]
        if p["title"] == "Blocked by vendor (range)"
        for t in p["targets"]
    )
    for var, value in substitutions.items():
        vendor = vendor.replace(var, value)
    assert wait_for(lambda: prom.api("query", query=vendor)["result"], 20, 0.5)


def test_prometheus_scrapes_over_tls_with_basic_auth(tmp_path, upstream):
    """The web-config file speaks the same dialect as Prometheus' own client side."""
    import bcrypt

    from test_metrics import self_signed

    cert, key = self_signed(tmp_path)
    (tmp_path / "password").write_text("scrape-secret\n")
    hashed = bcrypt.hashpw(b"scrape-secret", bcrypt.gensalt(rounds=6)).decode()
    web = tmp_path / "web-config.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    lists = [BLOCKLISTS / "*.yaml", FOUNDATION_LISTS / "*.yaml"]
    with Netblock(
        tmp_path / "nb", [upstream.address], lists=lists, config={"metrics": {"web_config": str(web)}}
    ) as server:
        (tmp_path / "prom").mkdir()
        job = (
            f"    scheme: https\n    tls_config:\n      ca_file: {cert}\n"
            f"    basic_auth:\n      username: prometheus\n      password_file: {tmp_path / 'password'}\n"
        )
        prom = Prometheus(tmp_path / "prom", f"127.0.0.1:{server.metrics_port}", job).start()
        try:
            assert server.query("weixin.qq.com").rcode() == 3
            assert wait_for(
                lambda: prom.vector('netblock_blocked_total{list="wechat"}', "list") == {"wechat": 1.0},
                20,
                0.25,
            ), prom.api("targets")
            target = prom.api("targets")["activeTargets"][0]
            assert target["health"] == "up" and target["scrapeUrl"].startswith("https://")
        finally:
            prom.stop()
