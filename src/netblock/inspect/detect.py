"""Detection: one decoded packet in, zero or one Detection out, through a sink callback.

Cheap checks first: most packets leave after a port test or one dict lookup (flows
already decided). TLS and HTTP flows are reassembled until the ClientHello or request
head is complete, QUIC client Initials are decrypted, then the server name is matched
against the same compiled policy the DNS server uses.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netblock.inspect import http, quic, tls
from netblock.inspect.dnsmsg import query_name
from netblock.inspect.flows import Stream, Table
from netblock.inspect.packet import ACK, SYN, TCP, UDP, Packet
from netblock.policy.match import Policy
from netblock.policy.rule import Citation, Response, Rule

STAGES = ("sni", "quic", "http-host", "dns-bypass", "dot", "doh", "ip")
SERVER_PORTS = frozenset((80, 443, 53, 853, 8080, 8443))
_SKIP = 0  # decided: nothing to find in this flow
_DONE = 1  # decided: already reported


@dataclass(slots=True)
class Detection:
    stage: str  # one of STAGES
    rule: Rule  # action already says what happens: block (enforced) or monitor
    name: str  # server or query name; the server address for address-only detections
    qtype: int
    pkt: Packet  # the packet that completed the detection (addresses, ports, seq/ack)
    end_seq: int = 0  # the client's next sequence number (TCP), for resets
    alpn: tuple[str, ...] = ()
    ech: int | None = None
    version: int = 0  # QUIC version

    @property
    def client_ip(self) -> str:
        return str(ipaddress.ip_address(self.pkt.src))

    @property
    def server_ip(self) -> str:
        return str(ipaddress.ip_address(self.pkt.dst))

    @property
    def protocol(self) -> str:
        return "tcp" if self.pkt.proto == TCP else "udp"

    @property
    def mac(self) -> str:
        return ":".join(f"{b:02x}" for b in self.pkt.mac) if self.pkt.mac else ""


def inspector_rule(
    pattern: str,
    action: str,
    list_name: str = "inspector",
    vendor: str = "netblock inspector",
    origin: str = "inspector",
) -> Rule:
    """A rule for detections no list entry names (foreign DNS, DoT, DoQ)."""
    return Rule(
        list_name=list_name,
        vendor=vendor,
        pattern=pattern,
        kind="network",
        action=action,
        response=Response(),
        policy=Citation(),
        block_ttl=0,
        origin=origin,
    )


def wire_name(name: str) -> bytes | None:
    """Lower-case wire form of a name seen in traffic, or None if it cannot be a DNS name."""
    labels = name.split(".")
    if len(name) > 253 or any(not label or len(label) > 63 for label in labels):
        return None
    try:
        return b"".join(bytes((len(label),)) + label.encode("ascii") for label in labels) + b"\x00"
    except UnicodeEncodeError:
        return None


class Engine:
    def __init__(
        self,
        policy: Policy,
        sink: Callable[[Detection], None],
        *,
        doh: Policy | None = None,
        doh_list_name: str = "doh-resolvers",
        resolvers: frozenset[bytes] = frozenset(),
        enforcing: bool = False,
        flow_timeout: float = 10.0,
        max_flows: int = 20_000,
        stats: Any = None,
    ) -> None:
        self.policy = policy
        self.stats = stats  # notes (ECH, no SNI) are counted there as kind, list "inspector"
        self.doh = doh
        self.doh_list_name = doh_list_name
        self.sink = sink
        self.resolvers = resolvers
        self.enforcing = enforcing
        self.streams: Table[tuple[str, Stream]] = Table(max_flows, flow_timeout)
        self.decided: Table[int] = Table(max_flows * 2, max(flow_timeout, 60.0))
        self.quic_flows: Table[quic.CryptoAssembler] = Table(max_flows, flow_timeout)
        self.keys = quic.KeyCache(4096)
        self.notes: dict[str, int] = {"ech": 0, "esni": 0, "no-sni": 0, "quic-undecryptable": 0}
        self.packets = 0
        self._rules: dict[tuple[Rule, str], Rule] = {}
        self._fixed: dict[str, Rule] = {}
        # Server names repeat: name -> (rule, is DoH); cleared with each new policy.
        self._decisions: dict[str, tuple[Rule | None, bool]] = {}
        # Flows reset by enforcement -> until when; later client segments get resets again
        # (the first pair may lose the race against the server's reply). Filled by the sink.
        self.killed: dict[tuple[bytes, int, bytes, int], float] = {}
        self.on_killed: Callable[[Packet], None] | None = None

    # -- the per-packet entry point -------------------------------------------------
    def handle(self, pkt: Packet) -> None:
        self.packets += 1
        if not self.packets & 0xFFF:
            self.sweep(pkt.ts)
        if pkt.proto == TCP:
            flags = pkt.flags
            if flags & SYN:
                if not flags & ACK:
                    self._syn(pkt)
                return
            payload = pkt.payload
            if not payload or (pkt.sport in SERVER_PORTS and pkt.dport >= 1024):
                return  # ACKs, server-to-client data
            if pkt.dport == 53:
                self._dns(pkt, tcp=True)
                return
            self._tcp_payload(pkt)
        elif pkt.proto == UDP:
            dport = pkt.dport
            if dport == 53:
                self._dns(pkt, tcp=False)
            elif dport == 853:
                self._address_once(pkt, "dot", self._fixed_rule("dot", "DoQ (UDP 853)"))
            elif len(pkt.payload) >= 1200 and (pkt.payload[0] & 0xC0) == 0xC0:
                self._quic(pkt)
            elif self.policy.has_networks and pkt.sport >= 1024:
                self._to_network(pkt)

    def kill(self, pkt: Packet, seconds: float = 5.0) -> None:
        """Remember a reset flow for follow-up resets from its later client segments."""
        if len(self.killed) >= 1024:
            del self.killed[next(iter(self.killed))]
        self.killed[(pkt.src, pkt.sport, pkt.dst, pkt.dport)] = pkt.ts + seconds

    def _follow_up(self, key: tuple[bytes, int, bytes, int], pkt: Packet) -> None:
        if self.killed[key] < pkt.ts:
            del self.killed[key]
        elif self.on_killed is not None:
            self.on_killed(pkt)

    def set_policy(self, policy: Policy, doh: Policy | None) -> None:
        """Swap in a reloaded policy: reference assignments, safe against the capture thread."""
        self.doh = doh
        self.policy = policy
        # After the policy: a decision made with the old one can only land in the old dict.
        self._rules = {}
        self._decisions = {}

    def _note(self, kind: str) -> None:
        """Things worth counting that are not detections: ECH, a hello without SNI."""
        self.notes[kind] += 1
        if self.stats is not None:
            counts = self.stats.inspector_detections
            counts[(kind, "inspector")] = counts.get((kind, "inspector"), 0) + 1

    def sweep(self, now: float) -> None:
        self.streams.sweep(now)
        self.decided.sweep(now)
        self.quic_flows.sweep(now)

    # -- TCP ----------------------------------------------------------------------
    def _syn(self, pkt: Packet) -> None:
        dport = pkt.dport
        if dport == 853:
            self._address_once(pkt, "dot", self._fixed_rule("dot", "DoT (TCP 853)"))
            return
        if self.policy.has_networks and self._to_network(pkt):
            return
        if self.doh is not None and dport == 443:
            rule = self.doh.match_ip(pkt.dst)
            if rule is not None:
                self._address_once(pkt, "doh", rule)

    def _to_network(self, pkt: Packet) -> bool:
        """A new flow (SYN, UDP) to a listed network; True when it was reported."""
        rule = self.policy.match_ip(pkt.dst)
        if rule is None or rule.action == "allow":
            return False
        if rule.list_name == self.doh_list_name:
            if pkt.dport != 443:
                return False  # DNS and DoT to a resolver address have their own detections
            self._address_once(pkt, "doh", rule)
        else:
            self._address_once(pkt, "ip", rule)
        return True

    def _tcp_payload(self, pkt: Packet) -> None:
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        now = pkt.ts
        if self.decided.get(key, now) is not None:
            if self.killed and key in self.killed:
                self._follow_up(key, pkt)
            return
        payload = pkt.payload
        entry = self.streams.get(key, now)
        if entry is None:
            if payload[0] == 0x16:
                kind = "tls"
            elif http.looks_like_request(payload) or (len(payload) < 8 and payload[:1].isupper()):
                kind = "http"
            else:
                self.decided.put(key, _SKIP, now)
                return
            data = payload
            stream: Stream | None = None
        else:
            kind, stream = entry
            if not stream.add(pkt.seq, pkt.ack, payload):
                self.streams.pop(key)
                self.decided.put(key, _SKIP, now)
                return
            data = stream.contiguous()
        if kind == "tls":
            status, hello = tls.parse_stream(data)
            if status == tls.OK and hello is not None:
                self._decide(key, now)
                self._named(pkt, hello.sni, "sni", stream, hello)
                return
            more = status == tls.NEED_MORE
        else:
            hstatus, host, _method = http.parse_request(data)
            if hstatus == http.OK:
                self._decide(key, now)
                if host:
                    self._named(pkt, host, "http-host", stream, None)
                return
            more = hstatus == http.NEED_MORE
        if not more:
            self.streams.pop(key)
            self.decided.put(key, _SKIP, now)
        elif stream is None:
            stream = Stream(pkt.seq)
            stream.add(pkt.seq, pkt.ack, payload)
            self.streams.put(key, (kind, stream), now)

    def _decide(self, key: tuple[bytes, int, bytes, int], now: float) -> None:
        self.streams.pop(key)
        self.decided.put(key, _DONE, now)

    # -- UDP ----------------------------------------------------------------------
    def _quic(self, pkt: Packet) -> None:
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        now = pkt.ts
        if self.decided.get(key, now) is not None:
            return
        initials, failed = quic.decrypt_initials(pkt.payload, self.keys)
        assembler = self.quic_flows.get(key, now)
        if not initials:
            if failed and assembler is None:
                self._note("quic-undecryptable")
                self.decided.put(key, _SKIP, now)
            return
        if assembler is None:
            assembler = quic.CryptoAssembler()
            self.quic_flows.put(key, assembler, now)
        for initial in initials:
            for offset, data in quic.crypto_frames(initial.frames):
                assembler.add(offset, data)
        status, hello = tls.parse_handshake(assembler.contiguous())
        if status == tls.NEED_MORE:
            return
        self.quic_flows.pop(key)
        self.decided.put(key, _DONE if status == tls.OK else _SKIP, now)
        if status == tls.OK and hello is not None:
            self._named(pkt, hello.sni, "quic", None, hello, version=initials[0].version)

    def _dns(self, pkt: Packet, tcp: bool) -> None:
        if pkt.dst in self.resolvers or not self.resolvers:
            return
        question = query_name(pkt.payload, tcp=tcp)
        if question is None:
            return
        name, qtype = question
        self._emit(
            Detection(
                "dns-bypass",
                self._fixed_rule("dns-bypass", "DNS to a foreign resolver"),
                name,
                qtype,
                pkt,
                end_seq=(pkt.seq + len(pkt.payload)) & 0xFFFFFFFF,
            )
        )

    def _address_once(self, pkt: Packet, stage: str, rule: Rule) -> None:
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if self.decided.get(key, pkt.ts) is not None:
            return  # a retransmitted SYN, or the flow's later datagrams
        self.decided.put(key, _DONE, pkt.ts)
        self._emit(
            Detection(
                stage,
                self._effective(rule, stage),
                str(ipaddress.ip_address(pkt.dst)),
                0,
                pkt,
                end_seq=(pkt.seq + 1) & 0xFFFFFFFF,
            )
        )

    # -- names --------------------------------------------------------------------
    def _named(
        self,
        pkt: Packet,
        name: str | None,
        stage: str,
        stream: Stream | None,
        hello: tls.Hello | None,
        version: int = 0,
    ) -> None:
        alpn: tuple[str, ...] = ()
        ech = None
        if hello is not None:
            alpn, ech = hello.alpn, hello.ech
            if ech is not None:
                self._note("ech")
            if hello.esni:
                self._note("esni")
        if not name:
            self._note("no-sni")
            return
        decisions = self._decisions  # before reading the policy (see set_policy)
        decision = decisions.get(name)
        if decision is None:
            decision = self._decide_name(name)
            if len(decisions) >= 8192:
                decisions.clear()
            decisions[name] = decision
        rule, is_doh = decision
        if rule is None:
            return
        if is_doh:
            stage = "doh"
        end_seq = stream.end_seq if stream is not None else (pkt.seq + len(pkt.payload)) & 0xFFFFFFFF
        self._emit(
            Detection(
                stage,
                self._effective(rule, stage),
                name,
                0,
                pkt,
                end_seq=end_seq,
                alpn=alpn,
                ech=ech,
                version=version,
            )
        )

    def _decide_name(self, name: str) -> tuple[Rule | None, bool]:
        """(the rule to report or None, whether it is a DoH resolver), for one server name."""
        wire = wire_name(name)
        if wire is None:
            return None, False
        rule = self.policy.match_wire(wire)
        if rule is not None and rule.list_name == self.doh_list_name:
            return rule, True
        if rule is None and self.doh is not None:
            rule = self.doh.match_wire(wire)
            return (rule, True) if rule is not None and rule.action != "allow" else (None, False)
        if rule is None or rule.action == "allow":
            return None, False
        return rule, False

    def _effective(self, rule: Rule, stage: str) -> Rule:
        """The rule as it applies here: monitor when not enforcing; DoH blocked when enforcing
        (the list is monitor-only for DNS, but the point of the inspector is that DNS goes
        through netblock)."""
        key = (rule, stage)
        found = self._rules.get(key)
        if found is None:
            if not self.enforcing:
                action = "monitor"
            elif stage == "doh":
                action = "block"
            else:
                action = rule.action
            found = self._rules[key] = dataclasses.replace(rule, action=action)
        return found

    def _fixed_rule(self, stage: str, pattern: str) -> Rule:
        found = self._fixed.get(pattern)
        if found is None:
            found = self._fixed[pattern] = inspector_rule(pattern, "block" if self.enforcing else "monitor")
        return found

    def _emit(self, detection: Detection) -> None:
        self.sink(detection)
