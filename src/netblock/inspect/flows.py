"""Bounded per-flow state with timeouts: TCP stream reassembly and decided flows.

Tables are dicts in creation order, so the oldest entry is the first one: eviction when
full and expiry sweeps are O(1) per removed entry, with no heap and no thread.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

MAX_STREAM = 16 * 1024  # bytes kept per TCP flow; a ClientHello is well under this


class Table(Generic[V]):
    """key -> (expiry, value), oldest first; at most `size` entries."""

    __slots__ = ("evicted", "expired", "items", "size", "timeout")

    def __init__(self, size: int, timeout: float) -> None:
        self.size = max(1, size)
        self.timeout = timeout
        self.items: dict[Hashable, tuple[float, V]] = {}
        self.evicted = 0
        self.expired = 0

    def get(self, key: Hashable, now: float) -> V | None:
        found = self.items.get(key)
        if found is None:
            return None
        if found[0] < now:
            del self.items[key]
            self.expired += 1
            return None
        return found[1]

    def put(self, key: Hashable, value: V, now: float, timeout: float | None = None) -> None:
        items = self.items
        if key in items:
            del items[key]  # re-insert at the young end
        elif len(items) >= self.size:
            del items[next(iter(items))]
            self.evicted += 1
        items[key] = (now + (self.timeout if timeout is None else timeout), value)

    def pop(self, key: Hashable) -> V | None:
        found = self.items.pop(key, None)
        return None if found is None else found[1]

    def sweep(self, now: float, limit: int = 1000) -> None:
        """Drop expired entries from the old end (entries share one timeout, mostly)."""
        items = self.items
        for _ in range(limit):
            if not items:
                return
            key = next(iter(items))
            if items[key][0] >= now:
                return
            del items[key]
            self.expired += 1

    def __len__(self) -> int:
        return len(self.items)


class Stream:
    """A client's byte stream from its first payload segment, by relative sequence number:
    reordered and duplicate segments are fine; a gap stops the contiguous prefix."""

    __slots__ = ("ack", "base", "end_seq", "segments", "size")

    def __init__(self, seq: int) -> None:
        self.base = seq
        self.end_seq = seq  # highest sequence number seen + 1 (for resets)
        self.ack = 0
        self.segments: dict[int, bytes] = {}
        self.size = 0

    def add(self, seq: int, ack: int, data: bytes) -> bool:
        """Add a segment; False when the stream is over its byte budget."""
        rel = (seq - self.base) & 0xFFFFFFFF
        if rel > MAX_STREAM:
            return True  # far beyond the hello, or a retransmission from before the start
        old = self.segments.get(rel)
        if old is None or len(old) < len(data):
            self.segments[rel] = data
            self.size += len(data)
        end = (seq + len(data)) & 0xFFFFFFFF
        if ((end - self.end_seq) & 0xFFFFFFFF) < 0x80000000:
            self.end_seq = end
            self.ack = ack
        return self.size <= MAX_STREAM

    def contiguous(self) -> bytes:
        segments = self.segments
        if len(segments) == 1 and 0 in segments:
            return segments[0]
        out = bytearray()
        for rel in sorted(segments):
            if rel > len(out):
                break
            data = segments[rel]
            if rel + len(data) > len(out):
                out += data[len(out) - rel :]
        return bytes(out)
