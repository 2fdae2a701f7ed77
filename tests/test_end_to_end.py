"""The whole loop through ``run.py`` at tiny scale: participant (prepare), group (train), participant with
``--model`` (synthesise), on a 3-subject phantom at 4 mm with its tract atlas (so the adapter stage runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_phydiff.bids.validation import validate
from bids_phydiff.model.bundle import load_bundle
from bids_phydiff.phantom import PhantomConfig, generate
from bids_phydiff.prep.gradients import read_fsl
from bids_phydiff.prep.motion import parameters_of, read_confounds, rotation_angle, rotation_matrix

from conftest import REPO

PHANTOM = PhantomConfig(subjects=3, resolution=4.0, seed=2)
TRAINING = "preset: tiny\nmax_steps: 30\nadapter_steps: 5\nbatch_size: 8\nwarmup_steps: 5\nval_every: 10\n" \
           "val_samples: 16\ncheckpoint_every: 0\n"
SPACE = "space-Phantom_res-04"
FAST = ["--steps", "2", "--batch-size", "64"]


def app(args: list, home: Path, timeout: float = 900, **kwargs):
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(home))
    cmd = [sys.executable, str(REPO / "run.py"), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    phantom = generate(root / "bids", PHANTOM)
    home, out, work = phantom.templateflow_home, root / "out", root / "work"
    common = [phantom.bids_dir, out, None, "-w", work, "--template", "Phantom", "--output-resolution", "4",
              "--skip-bids-validation"]
    proc = app([*common[:2], "participant", *common[3:], "--nprocs", "2"], home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root / "train.yml").write_text(TRAINING)
    proc = app([*common[:2], "group", *common[3:], "--train-config", root / "train.yml", "--model-label", "tiny",
                "--val-subjects", "03"], home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = out / "models" / "model-tiny"
    proc = app([*common[:2], "participant", *common[3:], "--participant-label", "03", "--model", bundle,
                "--samples", "2", "--output-space", "native", *FAST], home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "phantom": phantom, "home": home, "out": out, "work": work, "bundle": bundle,
            "common": common, "log": proc.stderr}


def copy_prepared(loop, out: Path) -> None:
    """A fresh output dir holding a copy of sub-03's prepared files (so synthesis need not prepare)."""
    if not out.exists():
        (out / "sub-03").mkdir(parents=True)
        shutil.copytree(loop["out"] / "sub-03" / "dwi", out / "sub-03" / "dwi",
                        ignore=shutil.ignore_patterns("*desc-synth*"))


def synth(loop, out: Path, *args, **kwargs):
    """Synthesise sub-03 into ``out`` (see :func:`copy_prepared`)."""
    copy_prepared(loop, out)
    common = loop["common"]
    return app([common[0], out, "participant", *common[3:], "--participant-label", "03", *args], loop["home"],
               **kwargs)


def _synth(out: Path, name: str = f"sub-03_{SPACE}_desc-synth_dwi") -> Path:
    """The path of a synthesis output without extension."""
    return out / "sub-03" / "dwi" / name


def nii(stem: Path) -> Path:
    return Path(f"{stem}.nii.gz")


def test_group_level_writes_a_bundle_that_loads(loop):
    bundle = loop["bundle"]
    for name in ("config.json", "weights.safetensors", "adc_atlas.nii.gz", "tract_atlas.nii.gz", "train.json",
                 "training.tsv", "training_loss.png"):
        assert (bundle / name).is_file(), name
    loaded = load_bundle(bundle)
    assert loaded.grid.template == "Phantom" and loaded.model.config.adapter is not None
    info = json.loads((bundle / "train.json").read_text())
    assert info["subjects"] == {"train": ["01", "02"], "validation": ["03"]}
    assert info["metrics"]["steps_per_stage"] == {"backbone": 30, "adapter": 5}
    assert info["metrics"]["final_val_loss"] < info["metrics"]["initial_val_loss"]
    atlas = nib.load(bundle / "adc_atlas.nii.gz")
    assert atlas.shape == loaded.grid.shape + (3,)  # one volume per shell


