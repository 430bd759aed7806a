"""Who is this client: device names from the inventory, DHCP leases, the neighbour table
and the EDNS0 MAC option a router adds.

Identification runs in the event writer thread, never on the query path: the server only
hands over the client address and the MAC it parsed. Sources are consulted in this order,
first answer wins (the most direct evidence first, the coarsest last):

1. EDNS0 MAC option (65001 raw, 65073 text) looked up in the inventory's MACs. A router
   that adds it speaks for many devices behind one address, so the MAC beats the address.
2. The inventory's exact IP addresses.
3. The MAC the DHCP leases (dnsmasq, Kea CSV, ISC dhcpd.leases) give for the address,
   looked up in the inventory's MACs.
4. The MAC the kernel's neighbour table (/proc/net/arp, `ip -6 neigh`) gives for the
   address, looked up in the inventory's MACs.
5. The inventory's CIDRs, the longest prefix first (a room, a department's subnet).
6. The host name in the DHCP lease (a device the inventory does not list yet).
7. Nobody names it: the device is known by its IP address.

EDNS Client Subnet is only believed from relays listed in devices.trusted_relays: anybody
else could claim to be any device. The server substitutes the ECS address for such a
relay's own before it records the event (dns/server.py), so the address identified here
is already the device's.
"""

from __future__ import annotations

import calendar
import csv
import io
import ipaddress
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netblock.yamlsrc import SourceError, YList, line_of, load_file

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HEX = re.compile(r"^[0-9a-f]{12}$")


def normalise_mac(text: str) -> str:
    """'AA-BB-CC-DD-EE-FF', 'aabb.ccdd.eeff', 'aabbccddeeff' -> 'aa:bb:cc:dd:ee:ff'; '' if not a MAC."""
    digits = re.sub(r"[\s:.\-]", "", text.strip().lower())
    if not _HEX.match(digits) or digits == "000000000000":
        return ""
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    owner: str = ""
    department: str = ""
    tags: tuple[str, ...] = ()
    in_inventory: bool = True


@dataclass(frozen=True, slots=True)
class Identity:
    """The answer to 'who is this client', with the source that named it."""

    device: Device
    mac: str  # the MAC we believe the client has, or ""
    source: str  # edns-mac | inventory-ip | lease-mac | neighbour-mac | inventory-cidr | lease-hostname | ip


@dataclass(frozen=True, slots=True)
class Lease:
    ip: str
    mac: str
    hostname: str = ""
    expires: float = 0.0  # epoch seconds; 0: never or unknown


# ---------------------------------------------------------------- inventory


@dataclass
class Inventory:
    devices: list[Device] = field(default_factory=list)
    by_ip: dict[str, Device] = field(default_factory=dict)
    by_mac: dict[str, Device] = field(default_factory=dict)
    networks: list[tuple[IPNetwork, Device]] = field(default_factory=list)  # longest prefix first
    path: str = ""

    def by_name(self, name: str) -> Device | None:
        for device in self.devices:
            if device.name == name:
                return device
        return None

    def match_network(self, ip: str) -> Device | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        for network, device in self.networks:
            if address.version == network.version and address in network:
                return device
        return None


_DEVICE_KEYS = {"name", "owner", "department", "ips", "cidrs", "macs", "tags", "note"}


def _strings(entry: dict[str, Any], key: str, path: str) -> list[tuple[str, int]]:
    raw = entry.get(key)
    if raw is None:
        return []
    if isinstance(raw, str):
        return [(raw, line_of(entry, key))]
    if not isinstance(raw, list):
        raise SourceError(path, line_of(entry, key), f"{key}: expected a list of strings")
    out = []
    for index, item in enumerate(raw):
        line = raw.line_of(index) if isinstance(raw, YList) else line_of(entry, key)
        if not isinstance(item, str | int):
            raise SourceError(path, line, f"{key}: expected a string, not {item!r}")
        out.append((str(item), line))
    return out


