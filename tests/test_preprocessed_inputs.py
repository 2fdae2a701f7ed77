"""Already-preprocessed (QSIPrep-style) derivatives as input, end to end through ``run.py``.

The tree is built from a 2-subject phantom at 4 mm with QSIPrep's own names (bids/preprocessed.py says where
they were checked): sub-01 as QSIPrep 0.x writes it (``space-T1w``, an anat T1w without ``space-``), sub-02 as
1.x writes it (``space-ACPC_res-4mm``). Each run's brain mask is the app's own mask of its b0 eroded by two
voxels, so that an output mask that follows it can be told from one the app computed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_phydiff.bids.checks import check_runs
from bids_phydiff.bids.layout import discover, open_layout
from bids_phydiff.bids.preprocessed import detect_input_type
from bids_phydiff.bids.validation import validate
from bids_phydiff.errors import EXIT_DATA, InputDataError, NoInputError
from bids_phydiff.phantom import PhantomConfig, generate
from bids_phydiff.prep.gradients import read_bvals
from bids_phydiff.prep.mask import brain_mask

from conftest import REPO

PHANTOM = PhantomConfig(subjects=2, resolution=4.0, seed=3)
SPACES = {"01": "space-T1w", "02": "space-ACPC_res-4mm"}
"""QSIPrep 0.x and 1.x names of the preprocessed DWI space."""
T1W_NAMES = {"01": "sub-01_desc-preproc_T1w.nii.gz", "02": "sub-02_space-ACPC_desc-preproc_T1w.nii.gz"}
OUT_SPACE = "space-Phantom_res-04"
TRAINING = "preset: tiny\nmax_steps: 10\nadapter_steps: 3\nbatch_size: 8\nwarmup_steps: 2\nval_every: 0\n" \
           "checkpoint_every: 0\n"
FAST = ["--steps", "2", "--batch-size", "64"]


def app(args: list, home: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(home))
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def app_mask(dwi: Path, bval: Path) -> np.ndarray:
    """The mask the app computes for a run: of the mean b0."""
    img = nib.load(dwi)
    b0 = img.get_fdata(dtype=np.float32)[..., read_bvals(bval) <= 50].mean(axis=-1)
    return brain_mask(b0, img.header.get_zooms()[:3])


def write_qsiprep_tree(phantom, root: Path) -> Path:
    """The phantom's runs under QSIPrep's derivative names (see the module docstring)."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "QSIPrep outputs of the phantom", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsiprep", "Version": "0.19.1"}]}))
    for sub, space in SPACES.items():
        raw, dwi_dir, anat_dir = phantom.bids_dir / f"sub-{sub}", root / f"sub-{sub}" / "dwi", root / f"sub-{sub}" / "anat"
        dwi_dir.mkdir(parents=True)
        anat_dir.mkdir(parents=True)
        stem = dwi_dir / f"sub-{sub}_{space}_desc-preproc_dwi"
        for ext in ("nii.gz", "bval", "bvec", "json"):
            shutil.copyfile(raw / "dwi" / f"sub-{sub}_dwi.{ext}", f"{stem}.{ext}")
        img = nib.load(f"{stem}.nii.gz")
        small = ndimage.binary_erosion(app_mask(Path(f"{stem}.nii.gz"), Path(f"{stem}.bval")), iterations=2)
        nib.Nifti1Image(small.astype(np.uint8), img.affine).to_filename(dwi_dir / f"sub-{sub}_{space}_desc-brain_mask.nii.gz")
        ref = "dwiref" if sub == "01" else "desc-preproc_dwiref"
        nib.Nifti1Image(img.get_fdata(dtype=np.float32)[..., 0], img.affine).to_filename(
            dwi_dir / f"sub-{sub}_{space}_{ref}.nii.gz")
        (dwi_dir / f"sub-{sub}_desc-confounds_timeseries.tsv").write_text(
            "framewise_displacement\ttrans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z\n" + "n/a\t0\t0\t0\t0\t0\t0\n")
        shutil.copyfile(raw / "anat" / f"sub-{sub}_T1w.nii.gz", anat_dir / T1W_NAMES[sub])
        # a template-space T1w, which must not be taken as the run's T1w
        shutil.copyfile(raw / "anat" / f"sub-{sub}_T1w.nii.gz",
                        anat_dir / f"sub-{sub}_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz")
    return root


@pytest.fixture(scope="module")
def qsiprep(tmp_path_factory):
    root = tmp_path_factory.mktemp("qsiprep")
    phantom = generate(root / "bids", PHANTOM)
    return {"root": root, "phantom": phantom, "home": phantom.templateflow_home,
            "tree": write_qsiprep_tree(phantom, root / "qsiprep")}


