"""Run a Nipype workflow the way the run's config asks: plugin, processes, memory, crash files, and
SIGTERM/SIGINT, which end the run as they do outside Nipype (not as a failed node), and a worker killed from
outside, which ends it at once instead of leaving Nipype waiting."""

from __future__ import annotations

import _thread
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ..errors import PhydiffError, WorkerLostError

LOGGER = logging.getLogger(__name__)

POLL_SECONDS = 0.2
"""MultiProc polls every 2 s by default; short nodes make that the bottleneck (stack-facts.md)."""


def plugin_settings(nprocs: int, mem_gb: float | None, plugin: dict | None) -> tuple[str, dict]:
    """The Nipype plugin and its arguments: a ``--use-plugin`` YAML if given, else MultiProc or Linear."""
    if plugin:
        name = plugin["plugin"]
        args = dict(plugin.get("plugin_args") or {})
    elif nprocs > 1:
        name, args = "MultiProc", {"n_procs": nprocs, "raise_insufficient": False, "maxtasksperchild": 1}
    else:
        name, args = "Linear", {}
    if name in ("MultiProc", "LegacyMultiProc"):
        args.setdefault("n_procs", nprocs)
        if mem_gb:
            args.setdefault("memory_gb", mem_gb)
    return name, args


def _quiet_nipype(quiet: bool) -> None:
    """Node-by-node messages only with -v: Nipype's own config decides its loggers' levels."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    level = "WARNING" if quiet else "INFO"
    for name in ("workflow_level", "interface_level", "utils_level"):
        nipype_config.set("logging", name, level)
    nipype_logging.update_logging(nipype_config)


def run_workflow(workflow, work_dir: Path, crash_dir: Path, nprocs: int, mem_gb: float | None = None,
                 plugin: dict | None = None, stop_on_first_crash: bool = False) -> None:
    """Execute ``workflow`` with its cache under ``work_dir``; crash files go to ``crash_dir``.

    Raises :class:`PhydiffError` naming the crash files when nodes fail, :class:`WorkerLostError` (71) at once
    when a MultiProc worker is killed from outside (an OOM kill). A SIGTERM or SIGINT during the
    run stops it, its worker processes and theirs, and then reaches the handler that was in place before
    (the command line's: exit 143 or 130), whatever Nipype made of it.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    crash_dir.mkdir(parents=True, exist_ok=True)
    workflow.base_dir = str(work_dir)
    workflow.config["execution"].update(
        {
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "poll_sleep_duration": POLL_SECONDS,
            "stop_on_first_crash": stop_on_first_crash,
            "remove_unnecessary_outputs": False,
            "hash_method": "content",
            # Nipype's graph viewer files sit at the top of the work dir, shared by runs that share it
            "create_report": False,
        }
    )
    workflow.config["monitoring"] = {"enabled": False}
    _quiet_nipype(logging.getLogger("bids_phydiff").getEffectiveLevel() > logging.DEBUG)
    name, args = plugin_settings(nprocs, mem_gb, plugin)
    LOGGER.info("running workflow %s with the %s plugin %s", workflow.name, name, args or "")
    before = set(crash_dir.glob("crash-*"))
    with SignalGuard(crash_dir) as guard:
        try:
            workflow.run(plugin=name, plugin_args={**args, "status_callback": guard.check})
        except (PoolBroken, RuntimeError) as exc:
            if guard.signum is not None:
                return  # the guard hands the signal on when the block ends
            # BrokenProcessPool: Nipype submitted to the pool after a worker died, before the guard's report
            if isinstance(exc, (PoolBroken, BrokenProcessPool)):
                guard.stop_workers()
                raise WorkerLostError(_worker_lost(workflow.name, nprocs)) from None
            crashes = sorted(set(crash_dir.glob("crash-*")) - before)
            listing = "\n  ".join(str(c) for c in crashes) or "(no crash file written)"
            detail = _first_error(crashes)
            raise PhydiffError(
                f"workflow {workflow.name} failed: {exc}\n{detail}crash files:\n  {listing}"
            ) from None


class RunInterrupted(BaseException):
    """Raised in the main process by :class:`SignalGuard` to stop the Nipype run at once."""


class PoolBroken(BaseException):
    """Raised in the main process by :class:`SignalGuard` when a MultiProc worker died without a result:
    Nipype would wait for it for ever."""


def _worker_lost(name: str, nprocs: int) -> str:
    return (f"workflow {name}: a worker process died without reporting an error, killed from outside "
            f"(most often by the system or the job scheduler for lack of memory; see the kernel log or the "
            f"job's accounting). Give the job more memory, or run fewer nodes at once: --nprocs "
            f"{max(1, nprocs // 2)} (now {nprocs}) or --mem-gb. The work directory keeps what finished; "
            f"rerun the same command to continue.")


def _is_broken_pool(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, BrokenProcessPool) or "BrokenProcessPool" in record.getMessage()


class SignalGuard:
    """Makes SIGTERM and SIGINT win over Nipype, which turns any exception inside a node into a failed node.

    In the main process the first signal is recorded and :class:`RunInterrupted` raised; if Nipype swallows
    it, :meth:`check` (Nipype's status callback, called around every node) raises it again. A forked
    worker process dies of the signal (its default action). When the block ends after a signal, every
    descendant process is stopped, the crash files of interrupted nodes are removed (an interruption is
    not a bug), and the signal is handed to the handler that was in place before: the command line's
    raises its own exception (exit 143 or 130); a default disposition ends the process.

    A worker that dies with no signal to the run (the kernel's or the scheduler's OOM killer) breaks the
    pool; Nipype would wait for its result for ever. The pool's report of it, in the pool's manager
    thread, makes the guard interrupt the main thread with :class:`PoolBroken` instead.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    QUIET_AFTER = ("nipype.workflow", "concurrent.futures")
    """Loggers silenced after a signal: the failed node and the broken worker pool are its echo, not news."""
    SIGNAL_WAIT_S = 2.0
    """How long a record from another thread waits for a signal that may be on its way to the main thread."""

    def __init__(self, crash_dir: Path):
        self.crash_dir = Path(crash_dir)
        self.signum: int | None = None
        self.pool_broken = False
        self._raising_pool_broken = False
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}
        self._started = 0.0

    def __enter__(self) -> "SignalGuard":
        self._started = time.time()
        for name in self.QUIET_AFTER:
            logging.getLogger(name).addFilter(self._quiet)
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                previous = signal.getsignal(signum)
                if previous != signal.SIG_IGN:  # e.g. SIGINT of a job started with '&' stays ignored
                    self._previous[signum] = previous
                    signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a worker forked by MultiProc: die as the signal says
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self._raising_pool_broken and self.signum is None:
            self._raising_pool_broken = False
            raise PoolBroken()
        if self.signum is None:
            self.signum = signum
            raise RunInterrupted(signum)

    def _quiet(self, record: logging.LogRecord) -> bool:
        if self.pool_broken:
            return False  # the run ends with its own message for it
        if self.signum is None and threading.current_thread() is not threading.main_thread():
            # When a scheduler signals the whole process group, the workers die first and the pool's
            # manager thread reports the broken pool before the main thread has run its handler.
            deadline = time.monotonic() + self.SIGNAL_WAIT_S
            while self.signum is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.signum is None and _is_broken_pool(record) and self._interrupt_main():
                return False
        return self.signum is None

    def _interrupt_main(self) -> bool:
        """Raise :class:`PoolBroken` in the main thread (through this guard's own handler, as a signal
        would); False where the guard has no handler to do it with."""
        handled = [s for s in (signal.SIGTERM, signal.SIGINT) if s in self._previous]
        if not handled:
            return False
        self.pool_broken = self._raising_pool_broken = True
        _thread.interrupt_main(handled[0])
        return True

    def stop_workers(self) -> None:
        """Stop every descendant process (after a lost worker: the others may still be running)."""
        _stop_descendants(self._pid)

    def check(self, node=None, status=None) -> None:
        """Nipype's ``status_callback``: raise again after a signal or a lost worker that a node swallowed."""
        if self.signum is not None and os.getpid() == self._pid:
            raise RunInterrupted(self.signum)
        if self.pool_broken and os.getpid() == self._pid:
            raise PoolBroken()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.signum is None:
            self._restore()
            for name in self.QUIET_AFTER:
                logging.getLogger(name).removeFilter(self._quiet)
            return False
        _stop_descendants(self._pid)
        self._remove_interruption_crashes()
        self._restore()
        previous = self._previous.get(self.signum)
        if callable(previous):
            previous(self.signum, None)  # the command line's raise: Terminated, KeyboardInterrupt
        else:
            signal.signal(self.signum, signal.SIG_DFL)
            os.kill(os.getpid(), self.signum)
        return False

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _remove_interruption_crashes(self) -> None:
        for crash in self.crash_dir.glob("crash-*"):
            try:
                if crash.stat().st_mtime >= self._started - 1 and RunInterrupted.__name__ in crash.read_text(
                        errors="replace"):
                    crash.unlink()
            except OSError:
                pass


def _children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (Linux /proc; none where it cannot tell)."""
    kids: list[int] = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids.extend(int(p) for p in listing.read_text().split())
        except (OSError, ValueError):
            pass
    return kids


def _stop_descendants(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM every descendant of ``pid`` (listed before any dies, so orphans are not lost), wait up to
    ``grace_s`` seconds, then SIGKILL what is left. MultiProc's workers are reaped."""
    found, stack = [], [pid]
    while stack:
        kids = _children(stack.pop())
        found.extend(kids)
        stack.extend(kids)
    found.extend(p.pid for p in multiprocessing.active_children() if p.pid not in found)
    for child in found:
        _send(child, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and [p for p in found if _alive(p)]:
        multiprocessing.active_children()  # reaps the workers that ended
        time.sleep(0.05)
    for child in found:
        if _alive(child):
            _send(child, signal.SIGKILL)
    multiprocessing.active_children()


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, ended but not yet reaped, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


def _first_error(crashes: list[Path]) -> str:
    """The last line of the first crash file's traceback: usually the message that matters."""
    for crash in crashes:
        lines = [line for line in crash.read_text(errors="replace").splitlines() if line.strip()]
        for line in reversed(lines):
            if "Error" in line or "error" in line:
                return f"first error: {line.strip()}\n"
    return ""