def parse_inventory(data: Any, path: str) -> Inventory:
    """The inventory YAML (`devices: [...]`) -> Inventory; errors name file:line."""
    inventory = Inventory(path=path)
    if data is None:
        return inventory
    if not isinstance(data, dict) or "devices" not in data:
        raise SourceError(path, getattr(data, "line", 1), "expected a mapping with a 'devices' list")
    entries = data["devices"]
    if entries is None:
        return inventory
    if not isinstance(entries, list):
        raise SourceError(path, line_of(data, "devices"), "devices: expected a list")
    seen: dict[str, int] = {}
    claimed: dict[str, tuple[str, int]] = {}
    for index, entry in enumerate(entries):
        line = entries.line_of(index) if isinstance(entries, YList) else 1
        if not isinstance(entry, dict):
            raise SourceError(path, line, "a device must be a mapping with at least 'name'")
        for key in entry:
            if key not in _DEVICE_KEYS:
                raise SourceError(path, line_of(entry, key),
                                  f"{key}: unknown key (known: {', '.join(sorted(_DEVICE_KEYS))})")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SourceError(path, line, "device: 'name' is required and must be a string")
        name = name.strip()
        if name in seen:
            raise SourceError(path, line_of(entry, "name"),
                              f"device {name!r} already defined on line {seen[name]}")
        seen[name] = line_of(entry, "name")
        for key in ("owner", "department"):
            if key in entry and not isinstance(entry[key], str):
                raise SourceError(path, line_of(entry, key), f"{key}: expected a string")
        device = Device(name, str(entry.get("owner", "")), str(entry.get("department", "")),
                        tuple(t for t, _ in _strings(entry, "tags", path)))

        def claim(kind: str, value: str, at: int, device: Device = device) -> None:
            other = claimed.get(f"{kind}:{value}")
            if other and other[0] != device.name:
                raise SourceError(path, at,
                                  f"{kind} {value} already belongs to {other[0]!r} (line {other[1]})")
            claimed[f"{kind}:{value}"] = (device.name, at)

        for text, at in _strings(entry, "ips", path):
            try:
                ip = str(ipaddress.ip_address(text.strip()))
            except ValueError:
                raise SourceError(path, at, f"ips: {text!r} is not an IP address") from None
            claim("ip", ip, at)
            inventory.by_ip[ip] = device
        for text, at in _strings(entry, "macs", path):
            mac = normalise_mac(text)
            if not mac:
                raise SourceError(path, at, f"macs: {text!r} is not a MAC address")
            claim("mac", mac, at)
            inventory.by_mac[mac] = device
        for text, at in _strings(entry, "cidrs", path):
            try:
                network = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise SourceError(path, at, f"cidrs: {text!r} is not a network") from None
            claim("cidr", str(network), at)
            inventory.networks.append((network, device))
        inventory.devices.append(device)
    inventory.networks.sort(key=lambda item: -item[0].prefixlen)
    return inventory


def load_inventory(path: str | Path) -> Inventory:
    return parse_inventory(load_file(Path(path)), str(path))


# ---------------------------------------------------------------- leases and neighbours


def parse_dnsmasq_leases(text: str) -> list[Lease]:
    """dnsmasq's leases file: `expiry mac ip hostname client-id`; DHCPv6 lines carry an IAID
    instead of a MAC (after a `duid` line) and give no MAC."""
    leases = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) < 3 or parts[0] == "duid":
            continue
        try:
            expires = float(parts[0])
            ip = str(ipaddress.ip_address(parts[2]))
        except ValueError:
            continue
        hostname = parts[3] if len(parts) > 3 and parts[3] != "*" else ""
        leases.append(Lease(ip, normalise_mac(parts[1]) if ":" in parts[1] else "", hostname, expires))
    return leases


def parse_kea_leases(text: str) -> list[Lease]:
    """Kea's memfile CSV (v4 and v6): header row, append-only, later rows win. State 0 is
    an assigned lease; declined (1) and reclaimed (2) leases name nobody."""
    leases = []
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        try:
            ip = str(ipaddress.ip_address((row.get("address") or "").strip()))
        except ValueError:
            continue
        if (row.get("state") or "0").strip() not in ("0", ""):
            continue
        try:
            expires = float(row.get("expire") or 0)
        except ValueError:
            expires = 0.0
        hostname = (row.get("hostname") or "").strip().rstrip(".")
        leases.append(Lease(ip, normalise_mac(row.get("hwaddr") or ""), hostname, expires))
    return leases


_DHCPD_BLOCK = re.compile(r"^\s*lease\s+(\S+)\s*\{(.*?)^\s*\}", re.S | re.M)
_DHCPD_ENDS = re.compile(r"^\s*ends\s+\d\s+(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)\s*;", re.M)


