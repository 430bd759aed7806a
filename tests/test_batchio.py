"""Batched UDP I/O (recvmmsg/sendmmsg): datagrams and their sources come back intact over
IPv4 and IPv6, answers reach the right client, a burst larger than a batch is answered
whole; the server serves the same with batch_io on and off."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from netblock.dns import batchio

from harness import Netblock, Nsd, free_port


def _bound(family: int, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_batch_receives_sources_and_answers_each_client(family: int, host: str) -> None:
    server = _bound(family, host)
    server.setblocking(False)
    io = batchio.BatchSocket(server)
    clients = [_bound(family, host) for _ in range(3)]
    try:
        sent = []
        for n in range(90):  # more than one batch
            payload = struct.pack("!H", n) + bytes([n % 251]) * (n * 7)  # 2 .. 625 octets
            clients[n % 3].sendto(payload, server.getsockname())
            sent.append((n % 3, payload))
        received = []
        while len(received) < len(sent):
            batch = io.receive()
            assert 0 < len(batch) <= batchio.BATCH
            answers = []
            for i, (data, raw) in enumerate(batch):
                address, reply_to = batchio.source_address(raw)
                received.append((address, reply_to[1], data))
                if data[1] % 2 == 0:  # every other one answered: answers go by index
                    answers.append((i, b"re:" + data[:2]))
            assert io.send(answers) == (0, 0)
        assert io.receive() == []  # nothing left: no blocking, no error
        by_port = {c.getsockname()[1]: index for index, c in enumerate(clients)}
        assert [(by_port[port], data) for _, port, data in received] == sent
        assert {address for address, _, _ in received} == {host}
        for index, client in enumerate(clients):
            client.settimeout(2)
            expected = [b"re:" + p[:2] for who, p in sent if who == index and p[1] % 2 == 0]
            assert [client.recv(100) for _ in expected] == expected
            client.settimeout(0.05)
            with pytest.raises(TimeoutError):
                client.recv(100)  # and nothing for the unanswered ones
    finally:
        for sock in (server, *clients):
            sock.close()


def test_source_address_decodes_both_families() -> None:
    v4 = struct.pack("!HH4s8x", socket.AF_INET, 5300, socket.inet_pton(socket.AF_INET, "192.0.2.7"))
    assert batchio.source_address(v4) == ("192.0.2.7", ("192.0.2.7", 5300))
    v6 = struct.pack("!HHI16s", socket.AF_INET6, 53, 7, socket.inet_pton(socket.AF_INET6, "2001:db8::1")) + \
        struct.pack("=I", 0)  # flowinfo in network order, the scope id in host order
    assert batchio.source_address(v6) == ("2001:db8::1", ("2001:db8::1", 53, 7, 0))


@pytest.fixture(scope="module", params=[True, False], ids=["batch_io", "event_loop"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           upstream: Nsd) -> Iterator[Netblock]:
    config = {"server": {"batch_io": request.param}, "access": {"rate_limit": {"queries": 0}}}
    with Netblock(tmp_path_factory.mktemp("batchio"), [upstream.address], config=config) as nb:
        yield nb


def test_blocked_forwarded_and_ipv6_answers(server: Netblock) -> None:
    assert server.query("weixin.qq.com", "A").rcode() == dns.rcode.NXDOMAIN
    forwarded = server.query("www.example.test", "A")
    assert forwarded.rcode() == dns.rcode.NOERROR and forwarded.answer
    message = dns.message.make_query("weixin.qq.com", "AAAA")
    assert dns.query.udp(message, "::1", port=server.port, timeout=3).rcode() == dns.rcode.NXDOMAIN


def test_a_burst_of_queries_is_answered_whole(server: Netblock) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(3)
    try:
        ids = set(range(1, 301))
        for qid in ids:
            message = dns.message.make_query(f"n{qid % 7}.weixin.qq.com", "A")
            message.id = qid
            sock.sendto(message.to_wire(), ("127.0.0.1", server.port))
        answered = set()
        while answered != ids:
            answer = dns.message.from_wire(sock.recv(4096))
            assert answer.rcode() == dns.rcode.NXDOMAIN
            answered.add(answer.id)
    finally:
        sock.close()


def test_an_echo_of_a_6000_octet_query_goes_out_whole(server: Netblock) -> None:
    """A 6,000-octet query with QDCOUNT=2 gets unbound's FORMERR echo: the whole query back."""
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 2, 0, 0, 0) + b"\x01a" * 3000
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        sock.sendto(query, ("127.0.0.1", server.port))
        echo = sock.recv(65535)
    finally:
        sock.close()
    assert len(echo) == len(query) and echo[:2] == b"\x42\x42" and echo[3] & 0x0F == dns.rcode.FORMERR


