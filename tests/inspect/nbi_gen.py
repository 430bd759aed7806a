"""Real protocol bytes without a network: ClientHellos from OpenSSL (memory BIO), QUIC
Initials from aioquic, and Ethernet/IP/TCP/UDP frames around them; a pcap writer."""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

# RFC 9001 Appendix A.2: the client Initial (DCID 8394c8f03e515708), 1,200 bytes.
RFC9001_DCID = bytes.fromhex("8394c8f03e515708")
RFC9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
# The start of the A.2 plaintext: one CRYPTO frame holding the ClientHello.
RFC9001_FRAMES_START = bytes.fromhex("060040f1010000ed0303ebf8fa56f129")

CLIENT_MAC = bytes.fromhex("020000000001")
ROUTER_MAC = bytes.fromhex("020000000002")


def client_hello(sni: str | None, alpn: tuple[str, ...] = ("h2", "http/1.1"), tls12: bool = False) -> bytes:
    """The TLS records of a real OpenSSL ClientHello."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def quic_initials(sni: str, version: str = "v1", big: bool = False) -> list[bytes]:
    """The client's first datagrams (aioquic), without sending them anywhere."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.packet import QuicProtocolVersion

    alpn = ["h3"] + ([f"x-netblock-test-protocol-{i:03d}" for i in range(45)] if big else [])
    config = QuicConfiguration(is_client=True, alpn_protocols=alpn, server_name=sni)
    number = QuicProtocolVersion.VERSION_2 if version == "v2" else QuicProtocolVersion.VERSION_1
    config.original_version = number
    config.supported_versions = [number]
    conn = QuicConnection(configuration=config)
    conn.connect(("192.0.2.1", 443), now=0.0)
    return [data for data, _addr in conn.datagrams_to_send(now=0.0)]


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_packet(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    if len(src) == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0, src, dst)
        header = header[:10] + struct.pack("!H", _sum16(header)) + header[12:]
        return header + l4
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, src, dst) + l4


def tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    segment = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    return ip_packet(src, dst, 6, segment)


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    return ip_packet(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def ether(ip: bytes, src_mac: bytes = CLIENT_MAC, dst_mac: bytes = ROUTER_MAC) -> bytes:
    ethertype = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
    return dst_mac + src_mac + struct.pack("!H", ethertype) + ip


def dns_query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    wire = b"".join(bytes((len(label),)) + label.encode() for label in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, 1)


def write_pcap(path: Path, frames: list[bytes], linktype: int = 1) -> None:
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for i, frame in enumerate(frames):
            out.write(struct.pack("<IIII", 1_700_000_000 + i // 1000, (i % 1000) * 1000, len(frame), len(frame)))
            out.write(frame)


def ip4(text: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(text).packed


def mixed_frames(count: int, blocked_every: int = 10) -> list[bytes]:
    """A gateway-like mix (reference/inspector.md §1): 55% download, 25% ACKs, 5% upload,
    8% QUIC short header, 3% DNS, 2% ClientHello, 1% QUIC Initial, 1% SYN.
    Every `blocked_every`-th hello names a blocked host."""
    import random

    rng = random.Random(7)
    hellos = [client_hello("weixin.qq.com"), client_hello("www.example.org"), client_hello("cdn.example.net")]
    initials = [quic_initials("www.example.org")[0], quic_initials("weixin.qq.com")[0]]
    server, resolver = ip4("198.51.100.10"), ip4("10.0.0.53")
    data = bytes(1400)
    frames: list[bytes] = []
    hello_count = 0
    for i in range(count):
        client = ip4(f"10.0.{(i // 250) % 200}.{i % 250 + 1}")
        port = 20000 + (i % 20000)
        roll = rng.random() * 100
        if roll < 55:
            frame = tcp(server, client, 443, port, i * 1400, 1000, 0x10, data)
        elif roll < 80:
            frame = tcp(client, server, port, 443, 1000, i * 1400, 0x10)
        elif roll < 85:
            frame = tcp(client, server, port, 443, 1000, i * 1400, 0x18, b"\x17\x03\x03" + bytes(200))
        elif roll < 93:
            frame = udp(client, server, port, 443, b"\x40" + bytes(1100))
        elif roll < 96:
            frame = udp(client, resolver, port, 53, dns_query(f"host{i % 50}.example.org"))
        elif roll < 98:
            hello_count += 1
            hello = hellos[0] if hello_count % blocked_every == 0 else hellos[1 + hello_count % 2]
            frame = tcp(client, server, port, 443, 5000 + i, 7000, 0x18, hello)
        elif roll < 99:
            frame = udp(client, server, port, 443, initials[i % 2])
        else:
            frame = tcp(client, server, port, 443, 5000 + i, 0, 0x02)
        frames.append(ether(frame))
    return frames


def write_pcapng(path: Path, frames: list[tuple[float, bytes]], linktype: int = 1) -> None:
    """Section header, one interface (microsecond timestamps), enhanced packet blocks."""

    def block(kind: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        length = 12 + len(body)
        return struct.pack("<II", kind, length) + body + struct.pack("<I", length)

    with path.open("wb") as out:
        out.write(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        out.write(block(0x00000001, struct.pack("<HHI", linktype, 0, 65535)))
        for ts, frame in frames:
            micros = int(ts * 1_000_000)
            out.write(
                block(
                    0x00000006,
                    struct.pack("<IIIII", 0, micros >> 32, micros & 0xFFFFFFFF, len(frame), len(frame)) + frame,
                )
            )
