"""Counters kept as plain ints and dicts on the query path.

A prometheus-client `.labels().inc()` costs more than answering a cached query
(reference/performance.md), so the query path only does `+= 1` here; metrics.py turns
these into Prometheus metrics at scrape time. Label values are bounded: protocol, rcode
name, answer source, list name, stage, action, reason, upstream address: never a client
IP or a query name.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

# Seconds; the buckets of the request and upstream duration histograms.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

K = TypeVar("K")

RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}


class Histogram:
    """Bucket counts and a sum; `observe` is a bisect and two additions."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.sum += seconds


class ReplayKind(NamedTuple):
    """What a replayed answer counts as: its source and rcode, whether it came from the
    cache, and the list, stage and action of the attempt it records ('' when none)."""

    source: str
    rcode: str
    cached: bool
    list_name: str = ""
    stage: str = ""
    action: str = ""


@dataclass
class UpstreamStats:
    address: str
    requests: int = 0
    errors: int = 0  # timeouts, refused connections, bad answers
    timeouts: int = 0
    healthy: bool = True
    latency: Histogram = field(default_factory=Histogram)


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    queries: dict[str, int] = field(default_factory=lambda: {"udp": 0, "tcp": 0})  # protocol -> count
    responses: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, rcode name) -> count
    blocked: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (list, stage, action) -> count
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count (acl, ratelimit, ...)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count (malformed, qr, ...)
    request_duration: Histogram = field(default_factory=Histogram)
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    cache_stale_served: int = 0
    upstreams: dict[str, UpstreamStats] = field(default_factory=dict)
    upstream_mismatches: int = 0  # answers whose ID, source or question did not match
    inflight_rejected: int = 0  # SERVFAIL because the in-flight cap was reached
    tcp_connections_rejected: int = 0
    reload_successes: int = 0
    reload_failures: int = 0
    inspector_detections: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, list) -> count
    device_blocked: dict[str, int] = field(default_factory=dict)  # inventory device name -> count
    # Answers replayed from memory, one int per kind of answer: the busiest line of the
    # query path is a list item += 1, folded at scrape time into the UDP queries, the
    # responses, the cache hits, the blocked attempts and the lowest duration bucket (a
    # replay takes microseconds).
    replayed: list[int] = field(default_factory=list)
    replay_kinds: list[ReplayKind] = field(default_factory=list)
    _replay_slots: dict[ReplayKind, int] = field(default_factory=dict, repr=False)

    def replay_slot(self, kind: ReplayKind) -> int:
        """The index in `replayed` that counts replays of this kind of answer."""
        slot = self._replay_slots.get(kind)
        if slot is None:
            slot = self._replay_slots[kind] = len(self.replayed)
            self.replay_kinds.append(kind)
            self.replayed.append(0)
        return slot

    def _replays(self) -> list[tuple[ReplayKind, int]]:
        # Scrapes run in another thread: a slot being added may have its kind and not yet
        # its count, so the shorter list decides.
        return list(zip(self.replay_kinds, self.replayed, strict=False))

    def all_queries(self) -> dict[str, int]:
        """Queries by transport, replays (UDP) included."""
        return {**self.queries, "udp": self.queries.get("udp", 0) + sum(self.replayed)}

    def _with_replays(self, counts: dict[K, int], key: Callable[[ReplayKind], K | None]) -> dict[K, int]:
        """counts plus the replays, each under key(kind) (None: not counted there)."""
        merged = dict(counts)
        for kind, count in self._replays():
            label = key(kind)
            if label is not None:
                merged[label] = merged.get(label, 0) + count
        return merged

    def all_responses(self) -> dict[tuple[str, str], int]:
        """Responses by (source, rcode name), replays included."""
        return self._with_replays(self.responses, lambda kind: (kind.source, kind.rcode))

    def all_cache_hits(self) -> int:
        return self.cache_hits + sum(count for kind, count in self._replays() if kind.cached)

    def all_blocked(self) -> dict[tuple[str, str, str], int]:
        """Blocked (or monitored) attempts by (list, stage, action), replays included."""
        return self._with_replays(
            self.blocked, lambda kind: (kind.list_name, kind.stage, kind.action) if kind.list_name else None)

    def drop(self, reason: str, count: int = 1) -> None:
        """Queries dropped without an answer (netblock_dropped_total{reason})."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def all_request_durations(self) -> Histogram:
        """The request duration histogram with every replay in its lowest bucket."""
        merged = Histogram()
        merged.counts = list(self.request_duration.counts)
        merged.counts[0] += sum(self.replayed)
        merged.sum = self.request_duration.sum
        return merged

    def upstream(self, address: str) -> UpstreamStats:
        found = self.upstreams.get(address)
        if found is None:
            found = self.upstreams[address] = UpstreamStats(address)
        return found
