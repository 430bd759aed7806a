"""The event recorder on its own: sinks, JSON lines, rotation, retention, drops, full disk."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netblock import events as events_module
from netblock.config import Config, Devices, Events, Metrics, Server
from netblock.events import EventRecorder, JsonLines
from netblock.names import from_wire
from netblock.policy.rule import Citation, Response, Rule
from netblock.stats import Stats
from netblock.store import SCHEMA_VERSION, StoreError, open_store

BLOCK = Rule(
    "wechat",
    "Tencent WeChat (Weixin)",
    "weixin.qq.com",
    "subtree",
    "block",
    Response(),
    Citation("GOV-1", "Ban", "https://policy.example/ban"),
    300,
    "wechat.yaml:12",
)
MONITOR = Rule(
    "kaspersky-monitor",
    "Kaspersky",
    "support.kaspersky.com",
    "subtree",
    "monitor",
    Response(),
    Citation("GOV-2"),
    300,
    "kaspersky-monitor.yaml:3",
)


def wire(*labels: bytes) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def wait_until(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[EventRecorder]:
    rec = EventRecorder(
        tmp_path / "events.jsonl", 1000, "unit", store=str(tmp_path / "events.db"), flush_interval=0.02
    )
    rec.start()
    yield rec
    rec.stop()


def read_lines(path: Path) -> list[dict[str, object]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n") or not raw
    return [json.loads(line) for line in raw.decode("ascii").split("\n")[:-1]]


HOSTILE_LABELS = [
    b"line\nbreak",
    b"\x1b[31mred",
    b'quote"and\\backslash',
    b"dot.inside",
    b"nul\x00byte",
    b"<script>alert(1)</script>",
    b"utf8-\xc3\xa9",
    b"tab\tcr\r",
]


def test_every_json_line_is_one_valid_object(recorder: EventRecorder, tmp_path: Path) -> None:
    names = [from_wire(wire(label, b"weixin", b"qq", b"com")) for label in HOSTILE_LABELS]
    long_name = from_wire(wire(*([b"a" * 63] * 3), b"b" * 61))  # 255 octets on the wire
    names.append(long_name)
    for name in names:
        recorder.record(time.time(), "10.0.0.1", "", name, 1, BLOCK, "query", "udp")
    assert wait_until(lambda: recorder.written == len(names))
    docs = read_lines(tmp_path / "events.jsonl")
    assert [d["dns"]["question"]["name"] for d in docs] == names  # type: ignore[index]
    # The one-label "dot.inside" stays distinguishable from the two-label name.
    assert "dot\\.inside.weixin.qq.com." in names
    assert all("\n" not in n and "\x1b" not in n and "\x00" not in n for n in names)
    for doc in docs:
        assert doc["event"]["action"] == "block"  # type: ignore[index]
        assert doc["rule"]["ruleset"] == "wechat"  # type: ignore[index]
        assert doc["client"]["ip"] == "10.0.0.1"  # type: ignore[index]
        assert doc["observer"]["name"] == "unit"  # type: ignore[index]
        assert doc["@timestamp"].endswith("Z")  # type: ignore[union-attr]
    stored = sqlite3.connect(tmp_path / "events.db").execute("SELECT name FROM events ORDER BY id").fetchall()
    assert [row[0] for row in stored] == names


def test_ecs_fields(recorder: EventRecorder, tmp_path: Path) -> None:
    recorder.record(1764320000.25, "10.0.0.9", "aa:bb:cc:dd:ee:ff", "weixin.qq.com.", 28, BLOCK, "sni", "tcp")
    recorder.record(1764320001.0, "10.0.0.9", "", "support.kaspersky.com.", 1, MONITOR, "query", "udp")
    assert wait_until(lambda: recorder.written == 2)
    blocked, monitored = read_lines(tmp_path / "events.jsonl")
    assert blocked["@timestamp"] == "2025-11-28T08:53:20.250Z"
    assert blocked["client"] == {"ip": "10.0.0.9", "address": "10.0.0.9", "mac": "AA-BB-CC-DD-EE-FF"}
    assert blocked["dns"] == {"question": {"name": "weixin.qq.com.", "type": "AAAA"}, "type": "query"}
    assert blocked["event"]["type"] == ["denied"] and blocked["event"]["kind"] == "alert"  # type: ignore[index]
    assert blocked["network"] == {"protocol": "tls", "transport": "tcp"}
    assert blocked["rule"]["reference"] == "https://policy.example/ban"  # type: ignore[index]
    assert blocked["netblock"]["policy_id"] == "GOV-1"  # type: ignore[index]
    assert monitored["event"]["action"] == "monitor" and monitored["event"]["type"] == ["info"]  # type: ignore[index]


def test_sqlite_schema_wal_indexes_and_version(recorder: EventRecorder, tmp_path: Path) -> None:
    recorder.record(time.time(), "10.0.0.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
    assert wait_until(lambda: recorder.written == 1)
    db = sqlite3.connect(tmp_path / "events.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM netblock_schema").fetchall() == [(SCHEMA_VERSION,)] == [(2,)]
    kinds = dict(db.execute("SELECT name, type FROM sqlite_master WHERE name IN ('events', 'event_log', "
                            "'event_shapes')"))
    assert kinds == {"events": "view", "event_log": "table", "event_shapes": "table"}
    indexes = {row[1] for row in db.execute("PRAGMA index_list(event_log)")}
    assert {"event_log_shape_ts", "event_log_ts"} <= indexes

    def plan(where: str) -> str:
        return " ".join(str(r) for r in db.execute(f"EXPLAIN QUERY PLAN SELECT * FROM events WHERE {where}"))

    # Through the view: a device's shapes by the unique index (device first), its events by (shape, ts).
    device = plan("device = 'x' AND ts > 0")
    assert "event_log_shape_ts (shape=? AND ts>?)" in device and "event_shapes" in device, device
    assert "SCAN" not in device
    span = plan("ts >= 1 AND ts < 2")
    assert "event_log_ts (ts>? AND ts<?)" in span and "SCAN" not in span, span
    follow = plan("id > 5")
    assert "PRIMARY KEY (rowid>?)" in follow and "SCAN" not in follow, follow
    db.execute("UPDATE netblock_schema SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer netblock"):
        open_store(str(tmp_path / "events.db"))


def test_batches_are_one_transaction_each(tmp_path: Path) -> None:
    rec = EventRecorder(
        None, 10_000, "unit", store=str(tmp_path / "e.db"), batch_size=500, flush_interval=0.05
    )
    for i in range(2000):
        rec.record(time.time(), f"10.0.{i % 4}.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
    commits = []
    original = rec.write_batch
    rec.write_batch = lambda batch: (commits.append(len(batch)), original(batch))[1]  # type: ignore[method-assign]
    rec.start()
    try:
        assert wait_until(lambda: rec.written == 2000)
    finally:
        rec.stop()
    assert commits == [500, 500, 500, 500]


def test_queue_full_is_a_counted_drop() -> None:
    rec = EventRecorder(None, 5, "unit")
    for _ in range(12):
        rec.record(time.time(), "10.0.0.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
    assert len(rec.queue) == 5
    assert rec.dropped == 7


def test_stop_flushes_what_is_queued(tmp_path: Path) -> None:
    rec = EventRecorder(tmp_path / "e.jsonl", 10_000, "unit", store=str(tmp_path / "e.db"), flush_interval=5)
    rec.start()
    for _ in range(3000):
        rec.record(time.time(), "10.0.0.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
    started = time.monotonic()
    rec.stop()
    assert time.monotonic() - started < 10  # stop() is bounded (5 s of draining), not a speed claim
    assert rec.written == 3000
    assert len(read_lines(tmp_path / "e.jsonl")) == 3000


def test_rotation_by_size(tmp_path: Path) -> None:
    rec = EventRecorder(
        tmp_path / "e.jsonl",
        10_000,
        "unit",
        jsonl_max_bytes=20_000,
        jsonl_backups=2,
        batch_size=10,
        flush_interval=0.01,
    )
    rec.start()
    try:
        for _ in range(200):
            rec.record(time.time(), "10.0.0.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
        assert wait_until(lambda: rec.written == 200)
    finally:
        rec.stop()
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("e.jsonl"))
    assert files == ["e.jsonl", "e.jsonl.1", "e.jsonl.2"]  # never more than `backups` old files
    for name in files:
        assert (tmp_path / name).stat().st_size <= 20_000
        assert all(doc["rule"]["ruleset"] == "wechat" for doc in read_lines(tmp_path / name))  # type: ignore[index]


def test_external_rotation_reopens(tmp_path: Path) -> None:
    sink = JsonLines(tmp_path / "e.jsonl", 0, 0)
    sink.write(b'{"a":1}\n')
    (tmp_path / "e.jsonl").rename(tmp_path / "moved")
    sink.write(b'{"a":2}\n')
    assert (tmp_path / "e.jsonl").read_bytes() == b'{"a":2}\n'
    sink.close()


def test_retention_purges_old_events(tmp_path: Path) -> None:
    rec = EventRecorder(
        None, 1000, "unit", store=str(tmp_path / "e.db"), retention_days=30, flush_interval=0.02
    )
    now = time.time()
    rec.record(now - 40 * 86_400, "10.0.0.1", "", "old.weixin.qq.com.", 1, BLOCK, "query", "udp")
    rec.record(now - 10 * 86_400, "10.0.0.1", "", "recent.weixin.qq.com.", 1, BLOCK, "query", "udp")
    rec.start()
    try:
        assert wait_until(lambda: rec.written == 2)
        rec._next_retention = 0  # the next pass is due now
        assert wait_until(
            lambda: (
                sqlite3.connect(tmp_path / "e.db").execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
            )
        )
    finally:
        rec.stop()
    names = sqlite3.connect(tmp_path / "e.db").execute("SELECT name FROM events").fetchall()
    assert names == [("recent.weixin.qq.com.",)]


def test_from_config_and_per_device_metric(tmp_path: Path) -> None:
    (tmp_path / "inv.yaml").write_text(
        "devices:\n  - name: boss-laptop\n    owner: Boss\n    ips: [10.1.1.1]\n"
    )
    config = Config(
        server=Server(instance="edge-1"),
        events=Events(sqlite="var/e.db", jsonl="var/e.jsonl", flush_interval=0.02),
        devices=Devices(inventory="inv.yaml", neighbours=False),
        metrics=Metrics(per_device=True),
        path=str(tmp_path / "netblock.yaml"),
    )
    stats = Stats()
    rec = EventRecorder.from_config(config, stats)
    assert rec.path == tmp_path / "var" / "e.jsonl"
    rec.start()
    try:
        for client in ("10.1.1.1", "10.1.1.1", "10.1.1.2"):
            rec.record(time.time(), client, "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
        assert wait_until(lambda: rec.written == 3)
    finally:
        rec.stop()
    assert stats.device_blocked == {"boss-laptop": 2}  # only inventory devices get a metric label
    rows = (
        sqlite3.connect(tmp_path / "var" / "e.db")
        .execute("SELECT device, owner, instance, id_source FROM events ORDER BY id")
        .fetchall()
    )
    assert rows[0] == ("boss-laptop", "Boss", "edge-1", "inventory-ip")
    assert rows[2] == ("10.1.1.2", "", "edge-1", "ip")


def test_per_device_metric_off_by_default(tmp_path: Path) -> None:
    (tmp_path / "inv.yaml").write_text("devices:\n  - name: boss-laptop\n    ips: [10.1.1.1]\n")
    config = Config(
        events=Events(sqlite="e.db", jsonl="", flush_interval=0.02),
        devices=Devices(inventory="inv.yaml", neighbours=False),
        path=str(tmp_path / "n.yaml"),
    )
    stats = Stats()
    rec = EventRecorder.from_config(config, stats)
    rec.start()
    rec.record(time.time(), "10.1.1.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
    assert wait_until(lambda: rec.written == 1)
    rec.stop()
    assert stats.device_blocked == {}


def test_disabled_records_nothing(tmp_path: Path) -> None:
    config = Config(
        events=Events(enabled=False, sqlite="e.db", jsonl="e.jsonl"), path=str(tmp_path / "n.yaml")
    )
    rec = EventRecorder.from_config(config)
    rec.start()
    rec.record(time.time(), "10.1.1.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
    rec.stop()
    assert len(rec.queue) == 0 and rec.dropped == 0
    assert not (tmp_path / "e.db").exists() and not (tmp_path / "e.jsonl").exists()


def test_unopenable_store_is_logged_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "db").write_text("this is not a database, it is a text file that is long enough" * 20)
    rec = EventRecorder(tmp_path / "e.jsonl", 1000, "unit", store=str(tmp_path / "db"), flush_interval=0.02)
    with caplog.at_level(logging.ERROR, logger="netblock.events"):
        rec.start()  # must not raise: DNS serves either way (the writer thread opens the store)
        rec.record(time.time(), "10.1.1.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
        assert wait_until(lambda: rec.dropped == 1)
        rec.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot write to the event store" in errors[0], errors  # once, not per batch
    assert "file is not a database" in errors[0]
    assert len(read_lines(tmp_path / "e.jsonl")) == 1  # the JSON lines still got it


def test_store_whose_directory_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where the database's directory should be")
    target = str(tmp_path / "file" / "events" / "e.db")
    with pytest.raises(StoreError, match=re.escape(target)):
        open_store(target)  # `netblock report` says this, not a traceback
    rec = EventRecorder(None, 1000, "unit", store=target, flush_interval=0.02)
    rec.start()
    try:
        rec.record(time.time(), "10.1.1.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
        assert wait_until(lambda: rec.dropped == 1)  # counted, and the writer lives on
        assert rec._thread is not None and rec._thread.is_alive()
    finally:
        rec.stop()


def test_a_bug_opening_the_store_is_logged_with_its_traceback(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture,
                                                              tmp_path: Path) -> None:
    """Not a StoreError: a programming error, logged with a traceback; the writer lives on."""
    def broken(target: str) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(events_module, "open_store", broken)
    rec = EventRecorder(None, 1000, "unit", store=str(tmp_path / "e.db"), flush_interval=0.02)
    rec.start()
    try:
        rec.record(time.time(), "10.1.1.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
        assert wait_until(lambda: rec.dropped == 1)
        assert rec._thread is not None and rec._thread.is_alive()
    finally:
        rec.stop()
    failures = [r for r in caplog.records if "opening the store failed unexpectedly" in r.getMessage()]
    assert failures and failures[0].exc_info is not None


# ---------------------------------------------------------------- a full filesystem


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem until a write fails; returns the filler file."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        try:
            for _ in range(10_000):
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    try:
        with filler.open("ab") as out:  # the last few bytes
            for _ in range(70_000):
                out.write(b"\0")
                out.flush()
    except OSError:
        pass
    return filler


def test_full_disk_drops_counted_one_error_then_resumes(
    small_tmpfs: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = EventRecorder(
        small_tmpfs / "events.jsonl",
        100_000,
        "unit",
        store=str(small_tmpfs / "events.db"),
        batch_size=50,
        flush_interval=0.01,
    )
    rec.start()

    def send(count: int) -> None:
        for _ in range(count):
            rec.record(time.time(), "10.0.0.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")

    try:
        send(100)
        assert wait_until(lambda: rec.written == 100)
        filler = fill(small_tmpfs)
        with caplog.at_level(logging.ERROR, logger="netblock.events"):
            for _ in range(20):  # many failing batches...
                send(50)
                wait_until(lambda: not rec.queue, 5)
        assert wait_until(lambda: rec.dropped > 0)
        assert rec.jsonl_dropped > 0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert 1 <= len(errors) <= 2, [
            r.getMessage() for r in errors
        ]  # ...one line per sink, not one per batch
        for line in (small_tmpfs / "events.jsonl").read_bytes().split(b"\n")[:-1]:
            json.loads(line)  # a half-written batch was cut back: no torn line
        filler.unlink()
        before = rec.written
        send(100)
        assert wait_until(lambda: rec.written == before + 100), (rec.written, before, rec.dropped)
        assert rec.jsonl_sink is not None and not rec.jsonl_sink.failing
    finally:
        rec.stop()
    db = sqlite3.connect(small_tmpfs / "events.db")
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == rec.written
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_events_file_on_dev_full(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """/dev/full as the events file: every line fails, the database still gets every event."""
    rec = EventRecorder(
        Path("/dev/full"),
        1000,
        "unit",
        store=str(tmp_path / "e.db"),
        jsonl_max_bytes=0,
        batch_size=10,
        flush_interval=0.01,
    )
    with caplog.at_level(logging.ERROR, logger="netblock.events"):
        rec.start()
        for _ in range(100):
            rec.record(time.time(), "10.0.0.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
        assert wait_until(lambda: rec.written == 100)
        rec.stop()
    assert rec.jsonl_dropped == 100
    assert rec.dropped == 0  # the database, the primary store, has them all
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "/dev/full" in errors[0] and events_module.ERROR_INTERVAL == 60.0


def test_repeated_events_keep_their_own_time_and_the_current_device_name(tmp_path: Path) -> None:
    """The writer renders a repeated event once; its time and a renamed device still show."""
    inventory = tmp_path / "inv.yaml"
    inventory.write_text("devices:\n  - name: desk-1\n    ips: [10.1.1.1]\n")
    config = Config(  # no retention: these times are years old
        events=Events(sqlite="e.db", jsonl="e.jsonl", flush_interval=0.02, retention_days=0),
        devices=Devices(inventory="inv.yaml", neighbours=False),
        path=str(tmp_path / "n.yaml"),
    )
    rec = EventRecorder.from_config(config)
    rec.start()
    try:
        for ts in (1_700_000_000.25, 1_700_000_001.5):
            rec.record(ts, "10.1.1.1", "", b"\x06weixin\x02qq\x03com\x00", 1, BLOCK, "query", "udp")
        assert wait_until(lambda: rec.written == 2)
        inventory.write_text("devices:\n  - name: desk-1-renamed\n    ips: [10.1.1.1]\n")
        assert rec.identifier is not None
        rec.identifier.refresh()
        rec.record(1_700_000_002.75, "10.1.1.1", "", b"\x06weixin\x02qq\x03com\x00", 1, BLOCK, "query", "udp")
        assert wait_until(lambda: rec.written == 3)
    finally:
        rec.stop()
    rows = sqlite3.connect(tmp_path / "e.db").execute("SELECT ts, device, name FROM events ORDER BY id").fetchall()
    assert rows == [(1_700_000_000.25, "desk-1", "weixin.qq.com."), (1_700_000_001.5, "desk-1", "weixin.qq.com."),
                    (1_700_000_002.75, "desk-1-renamed", "weixin.qq.com.")]
    docs = read_lines(tmp_path / "e.jsonl")
    assert [d["@timestamp"] for d in docs] == ["2023-11-14T22:13:20.250Z", "2023-11-14T22:13:21.500Z",
                                               "2023-11-14T22:13:22.750Z"]
    assert [d["netblock"]["device"]["name"] for d in docs] == ["desk-1", "desk-1", "desk-1-renamed"]  # type: ignore[index]
    assert docs[0]["dns"] == docs[2]["dns"] == {"question": {"name": "weixin.qq.com.", "type": "A"}, "type": "query"}


def test_rendered_names_are_kept_within_their_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wire names are rendered once and kept, for the names devices repeat; the bound holds
    and names rendered from the cache read as from_wire reads them."""
    monkeypatch.setattr(events_module, "NAMES_MAX", 4)
    rec = EventRecorder(tmp_path / "e.jsonl", 10_000, "unit")
    wires = [b"\x01" + bytes([ord("a") + i]) + b"\x03dot\x01.\x02qq\x03com\x00" for i in range(10)]
    batch: list[events_module.RawEvent] = [(1.0, "10.0.0.1", "", wire, 1, BLOCK, "query", "udp")
                                           for wire in wires + wires[-3:] * 2]
    rec.write_batch(batch)
    assert 0 < len(rec._names) <= 4
    assert [d["dns"]["question"]["name"] for d in read_lines(tmp_path / "e.jsonl")] == [  # type: ignore[index]
        from_wire(event[3]) for event in batch]  # type: ignore[arg-type]
    assert from_wire(wires[0]) == "a.dot.\\..qq.com."


