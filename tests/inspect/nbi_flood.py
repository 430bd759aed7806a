"""Send ClientHello frames at a fixed rate from an interface (inspector capture test).

Usage: nbi_flood.py IFACE DST_MAC RATE SECONDS BLOCKED_EVERY -> prints the count sent.
Frames go to 198.51.100.0/24 (no route on the router: nothing answers them)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nbi_gen as gen


def main() -> int:
    iface, dst_mac, rate, seconds, blocked_every = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        float(sys.argv[4]),
        int(sys.argv[5]),
    )
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    src_mac = sock.getsockname()[4][:6]
    allowed, blocked = gen.client_hello("www.example.org"), gen.client_hello("weixin.qq.com")
    client, server = gen.ip4("10.200.1.2"), gen.ip4("198.51.100.9")
    total = int(rate * seconds)
    frames = []
    for i in range(total):
        hello = blocked if i % blocked_every == 0 else allowed
        ip = gen.tcp(client, server, 1024 + i % 60000, 443, 1000 + i, 1, 0x18, hello)
        frames.append(bytes.fromhex(dst_mac.replace(":", "")) + src_mac + b"\x08\x00" + ip)
    batch = max(1, rate // 200)  # 5 ms bursts
    start = time.perf_counter()
    sent = 0
    while sent < total:
        due = start + sent / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        for frame in frames[sent : sent + batch]:
            sock.send(frame)
        sent += len(frames[sent : sent + batch])
    elapsed = time.perf_counter() - start
    print(f"{sent} {elapsed:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
