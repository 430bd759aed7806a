"""The event store's schema 2: narrow event rows naming shared shapes, the `events` view,
the migration from version 1, and the writer's cache of shape ids."""

from __future__ import annotations

import itertools
import json
import logging
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from netblock import events as events_module
from netblock import store as store_module
from netblock.events import EventRecorder
from netblock.report import build_report, render_csv, render_table
from netblock.store import COLUMNS, SCHEMA_VERSION, SHAPE_COLUMNS, EventStore, Row, StoreError, open_store
from test_events import BLOCK, wait_until

from harness import REPO

T0 = 1_764_316_800.0


def wide(row: Row) -> tuple[Any, ...]:
    """A row as the `events` view shows it (the values of COLUMNS)."""
    ts, shape, name, rule = row
    return (ts, *shape[:8], name, *shape[8:11], rule, *shape[11:])


def shape(device: str = "desk-1", instance: str = "edge-1", stage: str = "query") -> tuple[Any, ...]:
    """Values of store.SHAPE_COLUMNS."""
    return (instance, device, 1, "Alice", "Finance", "inventory-ip", "10.0.0.1", "aa:bb:cc:dd:ee:ff", "A",
            "wechat", "Tencent WeChat (Weixin)", "wechat.yaml:12", stage, "block", "GOV-1", "udp")


def v1_rows() -> list[tuple[Any, ...]]:
    """Rows as version 1 stored them (COLUMNS, without id): shapes shared and not, odd text."""
    rows = []
    for i in range(40):
        device = ("finance-pc", "10.0.0.2", 'q"uote\\dev', "bücher")[i % 4]
        action = "monitor" if i % 5 == 0 else "block"
        rows.append((T0 + i * 97.5, ("edge-a", "edge-b")[i % 2], device, 1 if i % 4 == 0 else 0,
                     "Alice" if i % 4 == 0 else "", "Finance" if i % 4 == 0 else "",
                     "inventory-ip" if i % 4 == 0 else "ip", f"10.0.0.{i % 4 + 1}",
                     "" if i % 3 else "aa:bb:cc:dd:ee:ff",
                     f"h{i % 7}.weixin.qq.com.", ("A", "AAAA", "HTTPS")[i % 3], "wechat", "Tencent WeChat (Weixin)",
                     f"h{i % 7}.weixin.qq.com" if i % 2 else "weixin.qq.com", "wechat.yaml:12",
                     ("query", "sni", "cname")[i % 3], action, "GOV-1" if i % 6 else "", ("udp", "tcp", "doh")[i % 3]))
    rows.append((T0 + 9999.25, "edge-a", "\x1b[31mred", 0, "", "", "ip", "10.9.9.9", "", "a\\.b\\000.cn.", "TYPE65280",
                 "x", "", "a\\.b\\000.cn", "x.yaml:1", "sni", "block", "", "dot"))
    return rows


