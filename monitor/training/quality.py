"""Detection-quality figures from scores and labels (numpy only): AUROC, AP, P/R/F1, best-F1 threshold."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _ranked_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) and cumulative TP and FP when flagging score >= threshold."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    return s[last], tp.astype(np.float64), fp.astype(np.float64)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates (from (0, 0) to (1, 1)); label 1 is an anomaly."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
    _, tp, fp = _ranked_counts(scores, labels)
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half)."""
    fpr, tpr = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and the thresholds (flag score >= threshold), highest threshold first."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
    thr, tp, fp = _ranked_counts(scores, labels)
    return tp / np.maximum(tp + fp, 1), tp / max(labels.sum(), 1), thr


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision: sum over thresholds of precision x recall gained (as scikit-learn)."""
    precision, recall, _ = pr_curve(scores, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass
class Detection:
    """Counts and rates of flagging score > threshold."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    precision: float
    recall: float
    f1: float
    false_positive_rate: float

    def to_json(self) -> dict:
        return asdict(self)


def detection_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Detection:
    """Confusion counts, precision, recall, F1 when an image is an anomaly iff score > threshold."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
    flag = scores > threshold
    tp = int(np.sum(flag & (labels == 1)))
    fp = int(np.sum(flag & (labels == 0)))
    fn = int(np.sum(~flag & (labels == 1)))
    tn = int(np.sum(~flag & (labels == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return Detection(float(threshold), tp, fp, tn, fn, precision, recall, f1, fpr)


def best_f1(scores: np.ndarray, labels: np.ndarray) -> Detection:
    """The threshold (halfway between two neighbouring scores) with the highest F1, for comparison only."""
    s = np.unique(np.asarray(scores, np.float64))
    candidates = np.r_[s[0] - 1e-12, (s[:-1] + s[1:]) / 2] if len(s) > 1 else s - 1e-12
    best = max((detection_at(scores, labels, t) for t in candidates), key=lambda d: d.f1)
    return best
