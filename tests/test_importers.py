"""Imports of hosts, plain, adblock and RPZ lists: samples written here, parsed for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from netblock.names import to_wire
from netblock.policy import importers
from netblock.policy.importers import (
    BELOW,
    EXACT,
    NODATA,
    SUBTREE,
    NameSet,
    parse_text,
    sniff_format,
    warnings_for,
)
from netblock.policy.lists import load_list
from netblock.policy.match import compile_policy
from netblock.policy.reload import load_lists

ROOT = Path(__file__).resolve().parents[1]

HOSTS = (
    "# a hosts file\r\n"
    "\r\n"
    "127.0.0.1 localhost\r\n"
    "0.0.0.0 ads.example.com\r\n"
    "0.0.0.0   tracker.example.net   # trailing comment\r\n"
    "127.0.0.1 two.example.org three.example.org\r\n"
    "::1 six.example.org\r\n"
    "0.0.0.0 xn--bcher-kva.example\r\n"
    "0.0.0.0 bücher.example.net\r\n"
    "0.0.0.0 bad..name\r\n"
    "this is not a hosts line\r\n"
    "0.0.0.0 UPPER.Example.COM.\r\n"
)

PLAIN = (
    "# plain domains\n"
    "\n"
    "zone.example\n"
    "*.wild.example\n"
    "xn--80ak6aa92e.com   # punycode IDN\n"
    "two words\n"
    "-\n"
    "last.example"  # no final newline
)

ADBLOCK = (
    "[Adblock Plus 2.0]\n"
    "! Title: test\n"
    "||blocked.example^\n"
    "||important.example^$important\n"
    "@@||allowed.blocked.example^\n"
    "||third.example^$third-party\n"
    "example.com##.banner\n"
    "0.0.0.0 hostsyntax.example\n"
    "plain.example\n"
    "||*.wild.example^\n"
    "\n"
    "# hash comment\n"
)

RPZ = (
    "$TTL 300\n"
    "$ORIGIN rpz.local.\n"
    "@ SOA localhost. root.localhost. (\n"
    "      1 3600 600 86400 300 )\n"
    "  NS localhost.\n"
    "; comment line\n"
    "nx.example CNAME .\n"
    "*.nx.example CNAME .\n"
    "nodata.example 300 IN CNAME *.\n"
    "pass.nx.example CNAME rpz-passthru.\n"
    "abs.example.rpz.local. CNAME .\n"
    "drop.example CNAME rpz-drop.\n"
    "32.1.2.0.192.rpz-ip CNAME .\n"
    "24.0.100.51.198.rpz-ip CNAME .\n"
    "48.zz.db8.2001.rpz-ip CNAME .\n"
    "local.example A 192.0.2.1\n"
    "xn--mnchen-3ya.example CNAME .\n"
    "garbage\n"
    "elsewhere.example. CNAME .\n"
)


def _names(parsed, tag):
    return sorted(parsed.names.get(tag, []))


def test_hosts() -> None:
    parsed = parse_text(HOSTS, "hosts", "feed.hosts")
    assert _names(parsed, EXACT) == sorted([
        "ads.example.com", "tracker.example.net", "two.example.org", "three.example.org", "six.example.org",
        "xn--bcher-kva.example", "xn--bcher-kva.example.net", "upper.example.com",
    ])
    bad = {(w.line, w.path) for w in parsed.warnings}
    assert bad == {(10, "feed.hosts"), (11, "feed.hosts")}
    assert "empty label" in str(parsed.warnings[0])


def test_plain() -> None:
    parsed = parse_text(PLAIN, "plain", "feed.txt")
    assert _names(parsed, SUBTREE) == ["last.example", "xn--80ak6aa92e.com", "zone.example"]
    assert _names(parsed, BELOW) == ["wild.example"]
    assert [w.line for w in parsed.warnings] == [6, 7]
    exact = parse_text(PLAIN, "plain", "feed.txt", match="exact")
    assert "zone.example" in exact.names[EXACT]


def test_adblock() -> None:
    parsed = parse_text(ADBLOCK, "adblock", "filter.txt")
    assert _names(parsed, SUBTREE) == ["blocked.example", "important.example"]
    assert _names(parsed, EXACT) == ["hostsyntax.example", "plain.example"]
    assert _names(parsed, BELOW) == ["wild.example"]
    assert parsed.allow == [("allowed.blocked.example", False, 5)]
    assert sorted(w.line for w in parsed.warnings) == [6, 7]  # $third-party, cosmetic rule


def test_rpz() -> None:
    parsed = parse_text(RPZ, "rpz", "zone.rpz")
    assert _names(parsed, EXACT) == ["abs.example", "drop.example", "nx.example", "xn--mnchen-3ya.example"]
    assert _names(parsed, BELOW) == ["nx.example"]
    assert _names(parsed, EXACT | NODATA) == ["nodata.example"]
    assert parsed.allow == [("pass.nx.example", True, 10)]
    assert [n for n, _ in parsed.networks] == ["192.0.2.1/32", "198.51.100.0/24", "2001:db8::/48"]
    assert sorted(w.line for w in parsed.warnings) == [16, 18, 19]


def test_crlf_and_lf_agree() -> None:
    for text, fmt in ((HOSTS, "hosts"), (PLAIN, "plain"), (ADBLOCK, "adblock"), (RPZ, "rpz")):
        lf = parse_text(text.replace("\r\n", "\n"), fmt, "x")
        crlf = parse_text(text.replace("\r\n", "\n").replace("\n", "\r\n"), fmt, "x")
        assert lf.names == crlf.names
        assert [w.line for w in lf.warnings] == [w.line for w in crlf.warnings]


def test_fast_path_and_careful_path_agree() -> None:
    # A large clean chunk takes the regex path; one bad line sends its chunk line by line.
    names = [f"host{i}.example{i % 7}.com" for i in range(30000)]
    clean = "".join(f"0.0.0.0 {n}\n" for n in names)
    dirty = clean + "oops\n"
    fast, careful = parse_text(clean, "hosts", "a"), parse_text(dirty, "hosts", "b")
    assert fast.names[EXACT] == careful.names[EXACT] == names
    assert [w.line for w in careful.warnings] == [30001]


def test_sniffing() -> None:
    assert sniff_format("x.txt", HOSTS) == "hosts"
    assert sniff_format("x.txt", PLAIN) == "plain"
    assert sniff_format("x.txt", ADBLOCK) == "adblock"
    assert sniff_format("x.txt", RPZ) == "rpz"
    assert sniff_format("feed.rpz", "") == "rpz"


def test_nameset_lookup_and_levels() -> None:
    names = NameSet(["a.example", "b.example", "a.example", "c.example"], [EXACT, SUBTREE, EXACT, BELOW])
    a, b, c, d = (to_wire(f"{x}.example") for x in "abcd")
    assert len(names) == 3
    assert names.find(a, True) == EXACT
    assert names.find(a, False) == -1  # exact: not for names under it
    assert names.find(b, True) == SUBTREE and names.find(b, False) == SUBTREE
    assert names.find(c, True) == -1 and names.find(c, False) == BELOW
    assert names.find(d, True) == -1
    assert sorted(names.items()) == [(a, EXACT), (b, SUBTREE), (c, BELOW)]
    assert names.has(a, EXACT) and not names.has(a, SUBTREE)


@pytest.mark.parametrize("count", [1, 8, 16, 32, 512])
def test_nameset_table_at_its_fullest_finds_every_name_and_nothing_else(count: int) -> None:
    # 8, 16, 32 and 512 names fill 16, 32, 64 and 1024 slots half: runs of taken slots.
    held = [f"n{i}.held.example" for i in range(count)]
    tags = [(EXACT, SUBTREE, BELOW, SUBTREE | NODATA)[i % 4] for i in range(count)]
    names = NameSet(held, tags)
    assert len(names.table) // 2 == max(16, 2 * count)
    _finds_exactly(names, held, tags)


def test_nameset_runs_wrap_past_the_end_and_equal_hashes_part_by_crc(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every name hashed to the last slot: each run wraps to the start of the table, and
    # held and other names meet with equal hashes, told apart by CRC-32 and length alone.
    monkeypatch.setattr(importers, "hash", lambda wire: 15, raising=False)
    held = [f"n{i}.held.example" for i in range(8)]
    tags = [(EXACT, SUBTREE, BELOW, SUBTREE | NODATA)[i % 4] for i in range(8)]
    names = NameSet(held, tags)
    assert len(names.table) == 32 and names.table[31] and names.table[1]  # the last slot and the first
    _finds_exactly(names, held, tags)


def _finds_exactly(names: NameSet, held: list[str], tags: list[int]) -> None:
    for name, tag in zip(held, tags, strict=True):
        wire = to_wire(name)
        assert names.find(wire, tag & 3 != BELOW) == tag
        assert names.has(wire, tag) and not names.has(wire, tag ^ 1)
    for i in range(3000):
        assert names.find(to_wire(f"n{i}.other.example"), True) == -1
        assert names.find(to_wire(f"n{i}.held.exampl"), False) == -1
        assert names.find(to_wire(f"m{i}.held.example"), False) == -1  # same length as a held name
    assert list(names.items()) == [(to_wire(n), t) for n, t in zip(held, tags, strict=True)]


def test_nameset_hit_needs_crc_and_length_besides_the_hash() -> None:
    names = NameSet(["a.example"])
    wire = to_wire("a.example")
    table = names.table
    slot = next(i for i in range(0, len(table), 2) if table[i + 1])
    about = table[slot + 1]
    table[slot + 1] = about ^ 1 << 40  # another CRC-32
    assert names.find(wire, True) == -1
    table[slot + 1] = about ^ 1 << 9  # another length
    assert names.find(wire, True) == -1
    table[slot + 1] = about
    assert names.find(wire, True) == EXACT


def _write(tmp_path: Path, name: str, text: str, newline: str = "\n") -> Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def test_include_in_a_list_file(tmp_path: Path) -> None:
    _write(tmp_path, "feed.hosts", HOSTS)
    _write(tmp_path, "zone.rpz", RPZ)
    _write(tmp_path, "filter.txt", ADBLOCK)
    listfile = _write(tmp_path, "imported.yaml", (
        "name: imported\n"
        "include:\n"
        "  - feed.hosts\n"
        "  - {path: zone.rpz, format: rpz}\n"
        "  - {path: filter.txt, format: adblock}\n"
    ))
    lst, errors = load_list(listfile)
    assert errors == [] and lst is not None
    warnings = warnings_for(str(listfile))
    assert any(w.path.endswith("feed.hosts") and w.line == 10 for w in warnings)
    assert any(w.path.endswith("zone.rpz") and w.line == 18 for w in warnings)
    policy = compile_policy([lst])
    decide = {}
    for name in ("ads.example.com", "sub.ads.example.com", "nx.example", "deep.sub.nx.example",
                 "pass.nx.example", "nodata.example", "blocked.example", "x.blocked.example",
                 "allowed.blocked.example", "wild.example", "a.wild.example", "xn--bcher-kva.example",
                 "notads.example.com", "example.com"):
        rule = policy.match_name(name)
        decide[name] = (rule.action, rule.response.mode) if rule else None
    assert decide == {
        "ads.example.com": ("block", "nxdomain"),
        "sub.ads.example.com": None,  # hosts entries are exact
        "nx.example": ("block", "nxdomain"),
        "deep.sub.nx.example": ("block", "nxdomain"),
        "pass.nx.example": ("allow", "nxdomain"),
        "nodata.example": ("block", "nodata"),
        "blocked.example": ("block", "nxdomain"),
        "x.blocked.example": ("block", "nxdomain"),
        "allowed.blocked.example": ("allow", "nxdomain"),
        "wild.example": None,  # *.wild.example: only names under it
        "a.wild.example": ("block", "nxdomain"),
        "xn--bcher-kva.example": ("block", "nxdomain"),
        "notads.example.com": None,
        "example.com": None,
    }
    rule = policy.match_name("x.blocked.example")
    assert rule is not None and rule.pattern == "blocked.example" and "filter.txt" in rule.origin
    assert policy.match_ip(bytes([192, 0, 2, 1])) is not None
    assert policy.entry_counts()["imported"] > 10


def test_missing_include_is_an_error(tmp_path: Path) -> None:
    listfile = _write(tmp_path, "l.yaml", "name: l\ninclude:\n  - gone.txt\n")
    lst, errors = load_list(listfile)
    assert lst is None
    assert [(e.line, "file not found" in e.message) for e in errors] == [(3, True)]


def test_bad_include_keys(tmp_path: Path) -> None:
    listfile = _write(tmp_path, "l.yaml",
                      "name: l\ninclude:\n  - {path: a.txt, format: csv}\n  - {nope: 1}\n")
    lst, errors = load_list(listfile)
    assert lst is None
    assert [e.line for e in errors] == [3, 4]


def test_imported_name_covering_a_guard_fails_with_file_line(tmp_path: Path) -> None:
    _write(tmp_path, "feed.txt", "# feed\nok.example\nqq.com\n")
    listfile = _write(tmp_path, "l.yaml", "name: l\ninclude:\n  - {path: feed.txt, format: plain}\n")
    _, errors = load_lists([listfile, ROOT / "blocklists" / "allow.yaml"])
    # qq.com covers the guard qq.com and the guards under it (map.qq.com, ...): one error each.
    assert errors and all(e.path.endswith("feed.txt") and e.line == 3 for e in errors)
    assert any("guard 'qq.com'" in e.message for e in errors)


def test_netblock_import_command(tmp_path: Path) -> None:
    source = _write(tmp_path, "filter.txt", ADBLOCK)
    result = subprocess.run([sys.executable, "-m", "netblock", "import", str(source), "--format", "adblock",
                             "--name", "ads"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "filter.txt:6:" in result.stderr  # the bad line, with file:line
    document = yaml.safe_load(result.stdout)
    assert document["name"] == "ads"
    assert document["domains"] == ["blocked.example", "important.example", "wild.example"]
    assert document["exact"] == ["hostsyntax.example", "plain.example"]
    assert document["allow"] == ["allowed.blocked.example"]
    # The output is a list file netblock loads as it is.
    out = tmp_path / "ads.yaml"
    out.write_text(result.stdout)
    lst, errors = load_list(out)
    assert errors == [] and lst is not None
    assert compile_policy([lst]).match_name("x.blocked.example") is not None


def test_netblock_import_rpz(tmp_path: Path) -> None:
    source = _write(tmp_path, "zone.rpz", RPZ)
    result = subprocess.run([sys.executable, "-m", "netblock", "import", str(source)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert "2001:db8::/48" in document["networks"]
    assert {"name": "pass.nx.example", "match": "exact"} in document["allow"]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_idn_in_unicode_and_punycode_are_one_name(tmp_path: Path, newline: str) -> None:
    _write(tmp_path, "feed.txt", "bücher.example\nxn--bcher-kva.example\n", newline)
    listfile = _write(tmp_path, "l.yaml", "name: l\ninclude:\n  - {path: feed.txt, format: plain}\n")
    lst, errors = load_list(listfile)
    assert errors == [] and lst is not None
    policy = compile_policy([lst])
    assert policy.entry_counts() == {"l": 1}
    assert policy.match_name("bücher.example") is not None


def test_blocked_answer_for_an_imported_name_cites_it(tmp_path: Path) -> None:
    """The answer's EDE text and SOA owner name the imported entry that matched, and only
    EDNS queries carry the EDE."""
    import dns.edns
    import dns.message
    import dns.rcode
    import dns.rdatatype

    from netblock.dns import wire

    _write(tmp_path, "feed.txt", "tracker.example\nother.example\n")
    listfile = _write(tmp_path, "feed.yaml", (
        "name: feed\npolicy: {id: POLICY-7}\ninclude:\n  - {path: feed.txt, format: plain}\n"))
    lst, errors = load_list(listfile)
    assert errors == [] and lst is not None
    policy = compile_policy([lst])
    for use_edns in (0, None):
        query = dns.message.make_query("A.b.Tracker.example", "A", use_edns=use_edns)
        parsed = wire.parse_query(query.to_wire())
        assert isinstance(parsed, wire.Query)
        rule = policy.match_wire(parsed.qname)
        assert rule is not None and rule.pattern == "tracker.example" and rule.list_name == "feed"
        answer = dns.message.from_wire(wire.blocked_answer(parsed, rule))
        assert answer.rcode() == dns.rcode.NXDOMAIN
        assert answer.authority[0].rdtype == dns.rdatatype.SOA
        assert answer.authority[0].name.to_text().lower() == "tracker.example."
        texts = [o.text for o in answer.options if isinstance(o, dns.edns.EDEOption)]
        assert texts == (["blocked by POLICY-7: feed (tracker.example)"] if use_edns == 0 else [])


def test_dedupe_across_slices_and_parts_keeps_first_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names repeated across slices and across dedupe dicts are kept once, in source order,
    with or without per-name kinds."""
    monkeypatch.setattr(importers, "_SLICE", 7)
    monkeypatch.setattr(importers, "_PART", 10)
    names = [f"n{i % 37}.example" for i in range(200)]
    assert importers.NameSet(names).count == 37
    expected = list(dict.fromkeys(names))
    nameset = importers.NameSet(names)
    assert [importers.NameSet.text(wire) for wire, _ in nameset.items()] == expected
    tags = [importers.EXACT if i % 2 else importers.BELOW for i in range(200)]
    mixed = importers.NameSet(names, tags)
    assert list(mixed.items()) == [(to_wire(n), t) for n, t in dict.fromkeys(zip(names, tags, strict=True))]


