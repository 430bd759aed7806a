"""Per-device reports of blocked attempts, and `netblock events` to watch them arrive.

`netblock report` reads the event store (SQLite or PostgreSQL, store.py) and tells, per
device: who owns it, the first and last attempt, attempts per vendor and list, the top
endpoints, and the stages that caught them, as a table, CSV, JSON or one self-contained
HTML file with a timeline chart per device. Every aggregate is computed by the database,
so a report over a year of a fleet does not load the year into memory.
"""

from __future__ import annotations

import argparse
import calendar
import csv
import html
import io
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netblock.store import COLUMNS, EventStore, StoreError, open_store

DEFAULT_CONFIG = "config/netblock.yaml"
TOP_ENDPOINTS = 10
BLOCK_COLOUR = "#d62728"  # the chart's blocked bars (tests look for this colour)
MONITOR_COLOUR = "#ff9f1c"  # the chart's monitored bars

# ---------------------------------------------------------------- time arguments

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_time(text: str, now: float | None = None) -> float:
    """'2026-11-28', '2026-11-28T10:00:00Z', '1764300000' (epoch) or '24h'/'7d' ago -> epoch."""
    text = text.strip()
    now = time.time() if now is None else now
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2)]
    if re.fullmatch(r"\d{9,}(\.\d+)?", text):
        return float(text)
    iso = text.rstrip("Z").replace(" ", "T")
    for form in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(iso.split(".")[0], form)))
        except ValueError:
            continue
    raise ValueError(f"{text!r}: not a time (use 2026-11-28, 2026-11-28T10:00:00Z, epoch seconds or 24h/7d)")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# ---------------------------------------------------------------- the report


