"""Shared parts for the reliability tests (no tests here): raw DNS bytes, a scriptable fake
upstream, a real unbound for differential checks, and /metrics scraping.

Everything talks to loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from harness import Nsd, free_port, terminate, wait_for

QNAME = b"\x03www\x07example\x04test\x00"


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0,
           ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def question(name: bytes = QNAME, qtype: int = 1, qclass: int = 1) -> bytes:
    return name + struct.pack("!HH", qtype, qclass)


def opt(udp_size: int = 1232, version: int = 0, flags: int = 0, options: bytes = b"",
        rdlength: int | None = None) -> bytes:
    ttl = (version & 0xFF) << 16 | flags
    size = len(options) if rdlength is None else rdlength
    return b"\x00" + struct.pack("!HHIH", 41, udp_size, ttl, size) + options


def wire_name(name: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in name.rstrip(".").split(".") if p) + b"\x00"


def exchange(port: int, data: bytes, timeout: float = 1.0, host: str = "127.0.0.1") -> bytes | None:
    """Send raw bytes over UDP; the first datagram back, or None after `timeout`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for _ in range(10):  # never our own port: a socket connected to itself reads its own query
        sock.bind((host, 0))
        if sock.getsockname()[1] != port:
            break
        sock.close()
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.send(data)
        try:
            return sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None


def tcp_frames(port: int, frames: list[bytes], expect: int, timeout: float = 2.0) -> list[bytes]:
    """Send length-prefixed (or raw, if a frame is already framed) messages on one connection
    and read up to `expect` answers."""
    answers: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(frames))
        buf = b""
        deadline = time.monotonic() + timeout
        while len(answers) < expect and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65535)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack_from("!H", buf)[0]:
                size = struct.unpack_from("!H", buf)[0]
                answers.append(buf[2 : 2 + size])
                buf = buf[2 + size :]
    return answers


def framed(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


def rcode_of(answer: bytes) -> int:
    """The full rcode: header bits plus the OPT extended bits when an OPT is present."""
    import dns.message

    base = answer[3] & 0x0F
    try:
        message = dns.message.from_wire(answer, ignore_trailing=True)
    except Exception:
        return base
    return int(message.rcode())


def scrape(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        return response.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    label_part = r"\{" + re.escape(labels) + r"\}" if labels else r"(?:\{\})?"
    pattern = "^" + re.escape(name) + label_part + r" (\S+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def upstream_queries(nsd: Nsd, qtype: str) -> int:
    """How many queries of one type NSD has answered. Unlike Nsd.queries(), the `. NS` health
    probe every netblock sends each 30 s does not count, whenever it falls in a test's window."""
    out = subprocess.run(["nsd-control", "-c", str(nsd.conf), "stats_noreset"], capture_output=True, text=True,
                         timeout=10).stdout
    match = re.search(rf"^num\.type\.{qtype}=(\d+)", out, re.M)
    assert match, out
    return int(match.group(1))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


# ---------------------------------------------------------------- a scriptable fake upstream


Handler = Callable[[bytes, tuple[str, int]], "bytes | None"]


def answer_a(query: bytes, address: bytes = b"\xc0\x00\x02\x01", ttl: int = 300) -> bytes:
    """A NOERROR answer to `query` with one A record (the question copied as asked)."""
    end = 12
    while query[end]:
        end += query[end] + 1
    end += 5
    flags = 0x8180 | (query[2] << 8 & 0x0100)
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + address
    return query[:2] + struct.pack("!HHHHH", flags, 1, 1, 0, 0) + query[12:end] + rr


class FakeUpstream:
    """A UDP 'resolver' on 127.0.0.1 run by a thread: records (time, source port, ID,
    question) of every query and answers via `handler` (None: stay silent)."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.port = free_port()
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.1)
        self.seen: list[tuple[float, int, int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeUpstream:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            if len(data) < 12:
                continue
            end = 12
            while end < len(data) and data[end]:
                end += data[end] + 1
            self.seen.append((time.monotonic(), peer[1], data[0] << 8 | data[1], data[12 : end + 5]))
            handler = self.handler
            if handler is None:
                continue
            reply = handler(data, peer)
            if reply is not None:
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- a real unbound


class Unbound:
    """unbound on 127.0.0.1 forwarding everything to `forward` (e.g. the NSD upstream):
    the anchor that netblock's answers are compared with."""

    def __init__(self, workdir: Path, forward: str) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.forward = forward.replace(":", "@")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Unbound:
        conf = self.dir / "unbound.conf"
        conf.write_text(f"""server:
  interface: 127.0.0.1@{self.port}
  port: {self.port}
  username: ""
  chroot: ""
  directory: "{self.dir}"
  pidfile: "{self.dir}/unbound.pid"
  use-syslog: no
  logfile: "{self.dir}/unbound.log"
  do-daemonize: no
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  qname-minimisation: no
  verbosity: 0
  local-zone: "test." nodefault
remote-control:
  control-enable: no
forward-zone:
  name: "."
  forward-addr: {self.forward}
""")
        self.proc = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        probe = header(qid=7) + question()
        if not wait_for(lambda: exchange(self.port, probe, 0.3) is not None, 10):
            self.stop()
            raise RuntimeError("unbound did not start")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def __enter__(self) -> Unbound:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- a windowed UDP load client


class Result:
    __slots__ = ("answer", "latency", "sent")

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.answer: bytes | None = None
        self.latency = 0.0


def blast(port: int, queries: list[bytes], window: int = 100, rate: float = 0.0, timeout: float = 30.0,
          late: float = 3.0) -> list[Result]:
    """Send `queries` (IDs must be distinct) over one UDP socket with at most `window`
    unanswered, or at `rate` per second regardless of answers; collect answers by ID."""
    import select

    results: list[Result | None] = [None] * len(queries)
    index_of = {struct.unpack_from("!H", q)[0]: i for i, q in enumerate(queries)}
    assert len(index_of) == len(queries), "query IDs must be distinct"
    outstanding = 0
    next_query = 0
    started = time.monotonic()
    deadline = started + timeout
    last_sent = started
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        while time.monotonic() < deadline:
            now = time.monotonic()
            if next_query < len(queries):
                if rate:
                    due = int((now - started) * rate) + 1
                    while next_query < min(due, len(queries)):
                        results[next_query] = Result(time.monotonic())
                        try:
                            sock.send(queries[next_query])
                        except BlockingIOError:
                            pass
                        next_query += 1
                        last_sent = time.monotonic()
                else:
                    while outstanding < window and next_query < len(queries):
                        results[next_query] = Result(time.monotonic())
                        sock.send(queries[next_query])
                        next_query += 1
                        outstanding += 1
                        last_sent = time.monotonic()
            elif outstanding <= 0 or now - last_sent > late:
                break
            readable, _, _ = select.select([sock], [], [], 0.0005 if rate else 0.05)
            if not readable:
                if not rate and now - last_sent > late:
                    break
                continue
            for _ in range(256):
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    continue
                index = index_of.get(struct.unpack_from("!H", data)[0]) if len(data) >= 2 else None
                if index is None:
                    continue
                result = results[index]
                if result is not None and result.answer is None:
                    result.answer = data
                    result.latency = time.monotonic() - result.sent
                    outstanding -= 1
    return [r if r is not None else Result(0.0) for r in results]