def test_clients_named_by_ip_are_bounded_and_the_newer_half_kept(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an identifier a client is its IP; a full table forgets its older half, so
    the clients first seen most recently keep their Identity (and the shapes keyed on it)."""
    monkeypatch.setattr(events_module, "IDENTITIES_MAX", 8)
    rec = EventRecorder(tmp_path / "e.jsonl", 10_000, "unit")
    first = {i: rec.identify(f"10.0.0.{i}", "") for i in range(8)}
    assert rec.identify("10.0.0.9", "") is not None  # the ninth: room made
    assert len(rec._by_ip) == 5
    assert all(rec.identify(f"10.0.0.{i}", "") is first[i] for i in range(4, 8))  # the newer half kept
    assert rec.identify("10.0.0.0", "") is not first[0]  # the older one was forgotten
    assert len(rec._by_ip) <= 8


@pytest.mark.parametrize("name", ["weixin.qq.com.", "a\\.b.weixin.qq.com.", 'q"uote\\\\.example.', "\\000x.cn.",
                                  "bücher.example", "\U0001f600.example", "ctl\x01.example", "100%.example.",
                                  "del\x7f.example", "q\"uote.example", ""])
@pytest.mark.parametrize("owner", ['O "Q"', "a\x00name\x00b", "\x00pattern\x00", "50% %(name)s %s"])
def test_a_shaped_event_renders_as_the_full_document(name: str, owner: str) -> None:
    """The writer's shapes (rendered once, name and time filled in) give the same row and
    JSON as rendering the event whole, whatever the name holds; a device field that holds a
    placeholder makes the shape render whole."""
    from netblock.devices import Device, Identity

    identity = Identity(Device("desk-1", owner=owner, tags=("a",)), "aa:bb:cc:dd:ee:ff", "inventory-ip")
    event: events_module.RawEvent = (1_700_000_000.125, "10.1.1.1", "aa:bb:cc:dd:ee:ff", name, 28, BLOCK, "sni",
                                     "tcp")
    shape = events_module._shape_of(event, identity, "edge-1")
    assert isinstance(shape, events_module._Whole) == ("\x00" in owner)
    assert shape.row(event) == events_module.to_row(event, identity, "edge-1")
    line = shape.line(event)
    line.encode("ascii")  # the file is written as ASCII
    assert json.loads(line) == events_module.to_document(event, "edge-1", identity)


def test_writer_builds_a_shape_on_the_second_sighting(tmp_path: Path) -> None:
    rec = EventRecorder(tmp_path / "e.jsonl", 100, "unit")
    for number in range(3):
        rec.write_batch([(1_700_000_000.0 + number, "10.1.1.1", "", f"n{number}.weixin.qq.com.", 1, BLOCK, "query",
                          "udp")])
        kinds = [type(shape).__name__ for shape in rec._shapes.values()]
        assert kinds == (["NoneType"] if number == 0 else ["_Shape"])
    docs = read_lines(tmp_path / "e.jsonl")
    assert [d["dns"]["question"]["name"] for d in docs] == [  # type: ignore[index]
        "n0.weixin.qq.com.", "n1.weixin.qq.com.", "n2.weixin.qq.com."]


def test_writer_thread_runs_at_a_lower_priority(tmp_path: Path) -> None:
    """Answering wins the core under saturation: the writer thread alone is niced."""
    rec = EventRecorder(tmp_path / "e.jsonl", 100, "unit", flush_interval=0.02)
    rec.start()
    try:
        assert rec._thread is not None and rec._thread.native_id is not None
        stat = Path(f"/proc/self/task/{rec._thread.native_id}/stat").read_text()
        nice = int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of stat(5)
        assert nice == events_module.WRITER_NICE
        assert os.getpriority(os.PRIO_PROCESS, 0) != events_module.WRITER_NICE  # not the whole process
    finally:
        rec.stop()


def test_writer_rests_in_proportion_under_a_flood(tmp_path: Path) -> None:
    """With a backlog the writer takes at most max_cpu_share: after a batch that took t it
    waits t * (1/share - 1) before the next (a lower bound: a loaded machine only adds)."""
    rec = EventRecorder(tmp_path / "e.jsonl", 10_000, "unit", batch_size=100, flush_interval=5,
                        max_cpu_share=0.25)
    spans: list[tuple[float, float]] = []

    def slow_batch(batch: list[events_module.RawEvent]) -> None:
        started = time.perf_counter()
        time.sleep(0.02)
        spans.append((started, time.perf_counter()))

    rec.write_batch = slow_batch  # type: ignore[method-assign]
    for _ in range(500):
        rec.record(time.time(), "10.0.0.1", "", "weixin.qq.com.", 1, BLOCK, "query", "udp")
    rec.start()
    try:
        assert wait_until(lambda: len(spans) >= 4)
    finally:
        rec.stop()
    for (start, end), (next_start, _) in itertools.pairwise(spans[:4]):  # all before stop()
        assert next_start - end >= 3 * (end - start) * 0.9


def test_max_cpu_share_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    from netblock.config import load_config
    from netblock.yamlsrc import SourceError

    path = tmp_path / "netblock.yaml"
    for value in ("0", "1.5"):
        path.write_text(f"events:\n  max_cpu_share: {value}\n")
        with pytest.raises(SourceError, match=r"netblock\.yaml:2: events\.max_cpu_share: must be a fraction"):
            load_config(path)