def _where(since: float | None, until: float | None, device: str | None,
           list_name: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append("ts >= ?")
        params.append(since)
    if until is not None:
        clauses.append("ts < ?")
        params.append(until)
    if device:
        clauses.append("device = ?")
        params.append(device)
    if list_name:
        clauses.append("list_name = ?")
        params.append(list_name)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _bucket_seconds(span: float) -> int:
    for step in (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 7 * 86_400):
        if span / step <= 60:
            return step
    return 30 * 86_400


def build_report(store: EventStore, since: float | None = None, until: float | None = None,
                 device: str | None = None, list_name: str | None = None,
                 top: int = TOP_ENDPOINTS) -> dict[str, Any]:
    where, params = _where(since, until, device, list_name)

    def q(select: str, group: str) -> list[tuple[Any, ...]]:
        return store.query(f"SELECT {select} FROM events{where} GROUP BY {group}", params)

    devices: dict[str, dict[str, Any]] = {}
    for (name, owner, department, known, first, last, attempts, blocked) in q(
            "device, MAX(owner), MAX(department), MAX(device_known), MIN(ts), MAX(ts), COUNT(*), "
            "SUM(CASE WHEN action = 'block' THEN 1 ELSE 0 END)", "device"):
        devices[name] = {
            "device": name, "owner": owner, "department": department, "known": bool(known),
            "first_attempt": iso(first), "last_attempt": iso(last), "attempts": int(attempts),
            "blocked": int(blocked), "monitored": int(attempts) - int(blocked),
            "by_vendor": {}, "by_list": {}, "by_action": {}, "stages": {}, "protocols": {},
            "instances": {}, "client_ips": [], "client_macs": [], "top_endpoints": [], "timeline": {},
            "_first": first, "_last": last,
        }
    for column, key in (("vendor", "by_vendor"), ("list_name", "by_list"), ("action", "by_action"),
                        ("stage", "stages"), ("protocol", "protocols"), ("instance", "instances")):
        for name, value, count in sorted(q(f"device, {column}, COUNT(*)", f"device, {column}"),
                                         key=lambda r: (-r[2], r[1])):
            devices[name][key][value] = int(count)
    for name, ip in sorted(q("device, client_ip", "device, client_ip")):
        devices[name]["client_ips"].append(ip)
    for name, mac in sorted(q("device, client_mac", "device, client_mac")):
        if mac:
            devices[name]["client_macs"].append(mac)
    endpoints: dict[str, dict[str, dict[str, Any]]] = {}
    for name, endpoint, vendor, action, count, last in q(
            "device, name, MAX(vendor), action, COUNT(*), MAX(ts)", "device, name, action"):
        entry = endpoints.setdefault(name, {}).setdefault(
            endpoint, {"name": endpoint, "vendor": vendor, "count": 0, "blocked": 0, "monitored": 0,
                       "_last": 0})
        entry["count"] += int(count)
        entry["blocked" if action == "block" else "monitored"] += int(count)
        entry["_last"] = max(entry["_last"], last)
    for name, table in endpoints.items():
        ranked = sorted(table.values(), key=lambda e: (-e["count"], e["name"]))[:top]
        for entry in ranked:
            entry["last_attempt"] = iso(entry.pop("_last"))
        devices[name]["top_endpoints"] = ranked

    # The timeline: one bucket size for the whole report so devices compare at a glance.
    start = since if since is not None else min((d["_first"] for d in devices.values()), default=0.0)
    end = until if until is not None else max((d["_last"] for d in devices.values()), default=0.0)
    end = max(end, start + 1)
    step = _bucket_seconds(end - start)
    start = start - start % step
    bucket = store.floor(f"(ts - {float(start)!r}) / {step}")
    for name, index, action, count in q(f"device, {bucket}, action, COUNT(*)", f"device, {bucket}, action"):
        slot = devices[name]["timeline"].setdefault(int(index), {"block": 0, "monitor": 0})
        slot[action if action in slot else "block"] += int(count)
    buckets = max(1, int((end - start) // step) + 1)
    for entry in devices.values():
        entry["timeline"] = [
            {"start": iso(start + i * step), **entry["timeline"].get(i, {"block": 0, "monitor": 0})}
            for i in range(buckets)
        ]
        entry.pop("_first")
        entry.pop("_last")
    ordered = sorted(devices.values(), key=lambda d: (-d["attempts"], d["device"]))
    return {
        "generated": iso(time.time()),
        "since": iso(since), "until": iso(until),
        "filters": {"device": device, "list": list_name},
        "bucket_seconds": step, "timeline_start": iso(start),
        "total": sum(d["attempts"] for d in ordered),
        "devices": ordered,
    }


# ---------------------------------------------------------------- renderings


def _pairs(table: dict[str, int]) -> str:
    return "; ".join(f"{k}={v}" for k, v in table.items())


def _endpoints_text(entries: list[dict[str, Any]], limit: int = 3) -> str:
    parts = []
    for e in entries[:limit]:
        mark = " (monitored)" if e["monitored"] and not e["blocked"] else ""
        parts.append(f"{e['name']} x{e['count']}{mark}")
    return "; ".join(parts)


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=True) + "\n"


CSV_FIELDS = ("device", "owner", "department", "known", "first_attempt", "last_attempt", "attempts",
              "blocked", "monitored", "by_vendor", "by_list", "stages", "top_endpoints", "client_ips")


def _csv_cell(value: str) -> str:
    # A spreadsheet runs a cell that starts with = + - @ as a formula: names are untrusted.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def render_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for d in report["devices"]:
        writer.writerow([_csv_cell(str(v)) for v in (
            d["device"], d["owner"], d["department"], "yes" if d["known"] else "no", d["first_attempt"],
            d["last_attempt"], d["attempts"], d["blocked"], d["monitored"], _pairs(d["by_vendor"]),
            _pairs(d["by_list"]), _pairs(d["stages"]),
            "; ".join(f"{e['name']}={e['count']}" for e in d["top_endpoints"]), " ".join(d["client_ips"]))])
    return out.getvalue()


def _printable(text: str) -> str:
    # Names arrive escaped (RFC 1035 \DDD); owners and devices come from operators. Keep a
    # terminal safe from escape sequences either way.
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))


def render_table(report: dict[str, Any]) -> str:
    headers = ("DEVICE", "OWNER", "FIRST", "LAST", "ATTEMPTS", "BLOCKED", "MONITORED", "TOP ENDPOINTS")
    rows = [(d["device"], d["owner"] or "-", d["first_attempt"], d["last_attempt"], str(d["attempts"]),
             str(d["blocked"]), str(d["monitored"]), _endpoints_text(d["top_endpoints"]))
            for d in report["devices"]]
    rows = [tuple(_printable(c) for c in r) for r in rows]  # type: ignore[misc]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    span = f"{report['since'] or 'start'} .. {report['until'] or 'now'}"
    lines.append("")
    lines.append(f"{report['total']} attempts from {len(rows)} devices ({span})")
    for d in report["devices"]:
        lines.append("")
        who = ", ".join(x for x in (d["owner"], d["department"]) if x) or "not in the inventory"
        lines.append(_printable(f"{d['device']} ({who}); addresses {' '.join(d['client_ips'])}"))
        lines.append(_printable(f"  vendors: {_pairs(d['by_vendor'])}"))
        lines.append(_printable(f"  lists:   {_pairs(d['by_list'])}"))
        lines.append(_printable(f"  stages:  {_pairs(d['stages'])}"))
        for e in d["top_endpoints"]:
            state = ("blocked" if not e["monitored"]
                     else "monitored" if not e["blocked"] else "blocked+monitored")
            lines.append(_printable(f"  {e['count']:>7}  {e['name']}  ({e['vendor']}, {state})"))
    return "\n".join(lines) + "\n"


