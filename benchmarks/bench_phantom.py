"""Benchmark of the phantom generator: wall time of ``generate`` and of the command line.

Run: ``python benchmarks/bench_phantom.py [--repeats 3]``. Prints a table and writes
``benchmarks/results/phantom.json``. The target: 3 subjects at 4 mm (3 shells x 12 directions + 2 b0)
in under 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bids_phydiff.phantom import PhantomConfig, generate

RESULTS = Path(__file__).resolve().parent / "results" / "phantom.json"
TARGET_S = 30.0

CASES = {
    "3 subjects, 4 mm, 3x12 dirs + 2 b0": PhantomConfig(subjects=3, resolution=4.0, seed=0),
    "3 subjects, 4 mm, 3x64 dirs + 6 b0": PhantomConfig(subjects=3, resolution=4.0, seed=0, directions=64, n_b0=6),
    "1 subject, 2 mm, 3x12 dirs + 2 b0": PhantomConfig(subjects=1, resolution=2.0, seed=0),
    "2 subjects x 2 sessions x 2 runs, 4 mm": PhantomConfig(subjects=2, resolution=4.0, seed=0, sessions=2, runs=2),
}


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def time_generate(config: PhantomConfig, repeats: int) -> dict:
    times, size = [], 0
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            ds = generate(Path(tmp) / "bids", config)
            times.append(time.perf_counter() - start)
            size = _size(ds.bids_dir)
    return {"min_s": min(times), "median_s": statistics.median(times), "runs": times, "bytes": size}


def time_cli(repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "bids_phydiff.phantom", str(Path(tmp) / "bids"),
                   "--subjects", "3", "--resolution", "4", "--seed", "0"]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    return {"min_s": min(times), "median_s": statistics.median(times), "runs": times, "command": " ".join(cmd[1:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {name: time_generate(cfg, args.repeats) for name, cfg in CASES.items()}
    cli = time_cli(args.repeats)
    print(f"{'case':42s} {'min s':>8s} {'median s':>9s} {'MB':>7s}")
    for name, r in rows.items():
        print(f"{name:42s} {r['min_s']:8.2f} {r['median_s']:9.2f} {r['bytes'] / 1e6:7.1f}")
    print(f"{'CLI (python -m, 3 subjects, 4 mm)':42s} {cli['min_s']:8.2f} {cli['median_s']:9.2f}")
    main_case = rows["3 subjects, 4 mm, 3x12 dirs + 2 b0"]
    ok = cli["median_s"] < TARGET_S and main_case["median_s"] < TARGET_S
    print(f"target: 3 subjects at 4 mm under {TARGET_S:.0f} s -> {'met' if ok else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "phantom generation",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                    "platform": platform.platform()},
        "repeats": args.repeats,
        "cases": rows,
        "cli": cli,
        "target_s": TARGET_S,
        "target_met": ok,
    }, indent=2) + "\n")
    print(f"written {RESULTS}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
