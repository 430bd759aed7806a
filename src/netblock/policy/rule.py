"""What a matching blocklist entry says: the decision and everything cited with it."""

from __future__ import annotations

from dataclasses import dataclass, field

ACTIONS = ("allow", "block", "monitor")
# At equal specificity allow beats block beats monitor (DESIGN.md).
PRECEDENCE = {"allow": 0, "block": 1, "monitor": 2}
RESPONSE_MODES = ("nxdomain", "nodata", "refused", "null", "sinkhole")


@dataclass(frozen=True, slots=True)
class Response:
    mode: str = "nxdomain"
    sinkhole_v4: tuple[bytes, ...] = ()  # packed addresses for A answers
    sinkhole_v6: tuple[bytes, ...] = ()  # packed addresses for AAAA answers


@dataclass(frozen=True, slots=True)
class Citation:
    id: str = ""
    title: str = ""
    url: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    list_name: str
    vendor: str
    pattern: str  # the entry as written: a domain or a CIDR
    kind: str  # subtree | exact | network
    action: str  # allow | block | monitor
    response: Response
    policy: Citation
    block_ttl: int
    origin: str  # file:line of the entry
    role: str = ""
    ede_text: bytes = field(default=b"", compare=False)

    @property
    def describe(self) -> str:
        return f"{self.list_name} ({self.pattern})"


def ede_text_for(list_name: str, pattern: str, policy: Citation) -> bytes:
    cited = policy.id or list_name
    return f"blocked by {cited}: {list_name} ({pattern})".encode()[:400]
