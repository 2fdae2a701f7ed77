"""The real-data evaluation: leave one subject out over the shared real scans, model against physics baseline.

``python benchmarks/real_evaluation.py ROOT --data ../shared/data/real-bids [../shared/data/real-multisite]
[--res 4] [--train-config tiny] [--max-steps 3000] [--steps 50] [--subjects xa30 toshiba] [--nprocs 2]``

1. one BIDS view ``ROOT/bids`` of every subject of the ``--data`` datasets (links to the subject folders);
2. prepare every subject into ``ROOT/out`` (participant level, MNI152NLin6Asym at ``--res`` mm);
3. per held-out subject S (``--subjects``, default all): train ``--train-config`` for ``--max-steps`` on every
   other subject (group level, ``--participant-label``; model ``ROOT/out/models/model-loso<S>``), then
   ``python -m bids_phydiff.eval`` synthesises each of S's runs' acquired scheme and compares it, and the
   physics baseline (ADC atlas of the other subjects), with the acquired data: per shell masked
   PSNR/SSIM/NRMSE, seam and sharpness, DTI in FA > 0.3, figures (``ROOT/eval/sub-S/``);
4. ``ROOT/real_evaluation.md``: every fold's tables and figures on one page.

Rerunning reuses the prepared subjects and trained bundles that are there (the preparation
only with the same ``--nprocs``: its cached steps depend on the thread count). ``--smoke`` is the test's scale
(4 mm, one run per subject, a few training steps, DDIM 2): it checks that the chain runs, not what it
measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "MNI152NLin6Asym"
SMOKE_TRAINING = ("preset: tiny\nmax_steps: 4\nadapter_steps: 0\nbatch_size: 4\nwarmup_steps: 1\n"
                  "val_every: 0\ncheckpoint_every: 0\n")


def _run(cmd: list[str], env: dict) -> None:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"step failed with exit code {proc.returncode}: {' '.join(cmd[:4])} ...")


def _link_runs(subject: Path, link: Path, runs: int) -> None:
    """``link`` as a folder tree of file links to ``subject``'s anatomy and its first ``runs`` DWI runs."""
    dwis = sorted(subject.rglob("dwi/*_dwi.nii*"))[:runs]
    keep = {str(d).split("_dwi.nii")[0] for d in dwis}
    for path in sorted(subject.rglob("*")):
        if path.is_dir() or ("/dwi/" in str(path) and str(path).split("_dwi.")[0] not in keep):
            continue
        target = link / path.relative_to(subject)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(path)


def combined_view(datasets: list[Path], root: Path, runs: int | None = None) -> tuple[Path, list[str]]:
    """``root`` as one BIDS dataset linking every ``sub-*`` folder of ``datasets`` (with ``runs``, only each
    subject's first ``runs`` DWI runs); returns it and the labels."""
    root.mkdir(parents=True, exist_ok=True)
    labels = []
    for dataset in datasets:
        for subject in sorted(Path(dataset).resolve().glob("sub-*")):
            link = root / subject.name
            if subject.name[4:] in labels:
                raise SystemExit(f"{subject}: sub-{subject.name[4:]} is in two --data datasets")
            if runs is not None:
                _link_runs(subject, link, runs)
            elif not link.exists():
                link.symlink_to(subject, target_is_directory=True)
            labels.append(subject.name[4:])
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "real-data evaluation: " + ", ".join(str(d) for d in datasets), "BIDSVersion": "1.9.0",
        "DatasetType": "raw"}, indent=2) + "\n")
    return root, labels


def merge_pages(folds: dict[str, Path], out: Path, header: list[str]) -> Path:
    """One Markdown page of every fold's ``evaluation.md``, headings one level down, figure links rebased."""
    lines = header[:]
    for subject, folder in folds.items():
        text = (folder / "evaluation.md").read_text()
        rel = os.path.relpath(folder, out.parent)
        text = re.sub(r"\]\((figures|plots)/", lambda m: f"]({rel}/{m.group(1)}/", text)
        text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M).replace("## Evaluation", f"## Held out: sub-{subject}", 1)
        lines += [text, ""]
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/real_evaluation.py", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder for the view, derivatives, bundles and tables")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="BIDS datasets of real scans")
    parser.add_argument("--res", type=float, default=4.0, help="template resolution in mm (default 4)")
    parser.add_argument("--train-config", default="tiny", help="training preset or file (default tiny)")
    parser.add_argument("--max-steps", type=int, default=3000, help="backbone training steps (default 3000)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the synthesis (default 50)")
    parser.add_argument("--subjects", nargs="+", default=None, help="subjects to hold out (default: all)")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-per-subject", type=int, default=None,
                        help="use only each subject's first N DWI runs (default: all)")
    parser.add_argument("--hmc", choices=("rigid", "none"), default="rigid",
                        help="head-motion correction at prepare (default rigid, the app's default)")
    parser.add_argument("--smoke", action="store_true",
                        help="the test's scale: one run per subject, a 4-step tiny model, DDIM 2")
    args = parser.parse_args(argv)
    for dataset in args.data:
        if not (dataset / "dataset_description.json").is_file():
            parser.error(f"--data {dataset}: not a BIDS dataset")

    root = args.root.resolve()
    if args.smoke and args.runs_per_subject is None:
        args.runs_per_subject = 1
    bids, labels = combined_view(args.data, root / "bids", args.runs_per_subject)
    out, work = root / "out", root / "work"
    held = args.subjects or labels
    unknown = sorted(set(held) - set(labels))
    if unknown or len(labels) < 2:
        parser.error(f"leave-one-subject-out needs 2 or more subjects and held-out ones among {labels}; got {held}")
    env = dict(os.environ)
    env.setdefault("TEMPLATEFLOW_HOME", str(REPO.parent / "shared" / "templateflow"))
    app = [sys.executable, "-m", "bids_phydiff.cli.run", str(bids), str(out)]
    common = ["-w", str(work), "--template", TEMPLATE, "--output-resolution", f"{args.res:g}", "--seed",
              str(args.seed), "--nprocs", str(args.nprocs), "--skip-bids-validation"]
    train_config, steps = args.train_config, args.max_steps
    if args.smoke:
        (root / "train-smoke.yml").write_text(SMOKE_TRAINING)
        train_config, steps, args.steps = str(root / "train-smoke.yml"), 4, 2
    start = time.monotonic()

    _run(app + ["participant", *common, "--hmc", args.hmc], env)  # prepare (skips runs already prepared)
    folds = {}
    for subject in held:
        others = [s for s in labels if s != subject]
        bundle = out / "models" / f"model-loso{subject}"
        if not bundle.is_dir():
            _run(app + ["group", *common, "--participant-label", *others, "--train-config", train_config,
                        "--max-steps", str(steps), "--model-label", f"loso{subject}", "--xtract-atlas", "none"], env)
        folds[subject] = root / "eval" / f"sub-{subject}"
        _run([sys.executable, "-m", "bids_phydiff.eval", str(out), "--model", f"phydiff={bundle}", "--subjects",
              subject, "--steps", str(args.steps), "--seed", str(args.seed), "--out", str(folds[subject])], env)
    page = merge_pages(folds, root / "real_evaluation.md", [
        "# Real-data evaluation, leave one subject out", "",
        f"- data: {', '.join(str(d) for d in args.data)}; {TEMPLATE} at {args.res:g} mm",
        f"- training: {train_config}, {steps} backbone steps on every subject but the held-out one; "
        f"synthesis: DDIM {args.steps}, seed {args.seed}",
        f"- command: `python benchmarks/real_evaluation.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- wall time: {time.monotonic() - start:.0f} s", ""])
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
