"""Imports of third-party list formats (hosts, plain, adblock, RPZ) into list entries.

A list file may `include:` local files or URLs:

    include:
      - imports/ads.hosts                      # format from the extension or the content
      - {path: imports/feed.txt, format: plain, match: exact}
      - {url: https://lists.example/rpz.zone, format: rpz, refresh: 6h}

Imported names are kept in a NameSet, not as one Entry each: a million names as Python
objects would cost several hundred MB. A NameSet is the wire names in one bytes object
plus an open-addressed hash table (about 56 bytes a name), probed at each level of the
label walk like the hand-written tables.
It reaches the compiled policy as one BulkEntry in the list's `domains`. Allow carve-outs
(`@@||name^`, rpz-passthru) and networks (rpz-ip) stay ordinary entries: they are few.

A bad line is a warning with file:line and the rest loads; a missing or unreadable source
is an error, so the list (and a reload) fails instead of silently dropping names.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import ipaddress
import re
import sys
import threading
from array import array
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, TypeVar
from zlib import crc32

from netblock.names import NameError_, normalise, wire_labels
from netblock.policy.lists import Entry
from netblock.yamlsrc import SourceError, line_of

FORMATS = ("hosts", "plain", "adblock", "rpz")
# What a bare name means per format: hosts files map one host; plain domain lists (v2fly,
# AdGuard "domains") mean the zone. `match:` on the include overrides it.
DEFAULT_MATCH = {"hosts": "exact", "plain": "subtree", "adblock": "exact", "rpz": "exact"}
INCLUDE_KEYS = {"path", "url", "format", "match", "refresh", "role", "note"}
MAX_WARNINGS = 50  # per source; then one summary line

# Tags of a NameSet slot: the kind in the low bits, NODATA (RPZ `CNAME *.`) as a flag.
EXACT, SUBTREE, BELOW = 0, 1, 2
KIND_NAMES = {EXACT: "exact", SUBTREE: "subtree", BELOW: "below"}
NODATA = 4

MAX_NAMES = 1 << 24  # in one NameSet (and at most 2^25 slots: the odds in NameSet's docstring)
_SLICE = 1 << 14  # items per C call while building: each holds the GIL only a few ms
Key = TypeVar("Key", bound=Hashable)
_PART = 1 << 18  # names per dedupe dict (plus one slice at most): its last resize copies this many
HASH_MASK = (1 << 64) - 1  # Python's hash as an unsigned 64-bit value
_KEY_BITS = 0xFFFFFFFF << 32 | 0xFF << 8  # of a NameSet slot's second word: CRC-32 and length


def usable(names: list[str]) -> list[str]:
    """The names a query can carry: labels of 1..63 characters, 253 in all (checked in C
    unless a long name is present)."""
    if names and max(map(len, names)) > 63:
        return [n for n in names if len(n) <= 253 and max(map(len, n.split("."))) <= 63]
    return names


_LEN = [bytes((i,)) for i in range(64)]
_WIRE_NAME = re.compile(rb"[^\x00]*\x00")


def wires_of(names: list[str]) -> list[bytes]:
    """Wire forms of many usable names, a batch at a time without a Python loop per name.

    "a.bc\nd.ef" -> "a.bc..d.ef.." -> labels [a, bc, "", d, ef, "", ""]: the empty label
    after each name becomes its root byte. Length bytes are 1..63 and names hold no NUL,
    so the only zero bytes are the terminators, where the blob is cut back into names.
    """
    wires: list[bytes] = []
    for start in range(0, len(names), _SLICE):
        batch = names[start : start + _SLICE]
        labels = "\n".join(batch).encode("ascii").replace(b"\n", b"..").split(b".")
        labels.append(b"")
        parts: list[bytes] = [b""] * (2 * len(labels))
        parts[::2] = map(_LEN.__getitem__, map(len, labels))
        parts[1::2] = labels
        wires.extend(_WIRE_NAME.findall(b"".join(parts))[: len(batch)])
    return wires


def _unique(pieces: Iterable[Iterable[Key]]) -> list[Key]:
    """The keys of all pieces without repeats, in order. Seen keys are kept in several dicts
    of at most about _PART keys: growing one dict to a million would resize it in a single
    C call that holds the GIL for ~50 ms (answers wait behind a reload)."""
    parts: list[dict[Key, None]] = [{}]
    unique: list[Key] = []
    for piece in pieces:
        fresh = dict.fromkeys(piece)
        for part in parts:
            for repeat_ in fresh.keys() & part.keys():  # nearly always empty
                del fresh[repeat_]
        if len(parts[-1]) >= _PART:
            parts.append({})
        parts[-1].update(fresh)
        unique.extend(fresh)
    return unique


def release(items: list[Any]) -> None:
    """Empty a big list a slice at a time. Freeing a million objects is one C call that holds
    the GIL for tens of ms: answers would wait behind a reload."""
    while items:
        del items[-_SLICE:]


# Fresh memory is filled a chunk per C call, too. Writing a page for the first time faults
# it in, and on a VM whose host has taken freed pages back a fault can cost ~10 µs: one
# `array * n` for a 32 MB table held the GIL for 99 ms in a bench reload (13-23 ms when the
# pages came cheap), and every answer waited behind it.
_FRESH = 1 << 19  # octets: 128 pages


def zeroed_words(count: int) -> array[int]:
    """`count` 64-bit zeros, written a chunk at a time. Growing by realloc moves mapped
    pages without touching them once glibc keeps big blocks mapped (reload.steady_allocator;
    the server sets it), and copies them otherwise."""
    words = array("Q")
    step = _FRESH // 8
    zeros = array("Q", bytes(8 * min(count, step)))
    for start in range(0, count, step):
        words.extend(zeros if count - start >= step else zeros[: count - start])
    return words


def joined(pieces: Iterable[bytes]) -> bytes:
    """b"".join(pieces), filled a piece at a time: a BytesIO grows by realloc, and
    getvalue() hands over its buffer without a copy."""
    out = io.BytesIO()
    for piece in pieces:
        out.write(piece)
    return out.getvalue()


class NameSet:
    """Many names in flat arrays: about 56 bytes a name instead of ~300 as Python objects.

    The wire names sit in one bytes object, in source order (for diffs and digests). The
    lookup reads only `table`: open-addressed, at most half full, two 64-bit words a slot
    in one cache line: the name's 64-bit hash, and its CRC-32, length and tag (an empty
    slot has 0 there). A name's slot starts at the low bits of its hash; with linear
    probing at half load a miss reads 2.5 slots on average, mostly in that cache line, and
    half of the misses stop at the first. A hit reads one slot and never the name's bytes,
    which is what keeps a million-name lookup near the cost of a thousand-name one.

    Most queries are misses, so before the table a lookup reads `homes`, a bit per slot
    set where some name's probe starts (its home slot). About 60% of misses have a home no
    name has and stop there, in 256 KB for a million names (it stays in L2) instead of the
    32 MB table, which is mostly a cache and TLB miss away.

    So a hit is a match of the hash, the CRC-32 and the length, not of the bytes. A name
    that is not held passes only if it agrees with a held name it meets in the hash bits
    beyond the slot position (at least 64 - 25), in its CRC-32 (32, independent of SipHash
    for names nobody chose for it) and in its length (a few bits: lengths cluster): about
    2^-75 a comparison, one false block in 10^8 years at 10^5 queries a second. Against
    names crafted to collide, CRC-32 is no defence (it is linear), but Python's SipHash is
    keyed at random per process: nobody outside can aim at its 64 bits, and a NameSet never
    leaves its process.
    """

    __slots__ = ("blob", "count", "depths", "digest", "home_mask", "homes", "mask", "table", "tag", "tags")

    def __init__(self, names: list[str], tags: list[int] | None = None, tag: int = EXACT) -> None:
        # Built in a reload thread while the event loop answers queries: no single C call
        # may hold the GIL for long, so the big steps go a slice at a time.
        slice_starts = range(0, len(names), _SLICE)
        if tags is not None:
            pairs = _unique(zip(names[start : start + _SLICE], tags[start : start + _SLICE], strict=True)
                            for start in slice_starts)
            names = [name for name, _ in pairs]
            self.tags: array[int] | None = array("B", [t for _, t in pairs])
            release(pairs)
        else:
            names = _unique(names[start : start + _SLICE] for start in slice_starts)
            self.tags = None
        if len(names) > MAX_NAMES:
            raise ValueError(f"more than {MAX_NAMES} names in one source")
        self.tag = tag  # of every name when `tags` is None (one kind of entry in the source)
        self.count = len(names)
        # Bit n set: some name has n labels. A lookup skips the levels of a query name that
        # no name here can match, without hashing or touching the big arrays.
        dots: set[int] = set()
        for start in range(0, len(names), _SLICE):
            dots.update(map(str.count, names[start : start + _SLICE], repeat(".")))
        self.depths = sum(1 << (count + 1) for count in dots)
        wires = wires_of(names)
        del names
        self.blob = joined(b"".join(wires[start : start + _SLICE]) for start in range(0, len(wires), _SLICE))
        self.digest = hashlib.sha256(self.blob).hexdigest()[:16]
        size = 1 << max(4, (2 * self.count - 1).bit_length())  # at most half full
        # Slot i is table[2i:2i+2]; the mask keeps a doubled hash on an even index. The
        # probe loop is written out here and in the lookups, not shared: a call per slot
        # read would cost more than the read.
        self.mask = mask = 2 * size - 2
        self.table = table = zeroed_words(2 * size)
        self.home_mask = (size >> 3) - 1  # of homes' octets: value >> 3 & home_mask
        self.homes = homes = bytearray(size >> 3)
        every_tag = self.tags if self.tags is not None else repeat(tag, self.count)
        for value, check, length, name_tag in zip(map(hash, wires), map(crc32, wires), map(len, wires), every_tag,
                                                  strict=True):
            value &= HASH_MASK
            position = value << 1 & mask
            homes[position >> 4] |= 1 << (value & 7)  # slot position >> 1, octet slot >> 3
            while table[position + 1]:
                position = (position + 2) & mask
            table[position] = value
            table[position + 1] = check << 32 | length << 8 | name_tag
        release(wires)

    def __len__(self) -> int:
        return self.count

    def find(self, wire: bytes, whole: bool) -> int:
        """The tag of a wire name applicable at this level (whole name or a parent), or -1."""
        return self.find_hashed(wire, hash(wire) & HASH_MASK, whole)

    def find_hashed(self, wire: bytes, value: int, whole: bool) -> int:
        table, mask = self.table, self.mask
        position = value << 1 & mask
        key = -1
        while about := table[position + 1]:
            if table[position] == value:
                if key < 0:
                    key = crc32(wire) << 32 | len(wire) << 8
                if about & _KEY_BITS == key:
                    kind = about & 3
                    if (kind != BELOW) if whole else (kind != EXACT):
                        return about & 0xFF
            position = (position + 2) & mask
        return -1

    @staticmethod
    def text(wire: bytes) -> str:
        """A wire name of a NameSet as its imported text (no trailing dot): built by joining
        text labels, since no label of a held name holds a dot or needs escaping
        (names.from_wire checks every label). The lookup matches by hash, not bytes: should a
        query's name ever pass for a held one, odd bytes come out escaped, never raise."""
        return b".".join(wire_labels(wire)).decode("ascii", "backslashreplace")

    def items(self) -> Iterator[tuple[bytes, int]]:
        """(wire name, tag) in source order: the blob's names end at their root byte, the
        only zero byte of a wire name built from text."""
        tags = self.tags if self.tags is not None else repeat(self.tag, self.count)
        for found, tag in zip(_WIRE_NAME.finditer(self.blob), tags, strict=True):
            yield found.group(), tag

    def has(self, wire: bytes, tag: int) -> bool:
        """This (wire name, tag) pair is in the set (for diffs), by the same match as a
        lookup: hash, CRC-32 and length (see the class's odds)."""
        table, mask = self.table, self.mask
        value = hash(wire) & HASH_MASK
        about = crc32(wire) << 32 | len(wire) << 8 | tag
        position = value << 1 & mask
        while table[position + 1]:
            if table[position] == value and table[position + 1] == about:
                return True
            position = (position + 2) & mask
        return False


