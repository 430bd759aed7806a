"""Metrics from the real server: privacy of labels, promtool, TLS + basic auth, readiness."""

from __future__ import annotations

import base64
import ipaddress
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import BLOCKLISTS, Netblock, Nsd, free_port, wait_for

FOUNDATION_LISTS = Path(__file__).resolve().parent / "data" / "foundation"
LISTS = [BLOCKLISTS / "*.yaml", FOUNDATION_LISTS / "*.yaml"]

# Clients on distinct loopback addresses, so a leaked client IP is tellable from the
# upstream's 127.0.0.1 (the one address a label may hold: the configured upstream).
CLIENTS = [f"127.0.0.{i}" for i in range(2, 10)]
NAMES = [
    "weixin.qq.com",
    "long.poll.weixin.qq.com",
    "wechat.com",
    "dnl-01.geo.kaspersky.com",
    "x.blocked.test",
    "tracker.blocked.test",
    "www.example.test",
    "mail.example.test",
    "nonexistent-7f3a.example.test",
    "cloak.example.test",
    "inside.example.test",
]


def scrape(
    port: int,
    path: str = "/metrics",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    scheme: str = "http",
) -> tuple[int, str]:
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def busy(tmp_path_factory, upstream):
    """A server with per-device metrics for one inventory device, after traffic from many clients."""
    work = tmp_path_factory.mktemp("metrics-busy")
    inventory = work / "devices.yaml"
    inventory.write_text("devices:\n  - name: finance-laptop-07\n    ips: [127.0.0.3]\n")
    config = {"devices": {"inventory": str(inventory)}, "metrics": {"per_device": True}}
    with Netblock(work, [upstream.address], lists=LISTS, config=config) as server:
        for i, name in enumerate(NAMES * 2):
            client = CLIENTS[i % len(CLIENTS)]
            server.query(name, "A", source=client)
            server.query(name, "AAAA", tcp=True, source=client)
        # Events (and with them the per-device counter) are written by a thread: wait for it.
        assert wait_for(lambda: 'device="finance-laptop-07"' in scrape(server.metrics_port)[1], 10), scrape(
            server.metrics_port
        )[1]
        yield server


def label_values(text: str) -> list[tuple[str, str, str]]:
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.extend((sample.name, key, value) for key, value in sample.labels.items())
    return out


def test_no_client_ip_or_query_name_in_labels(busy, upstream):
    status, text = scrape(busy.metrics_port)
    assert status == 200
    values = label_values(text)
    assert len(values) > 50  # the scan saw a real exposition, not an empty page
    names = {n.lower().rstrip(".") for n in NAMES}
    for metric, key, value in values:
        if key == "upstream":
            # The one address-bearing label: a configured upstream, never a client.
            assert value == upstream.address, (metric, key, value)
            continue
        try:
            ipaddress.ip_address(value.strip("[]"))
            pytest.fail(f"IP address as a label value: {metric}{{{key}={value!r}}}")
        except ValueError:
            pass
        assert not any(client in value for client in CLIENTS), (metric, key, value)
        lowered = value.lower().rstrip(".")
        assert lowered not in names, (metric, key, value)
        assert not any(
            lowered.endswith("." + n) or n.endswith("." + lowered) for n in names if "." in lowered
        ), (metric, key, value)
    # The blocked names did arrive and were counted: the scan ran after real blocked traffic.
    assert 'netblock_blocked_total{action="block",list="wechat"' in text
    assert 'netblock_blocked_total{action="block",list="testnet"' in text


def test_per_device_counter_names_only_inventory_devices(busy):
    text = scrape(busy.metrics_port)[1]
    devices = {}
    for family in text_string_to_metric_families(text):
        if family.name == "netblock_device_blocked":
            devices = {s.labels["device"]: s.value for s in family.samples if s.name.endswith("_total")}
    # 127.0.0.3 sent blocked queries and is the inventory's finance-laptop-07; the seven other
    # clients blocked too but are in no inventory, so no series for them.
    assert list(devices) == ["finance-laptop-07"]
    assert devices["finance-laptop-07"] >= 1


def test_promtool_check_metrics_accepts_real_exposition(busy):
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus (tests/apt-packages.txt)"
    text = scrape(busy.metrics_port)[1]
    assert "netblock_request_duration_seconds_bucket" in text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""


def test_health_endpoints_of_real_server(busy):
    assert scrape(busy.metrics_port, "/healthz") == (200, "ok\n")
    assert scrape(busy.metrics_port, "/readyz") == (200, "ready\n")


