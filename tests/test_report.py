"""`netblock report`: aggregates, filters, formats, and the HTML report in headless Chromium."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from netblock.devices import DeviceIdentifier
from netblock.events import EventRecorder
from netblock.report import BLOCK_COLOUR, MONITOR_COLOUR, build_report, parse_time, render_csv, render_html
from netblock.store import open_store
from test_events import BLOCK, MONITOR

REPO = Path(__file__).resolve().parent.parent
T0 = 1764316800.0  # 2025-11-28T08:00:00Z


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Events of three devices over six hours, written by the real recorder."""
    (tmp_path / "inv.yaml").write_text(
        "devices:\n"
        "  - {name: finance-pc, owner: Alice, department: Finance, ips: [10.0.0.1]}\n"
        "  - {name: '=cmd|calc', owner: '@evil', ips: [10.0.0.3]}\n"
    )
    ident = DeviceIdentifier(inventory=str(tmp_path / "inv.yaml"), neighbours=False)
    path = tmp_path / "events.db"
    rec = EventRecorder(
        None, 10_000, "edge", store=str(path), identifier=ident, flush_interval=0.01, retention_days=0
    )  # T0 lies a year back
    for i in range(120):  # finance-pc: 90 blocked, 30 monitored, one every 3 minutes
        rule = MONITOR if i % 4 == 0 else BLOCK
        name = "support.kaspersky.com." if rule is MONITOR else f"h{i % 3}.weixin.qq.com."
        rec.record(T0 + i * 180, "10.0.0.1", "", name, 1, rule, "query" if i % 5 else "sni", "udp")
    for i in range(10):  # an unknown client, known by its IP
        rec.record(
            T0 + 3600 + i * 60,
            "10.0.0.2",
            "",
            "<script>alert(1)</script>.weixin.qq.com.",
            28,
            BLOCK,
            "query",
            "tcp",
        )
    rec.record(T0 + 7200, "10.0.0.3", "", "=HYPERLINK(1).weixin.qq.com.", 1, BLOCK, "query", "udp")
    rec.start()
    deadline = time.monotonic() + 10
    while rec.written < 131 and time.monotonic() < deadline:
        time.sleep(0.02)
    rec.stop()
    assert rec.written == 131
    return path


def test_build_report_aggregates(db: Path) -> None:
    store = open_store(str(db), create=False)
    report = build_report(store)
    store.close()
    devices = {d["device"]: d for d in report["devices"]}
    assert report["total"] == 131
    pc = devices["finance-pc"]
    assert (pc["owner"], pc["department"], pc["known"]) == ("Alice", "Finance", True)
    assert (pc["attempts"], pc["blocked"], pc["monitored"]) == (120, 90, 30)
    assert pc["first_attempt"] == "2025-11-28T08:00:00Z"
    assert pc["last_attempt"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 119 * 180))
    assert pc["by_vendor"] == {"Tencent WeChat (Weixin)": 90, "Kaspersky": 30}
    assert pc["by_list"] == {"wechat": 90, "kaspersky-monitor": 30}
    assert pc["stages"] == {"query": 96, "sni": 24}
    assert pc["top_endpoints"][0] == {
        "name": "h0.weixin.qq.com.",
        "vendor": "Tencent WeChat (Weixin)",
        "count": 30,
        "blocked": 30,
        "monitored": 0,
        "last_attempt": pc["top_endpoints"][0]["last_attempt"],
    }
    kaspersky = next(e for e in pc["top_endpoints"] if e["name"] == "support.kaspersky.com.")
    assert (kaspersky["count"], kaspersky["monitored"], kaspersky["blocked"]) == (30, 30, 0)
    assert sum(s["block"] + s["monitor"] for s in pc["timeline"]) == 120
    assert sum(s["monitor"] for s in pc["timeline"]) == 30
    unknown = devices["10.0.0.2"]
    assert (unknown["known"], unknown["attempts"], unknown["protocols"]) == (False, 10, {"tcp": 10})
    assert next(d["device"] for d in report["devices"]) == "finance-pc"  # most attempts first


def test_filters_since_until_device_list(db: Path) -> None:
    store = open_store(str(db), create=False)
    try:
        hour = build_report(store, since=T0, until=T0 + 3600)
        assert {d["device"]: d["attempts"] for d in hour["devices"]} == {"finance-pc": 20}
        monitored = build_report(store, list_name="kaspersky-monitor")
        assert {d["device"]: d["attempts"] for d in monitored["devices"]} == {"finance-pc": 30}
        one = build_report(store, device="10.0.0.2")
        assert [d["device"] for d in one["devices"]] == ["10.0.0.2"]
        assert build_report(store, since=T0 + 86_400)["devices"] == []
    finally:
        store.close()