@dataclass(frozen=True)
class BulkEntry(Entry):
    """One include's names, carried in ListFile.domains to the compiler (see match.py)."""

    names: NameSet | None = field(default=None, compare=False, hash=False)
    source: str = ""  # the file or URL as written
    format: str = ""


def is_bulk(entry: Entry) -> bool:
    return isinstance(entry, BulkEntry)


@dataclass
class Imported:
    domains: list[Entry] = field(default_factory=list)
    exact: list[Entry] = field(default_factory=list)
    networks: list[Entry] = field(default_factory=list)
    allow: list[Entry] = field(default_factory=list)
    warnings: list[SourceError] = field(default_factory=list)  # bad lines: reported, rest loaded


@dataclass
class Parsed:
    """One source text, parsed: names by tag, carve-outs and networks with their lines."""

    names: dict[int, list[str]] = field(default_factory=dict)
    allow: list[tuple[str, bool, int]] = field(default_factory=list)  # (name, exact, line)
    networks: list[tuple[str, int]] = field(default_factory=list)
    warnings: list[SourceError] = field(default_factory=list)
    dropped_warnings: int = 0

    def add(self, tag: int, name: str) -> None:
        self.names.setdefault(tag, []).append(name)

    def warn(self, path: str, line: int, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(SourceError(path, line, message))
        else:
            self.dropped_warnings += 1

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.names.values())


