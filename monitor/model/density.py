"""A second score that sees what reconstruction misses: a Gaussian of normal features, per location.

An autoencoder reconstructs a smooth stain, a change of brightness or a colour shift well, so its residual
stays small. Features of each location do change; each location's feature vector is scored by its
Mahalanobis distance to a Gaussian fitted on normal images. Two sources of features (`Features`):

- ``encoder``: the encoder's own feature maps (the first two conv blocks, PaDiM-style: Defard et al. 2020,
  on the project's own trained encoder since no pretrained weights can be fetched) plus the local mean colour;
- ``filterbank``: fixed local statistics at three scales (monitor/model/filterbank.py), which need no
  training and describe a fine texture that a small autoencoder only blurs.

One Gaussian is shared by all locations (`shared`: textures, tiles, anything not aligned) or each location has
its own (`local`: parts held in a fixture, where the position means something); the choice of source and mode
is made on validation data, not here.

The fitted parameters live in the bundle (`density.npz`); the map is computed inside the scorer's compiled
forward pass, in TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tensorflow as tf

from monitor.model.filterbank import filter_bank
from monitor.model.scores import blur_maps

FEATURE_LAYERS: tuple[str, ...] = ("enc_bn0", "enc_bn1")
PARAMS_FILE = "density.npz"
Mode = Literal["shared", "local"]
Features = Literal["encoder", "filterbank"]
FEATURE_SOURCES: tuple[str, ...] = ("encoder", "filterbank")
# Filter-bank features are computed at the input's resolution; beyond this many locations they are averaged
# over blocks, which bounds a local Gaussian's d x d numbers per location and the fit's memory.
FILTERBANK_MAX_LOCATIONS = 64 * 64
# The same bound for a density of the whole working image (`on: image`, tiled bundles): finer, since a whole
# part holds many tiles' worth of surface and a defect of a few pixels must not be averaged away.
IMAGE_MAX_LOCATIONS = 128 * 128
# Local Gaussians keep d x d numbers per location: a random subset of feature channels bounds that (PaDiM's
# own answer), while the shared Gaussian affords every channel.
LOCAL_MAX_DIMS = 32
# Working pixels per filter-bank pass over whole images: the unpooled responses of a pass are held at once. A
# fixed 16 images of 600x800 colour (a 2 MP camera at scale 0.5) took 2.7 GB above the process's base and
# training peaked at 6.4 GB on 30 such images; 2 per pass took 0.11 GB in the same time (2.3 s for 16 images).
# 256x256 images keep 16 per pass.
IMAGE_CHUNK_PIXELS = 1 << 20


def images_per_pass(height: int, width: int) -> int:
    """Whole working images of height x width per pass: as many as IMAGE_CHUNK_PIXELS allows, at most 16."""
    return max(1, min(16, IMAGE_CHUNK_PIXELS // (height * width)))

_MAX_FIT_VECTORS = 200_000  # enough for a d x d covariance; bounds the fit's memory on big data sets


def feature_model(model: Any) -> Any:
    """A Keras model: the autoencoder's input -> its encoder feature maps named in FEATURE_LAYERS."""
    import keras

    outputs = [model.get_layer(name).output for name in FEATURE_LAYERS]
    return keras.Model(model.input, outputs, name="encoder_features")


def feature_function(model: Any, features: Features = "encoder",
                     colour_sigma: float = 2.0) -> Callable[[tf.Tensor], tf.Tensor]:
    """x (N x H x W x C, preprocessed) -> N x h x w x D location features; traceable inside a tf.function."""
    if features == "filterbank":
        return _pooled_filter_bank
    if features != "encoder":
        raise ValueError(f"unknown feature source {features!r} (known: {', '.join(FEATURE_SOURCES)})")
    extractor = feature_model(model)

    def encoder(x: tf.Tensor) -> tf.Tensor:
        maps = extractor(x, training=False)
        maps = list(maps) if isinstance(maps, list | tuple) else [maps]
        return location_features(maps, x, colour_sigma)

    return encoder


def _pooled_filter_bank(x: tf.Tensor, max_locations: int = FILTERBANK_MAX_LOCATIONS) -> tf.Tensor:
    f = filter_bank(x)
    h, w = f.shape[1], f.shape[2]
    factor = int(np.ceil(np.sqrt(h * w / max_locations)))
    if factor <= 1:
        return f
    return tf.nn.avg_pool2d(f, factor, factor, padding="SAME")


