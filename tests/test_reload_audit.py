"""The policy holder without a server: refusals, the audit record, and `lint --diff`."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netblock.config import load_config
from netblock.policy.audit import git_commit
from netblock.policy.match import Policy
from netblock.policy.reload import PolicyHolder

ROOT = Path(__file__).resolve().parents[1]

BASE = """name: base
action: block
domains:
  - one.example
  - two.example
  - three.example
exact:
  - host.one.example
networks:
  - 192.0.2.0/24
include:
  - {path: feed.txt, format: plain, match: exact}
"""
FEED = "".join(f"feed{i}.example\n" for i in range(100))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, PolicyHolder, list[Policy]]:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "base.yaml").write_text(BASE)
    (lists / "feed.txt").write_text(FEED)
    shutil.copy(ROOT / "blocklists" / "allow.yaml", lists / "allow.yaml")
    config = tmp_path / "netblock.yaml"
    config.write_text(f"policy:\n  lists: ['{lists}/*.yaml']\n  cache_dir: {tmp_path / 'cache'}\n")
    swapped: list[Policy] = []
    holder = PolicyHolder(load_config(config), swapped.append)
    holder.load_initial()
    return lists, holder, swapped


def test_audit_lists_exactly_the_entries_added_and_removed(setup, caplog: pytest.LogCaptureFixture) -> None:
    lists, holder, swapped = setup
    before = holder.current
    assert before is not None
    text = BASE.replace("  - two.example\n", "  - four.example\n  - five.example\n")
    text = text.replace("  - 192.0.2.0/24\n", "  - 192.0.2.0/24\n  - 198.51.100.0/24\n")
    (lists / "base.yaml").write_text(text)
    # The include changes too: feed0 and feed1 go, feed100 comes.
    (lists / "feed.txt").write_text(FEED.replace("feed0.example\n", "").replace("feed1.example\n", "")
                                    + "feed100.example\n")
    with caplog.at_level(logging.INFO, logger="netblock.policy"):
        assert holder.reload() is True
    record = holder.last_audit
    assert record is not None
    assert record.digest_before == before.digest
    assert record.digest_after == holder.current.digest != before.digest
    assert len(record.changes) == 1
    change = record.changes[0]
    assert change.name == "base"
    assert sorted(change.added_names) == [
        "domains:five.example", "domains:four.example", "exact:feed100.example", "networks:198.51.100.0/24"]
    assert sorted(change.removed_names) == [
        "domains:two.example", "exact:feed0.example", "exact:feed1.example"]
    assert (change.added, change.removed) == (4, 3)
    logged = caplog.text
    assert f"policy digest {before.digest} -> {record.digest_after}" in logged
    assert "list base: 4 added, 3 removed" in logged
    assert swapped[-1] is holder.current


def test_audit_bounds_the_names_not_the_counts(setup) -> None:
    lists, holder, _ = setup
    (lists / "feed.txt").write_text(FEED + "".join(f"new{i}.example\n" for i in range(50)))
    assert holder.reload() is True
    change = holder.last_audit.changes[0]
    assert change.added == 50
    assert len(change.added_names) == 20
    assert "... 30 more" in change.describe()


def test_unchanged_reload_swaps_nothing(setup) -> None:
    _, holder, swapped = setup
    count = len(swapped)
    assert holder.reload() is True
    assert len(swapped) == count


@pytest.mark.parametrize("damage, reason", [
    ("syntax", "YAML syntax"),
    ("empty", "empty list file"),
    ("deleted", "was deleted"),
    ("shrink", "shrinks from"),
    ("guard", "covers the guard 'tencent.com'"),
    ("include-gone", "file not found"),
    ("include-emptied", "shrinks from"),
    ("guards-deleted", "allow.yaml (guards) was deleted"),
])
def test_refusals_keep_the_last_good_policy(setup, damage: str, reason: str) -> None:
    lists, holder, swapped = setup
    good = holder.current
    count = len(swapped)
    base = lists / "base.yaml"
    if damage == "syntax":
        base.write_text(BASE + "  - [unclosed\n")
    elif damage == "empty":
        base.write_text("")
    elif damage == "deleted":
        base.unlink()
    elif damage == "shrink":
        base.write_text("name: base\ndomains: [one.example]\n")
    elif damage == "guard":
        base.write_text(BASE.replace("domains:\n", "domains:\n  - tencent.com\n"))
    elif damage == "include-gone":
        (lists / "feed.txt").unlink()
    elif damage == "include-emptied":
        (lists / "feed.txt").write_text("# nothing left\n")
    elif damage == "guards-deleted":
        (lists / "allow.yaml").unlink()
    assert holder.reload() is False
    assert reason in holder.last_error
    assert holder.current is good
    assert len(swapped) == count
    assert holder.current.match_name("feed5.example") is not None


def test_renamed_list_file_is_not_a_deletion(setup) -> None:
    lists, holder, _ = setup
    (lists / "base.yaml").rename(lists / "renamed.yaml")
    assert holder.reload() is True
    assert holder.last_audit is not None and holder.last_audit.changes == []


def test_lint_diff_shows_the_same_record(tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(ROOT / "blocklists", old)
    new = tmp_path / "new"
    shutil.copytree(ROOT / "blocklists", new)
    wechat = new / "wechat.yaml"
    text = wechat.read_text()
    assert "  - name: wx8.qq.com\n" in text
    wechat.write_text(text.replace("  - name: wx8.qq.com\n", "  - name: wx9.qq.com\n")
                      .replace("exact:\n", "exact:\n  - name: extra.qpic.cn\n    role: media-cdn\n", 1))
    result = subprocess.run([sys.executable, "-m", "netblock", "lint", str(new), "--diff", str(old)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("policy digest ")
    assert ("list wechat: 2 added, 1 removed; added [domains:wx9.qq.com, exact:extra.qpic.cn]; "
            "removed [domains:wx8.qq.com]") in lines
    assert not any(line.startswith("list kaspersky") for line in lines)


def test_git_commit_of_the_blocklists(tmp_path: Path) -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, timeout=10).stdout.strip()
    commit = git_commit([str(ROOT / "blocklists" / "wechat.yaml")])
    assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?", commit)
    assert commit.split("-")[0] == head
    (tmp_path / "x.yaml").write_text("name: x\n")
    assert git_commit([str(tmp_path / "x.yaml")]) == ""  # not a checkout: nothing claimed
    result = subprocess.run([sys.executable, "-m", "netblock", "lint", str(ROOT / "blocklists"), "--diff",
                             str(ROOT / "blocklists")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"blocklists at git {commit}" in result.stdout
    assert "no entry changed" in result.stdout