def make_v1_sqlite(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """A database as netblock with schema version 1 left it."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE netblock_schema (version INTEGER NOT NULL)")
    for statement in store_module._MIGRATIONS["sqlite"][1]:
        db.execute(statement)
    db.execute("INSERT INTO netblock_schema (version) VALUES (1)")
    db.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    db.commit()
    db.close()


def report_of(store: EventStore) -> tuple[dict[str, Any], str, str]:
    report = build_report(store)
    report.pop("generated")
    return report, render_table(report), render_csv(report)


def events_cli(db: str) -> str:
    done = subprocess.run([sys.executable, "-m", "netblock", "events", "--db", db, "--last", "100", "--format",
                           "json"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_migration_from_version_1_keeps_ids_values_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    make_v1_sqlite(path, v1_rows())
    db = sqlite3.connect(path)
    db.execute("DELETE FROM events WHERE id IN (3, 17, 40, 41)")  # 41, 40: the newest rows went
    db.commit()
    assert db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone() == (41,)

    # A report reads version 1 as it is, and leaves it so: only the server migrates.
    reader = open_store(str(path), create=False)
    assert reader.version == 1
    before_rows = reader.query("SELECT * FROM events ORDER BY id")
    before_report = report_of(reader)
    reader.close()
    before_cli = events_cli(str(path))
    assert db.execute("SELECT version FROM netblock_schema").fetchall() == [(1,)]
    assert db.execute("SELECT type FROM sqlite_master WHERE name = 'events'").fetchone() == ("table",)
    assert len(before_rows) == 37 and before_rows[-1][0] == 39

    writer = open_store(str(path))
    assert writer.version == SCHEMA_VERSION == 2
    assert db.execute("SELECT version FROM netblock_schema").fetchall() == [(2,)]
    assert db.execute("SELECT type FROM sqlite_master WHERE name = 'events'").fetchone() == ("view",)
    after_rows = writer.query("SELECT * FROM events ORDER BY id")
    assert after_rows == before_rows  # every id and every value, in the same columns
    assert [c[0] for c in db.execute("SELECT * FROM events").description] == ["id", *COLUMNS]
    assert report_of(writer) == before_report
    at = [("id", *COLUMNS).index(column) for column in SHAPE_COLUMNS]
    distinct = {tuple(row[i] for i in at) for row in before_rows}
    assert 10 < len(distinct) < 37
    assert writer.query("SELECT COUNT(*) FROM event_shapes") == [(len(distinct),)]
    assert writer.query("SELECT COUNT(*) FROM event_log") == [(37,)]
    # Ids go on from the highest version 1 ever gave (41), not from the highest left (39).
    writer.write([(T0, shape(), "new.weixin.qq.com.", "weixin.qq.com")])
    assert writer.query("SELECT MAX(id) FROM events") == [(42,)]
    writer.close()
    assert events_cli(str(path)).splitlines()[:-1] == before_cli.splitlines()
    assert json.loads(events_cli(str(path)).splitlines()[-1])["id"] == 42
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def fail_the_migration(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's step to version 2 fails at its end, once the old table is gone."""
    steps = dict(store_module._MIGRATIONS["sqlite"])
    steps[2] = (*steps[2], "SELECT no_such_function()")
    monkeypatch.setitem(store_module._MIGRATIONS, "sqlite", steps)


def test_a_failed_migration_leaves_version_1_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.db"
    make_v1_sqlite(path, v1_rows())
    fail_the_migration(monkeypatch)
    with pytest.raises(StoreError) as failed:
        open_store(str(path))
    # The operator reads that a migration ran, that it failed and why, and what is left.
    assert str(failed.value) == (f"{path}: migrating the event store from schema 1 to 2 failed: no such function: "
                                 "no_such_function; it stays at schema 1 (nothing was changed)")
    assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM netblock_schema").fetchall() == [(1,)]
    assert db.execute("SELECT type FROM sqlite_master WHERE name = 'events'").fetchone() == ("table",)
    assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (len(v1_rows()),)
    assert db.execute("SELECT name FROM sqlite_master WHERE name IN ('event_log', 'event_shapes')").fetchall() == []
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    # Making a new store is no migration: its failure keeps the plain wording.
    with pytest.raises(StoreError) as failed:
        open_store(str(tmp_path / "new.db"))
    assert str(failed.value) == f"{tmp_path / 'new.db'}: no such function: no_such_function"


def test_a_reader_refuses_what_is_not_a_netblock_store(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="no netblock events here"):
        open_store(str(tmp_path / "other.db"), create=False)


def test_rows_through_the_view_are_the_version_1_rows(tmp_path: Path) -> None:
    rec = EventRecorder(None, 100, "edge-1", store=str(tmp_path / "e.db"), flush_interval=0.02, retention_days=0)
    rec.record(1_700_000_000.5, "10.0.0.7", "aa:bb:cc:dd:ee:01", b"\x01a\x03b.c\x02cn\x00", 28, BLOCK, "sni", "tcp")
    rec.start()
    try:
        assert wait_until(lambda: rec.written == 1)
    finally:
        rec.stop()
    db = sqlite3.connect(tmp_path / "e.db")
    cursor = db.execute("SELECT * FROM events")
    assert [c[0] for c in cursor.description] == ["id", *COLUMNS]
    assert cursor.fetchall() == [(1, 1_700_000_000.5, "edge-1", "10.0.0.7", 0, "", "", "ip", "10.0.0.7",
                                  "aa:bb:cc:dd:ee:01", "a.b\\.c.cn.", "AAAA", "wechat", "Tencent WeChat (Weixin)",
                                  "weixin.qq.com", "wechat.yaml:12", "sni", "block", "GOV-1", "tcp")]
    assert wide(("ts", SHAPE_COLUMNS, "name", "rule")) == COLUMNS  # the helper agrees with the view


def test_shapes_are_stored_once(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "e.db"))
    rows: list[Row] = [(T0 + i, shape(stage=("query", "sni")[i % 2]), f"n{i}.example.", f"n{i}.example")
                       for i in range(450)]  # more than one INSERT statement's worth
    store.write(rows[:10])
    store.write(rows[10:])
    assert store.query("SELECT COUNT(*) FROM event_shapes") == [(2,)]
    assert store.query("SELECT * FROM events ORDER BY id") == [(i + 1, *wide(row)) for i, row in enumerate(rows)]
    again = open_store(str(tmp_path / "e.db"))  # a new cache finds the shapes there
    again.write([(T0, shape(), "x.example.", "x.example")])
    assert again.query("SELECT COUNT(*) FROM event_shapes") == [(2,)]
    assert again.query("SELECT device, name FROM events WHERE id = 451") == [("desk-1", "x.example.")]


