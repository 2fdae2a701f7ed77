"""The whole model: presets, shapes, training behaviour, ablation switches, adapter, stages, configs."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F

from bids_phydiff.model import (
    PRESETS,
    AdapterConfig,
    ConditioningConfig,
    DiffusionBatch,
    PhyDiff,
    PhyDiffConfig,
    ScheduleConfig,
    enrich_empty_tracts,
    preset,
    tracts_from_labels,
)
from bids_phydiff.model.conditioning import ConditionEmbedding


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def phantom_batch(batch: int = 4, size: int = 32, seed: int = 0, tracts: bool = False) -> DiffusionBatch:
    """A head-like disc with a CSF core, its DWI by the mono-exponential model, random gradients."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r2 = yy**2 + xx**2
    head = (r2 < 0.8).float()
    adc = (head * 0.8e-3 + (r2 < 0.1).float() * 2.2e-3).expand(batch, 1, size, size).clone()
    s0 = (head * (0.6 + 0.2 * torch.cos(3 * xx))).expand(batch, 1, size, size)
    bval = torch.tensor([1000.0, 2000.0, 3000.0, 1500.0] * batch)[:batch]
    target = s0 * torch.exp(-bval.view(-1, 1, 1, 1) * adc)
    labels = None
    if tracts:
        labels = torch.zeros(batch, size, size, dtype=torch.long)
        labels[:, size // 4 : size // 2, size // 4 : size // 2] = 3
        labels[:, size // 2 :, size // 2 :] = 17
    return DiffusionBatch(
        target=target * 2 - 1,
        b0=s0 * 2 - 1,
        bval=bval,
        bvec=F.normalize(torch.randn(batch, 3, generator=g), dim=-1),
        slice_pos=torch.linspace(0.2, 0.8, batch),
        adc=adc,
        tracts=None if labels is None else tracts_from_labels(labels),
    )


def tiny(**changes) -> PhyDiff:
    torch.manual_seed(0)
    return PhyDiff(preset("tiny").replace(**changes))


def _randomise(module: torch.nn.Module, seed: int = 1) -> None:
    """Give the zero-initialised parameters (output projections, AdaRMSNorm gains, adapter outputs) small
    random values, as training would; a fresh model's zero output would hide the computation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# ----------------------------------------------------------------------------------------- presets


def test_paper_preset_has_the_published_size():
    model = PhyDiff(PRESETS["paper"])
    backbone = model.parameter_count("backbone")
    adapter = model.parameter_count("adapter")
    assert abs(backbone - 14.2e6) <= 0.1 * 14.2e6, backbone
    assert abs(adapter - 7.8e6) <= 0.1 * 7.8e6, adapter
    levels = PRESETS["paper"].backbone.levels
    assert [lv.width for lv in levels] == [128, 256, 512] and [lv.depth for lv in levels] == [2, 2, 4]
    assert [lv.attention for lv in levels] == ["neighborhood", "neighborhood", "global"]
    assert PRESETS["paper"].backbone.patch_size == 4 and all(lv.d_ff == lv.width for lv in levels)


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match="paper"):
        preset("huge")


def test_config_round_trips_through_a_dict_and_refuses_unknown_keys():
    for config in PRESETS.values():
        assert PhyDiffConfig.from_dict(config.to_dict()) == config
    data = PRESETS["tiny"].to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON types
    # a bundle written before a key existed loads with that key's default: no objective meant noise prediction
    old = {k: v for k, v in data.items() if k not in ("objective", "conditioning")}
    assert PhyDiffConfig.from_dict(old) == PRESETS["tiny"].replace(objective="eps", conditioning=ConditioningConfig())
    data["backbone"]["levels"][0]["widht"] = 3
    with pytest.raises(ValueError, match=r"backbone\.levels\[0\].*widht"):
        PhyDiffConfig.from_dict(data)
    with pytest.raises(ValueError, match="backbone"):
        PhyDiffConfig.from_dict({"objective": "x0"})


# ----------------------------------------------------------------------------------------- forward


def test_forward_predicts_each_samples_clean_slice_on_any_valid_grid():
    model = tiny()  # the presets predict the clean slice x0
    _randomise(model)
    model.eval()
    gen = torch.Generator().manual_seed(3)
    for h, w in [(32, 32), (16, 40)]:
        b = phantom_batch(2, 32)
        b0, adc = F.interpolate(b.b0, size=(h, w)), F.interpolate(b.adc, size=(h, w))
        x_t, t = torch.randn(2, 1, h, w, generator=gen), torch.tensor([3, 900])
        out = model(x_t, t, b0, b.bval, b.bvec, b.slice_pos).detach()
        assert out.shape == (2, 1, h, w) and torch.isfinite(out).all() and float(out.std(dim=(2, 3)).min()) > 0
        # one prediction per sample: the second sample's does not depend on the first
        alone = model(x_t[1:], t[1:], b0[1:], b.bval[1:], b.bvec[1:], b.slice_pos[1:]).detach()
        torch.testing.assert_close(alone, out[1:], rtol=1e-4, atol=1e-5)
        # the output is read as x0: with the noise the samplers derive from it, the per-pixel forward
        # process gives x_t back
        g = model.schedule.excess_beta(adc, b.bval)
        eps = model.predict_eps(x_t, t, g, out)
        assert not torch.allclose(eps, out)
        torch.testing.assert_close(model.schedule.q_sample(out, t, eps, g), x_t, rtol=0, atol=1e-4)


def test_grid_not_a_multiple_of_the_patch_pyramid_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.randn(1, 1, 36, 36), torch.tensor([1]), torch.randn(1, 1, 36, 36),
              torch.tensor([1000.0]), torch.tensor([[1.0, 0, 0]]), torch.tensor([0.5]))


def test_every_condition_reaches_the_output():
    model = tiny()
    _randomise(model)
    b = phantom_batch(1)
    x = torch.randn(1, 1, 32, 32)
    args = dict(x_t=x, t=torch.tensor([400]), b0=b.b0, bval=b.bval, bvec=b.bvec, slice_pos=b.slice_pos)
    base = model(**args)
    changes = {
        "t": torch.tensor([401]),
        "b0": b.b0 * 0.9,
        "bval": b.bval + 10.0,
        "bvec": F.normalize(b.bvec + 0.05, dim=-1),
        "slice_pos": b.slice_pos + 0.01,
    }
    for name, value in changes.items():
        assert not torch.allclose(model(**{**args, name: value}), base, atol=1e-6), name


def test_bf16_autocast_forward_runs():
    model = tiny()
    b = phantom_batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(b, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
def test_tiny_model_overfits_one_batch(objective):
    model = tiny(adapter=None, objective=objective)
    batch = phantom_batch(4, 32)
    t = torch.tensor([100, 400, 700, 950])
    noise = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    start = time.perf_counter()
    first = model.loss(batch, t=t, noise=noise).item()
    best = first
    for _ in range(300):
        loss = model.loss(batch, t=t, noise=noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        best = min(best, loss.item())
        if best < first / 10 or time.perf_counter() - start > 60:
            break
    assert best < first / 10, (first, best)
    assert time.perf_counter() - start < 60


def test_loss_is_reproducible_with_a_generator_and_mse_of_what_is_predicted():
    model = tiny()
    assert model.config.objective == "x0"  # the presets predict the clean slice
    batch = phantom_batch(2)
    a = model.loss(batch, generator=torch.Generator().manual_seed(5))
    b = model.loss(batch, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # a fresh model predicts zeros (zero-initialised output): the loss is the mean square of its target,
    # the clean slice for x0 and the noise for eps
    noise = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.loss(batch, t=torch.tensor([1, 2]), noise=noise), batch.target.pow(2).mean())
    eps_model = tiny(objective="eps")
    assert torch.allclose(eps_model.loss(batch, t=torch.tensor([1, 2]), noise=noise), noise.pow(2).mean())


def test_v_objective_regresses_v_with_the_plain_schedule():
    model = tiny(schedule=ScheduleConfig(gap=0.0), objective="v")
    _randomise(model)
    batch = phantom_batch(2)
    t, noise = torch.tensor([10, 600]), torch.randn(2, 1, 32, 32)
    abar = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].view(-1, 1, 1, 1)
    a, s = abar.sqrt().float(), (1.0 - abar).sqrt().float()
    x_t = a * batch.target + s * noise
    out = model(x_t, t, batch.b0, batch.bval, batch.bvec, batch.slice_pos)
    torch.testing.assert_close(model.loss(batch, t=t, noise=noise), F.mse_loss(out, a * noise - s * batch.target))


def test_x0_objective_regresses_the_clean_slice_at_every_step():
    model = tiny(objective="x0")
    _randomise(model)
    batch = phantom_batch(2)
    t, noise = torch.tensor([10, 900]), torch.randn(2, 1, 32, 32)
    g = model.schedule.excess_beta(batch.adc, batch.bval)
    x_t = model.schedule.q_sample(batch.target, t, noise, g)
    out = model(x_t, t, batch.b0, batch.bval, batch.bvec, batch.slice_pos)
    torch.testing.assert_close(model.loss(batch, t=t, noise=noise), F.mse_loss(out, batch.target))


@pytest.mark.parametrize("objective", ["v", "x0"])
def test_prediction_converts_to_the_noise_with_the_per_pixel_schedule(objective):
    model = tiny(objective=objective)  # physics schedule: alpha-bar differs per pixel
    batch = phantom_batch(3)
    t = torch.tensor([5, 400, 990])
    noise = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    g = model.schedule.excess_beta(batch.adc, batch.bval)
    assert g.amax() > 0  # the test needs a per-pixel schedule
    abar = model.schedule.alpha_bar(t, g)
    a, s = abar.sqrt().float(), (1.0 - abar).sqrt().float()
    x_t = model.schedule.q_sample(batch.target, t, noise, g)
    out = a * noise - s * batch.target if objective == "v" else batch.target
    torch.testing.assert_close(model.predict_eps(x_t, t, g, out), noise, atol=1e-4, rtol=0)
    # the eps objective passes its output through
    eps_model = tiny(objective="eps")
    assert eps_model.predict_eps(x_t, t, g, noise) is noise


def test_loss_accepts_a_mapping_batch():
    model = tiny()
    batch = phantom_batch(2)
    as_dict = {k: v for k, v in vars(batch).items() if v is not None}
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(model.loss(as_dict, generator=g1), model.loss(batch, generator=g2))
    with pytest.raises(ValueError, match="adc"):
        model.loss({k: v for k, v in as_dict.items() if k != "adc"})


# ----------------------------------------------------------------------------------------- ablations


def test_gap_zero_model_trains_on_plain_ddpm():
    model = tiny(schedule=ScheduleConfig(gap=0.0), objective="eps")
    _randomise(model)  # a non-zero prediction, so the comparison below is not trivially mean(noise^2)
    batch = phantom_batch(2)
    t, noise = torch.tensor([10, 600]), torch.randn(2, 1, 32, 32)
    abar = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt().float() * batch.target + (1.0 - abar).sqrt().float() * noise
    eps = model(x_t, t, batch.b0, batch.bval, batch.bvec, batch.slice_pos)
    assert torch.equal(model.loss(batch, t=t, noise=noise), F.mse_loss(eps, noise))
    physics = tiny(objective="eps")
    physics.load_state_dict(model.state_dict())
    assert not torch.equal(physics.loss(batch, t=t, noise=noise), F.mse_loss(eps, noise))


def test_query_mapping_switch_changes_the_bvector_embedding():
    base = preset("tiny").conditioning
    query = ConditionEmbedding(base)
    plain = ConditionEmbedding(base.__class__(**{**base.to_dict(), "query_mapping": False}))
    assert type(query.bvec_embed).__name__ != type(plain.bvec_embed).__name__
    g = F.normalize(torch.tensor([[0.3, -0.5, 0.8]]), dim=-1)
    # the query tokens carry the magnitude b*g; the ablation sees only the direction
    assert not torch.allclose(query.bvec_embed(torch.tensor([1000.0]), g), query.bvec_embed(torch.tensor([3000.0]), g))
    assert torch.allclose(plain.bvec_embed(g), plain.bvec_embed(2.5 * g), atol=1e-6)
    args = (torch.tensor([10]), torch.tensor([2000.0]), g, torch.tensor([0.5]))
    assert not torch.allclose(query(*args), plain(*args))


def test_without_adapter_there_is_no_adapter_and_tracts_are_ignored():
    model = tiny(adapter=None)
    assert model.adapter is None and model.parameter_count("adapter") == 0
    _randomise(model)
    b = phantom_batch(2, tracts=True)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([5, 50])
    with_tracts = model(x, t, b.b0, b.bval, b.bvec, b.slice_pos, tracts=b.tracts)
    assert torch.equal(with_tracts, model(x, t, b.b0, b.bval, b.bvec, b.slice_pos))
    with pytest.raises(ValueError, match="adapter"):
        model(x, t, b.b0, b.bval, b.bvec, b.slice_pos, tracts=b.tracts, use_adapter=True)


def test_adapter_starts_as_a_no_op_and_then_steers_the_backbone():
    model = tiny()
    _randomise(model.backbone, seed=2)
    _randomise(model.conditioning, seed=3)
    b = phantom_batch(2, tracts=True)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([5, 500])
    plain = model(x, t, b.b0, b.bval, b.bvec, b.slice_pos)
    fresh = model(x, t, b.b0, b.bval, b.bvec, b.slice_pos, tracts=b.tracts)
    assert torch.equal(fresh, plain)  # zero-initialised outputs: the frozen backbone's behaviour is kept
    _randomise(model.adapter, seed=4)
    steered = model(x, t, b.b0, b.bval, b.bvec, b.slice_pos, tracts=b.tracts)
    assert not torch.allclose(steered, plain, atol=1e-4)
    other = b.tracts.roll(5, dims=-1)
    assert not torch.allclose(model(x, t, b.b0, b.bval, b.bvec, b.slice_pos, tracts=other), steered, atol=1e-4)


def test_adapter_stage_trains_only_the_adapter():
    model = tiny()
    _randomise(model.backbone)  # a trained backbone; a fresh one outputs zero and passes no gradient back
    params = model.trainable_parameters("adapter")
    assert {id(p) for p in params} == {id(p) for p in model.adapter.parameters()}
    model.loss(phantom_batch(2, tracts=True), generator=torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is None for p in model.backbone_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.parameters())
    backbone = model.trainable_parameters("backbone")
    assert all(p.requires_grad for p in backbone) and not any(p.requires_grad for p in model.adapter.parameters())
    with pytest.raises(ValueError, match="adapter"):
        tiny(adapter=None).trainable_parameters("adapter")


def test_output_refiner_starts_as_a_no_op_and_mixes_across_patch_borders():
    import dataclasses

    base = tiny()
    refined = tiny(backbone=dataclasses.replace(preset("tiny").backbone, refine_channels=8))
    assert set(base.state_dict()) < set(refined.state_dict())  # only new tensors: old bundles keep loading
    refined.load_state_dict(base.state_dict(), strict=False)
    _randomise(base.backbone, seed=2)
    refined.load_state_dict(base.state_dict(), strict=False)
    b = phantom_batch(2)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([5, 500])
    plain = base(x, t, b.b0, b.bval, b.bvec, b.slice_pos)
    assert torch.equal(refined(x, t, b.b0, b.bval, b.bvec, b.slice_pos), plain)  # zero-initialised last conv
    # the patch split makes pixel (8, 12) from its own token alone; the refiner also sees pixel (8, 11) of the
    # patch on its left, in the backbone's output and in the input
    from bids_phydiff.model.hdit import OutputRefiner

    refiner = OutputRefiner(2, 1, 8)
    _randomise(refiner, seed=5)
    out, inputs = torch.randn(1, 1, 32, 32, requires_grad=True), torch.randn(1, 2, 32, 32, requires_grad=True)
    refiner(out, inputs)[0, 0, 8, 12].backward()
    assert out.grad[0, 0, 8, 11] != 0 and inputs.grad[0, :, 8, 11].abs().sum() > 0
    assert out.grad[0, 0, 8, 15] == 0  # 3x3 convolutions twice: a receptive field of 5x5


# ----------------------------------------------------------------------------------------- tracts


def test_tracts_from_labels_is_one_hot_without_background():
    labels = torch.tensor([[[0, 1], [42, 3]]])
    onehot = tracts_from_labels(labels)
    assert onehot.shape == (1, 42, 2, 2)
    assert onehot[0, :, 0, 0].sum() == 0 and onehot[0, 0, 0, 1] == 1 and onehot[0, 41, 1, 0] == 1
    assert onehot[0, 2, 1, 1] == 1 and onehot.sum() == 3
    with pytest.raises(ValueError, match="0..42"):
        tracts_from_labels(torch.tensor([[[43]]]))


def test_eq8_fills_empty_tracts_and_leaves_the_input_alone():
    g = torch.Generator().manual_seed(0)
    tracts = torch.zeros(2, 5, 4, 4)
    tracts[0, 1] = torch.rand(4, 4, generator=g)
    tracts[0, 3, :2] = 0.5
    tracts[1, 0, 0, 0] = 1.0
    b0 = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    before = tracts.clone()
    out = enrich_empty_tracts(tracts, b0, xi=0.2)
    assert torch.equal(tracts, before)
    for i, present in [(0, [1, 3]), (1, [0])]:
        b0n = (b0[i] - b0[i].min()) / (b0[i].max() - b0[i].min())
        fill = (tracts[i, present].sum(0, keepdim=True) + 0.2) * b0n
        for c in range(5):
            want = tracts[i, c : c + 1] if c in present else fill
            assert torch.allclose(out[i, c : c + 1], want, atol=1e-6), (i, c)


def test_adapter_config_without_enrichment_changes_the_input():
    b = phantom_batch(1, tracts=True)
    on = tiny().adapter
    off = tiny(adapter=AdapterConfig(blocks_per_level=1, enrich=False)).adapter
    off.load_state_dict(on.state_dict())
    _randomise(on, 7)
    off.load_state_dict(on.state_dict())
    assert not torch.allclose(on(b.tracts, b.b0)[0], off(b.tracts, b.b0)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_training_step_and_seeded_sampling():
    from bids_phydiff.model import SamplerConfig

    device = torch.device("cuda")
    model = tiny().to(device)
    batch = phantom_batch(4, 32, tracts=True).to(device)
    optimiser = torch.optim.AdamW(model.trainable_parameters("backbone"), lr=1e-3)
    g = torch.Generator(device=device).manual_seed(0)
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(batch, generator=g, use_adapter=False)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        assert torch.isfinite(loss)
    kwargs = dict(b0=batch.b0, bval=batch.bval, bvec=batch.bvec, slice_pos=batch.slice_pos, adc=batch.adc,
                  tracts=batch.tracts, sampler=SamplerConfig(steps=3), precision="bf16")
    first, again = model.sample(**kwargs, seed=4), model.sample(**kwargs, seed=4)
    assert first.device.type == "cuda" and torch.isfinite(first).all() and torch.equal(first, again)
