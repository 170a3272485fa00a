"""PNG plots of a run: loss curves, per-finding ROC curves, calibration (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from neuroradix_train.evaluation.metrics import calibration_bins, roc_curve

logger = logging.getLogger(__name__)


def _plt():
    matplotlib.use("Agg")

    return plt


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curves(
    steps_jsonl: Path, out_png: Path, keys: Sequence[str] = ("loss",), title: str = "training loss"
) -> Path:
    """Loss per step (thin) and its running mean (thick) for each key found in the JSONL log."""
    rows = read_jsonl(steps_jsonl)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
        if not pts:
            continue
        s, v = np.array(pts).T
        ax.plot(s, v, lw=0.6, alpha=0.4)
        k = max(1, len(v) // 20)
        smooth = np.convolve(v, np.ones(k) / k, mode="valid")
        ax.plot(s[k - 1 :], smooth, lw=2, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def plot_roc(y_true: np.ndarray, y_score: np.ndarray, names: Sequence[str], aurocs: dict, out_png: Path) -> Path:
    """One ROC curve per finding with at least one positive and one negative."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 6))
    for j, name in enumerate(names):
        y = y_true[:, j]
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, y_score[:, j])
        ax.plot(fpr, tpr, lw=1.2, label=f"{name} ({aurocs.get(name, float('nan')):.2f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("per-finding ROC")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def plot_calibration(y_true: np.ndarray, y_score: np.ndarray, out_png: Path, n_bins: int = 10) -> Path:
    """Reliability diagram over all (scan, finding) pairs, with the expected calibration error."""
    cal = calibration_bins(y_true, y_score, n_bins)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    mp, fp = np.array(cal["mean_predicted"]), np.array(cal["fraction_positive"])
    ok = ~np.isnan(mp)
    ax.plot(mp[ok], fp[ok], "o-", label=f"model (ECE {cal['ece']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction positive")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
