"""Templates from the offline TemplateFlow home: grids, resolutions, missing files, padding."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_phydiff.prep.grid import pad_to_multiple, place_on_grid, resample_to_grid
from bids_phydiff.prep.template_files import TEMPLATEFLOW_HOST, TemplateError, _unreachable
from bids_phydiff.prep.templates import TemplateGrid, load_template, template_image, write_template_image


def _ml(mask: np.ndarray, grid: TemplateGrid) -> float:
    return float(mask.sum() * np.prod(grid.zooms) / 1000.0)


def _corner(affine: np.ndarray) -> np.ndarray:
    """World position of the outer corner of voxel (0, 0, 0)."""
    return (np.asarray(affine) @ np.array([-0.5, -0.5, -0.5, 1.0]))[:3]


def test_mni152nlin6asym_2mm_is_the_template_grid(shared_templateflow):
    grid = load_template("MNI152NLin6Asym", 2, home=shared_templateflow)
    ref = nib.load(grid.t1w)
    assert grid.t1w.name == "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"  # whole head preferred
    assert grid.mask.name == "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz"
    assert grid.brain_t1w.name == "tpl-MNI152NLin6Asym_res-02_desc-brain_T1w.nii.gz"
    assert grid.b0 is None
    assert grid.shape == tuple(ref.shape) == (91, 109, 91)
    np.testing.assert_allclose(grid.affine, ref.affine)
    assert grid.source_resolution_mm == grid.resolution_mm == 2.0
    mask = template_image(grid, "mask")
    assert mask.dtype == bool and 1400 < _ml(mask, grid) < 2100


def test_4mm_grid_is_made_from_the_2mm_template(shared_templateflow):
    g2 = load_template("MNI152NLin6Asym", 2, home=shared_templateflow)
    g4 = load_template("MNI152NLin6Asym", 4, home=shared_templateflow)
    assert g4.t1w == g2.t1w and g4.source_resolution_mm == 2.0  # no 4 mm template: the 2 mm one, resampled
    np.testing.assert_allclose(g4.zooms, 4.0)
    np.testing.assert_allclose(_corner(g4.affine), _corner(g2.affine))  # same box, same orientation
    np.testing.assert_allclose(np.sign(g4.affine[:3, :3]), np.sign(g2.affine[:3, :3]))
    assert g4.shape == (46, 55, 46)  # 91 * 2 / 4 rounded up
    # the 4 mm T1w is the 2 mm one averaged over 2x2x2 blocks, up to the smoothing of the resampling
    t2 = template_image(g2, "t1w")
    padded = np.zeros((92, 110, 92), dtype=np.float32)
    padded[:91, :109, :91] = t2
    blocks = padded.reshape(46, 2, 55, 2, 46, 2).mean(axis=(1, 3, 5))
    t4 = template_image(g4, "t1w")
    assert np.corrcoef(blocks.ravel(), t4.ravel())[0, 1] > 0.97
    # a 1 voxel (4 mm) shift would be much worse: the check can fail
    assert np.corrcoef(np.roll(blocks, 1, axis=0).ravel(), t4.ravel())[0, 1] < 0.95
    m2, m4 = template_image(g2, "mask"), template_image(g4, "mask")
    assert abs(_ml(m4, g4) - _ml(m2, g2)) / _ml(m2, g2) < 0.03


def test_mni305_keeps_its_orientation(shared_templateflow):
    grid = load_template("MNI305", 2, home=shared_templateflow)
    assert grid.t1w.name == "tpl-MNI305_T1w.nii.gz" and grid.res_label is None
    assert grid.shape == (91, 109, 91)
    assert grid.affine[0, 0] < 0  # LAS, as the file
    assert nib.aff2axcodes(grid.affine) == ("L", "A", "S")
    assert 1100 < _ml(template_image(grid, "mask"), grid) < 2100
    g3 = load_template("MNI305", 3, home=shared_templateflow)
    assert nib.aff2axcodes(g3.affine) == ("L", "A", "S") and np.allclose(g3.zooms, 3.0)


def test_resolution_labels_are_not_millimetres(shared_templateflow, tmp_path):
    """TemplateFlow's res labels are indices (MNI152NLin6Asym res-03 is 0.5 mm): spacing comes from the files."""
    src = shared_templateflow / "tpl-MNI152NLin6Asym"
    folder = tmp_path / "tpl-Test"
    folder.mkdir()
    for label, res in (("07", "02"), ("01", "01")):
        for suffix in ("T1w", "desc-brain_mask"):
            (folder / f"tpl-Test_res-{label}_{suffix}.nii.gz").symlink_to(src / f"tpl-MNI152NLin6Asym_res-{res}_{suffix}.nii.gz")
    grid = load_template("Test", 2, home=tmp_path)
    assert grid.res_label == "07" and grid.shape == (91, 109, 91)
    assert load_template("Test", 1, home=tmp_path).res_label == "01"
    # the finer one, resampled onto a grid of our own: a label of our own, never one the template uses
    assert load_template("Test", 1.5, home=tmp_path).res_label == "1p5mm"


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_phantom_style_template_offers_its_b0(tmp_path):
    """A template with a b0-like image (a phantom's ``desc-b0_dwi``) and atlas files beside the T1w."""
    folder = tmp_path / "tpl-Phantom"
    folder.mkdir()
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -40
    grid_idx = np.indices((21, 21, 21)) - 10
    brain = (grid_idx**2).sum(0) < 64
    p = "tpl-Phantom_res-04"
    _write(folder / f"{p}_T1w.nii.gz", brain.astype(np.float32) * 800, affine)
    _write(folder / f"{p}_desc-brain_mask.nii.gz", brain.astype(np.uint8), affine)
    _write(folder / f"{p}_desc-b0_dwi.nii.gz", brain.astype(np.float32) * 1000, affine)
    for label in ("WM", "GM", "CSF"):
        _write(folder / f"{p}_label-{label}_probseg.nii.gz", brain.astype(np.float32) / 3, affine)
    _write(folder / f"{p}_atlas-Tracts_dseg.nii.gz", brain.astype(np.uint8), affine)
    grid = load_template("Phantom", 4, home=tmp_path)
    assert grid.b0 == folder / f"{p}_desc-b0_dwi.nii.gz"
    assert grid.t1w == folder / f"{p}_T1w.nii.gz" and grid.res_label == "04"
    assert grid.shape == (21, 21, 21) and grid.resolution_mm == 4.0
    np.testing.assert_array_equal(template_image(grid, "mask"), brain)


