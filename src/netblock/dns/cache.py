"""Answer cache of raw wire messages, with TTLs that decay on the way out.

An entry keeps the upstream answer as bytes (without its OPT record) and the offsets of
its TTL fields. Serving a hit patches the client's ID, RD bit and question case, and the
TTLs, rendered at most once per second of age: no DNS library on this path.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

from netblock.policy.rule import Rule
from netblock.stats import Stats

CacheKey = tuple[bytes, int, int, bool]  # lower-cased wire name, qtype, qclass, DO bit

_TTL = struct.Struct("!I")


class Entry:
    __slots__ = ("body", "expires", "records_at", "rendered", "rendered_age", "rule", "stage", "stale_until",
                 "stored", "ttl_offsets", "ttls")

    def __init__(self, body: bytes, ttl_offsets: list[int], ttls: list[int], stored: float, lifetime: int,
                 stale_window: int) -> None:
        self.body = body  # the answer from its flags on (no ID), OPT removed
        self.records_at = len(body)  # where the records start in body (after the question); see _store
        self.ttl_offsets = ttl_offsets  # offsets into body
        self.ttls = ttls
        # Whole seconds, as unbound counts them: an entry ages and expires at the turn of a
        # second (up to one second early, never late), so an answer rendered in a second is
        # exact for all of it and a remembered one is checked once a second (server.Packet).
        self.stored = int(stored)
        self.expires = self.stored + lifetime
        self.stale_until = self.expires + stale_window
        self.rendered = body
        self.rendered_age = 0
        self.rule: Rule | None = None  # set when answer inspection blocked this name
        self.stage = ""

    def render(self, now: float, stale_ttl: int = 0) -> bytes:
        """The body with every TTL reduced by the entry's age (or set to stale_ttl)."""
        age = max(int(now) - self.stored, 0)  # never above the TTLs as received
        if stale_ttl:
            return self._patch([stale_ttl] * len(self.ttls))
        if age != self.rendered_age:
            # Every remembered answer of this entry is re-rendered from this once a second.
            self.rendered = self._patch([ttl - age if ttl > age else 0 for ttl in self.ttls])
            self.rendered_age = age
        return self.rendered

    def _patch(self, ttls: list[int]) -> bytes:
        out = bytearray(self.body)
        pack_into = _TTL.pack_into
        for offset, ttl in zip(self.ttl_offsets, ttls, strict=True):
            pack_into(out, offset, ttl)
        return bytes(out)


class AnswerCache:
    """Bounded LRU of entries; expired entries stay for serve-stale until their window ends."""

    def __init__(self, size: int, stats: Stats) -> None:
        self.size = size
        self.stats = stats
        self.entries: OrderedDict[CacheKey, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: CacheKey, now: float) -> Entry | None:
        """A fresh entry, or None (a miss)."""
        entry = self.entries.get(key)
        if entry is None or entry.expires <= now:
            self.stats.cache_misses += 1
            return None
        self.entries.move_to_end(key)
        self.stats.cache_hits += 1
        return entry

    def get_stale(self, key: CacheKey, now: float) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None or entry.stale_until <= now:
            return None
        return entry

    def put(self, key: CacheKey, entry: Entry) -> None:
        if self.size <= 0:
            return
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
            self.stats.cache_evictions += 1

    def clear(self) -> OrderedDict[CacheKey, Entry]:
        """Start empty; the entries held until now are returned, for the caller to free
        where a long free does not stop answering."""
        held, self.entries = self.entries, OrderedDict()
        return held
