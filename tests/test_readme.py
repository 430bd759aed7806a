"""The README documents every config key, so operators never have to read the code."""

from __future__ import annotations

import dataclasses
import typing

from netblock.config import Config

from harness import REPO


def _keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name == "path":
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            keys += _keys(hints[field.name], f"{prefix}{field.name}.")
        else:
            keys.append(prefix + field.name)
    return keys


def test_every_config_key_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [key for key in _keys(Config) if f"`{key}`" not in readme]
    assert not missing, f"README.md lacks config keys: {missing}"
    assert "make run" in readme and "make test" in readme
