"""Every bad input and bad usage ends with its documented exit code and a message naming the file or
option, never a traceback, and leaves no output (DESIGN.md section 6, bids_phydiff/errors.py).

Each row runs ``run.py`` as a real process on a fresh tiny dataset (tests/conftest.py) with one thing
broken. Rows about unreadable files need a user that permissions stop: root is not stopped, so as root
those rows run the app inside a user namespace as an unprivileged user (``unshare -U --map-user``), and
skip with the reason where that is not possible. Rows marked ``memory_limit`` run under an address-space
limit, so a check that allocated what a lying header claims would fail with MemoryError instead of 65.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO

MEMORY_LIMIT = 2 * 2**30
"""Bytes of address space for the ``memory_limit`` rows; the app's checks need well under 1 GiB."""


def tree_digest(root: Path) -> dict[str, str]:
    """Name -> content hash of every file under ``root`` (to prove nothing was written there)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _dwi(bids: Path, sub="01", ext=".nii.gz") -> Path:
    return bids / f"sub-{sub}" / "dwi" / f"sub-{sub}_dwi{ext}"


# ------------------------------------------------------------------------------------------ breakers
# Each takes (bids, tmp) and breaks one thing.


def _break_3d(bids, tmp):
    img = nib.load(_dwi(bids))
    nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine).to_filename(_dwi(bids))


def _break_nan(bids, tmp):
    img = nib.load(_dwi(bids))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[2, 3, 1, 2] = np.nan
    nib.Nifti1Image(data, img.affine).to_filename(_dwi(bids))


def _break_bvec_length(bids, tmp):
    path = _dwi(bids, ext=".bvec")
    rows = np.loadtxt(path)
    rows[:, 2] *= 3.0
    np.savetxt(path, rows, fmt="%.6f")


def _write(relative: str, text: str) -> Callable:
    def breaker(bids, tmp):
        (bids / relative).write_text(text)
    return breaker


def _write_tmp(name: str, text: str) -> Callable:
    def breaker(bids, tmp):
        (tmp / name).write_text(text)
    return breaker


def _remove(pattern: str) -> Callable:
    def breaker(bids, tmp):
        for path in bids.glob(pattern):
            path.unlink()
    return breaker


def _chmod(relative: str, mode: int) -> Callable:
    def breaker(bids, tmp):
        (bids / relative).chmod(mode)
    return breaker


def _truncate_gz(bids, tmp):
    """Keep the header but cut the compressed stream: nibabel's EOFError while reading the data."""
    path = _dwi(bids)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _truncate_nii(bids, tmp):
    """An uncompressed .nii shorter than its header says (with its gradients renamed to match)."""
    img = nib.load(_dwi(bids))
    nii = _dwi(bids, ext=".nii")
    nib.save(img, nii)
    _dwi(bids).unlink()
    nii.write_bytes(nii.read_bytes()[:-100])


def _deep(key: str) -> str:
    return json.dumps({key: 0}).replace("0", "[" * 5000 + "]" * 5000)


def _lying_header(shape: tuple[int, ...]) -> Callable:
    """A small .nii.gz whose header claims ``shape`` float32, with matching gradients."""
    def breaker(bids, tmp):
        header = nib.Nifti1Header()
        header.set_data_dtype(np.float32)
        header.set_data_shape(shape)
        header["vox_offset"] = 352
        with gzip.open(_dwi(bids), "wb") as handle:
            handle.write(header.binaryblock + b"\0" * 4 + np.ones(1000, np.float32).tobytes())
        n = shape[3]
        _dwi(bids, ext=".bval").write_text(" ".join(["0"] + ["1000"] * (n - 1)) + "\n")
        bvecs = np.zeros((3, n))
        bvecs[2, 1:] = 1.0
        np.savetxt(_dwi(bids, ext=".bvec"), bvecs, fmt="%.1f")
    return breaker


def _symlink_to_ancestor(bids, tmp):
    (bids / "sub-01" / "dwi" / "loop").symlink_to("..")


def _rename_entity(value: str) -> Callable:
    def breaker(bids, tmp):
        for path in list((bids / "sub-01" / "dwi").glob("sub-01_dwi.*")):
            path.rename(path.with_name(path.name.replace("sub-01_", f"sub-01_acq-{value}_")))
    return breaker


def _not_a_bundle(bids, tmp):
    (tmp / "notabundle").mkdir()


def _blocking_file(bids, tmp):
    (tmp / "a_file").write_text("not a directory")


