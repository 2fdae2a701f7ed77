"""The model's context switch (issue 19): ``context: none`` is today's b0-only model, bit for bit; ``dti`` and
``sh4`` add the context maps as input channels beside the b0; ``dti`` also the tensor's own prediction for the
target gradient, which is the classical tensor extrapolation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bids_phydiff.model import GridSpec, PhyDiff, PhyDiffConfig, load_bundle, preset, save_bundle
import numpy as np

from bids_phydiff.eval.tensor_extrapolation import tensor_signal
from bids_phydiff.model.config import BASE_CHANNELS, CONTEXT_CHANNELS, DERIVED_CONTEXT_CHANNELS, DIFFUSIVITY_SCALE
from bids_phydiff.model.context import tensor_projection
from bids_phydiff.model.sampling import SamplerConfig
from bids_phydiff.prep import context as prep_context
from bids_phydiff.prep.context import CONTEXT_KINDS, TensorMaps, context_channels

from test_model_phydiff import _randomise, phantom_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = GridSpec("Phantom", 4.0, (32, 32, 8), ((4.0, 0, 0, -64.0), (0, 4.0, 0, -64.0), (0, 0, 4.0, -16.0), (0, 0, 0, 1)))
SAMPLER = SamplerConfig(method="ddim", steps=3)


def _model(config: PhyDiffConfig) -> PhyDiff:
    torch.manual_seed(0)
    model = PhyDiff(config)
    _randomise(model)
    return model.eval()


def _inputs(seed: int = 0):
    b = phantom_batch(2, 32, seed=seed, tracts=True)
    g = torch.Generator().manual_seed(seed)
    return b, torch.randn(2, 1, 32, 32, generator=g), torch.tensor([5, 600])


def test_the_model_channel_counts_are_the_layout_of_the_context_maps():
    assert tuple(CONTEXT_CHANNELS) == CONTEXT_KINDS
    assert all(CONTEXT_CHANNELS[k] == context_channels(k) for k in CONTEXT_KINDS)
    assert DIFFUSIVITY_SCALE == prep_context.DIFFUSIVITY_SCALE and tuple(DERIVED_CONTEXT_CHANNELS) == CONTEXT_KINDS


def test_the_dti_projection_is_the_tensor_extrapolation_in_normalised_units():
    """What the model derives from dti maps for a target (b, g) is the tensor's signal S0 exp(-b g^T D g),
    the baseline of eval/tensor_extrapolation.py, mapped like an image (2 S / scale - 1), and g^T D g."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 5, 1, 3, 3)) * 0.02
    tensors = (a @ np.swapaxes(a, -1, -2) + np.eye(3) * 0.3e-3).reshape(4, 5, 1, 3, 3)  # mm^2/s, positive
    lower = tensors[..., [0, 1, 1, 0, 1, 2], [0, 0, 1, 2, 2, 2]]  # Dxx, Dxy, Dyy, Dxz, Dyz, Dzz
    scale = 900.0
    s0 = rng.uniform(200, 900, size=(4, 5, 1))
    bvals = np.array([0.0, 1000.0, 3000.0])
    bvecs = np.array([[0.0, 0.0, 0.0], [0.6, 0.0, 0.8], [-1.0, 2.0, 2.0]])
    expected = tensor_signal(TensorMaps(lower, s0), bvals, bvecs)[:, :, 0]  # (4, 5, 3) signal units
    maps = np.concatenate([lower * DIFFUSIVITY_SCALE, s0[..., None] / scale], axis=-1)[:, :, 0]  # (4, 5, 7)
    maps = torch.from_numpy(np.repeat(maps.transpose(2, 0, 1)[None], 3, axis=0)).double()  # (3, 7, 4, 5)
    out = tensor_projection(maps, torch.from_numpy(bvals), torch.from_numpy(bvecs)).numpy()
    np.testing.assert_allclose(out[:, 1], (2 * expected / scale - 1).transpose(2, 0, 1), rtol=1e-5, atol=1e-6)
    g = bvecs[2] / 3.0
    np.testing.assert_allclose(out[2, 0], np.einsum("i,xyij,j->xy", g, tensors[:, :, 0], g) * DIFFUSIVITY_SCALE,
                               rtol=1e-6)
    assert np.all(out[0, 0] == 0) and np.allclose(out[0, 1], 2 * s0[:, :, 0] / scale - 1)  # b0: no direction, S0


