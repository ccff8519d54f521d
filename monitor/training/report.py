"""Plots for people: training report (loss curve, score histogram, reconstructions), evaluation report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from monitor.model.bundle import Bundle  # noqa: E402

REPORT_DIR = "report"


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_loss_curve(history: dict[str, list[float]], path: Path, best_epoch: int | None = None) -> Path:
    """Training and validation loss per epoch (log scale), the restored best epoch marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        if history.get(key):
            ax.plot(range(1, len(history[key]) + 1), history[key], label=label)
    if best_epoch:
        ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch {best_epoch}")
    ax.set(xlabel="epoch", ylabel="MSE loss", yscale="log", title="Loss")
    ax.legend()
    return _save(fig, path)


def plot_score_histogram(path: Path, threshold: float, normal: np.ndarray, anomaly: np.ndarray | None = None,
                         score_name: str = "score", title: str = "Scores") -> Path:
    """Histogram of normal (and anomaly) scores with the threshold as a vertical line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    values = [normal] + ([anomaly] if anomaly is not None and len(anomaly) else [])
    lo = min(v.min() for v in values)
    hi = max(max(v.max() for v in values), threshold)
    bins = np.linspace(lo, hi * 1.02, 50)
    ax.hist(normal, bins=bins, alpha=0.6, label=f"normal ({len(normal)})")
    if anomaly is not None and len(anomaly):
        ax.hist(anomaly, bins=bins, alpha=0.6, label=f"anomaly ({len(anomaly)})")
    ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel=score_name, ylabel="images", title=title)
    ax.legend()
    return _save(fig, path)


def reconstruction_grid(inputs: np.ndarray, reconstructions: np.ndarray, path: Path, n: int = 8) -> Path:
    """Pairs of rows: inputs above their reconstructions (BGR inputs shown in RGB)."""
    n = min(n, len(inputs))
    fig, axes = plt.subplots(2, max(n, 1), figsize=(1.5 * max(n, 1), 3.3), squeeze=False)
    for i in range(n):
        for row, images in enumerate((inputs, reconstructions)):
            ax = axes[row][i]
            img = images[i]
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img[..., ::-1].clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][i].set_title(f"#{i}", fontsize=8)
    axes[0][0].set_ylabel("input")
    axes[1][0].set_ylabel("reconstruction")
    return _save(fig, path)


def write_training_report(bundle: Bundle, history: dict[str, list[float]], val_x: np.ndarray) -> Path:
    """Write report/ into the bundle: loss_curve.png, validation_scores.png, reconstructions.png."""
    from monitor.model.scorer import BatchScorer

    folder = bundle.path / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    plot_loss_curve(history, folder / "loss_curve.png", bundle.meta.get("training", {}).get("best_epoch"))
    plot_score_histogram(folder / "validation_scores.png", bundle.default_threshold,
                         bundle.calibration_scores, score_name=bundle.score_name,
                         title=f"Validation scores, threshold = {bundle.threshold_margin} x "
                               f"q{bundle.threshold_quantile}")
    sample = val_x[:8]
    out = BatchScorer(bundle, max_batch=max(1, len(sample))).score_inputs(sample)
    reconstruction_grid(out.inputs, out.reconstructions, folder / "reconstructions.png")
    return folder


def plot_roc_pr(fpr: np.ndarray, tpr: np.ndarray, precision: np.ndarray, recall: np.ndarray,
                auroc: float, ap: float, path: Path) -> Path:
    """ROC and precision-recall curves side by side."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(fpr, tpr)
    a.plot([0, 1], [0, 1], color="gray", linestyle=":")
    a.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (AUROC {auroc:.4f})")
    b.plot(np.r_[0.0, recall], np.r_[precision[0] if len(precision) else 1.0, precision])
    b.set(xlabel="recall", ylabel="precision", title=f"Precision-recall (AP {ap:.4f})", ylim=(0, 1.02))
    return _save(fig, path)
