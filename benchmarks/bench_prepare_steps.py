"""Benchmark of the prepare-stage steps of prep/ on the shared real data, per step and per subject.

Run: ``python benchmarks/bench_prepare_steps.py [--resolution 2] [--threads 2] [--subjects xa30,toshiba]``
(with ``../shared`` present, or BIDS_PHYDIFF_SHARED set). Every DWI run of each subject goes through:
b0 reference, brain mask, registration (T1w -> template once per subject, then b0 -> T1w; or b0 -> template
without a T1w), composite transforms (.h5), resampling into the template grid and b-vector rotation.
Prints a table and writes ``benchmarks/results/prepare_steps.json``. The target: under 60 s per subject
at 2 mm on 2 cores. ``import ants`` (2-4 s, once per process) is counted in the first ANTs step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIDS_PHYDIFF_SHARED", REPO.parent / "shared")).resolve()
RESULTS = REPO / "benchmarks" / "results" / "prepare_steps.json"
TARGET_S = 60.0


class Timer:
    def __init__(self):
        self.steps = defaultdict(float)

    def __call__(self, name, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.steps[name] += time.perf_counter() - start
        return out


def prepare_subject(subject_dir: Path, grid, work: Path, threads: int, seed: int) -> dict:
    from bids_phydiff.prep.b0 import write_b0_reference
    from bids_phydiff.prep.gradients import write_reoriented_fsl
    from bids_phydiff.prep.mask import write_brain_mask
    from bids_phydiff.prep.registration import (
        register_b0_to_t1w,
        register_b0_to_template,
        register_t1w_to_template,
        t1w_brain,
    )
    from bids_phydiff.prep.resample import resample_dwi, write_transforms

    timer = Timer()
    start = time.perf_counter()
    t1ws = sorted((subject_dir / "anat").glob("*_T1w.nii.gz")) if (subject_dir / "anat").is_dir() else []
    to_template = brain = None
    if t1ws:
        to_template = timer("T1w -> template (SyN)", register_t1w_to_template, t1ws[0], grid, work / "anat", threads, seed)
        brain, _ = timer("T1w brain mask", t1w_brain, t1ws[0], to_template, grid, work / "anat", threads)
    runs = sorted((subject_dir / "dwi").glob("*_dwi.nii.gz"))
    for dwi in runs:
        stem = str(dwi)[: -len(".nii.gz")]
        wd = work / dwi.name[: -len("_dwi.nii.gz")]
        b0 = timer("b0 reference", write_b0_reference, dwi, f"{stem}.bval", wd / "b0.nii.gz")
        mask = timer("brain mask", write_brain_mask, b0, wd / "mask.nii.gz")
        if to_template is not None:
            reg = timer("b0 -> T1w (rigid)", register_b0_to_t1w, b0, mask, brain, wd, threads, seed)
            chain = reg.chain.then(to_template.chain)
        else:
            chain = timer("b0 -> template (affine+SyN)", register_b0_to_template, b0, mask, grid, wd, threads, seed).chain
        forward, _ = timer("composite transforms (.h5)", write_transforms, chain, wd / "fwd_xfm.h5", wd / "inv_xfm.h5",
                           wd, threads)
        out = timer("resample DWI", resample_dwi, dwi, forward, grid, wd / "dwi.nii.gz", wd, threads)
        timer("rotate b-vectors", write_reoriented_fsl, f"{stem}.bval", f"{stem}.bvec", dwi, out, wd / "dwi.bval",
              wd / "dwi.bvec", [forward])
    return {"runs": len(runs), "t1w": bool(t1ws), "total_s": time.perf_counter() - start,
            "steps_s": {k: round(v, 2) for k, v in timer.steps.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=2.0, help="template grid in mm (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="ITK threads (default 2)")
    parser.add_argument("--template", default="MNI152NLin6Asym")
    parser.add_argument("--subjects", default="xa30,toshiba")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    bids = SHARED / "data" / "real-bids"
    home = SHARED / "templateflow"
    if not bids.is_dir() or not home.is_dir():
        print(f"shared data not found under {SHARED} (set BIDS_PHYDIFF_SHARED)", file=sys.stderr)
        return 66
    from bids_phydiff.prep.templates import load_template

    grid = load_template(args.template, args.resolution, home=home)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-prep-") as tmp:
        for label in args.subjects.split(","):
            results[f"sub-{label}"] = prepare_subject(bids / f"sub-{label}", grid, Path(tmp) / label,
                                                      args.threads, args.seed)
    for subject, res in results.items():
        print(f"{subject}: {res['runs']} run(s), T1w {'yes' if res['t1w'] else 'no'}: {res['total_s']:.1f} s "
              f"({res['total_s'] / res['runs']:.1f} s per run; target {TARGET_S:g} s per subject)")
        for step, seconds in res["steps_s"].items():
            print(f"    {step:32s} {seconds:7.2f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "template": args.template, "resolution_mm": args.resolution, "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "target_s_per_subject": TARGET_S, "subjects": results,
    }, indent=2) + "\n")
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
