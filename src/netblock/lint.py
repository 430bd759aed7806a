"""`netblock lint`: validate config and list files, every error as file:line: message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from netblock.config import Config, load_config
from netblock.policy import sources
from netblock.policy.audit import AuditRecord, diff_lists, git_commit
from netblock.policy.importers import warnings_for
from netblock.policy.lists import FILE_KEYS, ListFile, load_list
from netblock.policy.match import compile_policy, guard_violations, list_size
from netblock.policy.reload import include_locations, list_paths
from netblock.yamlsrc import SourceError, load_file

DEFAULT_CONFIG = "config/netblock.yaml"


def _is_config(path: Path) -> bool:
    """A config file has config sections at the top, a list file has list keys."""
    try:
        data = load_file(path)
    except SourceError:
        return False
    if not isinstance(data, dict) or not data:
        return False
    keys = set(data)
    return keys <= set(Config.__dataclass_fields__) and not keys <= FILE_KEYS


def _expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        files.extend(sorted(p.resolve() for p in path.glob("*.yaml")) if path.is_dir() else [path.resolve()])
    return files


def lint(paths: list[str], config_path: str | None) -> tuple[list[SourceError], list[ListFile]]:
    errors: list[SourceError] = []
    lists: list[ListFile] = []
    list_files: list[Path] = []
    targets = _expand(paths) if paths else []
    if not targets:
        config_path = config_path or DEFAULT_CONFIG
    configs = [Path(config_path).resolve()] if config_path else []
    configs += [p for p in targets if p.suffix in (".yaml", ".yml") and _is_config(p)]
    for path in configs:
        if path in targets:
            targets.remove(path)
    for path in [*configs, *targets]:
        if path in configs:
            try:
                config = load_config(path)
            except SourceError as exc:
                errors.append(exc)
                continue
            sources.configure(config.resolve(config.policy.cache_dir))  # URL includes: that copy
            list_files.extend(p for p in list_paths(config) if p not in list_files)
        elif path not in list_files:
            list_files.append(path)
    # Guards live in sibling files (allow.yaml): lint a list against them too.
    neighbours = {p for f in list_files for p in f.parent.glob("*.yaml") if f.exists()} - set(list_files)
    guard_lists = []
    for path in list_files:
        lst, errs = load_list(path)
        errors.extend(errs)
        if lst is not None:
            lists.append(lst)
    for path in sorted(neighbours):
        lst, _ = load_list(path)
        if lst is not None and lst.guards:
            guard_lists.append(lst)
    # Only this lint's lists (and the files they include): a sibling's own problems are its own.
    mine = {lst.path for lst in lists} | {p for lst in lists for p in include_locations(lst)}
    errors.extend(e for e in guard_violations(lists + guard_lists) if e.path in mine)
    return errors, lists


def diff(old_dir: str, lists: list[ListFile]) -> list[str]:
    """The audit record a reload from the lists in OLD_DIR to `lists` would log."""
    old_paths = _expand([old_dir])
    old_lists = []
    for path in old_paths:
        lst, errs = load_list(path)
        for error in errs:
            print(f"warning: old list: {error}", file=sys.stderr)
        if lst is not None:
            old_lists.append(lst)
    record = AuditRecord(
        digest_before=compile_policy(old_lists).digest if old_lists else "-",
        digest_after=compile_policy(lists).digest if lists else "-",
        changes=diff_lists(old_lists, lists),
        git=git_commit(lst.path for lst in lists),
        trigger=f"lint --diff {old_dir}",
    )
    return record.lines()


def run(args: argparse.Namespace) -> int:
    errors, lists = lint(args.paths, args.config)
    for lst in lists:
        for warning in warnings_for(lst.path):
            print(f"warning: {warning} (line skipped)", file=sys.stderr)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    if args.diff:
        if not Path(args.diff).is_dir():
            print(f"{args.diff}: not a folder of list files", file=sys.stderr)
            return 2
        for line in diff(args.diff, lists):
            print(line)
    entries = sum(list_size(lst) for lst in lists)
    print(f"ok: {len(lists)} list(s), {entries} entries")
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("lint", help="validate config and blocklist files")
    parser.add_argument("paths", nargs="*", help="list files, folders or config files (default: the config)")
    parser.add_argument("-c", "--config", help=f"config file whose lists to check (default {DEFAULT_CONFIG})")
    parser.add_argument("--diff", metavar="OLD_DIR",
                        help="also show the entries added and removed since the lists in OLD_DIR")
    parser.set_defaults(func=run)