def test_a_failed_batch_forgets_the_shapes_it_added(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "e.db"))
    store.write([(T0, shape("old-pc"), "a.example.", "a.example")])
    failing: list[Row] = [(T0 + 1, shape("new-pc"), "b.example.", "b.example"),
                          (T0 + 2, shape("new-pc"), None, "b.example")]  # type: ignore[list-item]
    with pytest.raises(sqlite3.IntegrityError):
        store.write(failing)
    # One transaction: the shape it added went with it...
    assert store.query("SELECT device FROM event_shapes") == [("old-pc",)]
    # ...and a later batch does not name it: its events are there, with their device.
    store.write([(T0 + 3, shape("new-pc"), "c.example.", "c.example")])
    assert store.query("SELECT ts, device, name FROM events ORDER BY id") == [
        (T0, "old-pc", "a.example."), (T0 + 3, "new-pc", "c.example.")]
    assert store.query("SELECT COUNT(*) FROM event_log") == [(2,)]


def test_retention_removes_shapes_no_event_names(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "e.db"))
    store.write([(T0 - 100, shape("gone-pc"), "a.example.", "a.example"),
                 (T0 + 100, shape("kept-pc"), "b.example.", "b.example")])
    store.write([(T0 - 50, shape("gone-pc"), "c.example.", "c.example")])
    assert store.purge(T0) == 2
    assert store.query("SELECT device FROM event_shapes") == [("kept-pc",)]
    # The writer comes back to the shape retention removed: stored again, not named by its old id.
    store.write([(T0 + 200, shape("gone-pc"), "d.example.", "d.example"),
                 (T0 + 300, shape("kept-pc"), "e.example.", "e.example")])
    assert store.query("SELECT device, name FROM events ORDER BY id") == [
        ("kept-pc", "b.example."), ("gone-pc", "d.example."), ("kept-pc", "e.example.")]
    assert store.query("SELECT COUNT(*) FROM event_shapes") == [(2,)]


