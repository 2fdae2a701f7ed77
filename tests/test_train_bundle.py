"""train_bundle end to end on the phantom: a short CPU training lowers the validation loss and writes a
bundle that load_bundle() reads, with the ADC atlas, train.json, training.tsv and the loss curve."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_phydiff import __version__
from bids_phydiff.errors import EXIT_CANNOT_WRITE, OutputError
from bids_phydiff.model.bundle import load_bundle
from bids_phydiff.prep.adc import adc_atlas_from_files
from bids_phydiff.train.config import TrainConfig
from bids_phydiff.train.history import read_history_tsv
from bids_phydiff.phantom.prepared_runs import phantom_training_data
from bids_phydiff.model.bundle import CURVE_FILE
from bids_phydiff.train.run import data_sha256, train_bundle

CONFIG = TrainConfig(model="tiny", max_steps=40, adapter_steps=4, batch_size=8, warmup_steps=5, val_every=20,
                     val_samples=24, checkpoint_every=20, ema_decay=0.95, seed=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    runs, grid, tracts, _ = phantom_training_data(root, subjects=3, seed=1)
    out = root / "out" / "models" / "model-test"
    result = train_bundle(runs[:2], runs[2:], grid, out, root / "work", CONFIG, "cpu", tracts, False,
                          {"label": "test"}, progress=False)
    return root, runs, grid, tracts, out, result


def test_training_lowers_validation_loss_and_writes_a_loadable_bundle(trained):
    root, runs, grid, tracts, out, result = trained
    assert result.bundle == out and out.is_dir()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    metrics = result.metrics
    assert metrics["final_val_loss_per_stage"]["backbone"] < 0.95 * metrics["initial_val_loss"]
    bundle = load_bundle(out)
    assert bundle.grid == grid and bundle.b_shells == (1000.0, 2000.0, 3000.0)
    assert bundle.model.adapter is not None and bundle.model.config.adapter.in_channels == tracts.shape[3]
    assert bundle.metadata["label"] == "test" and bundle.normalisation["percentile"] == 99.5
    # the bundle holds the EMA weights
    ema = result.loop.ema.state_dict()
    for name, value in bundle.model.state_dict().items():
        assert torch.equal(value, ema[name].cpu()), name
    for name in ("adc_atlas.nii.gz", "train.json", "training.tsv", CURVE_FILE):
        assert (out / name).is_file(), name
    assert (out / CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adc_atlas_train_json_and_history(trained):
    root, runs, grid, tracts, out, result = trained
    img = nib.load(out / "adc_atlas.nii.gz")
    expected, shells, _ = adc_atlas_from_files([(r.dwi, r.bval, r.mask) for r in runs[:2]])
    assert img.shape == grid.shape + (3,) and np.allclose(img.affine, np.asarray(grid.affine))
    np.testing.assert_allclose(np.asarray(img.dataobj), expected, rtol=0, atol=1e-9)
    info = json.loads((out / "train.json").read_text())
    assert info["subjects"] == {"train": ["01", "02"], "validation": ["03"]}
    assert info["data_sha256"] == data_sha256(runs[:2]) != data_sha256(runs[1:])
    assert info["code_version"] == __version__ and info["seed"] == 5
    assert info["metrics"]["final_val_loss"] == pytest.approx(result.metrics["final_val_loss"])
    assert info["config"] == CONFIG.to_dict()
    rows = read_history_tsv(out / "training.tsv")
    assert [r["step"] for r in rows] == list(range(45))
    assert [r["stage"] for r in rows[1:]] == ["backbone"] * 40 + ["adapter"] * 4
    assert all(math.isfinite(r["train_loss"]) and r["lr"] > 0 for r in rows[1:])
    assert [r["step"] for r in rows if math.isfinite(r["val_loss"])] == [0, 20, 40, 44]


def test_the_shifted_passes_are_chosen_on_the_validation_loss_and_travel_with_the_bundle(trained):
    root, runs, grid, tracts, out, result = trained
    choice = json.loads((out / "train.json").read_text())["metrics"]["shifted_passes"]
    one, two = choice["val_loss"]["1"], choice["val_loss"]["2"]
    assert one == pytest.approx(result.metrics["final_val_loss"])  # the final EMA model's own loss
    assert two != one and choice["chosen"] == (2 if two < one else 1)
    assert load_bundle(out).model.shifts == choice["chosen"]


def test_existing_bundle_is_refused_and_resume_of_a_finished_run_rewrites_it(trained):
    root, runs, grid, tracts, out, result = trained
    with pytest.raises(OutputError) as info:
        train_bundle(runs[:2], runs[2:], grid, out, root / "work", CONFIG, "cpu", tracts, True, progress=False)
    assert info.value.exit_code == EXIT_CANNOT_WRITE
    again = train_bundle(runs[:2], runs[2:], grid, root / "again", root / "work", CONFIG, "cpu", tracts, True,
                         progress=False)
    assert again.loop.seconds < 1.0  # nothing left to train: restored from the final checkpoint
    for name, value in load_bundle(again.bundle).model.state_dict().items():
        assert torch.equal(value, load_bundle(out).model.state_dict()[name])