def parse_dhcpd_leases(text: str) -> list[Lease]:
    """ISC dhcpd.leases: `lease IP { ... hardware ethernet MAC; client-hostname "x"; }`;
    later blocks win, free/abandoned/backup leases name nobody."""
    leases = []
    for match in _DHCPD_BLOCK.finditer(text):
        body = match.group(2)
        try:
            ip = str(ipaddress.ip_address(match.group(1)))
        except ValueError:
            continue
        state = re.search(r"^\s*binding state\s+(\w+)\s*;", body, re.M)
        if state and state.group(1) not in ("active", "bootp", "reserved"):
            leases.append(Lease(ip, "", "", -1.0))  # a released lease forgets the old holder
            continue
        hw = re.search(r"^\s*hardware ethernet\s+([0-9A-Fa-f:]+)\s*;", body, re.M)
        host = re.search(r'^\s*client-hostname\s+"([^"]*)"\s*;', body, re.M)
        ends = _DHCPD_ENDS.search(body)
        expires = 0.0
        if ends:
            try:
                expires = float(calendar.timegm(time.strptime(ends.group(1), "%Y/%m/%d %H:%M:%S")))
            except ValueError:
                expires = 0.0
        mac = normalise_mac(hw.group(1)) if hw else ""
        leases.append(Lease(ip, mac, host.group(1) if host else "", expires))
    return leases


def parse_proc_arp(text: str) -> dict[str, str]:
    """/proc/net/arp -> {ip: mac}; incomplete entries (flags 0x0, zero MAC) are skipped."""
    table = {}
    for raw in text.splitlines()[1:]:
        parts = raw.split()
        if len(parts) < 4 or parts[2] == "0x0":
            continue
        mac = normalise_mac(parts[3])
        if mac:
            table[parts[0]] = mac
    return table


def parse_ip_neigh(text: str) -> dict[str, str]:
    """`ip -6 neigh show` -> {ip: mac}; FAILED/INCOMPLETE entries carry no lladdr."""
    table = {}
    for raw in text.splitlines():
        parts = raw.split()
        if "lladdr" not in parts or not parts:
            continue
        index = parts.index("lladdr")
        if index + 1 >= len(parts) or "FAILED" in parts or "INCOMPLETE" in parts:
            continue
        try:
            ip = str(ipaddress.ip_address(parts[0].split("%", 1)[0]))
        except ValueError:
            continue
        mac = normalise_mac(parts[index + 1])
        if mac:
            table[ip] = mac
    return table


# ---------------------------------------------------------------- the identifier


class _Watched:
    """A file re-read when its mtime or size changes; keeps the last good content."""

    def __init__(self, path: str, parse: Callable[[str], Any]) -> None:
        self.path = path
        self.parse = parse
        self.stamp: tuple[float, int] | None = None
        self.value: Any = None

    def refresh(self) -> bool:
        try:
            st = Path(self.path).stat()
        except OSError:
            if self.stamp is not None:
                log.warning("device source %s is gone; keeping what it said last", self.path)
                self.stamp = None
            return False
        stamp = (st.st_mtime, st.st_size)
        if stamp == self.stamp:
            return False
        try:
            self.value = self.parse(self.path)
        except SourceError as exc:
            log.error("device source: %s; keeping the last good version", exc)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            log.error("device source %s: %s; keeping the last good version", self.path, exc)
        self.stamp = stamp
        return True


