"""Blocklist files: our YAML format, read into plain records with their file:line.

A list file says what it blocks, why, and on whose authority (DESIGN.md). Loading never
stops at the first mistake: it collects every error as a SourceError, so `netblock lint`
can show them all, and the server refuses to use a file that has any.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netblock.names import NameError_, normalise
from netblock.policy.rule import ACTIONS, RESPONSE_MODES, Citation, Response
from netblock.yamlsrc import SourceError, YList, YMap, line_of, load_file

FILE_KEYS = {
    "name", "vendor", "description", "policy", "action", "response", "sinkhole", "block_ttl",
    "domains", "exact", "networks", "allow", "guard", "include",
}
# Provenance an entry may carry; kept for `check`, events and audits.
ENTRY_META_KEYS = {
    "role", "confidence", "sources", "note", "notes", "covered_by", "reason", "status", "scope",
    "ticket", "added", "match",
}
POLICY_KEYS = {"id", "title", "url"}


@dataclass(frozen=True)
class Entry:
    name: str  # normalised domain, or a CIDR for networks
    line: int
    role: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ListFile:
    name: str
    path: str
    vendor: str = ""
    description: str = ""
    policy: Citation = field(default_factory=Citation)
    action: str = "block"
    response: Response = field(default_factory=Response)
    block_ttl: int = 300
    domains: tuple[Entry, ...] = ()  # subtree: the name and everything under it
    exact: tuple[Entry, ...] = ()
    networks: tuple[Entry, ...] = ()
    allow: tuple[Entry, ...] = ()  # carve-outs (subtree unless match: exact)
    allow_exact: tuple[Entry, ...] = ()
    guards: tuple[Entry, ...] = ()

    @property
    def size(self) -> int:
        return len(self.domains) + len(self.exact) + len(self.networks)


class _Collector:
    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[SourceError] = []

    def error(self, line: int, message: str) -> None:
        self.errors.append(SourceError(self.path, line, message))


def _entries(raw: Any, key: str, container: YMap, out: _Collector, *, network: bool = False) -> list[Entry]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        out.error(container.line_of(key), f"{key}: expected a list")
        return []
    entries: list[Entry] = []
    for index, item in enumerate(raw):
        line = raw.line_of(index) if isinstance(raw, YList) else container.line_of(key)
        meta: dict[str, Any] = {}
        if isinstance(item, dict):
            name_key = "cidr" if network and "cidr" in item else "name" if "name" in item else (
                "domain" if "domain" in item else None)
            if name_key is None:
                out.error(line, f"{key}: entry needs a '{'cidr' if network else 'name'}'")
                continue
            unknown = set(item) - ENTRY_META_KEYS - {name_key}
            if unknown:
                out.error(line, f"{key}: unknown entry key(s) {', '.join(sorted(unknown))}")
                continue
            text = item[name_key]
            meta = {k: v for k, v in item.items() if k != name_key}
        else:
            text = item
        if not isinstance(text, str):
            out.error(line, f"{key}: expected a name, not {text!r}")
            continue
        if network:
            try:
                name = str(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError as exc:
                out.error(line, f"{key}: bad network {text!r}: {exc}")
                continue
        else:
            try:
                name = normalise(text)
            except NameError_ as exc:
                out.error(line, f"{key}: {exc}")
                continue
        entries.append(Entry(name=name, line=line, role=str(meta.get("role", "")), meta=meta))
    return entries


def _response(data: YMap, out: _Collector) -> Response:
    mode = data.get("response", "nxdomain")
    if "response" in data and mode is None:  # YAML reads a bare `null` as None
        mode = "null"
    sinkhole = data.get("sinkhole", [])
    if isinstance(mode, str) and mode.startswith("sinkhole"):
        parts = mode.split()
        mode, sinkhole = "sinkhole", parts[1:] or sinkhole
    if mode not in RESPONSE_MODES:
        out.error(data.line_of("response"), f"response: must be one of {', '.join(RESPONSE_MODES)}, not {mode!r}")
        return Response()
    if isinstance(sinkhole, str):
        sinkhole = [sinkhole]
    if not isinstance(sinkhole, list):
        out.error(data.line_of("sinkhole"), f"sinkhole: expected a list of addresses, not {sinkhole!r}")
        sinkhole = []
    v4: list[bytes] = []
    v6: list[bytes] = []
    for text in sinkhole or []:
        try:
            address = ipaddress.ip_address(str(text))
        except ValueError:
            out.error(data.line_of("sinkhole"), f"sinkhole: bad address {text!r}")
            continue
        (v4 if address.version == 4 else v6).append(address.packed)
    if mode == "sinkhole" and not (v4 or v6):
        out.error(data.line_of("response"), "response: sinkhole needs at least one address (sinkhole: [IP, ...])")
    return Response(mode=mode, sinkhole_v4=tuple(v4), sinkhole_v6=tuple(v6))


def _policy(data: YMap, out: _Collector) -> Citation:
    raw = data.get("policy")
    if raw is None:
        return Citation()
    if isinstance(raw, str):
        return Citation(id=raw)
    if not isinstance(raw, dict):
        out.error(data.line_of("policy"), "policy: expected a mapping with id, title, url")
        return Citation()
    unknown = set(raw) - POLICY_KEYS
    if unknown:
        out.error(line_of(raw, sorted(unknown)[0]), f"policy: unknown key(s) {', '.join(sorted(unknown))}")
    return Citation(id=str(raw.get("id", "")), title=str(raw.get("title", "")), url=str(raw.get("url", "")))


def parse_list(data: Any, path: str) -> tuple[ListFile | None, list[SourceError]]:
    """Validate one list file's YAML; returns the list and every error found."""
    out = _Collector(path)
    if data is None:
        out.error(1, "empty list file")
        return None, out.errors
    if not isinstance(data, YMap):
        out.error(getattr(data, "line", 1), "a list file must be a mapping (name, policy, domains, ...)")
        return None, out.errors
    for key in data:
        if key not in FILE_KEYS:
            out.error(data.line_of(key), f"unknown key '{key}' (known: {', '.join(sorted(FILE_KEYS))})")
    action = data.get("action", "block")
    if action not in ("block", "monitor"):
        out.error(data.line_of("action"), f"action: must be block or monitor, not {action!r}")
    block_ttl = data.get("block_ttl", 300)
    if isinstance(block_ttl, bool) or not isinstance(block_ttl, int) or not 0 <= block_ttl <= 604_800:
        out.error(data.line_of("block_ttl"), "block_ttl: expected seconds between 0 and 604800")
        block_ttl = 300
    name = data.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        out.error(data.line_of("name"), "name: expected a non-empty string")
        name = Path(path).stem
    allow_all = _entries(data.get("allow"), "allow", data, out)
    includes = data.get("include")
    imported = _load_includes(includes, data, path, out) if includes else None
    domains = _entries(data.get("domains"), "domains", data, out)
    exact = _entries(data.get("exact"), "exact", data, out)
    networks = _entries(data.get("networks"), "networks", data, out, network=True)
    if imported is not None:
        domains += imported.domains
        exact += imported.exact
        networks += imported.networks
        allow_all += imported.allow
    listfile = ListFile(
        name=name,
        path=path,
        vendor=str(data.get("vendor", "")),
        description=str(data.get("description", "")),
        policy=_policy(data, out),
        action=action if action in ACTIONS else "block",
        response=_response(data, out),
        block_ttl=block_ttl,
        domains=tuple(domains),
        exact=tuple(exact),
        networks=tuple(networks),
        allow=tuple(e for e in allow_all if e.meta.get("match") != "exact"),
        allow_exact=tuple(e for e in allow_all if e.meta.get("match") == "exact"),
        guards=tuple(_entries(data.get("guard"), "guard", data, out)),
    )
    return (None if out.errors else listfile), out.errors


def _load_includes(raw: Any, data: YMap, path: str, out: _Collector) -> Any:
    from netblock.policy import importers  # imports pull in the URL client only when used

    if not isinstance(raw, list):
        out.error(data.line_of("include"), "include: expected a list")
        return None
    result, errors = importers.load_includes(raw, Path(path).parent, path)
    out.errors.extend(errors)
    return result


def load_list(path: str | Path) -> tuple[ListFile | None, list[SourceError]]:
    try:
        data = load_file(path)
    except SourceError as exc:
        return None, [exc]
    return parse_list(data, str(path))
