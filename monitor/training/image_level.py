"""The second stage of choosing a tiled bundle's score: does a density of the whole working image beat tiles?

A tile does not know where it lies on the part, so a tile-level density can only be `shared`, and a bore's
edge that moves a little from part to part looks like a defect next to a pit of a few pixels. A Gaussian of
filter-bank features per location of the WHOLE working image (`on: image` in the sidecar) knows that an edge
belongs there and that the plain surface beside it never holds a dark speck (measured on this project's 256-px
part protocol, validation split: 0.90 AUROC where every tile-level score sat near 0.5). It only helps where
parts are held in place; on a texture or a loose part the tile-level choice stays.

Both are judged the way the daemon will score: whole held-out images and synthetic defects made on whole
images (at their own resolution, so a defect of 4 original pixels), through the tiled scorer.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from monitor.model.bundle import Bundle
from monitor.model.density import FeatureGaussian, image_density_maps, image_features, normaliser
from monitor.model.preprocess import to_working_image
from monitor.model.scorer import BatchScorer, combine_image_maps
from monitor.training.quality import auroc

log = logging.getLogger(__name__)

FIT_IMAGES = 200  # whole training images the image-level Gaussian is fitted on, at most
MIN_DEFECTS = 60
# Whole held-out images the comparison scores, at most (with twice as many synthetic defects): each is scored whole
# twice through the tiled scorer, about 3 s for a 2 MP colour image on 2 cores, so 60 held-out images of a
# 300-image folder would cost 9 minutes here. 40 ranks the candidates as well (the protocols of
# benchmarks/quality.py hold out 40 or fewer, so their figures are unchanged); the threshold is still calibrated
# on every held-out image.
COMPARE_IMAGES = 40


def at_most(items: list[np.ndarray], k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`items`, or a random `k` of them in their order when there are more."""
    if len(items) <= k:
        return items
    return [items[i] for i in np.sort(rng.choice(len(items), k, replace=False))]


def whole_image_min_px(images: list[np.ndarray]) -> int:
    """The smallest synthetic defect on whole decoded images: 4 original pixels, where the images allow one."""
    # a defect needs twice its size on each side: a line camera's strips of 4 px stopped training here
    return max(1, min(4, min(min(im.shape[:2]) for im in images) // 2))


def _scored(bundle: Bundle, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Image scores and stitched error maps of whole decoded images, through the daemon's scorer."""
    scorer = BatchScorer(bundle, max_batch=32)
    scores, maps = [], []
    for part in scorer.call_groups(images):
        out = scorer.score(images[part])
        scores.append(out.scores)
        maps.extend(out.error_maps)
    return np.concatenate(scores), maps


def _auroc(normal: np.ndarray, defect: np.ndarray) -> float:
    return auroc(np.r_[normal, defect], np.r_[np.zeros(len(normal)), np.ones(len(defect))])


def choose_image_level(bundle: Bundle, residual_score: tuple[str, dict[str, Any]], train_works: list[np.ndarray],
                       normal_images: list[np.ndarray], rng: np.random.Generator,
                       ) -> tuple[dict[str, Any] | None, FeatureGaussian | None, dict[str, Any]]:
    """The sidecar `density` section and Gaussian of the best whole-image candidate when it beats `bundle`'s
    own score on whole images with synthetic defects (else None, None); and the record of the comparison.

    `residual_score`: the residual score (name, params) a combined candidate joins; `train_works`: training
    images at working resolution; `normal_images`: the held-out decoded images (calibration), of which at most
    COMPARE_IMAGES are compared.
    """
    from monitor.training.defects import defect_set

    assert bundle.tiling is not None
    scale, channels = bundle.tiling.scale, bundle.channels
    normal_images = at_most(normal_images, COMPARE_IMAGES, rng)
    min_px = whole_image_min_px(normal_images)
    defects = defect_set(normal_images, max(MIN_DEFECTS, 2 * len(normal_images)), rng, min_size_px=min_px)
    defect_images = [d.image for d in defects]
    base_n, _ = _scored(bundle, normal_images)
    base_d, _ = _scored(bundle, defect_images)
    base = _auroc(base_n, base_d)

    meta = {k: v for k, v in bundle.meta.items() if k != "density"}
    meta["score"] = {"name": residual_score[0], "params": dict(residual_score[1])}
    residual_bundle = Bundle(path=bundle.path, model=bundle.model, meta=meta)
    res_n, maps_n = _scored(residual_bundle, normal_images)
    _, maps_d = _scored(residual_bundle, defect_images)
    residual_norm = normaliser(np.array([m.max() for m in maps_n]))

    train_works = at_most(train_works, FIT_IMAGES, rng)
    size = (int(np.median([w.shape[0] for w in train_works])), int(np.median([w.shape[1] for w in train_works])))
    features = image_features(train_works, size)
    works_n = [to_working_image(im, scale, channels) for im in normal_images]
    works_d = [to_working_image(im, scale, channels) for im in defect_images]
    trials = []
    for mode in ("shared", "local"):
        gaussian = FeatureGaussian.fit(features, mode, source="filterbank")
        raw_n = gaussian.distance_map(tf.constant(image_features(works_n, size))).numpy().max(axis=(1, 2))
        norm = normaliser(raw_n)
        dens_n = image_density_maps(gaussian, works_n, size, norm)
        dens_d = image_density_maps(gaussian, works_d, size, norm)
        for with_residual in (False, True):
            r = residual_norm if with_residual else None
            s_n = np.array([m.max() for m in combine_image_maps(maps_n, dens_n, r)])
            s_d = np.array([m.max() for m in combine_image_maps(maps_d, dens_d, r)])
            section = {"mode": mode, "features": "filterbank", "on": "image", "image_size": list(size),
                       "file": "density.npz", "residual_scale": None if r is None else r[1],
                       "residual_offset": 0.0 if r is None else r[0],
                       "density_offset": norm[0], "density_scale": norm[1]}
            label = f"image density({mode})" + (f" + {residual_score[0]}" if with_residual else "")
            trials.append((_auroc(s_n, s_d), label, section, gaussian))
    trials.sort(key=lambda t: -t[0])
    best = trials[0]
    record = {"tiles": round(base, 4), "image_level": {label: round(a, 4) for a, label, _, _ in trials},
              "whole_normal_images": len(normal_images), "whole_image_defects": len(defect_images),
              "image_size": list(size)}
    # The tile-level choice stays unless the whole-image density is clearly better (not within noise).
    if best[0] > base + 0.005:
        record["chosen"] = best[1]
        log.info("image_density_chosen label=%r auroc=%.4f tiles_auroc=%.4f", best[1], best[0], base)
        return best[2], best[3], record
    record["chosen"] = "tiles"
    log.info("image_density_not_chosen best=%r auroc=%.4f tiles_auroc=%.4f", best[1], best[0], base)
    return None, None, record