def _read(parse_text: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda path: parse_text(Path(path).read_text(encoding="utf-8", errors="replace"))


class DeviceIdentifier:
    """Names clients. `identify()` runs in the writer thread; `refresh()` re-reads the
    sources and runs in the background thread (`start()`) or on demand."""

    def __init__(self, inventory: str = "", dnsmasq_leases: Iterable[str] = (),
                 kea_leases: Iterable[str] = (), dhcpd_leases: Iterable[str] = (),
                 neighbours: bool = True, edns_mac: bool = True,
                 refresh_interval: float = 30.0, arp_path: str = "/proc/net/arp",
                 ip6_neigh: Callable[[], str] | None = None) -> None:
        self.edns_mac = edns_mac
        self.neighbours = neighbours
        self.refresh_interval = refresh_interval
        self.inventory = Inventory()
        self._inventory_file = _Watched(inventory, load_inventory) if inventory else None
        self._lease_files = (
            [_Watched(p, _read(parse_dnsmasq_leases)) for p in dnsmasq_leases]
            + [_Watched(p, _read(parse_kea_leases)) for p in kea_leases]
            + [_Watched(p, _read(parse_dhcpd_leases)) for p in dhcpd_leases]
        )
        self._arp = _Watched(arp_path, _read(parse_proc_arp)) if neighbours else None
        self._ip6_neigh = ip6_neigh if ip6_neigh is not None else (_run_ip6_neigh if neighbours else None)
        self.leases: dict[str, Lease] = {}
        self.neighbour_macs: dict[str, str] = {}
        self._cache: dict[tuple[str, str], Identity] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Any) -> DeviceIdentifier:
        d = config.devices
        return cls(
            inventory=str(config.resolve(d.inventory)) if d.inventory else "",
            dnsmasq_leases=[str(config.resolve(p)) for p in d.dnsmasq_leases],
            kea_leases=[str(config.resolve(p)) for p in d.kea_leases],
            dhcpd_leases=[str(config.resolve(p)) for p in d.dhcpd_leases],
            neighbours=d.neighbours, edns_mac=d.edns_mac, refresh_interval=d.refresh_interval,
        )

    # -- sources

    def refresh(self) -> None:
        """Re-read whatever changed; the tables are swapped whole so readers see one version."""
        inventory = self.inventory
        if self._inventory_file and self._inventory_file.refresh() and self._inventory_file.value is not None:
            inventory = self._inventory_file.value
        leases = dict(self.leases)
        if any([w.refresh() for w in self._lease_files]):
            leases = {}
            now = time.time()
            for watched in self._lease_files:
                for lease in watched.value or ():
                    if lease.expires < 0 or (lease.expires and lease.expires < now - 86_400):
                        leases.pop(lease.ip, None)  # released, or expired a day ago
                    else:
                        leases[lease.ip] = lease
        neighbours: dict[str, str] = {}
        if self._arp:
            self._arp.stamp = None  # /proc files have no useful mtime: always re-read
            self._arp.refresh()
            neighbours.update(self._arp.value or {})
        if self._ip6_neigh:
            try:
                neighbours.update(parse_ip_neigh(self._ip6_neigh()))
            except (OSError, subprocess.SubprocessError) as exc:
                log.debug("ip -6 neigh: %s", exc)
        with self._lock:
            self.inventory, self.leases, self.neighbour_macs = inventory, leases, neighbours
            self._cache = {}

    def start(self) -> None:
        self.refresh()
        if self._thread is None and self.refresh_interval > 0:
            self._thread = threading.Thread(target=self._run, name="netblock-devices", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self.refresh()
            except Exception:  # a bad source must not end identification
                log.exception("refreshing device sources")

    # -- identification

    def identify(self, client_ip: str, mac: str = "") -> Identity:
        key = (client_ip, mac)
        found = self._cache.get(key)
        if found is None:
            found = self._identify(client_ip, mac)
            if len(self._cache) > 100_000:
                self._cache = {}
            self._cache[key] = found
        return found

    def _identify(self, client_ip: str, mac: str) -> Identity:
        inventory, leases, neighbours = self.inventory, self.leases, self.neighbour_macs
        mac = normalise_mac(mac) if mac else ""
        if mac and self.edns_mac:
            device = inventory.by_mac.get(mac)
            if device:
                return Identity(device, mac, "edns-mac")
        device = inventory.by_ip.get(client_ip)
        if device:
            return Identity(device, mac, "inventory-ip")
        lease = leases.get(client_ip)
        if lease and lease.mac and lease.mac in inventory.by_mac:
            return Identity(inventory.by_mac[lease.mac], lease.mac, "lease-mac")
        neighbour_mac = neighbours.get(client_ip, "")
        if neighbour_mac and neighbour_mac in inventory.by_mac:
            return Identity(inventory.by_mac[neighbour_mac], neighbour_mac, "neighbour-mac")
        known_mac = mac or (lease.mac if lease else "") or neighbour_mac
        device = inventory.match_network(client_ip)
        if device:
            return Identity(device, known_mac, "inventory-cidr")
        if lease and lease.hostname:
            return Identity(Device(lease.hostname, in_inventory=False), known_mac, "lease-hostname")
        return Identity(Device(client_ip, in_inventory=False), known_mac, "ip")


def _run_ip6_neigh() -> str:
    binary = shutil.which("ip")
    if not binary:
        return ""
    done = subprocess.run([binary, "-6", "neigh", "show"], capture_output=True, text=True, timeout=5,
                          check=False)
    return done.stdout
