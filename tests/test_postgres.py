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
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest

from netblock import store as store_module
from netblock.events import EventRecorder
from netblock.store import COLUMNS, SCHEMA_VERSION, EventStore, PostgresStore, StoreError, open_store
from test_events import BLOCK
from test_events_server import write_lists
from test_store import T0, events_cli, report_of, shape, v1_rows, wide

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
    indexes = {r[0] for r in store.query("SELECT indexname FROM pg_indexes WHERE tablename = 'event_log'")}
    assert {"event_log_shape_ts", "event_log_ts"} <= indexes
    assert store.query("SELECT table_type FROM information_schema.tables WHERE table_name = 'events'") == [
        ("VIEW",)]
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


def fresh_database(pg: Postgres, name: str) -> str:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"


def test_migration_from_version_1(postgres: Postgres) -> None:
    dsn = fresh_database(postgres, "netblock_v1")
    make_v1(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM events WHERE id IN (3, 17, 40, 41)")  # 41, 40: the newest went

    reader = open_store(dsn, create=False)  # a report reads version 1 as it is, and leaves it so
    assert reader.version == 1
    before_rows = reader.query("SELECT * FROM events ORDER BY id")
    before_report = report_of(reader)
    reader.close()
    before_cli = events_cli(dsn)
    assert len(before_rows) == 37 and before_rows[-1][0] == 39

    writer = open_store(dsn)
    assert writer.version == SCHEMA_VERSION
    assert writer.query("SELECT version FROM netblock_schema") == [(SCHEMA_VERSION,)]
    assert writer.query("SELECT table_type FROM information_schema.tables WHERE table_name = 'events'") == [
        ("VIEW",)]
    assert writer.query("SELECT * FROM events ORDER BY id") == before_rows
    assert report_of(writer) == before_report
    assert writer.query("SELECT COUNT(*) FROM event_log") == [(37,)]
    writer.write([(T0, shape(), "new.weixin.qq.com.", "weixin.qq.com")])
    assert writer.query("SELECT MAX(id) FROM events") == [(42,)]  # after the highest ever given
    writer.close()
    assert events_cli(dsn).splitlines()[:-1] == before_cli.splitlines()


def test_two_instances_add_the_same_shape_at_once(postgres: Postgres) -> None:
    dsn = fresh_database(postgres, "netblock_race")
    first, second = open_store(dsn), open_store(dsn)
    try:
        first._shape_id(first.conn.cursor(), shape())  # added in a transaction still open
        done = threading.Event()
        writing = threading.Thread(
            target=lambda: (second.write([(T0, shape(), "b.example.", "b.example")]), done.set()))
        writing.start()
        assert not done.wait(0.5)  # waits for the first instance's transaction...
        first.conn.commit()
        writing.join(10)
        assert done.is_set()  # ...then finds its shape
        first.write([(T0 + 1, shape(), "a.example.", "a.example")])
        assert first.query("SELECT COUNT(*) FROM event_shapes") == [(1,)]
        assert first.query("SELECT name FROM events ORDER BY id") == [("b.example.",), ("a.example.",)]
    finally:
        first.close()
        second.close()


def test_a_shape_another_instance_removed_is_added_again(postgres: Postgres) -> None:
    dsn = fresh_database(postgres, "netblock_retention")
    writer, other = open_store(dsn), open_store(dsn)
    try:
        writer.write([(1.0, shape(), "old.example.", "old.example")])  # the writer caches the shape's id
        assert other.purge(T0) == 1  # the other instance's retention removes the event and the shape
        assert other.query("SELECT COUNT(*) FROM event_shapes") == [(0,)]
        writer.write([(T0, shape(), "new.example.", "new.example")])  # not lost: written again
        [row] = writer.query("SELECT * FROM events")
        assert row[1:] == wide((T0, shape(), "new.example.", "new.example"))
    finally:
        writer.close()
        other.close()


V1_INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"


def make_v1(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:  # as netblock with schema version 1 left it
        conn.execute("CREATE TABLE netblock_schema (version INTEGER NOT NULL)")
        for statement in store_module._MIGRATIONS["postgres"][1]:
            conn.execute(statement)
        conn.execute("INSERT INTO netblock_schema (version) VALUES (1)")
        with conn.cursor() as cur:
            cur.executemany(V1_INSERT, v1_rows())


def test_version_1_inserts_into_the_view(postgres: Postgres) -> None:
    """A rolling upgrade: an instance still on version 1 inserts its 19 columns into `events`
    after another migrated it; the view's trigger stores them (a known shape and a new one)."""
    dsn = fresh_database(postgres, "netblock_v1_insert")
    make_v1(dsn)
    old_instance = psycopg.connect(dsn)  # a version 1 netblock, running since before
    with old_instance.cursor() as cur:
        cur.executemany(V1_INSERT, v1_rows()[:6])  # enough for psycopg to prepare its statement
    old_instance.commit()
    store_module.PostgresStore(dsn).close()  # an upgraded instance starts: migrated
    known, new = v1_rows()[0], (T0 + 5e5, "edge-old", "new-pc", *v1_rows()[0][3:])
    with old_instance.cursor() as cur:
        cur.executemany(V1_INSERT, [known, new])
    old_instance.commit()
    old_instance.close()
    store = open_store(dsn)
    try:
        assert store.query("SELECT * FROM events WHERE id > %s ORDER BY id", (len(v1_rows()) + 6,)) == [
            (len(v1_rows()) + 7, *known), (len(v1_rows()) + 8, *new)]
        assert store.query("SELECT COUNT(*) FROM events") == [(len(v1_rows()) + 8,)]
        assert store.query("SELECT COUNT(*) FROM event_shapes WHERE device = 'new-pc'") == [(1,)]
        store.write([(T0, shape(), "v2.example.", "v2.example")])  # and the upgraded instance goes on
        assert store.query("SELECT MAX(id) FROM events") == [(len(v1_rows()) + 9,)]
    finally:
        store.close()


def test_version_1_inserts_during_the_migration_are_kept(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance still on version 1 inserting while another migrates: without the lock its
    row lands in the old table after the copy took its snapshot, and DROP TABLE loses it."""
    dsn = fresh_database(postgres, "netblock_v1_during")
    make_v1(dsn)
    steps = list(store_module._MIGRATIONS["postgres"][2])
    steps.insert(steps.index("DROP TABLE events"), "SELECT pg_sleep(1.5)")  # between the copy and the drop
    monkeypatch.setitem(store_module._MIGRATIONS, "postgres", {**store_module._MIGRATIONS["postgres"], 2: tuple(steps)})
    migrating = threading.Thread(target=lambda: store_module.PostgresStore(dsn).close())
    migrating.start()
    with psycopg.connect(dsn, autocommit=True) as watch:
        assert wait_for(lambda: watch.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1.5)'").fetchone()[0] == 1, 10)
    row = (T0 + 7e5, "edge-old", "during-pc", *v1_rows()[1][3:])
    inserted: list[BaseException | None] = []

    def insert() -> None:
        try:
            with psycopg.connect(dsn) as conn:
                conn.execute(V1_INSERT, row)
            inserted.append(None)
        except BaseException as exc:
            inserted.append(exc)

    old_instance = threading.Thread(target=insert)
    old_instance.start()
    migrating.join(30)
    old_instance.join(30)
    assert inserted == [None]
    store = open_store(dsn, create=False)
    try:
        assert store.query("SELECT version FROM netblock_schema") == [(2,)]
        assert store.query("SELECT * FROM events WHERE device = 'during-pc'") == [(len(v1_rows()) + 1, *row)]
        assert store.query("SELECT COUNT(*) FROM events") == [(len(v1_rows()) + 1,)]
    finally:
        store.close()


def uncommitted_event_on_an_old_shape(writer: EventStore) -> int:
    """An old event, then a new one naming its shape, not committed: it holds the shape
    (KEY SHARE) while retention wants to remove it. The shape's id."""
    writer.write([(1.0, shape(), "old.example.", "old.example")])
    [(shape_id,)] = writer.query("SELECT id FROM event_shapes")
    writer.conn.execute("INSERT INTO event_log (ts, shape, name, rule) VALUES (%s, %s, 'new.example.', 'r')",
                        (T0, shape_id))
    return int(shape_id)


def test_retention_beside_an_uncommitted_event_naming_its_shape(postgres: Postgres) -> None:
    """Another instance's event naming a shape retention would remove (its only events are
    old) is not yet committed: the old events go at once, the shape stays."""
    dsn = fresh_database(postgres, "netblock_purge_race")
    writer, other = open_store(dsn), open_store(dsn)
    try:
        shape_id = uncommitted_event_on_an_old_shape(writer)
        purged: list[int] = []
        purging = threading.Thread(target=lambda: purged.append(other.purge(T0)))
        purging.start()
        purging.join(5)
        assert purged == [1]  # neither waited for the other instance nor failed
        writer.conn.commit()
        assert other.purge(T0) == 0
        assert writer.query("SELECT name FROM events") == [("new.example.",)]
        assert writer.query("SELECT id FROM event_shapes") == [(shape_id,)]
    finally:
        writer.close()
        other.close()


def test_retention_keeps_its_deletions_when_a_shape_is_named_meanwhile(postgres: Postgres,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A shape named by an event committed after retention chose the shapes to delete fails
    the foreign key: that shape is left to the next pass, and the old events are gone all the same."""
    # Without SKIP LOCKED, retention waits for the uncommitted event and then meets it.
    monkeypatch.setattr(PostgresStore, "_unused_shapes_sql", store_module.EventStore._unused_shapes_sql)
    dsn = fresh_database(postgres, "netblock_purge_fk")
    writer, other = open_store(dsn), open_store(dsn)
    try:
        shape_id = uncommitted_event_on_an_old_shape(writer)
        purged: list[int | BaseException] = []

        def purge() -> None:
            try:
                purged.append(other.purge(T0))
            except BaseException as exc:
                purged.append(exc)

        purging = threading.Thread(target=purge)
        purging.start()
        with psycopg.connect(dsn, autocommit=True) as watch:  # (writer.query would commit)
            assert wait_for(lambda: watch.execute("SELECT COUNT(*) FROM pg_locks WHERE NOT granted").fetchone()[0], 10)
        writer.conn.commit()  # retention's DELETE goes on, and meets the event
        purging.join(10)
        assert purged == [1]
        assert writer.query("SELECT name FROM events") == [("new.example.",)]
        assert writer.query("SELECT id FROM event_shapes") == [(shape_id,)]
        assert other._shape_ids == {}
    finally:
        writer.close()
        other.close()
