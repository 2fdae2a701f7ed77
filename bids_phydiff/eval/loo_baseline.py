"""The physics baseline on prepared data without a model: ADC atlases from the other subjects or runs.

``python -m bids_phydiff.eval.loo_baseline OUTPUT_DIR --space MNI152NLin6Asym [--res 4mm] --out DIR``

For every prepared run R in ``OUTPUT_DIR`` (all on one template grid), the baseline
S0 * exp(-b ADC_atlas(b)) (:func:`.baseline.physics_baseline`) is evaluated against R's acquired DWI with two
atlases (paper Eq. 4, :func:`bids_phydiff.prep.adc.adc_atlas_from_files`):

- ``leave-one-subject-out``: the atlas of every run of the *other* subjects;
- ``leave-one-run-out``: the atlas of the same subject's other runs (skipped when it has only one).

An atlas has the shells of the runs it is built from; a b-value outside them uses the nearest shell's ADC
(:func:`bids_phydiff.model.schedule.interpolate_adc`), which is reported in the ``atlas_shells`` column.
Metrics as the evaluation command (:mod:`.evaluate`): per volume, then per (atlas, shell) mean and std over
volumes of all runs; DTI agreement in FA > 0.3 of the acquired fit. Writes ``loo_shells.tsv``,
``loo_volumes.tsv``, ``loo_dti.tsv`` and ``loo_baseline.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..bids.prepared import PreparedRun, find_prepared
from ..errors import NoInputError, PhydiffError, UsageError
from ..synth.run import load_subject
from .baseline import physics_baseline
from .compare import dti_rows, metric_rows, summarise
from .evaluate import FIBRE_REGION, fa_white_matter
from .metrics import write_tsv

log = logging.getLogger(__name__)

__all__ = ["loo_baseline", "main"]


def _atlas(runs: list[PreparedRun]):
    from ..prep.adc import adc_atlas_from_files

    atlas, shells, _ = adc_atlas_from_files([(r.dwi, r.bval, r.mask) for r in runs])
    return atlas, shells


def loo_baseline(output_dir: str | Path, space: str, res: str | None = None) -> tuple[list, list, list]:
    """``(volume rows, shell rows, dti rows)`` of the baseline with both atlases (module docstring)."""
    runs = find_prepared(output_dir, (), space=space, res=res)
    subjects = sorted({r.subject for r in runs})
    if len(subjects) < 2:
        raise NoInputError(f"{output_dir}: leave-one-subject-out needs 2 or more prepared subjects, have {subjects}")
    volumes, dti = [], []
    for run in runs:
        subject = load_subject(run)
        wm = fa_white_matter(subject.dwi, subject.bvals, subject.bvecs, subject.mask)
        donors = {
            "leave-one-subject-out": [r for r in runs if r.subject != run.subject],
            "leave-one-run-out": [r for r in runs if r.subject == run.subject and r.dwi != run.dwi],
        }
        for method, others in donors.items():
            if not others:
                log.info("%s: no other run of sub-%s; no leave-one-run-out atlas", run.prefix, run.subject)
                continue
            atlas, shells = _atlas(others)
            series = physics_baseline(subject.b0, subject.bvals, atlas, shells, mask=subject.mask)
            labels = {"subject": run.subject, "run": run.prefix, "reference": "acquired", "region": FIBRE_REGION,
                      "atlas_shells": "/".join(f"{b:g}" for b in shells)}
            volumes += metric_rows({method: series}, subject.dwi, subject.bvals, subject.mask, subject.scale, labels)
            dti += dti_rows({method: series}, subject.dwi, subject.bvals, subject.bvecs, wm, labels)
    return volumes, summarise(volumes, ("reference", "method")), dti


def main(argv: list[str] | None = None) -> int:
    from .tables import dti_table, shell_table

    parser = argparse.ArgumentParser(prog="python -m bids_phydiff.eval.loo_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--space", required=True, help="template of the prepared runs, e.g. MNI152NLin6Asym")
    parser.add_argument("--res", default=None, help="res- label of the prepared runs, e.g. 4mm")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        volumes, shells, dti = loo_baseline(args.output_dir, args.space, args.res)
        args.out.mkdir(parents=True, exist_ok=True)
    except PhydiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UsageError.exit_code
    write_tsv(volumes, args.out / "loo_volumes.tsv")
    write_tsv(shells, args.out / "loo_shells.tsv")
    write_tsv(dti, args.out / "loo_dti.tsv")
    per_run = {}
    for row in volumes:
        per_run.setdefault((row["run"], row["method"]), row["atlas_shells"])
    text = "\n".join([
        "## Physics baseline on prepared data, ADC atlas from other subjects / other runs", "",
        shell_table(shells, "acquired"), "",
        "Atlas shells per run: " + "; ".join(f"{r} ({m}): b={s}" for (r, m), s in per_run.items()), "",
        "### DTI in white matter (FA > 0.3 of the acquired fit)", "", dti_table(dti, "acquired"), ""])
    (args.out / "loo_baseline.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
