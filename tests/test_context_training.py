"""A context model (issue 19) through training and synthesis at tiny scale on the phantom: each sample takes the
context of one acquired shell (or of the shells the training config names, refusing a run without one); the bundle
records the context; synthesis builds it from the run's own shell and refuses a run that lacks every shell the
bundle takes its context from (exit 65, naming the run)."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from bids_phydiff.errors import EXIT_DATA, InputDataError
from bids_phydiff.model.sampling import SamplerConfig
from bids_phydiff.phantom.prepared_runs import phantom_training_data
from bids_phydiff.prep.context import context_maps
from bids_phydiff.prep.gradients import GradientTable, read_fsl, write_fsl
from bids_phydiff.synth.run import load_bundle, load_subject, run_context, synthesise_run
from bids_phydiff.synth.scheme import TargetScheme
from bids_phydiff.train.config import TrainConfig
from bids_phydiff.train.dataset import SliceDataset, SliceGrid
from bids_phydiff.train.normalise import Normaliser
from bids_phydiff.train.run import train_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = TrainConfig(model=dataclasses.replace(TrainConfig().model_config(), adapter=None, context="dti"),
                     max_steps=3, adapter_steps=0, batch_size=4, warmup_steps=1, val_every=0, val_samples=4,
                     checkpoint_every=0, seed=2, bf16=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("context")
    runs, grid, _, _ = phantom_training_data(root, subjects=2, seed=1)
    out = root / "models" / "model-ctx"
    result = train_bundle(runs[:1], runs[1:], grid, out, root / "work", CONFIG, "cpu", None, progress=False)
    return root, runs, grid, out, result


def test_each_sample_carries_the_context_of_one_acquired_shell(trained):
    root, runs, grid, out, _ = trained
    sgrid = SliceGrid.for_multiple(grid.shape, 16)
    atlas, shells = np.zeros(grid.shape + (3,), np.float32), np.array([1000.0, 2000.0, 3000.0])
    plain = SliceDataset(runs[:1], sgrid, root / "cache2", atlas, shells)
    ctx = SliceDataset(runs[:1], sgrid, root / "cache2", atlas, shells, context="dti")
    assert len(ctx) == 3 * len(plain) and "context" not in plain[0]
    seen = set()
    for i in [*range(3), *range(0, len(ctx), max(len(ctx) // 20, 1))]:
        sample = ctx[i]
        assert sample["context"].shape == (7, *sgrid.padded) and sample["b0"].shape == (1, *sgrid.padded)
        seen.add(float(sample["context_bval"]))
    assert seen == {1000.0, 2000.0, 3000.0}
    # the maps are the run's own, for the drawn shell, with the dti S0 on the run's intensity scale
    run = runs[0]
    r, v, z, c = (int(x) for x in ctx.index[len(ctx) // 2])
    sample = ctx[len(ctx) // 2]
    table = read_fsl(run.bval, run.bvec)
    mask = np.asarray(nib.load(run.mask).dataobj) > 0
    scale = Normaliser.from_b0(np.asarray(nib.load(run.b0ref).dataobj), mask).scale
    expected = context_maps("dti", np.asarray(nib.load(run.dwi).dataobj), table.bvals, table.bvecs, mask,
                            shells=[float(sample["context_bval"])], scale=scale)
    np.testing.assert_allclose(sgrid.crop(sample["context"].numpy()), expected[:, :, z].transpose(2, 0, 1),
                               rtol=1e-5, atol=1e-6)


def test_the_bundle_records_its_context_and_synthesis_builds_it_from_the_run(trained):
    root, runs, grid, out, result = trained
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["context"] == "dti" and config["model"]["backbone"]["in_channels"] == 11
    assert config["metadata"]["context"] == {"kind": "dti", "shells": [1000.0, 2000.0, 3000.0]}
    loaded = load_bundle(out)
    subject = load_subject(runs[1], with_dwi=False)
    maps = run_context(loaded, subject)
    assert maps.shape == grid.shape + (7,) and np.all(maps[~subject.mask] == 0)
    scheme = TargetScheme(np.array([0.0, 2000.0, 3000.0]), np.array([[0, 0, 0], [1.0, 0, 0], [0, 0.6, 0.8]]), "t")
    synthesis, _ = synthesise_run(loaded, subject, scheme, SamplerConfig(method="ddim", steps=2), seed=0,
                                  progress=False)
    assert synthesis.mean.shape == grid.shape + (3,) and np.all(np.isfinite(synthesis.mean))


def test_synthesis_refuses_a_run_without_the_context_shell(trained, tmp_path):
    root, runs, grid, out, _ = trained
    config = json.loads((out / "config.json").read_text())
    config["metadata"]["context"]["shells"] = [1000.0]  # a bundle that takes its context from b = 1000 only
    bundle = tmp_path / "model-b1000"
    bundle.mkdir()
    for f in out.iterdir():
        (bundle / f.name).write_bytes(f.read_bytes())
    (bundle / "config.json").write_text(json.dumps(config))
    run = runs[1]
    table = read_fsl(run.bval, run.bvec)
    keep = table.bvals != 1000  # a run scanned at b = 2000 and 3000 only
    img = nib.load(run.dwi)
    stem = tmp_path / "sub-02_desc-noshell"
    cut = dataclasses.replace(run, dwi=stem.with_name(stem.name + "_dwi.nii.gz"),
                              bval=stem.with_name(stem.name + "_dwi.bval"), bvec=stem.with_name(stem.name + "_dwi.bvec"))
    nib.Nifti1Image(np.asarray(img.dataobj)[..., keep], img.affine).to_filename(cut.dwi)
    write_fsl(GradientTable(table.bvals[keep], table.bvecs[keep]), cut.bval, cut.bvec)
    with pytest.raises(InputDataError) as info:
        run_context(load_bundle(bundle), load_subject(cut, with_dwi=False))
    assert info.value.exit_code == EXIT_DATA == 65
    message = str(info.value)
    assert str(cut.dwi) in message and "b = [1000.0]" in message and "[2000.0, 3000.0]" in message


def test_training_takes_the_context_from_the_configured_shells_only(trained):
    root, runs, grid, _, _ = trained
    out = root / "models" / "model-ctx1000"
    config = CONFIG.replace(context_shells=(1000,), max_steps=1)
    train_bundle(runs[:1], runs[1:], grid, out, root / "work1000", config, "cpu", None, progress=False)
    meta = json.loads((out / "config.json").read_text())["metadata"]
    assert meta["context"] == {"kind": "dti", "shells": [1000.0]}
    assert json.loads((out / "train.json").read_text())["config"]["context_shells"] == [1000.0]


def test_training_refuses_a_run_without_a_configured_context_shell(trained):
    root, runs, grid, _, _ = trained
    out = root / "models" / "model-ctx5000"
    config = CONFIG.replace(context_shells=(5000,))  # the phantom runs have b = 1000, 2000, 3000
    with pytest.raises(InputDataError) as info:
        train_bundle(runs[:1], runs[1:], grid, out, root / "work5000", config, "cpu", None, progress=False)
    assert info.value.exit_code == EXIT_DATA == 65
    assert str(runs[0].dwi) in str(info.value) and "5000" in str(info.value)
    assert not out.exists()
