"""What a matching blocklist entry says: the decision and everything cited with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

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


_SETTERS: tuple[Callable[[Rule, object], None], ...] = tuple(getattr(Rule, f.name).__set__ for f in fields(Rule))
if len(_SETTERS) != 11:  # citing() sets each field by name: a new field must be added there
    raise ImportError(f"citing() knows 11 Rule fields, Rule has {len(_SETTERS)}")
_new = object.__new__


def citing(template: Rule, pattern: str) -> Rule:
    """The template of an imported list naming the name that matched. Its EDE text is left
    empty (built when an EDNS answer needs it: ede_text()). Called on every blocked query for
    an imported name: the slots are set directly, at half the cost of the frozen __init__."""
    rule = _new(Rule)
    (list_name, vendor, set_pattern, kind, action, response, policy, block_ttl, origin, role,
     no_ede_text) = _SETTERS
    list_name(rule, template.list_name)
    vendor(rule, template.vendor)
    set_pattern(rule, pattern)
    kind(rule, template.kind)
    action(rule, template.action)
    response(rule, template.response)
    policy(rule, template.policy)
    block_ttl(rule, template.block_ttl)
    origin(rule, template.origin)
    role(rule, template.role)
    no_ede_text(rule, b"")
    return rule


def ede_text(rule: Rule) -> bytes:
    return rule.ede_text or ede_text_for(rule.list_name, rule.pattern, rule.policy)


def ede_text_for(list_name: str, pattern: str, policy: Citation) -> bytes:
    cited = policy.id or list_name
    return f"blocked by {cited}: {list_name} ({pattern})".encode()[:400]
