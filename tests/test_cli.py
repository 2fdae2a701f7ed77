"""The command line: help, version, the frozen config, and an exit code per bad input (DESIGN.md section 6)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_phydiff import __version__
from bids_phydiff.cli.run import main
from conftest import REPO


def tree_digest(root: Path) -> dict[str, str]:
    """Name -> content hash of every file under ``root`` (to prove nothing was written there)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_app(bids, out, *extra, level="participant", tmp_path=None, validate=False):
    work = (tmp_path or Path(out).parent) / "work"
    args = [str(bids), str(out), level, "-w", str(work), *extra]
    if not validate:
        args.append("--skip-bids-validation")
    return main(args)


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


def test_usage_errors_exit_64_and_unknown_level_17(tiny_bids, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_bids), str(tmp_path / "out"), "participant", "--no-such-option"])
    assert exc.value.code == 64
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_bids), str(tmp_path / "out"), "participant", "--nprocs", "0"])
    assert exc.value.code == 64
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_bids), str(tmp_path / "out"), "everything"])
    assert exc.value.code == 17
    assert "unknown analysis level" in capsys.readouterr().err


def test_participant_label_aliases_strip_prefix():
    from bids_phydiff.cli.parser import parse_args

    a = parse_args(["b", "o", "participant", "--participant_label", "sub-01", "02", "--session-label", "ses-A"])
    b = parse_args(["b", "o", "participant", "--participant-label", "01", "sub-02", "--skip_bids_validator"])
    assert a.participant_label == b.participant_label == ["01", "02"]
    assert a.session_label == ["A"]
    assert b.skip_bids_validation and not a.skip_bids_validation


def test_output_inside_bids_dir_is_refused_and_nothing_written(tiny_bids, tmp_path, caplog):
    before = tree_digest(tiny_bids)
    for out in (tiny_bids, tiny_bids / "derivatives" / "phydiff"):
        assert run_app(tiny_bids, out, tmp_path=tmp_path) == 64
    assert "inside" in caplog.text or "is the BIDS dataset" in caplog.text
    assert tree_digest(tiny_bids) == before
    assert not (tiny_bids / "derivatives").exists()


def test_work_dir_inside_bids_dir_is_refused(tiny_bids, tmp_path):
    code = main([str(tiny_bids), str(tmp_path / "out"), "participant", "-w", str(tiny_bids / "work"),
                 "--skip-bids-validation"])
    assert code == 64
    assert not (tiny_bids / "work").exists()


def test_missing_dataset_exits_66(tmp_path):
    assert run_app(tmp_path / "nothing", tmp_path / "out", tmp_path=tmp_path) == 66
    (tmp_path / "empty").mkdir()
    assert run_app(tmp_path / "empty", tmp_path / "out", tmp_path=tmp_path) == 66  # no dataset_description


def test_dataset_without_dwi_exits_66(tiny_bids, tmp_path, caplog):
    for f in tiny_bids.rglob("*_dwi.*"):
        f.unlink()
    assert run_app(tiny_bids, tmp_path / "out", tmp_path=tmp_path) == 66
    assert "no DWI" in caplog.text


def test_unwritable_output_exits_73(tiny_bids, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert run_app(tiny_bids, blocker / "out", tmp_path=tmp_path) == 73
    assert str(blocker / "out") in caplog.text


def _dwi(bids: Path, sub="01") -> Path:
    return bids / f"sub-{sub}" / "dwi" / f"sub-{sub}_dwi.nii.gz"


def _break_3d(bids):
    img = nib.load(_dwi(bids))
    nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine).to_filename(_dwi(bids))
    return _dwi(bids), "3D"


def _break_bval_count(bids):
    path = _dwi(bids).with_name("sub-01_dwi.bval")
    path.write_text("0 1000 1000 2000\n")
    return path, "4 b-values"


def _break_bvec_length(bids):
    path = _dwi(bids).with_name("sub-01_dwi.bvec")
    rows = np.loadtxt(path)
    rows[:, 2] *= 3.0
    np.savetxt(path, rows, fmt="%.6f")
    return path, "not unit length"


def _break_nan(bids):
    img = nib.load(_dwi(bids))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[2, 3, 1, 2] = np.nan
    nib.Nifti1Image(data, img.affine).to_filename(_dwi(bids))
    return _dwi(bids), "NaN/Inf"


