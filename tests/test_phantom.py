"""The phantom generator: BIDS validity, TemplateFlow layout, physics of the signal, ground truth, determinism."""

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
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel
from dipy.sims.voxel import multi_tensor
from scipy.ndimage import binary_dilation

from bids_phydiff.errors import OutputError
from bids_phydiff.phantom import PhantomConfig, PhantomConfigError, generate, noise_free_signal, read_truth
from bids_phydiff.phantom.anatomy import TISSUES, evaluate
from bids_phydiff.phantom.deformation import Deformation
from bids_phydiff.phantom.signal import multi_compartment_signal
from bids_phydiff.prep.gradients import read_fsl

CONFIG = PhantomConfig(subjects=3, resolution=4.0, seed=0, without_t1w=("03",))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("phantom") / "bids", CONFIG)


def _validator() -> str:
    exe = shutil.which("bids-validator-deno") or str(Path(sys.executable).parent / "bids-validator-deno")
    assert Path(exe).exists(), "bids-validator-deno is a pinned dependency and must be installed"
    return exe


def _validate(root: Path) -> list[dict]:
    proc = subprocess.run([_validator(), str(root), "--format", "json"], capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert proc.returncode == 0, errors
    return errors


def _dwi(phantom, subject, session=None):
    path = phantom.dwi_files(subject, session)[0]
    table = read_fsl(str(path).replace(".nii.gz", ".bval"), str(path).replace(".nii.gz", ".bvec"))
    return nib.load(path), table


def _fsl_to_world(bvecs, affine):
    """FSL b-vectors -> world, written out from the FSL rule (x negated for det > 0), not via prep.gradients."""
    linear = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    v = np.array(bvecs, dtype=float)
    if np.linalg.det(linear) > 0:
        v[:, 0] *= -1
    return v @ linear.T


def _angles(a, b):
    cos = np.abs(np.sum(a * b, axis=-1)) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))


def test_dataset_is_bids_valid_with_expected_files(phantom):
    assert _validate(phantom.bids_dir) == []
    root = phantom.bids_dir
    assert phantom.subjects == ("01", "02", "03")
    for sub in phantom.subjects:
        dwi = root / f"sub-{sub}" / "dwi" / f"sub-{sub}_dwi.nii.gz"
        img = nib.load(dwi)
        table = read_fsl(dwi.with_name(f"sub-{sub}_dwi.bval"), dwi.with_name(f"sub-{sub}_dwi.bvec"))
        assert img.shape[3] == len(table) == CONFIG.n_b0 + CONFIG.directions * len(CONFIG.shells)
        assert table.b0_mask().sum() == CONFIG.n_b0
        np.testing.assert_array_equal(table.shells(), CONFIG.shells)
        sidecar = json.loads(dwi.with_name(f"sub-{sub}_dwi.json").read_text())
        assert sidecar["PhaseEncodingDirection"] and sidecar["TotalReadoutTime"] > 0
        t1w = root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
        assert t1w.exists() == (sub not in CONFIG.without_t1w)