def test_a_query_that_raises_costs_only_itself() -> None:
    """In process: handle() failing on one datagram of a batch; the others are answered."""
    import asyncio
    import dataclasses

    from netblock.config import Config
    from netblock.dns.server import BatchUdpListener, DnsServer

    config = Config()
    config = dataclasses.replace(config, events=dataclasses.replace(config.events, enabled=False))
    server = DnsServer(config)

    def handle(data: bytes, client: str, proto: str, now: float) -> object:
        if data[:2] == b"\x00\x02":
            raise RuntimeError("a bug")
        return data[:2] + b"answer"

    server.handle = handle  # type: ignore[assignment,method-assign]

    async def run() -> list[bytes]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        listener = BatchUdpListener(server, sock)
        client = _bound(socket.AF_INET, "127.0.0.1")
        client.setblocking(False)
        try:
            for qid in (1, 2, 3):
                client.sendto(struct.pack("!H", qid) + b"query", sock.getsockname())
            loop = asyncio.get_running_loop()
            return [await asyncio.wait_for(loop.sock_recv(client, 100), 3) for _ in range(2)]
        finally:
            listener.close()
            client.close()

    assert sorted(asyncio.run(run())) == [b"\x00\x01answer", b"\x00\x03answer"]


@pytest.mark.parametrize("batch_io", [True, False])
def test_wildcard_listeners_of_both_families_share_a_port(tmp_path: Path, upstream: Nsd, batch_io: bool) -> None:
    """config/production.yaml listens on 0.0.0.0:53 and [::]:53: the IPv6 sockets are IPv6
    only, or the second bind fails on Linux's dual-stack default. Queried on loopback only."""
    port = free_port()
    config = {"server": {"listen": [f"0.0.0.0:{port}", f"[::]:{port}"], "batch_io": batch_io}}
    with Netblock(tmp_path, [upstream.address], config=config, port=port) as server:
        for host in ("127.0.0.1", "::1"):
            message = dns.message.make_query("weixin.qq.com", "A")
            assert dns.query.udp(message, host, port=server.port, timeout=3).rcode() == dns.rcode.NXDOMAIN
            assert dns.query.tcp(message, host, port=server.port, timeout=3).rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("batch_io", [True, False])
def test_a_taken_port_is_a_clear_error(tmp_path: Path, batch_io: bool) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        server = Netblock(tmp_path, ["127.0.0.1:9"], config={"server": {"listen": [f"127.0.0.1:{port}"],
                                                                         "batch_io": batch_io}}, port=port)
        server.start(expect_fail=True)
        assert server.proc is not None
        assert server.proc.wait(timeout=30) != 0
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in server.log()
    finally:
        taken.close()


def test_a_refused_destination_costs_only_its_own_answer() -> None:
    """sendmmsg stops at a message the kernel refuses (here a source port 0): the answers
    after it still go out."""
    server = _bound(socket.AF_INET, "127.0.0.1")
    server.setblocking(False)
    io = batchio.BatchSocket(server)
    clients = [_bound(socket.AF_INET, "127.0.0.1") for _ in range(3)]
    try:
        for n, client in enumerate(clients):
            client.sendto(bytes([n]), server.getsockname())
        batch = []
        for _ in range(100):  # loopback delivery is immediate; bounded anyway
            batch += io.receive()
            if len(batch) == 3:
                break
        assert len(batch) == 3
        io._sources[2:4] = b"\x00\x00"  # the first source's port: 0 cannot be sent to
        assert io.send([(i, b"re" + data) for i, (data, _) in enumerate(batch)]) == (0, 1)
        for n, client in enumerate(clients):
            if batch[0][0] == bytes([n]):
                continue
            client.settimeout(2)
            assert client.recv(10) == b"re" + bytes([n])
    finally:
        for sock in (server, *clients):
            sock.close()


def test_a_link_local_source_names_its_interface() -> None:
    raw = struct.pack("!HHI16s", socket.AF_INET6, 53, 0x12345, socket.inet_pton(socket.AF_INET6, "fe80::1")) + \
        struct.pack("=I", socket.if_nametoindex("lo"))
    client, address = batchio.source_address(raw)
    assert client == "fe80::1%lo"
    assert address == ("fe80::1", 53, 0x12345, socket.if_nametoindex("lo"))


def test_the_batch_path_is_available_here() -> None:
    """On CPython and Linux the listener must take the batch path: send() reads answers
    where bytes objects keep their octets, and a wrong guess at that layout would only
    show as a silent fall back to the event loop."""
    assert batchio._bytes_layout_known() and batchio.available()