def test_ids_never_go_back_when_retention_removes_the_newest(tmp_path: Path) -> None:
    """`netblock events --follow` reads `id > last`: an id given once is never given again,
    even when the newest events are the ones retention removes (a clock set right later)."""
    store = open_store(str(tmp_path / "e.db"))
    store.write([(T0, shape(), "a.", "a"), (T0 + 1, shape(), "b.", "b"), (1.0, shape(), "clock-in-1970.", "c")])
    assert store.purge(T0) == 1  # id 3
    store.write([(T0 + 2, shape(), "d.", "d")])
    assert store.query("SELECT id, name FROM events ORDER BY id") == [(1, "a."), (2, "b."), (4, "d.")]
    assert store.purge(time.time()) == 3  # all of them
    store.close()
    store = open_store(str(tmp_path / "e.db"))
    store.write([(T0 + 3, shape(), "e.", "e")])
    assert store.query("SELECT id FROM events") == [(5,)]


V1_INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def test_version_1_inserts_into_the_view(tmp_path: Path) -> None:
    """A restart sharing one file: the old process, still on version 1, inserts its 19
    columns into `events` after the new one migrated; the view's trigger stores them, a
    known shape named by its id and a new shape added."""
    path = tmp_path / "events.db"
    make_v1_sqlite(path, v1_rows())
    old_process = sqlite3.connect(path)  # a version 1 netblock, running since before
    old_process.executemany(V1_INSERT, v1_rows()[:6])  # its statement prepared on the table
    old_process.commit()
    open_store(str(path)).close()  # the new process starts: migrated
    known = (T0 + 5e5, *v1_rows()[0][1:9], "late.weixin.qq.com.", *v1_rows()[0][10:])  # the shape of id 1
    new = (T0 + 6e5, "edge-old", "new-pc", *v1_rows()[0][3:])
    old_process.executemany(V1_INSERT, [known, new])
    old_process.commit()
    old_process.close()
    store = open_store(str(path))
    try:
        first = len(v1_rows()) + 6
        assert store.query("SELECT * FROM events WHERE id > ? ORDER BY id", (first,)) == [
            (first + 1, *known), (first + 2, *new)]
        assert store.query("SELECT COUNT(*) FROM events") == [(first + 2,)]
        shapes = store.query("SELECT shape FROM event_log WHERE id IN (1, ?) ORDER BY id", (first + 1,))
        assert len(shapes) == 2 and shapes[0] == shapes[1]  # the identical earlier event's shape
        assert store.query("SELECT COUNT(*) FROM event_shapes WHERE device = 'new-pc'") == [(1,)]
        store.write([(T0, shape(), "v2.example.", "v2.example")])  # and the new process goes on
        assert store.query("SELECT MAX(id) FROM events") == [(first + 3,)]
        assert store.query("PRAGMA foreign_key_check") == []
    finally:
        store.close()


def test_every_writer_store_has_the_view_trigger(tmp_path: Path) -> None:
    """A new store has it; one made at version 2 before the trigger existed gets it when a
    server opens it (no new schema version), and a reader leaves the file as it is."""
    path = tmp_path / "events.db"
    open_store(str(path)).close()
    db = sqlite3.connect(path)
    triggers = "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'"
    assert db.execute(triggers).fetchall() == [("events_insert", "events")]
    db.execute(V1_INSERT, v1_rows()[0])
    db.commit()
    db.execute("DROP TRIGGER events_insert")  # as a version 2 store in the field is
    db.commit()
    open_store(str(path), create=False).close()
    assert db.execute(triggers).fetchall() == []
    store = open_store(str(path))
    assert db.execute(triggers).fetchall() == [("events_insert", "events")]
    assert db.execute("SELECT version FROM netblock_schema").fetchall() == [(SCHEMA_VERSION,)]
    db.execute(V1_INSERT, v1_rows()[0])
    db.commit()
    assert store.query("SELECT * FROM events ORDER BY id") == [(1, *v1_rows()[0]), (2, *v1_rows()[0])]
    assert store.query("SELECT COUNT(*) FROM event_shapes") == [(1,)]
    store.close()
    db.close()


# ---------------------------------------------------------------- opening in the writer thread