def test_tls_and_basic_auth_on_real_server(tmp_path, upstream):
    from test_metrics import self_signed

    cert, key = self_signed(tmp_path)
    hashed = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(rounds=6)).decode()
    web = tmp_path / "web-config.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    with Netblock(
        tmp_path / "nb", [upstream.address], lists=LISTS, config={"metrics": {"web_config": str(web)}}
    ) as server:
        context = ssl.create_default_context(cafile=str(cert))

        def auth(user: str, password: str) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

        port = server.metrics_port
        assert scrape(port, context=context, scheme="https")[0] == 401
        assert scrape(port, headers=auth("prometheus", "wrong"), context=context, scheme="https")[0] == 401
        assert scrape(port, headers={"Authorization": "Basic %%%"}, context=context, scheme="https")[0] == 401
        status, text = scrape(
            port, headers=auth("prometheus", "correct horse"), context=context, scheme="https"
        )
        assert status == 200 and "netblock_policy_info" in text
        # Plain HTTP on the TLS port gets no metrics.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            scrape(port)


def test_bad_web_config_stops_start_with_file_and_line(tmp_path, upstream):
    web = tmp_path / "web-config.yml"
    web.write_text("basic_auth_users:\n  admin: plaintext-password\n")
    server = Netblock(
        tmp_path / "nb", [upstream.address], lists=LISTS, config={"metrics": {"web_config": str(web)}}
    )
    server.start(expect_fail=True)
    try:
        assert server.proc is not None
        server.proc.wait(15)
        assert server.proc.returncode != 0
        assert f"{web}:2:" in server.log() and "bcrypt" in server.log()
    finally:
        server.stop()


def test_readyz_follows_upstream_reachability(tmp_path):
    port = free_port()  # nothing listens here yet
    config = {"upstreams": {"health_interval": 0.3, "attempt_timeout": 0.5, "timeout": 1.0}}
    with Netblock(tmp_path / "nb", [f"127.0.0.1:{port}"], lists=LISTS, config=config) as server:
        m = server.metrics_port
        assert scrape(m, "/healthz")[0] == 200
        assert wait_for(lambda: scrape(m, "/readyz")[0] == 503, 10), scrape(m, "/readyz")
        assert scrape(m, "/readyz") == (503, "no healthy upstream\n")
        # It stays unready over several probe rounds while nothing answers.
        for _ in range(4):
            time.sleep(0.3)
            assert scrape(m, "/readyz")[0] == 503
        assert f'netblock_upstream_healthy{{upstream="127.0.0.1:{port}"}} 0.0' in scrape(m)[1]
        with Nsd(tmp_path / "nsd", port=port):
            assert wait_for(lambda: scrape(m, "/readyz")[0] == 200, 10), scrape(m, "/readyz")
            assert scrape(m, "/readyz") == (200, "ready\n")
            assert f'netblock_upstream_healthy{{upstream="127.0.0.1:{port}"}} 1.0' in scrape(m)[1]


def test_scrapes_during_traffic_are_consistent(busy):
    """Scrapes read the counters while the event loop writes them: every scrape parses and
    every counter only grows."""
    import threading

    stop = threading.Event()
    sent = [0]

    def traffic() -> None:
        names = ["www.example.test", "weixin.qq.com", "x.blocked.test", "nonexistent.example.test"]
        while not stop.is_set() and sent[0] < 2000:
            try:
                busy.query(
                    f"q{sent[0]}.{names[sent[0] % 4]}", source=CLIENTS[sent[0] % len(CLIENTS)], timeout=2
                )
            except Exception:
                pass
            sent[0] += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    previous: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    scrapes = 0
    try:
        # 3 s of scrapes, and on until 20 scrapes and 50 queries were made: how many fit in
        # 3 s is the machine's speed, not the property under test.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline or (
                (scrapes < 20 or sent[0] < 50) and time.monotonic() < deadline + 30):
            status, text = scrape(busy.metrics_port)
            assert status == 200
            scrapes += 1
            for family in text_string_to_metric_families(text):
                if family.type not in ("counter", "histogram"):
                    continue
                for s in family.samples:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    assert s.value >= previous.get(key, 0), key
                    previous[key] = s.value
    finally:
        stop.set()
        thread.join(10)
    assert scrapes >= 20 and sent[0] >= 50, (scrapes, sent[0])
