"""Runs at the same time on shared folders, as a SLURM array starts them: one pybids index built once and
read by all, one work dir and one output dir shared by participant runs of different subjects.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest

from bids_phydiff.bids.layout import INDEX_FILE, MARKER_FILE, discover, open_layout
from bids_phydiff.bids.validation import validate

from conftest import PHANTOM_OPTIONS, start_app, write_tiny_dataset


def _discover_subjects(bids_dir: str, database_dir: str, start, queue) -> None:
    """In a child process: open the shared index and report the subjects found (or the error)."""
    start.wait(timeout=120)  # every process has imported pybids: they start indexing at the same moment
    try:
        runs = discover(open_layout(Path(bids_dir), Path(database_dir)))
        queue.put(sorted({r.subject for r in runs}))
    except BaseException as exc:  # the parent shows what went wrong
        queue.put(f"{type(exc).__name__}: {exc}")


def _open_at_once(bids_dir: Path, database_dir: Path, n: int = 4) -> list:
    ctx = multiprocessing.get_context("spawn")
    queue, start = ctx.Queue(), ctx.Barrier(n)
    procs = [ctx.Process(target=_discover_subjects, args=(str(bids_dir), str(database_dir), start, queue))
             for _ in range(n)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    return results


def test_processes_opening_a_new_shared_index_at_once_all_see_the_whole_dataset(tmp_path):
    bids = write_tiny_dataset(tmp_path / "bids", subjects=("01", "02", "03"))
    db = tmp_path / "db"
    assert _open_at_once(bids, db) == [["01", "02", "03"]] * 4
    assert sorted(p.name for p in db.iterdir()) == sorted([INDEX_FILE, MARKER_FILE, f"{INDEX_FILE}.lock"])


def test_a_matching_index_is_reused_and_a_changed_dataset_is_indexed_again(tmp_path):
    bids = write_tiny_dataset(tmp_path / "bids", subjects=("01",))
    db = tmp_path / "db"
    open_layout(bids, db)
    built = (db / INDEX_FILE).stat()
    assert [r.subject for r in discover(open_layout(bids, db))] == ["01"]
    assert (db / INDEX_FILE).stat().st_ino == built.st_ino  # reused, not rebuilt

    write_tiny_dataset(bids, subjects=("02",))  # a subject added after the index was built
    assert [r.subject for r in discover(open_layout(bids, db))] == ["01", "02"]
    assert json.loads((db / MARKER_FILE).read_text())["root"] == str(bids.resolve())


def test_an_index_of_another_dataset_is_not_reused(tmp_path):
    """pybids alone would answer from the root stored in the index, i.e. with the other dataset's files."""
    first = write_tiny_dataset(tmp_path / "first", subjects=("01",))
    second = write_tiny_dataset(tmp_path / "second", subjects=("07",))
    db = tmp_path / "db"
    open_layout(first, db)
    runs = discover(open_layout(second, db))
    assert [(r.subject, r.dwi.parents[2]) for r in runs] == [("07", second.resolve())]


def test_a_build_killed_midway_leaves_nothing_a_later_run_reads(tmp_path):
    bids = write_tiny_dataset(tmp_path / "bids", subjects=("01",))
    db = tmp_path / "db"
    db.mkdir()
    (db / ".build-abc123").mkdir()  # what SIGKILL during indexing leaves
    (db / ".build-abc123" / INDEX_FILE).write_bytes(b"half an index")
    assert [r.subject for r in discover(open_layout(bids, db))] == ["01"]
    assert not list(db.glob(".build-*"))


def test_runs_sharing_a_work_dir_without_a_database_dir_each_index_in_their_own_folder(tmp_path):
    from bids_phydiff.config import RunConfig

    common = dict(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level="participant",
                  work_dir=tmp_path / "work")
    first, second = (RunConfig(**common, run_id=run_id).database_dir for run_id in ("1_a", "1_b"))
    assert first != second and first.parent.parent == second.parent.parent == tmp_path / "work"
    shared = RunConfig(**common, bids_database_dir=tmp_path / "db", run_id="1_a")
    assert shared.database_dir == tmp_path / "db"


def _derivatives(out: Path, subject: str) -> list[str]:
    return sorted(p.name for p in (out / f"sub-{subject}" / "dwi").glob("*desc-preproc_dwi.*"))


@pytest.mark.slow
def test_two_participant_runs_share_output_work_and_database_dirs(phantom_2sub, tmp_path):
    """Two subjects started at the same moment, three times: each time a new output and database dir, the
    same work dir (so the later rounds also run the cached graph side by side). Without motion correction,
    which other tests cover, to keep the three rounds short."""
    work = tmp_path / "work"
    for attempt in range(3):
        out, db = tmp_path / f"out{attempt}", tmp_path / f"db{attempt}"
        procs = {
            subject: start_app([phantom_2sub.bids_dir, out, "participant", "-w", work, "--bids-database-dir", db,
                                "--participant-label", subject, *PHANTOM_OPTIONS, "--nprocs", "1",
                                "--hmc", "none"],
                               phantom_2sub.templateflow_home)
            for subject in ("01", "02")
        }
        logs = {}
        for subject, proc in procs.items():
            try:
                logs[subject], _ = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                raise
        for subject, proc in procs.items():
            assert proc.returncode == 0, f"round {attempt}, sub-{subject}:\n{logs[subject][-3000:]}"
            assert "Traceback" not in logs[subject], logs[subject][-3000:]
            assert _derivatives(out, subject) == [f"sub-{subject}_space-Phantom_res-04_desc-preproc_dwi.{ext}"
                                                  for ext in ("bval", "bvec", "json", "nii.gz")]
            assert (out / f"sub-{subject}.html").is_file()
        assert sum("indexing" in log for log in logs.values()) == 1  # built once, read by the other run
        validate(out)
        assert not [p for p in out.rglob("*") if ".tmp" in p.name]
        assert not list((out / "logs").glob("crash/*"))
