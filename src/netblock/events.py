"""Blocked-attempt events: the query path appends a tuple; a writer thread stores them.

`record()` is the whole cost on the query path: one bounded deque append, or one counted
drop when the queue is full. The writer thread does everything else per batch: names the
device (devices.py), inserts into the store (SQLite or PostgreSQL, store.py) and appends
Elastic Common Schema JSON lines to a file rotated by size.

A sink that fails (disk full, database gone) loses that batch, counts it, logs one error
per minute at most, and is tried again with the next batch: writing resumes by itself
when space returns, and DNS never waits for it. The writer thread also opens the store,
which may migrate its schema (minutes for a big store): events wait in the queue meanwhile.
A store that cannot be opened is tried again later and later (_retry_after).
"""

from __future__ import annotations

import collections
import errno
import functools
import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netblock.devices import Device, DeviceIdentifier, Identity
from netblock.names import from_wire
from netblock.policy.rule import Rule, citing
from netblock.store import EventStore, MigrationFailed, Row, Shape, StoreError, make_room, open_store

if TYPE_CHECKING:
    from netblock.config import Config
    from netblock.stats import Stats

WRITER_NICE = 10
SHAPES_MAX = 10_000  # rendered event shapes kept
NAMES_MAX = 10_000  # query names kept rendered: a device beacons to the same few endpoints
IDENTITIES_MAX = 10_000  # clients named by IP alone when there is no identifier
log = logging.getLogger(__name__)

# (time, client ip, client mac or "", name in presentation form, qtype, rule, stage, protocol)
RawEvent = tuple[float, str, str, str | bytes, int, Rule, str, str]

ECS_VERSION = "8.11.0"
ERROR_INTERVAL = 60.0  # seconds between two error lines about the same failing sink
RETENTION_INTERVAL = 3600.0  # seconds between two retention passes
STOP_DRAIN_SECONDS = 5.0  # stop() writes what is queued for at most this long
STOP_GRACE_SECONDS = 5.0  # ...and waits this much longer for a batch in flight, or the store being opened
RECONNECT_SECONDS = 5.0  # between two attempts to open the store...
RECONNECT_MAX_SECONDS = 60.0  # ...doubled after each failed one in a row, up to this...
RECONNECT_SPAN_FACTOR = 10  # ...and after a failed migration, this many times as long as it took

_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
           33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
# What the stage tells about the protocol that carried the name (ECS network.protocol).
_STAGE_PROTOCOL = {"sni": "tls", "quic": "quic", "http-host": "http", "dot": "tls", "doh": "https"}


_TRANSPORT = {"dot": "tcp", "doh": "tcp", "doq": "udp"}


def qtype_text(qtype: int) -> str:
    return _QTYPES.get(qtype) or f"TYPE{qtype}"


class _Sink:
    """Failure bookkeeping for one sink: counts and one error line per minute."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.written = 0
        self.dropped = 0
        self.failing = False
        self._dropped_since_report = 0
        self._last_report = -ERROR_INTERVAL

    def ok(self, count: int) -> None:
        self.written += count
        if self.failing:
            log.warning("events: writing to %s resumed; %d events were lost while it failed",
                        self.what, self._dropped_since_report)
            self.failing = False
            self._dropped_since_report = 0

    def failed(self, count: int, exc: BaseException) -> None:
        self.dropped += count
        self._dropped_since_report += count
        now = time.monotonic()
        if not self.failing or now - self._last_report >= ERROR_INTERVAL:
            log.error("events: cannot write to %s (%s); dropping events, %d lost so far "
                      "(next report in %.0f s at most)", self.what, exc, self.dropped, ERROR_INTERVAL)
            self._last_report = now
        self.failing = True


class JsonLines:
    """An append-only file of JSON lines, rotated by size (`path.1` ... `path.N`).

    A batch is written with plain `os.write` calls on an O_APPEND descriptor; if the disk
    fills half-way the file is cut back to where the batch began, so a reader never meets
    half a line."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = -1

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o640)

    def write(self, data: bytes) -> None:
        if self._fd >= 0:
            try:  # moved or removed by someone else (logrotate): start a new file
                if os.stat(self.path).st_ino != os.fstat(self._fd).st_ino:
                    self.close()
            except FileNotFoundError:
                self.close()
        if self._fd < 0:
            self._open()
        start = os.fstat(self._fd).st_size
        if start and self.max_bytes and start + len(data) > self.max_bytes:
            self.rotate()
            self._open()
            start = 0
        view = memoryview(data)
        try:
            while view:
                done = os.write(self._fd, view)
                if done <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[done:]
        except OSError:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise

    def rotate(self) -> None:
        self.close()
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.path.exists():
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))

    def purge(self, before: float) -> None:
        """Retention for the rotated files: remove backups last written before `before`."""
        for index in range(1, self.backups + 1):
            backup = self.path.with_name(f"{self.path.name}.{index}")
            try:
                if backup.stat().st_mtime < before:
                    backup.unlink()
            except OSError:
                pass

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1


