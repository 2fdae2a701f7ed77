"""Write an :class:`~.evaluate.EvaluationResult` as TSV tables, one Markdown report and bar charts.

Files in the output folder:

- ``metrics_volumes.tsv``: one row per (subject, run, reference, method, diffusion-weighted volume);
- ``metrics_shells.tsv``: one row per (reference, method, shell) -- shells ascending, then ``all`` --
  with ``volumes`` and ``<metric>_mean`` / ``<metric>_std`` over volumes (population std) of the masked
  metrics in signal units (``psnr`` dB, ``ssim``, ``nrmse``), of the paper protocol (``paper_psnr``,
  ``paper_ssim``) and of the seam and sharpness scores (``seam``: 1 = no patch seams; ``sharpness``: 1 = the
  reference's detail, :mod:`.fidelity`);
- ``dti.tsv``: one row per (subject, run, reference, region, method): FA / MD / principal-direction agreement
  in a white-matter region (``fa>0.3``; with a truth also ``wm-label``);
- ``samplers.tsv`` (with a sampler comparison), ``timings.tsv`` (synthesis seconds per run and method);
- ``evaluation.md``: the settings and every table (SSIM in %, i.e. points, as the paper);
- ``evaluation.json``: the settings;
- ``plots/<reference>_<metric>.png``: per metric a bar chart, shells on the x axis, one bar per method
  (error bar: std over volumes); ``plots/<reference>_dti.png``: FA error, MD error and angle per method;
- ``figures/<run>_<method>.png``: per run and method, the middle brain slice of each shell's first volume:
  acquired, synthetic and |error| (embedded in ``evaluation.md``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .metrics import write_tsv
from .tensor_extrapolation import TENSOR_BASELINE

__all__ = ["PLOT_METRICS", "markdown_report", "markdown_table", "plot_dti", "plot_shells", "write_outputs"]

PLOT_METRICS = ("psnr", "ssim", "nrmse", "paper_psnr", "paper_ssim", "seam", "sharpness")
_LABELS = {"psnr": "masked PSNR (dB)", "ssim": "masked SSIM (%)", "nrmse": "masked NRMSE",
           "paper_psnr": "paper PSNR (dB)", "paper_ssim": "paper SSIM (%)",
           "seam": "seam score (1 = no seams)", "sharpness": "sharpness (1 = reference detail)"}
_PERCENT = {"ssim", "paper_ssim"}


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _pm(row: Mapping, metric: str, digits: int = 2) -> str:
    factor = 100.0 if metric in _PERCENT else 1.0
    if f"{metric}_mean" not in row:
        return "n/a"
    mean, std = row[f"{metric}_mean"] * factor, row[f"{metric}_std"] * factor
    if math.isinf(mean):
        return _num(mean)
    return f"{_num(mean, digits)} ± {_num(std, digits)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def shell_table(shells: Sequence[Mapping], reference: str) -> str:
    """Markdown: one row per method x shell against ``reference``."""
    header = ["method", "shell", "vols", "PSNR dB", "SSIM %", "NRMSE", "seam", "sharpness", "paper PSNR dB",
              "paper SSIM %"]
    rows = []
    for r in shells:
        if r["reference"] != reference:
            continue
        shell = r["shell"] if isinstance(r["shell"], str) else f"{r['shell']:g}"
        rows.append([r["method"], shell, r["volumes"], _pm(r, "psnr"), _pm(r, "ssim", 1), _pm(r, "nrmse", 3),
                     _pm(r, "seam", 3), _pm(r, "sharpness", 3), _pm(r, "paper_psnr"), _pm(r, "paper_ssim", 1)])
    return markdown_table(header, rows)


def dti_table(dti: Sequence[Mapping], reference: str) -> str:
    """Markdown: one row per subject x method against ``reference``."""
    header = ["run", "region", "method", "FA MAE", "FA bias", "MD MAE (1e-3 mm²/s)", "MD rel. error %",
              "angle mean °", "angle median °", "WM voxels"]
    rows = [[r.get("run", r["subject"]), r.get("region", ""), r["method"], _num(r["fa_mae"], 3),
             _num(r["fa_bias"], 3), _num(r["md_mae"] * 1e3, 3),
             _num(r["md_relative_error"] * 100, 1), _num(r["angle_mean"], 1), _num(r["angle_median"], 1), r["voxels"]]
            for r in dti if r["reference"] == reference]
    return markdown_table(header, rows)


def qspace_table(qspace: Sequence[Mapping], reference: str) -> str:
    """Markdown: one row per run x region x method against ``reference``: mean kurtosis and the median
    angle of each shell's fibre directions."""
    rows = [r for r in qspace if r["reference"] == reference]
    shells = list(dict.fromkeys(k for r in rows for k in r if k.startswith("angle_median_b")))
    header = ["run", "region", "method", "MK", "MK reference", "MK MAE", "MK bias",
              *[f"angle median ° b={k.removeprefix('angle_median_b')}" for k in shells], "voxels"]
    return markdown_table(header, [
        [r.get("run", r["subject"]), r["region"], r["method"], _num(r["mk_prediction"], 3), _num(r["mk_reference"], 3),
         _num(r["mk_mae"], 3), _num(r["mk_bias"], 3), *[_num(r.get(k), 1) for k in shells], r["voxels"]]
        for r in rows])