def test_synthesis_writes_the_acquired_scheme_with_sidecars_and_metrics(loop):
    out = loop["out"]
    img = nib.load(nii(_synth(out)))
    prepared = out / "sub-03" / "dwi" / f"sub-03_{SPACE}_desc-preproc_dwi"
    assert img.shape == nib.load(f"{prepared}.nii.gz").shape
    synth_table = read_fsl(f"{_synth(out)}.bval", f"{_synth(out)}.bvec")
    np.testing.assert_allclose(synth_table.bvals, read_fsl(f"{prepared}.bval", f"{prepared}.bvec").bvals)
    data = np.asarray(img.dataobj)
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 0
    std = nib.load(nii(_synth(out, f"sub-03_{SPACE}_desc-synthstd_dwi")))
    assert std.shape == img.shape and np.asarray(std.dataobj).max() > 0  # two samples differ
    meta = json.loads(Path(f"{_synth(out)}.json").read_text())
    weights = hashlib.sha256((loop["bundle"] / "weights.safetensors").read_bytes()).hexdigest()
    assert meta["ModelChecksum"] == f"sha256:{weights}"
    chosen = json.loads((loop["bundle"] / "config.json").read_text())["metadata"]["sampler_shifts"]
    assert chosen in (1, 2)  # the training's choice, which the synthesis takes without --shifts
    assert (meta["Sampler"], meta["SamplingSteps"], meta["Strength"], meta["Samples"], meta["RandomSeed"],
            meta["ShiftedPasses"]) == ("ddim", 2, 0.8, 2, 0, chosen)
    assert meta["SkullStripped"] is True and meta["Sources"][0].startswith("bids::sub-03/dwi/")
    shell_metrics = Path(str(_synth(out)).replace("_dwi", "_shellmetrics") + ".tsv").read_text().splitlines()
    methods = {line.split("\t")[0] for line in shell_metrics[1:]}
    assert methods == {"phydiff", "physics_baseline"} and len(shell_metrics) == 1 + 2 * 4  # 3 shells + all
    assert {"psnr_mean", "ssim_mean", "seam_mean", "sharpness_mean"} <= set(shell_metrics[0].split("\t"))
    report = out / "sub-03_synthesis.html"
    assert "desc-synth_dwi.png" in report.read_text()
    assert "<th>seam</th><th>sharpness</th>" in report.read_text()
    assert (out / "sub-03" / "figures" / "sub-03_desc-synth_dwi.png").stat().st_size > 1000


def test_outputs_validate(loop):
    validate(loop["out"])


def test_native_space_output_is_on_the_run_grid_with_bvecs_rotated_back(loop):
    out, raw = loop["out"], loop["phantom"].bids_dir / "sub-03" / "dwi" / "sub-03_dwi"
    native = _synth(out, "sub-03_desc-synth_dwi")
    img, source = nib.load(f"{native}.nii.gz"), nib.load(f"{raw}.nii.gz")
    assert img.shape == source.shape
    np.testing.assert_allclose(img.affine, source.affine, atol=1e-4)
    back = read_fsl(f"{native}.bval", f"{native}.bvec")
    original = read_fsl(f"{raw}.bval", f"{raw}.bvec")
    dw = original.bvals > 50
    cos = np.abs(np.sum(back.bvecs[dw] * original.bvecs[dw], axis=1))
    # template -> native undoes native -> template; what stays is each volume's head rotation found by motion
    # correction (the native output is the head in the b0 frame), which moves a vector by at most its angle
    confounds = read_confounds(out / "sub-03" / "dwi" / "sub-03_desc-confounds_timeseries.tsv")
    head = np.array([rotation_angle(rotation_matrix(r)) for r in parameters_of(confounds)[:, 3:]])
    assert np.all(np.degrees(np.arccos(np.clip(cos, 0, 1))) <= np.degrees(head[dw]) + 0.05)
    template_bvecs = read_fsl(f"{_synth(out)}.bval", f"{_synth(out)}.bvec").bvecs[dw]
    assert np.degrees(np.arccos(np.clip(np.abs(np.sum(template_bvecs * original.bvecs[dw], 1)), 0, 1))).max() > 2.0


def test_same_seed_same_output_and_another_seed_differs(loop, tmp_path):
    args = ["--model", loop["bundle"], "--target-shells", "1000,2500", "--target-directions", "2", *FAST]
    results = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        proc = synth(loop, tmp_path / name, *args, "--seed", str(seed))
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[name] = np.asarray(nib.load(nii(_synth(tmp_path / name))).dataobj)
    assert results["a"].shape[3] == 1 + 2 + 2  # a b0, then two directions on each shell
    np.testing.assert_array_equal(results["a"], results["b"])
    assert not np.array_equal(results["a"], results["c"])
    assert "outside the range of the atlas shells" not in proc.stderr  # 2500 lies between shells: interpolated


