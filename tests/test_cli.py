"""The command line: help, version, label parsing, the frozen config and its defaults.

The exit code of every bad input and bad usage is in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bids_phydiff import __version__
from conftest import REPO


def test_version_and_help_through_run_py():
    version = subprocess.run([sys.executable, str(REPO / "run.py"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0
    assert version.stdout.strip() == f"bids_phydiff {__version__}"
    helptext = subprocess.run([sys.executable, str(REPO / "run.py"), "--help"], capture_output=True, text=True)
    assert helptext.returncode == 0
    for option in ("--participant-label", "--session-label", "--bids-filter-file", "--skip-bids-validation",
                   "--work-dir", "--nprocs", "--omp-nthreads", "--mem", "--use-plugin", "--template",
                   "--output-resolution", "--model", "--seed", "--device"):
        assert option in helptext.stdout


def test_help_states_the_defaults_the_run_uses(capsys):
    """--max-steps counts the backbone stage only (the adapter stage adds its own steps, as the README
    says), and the sampler defaults in the help are those of SynthOptions and app_sampler."""
    from bids_phydiff import config
    from bids_phydiff.cli.parser import build_parser
    from bids_phydiff.spaces import DEFAULT_TEMPLATE
    from bids_phydiff.synth.inputs import app_sampler

    text = " ".join(build_parser().format_help().split())
    assert "--max-steps MAX_STEPS steps of the backbone stage" in text
    assert f"(default {config.SAMPLER_METHOD})" in text and f"(default {config.SAMPLER_STEPS};" in text
    assert f"(default {config.SAMPLER_ETA:g};" in text and f"(default {config.SAMPLER_STRENGTH:g})" in text
    assert "default: the bundle's choice, made at training" in text
    assert f"(default: {DEFAULT_TEMPLATE})" in text
    synth = config.SynthOptions()
    assert (app_sampler().method, app_sampler().steps, app_sampler().eta, app_sampler().strength,
            app_sampler().shifts) == (synth.sampler, synth.steps, synth.eta, synth.strength, synth.shifts)
    from bids_phydiff.model.sampling import SHIFT_COUNTS

    shifts = next(a for a in build_parser()._actions if a.dest == "shifts")
    assert tuple(shifts.choices) == SHIFT_COUNTS


@pytest.mark.parametrize("seed, ok", [("0", True), ("4294967295", True), ("-1", False), ("4294967296", False),
                                      ("x", False)])
def test_seed_is_checked_when_parsing(seed, ok, capsys):
    from bids_phydiff.cli.parser import parse_args

    if ok:
        assert parse_args(["b", "o", "participant", "--seed", seed]).seed == int(seed)
        return
    with pytest.raises(SystemExit) as exc:
        parse_args(["b", "o", "participant", "--seed", seed])
    assert exc.value.code == 64 and "--seed" in capsys.readouterr().err


def test_participant_label_aliases_strip_prefix():
    from bids_phydiff.cli.parser import parse_args

    a = parse_args(["b", "o", "participant", "--participant_label", "sub-01", "02", "--session-label", "ses-A"])
    b = parse_args(["b", "o", "participant", "--participant-label", "01", "sub-02", "--skip_bids_validator"])
    assert a.participant_label == b.participant_label == ["01", "02"]
    assert a.session_label == ["A"]
    assert b.skip_bids_validation and not a.skip_bids_validation


def test_validator_errors_of_other_participants_do_not_stop_a_run(tiny_bids):
    """A .bval with one value too many in sub-02: a run limited to sub-01 goes on, one with sub-02 stops
    (the exit code 16 of a whole run is a row of tests/test_bad_inputs.py)."""
    from bids_phydiff.bids.validation import validate
    from bids_phydiff.errors import ValidationFailed

    bval = tiny_bids / "sub-02" / "dwi" / "sub-02_dwi.bval"
    bval.write_text("0 1000 1000 2000 2000 2000\n")
    validate(tiny_bids, ["01"])
    with pytest.raises(ValidationFailed, match="VOLUME_COUNT_MISMATCH"):
        validate(tiny_bids, ["02"])


def test_config_is_frozen_and_saved_to_work_dir_and_logs(tiny_bids, tmp_path):
    from bids_phydiff.cli.options import build_config
    from bids_phydiff.cli.parser import parse_args

    args = parse_args([str(tiny_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                       "--participant-label", "sub-02", "--nprocs", "2", "--omp-nthreads", "1", "--seed", "7",
                       "--mem", "8GB", "--output-resolution", "4"])
    config = build_config(args)
    with pytest.raises(Exception):
        config.seed = 3  # frozen
    paths = config.save()
    saved = [json.loads(p.read_text()) for p in paths]
    assert saved[0] == saved[1]
    assert paths[0] == tmp_path / "w" / "config.json"
    assert paths[1].parent == tmp_path / "out" / "logs"
    assert saved[0]["participant_label"] == ["02"]
    assert saved[0]["seed"] == 7 and saved[0]["nprocs"] == 2 and saved[0]["mem_gb"] == 8.0
    assert saved[0]["output_resolution"] == 4.0
    assert saved[0]["bids_dir"] == str(tiny_bids.resolve())


def test_level_options_take_the_config_defaults_unless_given(tiny_bids, tmp_path):
    from bids_phydiff.cli.options import build_config
    from bids_phydiff.cli.parser import parse_args
    from bids_phydiff.config import SynthOptions, TrainOptions

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text("{}")
    base = [str(tiny_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"), "--model", str(bundle)]
    config = build_config(parse_args(base))
    assert config.synth == SynthOptions() and config.train == TrainOptions()
    config = build_config(parse_args(base + ["--steps", "20", "--eta", "0", "--target-shells", "1000,2000"]))
    assert (config.synth.steps, config.synth.eta, config.synth.target_shells) == (20, 0.0, (1000.0, 2000.0))
    assert config.synth.strength == SynthOptions().strength
    assert build_config(parse_args(base + ["--shifts", "1"])).synth.shifts == 1
    with pytest.raises(SystemExit):
        parse_args(base + ["--shifts", "3"])
    group = build_config(parse_args([str(tiny_bids), str(tmp_path / "out"), "group", "-w", str(tmp_path / "w"),
                                     "--max-steps", "7", "--xtract-atlas", "none"]))
    assert group.synth == SynthOptions()
    assert (group.train.max_steps, group.train.use_xtract, group.train.model_label) == (7, False, "default")
    assert (group.train.context, group.train.context_shells) == (None, None)
    group = build_config(parse_args([str(tiny_bids), str(tmp_path / "out"), "group", "-w", str(tmp_path / "w"),
                                     "--context", "sh4", "--context-shells", "1000,700"]))
    assert (group.train.context, group.train.context_shells) == ("sh4", (1000.0, 700.0))
