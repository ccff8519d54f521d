"""Choosing the score of a trained model on held-out normal images and synthetic defects.

Every candidate is measured the same way: AUROC between held-out normal images and synthetic defects made from
other held-out images (monitor/training/defects.py), and the detection rate at the threshold the bundle would
get (the quantile of the normal scores). The best AUROC wins; candidates within `TIE` of it are
ranked by detection rate, then by simplicity (the order of the list), so an extra component must earn its
place. Candidates:

- residual scores alone (mse, smooth_max, residual_max; ssim_max only with a density, see NEEDS_DENSITY);
- a feature density alone (monitor/model/density.py): features of the encoder or of a fixed filter bank
  (monitor/model/filterbank.py), one Gaussian shared by all locations or one per location;
- a max-type residual score combined with a feature density: each map normalised by its own distribution of
  maxima on the normal images (density.normaliser), then their per-pixel maximum.

Measured on this project's protocols (validation splits), the synthetic-defect AUROC ranks the density
candidates in nearly the order of the real one, which is what makes choosing on it sound.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import tensorflow as tf

from monitor.model.density import FEATURE_SOURCES, FeatureGaussian, combine_maps, features_of, normaliser
from monitor.model.scores import MAX_SCORES, get_score
from monitor.training.quality import auroc, average_precision

log = logging.getLogger(__name__)

RESIDUAL_SCORES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("mse", {}), ("smooth_max", {"sigma": 2.0}), ("residual_max", {"sigma": 2.0}), ("ssim_max", {}))
COMBINABLE = MAX_SCORES  # max-type: the combined score is a map's maximum
# 1-SSIM compares local structure normalised by local contrast, so it is blind to a change of brightness or of
# content that is itself well formed (a digit that is the wrong digit: AUROC 0.94 where every other score read
# 0.98-1.0, while synthetic local defects ranked it first). It is a candidate only next to a density, which
# sees what it cannot.
NEEDS_DENSITY = ("ssim_max",)
DENSITY_MODES = ("shared", "local")
TIE = 0.005
FIT_INPUTS = 400  # inputs the density is fitted on at most: enough for d x d covariances, bounded memory


@dataclass
class Trial:
    """One candidate score and how it did on the validation images."""

    score: str  # the residual score (with a density alone: the one the reconstruction's evidence uses)
    params: dict[str, Any]
    density: str | None  # the density's mode, None without one
    auroc: float
    average_precision: float
    detection_rate: float  # share of synthetic defects above the threshold the bundle would get
    per_family: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    architecture: str = ""  # of the model it was measured on, when several were trained
    features: str = "encoder"  # the density's feature source
    residual: bool = True  # whether the residual map is part of the score
    gaussian: Any = field(default=None, repr=False, compare=False)  # the fitted FeatureGaussian, if density

    @property
    def label(self) -> str:
        if not self.density:
            return self.score
        density = f"density({self.density})" if self.features == "encoder" else \
            f"density({self.features},{self.density})"
        return f"{self.score}+{density}" if self.residual else density

    def density_meta(self) -> dict[str, Any] | None:
        """The sidecar's `density` section for this candidate (None without a density)."""
        if not self.density:
            return None
        return {"mode": self.density, "features": self.features, "file": "density.npz", **self.scales}

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
        if only is None and name in NEEDS_DENSITY:
            continue
        trials.append(_trial(name, params, None, _reduce(name, params, maps_n), _reduce(name, params, maps_d),
                             families, quantile))
    if only is not None:
        return best_first(trials)
    if len(train_x) > FIT_INPUTS:
        train_x = train_x[np.sort(np.random.default_rng(0).choice(len(train_x), FIT_INPUTS, replace=False))]
    residual_norms = {name: normaliser(residual[name][0].max(axis=(1, 2))) for name in COMBINABLE}
    for source in FEATURE_SOURCES:
        train_features = features_of(model, train_x, features=source)
        normal_features = features_of(model, normal_x, features=source)
        defect_features = features_of(model, defect_x, features=source)
        for mode in DENSITY_MODES:
            trials.extend(_density_trials(source, mode, train_features, normal_features, defect_features, residual,
                                          residual_norms, families, quantile))
    return best_first(trials)


def _density_trials(source: str, mode: str, train_features: np.ndarray, normal_features: np.ndarray,
                    defect_features: np.ndarray, residual: dict[str, tuple[np.ndarray, np.ndarray]],
                    residual_norms: dict[str, tuple[float, float]], families: Sequence[str],
                    quantile: float) -> list[Trial]:
    """The density of one feature source and mode, alone and combined with each max-type residual score."""
    gaussian = FeatureGaussian.fit(train_features, mode, source=source)
    dens_n = gaussian.distance_map(tf.constant(normal_features))
    dens_d = gaussian.distance_map(tf.constant(defect_features))
    density_norm = normaliser(dens_n.numpy().max(axis=(1, 2)))
    scales = {"density_offset": density_norm[0], "density_scale": density_norm[1]}
    reference = residual[COMBINABLE[0]]  # any residual map: it only gives the size the density is shown at
    alone_n = combine_maps(tf.constant(reference[0]), dens_n, None, density_norm).numpy().max(axis=(1, 2))
    alone_d = combine_maps(tf.constant(reference[1]), dens_d, None, density_norm).numpy().max(axis=(1, 2))
    alone = _trial(COMBINABLE[0], dict(RESIDUAL_SCORES)[COMBINABLE[0]], mode, alone_n.astype(np.float64),
                   alone_d.astype(np.float64), families, quantile, {"residual_scale": None, **scales})
    trials = [alone]
    for name in COMBINABLE:
        maps_n, maps_d = residual[name]
        norm = residual_norms[name]
        combined_n = combine_maps(tf.constant(maps_n), dens_n, norm, density_norm).numpy().max(axis=(1, 2))
        combined_d = combine_maps(tf.constant(maps_d), dens_d, norm, density_norm).numpy().max(axis=(1, 2))
        trials.append(_trial(name, dict(RESIDUAL_SCORES)[name], mode, combined_n.astype(np.float64),
                             combined_d.astype(np.float64), families, quantile,
                             {"residual_offset": norm[0], "residual_scale": norm[1], **scales}))
    for trial in trials:
        trial.features, trial.gaussian = source, gaussian
    alone.residual = False
    return trials


def best_first(trials: list[Trial]) -> list[Trial]:
    """The best AUROC first; within TIE of it, higher detection rate, then the earlier (simpler) candidate."""
    top = max(t.auroc for t in trials)
    order = {id(t): i for i, t in enumerate(trials)}

    def key(t: Trial) -> tuple:
        return (t.auroc < top - TIE, -t.detection_rate if t.auroc >= top - TIE else -t.auroc, order[id(t)])

    return sorted(trials, key=key)
