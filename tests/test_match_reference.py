"""The policy walk against a plain reference: dict entries and imported names (several
NameSets, mixed kinds and depths), every level of random query names. The walk skips levels
by label count and hashes once a level; the reference looks at every name in source order."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netblock.names import to_wire
from netblock.policy.importers import BELOW, EXACT, NODATA, SUBTREE, NameSet
from netblock.policy.match import Policy
from netblock.policy.rule import PRECEDENCE, Citation, Response, Rule

LABELS = st.sampled_from(["a", "b", "qq", "x-y", "_z"])
NAMES = st.lists(LABELS, min_size=1, max_size=5).map(".".join)
ACTIONS = st.sampled_from(["allow", "block", "monitor"])
TAGS = st.sampled_from([EXACT, SUBTREE, BELOW, EXACT | NODATA, BELOW | NODATA])


def _rule(list_name: str, pattern: str, action: str, kind: str = "subtree") -> Rule:
    return Rule(list_name, "v", pattern, kind, action, Response(), Citation(), 60, f"{list_name}:1")


def _applies(tag: int, whole: bool) -> bool:
    kind = tag & 3
    return kind != BELOW if whole else kind != EXACT


def _reference(policy: Policy, sources: list[tuple[list[str], list[int]]], query: str) -> tuple[str, ...] | None:
    labels = query.split(".")
    for level in range(len(labels)):
        part = ".".join(labels[level:])
        rule = (policy.full if level == 0 else policy.suffix).get(to_wire(part))
        if rule is None or rule.action != "allow":
            for (names, tags), (_, rules) in zip(sources, policy.bulk, strict=True):
                tag = next((t for n, t in zip(names, tags, strict=True) if n == part and _applies(t, level == 0)), -1)
                template = rules[tag] if tag >= 0 else None
                if template is not None and (rule is None or PRECEDENCE[template.action] < PRECEDENCE[rule.action]):
                    rule = _rule(template.list_name, part, template.action, template.kind)
        if rule is not None:
            return (rule.list_name, rule.pattern, rule.kind, rule.action)
    return None


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    entries=st.lists(st.tuples(NAMES, ACTIONS, st.booleans()), max_size=5),
    sources=st.lists(st.tuples(st.lists(st.tuples(NAMES, TAGS), min_size=1, max_size=12), ACTIONS, st.booleans()),
                     min_size=1, max_size=3),
    queries=st.lists(st.lists(LABELS, min_size=1, max_size=8).map(".".join), min_size=1, max_size=20),
)
def test_walk_matches_the_reference(entries: list[tuple[str, str, bool]],
                                    sources: list[tuple[list[tuple[str, int]], str, bool]],
                                    queries: list[str]) -> None:
    full: dict[bytes, Rule] = {}
    suffix: dict[bytes, Rule] = {}
    for name, action, subtree in entries:
        rule = _rule("yaml", name, action, "subtree" if subtree else "exact")
        full[to_wire(name)] = rule
        if subtree:
            suffix[to_wire(name)] = rule
    bulk = []
    plain: list[tuple[list[str], list[int]]] = []
    for number, (pairs, action, mixed) in enumerate(sources):
        names = [name for name, _ in pairs]
        tags = [tag for _, tag in pairs] if mixed else [pairs[0][1]] * len(pairs)
        nameset = NameSet(names, tags if mixed else None, tags[0])
        rules = tuple(_rule(f"imported{number}", "", action, ("exact", "subtree", "below", "?")[t & 3])
                      for t in range(8))
        bulk.append((nameset, rules))
        plain.append((names, tags))
    policy = Policy(full=full, suffix=suffix, bulk=tuple(bulk))
    for query in queries:
        rule = policy.match_wire(to_wire(query))
        got = None if rule is None else (rule.list_name, rule.pattern, rule.kind, rule.action)
        assert got == _reference(policy, plain, query), query
