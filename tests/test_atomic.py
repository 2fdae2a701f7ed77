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
