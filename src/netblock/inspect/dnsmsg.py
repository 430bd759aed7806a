"""The question name of a DNS query seen on the wire (foreign-resolver detection)."""

from __future__ import annotations

from netblock.names import from_wire


def query_name(payload: bytes, tcp: bool = False) -> tuple[str, int] | None:
    """(presentation name, qtype) of a DNS query, or None when it is not one."""
    p = 2 if tcp else 0
    if len(payload) < p + 17:
        return None
    if payload[p + 2] & 0x80:  # a response
        return None
    if int.from_bytes(payload[p + 4 : p + 6], "big") < 1:
        return None
    q = p + 12
    start = q
    end = len(payload)
    for _ in range(128):
        if q >= end:
            return None
        n = payload[q]
        if n == 0:
            q += 1
            break
        if n > 63:
            return None
        q += 1 + n
    else:
        return None
    if q + 4 > end:
        return None
    name = from_wire(payload[start:q]).rstrip(".") or "."
    return name.lower(), int.from_bytes(payload[q : q + 2], "big")
