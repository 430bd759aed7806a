"""Prometheus metrics and the health endpoints: /metrics, /healthz, /readyz.

The query path only increments plain ints in `stats.Stats` (a prometheus-client
`.labels().inc()` costs more than answering a cached query). `NetblockCollector` turns
those ints into metric families when Prometheus scrapes, in the HTTP thread.

Names follow Blocky and CoreDNS (reference/anchors.md): the `netblock_` prefix, base units,
`_total` on counters, a `_build_info` gauge. Label values are bounded: protocol, rcode,
answer source, list, vendor, stage, action, reason, kind, the configured upstream address,
and inventory device names. Never a client IP or a query name: those go to events.

The endpoint listens on loopback by default. TLS and basic auth (bcrypt) come from a
Prometheus exporter web-config file (tls_server_config, basic_auth_users), re-read when it
changes. The server speaks HTTP/1.x only: there is no h2c upgrade that could skip auth.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import platform
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from netblock import __version__
from netblock.config import Config, parse_hostport
from netblock.policy import sources
from netblock.stats import DURATION_BUCKETS, Histogram, Stats
from netblock.yamlsrc import SourceError, line_of, load_file

log = logging.getLogger(__name__)

_BUCKET_BOUNDS = (*(str(b) for b in DURATION_BUCKETS), "+Inf")


def _histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    counts = list(hist.counts)  # one C-level copy: the loop may be adding meanwhile
    cumulative = 0
    buckets = []
    for bound, count in zip(_BUCKET_BOUNDS, counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    family.add_metric(labels, buckets, hist.sum)


def _looks_like_address(text: str) -> bool:
    """An IP address or a MAC: never a per-device label, whatever the producer put there."""
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
        return True
    except ValueError:
        pass
    return len(text) == 17 and text.count(":") == 5


def is_dns_server(server: Any) -> bool:
    """A DnsServer (policy holder and upstreams), not the inspector's stand-in with only stats."""
    return hasattr(server, "holder") or hasattr(server, "upstreams")