# --- per-format line parsers (the careful path: any line the fast path did not take) ---

_HOSTS_IPS = {"0.0.0.0", "127.0.0.1", "::", "::1", "0:0:0:0:0:0:0:0", "255.255.255.255"}
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
                "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
                "ip6-allhosts", "0.0.0.0"}


def _name(text: str) -> str:
    name = normalise(text)
    if name.replace(".", "").isdigit():
        raise NameError_(f"{text!r} is an address, not a name")
    return name


def _hosts_line(line: str, out: Parsed, path: str, number: int, match: int) -> None:
    fields = line.split("#", 1)[0].split()
    try:
        ipaddress.ip_address(fields[0])
    except ValueError:
        raise NameError_(f"expected 'ADDRESS NAME ...', not {line.strip()[:60]!r}") from None
    if len(fields) < 2:
        raise NameError_(f"address {fields[0]} without a name")
    if fields[0] not in _HOSTS_IPS:
        out.warn(path, number, f"{fields[0]}: a hosts entry that points somewhere, imported as blocked")
    for text in fields[1:]:
        if text in _LOCAL_NAMES:
            continue
        out.add(match, _name(text))


def _plain_line(line: str, out: Parsed, path: str, number: int, match: int) -> None:
    fields = line.split("#", 1)[0].split()
    if len(fields) != 1:
        raise NameError_(f"expected one name, not {line.strip()[:60]!r}")
    text = fields[0]
    if text.startswith("*."):
        out.add(BELOW, _name(text[2:]))
    else:
        out.add(match, _name(text))


