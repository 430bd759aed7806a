"""Loading the whole policy from the configured list files, and swapping it safely.

A new policy is compiled and validated completely before one reference is swapped; on
any error the last good policy stays in force. At start-up an error is fatal: netblock
never serves unfiltered.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from netblock.config import Config
from netblock.policy.lists import ListFile, load_list
from netblock.policy.match import Policy, compile_policy, guard_violations
from netblock.yamlsrc import SourceError

log = logging.getLogger("netblock.policy")


def list_paths(config: Config) -> list[Path]:
    """The list files named by the config's globs, in a stable order."""
    paths: list[Path] = []
    for pattern in config.policy.lists:
        resolved = str(config.resolve(pattern))
        matches = sorted(glob.glob(resolved)) if glob.has_magic(resolved) else [resolved]
        paths.extend(Path(m) for m in matches)
    return paths


def load_lists(paths: list[Path]) -> tuple[list[ListFile], list[SourceError]]:
    lists: list[ListFile] = []
    errors: list[SourceError] = []
    for path in paths:
        lst, errs = load_list(path)
        errors.extend(errs)
        if lst is not None:
            lists.append(lst)
    names: dict[str, str] = {}
    for lst in lists:
        if lst.name in names:
            errors.append(SourceError(lst.path, 1, f"list name '{lst.name}' is also used by {names[lst.name]}"))
        names[lst.name] = lst.path
    errors.extend(guard_violations(lists))
    return lists, errors


def build_policy(config: Config) -> tuple[Policy | None, list[SourceError]]:
    paths = list_paths(config)
    if not paths:
        return None, [SourceError(config.path, 0, "policy.lists matches no list file")]
    lists, errors = load_lists(paths)
    if errors:
        return None, errors
    return compile_policy(lists), []


class PolicyHolder:
    """Owns the current policy and reloads it on request (SIGHUP)."""

    def __init__(self, config: Config, on_swap: Callable[[Policy], None], stats: object | None = None) -> None:
        self.config = config
        self.on_swap = on_swap
        self.stats = stats
        self.current: Policy | None = None
        self.last_error = ""
        self.last_success = 0.0
        self._lock = threading.Lock()

    def load_initial(self) -> Policy:
        policy, errors = build_policy(self.config)
        if policy is None:
            raise SourceError(errors[0].path, errors[0].line, errors[0].message) if errors else RuntimeError("no policy")
        self._install(policy)
        return policy

    def reload(self) -> bool:
        """Build, validate and swap; on any problem keep the last good policy."""
        with self._lock:
            policy, errors = build_policy(self.config)
            problem = "; ".join(str(e) for e in errors[:5]) if errors else ""
            if policy is not None and self.current is not None:
                problem = shrink_problem(self.current, policy, self.config.policy.max_shrink)
            if problem or policy is None:
                self.last_error = problem or "no policy"
                log.error("policy reload refused, keeping digest %s: %s",
                          self.current.digest if self.current else "-", self.last_error)
                self._count("reload_failures")
                return False
            old = self.current
            self._install(policy)
            log.info("policy reloaded: digest %s -> %s", old.digest if old else "-", policy.digest)
            return True

    def _install(self, policy: Policy) -> None:
        self.current = policy
        self.last_error = ""
        self.last_success = time.time()
        self._count("reload_successes")
        self.on_swap(policy)

    def _count(self, attribute: str) -> None:
        if self.stats is not None and hasattr(self.stats, attribute):
            setattr(self.stats, attribute, getattr(self.stats, attribute) + 1)


def shrink_problem(old: Policy, new: Policy, max_shrink: float) -> str:
    """Why a new policy must not replace the old one: a list emptied or sharply shrunk."""
    before = old.entry_counts()
    after = new.entry_counts()
    for name, count in before.items():
        if count == 0:
            continue
        if name not in after:
            return f"list '{name}' ({count} entries) is gone"
        if after[name] == 0:
            return f"list '{name}' would be empty (was {count} entries)"
        if after[name] < count * (1 - max_shrink):
            return f"list '{name}' shrinks from {count} to {after[name]} entries (more than {max_shrink:.0%})"
    return ""