def sampler_table(samplers: Sequence[Mapping]) -> str:
    header = ["subject", "reference", "model", "sampler", "evals", "vols x slices", "s / slice", "s / volume",
              "speed-up", "SSIM %", "Δ SSIM points", "PSNR dB", "paper SSIM %"]
    rows = [[r["subject"], r["reference"], r["method"], r["sampler"], r["model_evaluations"],
             f"{r['volumes']} x {r['slices_per_volume']}", _num(r["seconds_per_slice"], 4),
             _num(r["seconds_per_volume"], 2), _num(r["speedup"], 1), _num(r["ssim"] * 100, 2),
             _num(r["ssim_points_vs_first"], 2), _num(r["psnr"], 2), _num(r["paper_ssim"] * 100, 2)]
            for r in samplers]
    return markdown_table(header, rows)


def _regions(white_matter: Mapping[str, str] | None) -> str:
    """The settings' white-matter regions, ``{name: description}``, as one line."""
    return "; ".join(f"`{name}` = {what}" for name, what in (white_matter or {}).items())


def markdown_report(result) -> str:
    """The whole evaluation as Markdown: settings, per-reference shell and DTI tables, samplers, timings."""
    s = result.settings
    sampler = s.get("sampler", {})
    lines = ["# Evaluation", "",
             f"- runs: {', '.join(Path(r).name for r in s.get('runs', []))}",
             f"- methods: {', '.join(f'`{k}` = {v}' for k, v in s.get('bundles', {}).items())}; "
             f"`physics_baseline` = S0 exp(-b ADC) with the ADC atlas of the first bundle"
             + ("; `tensor_extrapolation` = S0 exp(-b g^T D g) of the tensor fitted to the context shell of the "
                "first context bundle" if TENSOR_BASELINE in {r["method"] for r in result.shells} else ""),
             f"- sampler: {sampler.get('method')} "
             f"{sampler.get('steps') if sampler.get('method') == 'ddim' else 'all steps'}, start {sampler.get('start')} "
             f"(strength {sampler.get('strength')}), clamp x0 {sampler.get('clip_x0')}, seed {s.get('seed')}",
             f"- white matter for DTI: {_regions(s.get('white_matter'))}", ""]
    references = list(dict.fromkeys(r["reference"] for r in result.shells))
    for ref in references:
        what = ("the acquired prepared DWI (noisy)" if ref == "acquired"
                else "the noise-free truth through the same preparation" if ref == "truth" else ref)
        lines += [f"## Image metrics per shell, reference: {what}", "",
                  "Mean ± std over diffusion-weighted volumes; PSNR/SSIM/NRMSE inside the brain mask in signal "
                  "units (data range = the b0 scale); seam = gradient across the model's patch boundaries over "
                  "within patches, relative to the reference's (1 = no seams); sharpness = regression coefficient "
                  "of the method's high-pass detail on the reference's (1 = the reference's detail, lower = "
                  "blurred; noise does not raise it); paper protocol = per-slice min-max to [0, 255], no mask.", "",
                  shell_table(result.shells, ref), ""]
        lines += [f"## DTI in white matter, reference: {what}", "", dti_table(result.dti, ref), ""]
        if any(r["reference"] == ref for r in getattr(result, "qspace", ())):
            lines += [f"## Q-space: mean kurtosis and each shell's fibre directions, reference: {what}", "",
                      "MK: dipy's kurtosis fit of the whole series (0 for a Gaussian signal such as an "
                      "extrapolated tensor), clipped to [0, 3]; angles: principal directions of the tensors of "
                      "the b0 volumes and one shell, method against reference.", "",
                      qspace_table(result.qspace, ref), ""]
    if getattr(result, "slices", None):
        lines += ["## Figures", "", "The middle brain slice of the first volume of each shell: acquired, "
                  "synthetic, |error| (acquired and synthetic share the acquired image's grey window).", ""]
        lines += [f"![{run} {method}](figures/{name})" for (run, method), name in figure_names(result.slices).items()]
        lines += [""]
    if result.samplers:
        lines += ["## Samplers: quality against time", "", sampler_table(result.samplers), ""]
    if result.timings:
        lines += ["## Synthesis time", "", markdown_table(
            ["run", "method", "volumes", "seconds"],
            [[t["run"], t["method"], t["volumes"], _num(t["seconds"], 1)] for t in result.timings]), ""]
    return "\n".join(lines)


