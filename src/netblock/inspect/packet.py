"""Frame decoding on raw bytes: link layer -> IPv4/IPv6 -> TCP/UDP, bounds-checked.

One function call and a few slices per packet; no dissection library on this path
(scapy costs ~190 µs a frame, this ~2 µs).
"""

from __future__ import annotations

import struct

LINK_NULL = 0
LINK_ETHERNET = 1
LINK_RAW = 101
LINK_RAW_BSD = 12
LINK_RAW_OPENBSD = 14
LINK_SLL = 113
LINK_NFLOG = 239
LINK_SLL2 = 276
LINK_IPV4 = 228
LINK_IPV6 = 229

TCP = 6
UDP = 17
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_TCP_HEAD = struct.Struct("!HHIIBB")
_V6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options; fragment handled apart


class Packet:
    """The fields detection needs. `src`/`dst` are packed addresses (4 or 16 bytes)."""

    __slots__ = (
        "ack",
        "dport",
        "dst",
        "flags",
        "mac",
        "payload",
        "proto",
        "seq",
        "sport",
        "src",
        "ts",
        "ver",
    )

    def __init__(
        self,
        ts: float,
        ver: int,
        src: bytes,
        dst: bytes,
        proto: int,
        sport: int,
        dport: int,
        flags: int,
        seq: int,
        ack: int,
        payload: bytes,
        mac: bytes,
    ) -> None:
        self.ts = ts
        self.ver = ver
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.flags = flags
        self.seq = seq
        self.ack = ack
        self.payload = payload
        self.mac = mac  # the sender's link-layer address, b"" when the link has none

    def __repr__(self) -> str:
        return (
            f"Packet(v{self.ver} proto={self.proto} {self.sport}->{self.dport} flags={self.flags:#x} "
            f"len={len(self.payload)})"
        )


def decode(frame: bytes, linktype: int = LINK_ETHERNET, ts: float = 0.0) -> Packet | None:
    """A TCP or UDP packet from one captured frame, or None for anything else."""
    mac = b""
    try:
        if linktype == LINK_ETHERNET:
            ethertype = (frame[12] << 8) | frame[13]
            offset = 14
            while ethertype in (0x8100, 0x88A8) and offset + 4 <= len(frame):  # VLAN tags
                ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
                offset += 4
            mac = frame[6:12]
            if ethertype == 0x0800:
                return _ipv4(frame, offset, ts, mac)
            if ethertype == 0x86DD:
                return _ipv6(frame, offset, ts, mac)
            return None
        if linktype in (LINK_RAW, LINK_RAW_BSD, LINK_RAW_OPENBSD, LINK_IPV4, LINK_IPV6):
            version = frame[0] >> 4
            return _ipv4(frame, 0, ts, mac) if version == 4 else _ipv6(frame, 0, ts, mac) if version == 6 else None
        if linktype == LINK_SLL:
            ethertype = (frame[14] << 8) | frame[15]
            if ((frame[4] << 8) | frame[5]) == 6:
                mac = frame[6:12]
            offset = 16
        elif linktype == LINK_SLL2:
            ethertype = (frame[0] << 8) | frame[1]
            if frame[11] == 6:
                mac = frame[12:18]
            offset = 20
        elif linktype == LINK_NFLOG:
            return _nflog(frame, ts)
        elif linktype == LINK_NULL:
            family = int.from_bytes(frame[0:4], "little")
            if family > 0xFFFF:
                family = int.from_bytes(frame[0:4], "big")
            ethertype = 0x0800 if family == 2 else 0x86DD if family in (10, 24, 28, 30) else 0
            offset = 4
        else:
            return None
        if ethertype == 0x0800:
            return _ipv4(frame, offset, ts, mac)
        if ethertype == 0x86DD:
            return _ipv6(frame, offset, ts, mac)
    except IndexError:
        return None
    return None


def _nflog(frame: bytes, ts: float) -> Packet | None:
    p = 4
    while p + 4 <= len(frame):
        length = int.from_bytes(frame[p : p + 2], "little")
        kind = int.from_bytes(frame[p + 2 : p + 4], "little")
        if length < 4:
            return None
        if kind == 9:  # NFULA_PAYLOAD: the IP packet
            ip = frame[p + 4 : p + length]
            return decode(ip, LINK_RAW, ts) if ip else None
        p += (length + 3) & ~3
    return None


def _ipv4(frame: bytes, o: int, ts: float, mac: bytes) -> Packet | None:
    if len(frame) < o + 20 or (frame[o] >> 4) != 4:
        return None
    ihl = (frame[o] & 0x0F) * 4
    if ihl < 20:
        return None
    total = (frame[o + 2] << 8) | frame[o + 3]
    end = min(len(frame), o + total) if total >= ihl else len(frame)
    if ((frame[o + 6] & 0x1F) << 8) | frame[o + 7]:
        return None  # a non-first fragment carries no port numbers
    return _l4(frame, o + ihl, end, frame[o + 9], 4, frame[o + 12 : o + 16], frame[o + 16 : o + 20], ts, mac)


def _ipv6(frame: bytes, o: int, ts: float, mac: bytes) -> Packet | None:
    if len(frame) < o + 40 or (frame[o] >> 4) != 6:
        return None
    end = min(len(frame), o + 40 + ((frame[o + 4] << 8) | frame[o + 5]))
    nxt = frame[o + 6]
    p = o + 40
    for _ in range(8):
        if nxt in _V6_EXTENSIONS:
            nxt, p = frame[p], p + (frame[p + 1] + 1) * 8
        elif nxt == 44:  # fragment header
            if ((frame[p + 2] << 8) | frame[p + 3]) & 0xFFF8:
                return None
            nxt, p = frame[p], p + 8
        else:
            break
    return _l4(frame, p, end, nxt, 6, frame[o + 8 : o + 24], frame[o + 24 : o + 40], ts, mac)


def _l4(
    frame: bytes, p: int, end: int, proto: int, ver: int, src: bytes, dst: bytes, ts: float, mac: bytes
) -> Packet | None:
    if proto == TCP:
        if p + 20 > end:
            return None
        sport, dport, seq, ack, off, flags = _TCP_HEAD.unpack_from(frame, p)
        start = p + (off >> 4) * 4
        if start > end or (off >> 4) < 5:
            return None
        return Packet(ts, ver, src, dst, TCP, sport, dport, flags, seq, ack, frame[start:end], mac)
    if proto == UDP:
        if p + 8 > end:
            return None
        sport = (frame[p] << 8) | frame[p + 1]
        dport = (frame[p + 2] << 8) | frame[p + 3]
        return Packet(ts, ver, src, dst, UDP, sport, dport, 0, 0, 0, frame[p + 8 : end], mac)
    return None
