"""The BIDS App entry point: parse, check, then run the participant or group level.

Every failure that the user can act on ends with a one-paragraph message naming the file and
the problem, and the exit code of :mod:`bids_phydiff.errors`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time

from .. import __version__
from ..errors import EXIT_FAILURE, EXIT_OK, PhydiffError
from ..config import RunConfig
from .options import build_config, file_error
from .parser import parse_args

LOGGER = logging.getLogger("bids_phydiff")

def setup_logging(verbose: int, logfile=None) -> None:
    level = logging.WARNING - 10 * min(verbose + 1, 2)  # default INFO, -v DEBUG
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_bids_phydiff", False):  # ours from an earlier call; leave others' alone
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile is not None:
        handlers.append(logging.FileHandler(logfile))
        handlers[-1].setLevel(logging.DEBUG)
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._bids_phydiff = True
        root.addHandler(handler)
    root.setLevel(level)
    LOGGER.setLevel(level)
    for noisy in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING) if verbose < 2 else logging.DEBUG)


def _limit_threads(config: RunConfig) -> None:
    """Threads per process for the libraries that read the environment (ANTs/ITK, OpenMP, BLAS, torch).

    ``--omp-nthreads`` (or its default) wins over the environment, as in fMRIPrep: container images set
    OMP_NUM_THREADS=1 so that nothing oversubscribes before the app has decided.
    """
    n = str(config.omp_nthreads)
    for var in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = n


def run(config: RunConfig) -> None:
    """Validate, discover, check and run one level. Raises :class:`PhydiffError` on user errors."""
    from ..bids.checks import check_dataset, check_runs
    from ..bids.layout import discover, open_layout
    from ..bids.validation import validate

    if config.analysis_level == "participant" or not config.skip_bids_validation:
        check_dataset(config.bids_dir)  # before the validator and pybids read it
    preprocessed = config.input_type == "preprocessed"
    if preprocessed:
        LOGGER.info("%s: preprocessed derivatives as input (desc-preproc DWI); bids-validator-deno is not run on "
                    "them (its rules have no .bval/.bvec beside derivative DWI), each run is checked", config.bids_dir)
    elif not config.skip_bids_validation:
        validate(config.bids_dir, config.participant_label or None)
    else:
        LOGGER.info("BIDS validation skipped (--skip-bids-validation)")
    if config.analysis_level == "group":
        from ..workflows.group import run_group

        run_group(config)
        return
    layout = open_layout(config.bids_dir, config.database_dir, reset=config.bids_database_dir is None,
                         derivative=preprocessed)
    runs = discover(layout, config.participant_label, config.session_label, config.bids_filters, preprocessed)
    checked = check_runs(runs, config.b0_threshold)
    if config.model is None:
        from ..workflows.participant import run_participant

        run_participant(config, checked)
    else:
        from ..workflows.synthesis import run_synthesis

        run_synthesis(config, checked)


class Terminated(BaseException):
    """SIGTERM (a scheduler's time limit, ``kill``): unwinds like Ctrl-C so that no partial output is left."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    from .environment import harden_environment

    harden_environment()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    args = parse_args(argv)
    setup_logging(args.verbose)
    start = time.monotonic()
    try:
        config = build_config(args)
        rank = int(os.environ.get("RANK", "0"))  # torchrun: rank 0 keeps the log and the saved config
        suffix = "" if rank == 0 else f"_rank-{rank}"
        logfile = config.output_dir / "logs" / f"{config.analysis_level}-{config.run_id}{suffix}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        setup_logging(config.verbose, logfile)
        LOGGER.info("bids_phydiff %s, %s level, run %s", __version__, config.analysis_level, config.run_id)
        if rank == 0:
            config.save()
        _limit_threads(config)
        try:
            run(config)
        finally:  # the run's own pybids index: a work dir shared by many runs would collect them
            shutil.rmtree(config.run_dir, ignore_errors=True)
    except PhydiffError as exc:
        LOGGER.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        LOGGER.error("interrupted")
        return 130
    except Terminated:
        LOGGER.error("terminated (SIGTERM); no partial output was left in %s", args.output_dir)
        return 143
    except OSError as exc:  # on a file the user named: that file's code; elsewhere a bug
        error = file_error(exc, args)
        if error is None:
            LOGGER.exception("bids_phydiff failed unexpectedly; please report this with the log above")
            return EXIT_FAILURE
        LOGGER.error("%s", error)
        return error.exit_code
    except Exception:  # an unexpected failure is a bug: keep the trace in the log
        LOGGER.exception("bids_phydiff failed unexpectedly; please report this with the log above")
        return EXIT_FAILURE
    LOGGER.info("finished in %.1f s", time.monotonic() - start)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