class EventRecorder:
    def __init__(self, jsonl_path: str | Path | None, queue_size: int = 100_000, instance: str = "", *,
                 store: str = "", identifier: DeviceIdentifier | None = None, stats: Stats | None = None,
                 per_device: bool = False, jsonl_max_bytes: int = 100 * 1024 * 1024, jsonl_backups: int = 5,
                 retention_days: int = 365, batch_size: int = 1000, flush_interval: float = 0.5,
                 max_cpu_share: float = 0.25) -> None:
        self.path = Path(jsonl_path) if jsonl_path else None
        self.store_target = store
        self.queue: collections.deque[RawEvent] = collections.deque()
        self.queue_size = queue_size
        self.instance = instance
        self.identifier = identifier
        self.stats = stats
        self.per_device = per_device
        self.retention_days = retention_days
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.max_cpu_share = max_cpu_share
        self.jsonl = JsonLines(self.path, jsonl_max_bytes, jsonl_backups) if self.path else None
        self.store: EventStore | None = None
        self.store_sink = _Sink(f"the event store {store}") if store else None
        self.jsonl_sink = _Sink(f"the events file {self.path}") if self.path else None
        self.queue_dropped = 0  # record() found the queue full
        self._wake = threading.Event()
        self._stop = False
        self._deadline = 0.0  # stop(): draining ends then
        self._thread: threading.Thread | None = None
        self._next_retention = 0.0
        self._next_connect = 0.0
        self._connect_failures = 0  # failed attempts to open the store, in a row
        self._connect_error = ""  # why the last one failed (the text: an exception keeps its frames)
        self._by_ip: dict[tuple[str, str], Identity] = {}
        self._names: dict[bytes, str] = {}  # wire name -> presentation form
        self._shapes: dict[tuple[object, ...], _Shape | _Whole | None] = {}  # None: seen once

    @classmethod
    def from_config(cls, config: Config, stats: Stats | None = None) -> EventRecorder:
        ev = config.events
        instance = config.server.instance or socket.gethostname()
        recorder = cls(
            config.resolve(ev.jsonl) if ev.jsonl else None, ev.queue_size, instance,
            store=ev.postgres or (str(config.resolve(ev.sqlite)) if ev.sqlite else ""),
            identifier=DeviceIdentifier.from_config(config), stats=stats,
            per_device=config.metrics.per_device,
            jsonl_max_bytes=ev.jsonl_max_bytes, jsonl_backups=ev.jsonl_backups,
            retention_days=ev.retention_days, batch_size=ev.batch_size, flush_interval=ev.flush_interval,
            max_cpu_share=ev.max_cpu_share,
        )
        if not ev.enabled:
            recorder.path = recorder.jsonl = recorder.jsonl_sink = recorder.store_sink = None
            recorder.store_target = ""
            recorder.record = recorder._discard  # type: ignore[method-assign,assignment]
        return recorder

    # -- the query path

    def record(self, ts: float, client_ip: str, mac: str, name: str | bytes, qtype: int, rule: Rule,
               stage: str, protocol: str) -> None:
        """Hot path: one append, or one counted drop when the queue is full. `name` is the
        presentation form, or the uncompressed wire form, which the writer converts."""
        if len(self.queue) >= self.queue_size:
            self.queue_dropped += 1
            return
        self.queue.append((ts, client_ip, mac, name, qtype, rule, stage, protocol))

    def _discard(self, *args: Any) -> None:
        """record() when events are disabled."""

    # -- counters

    @property
    def _primary(self) -> _Sink | None:
        return self.store_sink or self.jsonl_sink

    @property
    def written(self) -> int:
        """Events stored: in the database, or in the JSON lines when there is no database."""
        return self._primary.written if self._primary else 0

    @property
    def dropped(self) -> int:
        """Events lost: queue full, or the primary sink failed."""
        return self.queue_dropped + (self._primary.dropped if self._primary else 0)

    @property
    def jsonl_dropped(self) -> int:
        return self.jsonl_sink.dropped if self.jsonl_sink else 0

    # -- the writer thread

    def start(self) -> None:
        """Start the threads. The writer opens the store: start() runs on the event loop, and
        opening may migrate the schema for minutes; DNS answers meanwhile. A store that cannot
        be opened is logged (one clear error) and retried by the writer: DNS serves either way."""
        if self.identifier:
            self.identifier.start()
        if self._thread is None and (self.store_sink or self.jsonl_sink):
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="netblock-events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued (for STOP_DRAIN_SECONDS at most), then close the sinks. A writer
        still busy after STOP_GRACE_SECONDS more (opening the store: a migration) is left to
        finish on its own, and closes the sinks itself."""
        self._deadline = time.monotonic() + STOP_DRAIN_SECONDS
        self._stop = True
        self._wake.set()
        writer, self._thread = self._thread, None
        if writer:
            writer.join(timeout=STOP_DRAIN_SECONDS + STOP_GRACE_SECONDS)
        if self.identifier:
            self.identifier.stop()
        if writer and writer.is_alive():
            log.warning("events: the writer is still busy (opening the event store?); not waiting for it")
        else:
            self._close_sinks()

    def _close_sinks(self) -> None:
        if self.store:
            self.store.close()
            self.store = None
        if self.jsonl:
            self.jsonl.close()

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
        except (AttributeError, OSError):
            pass
        try:
            if self.store_sink:
                self._open_store(0)  # first thing: a migration here keeps events, not DNS, waiting
            self._write_queue()
        finally:
            self._close_sinks()

    def _write_queue(self) -> None:
        while True:
            batch: list[RawEvent] = []
            queue = self.queue
            while queue and len(batch) < self.batch_size:
                batch.append(queue.popleft())
            if batch:
                started = time.perf_counter()
                try:
                    self.write_batch(batch)
                except Exception as exc:  # never let one bad event end the writer
                    log.exception("events: writing a batch failed")
                    if self._primary:
                        self._primary.failed(len(batch), exc)
                if self._stop and time.monotonic() > self._deadline:
                    self.queue_dropped += len(queue)  # shutting down and the sink is too slow
                    queue.clear()
                    return
                if len(queue) >= self.batch_size:
                    # Under a flood, writing shares the interpreter with answering: rest in
                    # proportion, so the writer takes at most max_cpu_share of it; the queue
                    # bound then drops (and counts) what cannot be written.
                    rest = (time.perf_counter() - started) * (1 / self.max_cpu_share - 1)
                    if not self._stop and rest > 0:
                        self._wake.wait(min(rest, self.flush_interval))
                    continue
            elif self._stop:
                return
            self._housekeeping()
            if not self._stop:
                self._wake.wait(self.flush_interval)

    def write_batch(self, batch: list[RawEvent]) -> None:
        rows: list[Row] = []
        lines: list[str] = []
        device_blocked = self.stats.device_blocked if (self.stats is not None and self.per_device) else None
        to_store, to_file = self.store_sink is not None, self.jsonl_sink is not None
        names = self._names
        for event in batch:
            ts, client_ip, mac, name, qtype, rule, stage, protocol = event
            if name.__class__ is bytes:  # rendered once here for both sinks
                text = names.get(name)
                if text is None:
                    make_room(names, NAMES_MAX)
                    text = names[name] = from_wire(name)
                event = (ts, client_ip, mac, text, qtype, rule, stage, protocol)
            identity = self.identify(client_ip, mac)
            if device_blocked is not None and identity.device.in_inventory:
                device = identity.device.name
                device_blocked[device] = device_blocked.get(device, 0) + 1
            shape = self._shape(event, identity)
            if to_store:
                rows.append(shape.row(event))
            if to_file:
                lines.append(shape.line(event))
        # The file first: once `written` (the store's count) moves, both sinks have the batch.
        if self.jsonl_sink and self.jsonl:
            try:
                self.jsonl.write("".join(lines).encode("ascii"))
                self.jsonl_sink.ok(len(lines))
            except OSError as exc:
                self.jsonl_sink.failed(len(lines), exc)
        if self.store_sink:
            self._write_store(rows)

    def _shape(self, event: RawEvent, identity: Identity) -> _Shape | _Whole:
        """How to render this event. Rendering the row and the JSON document is most of the
        writer's work: a shape seen again (same device, list entry, type, stage) is rendered
        once and filled in; a first sighting is rendered whole, which costs half of building
        a shape. The shape holds its identity, so the id in the key cannot be reused meanwhile."""
        _, client_ip, mac, _, qtype, rule, stage, protocol = event
        shapes = self._shapes
        policy = rule.policy  # its fields: hashing the dataclass itself costs more than the rest of the key
        key = (qtype, stage, protocol, client_ip, mac, rule.list_name, rule.vendor, rule.kind, rule.action,
               policy.id, policy.title, policy.url, rule.origin, rule.role, id(identity))
        found = shapes.get(key)
        if found is None and key not in shapes:
            make_room(shapes, SHAPES_MAX)
            shapes[key] = None
            return _Whole(identity, self.instance)
        if found is None or found.identity is not identity:
            found = shapes[key] = _shape_of(event, identity, self.instance)
        return found

    def _open_store(self, count: int) -> EventStore | None:
        """The store, opened if it is not (at start, or lost: PostgreSQL gone) and the next
        attempt is due (_retry_after). None: `count` events are dropped and counted, and the
        error logged (once a minute at most)."""
        assert self.store_sink is not None
        if self.store is None:
            now = time.monotonic()
            if now < self._next_connect:
                self.store_sink.failed(count, self._unavailable(now))
                return None
            try:
                self.store = open_store(self.store_target)
            except Exception as exc:  # StoreError; anything else must not end the writer either
                if not isinstance(exc, StoreError):
                    log.exception("events: opening the store failed unexpectedly")
                self._connect_failures, self._connect_error = self._connect_failures + 1, str(exc)
                ended = time.monotonic()
                self._next_connect = ended + self._retry_after(ended - now if isinstance(exc, MigrationFailed) else 0.0)
                self.store_sink.failed(count, exc)
                return None
            self._connect_failures, self._connect_error = 0, ""
            self._next_connect = time.monotonic() + RECONNECT_SECONDS
        return self.store

    def _unavailable(self, now: float) -> ConnectionError:
        """Between two attempts: the minute's error line still says why the last one failed."""
        if not self._connect_error:
            return ConnectionError("event store unavailable")
        return ConnectionError(f"event store unavailable: {self._connect_error}; "
                               f"next attempt in {self._next_connect - now:.0f} s")

    def _retry_after(self, migrated_for: float) -> float:
        """Seconds before the next attempt to open the store: a store that stays down is
        tried less often. A failed migration may have copied every event for minutes before
        failing at the end (a full disk), all of it rolled back, while the writer wrote
        nothing, the JSON lines included: the writer spends at most about a tenth of its time
        on those. Other attempts (a connect timeout, a lock wait) are not scaled by their
        duration: PostgreSQL back after a blip is tried again within a minute."""
        doubled = RECONNECT_SECONDS * 2 ** min(self._connect_failures - 1, 16)  # bounded: a float overflows
        return max(min(doubled, RECONNECT_MAX_SECONDS), RECONNECT_SPAN_FACTOR * migrated_for)

    def _write_store(self, rows: list[Row]) -> None:
        assert self.store_sink is not None
        store = self._open_store(len(rows))
        if store is None:
            return
        try:
            store.write(rows)
            self.store_sink.ok(len(rows))
        except Exception as exc:
            self.store_sink.failed(len(rows), exc)
            conn = store.conn
            lost = getattr(conn, "broken", False) or getattr(conn, "closed", False)
            if store.kind == "postgres" and lost:
                store.close()
                self.store = None

    def identify(self, client_ip: str, mac: str) -> Identity:
        if self.identifier:
            return self.identifier.identify(client_ip, mac)
        key = (client_ip, mac)  # one Identity a client, as the identifier keeps: shapes key on it
        found = self._by_ip.get(key)
        if found is None:
            make_room(self._by_ip, IDENTITIES_MAX)  # the newer half stays, and the shapes keyed on it
            found = self._by_ip[key] = Identity(Device(client_ip, in_inventory=False), mac, "ip")
        return found

    def _housekeeping(self) -> None:
        now = time.time()
        if now < self._next_retention or not self.retention_days:
            return
        self._next_retention = now + RETENTION_INTERVAL
        before = now - self.retention_days * 86_400
        if self.store:
            try:
                removed = self.store.purge(before)
                if removed:
                    log.info("events: retention removed %d events older than %d days", removed,
                             self.retention_days)
            except Exception as exc:
                log.warning("events: retention pass failed: %s", exc)
        if self.jsonl:
            self.jsonl.purge(before)


