"""A run's learning curves as a PNG beside its metrics.csv, and the run summarised for `groupae info`.

matplotlib is an optional extra (`pip install 'groupae[plot]'`): without it no picture is drawn and
the caller says so in one line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

CURVES = "learning_curves.png"
METRICS = "metrics.csv"
MISSING_MATPLOTLIB = f"groupae: matplotlib is not installed, so no {CURVES} (pip install 'groupae[plot]')"

#: panels: (title, y label, [(metrics.csv column, legend label, line style)])
_PANELS = (
    ("reconstruction", "RMSD (Å)", [("val_rmsd_mean", "validation, mean", "-"),
                                    ("val_rmsd_median", "validation, median", "-"),
                                    ("train_recon_rmsd", "training", ":"),
                                    ("val_baseline_rmsd", "centroid baseline", "--")]),
    ("elements", "accuracy", [("val_element_acc", "element accuracy", "-")]),
    ("permutation", "accuracy", [("val_perm_acc", "slots right (per atom)", "-"),
                                 ("val_perm_exact", "whole order right", "-"),
                                 ("val_order_agreement", "order agreement, moved copies", "--")]),
)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """metrics.csv as rows of floats (a missing figure: NaN)."""

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    with open(path, newline="") as f:
        return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(rows: Sequence[dict], out: str | Path, title: str = "") -> bool:
    """Draw reconstruction RMSD against the centroid baseline, element accuracy and permutation
    accuracy per epoch into the PNG `out` (written under a temporary name, then renamed).
    Returns False, writing nothing, when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    from groupae_cli.io.formats import written_atomically

    epochs = [int(r["epoch"]) + 1 for r in rows]  # metrics.csv counts from 0
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    for ax, (name, ylabel, series) in zip(figure.subplots(1, len(_PANELS)), _PANELS):
        for key, label, style in series:
            values = [r.get(key, math.nan) for r in rows]
            if any(not math.isnan(v) for v in values):
                ax.plot(epochs, values, style, marker="o" if len(rows) < 30 else None, markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    with written_atomically(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return True


def summarise_run(run_dir: str | Path) -> dict:
    """What a training run directory holds: inputs, split sizes, model and training configuration,
    epochs done of planned, the best epoch's and the last epoch's validation figures, its files."""
    import json

    import yaml

    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    config = config or {}
    split = json.loads((run_dir / "split.json").read_text()) if (run_dir / "split.json").is_file() else {}
    rows = read_metrics(run_dir / METRICS) if (run_dir / METRICS).is_file() else []

    def figures(row: dict | None) -> dict | None:
        return None if row is None else {"epoch": int(row["epoch"]) + 1,
                                         **{k: v for k, v in row.items() if k != "epoch" and not math.isnan(v)}}

    scored = [r for r in rows if not math.isnan(r.get("val_rmsd_mean", math.nan))]
    best = min(scored, key=lambda r: r["val_rmsd_mean"]) if scored else None
    seconds = sorted(r["seconds"] for r in rows if not math.isnan(r.get("seconds", math.nan)))
    return {
        "path": str(run_dir),
        "inputs": config.get("inputs") or [],
        "n_train": len(split.get("train", [])), "n_validation": len(split.get("validation", [])),
        "model": config.get("model") or {}, "train": config.get("train") or {},
        "epochs_done": len(rows), "epochs_planned": (config.get("train") or {}).get("epochs"),
        "seconds_per_epoch": seconds[len(seconds) // 2] if seconds else None,
        "best": figures(best), "last": figures(rows[-1] if rows else None),
        "files": sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith(".")),
    }


def is_run(path: str | Path) -> bool:
    """Whether `path` is a training run directory (written by `groupae train`)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in ("config.yaml", METRICS, "last.ckpt"))