def locked(path: Path, seconds: float) -> threading.Timer:
    """Another netblock holds the file's write lock for `seconds` (a restart's overlap)."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, lambda: (other.execute("ROLLBACK"), other.close()))
    release.start()
    return release


def test_start_returns_at_once_while_the_writer_migrates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """start() runs on the event loop: opening the store (here a migration from version 1,
    which first waits for another connection's lock) is the writer thread's job, so DNS never
    waits for it; events wait in the queue and are written once the store is open."""
    path = tmp_path / "events.db"
    make_v1_sqlite(path, v1_rows())
    release = locked(path, 2.0)
    rec = EventRecorder(None, 100, "edge-1", store=str(path), flush_interval=0.02, retention_days=0)
    with caplog.at_level(logging.INFO, logger="netblock.store"):
        started = time.monotonic()
        rec.start()
        took = time.monotonic() - started
        try:
            for i in range(3):
                rec.record(T0 + i, "10.0.0.7", "", f"n{i}.weixin.qq.com.", 1, BLOCK, "query", "udp")
            time.sleep(0.3)
            assert release.is_alive()  # still locked: nothing written, nothing lost
            assert (rec.written, rec.dropped, len(rec.queue)) == (0, 0, 3)
            assert wait_until(lambda: rec.written == 3)
        finally:
            rec.stop()
    assert took < 1.0, took
    messages = [r.getMessage() for r in caplog.records if r.name == "netblock.store"]
    assert messages[0] == (f"events: migrating the event store {path} from schema 1 to 2; "
                           "DNS answers meanwhile, events wait in the queue")
    assert re.fullmatch(rf"events: migrated the event store {re.escape(str(path))} from schema 1 to 2 in \d+\.\d s",
                        messages[1]), messages
    assert len(messages) == 2
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*), MAX(name) FROM events").fetchone() == (len(v1_rows()) + 3, "n2.weixin.qq.com.")


def test_stop_does_not_wait_past_its_bound_for_a_store_being_opened(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "STOP_DRAIN_SECONDS", 0.2)
    monkeypatch.setattr(events_module, "STOP_GRACE_SECONDS", 0.3)
    path = tmp_path / "events.db"
    make_v1_sqlite(path, v1_rows())
    release = locked(path, 3.0)
    rec = EventRecorder(None, 100, "edge-1", store=str(path), flush_interval=0.02, retention_days=0)
    rec.start()
    writer = rec._thread
    assert writer is not None
    for i in range(5):
        rec.record(T0 + i, "10.0.0.7", "", f"n{i}.weixin.qq.com.", 1, BLOCK, "query", "udp")
    started = time.monotonic()
    rec.stop()
    assert time.monotonic() - started < 2.0  # 0.2 + 0.3 s, and room for a loaded machine
    assert writer.is_alive() and release.is_alive()  # still opening the store: left to finish on its own
    release.join()
    writer.join(15)
    assert not writer.is_alive()
    assert rec.store is None  # the writer closed what it opened
    assert rec.written + rec.dropped == 5


class Clock:
    """events.py's clock, moved by hand: its waits between attempts are minutes long."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def timed_attempts(monkeypatch: pytest.MonkeyPatch, clock: Clock, took: list[float]) -> list[tuple[float, float]]:
    """The writer's attempts to open the store, as (start, end): the n-th takes took[n]
    seconds (0 past the list's end), then opens the store for real."""
    attempts: list[tuple[float, float]] = []

    def timed_open(target: str) -> EventStore:
        start = clock.now
        clock.now += took[len(attempts)] if len(attempts) < len(took) else 0.0
        attempts.append((start, clock.now))
        return open_store(target)

    monkeypatch.setattr(events_module, "time", clock)
    monkeypatch.setattr(events_module, "open_store", timed_open)
    return attempts


def batch_a_second(rec: EventRecorder, clock: Clock, seconds: int) -> None:
    """The writer's loop as the query path feeds it: one event, one batch, each second."""
    for _ in range(seconds):
        rec.write_batch([(T0, "10.0.0.7", "", "n.weixin.qq.com.", 1, BLOCK, "query", "udp")])
        clock.now += 1.0


def waits(attempts: list[tuple[float, float]]) -> list[float]:
    """From the end of each attempt to the start of the next."""
    return [later[0] - earlier[1] for earlier, later in itertools.pairwise(attempts)]


def test_failed_opens_back_off_doubling_to_a_minute_and_success_resets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A migration that fails is started again 5 s later, then 10, 20, 40, and once a minute;
    once the store opens, a later failure starts from 5 s again."""
    path = tmp_path / "events.db"
    make_v1_sqlite(path, v1_rows())
    working = store_module._MIGRATIONS["sqlite"]
    fail_the_migration(monkeypatch)
    clock = Clock()
    attempts = timed_attempts(monkeypatch, clock, [])
    rec = EventRecorder(None, 100, "edge-1", store=str(path), retention_days=0)
    with caplog.at_level(logging.ERROR, logger="netblock.events"):
        batch_a_second(rec, clock, 435)
    assert [start for start, _ in attempts] == [1000, 1005, 1015, 1035, 1075, 1135, 1195, 1255, 1315, 1375]
    assert waits(attempts) == [5, 10, 20, 40, 60, 60, 60, 60, 60]  # each one a migration from the start
    assert (rec.written, rec.dropped) == (0, 435)
    errors = [r.getMessage() for r in caplog.records]
    assert "migrating the event store from schema 1 to 2 failed" in errors[0], errors
    assert "it stays at schema 1 (nothing was changed)" in errors[0]
    assert len(errors) == 8  # once a minute at most, as before
    # Between attempts too, each minute's line says why, and when the next attempt is.
    assert "event store unavailable: " in errors[2] and "schema 1 to 2 failed" in errors[2], errors
    assert errors[2].endswith("next attempt in 15 s); dropping events, 121 lost so far (next report in 60 s at most)")
    monkeypatch.setitem(store_module._MIGRATIONS, "sqlite", working)
    batch_a_second(rec, clock, 1)  # the attempt due at 1435 migrates
    assert attempts[-1][0] == 1435 and rec.store is not None and rec.store.version == 2
    assert rec.written == 1
    rec.store.close()  # lost at once (PostgreSQL gone), and it stays down
    rec.store = None
    (tmp_path / "not-a-db").write_text("this is not a database, it is a text file that is long enough" * 20)
    rec.store_target = str(tmp_path / "not-a-db")
    batch_a_second(rec, clock, 60)
    assert waits(attempts[-5:]) == [5, 5, 10, 20]  # 5 s after the success as before, then doubling from 5 s


def test_a_long_failed_attempt_waits_ten_times_as_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails after minutes (a full disk) is not started again 5 s later:
    the writer, which writes nothing meanwhile, spends a tenth of its time at most on it."""
    path = tmp_path / "events.db"
    make_v1_sqlite(path, v1_rows())
    fail_the_migration(monkeypatch)
    clock = Clock()
    attempts = timed_attempts(monkeypatch, clock, [120, 30, 0, 0.5])
    rec = EventRecorder(None, 100, "edge-1", store=str(path), retention_days=0)
    batch_a_second(rec, clock, 1700)
    assert waits(attempts)[:4] == [1200, 300, 20, 40]  # the larger of 10x the attempt and the doubling
    busy = sum(end - start for start, end in attempts)
    assert busy <= 0.1 * (attempts[-1][1] - attempts[0][0])
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM netblock_schema").fetchall() == [(1,)]
    db.close()


def test_a_slow_failed_connect_is_not_scaled_like_a_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An attempt that fails slowly without migrating (a connect timeout, a lock wait: 10 s
    here) is tried again as the doubling says, not 100 s later: events are lost meanwhile."""
    (tmp_path / "not-a-db").write_text("this is not a database, it is a text file that is long enough" * 20)
    clock = Clock()
    attempts = timed_attempts(monkeypatch, clock, [10, 10, 10])
    rec = EventRecorder(None, 100, "edge-1", store=str(tmp_path / "not-a-db"), retention_days=0)
    batch_a_second(rec, clock, 80)
    assert waits(attempts)[:3] == [5, 10, 20]


# ---------------------------------------------------------------- two writers of one SQLite file


def test_a_shape_the_other_writer_removed_is_never_misnamed(tmp_path: Path) -> None:
    """A restart overlaps the old process (draining) and the new one on one file. A shape id
    one cached and the other's retention deleted must not name another shape given the same
    number (the event would be another device's), nor a shape gone (it would leave the view)."""
    path = str(tmp_path / "e.db")
    old, new = open_store(path), open_store(path)
    assert old.query("PRAGMA foreign_keys") == [(1,)]
    old.write([(1.0, shape("gone-pc"), "a.example.", "a.example")])  # `old` caches gone-pc's id
    assert new.purge(T0) == 1  # its event and its shape go
    new.write([(T0, shape("other-pc"), "b.example.", "b.example")])  # a new shape: the number is not given again
    old.write([(T0 + 1, shape("gone-pc"), "c.example.", "c.example")])
    assert old.query("SELECT device, name FROM events ORDER BY id") == [("other-pc", "b.example."),
                                                                         ("gone-pc", "c.example.")]
    assert new.purge(T0 + 0.5) == 1
    old.write([(T0 + 2, shape("other-pc"), "d.example.", "d.example")])  # cached, and gone: added again
    assert old.query("SELECT device, name FROM events ORDER BY id") == [("gone-pc", "c.example."),
                                                                         ("other-pc", "d.example.")]
    assert old.query("SELECT COUNT(*) FROM event_log") == [(2,)]
    assert old.query("PRAGMA foreign_key_check") == []
    old.close()
    new.close()


# ---------------------------------------------------------------- the writer's statements


class Recording:
    """A connection that notes the SQL its cursors run."""

    def __init__(self, conn: Any, seen: list[str]) -> None:
        self._conn, self._seen = conn, seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def cursor(self) -> Any:
        recording, cursor = self, self._conn.cursor()

        class Cursor:
            def __getattr__(self, name: str) -> Any:
                return getattr(cursor, name)

            def execute(self, sql: str, *args: Any) -> Any:
                recording._seen.append(sql)
                return cursor.execute(sql, *args)

            def executemany(self, sql: str, *args: Any) -> Any:
                recording._seen.append(sql)
                return cursor.executemany(sql, *args)

        return Cursor()


def test_two_insert_statements_whatever_the_batch(tmp_path: Path) -> None:
    """Each distinct statement is prepared and cached by the driver (psycopg keeps 100,
    sqlite3 128): a batch's last chunk goes a row at a time, not as a statement of its size."""
    store = open_store(str(tmp_path / "e.db"))
    seen: list[str] = []
    store.conn = Recording(store.conn, seen)
    rows: list[Row] = []
    for size in (1, 7, 199, 200, 201, 450, 1000, 3):
        batch: list[Row] = [(T0 + len(rows) + i, shape(stage=("query", "sni")[i % 2]), f"n{len(rows) + i}.", "r")
                            for i in range(size)]
        store.write(batch)
        rows += batch
    inserts = {sql for sql in seen if sql.startswith("INSERT INTO event_log")}
    assert inserts == {store_module._insert_sql("?", store_module.INSERT_ROWS), store_module._insert_sql("?", 1)}
    assert store.query("SELECT * FROM events ORDER BY id") == [(i + 1, *wide(row)) for i, row in enumerate(rows)]


def test_make_room_forgets_the_older_half() -> None:
    cache = {n: n for n in range(10)}
    store_module.make_room(cache, 11)
    assert len(cache) == 10
    store_module.make_room(cache, 10)
    assert list(cache) == [5, 6, 7, 8, 9]
