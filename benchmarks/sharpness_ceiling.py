"""Diagnostic (not run by ``make bench``): how sharp can a synthesis of real scans be, by the sharpness score?

The sharpness score (:func:`bids_phydiff.eval.fidelity.sharpness_score`) counts the acquired image's detail
that a synthesis reproduces in place. For every diffusion-weighted volume of every prepared run, this scores
predictors that need no model, against the acquired volume:

- ``own run``: the mean of the *same run's other* diffusion-weighted volumes (an oracle that knows the
  subject's own diffusion images, all directions but this one);
- ``population``: the mean over the *other subjects* of their volume at the nearest b-value and the nearest
  gradient direction (sign-free), each divided by its median in the brain (what the training subjects alone
  say about this direction at this template position; a b0-only model trained on them has little more);
- ``b0 x population``: the subject's b0 times the other subjects' mean attenuation ``S / S0`` there;
- ``b0``: the subject's own b0.

Each prediction is scaled by least squares to the acquired volume inside the mask first (the score does not
depend on scale; this only keeps the numbers comparable). The scores are means over a run's volumes.

    python benchmarks/sharpness_ceiling.py OUTPUT_DIR [--space MNI152NLin6Asym] [--res 02]

Prints a table and writes ``benchmarks/results/sharpness_ceiling.json``. Results: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bids_phydiff.prep.gradients import B0_THRESHOLD

RESULTS = Path(__file__).resolve().parent / "results"
PREDICTORS = ("own run", "population", "b0 x population", "b0")


def _fit(prediction: np.ndarray, acquired: np.ndarray, mask: np.ndarray) -> np.ndarray:
    p = prediction[mask]
    return prediction * float((p * acquired[mask]).sum() / max(float((p * p).sum()), 1e-12))


def _nearest(subject, b: float, g: np.ndarray) -> int:
    """The index of ``subject``'s diffusion-weighted volume at the b-value nearest ``b``, nearest ``+-g``."""
    weighted = np.flatnonzero(subject.bvals > B0_THRESHOLD)
    gap = np.abs(subject.bvals[weighted] - b)
    candidates = weighted[gap == gap.min()]
    return int(candidates[np.argmax(np.abs(subject.bvecs[candidates] @ g))])


def run_scores(subject, others) -> dict[str, float]:
    """Mean sharpness of each predictor over ``subject``'s diffusion-weighted volumes."""
    from bids_phydiff.eval.fidelity import sharpness_score

    weighted = np.flatnonzero(subject.bvals > B0_THRESHOLD)
    mask, scores = subject.mask, {name: [] for name in PREDICTORS}
    for k in weighted:
        acquired = subject.dwi[..., k]
        rest = [j for j in weighted if j != k]
        donors = [o.dwi[..., _nearest(o, subject.bvals[k], subject.bvecs[k])] for o in others]
        population = np.mean([d / max(float(np.median(d[o.mask])), 1e-6) for d, o in zip(donors, others)], axis=0)
        attenuation = np.mean([np.clip(np.divide(d, o.b0, out=np.zeros_like(d), where=o.b0 > 0), 0, 1.5) * o.mask
                               for d, o in zip(donors, others)], axis=0)
        predictions = {"own run": subject.dwi[..., rest].mean(axis=-1) if rest else None,
                       "population": population, "b0 x population": subject.b0 * attenuation, "b0": subject.b0}
        for name, prediction in predictions.items():
            if prediction is not None:
                scores[name].append(sharpness_score(_fit(prediction * mask, acquired, mask), acquired, mask))
    return {name: float(np.mean(v)) if v else float("nan") for name, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/sharpness_ceiling.py", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="a participant-level output folder with prepared runs")
    parser.add_argument("--space", default="MNI152NLin6Asym")
    parser.add_argument("--res", default=None, help="resolution label of the prepared runs (e.g. 02)")
    args = parser.parse_args(argv)

    from bids_phydiff.bids.prepared import find_prepared
    from bids_phydiff.synth.run import load_subject

    start = time.monotonic()
    runs = find_prepared(args.output_dir, (), space=args.space, res=args.res)
    subjects = {}
    for run in runs:  # one run per subject: the first in name order
        subjects.setdefault(run.subject, load_subject(run))
    if len(subjects) < 2:
        raise SystemExit(f"{args.output_dir}: needs prepared runs of 2 or more subjects, has {sorted(subjects)}")
    rows = []
    print("| subject (run) | b | " + " | ".join(PREDICTORS) + " |")
    print("|---|---|" + "---|" * len(PREDICTORS))
    for label, subject in sorted(subjects.items()):
        scores = run_scores(subject, [s for other, s in subjects.items() if other != label])
        shells = "/".join(f"{b:g}" for b in sorted(set(np.round(subject.bvals[subject.bvals > B0_THRESHOLD], -2))))
        rows.append({"subject": label, "run": subject.run.prefix, "shells": shells, **scores})
        print(f"| {label} ({subject.run.prefix}) | {shells} | " + " | ".join(f"{scores[n]:.3f}" for n in PREDICTORS)
              + " |", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "sharpness_ceiling.json"
    out.write_text(json.dumps({"output_dir": str(args.output_dir), "space": args.space, "res": args.res,
                               "seconds": time.monotonic() - start, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
