"""Metrics collector and HTTP endpoint against a small stand-in for the running DnsServer.

The integration tests (test_metrics_integration.py) run the real server; these pin the
exposition, the health endpoints, TLS and basic auth without a DNS server in the way.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime
import http.client
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from netblock.config import Config, Metrics
from netblock.metrics import MetricsServer, load_web_config
from netblock.policy.lists import Entry, ListFile
from netblock.policy.match import compile_policy
from netblock.stats import Stats
from netblock.yamlsrc import SourceError

PROMTOOL = shutil.which("promtool")


def make_policy() -> Any:
    wechat = ListFile(
        name="wechat",
        path="wechat.yaml",
        vendor="Tencent WeChat",
        domains=(Entry("weixin.qq.com", 3), Entry("wechat.com", 4)),
    )
    kaspersky = ListFile(
        name="kaspersky",
        path="kaspersky.yaml",
        vendor="Kaspersky",
        action="monitor",
        domains=(Entry("kaspersky.com", 3),),
        networks=(Entry("198.51.100.0/24", 5),),
    )
    return compile_policy([wechat, kaspersky])


def make_server(*, healthy: bool = True, policy: bool = True) -> SimpleNamespace:
    stats = Stats()
    stats.queries = {"udp": 10, "tcp": 2}
    stats.responses = {("blocked", "NXDOMAIN"): 3, ("upstream", "NOERROR"): 5, ("cache", "NOERROR"): 4}
    stats.blocked = {("wechat", "query", "block"): 3, ("kaspersky", "cname", "monitor"): 1}
    stats.refused = {"acl": 2, "ratelimit": 1}
    stats.dropped = {"malformed": 7}
    stats.request_duration.observe(0.0002)
    stats.request_duration.observe(0.003)
    stats.request_duration.observe(9.0)
    stats.cache_hits, stats.cache_misses, stats.cache_evictions, stats.cache_stale_served = 4, 6, 1, 2
    up = stats.upstream("127.0.0.1:5353")
    up.requests, up.errors, up.timeouts = 6, 1, 1
    up.latency.observe(0.004)
    stats.upstream_mismatches = 3
    stats.reload_successes, stats.reload_failures = 2, 1
    stats.inspector_detections = {("sni", "wechat"): 4, ("dns-bypass", ""): 1}
    stats.device_blocked = {"finance-laptop-7": 5, "10.1.2.3": 9, "aa:bb:cc:dd:ee:ff": 2}
    servers = [
        SimpleNamespace(address="127.0.0.1:5353", healthy=healthy),
        SimpleNamespace(address="127.0.0.1:5354", healthy=False),
    ]
    upstreams = SimpleNamespace(servers=servers, any_healthy=lambda: any(s.healthy for s in servers))
    holder = SimpleNamespace(current=make_policy() if policy else None, last_success=1_700_000_000.5, last_error="")
    events = SimpleNamespace(written=11, dropped=3, queue=collections.deque([1, 2]))
    return SimpleNamespace(
        stats=stats,
        started=1_700_000_000.0,
        cache=list(range(42)),
        holder=holder,
        events=events,
        upstreams=upstreams,
    )


def config(tmp_path: Path | None = None, **metrics: Any) -> Config:
    metrics.setdefault("listen", "127.0.0.1:0")
    cfg = Config(metrics=Metrics(**metrics))
    if tmp_path is not None:
        cfg = dataclasses.replace(cfg, path=str(tmp_path / "netblock.yaml"))
    return cfg


@pytest.fixture
def running():
    started: list[MetricsServer] = []

    def start(cfg: Config, server: Any) -> MetricsServer:
        m = MetricsServer(cfg, server)
        m.start()
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


def get(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, str, dict[str, str]]:
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), dict(resp.getheaders())
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_values(running):
    m = running(config(), make_server())
    status, body, headers = get(m.port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    s = samples(body)
    assert s[("netblock_queries_total", (("protocol", "udp"),))] == 10
    assert s[("netblock_responses_total", (("rcode", "NXDOMAIN"), ("source", "blocked")))] == 3
    assert (
        s[
            (
                "netblock_blocked_total",
                (("action", "block"), ("list", "wechat"), ("stage", "query"), ("vendor", "Tencent WeChat")),
            )
        ]
        == 3
    )
    assert s[("netblock_refused_total", (("reason", "acl"),))] == 2
    assert s[("netblock_dropped_total", (("reason", "malformed"),))] == 7
    # Histogram: cumulative buckets, +Inf holds all three, the 9 s one only there.
    assert s[("netblock_request_duration_seconds_bucket", (("le", "0.00025"),))] == 1
    assert s[("netblock_request_duration_seconds_bucket", (("le", "5.0"),))] == 2
    assert s[("netblock_request_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert s[("netblock_request_duration_seconds_count", ())] == 3
    assert s[("netblock_request_duration_seconds_sum", ())] == pytest.approx(9.0032)
    assert s[("netblock_cache_entries", ())] == 42
    assert s[("netblock_cache_hits_total", ())] == 4
    assert s[("netblock_cache_stale_served_total", ())] == 2
    up = (("upstream", "127.0.0.1:5353"),)
    assert s[("netblock_upstream_requests_total", up)] == 6
    assert s[("netblock_upstream_errors_total", up)] == 1
    assert s[("netblock_upstream_healthy", up)] == 1
    assert s[("netblock_upstream_healthy", (("upstream", "127.0.0.1:5354"),))] == 0
    assert s[("netblock_upstream_request_duration_seconds_count", up)] == 1
    assert s[("netblock_policy_info", (("digest", make_policy().digest),))] == 1
    assert (
        s[
            (
                "netblock_policy_entries",
                (("action", "block"), ("list", "wechat"), ("vendor", "Tencent WeChat")),
            )
        ]
        == 2
    )
    assert (
        s[
            (
                "netblock_policy_entries",
                (("action", "monitor"), ("list", "kaspersky"), ("vendor", "Kaspersky")),
            )
        ]
        == 2
    )
    assert s[("netblock_policy_reloads_total", (("result", "success"),))] == 2
    assert s[("netblock_policy_reloads_total", (("result", "failure"),))] == 1
    assert s[("netblock_policy_last_reload_success_timestamp_seconds", ())] == 1_700_000_000.5
    assert s[("netblock_policy_last_reload_successful", ())] == 1
    assert s[("netblock_events_written_total", ())] == 11
    assert s[("netblock_events_dropped_total", ())] == 3
    assert s[("netblock_events_queued", ())] == 2
    assert s[("netblock_inspector_detections_total", (("kind", "sni"), ("list", "wechat")))] == 4
    assert s[("netblock_upstream_mismatched_answers_total", ())] == 3
    build = [k for k in s if k[0] == "netblock_build_info"]
    assert len(build) == 1 and dict(build[0][1])["version"]
    # per_device is off by default: no device series at all.
    assert not any(k[0].startswith("netblock_device_blocked") for k in s)


def test_counters_follow_the_ints_live(running):
    server = make_server()
    m = running(config(), server)
    before = samples(get(m.port, "/metrics")[1])
    server.stats.queries["udp"] += 5
    server.stats.blocked[("wechat", "query", "block")] += 2
    server.holder.last_error = "list 'wechat' would be empty"
    after = samples(get(m.port, "/metrics")[1])
    key = ("netblock_queries_total", (("protocol", "udp"),))
    assert after[key] - before[key] == 5
    assert after[("netblock_policy_last_reload_successful", ())] == 0


def test_per_device_only_when_enabled_and_only_names(running):
    m = running(config(per_device=True), make_server())
    s = samples(get(m.port, "/metrics")[1])
    devices = {dict(k[1])["device"]: v for k, v in s.items() if k[0] == "netblock_device_blocked_total"}
    # An IP or a MAC keyed in by mistake is never exported: only inventory names.
    assert devices == {"finance-laptop-7": 5}


def test_promtool_check_metrics_accepts_exposition(running):
    m = running(config(per_device=True), make_server())
    body = get(m.port, "/metrics")[1]
    assert PROMTOOL, "promtool missing: apt-get install prometheus (tests/apt-packages.txt)"
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_openmetrics_negotiated(running):
    m = running(config(), make_server())
    status, body, headers = get(m.port, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    assert 'netblock_queries_total{protocol="udp"} 10.0' in body


def test_healthz_and_readyz(running):
    server = make_server(healthy=False)
    m = running(config(), server)
    assert get(m.port, "/healthz")[0] == 200
    status, body, _ = get(m.port, "/readyz")
    assert (status, body) == (503, "no healthy upstream\n")
    server.upstreams.servers[1].healthy = True
    assert get(m.port, "/readyz")[:2] == (200, "ready\n")
    server.holder.current = None
    assert get(m.port, "/readyz")[:2] == (503, "no policy loaded\n")
    assert get(m.port, "/nope")[0] == 404


def test_port_taken_is_a_clear_oserror():
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        port = blocker.getsockname()[1]
        m = MetricsServer(config(listen=f"127.0.0.1:{port}"), make_server())
        with pytest.raises(OSError, match=rf"metrics: cannot listen on 127.0.0.1:{port}.*metrics.listen"):
            m.start()
    finally:
        blocker.close()


def test_disabled_serves_nothing():
    m = MetricsServer(config(enabled=False), make_server())
    m.start()
    assert m.port == 0
    m.stop()


def test_ipv6_loopback(running):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    m = running(config(listen="[::1]:0"), make_server())
    assert get(m.port, "/healthz", host="::1")[0] == 200


# --- TLS and basic auth -------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netblock-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def tls_server(tmp_path, running):
    cert, key = self_signed(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret-scrape", bcrypt.gensalt(rounds=6)).decode()
    web = tmp_path / "web-config.yml"
    # Relative cert paths resolve against the web-config file, as in exporter-toolkit.
    web.write_text(
        f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    m = running(config(tmp_path, web_config=str(web)), make_server())
    client = ssl.create_default_context(cafile=str(cert))
    return m, client, web


def test_tls_basic_auth(tls_server):
    m, client, _ = tls_server
    assert m.scheme == "https"
    status, _, headers = get(m.port, "/metrics", context=client)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert get(m.port, "/metrics", basic("prometheus", "wrong"), context=client)[0] == 401
    assert get(m.port, "/metrics", basic("nobody", "s3cret-scrape"), context=client)[0] == 401
    status, body, _ = get(m.port, "/metrics", basic("prometheus", "s3cret-scrape"), context=client)
    assert status == 200 and "netblock_queries_total" in body
    # Cached verification must still tell a wrong password from the right one.
    assert get(m.port, "/metrics", basic("prometheus", "s3cret-scrape!"), context=client)[0] == 401


def test_garbled_auth_and_h2c_upgrade_are_refused(tls_server):
    m, client, _ = tls_server
    for header in (
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer x",
        "Basic ",
    ):
        assert get(m.port, "/metrics", {"Authorization": header}, context=client)[0] == 401
    # The AdGuard Home h2c bypass: an upgrade request must get no further than any other.
    status, _, headers = get(
        m.port,
        "/metrics",
        {
            "Upgrade": "h2c",
            "Connection": "Upgrade, HTTP2-Settings",
            "HTTP2-Settings": "AAMAAABkAAQAoAAAAAIAAAAA",
        },
        context=client,
    )
    assert status == 401 and "Upgrade" not in headers


def test_plain_http_to_tls_port_gets_nothing(tls_server):
    m, _, _ = tls_server
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        get(m.port, "/metrics")


def test_min_version_tls13_refuses_tls12_client(tmp_path, running):
    cert, key = self_signed(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  min_version: TLS13\n")
    m = running(config(tmp_path, web_config=str(web)), make_server())
    tls12 = ssl.create_default_context(cafile=str(cert))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(m.port, "/healthz", context=tls12)
    assert get(m.port, "/healthz", context=ssl.create_default_context(cafile=str(cert)))[0] == 200


def test_web_config_change_is_picked_up(tls_server):
    m, client, web = tls_server
    hashed = bcrypt.hashpw(b"rotated", bcrypt.gensalt(rounds=4)).decode()
    text = web.read_text().split("basic_auth_users:")[0] + f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    time.sleep(0.01)
    web.write_text(text)
    assert get(m.port, "/metrics", basic("prometheus", "s3cret-scrape"), context=client)[0] == 401
    assert get(m.port, "/metrics", basic("prometheus", "rotated"), context=client)[0] == 200
    # A broken edit keeps the last good config instead of opening the endpoint.
    web.write_text(text + "basic_auth_users_typo: {}\n")
    assert get(m.port, "/metrics", context=client)[0] == 401
    assert get(m.port, "/metrics", basic("prometheus", "rotated"), context=client)[0] == 200


def test_basic_auth_without_tls(tmp_path, running):
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  scraper: {hashed}\n")
    m = running(config(tmp_path, web_config=str(web)), make_server())
    assert m.scheme == "http"
    assert get(m.port, "/metrics")[0] == 401
    assert get(m.port, "/metrics", basic("scraper", "pw"))[0] == 200
    # Probes stay open: kubelet and load balancers carry no credentials, and the answer is one word.
    assert get(m.port, "/readyz")[0] == 200


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("tls_server_config:\n  cert_file: a.pem\n", 1, "tls_server_config.key_file: required"),
        ("tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n", 2, "cannot load cert_file"),
        ("basic_auth_users:\n  admin: hunter2\n", 2, "expected a bcrypt hash"),
        ("tls_config:\n  cert_file: a\n", 1, "tls_config: unknown key"),
        ("http_server_config:\n  http2: true\n", 2, "http_server_config.http2: not supported"),
        ("http_server_config:\n  http2: false\n  headers: {X-Frame-Options: deny}\n", 3, "headers: not supported"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            4,
            "cipher_suites: not supported",
        ),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n", 4, "min_version"),
        ("basic_auth_users: [a, b]\n", 1, "expected user: bcrypt-hash"),
    ],
)
def test_web_config_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(SourceError) as err:
        load_web_config(path)
    assert err.value.line == line and message in err.value.message
    assert str(err.value).startswith(f"{path}:{line}:")


def test_missing_web_config_fails_start(tmp_path):
    with pytest.raises(SourceError, match="file not found"):
        MetricsServer(config(tmp_path, web_config="absent.yml"), make_server())


def test_idle_connection_flood_is_capped(running):
    import threading

    from netblock.metrics import MAX_CONNECTIONS

    m = running(config(), make_server())
    before = threading.active_count()
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS + 40):
            idle.append(socket.create_connection(("127.0.0.1", m.port), timeout=5))
        time.sleep(0.5)
        # One thread per admitted connection at most; the rest were closed, not queued.
        assert threading.active_count() - before <= MAX_CONNECTIONS + 1
    finally:
        for s in idle:
            s.close()
    # Once the idle clients are gone, Prometheus gets through again.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if get(m.port, "/healthz")[0] == 200:
                break
        except (ConnectionError, http.client.HTTPException):
            time.sleep(0.1)
    assert get(m.port, "/healthz")[0] == 200


def test_inspector_process_exports_only_its_part(running):
    # netblock inspect runs MetricsServer over a stand-in with only stats: no resolver
    # families (they would read as "no policy, no upstream" and mislead dashboards).
    stats = Stats()
    stats.inspector_detections = {("dot", ""): 2, ("sni", "wechat"): 1}
    m = running(config(), SimpleNamespace(stats=stats, started=1.0))
    s = samples(get(m.port, "/metrics")[1])
    assert s[("netblock_inspector_detections_total", (("kind", "dot"), ("list", "")))] == 2
    assert s[("netblock_inspector_detections_total", (("kind", "sni"), ("list", "wechat")))] == 1
    names = {k[0] for k in s if k[0].startswith("netblock_")}
    assert names == {
        "netblock_build_info",
        "netblock_start_time_seconds",
        "netblock_inspector_detections_total",
    }
    assert get(m.port, "/readyz")[:2] == (200, "ready\n")
