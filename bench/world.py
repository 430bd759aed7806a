"""The benchmark world: synthetic zones for NSD, one blocklist rendered for every server,
and the dnsperf query files of each mix.

Everything is generated from a fixed seed, so two runs (and two machines) measure the
same names. Names live under made-up TLDs (`.nbtest`, `.nbblk`) plus the vendor zones;
nothing here is meant to resolve anywhere but the loopback NSD the bench starts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
VENDOR_LISTS = ("wechat.yaml", "kaspersky.yaml")
GUARD_LIST = "allow.yaml"
TTL = 86_400
SEED = 20231030

# Syllables for names that look like names (length spread like real hosts).
_SYL = (
    "ad",
    "trk",
    "px",
    "cdn",
    "log",
    "api",
    "stat",
    "mob",
    "img",
    "net",
    "sync",
    "tag",
    "met",
    "ric",
    "beacon",
    "push",
    "data",
    "clk",
    "rtb",
    "ssp",
    "dsp",
    "geo",
    "ana",
    "lytic",
    "srv",
)
_BLOCK_TLDS = ("nbblk", "nbads", "nbtrk")


@dataclass
class VendorNames:
    block: list[str] = field(default_factory=list)  # subtree entries
    exact: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)


@dataclass
class World:
    root: Path
    zones: dict[str, str]  # origin -> zone file text
    blocked: list[str]  # synthetic subtree entries (100k)
    vendor: VendorNames
    resolvable: list[tuple[str, str]]  # (name, qtype) pairs NSD answers with data
    blocked_queries: list[tuple[str, str]]  # mix (a)
    name_count: int  # owner names with data in the synthetic zones

    # Paths of the generated files.
    @property
    def netblock_lists(self) -> list[Path]:
        lists = self.root / "lists"
        return [lists / f for f in VENDOR_LISTS] + [lists / "synthetic.yaml", lists / "guards.yaml"]

    @property
    def dnsmasq_conf(self) -> Path:
        return self.root / "dnsmasq-block.conf"

    @property
    def unbound_conf(self) -> Path:
        return self.root / "unbound-block.conf"

    def mix(self, name: str) -> Path:
        return self.root / f"mix-{name}.txt"


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts))


def _vendor_names() -> VendorNames:
    out = VendorNames()
    for filename in VENDOR_LISTS:
        data = yaml.safe_load((REPO / "blocklists" / filename).read_text())

        def names(key: str, data: Any = data) -> list[str]:
            items = data.get(key) or []
            return [(i["name"] if isinstance(i, dict) else i).lower().rstrip(".") for i in items]

        out.block += names("domains")
        out.exact += names("exact")
        out.allow += names("allow")
    return out


def _synthetic_zones(
    rng: random.Random, names: int, zone_count: int
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """`names` owners spread over `zone_count` zones: 60% A, 25% A+AAAA, 15% CNAME chains 1-3 deep."""
    zones: dict[str, list[str]] = {}
    pairs: list[tuple[str, str]] = []
    origins = [f"z{i:03d}.nbtest" for i in range(zone_count)]
    for origin in origins:
        zones[origin] = []
    targets: dict[str, list[str]] = {o: [] for o in origins}
    kinds = ["a"] * 60 + ["aaaa"] * 25 + ["cname"] * 15
    plan = [kinds[i % 100] for i in range(names)]
    rng.shuffle(plan)
    for index, kind in enumerate(plan):
        origin = origins[index % zone_count]
        host = f"{_word(rng, rng.randint(1, 3))}{index}"
        fqdn = f"{host}.{origin}"
        a = f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"
        records = zones[origin]
        if kind in ("a", "aaaa"):
            records.append(f"{host} IN A {a}")
            pairs.append((fqdn, "A"))
            targets[origin].append(host)
            if kind == "aaaa":
                records.append(f"{host} IN AAAA fd00::{index:x}")
                pairs.append((fqdn, "AAAA"))
        else:
            depth = rng.randint(1, 3)
            chain = [host] + [f"{host}-c{k}" for k in range(1, depth)]
            final = f"{host}-end"
            for here, there in zip(chain, [*chain[1:], final], strict=True):
                records.append(f"{here} IN CNAME {there}")
            records.append(f"{final} IN A {a}")
            pairs.append((fqdn, "A"))
    texts = {origin: _zone_text(origin, lines) for origin, lines in zones.items()}
    return texts, pairs


def _zone_text(origin: str, lines: list[str]) -> str:
    head = [
        f"$ORIGIN {origin}.",
        f"$TTL {TTL}",
        f"@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 900 604800 {TTL}",
        f"@ IN NS ns.{origin}.",
        "ns IN A 127.0.0.1",
    ]
    return "\n".join(head + lines) + "\n"


def _vendor_zones(vendor: VendorNames) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Vendor-like zones: every vendor name (blocked or allowed) exists upstream, so a peer
    that failed to block it would answer NOERROR and the check would notice."""
    by_zone: dict[str, list[str]] = {}
    pairs: list[tuple[str, str]] = []
    everything = sorted(set(vendor.block + vendor.exact + vendor.allow))
    for n, name in enumerate(everything):
        labels = name.split(".")
        origin = ".".join(labels[-2:])
        rel = ".".join(labels[:-2]) or "@"
        lines = by_zone.setdefault(origin, [])
        lines.append(f"{rel} IN A 198.18.{n // 250}.{n % 250 + 1}")
        if rel == "@":
            lines.append(f"www IN A 198.18.{n // 250}.{n % 250 + 1}")
    for name in vendor.allow:
        pairs.append((name, "A"))
    return {o: _zone_text(o, lines) for o, lines in by_zone.items()}, pairs


