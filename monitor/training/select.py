"""Choosing the score of a trained model on held-out normal images and synthetic defects.

Every candidate is measured the same way: AUROC between held-out normal images and synthetic defects made from
other held-out images (monitor/training/defects.py), and the detection rate at the threshold the bundle would
get (the quantile of the normal scores). The best AUROC wins; candidates within `TIE` of it are
ranked by detection rate, then by simplicity (the order of the list), so an extra component must earn its
place. Candidates:

- residual scores alone (mse, smooth_max, residual_max, ssim_max);
- a max-type residual score combined with the feature density (monitor/model/density.py), shared or local:
  each map divided by its median maximum on the normal images, then their per-pixel maximum.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import tensorflow as tf

from monitor.model.density import FeatureGaussian, combine_maps, features_of
from monitor.model.scores import get_score
from monitor.training.quality import auroc, average_precision

log = logging.getLogger(__name__)

RESIDUAL_SCORES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("mse", {}), ("smooth_max", {"sigma": 2.0}), ("residual_max", {"sigma": 2.0}), ("ssim_max", {}))
COMBINABLE = ("smooth_max", "residual_max", "ssim_max")  # max-type: the combined score is a map's maximum
DENSITY_MODES = ("shared", "local")
TIE = 0.005
FIT_INPUTS = 400  # inputs the density is fitted on at most: enough for d x d covariances, bounded memory


@dataclass
class Trial:
    """One candidate score and how it did on the validation images."""

    score: str
    params: dict[str, Any]
    density: str | None
    auroc: float
    average_precision: float
    detection_rate: float  # share of synthetic defects above the threshold the bundle would get
    per_family: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    architecture: str = ""  # of the model it was measured on, when several were trained
    gaussian: Any = field(default=None, repr=False, compare=False)  # the fitted FeatureGaussian, if density

    @property
    def label(self) -> str:
        return self.score + (f"+density({self.density})" if self.density else "")

    def to_json(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "gaussian"}
        return {**record, "label": self.label}


def _maps(model: Any, x: np.ndarray, name: str, params: dict[str, Any], batch: int = 64) -> np.ndarray:
    """N x H x W error maps of a residual score (eager, in batches)."""
    score = get_score(name, params)
    out = []
    for start in range(0, len(x), batch):
        chunk = tf.constant(np.asarray(x[start:start + batch], np.float32))
        out.append(score.error_map(chunk, model(chunk, training=False)).numpy())
    return np.concatenate(out)


def _reduce(name: str, params: dict[str, Any], maps: np.ndarray) -> np.ndarray:
    return get_score(name, params).reduce(tf.constant(maps)).numpy().astype(np.float64)


def _trial(name: str, params: dict[str, Any], density: str | None, normal: np.ndarray, defect: np.ndarray,
           families: Sequence[str], quantile: float, scales: dict[str, float] | None = None) -> Trial:
    labels = np.r_[np.zeros(len(normal)), np.ones(len(defect))]
    scores = np.r_[normal, defect]
    threshold = float(np.quantile(normal, quantile))
    hit = defect > threshold
    per_family = {f: float(np.mean(hit[np.asarray(families) == f])) for f in sorted(set(families))}
    return Trial(name, params, density, auroc(scores, labels), average_precision(scores, labels),
                 float(np.mean(hit)), per_family, scales or {})


def rank_scores(model: Any, train_x: np.ndarray, normal_x: np.ndarray, defect_x: np.ndarray,
                families: Sequence[str], quantile: float,
                only: tuple[str, dict[str, Any]] | None = None) -> list[Trial]:
    """Every candidate score measured on held-out normal inputs vs synthetic defects, best first.

    `only`: measure just this residual score (one the user gave), without the density.
    """
    trials: list[Trial] = []
    residual: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, params in RESIDUAL_SCORES if only is None else (only,):
        maps_n, maps_d = _maps(model, normal_x, name, params), _maps(model, defect_x, name, params)
        residual[name] = (maps_n, maps_d)
        trials.append(_trial(name, params, None, _reduce(name, params, maps_n), _reduce(name, params, maps_d),
                             families, quantile))
    if only is not None:
        return best_first(trials)
    if len(train_x) > FIT_INPUTS:
        train_x = train_x[np.sort(np.random.default_rng(0).choice(len(train_x), FIT_INPUTS, replace=False))]
    train_features = features_of(model, train_x)
    normal_features, defect_features = features_of(model, normal_x), features_of(model, defect_x)
    for mode in DENSITY_MODES:
        gaussian = FeatureGaussian.fit(train_features, mode)
        dens_n = gaussian.distance_map(tf.constant(normal_features))
        dens_d = gaussian.distance_map(tf.constant(defect_features))
        density_scale = float(np.median(dens_n.numpy().max(axis=(1, 2))))
        for name in COMBINABLE:
            params = dict(RESIDUAL_SCORES)[name]
            maps_n, maps_d = residual[name]
            residual_scale = float(np.median(maps_n.max(axis=(1, 2))))
            scales = {"residual_scale": residual_scale, "density_scale": density_scale}
            combined_n = combine_maps(tf.constant(maps_n), dens_n, residual_scale, density_scale)
            combined_d = combine_maps(tf.constant(maps_d), dens_d, residual_scale, density_scale)
            trial = _trial(name, params, mode, combined_n.numpy().max(axis=(1, 2)).astype(np.float64),
                           combined_d.numpy().max(axis=(1, 2)).astype(np.float64), families, quantile, scales)
            trial.gaussian = gaussian
            trials.append(trial)
    return best_first(trials)


def best_first(trials: list[Trial]) -> list[Trial]:
    """The best AUROC first; within TIE of it, higher detection rate, then the earlier (simpler) candidate."""
    top = max(t.auroc for t in trials)
    order = {id(t): i for i, t in enumerate(trials)}

    def key(t: Trial) -> tuple:
        return (t.auroc < top - TIE, -t.detection_rate if t.auroc >= top - TIE else -t.auroc, order[id(t)])

    return sorted(trials, key=key)
