"""Loading the whole policy from the configured list files, and swapping it safely.

A new policy is compiled and validated completely, off the event loop, before one
reference is swapped; on any problem the last good policy stays in force and the refusal
is logged with its reason. At start-up an error is fatal: netblock never serves unfiltered.

Refused: any error `netblock lint` reports (YAML syntax, bad entries, a block entry that
covers a guard), a list file deleted or no longer matched, a list left empty, a list that
shrinks by more than `policy.max_shrink`, guards that disappear.

Reloads come from SIGHUP and from the watcher thread, which polls the mtimes of the
config, the list files, their local includes and the on-disk copies of URL sources. A
second thread refreshes URL sources (sources.py); a changed copy is picked up by the
watcher like an edited file.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import gc
import glob
import logging
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from netblock.config import Config, load_config
from netblock.policy import sources
from netblock.policy.audit import AuditRecord, diff_lists, git_commit
from netblock.policy.importers import BulkEntry, warnings_for
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


def _stat(path: str | Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, -1)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def include_locations(lst: ListFile) -> list[str]:
    """Local files and on-disk URL copies a list was built from (for the watcher and cache)."""
    locations = []
    for entry in (*lst.domains, *lst.allow, *lst.allow_exact, *lst.networks):
        location = entry.meta.get("location") if isinstance(entry.meta, dict) else None
        if not location:
            continue
        if "://" in str(location):
            locations.append(str(sources.default().copy_path(str(location))))
        else:
            locations.append(str(location))
    return sorted(set(locations))


class _ListCache:
    """Parsed list files keyed by the content of the file and the stat of its includes: a
    reload re-parses only what changed, so frequent reloads stay cheap for the event loop.
    (The list file's own bytes, not its mtime: two same-size saves within one timestamp
    tick must not look alike. Includes can be large; their stat is the key.)"""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[object, ...], ListFile]] = {}
        self._lock = threading.Lock()

    def load(self, path: Path) -> tuple[ListFile | None, list[SourceError]]:
        key = str(path)
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None:
            signature, lst = cached
            if signature == self._signature(key, lst):
                return lst, []
        before = _content(key)
        fresh, errors = load_list(path)
        if fresh is not None and not errors:
            signature = self._signature(key, fresh)
            if signature[0] == before:
                with self._lock:
                    self._entries[key] = (signature, fresh)
        return fresh, errors

    @staticmethod
    def _signature(key: str, lst: ListFile) -> tuple[object, ...]:
        return (_content(key), *(_stat(p) for p in include_locations(lst)))


def _content(path: str) -> int:
    try:
        return zlib.crc32(Path(path).read_bytes())
    except OSError:
        return -1


_cache = _ListCache()


def load_lists(paths: list[Path], cached: bool = False) -> tuple[list[ListFile], list[SourceError]]:
    lists: list[ListFile] = []
    errors: list[SourceError] = []
    for path in paths:
        lst, errs = _cache.load(path) if cached else load_list(path)
        errors.extend(errs)
        if lst is not None:
            lists.append(lst)
    names: dict[str, str] = {}
    for lst in lists:
        if lst.name in names:
            errors.append(SourceError(lst.path, 1, f"list name '{lst.name}' also used by {names[lst.name]}"))
        names[lst.name] = lst.path
    errors.extend(guard_violations(lists))
    return lists, errors


def build_policy(config: Config, cached: bool = False) -> tuple[Policy | None, list[SourceError]]:
    sources.configure(config.resolve(config.policy.cache_dir))
    paths = list_paths(config)
    if not paths:
        return None, [SourceError(config.path, 0, "policy.lists matches no list file")]
    lists, errors = load_lists(paths, cached)
    if errors:
        return None, errors
    return compile_policy(lists), []


RELOAD_SWITCH_INTERVAL = 0.0001  # seconds


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, when it is glibc with the two calls used here; None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


M_MMAP_THRESHOLD = -3  # mallopt(3)
MMAP_THRESHOLD = 128 * 1024  # octets: glibc's default, kept


def steady_allocator() -> None:
    """Keep glibc's mmap threshold where it starts. glibc raises it to the largest block
    freed (up to 32 MB), so after a big policy load blocks of many MB come from the heap,
    and growing one (an array, a list of a million names) copies it into fresh memory in
    one C call: 115 ms with the GIL held in a bench reload, answers waiting. A mapped
    block grows by mremap instead, without a copy."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _release_memory() -> None:
    """Hand freed heap back to the system after a build (glibc); a big import leaves
    hundreds of MB of freed temporaries otherwise."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class PolicyHolder:
    """Owns the current policy; reloads it on SIGHUP and when watched files change."""

    def __init__(self, config: Config, on_swap: Callable[[Policy], None],
                 stats: object | None = None) -> None:
        self.config = config
        self.on_swap = on_swap
        self.stats = stats
        self.current: Policy | None = None
        self.last_error = ""
        self.last_success = 0.0
        self.last_audit: AuditRecord | None = None
        self.reloads_refused = 0  # also counted in stats.reload_failures
        self._lock = threading.Lock()
        self._includes: list[str] = []
        self._includes_for: Policy | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fingerprint: tuple[tuple[str, tuple[int, int, int]], ...] = ()

    def load_initial(self) -> Policy:
        steady_allocator()  # before the first big build frees its blocks
        policy, errors = build_policy(self.config, cached=True)
        if policy is None:
            if errors:
                raise SourceError(errors[0].path, errors[0].line, errors[0].message)
            raise RuntimeError("no policy")
        self._log_warnings(policy)
        self._install(policy)
        self._fingerprint = self._watched()
        _release_memory()
        return policy

    def reload(self, trigger: str = "SIGHUP") -> bool:
        """Build, validate and swap; on any problem keep the last good policy."""
        # The build runs beside the event loop, whose every callback takes the GIL anew:
        # with the default 5 ms switch interval it queues behind the build (convoy effect),
        # so a big reload under load would delay answers by seconds.
        # A build allocates millions of objects: the cyclic collector, run by whichever
        # thread allocates, would walk the whole heap several times holding the GIL (tens
        # of ms each, measured as answers over 50 ms). A build makes no cycles to collect;
        # the query path's cycles wait for the end of the reload (the switch is process-wide).
        # Both settings change under the lock: two reloads at once (SIGHUP beside the
        # watcher) must not restore each other's values.
        with self._lock:
            interval = sys.getswitchinterval()
            sys.setswitchinterval(RELOAD_SWITCH_INTERVAL)
            collecting = gc.isenabled()
            gc.disable()
            try:
                return self._reload(trigger)
            finally:
                if collecting:
                    gc.enable()
                sys.setswitchinterval(interval)

    def _reload(self, trigger: str) -> bool:
        config = self._reread_config()
        if config is None:
            return self._refuse(self.last_error)
        policy, errors = build_policy(config, cached=True)
        if errors or policy is None:
            shown = "; ".join(str(e) for e in errors[:5])
            if len(errors) > 5:
                shown += f" (+{len(errors) - 5} more)"
            return self._refuse(shown or "no policy")
        old = self.current
        if old is not None:
            problem = refusal(old, policy, config.policy.max_shrink)
            if problem:
                return self._refuse(problem)
            if policy.digest == old.digest and [lst.path for lst in policy.lists] == [
                    lst.path for lst in old.lists]:
                self.last_error = ""
                self.last_success = time.time()
                self._count("reload_successes")
                log.debug("policy reload (%s): no change, digest %s", trigger, policy.digest)
                return True
        self.config = config
        self._log_warnings(policy)
        self._install(policy)
        self._audit(old, policy, trigger)
        _release_memory()
        return True

    def _reread_config(self) -> Config | None:
        """The config file again, for the policy section (other sections need a restart)."""
        if not self.config.path:
            return self.config
        if not os.access(self.config.path, os.R_OK):
            # After dropping privileges the config may be unreadable (or it was moved):
            # the lists still reload, with the policy settings the server started with.
            log.warning("config %s is not readable now; reloading the lists with the running settings",
                        self.config.path)
            return self.config
        try:
            fresh = load_config(self.config.path)
        except SourceError as exc:
            self.last_error = f"config: {exc}"
            return None
        if dataclasses.replace(fresh, policy=self.config.policy) != self.config:
            log.warning("config %s changed outside `policy:`; those changes take effect at restart",
                        self.config.path)
        return dataclasses.replace(self.config, policy=fresh.policy)

    def _refuse(self, problem: str) -> bool:
        self.last_error = problem
        self.reloads_refused += 1
        log.error("policy reload refused, keeping digest %s: %s",
                  self.current.digest if self.current else "-", problem)
        self._count("reload_failures")
        return False

    def _install(self, policy: Policy) -> None:
        self.current = policy
        self.last_error = ""
        self.last_success = time.time()
        self._count("reload_successes")
        self.on_swap(policy)

    def _audit(self, old: Policy | None, new: Policy, trigger: str) -> None:
        record = AuditRecord(
            digest_before=old.digest if old else "-",
            digest_after=new.digest,
            changes=diff_lists(old.lists if old else (), new.lists),
            git=git_commit(lst.path for lst in new.lists),
            trigger=trigger,
        )
        self.last_audit = record
        lines = record.lines()
        log.info("policy reloaded: %s", lines[0])
        for line in lines[1:]:
            log.info("policy audit: %s", line)

    @staticmethod
    def _log_warnings(policy: Policy) -> None:
        for lst in policy.lists:
            warnings = warnings_for(lst.path)
            for warning in warnings[:10]:
                log.warning("list %s: skipped %s", lst.name, warning)
            if len(warnings) > 10:
                log.warning("list %s: %d more skipped lines", lst.name, len(warnings) - 10)

    def _count(self, attribute: str) -> None:
        if self.stats is not None and hasattr(self.stats, attribute):
            setattr(self.stats, attribute, getattr(self.stats, attribute) + 1)

    # ------------------------------------------------------------------ watching

    def _watched(self) -> tuple[tuple[str, tuple[int, int, int]], ...]:
        """What a change of triggers a reload: the config, the list files (globs are
        expanded again, so new and deleted files count), includes and URL copies."""
        paths = [self.config.path] if self.config.path else []
        paths += [str(p) for p in list_paths(self.config)]
        paths += self._includes_of(self.current)
        return tuple((p, _stat(p)) for p in sorted(set(paths)))

    def _includes_of(self, policy: Policy | None) -> list[str]:
        """Include locations of a policy, found once per policy: walking every entry of a
        100k-entry list each second would hold the GIL for tens of ms beside the loop."""
        if policy is None:
            return []
        if self._includes_for is not policy:
            self._includes = [location for lst in policy.lists for location in include_locations(lst)]
            self._includes_for = policy
        return self._includes

    def start_watching(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        # Seen as the user we run as now (after a privilege drop some stats may fail).
        self._fingerprint = self._watched()
        watcher = threading.Thread(target=self._watch, name="netblock-policy-watch", daemon=True)
        fetcher = threading.Thread(target=self._fetch, name="netblock-list-sources", daemon=True)
        self._threads = [watcher, fetcher]
        watcher.start()
        fetcher.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def _watch(self) -> None:
        interval = max(0.05, self.config.policy.watch_interval)
        while not self._stop.wait(interval):
            try:
                seen = self._watched()
                if seen == self._fingerprint:
                    continue
                # Let a writer finish: reload once the files stop changing for a moment.
                self._stop.wait(min(0.1, interval))
                settled = self._watched()
                if settled != seen:
                    continue
                changed = sorted({p for p, s in set(settled) ^ set(self._fingerprint)})
                self._fingerprint = settled
                self.reload(trigger="changed: " + ", ".join(Path(p).name for p in changed[:5]))
                self._fingerprint = self._watched()
            except Exception:  # a watcher that dies silently would stop all reloads
                log.exception("policy watcher error; watching on")

    def _fetch(self) -> None:
        while not self._stop.wait(1.0):
            try:
                sources.default().refresh_due()
            except Exception:
                log.exception("list source refresh error; retrying")


def refusal(old: Policy, new: Policy, max_shrink: float) -> str:
    """Why a new policy must not replace the old one ('' if it may)."""
    # By list name, not path: a renamed file with the same list inside is no loss.
    new_names = {lst.name for lst in new.lists}
    for lst in old.lists:
        if lst.name not in new_names:
            return f"list file {lst.path} ({lst.name}) was deleted or no longer matches policy.lists"
    problem = shrink_problem(old, new, max_shrink)
    if problem:
        return problem
    old_guards, new_guards = len(old.guards), len(new.guards)
    if old_guards and new_guards < old_guards * (1 - max_shrink):
        return f"guards shrink from {old_guards} to {new_guards} (more than {max_shrink:.0%})"
    return ""


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
            return (f"list '{name}' shrinks from {count} to {after[name]} entries "
                    f"(more than {max_shrink:.0%})")
    return ""


__all__ = ["BulkEntry", "PolicyHolder", "build_policy", "list_paths", "load_lists", "refusal",
           "shrink_problem"]
