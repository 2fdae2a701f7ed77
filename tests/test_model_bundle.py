"""The model bundle: bit-exact round trip, verification on load, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bids_phydiff.model import BundleError, GridSpec, load_bundle, read_bundle_config, save_bundle
from bids_phydiff.model.bundle import sha256_file

from test_model_phydiff import _randomise, phantom_batch, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = GridSpec(
    template="MNI152NLin6Asym",
    resolution=2.0,
    shape=(32, 32, 20),
    affine=((-2.0, 0, 0, 90.0), (0, 2.0, 0, -126.0), (0, 0, 2.0, -72.0), (0, 0, 0, 1.0)),
)


def _write(tmp_path, model=None, **kwargs):
    model = model or tiny()
    path = save_bundle(
        tmp_path / "model-default",
        model,
        grid=GRID,
        b_shells=[1000.0, 2000.0, 3000.0],
        normalisation={"method": "b0-p99.5", "range": [-1, 1]},
        **kwargs,
    )
    return model, path


def test_round_trip_is_bit_exact(tmp_path):
    model = tiny()
    _randomise(model)
    _, path = _write(tmp_path, model, metadata={"seed": 3})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "weights.safetensors"]
    bundle = load_bundle(path)
    loaded = bundle.model
    assert loaded.config == model.config and not loaded.training
    saved, again = model.state_dict(), loaded.state_dict()
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    b = phantom_batch(2, 32, tracts=True)
    args = (torch.randn(2, 1, 32, 32), torch.tensor([3, 700]), b.b0, b.bval, b.bvec, b.slice_pos, b.tracts)
    model.eval()
    assert torch.equal(model(*args), loaded(*args))
    assert bundle.grid == GRID and bundle.b_shells == (1000.0, 2000.0, 3000.0)
    assert bundle.metadata == {"seed": 3} and bundle.normalisation["method"] == "b0-p99.5"
    assert bundle.weights_sha256 == sha256_file(path / "weights.safetensors")


@pytest.mark.parametrize("metadata, shifts", [({}, 1), ({"sampler_shifts": 2}, 2), ({"sampler_shifts": 3}, None)])
def test_the_bundles_shifted_passes_become_the_models_default(tmp_path, metadata, shifts):
    _, path = _write(tmp_path, metadata=metadata)
    if shifts is None:
        with pytest.raises(BundleError, match=r"config\.json.*sampler_shifts"):
            load_bundle(path)
        return
    assert load_bundle(path).model.shifts == shifts


def test_config_records_version_grid_and_checksum(tmp_path):
    _, path = _write(tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == 1 and config["code_version"]
    assert config["grid"]["shape"] == [32, 32, 20] and config["b_shells"] == [1000.0, 2000.0, 3000.0]
    assert config["weights"]["sha256"] == sha256_file(path / "weights.safetensors")
    assert read_bundle_config(path)["model"] == config["model"]


def test_tampered_weights_are_refused(tmp_path):
    _, path = _write(tmp_path)
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"weights\.safetensors.*SHA-256"):
        load_bundle(path)


def test_unknown_format_version_is_refused(tmp_path):
    _, path = _write(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = 2
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"config\.json.*format_version 2"):
        load_bundle(path)


def _rewrite_weights(path, change):
    weights = path / "weights.safetensors"
    tensors = load_file(str(weights))
    change(tensors)
    save_file(tensors, str(weights))
    config = json.loads((path / "config.json").read_text())
    config["weights"]["sha256"] = sha256_file(weights)  # a consistent checksum: the content check must catch it
    (path / "config.json").write_text(json.dumps(config))


def test_missing_tensors_are_refused(tmp_path):
    _, path = _write(tmp_path)
    _rewrite_weights(path, lambda t: t.pop("backbone.patch_in.proj.weight"))
    with pytest.raises(BundleError, match=r"missing \['backbone\.patch_in\.proj\.weight'\]"):
        load_bundle(path)


def test_wrong_shapes_are_refused(tmp_path):
    _, path = _write(tmp_path)
    _rewrite_weights(path, lambda t: t.update({"backbone.out_norm.weight": torch.ones(7)}))
    with pytest.raises(BundleError, match=r"backbone\.out_norm\.weight.*\(7,\)"):
        load_bundle(path)


def test_folders_that_are_not_bundles_are_refused(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="config.json"):
        load_bundle(tmp_path / "empty")
    _, path = _write(tmp_path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        load_bundle(path)


def test_writing_is_atomic_and_never_overwrites_by_accident(tmp_path):
    model, path = _write(tmp_path)
    before = (path / "weights.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        _write(tmp_path, model)
    assert (path / "weights.safetensors").read_bytes() == before
    _randomise(model, seed=9)
    _write(tmp_path, model, overwrite=True)
    assert (path / "weights.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-default"]  # no staging or retired folders left


def test_grid_spec_is_validated():
    with pytest.raises(ValueError, match="shape"):
        GridSpec("MNI152NLin6Asym", 2.0, (32, 32), GRID.affine)
    with pytest.raises(ValueError, match="affine"):
        GridSpec("MNI152NLin6Asym", 2.0, (32, 32, 20), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