@pytest.fixture(scope="module")
def loop(qsiprep):
    """participant (prepare), group (train), participant --model (synthesise sub-02), on the QSIPrep tree."""
    root, home, tree = qsiprep["root"], qsiprep["home"], qsiprep["tree"]
    out, work = root / "out", root / "work"
    common = ["-w", work, "--template", "Phantom", "--output-resolution", "4"]
    prepare = app([tree, out, "participant", *common, "--nprocs", "2"], home)
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    (root / "train.yml").write_text(TRAINING)
    group = app([tree, out, "group", *common, "--train-config", root / "train.yml", "--model-label", "tiny"], home)
    assert group.returncode == 0, group.stderr[-3000:]
    synth = app([tree, out, "participant", *common, "--participant-label", "02", "--model",
                 out / "models" / "model-tiny", *FAST], home)
    assert synth.returncode == 0, synth.stderr[-3000:]
    return {**qsiprep, "out": out, "work": work, "log": prepare.stderr}


def test_input_type_is_detected_from_the_dataset(qsiprep, tmp_path):
    assert detect_input_type(qsiprep["tree"]) == "preprocessed"
    assert detect_input_type(qsiprep["phantom"].bids_dir) == "raw"
    assert detect_input_type(qsiprep["phantom"].bids_dir, "preprocessed") == "preprocessed"
    copy = tmp_path / "raw-typed"
    shutil.copytree(qsiprep["tree"], copy)
    (copy / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    assert detect_input_type(copy) == "raw"  # no DatasetType derivative: raw, whatever the names
    # --input-type preprocessed reads it as derivatives all the same
    runs = discover(open_layout(copy, tmp_path / "db", derivative=True), preprocessed=True)
    assert [(r.prefix, r.mask is not None) for r in runs] == [("sub-01", True), ("sub-02", True)]


def test_pybids_finds_each_run_with_its_gradients_mask_and_t1w(qsiprep, tmp_path):
    tree = qsiprep["tree"]
    runs = discover(open_layout(tree, tmp_path / "db", derivative=True), preprocessed=True)
    assert [r.subject for r in runs] == ["01", "02"]
    for run in runs:
        sub, space = run.subject, SPACES[run.subject]
        stem = f"sub-{sub}_{space}_desc-preproc_dwi"
        assert run.preprocessed and run.entities == (("sub", sub),) and run.prefix == f"sub-{sub}"
        assert (run.dwi.name, run.bval.name, run.bvec.name, run.sidecar.name) == (
            f"{stem}.nii.gz", f"{stem}.bval", f"{stem}.bvec", f"{stem}.json")
        assert run.mask.name == f"sub-{sub}_{space}_desc-brain_mask.nii.gz"
        assert run.t1w.name == T1W_NAMES[sub]  # not the template-space copy
    # a raw dataset read as preprocessed has no run: the error names what was looked for
    with pytest.raises(NoInputError, match="desc-preproc_dwi"):
        discover(open_layout(qsiprep["phantom"].bids_dir, tmp_path / "db2", derivative=True), preprocessed=True)


def _checked_copy(qsiprep, tmp_path, change) -> None:
    copy = tmp_path / "tree"
    shutil.copytree(qsiprep["tree"], copy)
    change(copy / "sub-01" / "dwi")
    check_runs(discover(open_layout(copy, tmp_path / "db", derivative=True), ["01"], preprocessed=True))


def test_input_checks_still_apply_and_name_the_file(qsiprep, tmp_path):
    stem = "sub-01_space-T1w_desc-preproc_dwi"

    def one_gradient_short(folder):
        for ext in ("bval", "bvec"):
            rows = [line.split() for line in (folder / f"{stem}.{ext}").read_text().splitlines()]
            (folder / f"{stem}.{ext}").write_text("\n".join(" ".join(row[:-1]) for row in rows) + "\n")

    with pytest.raises(InputDataError, match=rf"{stem}\.bval: 37 b-values but {stem}\.nii\.gz has 38 volumes"):
        _checked_copy(qsiprep, tmp_path / "a", one_gradient_short)

    def other_grid(folder):
        mask = folder / "sub-01_space-T1w_desc-brain_mask.nii.gz"
        img = nib.load(mask)
        nib.Nifti1Image(np.asarray(img.dataobj)[1:], img.affine).to_filename(mask)

    with pytest.raises(InputDataError, match="desc-brain_mask.nii.gz: not on the grid of"):
        _checked_copy(qsiprep, tmp_path / "b", other_grid)

    def not_binary(folder):
        mask = folder / "sub-01_space-T1w_desc-brain_mask.nii.gz"
        img = nib.load(mask)
        nib.Nifti1Image(np.asarray(img.dataobj) * np.uint8(255), img.affine).to_filename(mask)

    with pytest.raises(InputDataError, match="desc-brain_mask.nii.gz: a brain mask holds 0 and 1 only"):
        _checked_copy(qsiprep, tmp_path / "c", not_binary)

    def two_spaces(folder):  # the same acquisition also in a template space: both would write one output
        for path in folder.glob(f"{stem}.*"):
            shutil.copyfile(path, folder / path.name.replace("space-T1w", "space-MNI152NLin2009cAsym"))

    with pytest.raises(InputDataError, match=r"the same acquisition as .* in another space.*--bids-filter-file"):
        _checked_copy(qsiprep, tmp_path / "d", two_spaces)


def test_a_bad_preprocessed_run_exits_65_before_anything_is_written(qsiprep, tmp_path):
    copy = tmp_path / "tree"
    shutil.copytree(qsiprep["tree"], copy)
    bvec = copy / "sub-02" / "dwi" / "sub-02_space-ACPC_res-4mm_desc-preproc_dwi.bvec"
    rows = [line.split() for line in bvec.read_text().splitlines()]
    bvec.write_text("\n".join(" ".join(row[:-1]) for row in rows) + "\n")
    proc = app([copy, tmp_path / "out", "participant", "-w", tmp_path / "work", "--template", "Phantom",
                "--output-resolution", "4"], qsiprep["home"], timeout=300)
    assert proc.returncode == EXIT_DATA, proc.stderr[-2000:]
    assert bvec.name in proc.stderr
    assert not list((tmp_path / "out").glob("sub-*"))


def test_prepare_skips_motion_correction_and_follows_the_given_mask(loop):
    out, tree = loop["out"], loop["tree"]
    assert "bids-validator-deno is not run" in loop["log"]
    for sub, space in SPACES.items():
        folder = out / f"sub-{sub}" / "dwi"
        names = sorted(p.name for p in folder.iterdir())
        assert f"sub-{sub}_{OUT_SPACE}_desc-preproc_dwi.nii.gz" in names
        assert f"sub-{sub}_from-dwi_to-Phantom_mode-image_xfm.h5" in names
        assert not [n for n in names if "confounds" in n or "T1w" in n or "ACPC" in n], names
        meta = json.loads((folder / f"sub-{sub}_{OUT_SPACE}_desc-preproc_dwi.json").read_text())
        assert meta["InputType"] == "preprocessed" and meta["HeadMotionCorrection"] == "none"
        assert meta["Denoising"] == {"Method": "none"}
        assert f"bids:raw:sub-{sub}/anat/{T1W_NAMES[sub]}" in meta["Sources"]
        mask_meta = json.loads((folder / f"sub-{sub}_{OUT_SPACE}_desc-brain_mask.json").read_text())
        assert mask_meta["Sources"] == [f"bids:raw:sub-{sub}/dwi/sub-{sub}_{space}_desc-brain_mask.nii.gz"]
        # the output mask is the given (eroded) one carried to the template, not one computed from the b0
        given = nib.load(tree / f"sub-{sub}" / "dwi" / f"sub-{sub}_{space}_desc-brain_mask.nii.gz")
        dwi = tree / f"sub-{sub}" / "dwi" / f"sub-{sub}_{space}_desc-preproc_dwi"
        own = app_mask(Path(f"{dwi}.nii.gz"), Path(f"{dwi}.bval"))
        result = nib.load(folder / f"sub-{sub}_{OUT_SPACE}_desc-brain_mask.nii.gz")
        mm3 = lambda img, n: n * float(np.prod(img.header.get_zooms()[:3]))  # noqa: E731
        given_mm3 = mm3(given, np.asarray(given.dataobj).sum())
        result_mm3 = mm3(result, np.asarray(result.dataobj).sum())
        own_mm3 = mm3(given, own.sum())
        assert given_mm3 < 0.75 * own_mm3
        assert abs(result_mm3 / given_mm3 - 1) < 0.15, (result_mm3, given_mm3, own_mm3)
    work = loop["work"]
    assert list(work.rglob("register"))  # the node folders are where they are looked for
    assert not list(work.rglob("hmc")) and not list(work.rglob("brain_mask")) and not list(work.rglob("denoise"))


def test_training_and_synthesis_run_on_it_and_the_outputs_are_valid_bids(loop):
    out = loop["out"]
    assert (out / "models" / "model-tiny" / "weights.safetensors").is_file()
    synth = out / "sub-02" / "dwi" / f"sub-02_{OUT_SPACE}_desc-synth_dwi"
    for ext in (".nii.gz", ".bval", ".bvec", ".json"):
        assert Path(f"{synth}{ext}").is_file(), ext
    prepared = nib.load(out / "sub-02" / "dwi" / f"sub-02_{OUT_SPACE}_desc-preproc_dwi.nii.gz")
    assert nib.load(f"{synth}.nii.gz").shape == prepared.shape  # the acquired scheme
    validate(out)  # raises on any validator error
