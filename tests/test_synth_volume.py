"""Volume synthesis: shapes, signal units, b0 copies, masks, seeds, batch independence, K samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_phydiff.model import PhyDiff, SamplerConfig, preset
from bids_phydiff.phantom.deformation import Deformation
from bids_phydiff.phantom.signal import TissueModel
from bids_phydiff.phantom.template import template_grid
from bids_phydiff.phantom.truth import render_truth
from bids_phydiff.prep.adc import AdcAccumulator
from bids_phydiff.prep.gradients import multishell_scheme
from bids_phydiff.synth import TargetScheme, sample_seed, shell_scheme, slice_grid, synthesise
from bids_phydiff.train.normalise import Normaliser

SHELLS = (1000.0, 2000.0)
FAST = SamplerConfig(method="ddim", steps=3, start="sdedit", strength=0.5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def subject():
    """Six central axial slices of the phantom template at 6 mm: grid (23, 27, 6) -> padded (24, 32),
    its b0, brain mask, tract probabilities and an ADC atlas by paper Eq. 4 from its noise-free DWI."""
    truth = render_truth(template_grid(6), Deformation.identity(), TissueModel())
    zs = slice(7, 13)
    b0 = truth.s0[:, :, zs].astype(np.float64)
    mask = b0 > 0
    mask[:, :, 0] = False  # one slice without brain
    table = multishell_scheme(list(SHELLS), 6, n_b0=1, seed=3)
    dwi = truth.signal(table.bvals, table.bvecs)[:, :, zs]
    acc = AdcAccumulator(np.array(SHELLS), b0.shape)
    acc.add(dwi, table.bvals, mask)
    return {"b0": b0, "mask": mask, "atlas": acc.atlas(), "tracts": truth.tracts[:, :, zs]}


def _randomise(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Small random values for the zero-initialised parameters, as training would give them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> PhyDiff:
    torch.manual_seed(0)
    return _randomise(PhyDiff(preset("tiny")))


@pytest.fixture(scope="module")
def scheme() -> TargetScheme:
    return TargetScheme([0, 1000, 1500, 2000], [[0, 0, 0], [1, 0, 0], [0, 0.6, 0.8], [0, 1, 0]])


def _run(model, subject, scheme, sampler=FAST, b0_factor=1.0, **kwargs):
    return synthesise(model, subject["b0"] * b0_factor, subject["mask"], scheme, subject["atlas"], SHELLS,
                      sampler=sampler, **kwargs)


@pytest.mark.parametrize(
    "sampler",
    [
        SamplerConfig(method="ddim", steps=3, start="sdedit", strength=0.5),
        SamplerConfig(method="ddim", steps=3, eta=1.0, start="noise"),
        SamplerConfig(method="ddpm", start="sdedit", strength=0.004),  # 4 ancestral steps
    ],
    ids=["ddim-sdedit", "ddim-eta1-noise", "ddpm"],
)
def test_samplers_give_finite_nonnegative_volumes_of_the_scheme_shape(model, subject, scheme, sampler):
    mean, std = _run(model, subject, scheme, sampler, seed=0)
    assert mean.shape == subject["b0"].shape + (4,) and mean.dtype == np.float32 and std is None
    assert np.all(np.isfinite(mean)) and mean.min() >= 0.0
    inside = subject["mask"]
    assert np.all(mean[~inside] == 0.0)  # zero outside the mask, the empty slice included
    assert np.all(mean[:, :, 0] == 0.0)
    assert mean[inside][:, 1:].max() > 0.0  # (a random-weight model's output is not meaningful beyond this)


def test_output_is_in_signal_units_and_follows_the_b0_scale(model, subject, scheme):
    low = _run(model, subject, scheme, seed=5).mean
    high = _run(model, subject, scheme, seed=5, b0_factor=10.0).mean
    # the normalised inputs agree to float32 rounding, which the sampler may amplify in single voxels
    assert high[subject["mask"]].max() > 0
    assert np.abs(high - 10.0 * low).max() < 1e-4 * np.abs(high).max()
    assert np.median(np.abs(high - 10.0 * low)[subject["mask"]]) < 1e-5 * np.abs(high).max()


def test_an_untrained_model_with_a_tiny_sdedit_returns_the_b0(subject, scheme):
    # a fresh eps model predicts zero noise; SDEdit from t=0 then returns the noised b0 with noise of std
    # sqrt(1 - abar_0) / sqrt(abar_0) ~ 0.01-0.03 in [-1, 1] units: the round trip normalise -> pad ->
    # sample -> unpad -> denormalise must land on the b0, voxel for voxel, in signal units
    torch.manual_seed(0)
    fresh = PhyDiff(preset("tiny").replace(objective="eps")).eval()
    sampler = SamplerConfig(method="ddim", steps=1, start="sdedit", strength=1e-3)
    X, Y, Z = subject["b0"].shape  # a b0 without the phantom's left-right symmetry: flips would show
    ramp = np.linspace(0.5, 1.5, X)[:, None, None] * np.linspace(1.0, 1.3, Y)[None, :, None] * np.linspace(1, 2, Z)
    b0 = subject["b0"] * ramp
    mean, _ = synthesise(fresh, b0, subject["mask"], scheme, subject["atlas"], SHELLS, sampler=sampler)
    scale = Normaliser.from_b0(b0, subject["mask"]).scale
    inside = subject["mask"]
    for n in range(1, 4):
        error = np.abs(mean[..., n] - b0)[inside]
        assert error.mean() < 0.02 * scale and np.median(error) < 0.02 * scale


def test_b0_targets_are_copies_of_the_b0_reference(model, subject):
    scheme = TargetScheme([0, 1000, 5, 2000], [[0, 0, 0], [1, 0, 0], [0.3, 0.1, 0.2], [0, 1, 0]])
    mean, std = _run(model, subject, scheme, seed=1, samples=2)
    expected = np.where(subject["mask"], subject["b0"], 0.0).astype(np.float32)
    for n in (0, 2):
        np.testing.assert_array_equal(mean[..., n], expected)
        assert np.all(std[..., n] == 0.0)
    assert not np.allclose(mean[..., 1], expected)


def test_same_seed_same_output_other_seed_other_output(model, subject, scheme):
    first = _run(model, subject, scheme, seed=3).mean
    again = _run(model, subject, scheme, seed=3).mean
    other = _run(model, subject, scheme, seed=4).mean
    np.testing.assert_array_equal(first, again)
    inside = subject["mask"]
    assert np.abs(first - other)[inside][:, 1:].mean() > 1e-3 * first[inside].mean()


def test_result_does_not_depend_on_the_batch_size(model, subject, scheme):
    sampler = SamplerConfig(method="ddim", steps=3, eta=1.0, start="sdedit", strength=0.5)  # noise at every step
    one = _run(model, subject, scheme, sampler, seed=2, batch_size=1).mean
    seven = _run(model, subject, scheme, sampler, seed=2, batch_size=7).mean
    all_at_once = _run(model, subject, scheme, sampler, seed=2, batch_size=1000).mean
    # same noise per sample; only the float rounding of batched matrix products may differ (float32 kernels
    # block a batch of 1 and of 7 differently; three noisy steps amplify that to ~1e-5 of the peak)
    peak = np.abs(one).max()
    assert np.abs(seven - one).max() < 5e-5 * peak and np.abs(all_at_once - one).max() < 5e-5 * peak
    other_seed = _run(model, subject, scheme, sampler, seed=3, batch_size=7).mean
    assert np.abs(other_seed - one).max() > 1e-2 * peak


def test_k_samples_give_their_mean_and_standard_deviation(model, subject, scheme):
    single = _run(model, subject, scheme, seed=6, samples=1).mean  # sample k = 0
    mean, std = _run(model, subject, scheme, seed=6, samples=2, batch_size=5)
    assert std is not None and std.shape == mean.shape and std.min() >= 0.0
    inside = subject["mask"]
    assert std[inside][:, 1:].mean() > 0
    # two samples a, b: mean (a + b) / 2 and std (ddof 1) |a - b| / sqrt(2) = sqrt(2) |a - mean|
    np.testing.assert_allclose(std, np.sqrt(2.0) * np.abs(single - mean), rtol=1e-4, atol=1e-2)
    three_mean, three_std = _run(model, subject, scheme, seed=6, samples=3)
    assert np.all(three_std >= 0) and np.all(np.isfinite(three_mean))


def test_the_tract_condition_reaches_the_adapter(model, subject, scheme):
    without = _run(model, subject, scheme, seed=0).mean
    tracts = np.zeros(subject["b0"].shape + (42,), dtype=np.float32)  # XTRACT has 42 tracts
    tracts[..., : subject["tracts"].shape[-1]] = subject["tracts"]
    with_tracts = _run(model, subject, scheme, seed=0, tracts=tracts).mean
    assert not np.allclose(without, with_tracts)
    with pytest.raises(ValueError, match="42"):
        _run(model, subject, scheme, seed=0, tracts=subject["tracts"])


def test_shell_scheme_targets_and_padding_grid(model, subject):
    scheme = shell_scheme([1000], 2, n_b0=1)
    grid = slice_grid(subject["b0"].shape, model)
    assert grid.padded == (24, 32)
    mean, _ = synthesise(model, subject["b0"], subject["mask"], scheme, subject["atlas"], SHELLS, grid,
                         FAST, seed=0)
    assert mean.shape == subject["b0"].shape + (3,)


def test_bad_inputs_are_refused(model, subject, scheme):
    with pytest.raises(ValueError, match="ADC atlas is required"):
        synthesise(model, subject["b0"], subject["mask"], scheme, None, SHELLS, sampler=FAST)
    with pytest.raises(ValueError, match="ADC atlas"):
        synthesise(model, subject["b0"], subject["mask"], scheme, subject["atlas"][..., :1], SHELLS, sampler=FAST)
    with pytest.raises(ValueError, match="mask"):
        synthesise(model, subject["b0"], subject["mask"][:-1], scheme, subject["atlas"], SHELLS, sampler=FAST)
    with pytest.raises(ValueError, match="empty"):
        synthesise(model, subject["b0"], np.zeros_like(subject["mask"]), scheme, subject["atlas"], SHELLS)


def test_sample_seeds_are_distinct_and_stable():
    seeds = {sample_seed(0, z, n, k) for z in range(4) for n in range(4) for k in range(3)}
    assert len(seeds) == 48
    assert sample_seed(7, 1, 2, 3) == sample_seed(7, 1, 2, 3) != sample_seed(8, 1, 2, 3)


def test_the_batch_for_memory_fills_the_given_fraction_and_stays_within_the_items():
    from bids_phydiff.synth.batching import batch_for_memory

    mib = 2**20
    assert batch_for_memory(1000 * mib, 10 * mib, items=10_000, fraction=0.5) == 50
    assert batch_for_memory(1000 * mib, 10 * mib, items=30, fraction=0.5) == 30  # no more than there are items
    assert batch_for_memory(5 * mib, 10 * mib, items=30, fraction=0.5) == 1  # at least one
    assert batch_for_memory(1e12, 1.0, items=10**6, cap=2048) == 2048


def test_automatic_batch_on_the_cpu_is_the_fixed_one_and_gives_the_same_synthesis(model, subject, scheme, caplog):
    from bids_phydiff.synth.batching import CPU_BATCH, auto_batch_size

    def probe(n):
        raise AssertionError("no probe on the CPU")

    assert auto_batch_size(torch.device("cpu"), 1000, probe) == CPU_BATCH
    assert auto_batch_size(torch.device("cpu"), 5, probe) == 5
    with caplog.at_level("INFO", logger="bids_phydiff.synth.volume"):
        auto = _run(model, subject, scheme, seed=2, batch_size=None).mean
    fixed = _run(model, subject, scheme, seed=2, batch_size=CPU_BATCH).mean
    np.testing.assert_array_equal(auto, fixed)
    messages = [r.getMessage() for r in caplog.records]
    assert any("15 items, ddim 3 steps, batch 15," in m for m in messages)  # all 15 items, under CPU_BATCH
    assert any(m.startswith("synthesised 3 volume(s) in") and "volumes/s" in m for m in messages)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_automatic_batch_on_cuda_is_measured_and_gives_the_same_synthesis(model, subject, scheme):
    from bids_phydiff.synth.batching import PROBE_ITEMS

    cuda_model = _randomise(PhyDiff(preset("tiny"))).cuda()
    cuda_model.load_state_dict(model.state_dict())
    auto = _run(cuda_model, subject, scheme, seed=2, batch_size=None).mean
    fixed = _run(cuda_model, subject, scheme, seed=2, batch_size=PROBE_ITEMS).mean
    assert np.abs(auto - fixed).max() < 5e-5 * np.abs(fixed).max()
