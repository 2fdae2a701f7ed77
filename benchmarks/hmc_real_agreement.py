"""Diagnostic (not run by ``make bench``): does head-motion correction keep real acquisitions in agreement?

Prepares the shared real subjects (sub-toshiba: five differently tilted acquisitions of one head;
sub-xa30: AP and PA runs) at 4 mm in MNI152NLin6Asym with ``--hmc none`` and ``--hmc rigid``, fits DTI
(dipy) to each prepared run and reports the median angle between the principal directions in white matter
for every pair of toshiba acquisitions (mean over pairs and worst pair) and for xa30 AP against PA; then the
same with the images of one preparation and the b-vectors of the other (which of the two the correction
changes the agreement through).

    python benchmarks/hmc_real_agreement.py [--bids ../shared/data/real-bids] [--work /tmp/hmc_real] [--seed 0]

One ITK thread per process (``--omp-nthreads 1``), so that both preparations register a lone b0 to the
template alike and a run repeats exactly; the spread over ``--seed`` is the measure of noise.

Prints a table and writes ``benchmarks/results/hmc_real_agreement.json``. Prepared outputs are reused (another
``--seed`` needs another ``--work``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RESULTS = Path(__file__).resolve().parent / "results" / "hmc_real_agreement.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, default=SHARED / "data" / "real-bids")
    parser.add_argument("--templateflow", type=Path, default=SHARED / "templateflow")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hmc_real"))
    parser.add_argument("--seed", type=int, default=0, help="the app's --seed (default 0)")
    opts = parser.parse_args()

    sys.path.insert(0, str(REPO / "tests"))
    from test_workflow_real import SPACE, TOSHIBA, _pairwise_median_angles, _principal_directions

    from bids_phydiff.prep.templates import load_template

    grid = load_template("MNI152NLin6Asym", 4.0, home=opts.templateflow)
    for hmc in ("none", "rigid"):
        out = opts.work / hmc
        if not (out / "sub-xa30.html").exists():
            subprocess.run([sys.executable, str(REPO / "run.py"), str(opts.bids), str(out), "participant",
                            "-w", str(opts.work / f"work-{hmc}"), "--participant-label", "toshiba", "xa30",
                            "--output-resolution", "4", "--nprocs", "2", "--omp-nthreads", "1", "--hmc", hmc,
                            "--seed", str(opts.seed), "--skip-bids-validation"],
                           env=dict(os.environ, TEMPLATEFLOW_HOME=str(opts.templateflow)), check=True)

    def run(images: str, bvecs: str, sub: str, entity: str) -> dict:
        def stem(hmc: str) -> Path:
            return opts.work / hmc / f"sub-{sub}" / "dwi" / f"sub-{sub}_{entity}_{SPACE}_desc-preproc_dwi"
        return {"dwi": Path(f"{stem(images)}.nii.gz"),
                "rotated": (Path(f"{stem(bvecs)}.bval"), Path(f"{stem(bvecs)}.bvec"))}

    rows = {}
    # the crossed rows separate the two things the correction changes: the images and the b-vectors
    for label, images, bvecs in (("none", "none", "none"), ("rigid", "rigid", "rigid"),
                                 ("rigid images, b-vectors of none", "rigid", "none"),
                                 ("images of none, rigid b-vectors", "none", "rigid")):
        toshiba = _pairwise_median_angles(*_principal_directions(
            {acq: run(images, bvecs, "toshiba", f"acq-{acq}") for acq in TOSHIBA}, "rotated", grid))
        xa30 = _pairwise_median_angles(*_principal_directions(
            {d: run(images, bvecs, "xa30", f"dir-{d}") for d in ("AP", "PA")}, "rotated", grid))
        rows[label] = {"toshiba_mean_deg": float(np.mean(list(toshiba.values()))),
                       "toshiba_worst_deg": float(max(toshiba.values())),
                       "xa30_ap_pa_deg": float(next(iter(xa30.values())))}
    print(f"{'hmc':32s} {'toshiba mean':>13s} {'toshiba worst':>14s} {'xa30 AP/PA':>11s}   (degrees)")
    for hmc, r in rows.items():
        print(f"{hmc:32s} {r['toshiba_mean_deg']:13.2f} {r['toshiba_worst_deg']:14.2f} {r['xa30_ap_pa_deg']:11.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
