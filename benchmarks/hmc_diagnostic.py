"""Diagnostic (not run by ``make bench``): how well does head-motion correction recover known motion?

Generates 4 mm phantoms moved by up to ``--motion`` mm and degrees per volume (one with b = 1000 only, one
with b = 1000/2000/3000; 2 b0 + 15 directions per shell, SNR 30), runs :func:`bids_phydiff.prep.hmc.
estimate_motion` with each setting on the raw series (1 ITK thread) and compares with the true motion:
median translation error (mm), median and max angle of the residual rotation (degrees), seconds per volume.

    python benchmarks/hmc_diagnostic.py [--motion 3] [--work /tmp/hmc_diagnostic]

Prints a table and writes ``benchmarks/results/hmc_diagnostic.json``. The settings compared are the ones
in docs/motion_correction.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from machine import cpu_name

RESULTS = Path(__file__).resolve().parent / "results" / "hmc_diagnostic.json"

SETTINGS = {
    "default": {},
    "anchor by registration": {"anchor": "registration"},
    "final level raw": {"smoothing_sigmas": (1.0, 0.0)},
    "smoothing 1, 0.5": {"smoothing_sigmas": (1.0, 0.5)},
    "smoothing 1.5, 1": {"smoothing_sigmas": (1.5, 1.0)},
    "refined once": {"smoothing_sigmas": (1.0, 0.5), "refinements": 1},
    "sampling 1.0": {"sampling": 1.0},
    "normalised correlation": {"metric": "GC"},
    "whole brain mask": {"edge_band": None},
    "band 1 out, 1 in, every pass": {"band_first_pass": True},
    "band 1 out, 2 in, every pass": {"edge_band": (1, 2), "band_first_pass": True},
    "band 2 out, 2 in, every pass": {"edge_band": (2, 2), "band_first_pass": True},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motion", type=float, default=3.0, help="mm and degrees (default 3)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hmc_diagnostic"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="the metric's sampling seeds (default 0)")
    parser.add_argument("--shells", choices=("1000", "three", "both"), default="both",
                        help="the b = 1000 phantom, the three-shell one, or both (default)")
    opts = parser.parse_args()

    from bids_phydiff.phantom import PhantomConfig, generate
    from bids_phydiff.prep.b0 import write_b0_reference
    from bids_phydiff.prep.hmc import DEFAULT_HMC, HmcConfig, estimate_motion
    from bids_phydiff.prep.mask import write_brain_mask
    from bids_phydiff.prep.motion import motion_errors, parameters_of, read_confounds

    rows = []
    phantoms = {"1000": [(1000.0,)], "three": [(1000.0, 2000.0, 3000.0)]}
    for shells in phantoms.get(opts.shells, phantoms["1000"] + phantoms["three"]):
        label = "/".join(f"{b:g}" for b in shells)
        root = opts.work / label.replace("/", "-")
        phantom = generate(root / "bids", PhantomConfig(subjects=1, resolution=4.0, seed=3, shells=shells,
                                                        directions=15, motion_mm=opts.motion), overwrite=True)
        dwi = phantom.bids_dir / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
        bval = dwi.with_name("sub-01_dwi.bval")
        mask = write_brain_mask(write_b0_reference(dwi, bval, root / "b0.nii.gz"), root / "mask.nii.gz")
        truth = parameters_of(read_confounds(phantom.truth_dir / "sub-01" / "sub-01_motion.tsv"))
        for name in opts.settings:
            config = HmcConfig(**{**asdict(DEFAULT_HMC), **SETTINGS[name]})
            per_seed = []
            for seed in opts.seeds:
                start = time.perf_counter()
                work = root / f"work-{re.sub(r'[^A-Za-z0-9.]+', '_', name)}-{seed}"  # ANTs splits its prefix at commas
                found = estimate_motion(dwi, bval, mask, work, threads=1, seed=seed, config=config)
                seconds = (time.perf_counter() - start) / truth.shape[0]
                trans, rot = motion_errors(found.parameters, truth)
                per_seed.append((float(np.median(trans)), float(np.median(rot)), float(rot.max()), seconds))
            trans, rot, worst, seconds = (np.array(v) for v in zip(*per_seed))
            rows.append({"shells": label, "setting": name, "config": asdict(config), "seeds": list(opts.seeds),
                         "translation_error_mm": round(float(trans.mean()), 3),
                         "rotation_error_deg": round(float(rot.mean()), 3),
                         "rotation_error_deg_per_seed": [round(float(r), 3) for r in rot],
                         "rotation_error_max_deg": round(float(worst.max()), 2),
                         "s_per_volume": round(float(seconds.mean()), 2)})
            r = rows[-1]
            print(f"{label:16s} {name:26s} {r['translation_error_mm']:7.3f} {r['rotation_error_deg']:7.3f} "
                  f"{r['rotation_error_max_deg']:7.2f} {r['s_per_volume']:6.2f}  per seed "
                  f"{r['rotation_error_deg_per_seed']}", flush=True)
    print(f"\nhead-motion recovery, 4 mm phantom, --motion {opts.motion:g}; {os.cpu_count()} CPUs ({cpu_name()})")
    print(f"seeds {opts.seeds}: mean over seeds of the median errors, max over seeds of the worst volume")
    print(f"{'shells':16s} {'setting':26s} {'mm':>7s} {'deg':>7s} {'max deg':>7s} {'s/vol':>6s}")
    for r in rows:
        print(f"{r['shells']:16s} {r['setting']:26s} {r['translation_error_mm']:7.3f} {r['rotation_error_deg']:7.3f} "
              f"{r['rotation_error_max_deg']:7.2f} {r['s_per_volume']:6.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "cpu": cpu_name(),
                                               "platform": platform.platform()},
                                   "motion": opts.motion, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
