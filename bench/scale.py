"""List scale: load time, RSS added and lookup cost of netblock's policy at 1k/100k/1M names.

`measure(size, path)` runs in a fresh interpreter (`python bench/scale.py SIZE PATH`), so
one size's garbage never counts against the next; it prints one JSON line.
"""

from __future__ import annotations

import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import rss_mib
from world import scale_names, write_netblock_list


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _wire(name: str) -> bytes:
    return b"".join(bytes((len(label),)) + label.encode() for label in name.split(".")) + b"\x00"


def _per_lookup_ns(match: Callable[[bytes], object], names: list[bytes]) -> float:
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        for wire in names:
            match(wire)
        best = min(best, time.perf_counter() - start)
    return best / len(names) * 1e9


def measure(size: int, path: Path) -> dict[str, float]:
    import os

    from netblock.policy.lists import load_list
    from netblock.policy.match import compile_policy

    empty = compile_policy([])
    del empty
    _trim()
    rss0 = rss_mib(os.getpid())
    start = time.perf_counter()
    listfile, errors = load_list(path)
    parsed = time.perf_counter()
    if listfile is None:
        raise SystemExit(f"{path}: {errors[:3]}")
    policy = compile_policy([listfile])
    done = time.perf_counter()
    del listfile
    _trim()
    rss1 = rss_mib(os.getpid())
    # Lookups: a 5-label name not blocked (every suffix probed) and a blocked name 2 labels
    # under an entry; the same shapes at every size so the costs compare. Every suffix of
    # the misses is distinct: with one shared suffix ("b.c.nbmiss") the probe of the list's
    # level read one and the same slot 20,000 times, and its cost was that slot's luck.
    misses = [_wire(f"h{i}.a.b{i}.c{i}.nbmiss") for i in range(20_000)]
    names = scale_names(size)
    hits = [_wire(f"www.x.{names[(i * 7919) % size]}") for i in range(20_000)]
    return {
        "size": size,
        "load_s": done - start,
        "parse_s": parsed - start,
        "compile_s": done - parsed,
        "rss_added_mib": rss1 - rss0,
        "miss_ns": _per_lookup_ns(policy.match_wire, misses),
        "hit_ns": _per_lookup_ns(policy.match_wire, hits),
    }


def write_list(root: Path, size: int) -> Path:
    path = root / f"scale-{size}.yaml"
    if not path.exists():
        write_netblock_list(path, f"scale-{size}", scale_names(size))
    return path


def run(root: Path, sizes: tuple[int, ...], python: str, rounds: int = 1,
        timeout: float = 600) -> list[dict[str, object]]:
    """Each size measured `rounds` times, the sizes in turn within a round (a noisy minute
    on the box then touches every size), each in a fresh interpreter with its own hash
    seed and so its own layout of the tables; the median of each figure."""
    measured: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    errors: dict[int, str] = {}
    for _ in range(rounds):
        for size in sizes:
            if size in errors:
                continue
            path = write_list(root, size)
            out = subprocess.run(
                [python, __file__, str(size), str(path)], capture_output=True, text=True, timeout=timeout
            )
            if out.returncode != 0:
                errors[size] = out.stderr.strip()[-500:]
                continue
            measured[size].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results: list[dict[str, object]] = []
    for size in sizes:
        if size in errors:
            results.append({"size": size, "error": errors[size]})
            continue
        runs = measured[size]
        medians: dict[str, object] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        results.append({**medians, "rounds": len(runs)})
    return results


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), Path(sys.argv[2]))))
