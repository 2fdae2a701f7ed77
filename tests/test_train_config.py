"""Training configuration: presets, files, and errors that exit with the usage code (64)."""

from __future__ import annotations

import json

import pytest

from bids_phydiff.errors import EXIT_USAGE, UsageError
from bids_phydiff.model.config import PRESETS, PhyDiffConfig
from bids_phydiff.train.config import TRAIN_PRESETS, TrainConfig, TrainConfigError, load_train_config
from bids_phydiff.train.lr import learning_rate


def test_presets_match_model_presets_and_paper_optimiser():
    assert set(TRAIN_PRESETS) == set(PRESETS)
    for name, cfg in TRAIN_PRESETS.items():
        assert cfg.model == name and cfg.model_config() == PRESETS[name]
        assert (cfg.lr, cfg.weight_decay, cfg.betas, cfg.grad_clip) == (5e-4, 1e-4, (0.9, 0.95), 1.0)
    assert TRAIN_PRESETS["paper"].batch_size == 48
    assert load_train_config("small") is TRAIN_PRESETS["small"]


def test_json_and_yaml_files_on_a_preset(tmp_path):
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"preset": "small", "max_steps": 7, "model": "tiny", "betas": [0.8, 0.9]}))
    cfg = load_train_config(js)
    assert (cfg.max_steps, cfg.model, cfg.betas, cfg.batch_size) == (7, "tiny", (0.8, 0.9), 32)
    yml = tmp_path / "c.yaml"
    yml.write_text("max_steps: 12\nlr: 1e-4\nmodel:\n" + "\n".join(
        "  " + line for line in json.dumps(PRESETS["tiny"].to_dict(), indent=1).splitlines()) + "\n")
    cfg = load_train_config(yml)
    assert cfg.lr == 1e-4 and cfg.max_steps == 12 and isinstance(cfg.model, PhyDiffConfig)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


@pytest.mark.parametrize(
    "content, words",
    [
        ({"max_step": 3}, ["max_step", "unknown"]),
        ({"batch_size": 0}, ["batch_size"]),
        ({"lr": "fast"}, ["lr"]),
        ({"preset": "huge"}, ["preset", "huge"]),
        ({"model": "medium"}, ["model", "medium"]),
        ({"model": {"backbone": {"levels": []}, "colour": 1}}, ["model", "colour"]),
        ([1, 2], ["object"]),
        ({"augment_shift": -2}, ["augment_shift", ">= 0"]),
        ({"augment_flip": "yes"}, ["augment_flip"]),
        ({"augment_flip": True, "model": PRESETS["tiny"].replace(context="dti").to_dict()},
         ["augment_flip", "context"]),
    ],
)
def test_file_errors_name_file_and_key_and_exit_64(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(TrainConfigError) as info:
        load_train_config(path)
    assert isinstance(info.value, UsageError) and info.value.exit_code == EXIT_USAGE
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_unparsable_and_unknown_names(tmp_path):
    for arg in ("nonsense", tmp_path / "none.yaml"):
        with pytest.raises(TrainConfigError):
            load_train_config(arg)
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: [1,\n")
    with pytest.raises(TrainConfigError, match="bad.yaml"):
        load_train_config(bad)


def test_learning_rate_warmup_then_cosine_to_floor():
    lrs = [learning_rate(s, 100, 1e-3, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4)
    with pytest.raises(ValueError):
        learning_rate(100, 100, 1e-3, 10, 0.1)


def test_shipped_variant_configs_load_and_switch_what_they_ablate():
    """configs/*.yml are what docs/evaluation.md trains: each must load, stay on the tiny preset's backbone,
    and differ from the full model in exactly the switch its name promises."""
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    loaded = {p.stem: load_train_config(p) for p in sorted(configs.glob("*.yml"))}
    full = loaded["phydiff"].model_config()
    assert full == PRESETS["tiny"] and full.adapter is not None and full.schedule.gap > 0 and full.objective == "x0"
    expected = {
        "phydiff": full,
        "phydiff-v": full.replace(objective="v"),
        "phydiff-eps": full.replace(objective="eps"),
        "ddpm": full.replace(adapter=None, schedule=full.schedule.__class__(**{**full.schedule.to_dict(), "gap": 0.0})),
        "no-query": full.replace(conditioning=full.conditioning.__class__(
            **{**full.conditioning.to_dict(), "query_mapping": False})),
        "no-adapter": full.replace(adapter=None),
        "regression": full.replace(objective="regression"),
        "phydiff-context": full.replace(context="dti"),
    }
    assert set(loaded) == set(expected)
    for name, cfg in loaded.items():
        assert cfg.model_config() == expected[name], name
        assert (cfg.max_steps, cfg.batch_size, cfg.lr) == (loaded["phydiff"].max_steps, 16, 5e-4), name
    context = loaded["phydiff-context"]
    assert context.model_config().context == "dti" and context.model_config().backbone.in_channels == 11
    assert context.context_shells == (1000.0,)
    assert all(cfg.context_shells is None for name, cfg in loaded.items() if name != "phydiff-context")


def test_context_shells_round_trip_and_are_checked(tmp_path):
    model = PRESETS["tiny"].replace(context="sh4").to_dict()
    assert TrainConfig().context_shells is None and "context_shells" in TrainConfig().to_dict()
    path = tmp_path / "ctx.yaml"
    path.write_text("preset: tiny\ncontext_shells: [2000, 1000, \"3e3\"]\nmodel:\n" + "\n".join(
        "  " + line for line in json.dumps(model, indent=1).splitlines()) + "\n")
    cfg = load_train_config(path)
    assert cfg.context_shells == (1000.0, 2000.0, 3000.0)
    assert cfg.to_dict()["context_shells"] == [1000.0, 2000.0, 3000.0]
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig.from_dict({"model": model, "context_shells": None}).context_shells is None
    for bad, words in [([0], ["context_shells", "> 0"]), ([-1000], ["context_shells"]), ([], ["context_shells"]),
                       ("1000", ["context_shells"]), (["high"], ["context_shells"]), ([True], ["context_shells"])]:
        bad_path = tmp_path / "bad.json"
        bad_path.write_text(json.dumps({"model": model, "context_shells": bad}))
        with pytest.raises(TrainConfigError) as info:
            load_train_config(bad_path)
        assert info.value.exit_code == EXIT_USAGE and str(bad_path) in str(info.value)
        assert all(word in str(info.value) for word in words), (bad, str(info.value))
    # a b0-only model has no context to take from a shell
    with pytest.raises(TrainConfigError, match="context_shells.*no"):
        TrainConfig(model="tiny", context_shells=(1000,))
