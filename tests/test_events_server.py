"""Events through the real server: per-device counts, EDNS MAC, hostile names, load, full disk."""

from __future__ import annotations

import json
import os
import re
import select
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest

from harness import REPO, Netblock, Nsd, wait_for

BLOCK_LIST = """\
name: evwechat
vendor: Tencent WeChat (Weixin)
policy: {id: GOV-EV-1, title: Events test ban, url: https://policy.example/ev}
action: block
domains: [weixin.qq.com, wechat.com]
"""

MONITOR_LIST = """\
name: evmonitor
vendor: Kaspersky
policy: {id: GOV-EV-2}
action: monitor
domains: [mail.example.test]
"""

INVENTORY = """\
devices:
  - name: laptop-two
    owner: Alice Two
    department: Finance
    ips: [127.0.0.2]
  - name: laptop-three
    owner: Bob Three
    department: Legal
    ips: [127.0.0.3]
  - name: phone-four
    owner: Carol Four
    department: Press
    ips: [127.0.0.4]
  - name: phone-behind-router
    owner: Dan Mac
    macs: ["aa:bb:cc:00:00:42"]
  - name: tablet-text-mac
    owner: Eve Text
    macs: ["aa:bb:cc:00:00:43"]
"""


def write_lists(directory: Path) -> tuple[list[Path], Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "evwechat.yaml").write_text(BLOCK_LIST)
    (directory / "evmonitor.yaml").write_text(MONITOR_LIST)
    (directory / "inventory.yaml").write_text(INVENTORY)
    return [directory / "evwechat.yaml", directory / "evmonitor.yaml"], directory / "inventory.yaml"


def server_config(inventory: Path, **extra: object) -> dict[str, object]:
    config: dict[str, object] = {
        "devices": {"inventory": str(inventory), "neighbours": False, "trusted_relays": ["127.0.0.8/32"]},
        "metrics": {"per_device": True},
        "access": {"rate_limit": {"queries": 1_000_000}},
    }
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: Nsd) -> Iterator[Netblock]:
    work = tmp_path_factory.mktemp("events-server")
    lists, inventory = write_lists(work / "lists")
    with Netblock(work, [upstream.address], lists=lists, config=server_config(inventory)) as nb:
        yield nb


def db_count(nb: Netblock, where: str = "1=1", params: tuple[object, ...] = ()) -> int:
    db = nb.dir / "events.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM events WHERE {where}", params).fetchone()[0])