# ------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    """One bad input: ``names`` (formatted with bids, tmp, out) must appear in the error message."""

    id: str
    code: int
    names: str
    args: tuple[str, ...] = ()
    breaker: Callable | None = None
    level: str = "participant"
    validate: bool = False
    bids: str = "{bids}"
    out: str = "{tmp}/out"
    work: str = "{tmp}/work"
    unprivileged: bool = False
    memory_limit: bool = False
    needs_templates: bool = False


DWI = "{bids}/sub-01/dwi/sub-01_dwi"
FILTER = "{tmp}/filter.json"
PLUGIN = "{tmp}/plugin.yml"

CASES = [
    # usage, found by the parser before anything is read
    Case("unknown-option", 64, "--no-such-option", ("--no-such-option",)),
    Case("nprocs-zero", 64, "--nprocs", ("--nprocs", "0")),
    Case("negative-seed", 64, "--seed", ("--seed", "-1")),
    Case("unknown-level", 17, "everything", level="everything"),
    # usage, found when the configuration is built
    Case("output-is-bids-dir", 64, "{bids}", out="{bids}"),
    Case("output-inside-bids-dir", 64, "{bids}/derivatives/phydiff", out="{bids}/derivatives/phydiff"),
    Case("work-inside-bids-dir", 64, "{bids}/work", work="{bids}/work"),
    Case("work-dir-with-a-comma", 64, "--work-dir", work="{tmp}/work,1"),
    Case("filter-not-json", 64, FILTER, ("--bids-filter-file", FILTER), _write_tmp("filter.json", "{not json")),
    Case("filter-unknown-query", 64, FILTER, ("--bids-filter-file", FILTER),
         _write_tmp("filter.json", json.dumps({"bold": {}}))),
    Case("filter-not-a-mapping", 64, FILTER, ("--bids-filter-file", FILTER),
         _write_tmp("filter.json", json.dumps({"dwi": 5}))),
    Case("filter-disallowed-entity", 64, FILTER, ("--bids-filter-file", FILTER),
         _write_tmp("filter.json", json.dumps({"dwi": {"subject": "01"}}))),
    Case("filter-bad-value", 64, FILTER, ("--bids-filter-file", FILTER),
         _write_tmp("filter.json", json.dumps({"dwi": {"run": {"a": 1}}}))),
    Case("filter-deeply-nested", 64, FILTER, ("--bids-filter-file", FILTER), _write_tmp("filter.json", _deep("dwi"))),
    Case("plugin-unknown", 64, PLUGIN, ("--use-plugin", PLUGIN), _write_tmp("plugin.yml", "plugin: Bogus\n")),
    Case("plugin-args-not-a-mapping", 64, PLUGIN, ("--use-plugin", PLUGIN),
         _write_tmp("plugin.yml", "plugin: MultiProc\nplugin_args: 5\n")),
    Case("group-option-at-participant", 64, "--max-steps", ("--max-steps", "5")),
    Case("synthesis-option-without-model", 64, "--sampler", ("--sampler", "ddim")),
    Case("shells-without-model", 64, "--target-shells", ("--target-shells", "1000")),
    Case("participant-option-at-group", 64, "--samples", ("--samples", "2"), level="group"),
    Case("output-below-a-file", 73, "{tmp}/a_file/out", breaker=_blocking_file, out="{tmp}/a_file/out"),
    # inputs that do not exist
    Case("no-dataset", 66, "{tmp}/nothing", bids="{tmp}/nothing"),
    Case("no-dataset-description", 66, "{bids}", breaker=_remove("dataset_description.json")),
    Case("no-dwi", 66, "{bids}", breaker=_remove("sub-*/dwi/*_dwi.*")),
    Case("model-not-a-bundle", 66, "{tmp}/notabundle", ("--model", "{tmp}/notabundle"), _not_a_bundle),
    Case("group-without-prepared-runs", 66, "{tmp}/out", ("--output-resolution", "4"), level="group",
         needs_templates=True),
    # bad data
    Case("dwi-3d", 65, DWI + ".nii.gz", breaker=_break_3d),
    Case("bval-count", 65, DWI + ".bval", breaker=_write("sub-01/dwi/sub-01_dwi.bval", "0 1000 1000 2000\n")),
    Case("bvec-length", 65, DWI + ".bvec", breaker=_break_bvec_length),
    Case("nan-voxel", 65, DWI + ".nii.gz", breaker=_break_nan),
    Case("no-b0", 65, DWI + ".bval", breaker=_write("sub-01/dwi/sub-01_dwi.bval", "500 1000 1000 2000 2000\n")),
    Case("missing-bvec", 65, DWI + ".nii.gz", breaker=_remove("sub-01/dwi/sub-01_dwi.bvec")),
    Case("truncated-nii-gz", 65, DWI + ".nii.gz", breaker=_truncate_gz),
    Case("truncated-nii", 65, DWI + ".nii", breaker=_truncate_nii),
    Case("sidecar-not-json", 65, DWI + ".json", breaker=_write("sub-01/dwi/sub-01_dwi.json", "{bad")),
    Case("sidecar-deeply-nested", 65, DWI + ".json",
         breaker=_write("sub-01/dwi/sub-01_dwi.json", _deep("RepetitionTime"))),
    Case("description-deeply-nested", 65, "{bids}/dataset_description.json",
         breaker=_write("dataset_description.json", _deep("Name"))),
    Case("description-deeply-nested-validated", 65, "{bids}/dataset_description.json",
         breaker=_write("dataset_description.json", _deep("Name")), validate=True),
    Case("symlink-to-ancestor", 65, "{bids}/sub-01/dwi/loop", breaker=_symlink_to_ancestor),
    Case("entity-with-space", 65, "sub-01_acq-a b_dwi.nii.gz", breaker=_rename_entity("a b")),
    Case("entity-with-accent", 65, "sub-01_acq-é_dwi.nii.gz", breaker=_rename_entity("é")),
    Case("header-claims-30000-cubed", 65, DWI + ".nii.gz", breaker=_lying_header((30000, 30000, 30000, 38)),
         memory_limit=True),
    Case("header-claims-16-gib-volumes", 65, DWI + ".nii.gz", breaker=_lying_header((2048, 2048, 1024, 38)),
         memory_limit=True),
    # filters that select nothing
    Case("unknown-participant", 18, "sub-99", ("--participant-label", "99")),
    Case("unknown-session", 18, "['9']", ("--session-label", "9")),
    Case("filter-selects-nothing", 18, "nope", ("--bids-filter-file", FILTER),
         _write_tmp("filter.json", json.dumps({"dwi": {"acquisition": "nope"}}))),
    # the validator
    Case("validator-error", 16, "sub-02_dwi", validate=True,
         breaker=_write("sub-02/dwi/sub-02_dwi.bval", "0 1000 1000 2000 2000 2000\n")),
    # files the user cannot read
    Case("unreadable-sidecar", 66, DWI + ".json", breaker=_chmod("sub-01/dwi/sub-01_dwi.json", 0), unprivileged=True),
    Case("unreadable-folder", 66, "{bids}/sub-01/dwi", breaker=_chmod("sub-01/dwi", 0), unprivileged=True),
    Case("unreadable-dwi", 66, DWI + ".nii.gz", breaker=_chmod("sub-01/dwi/sub-01_dwi.nii.gz", 0), unprivileged=True),
    Case("unreadable-dwi-validated", 66, DWI + ".nii.gz", breaker=_chmod("sub-01/dwi/sub-01_dwi.nii.gz", 0),
         unprivileged=True, validate=True),
    Case("unreadable-folder-validated", 66, "{bids}/sub-01/dwi", breaker=_chmod("sub-01/dwi", 0), unprivileged=True,
         validate=True),
    Case("unreadable-dataset", 66, "{bids}", breaker=_chmod(".", 0), unprivileged=True),
]


