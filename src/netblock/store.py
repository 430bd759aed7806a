"""The event store: one schema in SQLite (the default) or PostgreSQL (a fleet).

The writer thread inserts batches; `netblock report` and `netblock events` read. An event
is a narrow row of `event_log` (id, ts, shape, name, rule) naming a row of `event_shapes`,
what one device, list entry, query type and stage have in common; readers query the view
`events`, which has the columns and the ids version 1's table had. Both back-ends get the
same schema and the same SQL: queries are written with `?` placeholders and PostgreSQL's
driver gets them as `%s`. The schema is versioned in `netblock_schema` so a later netblock
can migrate a database an older one created, and an older netblock refuses a database a
newer one wrote instead of misreading it.

Two writers may share a store: the instances of a fleet (PostgreSQL), or the old and the new
process of a restart (SQLite, while the old one drains). Either may delete a shape the other
has cached (retention): the foreign key (kept in both back-ends) makes an event naming it
fail, and the batch is written again with the shapes looked up again; ids are never reused
(an AUTOINCREMENT or an identity), so a stale id never names another shape.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
SHAPE_IDS_MAX = 10_000  # shape ids the writer keeps
INSERT_ROWS = 200  # events an INSERT statement: 800 values, under any SQLite's limit of 999

# The columns of the `events` view in the order version 1's table had them (its `id` first):
# what `netblock report`, `netblock events` and operators' own SQL read.
COLUMNS = (
    "ts", "instance", "device", "device_known", "owner", "department", "id_source",
    "client_ip", "client_mac", "name", "qtype", "list_name", "vendor", "rule", "rule_origin",
    "stage", "action", "policy_id", "protocol",
)
# What one device, list entry, query type and stage have in common: a row of `event_shapes`.
# Each event is a narrow row of `event_log` naming its shape (inserting 19 columns and two
# wide indexes cost twice as much as these four).
SHAPE_COLUMNS = (
    "instance", "device", "device_known", "owner", "department", "id_source", "client_ip",
    "client_mac", "qtype", "list_name", "vendor", "rule_origin", "stage", "action", "policy_id", "protocol",
)
LOG_COLUMNS = ("ts", "name", "rule")  # the rest of COLUMNS: what varies between events of a shape

Shape = tuple[Any, ...]  # values of SHAPE_COLUMNS
Row = tuple[float, Shape, str, str]  # what the writer hands over: (ts, shape, name, rule)


def make_room(cache: dict[Any, Any], limit: int) -> None:
    """Before adding to a bounded cache: when it is full, forget its older half (a dict keeps
    the order keys were added in). Cheaper than an LRU on every hit, and as good for caches
    whose keys come back steadily (the writer's shapes)."""
    if len(cache) >= limit:
        for oldest in list(itertools.islice(cache, limit // 2)):
            del cache[oldest]


_SHAPE_DDL = """
    instance TEXT NOT NULL,            -- the netblock server that saw it (fleets)
    device TEXT NOT NULL,              -- inventory name, lease host name, or the client IP
    device_known INTEGER NOT NULL,     -- 1: named by the inventory
    owner TEXT NOT NULL,
    department TEXT NOT NULL,
    id_source TEXT NOT NULL,           -- which source named the device (devices.py)
    client_ip TEXT NOT NULL,
    client_mac TEXT NOT NULL,
    qtype TEXT NOT NULL,
    list_name TEXT NOT NULL,
    vendor TEXT NOT NULL,
    rule_origin TEXT NOT NULL,         -- file:line of the entry
    stage TEXT NOT NULL,               -- query, cname, answer-ip, sni, quic, http-host, ...
    action TEXT NOT NULL,              -- block | monitor
    policy_id TEXT NOT NULL,
    protocol TEXT NOT NULL,            -- udp | tcp | dot | doh
    -- device first: a report on one device finds its shapes through this index
    UNIQUE (device, instance, device_known, owner, department, id_source, client_ip, client_mac, qtype,
            list_name, vendor, rule_origin, stage, action, policy_id, protocol)
"""

_LOG_DDL = """
    ts DOUBLE PRECISION NOT NULL,      -- epoch seconds, UTC
    shape {id_type} NOT NULL REFERENCES event_shapes (id),
    name TEXT NOT NULL,                -- presentation form, RFC 1035 escapes
    rule TEXT NOT NULL                 -- the entry as written (an imported list: the name it lists)
"""

# Version 1's table, which version 2's view replaces with the same columns.
_V1_DDL = """
    ts DOUBLE PRECISION NOT NULL,
    instance TEXT NOT NULL,
    device TEXT NOT NULL,
    device_known INTEGER NOT NULL,
    owner TEXT NOT NULL,
    department TEXT NOT NULL,
    id_source TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    client_mac TEXT NOT NULL,
    name TEXT NOT NULL,
    qtype TEXT NOT NULL,
    list_name TEXT NOT NULL,
    vendor TEXT NOT NULL,
    rule TEXT NOT NULL,
    rule_origin TEXT NOT NULL,
    stage TEXT NOT NULL,
    action TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    protocol TEXT NOT NULL
"""

_VIEW = ("CREATE VIEW events AS SELECT l.id AS id, "
         + ", ".join(f"{'l' if c in LOG_COLUMNS else 's'}.{c} AS {c}" for c in COLUMNS)
         + " FROM event_log l JOIN event_shapes s ON s.id = l.shape")
_SHAPES = ", ".join(SHAPE_COLUMNS)


def _same_shape(left: str, right: str) -> str:
    """SQL: every shape column of `left` equals that of `right` ("{c}" marks the column)."""
    return " AND ".join(f"{left.format(c=c)} = {right.format(c=c)}" for c in SHAPE_COLUMNS)


_SAME_SHAPE = _same_shape("s.{c}", "e.{c}")
_NEW_SHAPE = _same_shape("{c}", "NEW.{c}")
_NEW_VALUES = ", ".join(f"NEW.{c}" for c in SHAPE_COLUMNS)


def _to_v2(id_type: str, autoincrement: str, overriding: str, keep_sequence: tuple[str, ...]) -> tuple[str, ...]:
    """Version 1 -> 2: each distinct shape once, each event keeps its id and its values,
    then the view takes the table's name. The indexes come last: cheaper than during the copy."""
    identity = "INTEGER PRIMARY KEY" if id_type == "INTEGER" else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    return (
        f"CREATE TABLE event_shapes (id {identity}{autoincrement}, {_SHAPE_DDL})",
        f"CREATE TABLE event_log (id {identity}{autoincrement}, {_LOG_DDL.format(id_type=id_type)})",
        f"INSERT INTO event_shapes ({_SHAPES}) SELECT DISTINCT {_SHAPES} FROM events",
        f"INSERT INTO event_log (id, ts, shape, name, rule) {overriding}"
        f"SELECT e.id, e.ts, s.id, e.name, e.rule FROM events e JOIN event_shapes s ON {_SAME_SHAPE}",
        *keep_sequence,
        "DROP TABLE events",
        "CREATE INDEX event_log_ts ON event_log (ts)",
        "CREATE INDEX event_log_shape_ts ON event_log (shape, ts)",
        _VIEW,
    )


# Version -> statements that bring the schema from version-1 to version. A new database
# takes every step: the migration to version 2 runs (on no rows) wherever a store is made.
_MIGRATIONS: dict[str, dict[int, tuple[str, ...]]] = {
    "sqlite": {
        1: (
            f"CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, {_V1_DDL})",
            "CREATE INDEX IF NOT EXISTS events_device_ts ON events (device, ts)",
            "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
        ),
        # AUTOINCREMENT: `netblock events --follow` reads `id > last`, so an id must never
        # come back. A plain rowid is max(rowid) + 1, which goes back when the newest rows
        # are deleted: retention deletes by time, and the newest rows can be the oldest by
        # time (a router that booted with its clock years behind, before NTP set it), or be
        # every row (a server idle for longer than the retention). AUTOINCREMENT remembers
        # the highest id ever given (sqlite_sequence), once an INSERT statement: with 200
        # events a statement, 0.05-0.2 us an event. The shapes too: a restart overlaps the
        # old process (draining) with the new one, and a shape id one of them cached, which
        # the other's retention deleted, must fail the foreign key rather than name the next
        # shape given its number (the event would be another device's).
        2: _to_v2("INTEGER", " AUTOINCREMENT", "", (
            # The copy set event_log's counter to the highest id copied; version 1's may be higher.
            "UPDATE sqlite_sequence SET seq = (SELECT MAX(seq) FROM sqlite_sequence "
            "WHERE name IN ('events', 'event_log')) WHERE name = 'event_log'",
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'event_log', seq FROM sqlite_sequence "
            "WHERE name = 'events' AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'event_log')",
        )),
    },
    "postgres": {
        1: (
            "CREATE TABLE IF NOT EXISTS events "
            f"(id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {_V1_DDL})",
            "CREATE INDEX IF NOT EXISTS events_device_ts ON events (device, ts)",
            "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
        ),
        # An identity never gives a number twice. BIGINT for the shapes too: an INSERT that
        # meets a conflict uses up a number all the same.
        2: (
            # Instances of the fleet still on version 1 insert into the table meanwhile: they
            # wait (EXCLUSIVE lets reports read) instead of adding rows after the copy took its
            # snapshot, which DROP TABLE would lose. Once the view has the table's name their
            # INSERT goes through its trigger.
            "LOCK TABLE events IN EXCLUSIVE MODE",
            *_to_v2("BIGINT", "", "OVERRIDING SYSTEM VALUE ", (
                # The next id follows the highest ever given, copied or not.
                "SELECT setval(pg_get_serial_sequence('event_log', 'id'), GREATEST((SELECT MAX(id) FROM event_log), "
                "pg_sequence_last_value(pg_get_serial_sequence('events', 'id')::regclass), 0) + 1, false)",
            )),
            # Version 1's INSERT (its 19 columns, no id) into the view: a rolling upgrade of a
            # fleet keeps the events of the instances not upgraded yet. A version 1 netblock
            # that restarts still refuses version 2 (it reads netblock_schema when it opens).
            "CREATE FUNCTION netblock_events_insert() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            "DECLARE shape_id BIGINT;\n"
            "BEGIN\n"
            # KEY SHARE: another instance's retention skips (or waits for) the shape until the
            # event naming it is committed.
            f"  SELECT id INTO shape_id FROM event_shapes WHERE {_NEW_SHAPE} FOR KEY SHARE;\n"
            "  IF NOT FOUND THEN\n"
            f"    INSERT INTO event_shapes ({_SHAPES}) VALUES ({_NEW_VALUES}) ON CONFLICT DO NOTHING;\n"
            f"    SELECT id INTO shape_id FROM event_shapes WHERE {_NEW_SHAPE} FOR KEY SHARE;\n"
            "  END IF;\n"
            "  INSERT INTO event_log (ts, shape, name, rule) VALUES (NEW.ts, shape_id, NEW.name, NEW.rule);\n"
            "  RETURN NEW;\n"
            "END $$",
            "CREATE TRIGGER events_insert INSTEAD OF INSERT ON events "
            "FOR EACH ROW EXECUTE FUNCTION netblock_events_insert()",
        ),
    },
}

# What a writer's store has at the current version besides the steps above, made when a
# server opens it: stores that reached version 2 before these existed get them too.
_AT_CURRENT_VERSION: dict[str, tuple[str, ...]] = {
    "sqlite": (
        # Version 1's INSERT (its 19 columns, no id) into the view, as PostgreSQL's trigger
        # takes it: the old process of a restart, still on version 1, writes on after the new
        # one migrated the file. A single writer at a time: no other can add the shape meanwhile.
        "CREATE TRIGGER IF NOT EXISTS events_insert INSTEAD OF INSERT ON events FOR EACH ROW BEGIN\n"
        f"  INSERT INTO event_shapes ({_SHAPES}) SELECT {_NEW_VALUES}\n"
        f"    WHERE NOT EXISTS (SELECT 1 FROM event_shapes WHERE {_NEW_SHAPE});\n"
        "  INSERT INTO event_log (ts, shape, name, rule)\n"
        f"    VALUES (NEW.ts, (SELECT id FROM event_shapes WHERE {_NEW_SHAPE}), NEW.name, NEW.rule);\n"
        "END",
    ),
    "postgres": (),  # its trigger is a migration step: made with the view
}


@functools.cache
def _insert_sql(placeholder: str, rows: int) -> str:
    """INSERT of `rows` rows in one statement. In SQLite a statement a row (executemany) cost
    nearly twice as much, half of the difference AUTOINCREMENT's bookkeeping. Only two sizes
    are used (INSERT_ROWS and 1): each distinct statement is prepared and cached by the
    driver (psycopg keeps 100, sqlite3 128), and one statement per batch size would churn
    those caches."""
    row = f"({', '.join([placeholder] * 4)})"
    return f"INSERT INTO event_log (ts, shape, name, rule) VALUES {', '.join([row] * rows)}"


class StoreError(Exception):
    """The store cannot be opened or is not ours (a clear message for the operator)."""


class MigrationFailed(StoreError):
    """Migrating the schema failed and was rolled back: the store stays at its old version."""


def is_postgres(target: str) -> bool:
    return target.startswith(("postgres://", "postgresql://")) or ("=" in target and "dbname" in target)


def open_store(target: str, create: bool = True) -> EventStore:
    """A SQLite path or a PostgreSQL DSN -> an open store with the current schema."""
    if is_postgres(target):
        return PostgresStore(target, create)
    return SqliteStore(target, create)


class EventStore:
    kind = ""
    placeholder = "?"

    def __init__(self) -> None:
        self.conn: Any = None
        self.version = 0  # as found: a reader leaves an older schema as it is
        self._shape_ids: dict[Shape, int] = {}  # the writer's cache of event_shapes
        marks = ", ".join([self.placeholder] * len(SHAPE_COLUMNS))
        self._find_shape_sql = "SELECT id FROM event_shapes WHERE " + _same_shape("{c}", self.placeholder)
        self._add_shape_sql = f"INSERT INTO event_shapes ({_SHAPES}) VALUES ({marks}) ON CONFLICT DO NOTHING"

    # -- schema

    def _migrate(self, create: bool) -> None:
        cur = self.conn.cursor()
        try:
            version = self._version(cur)
            if create and version < SCHEMA_VERSION:
                self._lock(cur)
                version = self._version(cur)  # another netblock may have migrated it meanwhile
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.describe()}: schema version {version} was written by a newer netblock "
                                 f"(this one knows {SCHEMA_VERSION}); refusing to touch it")
            if version == 0 and not create:
                raise StoreError(f"{self.describe()}: no netblock events here (schema version {version})")
            if create and 0 < version < SCHEMA_VERSION:
                self._upgrade(cur, version)
            elif create:
                self._build(cur, version)
            else:
                # A reader (create=False) reads an older schema as it is: version 1's `events`
                # table has the columns of version 2's view. The server migrates it when it starts.
                self.conn.commit()
                self.version = version
        except Exception:
            self._rollback()
            raise

    def _build(self, cur: Any, version: int) -> None:
        """Bring the schema from `version` (0: a new store) to SCHEMA_VERSION in one transaction."""
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[self.kind][step]:
                cur.execute(statement)
        if version < SCHEMA_VERSION:
            cur.execute("DELETE FROM netblock_schema")
            cur.execute(f"INSERT INTO netblock_schema (version) VALUES ({self.placeholder})", (SCHEMA_VERSION,))
        for statement in _AT_CURRENT_VERSION[self.kind]:
            cur.execute(statement)
        self.conn.commit()
        self.version = SCHEMA_VERSION

    def _upgrade(self, cur: Any, version: int) -> None:
        """_build from an older schema. Logged: it copies every event, which takes minutes in a
        big store; a failure (a full disk) rolls all of it back, and says so."""
        log.info("events: migrating the event store %s from schema %d to %d; DNS answers meanwhile, "
                 "events wait in the queue", self.describe(), version, SCHEMA_VERSION)
        started = time.monotonic()
        try:
            self._build(cur, version)
        except Exception as exc:
            raise MigrationFailed(f"{self.describe()}: migrating the event store from schema {version} to "
                                  f"{SCHEMA_VERSION} failed: {exc}; it stays at schema {version} (nothing was "
                                  "changed)") from exc
        log.info("events: migrated the event store %s from schema %d to %d in %.1f s", self.describe(), version,
                 SCHEMA_VERSION, time.monotonic() - started)

    def _version(self, cur: Any) -> int:
        cur.execute("CREATE TABLE IF NOT EXISTS netblock_schema (version INTEGER NOT NULL)")
        cur.execute("SELECT version FROM netblock_schema")
        found = cur.fetchone()
        return int(found[0]) if found else 0

    def _lock(self, cur: Any) -> None:
        """Take the lock that makes creating or migrating the schema one netblock's job."""

    def describe(self) -> str:
        return self.kind

    def floor(self, expression: str) -> str:
        """SQL for floor(expression) of a non-negative number (SQLite has no FLOOR by default)."""
        return f"CAST({expression} AS INTEGER)"

    # -- writing (the writer thread)

    def write(self, rows: Sequence[Row]) -> None:
        """Insert one batch in one transaction; on error nothing of it is stored."""
        try:
            self._write(rows)
        except Exception as exc:
            if not self._foreign_key_failed(exc):
                raise
            # Another writer (a fleet's instance, or the other process of a restart) deleted a
            # shape (retention) this one had cached:
            # the cache is empty now, and the batch is written with the shapes looked up again.
            self._write(rows)

    def _write(self, rows: Sequence[Row]) -> None:
        known = self._shape_ids
        try:
            cur = self.conn.cursor()
            values: list[Any] = []
            for ts, shape, name, rule in rows:
                values += (ts, known.get(shape) or self._shape_id(cur, shape), name, rule)  # ids start at 1
            step = INSERT_ROWS * 4
            whole = len(values) - len(values) % step
            for start in range(0, whole, step):
                cur.execute(_insert_sql(self.placeholder, INSERT_ROWS), values[start : start + step])
            if whole < len(values):  # the rest a row at a time: two statements in all, whatever the batch
                rest = values[whole:]
                cur.executemany(_insert_sql(self.placeholder, 1), [rest[i : i + 4] for i in range(0, len(rest), 4)])
            self.conn.commit()
        except Exception:
            self._rollback()
            known.clear()  # it may hold shapes inserted by the transaction just rolled back
            raise

    def _shape_id(self, cur: Any, shape: Shape) -> int:
        """The id of a shape the cache does not hold: looked up, or added. Two instances of a
        fleet may add the same shape at once: DO NOTHING lets the second find the first's."""
        cur.execute(self._find_shape_sql, shape)
        found = cur.fetchone()
        if found is None:
            cur.execute(self._add_shape_sql, shape)
            cur.execute(self._find_shape_sql, shape)
            found = cur.fetchone()
        shape_id = int(found[0])
        make_room(self._shape_ids, SHAPE_IDS_MAX)
        self._shape_ids[shape] = shape_id
        return shape_id

    def _foreign_key_failed(self, exc: Exception) -> bool:
        """True if a write failed because an event named a shape that no longer exists."""
        return False

    # The shapes no event names. SQLite has one writer at a time: nothing can name them meanwhile.
    _unused_shapes_sql = ("DELETE FROM event_shapes WHERE NOT EXISTS "
                          "(SELECT 1 FROM event_log WHERE event_log.shape = event_shapes.id)")

    def purge(self, before: float) -> int:
        """Delete events older than `before` (retention), then the shapes no event names.

        Two transactions: the events' deletion stands even when the shapes' fails. Another
        writer may name a shape being deleted (PostgreSQL: _unused_shapes_sql skips the shapes
        an uncommitted event names; one committed after this transaction looked fails the
        foreign key): those shapes are left to the next pass."""
        try:
            cur = self.conn.cursor()
            cur.execute(f"DELETE FROM event_log WHERE ts < {self.placeholder}", (before,))
            removed = int(cur.rowcount or 0)
            self.conn.commit()
            try:
                cur.execute(self._unused_shapes_sql)
                self.conn.commit()
            except Exception as exc:
                if not self._foreign_key_failed(exc):
                    raise
                self._rollback()
            return removed
        except Exception:
            self._rollback()
            raise
        finally:
            self._shape_ids.clear()  # never name a deleted shape

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception:
            pass

    # -- reading (reports)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        cur.execute(sql.replace("?", self.placeholder), tuple(params))
        rows = [tuple(r) for r in cur.fetchall()]
        self.conn.commit()  # end the read transaction so a follower sees new rows
        return rows

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None


class SqliteStore(EventStore):
    kind = "sqlite"

    def __init__(self, path: str, create: bool = True) -> None:
        super().__init__()
        self.path = path
        if not create and not Path(path).exists():
            raise StoreError(f"{path}: no events database here")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # One thread at a time: check_same_thread off so that stop() can close what the writer opened.
            self.conn = sqlite3.connect(path, timeout=10, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, fast commits
            self.conn.execute("PRAGMA busy_timeout=10000")
            self._migrate(create)
            # After the migration (its copy is consistent by construction) and outside a
            # transaction (where the pragma does nothing): an event naming a shape another
            # writer of this file deleted fails, and is written again (_foreign_key_failed).
            self.conn.execute("PRAGMA foreign_keys=ON")
        except StoreError:
            self.close()
            raise
        except (sqlite3.DatabaseError, OSError) as exc:  # OSError: its directory cannot be made
            self.close()
            raise StoreError(f"{path}: {exc}") from None

    def _foreign_key_failed(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and (
            getattr(exc, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_FOREIGNKEY"
            or "FOREIGN KEY constraint failed" in str(exc))

    def _lock(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")  # the write lock now; another netblock waits (busy_timeout)

    def describe(self) -> str:
        return self.path


class PostgresStore(EventStore):
    kind = "postgres"
    placeholder = "%s"

    def __init__(self, dsn: str, create: bool = True) -> None:
        super().__init__()
        self.dsn = dsn
        try:
            import psycopg
        except ImportError:
            raise StoreError("PostgreSQL events need psycopg 3: pip install 'netblock[postgres]'") from None
        self._foreign_key_violation = psycopg.errors.ForeignKeyViolation
        try:
            self.conn = psycopg.connect(dsn, connect_timeout=10)
            with self.conn.cursor() as cur:
                # Instances of a fleet start together: one creates the schema, the others wait.
                cur.execute("SELECT pg_advisory_xact_lock(7323707)")
            self._migrate(create)
        except StoreError:
            self.close()
            raise
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"{self.describe()}: {exc}".strip()) from None

    def _foreign_key_failed(self, exc: Exception) -> bool:
        return isinstance(exc, self._foreign_key_violation)

    # The shapes no event names, but not those an uncommitted event of another instance names
    # (its foreign-key check holds a KEY SHARE lock on them): skipped, not waited for.
    _unused_shapes_sql = ("DELETE FROM event_shapes WHERE id IN (SELECT s.id FROM event_shapes s WHERE NOT EXISTS "
                          "(SELECT 1 FROM event_log l WHERE l.shape = s.id) FOR UPDATE SKIP LOCKED)")

    def floor(self, expression: str) -> str:
        return f"FLOOR({expression})"  # a CAST rounds in PostgreSQL

    def describe(self) -> str:
        # Never print a password from the DSN.
        text = re.sub(r"(password=)\S+", r"\1***", self.dsn)
        return "postgresql " + re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", text)
