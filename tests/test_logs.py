"""The service's own log: text or JSON lines, level from the config, optional file."""

from __future__ import annotations

import io
import json
import logging
import signal
from collections.abc import Iterator

import pytest

from netblock.config import Logging
from netblock.logs import setup_logging

from harness import BLOCKLISTS, Netblock, wait_for


@pytest.fixture(autouse=True)
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_json_lines_with_ecs_fields():
    out = io.StringIO()
    setup_logging(Logging(level="info", format="json"), stream=out)
    logging.getLogger("netblock.policy.reload").info(
        "policy reloaded: digest %s -> %s", "aa", "bb", extra={"policy.digest": "bb"}
    )
    try:
        raise ValueError("bad list")
    except ValueError:
        logging.getLogger("netblock.server").exception("reload failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "policy reloaded: digest aa -> bb"
    assert first["log.level"] == "info" and first["log.logger"] == "netblock.policy.reload"
    assert first["@timestamp"].endswith("Z") and first["policy.digest"] == "bb"
    assert second["log.level"] == "error" and second["error.type"] == "ValueError"
    assert "bad list" in second["error.stack_trace"]


def test_level_filters():
    out = io.StringIO()
    setup_logging(Logging(level="warning", format="text"), stream=out)
    log = logging.getLogger("netblock.test")
    log.info("quiet")
    log.debug("quieter")
    log.warning("upstream %s is not answering", "127.0.0.1:53")
    text = out.getvalue()
    assert "quiet" not in text
    assert "WARNING netblock.test: upstream 127.0.0.1:53 is not answering" in text
    assert text.count("\n") == 1


def test_debug_level_passes_debug():
    out = io.StringIO()
    setup_logging(Logging(level="debug", format="text"), stream=out)
    logging.getLogger("netblock.test").debug("detail %d", 7)
    assert "DEBUG netblock.test: detail 7" in out.getvalue()


def test_second_setup_replaces_the_handler():
    first, second = io.StringIO(), io.StringIO()
    setup_logging(Logging(format="text"), stream=first)
    setup_logging(Logging(format="json"), stream=second)
    logging.getLogger("netblock.test").info("once")
    assert first.getvalue() == ""
    assert [json.loads(line)["message"] for line in second.getvalue().splitlines()] == ["once"]


def test_file_output_survives_rotation(tmp_path):
    path = tmp_path / "log" / "netblock.log"
    setup_logging(Logging(format="json", file=str(path)))
    log = logging.getLogger("netblock.test")
    log.info("before rotation")
    path.rename(tmp_path / "netblock.log.1")  # what logrotate does
    log.info("after rotation")
    assert json.loads(path.read_text())["message"] == "after rotation"
    assert json.loads((tmp_path / "netblock.log.1").read_text())["message"] == "before rotation"


def test_unwritable_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ValueError, match=rf"logging.file: cannot open {blocker}/netblock.log"):
        setup_logging(Logging(file=str(blocker / "netblock.log")))


def test_real_server_logs_json_lines(tmp_path, upstream):
    config = {"logging": {"format": "json", "level": "debug"}}
    server = Netblock(tmp_path / "nb", [upstream.address], lists=[BLOCKLISTS / "*.yaml"], config=config)
    with server:
        server.query("www.example.test")
        server.signal(signal.SIGHUP)  # a reload logs a line (at debug when nothing changed)
        assert wait_for(lambda: "reload" in server.log(), 10), server.log()
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert len(lines) >= 3
    docs = [json.loads(line) for line in lines]  # every line is one JSON document
    assert all({"@timestamp", "log.level", "log.logger", "message"} <= d.keys() for d in docs)
    assert any(d["log.logger"] == "netblock.metrics" for d in docs)
    assert any(d["log.level"] == "debug" for d in docs)  # the configured level reached the server
    # The query path logs nothing: no line names the query.
    assert not any("www.example.test" in d["message"] for d in docs)
