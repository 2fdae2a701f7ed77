"""Atomic writes: a finished file appears under its name in one step; a failed or killed write leaves
nothing the next run cannot clean."""

from __future__ import annotations

import pytest

from bids_phydiff.atomic import atomic_path, remove_stale_temporaries


def test_a_failed_write_leaves_neither_the_target_nor_a_temporary(tmp_path):
    target = tmp_path / "sub-01" / "dwi" / "x_dwi.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.endswith(".tmp.nii.gz") and tmp.name.startswith(".")
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(target.parent.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and [p.name for p in target.parent.iterdir()] == ["x_dwi.nii.gz"]


def test_stale_temporaries_are_removed_below_the_root_only(tmp_path):
    mine, other = tmp_path / "sub-01" / "dwi", tmp_path / "sub-02" / "dwi"
    for folder in (mine, other):
        folder.mkdir(parents=True)
        (folder / ".x_dwi.ab12.tmp.nii.gz").write_text("left by SIGKILL")
        (folder / "x_dwi.nii.gz").write_text("kept")
    removed = remove_stale_temporaries(tmp_path / "sub-01")
    assert [p.name for p in removed] == [".x_dwi.ab12.tmp.nii.gz"]
    assert sorted(p.name for p in mine.iterdir()) == ["x_dwi.nii.gz"]
    assert (other / ".x_dwi.ab12.tmp.nii.gz").exists()  # another job's subject: untouched


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_outputs_are_readable_as_the_umask_allows_not_private(tmp_path, umask):
    """A shared HPC output folder: the derivatives and model folders get 0666/0777 less the umask, as a plain
    open()/mkdir() would, not tempfile's private 0600/0700."""
    import os
    import stat

    from bids_phydiff.atomic import current_umask, replace_dir, staging_dir

    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        target = tmp_path / "sub-01" / "x_dwi.json"
        with atomic_path(target) as tmp:
            tmp.write_text("{}")
        staging = staging_dir(tmp_path, prefix=".model-a.")
        (staging / "config.json").write_text("{}")
        folder = replace_dir(staging, tmp_path / "model-a")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


def test_model_bundle_and_checkpoint_files_are_readable_as_the_umask_allows(tmp_path):
    """safetensors writes its files 0600 whatever the umask (found by docker/smoke.sh on a shared output
    folder): the bundle's weights and a checkpoint's tensors get 0666 less the umask like every output."""
    import os
    import stat

    import torch

    from bids_phydiff.model import GridSpec, save_bundle
    from bids_phydiff.train.checkpoint import save_checkpoint
    from test_model_phydiff import tiny

    umask = 0o022
    model = tiny()
    grid = GridSpec(template="MNI152NLin6Asym", resolution=2.0, shape=(32, 32, 20),
                    affine=((-2.0, 0, 0, 90.0), (0, 2.0, 0, -126.0), (0, 0, 2.0, -72.0), (0, 0, 0, 1.0)))
    previous = os.umask(umask)
    try:
        bundle = save_bundle(tmp_path / "models" / "model-a", model, grid=grid, b_shells=[1000.0],
                             normalisation={"method": "b0-p99.5"})
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        checkpoint = save_checkpoint(tmp_path / "checkpoints", 1, model, model, optimizer, {"step": 1})
    finally:
        os.umask(previous)
    for folder in (bundle, checkpoint):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder
        files = sorted(p for p in folder.iterdir() if p.is_file())
        assert files
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