def _unprivileged_prefix() -> list[str]:
    """A command prefix under which permissions apply to the app; skips when there is none."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None:
        pytest.skip("running as root and unshare (util-linux) is not installed: permissions would not apply")
    prefix = ["unshare", "-U", "--map-user=1000", "--map-group=1000"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root and no user namespace for an unprivileged user: {probe.stderr.strip()[:200]}")
    return prefix


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_with_its_code_naming_the_file_or_option(case, tiny_bids, tmp_path, request):
    places = {"bids": tiny_bids, "tmp": tmp_path}
    out = Path(case.out.format(**places))
    places["out"] = out
    if case.breaker is not None:
        case.breaker(tiny_bids, tmp_path)
    before = None if case.unprivileged else tree_digest(tiny_bids)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if case.needs_templates:
        env["TEMPLATEFLOW_HOME"] = str(request.getfixturevalue("shared_templateflow"))
    prefix = _unprivileged_prefix() if case.unprivileged else []
    command = [*prefix, sys.executable, str(REPO / "run.py"), case.bids.format(**places), str(out), case.level,
               "-w", case.work.format(**places), *(a.format(**places) for a in case.args)]
    if not case.validate:
        command.append("--skip-bids-validation")
    try:
        proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
                              preexec_fn=_limit_memory if case.memory_limit else None)
    finally:
        if case.unprivileged:
            subprocess.run(["chmod", "-R", "u+rwX", str(tiny_bids)], check=True)

    assert proc.returncode == case.code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if " ERROR " in line or "error:" in line)
    message = "\n".join(lines[first:])  # the error and its continuation lines
    assert case.names.format(**places) in message, proc.stderr[-3000:]
    if not case.unprivileged:
        assert tree_digest(tiny_bids) == before, "the input dataset changed"
    assert not (tiny_bids / "derivatives").exists() and not (tiny_bids / "work").exists()
    if out.is_dir() and not out.is_relative_to(tiny_bids):  # a log may be written; no derivative
        written = [p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] != "logs"]
        assert written == [], written


def test_cuda_requested_without_gpu_is_a_usage_error(tiny_bids, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; this test is about machines without one")
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), str(tiny_bids), str(tmp_path / "out"), "participant",
                           "-w", str(tmp_path / "work"), "--skip-bids-validation", "--device", "cuda"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 64 and "Traceback" not in proc.stderr
    assert "--device cuda" in proc.stderr and "no CUDA device" in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ the checks on their own


def test_a_lying_header_is_refused_before_its_data_is_read(tmp_path):
    """check_data_size compares the claim with the file: nibabel never gets to allocate the volume."""
    from bids_phydiff.bids.checks import MAX_DEFLATE_RATIO, check_data_size
    from bids_phydiff.errors import InputDataError

    bids = tmp_path / "bids"
    (bids / "sub-01" / "dwi").mkdir(parents=True)
    _lying_header((30000, 30000, 30000, 38))(bids, tmp_path)
    path = _dwi(bids)
    with pytest.raises(InputDataError, match="header claims") as exc:
        check_data_size(nib.load(path), path)
    assert str(path) in str(exc.value) and str(path.stat().st_size * MAX_DEFLATE_RATIO) in str(exc.value)
    # an honest file passes, compressed or not
    img = nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4))
    for name in ("ok.nii.gz", "ok.nii"):
        img.to_filename(tmp_path / name)
        check_data_size(nib.load(tmp_path / name), tmp_path / name)


def test_an_os_error_on_a_file_the_user_named_gets_that_files_code(tmp_path):
    """What cli/run.py does with an OSError that escapes the checks: 73 in an output folder, 66 in an
    input, and None (a bug: exit 1 with the trace) anywhere else."""
    import errno

    from bids_phydiff.errors import NoInputError, OutputError, from_os_error

    bids, out = tmp_path / "bids", tmp_path / "out"
    full = OSError(errno.ENOSPC, "No space left on device", str(out / "sub-01" / "x.nii.gz"))
    denied = PermissionError(errno.EACCES, "Permission denied", str(bids / "sub-01" / "dwi" / "a.bval"))
    elsewhere = PermissionError(errno.EACCES, "Permission denied", "/etc/somewhere")
    error = from_os_error(full, [bids], [out])
    assert isinstance(error, OutputError) and error.exit_code == 73 and "x.nii.gz" in str(error)
    error = from_os_error(denied, [bids], [out])
    assert isinstance(error, NoInputError) and error.exit_code == 66 and "a.bval" in str(error)
    assert from_os_error(elsewhere, [bids], [out]) is None
    assert from_os_error(OSError("no file"), [bids], [out]) is None


def _full_disk_write() -> OSError:
    """The OSError a real write to a full device raises: Linux's /dev/full answers every write with ENOSPC."""
    try:
        with open("/dev/full", "wb", buffering=0) as handle:
            handle.write(b"x")
    except OSError as exc:
        return exc
    raise AssertionError("a write to /dev/full succeeded")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_failing_storage_is_exit_74_with_what_to_do(tmp_path):
    """A full disk where the run keeps temporary files (TMPDIR; the write names no file) and an I/O error on
    any file are the storage's failure (74), not a bug (1): the message says what happened and what to do."""
    import errno

    from bids_phydiff.errors import OutputError, StorageError, from_os_error

    bids, out = tmp_path / "bids", tmp_path / "out"
    full = _full_disk_write()
    assert full.errno == errno.ENOSPC
    error = from_os_error(full, [bids], [out])
    assert isinstance(error, StorageError) and error.exit_code == 74
    assert "No space left" in str(error) and "free space" in str(error) and "rerun" in str(error)
    in_tmp = OSError(errno.EDQUOT, "Disk quota exceeded", "/tmp/tmpabc/x.nii.gz")
    assert from_os_error(in_tmp, [bids], [out]).exit_code == 74
    failed = OSError(errno.EIO, "Input/output error", str(bids / "sub-01" / "dwi" / "a.nii.gz"))
    error = from_os_error(failed, [bids], [out])
    assert isinstance(error, StorageError) and "a.nii.gz" in str(error) and "file system" in str(error)
    in_output = OSError(errno.ENOSPC, "No space left on device", str(out / "x.nii.gz"))
    assert isinstance(from_os_error(in_output, [bids], [out]), OutputError)
