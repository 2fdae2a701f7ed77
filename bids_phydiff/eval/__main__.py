"""Command line: evaluate model bundles and the physics baseline on prepared held-out subjects.

``python -m bids_phydiff.eval OUTPUT_DIR --model NAME=BUNDLE [NAME=BUNDLE ...] --subjects 03 --out DIR
[--truth-dir PHANTOM/sourcedata/truth] [--sampler ddim --steps 50 --strength 0.8 --seed 0]
[--with-acquired] [--compare-samplers]``

See :mod:`.evaluate` for what is computed and :mod:`.tables` for the files written. Exit codes
(bids_phydiff/errors.py): 64 bad arguments, 65 unusable input data (corrupt bundle, grid mismatch),
66 missing input (output folder, bundle, prepared subject, truth), 73 cannot write ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..errors import EXIT_DATA, OutputError, PhydiffError, UsageError

log = logging.getLogger("bids_phydiff.eval")


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (exit 64) instead of exiting with 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{self.prog}: {message}")


def _model(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"--model expects NAME=BUNDLE_FOLDER, got {text!r}")
    name = name.strip()
    if not all(c.isalnum() or c in "-_." for c in name):
        raise argparse.ArgumentTypeError(f"--model name {name!r}: use letters, digits, '-', '_' or '.'")
    return name, Path(path).expanduser()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bids_phydiff.eval",
                description="Evaluate Phy-Diff bundles (and the physics baseline S0 exp(-b ADC)) on prepared "
                            "subjects: masked and paper-protocol metrics per b-shell, and DTI agreement.")
    p.add_argument("output_dir", type=Path, help="the app's output folder holding the prepared subjects")
    p.add_argument("--model", dest="models", type=_model, nargs="+", required=True, metavar="NAME=BUNDLE",
                   help="one or more model bundles, each under a method name; the first bundle's ADC atlas "
                        "gives the physics baseline")
    p.add_argument("--subjects", nargs="+", default=[], metavar="LABEL",
                   help="subjects to evaluate (held out from training; default: every prepared subject)")
    p.add_argument("--out", type=Path, required=True, help="folder for the tables, report and plots")
    p.add_argument("--truth-dir", type=Path, default=None,
                   help="a phantom's sourcedata/truth: also compare with the noise-free truth, and take white "
                        "matter from the template truth")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim", help="reverse sampler (default ddim)")
    from ..synth.inputs import app_sampler

    app = app_sampler()
    p.add_argument("--steps", type=int, default=app.steps, help=f"DDIM steps (default {app.steps}, as the app)")
    p.add_argument("--eta", type=float, default=app.eta,
                   help=f"DDIM noise, 0 = deterministic (default {app.eta:g}, as the app)")
    p.add_argument("--strength", type=float, default=app.strength,
                   help=f"SDEdit start strength in (0, 1]; 1 = from pure noise (default {app.strength:g}, as the app)")
    p.add_argument("--shifts", type=int, choices=[1, 2, 4], default=None,
                   help="shifted network passes averaged per step (default: each bundle's choice, as the app)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="slices per model call (default 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--with-acquired", action="store_true",
                   help="also evaluate the acquired data as a method (perfect against itself; the noise floor "
                        "against --truth-dir)")
    p.add_argument("--no-baseline", action="store_true", help="leave out the physics baseline")
    p.add_argument("--compare-samplers", action="store_true",
                   help="also time DDPM (every step) / DDIM 50 / DDIM 20 with the first bundle on a few volumes and "
                        "compare their SSIM")
    p.add_argument("--compare-volumes", type=int, default=1,
                   help="volumes per shell for --compare-samplers (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def _check(args) -> None:
    names = [name for name, _ in args.models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"--model: method names must be unique, repeated {duplicates}")
    reserved = {"physics_baseline", "tensor_extrapolation", "acquired"} & set(names)
    if reserved:
        raise UsageError(f"--model: {sorted(reserved)} is reserved for a built-in method; choose another name")
    if args.steps < 1 or args.batch_size < 1 or args.compare_volumes < 1 or args.seed < 0:
        raise UsageError("--steps, --batch-size and --compare-volumes must be >= 1 and --seed >= 0")
    if not 0.0 <= args.eta <= 1.0:
        raise UsageError(f"--eta must be in [0, 1], got {args.eta}")
    if not 0.0 < args.strength <= 1.0:
        raise UsageError(f"--strength must be in (0, 1], got {args.strength}")
    if args.out.resolve() == args.output_dir.resolve():
        raise UsageError("--out must not be OUTPUT_DIR itself (the tables would mix with the derivatives)")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _check(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return _run(args)
    except PhydiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # inputs the synthesis or the metrics cannot use
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA


def _run(args) -> int:
    import torch

    from ..synth.inputs import app_sampler
    from .evaluate import evaluate
    from .samplers import default_samplers
    from .tables import markdown_report, write_outputs

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {args.out}: cannot create ({exc.strerror})") from None
    start = time.monotonic()
    result = evaluate(
        args.output_dir, dict(args.models), args.subjects, truth_dir=args.truth_dir,
        sampler=app_sampler(args.sampler, args.steps, args.strength, args.eta, args.shifts), seed=args.seed,
        batch_size=args.batch_size, device=args.device, with_acquired=args.with_acquired,
        with_baseline=not args.no_baseline,
        compare_samplers=default_samplers(args.strength) if args.compare_samplers else None,
        compare_volumes_per_shell=args.compare_volumes, work_dir=None,
    )
    result.settings["seconds"] = round(time.monotonic() - start, 1)
    result.settings["command"] = "python -m bids_phydiff.eval " + " ".join(sys.argv[1:])
    try:
        written = write_outputs(result, args.out)
    except OSError as exc:
        raise OutputError(f"--out {args.out}: cannot write ({exc})") from None
    print(markdown_report(result))
    print(f"\nwrote {len(written)} files to {args.out} in {result.settings['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
