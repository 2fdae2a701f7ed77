"""How prep/ runs ANTs (antspyx): thread count, temporary files, and where registrations run.

* ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process, at its first use, and antspyx offers
  no way to change it afterwards. prep/ sets it before its first ANTs call in a process and remembers the
  value. A registration asking for another count runs in a child Python process started with that count
  (so the count is always exact, and with one thread the same seed gives the same transform bit for bit).
  In-process calls that do not depend on it for their result (resampling, transform I/O) log the mismatch
  and go on with the process's count.
* The app's seed reaches ANTs as :func:`ants_seed` (ANTs ignores a seed of 0).
* antspyx writes temporary files into Python's temporary directory. Every call here points that directory
  (and ``TMPDIR`` for the child) at a fresh folder inside the caller's ``work_dir`` and removes the folder
  afterwards, so nothing is left in the system temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..errors import PhydiffError

log = logging.getLogger(__name__)

THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"

_lock = threading.RLock()
_process_threads: int | None = None


def ants_seed(seed: int) -> int:
    """The ``--random-seed`` ANTs gets for the app's ``seed`` (an integer >= 0): ``seed mod (2^31 - 1) + 1``,
    in 1..2^31 - 1. ANTs reads a seed of 0 as "seed from the clock", so passing the app's default 0 through
    made every registration's sampling, and so its result, differ from run to run."""
    return int(seed) % (2**31 - 1) + 1


class AntsError(PhydiffError, RuntimeError):
    """An ANTs step failed; the message names the inputs and ends with what ANTs reported."""


def _fix_threads(threads: int) -> None:
    global _process_threads
    threads = max(1, int(threads))
    if _process_threads is None:
        if "ants" in sys.modules:
            # someone imported (and may have used) antspyx before us: ITK's count is unknown
            _process_threads = -1
            log.debug("antspyx was imported before prep/ set ITK's thread count; registrations will run in a "
                      "child process")
            return
        os.environ[THREADS_ENV] = str(threads)
        _process_threads = threads
    elif _process_threads != threads:
        log.info("ITK in this process uses %s thread(s); %d requested for this step",
                 "an unknown number of" if _process_threads < 0 else _process_threads, threads)


@contextlib.contextmanager
def ants_session(work_dir: str | Path, threads: int = 1):
    """Context for in-process antspyx calls: yields the ``ants`` module with the temporary directory pointed
    into ``work_dir`` (removed on exit) and the ITK thread count set (first use in the process wins)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with _lock:
        _fix_threads(threads)
        scratch = Path(tempfile.mkdtemp(prefix="ants-tmp-", dir=work_dir))
        saved_tempdir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
        tempfile.tempdir = str(scratch)
        os.environ["TMPDIR"] = str(scratch)
        try:
            import ants

            yield ants
        finally:
            tempfile.tempdir = saved_tempdir
            if saved_env is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved_env
            shutil.rmtree(scratch, ignore_errors=True)


_CHILD = """
import json, sys
import ants
args = json.loads(sys.argv[1])
ants.registration(args, None)
"""


def can_run_in_process(threads: int) -> bool:
    """True when this process's ITK thread count is unset (and antspyx not yet imported) or ``threads``."""
    if _process_threads is None:
        return "ants" not in sys.modules
    return _process_threads == max(1, int(threads))


def run_registration(args: list[str], work_dir: str | Path, threads: int = 1, what: str = "registration",
                     isolate: bool | None = None) -> None:
    """Run ``antsRegistration`` with command-line ``args`` (file paths only) with ``threads`` ITK threads and
    the temporary directory inside ``work_dir``; its output goes to ``work_dir/antsRegistration.log``.

    ``isolate`` True runs it in a child Python process (the thread count is then exact whatever this
    process did before); None (default) does so only when this process's ITK already uses another thread
    count, and otherwise runs in-process (saving the 2-4 s of importing antspyx). On failure
    :class:`AntsError` carries ``what`` and the log's last lines.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "antsRegistration.log"
    if isolate is None:
        isolate = not can_run_in_process(threads)
    with open(log_path, "w") as out:
        out.write("antsRegistration " + " ".join(args) + "\n")
    if isolate:
        code = _run_child(args, work_dir, threads, log_path)
    else:
        code = _run_here(args, work_dir, threads, log_path)
    if code != 0:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "ERROR" in line or "rror:" in line or "does not exist" in line]
        raise AntsError(f"{what} failed (exit {code}, log {log_path}): " + " | ".join((errors or lines)[-3:]))


def _run_child(args: list[str], work_dir: Path, threads: int, log_path: Path) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="ants-tmp-", dir=work_dir))
    env = dict(os.environ)
    env.update({THREADS_ENV: str(max(1, int(threads))), "TMPDIR": str(scratch)})
    try:
        with open(log_path, "a") as out:
            proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], stdout=out,
                                  stderr=subprocess.STDOUT, env=env, cwd=str(scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return proc.returncode


def _run_here(args: list[str], work_dir: Path, threads: int, log_path: Path) -> int:
    with ants_session(work_dir, threads) as ants:
        try:
            with _fd_output_to(log_path):
                ants.registration(list(args), None)
        except RuntimeError as exc:
            with open(log_path, "a") as out:
                out.write(f"{exc}\n")
            return 1
    return 0


@contextlib.contextmanager
def _fd_output_to(path: Path):
    """Send what C++ code writes to file descriptors 1 and 2 into ``path`` (appended) for the duration
    (process-wide: output of other threads meanwhile lands there too)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
