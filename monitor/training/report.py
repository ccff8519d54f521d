"""Plots for people: training report (loss curve, score histogram, reconstructions), evaluation report.

Every label says what was actually used: the loss curve's axis names the bundle's training loss
(``architecture.loss`` in the sidecar), the histogram's axis the score and its parameters, and
``settings.txt`` lists the options the model was trained with and, where recorded, why they were chosen.
Each plot is built by a ``*_figure`` function (testable: read its axes) and saved by a ``plot_*`` wrapper.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from monitor.model.bundle import Bundle  # noqa: E402
from monitor.training.discriminator import decision_of  # noqa: E402

REPORT_DIR = "report"


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# The training losses of monitor.training.train.reconstruction_loss, as a person reads them.
LOSS_LABELS: dict[str, str] = {
    "mse": "MSE (mean squared error)",
    "ssim": "1 - SSIM",
    "mse+ssim": "MSE + 0.5 x (1 - SSIM)",
}


def loss_label(loss: str | None) -> str:
    """Axis label of a training loss by its name; an unknown name is shown as it is."""
    name = loss or "mse"  # bundles from before the loss option were all trained with MSE
    return f"{LOSS_LABELS.get(name, name)} loss"


def _param(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key}={value:g}"
    if isinstance(value, str | int | bool) or value is None:
        return f"{key}={value}"
    return f"{key}=..."  # fitted tables (normalisation scales...) belong in the sidecar, not on an axis


def score_label(score_name: str, params: Mapping[str, Any] | None = None) -> str:
    """Axis label of a score: its name and parameters, e.g. ``score: smooth_quantile (sigma=2, q=0.99)``."""
    args = ", ".join(_param(k, v) for k, v in (params or {}).items())
    return f"score: {score_name}" + (f" ({args})" if args else "")


def loss_curve_figure(history: Mapping[str, list[float]], best_epoch: int | None = None,
                      loss: str | None = "mse") -> plt.Figure:
    """Training and validation loss per epoch (log scale), the restored best epoch marked; the caller closes it."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        if history.get(key):
            ax.plot(range(1, len(history[key]) + 1), history[key], label=label)
    if best_epoch:
        ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch {best_epoch}")
    ax.set(xlabel="epoch", ylabel=loss_label(loss), yscale="log", title="Loss")
    ax.legend()
    return fig


def plot_loss_curve(history: Mapping[str, list[float]], path: Path, best_epoch: int | None = None,
                    loss: str | None = "mse") -> Path:
    """Save the loss curve (see loss_curve_figure) as a PNG."""
    return _save(loss_curve_figure(history, best_epoch, loss), path)


def plot_score_histogram(path: Path, threshold: float, normal: np.ndarray, anomaly: np.ndarray | None = None,
                         score_name: str = "score", title: str = "Scores",
                         score_params: Mapping[str, Any] | None = None) -> Path:
    """Save the score histogram (see score_histogram_figure) as a PNG."""
    return _save(score_histogram_figure(threshold, normal, anomaly, score_name, title, score_params), path)


def score_histogram_figure(threshold: float, normal: np.ndarray, anomaly: np.ndarray | None = None,
                           score_name: str = "score", title: str = "Scores",
                           score_params: Mapping[str, Any] | None = None) -> plt.Figure:
    """Histogram of normal (and anomaly) scores with the threshold as a vertical line; the caller closes it."""
    fig, ax = plt.subplots(figsize=(6, 4))
    values = [normal] + ([anomaly] if anomaly is not None and len(anomaly) else [])
    lo = min(v.min() for v in values)
    hi = max(max(v.max() for v in values), threshold)
    bins = np.linspace(lo, hi * 1.02, 50)
    ax.hist(normal, bins=bins, alpha=0.6, label=f"normal ({len(normal)})")
    if anomaly is not None and len(anomaly):
        ax.hist(anomaly, bins=bins, alpha=0.6, label=f"anomaly ({len(anomaly)})")
    ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel=score_label(score_name, score_params), ylabel="images", title=title)
    ax.legend()
    return fig


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


def settings_summary(meta: Mapping[str, Any]) -> str:
    """What the model was trained with, for settings.txt: input, loss, score, options and the recorded reasons."""
    training = meta.get("training") or {}
    arch = meta.get("architecture") or {}
    inp = meta.get("input") or {}
    score = meta.get("score") or {}
    lines = [
        f"input        {inp.get('height')}x{inp.get('width')}x{inp.get('channels')}",
        f"architecture {arch.get('name', '?')} filters={arch.get('filters')}",
        f"loss         {loss_label(arch.get('loss'))}",
        f"{score_label(score.get('name', 'mse'), score.get('params'))}",
        "",
        "options:",
        *(f"  {k} = {json.dumps(v)}" for k, v in sorted((training.get("options") or {}).items())),
    ]
    reasons = (training.get("auto") or {}).get("reasons") or {}
    if reasons:
        lines += ["", "chosen from the data:", *(f"  {k}: {v}" for k, v in reasons.items())]
    selection = training.get("selection") or {}
    if selection:
        lines += ["", f"chosen on {selection['normal_inputs']} held-out normal inputs vs "
                      f"{selection['synthetic_defects']} synthetic defects: {selection['chosen']} "
                      f"(expected detection rate {selection['expected_detection_rate']:.0%}); {selection['rule']}:",
                  *(f"  {t['label']:40} AUROC {t['auroc']:.4f}  detection rate {t['detection_rate']:.0%}"
                    for t in selection.get("trials", []))]
    density = meta.get("density") or {}
    if density:
        lines.insert(4, f"density      {density.get('mode')} feature Gaussian combined with the residual "
                        "(per-pixel maximum of the normalised maps)")
    network = meta.get("discriminator") or {}
    if network:
        lines.insert(5 if density else 4, "defect net   a network trained on synthetic defects joined to the score "
                                          "(the larger of the two normalised scores)")
    decision = decision_of(training)
    if decision:
        lines += ["", "defect network: " + ("joined" if decision.get("used") else "left out") + ": "
                  + (decision["why"] if "why" in decision else decision["rule"])]
    health = training.get("health") or {}
    if health:
        lines += ["", f"model health: {'ok' if health.get('ok') else 'PROBLEMS'}",
                  *(f"  - {p}" for p in health.get("problems", []))]
    return "\n".join(lines) + "\n"


def write_training_report(bundle: Bundle, history: dict[str, list[float]], val_x: np.ndarray) -> Path:
    """Write report/ into the bundle: loss_curve.png, validation_scores.png, reconstructions.png, settings.txt."""
    from monitor.model.scorer import BatchScorer

    folder = bundle.path / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tiling = bundle.meta.get("tiling") or {}
    tiled = f"\nimage score = worst tile at scale {tiling.get('scale'):g}" if tiling.get("scale") else ""
    plot_loss_curve(history, folder / "loss_curve.png", bundle.meta.get("training", {}).get("best_epoch"),
                    loss=(bundle.meta.get("architecture") or {}).get("loss"))
    plot_score_histogram(folder / "validation_scores.png", bundle.default_threshold,
                         bundle.calibration_scores, score_name=bundle.score_label,
                         title=f"Validation scores, threshold = {bundle.threshold_margin} x "
                               f"q{bundle.threshold_quantile}" + tiled, score_params=bundle.score_params)
    (folder / "settings.txt").write_text(settings_summary(bundle.meta))
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
