"""Privilege drop: started as root on port 53 with server.user set, the running server has
no root uid or gid, no supplementary groups and no capabilities, and still answers."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import tempfile
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from test_reliability_tools import metric, scrape, status_fields

from harness import Netblock, Nsd, free_port, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="privilege drop is tested when started as root (CI)")


def _privileged_address() -> tuple[str, int]:
    """A loopback address and a port below 1024 (53 unless something holds it everywhere)."""
    for port in (53, 953, 553, 853):
        for last in range(1, 20):
            address = f"127.0.53.{last}"
            try:
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as sock:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        sock.bind((address, port))
            except OSError:
                continue
            return address, port
    pytest.fail("no loopback address with a privileged port free")


def test_drops_to_unprivileged_user_after_binding_53(tmp_path: Path, upstream: Nsd) -> None:
    nobody = pwd.getpwnam("nobody")
    address, low_port = _privileged_address()
    # Where the unprivileged server writes its events: a folder it owns (like /var/lib/netblock).
    var = Path(tempfile.mkdtemp(prefix="netblock-priv-"))
    os.chown(var, nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    config = {
        "server": {"listen": [f"127.0.0.1:{port}", f"{address}:{low_port}"], "user": "nobody"},
        "events": {"sqlite": str(var / "events.db"), "jsonl": str(var / "events.jsonl")},
    }
    try:
        with Netblock(tmp_path, [upstream.address], config=config, port=port) as server:
            status = status_fields(server.pid)
            uids = status["Uid"].split()
            gids = status["Gid"].split()
            assert uids == [str(nobody.pw_uid)] * 4, status["Uid"]  # real, effective, saved, fs
            assert gids == [str(nobody.pw_gid)] * 4, status["Gid"]
            assert status["Groups"] == ""
            assert int(status["CapEff"], 16) == 0
            assert int(status["CapPrm"], 16) == 0
            # Still serving, on the privileged port too, and still recording events.
            on53 = dns.query.udp(dns.message.make_query("www.example.test", "A"), address, port=low_port, timeout=3)
            assert on53.rcode() == dns.rcode.NOERROR and on53.answer
            tcp53 = dns.query.tcp(dns.message.make_query("weixin.qq.com", "A"), address, port=low_port, timeout=3)
            assert tcp53.rcode() == dns.rcode.NXDOMAIN
            written = lambda: metric(scrape(server.metrics_port), "netblock_events_written_total")  # noqa: E731
            assert wait_for(lambda: written() >= 1, 10)
            # A reload (SIGHUP) still works as the unprivileged user.
            reloads = lambda: metric(scrape(server.metrics_port), "netblock_policy_reloads_total",  # noqa: E731
                                     'result="success"')
            before = reloads()
            server.signal(signal.SIGHUP)
            assert wait_for(lambda: reloads() == before + 1, 10)
            assert "Traceback" not in server.log()
    finally:
        for child in var.iterdir():
            child.unlink()
        var.rmdir()


def test_unknown_user_fails_clearly(tmp_path: Path, upstream: Nsd) -> None:
    config = {"server": {"user": "no-such-user-netblock"}}
    server = Netblock(tmp_path, [upstream.address], config=config).start(expect_fail=True)
    assert server.proc is not None
    code = server.proc.wait(15)
    assert code != 0
    assert "no such user 'no-such-user-netblock'" in server.log()
    server.stop()
