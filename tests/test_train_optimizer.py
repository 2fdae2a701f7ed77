"""AdamW parameter groups: weight decay on weight matrices only (not on norm scales, temperatures, lerp
weights, biases or embedding tables), for both training stages."""

from __future__ import annotations

import torch
from torch import nn

from bids_phydiff.model.config import preset
from bids_phydiff.model.phydiff import PhyDiff
from bids_phydiff.train.optimizer import DECAY, NO_DECAY, build_optimizer, parameter_groups

WD = 0.1


def _names(model: nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {name_of[id(p)] for p in g["params"]} for g in groups}


def test_backbone_stage_decays_weight_matrices_and_nothing_else():
    model = PhyDiff(preset("tiny"))
    params = model.trainable_parameters("backbone")
    groups = parameter_groups(model, params, WD)
    names = _names(model, groups)
    assert {g["name"]: g["weight_decay"] for g in groups} == {DECAY: WD, NO_DECAY: 0.0}
    assert sum(len(g["params"]) for g in groups) == len(params)  # each trainable parameter once
    assert not names[DECAY] & names[NO_DECAY]
    assert not any(n.startswith("adapter.") for n in names[DECAY] | names[NO_DECAY])
    for suffix in ("attention.temperature", "norm.weight", "mix", "bias"):  # temperatures, norms, lerp, biases
        matching = {n for n in names[DECAY] | names[NO_DECAY] if n.endswith(suffix)}
        assert matching and matching <= names[NO_DECAY], suffix
    for suffix in ("qkv.weight", "out.weight", "up.weight", "down.weight", "patch_in.proj.weight", "gain.weight"):
        matching = {n for n in names[DECAY] | names[NO_DECAY] if n.endswith(suffix)}
        assert matching and matching <= names[DECAY], suffix


def test_adapter_stage_decays_its_convolution_kernels_only():
    model = PhyDiff(preset("tiny"))
    names = _names(model, parameter_groups(model, model.trainable_parameters("adapter"), WD))
    assert names[DECAY] and all(n.startswith("adapter.") and n.endswith(".weight") for n in names[DECAY])
    assert names[NO_DECAY] and all(n.startswith("adapter.") and n.endswith(".bias") for n in names[NO_DECAY])


def test_an_embedding_table_is_not_decayed_and_a_step_shrinks_only_the_decayed_weights():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    optimizer = build_optimizer(model, model.parameters(), lr=0.5, betas=(0.9, 0.95), eps=1e-8,
                                weight_decay=WD, device=torch.device("cpu"))
    names = _names(model, optimizer.param_groups)
    assert names == {DECAY: {"1.weight"}, NO_DECAY: {"0.weight", "1.bias", "2.weight", "2.bias"}}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # a step without gradient: only weight decay moves anything
    optimizer.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["1.weight"].detach(), before["1.weight"] * (1 - 0.5 * WD))
    for name in ("0.weight", "1.bias", "2.weight", "2.bias"):
        torch.testing.assert_close(after[name].detach(), before[name], rtol=0, atol=0)
