"""A fleet: two netblock servers write to one real PostgreSQL; the report counts both."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest

from netblock.events import EventRecorder
from netblock.store import SCHEMA_VERSION, PostgresStore, StoreError, open_store
from test_events import BLOCK
from test_events_server import write_lists

from harness import REPO, Netblock, Nsd, free_port, wait_for

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is a test dependency (pyproject [test])")


def pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    assert found, "Debian's postgresql package is needed (tests/apt-packages.txt)"
    return found[-1]


class Postgres:
    """Debian's PostgreSQL in a temporary cluster on a loopback port, stopped by pg_ctl."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="netblock-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use the package's user
            pwd.getpwnam("postgres")
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/netblock"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, timeout=120, check=False
        )

    def start(self) -> None:
        if not self.data.exists():
            done = self.run(
                pg_bin("initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            )
            assert done.returncode == 0, done.stderr
        done = self.run(
            pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off",
            "start",
        )
        assert done.returncode == 0, done.stderr + (self.dir / "log").read_text(errors="replace")

    def stop(self) -> None:
        self.run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    pg.start()
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE netblock")
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(pg.dir, ignore_errors=True)


def count(dsn: str, where: str = "TRUE", params: tuple[object, ...] = ()) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM events WHERE {where}", params).fetchone()[0])


def test_two_instances_one_database(postgres: Postgres, upstream: Nsd, tmp_path: Path) -> None:
    lists, inventory = write_lists(tmp_path / "lists")
    servers = []
    for instance in ("edge-a", "edge-b"):
        config = {
            "server": {"instance": instance},
            "events": {"postgres": postgres.dsn, "flush_interval": 0.05},
            "devices": {"inventory": str(inventory), "neighbours": False},
        }
        servers.append(Netblock(tmp_path / instance, [upstream.address], lists=lists, config=config))
    try:
        for nb in servers:
            nb.start()
        a, b = servers
        for i in range(7):
            assert a.query(f"a{i}.weixin.qq.com", source="127.0.0.2").rcode() == dns.rcode.NXDOMAIN
        for i in range(2):  # the same device, seen by the other instance
            assert b.query(f"b{i}.wechat.com", source="127.0.0.2").rcode() == dns.rcode.NXDOMAIN
        for i in range(4):
            assert b.query(f"c{i}.weixin.qq.com", source="127.0.0.3").rcode() == dns.rcode.NXDOMAIN
        b.query("mail.example.test", source="127.0.0.4")  # monitored
        assert wait_for(lambda: count(postgres.dsn) == 14, 15), count(postgres.dsn)
        assert not (a.dir / "events.db").exists()  # PostgreSQL instead of SQLite, not beside it
        assert count(postgres.dsn, "instance = %s", ("edge-a",)) == 7
        for args in (["--db", postgres.dsn], ["-c", str(a.config_path)]):  # either way to the same store
            done = subprocess.run(
                [sys.executable, "-m", "netblock", "report", "--format", "json", *args],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO,
            )
            assert done.returncode == 0, done.stderr
            devices = {d["device"]: d for d in json.loads(done.stdout)["devices"]}
            assert devices["laptop-two"]["attempts"] == 9
            assert devices["laptop-two"]["instances"] == {"edge-a": 7, "edge-b": 2}
            assert devices["laptop-two"]["by_vendor"] == {"Tencent WeChat (Weixin)": 9}
            assert devices["laptop-three"]["attempts"] == 4
            assert devices["phone-four"]["monitored"] == 1
            assert sum(s["block"] for s in devices["laptop-two"]["timeline"]) == 7 + 2
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "netblock",
                "events",
                "--db",
                postgres.dsn,
                "--last",
                "20",
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        instances = [json.loads(line)["instance"] for line in done.stdout.splitlines()]
        assert sorted(instances) == ["edge-a"] * 7 + ["edge-b"] * 7
        assert "password" not in a.log()
    finally:
        for nb in servers:
            nb.stop()


def test_schema_version_and_reconnect_after_restart(postgres: Postgres) -> None:
    store = open_store(postgres.dsn)
    assert isinstance(store, PostgresStore)
    assert store.query("SELECT version FROM netblock_schema") == [(SCHEMA_VERSION,)]
    indexes = {r[0] for r in store.query("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
    assert {"events_device_ts", "events_ts"} <= indexes
    store.close()

    rec = EventRecorder(None, 10_000, "edge-r", store=postgres.dsn, flush_interval=0.05)
    rec.start()
    try:

        def send(n: int) -> None:
            for _ in range(n):
                rec.record(time.time(), "10.9.9.9", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")

        send(10)
        assert wait_for(lambda: rec.written == 10, 10)
        postgres.stop()
        send(10)  # the database is gone: dropped and counted, not queued forever
        assert wait_for(lambda: rec.dropped >= 10, 10)
        postgres.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and count(postgres.dsn, "instance = %s", ("edge-r",)) < 11:
            send(1)  # writing resumes by itself once the database is back
            time.sleep(0.5)
        assert count(postgres.dsn, "instance = %s", ("edge-r",)) >= 11
    finally:
        rec.stop()
    assert count(postgres.dsn, "instance = %s", ("edge-r",)) == rec.written


def test_bad_dsn_is_a_clear_error() -> None:
    port = free_port()  # nothing listens here
    with pytest.raises(StoreError) as err:
        open_store(f"postgresql://postgres:s3cret@127.0.0.1:{port}/netblock")
    assert "postgresql" in str(err.value) and "s3cret" not in str(err.value)
