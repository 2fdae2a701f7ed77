"""``make demo``: the main job end to end on a generated phantom dataset.

``python -m bids_phydiff.cli.demo DIR`` writes a 3-subject phantom at 4 mm into ``DIR/bids`` (with its
template in a TemplateFlow home), then runs the app three times into ``DIR/out``: participant (prepare all),
group (train the tiny preset on sub-01 and sub-02, validation loss on sub-03) and participant with
``--model`` (synthesise sub-03's acquired scheme from its b0), and prints the metrics against the acquired
data, next to the physics baseline S0 exp(-b ADC). Rerunning reuses what is there.

``--real [BIDS]`` (``make demo DEMO_ARGS=--real``) then does the same on real scans, when they are there
(default: the shared ``real-bids`` dataset beside this checkout): prepare every subject in MNI152NLin6Asym at
4 mm into ``DIR/real/out``, train the tiny preset for ``--real-train-steps`` on every subject but the last,
synthesise the last one's acquired scheme and print the same table. Needs the template in TemplateFlow
(``TEMPLATEFLOW_HOME``, default the shared one beside this checkout).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared"
REAL_DATA = SHARED / "data" / "real-bids"
REAL_TEMPLATE = "MNI152NLin6Asym"

def _run_app(args: list[str], env: dict) -> None:
    cmd = [sys.executable, "-m", "bids_phydiff.cli.run", *args]
    print("$ bids_phydiff " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"demo step failed with exit code {proc.returncode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bids_phydiff.cli.demo", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, nargs="?", default=Path("demo"))
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the synthesis")
    parser.add_argument("--train-steps", type=int, default=DEMO_TRAIN_STEPS,
                        help=f"backbone training steps (default {DEMO_TRAIN_STEPS}, about a minute on 2 CPU cores; "
                             "8000 take about 9 minutes and also get the fibre directions right, see "
                             "docs/evaluation.md)")
    parser.add_argument("--real", type=Path, nargs="?", const=REAL_DATA, default=None, metavar="BIDS",
                        help=f"after the phantom loop, the same on real scans (default {REAL_DATA}); skipped with "
                             "a note when the dataset is not there")
    parser.add_argument("--real-train-steps", type=int, default=REAL_TRAIN_STEPS,
                        help=f"backbone training steps on the real scans (default {REAL_TRAIN_STEPS})")
    args = parser.parse_args(argv)
    # one subject to train on and one held out, at least
    least = {"--subjects": (args.subjects, 2), "--train-steps": (args.train_steps, 1), "--steps": (args.steps, 1),
             "--real-train-steps": (args.real_train_steps, 1)}
    for option, (value, minimum) in least.items():
        if value < minimum:
            parser.error(f"{option} must be at least {minimum}, got {value}")

    from ..phantom import PhantomConfig, generate

    root = args.directory.resolve()
    bids_dir, out_dir, work_dir = root / "bids", root / "out", root / "work"
    start = time.monotonic()
    if (bids_dir / "dataset_description.json").is_file():
        print(f"phantom dataset already at {bids_dir}")
        phantom_home = bids_dir / "sourcedata" / "templateflow"
    else:
        config = PhantomConfig(subjects=args.subjects, resolution=args.resolution, seed=args.seed)
        dataset = generate(bids_dir, config)
        phantom_home = dataset.templateflow_home
        print(f"wrote a {args.subjects}-subject phantom at {args.resolution:g} mm to {bids_dir} "
              f"({time.monotonic() - start:.1f} s)")

    env = dict(os.environ, TEMPLATEFLOW_HOME=str(phantom_home))
    common = ["-w", str(work_dir), "--template", "Phantom", "--output-resolution", f"{args.resolution:g}",
              "--seed", str(args.seed), "--skip-bids-validation"]
    subjects = [f"{i:02d}" for i in range(1, args.subjects + 1)]
    held_out = subjects[-1]

    # 1. prepare every subject (the input was validated once, by the first step)
    _run_app([str(bids_dir), str(out_dir), "participant", *common[:-1]], env)
    prepared = sorted(out_dir.glob("sub-*/dwi/*_desc-preproc_dwi.nii.gz"))
    print(f"prepared {len(prepared)} DWI run(s) in template space ({time.monotonic() - start:.0f} s so far)")

    # 2. train the tiny preset on all but the last subject (the last one gives the validation loss)
    train_config = root / "train-demo.yml"
    train_config.write_text(demo_training(args.train_steps))
    label = "demo" if args.train_steps == DEMO_TRAIN_STEPS else f"demo{args.train_steps}"
    bundle = out_dir / "models" / f"model-{label}"
    if bundle.is_dir():
        print(f"model bundle already at {bundle}")
    else:
        _run_app([str(bids_dir), str(out_dir), "group", *common, "--train-config", str(train_config),
                  "--model-label", label, "--val-subjects", held_out], env)
    print(f"trained {bundle} ({time.monotonic() - start:.0f} s so far)")

    # 3. synthesise the held-out subject's acquired scheme from its b0, and compare with what was acquired
    _run_app([str(bids_dir), str(out_dir), "participant", *common, "--participant-label", held_out,
              "--model", str(bundle), "--steps", str(args.steps)], env)
    summary = sorted(out_dir.glob(f"sub-{held_out}/dwi/*_desc-synth_shellmetrics.tsv"))
    for path in summary:
        print(f"\nsub-{held_out}: synthetic vs acquired, per shell ({path.relative_to(out_dir)}):")
        print(_table(path))
    print(f"\nreport: {out_dir / f'sub-{held_out}_synthesis.html'}")
    print(f"prepare reports: {', '.join(str(p) for p in sorted(out_dir.glob('sub-??.html')))}")
    print(f"demo finished in {time.monotonic() - start:.1f} s; outputs in {out_dir}")
    if args.train_steps < 8000:
        print(f"(a {args.train_steps}-step model gets the signal per shell but not yet how it changes with the "
              "gradient direction in fibres; --train-steps 8000 (about 9 minutes) does: docs/evaluation.md)")
    if args.real is not None:
        real_demo(args.real.resolve(), root / "real", args)
    return 0


REAL_TRAIN_STEPS = 1500


def real_demo(dataset: Path, root: Path, args) -> None:
    """Prepare, train on every subject but the last and synthesise the last one, on real scans."""
    if not (dataset / "dataset_description.json").is_file():
        print(f"\nreal data: no BIDS dataset at {dataset}; the real-data part is skipped")
        return
    subjects = sorted(p.name[4:] for p in dataset.glob("sub-*") if p.is_dir())
    if len(subjects) < 2:
        print(f"\nreal data: {dataset} has {len(subjects)} subject(s); training and holding out need 2")
        return
    start = time.monotonic()
    out_dir, work_dir = root / "out", root / "work"
    env = dict(os.environ)
    env.setdefault("TEMPLATEFLOW_HOME", str(SHARED / "templateflow"))
    common = ["-w", str(work_dir), "--template", REAL_TEMPLATE, "--output-resolution", "4", "--seed",
              str(args.seed), "--skip-bids-validation"]
    held_out, train = subjects[-1], subjects[:-1]
    print(f"\nreal data: {dataset}; training on {', '.join('sub-' + s for s in train)}, synthesising sub-{held_out}")
    _run_app([str(dataset), str(out_dir), "participant", *common], env)
    root.mkdir(parents=True, exist_ok=True)
    train_config = root / "train-real.yml"
    train_config.write_text(demo_training(args.real_train_steps))
    bundle = out_dir / "models" / f"model-real{args.real_train_steps}"
    if not bundle.is_dir():
        _run_app([str(dataset), str(out_dir), "group", *common, "--participant-label", *train, "--train-config",
                  str(train_config), "--model-label", f"real{args.real_train_steps}", "--xtract-atlas", "none"], env)
    _run_app([str(dataset), str(out_dir), "participant", *common, "--participant-label", held_out,
              "--model", str(bundle), "--steps", str(args.steps)], env)
    for path in sorted(out_dir.glob(f"sub-{held_out}/dwi/*_desc-synth_shellmetrics.tsv")):
        print(f"\nsub-{held_out} (real): synthetic vs acquired, per shell ({path.relative_to(out_dir)}):")
        print(_table(path))
    print(f"\nreport: {out_dir / f'sub-{held_out}_synthesis.html'}")
    print(f"real-data demo finished in {time.monotonic() - start:.1f} s; outputs in {out_dir}; seam 1 = no patch "
          "seams, sharpness 1 = the acquired detail (docs/evaluation.md)")


DEMO_TRAIN_STEPS = 1000


def demo_training(steps: int) -> str:
    """The demo's training config (YAML): the tiny preset for ``steps`` backbone steps, then a tenth of that
    (at most 100) for the adapter, as ``configs/phydiff.yml`` (the paper trains for days on a GPU)."""
    if steps < 1:
        raise ValueError(f"training steps must be >= 1, got {steps}")
    return (f"# The demo's training: the tiny preset, {steps} steps.\npreset: tiny\nmax_steps: {steps}\n"
            f"adapter_steps: {min(100, max(1, steps // 10))}\nbatch_size: 16\nwarmup_steps: {min(20, steps)}\n"
            f"val_every: {max(1, steps // 4)}\ncheckpoint_every: {max(1, steps // 2)}\n")


def _table(tsv: Path) -> str:
    """The columns of a shell-metrics TSV that matter, aligned."""
    import csv

    with open(tsv) as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    lines = [f"  {'method':17s} {'shell':>6s} {'PSNR dB':>8s} {'SSIM':>6s} {'NRMSE':>6s} {'seam':>6s} {'sharp':>6s} "
             f"{'paper PSNR':>11s} {'paper SSIM':>11s}"]
    for r in rows:
        lines.append(f"  {r['method']:17s} {r['shell']:>6s} {float(r['psnr_mean']):8.2f} {float(r['ssim_mean']):6.3f} "
                     f"{float(r['nrmse_mean']):6.3f} {float(r.get('seam_mean', 'nan')):6.3f} "
                     f"{float(r.get('sharpness_mean', 'nan')):6.3f} "
                     f"{float(r['paper_psnr_mean']):11.2f} {float(r['paper_ssim_mean']):11.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
