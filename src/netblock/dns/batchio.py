"""Batched UDP I/O: recvmmsg(2) and sendmmsg(2) through ctypes (Linux).

The event loop's datagram endpoint makes two system calls and an address tuple per query;
for a remembered answer that is most of the work (bench/RESULTS.md). Here one call
receives up to BATCH queries and one call sends their answers, each addressed to the very
sockaddr buffer its query came from and read by the kernel straight from its bytes object.
Forwarded queries are answered later with a plain sendto().
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import socket
import sys
from collections.abc import Callable

BATCH = 64  # datagrams per system call
QUERY_SLOT = 65536  # any UDP datagram fits: the pages a slot does not use are never touched
MSG_DONTWAIT = 0x40
_BUFFER_FULL = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ENOMEM)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def _libc_calls() -> tuple[Callable[..., int], Callable[..., int]] | None:
    try:
        # PyDLL: the calls never block (MSG_DONTWAIT), so they keep the GIL instead of handing
        # it to another thread twice per batch.
        libc = ctypes.PyDLL(ctypes.util.find_library("c") or None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    return recvmmsg, sendmmsg


_CALLS = _libc_calls()


# CPython keeps a bytes object's octets inline at a fixed offset from its address
# (PyBytesObject.ob_sval): send() points the kernel there instead of copying each answer.
_BYTES_DATA = bytes.__basicsize__ - 1


def _bytes_layout_known() -> bool:
    if sys.implementation.name != "cpython":  # elsewhere id() need not be an address
        return False
    probe = b"netblock: where a bytes object keeps its octets"
    return ctypes.string_at(id(probe) + _BYTES_DATA, len(probe)) == probe


def available() -> bool:
    """recvmmsg/sendmmsg are there, the structs have the 64-bit layout send() writes and
    bytes objects the layout it reads."""
    return (_CALLS is not None and ctypes.sizeof(ctypes.c_void_p) == 8 and ctypes.sizeof(_IoVec) == 16
            and _bytes_layout_known())


_HDR = ctypes.sizeof(_MMsgHdr)
_HDR_WORDS, _HDR_QWORDS = _HDR // 4, _HDR // 8
_LEN_WORD = _MMsgHdr.len.offset // 4
if _MMsgHdr.hdr.offset + _MsgHdr.name.offset != 0:  # send() sets msg_name as a header's first qword
    raise ImportError("unexpected struct mmsghdr layout")


class BatchSocket:
    """A bound, non-blocking UDP socket with receive and send rings of BATCH slots.

    receive() gives a batch of (datagram, raw source); send() answers some of them by index.
    """

    def __init__(self, sock: socket.socket) -> None:
        assert _CALLS is not None
        self.sock = sock
        self.fd = sock.fileno()
        self._recvmmsg, self._sendmmsg = _CALLS
        self.address_size = 16 if sock.family == socket.AF_INET else 28  # sockaddr_in / sockaddr_in6
        # Anonymous mappings: zero pages until the kernel writes a datagram into them.
        self._queries = mmap.mmap(-1, BATCH * QUERY_SLOT)
        self._sources = mmap.mmap(-1, BATCH * self.address_size)
        self._recv_iov = (_IoVec * BATCH)()
        self._send_iov = (_IoVec * BATCH)()
        self._recv = (_MMsgHdr * BATCH)()
        self._send = (_MMsgHdr * BATCH)()
        queries = ctypes.addressof(ctypes.c_char.from_buffer(self._queries))
        self._sources_at = ctypes.addressof(ctypes.c_char.from_buffer(self._sources))
        for i in range(BATCH):
            self._recv_iov[i].base, self._recv_iov[i].len = queries + i * QUERY_SLOT, QUERY_SLOT
            for header, iov in ((self._recv[i].hdr, self._recv_iov), (self._send[i].hdr, self._send_iov)):
                header.name = self._sources_at + i * self.address_size
                header.namelen = self.address_size
                header.iov = ctypes.addressof(iov) + i * ctypes.sizeof(_IoVec)
                header.iovlen = 1
        # The kernel writes namelen and flags back: each receive starts from this copy.
        self._recv_template = bytes(self._recv)
        self._recv_size = ctypes.sizeof(self._recv)
        self._recv_u32 = memoryview(self._recv).cast("B").cast("I")
        self._send_u64 = memoryview(self._send).cast("B").cast("Q")
        self._send_iov_u64 = memoryview(self._send_iov).cast("B").cast("Q")

    def receive(self) -> list[tuple[bytes, bytes]]:
        """The datagrams waiting, up to BATCH, each with its raw source sockaddr; none on an
        error (an ICMP error for a client that went away is reported here: nothing to do).
        A datagram always fits its slot (QUERY_SLOT), so the kernel never truncates one."""
        ctypes.memmove(self._recv, self._recv_template, self._recv_size)
        count = self._recvmmsg(self.fd, self._recv, BATCH, MSG_DONTWAIT, None)
        if count <= 0:
            return []
        # Slicing an mmap gives bytes in one step.
        words, queries, sources, size = self._recv_u32, self._queries, self._sources, self.address_size
        return [(queries[i * QUERY_SLOT : i * QUERY_SLOT + words[i * _HDR_WORDS + _LEN_WORD]],
                 sources[i * size : i * size + size]) for i in range(count)]

    def send(self, answers: list[tuple[int, bytes]]) -> tuple[int, int]:
        """Send answers, each to the source of the datagram with that index in the last
        receive(). Returns how many could not be sent: (the send buffer was full, the
        destination was refused)."""
        # The iovecs point into the answers themselves: `answers` keeps them alive, and
        # sendmmsg keeps the GIL (PyDLL) until the kernel has copied them.
        vectors, names, sources, size = self._send_iov_u64, self._send_u64, self._sources_at, self.address_size
        for j, (i, answer) in enumerate(answers):
            vectors[2 * j] = id(answer) + _BYTES_DATA
            vectors[2 * j + 1] = len(answer)
            names[j * _HDR_QWORDS] = sources + i * size
        queued, sent, refused = len(answers), 0, 0
        while sent < queued:
            count = self._sendmmsg(self.fd, ctypes.byref(self._send, sent * _HDR), queued - sent, MSG_DONTWAIT)
            if count > 0:
                sent += count
                continue
            if ctypes.get_errno() in _BUFFER_FULL:
                break
            # sendmmsg stops at a message the kernel refuses (a source port 0, a broadcast
            # address): that one is skipped, the others still go.
            sent += 1
            refused += 1
        return queued - sent, refused


def source_address(raw: bytes) -> tuple[str, tuple[str, int] | tuple[str, int, int, int]]:
    """A raw sockaddr_in or sockaddr_in6 as (client address, address tuple for sendto)."""
    port = raw[2] << 8 | raw[3]
    if len(raw) == 16:
        host = socket.inet_ntop(socket.AF_INET, raw[4:8])
        return host, (host, port)
    host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    # sin6_flowinfo is in network order, sin6_scope_id in the host's
    flowinfo, scope = int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], sys.byteorder)
    client = host
    if scope:  # a link-local client, written as the event loop writes it: fe80::1%eth0
        try:
            client = f"{host}%{socket.if_indextoname(scope)}"
        except OSError:
            client = f"{host}%{scope}"
    return client, (host, port, flowinfo, scope)
