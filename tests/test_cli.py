"""The command line: lint, check, config errors, and failing closed at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO, Netblock, free_port


def netblock_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netblock", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def test_lint_shipped_files_ok() -> None:
    result = netblock_cli("lint")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


def test_lint_broken_list_prints_file_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\naction: block\ndomains:\n  - good.example\n  - bad..example\n"
                      "  - {name: x.example, colour: red}\nresponse: teapot\n")
    result = netblock_cli("lint", str(broken))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f"{broken}:5: domains: 'bad..example': empty label" in lines
    assert any(line.startswith(f"{broken}:6: domains: unknown entry key(s) colour") for line in lines)
    assert any(line.startswith(f"{broken}:7: response: must be one of") for line in lines)


def test_lint_yaml_syntax_error(tmp_path: Path) -> None:
    broken = tmp_path / "syntax.yaml"
    broken.write_text("name: x\ndomains:\n  - a.example\n   - b.example: [\n")
    result = netblock_cli("lint", str(broken))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{broken}:4: YAML syntax")


def test_config_unknown_key_and_bad_address(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  listen: ['127.0.0.1:53']\ncache:\n  sise: 10\n")
    result = netblock_cli("serve", "-c", str(config))
    assert result.returncode != 0
    assert f"{config}:4: cache.sise: unknown key" in result.stderr
    config.write_text("upstreams:\n  servers: ['127.0.0.1:53', 'not-an-ip']\n")
    result = netblock_cli("lint", "-c", str(config))
    assert result.returncode == 1
    assert f"{config}:2: upstreams.servers: bad address 'not-an-ip'" in result.stderr
    config.write_text("cache:\n  size: many\n")
    result = netblock_cli("check", "weixin.qq.com", "-c", str(config))
    assert f"{config}:2: cache.size: expected a whole number" in result.stderr


def test_check_explains_block_with_policy() -> None:
    result = netblock_cli("check", "A.WeiXin.qq.com.", "--type", "AAAA", "--client", "192.168.1.20")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "a.weixin.qq.com AAAA: blocked"
    assert "CA-TBS-2023-10-30" in result.stdout
    assert "client: 192.168.1.20 admitted" in result.stdout
    result = netblock_cli("check", "example.org")
    assert "example.org A: allowed" in result.stdout
    assert "no list matches" in result.stdout


def test_check_rejects_bad_arguments() -> None:
    assert netblock_cli("check", "bad..name").returncode == 2
    assert netblock_cli("check", "example.org", "--client", "nope").returncode == 2
    assert netblock_cli("frobnicate").returncode == 2


@pytest.mark.parametrize("problem", ["missing", "invalid"])
def test_start_with_broken_list_fails_closed(tmp_path: Path, problem: str) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    target = lists / "wechat.yaml"
    if problem == "invalid":
        target.write_text("name: wechat\ndomains: [weixin.qq.com, '-bad-']\n")
    server = Netblock(tmp_path, [f"127.0.0.1:{free_port()}"], lists=[target])
    server.start(expect_fail=True)
    assert server.proc is not None
    assert server.proc.wait(20) != 0
    log = server.log()
    assert "refusing to serve without a valid policy" in log
    assert str(target) in log
