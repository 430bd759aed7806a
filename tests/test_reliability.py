"""Fail closed: a missing or invalid list at start exits non-zero with a clear error naming
the file (and line), and nothing is ever answered on the port meanwhile."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from test_reliability_tools import exchange, header, question

from harness import Netblock, Nsd

GOOD = """name: good
domains: [weixin.qq.com]
"""

BAD_LISTS = {
    # file text (None: no file), expected text in the error
    "missing": (None, "{path}:0: file not found"),
    "yaml-syntax": ("name: x\ndomains: [weixin.qq.com\n", "{path}:3: YAML syntax"),
    "bad-domain": ("name: x\ndomains:\n  - weixin..qq.com\n", "{path}:3: domains:"),
    "unknown-key": ("name: x\ndomians: [weixin.qq.com]\n", "{path}:2: unknown key 'domians'"),
    "empty": ("", "{path}:1: empty list file"),
    "not-a-mapping": ("- weixin.qq.com\n", "{path}:1: a list file must be a mapping"),
}


def _fails_closed(server: Netblock, expected: str) -> None:
    assert server.proc is not None
    probe = header(qid=0x7777) + question()
    answers = []
    deadline = time.monotonic() + 20
    while server.proc.poll() is None and time.monotonic() < deadline:
        answers.append(exchange(server.port, probe, timeout=0.1))
    code = server.proc.wait(5)
    answers.append(exchange(server.port, probe, timeout=0.2))
    assert code != 0
    assert answers and all(a is None for a in answers), "something was served without a valid policy"
    log = server.log()
    assert "refusing to serve without a valid policy" in log, log
    assert expected in log, log
    assert "Traceback" not in log


@pytest.mark.parametrize("case", list(BAD_LISTS))
def test_invalid_list_at_start_exits_nonzero(tmp_path: Path, upstream: Nsd, case: str) -> None:
    text, expected = BAD_LISTS[case]
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / f"{case}.yaml"
    if text is not None:
        bad.write_text(text)
    server = Netblock(tmp_path / "nb", [upstream.address], lists=[good, bad]).start(expect_fail=True)
    try:
        _fails_closed(server, expected.format(path=bad))
    finally:
        server.stop()


def test_glob_matching_nothing_exits_nonzero(tmp_path: Path, upstream: Nsd) -> None:
    server = Netblock(tmp_path / "nb", [upstream.address], lists=[tmp_path / "none" / "*.yaml"])
    server.start(expect_fail=True)
    try:
        _fails_closed(server, "policy.lists matches no list file")
    finally:
        server.stop()


def test_invalid_config_exits_nonzero_with_file_line(tmp_path: Path, upstream: Nsd) -> None:
    server = Netblock(tmp_path / "nb", [upstream.address], config={"access": {"allow": ["10.0.0.0/33"]}})
    server.start(expect_fail=True)
    try:
        assert server.proc is not None
        assert server.proc.wait(15) != 0
        log = server.log()
        assert f"{server.config_path}:" in log and "access.allow: bad address '10.0.0.0/33'" in log, log
        assert exchange(server.port, header() + question(), timeout=0.2) is None
    finally:
        server.stop()
