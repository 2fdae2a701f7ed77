"""Every speed benchmark in one run: each in its own subprocess, results collected into one JSON.

Run on demand (not part of the tests; minutes to tens of minutes on 2 CPU cores)::

    python benchmarks/bench_all.py [--only model,sampling,...] [--skip prepare] [--quick] [--demo-dir DIR]

Benchmarks (name: command -> result file in benchmarks/results/):

- ``model``: bench_model.py, attention backends and backbone training step -> model.json
- ``sampling``: bench_sampling.py, sampler throughput (DDPM 1000 / SDEdit / DDIM 50 / DDIM 20) -> sampling.json
- ``train``: bench_train.py, training throughput and memory -> train.json
- ``phantom``: bench_phantom.py, phantom generation -> phantom.json
- ``prepare``: bench_prepare.py, the participant level on the real data (needs ../shared) -> prepare.json
- ``demo``: ``python -m bids_phydiff.cli.demo DIR`` (phantom, prepare, train, synthesise), wall time only

Each benchmark's wall time, exit status and JSON are gathered, with a description of the machine, into
``benchmarks/results/all.json``; a summary table is printed. A failing benchmark is recorded (its exit
status and the tail of its output) and the others still run. ``--quick`` passes smaller settings where a
benchmark has them (fewer repeats and presets). The sampler *quality* (SSIM of DDPM 1000 vs DDIM 50 vs DDIM
20 with a trained bundle) is measured by ``python -m bids_phydiff.eval ... --compare-samplers`` (see
docs/evaluation.md), not here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SHARED = Path(os.environ.get("BIDS_PHYDIFF_SHARED", REPO.parent / "shared"))


def _jobs(quick: bool, demo_dir: Path) -> dict[str, dict]:
    py = sys.executable
    return {
        "model": {"cmd": [py, str(HERE / "bench_model.py"), "--output", str(RESULTS / "model.json")]
                  + (["--presets", "tiny", "--repeats", "2", "--sizes", "16,32"] if quick else []),
                  "result": RESULTS / "model.json"},
        "sampling": {"cmd": [py, str(HERE / "bench_sampling.py"), "--output", str(RESULTS / "sampling.json")]
                     + (["--repeats", "1"] if quick else []),
                     "result": RESULTS / "sampling.json"},
        "train": {"cmd": [py, str(HERE / "bench_train.py"), "--output", str(RESULTS / "train.json")]
                  + (["--steps", "3"] if quick else []),
                  "result": RESULTS / "train.json"},
        "phantom": {"cmd": [py, str(HERE / "bench_phantom.py")] + (["--repeats", "1"] if quick else []),
                    "result": RESULTS / "phantom.json"},
        "prepare": {"cmd": [py, str(HERE / "bench_prepare.py")] + (["--resolution", "4"] if quick else []),
                    "result": RESULTS / "prepare.json",
                    "env": {"TEMPLATEFLOW_HOME": str(SHARED / "templateflow")},
                    "needs": SHARED / "data" / "real-bids"},
        "demo": {"cmd": [py, "-m", "bids_phydiff.cli.demo", str(demo_dir)], "result": None},
    }


def machine() -> dict:
    """CPU, core count, Python, torch and (when present) the GPU, plus the commit benchmarked."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    info["cpu"] = cpu_name()
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                        check=False).stdout.strip() or None
    except OSError:
        info["commit"] = None
    info["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return info


def _headline(name: str, data: dict | None) -> str:
    """One line of what matters in a benchmark's JSON (empty when its format is unknown)."""
    if not data:
        return ""
    try:
        if name == "sampling":
            rows = {r["method"]: r for r in data["rows"]}
            return (f"ddim-50 {rows['ddim-50']['speedup_vs_ddpm_1000']:.1f}x, ddim-20 "
                    f"{rows['ddim-20']['speedup_vs_ddpm_1000']:.1f}x faster than ddpm-1000 "
                    f"({rows['ddpm-1000']['seconds_per_slice']:.2f} s/slice)")
        if name == "train":
            tp = ", ".join(f"{r['preset']} {r['samples_per_s']:.0f} samples/s" for r in data["throughput"])
            return f"{tp}; memory 8 vs 2 subjects x{data['memory_ratio_8_vs_2']:.2f}"
        if name == "model":
            return "; ".join(f"{s.get('preset')} step {s.get('step_ms', s.get('ms', float('nan'))):.0f} ms"
                             for s in data.get("steps", []) if isinstance(s, dict))[:120]
        if name == "phantom":
            return f"target met: {data.get('target_met')}"
        if name == "prepare":  # rows of bench_prepare.py: case, wall_s, cached_rerun_s, peak_rss_mib
            return "; ".join(f"{r['case']} {r['wall_s']:.0f} s (rerun {r['cached_rerun_s']:.0f} s)"
                             for r in data.get("results", []) if isinstance(r, dict))[:120]
    except (KeyError, TypeError, ValueError):
        return ""
    return ""


def run_job(name: str, job: dict) -> dict:
    """Run one benchmark in a subprocess; returns its record for all.json."""
    needs = job.get("needs")
    if needs is not None and not Path(needs).exists():
        return {"status": "skipped", "reason": f"{needs} not found"}
    env = dict(os.environ, **job.get("env", {}))
    print(f"\n=== {name}: {' '.join(job['cmd'])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(job["cmd"], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    print(proc.stdout[-3000:], end="", flush=True)
    record = {"command": " ".join(job["cmd"]), "returncode": proc.returncode, "seconds": round(seconds, 2),
              "status": "ok" if proc.returncode == 0 else "failed"}
    if proc.returncode != 0:
        record["output_tail"] = (proc.stdout + proc.stderr)[-2000:]
    result = job.get("result")
    if result is not None and Path(result).is_file() and proc.returncode == 0:
        try:
            record["result"] = json.loads(Path(result).read_text())
        except ValueError:
            record["result"] = None
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    parser.add_argument("--quick", action="store_true", help="smaller settings where a benchmark has them")
    parser.add_argument("--demo-dir", type=Path, default=None, help="folder for the demo (default: a new temp dir)")
    parser.add_argument("--output", type=Path, default=RESULTS / "all.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bids_phydiff_demo_") as tmp:
        demo_dir = args.demo_dir or Path(tmp) / "demo"
        jobs = _jobs(args.quick, demo_dir)
        only = [n for n in args.only.split(",") if n] or list(jobs)
        skip = {n for n in args.skip.split(",") if n}
        unknown = sorted((set(only) | skip) - set(jobs))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {sorted(jobs)}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        records = {name: run_job(name, jobs[name]) for name in only if name not in skip}

    summary = {"machine": machine(), "command": "python benchmarks/bench_all.py " + " ".join(argv or sys.argv[1:]),
               "quick": args.quick, "benchmarks": records}
    args.output.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print("\n| benchmark | status | seconds | headline |\n|---|---|---|---|")
    for name, rec in records.items():
        print(f"| {name} | {rec['status']} | {rec.get('seconds', '')} | {_headline(name, rec.get('result'))} |")
    print(f"\nwrote {args.output}")
    return 0 if all(r["status"] != "failed" for r in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
