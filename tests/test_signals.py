"""SIGTERM (a scheduler's time limit) and SIGINT (Ctrl-C) during prepare end the run with 143 and 130, as
during training and synthesis: no crash file, no traceback, no process left, no partial output, and a
rerun with the same work dir completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import PHANTOM_OPTIONS, start_app

pytestmark = pytest.mark.slow


def _default_signals() -> None:
    """In the child: SIGINT and SIGTERM as a user's shell gives them. A test run started in the background
    (``cmd &``) ignores SIGINT, the child inherits that, and the app rightly keeps an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _prepare(phantom, out, work, *extra):
    """Prepare sub-01 without motion correction (not what these tests are about; it would double the rerun)."""
    return start_app([phantom.bids_dir, out, "participant", "-w", work, "--participant-label", "01",
                      *PHANTOM_OPTIONS, "--hmc", "none", *extra], phantom.templateflow_home,
                     preexec_fn=_default_signals)


def _read_until(proc, text: str, timeout: float = 180) -> list[str]:
    """The output lines up to the first one containing ``text`` (all of it if the run ends first)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            break
    return lines


def _group_gone(pgid: int, timeout: float = 10) -> bool:
    """True once no process of the run's process group is left (workers and their children included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(
    ("signum", "code", "nprocs", "whole_group"),
    [
        (signal.SIGTERM, 143, 2, False),  # `kill PID`: only the main process hears it (MultiProc)
        (signal.SIGTERM, 143, 2, True),  # a scheduler signals every process of the job
        (signal.SIGINT, 130, 1, False),  # Ctrl-C with the Linear plugin: the node runs in the main process
    ],
    ids=["sigterm-multiproc", "sigterm-group", "sigint-linear"],
)
def test_a_signal_during_prepare_ends_the_run_with_its_exit_code(phantom_2sub, tmp_path, signum, code, nprocs,
                                                                 whole_group):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = _prepare(phantom_2sub, out, work, "--nprocs", nprocs)
    lines = _read_until(proc, "registering")  # a registration node is running
    time.sleep(1.0)
    if whole_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    rest, _ = proc.communicate(timeout=60)
    log = "".join(lines) + rest
    assert proc.returncode == code, log[-4000:]
    assert "Traceback" not in log and "failed to run" not in log, log[-4000:]
    assert _group_gone(proc.pid), "a worker process outlived the run"
    assert not list((out / "logs" / "crash").glob("*")), "an interruption is not a bug: no crash file"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or "desc-preproc_dwi.nii" in p.name]

    if signum == signal.SIGTERM and not whole_group:
        proc = _prepare(phantom_2sub, out, work, "--nprocs", nprocs)
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, log[-4000:]
        assert (out / "sub-01" / "dwi" / "sub-01_space-Phantom_res-04_desc-preproc_dwi.nii.gz").is_file()
        assert not list((out / "logs" / "crash").glob("*"))


_POOL_REPORT = """
import logging, os, signal, sys, threading, time
from bids_phydiff.workflows.execution import SignalGuard

logging.basicConfig(stream=sys.stdout, format="%(name)s: %(message)s")
SignalGuard.SIGNAL_WAIT_S = 1.0

def before(signum, frame):  # the handler in place before the guard: the command line's
    print("handed on", signum, flush=True)
    sys.exit(143)

signal.signal(signal.SIGTERM, before)
report = threading.Thread(target=logging.getLogger("concurrent.futures").error,
                          args=("exception calling callback: BrokenProcessPool",))
with SignalGuard(sys.argv[1]):
    report.start()
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler interrupts this
    report.join()
"""


def test_a_broken_pool_reported_just_before_the_signal_is_handled_stays_out_of_the_log(tmp_path):
    """A worker-pool error logged from another thread, and 0.3 s later SIGTERM: the order a scheduler's signal
    to the whole process group can give, workers dying before the main thread runs its handler. The signal
    wins (not a lost worker). In a child process, whose descendants the guard may stop, not this one's."""
    proc = subprocess.run([sys.executable, "-c", _POOL_REPORT, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 143 and "handed on 15" in proc.stdout, proc.stdout + proc.stderr
    assert "BrokenProcessPool" not in proc.stdout + proc.stderr


def test_a_worker_killed_from_outside_ends_the_run_with_its_own_error(phantom_2sub, tmp_path):
    """A MultiProc worker killed with no signal to the run (as the OOM killer does) breaks the pool, and Nipype
    would wait for its result for ever: the run ends at once with exit 71, a message that says what happened
    and what to do, no worker left behind and no partial output; the rerun completes."""
    from bids_phydiff.workflows.execution import _children

    out, work = tmp_path / "out", tmp_path / "work"
    proc = _prepare(phantom_2sub, out, work, "--nprocs", "2")
    lines = _read_until(proc, "registering")
    workers = _children(proc.pid)
    assert workers, "".join(lines)
    os.kill(workers[0], signal.SIGKILL)
    rest, _ = proc.communicate(timeout=60)
    log = "".join(lines) + rest
    assert proc.returncode == 71, log[-4000:]
    assert "a worker process died without reporting an error" in log and "--nprocs 1" in log, log[-4000:]
    assert "Traceback" not in log and "BrokenProcessPool" not in log, log[-4000:]
    assert _group_gone(proc.pid), "a worker process outlived the run"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or "desc-preproc_dwi.nii" in p.name]
    proc = _prepare(phantom_2sub, out, work, "--nprocs", "2")
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-4000:]