def _svg_timeline(d: dict[str, Any], bucket_seconds: int) -> str:
    slots = d["timeline"]
    width, height, left, bottom, top = 720, 160, 44, 22, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max([s["block"] + s["monitor"] for s in slots] + [1])
    bar_w = plot_w / max(1, len(slots))
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="attempts per {bucket_seconds} s for {html.escape(d["device"])}">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>',
             f'<text x="{left - 4}" y="{top + 10}" text-anchor="end" font-size="10">{peak}</text>',
             f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" font-size="10">0</text>']
    for i, slot in enumerate(slots):
        x = left + i * bar_w
        y = top + plot_h
        for action, colour in (("block", BLOCK_COLOUR), ("monitor", MONITOR_COLOUR)):
            if slot[action]:
                h = max(2.0, plot_h * slot[action] / peak)
                y -= h
                parts.append(f'<rect class="bar-{action}" x="{x + 0.5:.1f}" y="{y:.1f}" '
                             f'width="{max(1.0, bar_w - 1):.1f}" height="{h:.1f}" fill="{colour}">'
                             f'<title>{html.escape(slot["start"])}: {slot[action]} {action}</title></rect>')
    if slots:
        parts.append(f'<text x="{left}" y="{height - 6}" font-size="10">'
                     f'{html.escape(slots[0]["start"])}</text>')
        parts.append(f'<text x="{width - 8}" y="{height - 6}" font-size="10" text-anchor="end">'
                     f'{html.escape(slots[-1]["start"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    summary = []
    for d in report["devices"]:
        summary.append(
            "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in (
                d["device"], d["owner"], d["department"], d["first_attempt"], d["last_attempt"])) +
            f'<td class="n">{d["attempts"]}</td><td class="n">{d["blocked"]}</td>'
            f'<td class="n">{d["monitored"]}</td><td>{e(_pairs(d["by_vendor"]))}</td></tr>')
    sections = []
    for d in report["devices"]:
        rows = "".join(
            f'<tr><td>{e(x["name"])}</td><td>{e(x["vendor"])}</td><td class="n">{x["count"]}</td>'
            f'<td class="n">{x["blocked"]}</td><td class="n">{x["monitored"]}</td>'
            f'<td>{e(x["last_attempt"] or "")}</td></tr>' for x in d["top_endpoints"])
        who = ", ".join(x for x in (d["owner"], d["department"]) if x) or "not in the inventory"
        macs = (" / " + e(" ".join(d["client_macs"]))) if d["client_macs"] else ""
        sections.append(
            f'<section class="device"><h2>{e(d["device"])}</h2><p>{e(who)}. Addresses: '
            f'{e(" ".join(d["client_ips"]))}{macs}. '
            f'{d["attempts"]} attempts ({d["blocked"]} blocked, {d["monitored"]} monitored), '
            f'{e(d["first_attempt"] or "")} to {e(d["last_attempt"] or "")}.</p>'
            f'{_svg_timeline(d, report["bucket_seconds"])}'
            f'<p class="legend"><span style="background:{BLOCK_COLOUR}"></span>blocked '
            f'<span style="background:{MONITOR_COLOUR}"></span>monitored; '
            f'one bar per {report["bucket_seconds"]} s</p>'
            f'<p>Lists: {e(_pairs(d["by_list"]))}. Stages: {e(_pairs(d["stages"]))}.</p>'
            f'<table class="endpoints"><thead><tr><th>Endpoint</th><th>Vendor</th><th>Attempts</th>'
            f'<th>Blocked</th><th>Monitored</th><th>Last</th></tr></thead><tbody>{rows}</tbody></table></section>')
    span = f'{report["since"] or "first event"} to {report["until"] or "last event"}'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>netblock: blocked attempts per device</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #eee; }} td.n {{ text-align: right; }}
