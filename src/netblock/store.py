"""The event store: one schema in SQLite (the default) or PostgreSQL (a fleet).

The writer thread inserts batches; `netblock report` and `netblock events` read. Both
back-ends get the same table and the same SQL: queries are written with `?` placeholders
and PostgreSQL's driver gets them as `%s`. The schema is versioned in `netblock_schema`
so a later netblock can migrate a database an older one created, and an older netblock
refuses a database a newer one wrote instead of misreading it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# The event columns in insert order (the `id` column is the store's own).
COLUMNS = (
    "ts", "instance", "device", "device_known", "owner", "department", "id_source",
    "client_ip", "client_mac", "name", "qtype", "list_name", "vendor", "rule", "rule_origin",
    "stage", "action", "policy_id", "protocol",
)

Row = tuple[Any, ...]

_COLUMNS_DDL = """
    ts DOUBLE PRECISION NOT NULL,      -- epoch seconds, UTC
    instance TEXT NOT NULL,            -- the netblock server that saw it (fleets)
    device TEXT NOT NULL,              -- inventory name, lease host name, or the client IP
    device_known INTEGER NOT NULL,     -- 1: named by the inventory
    owner TEXT NOT NULL,
    department TEXT NOT NULL,
    id_source TEXT NOT NULL,           -- which source named the device (devices.py)
    client_ip TEXT NOT NULL,
    client_mac TEXT NOT NULL,
    name TEXT NOT NULL,                -- presentation form, RFC 1035 escapes
    qtype TEXT NOT NULL,
    list_name TEXT NOT NULL,
    vendor TEXT NOT NULL,
    rule TEXT NOT NULL,                -- the entry as written
    rule_origin TEXT NOT NULL,         -- file:line of the entry
    stage TEXT NOT NULL,               -- query, cname, answer-ip, sni, quic, http-host, ...
    action TEXT NOT NULL,              -- block | monitor
    policy_id TEXT NOT NULL,
    protocol TEXT NOT NULL             -- udp | tcp | dot | doh
"""

# Version -> statements that bring the schema from version-1 to version.
_MIGRATIONS: dict[str, dict[int, tuple[str, ...]]] = {
    "sqlite": {
        1: (
            f"CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, {_COLUMNS_DDL})",
            "CREATE INDEX IF NOT EXISTS events_device_ts ON events (device, ts)",
            "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
        ),
    },
    "postgres": {
        1: (
            "CREATE TABLE IF NOT EXISTS events "
            f"(id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {_COLUMNS_DDL})",
            "CREATE INDEX IF NOT EXISTS events_device_ts ON events (device, ts)",
            "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
        ),
    },
}


class StoreError(Exception):
    """The store cannot be opened or is not ours (a clear message for the operator)."""


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

    # -- schema

    def _migrate(self, create: bool) -> None:
        cur = self.conn.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS netblock_schema (version INTEGER NOT NULL)")
        cur.execute("SELECT version FROM netblock_schema")
        found = cur.fetchone()
        version = found[0] if found else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.describe()}: schema version {version} was written by a newer netblock "
                             f"(this one knows {SCHEMA_VERSION}); refusing to touch it")
        if version < SCHEMA_VERSION and not create:
            raise StoreError(f"{self.describe()}: no netblock events here (schema version {version})")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[self.kind][step]:
                cur.execute(statement)
        if version == 0:
            cur.execute("INSERT INTO netblock_schema (version) VALUES (?)".replace("?", self.placeholder),
                        (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            cur.execute("UPDATE netblock_schema SET version = ?".replace("?", self.placeholder),
                        (SCHEMA_VERSION,))
        self.conn.commit()

    def describe(self) -> str:
        return self.kind

    def floor(self, expression: str) -> str:
        """SQL for floor(expression) of a non-negative number (SQLite has no FLOOR by default)."""
        return f"CAST({expression} AS INTEGER)"

    # -- writing (the writer thread)

    def write(self, rows: Sequence[Row]) -> None:
        """Insert one batch in one transaction; on error nothing of it is stored."""
        sql = (f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES "
               f"({', '.join([self.placeholder] * len(COLUMNS))})")
        try:
            cur = self.conn.cursor()
            cur.executemany(sql, rows)
            self.conn.commit()
        except Exception:
            self._rollback()
            raise

    def purge(self, before: float) -> int:
        """Delete events older than `before` (retention)."""
        try:
            cur = self.conn.cursor()
            cur.execute("DELETE FROM events WHERE ts < ?".replace("?", self.placeholder), (before,))
            self.conn.commit()
            return int(cur.rowcount or 0)
        except Exception:
            self._rollback()
            raise

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception:
            pass

    # -- reading (reports)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
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
            # One thread writes; check_same_thread off because start() opens it for the thread.
            self.conn = sqlite3.connect(path, timeout=10, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, fast commits
            self.conn.execute("PRAGMA busy_timeout=10000")
            self._migrate(create)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"{path}: {exc}") from None

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
        try:
            self.conn = psycopg.connect(dsn, connect_timeout=10)
            with self.conn.cursor() as cur:
                # Instances of a fleet start together: one creates the schema, the others wait.
                cur.execute("SELECT pg_advisory_xact_lock(7323707)")
            self._migrate(create)
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"{self.describe()}: {exc}".strip()) from None

    def floor(self, expression: str) -> str:
        return f"FLOOR({expression})"  # a CAST rounds in PostgreSQL

    def describe(self) -> str:
        # Never print a password from the DSN.
        text = re.sub(r"(password=)\S+", r"\1***", self.dsn)
        return "postgresql " + re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", text)
