"""Packet sources: a raw AF_PACKET socket with a kernel BPF filter, or a capture file.

The kernel filter passes only what detection can use (reference/inspector.md §2): every
client payload segment to 80/443 (split ClientHellos), SYNs, UDP 443 long-header
datagrams of at least 1,200 bytes (QUIC Initials), ports 53 and 853, and UDP to blocked
networks. Filters are compiled once, before the loop.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from netblock.inspect.packet import LINK_ETHERNET, Packet, decode

log = logging.getLogger("netblock.inspect")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
BUFFER_BYTES = 32 * 1024 * 1024
MAX_FILTER_NETWORKS = 64  # beyond this the filter compiles slowly; UDP then passes unfiltered

BASE_FILTER = (
    "(ip and ("
    "(tcp and (dst port 443 or dst port 80) and (ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2)) > 0)"
    " or (tcp[13] & 0x12 = 0x02)"
    " or (udp dst port 443 and udp[8] & 0xc0 = 0xc0 and udp[4:2] >= 1208)"
    " or (dst port 53 or dst port 853)))"
    " or (ip6 and ("
    "(ip6[6] = 6 and (ip6[42:2] = 443 or ip6[42:2] = 80) and (ip6[4:2] - ((ip6[52]&0xf0)>>2)) > 0)"
    " or (ip6[6] = 6 and ip6[53] & 0x12 = 0x02)"
    " or (ip6[6] = 17 and ip6[42:2] = 443 and ip6[48] & 0xc0 = 0xc0 and ip6[44:2] >= 1208)"
    " or ((ip6[6] = 6 or ip6[6] = 17) and (ip6[42:2] = 53 or ip6[42:2] = 853))))"
)


def build_filter(networks: Iterable[str] = ()) -> str:
    """The capture filter; UDP to the given networks is added (SYNs already pass)."""
    nets = sorted({str(ipaddress.ip_network(n, strict=False)) for n in networks})
    if not nets:
        return BASE_FILTER
    if len(nets) > MAX_FILTER_NETWORKS:
        return BASE_FILTER + " or udp"
    return BASE_FILTER + " or (udp and (" + " or ".join(f"dst net {n}" for n in nets) + "))"


def compile_bpf(expression: str, linktype: int = LINK_ETHERNET) -> bytes:
    """Classic BPF bytecode (struct sock_filter array) via libpcap, for SO_ATTACH_FILTER."""
    from scapy.arch.common import compile_filter, free_filter  # libpcap through ctypes; ~1 ms

    program = compile_filter(expression, linktype=linktype)
    insns = program.bf_insns
    code = b"".join(
        struct.pack("HBBI", insns[i].code, insns[i].jt, insns[i].jf, insns[i].k & 0xFFFFFFFF)
        for i in range(program.bf_len)
    )
    free_filter(program)
    return code


def attach_bpf(sock: socket.socket, code: bytes) -> None:
    import ctypes

    count = len(code) // 8
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", count, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_socket(interface: str, bpf: bytes | None, buffer_bytes: int = BUFFER_BYTES) -> socket.socket:
    """A raw socket on one interface, filtered from its first packet."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing yet
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
    if bpf:
        attach_bpf(sock, bpf)
    sock.bind((interface, ETH_P_ALL))
    return sock


def socket_drops(sock: socket.socket) -> tuple[int, int]:
    """(packets, drops) since the last call (PACKET_STATISTICS resets on read)."""
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    packets, drops = struct.unpack("II", raw)
    return packets, drops


class LiveCapture:
    """Reads Ethernet frames from an interface; skips our own outgoing copies."""

    def __init__(self, interface: str, expression: str, buffer_bytes: int = BUFFER_BYTES) -> None:
        self.interface = interface
        self.sock = open_socket(interface, compile_bpf(expression), buffer_bytes)
        self.received = 0
        self.kernel_drops = 0
        self.errors = 0

    def run(self, handle: Callable[[Packet], None], stopped: Callable[[], bool]) -> None:
        sock = self.sock
        recv = sock.recvfrom
        now = time.time
        while not stopped():
            ready, _, _ = select.select([sock], [], [], 0.25)
            if not ready:
                continue
            for _ in range(256):  # drain what is queued before the next select
                try:
                    frame, address = recv(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue
                self.received += 1
                pkt = decode(frame, LINK_ETHERNET, now())
                if pkt is not None:
                    try:
                        handle(pkt)
                    except Exception:  # a parser bug must not stop the inspector (fuzzed: none known)
                        self.errors += 1
                        if self.errors <= 10:
                            log.exception("inspector: packet handling failed (%s)", pkt)

    def drops(self) -> int:
        _, dropped = socket_drops(self.sock)
        self.kernel_drops += dropped
        return self.kernel_drops

    def close(self) -> None:
        self.sock.close()


def read_file(path: str) -> Iterator[tuple[float, int, bytes]]:
    """(timestamp, linktype, frame) from a pcap or pcapng file, without dissection."""
    from scapy.utils import RawPcapReader  # picks the pcapng reader by magic

    reader = RawPcapReader(path)
    try:
        linktype = getattr(reader, "linktype", LINK_ETHERNET)
        for frame, record in reader:
            meta: Any = record  # PacketMetadata (pcap) or PacketMetadataNg (pcapng)
            if hasattr(meta, "sec"):
                ts = meta.sec + meta.usec / (1e9 if getattr(reader, "nano", False) else 1e6)
                yield ts, linktype, frame
            else:
                resolution = meta.tsresol or 1_000_000
                yield ((meta.tshigh << 32) | meta.tslow) / resolution, meta.linktype, frame
    finally:
        reader.close()


def replay_file(path: str, handle: Callable[[Packet], None]) -> tuple[int, int]:
    """Feed a capture file through `handle`; returns (frames, decoded packets)."""
    frames = decoded = 0
    for ts, linktype, frame in read_file(path):
        frames += 1
        pkt = decode(frame, linktype, ts)
        if pkt is not None:
            decoded += 1
            handle(pkt)
    return frames, decoded