def image_features(works: list[np.ndarray], size: tuple[int, int], batch: int | None = None) -> np.ndarray:
    """N x h x w x D filter-bank features of whole working images (HxWxC float32), each resized to `size`
    (the grid a local Gaussian's locations live on) and pooled to at most IMAGE_MAX_LOCATIONS locations.

    `batch`: images per filter-bank pass; by default as many as IMAGE_CHUNK_PIXELS allows (at most 16).
    """
    import cv2

    height, width = size
    if batch is None:
        batch = images_per_pass(height, width)
    out = []
    for start in range(0, len(works), batch):
        chunk = []
        for work in works[start:start + batch]:
            work = np.asarray(work, np.float32)  # training keeps its working images in float16
            w = work if work.shape[:2] == (height, width) else \
                cv2.resize(work, (width, height), interpolation=cv2.INTER_AREA).reshape(height, width, -1)
            chunk.append(w)
        out.append(_pooled_filter_bank(tf.constant(np.stack(chunk).astype(np.float32)),
                                       IMAGE_MAX_LOCATIONS).numpy())
    return np.concatenate(out)


def image_density_maps(gaussian: FeatureGaussian, works: list[np.ndarray], size: tuple[int, int],
                       norm: tuple[float, float]) -> list[np.ndarray]:
    """Each working image's normalised density map, (distance - offset) / scale, at that image's own size."""
    import cv2

    distances = gaussian.distance_map(tf.constant(image_features(works, size))).numpy()
    maps = []
    for work, d in zip(works, distances, strict=True):
        h, w = work.shape[:2]
        up = d if d.shape == (h, w) else cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR)
        maps.append(((up - norm[0]) / norm[1]).astype(np.float32))
    return maps


def features_of(model: Any, x: np.ndarray, colour_sigma: float = 2.0, batch: int = 64,
                features: Features = "encoder") -> np.ndarray:
    """N x h x w x D location features of preprocessed inputs, computed in batches (fitting and tests)."""
    function = feature_function(model, features, colour_sigma)
    out = []
    for start in range(0, len(x), batch):
        chunk = tf.convert_to_tensor(np.asarray(x[start:start + batch], np.float32))
        out.append(function(chunk).numpy())
    return np.concatenate(out)


def location_features(feature_maps: list[tf.Tensor], x: tf.Tensor, colour_sigma: float) -> tf.Tensor:
    """N x h x w x D: the encoder maps at the first map's resolution, plus the input's smoothed local colour."""
    first = feature_maps[0]
    h, w = first.shape[1], first.shape[2]
    parts = [first] + [tf.image.resize(f, (h, w), method="bilinear") for f in feature_maps[1:]]
    colour = tf.image.resize(x, (h, w), method="area")
    c = colour.shape[-1]
    planes = tf.reshape(tf.transpose(colour, [0, 3, 1, 2]), [-1, h, w])
    smooth = tf.transpose(tf.reshape(blur_maps(planes, colour_sigma), [-1, c, h, w]), [0, 2, 3, 1])
    parts.append(smooth)
    return tf.concat(parts, axis=-1)


@dataclass
class FeatureGaussian:
    """The fitted Gaussian(s): mean and inverse covariance, shared or one per location."""

    mode: Mode
    channels: np.ndarray  # int: the feature channels used (all for shared, a random subset for local)
    mean: np.ndarray  # d (shared) or h*w x d (local)
    inv_cov: np.ndarray  # d x d (shared) or h*w x d x d (local)
    colour_sigma: float = 2.0
    features: Features = "encoder"  # where the location features come from (feature_function)

    @staticmethod
    def fit(features: np.ndarray, mode: Mode, seed: int = 0, colour_sigma: float = 2.0,
            source: Features = "encoder") -> FeatureGaussian:
        """Fit on N x h x w x D features of normal images (a ridge keeps every covariance invertible)."""
        n, h, w, dims = features.shape
        rng = np.random.default_rng(seed)
        if mode == "local" and dims > LOCAL_MAX_DIMS:
            channels = np.sort(rng.choice(dims, LOCAL_MAX_DIMS, replace=False))
        else:
            channels = np.arange(dims)
        d = len(channels)
        if mode == "shared":
            flat = np.asarray(features).reshape(-1, dims)
            if len(flat) > _MAX_FIT_VECTORS:  # subsample before the float64 copy: memory stays bounded
                flat = flat[np.sort(rng.choice(len(flat), _MAX_FIT_VECTORS, replace=False))]
            flat = flat.astype(np.float64)
            mean = flat.mean(axis=0)
            inv = np.linalg.inv(_ridged(np.cov(flat, rowvar=False).reshape(d, d)))
        else:
            f = np.asarray(features)[..., channels].astype(np.float64)
            per = f.reshape(n, h * w, d).transpose(1, 0, 2)  # locations x images x d
            mean = per.mean(axis=1)
            centred = per - mean[:, None, :]
            cov = np.einsum("lnd,lne->lde", centred, centred) / max(1, n - 1)
            inv = np.linalg.inv(np.stack([_ridged(c) for c in cov]))
        return FeatureGaussian(mode, channels.astype(np.int32), mean.astype(np.float32), inv.astype(np.float32),
                               colour_sigma, source)

    def distance_map(self, features: tf.Tensor) -> tf.Tensor:
        """N x h x w Mahalanobis distances of each location's features (TensorFlow, inside the forward pass)."""
        f = tf.gather(features, self.channels, axis=-1)
        h, w = f.shape[1], f.shape[2]
        if self.mode == "shared":
            diff = f - self.mean
            q = tf.einsum("nhwd,de,nhwe->nhw", diff, self.inv_cov, diff)
        else:
            diff = tf.reshape(f, [-1, h * w, f.shape[-1]]) - self.mean
            q = tf.reshape(tf.einsum("nld,lde,nle->nl", diff, self.inv_cov, diff), [-1, h, w])
        return tf.sqrt(tf.maximum(q, 0.0))

    def save(self, folder: Path, name: str = PARAMS_FILE) -> Path:
        """Write the parameters as `name` in `folder`; returns the file's path."""
        path = Path(folder) / name
        np.savez(path, mode=np.array(self.mode), channels=self.channels, mean=self.mean, inv_cov=self.inv_cov,
                 colour_sigma=np.array(self.colour_sigma), features=np.array(self.features))
        return path

    @staticmethod
    def load(folder: Path, name: str = PARAMS_FILE) -> FeatureGaussian:
        """The parameters saved in a bundle folder; ValueError when they are missing or inconsistent."""
        with np.load(Path(folder) / name, allow_pickle=False) as z:
            # Parameters saved before feature sources existed are the encoder's.
            source = str(z["features"]) if "features" in z.files else "encoder"
            gaussian = FeatureGaussian(str(z["mode"]), z["channels"], z["mean"], z["inv_cov"],
                                       float(z["colour_sigma"]), source)
        d = len(gaussian.channels)
        if gaussian.features not in FEATURE_SOURCES:
            raise ValueError(f"unknown feature source {gaussian.features!r}")
        if gaussian.mode not in ("shared", "local") or gaussian.mean.shape[-1] != d \
                or gaussian.inv_cov.shape[-2:] != (d, d) or not np.all(np.isfinite(gaussian.inv_cov)):
            raise ValueError(f"parameters of mode {gaussian.mode!r} do not fit together")
        return gaussian