section.device {{ border-top: 2px solid #444; margin-top: 24px; }}
.legend span {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px; }}
</style></head><body>
<h1>Blocked attempts per device</h1>
<p>{e(span)}; generated {e(report["generated"] or "")}. {report["total"]} attempts from
{len(report["devices"])} devices.</p>
<table id="summary"><thead><tr><th>Device</th><th>Owner</th><th>Department</th><th>First attempt</th>
<th>Last attempt</th><th>Attempts</th><th>Blocked</th><th>Monitored</th><th>Vendors</th></tr></thead>
<tbody>{"".join(summary)}</tbody></table>
{"".join(sections)}
</body></html>
"""


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "table": render_table, "csv": render_csv, "json": render_json, "html": render_html}


# ---------------------------------------------------------------- the commands


def _store_target(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    from netblock.config import load_config

    config = load_config(args.config)
    if config.events.postgres:
        return config.events.postgres
    if not config.events.sqlite:
        raise StoreError(f"{args.config}: events.sqlite is empty and events.postgres is not set")
    return str(config.resolve(config.events.sqlite))


def _open(args: argparse.Namespace) -> EventStore:
    return open_store(_store_target(args), create=False)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        print(f"netblock report: {exc}", file=sys.stderr)
        return 2
    try:
        store = _open(args)
    except Exception as exc:  # StoreError, SourceError: one clear line
        print(f"netblock report: {exc}", file=sys.stderr)
        return 1
    try:
        report = build_report(store, since, until, args.device, args.list, args.top)
    finally:
        store.close()
    text = RENDERERS[args.format](report)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _event_line(row: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        row = dict(row, time=iso(row["ts"]))
        return json.dumps(row, ensure_ascii=True, separators=(",", ":"))
    return _printable(
        f'{iso(row["ts"])} {row["action"]:<7} {row["device"]} {row["client_ip"]} {row["name"]} '
        f'{row["qtype"]} '
        f'{row["list_name"]} ({row["rule"]}) {row["stage"]}/{row["protocol"]} @{row["instance"]}')


def cmd_events(args: argparse.Namespace) -> int:
    """Print the last events; with --follow, keep printing new ones as they are stored."""
    try:
        store = _open(args)
    except Exception as exc:
        print(f"netblock events: {exc}", file=sys.stderr)
        return 1
    columns = ("id", *COLUMNS)
    select = f"SELECT {', '.join(columns)} FROM events"
    try:
        since = parse_time(args.since) if args.since else None
    except ValueError as exc:
        store.close()
        print(f"netblock events: {exc}", file=sys.stderr)
        return 2
    where, params = _where(since, None, args.device, args.list)
    printed = 0
    try:
        rows = store.query(f"{select}{where} ORDER BY id DESC LIMIT {int(args.last)}", params)
        rows.reverse()
        last_id = rows[-1][0] if rows else int(store.query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])
        for row in rows[: args.count]:  # --count covers these too: `--since T --count N` has no race
            print(_event_line(dict(zip(columns, row, strict=True)), args.format), flush=True)
            printed += 1
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while args.follow and (args.count is None or printed < args.count):
            if deadline is not None and time.monotonic() > deadline:
                break
            extra = (" AND " if where else " WHERE ") + "id > ?"
            new = store.query(f"{select}{where}{extra} ORDER BY id LIMIT 1000", [*params, last_id])
            for row in new:
                last_id = row[0]
                print(_event_line(dict(zip(columns, row, strict=True)), args.format), flush=True)
                printed += 1
                if args.count is not None and printed >= args.count:
                    break
            if not new:
                time.sleep(args.interval)
    finally:
        store.close()
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file naming the event store")
    parser.add_argument("--db", help="SQLite file or postgresql:// DSN (instead of the config's store)")
    parser.add_argument("--device", help="only this device")
    parser.add_argument("--list", help="only this blocklist")
    parser.add_argument("--since",
                        help="from this time: 2026-11-28, 2026-11-28T10:00Z, epoch, or 24h / 7d ago")


def add_commands(subparsers: Any) -> None:
    report = subparsers.add_parser("report", help="blocked attempts per device (table, csv, json, html)")
    _common(report)
    report.add_argument("--until", help="up to this time (same forms as --since)")
    report.add_argument("--format", choices=sorted(RENDERERS), default="table")
    report.add_argument("--top", type=int, default=TOP_ENDPOINTS, help="endpoints listed per device")
    report.add_argument("-o", "--output", help="write to this file instead of standard output")
    report.set_defaults(func=cmd_report)
    events = subparsers.add_parser("events", help="print blocked-attempt events; --follow as they happen")
    _common(events)
    events.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    events.add_argument("--last", type=int, default=20, help="print this many earlier events first")
    events.add_argument("--format", choices=("text", "json"), default="text")
    events.add_argument("--count", type=int, help="stop after printing this many events")
    events.add_argument("--timeout", type=float, default=0.0,
                        help="with --follow: stop after this many seconds")
    events.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    events.set_defaults(func=cmd_events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netblock")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
