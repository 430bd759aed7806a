"""Imports of third-party list formats (hosts, plain, adblock, RPZ) into list entries.

Placeholder until the blocklist issue lands: an `include` is refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netblock.policy.lists import Entry
from netblock.yamlsrc import SourceError, line_of


@dataclass
class Imported:
    domains: list[Entry] = field(default_factory=list)
    exact: list[Entry] = field(default_factory=list)
    networks: list[Entry] = field(default_factory=list)
    allow: list[Entry] = field(default_factory=list)
    warnings: list[SourceError] = field(default_factory=list)  # bad lines: reported, rest loaded


def load_includes(raw: list[Any], base_dir: Path, path: str) -> tuple[Imported, list[SourceError]]:
    return Imported(), [SourceError(path, line_of(raw, 0), "include: not supported yet")]
