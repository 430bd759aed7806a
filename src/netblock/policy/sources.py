"""URL sources of imported lists: an on-disk copy, conditional GET, refresh with backoff.

A list that includes a URL is compiled from the on-disk copy in `policy.cache_dir`, never
from the network directly: a restart without network still has the list, and a download
never runs inside a policy build. The reload watcher calls `refresh_due()` from its thread;
a changed download rewrites the copy, whose new mtime triggers an ordinary reload.

Failures are counted per source (`failure_counts()`, and `states()` for the rest) for the
metrics collector; a failing source keeps its last copy and is retried with backoff.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

log = logging.getLogger("netblock.policy.sources")

DEFAULT_REFRESH = 3600.0
BACKOFF_FIRST = 5.0  # seconds after a first failure, doubling up to the refresh interval
TIMEOUT = 15.0
MAX_BYTES = 256 * 1024 * 1024
USER_AGENT = "netblock list fetcher"


@dataclass
class SourceState:
    url: str
    refresh: float = DEFAULT_REFRESH
    fetches: int = 0  # 200 answers
    not_modified: int = 0  # 304 answers
    failures: int = 0  # every failed attempt (a counter: never goes down)
    consecutive_failures: int = 0
    last_attempt: float = 0.0
    last_success: float = 0.0
    next_due: float = 0.0  # monotonic; 0: at the first chance
    last_error: str = ""


class Sources:
    """The URL sources of one process, with their on-disk copies under `cache_dir`."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        self._states: dict[str, SourceState] = {}
        self._lock = threading.Lock()

    def copy_path(self, url: str) -> Path:
        return self.cache_dir / (hashlib.sha256(url.encode()).hexdigest()[:20] + ".list")

    def _meta_path(self, url: str) -> Path:
        return self.copy_path(url).with_suffix(".json")

    def state(self, url: str, refresh: float | None = None) -> SourceState:
        with self._lock:
            state = self._states.get(url)
            if state is None:
                state = self._states[url] = SourceState(url)
            if refresh is not None:
                state.refresh = max(1.0, refresh)
            return state

    def text_for(self, url: str, refresh: float | None = None) -> str:
        """The list text: the on-disk copy if there is one, else a first download now."""
        state = self.state(url, refresh)
        path = self.copy_path(url)
        if not path.exists():
            self.fetch(url)
            if not path.exists():
                raise OSError(f"no on-disk copy and the download failed: {state.last_error}")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise OSError(f"downloaded copy {path} is not UTF-8 text: {exc}") from None

    def fetch(self, url: str) -> bool:
        """One conditional GET; True if the copy changed. Counts and backoff are updated."""
        state = self.state(url)
        now = time.monotonic()
        state.last_attempt = time.time()
        meta = self._read_meta(url)
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if self.copy_path(url).exists():
            if meta.get("etag"):
                request.add_header("If-None-Match", meta["etag"])
            if meta.get("last_modified"):
                request.add_header("If-Modified-Since", meta["last_modified"])
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                body = response.read(MAX_BYTES + 1)
                if len(body) > MAX_BYTES:
                    raise OSError(f"larger than {MAX_BYTES} bytes")
                body.decode("utf-8")
                headers = response.headers
                meta = {"url": url, "etag": headers.get("ETag", ""),
                        "last_modified": headers.get("Last-Modified", ""),
                        "fetched": formatdate(usegmt=True)}
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                state.not_modified += 1
                self._succeeded(state, now)
                return False
            return self._failed(state, now, f"HTTP {exc.code} {exc.reason}")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return self._failed(state, now, str(getattr(exc, "reason", exc)))
        changed = self._write_copy(url, body, meta)
        state.fetches += 1
        self._succeeded(state, now)
        if changed:
            log.info("list source %s: new copy (%d bytes)", url, len(body))
        return changed

    def _succeeded(self, state: SourceState, now: float) -> None:
        state.consecutive_failures = 0
        state.last_error = ""
        state.last_success = time.time()
        state.next_due = now + state.refresh

    def _failed(self, state: SourceState, now: float, error: str) -> bool:
        state.failures += 1
        state.consecutive_failures += 1
        state.last_error = error
        delay = min(state.refresh, BACKOFF_FIRST * 2 ** (state.consecutive_failures - 1))
        state.next_due = now + delay
        log.warning("list source %s: fetch failed (%s); keeping the last copy, retry in %.0fs",
                    state.url, error, delay)
        return False

    def _write_copy(self, url: str, body: bytes, meta: dict[str, str]) -> bool:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.copy_path(url)
        try:
            changed = path.read_bytes() != body
        except OSError:
            changed = True
        if changed:
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(body)
            os.replace(temporary, path)  # a reader sees the old copy or the new, never half
        temporary_meta = self._meta_path(url).with_suffix(".json.tmp")
        temporary_meta.write_text(json.dumps(meta))
        os.replace(temporary_meta, self._meta_path(url))
        return changed

    def _read_meta(self, url: str) -> dict[str, str]:
        try:
            data = json.loads(self._meta_path(url).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def refresh_due(self, urls: set[str] | None = None) -> bool:
        """Fetch every source whose time has come; True if any copy changed."""
        now = time.monotonic()
        with self._lock:
            due = [s.url for s in self._states.values()
                   if s.next_due <= now and (urls is None or s.url in urls)]
        changed = False
        for url in due:
            changed = self.fetch(url) or changed
        return changed

    def states(self) -> list[SourceState]:
        with self._lock:
            return list(self._states.values())

    def failure_counts(self) -> dict[str, int]:
        return {s.url: s.failures for s in self.states()}


_default: Sources | None = None
_default_lock = threading.Lock()


def configure(cache_dir: str | Path) -> Sources:
    """Point the process's sources at a cache folder (reload.build_policy does this)."""
    global _default
    with _default_lock:
        if _default is None or _default.cache_dir != Path(cache_dir):
            _default = Sources(cache_dir)
        return _default


def default() -> Sources:
    with _default_lock:
        global _default
        if _default is None:
            _default = Sources(Path("var/lists").resolve())
        return _default


def text_for(url: str, refresh: float | None = None) -> str:
    return default().text_for(url, refresh)


def failure_counts() -> dict[str, int]:
    """Failed fetches per URL since start: for netblock_list_source_failures_total{url}."""
    return default().failure_counts()