_ADBLOCK_OPTIONS_OK = {"", "important"}


def _adblock_line(line: str, out: Parsed, path: str, number: int, match: int) -> None:
    text = line.strip()
    allow = text.startswith("@@")
    if allow:
        text = text[2:]
    body, _, options = text.partition("$")
    if options.lower() not in _ADBLOCK_OPTIONS_OK:
        raise NameError_(f"modifier ${options} cannot be enforced by DNS; line skipped")
    if body.startswith("||") and body.endswith("^"):
        name, kind = body[2:-1], SUBTREE
        if name.startswith("*."):
            name, kind = name[2:], BELOW
    elif body.startswith("|") or "##" in body or "#@#" in body or "/" in body:
        raise NameError_(f"not a DNS rule: {text[:60]!r}")
    else:
        fields = body.split()
        if len(fields) == 2:  # hosts syntax is valid in DNS filter lists
            _hosts_line(body, out, path, number, EXACT)
            return
        name, kind = body, match
    if "*" in name or "^" in name:
        raise NameError_(f"wildcard in the middle of {name!r}: not supported")
    name = _name(name)
    if allow:
        out.allow.append((name, kind == EXACT, number))
    else:
        out.add(kind, name)


def _split_rpz(line: str) -> list[str]:
    return line.split(";", 1)[0].split()


_RR_TYPES = {"A", "AAAA", "CNAME", "TXT", "MX", "NS", "SOA", "PTR", "SRV", "DNAME", "HTTPS", "SVCB", "CAA"}


def _rpz_ip(owner: str) -> str:
    """'32.1.2.0.192.rpz-ip' -> '192.0.2.1/32'; '128.1.zz.db8.2001.rpz-ip' -> '2001:db8::1/128'."""
    labels = owner.split(".")[:-1]
    prefix = int(labels[0])
    parts = labels[1:][::-1]
    if len(parts) == 4 and "zz" not in parts:
        address = ".".join(parts)
    else:
        address = ":".join("" if p == "zz" else p for p in parts)
        if address.startswith(":") or address.endswith(":"):
            address = address.replace("::", ":").strip(":")
            address = f"{address}::" if parts[-1] == "zz" else f"::{address}"
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=True))


class _RpzState:
    def __init__(self) -> None:
        self.origin = ""
        self.owner = ""
        self.paren = False