def _blocked_names(rng: random.Random, count: int) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        name = f"{_word(rng, rng.randint(1, 3))}{len(out)}.{rng.choice(_BLOCK_TLDS)}"
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def _blocked_queries(rng: random.Random, blocked: list[str], vendor: VendorNames) -> list[tuple[str, str]]:
    """One query per blocked entry: 30% bare, 30% www., 40% 1-2 extra labels; 70% A, 30% AAAA."""
    out = []
    for name in blocked + vendor.block:
        roll = rng.random()
        if roll < 0.3:
            qname = name
        elif roll < 0.6:
            qname = "www." + name
        else:
            qname = ".".join(_word(rng, rng.randint(1, 2)) for _ in range(rng.randint(1, 2))) + "." + name
        out.append((qname, "A" if rng.random() < 0.7 else "AAAA"))
    rng.shuffle(out)
    return out


def _coprime_with_10(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # dnsperf deals lines to its 10 client sockets in turn: a length coprime with 10 makes
    # every name travel every socket during the warm-up.
    while len(items) % 2 == 0 or len(items) % 5 == 0:
        items = items[:-1]
    return items


def build(root: Path, names: int = 10_000, blocked: int = 100_000, zone_count: int = 100) -> World:
    rng = random.Random(SEED)
    root.mkdir(parents=True, exist_ok=True)
    vendor = _vendor_names()
    zones, pairs = _synthetic_zones(rng, names, zone_count)
    vzones, vpairs = _vendor_zones(vendor)
    zones.update(vzones)
    resolvable = pairs + vpairs
    rng.shuffle(resolvable)
    resolvable = _coprime_with_10(resolvable)
    block_names = _blocked_names(rng, blocked)
    world = World(
        root=root,
        zones=zones,
        blocked=block_names,
        vendor=vendor,
        resolvable=resolvable,
        blocked_queries=_blocked_queries(rng, block_names, vendor),
        name_count=names,
    )
    _write_lists(world)
    _write_mixes(world, rng)
    return world


# ---- blocklists for each server -------------------------------------------------------


def write_netblock_list(path: Path, name: str, domains: list[str]) -> None:
    """A netblock list whose names are imported from a plain-domain file beside it (subtree
    entries): the way operators load big third-party lists (README, Imports)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = path.with_name(path.name + ".txt")
    with names.open("w") as out:
        out.write("".join(f"{domain}\n" for domain in domains))
    path.write_text(
        f"name: {name}\nvendor: bench\npolicy: {{id: BENCH-1, title: synthetic bench list}}\n"
        f"action: block\nresponse: nxdomain\ninclude:\n  - {{path: {names.name}, format: plain}}\n"
    )


def _write_lists(world: World) -> None:
    lists = world.root / "lists"
    lists.mkdir(exist_ok=True)
    # The vendor lists are copied unchanged (allow carve-outs and exact names included).
    for f in VENDOR_LISTS:
        (lists / f).write_text((REPO / "blocklists" / f).read_text())
    (lists / "guards.yaml").write_text((REPO / "blocklists" / GUARD_LIST).read_text())
    write_netblock_list(lists / "synthetic.yaml", "bench-synthetic", world.blocked)

    v = world.vendor
    subtree = world.blocked + v.block
    with world.dnsmasq_conf.open("w") as out:
        for d in subtree + v.exact:
            out.write(f"address=/{d}/\n")  # no address: NXDOMAIN for the name and below
    with world.unbound_conf.open("w") as out:
        out.write("server:\n")
        for d in subtree + v.exact:
            out.write(f'  local-zone: "{d}." always_nxdomain\n')
        for d in v.allow:
            out.write(f'  local-zone: "{d}." transparent\n')  # carve-out wins (more specific)


def dnsmasq_allow_lines(world: World, upstream: str) -> list[str]:
    host, port = upstream.rsplit(":", 1)
    # A more specific server= wins over address= in dnsmasq: the carve-outs resolve.
    return [f"server=/{d}/{host}#{port}" for d in world.vendor.allow]


# ---- query files -----------------------------------------------------------------------


def _write_file(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"{n} {t}\n" for n, t in pairs))


def _write_mixes(world: World, rng: random.Random) -> None:
    _write_file(world.mix("a"), world.blocked_queries)
    _write_file(world.mix("b"), world.resolvable)
    # (c): 90% cached + 10% blocked, 50,001 lines, shuffled.
    total = 50_001
    blocked_n = total // 10
    cached = [world.resolvable[i % len(world.resolvable)] for i in range(total - blocked_n)]
    mixed = cached + world.blocked_queries[:blocked_n]
    rng.shuffle(mixed)
    _write_file(world.mix("c"), mixed)
    # soak: 60% cached + 40% blocked.
    soak_blocked = 20_000
    soak = [world.resolvable[i % len(world.resolvable)] for i in range(30_001)] + world.blocked_queries[
        :soak_blocked
    ]
    rng.shuffle(soak)
    _write_file(world.mix("soak"), soak)


def scale_names(count: int, seed: int = 7) -> list[str]:
    """Block entries for the scale test (1k / 100k / 1M), distinct from the world's."""
    rng = random.Random(seed + count)
    return [f"{_word(rng, rng.randint(1, 3))}{i}.s{count}.nbscale" for i in range(count)]