def test_exact_and_below_entries_for_one_name_keep_their_answers(tmp_path: Path) -> None:
    """RPZ `x CNAME .` (NXDOMAIN for x) beside `*.x CNAME *.` (NODATA below it): asking x first
    must not change the answer for names below (a hit cache once keyed by name alone did)."""
    _write(tmp_path, "zone.rpz", "$ORIGIN rpz.test.\nx.example CNAME .\n*.x.example CNAME *.\n")
    listfile = _write(tmp_path, "rpz.yaml", "name: rpz\ninclude:\n  - {path: zone.rpz, format: rpz}\n")
    lst, errors = load_list(listfile)
    assert errors == [] and lst is not None
    policy = compile_policy([lst])
    for _ in range(2):
        top, below = policy.match_name("x.example"), policy.match_name("a.x.example")
        assert top is not None and top.response.mode == "nxdomain"
        assert below is not None and below.response.mode == "nodata" and below.pattern == "x.example"


def test_nameset_text_of_odd_bytes_is_escaped_not_an_error() -> None:
    # A hit matches by hash, not bytes: the text of a query name must never raise.
    assert NameSet.text(b"\x06weixin\x02qq\x03com\x00") == "weixin.qq.com"
    assert NameSet.text(b"\x03a\xffb\x02qq\x00") == "a\\xffb.qq"


