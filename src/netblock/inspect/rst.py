"""TCP resets from a raw socket, to both ends, with exact sequence numbers.

Sent from the capture loop itself: a reset pair costs ~20-100 µs, and the race against a
LAN server's ServerHello is lost when anything slower (scapy send: 24 ms) sits in
between. `Killer` re-sends resets from later packets of a killed flow (tcpkill-style)
for a few seconds, on its own socket and thread, so a reset that lost the race to a
ServerHello (Linux then sends a challenge ACK, RFC 5961) gets another chance.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time

from netblock.inspect.capture import compile_bpf, open_socket
from netblock.inspect.packet import ACK, FIN, LINK_ETHERNET, RST, SYN, TCP, Packet, decode

log = logging.getLogger("netblock.inspect")

_TCP = struct.Struct("!HHIIBBHHH")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_segment(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    """An IP packet holding one bare TCP segment (no payload, window 0)."""
    header = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 0, 0, 0)
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, TCP, len(header))
        csum = _checksum(pseudo + header)
        tcp = header[:16] + struct.pack("!H", csum) + header[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, TCP, 0, src, dst)
        return ip + tcp
    pseudo = src + dst + struct.pack("!IxxxB", len(header), TCP)
    csum = _checksum(pseudo + header)
    tcp = header[:16] + struct.pack("!H", csum) + header[18:]
    ip = struct.pack("!IHBB16s16s", 0x60000000, len(tcp), TCP, 64, src, dst)
    return ip + tcp


class Resetter:
    """Raw IPPROTO_RAW sockets (the header is ours) for IPv4 and IPv6."""

    def __init__(self) -> None:
        self.sock4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            self.sock6: socket.socket | None = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except OSError:
            self.sock6 = None
        self.sent = 0
        self.errors = 0

    def _send(self, packet: bytes, dst: bytes) -> None:
        try:
            if len(dst) == 4:
                self.sock4.sendto(packet, (socket.inet_ntop(socket.AF_INET, dst), 0))
            elif self.sock6 is not None:
                self.sock6.sendto(packet, (socket.inet_ntop(socket.AF_INET6, dst), 0, 0, 0))
            self.sent += 1
        except OSError:
            self.errors += 1

    def reset_flow(self, pkt: Packet, client_next: int) -> None:
        """Reset both ends of the flow `pkt` (client to server) belongs to.

        To the server: from the client, at the client's next sequence number.
        To the client: from the server, at the client's rcv_nxt (the ack it sent)."""
        self._send(tcp_segment(pkt.src, pkt.dst, pkt.sport, pkt.dport, client_next, pkt.ack, RST | ACK), pkt.dst)
        self._send(tcp_segment(pkt.dst, pkt.src, pkt.dport, pkt.sport, pkt.ack, client_next, RST | ACK), pkt.src)

    def refuse_syn(self, pkt: Packet) -> None:
        """Answer a client's SYN as a closed port would: RST+ACK acknowledging it."""
        self._send(tcp_segment(pkt.dst, pkt.src, pkt.dport, pkt.sport, 0, pkt.seq + 1, RST | ACK), pkt.src)

    def reset_from(self, pkt: Packet) -> None:
        """Resets computed from any later packet of a killed flow, in either direction."""
        length = len(pkt.payload) + (1 if pkt.flags & (SYN | FIN) else 0)
        if pkt.flags & RST:
            return
        following = pkt.seq + length
        self._send(tcp_segment(pkt.src, pkt.dst, pkt.sport, pkt.dport, following, pkt.ack, RST | ACK), pkt.dst)
        if pkt.flags & ACK:
            self._send(tcp_segment(pkt.dst, pkt.src, pkt.dport, pkt.sport, pkt.ack, following, RST | ACK), pkt.src)

    def close(self) -> None:
        self.sock4.close()
        if self.sock6 is not None:
            self.sock6.close()


def _host(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


class Killer:
    """Follow-up resets for the newest killed flows (16 flows, 5 s each)."""

    def __init__(self, interface: str, resetter: Resetter, max_flows: int = 16, ttl: float = 5.0) -> None:
        self.interface = interface
        self.resetter = resetter
        self.max_flows = max_flows
        self.ttl = ttl
        self.flows: dict[tuple[bytes, int, bytes, int], float] = {}
        self._pending: list[tuple[bytes, int, bytes, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # A pipe, not an Event: the worker sleeps in select() on its socket and must wake at
        # once; a ServerHello is ~1 ms behind the ClientHello on a LAN.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="inspect-killer", daemon=True)
        self.resent = 0

    def start(self) -> None:
        compile_bpf("tcp and less 1")  # import and warm libpcap now, not during the first race
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(timeout=2)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already awake

    def add(self, pkt: Packet) -> None:
        """Called from the capture loop: a list append, nothing more."""
        with self._lock:
            self._pending.append((pkt.src, pkt.sport, pkt.dst, pkt.dport))
        self._wake()

    def _expression(self) -> str:
        parts = [
            f"(host {_host(c)} and host {_host(s)} and tcp port {cp} and tcp port {sp})"
            for (c, cp, s, sp) in self.flows
        ]
        return "tcp and (" + " or ".join(parts) + ")" if parts else "tcp and less 1"

    def _refresh(self, sock: socket.socket | None) -> socket.socket | None:
        now = time.monotonic()
        with self._lock:
            pending, self._pending = self._pending, []
        for key in pending:
            self.flows.pop(key, None)
            self.flows[key] = now + self.ttl
        for key, expiry in list(self.flows.items()):
            if expiry < now:
                del self.flows[key]
        while len(self.flows) > self.max_flows:
            del self.flows[next(iter(self.flows))]
        if not self.flows:
            if sock is not None:
                sock.close()
            return None
        # Compiled here, never in the capture loop (up to 50 ms at ~50 flows).
        code = compile_bpf(self._expression())
        if sock is None:
            return open_socket(self.interface, code, 1 << 20)
        from netblock.inspect.capture import attach_bpf

        attach_bpf(sock, code)
        return sock

    def _run(self) -> None:
        sock: socket.socket | None = None
        next_refresh = 0.0
        changed = False
        while not self._stop.is_set():
            if changed or (self.flows and time.monotonic() > next_refresh):
                changed = False
                try:
                    sock = self._refresh(sock)
                except OSError as exc:
                    log.warning("follow-up reset socket: %s", exc)
                    sock = None
                next_refresh = time.monotonic() + 1.0
            watched: list[int | socket.socket] = [self._wake_r] if sock is None else [self._wake_r, sock]
            ready, _, _ = select.select(watched, [], [], 0.5)
            if self._wake_r in ready:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                changed = True
            if sock is None or sock not in ready:
                continue
            for _ in range(64):
                try:
                    frame = sock.recv(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                pkt = decode(frame, LINK_ETHERNET)
                if pkt is None or pkt.proto != TCP:
                    continue
                key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
                if key in self.flows or (pkt.dst, pkt.dport, pkt.src, pkt.sport) in self.flows:
                    self.resetter.reset_from(pkt)
                    self.resent += 1
        if sock is not None:
            sock.close()
