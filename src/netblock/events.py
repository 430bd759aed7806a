"""Blocked-attempt events: the query path appends a tuple; a writer thread stores them.

Minimal first version (JSON lines only); the per-device issue adds SQLite, devices,
rotation, retention and full-disk handling behind the same `record()`.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from pathlib import Path

from netblock.config import Config
from netblock.policy.rule import Rule
from netblock.stats import Stats

# (time, client ip, client mac or "", name in presentation form, qtype, rule, stage, protocol)
RawEvent = tuple[float, str, str, str, int, Rule, str, str]


class EventRecorder:
    def __init__(self, jsonl_path: str | Path | None, queue_size: int = 100_000, instance: str = "") -> None:
        self.path = Path(jsonl_path) if jsonl_path else None
        self.queue: collections.deque[RawEvent] = collections.deque()
        self.queue_size = queue_size
        self.instance = instance
        self.written = 0
        self.dropped = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Config, stats: Stats | None = None) -> EventRecorder:
        events = config.events
        path = config.resolve(events.jsonl) if events.enabled and events.jsonl else None
        return cls(path, events.queue_size, config.server.instance or socket.gethostname())

    def record(self, ts: float, client_ip: str, mac: str, name: str, qtype: int, rule: Rule,
               stage: str, protocol: str) -> None:
        """Hot path: one append, or one counted drop when the queue is full."""
        if len(self.queue) >= self.queue_size:
            self.dropped += 1
            return
        self.queue.append((ts, client_ip, mac, name, qtype, rule, stage, protocol))

    def start(self) -> None:
        if self.path is None:
            return
        self._thread = threading.Thread(target=self._run, name="netblock-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            batch = []
            while self.queue and len(batch) < 1000:
                batch.append(self.queue.popleft())
            if batch:
                with self.path.open("a", encoding="utf-8") as out:
                    for event in batch:
                        out.write(json.dumps(to_document(event, self.instance)) + "\n")
                self.written += len(batch)
                continue
            if self._stop:
                return
            time.sleep(0.2)


def to_document(event: RawEvent, instance: str = "") -> dict[str, object]:
    ts, client_ip, mac, name, qtype, rule, stage, protocol = event
    return {
        "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z",
        "event": {"action": rule.action, "category": ["network"], "kind": "event", "reason": stage},
        "client": {"ip": client_ip, "mac": mac or None},
        "dns": {"question": {"name": name, "type": qtype}},
        "rule": {"name": rule.pattern, "ruleset": rule.list_name, "id": rule.origin,
                 "reference": rule.policy.url, "uuid": rule.policy.id},
        "network": {"protocol": "dns", "transport": protocol},
        "observer": {"name": instance, "vendor": rule.vendor},
    }
