"""Who may ask: the access list and a per-client token bucket.

Both run on every transport before any other work. Decisions for a client address are
memoised in bounded dicts, so a flood of spoofed source addresses cannot grow memory.
"""

from __future__ import annotations

import ipaddress

from netblock.config import Access

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(texts: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


def _contains(networks: tuple[Network, ...], client: str) -> bool:
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class Admission:
    def __init__(self, access: Access) -> None:
        self.allow = _networks(access.allow)
        self.exempt = _networks(access.rate_limit.exempt)
        self.action = access.action
        self.limit_action = access.rate_limit.action
        self.capacity = float(access.rate_limit.queries)
        per_seconds = access.rate_limit.per_seconds
        self.refill = access.rate_limit.queries / per_seconds if per_seconds else 0
        self.max_clients = max(2, access.rate_limit.max_clients)  # 0 or 1 would never evict
        self._allowed: dict[str, bool] = {}
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, last refill time]
        self._exempt: dict[str, bool] = {}

    def check(self, client: str, now: float) -> str:
        """'' to admit, else the reason: 'acl' or 'ratelimit'. `now` is time.monotonic() when
        the query came: a batch of queries shares one reading."""
        # Only admitted, limited clients have a bucket: for them (nearly every query) the
        # decision is one lookup and the bucket arithmetic.
        bucket = self._buckets.get(client)
        if bucket is None:
            return self._first_check(client, now)
        tokens = bucket[0] + (now - bucket[1]) * self.refill
        if tokens > self.capacity:
            tokens = self.capacity
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return "ratelimit"
        bucket[0] = tokens - 1
        return ""

    def _first_check(self, client: str, now: float) -> str:
        """A client without a bucket: refused by the access list, exempt, not limited, or new."""
        allowed = self._allowed.get(client)
        if allowed is None:
            allowed = _contains(self.allow, client)
            if len(self._allowed) >= self.max_clients:
                self._allowed.clear()
            self._allowed[client] = allowed
        if not allowed:
            return "acl"
        if self.capacity <= 0:
            return ""
        exempt = self._exempt.get(client)
        if exempt is None:
            if len(self._exempt) >= self.max_clients:  # bounded like the others
                self._exempt.clear()
            exempt = self._exempt[client] = _contains(self.exempt, client)
        if exempt:
            return ""
        if len(self._buckets) >= self.max_clients:
            self._evict(now)
        self._buckets[client] = [self.capacity - 1, now]
        return ""

    def _evict(self, now: float) -> None:
        """Forget the buckets that have refilled; if none has, the oldest half."""
        full = [c for c, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.refill >= self.capacity]
        for client in full:
            del self._buckets[client]
        if len(self._buckets) >= self.max_clients:
            for client in list(self._buckets)[: self.max_clients // 2]:
                del self._buckets[client]

    def drops(self, reason: str) -> bool:
        """True when refused clients get no answer at all (configured 'drop')."""
        return (self.action if reason == "acl" else self.limit_action) == "drop"