def _rpz_line(line: str, out: Parsed, path: str, number: int, state: _RpzState) -> None:
    if state.paren:  # inside a multi-line record (SOA): skip to the closing parenthesis
        if ")" in line.split(";", 1)[0]:
            state.paren = False
        return
    fields = _split_rpz(line)
    if not fields:
        return
    if fields[0].upper() == "$ORIGIN":
        state.origin = fields[1].lower().rstrip(".") if len(fields) > 1 else ""
        return
    if fields[0].upper() == "$INCLUDE":
        raise NameError_("$INCLUDE is not followed: a feed must be one file")
    if fields[0].startswith("$"):
        return  # $TTL
    if line[:1] in (" ", "\t"):
        owner = state.owner
    else:
        owner = fields.pop(0)
        state.owner = owner
    # Skip TTL and class, then the type.
    while fields and (fields[0].isdigit() or fields[0].upper() in ("IN", "CH", "HS")):
        fields.pop(0)
    if not fields:
        raise NameError_("record without a type")
    rtype = fields[0].upper()
    rdata = fields[1:]
    if "(" in line.split(";", 1)[0] and ")" not in line.split(";", 1)[0]:
        state.paren = True
    if rtype in ("SOA", "NS"):
        return
    owner = owner.lower()
    if owner == "@":
        raise NameError_(f"{rtype} at the zone apex is not a policy trigger")
    if owner.endswith("."):
        if state.origin and owner.rstrip(".").endswith("." + state.origin):
            owner = owner.rstrip(".")[: -len(state.origin) - 1]
        else:
            raise NameError_(f"absolute name {owner!r} outside the zone {state.origin or '(no $ORIGIN)'}")
    if rtype != "CNAME":
        if rtype in _RR_TYPES:
            raise NameError_(f"local-data {rtype} rule not supported (only CNAME actions); line skipped")
        raise NameError_(f"unknown record type {fields[0]!r}")
    if len(rdata) != 1:
        raise NameError_("CNAME needs one target")
    target = rdata[0].lower()
    last = owner.rsplit(".", 1)[-1]
    if last in ("rpz-nsdname", "rpz-nsip", "rpz-client-ip"):
        raise NameError_(f"{last} trigger not supported; line skipped")
    if last == "rpz-ip":
        if target not in (".", "*.", "rpz-drop."):
            raise NameError_(f"rpz-ip with action {target!r} not supported")
        try:
            out.networks.append((_rpz_ip(owner), number))
        except ValueError as exc:
            raise NameError_(f"bad rpz-ip trigger {owner!r}: {exc}") from None
        return
    below = owner.startswith("*.")
    name = _name(owner[2:] if below else owner)
    if target == "rpz-passthru.":
        out.allow.append((name, not below, number))
        return
    if target in (".", "rpz-drop."):
        flag = 0
    elif target == "*.":
        flag = NODATA
    else:
        raise NameError_(f"CNAME {target!r}: only '.', '*.', rpz-drop. and rpz-passthru. are supported")
    out.add((BELOW if below else EXACT) | flag, name)


# --- the fast path: one regex over a chunk takes every well-formed line at C speed ---

# Labels as normalise() takes them (no '-' at either end); label lengths are checked after
# (usable()). A chunk with any other line goes the careful way, which reports it.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_LOOSE = r"(" + _LABEL + r"(?:\." + _LABEL + r")*)\.?"
# Each pattern matches every line of a well-formed chunk: a name (group 1) or an ignorable
# line (blank, comment), whose group is empty.
_FAST = {
    "hosts": re.compile(r"^[ \t]*(?:(?:0\.0\.0\.0|127\.0\.0\.1|::1?)[ \t]+" + _LOOSE
                        + r"[ \t]*)?(?:#[^\n]*)?$", re.M),
    "plain": re.compile(r"^[ \t]*(?:" + _LOOSE + r"[ \t]*)?(?:#[^\n]*)?$", re.M),
    "adblock": re.compile(r"^[ \t]*(?:\|\|" + _LOOSE + r"\^(?:\$important)?[ \t]*"
                          + r"|(?:!|#(?!#)|\[)[^\n]*)?$", re.M),
}
_IGNORE = re.compile(r"^[ \t]*(?:(?:[!#;]|\[)[^\n]*)?$")
_FAST_KIND = {"adblock": SUBTREE}
_CHUNK = 1 << 17  # a regex pass over one chunk holds the GIL: keep it short


