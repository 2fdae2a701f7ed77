"""Errors that end a run, each with the BIDS-Apps exit code the command line returns for it.

Every room raises these (or subclasses) with a message that names the file or the option and the
problem; only ``cli/`` turns them into an exit status. The rule: an error caused by the user's data or
arguments gets its code here and a message without a traceback; exit 1 with a traceback is for bugs.
"""

from __future__ import annotations

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


def from_os_error(exc: OSError, inputs: Iterable[Path], outputs: Iterable[Path]) -> PhydiffError | None:
    """The error to report for ``exc`` when it concerns a file the user named: one under ``outputs``
    (folders the run writes) is :class:`OutputError` (73), one under ``inputs`` (folders and files the run
    reads) :class:`NoInputError` (66); None when the file is neither or unknown (then it is a bug)."""
    inputs, outputs = list(inputs), list(outputs)
    for name in (exc.filename, exc.filename2):
        if not name or not isinstance(name, (str, Path)):
            continue
        path = Path(name).absolute()
        reason = exc.strerror or str(exc)
        for roots, error, verb in ((outputs, OutputError, "write"), (inputs, NoInputError, "read")):
            if any(root is not None and (path == root or root in path.parents) for root in roots):
                return error(f"{path}: cannot {verb} ({reason})")
    return None
