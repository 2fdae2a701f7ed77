"""The training loop: exact resume, the adapter stage with a frozen backbone, pickle-free checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from bids_phydiff.errors import UsageError
from bids_phydiff.model.phydiff import PhyDiff
from bids_phydiff.prep.adc import adc_atlas_from_files
from bids_phydiff.train.checkpoint import STATE_FILE, TENSORS_FILE, list_checkpoints, load_checkpoint
from bids_phydiff.train.config import TrainConfig
from bids_phydiff.train.dataset import SliceDataset, SliceGrid
from bids_phydiff.train.loop import Trainer
from bids_phydiff.phantom.prepared_runs import phantom_training_data
from bids_phydiff.train.run import model_config_for

CONFIG = TrainConfig(model="tiny", max_steps=4, adapter_steps=4, batch_size=4, warmup_steps=2, val_every=2,
                     val_samples=8, checkpoint_every=0, ema_decay=0.9, seed=11)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    runs, grid, tracts, _ = phantom_training_data(root, subjects=2, seed=3, orientations=("RAS",))
    atlas, shells, _ = adc_atlas_from_files([(r.dwi, r.bval, r.mask) for r in runs])
    model_config = model_config_for(CONFIG, tracts.shape[3])
    sgrid = SliceGrid.for_multiple(grid.shape, model_config.backbone.size_multiple)
    train = SliceDataset(runs[:1], sgrid, root / "cache", atlas, shells, tracts)
    val = SliceDataset(runs[1:], sgrid, root / "cache", atlas, shells, tracts)
    return train, val, model_config


def _trainer(data, folder, config=CONFIG):
    train, val, model_config = data
    torch.manual_seed(config.seed)
    return Trainer(PhyDiff(model_config), config, train, val, torch.device("cpu"), checkpoint_folder=folder,
                   train_adapter=True, progress=False)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_n_steps_resume_n_steps_equals_2n(data, tmp_path):
    # 3 steps, resume to 6 (through the stage change at 4), resume to the end (8) == 8 straight
    split = _trainer(data, tmp_path / "a").run(stop_at=3)
    assert split.step == 3 and [p.name for p in list_checkpoints(tmp_path / "a")] == ["step-00000003"]
    mid = _trainer(data, tmp_path / "a").run(stop_at=6, resume=True)
    assert mid.stage == "adapter"
    resumed = _trainer(data, tmp_path / "a").run(resume=True)
    straight = _trainer(data, tmp_path / "b").run()
    assert resumed.step == straight.step == 8
    assert _max_diff(resumed.model.state_dict(), straight.model.state_dict()) <= 1e-6
    assert _max_diff(resumed.ema.state_dict(), straight.ema.state_dict()) <= 1e-6
    a, b = load_checkpoint(list_checkpoints(tmp_path / "a")[-1]), load_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    assert _max_diff({k: v for k, v in a.tensors.items() if k.startswith("optim.")},
                     {k: v for k, v in b.tensors.items() if k.startswith("optim.")}) <= 1e-6
    assert [r["step"] for r in resumed.history] == list(range(9))
    for r, s in zip(resumed.history[1:], straight.history[1:]):
        assert r["stage"] == s["stage"] and r["lr"] == s["lr"]
        assert r["train_loss"] == pytest.approx(s["train_loss"], abs=1e-6)
    # and the run changed the weights at all (the comparison above can fail)
    torch.manual_seed(CONFIG.seed)
    fresh = PhyDiff(data[2]).state_dict()
    assert _max_diff(fresh, straight.model.state_dict()) > 1e-4


def test_checkpoints_are_safetensors_and_json_not_pickles(data, tmp_path):
    _trainer(data, tmp_path, CONFIG.replace(checkpoint_every=2, max_steps=4, adapter_steps=2)).run(stop_at=5)
    found = list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step-00000004", "step-00000005"]  # the newest two are kept
    for folder in found:
        assert sorted(p.name for p in folder.iterdir()) == sorted([TENSORS_FILE, STATE_FILE])
        state = json.loads((folder / STATE_FILE).read_text())
        assert state["step"] == int(folder.name[5:]) and state["config"] == CONFIG.replace(
            checkpoint_every=2, max_steps=4, adapter_steps=2).to_dict()
        assert not (folder / TENSORS_FILE).read_bytes().startswith(b"\x80")  # no pickle protocol header
    assert json.loads((found[-1] / STATE_FILE).read_text())["stage"] == "adapter"
    # a different config refuses to resume
    with pytest.raises(Exception, match="another training config"):
        _trainer(data, tmp_path, CONFIG.replace(lr=1e-3)).run(resume=True)
    # so does an optimiser state with one parameter group for everything (before weight decay was split)
    record = json.loads((found[-1] / STATE_FILE).read_text())
    groups = record["optimizer"]["param_groups"]
    assert len(groups) == 2
    groups[:] = [{**groups[0], "params": sorted(i for g in groups for i in g["params"])}]
    (found[-1] / STATE_FILE).write_text(json.dumps(record))
    with pytest.raises(UsageError, match=f"{found[-1].name}.*parameter groups.*without --resume"):
        _trainer(data, tmp_path, CONFIG.replace(checkpoint_every=2, max_steps=4, adapter_steps=2)).run(resume=True)


def test_adapter_stage_leaves_backbone_bit_identical(data, tmp_path):
    trainer = _trainer(data, None)
    after_one = trainer.run(stop_at=CONFIG.max_steps)
    assert after_one.stage == "backbone"
    # stage 2 starts from the averaged backbone: that is what must stay untouched
    backbone_names = {n for n, _ in trainer.model.named_parameters() if not n.startswith("adapter.")}
    frozen = {k: v.clone() for k, v in after_one.ema.state_dict().items() if not k.startswith("adapter.")}
    adapter_before = {k: v.clone() for k, v in after_one.ema.state_dict().items() if k.startswith("adapter.")}
    result = trainer.run()  # continues in the same process into stage 2
    assert result.stage == "adapter" and result.step == 8
    for state in (result.model.state_dict(), result.ema.state_dict()):
        for name, value in frozen.items():
            assert torch.equal(state[name], value), name
    assert all(not p.requires_grad for n, p in result.model.named_parameters() if n in backbone_names)
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in result.model.adapter.parameters()}
    changed = max(float((result.ema.state_dict()[k] - v).abs().max()) for k, v in adapter_before.items())
    assert changed > 0
    vals = [r["val_loss"] for r in result.history if r["stage"] == "adapter" and not math.isnan(r["val_loss"])]
    assert len(vals) == 2


@pytest.mark.slow  # one torch.compile of the tiny model's step on the CPU (about a minute on 2 cores)
def test_a_compiled_training_step_trains_as_the_eager_one(data):
    train, val, model_config = data
    config = CONFIG.replace(max_steps=2, adapter_steps=0, val_every=0)

    def run(config):
        torch.manual_seed(config.seed)
        return Trainer(PhyDiff(model_config), config, train, val, torch.device("cpu"), checkpoint_folder=None,
                       train_adapter=False, progress=False).run()

    from torch._dynamo.utils import counters

    eager = run(config)
    graphs = counters["stats"]["unique_graphs"]
    compiled = run(config.replace(compile=True))
    assert counters["stats"]["unique_graphs"] > graphs  # the step did go through torch.compile
    assert [r["step"] for r in compiled.history] == [r["step"] for r in eager.history]
    for c, e in zip(compiled.history[1:], eager.history[1:]):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-4, abs=1e-6)
    assert _max_diff(compiled.model.state_dict(), eager.model.state_dict()) <= 1e-4


def test_augmented_training_resumes_exactly_and_trains_on_the_augmented_slices(data, tmp_path, monkeypatch):
    from bids_phydiff.train import augment

    config = dataclasses.replace(CONFIG, augment_flip=True, augment_shift=2)
    augmented = []
    real_apply = augment.apply
    monkeypatch.setattr(augment, "apply", lambda samples, draw: augmented.append(draw) or real_apply(samples, draw))
    _trainer(data, tmp_path / "a", config).run(stop_at=3)
    resumed = _trainer(data, tmp_path / "a", config).run(resume=True)
    straight = _trainer(data, tmp_path / "b", config).run()
    assert _max_diff(resumed.model.state_dict(), straight.model.state_dict()) <= 1e-6
    plain = _trainer(data, tmp_path / "c").run()
    assert _max_diff(plain.model.state_dict(), straight.model.state_dict()) > 1e-4
    # every backbone step is augmented (3 + 1 resumed, then 4 straight), no adapter step, no plain step
    assert len(augmented) == 2 * config.max_steps
    assert any(draw.flip.any() for draw in augmented) and any(draw.shift.any() for draw in augmented)