def _break_no_b0(bids):
    path = _dwi(bids).with_name("sub-01_dwi.bval")
    path.write_text("500 1000 1000 2000 2000\n")
    return path, "no b0"


def _break_missing_bvec(bids):
    _dwi(bids).with_name("sub-01_dwi.bvec").unlink()
    return _dwi(bids), "no .bvec"


@pytest.mark.parametrize(
    "breaker", [_break_3d, _break_bval_count, _break_bvec_length, _break_nan, _break_no_b0, _break_missing_bvec]
)
def test_bad_dwi_exits_65_naming_the_file_and_writes_no_derivative(breaker, tiny_bids, tmp_path, caplog):
    bad_file, problem = breaker(tiny_bids)
    before = tree_digest(tiny_bids)
    out = tmp_path / "out"
    assert run_app(tiny_bids, out, tmp_path=tmp_path) == 65
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(str(bad_file) in m and problem in m for m in errors), errors
    assert tree_digest(tiny_bids) == before
    assert not list(out.glob("sub-*")), "no derivative may be written when an input is bad"


def test_filters_that_select_nothing_exit_18(tiny_bids, tmp_path, caplog):
    assert run_app(tiny_bids, tmp_path / "out", "--participant-label", "99", tmp_path=tmp_path) == 18
    assert "sub-99" in caplog.text
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"dwi": {"acquisition": "nope"}}))
    assert run_app(tiny_bids, tmp_path / "out", "--bids-filter-file", str(filt), tmp_path=tmp_path) == 18
    assert run_app(tiny_bids, tmp_path / "out", "--session-label", "9", tmp_path=tmp_path) == 18


def test_bad_filter_file_is_a_usage_error(tiny_bids, tmp_path):
    filt = tmp_path / "filter.json"
    filt.write_text("{not json")
    assert run_app(tiny_bids, tmp_path / "out", "--bids-filter-file", str(filt), tmp_path=tmp_path) == 64
    filt.write_text(json.dumps({"bold": {}}))
    assert run_app(tiny_bids, tmp_path / "out", "--bids-filter-file", str(filt), tmp_path=tmp_path) == 64


def test_validation_errors_exit_16_and_name_the_file(tiny_bids, tmp_path, caplog):
    # a .bval with one value too many: the validator reports a volume count mismatch
    bval = _dwi(tiny_bids, "02").with_name("sub-02_dwi.bval")
    bval.write_text("0 1000 1000 2000 2000 2000\n")
    assert run_app(tiny_bids, tmp_path / "out", tmp_path=tmp_path, validate=True) == 16
    assert "sub-02_dwi" in caplog.text
    # an error in another participant's files does not stop a run limited to a healthy one
    from bids_phydiff.bids.validation import validate
    from bids_phydiff.errors import ValidationFailed

    validate(tiny_bids, ["01"])
    with pytest.raises(ValidationFailed, match="VOLUME_COUNT_MISMATCH"):
        validate(tiny_bids, ["02"])


def test_cuda_requested_without_gpu_is_an_error(tiny_bids, tmp_path, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; this test is about machines without one")
    assert run_app(tiny_bids, tmp_path / "out", "--device", "cuda", tmp_path=tmp_path) == 64
    assert "no CUDA device" in caplog.text


@pytest.mark.parametrize("level, option, message", [
    ("participant", ["--max-steps", "5"], "group-level option"),
    ("participant", ["--sampler", "ddim"], "need(s) --model"),
    ("participant", ["--target-shells", "1000"], "need(s) --model"),
    ("group", ["--samples", "2"], "participant-level option"),
])
def test_an_option_of_the_other_level_is_a_usage_error(level, option, message, tiny_bids, tmp_path, caplog):
    from bids_phydiff.cli.run import main

    code = main([str(tiny_bids), str(tmp_path / "out"), level, "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", *option])
    assert code == 64
    assert message in caplog.text and option[0] in caplog.text


def test_model_that_is_not_a_bundle_is_named(tiny_bids, tmp_path, caplog):
    from bids_phydiff.cli.run import main

    (tmp_path / "notabundle").mkdir()
    code = main([str(tiny_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--model", str(tmp_path / "notabundle")])
    assert code == 66 and "notabundle" in caplog.text and "config.json" in caplog.text


def test_config_is_frozen_and_saved_to_work_dir_and_logs(tiny_bids, tmp_path):
    from bids_phydiff.cli.config import build_config
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
