"""Hot reload while serving: the real server (tests/harness.py), real queries, real files.

A valid edit takes effect within 2 s; a YAML syntax error, an empty file, a deleted file,
a sharp shrink and a guard violation each leave the old policy in force and are logged;
reloads ten times a second under 500 queries a second never give a wrong answer.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from harness import BLOCKLISTS, Netblock, Nsd, wait_for

LIST = """name: test
policy: {id: TEST-1, title: reload tests}
action: block
domains:
  - www.example.test
  - a.blocked.test
  - b.blocked.test
  - c.blocked.test
"""
BLOCKED = "www.example.test."  # blocked by LIST from the start: must stay blocked
OPEN = "mail.example.test."  # resolves (192.0.2.25) until an edit blocks it


def _rcode(server: Netblock, name: str) -> int:
    return server.query(name, "A", timeout=2.0).rcode()


@pytest.fixture
def lists(tmp_path: Path) -> Path:
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "test.yaml").write_text(LIST)
    shutil.copy(BLOCKLISTS / "allow.yaml", folder / "allow.yaml")  # the guards
    return folder


@pytest.fixture
def server(tmp_path: Path, upstream: Nsd, lists: Path) -> Iterator[Netblock]:
    with Netblock(tmp_path / "nb", [upstream.address], lists=[lists / "*.yaml"],
                  config={"policy": {"watch_interval": 0.2},
                          # 500 queries a second from one client: above the default rate limit.
                          "access": {"rate_limit": {"queries": 1_000_000}}}) as nb:
        assert _rcode(nb, BLOCKED) == dns.rcode.NXDOMAIN
        assert _rcode(nb, OPEN) == dns.rcode.NOERROR
        yield nb


def _refused(server: Netblock, count_before: int, timeout: float = 5.0) -> str:
    """Wait for one more refusal in the log and return its line."""
    def refusals() -> list[str]:
        return [line for line in server.log().splitlines() if "policy reload refused" in line]
    assert wait_for(lambda: len(refusals()) > count_before, timeout), server.log()[-3000:]
    return refusals()[-1]


def _refusal_count(server: Netblock) -> int:
    return server.log().count("policy reload refused")


def test_valid_edit_takes_effect_within_two_seconds(server: Netblock, lists: Path) -> None:
    (lists / "test.yaml").write_text(LIST + "  - mail.example.test\n")
    # The watcher looks every 0.2 s: 2 s is ten of its rounds, not a speed claim.
    assert wait_for(lambda: _rcode(server, OPEN) == dns.rcode.NXDOMAIN, 2.0), server.log()[-2000:]
    assert _rcode(server, BLOCKED) == dns.rcode.NXDOMAIN
    # The audit record of this reload: exactly the one entry added.
    audit = "list test: 1 added, 0 removed; added [domains:mail.example.test]"
    assert wait_for(lambda: audit in server.log(), 2)
    # And taking it out again unblocks it.
    (lists / "test.yaml").write_text(LIST)
    assert wait_for(lambda: _rcode(server, OPEN) == dns.rcode.NOERROR, 2.0)
    # The audit line follows the swap (after a `git rev-parse`): poll, do not read once.
    removed = "list test: 0 added, 1 removed; removed [domains:mail.example.test]"
    assert wait_for(lambda: removed in server.log(), 10), server.log()[-2000:]


@pytest.mark.parametrize("damage, reason", [
    ("yaml", "YAML syntax"),
    ("empty", "empty list file"),
    ("deleted", "was deleted"),
    ("shrink", "shrinks from 4 to 1"),
    ("guard", "covers the guard 'qpic.cn'"),
    ("guard-apex", "covers the guard 'qq.com'"),
])
def test_bad_edit_keeps_the_old_policy(server: Netblock, lists: Path, damage: str, reason: str) -> None:
    path = lists / "test.yaml"
    before = _refusal_count(server)
    if damage == "yaml":
        path.write_text(LIST + "  - mail.example.test\n  - {broken: [\n")
    elif damage == "empty":
        path.write_text("")
    elif damage == "deleted":
        path.unlink()
    elif damage == "shrink":
        path.write_text(LIST.split("  - a.blocked.test")[0])  # 4 entries -> 1: more than half gone
    elif damage == "guard":
        path.write_text(LIST + "  - mail.example.test\n  - qpic.cn\n")
    elif damage == "guard-apex":
        path.write_text(LIST + "  - mail.example.test\n  - qq.com\n")
    line = _refused(server, before)
    assert reason in line
    # Reported in the metrics too.
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    metrics = urllib.request.urlopen(url, timeout=5).read().decode()
    assert "netblock_policy_last_reload_successful 0.0" in metrics
    assert 'netblock_policy_reloads_total{result="failure"} 1.0' in metrics
    if damage in ("yaml", "guard", "guard-apex"):
        assert str(path) + ":" in line  # file:line
    # The old policy is in force: the blocked probe is still blocked, the edit did not land.
    assert _rcode(server, BLOCKED) == dns.rcode.NXDOMAIN
    assert _rcode(server, OPEN) == dns.rcode.NOERROR
    assert _rcode(server, "a.blocked.test.") == dns.rcode.NXDOMAIN
    # SIGHUP gives the same answer, and the server keeps serving.
    before = _refusal_count(server)
    server.signal(signal.SIGHUP)
    _refused(server, before)
    assert _rcode(server, BLOCKED) == dns.rcode.NXDOMAIN
    # Repaired, the next edit takes effect.
    path.write_text(LIST + "  - mail.example.test\n")
    assert wait_for(lambda: _rcode(server, OPEN) == dns.rcode.NXDOMAIN, 3.0), server.log()[-2000:]


def _lint(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netblock", "lint", *map(str, args)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("guard", ["qpic.cn", "qq.com"])
def test_lint_fails_on_the_guard_violation_with_file_line(lists: Path, guard: str) -> None:
    (lists / "test.yaml").write_text(LIST + f"  - {guard}\n")
    result = _lint(lists)
    assert result.returncode == 1
    assert f"{lists / 'test.yaml'}:9: '{guard}' covers the guard '{guard}'" in result.stderr
    # As an exact host under the guard it is fine.
    (lists / "test.yaml").write_text(LIST + "exact:\n  - mmbiz.qpic.cn\n")
    result = _lint(lists)
    assert result.returncode == 0, result.stderr


def test_ten_reloads_a_second_under_500_queries_a_second(server: Netblock, lists: Path) -> None:
    toggle = lists / "toggle.yaml"
    variants = [f"name: toggle\ndomains:\n  - t{i}.blocked.test\n  - u{i}.blocked.test\n" for i in range(2)]
    toggle.write_text(variants[0])
    assert wait_for(lambda: _rcode(server, "t0.blocked.test.") == dns.rcode.NXDOMAIN, 3.0)
    stop = threading.Event()
    edits = 0

    def edit() -> None:
        nonlocal edits
        while not stop.is_set() and edits < 100:
            edits += 1
            toggle.write_text(variants[edits % 2])
            server.signal(signal.SIGHUP)
            stop.wait(0.1)

    editor = threading.Thread(target=edit)
    expected = {BLOCKED: (dns.rcode.NXDOMAIN, None), OPEN: (dns.rcode.NOERROR, "192.0.2.25"),
                "a.blocked.test.": (dns.rcode.NXDOMAIN, None),
                "tracker.blocked.test.": (dns.rcode.NOERROR, "192.0.2.99")}
    names = list(expected)
    wrong: list[str] = []
    answered = sent = 0
    duration, rate = 3.0, 500
    editor.start()
    start = time.monotonic()
    try:
        # 3 s of queries, and on until 30 edits and 20 swaps were made: on a loaded machine
        # the editor's 0.1 s waits and the reloads run long, and fewer would fit in 3 s.
        while sent < duration * rate or (time.monotonic() < start + 60 and (
                edits < 30 or server.log().count("policy reloaded") < 20)):
            # Pace to 500 queries a second.
            delay = start + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            name = names[sent % len(names)]
            sent += 1
            try:
                query = dns.message.make_query(name, "A")
                reply = dns.query.udp(query, "127.0.0.1", port=server.port, timeout=1.0)
            except dns.exception.Timeout:
                continue
            answered += 1
            rcode, address = expected[name]
            got = reply.rcode()
            ok = got == rcode and (address is None or any(address in rr.to_text() for rr in reply.answer))
            if not ok:
                wrong.append(f"{name}: {dns.rcode.to_text(got)} {reply.answer}")
    finally:
        stop.set()
        editor.join(10)
    assert wrong == []
    assert edits >= 25  # about ten a second while the queries ran
    assert server.log().count("policy reloaded") >= 20  # and the edits were swapped in
    assert answered >= 0.99 * sent
    assert server.proc is not None and server.proc.poll() is None
    assert "Traceback" not in server.log()


def test_overlapping_reloads_restore_the_collector_and_switch_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGHUP reload beside the watcher's: each runs with the collector off and a short
    switch interval, and afterwards both are as before, also when a reload fails."""
    import gc

    from netblock.config import Config
    from netblock.policy import reload as reload_module

    holder = reload_module.PolicyHolder(Config(), lambda policy: None)
    seen: list[tuple[bool, float]] = []

    def slow_reload(trigger: str) -> bool:
        seen.append((gc.isenabled(), sys.getswitchinterval()))
        time.sleep(0.2)
        if trigger == "boom":
            raise RuntimeError("a reload that fails")
        return True

    monkeypatch.setattr(holder, "_reload", slow_reload)
    interval, enabled = sys.getswitchinterval(), gc.isenabled()
    threads = [threading.Thread(target=lambda t=t: _swallow(holder.reload, t)) for t in ("SIGHUP", "watch", "boom")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(seen) == 3 and all(not on and short == pytest.approx(reload_module.RELOAD_SWITCH_INTERVAL)
                                  for on, short in seen)
    assert (sys.getswitchinterval(), gc.isenabled()) == (interval, enabled)


def _swallow(call: object, trigger: str) -> None:
    try:
        call(trigger)  # type: ignore[operator]
    except RuntimeError:
        pass


GROWTH = r"""
import resource, sys, threading
from array import array
from netblock.policy.importers import zeroed_words
from netblock.policy.reload import steady_allocator
if sys.argv[1] == "steady":
    steady_allocator()
freed = array("Q", [0]) * (2 << 20)  # 16 MB: freed, it raises glibc's mmap threshold unless held
del freed
faults = []
def grow():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    table = zeroed_words(4 << 20)  # 32 MB, grown by realloc
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=grow)  # as in a reload
thread.start()
thread.join()
print(faults[0])
"""


@pytest.mark.parametrize("allocator", ["steady", "glibc-default"])
def test_a_big_table_grows_without_being_copied_into_fresh_memory(allocator: str) -> None:
    """With the threshold held, a 32 MB table grown by realloc faults in each of its 8,192
    pages once; with glibc's moving threshold the growth copies it into fresh pages again
    (the copies held the GIL for 115 ms in a bench reload). The second case shows the
    count can tell the two apart on this libc."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    done = subprocess.run([sys.executable, "-c", GROWTH, allocator], capture_output=True, text=True,
                          timeout=60, check=True, env=environment)
    faults, pages = int(done.stdout.split()[-1]), (32 << 20) // 4096
    if allocator == "steady":
        assert pages <= faults < 1.15 * pages, faults
    else:
        assert faults > 1.3 * pages, faults
