"""The app in a hostile runtime: read-only input, unwritable HOME and working directory, no network.

The end-to-end test runs the participant level (prepare) on a 1-subject phantom inside a user + mount +
network namespace (``unshare -rnm``). Inside it the input dataset and HOME are read-only bind mounts:
``chmod a-w`` alone stops nobody who is root in a user namespace (the files appear to be its own), so the
mounts are what make "read-only" true. Without such namespaces the test skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bids_phydiff.cli.environment import harden_environment

REPO = Path(__file__).resolve().parents[1]

CACHE_VARIABLES = ("XDG_CACHE_HOME", "MPLCONFIGDIR", "TRITON_CACHE_DIR", "TEMPLATEFLOW_HOME")


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARIABLES + ("XDG_CONFIG_HOME", "NIPYPE_NO_ET")}
    env.update(extra)
    return env


def _unwritable_home(tmp_path: Path) -> Path:
    """A HOME below a regular file: no process, root included, can create anything there."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    return blocker / "home"


# ---------------------------------------------------------------------------------------------------------
# harden_environment on its own


def test_unwritable_home_moves_every_cache_to_a_private_tmp_dir(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = _clean_env(HOME=str(_unwritable_home(tmp_path)), TMPDIR=str(tmp))
    changed = harden_environment(env)

    private = tmp / f"bids_phydiff-{os.getuid()}"
    assert private.is_dir()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    for name in CACHE_VARIABLES:
        assert name in changed, name
        assert Path(env[name]).parent == private, (name, env[name])
    assert env["NIPYPE_NO_ET"] == "1"


def test_variables_the_user_set_are_kept(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    mine = {name: str(tmp_path / f"mine-{name}") for name in CACHE_VARIABLES}
    env = _clean_env(HOME=str(_unwritable_home(tmp_path)), TMPDIR=str(tmp), NIPYPE_NO_ET="0", **mine)
    changed = harden_environment(env)
    assert changed == {}
    assert {name: env[name] for name in CACHE_VARIABLES} == mine
    assert env["NIPYPE_NO_ET"] == "0"
    assert not (tmp / f"bids_phydiff-{os.getuid()}").exists()


def test_writable_home_changes_no_cache_location(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = _clean_env(HOME=str(home), TMPDIR=str(tmp_path))
    changed = harden_environment(env)
    assert set(changed) == {"NIPYPE_NO_ET"}
    assert list(home.iterdir()) == []  # nothing is created in HOME either


def test_a_shared_tmp_dir_that_others_can_write_is_not_used(tmp_path):
    tmp = tmp_path / "tmp"
    squatted = tmp / f"bids_phydiff-{os.getuid()}"
    squatted.mkdir(parents=True)
    squatted.chmod(0o777)
    env = _clean_env(HOME=str(_unwritable_home(tmp_path)), TMPDIR=str(tmp))
    harden_environment(env)
    private = Path(env["MPLCONFIGDIR"]).parent
    assert private != squatted and private.parent == tmp
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_a_filled_default_templateflow_home_stays_in_use_when_the_cache_home_moves(tmp_path):
    """~/.cache is read-only but holds a filled TemplateFlow home: the caches move, the templates stay."""
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    home = tmp_path / "home"
    cache = home / ".cache"
    (cache / "templateflow" / "tpl-X").mkdir(parents=True)
    code = ("import json, sys; from bids_phydiff.cli.environment import harden_environment as h; "
            "env = json.loads(sys.argv[1]); h(env); print(json.dumps(env))")
    script = f'mount --bind "{cache}" "{cache}" && mount -o remount,bind,ro "{cache}" "{cache}" && exec "$@"'
    env = _clean_env(HOME=str(home), TMPDIR=str(tmp_path))
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, "-c", code, json.dumps(env)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["TEMPLATEFLOW_HOME"] == str(cache / "templateflow")
    assert Path(result["XDG_CACHE_HOME"]).parent.parent == tmp_path


# ---------------------------------------------------------------------------------------------------------
# end to end: read-only input, read-only HOME and cwd, no network


def _namespace_problem() -> str | None:
    """None when ``unshare -rnm`` can make a read-only bind mount here, else why not."""
    if sys.platform != "linux":
        return "needs Linux namespaces"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = ('d=$(mktemp -d) && mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" "$d" && '
             '! touch "$d/x" 2>/dev/null; rc=$?; umount "$d" 2>/dev/null; rmdir "$d"; exit $rc')
    proc = subprocess.run(["unshare", "-rnm", "sh", "-c", probe], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return f"unshare -rnm cannot make read-only bind mounts here: {proc.stderr.strip()[:200]}"
    return None


# Runs inside the namespaces: make $RO_DIRS read-only, prove it and that the network is gone, run the app.
_INNER = r"""
set -e
for d in $RO_DIRS; do
    mount --bind "$d" "$d"
    mount -o remount,bind,ro "$d" "$d"
    if touch "$d/.write-probe" 2>/dev/null; then echo "still writable: $d" >&2; exit 97; fi
done
"$PYTHON" -c 'import socket,sys
try:
    socket.create_connection(("1.1.1.1", 443), timeout=3)
except OSError:
    sys.exit(0)
sys.exit(98)'
cd "$HOME"
exec "$@"
"""


def _snapshot(root: Path) -> dict:
    out = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        out[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from bids_phydiff.phantom import PhantomConfig, generate

    root = tmp_path_factory.mktemp("hardening")
    dataset = generate(root / "bids", PhantomConfig(subjects=1, resolution=4.0, seed=0))
    return root, dataset


@pytest.mark.slow
def test_participant_prepare_with_read_only_input_home_and_no_network(phantom):
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    root, dataset = phantom
    bids, out, work, tmp, home = root / "bids", root / "out", root / "work", root / "tmp", root / "home"
    for folder in (tmp, home):
        folder.mkdir()
    subprocess.run(["chmod", "-R", "a-w", str(bids), str(home)], check=True)
    before_input, before_home = _snapshot(bids), _snapshot(home)

    env = _clean_env(HOME=str(home), TMPDIR=str(tmp), TEMPLATEFLOW_HOME=str(dataset.templateflow_home),
                     RO_DIRS=f"{bids} {home}", PYTHON=sys.executable)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    app = [sys.executable, str(REPO / "run.py"), str(bids), str(out), "participant", "-w", str(work),
           "--template", "Phantom", "--output-resolution", "4", "--nprocs", "1", "--seed", "0", "--hmc", "none"]
    try:
        proc = subprocess.run(["unshare", "-rnm", "sh", "-c", _INNER, "sh", *app], env=env,
                              capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(bids), str(home)], check=False)
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode not in (97, 98), f"the sandbox did not hold: {log}"
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{log}"

    derivatives = out / "sub-01" / "dwi"
    for pattern in ("desc-preproc_dwi.nii.gz", "desc-preproc_dwi.bval", "desc-preproc_dwi.bvec",
                    "desc-preproc_dwi.json", "desc-brain_mask.nii.gz", "dwiref.nii.gz"):
        found = list(derivatives.glob(f"sub-01_space-Phantom_res-*_{pattern}"))
        assert len(found) == 1, f"no single *_{pattern}; have {sorted(p.name for p in derivatives.iterdir())}"
    assert (out / "dataset_description.json").is_file()

    assert _snapshot(bids) == before_input, "the input dataset changed"
    assert _snapshot(home) == before_home, "HOME changed"
    # the caches went to the private folder under TMPDIR (uid 0 inside the user namespace)
    private = tmp / "bids_phydiff-0"
    assert private.is_dir(), sorted(p.name for p in tmp.iterdir())


def test_version_answers_when_no_folder_at_all_is_writable(tmp_path):
    """``docker run --read-only`` without a tmpfs /tmp: no TMPDIR, /tmp, /var/tmp, HOME or working directory
    can be written. Python's tempfile then finds no folder at all; ``--version`` must still answer (found by
    docker/smoke.sh: it used to end in a FileNotFoundError traceback, exit 1)."""
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    from bids_phydiff import __version__

    home = tmp_path / "home"
    home.mkdir()
    env = _clean_env(HOME=str(home), RO_DIRS=f"/tmp /var/tmp {home}", PYTHON=sys.executable)
    env.pop("TMPDIR", None)
    proc = subprocess.run(["unshare", "-rnm", "sh", "-c", _INNER, "sh", sys.executable, str(REPO / "run.py"),
                           "--version"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode not in (97, 98), f"the sandbox did not hold: {proc.stderr[-2000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"bids_phydiff {__version__}"
