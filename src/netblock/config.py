"""The service configuration: YAML in, frozen dataclasses out.

Every section is a frozen dataclass whose fields and defaults are the documentation of the
keys. The builder walks the YAML against the type hints, so an unknown key, a wrong type
or a bad address fails at start-up as `file:line: key: message`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from netblock.yamlsrc import SourceError, YList, YMap, line_of, load_file

PRIVATE_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)


@dataclass(frozen=True)
class Upstreams:
    # Empty: the nameservers of /etc/resolv.conf (or `resolv_conf`).
    servers: tuple[str, ...] = ()
    resolv_conf: str = "/etc/resolv.conf"
    timeout: float = 2.0  # whole query, then SERVFAIL (or stale)
    attempt_timeout: float = 1.0  # one upstream, then the next
    down_seconds: float = 5.0  # a failing upstream is tried last for this long
    max_in_flight: int = 1000
    tcp_timeout: float = 3.0
    health_interval: float = 2.0  # probe every upstream with `. NS`; 0 turns probing off


@dataclass(frozen=True)
class Cache:
    size: int = 100_000
    min_ttl: int = 0
    max_ttl: int = 86_400
    negative_ttl: int = 3_600  # upper bound for NXDOMAIN/NODATA (RFC 2308)
    servfail_ttl: int = 5
    serve_stale: bool = True  # RFC 8767
    stale_ttl: int = 30
    stale_window: int = 86_400


@dataclass(frozen=True)
class Tcp:
    idle_timeout: float = 10.0
    max_connections: int = 150
    max_queries_per_connection: int = 100


@dataclass(frozen=True)
class RateLimit:
    queries: int = 1000  # per client per `per_seconds` (Pi-hole's default)
    per_seconds: float = 60.0
    action: Literal["refuse", "drop"] = "refuse"
    exempt: tuple[str, ...] = ()  # relays and NATs that speak for many devices
    max_clients: int = 100_000


@dataclass(frozen=True)
class Access:
    allow: tuple[str, ...] = PRIVATE_NETWORKS
    action: Literal["refuse", "drop"] = "refuse"
    rate_limit: RateLimit = field(default_factory=RateLimit)


@dataclass(frozen=True)
class Policy:
    lists: tuple[str, ...] = ("../blocklists/*.yaml",)  # paths or globs, relative to the config file
    block_ttl: int = 300
    max_shrink: float = 0.5  # refuse a reload that shrinks a list by more than this
    watch: bool = True
    watch_interval: float = 1.0
    inspect_answers: bool = True  # CNAME targets and answer IPs
    cache_dir: str = "../var/lists"  # on-disk copies of URL sources


@dataclass(frozen=True)
class Events:
    enabled: bool = True
    sqlite: str = "../var/events.db"
    jsonl: str = "../var/events.jsonl"
    jsonl_max_bytes: int = 100 * 1024 * 1024
    jsonl_backups: int = 5
    retention_days: int = 365  # 0 keeps events forever
    queue_size: int = 100_000
    batch_size: int = 1000
    flush_interval: float = 0.5
    max_cpu_share: float = 0.25  # under a flood the writer rests so answering keeps the rest
    postgres: str = ""  # a DSN; when set, events go there instead of SQLite (not as well)


@dataclass(frozen=True)
class Devices:
    inventory: str = ""
    dnsmasq_leases: tuple[str, ...] = ()
    kea_leases: tuple[str, ...] = ()
    dhcpd_leases: tuple[str, ...] = ()
    neighbours: bool = True  # /proc/net/arp and `ip -6 neigh`
    edns_mac: bool = True  # EDNS0 options 65001 and 65073 added by routers
    trusted_relays: tuple[str, ...] = ()  # only these may speak for a client with ECS
    refresh_interval: float = 30.0


@dataclass(frozen=True)
class Metrics:
    enabled: bool = True
    listen: str = "127.0.0.1:9153"
    web_config: str = ""  # Prometheus exporter web-config file: TLS and basic auth
    per_device: bool = False


@dataclass(frozen=True)
class Logging:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    file: str = ""  # empty: stderr


@dataclass(frozen=True)
class Inspector:
    interface: str = ""
    enforce: tuple[str, ...] = ()  # rst, nft, nfqueue
    resolvers: tuple[str, ...] = ()  # the addresses of netblock: DNS to others is a bypass
    doh_list: str = "../blocklists/doh-resolvers.yaml"
    flow_timeout: float = 10.0
    max_flows: int = 20_000
    metrics_listen: str = ""  # the inspector's own /metrics (host:port); empty: none


@dataclass(frozen=True)
class Server:
    listen: tuple[str, ...] = ("127.0.0.1:5300", "[::1]:5300")
    instance: str = ""  # names this server in events from a fleet; default: host name
    user: str = ""  # switch to this user after binding (when started as root)
    udp_payload: int = 1232  # advertised and answered EDNS buffer size
    reuse_port: bool = False
    batch_io: bool = True  # UDP through recvmmsg/sendmmsg (Linux); off: the event loop's datagram endpoint


@dataclass(frozen=True)
class Config:
    server: Server = field(default_factory=Server)
    upstreams: Upstreams = field(default_factory=Upstreams)
    cache: Cache = field(default_factory=Cache)
    tcp: Tcp = field(default_factory=Tcp)
    access: Access = field(default_factory=Access)
    policy: Policy = field(default_factory=Policy)
    events: Events = field(default_factory=Events)
    devices: Devices = field(default_factory=Devices)
    metrics: Metrics = field(default_factory=Metrics)
    logging: Logging = field(default_factory=Logging)
    inspector: Inspector = field(default_factory=Inspector)
    path: str = ""  # the file this came from; relative paths are resolved against its folder

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(relative)
        if p.is_absolute() or not self.path:
            return p
        return Path(os.path.normpath(Path(self.path).parent / p))


# Keys whose string values must be network addresses; checked at load time.
_ADDRESS_KEYS = {"listen": "hostport", "servers": "hostport", "allow": "network", "exempt": "network",
                 "trusted_relays": "network", "resolvers": "ip"}


def parse_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:53', '[::1]:53', '::1' -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"'{text}': missing ']'")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


def _check_address(kind: str, value: str) -> None:
    if kind == "hostport":
        parse_hostport(value)
    elif kind == "network":
        ipaddress.ip_network(value, strict=False)
    else:
        ipaddress.ip_address(value)


def _build(cls: type, data: Any, where: str, path: str) -> Any:
    if data is None:
        data = YMap()
    if not isinstance(data, dict):
        raise SourceError(path, getattr(data, "line", 0), f"{where or 'config'}: expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "path"}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        line = line_of(data, key)
        dotted = f"{where}.{key}" if where else key
        if key not in names:
            raise SourceError(path, line, f"{dotted}: unknown key (known: {', '.join(sorted(names))})")
        values[key] = _coerce(hints[key], raw, dotted, path, line)
    return cls(**values)


def _coerce(hint: Any, raw: Any, dotted: str, path: str, line: int) -> Any:
    origin = typing.get_origin(hint)
    key = dotted.rsplit(".", 1)[-1]
    if dataclasses.is_dataclass(hint):
        return _build(hint, raw, dotted, path)  # type: ignore[arg-type]
    if origin is Literal:
        choices = typing.get_args(hint)
        if raw not in choices:
            raise SourceError(path, line, f"{dotted}: must be one of {', '.join(map(str, choices))}, not {raw!r}")
        return raw
    if origin in (Union, types.UnionType):
        return raw
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            raise SourceError(path, line, f"{dotted}: expected a list")
        items = []
        for index, item in enumerate(raw):
            item_line = raw.line_of(index) if isinstance(raw, YList) else line
            items.append(_coerce(item_type, item, dotted, path, item_line))
        return tuple(items)
    if hint is bool:
        if not isinstance(raw, bool):
            raise SourceError(path, line, f"{dotted}: expected true or false, not {raw!r}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise SourceError(path, line, f"{dotted}: expected a whole number, not {raw!r}")
        if raw < 0:
            raise SourceError(path, line, f"{dotted}: must not be negative")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise SourceError(path, line, f"{dotted}: expected a number, not {raw!r}")
        if raw < 0:
            raise SourceError(path, line, f"{dotted}: must not be negative")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise SourceError(path, line, f"{dotted}: expected a string, not {raw!r}")
        if key in _ADDRESS_KEYS:
            try:
                _check_address(_ADDRESS_KEYS[key], raw)
            except ValueError as exc:
                raise SourceError(path, line, f"{dotted}: bad address {raw!r}: {exc}") from None
        return raw
    raise SourceError(path, line, f"{dotted}: unsupported type {hint}")


def load_config(path: str | Path) -> Config:
    """Load and validate a config file; raises SourceError naming file:line and key."""
    path = Path(path)
    data = load_file(path)
    config = _build(Config, data, "", str(path))
    # absolute(), not resolve(): a Kubernetes ConfigMap file is a symlink into a folder
    # that the kubelet replaces on every update; the link is what stays.
    config = dataclasses.replace(config, path=str(path.absolute()))
    _check_consistency(config, str(path), data)
    return config


def _check_consistency(config: Config, path: str, data: Any) -> None:
    def fail(section: str, key: str, message: str) -> None:
        node = data.get(section) if isinstance(data, dict) else None
        raise SourceError(path, line_of(node, key) if node is not None else 0, f"{section}.{key}: {message}")

    if config.upstreams.attempt_timeout > config.upstreams.timeout:
        fail("upstreams", "attempt_timeout", "must not exceed upstreams.timeout")
    if config.upstreams.max_in_flight < 1:
        fail("upstreams", "max_in_flight", "must be at least 1")
    if config.cache.min_ttl > config.cache.max_ttl:
        fail("cache", "min_ttl", "must not exceed cache.max_ttl")
    if not 0 < config.policy.max_shrink <= 1:
        fail("policy", "max_shrink", "must be a fraction in (0, 1]")
    if not 0 < config.events.max_cpu_share <= 1:
        fail("events", "max_cpu_share", "must be a fraction in (0, 1]")
    if not 512 <= config.server.udp_payload <= 4096:
        fail("server", "udp_payload", "must be between 512 and 4096")
    if not config.server.listen:
        fail("server", "listen", "needs at least one address")
    # Values that would silently stop service: a bucket that never refills blocks every
    # client for good after `queries`; TCP that times out at once or takes no query.
    if config.access.rate_limit.queries and config.access.rate_limit.per_seconds <= 0:
        fail("access", "rate_limit", "per_seconds must be more than 0 (queries: 0 turns the limit off)")
    if config.tcp.idle_timeout <= 0:
        fail("tcp", "idle_timeout", "must be more than 0")
    if config.tcp.max_connections < 1 or config.tcp.max_queries_per_connection < 1:
        fail("tcp", "max_connections" if config.tcp.max_connections < 1 else "max_queries_per_connection",
             "must be at least 1")


def resolv_conf_servers(path: str) -> tuple[str, ...]:
    """The nameservers of a resolv.conf, as 'host:53' strings."""
    servers = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            host = parts[1].split("%", 1)[0]
            try:
                ipaddress.ip_address(host)
            except ValueError:
                continue
            servers.append(f"[{host}]:53" if ":" in host else f"{host}:53")
    return tuple(servers)
