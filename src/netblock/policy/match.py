"""The compiled policy: immutable lookup tables built from list files.

Names are looked up in wire form, lower-cased, by walking label offsets: the cost depends
on the number of labels in the query, not on the size of the lists. A reload builds a
new Policy and swaps one reference, so a query never sees half a list.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from netblock.names import is_under, normalise, to_wire
from netblock.policy.lists import Entry, ListFile
from netblock.policy.rule import PRECEDENCE, Rule, ede_text_for
from netblock.yamlsrc import SourceError


@dataclass(frozen=True)
class Guard:
    name: str
    reason: str
    origin: str


def _better(new: Rule, old: Rule | None) -> bool:
    return old is None or PRECEDENCE[new.action] < PRECEDENCE[old.action]


@dataclass
class Policy:
    """Lookup tables; treat as immutable once built."""

    full: dict[bytes, Rule] = field(default_factory=dict)  # entries that match the whole name
    suffix: dict[bytes, Rule] = field(default_factory=dict)  # subtree entries and carve-outs
    nets4: tuple[tuple[int, dict[int, Rule]], ...] = ()  # (prefix length, network -> rule), longest first
    nets6: tuple[tuple[int, dict[int, Rule]], ...] = ()
    lists: tuple[ListFile, ...] = ()
    guards: tuple[Guard, ...] = ()
    digest: str = ""

    def match_wire(self, wire: bytes) -> Rule | None:
        """The deciding rule for a lower-cased, uncompressed wire name, or None."""
        rule = self.full.get(wire)
        if rule is not None:
            return rule
        suffix = self.suffix
        if not suffix:
            return None
        offset = 0
        while True:
            length = wire[offset]
            if length == 0:
                return None
            offset += length + 1
            rule = suffix.get(wire[offset:])
            if rule is not None:
                return rule

    def match_name(self, name: str) -> Rule | None:
        return self.match_wire(to_wire(normalise(name)))

    def match_ip(self, packed: bytes) -> Rule | None:
        """The rule of the most specific network holding this packed IPv4/IPv6 address."""
        tables = self.nets4 if len(packed) == 4 else self.nets6
        if not tables:
            return None
        value = int.from_bytes(packed, "big")
        bits = len(packed) * 8
        for prefix, table in tables:
            rule = table.get(value >> (bits - prefix))
            if rule is not None:
                return rule
        return None

    @property
    def has_networks(self) -> bool:
        return bool(self.nets4 or self.nets6)

    def entry_counts(self) -> dict[str, int]:
        return {lst.name: lst.size for lst in self.lists}


def _rule(lst: ListFile, entry: Entry, kind: str, action: str) -> Rule:
    return Rule(
        list_name=lst.name,
        vendor=lst.vendor,
        pattern=entry.name,
        kind=kind,
        action=action,
        response=lst.response,
        policy=lst.policy,
        block_ttl=lst.block_ttl,
        origin=f"{lst.path}:{entry.line}",
        role=entry.role,
        ede_text=ede_text_for(lst.name, entry.name, lst.policy),
    )


def guard_violations(lists: Iterable[ListFile]) -> list[SourceError]:
    """Block entries that cover a guard: the guard itself or a parent of it."""
    lists = list(lists)
    guards = [(g.name, lst) for lst in lists for g in lst.guards]
    if not guards:
        return []
    errors = []
    for lst in lists:
        if lst.action != "block":
            continue
        for entry in (*lst.domains, *lst.exact):
            for guard, guard_list in guards:
                if is_under(guard, entry.name):
                    errors.append(SourceError(
                        lst.path, entry.line,
                        f"'{entry.name}' covers the guard '{guard}' ({guard_list.path}): block names under it one by one",
                    ))
    return errors


def compile_policy(lists: Iterable[ListFile]) -> Policy:
    """Build lookup tables; the most specific entry wins, then allow > block > monitor."""
    lists = tuple(lists)
    full: dict[bytes, Rule] = {}
    suffix: dict[bytes, Rule] = {}
    nets: dict[int, dict[int, dict[int, Rule]]] = {4: {}, 6: {}}
    guards = []
    digest = hashlib.sha256()

    def put(table: dict[bytes, Rule], wire: bytes, rule: Rule) -> None:
        if _better(rule, table.get(wire)):
            table[wire] = rule

    for lst in lists:
        digest.update(f"list {lst.name} {lst.action} {lst.response} {lst.block_ttl} {lst.policy}\n".encode())
        for entry in lst.domains:
            wire = to_wire(entry.name)
            rule = _rule(lst, entry, "subtree", lst.action)
            put(full, wire, rule)
            put(suffix, wire, rule)
            digest.update(b"d " + wire + b"\n")
        for entry in lst.exact:
            put(full, to_wire(entry.name), _rule(lst, entry, "exact", lst.action))
            digest.update(b"e " + entry.name.encode() + b"\n")
        for entry in lst.allow:
            wire = to_wire(entry.name)
            rule = _rule(lst, entry, "subtree", "allow")
            put(full, wire, rule)
            put(suffix, wire, rule)
            digest.update(b"a " + wire + b"\n")
        for entry in lst.allow_exact:
            put(full, to_wire(entry.name), _rule(lst, entry, "exact", "allow"))
            digest.update(b"A " + entry.name.encode() + b"\n")
        for entry in lst.networks:
            network = ipaddress.ip_network(entry.name, strict=False)
            table = nets[network.version].setdefault(network.prefixlen, {})
            key = int(network.network_address) >> (network.max_prefixlen - network.prefixlen)
            rule = _rule(lst, entry, "network", lst.action)
            if _better(rule, table.get(key)):
                table[key] = rule
            digest.update(b"n " + entry.name.encode() + b"\n")
        for entry in lst.guards:
            guards.append(Guard(entry.name, str(entry.meta.get("reason", "")), f"{lst.path}:{entry.line}"))
            digest.update(b"g " + entry.name.encode() + b"\n")

    def ordered(by_prefix: dict[int, dict[int, Rule]]) -> tuple[tuple[int, dict[int, Rule]], ...]:
        return tuple(sorted(by_prefix.items(), key=lambda item: -item[0]))

    return Policy(
        full=full,
        suffix=suffix,
        nets4=ordered(nets[4]),
        nets6=ordered(nets[6]),
        lists=lists,
        guards=tuple(guards),
        digest=digest.hexdigest()[:16],
    )
