"""QUIC v1 (RFC 9001) and v2 (RFC 9369) client Initial decryption on raw bytes.

Only the client's first flight matters: it is protected with keys anyone can derive from
the destination connection ID, and its CRYPTO frames carry the TLS ClientHello. The
CRYPTO stream is reassembled by offset across packets, in any order, by `CryptoAssembler`.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

V1 = 0x00000001
V2 = 0x6B3343CF
SALTS = {
    V1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    V2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
LABELS = {V1: (b"quic key", b"quic iv", b"quic hp"), V2: (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")}
# Long-header packet type bits of an Initial: v2 renumbered them (RFC 9369 §3.2).
INITIAL_TYPE = {V1: 0, V2: 1}
RETRY_TYPE = {V1: 3, V2: 0}
MAX_CRYPTO = 64 * 1024


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446 §7.1), SHA-256."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


@dataclass(frozen=True, slots=True)
class Keys:
    key: bytes
    iv: bytes
    hp: bytes


def client_initial_keys(dcid: bytes, version: int = V1) -> Keys:
    initial_secret = hmac.digest(SALTS[version], dcid, "sha256")  # HKDF-Extract is one HMAC
    client_secret = hkdf_expand_label(initial_secret, b"client in", 32)
    key_label, iv_label, hp_label = LABELS[version]
    return Keys(
        key=hkdf_expand_label(client_secret, key_label, 16),
        iv=hkdf_expand_label(client_secret, iv_label, 12),
        hp=hkdf_expand_label(client_secret, hp_label, 16),
    )


class _Crypto:
    """Ciphers for one DCID, built once: ECB for header protection, GCM for payloads."""

    __slots__ = ("ecb", "gcm", "iv")

    def __init__(self, keys: Keys) -> None:
        self.ecb = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
        self.gcm = AESGCM(keys.key)
        self.iv = keys.iv


class KeyCache:
    """The most recent DCIDs' ciphers (deriving costs ~20 µs, reuse ~2 µs)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, bytes], _Crypto] = OrderedDict()

    def get(self, version: int, dcid: bytes) -> _Crypto:
        key = (version, dcid)
        found = self._items.get(key)
        if found is None:
            found = self._items[key] = _Crypto(client_initial_keys(dcid, version))
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return found


def read_varint(d: bytes, p: int) -> tuple[int, int]:
    """(value, new offset); raises IndexError when truncated."""
    first = d[p]
    prefix = first >> 6
    n = 1 << prefix
    if p + n > len(d):
        raise IndexError("truncated varint")
    value = first & 0x3F
    for i in range(1, n):
        value = (value << 8) | d[p + i]
    return value, p + n


@dataclass(frozen=True, slots=True)
class Initial:
    version: int
    dcid: bytes
    scid: bytes
    packet_number: int
    frames: bytes  # decrypted payload


def is_long_header_initial(d: bytes) -> bool:
    """Cheap pre-check: long header, fixed bit, a version we can decrypt."""
    if len(d) < 7 or (d[0] & 0xC0) != 0xC0:
        return False
    version = int.from_bytes(d[1:5], "big")
    return version in SALTS and ((d[0] >> 4) & 3) == INITIAL_TYPE[version]


