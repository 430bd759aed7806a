"""What a policy change changes: per list, the entries added and removed.

Each successful reload logs one record (digests before and after, the git commit of the
blocklists folder, and per list the added and removed entries: the count, and the names
up to a bound); `netblock lint --diff OLD_DIR` prints the same record before a deploy.
An entry is named `section:name` (domains:weixin.qq.com, exact:mmbiz.qpic.cn,
networks:203.0.113.0/24, allow:work.weixin.qq.com, guard:qq.com); imported names use the
kind they were imported as (exact, domains, below).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netblock.policy.importers import KIND_NAMES, NODATA, BulkEntry, NameSet
from netblock.policy.lists import ListFile

NAMES_SHOWN = 20  # per list and direction, in the log; the counts are always complete
_BULK_SECTION = {"exact": "exact", "subtree": "domains", "below": "below"}


@dataclass
class ListChange:
    name: str
    added: int = 0
    removed: int = 0
    added_names: list[str] = field(default_factory=list)  # at most `bound`
    removed_names: list[str] = field(default_factory=list)
    status: str = "changed"  # changed | new | gone

    def describe(self) -> str:
        parts = [f"list {self.name}{'' if self.status == 'changed' else f' ({self.status})'}: "
                 f"{self.added} added, {self.removed} removed"]
        if self.added_names:
            hidden = self.added - len(self.added_names)
            more = f", ... {hidden} more" if hidden > 0 else ""
            parts.append(f"added [{', '.join(self.added_names)}{more}]")
        if self.removed_names:
            hidden = self.removed - len(self.removed_names)
            more = f", ... {hidden} more" if hidden > 0 else ""
            parts.append(f"removed [{', '.join(self.removed_names)}{more}]")
        return "; ".join(parts)


@dataclass
class AuditRecord:
    digest_before: str
    digest_after: str
    changes: list[ListChange]
    git: str = ""  # commit of the blocklists folder ('-dirty' if it has uncommitted edits)
    trigger: str = ""
    time: float = field(default_factory=time.time)

    def lines(self) -> list[str]:
        head = f"policy digest {self.digest_before} -> {self.digest_after}"
        if self.trigger:
            head += f" ({self.trigger})"
        if self.git:
            head += f"; blocklists at git {self.git}"
        if not self.changes:
            head += "; no entry changed"
        return [head, *(change.describe() for change in self.changes)]


def _plain_entries(lst: ListFile) -> set[str]:
    out: set[str] = set()
    for section, entries in (("domains", lst.domains), ("exact", lst.exact), ("networks", lst.networks),
                             ("allow", lst.allow), ("allow", lst.allow_exact), ("guard", lst.guards)):
        for entry in entries:
            if not isinstance(entry, BulkEntry):
                out.add(f"{section}:{entry.name}")
    return out


def _bulk(lst: ListFile) -> dict[str, NameSet]:
    return {e.source: e.names for e in lst.domains if isinstance(e, BulkEntry) and e.names is not None}


def _label(wire: bytes, tag: int) -> str:
    return f"{_BULK_SECTION[KIND_NAMES[tag & 3]]}{'+nodata' if tag & NODATA else ''}:{NameSet.text(wire)}"


def _only_in(first: NameSet, second: NameSet | None, bound: int) -> tuple[int, list[str]]:
    """Names of `first` that `second` lacks: the count and the first `bound` of them."""
    if second is not None and first.digest == second.digest:
        return 0, []
    count, shown = 0, list[str]()
    for wire, tag in first.items():
        if second is None or not second.has(wire, tag):
            count += 1
            if len(shown) < bound:
                shown.append(_label(wire, tag))
    return count, shown


def diff_list(old: ListFile | None, new: ListFile | None, bound: int = NAMES_SHOWN) -> ListChange | None:
    name = (new or old).name  # type: ignore[union-attr]
    old_plain = _plain_entries(old) if old else set()
    new_plain = _plain_entries(new) if new else set()
    added = sorted(new_plain - old_plain)
    removed = sorted(old_plain - new_plain)
    change = ListChange(name, len(added), len(removed), added[:bound], removed[:bound],
                        "new" if old is None else "gone" if new is None else "changed")
    old_bulk = _bulk(old) if old else {}
    new_bulk = _bulk(new) if new else {}
    for source in sorted(set(old_bulk) | set(new_bulk)):
        before, after = old_bulk.get(source), new_bulk.get(source)
        if after is not None:
            count, shown = _only_in(after, before, bound - len(change.added_names))
            change.added += count
            change.added_names += shown
        if before is not None:
            count, shown = _only_in(before, after, bound - len(change.removed_names))
            change.removed += count
            change.removed_names += shown
    return change if change.added or change.removed or change.status != "changed" else None


def diff_lists(old: Sequence[ListFile], new: Sequence[ListFile],
               bound: int = NAMES_SHOWN) -> list[ListChange]:
    before = {lst.name: lst for lst in old}
    after = {lst.name: lst for lst in new}
    changes = []
    for name in [*after, *(n for n in before if n not in after)]:
        change = diff_list(before.get(name), after.get(name), bound)
        if change is not None:
            changes.append(change)
    return changes


def git_commit(paths: Iterable[str]) -> str:
    """The commit of the folder holding the lists, if it is a git checkout ('' if not)."""
    folders = sorted({str(Path(p).resolve().parent) for p in paths})
    if not folders:
        return ""
    folder = folders[0]
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no", "--",
                                "."], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
