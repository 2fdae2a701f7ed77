"""Benchmark of the whole prepare stage (``run.py ... participant``), per subject, as a user runs it.

Run: ``python benchmarks/bench_prepare.py [--resolution 2] [--nprocs 2] [--omp-nthreads 1]``.
Cases: one phantom subject (generated at the resolution, with its own template) and, when ../shared is
present, the real sub-xa30 on MNI152NLin6Asym. Each case runs the app in a fresh process with a fresh work
dir and reports the wall time and the peak resident memory of the largest process (the app or one of its
Nipype workers; ``getrusage(RUSAGE_CHILDREN)``), then reruns it with the same work dir (the cached
rerun). Each case runs with head-motion correction (``--hmc rigid``, the default) and without
(``--hmc none``); the difference, per volume of the subject, is the cost of the correction, also given per
100 volumes. Prints a table and writes ``benchmarks/results/prepare.json``. Goals: under 60 s per subject
at 2 mm on 2 cores without motion correction, under 90 s for sub-xa30 with it, and at most 2 s per volume
for the correction.
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

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIDS_PHYDIFF_SHARED", REPO.parent / "shared")).resolve()
RESULTS = REPO / "benchmarks" / "results" / "prepare.json"
GOAL_S = 60.0
GOAL_HMC_S = 90.0
GOAL_PER_VOLUME_S = 2.0


def run_once(bids: Path, out: Path, work: Path, args: list[str], home: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one app run in a child process."""
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(home))
    cmd = [sys.executable, str(REPO / "run.py"), str(bids), str(out), "participant", "-w", str(work),
           "--skip-bids-validation", *args]
    # a fresh parent per run, so that its RUSAGE_CHILDREN peak belongs to this run only
    wrapper = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
               "stderr=sys.stderr).returncode; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.exit(rc)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    peak = int(proc.stdout.split()[-1]) / 1024  # KiB -> MiB on Linux
    return wall, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--omp-nthreads", type=int, default=1)
    opts = parser.parse_args()

    import nibabel as nib

    from bids_phydiff.phantom import PhantomConfig, generate

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        tmp = Path(tmp)
        phantom = generate(tmp / "phantom", PhantomConfig(subjects=1, resolution=opts.resolution, seed=0))
        cases = [("phantom sub-01", phantom.bids_dir, ["--template", "Phantom"], phantom.templateflow_home)]
        if (SHARED / "data" / "real-bids" / "sub-xa30").is_dir():
            cases.append(("real sub-xa30 (T1w, 2 runs)", SHARED / "data" / "real-bids",
                          ["--participant-label", "xa30"], SHARED / "templateflow"))
        else:
            print(f"skipping sub-xa30: {SHARED} not found")
        common = ["--output-resolution", f"{opts.resolution:g}", "--nprocs", str(opts.nprocs),
                  "--omp-nthreads", str(opts.omp_nthreads)]
        for k, (name, bids, args, home) in enumerate(cases):
            label = "xa30" if "xa30" in name else "01"
            volumes = sum(nib.load(p).shape[3] for p in Path(bids).glob(f"sub-{label}/dwi/*_dwi.nii.gz"))
            walls = {}
            for hmc in ("none", "rigid"):
                out, work = tmp / f"out{k}_{hmc}", tmp / f"work{k}_{hmc}"
                wall, peak = run_once(bids, out, work, args + common + ["--hmc", hmc], home)
                cached, _ = run_once(bids, out, work, args + common + ["--hmc", hmc], home)
                walls[hmc] = wall
                goal = GOAL_S if hmc == "none" else GOAL_HMC_S
                rows.append({"case": name, "hmc": hmc, "volumes": volumes, "resolution_mm": opts.resolution,
                             "wall_s": round(wall, 1), "cached_rerun_s": round(cached, 1),
                             "peak_rss_mib": round(peak), "goal_s": goal, "meets_goal": wall < goal})
            per_volume = (walls["rigid"] - walls["none"]) / volumes
            rows[-1].update(hmc_s_per_volume=round(per_volume, 2), hmc_s_per_100_volumes=round(100 * per_volume, 1),
                            hmc_meets_goal=per_volume <= GOAL_PER_VOLUME_S)
    print(f"\nprepare stage, {opts.resolution:g} mm, --nprocs {opts.nprocs} --omp-nthreads {opts.omp_nthreads}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'case':32s} {'hmc':>5s} {'vols':>5s} {'wall s':>8s} {'rerun s':>8s} {'peak MiB':>9s} {'goal':>5s}  "
          f"hmc s/vol (s/100 vol)")
    for r in rows:
        extra = (f"{r['hmc_s_per_volume']:.2f} ({r['hmc_s_per_100_volumes']:.0f}) "
                 f"{'yes' if r['hmc_meets_goal'] else 'NO'}" if "hmc_s_per_volume" in r else "")
        print(f"{r['case']:32s} {r['hmc']:>5s} {r['volumes']:5d} {r['wall_s']:8.1f} {r['cached_rerun_s']:8.1f} "
              f"{r['peak_rss_mib']:9d} {'yes' if r['meets_goal'] else 'NO':>5s}  {extra}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                               "python": platform.python_version()},
                                   "settings": vars(opts), "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