def _presentation(name: str | bytes) -> str:
    """The query path hands over the wire name as it came; it is rendered here, off that path."""
    return name if isinstance(name, str) else from_wire(name)


def to_row(event: RawEvent, identity: Identity, instance: str) -> Row:
    """The event as the store takes it: (ts, shape, name, rule), the shape being what every
    event of this device, list entry, type and stage has in common (store.SHAPE_COLUMNS)."""
    ts, client_ip, mac, raw_name, qtype, rule, stage, protocol = event
    device = identity.device
    shape: Shape = (instance, device.name, 1 if device.in_inventory else 0, device.owner, device.department,
                    identity.source, client_ip, identity.mac or mac, qtype_text(qtype), rule.list_name, rule.vendor,
                    rule.origin, stage, rule.action, rule.policy.id, protocol)
    return (ts, shape, _presentation(raw_name), rule.pattern)


def _timestamp(ts: float) -> str:
    second, millis = divmod(round(ts * 1000), 1000)
    return _second(second) + _MILLIS[millis]


@functools.lru_cache(maxsize=4)
def _second(epoch_second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


_MILLIS = [f".{millis:03d}Z" for millis in range(1000)]  # a table: formatting each costs more

# Placeholders for what varies between events of one shape (rendered names hold no NUL).
_NAME, _PATTERN = "\x00name\x00", "\x00pattern\x00"
_PLACEHOLDER_IN_JSON = re.compile(r"\\u0000(name|pattern)\\u0000")
# Where to_document puts them: the message (name, then pattern), dns.question.name, rule.name.
_PLACES_IN_JSON = ["name", "pattern", "name", "pattern"]


def _json_text(text: str) -> str:
    """The text as it stands inside a JSON string (ASCII: the file is written as ASCII)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text  # nearly every name: nothing to escape
    return json.dumps(text)[1:-1]


class _Whole:
    """An event rendered whole, field by field. Its name is in presentation form already
    (write_batch renders it), as for _Shape."""

    __slots__ = ("identity", "instance")

    def __init__(self, identity: Identity, instance: str) -> None:
        self.identity, self.instance = identity, instance

    def row(self, event: RawEvent) -> Row:
        return to_row(event, self.identity, self.instance)

    def line(self, event: RawEvent) -> str:
        return json.dumps(to_document(event, self.instance, self.identity), separators=(",", ":")) + "\n"


class _Shape:
    """An event rendered once with placeholders for the query name and the rule's pattern
    (an imported list cites each name) and without the time: each event of this device,
    list entry, type and stage fills in just those. The store's shape (to_row) is the same
    tuple for all of them."""

    __slots__ = ("identity", "pieces", "shape")

    def __init__(self, identity: Identity, shape: Shape, pieces: list[str]) -> None:
        self.identity, self.shape = identity, shape
        # The JSON document around the time and, in _PLACES_IN_JSON order, the name and the pattern.
        self.pieces = ('{"@timestamp":"', *pieces[:-1], pieces[-1] + "\n")

    def row(self, event: RawEvent) -> Row:
        return (event[0], self.shape, event[3], event[5].pattern)  # type: ignore[return-value]

    def line(self, event: RawEvent) -> str:
        start, before_name, before_pattern, before_name_again, before_pattern_again, end = self.pieces
        second, millis = divmod(round(event[0] * 1000), 1000)  # as _timestamp()
        name, pattern = _json_text(event[3]), _json_text(event[5].pattern)  # type: ignore[arg-type]
        # One join: a %-template of the whole document cost four times as much.
        return "".join((start, _second(second), _MILLIS[millis], before_name, name, before_pattern, pattern,
                        before_name_again, name, before_pattern_again, pattern, end))


def _shape_of(event: RawEvent, identity: Identity, instance: str) -> _Shape | _Whole:
    """The event's shape; rendered whole when a field of the device already holds one of
    the placeholders (a NUL in an inventory name), so nothing is filled in the wrong place."""
    _, client_ip, mac, _, qtype, rule, stage, protocol = event
    marked: RawEvent = (0.0, client_ip, mac, _NAME, qtype, citing(rule, _PATTERN), stage, protocol)
    document = to_document(marked, instance, identity)
    text = json.dumps(document, separators=(",", ":"))
    head = '{"@timestamp":' + json.dumps(document["@timestamp"])
    parts = _PLACEHOLDER_IN_JSON.split(text[len(head) - 1 :])  # from the closing quote of the time
    pieces, order = parts[0::2], parts[1::2]
    if order != _PLACES_IN_JSON:
        return _Whole(identity, instance)
    return _Shape(identity, to_row(marked, identity, instance)[1], pieces)


def to_document(event: RawEvent, instance: str = "", identity: Identity | None = None) -> dict[str, object]:
    """One event as an Elastic Common Schema document (netblock's own fields under `netblock`)."""
    ts, client_ip, mac, raw_name, qtype, rule, stage, protocol = event
    name = _presentation(raw_name)
    if identity is None:
        identity = Identity(Device(client_ip, in_inventory=False), mac, "ip")
    device = identity.device
    mac = identity.mac or mac
    blocked = rule.action == "block"
    client: dict[str, object] = {"ip": client_ip, "address": client_ip}
    if mac:
        client["mac"] = mac.upper().replace(":", "-")  # ECS writes MACs as AA-BB-CC-DD-EE-FF
    if device.owner:
        client["user"] = {"name": device.owner}
    return {
        "@timestamp": _timestamp(ts),
        "ecs": {"version": ECS_VERSION},
        "message": f"{rule.action} {name} {qtype_text(qtype)} from {device.name} ({client_ip}) "
                   f"by {rule.list_name} ({rule.pattern}) at {stage}",
        "event": {"kind": "alert" if blocked else "event", "category": ["network"],
                  "type": ["denied"] if blocked else ["info"], "action": rule.action,
                  "outcome": "failure" if blocked else "success", "reason": stage,
                  "dataset": "netblock.events", "module": "netblock"},
        "client": client,
        "dns": {"question": {"name": name, "type": qtype_text(qtype)}, "type": "query"},
        "rule": {"name": rule.pattern, "ruleset": rule.list_name, "id": rule.origin, "category": rule.vendor,
                 "description": rule.policy.title, "reference": rule.policy.url},
        "network": {"protocol": _STAGE_PROTOCOL.get(stage, "dns"),
                    "transport": _TRANSPORT.get(protocol, protocol)},
        "observer": {"name": instance, "product": "netblock", "type": "dns"},
        "netblock": {"stage": stage, "vendor": rule.vendor, "policy_id": rule.policy.id,
                     "device": {"name": device.name, "known": device.in_inventory, "owner": device.owner,
                                "department": device.department, "tags": list(device.tags),
                                "source": identity.source}},
    }
