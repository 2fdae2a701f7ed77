"""Data-parallel training with two gloo processes on the CPU equals one process with the same global batch.

The global batch of 5 splits 3 + 2 over the ranks, so the test also covers shards of unequal size
(DDP's averaging over ranks is undone by the per-shard loss weight, see train/distributed.py).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from bids_phydiff.train.config import TrainConfig
from bids_phydiff.phantom.prepared_runs import phantom_training_data
from bids_phydiff.train.run import train_bundle

CONFIG = TrainConfig(model="tiny", max_steps=3, adapter_steps=2, batch_size=5, warmup_steps=1, val_every=0,
                     val_samples=6, checkpoint_every=0, ema_decay=0.5, seed=9)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, runs, grid, tracts, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    result = train_bundle(runs[:2], runs[2:], grid, os.path.join(root, "ddp-bundle"), os.path.join(root, "ddp-work"),
                          CONFIG, "cpu", tracts, False, progress=False)
    assert (result.bundle is not None) == (rank == 0)
    # the test (not the library) saves each rank's weights to compare them
    state = {f"model.{k}": v for k, v in result.loop.model.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in result.loop.ema.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(root, f"rank{rank}.safetensors"))
    save_file({"val": torch.tensor([result.metrics["final_val_loss"]])}, os.path.join(root, f"val{rank}.safetensors"))


def test_two_gloo_processes_equal_one_process(tmp_path):
    runs, grid, tracts, _ = phantom_training_data(tmp_path / "data", subjects=3, seed=4, orientations=("RAS",))
    mp.spawn(_rank_main, args=(2, _free_port(), runs, grid, tracts, str(tmp_path)), nprocs=2, join=True)
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert (tmp_path / "ddp-bundle" / "config.json").is_file()
    assert not (tmp_path / "ddp-work" / "checkpoints").exists() or all(
        p.name.startswith("step-") for p in (tmp_path / "ddp-work" / "checkpoints").iterdir())

    single = train_bundle(runs[:2], runs[2:], grid, tmp_path / "one-bundle", tmp_path / "one-work", CONFIG, "cpu",
                          tracts, False, progress=False)
    ref = {f"model.{k}": v for k, v in single.loop.model.state_dict().items()}
    ref.update({f"ema.{k}": v for k, v in single.loop.ema.state_dict().items()})
    worst = max(float((rank0[k].double() - ref[k].double()).abs().max()) for k in ref)
    assert worst <= 1e-5, worst
    val_ddp = float(load_file(str(tmp_path / "val0.safetensors"))["val"])
    assert val_ddp == pytest.approx(single.metrics["final_val_loss"], abs=1e-5)