def test_phantom_generator_template(tmp_path):
    """The template the phantom generator writes."""
    out = tmp_path / "phantom"
    proc = subprocess.run([sys.executable, "-m", "bids_phydiff.phantom", str(out), "--subjects", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    home = out / "sourcedata" / "templateflow"
    grid = load_template("Phantom", 4, home=home)
    assert grid.b0 is not None and grid.b0.name.endswith("_desc-b0_dwi.nii.gz")
    assert np.allclose(grid.zooms, 4.0) and grid.res_label == "04"
    assert template_image(grid, "mask").any()


_SCRIPT = """
import sys
from bids_phydiff.prep.template_files import TemplateError
from bids_phydiff.prep.templates import load_template
try:
    load_template(sys.argv[1], float(sys.argv[2]), allow_download=sys.argv[3] == "1")
except TemplateError as exc:
    print(exc)
    sys.exit(3)
"""


def _run_offline(home: Path, name: str, res: float, download: bool) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(home))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, name, str(res), "1" if download else "0"],
                          env=env, capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("name, res", [("MNI152NLin6Asym", 2.0), ("NoSuchTemplate", 2.0)])
def test_missing_template_in_empty_home_fails_fast(tmp_path, name, res):
    """The default path (downloads allowed) on an offline machine: a TemplateError within 10 s."""
    if _unreachable(TEMPLATEFLOW_HOST, 2.0) is None:
        pytest.skip("TemplateFlow is reachable: a download would be attempted")
    home = tmp_path / "templateflow"
    home.mkdir()
    proc, elapsed = _run_offline(home, name, res, download=True)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert elapsed < 10.0
    assert f"TEMPLATEFLOW_HOME={home}" in proc.stdout and name in proc.stdout
    assert "Traceback" not in proc.stderr
    assert not any(home.iterdir())  # nothing was written into the home


def test_missing_resolution_without_download(shared_templateflow, tmp_path):
    """A home holding the template's mask but no T1w at any resolution, downloads off: TemplateError."""
    folder = tmp_path / "tpl-MNI152NLin6Asym"
    folder.mkdir()
    (folder / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz").symlink_to(
        shared_templateflow / "tpl-MNI152NLin6Asym" / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz")
    proc, elapsed = _run_offline(tmp_path, "MNI152NLin6Asym", 2.0, download=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert elapsed < 10.0
    assert f"TEMPLATEFLOW_HOME={tmp_path}" in proc.stdout and "T1w" in proc.stdout


def test_home_is_read_at_call_time(shared_templateflow, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    with pytest.raises(TemplateError, match="TEMPLATEFLOW_HOME"):
        load_template("MNI152NLin6Asym", 2, allow_download=False)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(shared_templateflow))
    assert load_template("MNI152NLin6Asym", 2, allow_download=False).shape == (91, 109, 91)


def test_bad_resolution_is_refused(shared_templateflow):
    with pytest.raises(ValueError):
        load_template("MNI152NLin6Asym", 0, home=shared_templateflow)


def test_pad_to_multiple_keeps_world_positions(shared_templateflow, tmp_path):
    grid = load_template("MNI152NLin6Asym", 2, home=shared_templateflow)
    padded = pad_to_multiple(grid, 16)
    assert padded.shape == (96, 112, 91)  # in-plane only
    assert all(n % 16 == 0 for n in padded.shape[:2])
    t1 = template_image(grid, "t1w")
    on_padded = template_image(padded, "t1w")
    np.testing.assert_array_equal(place_on_grid(t1, grid, padded), on_padded)
    np.testing.assert_array_equal(place_on_grid(on_padded, padded, grid), t1)  # and back (crop)
    # voxel (i, j, k) of the grid is voxel (i + 2, j + 1, k) of the padded grid, in world mm
    np.testing.assert_allclose(padded.affine @ [2, 1, 0, 1], grid.affine @ [0, 0, 0, 1])
    path = write_template_image(padded, "mask", tmp_path / "mask.nii.gz")
    img = nib.load(path)
    assert img.shape == padded.shape and np.allclose(img.affine, padded.affine)
    np.testing.assert_array_equal(resample_to_grid(path, grid, is_mask=True), template_image(grid, "mask"))


def test_grid_round_trips_through_a_dict(shared_templateflow):
    grid = load_template("MNI152NLin6Asym", 4, home=shared_templateflow)
    again = TemplateGrid.from_dict(grid.to_dict())
    assert again.same_grid(grid) and again.t1w == grid.t1w and again.resolution_mm == 4.0
    assert not again.same_grid(pad_to_multiple(grid, 32))
