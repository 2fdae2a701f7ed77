"""Diagnostic (not run by ``make bench``): how well does head-motion correction recover known motion?

Generates 4 mm phantoms moved by up to ``--motion`` mm and degrees per volume (one with b = 1000 only, one
with b = 1000/2000/3000; 2 b0 + 15 directions per shell, SNR 30), runs :func:`bids_phydiff.prep.hmc.
estimate_motion` with each setting on the raw series (1 ITK thread) and compares with the true motion:
median translation error (mm), median and max angle of the residual rotation (degrees), seconds per volume.

    python benchmarks/hmc_diagnostic.py [--motion 3] [--work /tmp/hmc_diagnostic]

Prints a table and writes ``benchmarks/results/hmc_diagnostic.json``. The settings compared are the ones
in :mod:`bids_phydiff.prep.hmc`'s docstring table.
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
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motion", type=float, default=3.0, help="mm and degrees (default 3)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hmc_diagnostic"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    opts = parser.parse_args()

    from bids_phydiff.phantom import PhantomConfig, generate
    from bids_phydiff.prep.b0 import write_b0_reference
    from bids_phydiff.prep.hmc import DEFAULT_HMC, HmcConfig, estimate_motion
    from bids_phydiff.prep.mask import write_brain_mask
    from bids_phydiff.prep.motion import motion_errors, parameters_of, read_confounds

    rows = []
    for shells in ((1000.0,), (1000.0, 2000.0, 3000.0)):
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
            start = time.perf_counter()
            work = root / f"work-{re.sub(r'[^A-Za-z0-9.]+', '_', name)}"  # ANTs splits its output prefix at commas
            found = estimate_motion(dwi, bval, mask, work, threads=1, config=config)
            seconds = (time.perf_counter() - start) / truth.shape[0]
            trans, rot = motion_errors(found.parameters, truth)
            rows.append({"shells": label, "setting": name, "config": asdict(config),
                         "translation_error_mm": round(float(np.median(trans)), 3),
                         "rotation_error_deg": round(float(np.median(rot)), 3),
                         "rotation_error_max_deg": round(float(rot.max()), 2), "s_per_volume": round(seconds, 2)})
            r = rows[-1]
            print(f"{label:16s} {name:24s} {r['translation_error_mm']:7.3f} {r['rotation_error_deg']:7.3f} "
                  f"{r['rotation_error_max_deg']:7.2f} {r['s_per_volume']:6.2f}", flush=True)
    print(f"\nhead-motion recovery, 4 mm phantom, --motion {opts.motion:g}; {os.cpu_count()} CPUs ({cpu_name()})")
    print(f"{'shells':16s} {'setting':24s} {'mm':>7s} {'deg':>7s} {'max deg':>7s} {'s/vol':>6s}")
    for r in rows:
        print(f"{r['shells']:16s} {r['setting']:24s} {r['translation_error_mm']:7.3f} {r['rotation_error_deg']:7.3f} "
              f"{r['rotation_error_max_deg']:7.2f} {r['s_per_volume']:6.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "cpu": cpu_name(),
                                               "platform": platform.platform()},
                                   "motion": opts.motion, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
