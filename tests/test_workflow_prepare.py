"""Participant level, prepare, end to end through ``run.py`` on a phantom whose deformation is known.

Three subjects at 4 mm, each moved by a random rigid motion (rotations up to 20 degrees about each axis)
and a smooth warp; sub-03 has no T1w, so its b0 goes to the template directly. The checks compare the
outputs with the phantom's ground truth in template space.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_phydiff.bids.validation import validate
from bids_phydiff.phantom import PhantomConfig, generate
from bids_phydiff.phantom.truth import read_truth
from bids_phydiff.prep.gradients import read_fsl, write_reoriented_fsl
from bids_phydiff.prep.resample import resample_mask
from bids_phydiff.prep.templates import load_template

from conftest import REPO, bundle_angle as _bundle_angles

PHANTOM = PhantomConfig(subjects=3, resolution=4.0, seed=1, rotation_deg=20.0, without_t1w=("03",))
SUBJECTS = ("01", "02", "03")
SPACE = "space-Phantom_res-04"


def run_app(args: list, home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(home))
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    phantom = generate(root / "bids", PHANTOM)
    before = snapshot(phantom.bids_dir)
    plugin = root / "plugin.yml"
    plugin.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 2\n")
    out, work = root / "out", root / "work"
    start = time.monotonic()
    proc = run_app([phantom.bids_dir, out, "participant", "-w", work, "--template", "Phantom",
                    "--output-resolution", "4", "--use-plugin", plugin], phantom.templateflow_home)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"phantom": phantom, "out": out, "work": work, "before": before, "elapsed": elapsed, "log": proc.stderr}


def _dwi_dir(prepared, sub: str) -> Path:
    return prepared["out"] / f"sub-{sub}" / "dwi"


def _file(prepared, sub: str, name: str) -> Path:
    return _dwi_dir(prepared, sub) / f"sub-{sub}_{name}"


def test_derivatives_are_written_as_the_design_names_them(prepared):
    grid = load_template("Phantom", 4.0, home=prepared["phantom"].templateflow_home)
    for sub in SUBJECTS:
        expected = [f"{SPACE}_desc-preproc_dwi.{ext}" for ext in ("nii.gz", "bval", "bvec", "json")]
        expected += [f"{SPACE}_desc-brain_mask.nii.gz", f"{SPACE}_desc-brain_mask.json", f"{SPACE}_dwiref.nii.gz",
                     f"{SPACE}_dwiref.json", "from-dwi_to-Phantom_mode-image_xfm.h5",
                     "from-Phantom_to-dwi_mode-image_xfm.h5"]
        for name in expected:
            assert _file(prepared, sub, name).is_file(), name
        img = nib.load(_file(prepared, sub, f"{SPACE}_desc-preproc_dwi.nii.gz"))
        assert img.shape == grid.shape + (2 + 3 * 12,)
        np.testing.assert_allclose(img.affine, grid.affine, atol=1e-4)
        table = read_fsl(_file(prepared, sub, f"{SPACE}_desc-preproc_dwi.bval"),
                         _file(prepared, sub, f"{SPACE}_desc-preproc_dwi.bvec"))
        assert len(table.bvals) == img.shape[3]
        mask = nib.load(_file(prepared, sub, f"{SPACE}_desc-brain_mask.nii.gz"))
        assert mask.shape == grid.shape and set(np.unique(np.asarray(mask.dataobj))) == {0, 1}
        meta = json.loads(_file(prepared, sub, f"{SPACE}_desc-preproc_dwi.json").read_text())
        assert meta["SkullStripped"] is False
        assert meta["Sources"][0] == f"bids:raw:sub-{sub}/dwi/sub-{sub}_dwi.nii.gz"
        assert meta["SpatialReference"].endswith("tpl-Phantom_res-04_T1w.nii.gz")  # not a standard space
        assert "Resolution" in meta and "SliceTiming" not in meta
        assert ("T1w" in meta["Description"]) == (sub != "03")
        assert any(s.endswith("_T1w.nii.gz") for s in meta["Sources"]) == (sub != "03")
    description = json.loads((prepared["out"] / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "bids_phydiff"
    leftovers = [p for p in prepared["out"].rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]
    assert leftovers == []


def test_nothing_is_written_into_the_input_dataset(prepared):
    assert snapshot(prepared["phantom"].bids_dir) == prepared["before"]


def test_derivatives_pass_the_bids_validator(prepared):
    validate(prepared["out"])  # raises ValidationFailed listing the errors


def test_pybids_can_query_the_derivatives(prepared):
    from bids import BIDSLayout

    layout = BIDSLayout(prepared["out"], validate=False)
    files = layout.get(space="Phantom", desc="preproc", suffix="dwi", extension=".nii.gz")
    assert sorted(f.entities["subject"] for f in files) == list(SUBJECTS)
    assert layout.get_metadata(files[0].path)["SkullStripped"] is False
    masks = layout.get(subject="02", desc="brain", suffix="mask", extension=".nii.gz")
    assert len(masks) == 1 and masks[0].entities["res"] == "04"


def _ncc(a, b, mask) -> float:
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_b0_lands_on_the_template_b0(prepared):
    grid = load_template("Phantom", 4.0, home=prepared["phantom"].templateflow_home)
    template_b0 = nib.load(grid.b0).get_fdata()
    brain = np.asarray(nib.load(grid.mask).dataobj) > 0
    scores = {}
    for sub in SUBJECTS:
        b0 = nib.load(_file(prepared, sub, f"{SPACE}_dwiref.nii.gz")).get_fdata()
        scores[sub] = _ncc(b0, template_b0, brain)
    print("NCC with the template b0:", scores)
    assert min(scores.values()) >= 0.9


def test_white_matter_lands_on_the_template_white_matter(prepared, tmp_path):
    truth_dir = prepared["phantom"].truth_dir
    template_wm = read_truth(truth_dir / "template" / "res-04").tissue_labels() == 3
    dice = {}
    for sub in SUBJECTS:
        labels = nib.load(truth_dir / f"sub-{sub}" / "tissue_dseg.nii.gz")
        wm = nib.Nifti1Image((np.asarray(labels.dataobj) == 3).astype(np.uint8), labels.affine)
        nib.save(wm, tmp_path / f"wm_{sub}.nii.gz")
        moved = resample_mask(tmp_path / f"wm_{sub}.nii.gz", _file(prepared, sub, "from-dwi_to-Phantom_mode-image_xfm.h5"),
                              _file(prepared, sub, f"{SPACE}_dwiref.nii.gz"), tmp_path / f"wm_{sub}_tpl.nii.gz", tmp_path)
        moved = np.asarray(nib.load(moved).dataobj) > 0
        dice[sub] = 2 * (moved & template_wm).sum() / (moved.sum() + template_wm.sum())
    print("WM Dice:", dice)
    assert min(dice.values()) >= 0.8


def test_tensor_directions_follow_the_rotated_bundles(prepared, tmp_path):
    """bvec rotation and the FSL axis convention: DTI directions in template space match the template's
    bundles; the same data with bvecs that were only re-expressed for the new axes (not rotated) do not."""
    phantom = prepared["phantom"]
    truth = read_truth(phantom.truth_dir / "template" / "res-04")
    rotated, unrotated = {}, {}
    for sub in SUBJECTS:
        dwi = _file(prepared, sub, f"{SPACE}_desc-preproc_dwi.nii.gz")
        bval, bvec = (_file(prepared, sub, f"{SPACE}_desc-preproc_dwi.{e}") for e in ("bval", "bvec"))
        rotated[sub] = _bundle_angles(dwi, bval, bvec, truth)
        raw = phantom.bids_dir / f"sub-{sub}" / "dwi" / f"sub-{sub}_dwi"
        axes_only = write_reoriented_fsl(f"{raw}.bval", f"{raw}.bvec", f"{raw}.nii.gz", dwi,
                                         tmp_path / f"{sub}.bval", tmp_path / f"{sub}.bvec")
        unrotated[sub] = _bundle_angles(dwi, *axes_only, truth)
    print("median angle to the true bundles, rotated:", rotated, "not rotated:", unrotated)
    assert max(rotated.values()) < 10.0
    assert max(unrotated.values()) > 10.0


def test_each_subject_has_a_report_with_its_figures(prepared):
    for sub in SUBJECTS:
        report = prepared["out"] / f"sub-{sub}.html"
        html = report.read_text()
        figures = re.findall(r'<img src="([^"]+)"', html)
        # b0 in template, mask, head motion, and T1w when there is one
        assert len(figures) == (3 if sub == "03" else 4)
        assert any(f.endswith("_desc-motion_dwi.svg") for f in figures)
        for figure in figures:
            path = report.parent / figure
            assert path.is_file() and path.stat().st_size > 1000 and path.parent.name == "figures"
        assert "no T1w" in html if sub == "03" else "T1w" in html


def test_a_second_run_reuses_the_work_dir(prepared):
    work, out = prepared["work"], prepared["out"]
    registrations = sorted(work.rglob("result_register.pklz"))
    assert len(registrations) == 3 + 2  # three b0 registrations, two T1w registrations
    mtimes = [p.stat().st_mtime_ns for p in registrations]
    dwi = _file(prepared, "01", f"{SPACE}_desc-preproc_dwi.nii.gz")
    dwi.unlink()  # an output removed by hand is written again from the cache
    proc = run_app([prepared["phantom"].bids_dir, out, "participant", "-w", work, "--template", "Phantom",
                    "--output-resolution", "4", "--skip-bids-validation"], prepared["phantom"].templateflow_home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in registrations] == mtimes
    assert dwi.is_file()
    assert not list(work.glob("run-*")), "each run's own pybids index is removed when the run ends"


def test_a_template_missing_offline_is_a_clear_error(prepared, tmp_path):
    phantom = prepared["phantom"]
    out = tmp_path / "out"
    proc = run_app([phantom.bids_dir, out, "participant", "-w", tmp_path / "work", "--template", "Nowhere",
                    "--skip-bids-validation"], phantom.templateflow_home, timeout=120)
    assert proc.returncode == 66, proc.stderr[-2000:]
    assert "template Nowhere" in proc.stderr and f"TEMPLATEFLOW_HOME={phantom.templateflow_home}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(out.glob("sub-*"))
    assert not list((tmp_path / "work").glob("run-*")), "a failed run removes its pybids index too"
