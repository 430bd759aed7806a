"""Fuzz targets: one function per untrusted input, each taking bytes.

A target swallows only the errors its input is documented to produce (a FORMERR, a
MalformedAnswer, a SourceError with file:line); any other exception is a bug. Targets also
check invariants that would break quietly: an answer always echoes the client's ID, sets QR
and parses as DNS; an imported list written as YAML loads back as a valid list.

Used by tests/fuzz/run.py (atheris, or a plain mutational loop) and replayed over the
checked-in corpus by tests/test_fuzz_corpus.py.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"

_server: Any = None

def server() -> Any:
    """A DnsServer with the shipped and test lists, no sockets, no event files."""
    global _server
    if _server is None:
        from netblock.config import Access, Cache, Config, Events, RateLimit, Server, Upstreams
        from netblock.config import Policy as PolicyConfig
        from netblock.dns.server import DnsServer

        lists = (str(REPO / "blocklists" / "*.yaml"), str(REPO / "tests" / "data" / "foundation" / "*.yaml"))
        config = Config(
            server=Server(listen=("127.0.0.1:5300",)),
            upstreams=Upstreams(servers=("127.0.0.1:9",), health_interval=0),
            cache=Cache(size=2000),
            events=Events(enabled=False),
            access=Access(rate_limit=RateLimit(queries=0)),  # one fuzzing client, millions of queries
            policy=PolicyConfig(lists=lists, watch=False),
        )
        _server = DnsServer(config)
        _server.holder.load_initial()
    return _server


# ---------------------------------------------------------------- DNS queries


def query(data: bytes) -> None:
    """A datagram from a client: parse_query, then the whole handle() path."""
    from netblock.dns import wire

    parsed = wire.parse_query(data)
    if not isinstance(parsed, wire.Query):
        assert parsed in (wire.DROP, wire.FORMERR, wire.NOTIMP), parsed
    srv = server()
    first: bytes | None = None
    for proto in ("udp", "udp", "tcp"):  # the second UDP pass may be a replay of the first answer
        result = srv.handle(data, "10.0.0.1", proto)
        if proto == "udp" and isinstance(result, bytes):
            if first is not None:
                assert (result[2:4] == first[2:4] and result[12:] == first[12:]) or first[3] & 0x0F == 2
            first = result
        if result is None:
            assert not isinstance(parsed, wire.Query) or srv.admission.drops("acl"), "dropped a valid query"
            continue
        if isinstance(result, wire.Query):
            assert isinstance(parsed, wire.Query)
            _check_forward(result, srv)
            continue
        _check_answer(data, result, parsed, proto)


def _check_answer(data: bytes, answer: bytes, parsed: Any, proto: str) -> None:
    from netblock.dns import wire

    assert len(answer) >= 12 and answer[:2] == data[:2], "ID not echoed"
    assert answer[2] & 0x80, "QR not set"
    if not isinstance(parsed, wire.Query):  # unbound's echo: the query with QR and the rcode
        assert answer == wire.error_echo(data, parsed)
        return
    assert answer[4:6] == b"\x00\x01", "qdcount not 1"
    assert not answer[3] & 0x40, "Z set"
    limit = 65535 if proto == "tcp" else (min(parsed.udp_size, 1232) if parsed.edns else 512)
    assert len(answer) <= limit, (len(answer), limit)
    import dns.exception
    import dns.message

    try:
        message = dns.message.from_wire(answer)
    except dns.exception.DNSException as exc:
        raise AssertionError(f"our answer does not parse: {exc!r}: {answer!r}") from None
    assert (message.edns >= 0) == parsed.edns, "OPT presence differs from the query"
    if message.edns >= 0:
        assert message.edns == 0, "OPT version not 0"
        assert message.ednsflags & 0x7FFF == 0, "unknown EDNS flags echoed"


def _check_forward(query_: Any, srv: Any) -> None:
    """What resolve() would send upstream, and a synthetic upstream answer stored back."""
    from netblock.dns import wire

    upstream = wire.build_query(0x4242, query_.qname, query_.qtype, query_.qclass, query_.do, 1232)
    assert wire.parse_query(upstream).__class__ is wire.Query


# ---------------------------------------------------------------- upstream answers


def answer(data: bytes) -> None:
    """A datagram from an upstream: matching, scanning, names, storing, serving from cache."""
    from netblock.dns import wire

    try:
        scan = wire.scan_answer(data)
    except wire.MalformedAnswer:
        scan = None
    if scan is not None:
        for offset in scan.cnames:
            try:
                name = wire.read_name(data, offset)
            except wire.MalformedAnswer:
                continue
            assert len(name) <= 256 and name.endswith(b"\x00")
    if len(data) < 17:
        return
    # resolve() only stores answers whose ID and question match its own query.
    end = 12
    try:
        end = wire.skip_name(data, 12)
    except wire.MalformedAnswer:
        return
    if end + 4 > len(data):
        return
    qname = data[12:end].lower()
    qtype, qclass = struct.unpack_from("!HH", data, end)
    qid = data[0] << 8 | data[1]
    if not wire.answer_matches(data, qid, qname, qtype, qclass):
        return
    client = wire.build_query(0x1357, qname, qtype, qclass, bool(data[2] & 0x01), 1232)
    parsed = wire.parse_query(client)
    if not isinstance(parsed, wire.Query):
        return  # a question no client could have asked (a compressed or over-long name)
    srv = server()
    key = (parsed.qname, parsed.qtype, parsed.qclass, parsed.do)
    entry = srv._store(key, data)
    if entry is None:
        return
    for proto in ("udp", "tcp"):
        if entry.rule is not None:
            reply = wire.blocked_answer(parsed, entry.rule, 1232)
        else:
            reply = srv._fit(parsed, srv._from_entry(parsed, entry), proto)
            stale = srv._from_entry(parsed, entry, stale=True)
            assert stale[:2] == client[:2]
        assert reply[:2] == client[:2] and reply[2] & 0x80
        assert reply[12 : 12 + len(parsed.question)] == parsed.question
        if proto == "udp":
            assert len(reply) <= 1232


# ---------------------------------------------------------------- operator files


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def lists(data: bytes) -> None:
    """A blocklist file: YAML with lines, the list schema, compiling and matching."""
    from netblock.policy.lists import parse_list
    from netblock.policy.match import compile_policy, guard_violations
    from netblock.yamlsrc import SourceError, YMap, load_text

    try:
        document = load_text(_text(data), "fuzz.yaml")
    except SourceError as exc:
        assert exc.line >= 0
        return
    if isinstance(document, YMap):
        document.pop("include", None)  # includes read files and URLs: not from a fuzzer
    listfile, errors = parse_list(document, "fuzz.yaml")
    for error in errors:
        assert isinstance(error, SourceError) and str(error).startswith("fuzz.yaml:")
    if listfile is None:
        return
    guard_violations([listfile])
    policy = compile_policy([listfile])
    for entry in (*listfile.domains, *listfile.exact):
        from netblock.names import to_wire

        assert policy.match_wire(to_wire(entry.name)) is not None, entry.name
    for name in (b"\x06weixin\x02qq\x03com\x00", b"\x00", b"\x01a" * 100 + b"\x00"):
        policy.match_wire(name)


def importers(data: bytes) -> None:
    """Third-party list formats; the first byte picks the format. Whatever the import keeps
    must come back as a valid list file through `netblock import`'s YAML."""
    from netblock.policy import importers as imp
    from netblock.policy.lists import parse_list
    from netblock.yamlsrc import load_text

    if not data:
        return
    fmt = imp.FORMATS[data[0] % len(imp.FORMATS)]
    text = _text(data[1:])
    imp.sniff_format("fuzz.txt", text)
    parsed = imp.parse_text(text, fmt, "fuzz.txt")
    if not parsed.count and not parsed.networks and not parsed.allow:
        return
    document = load_text(imp.to_yaml(parsed, "fuzzed", "fuzz.txt", fmt), "imported.yaml")
    listfile, errors = parse_list(document, "imported.yaml")
    assert not errors, [str(e) for e in errors[:3]]
    assert listfile is not None


def config(data: bytes) -> None:
    """The service configuration: YAML, schema, consistency, then what start-up builds from it."""
    from netblock.config import Config, _build, _check_consistency
    from netblock.dns.admit import Admission
    from netblock.yamlsrc import SourceError, load_text

    try:
        document = load_text(_text(data), "fuzz.yaml")
        built = _build(Config, document, "", "fuzz.yaml")
        built = dataclasses.replace(built, path="/nonexistent/fuzz.yaml")
        _check_consistency(built, "fuzz.yaml", document)
    except SourceError as exc:
        assert str(exc).startswith("fuzz.yaml:")
        return
    admission = Admission(built.access)
    for client in ("127.0.0.1", "10.0.0.1", "8.8.8.8", "::1", "fe80::1%eth0"):
        admission.check(client, 0.0)
    from netblock.config import parse_hostport

    for address in (*built.server.listen, *built.upstreams.servers):
        parse_hostport(address)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "query": query,
    "answer": answer,
    "lists": lists,
    "importers": importers,
    "config": config,
}
