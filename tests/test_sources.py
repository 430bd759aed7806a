"""URL sources against a local HTTP server: first fetch, 304 on refresh, the on-disk copy
when the server is down at restart, failures counted, and a refresh reaching the policy."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from netblock.config import load_config
from netblock.policy.match import Policy
from netblock.policy.reload import PolicyHolder
from netblock.policy.sources import Sources


class ListServer:
    """Serves one list at /list.txt with an ETag and Last-Modified, honouring both."""

    def __init__(self) -> None:
        self.body = b"one.example\ntwo.example\n"
        self.etag = '"v1"'
        self.modified = "Sat, 28 Nov 2026 10:00:00 GMT"
        self.log: list[tuple[int, str, str]] = []  # (status, If-None-Match, If-Modified-Since)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                inm = self.headers.get("If-None-Match", "")
                ims = self.headers.get("If-Modified-Since", "")
                if self.path != "/list.txt":
                    status = 404
                elif inm == owner.etag or (not inm and ims == owner.modified):
                    status = 304
                else:
                    status = 200
                owner.log.append((status, inm, ims))
                self.send_response(status)
                if status == 200:
                    self.send_header("ETag", owner.etag)
                    self.send_header("Last-Modified", owner.modified)
                    self.send_header("Content-Length", str(len(owner.body)))
                    self.end_headers()
                    self.wfile.write(owner.body)
                else:
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/list.txt"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def change(self, body: bytes, etag: str) -> None:
        self.body, self.etag = body, etag
        self.modified = "Sat, 28 Nov 2026 11:00:00 GMT"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def list_server() -> Iterator[ListServer]:
    server = ListServer()
    yield server
    if server.thread.is_alive():
        server.stop()


def test_first_fetch_304_and_restart_without_server(tmp_path: Path, list_server: ListServer) -> None:
    cache = tmp_path / "cache"
    sources = Sources(cache)
    # First fetch: a plain GET, the copy lands on disk with its validators.
    assert sources.text_for(list_server.url, refresh=60) == "one.example\ntwo.example\n"
    assert list_server.log == [(200, "", "")]
    copy = sources.copy_path(list_server.url)
    assert copy.read_bytes() == list_server.body
    meta = json.loads(copy.with_suffix(".json").read_text())
    assert meta["etag"] == '"v1"'
    # Refresh: conditional GET, 304, nothing rewritten.
    mtime = copy.stat().st_mtime_ns
    assert sources.fetch(list_server.url) is False
    assert list_server.log[-1] == (304, '"v1"', "Sat, 28 Nov 2026 10:00:00 GMT")
    assert copy.stat().st_mtime_ns == mtime
    state = sources.state(list_server.url)
    assert (state.fetches, state.not_modified, state.failures) == (1, 1, 0)
    # A new version: 200, the copy is replaced.
    list_server.change(b"one.example\nthree.example\n", '"v2"')
    assert sources.fetch(list_server.url) is True
    assert copy.read_bytes() == b"one.example\nthree.example\n"
    # The server goes away; a restarted process still has the list from disk.
    list_server.stop()
    requests = len(list_server.log)
    restarted = Sources(cache)
    assert restarted.text_for(list_server.url, refresh=60) == "one.example\nthree.example\n"
    assert len(list_server.log) == requests  # no network needed
    # Its refresh fails, is counted, keeps the copy and backs off.
    before = time.monotonic()
    assert restarted.fetch(list_server.url) is False
    assert restarted.fetch(list_server.url) is False
    state = restarted.state(list_server.url)
    assert state.failures == 2 and state.consecutive_failures == 2
    assert state.last_error
    assert 10 - 1 <= state.next_due - before <= 10 + 5  # 5 s, then 10 s
    assert restarted.failure_counts() == {list_server.url: 2}
    assert restarted.refresh_due() is False  # not due yet: backing off
    assert state.failures == 2
    assert copy.read_bytes() == b"one.example\nthree.example\n"


def test_no_copy_and_no_server_is_an_error(tmp_path: Path, list_server: ListServer) -> None:
    url = list_server.url
    list_server.stop()
    sources = Sources(tmp_path / "cache")
    with pytest.raises(OSError, match="no on-disk copy"):
        sources.text_for(url)
    assert sources.failure_counts() == {url: 1}


def _config(tmp_path: Path, url: str) -> Path:
    lists = tmp_path / "lists"
    lists.mkdir(exist_ok=True)
    (lists / "remote.yaml").write_text(
        f"name: remote\ninclude:\n  - {{url: '{url}', format: plain, match: exact, refresh: 1}}\n")
    config = tmp_path / "netblock.yaml"
    config.write_text(f"policy:\n  lists: ['{lists}/*.yaml']\n  cache_dir: {tmp_path / 'cache'}\n"
                      "  watch_interval: 0.2\n")
    return config


def _check(config: Path, name: str) -> str:
    result = subprocess.run([sys.executable, "-m", "netblock", "check", name, "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n", 1)[0]


def test_url_include_refreshes_the_policy_and_survives_a_restart(tmp_path: Path,
                                                                 list_server: ListServer) -> None:
    config = _config(tmp_path, list_server.url)
    swapped: list[Policy] = []
    holder = PolicyHolder(load_config(config), swapped.append)
    policy = holder.load_initial()
    assert policy.match_name("two.example") is not None
    holder.start_watching()
    try:
        # The refresh interval (1 s) passes: a conditional GET, 304, no reload.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(status == 304 for status, _, _ in list_server.log):
            time.sleep(0.1)
        assert any(status == 304 for status, _, _ in list_server.log)
        count = len(swapped)
        list_server.change(b"one.example\ntwo.example\nfour.example\n", '"v2"')
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (holder.current.match_name("four.example") is None
                                               or holder.last_audit is None):
            time.sleep(0.1)
        assert holder.current.match_name("four.example") is not None
        assert holder.last_audit is not None
        assert holder.last_audit.changes[0].added_names == ["exact:four.example"]
        assert len(swapped) == count + 1
    finally:
        holder.stop()
    # A restart while the server is down compiles the list from the on-disk copy.
    list_server.stop()
    assert _check(config, "four.example") == "four.example A: blocked"
    assert _check(config, "five.example") == "five.example A: allowed"