class NetblockCollector(Collector):
    """Reads the server's plain counters at scrape time."""

    def __init__(self, server: Any, per_device: bool = False) -> None:
        self.server = server
        self.per_device = per_device

    def collect(self) -> Iterator[Metric]:
        server = self.server
        stats: Stats = server.stats
        yield from self._build(server)
        if is_dns_server(server):
            yield from self._queries(stats)
            yield from self._cache(stats, server)
            yield from self._upstreams(stats, server)
            yield from self._policy(stats, server)
        # The inspector process shares Stats but has no resolver: it exports its own part only.
        if hasattr(server, "events"):
            yield from self._events(server)
        yield from self._inspector(stats)
        if self.per_device:
            yield from self._devices(stats)

    def _build(self, server: Any) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "netblock_build_info",
            "netblock version and Python runtime; always 1",
            labels=["version", "python"],
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield GaugeMetricFamily(
            "netblock_start_time_seconds",
            "When the server started, Unix time",
            value=float(getattr(server, "started", 0.0) or 0.0),
        )

    def _queries(self, stats: Stats) -> Iterator[Metric]:
        yield _counter("netblock_queries_total", "DNS queries received, by transport", ["protocol"],
                       stats.all_queries())
        yield _counter(
            "netblock_responses_total",
            "DNS responses sent, by where the answer came from (blocked, cache, upstream, local, error) "
            "and response code",
            ["source", "rcode"],
            stats.all_responses(),
        )

        vendors = self._vendors()
        blocked = CounterMetricFamily(
            "netblock_blocked_total",
            "Blocked (or monitored) attempts, by list, vendor, stage (query, cname, answer-ip, ...) "
            "and action (block, monitor)",
            labels=["list", "vendor", "stage", "action"],
        )
        for (list_name, stage, action), n in stats.all_blocked().items():
            blocked.add_metric([list_name, vendors.get(list_name, ""), stage, action], n)
        yield blocked

        yield _counter("netblock_refused_total", "Queries answered REFUSED, by reason", ["reason"], stats.refused)
        yield _counter("netblock_dropped_total", "Queries dropped without an answer, by reason", ["reason"],
                       stats.dropped)

        duration = HistogramMetricFamily(
            "netblock_request_duration_seconds",
            "Time from receiving a query to sending its answer",
            labels=[],
        )
        _histogram(duration, [], stats.all_request_durations())
        yield duration

        yield CounterMetricFamily(
            "netblock_inflight_rejected_total",
            "Queries answered SERVFAIL because the in-flight limit was reached",
            value=stats.inflight_rejected,
        )
        yield CounterMetricFamily(
            "netblock_tcp_connections_rejected_total",
            "TCP connections refused because the connection limit was reached",
            value=stats.tcp_connections_rejected,
        )

    def _cache(self, stats: Stats, server: Any) -> Iterator[Metric]:
        cache = getattr(server, "cache", None)
        yield GaugeMetricFamily(
            "netblock_cache_entries",
            "Answers held in the cache",
            value=len(cache) if cache is not None else 0,
        )
        yield CounterMetricFamily(
            "netblock_cache_hits_total", "Queries answered from the cache", value=stats.all_cache_hits()
        )
        yield CounterMetricFamily(
            "netblock_cache_misses_total", "Cache lookups that found nothing usable", value=stats.cache_misses
        )
        yield CounterMetricFamily(
            "netblock_cache_evictions_total", "Answers evicted to make room", value=stats.cache_evictions
        )
        yield CounterMetricFamily(
            "netblock_cache_stale_served_total",
            "Expired answers served because no upstream answered (RFC 8767)",
            value=stats.cache_stale_served,
        )

    def _upstreams(self, stats: Stats, server: Any) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "netblock_upstream_requests_total", "Queries forwarded to an upstream", labels=["upstream"]
        )
        errors = CounterMetricFamily(
            "netblock_upstream_errors_total",
            "Forwarded queries that failed: timeouts, refused connections, bad answers",
            labels=["upstream"],
        )
        timeouts = CounterMetricFamily(
            "netblock_upstream_timeouts_total", "Forwarded queries that timed out", labels=["upstream"]
        )
        latency = HistogramMetricFamily(
            "netblock_upstream_request_duration_seconds",
            "Round trip of a forwarded query",
            labels=["upstream"],
        )
        healthy = GaugeMetricFamily(
            "netblock_upstream_healthy",
            "1 while the upstream answers the health probe, 0 while it does not",
            labels=["upstream"],
        )
        seen: set[str] = set()
        for address, up in dict(stats.upstreams).items():
            seen.add(address)
            requests.add_metric([address], up.requests)
            errors.add_metric([address], up.errors)
            timeouts.add_metric([address], up.timeouts)
            _histogram(latency, [address], up.latency)
        # The pool's health is the live truth (active probe); the stats entry may lag or be missing.
        pool = getattr(server, "upstreams", None)
        for up_server in getattr(pool, "servers", ()) or ():
            healthy.add_metric([str(up_server.address)], 1 if up_server.healthy else 0)
            seen.discard(str(up_server.address))
        for address in seen:
            healthy.add_metric([address], 1 if stats.upstreams[address].healthy else 0)
        yield requests
        yield errors
        yield timeouts
        yield latency
        yield healthy
        yield CounterMetricFamily(
            "netblock_upstream_mismatched_answers_total",
            "Upstream answers dropped because ID, source or question did not match",
            value=stats.upstream_mismatches,
        )

    def _vendors(self) -> dict[str, str]:
        holder = getattr(self.server, "holder", None)
        policy = getattr(holder, "current", None)
        if policy is None:
            return {}
        return {lst.name: lst.vendor for lst in policy.lists}

    def _policy(self, stats: Stats, server: Any) -> Iterator[Metric]:
        holder = getattr(server, "holder", None)
        policy = getattr(holder, "current", None)
        info = InfoMetricFamily(
            "netblock_policy", "The policy in force, identified by the digest of its lists", labels=[]
        )
        entries = GaugeMetricFamily(
            "netblock_policy_entries",
            "Entries (domains, exact names, networks) per list in the policy in force",
            labels=["list", "vendor", "action"],
        )
        if policy is not None:
            info.add_metric([], {"digest": policy.digest})
            counts = policy.entry_counts()
            for lst in policy.lists:
                entries.add_metric([lst.name, lst.vendor, lst.action], counts.get(lst.name, 0))
        yield info
        yield entries
        yield GaugeMetricFamily("netblock_policy_loaded", "1 once a policy is in force", value=int(policy is not None))

        reloads = CounterMetricFamily(
            "netblock_policy_reloads_total",
            "Policy loads and reloads, by result (success, failure)",
            labels=["result"],
        )
        reloads.add_metric(["success"], stats.reload_successes)
        reloads.add_metric(["failure"], stats.reload_failures)
        yield reloads
        yield GaugeMetricFamily(
            "netblock_policy_last_reload_success_timestamp_seconds",
            "When a policy was last loaded successfully, Unix time",
            value=float(getattr(holder, "last_success", 0.0) or 0.0),
        )
        yield GaugeMetricFamily(
            "netblock_policy_last_reload_successful",
            "1 if the last load or reload was accepted, 0 if it was refused (the last good policy stays in force)",
            value=0 if getattr(holder, "last_error", "") else 1,
        )

        yield _counter(  # bounded: the URLs the lists name
            "netblock_list_source_failures_total",
            "Failed fetches of URL list sources since start (the on-disk copy stays in use)",
            ["source"],
            sources.failure_counts(),
        )

    def _events(self, server: Any) -> Iterator[Metric]:
        events = getattr(server, "events", None)
        yield CounterMetricFamily(
            "netblock_events_written_total",
            "Blocked-attempt events stored",
            value=getattr(events, "written", 0),
        )
        yield CounterMetricFamily(
            "netblock_events_dropped_total",
            "Blocked-attempt events lost because the queue was full or storage failed",
            value=getattr(events, "dropped", 0),
        )
        queue = getattr(events, "queue", None)
        yield GaugeMetricFamily(
            "netblock_events_queued",
            "Events waiting for the writer",
            value=len(queue) if queue is not None else 0,
        )

    def _inspector(self, stats: Stats) -> Iterator[Metric]:
        yield _counter(
            "netblock_inspector_detections_total",
            "Packet-inspector detections, by kind (sni, quic, http-host, dns-bypass, dot, doh, ip; and, noted "
            "under list inspector: ech, esni, no-sni, quic-undecryptable) and list",
            ["kind", "list"],
            stats.inspector_detections,
        )

    def _devices(self, stats: Stats) -> Iterator[Metric]:
        devices = CounterMetricFamily(
            "netblock_device_blocked_total",
            "Blocked attempts per device named in the inventory",
            labels=["device"],
        )
        for device, n in dict(stats.device_blocked).items():
            if device and not _looks_like_address(device):
                devices.add_metric([device], n)
        yield devices