def test_resynthesis_leaves_no_outputs_of_the_earlier_scheme_and_states_the_real_step_count(loop, tmp_path):
    from bids_phydiff.model.sampling import timesteps
    from bids_phydiff.synth.inputs import app_sampler

    out = tmp_path / "out"
    proc = synth(loop, out, "--model", loop["bundle"], "--samples", "2", *FAST)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = Path(f"{_synth(out, f'sub-03_{SPACE}_desc-synth_metrics')}.tsv")
    std = nii(_synth(out, f"sub-03_{SPACE}_desc-synthstd_dwi"))
    assert metrics.is_file() and std.is_file()
    proc = synth(loop, out, "--model", loop["bundle"], "--target-shells", "1000", "--target-directions", "2",
                 "--sampler", "ddpm", "--strength", "0.005", "--batch-size", "64")
    assert proc.returncode == 0, proc.stderr[-2000:]
    leftovers = [p.name for p in (out / "sub-03" / "dwi").iterdir() if "metrics" in p.name or "synthstd" in p.name]
    assert leftovers == []  # they described the acquired scheme, which this synthesis replaced
    meta = json.loads(Path(f"{_synth(out)}.json").read_text())
    ddpm_steps = len(timesteps(app_sampler("ddpm", strength=0.005), 1000))
    assert meta["Sampler"] == "ddpm" and meta["SamplingSteps"] == ddpm_steps and ddpm_steps < 1000


def test_a_bundle_for_another_grid_is_refused(loop, tmp_path):
    other = tmp_path / "model-other"
    shutil.copytree(loop["bundle"], other)
    config = json.loads((other / "config.json").read_text())
    config["grid"]["shape"] = [s + 2 for s in config["grid"]["shape"]]
    (other / "config.json").write_text(json.dumps(config))
    for name in ("adc_atlas.nii.gz", "tract_atlas.nii.gz"):  # a consistent bundle, only on another grid
        img = nib.load(other / name)
        padded = np.pad(np.asarray(img.dataobj), [(1, 1)] * 3 + [(0, 0)])
        nib.save(nib.Nifti1Image(padded, img.affine), other / name)
    proc = synth(loop, tmp_path / "out", "--model", other, *FAST)
    assert proc.returncode == 65, proc.stderr[-2000:]
    assert "not the model grid" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").rglob("*desc-synth*"))


def test_a_corrupt_bundle_is_refused(loop, tmp_path):
    bad = tmp_path / "model-bad"
    shutil.copytree(loop["bundle"], bad)
    weights = bad / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = synth(loop, tmp_path / "out", "--model", bad, *FAST)
    assert proc.returncode == 65, proc.stderr[-2000:]
    assert "weights.safetensors" in proc.stderr and "SHA-256" in proc.stderr
    assert not list((tmp_path / "out").rglob("*desc-synth*"))


def test_a_killed_run_leaves_no_partial_output_and_the_rerun_completes(loop, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(loop["home"]))
    copy_prepared(loop, out)
    common = loop["common"]
    cmd = [sys.executable, str(REPO / "run.py"), str(common[0]), str(out), "participant", *map(str, common[3:]),
           "--participant-label", "03", "--model", str(loop["bundle"]), "--sampler", "ddpm", "--batch-size", "8"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:  # wait until sampling is under way
        line = proc.stdout.readline()
        lines.append(line)
        if "synthesising" in line:
            break
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, "".join(lines) + rest
    left = [p.name for p in out.rglob("*") if "desc-synth" in p.name or ".tmp" in p.name]
    assert left == []
    proc = synth(loop, out, "--model", loop["bundle"], *FAST)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert nii(_synth(out)).is_file()


def test_torchrun_trains_on_two_processes(loop, tmp_path):
    """``torchrun --nproc-per-node 2 run.py ... group`` (gloo on CPU): one bundle, written by rank 0."""
    (tmp_path / "train.yml").write_text("preset: tiny\nmax_steps: 4\nadapter_steps: 0\nbatch_size: 4\n"
                                        "val_every: 0\nval_samples: 4\ncheckpoint_every: 0\n")
    common = loop["common"]
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(loop["home"]), OMP_NUM_THREADS="1")
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
           str(REPO / "run.py"), str(common[0]), str(loop["out"]), "group", *map(str, common[3:]),
           "--train-config", str(tmp_path / "train.yml"), "--model-label", "ddp", "--xtract-atlas", "none",
           "--omp-nthreads", "1", "--nprocs", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((loop["out"] / "models" / "model-ddp" / "train.json").read_text())
    assert info["world_size"] == 2 and info["metrics"]["steps"] == 4
    assert load_bundle(loop["out"] / "models" / "model-ddp").model.config.adapter is None
    assert list((loop["out"] / "logs").glob("group-*_rank-1.log"))  # each rank logs; only rank 0 saves