def test_sessions_runs_and_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "bids_phydiff.phantom", str(out), "--subjects", "2", "--resolution", "6",
           "--seed", "5", "--directions", "6", "--shells", "1000,2500", "--sessions", "2", "--runs", "2",
           "--without-t1w", "02"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "01, 02" in proc.stdout
    assert _validate(out) == []
    dwi = sorted(p.name for p in out.glob("sub-*/ses-*/dwi/*_dwi.nii.gz"))
    assert dwi == [f"sub-{s}_ses-{t}_run-{r}_dwi.nii.gz" for s in ("01", "02") for t in "12" for r in "12"]
    anat = sorted(p.name for p in out.glob("sub-*/ses-*/anat/*_T1w.nii.gz"))
    assert anat == ["sub-01_ses-1_T1w.nii.gz", "sub-01_ses-2_T1w.nii.gz"]
    stem = out / "sub-01/ses-1/dwi/sub-01_ses-1_run-1_dwi"
    table = read_fsl(f"{stem}.bval", f"{stem}.bvec")
    np.testing.assert_array_equal(table.shells(), [1000, 2500])
    # sessions: same anatomy, new head position; runs: same position, new noise
    s1 = read_truth(out / "sourcedata/truth/sub-01/ses-1").metadata["transform_to_template"]
    s2 = read_truth(out / "sourcedata/truth/sub-01/ses-2").metadata["transform_to_template"]
    assert s1["amplitudes_mm"] == s2["amplitudes_mm"] and s1["rotation"] != s2["rotation"]
    run1, run2 = (np.asarray(nib.load(out / f"sub-01/ses-1/dwi/sub-01_ses-1_run-{r}_dwi.nii.gz").dataobj) for r in "12")
    assert run1.shape == run2.shape and not np.array_equal(run1, run2)
    # refusals with the BIDS-Apps exit codes: a non-empty output folder (73), an impossible setting (64)
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 73
    bad = subprocess.run([sys.executable, "-m", "bids_phydiff.phantom", str(tmp_path / "x"), "--subjects", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 64 and "subjects" in bad.stderr and not (tmp_path / "x").exists()


def test_config_rejects_impossible_settings():
    with pytest.raises(PhantomConfigError, match="without_t1w"):
        PhantomConfig(subjects=2, without_t1w=("03",))
    with pytest.raises(PhantomConfigError, match="template resolutions"):
        PhantomConfig(template_resolutions=(1.5,))
    assert PhantomConfig(subjects=2, without_t1w=("sub-02",)).without_t1w == ("02",)


def test_noise_free_b0_equals_s0_and_signal_falls_with_b(phantom):
    for sub in phantom.subjects:
        img, table = _dwi(phantom, sub)
        truth = read_truth(phantom.truth_dir / f"sub-{sub}")
        clean = noise_free_signal(phantom.truth_dir, sub, table.bvals, table.bvecs)
        assert clean.shape == img.shape
        b0 = clean[..., table.b0_mask()]
        np.testing.assert_allclose(b0, np.repeat(truth.s0[..., None], CONFIG.n_b0, -1), rtol=1e-5)
        brain = truth.s0 > 0
        noisy = np.asarray(img.dataobj, dtype=float)
        for data in (clean, noisy):
            means = [data[brain][:, np.abs(table.bvals - b) < 50].mean() for b in (0, *CONFIG.shells)]
            assert np.all(np.diff(means) < 0), means
        # CSF is brightest in b0
        labels = truth.tissue_labels()
        s0_by_tissue = [truth.s0[labels == i].mean() for i in (1, 2, 3)]
        assert s0_by_tissue[0] > s0_by_tissue[1] > s0_by_tissue[2]


def test_rician_noise_has_the_requested_sigma(phantom):
    img, _ = _dwi(phantom, "01")
    truth = read_truth(phantom.truth_dir / "sub-01")
    background = ~binary_dilation(truth.s0 > 0, iterations=2)
    magnitude = np.asarray(img.dataobj, dtype=float)[background]
    sigma = np.sqrt(np.mean(magnitude**2) / 2.0)  # Rayleigh: E[M^2] = 2 sigma^2
    expected = truth.metadata["sigma"]
    assert expected == pytest.approx(600.0 / CONFIG.snr)
    assert sigma == pytest.approx(expected, rel=0.05)


def _dti(phantom, sub):
    img, table = _dwi(phantom, sub)
    truth = read_truth(phantom.truth_dir / f"sub-{sub}")
    clean = noise_free_signal(phantom.truth_dir, sub, table.bvals, table.bvecs)
    fit = TensorModel(gradient_table(table.bvals, bvecs=table.bvecs)).fit(clean, mask=truth.s0 > 0)
    return img, truth, fit


@pytest.mark.parametrize("subject, orientation", [("01", "RAS"), ("02", "LAS")])
def test_dti_recovers_bundle_direction_and_fa(phantom, subject, orientation):
    img, truth, fit = _dti(phantom, subject)
    assert "".join(nib.aff2axcodes(img.affine)) == orientation
    k = len(truth.bundles)
    fibres = truth.fractions[..., :k]
    sensitive = False
    for i, name in enumerate(truth.bundles):
        single = (fibres[..., i] > 0.6) & (np.delete(fibres, i, axis=-1).sum(-1) < 0.01)
        assert single.sum() >= 20, name
        evecs = fit.evecs[..., 0][single]
        true = truth.directions[..., i, :][single]
        angle = _angles(_fsl_to_world(evecs, img.affine), true)
        assert angle.max() < 10.0, (name, angle.max())
        assert fit.fa[single].min() > 0.5, name
        wrong = _fsl_to_world(evecs * np.array([-1.0, 1.0, 1.0]), img.affine)  # the other x convention
        sensitive |= bool(_angles(wrong, true).max() > 20)
    assert sensitive, "no bundle is oblique enough for the x-flip convention to matter"


def test_csf_mean_diffusivity(phantom):
    _, truth, fit = _dti(phantom, "02")
    csf = truth.tissue[..., TISSUES.index("CSF")] > 0.95
    assert csf.sum() >= 20
    assert fit.md[csf].mean() == pytest.approx(3.0e-3, rel=0.1)
    wm = truth.tissue[..., TISSUES.index("WM")] > 0.95
    assert 0.5e-3 < fit.md[wm].mean() < 1.0e-3


def test_truth_directions_follow_the_deformed_anatomy(phantom):
    for sub in phantom.subjects:
        truth = read_truth(phantom.truth_dir / f"sub-{sub}")
        phi = Deformation.from_json(truth.metadata["transform_to_template"])
        idx = np.indices(truth.shape).reshape(3, -1).T
        points = idx @ truth.affine[:3, :3].T + truth.affine[:3, 3]
        jac = np.eye(3) + phi.displacement_gradient(points)
        assert np.linalg.det(jac).min() > 0.5  # invertible everywhere
        k = len(truth.bundles)
        fibres = truth.fractions.reshape(-1, len(truth.compartments))[:, :k]
        directions = truth.directions.reshape(-1, k, 3)
        for i in range(k):
            sel = np.flatnonzero(fibres[:, i] > 0.3)
            y = phi.to_template(points[sel])
            step = phi.to_template(points[sel] + 0.5 * directions[sel, i]) - y
            tangent = evaluate(y, 4.0).tangents[:, i]
            assert _angles(step, tangent).max() < 10.0
        # the whole head is inside the field of view
        s0 = truth.s0
        assert max(np.abs(s0[[0, -1]]).max(), np.abs(s0[:, [0, -1]]).max(), np.abs(s0[:, :, [0, -1]]).max()) == 0


def test_subjects_differ_in_pose_and_storage_orientation(phantom):
    poses = []
    for i, sub in enumerate(phantom.subjects):
        meta = read_truth(phantom.truth_dir / f"sub-{sub}").metadata
        transform = meta["transform_to_template"]
        assert np.all(np.abs(transform["rotation_angles_deg"]) <= CONFIG.rotation_deg + 1e-9)
        assert np.all(np.abs(transform["translation_mm"]) <= CONFIG.translation_mm + 1e-9)
        assert meta["template"] == "Phantom" and meta["seed"] == CONFIG.seed and meta["snr"] == CONFIG.snr
        img, _ = _dwi(phantom, sub)
        assert (np.linalg.det(img.affine[:3, :3]) < 0) == (meta["dwi_orientation"] == "LAS")
        poses.append(transform["rotation_angles_deg"])
    assert len({tuple(np.round(p, 3)) for p in poses}) == len(poses)
    rows = (phantom.bids_dir / "participants.tsv").read_text().split("\n")[1:3]
    assert rows == ["sub-01\tRAS", "sub-02\tLAS"]


def test_t1w_is_aligned_with_dwi_and_has_t1_contrast(phantom):
    for sub in ("01", "02"):
        truth = read_truth(phantom.truth_dir / f"sub-{sub}")
        t1w = nib.load(phantom.bids_dir / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
        assert np.allclose(t1w.header.get_zooms(), CONFIG.resolution / 2)
        data = np.asarray(t1w.dataobj, dtype=float)
        means = []
        for tissue in ("WM", "GM", "CSF"):
            pure = np.argwhere(truth.tissue[..., TISSUES.index(tissue)] > 0.95)
            world = pure @ truth.affine[:3, :3].T + truth.affine[:3, 3]
            vox = np.rint((world - t1w.affine[:3, 3]) @ np.linalg.inv(t1w.affine[:3, :3]).T).astype(int)
            means.append(data[tuple(vox.T)].mean())
        assert means[0] > means[1] > means[2], means


def test_vectorised_signal_matches_dipy_multi_tensor(phantom):
    _, table = _dwi(phantom, "01")
    truth = read_truth(phantom.truth_dir / "sub-01")
    gradients = _fsl_to_world(table.bvecs, truth.affine)
    gtab = gradient_table(table.bvals, bvecs=gradients)
    k = len(truth.bundles)
    fibres = truth.fractions[..., :k]
    picks = [
        np.argwhere((fibres > 0.2).sum(-1) >= 2)[0],  # crossing
        np.argwhere(fibres[..., 0] > 0.7)[0],  # single bundle
        np.argwhere(truth.tissue[..., 1] > 0.95)[0],  # CSF
        np.argwhere((truth.tissue[..., 2] > 0.3) & (truth.tissue[..., 3] > 0.3))[0],  # GM/WM partial volume
    ]
    n_comp = len(truth.compartments)
    for voxel in picks:
        v = tuple(voxel)
        dirs = np.zeros((n_comp, 3))
        dirs[:k] = truth.directions[v]
        ours = multi_compartment_signal(table.bvals, gradients, truth.s0[v][None], truth.fractions[v][None],
                                        dirs[None], truth.axial, truth.radial)[0]
        present = truth.fractions[v] > 0
        sticks = np.where(np.linalg.norm(dirs, axis=1, keepdims=True) > 0, dirs, [1.0, 0.0, 0.0])[present]
        sticks /= np.linalg.norm(sticks, axis=1, keepdims=True)
        mevals = np.stack([truth.axial, truth.radial, truth.radial], axis=1)[present]
        percent = 100.0 * truth.fractions[v][present] / truth.fractions[v][present].sum()
        theirs, _ = multi_tensor(gtab, mevals, S0=float(truth.s0[v]), angles=sticks, fractions=percent, snr=None)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    # and the stored subject DWI is that signal plus noise
    img, _ = _dwi(phantom, "01")
    brain = truth.s0 > 0
    clean = noise_free_signal(phantom.truth_dir, "01", table.bvals, table.bvecs)
    residual = np.asarray(img.dataobj, dtype=float)[brain] - clean[brain]
    assert abs(np.median(residual[:, table.b0_mask()])) < 2.0


def test_template_and_atlas_load_offline_with_templateflow(phantom):
    tpl = phantom.templateflow_home / "tpl-Phantom"
    expected = tpl / "tpl-Phantom_res-04_T1w.nii.gz"
    code = (
        "from templateflow import api; "
        "print(api.get('Phantom', resolution=4, suffix='T1w', desc=None)); "
        "print(api.get('Phantom', resolution=4, atlas='Tracts', suffix='probseg'))"
    )
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(phantom.templateflow_home), "TEMPLATEFLOW_AUTOUPDATE": "0"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(expected), str(phantom.atlas_probseg)]

    description = json.loads((tpl / "template_description.json").read_text())
    t1w = nib.load(expected)
    res = description["res"]["04"]
    assert description["Identifier"] == "Phantom"
    assert res["shape"] == list(t1w.shape) and np.allclose(res["origin"], t1w.affine[:3, 3])
    assert all(30 <= n <= 42 for n in t1w.shape)

    dseg = np.asarray(nib.load(phantom.atlas_dseg).dataobj)
    prob = nib.load(phantom.atlas_probseg).get_fdata()
    tsv = phantom.atlas_dseg.with_suffix("").with_suffix(".tsv")
    names = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert names[0] == ["index", "name"] and len(names) - 1 == prob.shape[3] >= 3
    assert set(np.unique(dseg)) == set(range(prob.shape[3] + 1))
    assert prob.min() >= 0 and prob.max() <= 1
    labelled = dseg > 0
    np.testing.assert_array_equal(np.argmax(prob, axis=-1)[labelled] + 1, dseg[labelled])
    assert np.all(prob.max(-1)[~labelled] < 0.5)
    # at least three bundles cross another one somewhere
    overlap = (prob[..., :, None] > 0.5) & (prob[..., None, :] > 0.5)
    crossing = overlap.sum(axis=(0, 1, 2))
    np.fill_diagonal(crossing, 0)
    assert (crossing.sum(axis=1) > 0).sum() >= 3, crossing

    tissue = {
        lab: nib.load(tpl / f"tpl-Phantom_res-04_label-{lab}_probseg.nii.gz").get_fdata() for lab in ("WM", "GM", "CSF")
    }
    mask = np.asarray(nib.load(tpl / "tpl-Phantom_res-04_desc-brain_mask.nii.gz").dataobj) > 0
    total = sum(tissue.values())
    assert total.max() <= 1 + 1e-5 and np.all(total[mask] >= 0.5)
    t1 = t1w.get_fdata()
    assert t1[tissue["WM"] > 0.95].mean() > t1[tissue["GM"] > 0.6].mean() > t1[tissue["CSF"] > 0.95].mean()
    b0 = nib.load(tpl / "tpl-Phantom_res-04_desc-b0_dwi.nii.gz").get_fdata()
    np.testing.assert_allclose(b0, read_truth(phantom.truth_dir / "template" / "res-04").s0, rtol=1e-6)


def test_same_seed_same_data_other_seed_other_subjects(phantom, tmp_path):
    again = generate(tmp_path / "same", PhantomConfig(subjects=1, resolution=4.0, seed=0))
    other = generate(tmp_path / "other", PhantomConfig(subjects=1, resolution=4.0, seed=1))
    for rel in ("sub-01/dwi/sub-01_dwi.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz", "sourcedata/truth/sub-01/S0.nii.gz"):
        assert (again.bids_dir / rel).read_bytes() == (phantom.bids_dir / rel).read_bytes(), rel
        a = np.asarray(nib.load(phantom.bids_dir / rel).dataobj)
        b = np.asarray(nib.load(other.bids_dir / rel).dataobj)
        assert not np.array_equal(a, b), rel
    bvec = "sub-01/dwi/sub-01_dwi.bvec"
    assert (again.bids_dir / bvec).read_text() == (phantom.bids_dir / bvec).read_text()


def test_generate_refuses_a_foreign_folder_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        generate(foreign, PhantomConfig(subjects=1, resolution=8.0, directions=6, shells=(1000,)))
    with pytest.raises(OutputError, match="refusing"):
        generate(foreign, PhantomConfig(subjects=1, resolution=8.0, directions=6, shells=(1000,)), overwrite=True)
    assert (foreign / "keep.txt").read_text() == "mine"
    out = tmp_path / "mine"
    generate(out, PhantomConfig(subjects=2, resolution=8.0, directions=6, shells=(1000,)))
    ds = generate(out, PhantomConfig(subjects=1, resolution=8.0, directions=6, shells=(1000,)), overwrite=True)
    assert ds.subjects == ("01",) and not (out / "sub-02").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_motion_moves_each_volume_and_keeps_the_scanner_bvecs(phantom, tmp_path):
    """--motion: per-volume truth under sourcedata/truth, the .bvec as the scanner wrote it (the nominal
    scheme), and a moved volume equal to the still head seen through the inverse motion with the gradient
    turned back into the head's frame (R^T g)."""
    from bids_phydiff.phantom.dataset import gradient_scheme
    from bids_phydiff.phantom.grid import Grid
    from bids_phydiff.phantom.motion import moved
    from bids_phydiff.phantom.signal import TissueModel
    from bids_phydiff.phantom.truth import render_truth
    from bids_phydiff.prep.gradients import fsl_to_world
    from bids_phydiff.prep.motion import parameters_of, read_confounds, rigid_matrix

    config = PhantomConfig(subjects=1, resolution=8.0, seed=2, directions=6, shells=(1000.0,), motion_mm=3.0)
    ds = generate(tmp_path / "moved", config)
    assert _validate(ds.bids_dir) == []
    truth_tsv = ds.truth_dir / "sub-01" / "sub-01_motion.tsv"
    params = parameters_of(read_confounds(truth_tsv))
    n = config.n_b0 + config.directions
    assert params.shape == (n, 6) and np.all(params[0] == 0)
    assert 1.5 <= np.abs(params[:, :3]).max() <= 3.0 + 1e-6
    assert np.deg2rad(1.5) <= np.abs(params[:, 3:]).max() <= np.deg2rad(3.0) + 1e-9
    assert truth_tsv.with_suffix(".json").is_file()
    img, table = _dwi(ds, "01")
    np.testing.assert_allclose(table.bvecs, gradient_scheme(config).bvecs, atol=1e-6)  # not rotated

    still_truth = read_truth(ds.truth_dir / "sub-01")
    deformation = Deformation.from_json(still_truth.metadata["transform_to_template"])
    affine, shape = still_truth.affine, still_truth.shape
    v = int(np.argmax(np.abs(params[:, 3:]).sum(axis=1) * (table.bvals > 0)))
    m = rigid_matrix(params[v])
    g = fsl_to_world(table.bvecs[v:v + 1], affine)
    direct = render_truth(Grid(shape, affine), moved(deformation, params[v]), TissueModel())
    seen = render_truth(Grid(shape, np.linalg.inv(m) @ affine), deformation, TissueModel())
    a = direct.signal_world(table.bvals[v:v + 1], g)
    b = seen.signal_world(table.bvals[v:v + 1], g @ m[:3, :3])  # rows: (R^T g)^T = g^T R
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-2)
    unturned = seen.signal_world(table.bvals[v:v + 1], g)
    assert np.abs(a - unturned).max() > 10 * np.abs(a - b).max()
    # the acquired volume is that signal plus noise
    sigma = still_truth.metadata["sigma"]
    residual = np.asarray(img.dataobj[..., v], dtype=float) - a[..., 0]
    assert abs(np.median(residual[a[..., 0] > 20 * sigma])) < sigma

    # default: no motion, no motion truth
    assert not list(phantom.truth_dir.rglob("*_motion.tsv"))


def test_cli_motion_option():
    from bids_phydiff.phantom.__main__ import build_parser

    assert build_parser().parse_args(["out", "--motion", "2.5"]).motion_mm == 2.5
    assert build_parser().parse_args(["out"]).motion_mm == 0.0
    with pytest.raises(PhantomConfigError, match="motion_mm"):
        PhantomConfig(motion_mm=11)
