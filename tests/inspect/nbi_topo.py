"""Three network namespaces for inspector tests: client, router, server.

    cli [10.200.1.2, fd00:200:1::2] <-veth-> [.1] rtr [10.200.2.1] <-veth-> [10.200.2.2, fd00:200:2::2] srv

Offloads are off so captures hold wire-size segments. Everything is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

CLI4, RTR4_C, RTR4_S, SRV4 = "10.200.1.2", "10.200.1.1", "10.200.2.1", "10.200.2.2"
CLI6, RTR6_C, RTR6_S, SRV6 = "fd00:200:1::2", "fd00:200:1::1", "fd00:200:2::1", "fd00:200:2::2"
# A second client address whose connections get a tiny MSS from the server: split hellos.
SPLIT4, SPLIT6 = "10.200.1.3", "fd00:200:1::3"
NAMES = ("weixin.qq.com", "*.weixin.qq.com", "example.org", "*.kaspersky.com", "kaspersky.com", "dns.google")


def is_root() -> bool:
    return os.geteuid() == 0


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.returncode}: {done.stderr.strip()}")
    return done


class Topology:
    def __init__(self, tag: str, workdir: Path) -> None:
        suffix = f"{tag}{os.getpid() % 10000}"
        self.cli, self.rtr, self.srv = f"nbic{suffix}", f"nbir{suffix}", f"nbis{suffix}"
        self.rtr_cif = "rc0"  # router side facing the client (the inspector's interface)
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    # -- set-up ----------------------------------------------------------------------
    def up(self) -> Topology:
        for ns in (self.cli, self.rtr, self.srv):
            sh("ip", "netns", "del", ns, check=False)  # left over by a killed run with our PID
            sh("ip", "netns", "add", ns)
            self.ns(ns, "ip", "link", "set", "lo", "up")
        sh(
            "ip",
            "link",
            "add",
            "c0",
            "netns",
            self.cli,
            "type",
            "veth",
            "peer",
            "name",
            "rc0",
            "netns",
            self.rtr,
        )
        sh(
            "ip",
            "link",
            "add",
            "rs0",
            "netns",
            self.rtr,
            "type",
            "veth",
            "peer",
            "name",
            "s0",
            "netns",
            self.srv,
        )
        self._addr(self.cli, "c0", f"{CLI4}/24", f"{CLI6}/64")
        self._addr(self.rtr, "rc0", f"{RTR4_C}/24", f"{RTR6_C}/64")
        self._addr(self.rtr, "rs0", f"{RTR4_S}/24", f"{RTR6_S}/64")
        self._addr(self.srv, "s0", f"{SRV4}/24", f"{SRV6}/64")
        self.ns(self.srv, "ip", "addr", "add", "10.200.2.3/24", "dev", "s0")
        self.ns(self.cli, "ip", "addr", "add", f"{SPLIT4}/24", "dev", "c0")
        # deprecated (preferred_lft 0): never chosen as a source unless a client binds it
        self.ns(self.cli, "ip", "addr", "add", f"{SPLIT6}/64", "dev", "c0", "nodad", "preferred_lft", "0")
        self.ns(self.srv, "ip", "route", "add", f"{SPLIT4}/32", "via", RTR4_S, "advmss", "88")
        self.ns(self.srv, "ip", "-6", "route", "add", f"{SPLIT6}/128", "via", RTR6_S, "advmss", "88")
        self.ns(self.cli, "ip", "route", "add", "default", "via", RTR4_C)
        self.ns(self.cli, "ip", "-6", "route", "add", "default", "via", RTR6_C)
        self.ns(self.srv, "ip", "route", "add", "default", "via", RTR4_S)
        self.ns(self.srv, "ip", "-6", "route", "add", "default", "via", RTR6_S)
        self.ns(self.rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ns(self.rtr, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        if shutil.which("ethtool"):
            for ns, dev in ((self.cli, "c0"), (self.rtr, "rc0"), (self.rtr, "rs0"), (self.srv, "s0")):
                self.ns(ns, "ethtool", "-K", dev, "gro", "off", "gso", "off", "tso", "off", check=False)
        # Neighbours settle before anything is measured.
        self.ns(self.cli, "ping", "-c1", "-W2", SRV4, check=False)
        self.ns(self.cli, "ping", "-6", "-c1", "-W2", SRV6, check=False)
        return self

    def _addr(self, ns: str, dev: str, v4: str, v6: str) -> None:
        self.ns(ns, "ip", "addr", "add", v4, "dev", dev)
        self.ns(ns, "ip", "addr", "add", v6, "dev", dev, "nodad")
        self.ns(ns, "ip", "link", "set", dev, "up")

    # -- running things --------------------------------------------------------------
    def ns(self, ns: str, *args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout)

    def spawn(
        self,
        ns: str,
        *args: str,
        stdout: int | None = None,
        stderr: int | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdout=stdout or out,
            stderr=stderr or out,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def down(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        for ns in (self.cli, self.rtr, self.srv):
            sh("ip", "netns", "del", ns, check=False)

    # -- servers ---------------------------------------------------------------------
    def certificate(self) -> tuple[Path, Path]:
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        if not cert.exists():
            san = ",".join(f"DNS:{n}" for n in NAMES)
            sh(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                "/CN=weixin.qq.com",
                "-addext",
                f"subjectAltName={san}",
            )
        return cert, key

    def tls_servers(self) -> None:
        """openssl s_server on 443 of every server address, one process each."""
        cert, key = self.certificate()
        for address in (SRV4, f"[{SRV6}]", "10.200.2.3"):
            self.spawn(
                self.srv,
                "openssl",
                "s_server",
                "-quiet",
                "-www",
                "-accept",
                f"{address}:443",
                "-cert",
                str(cert),
                "-key",
                str(key),
            )
        self.wait_port(self.srv, 443)

    def http_server(self) -> None:
        root = self.workdir / "www"
        root.mkdir(exist_ok=True)
        (root / "index.html").write_text("hello\n")
        self.spawn(self.srv, PY, "-m", "http.server", "80", "--bind", "::", "--directory", str(root))
        self.wait_port(self.srv, 80)

    def quic_server(self) -> None:
        cert, key = self.certificate()
        self.spawn(
            self.srv,
            PY,
            str(HERE / "quic_server.py"),
            "--cert",
            str(cert),
            "--key",
            str(key),
            "--port",
            "443",
            log=self.workdir / "quic_server.log",
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "UNCONN" in self.ns(self.srv, "ss", "-lun", "sport = :443").stdout:
                return
            time.sleep(0.1)
        raise RuntimeError("aioquic server did not start")

    def wait_port(self, ns: str, port: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if f":{port} " in self.ns(ns, "ss", "-ltnH").stdout:
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {port} in {ns}")

    # -- clients ---------------------------------------------------------------------
    def curl(self, url: str, name: str, address: str, *extra: str, timeout: float = 6) -> int:
        port = "443" if url.startswith("https") else "80"
        resolve = f"{name}:{port}:{address}" if ":" not in address else f"{name}:{port}:[{address}]"
        done = self.ns(
            self.cli,
            "curl",
            "-sk",
            "-o",
            "/dev/null",
            "--max-time",
            str(timeout),
            "--resolve",
            resolve,
            *extra,
            url,
            check=False,
            timeout=timeout + 5,
        )
        return done.returncode

    def s_client(self, address: str, *extra: str, timeout: float = 6) -> subprocess.CompletedProcess[str]:
        target = f"[{address}]:443" if ":" in address else f"{address}:443"
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.cli,
                "timeout",
                str(timeout),
                "openssl",
                "s_client",
                "-connect",
                target,
                *extra,
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=timeout + 5,
            check=False,
        )

    def quic(self, address: str, name: str, version: str = "v1", *extra: str, timeout: float = 4) -> int:
        done = self.ns(
            self.cli,
            PY,
            str(HERE / "quic_client.py"),
            "--host",
            address,
            "--name",
            name,
            "--version",
            version,
            "--timeout",
            str(timeout),
            *extra,
            check=False,
            timeout=timeout + 10,
        )
        return done.returncode

    # -- capture ---------------------------------------------------------------------
    def tcpdump(self, path: Path, expression: str = "") -> subprocess.Popen[bytes]:
        """tcpdump on the router's client-side interface; returns once it is listening."""
        log = path.with_suffix(".log")
        args = ["tcpdump", "-i", self.rtr_cif, "--immediate-mode", "-U", "-n", "-s", "0", "-w", str(path)]
        if expression:
            args.append(expression)
        proc = self.spawn(self.rtr, *args, log=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "listening on" in log.read_text(errors="replace"):
                return proc
            if proc.poll() is not None:
                raise RuntimeError(f"tcpdump failed: {log.read_text()}")
            time.sleep(0.05)
        raise RuntimeError("tcpdump did not start")

    def stop_tcpdump(self, proc: subprocess.Popen[bytes]) -> None:
        time.sleep(0.2)  # the last packets reach the buffer
        self.stop(proc, signal.SIGINT)