def _spans(text: str | bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of pieces of about _CHUNK that end at line ends."""
    newline: Any = "\n" if isinstance(text, str) else b"\n"
    start = 0
    while start < len(text):
        end = text.find(newline, min(start + _CHUNK, len(text)))
        end = len(text) if end < 0 else end + 1
        yield start, end
        start = end


def decoded_pieces(data: bytes) -> list[str]:
    """UTF-8 text as pieces that end at line ends, decoded one at a time: a single str of a
    30 MB file is 30 MB of fresh memory filled in one C call (see _FRESH). A newline is
    never part of a multi-byte character, so each piece decodes on its own."""
    view, pieces = memoryview(data), []
    for start, end in _spans(data):
        try:
            pieces.append(str(view[start:end], "utf-8"))
        except UnicodeDecodeError as exc:  # where in the file, not in the piece
            raise UnicodeDecodeError(exc.encoding, data, start + exc.start, start + exc.end, exc.reason) from None
    return pieces


def text_pieces(text: str) -> Iterator[str]:
    """A text as pieces that end at line ends (see _CHUNK)."""
    return (text[start:end] for start, end in _spans(text))


def parse_text(text: str, fmt: str, path: str, match: str | None = None) -> Parsed:
    """Parse a whole source; see parse_pieces()."""
    return parse_pieces(text_pieces(text), fmt, path, match)


def parse_pieces(pieces: Iterable[str], fmt: str, path: str, match: str | None = None) -> Parsed:
    """Parse a source given as pieces that end at line ends, a piece at a time (see
    _CHUNK): well-formed pieces take the regex path, others go line by line."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    out = Parsed()
    kind = SUBTREE if (match or DEFAULT_MATCH[fmt]) == "subtree" else EXACT
    fast = _FAST.get(fmt)
    fast_kind = _FAST_KIND.get(fmt, kind)
    line_parser = {"hosts": _hosts_line, "plain": _plain_line, "adblock": _adblock_line}.get(fmt)
    state = _RpzState()
    first = 1
    for index, piece in enumerate(pieces):
        if index == 0 and piece.startswith("\ufeff"):
            piece = piece[1:]
        if "\r" in piece:  # a piece ends after a newline: a CR LF pair is never split
            piece = piece.replace("\r\n", "\n").replace("\r", "\n")
        chunk = piece.lower()
        lines = chunk.count("\n")
        found = fast.findall(chunk) if fast is not None else None
        if found is None:  # rpz: records can span lines (SOA), the state carries over
            for offset, line in enumerate(chunk.split("\n")):
                _careful(_rpz_line, line, out, path, first + offset, state)
        elif len(found) == lines + 1:  # one match per line, and the one after a final newline
            out.names.setdefault(fast_kind, []).extend(usable(list(filter(None, found))))
        else:
            for offset, line in enumerate(chunk.split("\n")):
                if not _IGNORE.match(line):
                    _careful(line_parser, line, out, path, first + offset, kind)
        first += lines
    return out


def _careful(parser: Any, line: str, out: Parsed, path: str, number: int, arg: Any) -> None:
    try:
        parser(line, out, path, number, arg)
    except NameError_ as exc:
        out.warn(path, number, str(exc))
    except (ValueError, IndexError) as exc:
        out.warn(path, number, f"cannot parse {line.strip()[:60]!r}: {exc}")


def sniff_format(path: str, text: str) -> str:
    suffix = Path(path.split("?", 1)[0]).suffix.lower()
    by_suffix = {".hosts": "hosts", ".rpz": "rpz", ".zone": "rpz", ".db": "rpz"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if Path(path).name.lower() == "hosts":
        return "hosts"
    for line in text[:65536].splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#!;[":
            continue
        if stripped.startswith(("||", "@@")):
            return "adblock"
        padded = f" {stripped.lower()} "
        if stripped.startswith("$") or " cname " in padded or " soa " in padded:
            return "rpz"
        first = stripped.split()[0]
        try:
            ipaddress.ip_address(first)
            return "hosts"
        except ValueError:
            return "plain"
    return "plain"


# --- include: in a list file ---

@dataclass
class Include:
    source: str  # the path or URL as written
    location: str  # resolved path, or the URL
    is_url: bool
    format: str | None
    match: str | None
    refresh: float | None
    line: int


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"expected a duration like 300, 30m, 6h or 1d, not {value!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def parse_includes(raw: list[Any], base_dir: Path, path: str) -> tuple[list[Include], list[SourceError]]:
    includes: list[Include] = []
    errors: list[SourceError] = []
    for index, item in enumerate(raw):
        line = line_of(raw, index)
        if isinstance(item, str):
            item = {"url": item} if "://" in item else {"path": item}
        if not isinstance(item, dict):
            errors.append(SourceError(path, line, "include: expected a path, a URL or {path|url, format}"))
            continue
        unknown = set(item) - INCLUDE_KEYS
        if unknown:
            errors.append(SourceError(path, line, f"include: unknown key(s) {', '.join(sorted(unknown))}"))
            continue
        if ("path" in item) == ("url" in item):
            errors.append(SourceError(path, line, "include: needs exactly one of path or url"))
            continue
        fmt = item.get("format")
        if fmt is not None and fmt not in FORMATS:
            known = ", ".join(FORMATS)
            errors.append(SourceError(path, line, f"include: format must be one of {known}, not {fmt!r}"))
            continue
        match = item.get("match")
        if match is not None and match not in ("exact", "subtree"):
            errors.append(SourceError(path, line, f"include: match must be exact or subtree, not {match!r}"))
            continue
        refresh = None
        if "refresh" in item:
            try:
                refresh = parse_duration(item["refresh"])
            except ValueError as exc:
                errors.append(SourceError(path, line, f"include: refresh: {exc}"))
                continue
        if "url" in item:
            url = str(item["url"])
            if not url.startswith(("http://", "https://", "file://")):
                errors.append(SourceError(path, line, f"include: url must be http(s):// or file://: {url!r}"))
                continue
            includes.append(Include(url, url, True, fmt, match, refresh, line))
        else:
            location = Path(str(item["path"]))
            if not location.is_absolute():
                location = (base_dir / location).resolve()
            includes.append(Include(str(item["path"]), str(location), False, fmt, match, refresh, line))
    return includes, errors


# The warnings of the last load of each list file (lists.py drops Imported.warnings):
# lint prints them, reloads log them.
_warnings: dict[str, list[SourceError]] = {}
_warnings_lock = threading.Lock()


def warnings_for(path: str) -> list[SourceError]:
    with _warnings_lock:
        return list(_warnings.get(str(path), ()))


def read_include(include: Include) -> list[str]:
    """The text of an include, as pieces that end at line ends (parse_pieces)."""
    if include.is_url:
        from netblock.policy import sources

        return list(text_pieces(sources.text_for(include.location, include.refresh)))
    try:
        return decoded_pieces(Path(include.location).read_bytes())
    except FileNotFoundError:
        raise OSError("file not found") from None
    except UnicodeDecodeError as exc:
        raise OSError(f"not UTF-8 text: {exc}") from None


def load_includes(raw: list[Any], base_dir: Path, path: str) -> tuple[Imported, list[SourceError]]:
    includes, errors = parse_includes(raw, base_dir, path)
    result = Imported()
    for include in includes:
        try:
            pieces = read_include(include)
        except OSError as exc:
            errors.append(SourceError(path, include.line, f"include {include.source}: {exc}"))
            continue
        fmt = include.format or sniff_format(include.location, pieces[0] if pieces else "")
        shown = include.location if not include.is_url else include.source
        parsed = parse_pieces(pieces, fmt, shown, include.match)
        del pieces
        result.warnings.extend(parsed.warnings)
        if parsed.dropped_warnings:
            result.warnings.append(SourceError(shown, 0, f"... and {parsed.dropped_warnings} more bad lines"))
        _add_parsed(result, parsed, include, fmt, shown)
    with _warnings_lock:
        _warnings[str(path)] = result.warnings
    return result, errors


def _add_parsed(result: Imported, parsed: Parsed, include: Include, fmt: str, shown: str) -> None:
    everything: list[str] = []
    tags: list[int] | None = None
    if len(parsed.names) == 1:  # the list itself: copying a million names in one C call holds the GIL
        everything = next(iter(parsed.names.values()))
    else:
        tags = []
        for tag, names in parsed.names.items():
            for start in range(0, len(names), _SLICE):
                piece = names[start : start + _SLICE]
                everything.extend(piece)
                tags.extend(repeat(tag, len(piece)))
            release(names)
    meta = {"source": include.source, "format": fmt, "location": include.location}
    if everything:
        nameset = NameSet(everything, tags, next(iter(parsed.names)))
        release(everything)
        result.domains.append(BulkEntry(name=f"include:{include.source}", line=include.line, role="imported",
                                        meta=meta, names=nameset, source=include.source, format=fmt))
    for name, exact, line in parsed.allow:
        entry_meta = {**meta, "origin": f"{shown}:{line}"}
        if exact:
            entry_meta["match"] = "exact"
        result.allow.append(Entry(name=name, line=include.line, role="imported", meta=entry_meta))
    for cidr, line in parsed.networks:
        result.networks.append(Entry(name=cidr, line=include.line, role="imported",
                                     meta={**meta, "origin": f"{shown}:{line}"}))


def bulk_names(entry: Entry) -> Iterable[tuple[str, str]]:
    """(kind, name) of every name of a BulkEntry (for diffs and exports)."""
    if isinstance(entry, BulkEntry) and entry.names is not None:
        for wire, tag in entry.names.items():
            yield KIND_NAMES[tag & 3] + ("+nodata" if tag & NODATA else ""), NameSet.text(wire)


def locate(source: str, name: str) -> int:
    """The line of `name` in a local source file (0 if not found): for error messages."""
    try:
        with open(source, encoding="utf-8", errors="replace") as handle:
            pattern = re.compile(r"(^|[\s|.*])" + re.escape(name) + r"($|[\s^.$#;])", re.I)
            for number, line in enumerate(handle, 1):
                if pattern.search(line):
                    return number
    except OSError:
        pass
    return 0


# --- `netblock import FILE --format F`: a third-party list as our YAML ---

def to_yaml(parsed: Parsed, name: str, source: str, fmt: str) -> str:
    import yaml

    subtree = sorted(set(parsed.names.get(SUBTREE, []) + parsed.names.get(SUBTREE | NODATA, [])))
    exact = sorted(set(parsed.names.get(EXACT, []) + parsed.names.get(EXACT | NODATA, [])))
    below = sorted(set(parsed.names.get(BELOW, []) + parsed.names.get(BELOW | NODATA, [])))
    doc: dict[str, Any] = {"name": name, "description": f"imported from {source} ({fmt})", "action": "block",
                           "response": "nxdomain"}
    if subtree or below:
        doc["domains"] = subtree + [n for n in below if n not in subtree]
    if exact:
        doc["exact"] = exact
    if parsed.networks:
        doc["networks"] = [cidr for cidr, _ in parsed.networks]
    if parsed.allow:
        doc["allow"] = [n if not exact_ else {"name": n, "match": "exact"} for n, exact_, _ in parsed.allow]
    header = f"# Imported by `netblock import` from {source} (format {fmt}).\n"
    if below:
        header += ("# Wildcard-only entries (*.name) are written as subtrees: our YAML has no\n"
                   "# below-only entry, so the name itself is blocked too.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120)


def cmd_import(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_text(encoding="utf-8") if args.file != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{args.file}: cannot read: {exc}", file=sys.stderr)
        return 1
    fmt = args.format or sniff_format(args.file, text)
    parsed = parse_text(text, fmt, args.file, args.match)
    for warning in parsed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if parsed.dropped_warnings:
        print(f"warning: ... and {parsed.dropped_warnings} more bad lines", file=sys.stderr)
    nodata = sum(len(v) for t, v in parsed.names.items() if t & NODATA)
    if nodata:
        print(f"warning: {nodata} NODATA (CNAME *.) entries written as blocked with the list's response",
              file=sys.stderr)
    name = args.name or re.sub(r"[^a-z0-9-]+", "-", Path(args.file).stem.lower()).strip("-") or "imported"
    output = to_yaml(parsed, name, args.file, fmt)
    if args.output:
        Path(args.output).write_text(output, encoding="utf-8")
    else:
        sys.stdout.write(output)
    total = parsed.count + len(parsed.allow) + len(parsed.networks)
    print(f"imported {total} entries ({len(parsed.warnings) + parsed.dropped_warnings} bad lines skipped)",
          file=sys.stderr)
    return 0 if total else 1


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("import", help="hosts, plain, adblock or RPZ list -> netblock YAML")
    parser.add_argument("file", help="the list file ('-' for standard input)")
    parser.add_argument("--format", "-f", choices=FORMATS, help="input format (default: guessed)")
    parser.add_argument("--match", choices=("exact", "subtree"), help="what a bare name means")
    parser.add_argument("--name", help="the list name (default: from the file name)")
    parser.add_argument("--output", "-o", help="write here instead of standard output")
    parser.set_defaults(func=cmd_import)