def _keep_volumes(stem: Path, keep) -> None:
    """Rewrite a prepared series ``<stem>.nii.gz/.bval/.bvec`` with the volumes ``keep`` only."""
    from bids_phydiff.prep.gradients import GradientTable, write_fsl

    img, table = nib.load(nii(stem)), read_fsl(f"{stem}.bval", f"{stem}.bvec")
    data = np.asarray(img.dataobj)[..., keep]
    nib.Nifti1Image(data, img.affine, img.header).to_filename(nii(stem))
    write_fsl(GradientTable(table.bvals[keep], table.bvecs[keep]), f"{stem}.bval", f"{stem}.bvec")


def test_a_context_bundle_synthesises_the_shells_a_run_was_not_scanned_with(loop, tmp_path):
    """Q-space completion (issue 19) through ``run.py``: group with ``--context dti --context-shells 1000`` on the
    three-shell subjects; participant synthesis of b = 2000 and 3000 for a run scanned at b = 1000 only
    (validator-clean); with the acquired scheme, the metrics hold the tensor extrapolation of the context shell."""
    (tmp_path / "train.yml").write_text("preset: tiny\nmax_steps: 4\nadapter_steps: 0\nbatch_size: 4\n"
                                        "warmup_steps: 1\nval_every: 0\nval_samples: 4\ncheckpoint_every: 0\n")
    common = loop["common"]
    proc = app([common[0], loop["out"], "group", *common[3:], "--train-config", tmp_path / "train.yml",
                "--model-label", "ctx", "--context", "dti", "--context-shells", "1000", "--xtract-atlas", "none",
                "--val-subjects", "03"], loop["home"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = loop["out"] / "models" / "model-ctx"
    config = json.loads((bundle / "config.json").read_text())
    assert config["model"]["context"] == "dti" and config["metadata"]["context"] == {"kind": "dti", "shells": [1000.0]}

    one_shell = tmp_path / "one-shell"
    copy_prepared(loop, one_shell)
    stem = one_shell / "sub-03" / "dwi" / f"sub-03_{SPACE}_desc-preproc_dwi"
    bvals = read_fsl(f"{stem}.bval", f"{stem}.bvec").bvals
    _keep_volumes(stem, np.flatnonzero(bvals < 1500))  # scanned with b0 and b = 1000 only
    proc = synth(loop, one_shell, "--model", bundle, "--target-shells", "2000,3000", "--target-directions", "6",
                 *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dti context from the b = 1000 shell" in proc.stderr
    table = read_fsl(f"{_synth(one_shell)}.bval", f"{_synth(one_shell)}.bvec")
    assert sorted(set(table.bvals[table.bvals > 50].tolist())) == [2000.0, 3000.0]
    data = np.asarray(nib.load(nii(_synth(one_shell))).dataobj)
    assert data.shape[3] == table.bvals.size and np.isfinite(data).all() and data.max() > 0
    validate(one_shell)

    acquired = tmp_path / "acquired"
    proc = synth(loop, acquired, "--model", bundle, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = Path(str(_synth(acquired)).replace("_dwi", "_shellmetrics") + ".tsv").read_text().splitlines()
    per_method = {}
    for line in rows[1:]:
        per_method.setdefault(line.split("\t")[0], []).append(line.split("\t")[1])
    assert set(per_method) == {"phydiff", "physics_baseline", "tensor_extrapolation"}
    assert per_method["tensor_extrapolation"] == per_method["phydiff"]  # every shell, and all
