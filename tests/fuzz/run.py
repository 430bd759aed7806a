"""Run every fuzz target for a set time: `make fuzz` (FUZZ_SECONDS per target, default 60).

    .venv/bin/python tests/fuzz/run.py --seconds 60 [--target query ...] [--engine atheris|mutate]
                                       [--merge]

With atheris installed each target runs under libFuzzer in its own process, coverage-guided,
starting from tests/fuzz/corpus/<target>/; new inputs go to a scratch folder (or into the
checked-in corpus with --merge) and a crash leaves its input in tests/fuzz/crashes/.
Without atheris a plain mutational loop over the same corpus runs instead. Exit status 1
if any target failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(HERE))

CRASHES = HERE / "crashes"


def corpus_dir(target: str) -> Path:
    return HERE / "corpus" / target


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- atheris (one process per target)


def child(target: str, seconds: int, work: str, merge: bool) -> None:
    import atheris

    with atheris.instrument_imports(include=["netblock"]):
        import targets

        import netblock.config
        import netblock.dns.admit
        import netblock.dns.cache
        import netblock.dns.server
        import netblock.dns.wire
        import netblock.names
        import netblock.policy.importers
        import netblock.policy.lists
        import netblock.policy.match
        import netblock.yamlsrc  # noqa: F401
    function = targets.TARGETS[target]
    targets.server()  # build outside the timed runs
    CRASHES.mkdir(exist_ok=True)
    output = str(corpus_dir(target)) if merge else work
    args = [sys.argv[0], f"-max_total_time={seconds}", "-rss_limit_mb=1024", "-timeout=5", "-max_len=4096",
            f"-artifact_prefix={CRASHES}/{target}-", "-print_final_stats=1", output]
    if not merge:
        args.append(str(corpus_dir(target)))
    atheris.Setup(args, function)
    atheris.Fuzz()


def run_atheris(target: str, seconds: int, merge: bool) -> bool:
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as work:
        command = [sys.executable, __file__, "--child", target, "--seconds", str(seconds), "--work", work]
        if merge:
            command.append("--merge")
        started = time.monotonic()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
        stats = dict(line[6:].split(":", 1) for line in proc.stderr.splitlines() if line.startswith("stat::"))
        ok = proc.returncode == 0
        runs = int(stats.get("number_of_executed_units", "0").strip() or 0)
        print(f"{target}: {'ok' if ok else 'FAILED'}, {runs} runs in {seconds}s ({runs / max(seconds, 1):.0f}/s), "
              f"peak RSS {stats.get('peak_rss_mb', '?').strip()} MB, {time.monotonic() - started:.0f}s wall")
        if not ok:
            print("\n".join(proc.stderr.splitlines()[-40:]))
        return ok


# ---------------------------------------------------------------- no atheris: mutate the corpus


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 8)):
        op = rng.randrange(6)
        if op == 0 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[rng.randrange(len(out))] = rng.choice((0, 0xFF, 0x3F, 0x40, 0xC0, rng.randrange(256)))
        elif op == 2 and out:
            del out[rng.randrange(len(out)):]
        elif op == 3:
            at = rng.randrange(len(out) + 1)
            out[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif op == 4 and pool:  # splice another input in
            other = rng.choice(pool)
            at = rng.randrange(len(out) + 1)
            out[at:] = other[rng.randrange(len(other) + 1):]
        elif op == 5 and len(out) > 2:
            a, b = sorted(rng.sample(range(len(out)), 2))
            out[a:a] = out[a:b]
    return bytes(out[:4096])


def run_mutate(target: str, seconds: int) -> bool:
    import targets

    function = targets.TARGETS[target]
    pool = [p.read_bytes() for p in sorted(corpus_dir(target).glob("*"))] or [b""]
    rng = random.Random(os.getpid() ^ int(time.time()))
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(pool), pool)
        runs += 1
        try:
            function(data)
        except Exception:
            CRASHES.mkdir(exist_ok=True)
            path = CRASHES / f"{target}-crash-{hashlib.sha1(data).hexdigest()}"
            path.write_bytes(data)
            print(f"{target}: FAILED after {runs} runs; input saved to {path}")
            traceback.print_exc()
            return False
    print(f"{target}: ok, {runs} runs in {seconds}s ({runs / max(seconds, 1):.0f}/s)")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--target", action="append", help="only these targets (repeatable)")
    parser.add_argument("--engine", choices=("atheris", "mutate"), help="default: atheris when installed")
    parser.add_argument("--merge", action="store_true", help="add new inputs to the checked-in corpus")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, args.work, args.merge)
        return 0
    import targets

    names = args.target or list(targets.TARGETS)
    engine = args.engine or ("atheris" if _have_atheris() else "mutate")
    print(f"fuzzing {', '.join(names)} for {args.seconds}s each with {engine}")
    failed = [name for name in names
              if not (run_atheris(name, args.seconds, args.merge) if engine == "atheris"
                      else run_mutate(name, args.seconds))]
    if failed:
        print(f"failed: {', '.join(failed)} (inputs in {CRASHES})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
