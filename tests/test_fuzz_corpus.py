"""Replay the checked-in fuzz corpus (tests/fuzz/corpus/<target>/) through every target:
zero uncaught exceptions, no DNS input slower than 100 ms. `make fuzz` grows the corpus;
this keeps what it found fixed."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from tests.fuzz import targets

CORPUS = Path(__file__).resolve().parent / "fuzz" / "corpus"
# Per input: a datagram must take well under a millisecond, so 100 ms means a hang; a whole
# list or config file (the shipped Kaspersky list is a few hundred entries) gets a second.
# Hang guards, not speed targets: CPU time (waiting for a core on a loaded machine does not
# count), and the worst inputs cost under 1 ms (DNS) and 70 ms (lists) of it.
BUDGET = {"query": 0.1, "answer": 0.1, "lists": 1.0, "importers": 1.0, "config": 1.0}
REGRESSION_SEED = base64.b64decode(
    "7n4BAQAAAAABAAAAAQEAAQEAAUNDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDukNDQ0NDQ0NDQ0NDAAAAQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0"
    "NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ1IBAYQBAQ==")


@pytest.mark.parametrize("target", list(targets.TARGETS))
def test_corpus_replays_clean(target: str) -> None:
    files = sorted((CORPUS / target).iterdir())
    assert len(files) >= 4, f"corpus for {target} is missing"
    function = targets.TARGETS[target]
    function(b"")  # build shared state (the policy) outside the timing
    slow = []
    for path in files:
        data = path.read_bytes()
        started = time.process_time()
        function(data)  # any exception fails the test with the input's name in the traceback
        elapsed = time.process_time() - started
        if elapsed > BUDGET[target]:
            slow.append((path.name, round(elapsed, 3)))
    assert not slow, slow


@pytest.mark.parametrize("target", ["query", "answer"])
def test_dnslib_regression_seed_is_in_the_corpus_and_handled(target: str) -> None:
    """reference/reliability.md §3: the input that crashed dnslib's printer."""
    names = {p.read_bytes() for p in (CORPUS / target).iterdir()}
    assert REGRESSION_SEED in names
    targets.TARGETS[target](REGRESSION_SEED)


def test_targets_catch_real_defects() -> None:
    """The targets are not vacuous: a builder that forgets QR is caught."""
    from netblock.dns import wire

    original = wire.error_echo
    try:
        wire.error_echo = lambda data, rcode: data  # type: ignore[assignment]
        with pytest.raises(AssertionError):
            targets.query(bytes.fromhex("1234010000000000000000"  "00"))  # header only: FORMERR echo
    finally:
        wire.error_echo = original
