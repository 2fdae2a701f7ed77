"""Head-motion correction through ``run.py`` on phantoms whose per-volume motion is known.

One subject at 4 mm with b = 1000 only (2 b0 + 15 directions, to keep it short), moved by up to 3 mm and
3 degrees per volume, is prepared with ``--hmc rigid`` and ``--hmc none``; the same subject without motion
is prepared with ``--hmc rigid``. One ITK thread per registration, so that each run is reproducible (the
same seed then gives the same transforms; with two threads the metrics' sums differ in their last bits).
Before the seed reached ANTs as a non-zero value (prep/ants_runtime.ants_seed), every run sampled its
metrics anew, and the median angle to the bundles below varied by 1-3 degrees between repeats (once 5.3
degrees with motion correction against 3.7 without). The checks compare the confounds with the true motion
and the tensor directions in template space with the template's true bundles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_phydiff.bids.validation import validate
from bids_phydiff.phantom import PhantomConfig, generate
from bids_phydiff.phantom.truth import read_truth
from bids_phydiff.prep.motion import (
    FD_COLUMN,
    motion_errors,
    parameters_of,
    read_confounds,
)

from conftest import PHANTOM_OPTIONS, REPO, bundle_angle

CONFIG = dict(subjects=1, resolution=4.0, seed=3, shells=(1000.0,), directions=15)
STEM = "sub-01_space-Phantom_res-04_desc-preproc_dwi"


def _prepare(phantom, out: Path, hmc: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(phantom.templateflow_home))
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), str(phantom.bids_dir), str(out), "participant",
                           "-w", str(out.parent / f"work_{out.name}"), *PHANTOM_OPTIONS, "--hmc", hmc,
                           "--fd-threshold", "2", "--nprocs", "2", "--omp-nthreads", "1"], env=env,
                          capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("motion")
    moved = generate(root / "bids_moved", PhantomConfig(**CONFIG, motion_mm=3.0))
    still = generate(root / "bids_still", PhantomConfig(**CONFIG))
    logs = {name: _prepare(phantom, root / name, hmc).stderr
            for name, phantom, hmc in (("rigid", moved, "rigid"), ("none", moved, "none"), ("still", still, "rigid"))}
    return {"root": root, "moved": moved, "still": still, "logs": logs}


def _dwi(runs, name: str) -> Path:
    return runs["root"] / name / "sub-01" / "dwi"


def test_recovered_motion_matches_the_truth(runs):
    confounds = read_confounds(_dwi(runs, "rigid") / "sub-01_desc-confounds_timeseries.tsv")
    truth = read_confounds(runs["moved"].truth_dir / "sub-01" / "sub-01_motion.tsv")
    trans, rot = motion_errors(parameters_of(confounds), parameters_of(truth))
    print(f"motion recovery at 4 mm, --motion 3: translation error median {np.median(trans):.3f} mm "
          f"(max {trans.max():.2f}), rotation error median {np.median(rot):.3f} deg (max {rot.max():.2f})")
    assert np.median(trans) < 0.3
    # 0.24 degrees with --seed 0 (deterministic, one thread); 0.21-0.28 over the sampling seeds 0-4 with the
    # targets refined once (docs/motion_correction.md), 0.27-0.38 without
    assert np.median(rot) < 0.3
    # the motion itself is much larger than the errors: the correction did something
    true_rot = np.degrees(np.abs(parameters_of(truth)[:, 3:]).max(axis=1))
    assert np.median(true_rot) > 2 * np.median(rot)


def test_confounds_and_sidecar_describe_every_column(runs):
    tsv = _dwi(runs, "rigid") / "sub-01_desc-confounds_timeseries.tsv"
    columns = read_confounds(tsv)
    assert list(columns) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", FD_COLUMN]
    n = nib.load(_dwi(runs, "rigid") / f"{STEM}.nii.gz").shape[3]
    assert all(len(v) == n for v in columns.values()) and columns[FD_COLUMN][0] == 0
    meta = json.loads(tsv.with_suffix(".json").read_text())
    assert all(meta[c]["Units"] in ("mm", "rad") and meta[c]["Description"] for c in columns)
    above = [int(v) for v in np.flatnonzero(columns[FD_COLUMN] > 2.0)]
    assert meta["VolumesAboveThreshold"] == above and meta["FramewiseDisplacementThreshold"] == 2.0
    assert "b0 volumes' positions interpolated" in meta["Method"]  # the anchor this run used (the default)
    assert above, "3 mm / 3 degree motion gives some volumes above 2 mm FD"
    assert f"volume(s) {above}" in runs["logs"]["rigid"]  # listed in the log, not dropped
    assert nib.load(_dwi(runs, "rigid") / f"{STEM}.nii.gz").shape[3] == 2 + 15
    html = (runs["root"] / "rigid" / "sub-01.html").read_text()
    assert "head motion" in html and "mean" in html and "desc-motion_dwi.svg" in html


def test_a_still_head_has_no_motion(runs):
    columns = read_confounds(_dwi(runs, "still") / "sub-01_desc-confounds_timeseries.tsv")
    fd = columns[FD_COLUMN]
    print(f"motion-free phantom: FD mean {fd.mean():.3f} mm, max {fd.max():.3f} mm")
    # the estimates' noise at 4 mm and SNR 30: FD mean 0.25 mm, max 0.48 (targets refined once); without the
    # refinement single volumes reached ~0.7 degrees, ~1 mm of FD, still under a third of a voxel
    assert np.median(fd) < 0.3 and fd.max() < 1.0
    assert np.abs(parameters_of(columns)[:, :3]).max() < 0.3


def test_hmc_brings_tensor_directions_back_to_the_bundles(runs):
    truth = read_truth(runs["moved"].truth_dir / "template" / "res-04")
    angles = {}
    for name in ("rigid", "none", "still"):
        d = _dwi(runs, name)
        angles[name] = bundle_angle(d / f"{STEM}.nii.gz", d / f"{STEM}.bval", d / f"{STEM}.bvec", truth)
    print("median angle to the true bundles (degrees):", {k: round(v, 2) for k, v in angles.items()})
    assert angles["rigid"] < angles["none"]  # 2.35 against 3.18 degrees (still: 2.13)
    assert angles["rigid"] < angles["still"] + 2.0


def test_hmc_none_writes_no_confounds_and_outputs_validate(runs):
    assert not list(_dwi(runs, "none").glob("*timeseries*"))
    assert "head motion" not in (runs["root"] / "none" / "sub-01.html").read_text()
    for name in ("rigid", "none"):
        validate(runs["root"] / name)