def netblock_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netblock", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def report_json(nb: Netblock, *args: str) -> dict[str, object]:
    done = netblock_cli("report", "--format", "json", "-c", str(nb.config_path), *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def by_device(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {d["device"]: d for d in report["devices"]}  # type: ignore[attr-defined,index]


def metrics_text(nb: Netblock) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{nb.metrics_port}/metrics", timeout=5).read().decode()


def device_metric(nb: Netblock, device: str) -> float:
    match = re.search(rf'^netblock_device_blocked_total{{device="{device}"}} (\S+)$', metrics_text(nb), re.M)
    return float(match.group(1)) if match else 0.0


def test_three_clients_counts_per_device(server: Netblock) -> None:
    plan = {"127.0.0.2": 7, "127.0.0.3": 3, "127.0.0.4": 5}
    before = db_count(server)
    # This test's events only, whatever ran before it. Truncated: rounded up, the start could
    # fall after an event recorded within the next half millisecond.
    started = f"{int(time.time() * 1000) / 1000:.3f}"
    metric_before = device_metric(server, "laptop-two")
    for source, count in plan.items():
        for i in range(count):
            answer = server.query(f"host{i}.weixin.qq.com", source=source)
            assert answer.rcode() == dns.rcode.NXDOMAIN
    for _ in range(2):  # monitored: answered normally, and recorded
        answer = server.query("mail.example.test", source="127.0.0.3")
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer
    assert wait_for(lambda: db_count(server) == before + 17, 10), db_count(server)
    devices = by_device(report_json(server, "--since", started))
    assert set(devices) == {"laptop-two", "laptop-three", "phone-four"}
    assert devices["laptop-two"]["attempts"] == 7
    assert devices["laptop-two"]["blocked"] == 7
    assert devices["laptop-two"]["owner"] == "Alice Two"
    assert devices["laptop-two"]["department"] == "Finance"
    assert devices["laptop-two"]["by_vendor"] == {"Tencent WeChat (Weixin)": 7}
    assert devices["laptop-two"]["by_list"] == {"evwechat": 7}
    assert devices["laptop-two"]["stages"] == {"query": 7}
    assert devices["laptop-two"]["client_ips"] == ["127.0.0.2"]
    assert devices["phone-four"]["attempts"] == 5 and devices["phone-four"]["monitored"] == 0
    three = devices["laptop-three"]
    assert (three["attempts"], three["blocked"], three["monitored"]) == (5, 3, 2)
    assert three["by_action"] == {"block": 3, "monitor": 2}
    monitored = [e for e in three["top_endpoints"] if e["name"] == "mail.example.test."]  # type: ignore[attr-defined]
    assert monitored == [dict(monitored[0], count=2, blocked=0, monitored=2)]
    assert three["first_attempt"] <= three["last_attempt"]  # type: ignore[operator]
    # Filters: one device, one list.
    only = report_json(server, "--device", "laptop-three", "--list", "evmonitor", "--since", started)
    assert [(d["device"], d["attempts"]) for d in only["devices"]] == [("laptop-three", 2)]  # type: ignore[attr-defined,index]
    # The same through the other formats.
    table = netblock_cli("report", "-c", str(server.config_path), "--since", started).stdout
    assert re.search(r"^laptop-two\s+Alice Two\s+\S+\s+\S+\s+7\s+7\s+0\s", table, re.M), table
    csv_text = netblock_cli("report", "--format", "csv", "-c", str(server.config_path)).stdout
    assert "laptop-three,Bob Three,Legal,yes," in csv_text
    # The per-device metric counts inventory devices only.
    assert device_metric(server, "laptop-two") == metric_before + 7
    assert 'device="127.0.0.' not in metrics_text(server)


def test_edns_mac_option_names_the_device(server: Netblock) -> None:
    before = db_count(server, "device = ?", ("phone-behind-router",))
    out = server.dig("-b", "127.0.0.5", "+ednsopt=65001:aabbcc000042", "weixin.qq.com", "A")
    assert "status: NXDOMAIN" in out, out
    text_mac = b"aa:bb:cc:00:00:43".hex()  # 65073: the MAC as text (Pi-hole's form)
    out = server.dig("-b", "127.0.0.5", f"+ednsopt=65073:{text_mac}", "wechat.com", "AAAA")
    assert "status: NXDOMAIN" in out, out
    assert wait_for(lambda: db_count(server, "device = ?", ("tablet-text-mac",)) == 1, 10)
    devices = by_device(report_json(server))
    router = devices["phone-behind-router"]
    assert router["attempts"] == before + 1
    assert router["owner"] == "Dan Mac"
    assert router["client_ips"] == ["127.0.0.5"]
    assert router["client_macs"] == ["aa:bb:cc:00:00:42"]
    assert devices["tablet-text-mac"]["top_endpoints"][0]["name"] == "wechat.com."  # type: ignore[index]
    assert "127.0.0.5" not in devices  # the address alone did not name a device


def test_client_subnet_believed_only_from_trusted_relays(server: Netblock) -> None:
    # 127.0.0.8 is a trusted relay: the device is the address in its ECS option.
    out = server.dig("-b", "127.0.0.8", "+subnet=127.0.0.4/32", "ecs1.weixin.qq.com", "A")
    assert "status: NXDOMAIN" in out, out
    # 127.0.0.9 is not: its ECS claim is ignored, the event names the sender.
    out = server.dig("-b", "127.0.0.9", "+subnet=127.0.0.2/32", "ecs2.weixin.qq.com", "A")
    assert "status: NXDOMAIN" in out, out
    assert wait_for(lambda: db_count(server, "name LIKE 'ecs_.weixin.qq.com.'") == 2, 10)
    with sqlite3.connect(server.dir / "events.db") as conn:
        rows = dict(
            conn.execute("SELECT name, device || ' ' || client_ip FROM events WHERE name LIKE 'ecs%'")
        )
    assert rows == {
        "ecs1.weixin.qq.com.": "phone-four 127.0.0.4",
        "ecs2.weixin.qq.com.": "127.0.0.9 127.0.0.9",
    }


def test_hostile_names_give_valid_json_lines(server: Netblock) -> None:
    labels = [
        b"line\nbreak",
        b"\x1b[31mred",
        b'quote"and\\back',
        b"dot.inside",
        b"nul\x00byte",
        b"<script>x</script>",
    ]
    expected = []
    for label in labels:
        name = dns.name.Name([label, b"weixin", b"qq", b"com", b""])
        answer = dns.query.udp(
            dns.message.make_query(name, "A"), "127.0.0.1", port=server.port, timeout=3, source="127.0.0.6"
        )
        assert answer.rcode() == dns.rcode.NXDOMAIN
        expected.append(name.to_text())
    assert wait_for(lambda: db_count(server, "client_ip = ?", ("127.0.0.6",)) == len(labels), 10)
    lines = (server.dir / "events.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    docs = [json.loads(line) for line in lines[:-1]]  # every line is one JSON object
    names = [d["dns"]["question"]["name"] for d in docs if d["client"]["ip"] == "127.0.0.6"]
    assert names == expected  # the server's escaping is the RFC 1035 form dnspython prints
    assert "dot\\.inside.weixin.qq.com." in names


def test_events_follow_prints_new_events(server: Netblock) -> None:
    started = f"{int(time.time() * 1000) / 1000:.3f}"  # truncated, like above
    server.query("follow0.wechat.com", source="127.0.0.4")  # before the follower: printed as history
    command = [sys.executable, "-m", "netblock", "events", "--follow", "--since", started, "--count", "3"]
    command += ["--timeout", "30", "--format", "json", "--interval", "0.1", "-c", str(server.config_path)]
    assert wait_for(lambda: db_count(server, "name = ?", ("follow0.wechat.com.",)) == 1, 10)
    follower = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert follower.stdout is not None
        ready, _, _ = select.select([follower.stdout], [], [], 30)
        assert ready, "the follower printed nothing"
        first = json.loads(follower.stdout.readline())
        assert first["name"] == "follow0.wechat.com."
        # The follower is past its history now: these two can only reach it by following.
        for i in (1, 2):
            server.query(f"follow{i}.wechat.com", source="127.0.0.4")
        out, err = follower.communicate(timeout=40)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(5)
    assert follower.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["name"] for e in events] == ["follow1.wechat.com.", "follow2.wechat.com."]
    assert {e["device"] for e in events} == {"phone-four"}
    assert all(e["action"] == "block" and e["instance"] == "test" for e in events)


def test_short_load_every_blocked_answer_is_stored(server: Netblock, tmp_path: Path) -> None:
    """CI version of bench/events_load.py: dnsperf at 1,000 blocked queries/s for 5 s."""
    data = tmp_path / "queries.txt"
    data.write_text("".join(f"load{i}.weixin.qq.com A\n" for i in range(500)))
    before = db_count(server, "client_ip = ?", ("127.0.0.7",))
    done = subprocess.run(
        [
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-a",
            "127.0.0.7",
            "-d",
            str(data),
            "-Q",
            "1000",
            "-l",
            "5",
            "-c",
            "4",
            "-t",  # an answer later than this counts as lost but is stored: room for a loaded machine
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"NXDOMAIN (\d+)", done.stdout)
    assert match, done.stdout
    blocked_answers = int(match.group(1))
    # The load ran (how fast the server kept up is bench/events_load.py's question, not CI's).
    assert blocked_answers >= 500, done.stdout
    assert wait_for(lambda: db_count(server, "client_ip = ?", ("127.0.0.7",)) - before >= blocked_answers, 20)
    time.sleep(0.5)  # nothing more than answered may show up either
    assert db_count(server, "client_ip = ?", ("127.0.0.7",)) - before == blocked_answers


# ---------------------------------------------------------------- a full filesystem under the server


def metric(nb: Netblock, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{nb.metrics_port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_full_events_filesystem_dns_keeps_answering(tmp_path: Path, upstream: Nsd) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    lists, inventory = write_lists(tmp_path / "lists")
    config = server_config(
        inventory,
        events={
            "sqlite": str(mount / "events.db"),
            "jsonl": str(mount / "events.jsonl"),
            "flush_interval": 0.05,
        },
    )
    nb = Netblock(tmp_path / "nb", [upstream.address], lists=lists, config=config)
    try:
        nb.start()

        def stored() -> int:
            with sqlite3.connect(mount / "events.db") as conn:
                return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

        for i in range(20):
            assert nb.query(f"a{i}.weixin.qq.com", source="127.0.0.2").rcode() == dns.rcode.NXDOMAIN
        assert wait_for(lambda: stored() == 20, 10)
        filler = mount / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={mount / 'filler2'}", "bs=1"], capture_output=True, check=False
        )
        for i in range(300):  # long names so every batch needs space; each answered, never waiting on the disk
            answer = nb.query(f"{'x' * 60}.{'y' * 60}.b{i}.weixin.qq.com", source="127.0.0.3", timeout=2)
            assert answer.rcode() == dns.rcode.NXDOMAIN
        assert nb.query("www.example.test", source="127.0.0.3").rcode() == dns.rcode.NOERROR
        assert wait_for(lambda: metric(nb, "netblock_events_dropped_total") > 0, 10), nb.log()
        # Every event is accounted for, stored or dropped, before space returns.
        assert wait_for(
            lambda: (
                metric(nb, "netblock_events_written_total") + metric(nb, "netblock_events_dropped_total")
                == 320
            ),
            15,
        )
        assert stored() == metric(nb, "netblock_events_written_total")
        errors = [line for line in nb.log().splitlines() if "cannot write" in line]
        assert 1 <= len(errors) <= 2, errors  # one line per failing sink, not one per batch
        filler.unlink()
        (mount / "filler2").unlink()
        before = stored()
        for i in range(50):
            assert nb.query(f"c{i}.weixin.qq.com", source="127.0.0.4").rcode() == dns.rcode.NXDOMAIN
        assert wait_for(lambda: stored() == before + 50, 15), (stored(), before, nb.log())
        # The writer counts and logs just after its commit: poll, do not read once.
        assert wait_for(lambda: "resumed" in nb.log(), 10), nb.log()
        assert wait_for(lambda: metric(nb, "netblock_events_written_total") == stored(), 10)
        for line in (mount / "events.jsonl").read_bytes().split(b"\n")[:-1]:
            json.loads(line)
    finally:
        nb.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)
