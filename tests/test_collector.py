"""The garbage collector as serving leaves it: full collections ten times rarer."""

from __future__ import annotations

import gc

import pytest

from netblock.dns import server


def test_settle_collector_makes_full_collections_rarer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc, "freeze", lambda: None)  # not in the test process: it would stay frozen
    saved = gc.get_threshold()
    try:
        server.settle_collector()
        young, middle, full = gc.get_threshold()
        assert (young, middle) == saved[:2] and full == server.FULL_COLLECTION_EVERY > saved[2]
    finally:
        gc.set_threshold(*saved)