def plot_shells(shells: Sequence[Mapping], reference: str, metric: str, out_path: Path) -> Path:
    """Grouped bar chart of ``metric`` per shell (x) and method (bars) against ``reference``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in shells if r["reference"] == reference]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    keys = list(dict.fromkeys(r["shell"] for r in rows))
    factor = 100.0 if metric in _PERCENT else 1.0
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(1.2 + 1.4 * len(keys) + 0.3 * len(methods), 3.6))
    x = np.arange(len(keys))
    for i, method in enumerate(methods):
        by_shell = {r["shell"]: r for r in rows if r["method"] == method}
        means = np.array([by_shell[k][f"{metric}_mean"] * factor if k in by_shell else np.nan for k in keys])
        stds = np.array([by_shell[k][f"{metric}_std"] * factor if k in by_shell else np.nan for k in keys])
        finite = np.isfinite(means)
        ax.bar(x[finite] + (i - (len(methods) - 1) / 2) * width, means[finite], width,
               yerr=np.where(np.isfinite(stds), stds, 0)[finite], capsize=2, label=method)
    ax.set_xticks(x, [k if isinstance(k, str) else f"b={k:g}" for k in keys])
    ax.set_ylabel(_LABELS.get(metric, metric))
    ax.set_title(f"{_LABELS.get(metric, metric)} vs {reference}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def plot_dti(dti: Sequence[Mapping], reference: str, out_path: Path) -> Path:
    """Bars of FA MAE, MD relative error (%) and mean angle (degrees) per method (mean over subjects)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in dti if r["reference"] == reference]
    region = rows[0].get("region") if rows else None  # the first region: the fibres
    rows = [r for r in rows if r.get("region") == region]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    panels = (("fa_mae", "FA MAE", 1.0), ("md_relative_error", "MD rel. error (%)", 100.0),
              ("angle_mean", "mean angle (deg)", 1.0))
    fig, axes = plt.subplots(1, 3, figsize=(3 + 1.2 * len(methods), 3.4))
    for ax, (key, label, factor) in zip(axes, panels):
        values = [factor * float(np.mean([r[key] for r in rows if r["method"] == m])) for m in methods]
        ax.bar(range(len(methods)), values, color=[f"C{i}" for i in range(len(methods))])
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"DTI in white matter ({region}) vs {reference}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def figure_names(slices: Sequence[Mapping]) -> dict[tuple[str, str], str]:
    """``{(run, method): file name}`` of the figures of :func:`write_figures`."""
    names = {}
    for entry in slices:
        for method in entry["images"]:
            if method != "acquired":
                names[(entry["run"], method)] = f"{entry['run']}_{method}.png"
    return names


def write_figures(slices: Sequence[Mapping], out_dir: Path) -> dict[str, Path]:
    """Per (run, method) one figure (:func:`bids_phydiff.reports.figures.plot_synthesis`), a row per shell."""
    from ..reports.figures import plot_synthesis

    written = {}
    for (run, method), name in figure_names(slices).items():
        rows = []
        for entry in (e for e in slices if e["run"] == run):
            acquired, synthetic = entry["images"]["acquired"], entry["images"][method]
            rows.append((f"b = {entry['shell']:g}", {"acquired": acquired, "synthetic": synthetic,
                                                      "|error|": np.abs(synthetic - acquired) * entry["mask"]}))
        written[f"figure_{run}_{method}"] = plot_synthesis(rows, out_dir / name, f"{run}: {method}")
    return written


def write_outputs(result, out_dir: str | Path) -> dict[str, Path]:
    """Write every table, the Markdown report, the settings and the plots into ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    written = {
        "volumes": write_tsv(result.volumes, out_dir / "metrics_volumes.tsv"),
        "shells": write_tsv(result.shells, out_dir / "metrics_shells.tsv"),
        "dti": write_tsv(result.dti, out_dir / "dti.tsv"),
    }
    if getattr(result, "qspace", None):
        written["qspace"] = write_tsv(result.qspace, out_dir / "qspace.tsv")
    if result.samplers:
        written["samplers"] = write_tsv(result.samplers, out_dir / "samplers.tsv")
    if result.timings:
        written["timings"] = write_tsv(result.timings, out_dir / "timings.tsv")
    report = out_dir / "evaluation.md"
    report.write_text(markdown_report(result) + "\n", encoding="utf-8")
    written["markdown"] = report
    settings = out_dir / "evaluation.json"
    settings.write_text(json.dumps(result.settings, indent=2, default=str) + "\n", encoding="utf-8")
    written["settings"] = settings
    for ref in dict.fromkeys(r["reference"] for r in result.shells):
        for metric in (m for m in PLOT_METRICS if f"{m}_mean" in result.shells[0]):
            written[f"plot_{ref}_{metric}"] = plot_shells(result.shells, ref, metric,
                                                          out_dir / "plots" / f"{ref}_{metric}.png")
        written[f"plot_{ref}_dti"] = plot_dti(result.dti, ref, out_dir / "plots" / f"{ref}_dti.png")
    if getattr(result, "slices", None):
        written.update(write_figures(result.slices, out_dir / "figures"))
    return written