def _counter(name: str, documentation: str, labels: list[str],
             counts: Mapping[Any, int]) -> CounterMetricFamily:
    """A labelled counter from a dict of plain ints kept on the query path (key: the label
    value, or a tuple of them)."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in dict(counts).items():  # a copy: the query path may add a key meanwhile
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


# --- web config: TLS and basic auth ------------------------------------------------------------

_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",
}
_TLS_UNSUPPORTED = {"cipher_suites", "curve_preferences"}


@dataclass
class WebConfig:
    """The parts of the exporter-toolkit web-config file netblock honours."""

    path: str = ""
    context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash

    @property
    def tls(self) -> bool:
        return self.context is not None


def load_web_config(path: str | Path) -> WebConfig:
    """Parse a web-config file; every mistake is a SourceError naming file:line and key."""
    path = str(path)
    data = load_file(path)
    if data is None:
        return WebConfig(path=path)
    if not isinstance(data, dict):
        raise SourceError(path, getattr(data, "line", 1), "web config: expected a mapping")
    known = {"tls_server_config", "basic_auth_users", "http_server_config"}
    for key in data:
        if key not in known:
            raise SourceError(path, line_of(data, key), f"{key}: unknown key (known: {', '.join(sorted(known))})")
    _check_http(data.get("http_server_config"), data, path)
    base = Path(path).parent
    context = _tls_context(data.get("tls_server_config"), data, path, base)
    users = _users(data.get("basic_auth_users"), data, path)
    return WebConfig(path=path, context=context, users=users)


def _check_http(http: Any, data: Any, path: str) -> None:
    if http is None:
        return
    if not isinstance(http, dict):
        raise SourceError(path, line_of(data, "http_server_config"), "http_server_config: expected a mapping")
    for key, value in http.items():
        if key == "http2" and value is False:
            continue  # what we do anyway
        # Only HTTP/1.1 is served (no h2c path around auth); extra headers are not supported.
        # Refusing beats ignoring: the operator learns at start-up, not from a scan.
        raise SourceError(
            path,
            line_of(http, key),
            f"http_server_config.{key}: not supported by netblock (HTTP/1.1 only, no extra headers)",
        )


def _tls_context(tls: Any, data: Any, path: str, base: Path) -> ssl.SSLContext | None:
    if tls is None:
        return None
    if not isinstance(tls, dict):
        raise SourceError(path, line_of(data, "tls_server_config"), "tls_server_config: expected a mapping")
    for key in tls:
        if key in _TLS_UNSUPPORTED:
            # Go cipher and curve names have no faithful OpenSSL mapping; ignoring them would
            # leave the operator believing a restriction is in force.
            raise SourceError(
                path,
                line_of(tls, key),
                f"tls_server_config.{key}: not supported by netblock "
                "(OpenSSL defaults apply; use min_version: TLS13 to restrict)",
            )
        if key not in _TLS_KEYS:
            raise SourceError(path, line_of(tls, key), f"tls_server_config.{key}: unknown key")
    for key in ("cert_file", "key_file"):
        if not isinstance(tls.get(key), str) or not tls[key]:
            raise SourceError(
                path,
                line_of(tls, key) if key in tls else line_of(data, "tls_server_config"),
                f"tls_server_config.{key}: required (a file path)",
            )

    def resolve(name: str) -> str:
        p = Path(tls[name])
        return str(p if p.is_absolute() else base / p)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    min_version = tls.get("min_version", "TLS12")
    if min_version not in _TLS_VERSIONS:
        raise SourceError(
            path,
            line_of(tls, "min_version"),
            f"tls_server_config.min_version: must be TLS12 or TLS13, not {min_version!r}",
        )
    context.minimum_version = _TLS_VERSIONS[min_version]
    if "max_version" in tls:
        if tls["max_version"] not in _TLS_VERSIONS:
            raise SourceError(
                path, line_of(tls, "max_version"), "tls_server_config.max_version: must be TLS12 or TLS13"
            )
        context.maximum_version = _TLS_VERSIONS[tls["max_version"]]
    try:
        context.load_cert_chain(resolve("cert_file"), resolve("key_file"))
    except (OSError, ssl.SSLError) as exc:
        raise SourceError(
            path, line_of(tls, "cert_file"), f"tls_server_config: cannot load cert_file/key_file: {exc}"
        ) from None
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in _CLIENT_AUTH:
        raise SourceError(
            path,
            line_of(tls, "client_auth_type"),
            f"tls_server_config.client_auth_type: must be one of {', '.join(_CLIENT_AUTH)}",
        )
    if auth != "NoClientCert":
        if not tls.get("client_ca_file"):
            raise SourceError(
                path,
                line_of(tls, "client_auth_type"),
                "tls_server_config.client_ca_file: required with client_auth_type",
            )
        try:
            context.load_verify_locations(resolve("client_ca_file"))
        except (OSError, ssl.SSLError) as exc:
            raise SourceError(
                path, line_of(tls, "client_ca_file"), f"tls_server_config.client_ca_file: {exc}"
            ) from None
        context.verify_mode = _CLIENT_AUTH[auth]
    if tls.get("prefer_server_cipher_suites", True):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    return context


def _users(raw: Any, data: Any, path: str) -> dict[str, bytes]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SourceError(path, line_of(data, "basic_auth_users"), "basic_auth_users: expected user: bcrypt-hash")
    users = {}
    for user, hashed in raw.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise SourceError(
                path,
                line_of(raw, user),
                f"basic_auth_users.{user}: expected a bcrypt hash ($2b$...), not a plain password",
            )
        users[str(user)] = hashed.encode()
    return users


class _Auth:
    """Basic auth against bcrypt hashes, re-reading the web config when it changes.

    A bcrypt check costs ~50-100 ms by design; a scrape every few seconds would pay it each
    time, so verified (user, password, hash) triples are remembered by digest. Unknown users
    still pay a bcrypt check so the answer time does not tell which users exist.
    """

    def __init__(self, web: WebConfig) -> None:
        self.web = web
        self._stamp = self._file_stamp()
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()
        self._dummy: dict[int, bytes] = {}  # bcrypt cost -> a hash nobody's password matches

    def _dummy_hash(self, users: dict[str, bytes]) -> bytes:
        # Same cost as the real hashes, so a wrong user takes as long as a wrong password.
        cost = int(next(iter(users.values()))[4:6]) if users else 10
        cost = min(max(cost, 4), 14)
        if cost not in self._dummy:
            self._dummy[cost] = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=cost))
        return self._dummy[cost]

    def _file_stamp(self) -> tuple[int, int] | None:
        if not self.web.path:
            return None
        try:
            st = os.stat(self.web.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def refresh(self) -> WebConfig:
        """The current config; a changed file is re-read, a broken one keeps the last good."""
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self.web = load_web_config(self.web.path)
                        self._verified.clear()
                        log.info("metrics web config reloaded from %s", self.web.path)
                    except SourceError as exc:
                        log.error("metrics web config not reloaded, keeping the previous one: %s", exc)
        return self.web

    def check(self, header: str | None) -> bool:
        users = self.refresh().users
        if not users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not sep:
            return False
        hashed = users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed or b""))).digest()
        if hashed is not None and key in self._verified:
            return True
        try:
            ok = bcrypt.checkpw(password.encode(), hashed or self._dummy_hash(users)) and hashed is not None
        except ValueError:  # a hash bcrypt cannot read: fail closed
            ok = False
        if ok:
            with self._lock:
                if len(self._verified) > 1000:
                    self._verified.clear()
                self._verified.add(key)
        return ok


# --- HTTP --------------------------------------------------------------------------------------


def readiness(server: Any) -> tuple[bool, str]:
    """Ready = a policy is in force and at least one upstream answers its health probe.

    A process without a resolver (the inspector) is ready while it serves.
    """
    if not is_dns_server(server):
        return True, "ready"
    holder = getattr(server, "holder", None)
    if getattr(holder, "current", None) is None:
        return False, "no policy loaded"
    upstreams = getattr(server, "upstreams", None)
    if upstreams is None or not upstreams.any_healthy():
        return False, "no healthy upstream"
    return True, "ready"


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 10  # a silent client (or a stalled TLS handshake) frees its thread after this
    server_version = "netblock"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            # Here, in the connection's own thread, under the socket timeout set in get_request.
            self.request.do_handshake()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        if path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            ready, why = readiness(owner.netblock)
            self._send(200 if ready else 503, why.encode() + b"\n")
        elif path == "/metrics":
            if not owner.auth.check(self.headers.get("Authorization")):
                self._send(401, b"Unauthorized\n", {"WWW-Authenticate": 'Basic realm="netblock"'})
                return
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(owner.registry)
            except Exception as exc:  # a collector bug must not kill the endpoint thread silently
                log.exception("metrics collection failed")
                self._send(500, f"collection failed: {exc}\n".encode())
                return
            self._send(200, body, {"Content-Type": content_type})
        elif path == "/":
            self._send(200, b"netblock: /metrics /healthz /readyz\n")
        else:
            self._send(404, b"not found\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        headers = headers or {}
        self.send_header("Content-Type", headers.pop("Content-Type", "text/plain; charset=utf-8"))
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes every few seconds would flood the log; errors are logged where they occur.
        pass


MAX_CONNECTIONS = 64  # a thread each; Prometheus needs one, a flood of idle clients must not get thousands


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: a burst of connections waits instead of SYN retries
    allow_reuse_address = True  # a restart must not wait out TIME_WAIT; a live listener still conflicts
    owner: MetricsServer

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the cap: closed at once, nothing queued
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        context = self.owner.auth.refresh().context
        if context is not None:
            sock.settimeout(_Handler.timeout)
            # The handshake runs in the handler thread, so a slow client cannot stall accept().
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS garbage, resets and timeouts from one client are that client's problem.
        pass


class MetricsServer:
    """/metrics, /healthz and /readyz for one running DnsServer, served from a daemon thread."""

    def __init__(self, config: Config, server: Any) -> None:
        self.config = config
        self.netblock = server
        self.enabled = config.metrics.enabled
        self.host, self.requested_port = parse_hostport(config.metrics.listen, default_port=9153)
        self.port = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NetblockCollector(server, per_device=config.metrics.per_device))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        web = WebConfig()
        if config.metrics.web_config:
            # Load now so a broken file stops start-up with file:line, not at the first scrape.
            web = load_web_config(config.resolve(config.metrics.web_config))
        self.auth = _Auth(web)
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.auth.web.tls else "http"

    def start(self) -> None:
        if not self.enabled:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            http = _HTTPServer((self.host, self.requested_port), family)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"metrics: cannot listen on {self.config.metrics.listen}: {exc.strerror} "
                "(is another netblock or exporter using the port? set metrics.listen)",
            ) from exc
        http.owner = self
        self._http = http
        self.port = http.server_address[1]
        self._thread = threading.Thread(
            target=http.serve_forever, kwargs={"poll_interval": 0.5}, name="netblock-metrics", daemon=True
        )
        self._thread.start()
        log.info(
            "metrics on %s://%s:%d/metrics%s",
            self.scheme,
            f"[{self.host}]" if family == socket.AF_INET6 else self.host,
            self.port,
            " (basic auth)" if self.auth.web.users else "",
        )

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def metric_names(registry: CollectorRegistry) -> Iterable[str]:
    """Every family name the registry exports (for tests and `netblock check`)."""
    for family in registry.collect():
        yield family.name
