"""The evaluation command on a tiny prepared phantom with briefly trained bundles, and the regression variant.

Prepared-like derivatives are written directly (the phantom subjects are aligned with the template, as in
:mod:`bids_phydiff.phantom.prepared_runs`), so no registration runs here.
"""

from __future__ import annotations

import csv
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_phydiff.eval import physics_baseline, series_metrics
from bids_phydiff.eval.__main__ import main
from bids_phydiff.eval.tensor_extrapolation import tensor_extrapolation
from bids_phydiff.bids.prepared import find_prepared
from bids_phydiff.model.bundle import load_bundle
from bids_phydiff.model.config import PhyDiffConfig, preset
from bids_phydiff.synth import slice_grid, synthesise
from bids_phydiff.synth.inputs import bundle_conditions
from bids_phydiff.train.config import TrainConfig
from bids_phydiff.train.normalise import Normaliser
from bids_phydiff.phantom.prepared_runs import phantom_training_data
from bids_phydiff.prep.gradients import read_fsl
from bids_phydiff.train.run import train_bundle

ALIGNED = dict(rotation_deg=0.0, translation_mm=0.0, deformation_mm=0.0, orientations=("RAS",))
PHANTOM = dict(subjects=3, resolution=6.0, seed=3, shells=(1000.0, 2000.0), directions=6, n_b0=1, **ALIGNED)
TRAIN = TrainConfig(model="tiny", max_steps=15, adapter_steps=0, batch_size=8, warmup_steps=3, val_every=0,
                    val_samples=8, checkpoint_every=0, ema_decay=0.5, seed=1, bf16=False)
REGRESSION = TRAIN.replace(model=preset("tiny").replace(adapter=None, objective="regression"), max_steps=40,
                           lr=2e-3, ema_decay=0.0)