@pytest.mark.parametrize("count", [0, 1, 5, 8, 9, 24, 25])
def test_zeroed_words_and_joined_build_in_chunks_what_one_call_would(monkeypatch: pytest.MonkeyPatch,
                                                                     count: int) -> None:
    """Big buffers are filled a chunk per C call (answers wait behind one long call); the
    result is the same as the single call's, whatever the count's remainder."""
    monkeypatch.setattr(importers, "_FRESH", 64)  # 8 words a chunk
    words = importers.zeroed_words(count)
    assert words.typecode == "Q" and len(words) == count and not any(words)
    pieces = [bytes([i]) * i for i in range(count)]
    assert importers.joined(iter(pieces)) == b"".join(pieces)


def test_file_includes_are_decoded_and_parsed_a_piece_at_a_time(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """A file is decoded in pieces that end at line ends; names, warnings with their line
    numbers, a BOM, CR LF and RPZ records spanning lines come out as from the whole text."""
    text = "\ufeff" + "".join(f"{i}.münchen.example\n" if i % 5 else "bad name!\n" for i in range(60))
    rpz = RPZ.replace("\r\n", "\n")
    whole, whole_rpz = parse_text(text, "plain", "x"), parse_text(rpz, "rpz", "zone.rpz")  # one piece each
    monkeypatch.setattr(importers, "_CHUNK", 16)
    data = text.replace("\n", "\r\n").encode()
    pieces = importers.decoded_pieces(data)
    assert len(pieces) > 20 and "".join(pieces) == data.decode()
    assert all(piece.endswith("\n") and len(piece.encode()) < 16 + 30 for piece in pieces)
    parsed = importers.parse_pieces(pieces, "plain", "x")
    assert parsed.names == whole.names and len(parsed.names[SUBTREE]) == 48
    assert [w.line for w in parsed.warnings] == [w.line for w in whole.warnings] == list(range(1, 61, 5))
    by_pieces = importers.parse_pieces(importers.decoded_pieces(rpz.encode()), "rpz", "zone.rpz")
    assert by_pieces.names == whole_rpz.names
    assert [w.line for w in by_pieces.warnings] == [w.line for w in whole_rpz.warnings]
    with pytest.raises(UnicodeDecodeError) as bad:
        importers.decoded_pieces(b"ok.example\n" * 3 + b"\xff.example\n")
    assert bad.value.start == 33  # in the file, not in its piece
    (tmp_path / "feed.txt").write_bytes(b"ok.example\n" * 3 + b"\xff.example\n")
    lst, errors = load_list(_write(tmp_path, "l.yaml", "name: l\ninclude:\n  - {path: feed.txt, format: plain}\n"))
    assert lst is None and [(e.line, "not UTF-8 text" in e.message) for e in errors] == [(3, True)]


def test_homes_mark_where_probes_start_and_only_those_misses_reach_the_table(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    """A bit per slot says some name's probe starts there: every held name's home is set
    and no other bit is; a policy lookup reads the table only for a name whose home is set,
    and still finds every held name."""
    held = [f"h{i}.held.example" for i in range(3000)]
    absent = [f"a{i}.held.example" for i in range(3000)]
    slots = (importers.NameSet(held).home_mask + 1) * 8
    homes = {hash(to_wire(name)) & (slots - 1) for name in held}
    names = importers.NameSet(held)
    assert {i for i in range(slots) if names.homes[i >> 3] >> (i & 7) & 1} == homes
    (tmp_path / "feed.txt").write_text("".join(f"{name}\n" for name in held))
    lst, errors = load_list(_write(tmp_path, "l.yaml", "name: l\ninclude:\n  - {path: feed.txt, format: plain}\n"))
    assert lst is not None and not errors
    policy = compile_policy([lst])
    probed: list[bytes] = []
    find_hashed = importers.NameSet.find_hashed
    monkeypatch.setattr(importers.NameSet, "find_hashed",
                        lambda self, wire, value, whole: probed.append(wire) or find_hashed(self, wire, value, whole))
    assert all(policy.match_name(name) is not None for name in held)
    assert len(probed) == len(held)
    probed.clear()
    assert not any(policy.match_name(name) for name in absent)
    expected = [to_wire(n) for n in absent if hash(to_wire(n)) & (slots - 1) in homes]
    assert probed == expected and 0 < len(expected) < len(absent) / 2
