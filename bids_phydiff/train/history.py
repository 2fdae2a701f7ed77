"""The training history as files: ``training.tsv`` and the loss-curve figure.

Rows are the loop's history (:mod:`.loop`): ``step`` (optimiser steps done), ``stage`` (``backbone`` /
``adapter``), ``lr``, ``train_loss`` and ``val_loss`` (the model's loss, :meth:`~bids_phydiff.model.PhyDiff.loss`:
the MSE of the predicted clean slice, noise, v or regressed slice, dimensionless). Missing values are
written ``n/a`` (the BIDS convention for TSV files).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from .loop import HISTORY_COLUMNS


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)


def write_history_tsv(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    """Write ``rows`` as a tab-separated table with the columns of :data:`HISTORY_COLUMNS`."""
    lines = ["\t".join(HISTORY_COLUMNS)]
    lines += ["\t".join(_cell(row.get(c)) for c in HISTORY_COLUMNS) for row in rows]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def read_history_tsv(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``training.tsv`` (``n/a`` -> NaN; numbers as int/float)."""
    text = Path(path).read_text(encoding="utf-8").splitlines()
    header = text[0].split("\t")
    rows = []
    for line in text[1:]:
        row: dict[str, Any] = {}
        for key, cell in zip(header, line.split("\t")):
            if key == "stage":
                row[key] = cell
            elif key == "step":
                row[key] = int(cell)
            else:
                row[key] = math.nan if cell == "n/a" else float(cell)
        rows.append(row)
    return rows


LOSS_LABELS = {"x0": "clean-slice MSE (x0)", "eps": "noise MSE", "v": "v MSE", "regression": "slice MSE"}
"""The y-axis label for each model objective (``PhyDiffConfig.objective``)."""


def plot_loss_curves(rows: list[dict[str, Any]], path: Path, title: str = "Phy-Diff training",
                     objective: str = "x0") -> Path:
    """Train loss (light, with a running mean) and validation loss per stage against the step; PNG.
    ``objective`` names the loss on the y axis (:data:`LOSS_LABELS`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    colours = {"backbone": "tab:blue", "adapter": "tab:orange"}
    for stage, colour in colours.items():
        train = [(r["step"], r["train_loss"]) for r in rows if r["stage"] == stage and math.isfinite(r["train_loss"])]
        val = [(r["step"], r["val_loss"]) for r in rows if r["stage"] == stage and math.isfinite(r["val_loss"])]
        if train:
            steps, losses = zip(*train)
            ax.plot(steps, losses, color=colour, alpha=0.25, lw=0.8)
            window = max(1, len(losses) // 20)
            smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
                      for i in range(len(losses))]
            ax.plot(steps, smooth, color=colour, lw=1.5, label=f"train ({stage})")
        if val:
            steps, losses = zip(*val)
            ax.plot(steps, losses, "o-", color=colour, mfc="white", lw=1.2, ms=4, label=f"validation ({stage}, EMA)")
    ax.set_xlabel("step")
    ax.set_ylabel(LOSS_LABELS.get(objective, "loss"))
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return Path(path)