def test_context_none_is_the_b0_only_model_bit_for_bit():
    """A config without the key is ``none``; its network is exactly today's: the same parameters, and the
    backbone fed x_t and the b0 alone, so the same seed and weights give torch.equal outputs."""
    today = preset("tiny").to_dict()
    del today["context"]
    config = PhyDiffConfig.from_dict(today)
    assert config.context == "none" and config == preset("tiny") and config.backbone.in_channels == BASE_CHANNELS
    model = _model(config)
    assert model.backbone.patch_in.proj.weight.shape[1] == BASE_CHANNELS * config.backbone.patch_size ** 2
    b, x_t, t = _inputs()
    with torch.no_grad():
        features = model.adapter_features(b.tracts, b.b0)
        expected = model.backbone(torch.cat([x_t, b.b0], dim=1), model.conditioning(t, b.bval, b.bvec, b.slice_pos),
                                  features)
        assert torch.equal(model(x_t, t, b.b0, b.bval, b.bvec, b.slice_pos, b.tracts), expected)
        assert torch.equal(model(x_t, t, b.b0, b.bval, b.bvec, b.slice_pos, b.tracts, context=None), expected)
    twin = _model(preset("tiny").replace(context="dti").replace(context="none"))
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), twin.state_dict().values()))
    args = (b.b0, b.bval, b.bvec, b.slice_pos, b.adc, b.tracts, SAMPLER)
    assert torch.equal(model.sample(*args, seed=7), twin.sample(*args, seed=7))
    noise = torch.randn(b.target.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.loss(b, t=t, noise=noise), twin.loss(b, t=t, noise=noise))


@pytest.mark.parametrize("kind", ["dti", "sh4"])
def test_a_context_model_takes_the_maps_as_input_channels(kind):
    channels = CONTEXT_CHANNELS[kind]
    config = preset("tiny").replace(context=kind)
    assert config.backbone.in_channels == BASE_CHANNELS + channels + DERIVED_CONTEXT_CHANNELS[kind]
    assert PhyDiffConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = _model(config)
    b, x_t, t = _inputs()
    context = torch.randn(2, channels, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = model(x_t, t, b.b0, b.bval, b.bvec, b.slice_pos, b.tracts, context=context)
    assert out.shape == (2, 1, 32, 32)
    out.square().sum().backward()
    assert context.grad.abs().sum(dim=(0, 2, 3)).min() > 0  # every context channel reaches the output
    with torch.no_grad():
        other = model(x_t, t, b.b0, b.bval, b.bvec, b.slice_pos, b.tracts, context=context.flip(0))
    assert not torch.allclose(out[0], other[0])
    batch = dataclasses.replace(b, context=context.detach())
    loss = model.loss(batch, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    args = (b.b0, b.bval, b.bvec, b.slice_pos, b.adc, b.tracts, SAMPLER)
    first = model.sample(*args, seed=4, context=context.detach())
    assert torch.equal(first, model.sample(*args, seed=4, context=context.detach()))


def test_a_missing_or_misshapen_context_is_refused():
    model = _model(preset("tiny").replace(context="dti", adapter=None))
    b, x_t, t = _inputs()
    with pytest.raises(ValueError, match="needs a 'dti' context of 7 channels"):
        model(x_t, t, b.b0, b.bval, b.bvec, b.slice_pos)
    with pytest.raises(ValueError, match="context must be \\(2, 7, 32, 32\\)"):
        model(x_t, t, b.b0, b.bval, b.bvec, b.slice_pos, context=torch.zeros(2, 15, 32, 32))
    with pytest.raises(ValueError, match="needs a 'dti' context"):
        model.sample(b.b0, b.bval, b.bvec, b.slice_pos, b.adc, sampler=SAMPLER, seed=0)
    plain = _model(preset("tiny").replace(adapter=None))
    with pytest.raises(ValueError, match="for context 'none'"):
        plain(x_t, t, b.b0, b.bval, b.bvec, b.slice_pos, context=torch.zeros(2, 7, 32, 32))
    with pytest.raises(ValueError, match="context must be one of"):
        preset("tiny").replace(context="dki")


def test_input_channels_are_filled_in_or_must_fit_the_context():
    data = preset("tiny").to_dict()
    data["context"] = "sh4"  # a config file that names a context and keeps in_channels 2
    assert PhyDiffConfig.from_dict(data).backbone.in_channels == BASE_CHANNELS + 15
    data["backbone"]["in_channels"] = 9
    with pytest.raises(ValueError, match="in_channels 9 does not fit context 'sh4'"):
        PhyDiffConfig.from_dict(data)
    assert preset("tiny").replace(context="sh4").replace(context="none").backbone.in_channels == BASE_CHANNELS


def test_a_bundle_records_its_context_and_one_without_the_key_loads_as_none(tmp_path):
    model = _model(preset("tiny").replace(context="sh4", adapter=None))
    path = save_bundle(tmp_path / "model-ctx", model, grid=GRID, b_shells=[1000.0, 2000.0], normalisation={})
    assert json.loads((path / "config.json").read_text())["model"]["context"] == "sh4"
    loaded = load_bundle(path).model
    assert loaded.config.context == "sh4"
    b, x_t, t = _inputs()
    context = torch.rand(2, 15, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(x_t, t, b.b0, b.bval, b.bvec, b.slice_pos, context=context),
                           model(x_t, t, b.b0, b.bval, b.bvec, b.slice_pos, context=context))

    old = _model(preset("tiny").replace(adapter=None))
    path = save_bundle(tmp_path / "model-old", old, grid=GRID, b_shells=[1000.0], normalisation={})
    config = json.loads((path / "config.json").read_text())
    del config["model"]["context"]  # a bundle written before the key existed
    (path / "config.json").write_text(json.dumps(config))
    assert load_bundle(path).model.config.context == "none"
