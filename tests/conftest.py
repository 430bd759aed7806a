"""Shared fixtures: a real NSD upstream and the real netblock server on loopback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_reliability_tools import Unbound

from harness import BLOCKLISTS, Netblock, Nsd

FOUNDATION_LISTS = Path(__file__).resolve().parent / "data" / "foundation"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nsd]:
    with Nsd(tmp_path_factory.mktemp("nsd")) as nsd:
        yield nsd


@pytest.fixture(scope="module")
def netblock(tmp_path_factory: pytest.TempPathFactory, upstream: Nsd) -> Iterator[Netblock]:
    """The server with the shipped blocklists plus a test list (blocked.test, 203.0.113.0/24)."""
    lists = [BLOCKLISTS / "*.yaml", FOUNDATION_LISTS / "*.yaml"]
    with Netblock(tmp_path_factory.mktemp("netblock"), [upstream.address], lists=lists) as server:
        yield server


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory, upstream: Nsd) -> Iterator[Unbound]:
    """A real unbound forwarding to the NSD upstream: the reference the reliability tests compare with."""
    with Unbound(tmp_path_factory.mktemp("unbound"), upstream.address) as server:
        yield server