def test_parse_time_forms() -> None:
    assert parse_time("2025-11-28") == T0 - 8 * 3600
    assert parse_time("2025-11-28T08:00:00Z") == T0
    assert parse_time("2025-11-28T08:00") == T0
    assert parse_time(str(int(T0))) == T0
    assert parse_time("2h", now=T0) == T0 - 7200
    assert parse_time("7d", now=T0) == T0 - 7 * 86_400
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday-ish")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netblock", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_cli_formats_and_errors(db: Path, tmp_path: Path) -> None:
    done = run_cli(
        "report",
        "--db",
        str(db),
        "--format",
        "json",
        "--since",
        "2025-11-28T08:00:00Z",
        "--until",
        "2025-11-28T09:00:00Z",
    )
    assert done.returncode == 0, done.stderr
    assert {d["device"]: d["attempts"] for d in json.loads(done.stdout)["devices"]} == {"finance-pc": 20}
    table = run_cli("report", "--db", str(db)).stdout
    assert re.search(r"^finance-pc\s+Alice\s+2025-11-28T08:00:00Z\s+\S+\s+120\s+90\s+30\s", table, re.M), (
        table
    )
    rows = list(csv.DictReader(io.StringIO(run_cli("report", "--db", str(db), "--format", "csv").stdout)))
    assert {r["device"]: r["attempts"] for r in rows} == {
        "finance-pc": "120",
        "10.0.0.2": "10",
        "'=cmd|calc": "1",
    }
    assert [r["owner"] for r in rows if r["device"] == "'=cmd|calc"] == ["'@evil"]  # no spreadsheet formulas
    missing = run_cli("report", "--db", str(tmp_path / "nope.db"))
    assert missing.returncode == 1 and "no events database" in missing.stderr
    bad = run_cli("report", "--db", str(db), "--since", "soon")
    assert bad.returncode == 2 and "not a time" in bad.stderr
    last = run_cli("events", "--db", str(db), "--last", "2")
    assert last.returncode == 0 and len(last.stdout.splitlines()) == 2
    assert "=HYPERLINK(1).weixin.qq.com." in last.stdout


def test_csv_render_escapes_formulas() -> None:
    report = {
        "devices": [
            {
                "device": "=1+1",
                "owner": "+x",
                "department": "-y",
                "known": False,
                "first_attempt": "",
                "last_attempt": "",
                "attempts": 1,
                "blocked": 1,
                "monitored": 0,
                "by_vendor": {},
                "by_list": {},
                "stages": {},
                "top_endpoints": [],
                "client_ips": [],
            }
        ]
    }
    row = list(csv.reader(io.StringIO(render_csv(report))))[1]
    assert row[:3] == ["'=1+1", "'+x", "'-y"]


# ---------------------------------------------------------------- HTML in headless Chromium


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """Width, height, bytes per pixel and raw rows of an 8-bit RGB/RGBA PNG (Chromium's)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray()
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = previous[x]
            c = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out += line
        previous = line
    return width, height, channels, bytes(out)


def count_colour(png: tuple[int, int, int, bytes], hex_colour: str, tolerance: int = 6) -> int:
    width, height, channels, pixels = png
    want = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    count = 0
    for i in range(0, width * height * channels, channels):
        if all(abs(pixels[i + k] - want[k]) <= tolerance for k in range(3)):
            count += 1
    return count


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    assert binary, "the Debian chromium package is needed (tests/apt-packages.txt)"
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_html_report_renders_chart_and_table_in_chromium(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = run_cli("report", "--db", str(db), "--format", "html", "-o", str(out))
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    # Self-contained: nothing to fetch, and a policy that forbids fetching anyway.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)
    assert "default-src 'none'" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    shot = tmp_path / "shot.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1000,1200", out.as_uri(), profile=tmp_path / "p1")
    assert shot.exists(), done.stderr
    png = decode_png(shot.read_bytes())
    assert png[0] == 1000 and png[1] == 1200
    assert count_colour(png, BLOCK_COLOUR) > 2000  # the blocked bars of the first device's chart
    assert count_colour(png, MONITOR_COLOUR) > 200  # its monitored bars
    assert count_colour(png, "#eeeeee") > 2000  # the table headers

    dom = chromium("--dump-dom", out.as_uri(), profile=tmp_path / "p2").stdout
    assert dom.count('<svg class="timeline"') == 3  # one chart per device
    assert dom.count('class="bar-block"') > 20 and 'class="bar-monitor"' in dom
    summary = re.search(r'<table id="summary">.*?</table>', dom, re.S)
    assert summary, dom[:2000]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", summary.group(0))
    assert cells[:9] == [
        "finance-pc",
        "Alice",
        "Finance",
        "2025-11-28T08:00:00Z",
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 119 * 180)),
        "120",
        "90",
        "30",
        "Tencent WeChat (Weixin)=90; Kaspersky=30",
    ]
    assert "<script>" not in dom.lower().split("</head>")[1]  # the hostile name stayed text


def test_html_of_an_empty_report_is_valid() -> None:
    page = render_html(
        {"generated": "x", "since": None, "until": None, "total": 0, "devices": [], "bucket_seconds": 60}
    )
    assert "0 attempts from\n0 devices" in page and "</html>" in page