def _ridged(cov: np.ndarray) -> np.ndarray:
    # 1% of the mean variance on the diagonal: a feature that never varies on normal images must not make
    # its tiniest change infinitely anomalous, nor the matrix singular.
    d = cov.shape[0]
    return cov + np.eye(d) * (0.01 * float(np.trace(cov)) / d + 1e-6)


Norm = tuple[float, float]  # (offset, scale): (map - offset) / scale is in units of its spread on normal images


def normaliser(normal_maxima: np.ndarray) -> Norm:
    """(offset, scale) that put a map's per-image maxima on normal images at 1 for their median and 2 for
    their 90th percentile.

    Dividing by the spread of the normal maxima (not by their size) puts every map's normal tail at the same
    place, so the per-pixel maximum of two maps raises false alarms from neither more than from the other;
    1 at the median keeps a normal image's score positive, as the threshold's margin expects.
    """
    m = np.asarray(normal_maxima, np.float64)
    median = float(np.median(m))
    floor = 1e-3 * abs(median) + 1e-9  # a map that never varies on normals: any change is large, not infinite
    spread = max(float(np.quantile(m, 0.9)) - median, floor)
    return median - spread, spread


def combine_maps(residual_map: tf.Tensor, density_map: tf.Tensor, residual: Norm | None,
                 density: Norm) -> tf.Tensor:
    """N x H x W: each map normalised by its own (offset, scale) on normal images, then their per-pixel maximum.

    `residual` None: the density map alone (normalised), at the residual map's size. Normalising each map by
    its own distribution on validation images keeps either from dominating by its units; the maximum says
    "anomalous" when either does, and it is what the evidence heat map shows.
    """
    if residual is None:
        return resized_map(density_map, (residual_map.shape[1], residual_map.shape[2]), density)
    return join_map(residual_map, density_map, residual, density)


def resized_map(other_map: tf.Tensor, size: tuple[int, int], norm: Norm) -> tf.Tensor:
    """N x h x w maps (a density's locations, a defect network's cells) resized to `size`, bilinear, and
    normalised by `norm`."""
    up = other_map
    if (other_map.shape[1], other_map.shape[2]) != tuple(size):
        up = tf.image.resize(other_map[..., None], size, method="bilinear")[..., 0]
    return (up - norm[0]) / norm[1]


def join_map(base_map: tf.Tensor, other_map: tf.Tensor, base: Norm | None, other: Norm) -> tf.Tensor:
    """N x H x W: the per-pixel maximum of `base_map` (normalised by `base` unless None: it already is) and
    `other_map` resized to its size and normalised by `other` (a defect network's cells)."""
    if base is not None:
        base_map = (base_map - base[0]) / base[1]
    return tf.maximum(base_map, resized_map(other_map, (base_map.shape[1], base_map.shape[2]), other))
