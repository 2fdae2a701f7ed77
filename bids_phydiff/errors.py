"""Errors that end a run, each with the BIDS-Apps exit code the command line returns for it.

Every room raises these (or subclasses) with a message that names the file or the option and the
problem; only ``cli/`` turns them into an exit status. The rule: an error caused by the user's data or
arguments gets its code here and a message without a traceback; exit 1 with a traceback is for bugs.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_VALIDATION = 16
EXIT_UNKNOWN_LEVEL = 17
EXIT_EMPTY_SELECTION = 18
EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_NO_INPUT = 66
EXIT_WORKER_LOST = 71
EXIT_CANNOT_WRITE = 73
EXIT_IO = 74


class PhydiffError(Exception):
    """Base of the errors that stop a run; ``exit_code`` is what the app exits with."""

    exit_code = EXIT_FAILURE


class UsageError(PhydiffError):
    """Arguments that cannot work together (64)."""

    exit_code = EXIT_USAGE


class InputDataError(PhydiffError, ValueError):
    """An input file exists but its content cannot be used (65)."""

    exit_code = EXIT_DATA


class NoInputError(PhydiffError):
    """An input that must exist does not (66)."""

    exit_code = EXIT_NO_INPUT


class EmptySelectionError(PhydiffError):
    """Participant, session or entity filters selected nothing (18)."""

    exit_code = EXIT_EMPTY_SELECTION


class WorkerLostError(PhydiffError):
    """A worker process died without a result, killed from outside (most often for memory) (71)."""

    exit_code = EXIT_WORKER_LOST


class ValidationFailed(PhydiffError):
    """The BIDS validator reported errors (16)."""

    exit_code = EXIT_VALIDATION


class OutputError(PhydiffError):
    """An output location cannot be created or written (73)."""

    exit_code = EXIT_CANNOT_WRITE


class StorageError(PhydiffError):
    """The storage failed under a read or a write: an I/O error, or no space or quota left where the run
    keeps temporary files (74)."""

    exit_code = EXIT_IO


_STORAGE_FULL = {errno.ENOSPC, errno.EDQUOT}


def from_os_error(exc: OSError, inputs: Iterable[Path], outputs: Iterable[Path]) -> PhydiffError | None:
    """The error to report for ``exc``, or None when it is a bug (then the run exits 1 with the trace).

    An I/O error (EIO) anywhere is a :class:`StorageError` (74). Otherwise a file under ``outputs`` (folders the
    run writes) is an :class:`OutputError` (73), one under ``inputs`` (folders and files the run reads) a
    :class:`NoInputError` (66); a full disk or quota (ENOSPC, EDQUOT) elsewhere, or on a write that names no
    file, is a :class:`StorageError` (74).
    """
    inputs, outputs = list(inputs), list(outputs)
    names = [Path(n).absolute() for n in (exc.filename, exc.filename2) if n and isinstance(n, (str, Path))]
    reason = exc.strerror or str(exc)
    where = str(names[0]) if names else "a write"
    if exc.errno == errno.EIO:
        return StorageError(f"{where}: {reason}; the storage failed under the run: check the file system, then rerun")
    for path in names:
        for roots, error, verb in ((outputs, OutputError, "write"), (inputs, NoInputError, "read")):
            if any(root is not None and (path == root or root in path.parents) for root in roots):
                return error(f"{path}: cannot {verb} ({reason})")
    if exc.errno in _STORAGE_FULL:
        return StorageError(f"{where}: {reason}; free space (the work directory, TMPDIR) or raise the quota, "
                            "then rerun: the work directory keeps what was done")
    return None
