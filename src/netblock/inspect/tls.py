"""TLS ClientHello parsing on raw bytes: SNI, ALPN, supported versions, ECH.

`parse_stream` reads the client's reassembled TCP byte stream (TLS records, possibly
fragmented into many small records, as xray "fragment" or GoodbyeDPI do);
`parse_handshake` reads bare handshake bytes (QUIC CRYPTO frames carry no records).
A truncated hello gives NEED_MORE, never a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

OK, NEED_MORE, NOT_TLS, MALFORMED = "ok", "need_more", "not_tls", "malformed"

EXT_SNI = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_ECH = 0xFE0D
ECH_DRAFTS = frozenset((0xFE08, 0xFE09, 0xFE0A, 0xFE0B, 0xFE0C, 0xFF02))
EXT_ESNI = 0xFFCE
MAX_HELLO = 16 * 1024  # a bigger "hello" is not one we will ever finish reading


def _is_grease(value: int) -> bool:
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True, slots=True)
class Hello:
    sni: str | None  # lower-case, no trailing dot; None when absent
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    ech: int | None = None  # ECH type (0 outer, 1 inner) or -1 for a draft codepoint; None: absent
    esni: bool = False


def parse_stream(data: bytes) -> tuple[str, Hello | None]:
    """A ClientHello from the start of a client's TCP stream, across TLS records."""
    if not data:
        return NEED_MORE, None
    if data[0] != 0x16:
        return NOT_TLS, None
    handshake = bytearray()
    offset = 0
    end = len(data)
    while True:
        if offset + 5 > end:
            return NEED_MORE, None
        if data[offset] != 0x16:
            return MALFORMED, None
        if data[offset + 1] != 3:
            return (NOT_TLS if offset == 0 else MALFORMED), None
        length = (data[offset + 3] << 8) | data[offset + 4]
        if length == 0 or length > 16384 + 2048:
            return MALFORMED, None
        body = data[offset + 5 : offset + 5 + length]
        handshake += body
        offset += 5 + len(body)
        if len(handshake) >= 4:
            status, hello = parse_handshake(bytes(handshake))
            if status != NEED_MORE:
                return status, hello
        if len(body) < length:
            return NEED_MORE, None
        if len(handshake) > MAX_HELLO:
            return MALFORMED, None


def parse_handshake(data: bytes) -> tuple[str, Hello | None]:
    """A ClientHello from bare handshake-protocol bytes (type 1, 24-bit length, body)."""
    if len(data) < 4:
        return NEED_MORE, None
    if data[0] != 1:
        return MALFORMED, None
    length = int.from_bytes(data[1:4], "big")
    if length > MAX_HELLO or length < 38:
        return MALFORMED, None
    if len(data) < 4 + length:
        return NEED_MORE, None
    return _parse_body(data, 4, 4 + length)


def _parse_body(d: bytes, p: int, end: int) -> tuple[str, Hello | None]:
    p += 2 + 32  # legacy_version, random
    if p + 1 > end:
        return MALFORMED, None
    p += 1 + d[p]  # session id
    if p + 2 > end:
        return MALFORMED, None
    p += 2 + ((d[p] << 8) | d[p + 1])  # cipher suites
    if p + 1 > end:
        return MALFORMED, None
    p += 1 + d[p]  # compression methods
    if p > end:
        return MALFORMED, None
    if p == end:
        return OK, Hello(sni=None)  # no extensions at all (SSLv3-style hello)
    if p + 2 > end:
        return MALFORMED, None
    ext_end = p + 2 + ((d[p] << 8) | d[p + 1])
    if ext_end > end:
        return MALFORMED, None
    p += 2
    sni: str | None = None
    alpn: list[str] = []
    versions: list[int] = []
    ech: int | None = None
    esni = False
    while p + 4 <= ext_end:
        etype = (d[p] << 8) | d[p + 1]
        elen = (d[p + 2] << 8) | d[p + 3]
        p += 4
        q = p + elen
        if q > ext_end:
            return MALFORMED, None
        if etype == EXT_SNI:
            sni = _sni(d, p, q)
            if sni == "":
                return MALFORMED, None
        elif etype == EXT_ALPN:
            alpn = _alpn(d, p, q)
        elif etype == EXT_SUPPORTED_VERSIONS:
            if p < q:
                versions = [(d[i] << 8) | d[i + 1] for i in range(p + 1, min(q, p + 1 + d[p]) - 1, 2)]
                versions = [v for v in versions if not _is_grease(v)]
        elif etype == EXT_ECH:
            ech = d[p] if p < q else 0
        elif etype in ECH_DRAFTS:
            ech = -1
        elif etype == EXT_ESNI:
            esni = True
        p = q
    if p != ext_end:
        return MALFORMED, None
    return OK, Hello(sni=sni, alpn=tuple(alpn), versions=tuple(versions), ech=ech, esni=esni)


def _sni(d: bytes, p: int, q: int) -> str | None:
    """The host_name entry of a server_name extension; '' when the extension is broken."""
    if p + 2 > q:
        return ""
    list_end = min(q, p + 2 + ((d[p] << 8) | d[p + 1]))
    p += 2
    while p + 3 <= list_end:
        kind = d[p]
        n = (d[p + 1] << 8) | d[p + 2]
        p += 3
        if p + n > list_end:
            return ""
        if kind == 0:
            name = d[p : p + n].decode("ascii", "replace").lower().rstrip(".")
            return name or ""
        p += n
    return None


def _alpn(d: bytes, p: int, q: int) -> list[str]:
    out: list[str] = []
    if p + 2 > q:
        return out
    list_end = min(q, p + 2 + ((d[p] << 8) | d[p + 1]))
    p += 2
    while p < list_end:
        n = d[p]
        out.append(d[p + 1 : p + 1 + n].decode("ascii", "replace"))
        p += 1 + n
    return out
