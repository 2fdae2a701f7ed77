"""Command line: ``python -m bids_phydiff.phantom OUT --subjects N --resolution MM --seed S ...``."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ..errors import EXIT_USAGE, PhydiffError
from .config import PhantomConfig
from .dataset import generate


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _labels(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bids_phydiff.phantom",
        description="Write a synthetic multi-shell diffusion MRI phantom as a BIDS dataset, with its "
        "template (TemplateFlow layout), tract atlas and ground truth under OUT/sourcedata.",
    )
    p.add_argument("out", help="output folder (the BIDS root); must be empty or absent")
    p.add_argument("--subjects", type=int, default=3, help="number of subjects (default 3)")
    p.add_argument("--resolution", type=float, default=4.0, help="DWI voxel size in mm (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--directions", type=int, default=12, help="directions per shell (default 12)")
    p.add_argument("--shells", type=_numbers, default=(1000.0, 2000.0, 3000.0),
                   help="comma-separated b-values in s/mm^2 (default 1000,2000,3000)")
    p.add_argument("--b0", type=int, default=2, dest="n_b0", help="number of b0 volumes (default 2)")
    p.add_argument("--snr", type=float, default=30.0, help="white-matter b0 SNR (default 30)")
    p.add_argument("--sessions", type=int, default=0, help="sessions per subject (default 0: none)")
    p.add_argument("--runs", type=int, default=1, help="DWI runs per session (default 1)")
    p.add_argument("--without-t1w", type=_labels, default=(), help="comma-separated subject labels without a T1w")
    p.add_argument("--template-name", default="Phantom", help="template identifier (default Phantom)")
    p.add_argument("--template-resolutions", type=_numbers, default=(),
                   help="extra whole-mm template resolutions, comma-separated")
    p.add_argument("--motion", type=float, default=0.0, dest="motion_mm", metavar="MM",
                   help="head motion during each DWI run: translations up to MM mm and rotations up to MM degrees "
                        "per volume, true values under sourcedata/truth (default 0: no motion)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier phantom in OUT")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    start = time.perf_counter()
    try:
        config = PhantomConfig(
            subjects=args.subjects, resolution=args.resolution, seed=args.seed, shells=args.shells,
            directions=args.directions, n_b0=args.n_b0, snr=args.snr, sessions=args.sessions, runs=args.runs,
            without_t1w=args.without_t1w, template_name=args.template_name,
            template_resolutions=args.template_resolutions, motion_mm=args.motion_mm,
        )
        ds = generate(args.out, config, overwrite=args.overwrite)
    except PhydiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    elapsed = time.perf_counter() - start
    n_vol = config.n_b0 + config.directions * len(config.shells)
    print(f"phantom written to {ds.bids_dir} in {elapsed:.1f} s")
    print(f"  subjects      : {', '.join(ds.subjects)}"
          + (f" ({config.sessions} sessions each)" if config.sessions else "")
          + (f", {config.runs} DWI runs per session" if config.runs > 1 else ""))
    print(f"  DWI           : {config.resolution:g} mm, {n_vol} volumes (b0 x{config.n_b0}, shells "
          f"{'/'.join(f'{b:g}' for b in config.shells)} x{config.directions}), SNR {config.snr:g}")
    missing = f", none for {', '.join(config.without_t1w)}" if config.without_t1w else ""
    if config.motion_mm:
        print(f"  head motion   : up to {config.motion_mm:g} mm / {config.motion_mm:g} degrees per volume")
    print(f"  T1w           : {config.t1w_voxel:g} mm{missing}")
    resolutions = ", ".join(f"res-{int(r):02d}" for r in config.all_template_resolutions)
    print(f"  template      : tpl-{ds.template_name} {resolutions} (TEMPLATEFLOW_HOME={ds.templateflow_home})")
    print(f"  tract atlas   : {ds.atlas_dseg.name}, {ds.atlas_probseg.name}")
    print(f"  ground truth  : {ds.truth_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