def decrypt_initials(datagram: bytes, cache: KeyCache) -> tuple[list[Initial], bool]:
    """Every client Initial of a UDP datagram (coalesced packets are walked).

    Returns (initials, undecryptable): undecryptable is True when an Initial of a known
    version failed authentication (later client Initials use the server's CID)."""
    out: list[Initial] = []
    failed = False
    p = 0
    n = len(datagram)
    while p + 7 <= n:
        first = datagram[p]
        if (first & 0x80) == 0:
            break  # a short-header packet ends the datagram
        version = int.from_bytes(datagram[p + 1 : p + 5], "big")
        if version not in SALTS:
            break
        ptype = (first >> 4) & 3
        if ptype == RETRY_TYPE[version]:
            break
        q = p + 5
        dcid_len = datagram[q]
        if dcid_len > 20 or q + 1 + dcid_len >= n:
            break
        dcid = datagram[q + 1 : q + 1 + dcid_len]
        q += 1 + dcid_len
        scid_len = datagram[q]
        if scid_len > 20 or q + 1 + scid_len > n:
            break
        scid = datagram[q + 1 : q + 1 + scid_len]
        q += 1 + scid_len
        try:
            if ptype == INITIAL_TYPE[version]:
                token_len, q = read_varint(datagram, q)
                q += token_len
            length, pn_offset = read_varint(datagram, q)
        except IndexError:
            break
        end = pn_offset + length
        if end > n or length < 20:
            break
        if ptype == INITIAL_TYPE[version]:
            initial = _decrypt(datagram, p, pn_offset, end, version, dcid, scid, cache)
            if initial is None:
                failed = True
            else:
                out.append(initial)
        p = end
    return out, failed


def _decrypt(
    d: bytes, start: int, pn_offset: int, end: int, version: int, dcid: bytes, scid: bytes, cache: KeyCache
) -> Initial | None:
    crypto = cache.get(version, dcid)
    sample_at = pn_offset + 4
    if sample_at + 16 > end:
        return None
    mask = crypto.ecb.update(d[sample_at : sample_at + 16])
    first = d[start] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(d[pn_offset + i] ^ mask[1 + i] for i in range(pn_len))
    header = bytes((first,)) + d[start + 1 : pn_offset] + pn_bytes
    packet_number = int.from_bytes(pn_bytes, "big")
    nonce = (int.from_bytes(crypto.iv, "big") ^ packet_number).to_bytes(12, "big")
    try:
        frames = crypto.gcm.decrypt(nonce, d[pn_offset + pn_len : end], header)
    except InvalidTag:
        return None
    return Initial(version=version, dcid=dcid, scid=scid, packet_number=packet_number, frames=frames)


def crypto_frames(frames: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) of each CRYPTO frame; stops at the first frame we do not know."""
    out: list[tuple[int, bytes]] = []
    p = 0
    n = len(frames)
    try:
        while p < n:
            ftype = frames[p]
            if ftype == 0x00 or ftype == 0x01:  # PADDING, PING
                p += 1
            elif ftype == 0x06:  # CRYPTO
                offset, p = read_varint(frames, p + 1)
                length, p = read_varint(frames, p)
                if p + length > n:
                    break
                out.append((offset, frames[p : p + length]))
                p += length
            elif ftype in (0x02, 0x03):  # ACK
                p += 1
                _, p = read_varint(frames, p)  # largest acknowledged
                _, p = read_varint(frames, p)  # delay
                count, p = read_varint(frames, p)
                _, p = read_varint(frames, p)  # first range
                if count > 256:
                    break
                for _ in range(count * 2 + (3 if ftype == 0x03 else 0)):
                    _, p = read_varint(frames, p)
            elif ftype == 0x1C:  # CONNECTION_CLOSE
                p += 1
                _, p = read_varint(frames, p)
                _, p = read_varint(frames, p)
                reason, p = read_varint(frames, p)
                p += reason
            else:
                break
    except IndexError:
        pass
    return out


class CryptoAssembler:
    """One flow's CRYPTO stream, from fragments in any order; `contiguous()` is the
    prefix from offset 0 that has arrived so far."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: dict[int, bytes] = {}
        self.size = 0

    def add(self, offset: int, data: bytes) -> None:
        if offset > MAX_CRYPTO or not data or self.size > MAX_CRYPTO:
            return
        old = self.chunks.get(offset)
        if old is None or len(old) < len(data):
            self.chunks[offset] = data
            self.size += len(data)

    def contiguous(self) -> bytes:
        out = bytearray()
        for offset in sorted(self.chunks):
            if offset > len(out):
                break
            data = self.chunks[offset]
            if offset + len(data) > len(out):
                out += data[len(out) - offset :]
        return bytes(out)
