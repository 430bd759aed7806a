"""YAML loading that remembers where every value came from.

Operators edit the config and the blocklists by hand; an error that does not name the
file and line sends them hunting. Mappings and sequences loaded here are `dict` and
`list` subclasses that know the line of each key and item.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class SourceError(Exception):
    """An error in an operator's file, rendered as `file:line: message`."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = str(path)
        self.line = line
        self.message = message


class YMap(dict[str, Any]):
    path: str = ""
    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class YList(list[Any]):
    path: str = ""
    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


def _convert(node: yaml.Node, path: str, loader: yaml.SafeLoader) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result = YMap()
        result.path, result.line, result.key_lines = path, line, {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            if key in result:
                raise SourceError(path, key_node.start_mark.line + 1, f"duplicate key '{key}'")
            result.key_lines[key] = key_node.start_mark.line + 1
            result[key] = _convert(value_node, path, loader)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = YList()
        items.path, items.line, items.item_lines = path, line, []
        for item in node.value:
            items.item_lines.append(item.start_mark.line + 1)
            items.append(_convert(item, path, loader))
        return items
    return loader.construct_object(node, deep=True)


def load_text(text: str, path: str | Path) -> Any:
    """Parse YAML text; a syntax error becomes a SourceError with its line."""
    path = str(path)
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # the reader rejects control characters already here
        node = loader.get_single_node()
        if node is None:
            return None
        return _convert(node, path, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise SourceError(path, line, f"YAML syntax: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        code = ord(exc.character) if isinstance(exc.character, str) else int(exc.character)
        raise SourceError(path, line, f"YAML: character U+{code:04X} is not allowed") from None
    except yaml.YAMLError as exc:
        raise SourceError(path, 1, f"YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_file(path: str | Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError(path, 0, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(path, 0, f"cannot read: {exc}") from None
    return load_text(text, path)


def line_of(container: Any, key: Any) -> int:
    if isinstance(container, YMap) and isinstance(key, str):
        return container.line_of(key)
    if isinstance(container, YList) and isinstance(key, int):
        return container.line_of(key)
    return getattr(container, "line", 0)
