"""Inline mode: the first 8 KB of each flow pass through NFQUEUE and get a verdict.

xt rules through iptables/ip6tables (the kernel may lack CONFIG_NFT_QUEUE): conntrack's
connbytes limits what reaches Python, `--queue-bypass` lets traffic through when no
inspector listens. A blocked flow's packet is marked 0x1bad and repeated: the rules then
reject it (TCP reset to the client) and CONNMARK the connection so its later packets die
in the kernel; we reset the server ourselves (REJECT only answers the client). QUIC
retransmissions would open fresh conntrack entries, so verdicts are also cached here
per 5-tuple. Any error in the callback accepts the packet: fail-open.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

from netblock.inspect.detect import Detection
from netblock.inspect.packet import LINK_RAW, TCP, Packet, decode

log = logging.getLogger("netblock.inspect")

MARK = 0x1BAD
CHAIN = "NBINSPECT"


def rules(queue: int) -> list[list[str]]:
    """iptables arguments, in order, for one family (the same for ip6tables)."""
    mark = f"{MARK:#x}"
    nfq = ["-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
    return [
        [
            "-A",
            CHAIN,
            "-m",
            "connmark",
            "--mark",
            mark,
            "-p",
            "tcp",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
        ["-A", CHAIN, "-m", "connmark", "--mark", mark, "-j", "DROP"],
        ["-A", CHAIN, "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark"],
        [
            "-A",
            CHAIN,
            "-m",
            "mark",
            "--mark",
            mark,
            "-p",
            "tcp",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
        ["-A", CHAIN, "-m", "mark", "--mark", mark, "-j", "DROP"],
        [
            "-A",
            CHAIN,
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            "80,443",
            "-m",
            "connbytes",
            "--connbytes",
            "0:8192",
            "--connbytes-dir",
            "original",
            "--connbytes-mode",
            "bytes",
            *nfq,
        ],
        [
            "-A",
            CHAIN,
            "-p",
            "udp",
            "--dport",
            "443",
            "-m",
            "connbytes",
            "--connbytes",
            "0:4",
            "--connbytes-dir",
            "original",
            "--connbytes-mode",
            "packets",
            *nfq,
        ],
        ["-A", CHAIN, "-p", "tcp", "--syn", *nfq],
        ["-A", CHAIN, "-p", "udp", "-m", "multiport", "--dports", "53,853", *nfq],
        [
            "-A",
            CHAIN,
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            "53,853",
            "-m",
            "connbytes",
            "--connbytes",
            "0:4096",
            "--connbytes-dir",
            "original",
            "--connbytes-mode",
            "bytes",
            *nfq,
        ],
    ]


def _run(tool: str, args: list[str], check: bool = True) -> bool:
    done = subprocess.run([tool, "-w", *args], capture_output=True, text=True, timeout=20, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)}: {done.stderr.strip()}")
    return done.returncode == 0


def install(queue: int) -> list[str]:
    """Insert the chain into FORWARD for IPv4 and IPv6; returns the tools used."""
    used = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        remove_tool(tool)
        _run(tool, ["-N", CHAIN])
        for args in rules(queue):
            _run(tool, args)
        _run(tool, ["-I", "FORWARD", "-j", CHAIN])
        used.append(tool)
    if not used:
        raise RuntimeError("NFQUEUE mode needs iptables (iptables-nft)")
    return used


def remove_tool(tool: str) -> None:
    for _ in range(4):
        if not _run(tool, ["-D", "FORWARD", "-j", CHAIN], check=False):
            break
    _run(tool, ["-F", CHAIN], check=False)
    _run(tool, ["-X", CHAIN], check=False)


def remove() -> None:
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is not None:
            remove_tool(tool)


class Verdicts:
    """Runs the engine on queued packets and answers each one, fail-open."""

    def __init__(
        self,
        handle: Callable[[Packet], None],
        on_reset: Callable[[Packet, int], None],
        cache_seconds: float = 120.0,
    ) -> None:
        self.handle = handle
        self.on_reset = on_reset
        self.cache_seconds = cache_seconds
        self.blocked: dict[tuple[bytes, int, bytes, int, int], float] = {}
        self.current: Detection | None = None
        self.accepted = 0
        self.dropped = 0
        self.errors = 0

    def note(self, detection: Detection) -> None:
        """The sink's hook: remember that the packet being judged completed a block."""
        if detection.rule.action == "block":
            self.current = detection

    def __call__(self, queued: Any) -> None:
        try:
            self._judge(queued)
        except Exception:  # fail-open: a parser bug must not cut the network
            self.errors += 1
            try:
                queued.accept()
            except Exception:
                pass

    def _judge(self, queued: Any) -> None:
        raw = queued.get_payload()
        pkt = decode(raw, LINK_RAW, time.time())
        if pkt is None:
            queued.accept()
            self.accepted += 1
            return
        hw = queued.get_hw()
        if hw:
            pkt.mac = bytes(hw[:6])  # the sender's MAC, as AF_PACKET would have seen it
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.proto)
        expiry = self.blocked.get(key)
        if expiry is not None and expiry > pkt.ts:
            queued.drop()
            self.dropped += 1
            return
        self.current = None
        self.handle(pkt)
        detection = self.current
        if detection is None:
            queued.accept()
            self.accepted += 1
            return
        if len(self.blocked) > 50_000:
            self.blocked.clear()
        self.blocked[key] = pkt.ts + self.cache_seconds
        if pkt.proto == TCP and not pkt.flags & 0x02:
            # This packet never reaches the server: its rcv_nxt is this packet's first byte.
            self.on_reset(pkt, pkt.seq)
        queued.set_mark(MARK)
        queued.repeat()
        self.dropped += 1


def run_queue(queue: int, verdicts: Verdicts, stopped: Callable[[], bool]) -> None:
    import select
    import socket

    from netfilterqueue import NetfilterQueue

    nfq = NetfilterQueue()
    nfq.bind(queue, verdicts, max_len=4096)
    sock = socket.fromfd(nfq.get_fd(), socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while not stopped():
            ready, _, _ = select.select([sock], [], [], 0.25)
            if ready:
                nfq.run(block=False)
    finally:
        sock.close()
        nfq.unbind()
