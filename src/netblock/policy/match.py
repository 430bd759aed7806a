"""The compiled policy: immutable lookup tables built from list files.

Names are looked up in wire form, lower-cased, by walking label offsets: the cost depends
on the number of labels in the query, not on the size of the lists. A reload builds a
new Policy and swaps one reference, so a query never sees half a list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from netblock.names import is_under, normalise, to_wire
from netblock.policy.importers import BELOW, EXACT, HASH_MASK, NODATA, SUBTREE, BulkEntry, NameSet
from netblock.policy.lists import Entry, ListFile
from netblock.policy.rule import PRECEDENCE, Rule, citing, ede_text_for
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
    # Imported names (importers.NameSet), with a rule per slot tag; probed after the dicts.
    bulk: tuple[tuple[NameSet, tuple[Rule | None, ...]], ...] = ()

    def match_wire(self, wire: bytes) -> Rule | None:
        """The deciding rule for a lower-cased, uncompressed wire name, or None."""
        if self.bulk:
            return self._match_with_bulk(wire)
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

    def _match_with_bulk(self, wire: bytes) -> Rule | None:
        # Same walk, but each level also asks the NameSets (keyed by wire suffixes too) that
        # hold names with that many labels. At one level the usual precedence (allow > block
        # > monitor) decides.
        starts = []
        offset = 0
        while length := wire[offset]:
            starts.append(offset)
            offset += length + 1
        depth = len(starts)
        table = self.full
        for offset in starts:
            part = wire[offset:] if offset else wire
            rule = table.get(part)
            if rule is None or rule.action != "allow":
                value = -1
                for names, rules in self.bulk:
                    if not names.depths >> depth & 1:
                        continue
                    if value < 0:
                        value = hash(part) & HASH_MASK
                    if not names.homes[value >> 3 & names.home_mask] >> (value & 7) & 1:
                        continue  # the common miss: no name's probe starts there
                    tag = names.find_hashed(part, value, offset == 0)
                    if tag >= 0:
                        template = rules[tag]
                        if template is not None and _better(template, rule):
                            rule = self._hit(part, template)
            if rule is not None:
                return rule
            table = self.suffix
            depth -= 1
        return None

    @staticmethod
    def _hit(wire: bytes, template: Rule) -> Rule:
        """The template citing the matched name (in EDE texts and events). Not cached: with
        the name in text form built directly it costs about a microsecond, and a cache of
        hits misses anyway when a flood of distinct names comes in."""
        return citing(template, NameSet.text(wire))

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
        return {lst.name: list_size(lst) for lst in self.lists}


def list_size(lst: ListFile) -> int:
    """Entries of a list, counting every imported name (ListFile.size counts an include once)."""
    bulk = [e for e in lst.domains if isinstance(e, BulkEntry)]
    return lst.size - len(bulk) + sum(len(e.names) for e in bulk if e.names is not None)


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
                        f"'{entry.name}' covers the guard '{guard}' ({guard_list.path}): "
                        "block names under it one by one",
                    ))
        for entry in lst.domains:
            if isinstance(entry, BulkEntry) and entry.names is not None:
                errors.extend(_bulk_guard_violations(lst, entry, entry.names, guards))
    return errors


def _bulk_guard_violations(lst: ListFile, entry: BulkEntry, names: NameSet,
                           guards: list[tuple[str, ListFile]]) -> list[SourceError]:
    from netblock.policy.importers import locate

    errors = []
    for guard, guard_list in guards:
        labels = guard.split(".")
        for start in range(len(labels)):
            parent = ".".join(labels[start:])
            # The guard itself blocked (exact or subtree), everything under it (*.guard),
            # or a parent's subtree.
            wire = to_wire(parent)
            hits = [names.find(wire, False)] + ([names.find(wire, True)] if start == 0 else [])
            if max(hits) < 0:
                continue
            location = str(entry.meta.get("location", entry.source))
            line = locate(location, parent) if "://" not in location else 0
            where = (location, line) if line else (lst.path, entry.line)
            errors.append(SourceError(
                where[0], where[1],
                f"'{parent}' (imported into {lst.name}) covers the guard '{guard}' ({guard_list.path})",
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

    bulk: list[tuple[NameSet, tuple[Rule | None, ...]]] = []
    for lst in lists:
        digest.update(f"list {lst.name} {lst.action} {lst.response} {lst.block_ttl} {lst.policy}\n".encode())
        for entry in lst.domains:
            if isinstance(entry, BulkEntry):
                if entry.names is not None:
                    bulk.append((entry.names, _bulk_rules(lst, entry)))
                    digest.update(b"B " + entry.names.digest.encode() + b"\n")
                continue
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
        bulk=tuple(bulk),
    )


def _bulk_rules(lst: ListFile, entry: BulkEntry) -> tuple[Rule | None, ...]:
    """A template rule per NameSet tag (kind, NODATA flag); the pattern is set per hit."""
    rules: list[Rule | None] = [None] * 8
    for kind, kind_name in ((EXACT, "exact"), (SUBTREE, "subtree"), (BELOW, "below")):
        for flag in (0, NODATA):
            rule = _rule(lst, entry, kind_name, lst.action)
            if flag:
                rule = dataclasses.replace(rule, response=dataclasses.replace(rule.response, mode="nodata"))
            rules[kind | flag] = dataclasses.replace(rule, origin=f"{lst.path}:{entry.line} ({entry.source})")
    return tuple(rules)