SHELLS = {"1000", "2000", "all"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _as_derivatives(run, out_dir):
    """Copy a phantom-prepared run to the participant level's derivative names (space-Phantom, res-06)."""
    folder = out_dir / f"sub-{run.subject}" / "dwi"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"sub-{run.subject}_space-Phantom_res-06"
    for src, suffix in ((run.dwi, "_desc-preproc_dwi.nii.gz"), (run.bval, "_desc-preproc_dwi.bval"),
                        (run.bvec, "_desc-preproc_dwi.bvec"), (run.mask, "_desc-brain_mask.nii.gz"),
                        (run.b0ref, "_dwiref.nii.gz")):
        shutil.copyfile(src, f"{stem}{suffix}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcmd")
    runs, grid, _, dataset = phantom_training_data(root, in_plane=None, **PHANTOM)
    out = root / "out"
    for run in runs:
        _as_derivatives(run, out)
    meta = {"res_label": "06"}
    models = out / "models"
    diffusion = train_bundle(runs[:2], [], grid, models / "model-a", root / "work-a", TRAIN, "cpu", None,
                             metadata=meta, progress=False)
    regression = train_bundle(runs[:2], [], grid, models / "model-r", root / "work-r", REGRESSION, "cpu", None,
                              metadata=meta, progress=False)
    tables = root / "tables"
    code = main([str(out), "--model", f"a={diffusion.bundle}", f"r={regression.bundle}", "--subjects", "03",
                 "--with-acquired", "--sampler", "ddim", "--steps", "2", "--seed", "0", "--out", str(tables)])
    assert code == 0
    return {"root": root, "out": out, "a": diffusion, "r": regression, "tables": tables}


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_tables_have_a_row_per_method_and_shell(setup):
    tables = setup["tables"]
    rows = _rows(tables / "metrics_shells.tsv")
    got = {(r["reference"], r["method"], r["shell"]) for r in rows}
    methods = {"a", "r", "physics_baseline", "acquired"}
    assert got == {("acquired", m, s) for m in methods for s in SHELLS}
    assert len(rows) == len(got)
    assert all(int(r["volumes"]) == (12 if r["shell"] == "all" else 6) for r in rows)
    dti = _rows(tables / "dti.tsv")
    assert {r["method"] for r in dti} == methods and len(dti) == 4
    assert {r["region"] for r in dti} == {"fa>0.3"}  # without a truth: FA > 0.3 of the acquired data
    report = (tables / "evaluation.md").read_text()
    for method in methods:
        assert f"| {method} | 1000 |" in report
    for name in ("acquired_ssim.png", "acquired_psnr.png", "acquired_paper_ssim.png", "acquired_dti.png"):
        assert (tables / "plots" / name).stat().st_size > 1000


def test_baseline_row_equals_the_baseline_on_the_same_arrays(setup):
    run = find_prepared(setup["out"], ["03"])[0]
    b0 = np.asarray(nib.load(str(run.b0ref)).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(str(run.mask)).dataobj) > 0
    dwi = np.asarray(nib.load(str(run.dwi)).dataobj, dtype=np.float32)
    bvals = np.loadtxt(run.bval)
    bundle = load_bundle(setup["a"].bundle)
    atlas = np.asarray(nib.load(str(setup["a"].bundle / "adc_atlas.nii.gz")).dataobj, dtype=np.float32)
    expected = series_metrics(physics_baseline(b0, bvals, atlas, bundle.b_shells, mask=mask), dwi, bvals, mask,
                              scale=Normaliser.from_b0(b0, mask).scale)
    got = [r for r in _rows(setup["tables"] / "metrics_volumes.tsv") if r["method"] == "physics_baseline"]
    assert [int(r["volume"]) for r in got] == [e["volume"] for e in expected]
    for row, exp in zip(got, expected):
        for metric in ("psnr", "ssim", "nrmse", "paper_psnr", "paper_ssim"):
            assert float(row[metric]) == pytest.approx(exp[metric], rel=1e-5)
    # and the model is not the baseline
    model_rows = [r for r in _rows(setup["tables"] / "metrics_volumes.tsv") if r["method"] == "a"]
    assert any(abs(float(m["psnr"]) - float(b["psnr"])) > 1e-3 for m, b in zip(model_rows, got))


def test_the_reference_against_itself_has_zero_dti_error_and_perfect_images(setup):
    row = next(r for r in _rows(setup["tables"] / "dti.tsv") if r["method"] == "acquired")
    for key in ("fa_mae", "fa_bias", "md_mae", "angle_mean", "angle_median"):
        assert float(row[key]) == 0.0
    assert int(row["voxels"]) > 0
    other = next(r for r in _rows(setup["tables"] / "dti.tsv") if r["method"] == "physics_baseline")
    assert float(other["fa_mae"]) > 0.01  # an isotropic baseline has a real FA error
    shells = [r for r in _rows(setup["tables"] / "metrics_shells.tsv") if r["method"] == "acquired"]
    assert all(r["psnr_mean"] == "inf" and float(r["ssim_mean"]) == 1.0 for r in shells)


@pytest.mark.parametrize("argv, code, words", [
    ([], 64, "--model"),
    (["{out}", "--model", "nonsense", "--out", "{t}"], 64, "NAME=BUNDLE"),
    (["{out}", "--model", "a={a}", "a={a}", "--out", "{t}"], 64, "unique"),
    (["{out}", "--model", "physics_baseline={a}", "--out", "{t}"], 64, "reserved"),
    (["{out}", "--model", "a={a}", "--out", "{t}", "--strength", "0"], 64, "strength"),
    (["{missing}", "--model", "a={a}", "--out", "{t}"], 66, "output folder not found"),
    (["{out}", "--model", "a={missing}", "--out", "{t}"], 66, "model bundle folder not found"),
    (["{out}", "--model", "a={a}", "--subjects", "99", "--out", "{t}"], 66, "sub-99"),
    (["{out}", "--model", "a={a}", "--subjects", "03", "--truth-dir", "{missing}", "--out", "{t}"], 66, "--truth-dir"),
])
def test_bad_arguments_exit_with_clear_messages(setup, capsys, argv, code, words):
    paths = {"out": setup["out"], "a": setup["a"].bundle, "t": setup["root"] / "bad-tables",
             "missing": setup["root"] / "missing"}
    assert main([a.format(**paths) for a in argv]) == code
    assert words in capsys.readouterr().err


def test_a_corrupt_bundle_is_a_data_error(setup, capsys, tmp_path):
    broken = tmp_path / "model-broken"
    shutil.copytree(setup["a"].bundle, broken)
    (broken / "weights.safetensors").write_bytes(b"not weights")
    code = main([str(setup["out"]), "--model", f"b={broken}", "--subjects", "03", "--out", str(tmp_path / "t")])
    assert code == 65
    assert "model-broken" in capsys.readouterr().err


def test_regression_variant_trains_and_synthesises_deterministically(setup):
    result = setup["r"]
    losses = [r["train_loss"] for r in result.history if r["stage"] == "backbone" and math.isfinite(r["train_loss"])]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    bundle = load_bundle(result.bundle)
    assert bundle.model.config.objective == "regression"
    assert PhyDiffConfig.from_dict(bundle.model.config.to_dict()) == bundle.model.config
    run = find_prepared(setup["out"], ["03"])[0]
    b0 = np.asarray(nib.load(str(run.b0ref)).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(str(run.mask)).dataobj) > 0
    cond = bundle_conditions(bundle)
    scheme = (np.array([0.0, 1000.0, 2000.0]), np.array([[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]))
    grid = slice_grid(bundle.grid, bundle.model)
    one = synthesise(bundle.model, b0, mask, scheme, cond.adc_atlas, cond.shells, grid, seed=0).mean
    two = synthesise(bundle.model, b0, mask, scheme, cond.adc_atlas, cond.shells, grid, seed=7).mean
    np.testing.assert_array_equal(one, two)
    assert one[..., 1][mask].std() > 0
    # the model's own sample() without a seed is deterministic too
    x = torch.linspace(-1, 1, 2 * 24 * 32).reshape(2, 1, 24, 32)
    args = (x, torch.tensor([1000.0, 2000.0]), torch.eye(3)[:2], torch.tensor([0.3, 0.6]), None)
    torch.testing.assert_close(bundle.model.sample(*args), bundle.model.sample(*args), rtol=0, atol=0)
    # and the evaluation evaluated it
    assert {"r"} <= {r["method"] for r in _rows(setup["tables"] / "dti.tsv")}


def test_the_default_objective_keeps_old_bundle_configs_loading():
    config = preset("tiny").to_dict()
    config.pop("objective")
    assert PhyDiffConfig.from_dict(config).objective == "eps"
    with pytest.raises(ValueError, match="objective"):
        preset("tiny").replace(objective="score")


def test_a_context_bundle_is_compared_with_the_tensor_extrapolation_of_its_context_shell(setup):
    """A q-space completion bundle (context dti from b = 1000) gets the tensor extrapolation of that shell as
    a method beside the physics baseline, equal to the baseline computed on the same arrays."""
    root = setup["root"]
    runs = find_prepared(setup["out"])
    context = TRAIN.replace(model=preset("tiny").replace(adapter=None, context="dti"), max_steps=3,
                            context_shells=(1000,))
    bundle = train_bundle(runs[:2], [], load_bundle(setup["a"].bundle).grid, root / "models-ctx" / "model-c",
                          root / "work-c", context, "cpu", None, metadata={"res_label": "06"}, progress=False).bundle
    tables = root / "tables-ctx"
    assert main([str(setup["out"]), "--model", f"c={bundle}", "--subjects", "03", "--sampler", "ddim", "--steps", "1",
                 "--out", str(tables)]) == 0
    rows = _rows(tables / "metrics_volumes.tsv")
    assert {r["method"] for r in rows} == {"c", "physics_baseline", "tensor_extrapolation"}
    run = runs[2]
    mask = np.asarray(nib.load(str(run.mask)).dataobj) > 0
    dwi = np.asarray(nib.load(str(run.dwi)).dataobj, dtype=np.float32)
    table = read_fsl(run.bval, run.bvec)
    keep = table.bvals < 1500
    b0 = np.asarray(nib.load(str(run.b0ref)).dataobj, dtype=np.float32)
    expected = series_metrics(tensor_extrapolation(dwi[..., keep], table.bvals[keep], table.bvecs[keep], mask,
                                                   table.bvals, table.bvecs, shells=[1000.0]),
                              dwi, table.bvals, mask, scale=Normaliser.from_b0(b0, mask).scale)
    got = [r for r in rows if r["method"] == "tensor_extrapolation"]
    assert [int(r["volume"]) for r in got] == [e["volume"] for e in expected]
    for row, exp in zip(got, expected):
        assert float(row["psnr"]) == pytest.approx(exp["psnr"], rel=1e-5)
    at = {r["shell"]: float(r["psnr_mean"]) for r in _rows(tables / "metrics_shells.tsv")
          if r["method"] == "tensor_extrapolation"}
    assert at["1000"] > at["2000"]  # the fitted shell itself is reproduced best
    assert "`tensor_extrapolation` = S0 exp(-b g^T D g)" in (tables / "evaluation.md").read_text()
