"""Anomaly scores by name: a per-pixel error map and its reduction to one number per image.

Every score is written in TensorFlow so it runs inside the scorer's compiled forward pass; the error
map a score returns is exactly the per-pixel error it reduces, so the evidence heat map shows what
decided the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf


def _squared_error_map(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.square(x - r), axis=-1)


def _abs_error_map(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.abs(x - r), axis=-1)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(round(3.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _truncated(k: np.ndarray, radius: int) -> np.ndarray:
    """The kernel cut to `radius` either side of its centre and normalised again."""
    centre = len(k) // 2
    cut = k[centre - radius:centre + radius + 1]
    return (cut / cut.sum()).astype(np.float32)


# Maps whose height + width is at most this are blurred by two matrix products, larger ones by two convolutions.
# Same blur (max abs difference 3e-7 on [0, 1] maps); per batch on 2 CPU cores (TF 2.21, oneDNN), convolution
# against products: 32 maps of 64x64 1.21 / 0.32 ms, 32 of 128x128 2.91 / 0.87, 8 of 256x256 2.26 / 1.38,
# 4 of 512x512 4.05 / 5.17, 2 of 64x1024 0.81 / 1.09. A product does (h + w) / (2 * 13) times the arithmetic of a
# 13-tap convolution, but a convolution of one channel leaves oneDNN's vector units mostly idle.
_PRODUCT_BLUR_MAX_SIDES = 512


def _blur_matrix(n: int, k: np.ndarray) -> np.ndarray:
    """The n x n matrix that blurs a length-n axis with kernel `k` under reflect (SYMMETRIC) padding."""
    radius = len(k) // 2
    m = np.zeros((n, n), np.float64)
    for i in range(n):
        for t, weight in enumerate(k):
            j = i + t - radius
            if j < 0:  # SYMMETRIC: -1 is 0, -2 is 1, ...
                j = -j - 1
            elif j >= n:  # ... and n is n - 1
                j = 2 * n - j - 1
            m[i, j] += weight
    return m.astype(np.float32)


def _blur(maps: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of NxHxW maps (reflect padding: no dark rim at the borders).

    Reflect padding cannot reach further than the map is long: along a side shorter than the kernel's radius
    (an encoder's map of a tile 8 px high is 2 px high) the kernel is cut to that side, so a strip from a line
    camera blurs, where it had stopped training with a MirrorPad error.
    """
    if sigma <= 0:
        return maps
    k = _gaussian_kernel(sigma)
    radius = len(k) // 2
    h, w = maps.shape[1], maps.shape[2]
    ry = radius if h is None else min(radius, int(h))
    rx = radius if w is None else min(radius, int(w))
    ky, kx = _truncated(k, ry), _truncated(k, rx)
    if h is not None and w is not None and int(h) + int(w) <= _PRODUCT_BLUR_MAX_SIDES:
        by = tf.constant(_blur_matrix(int(h), ky), dtype=maps.dtype)
        bx = tf.constant(_blur_matrix(int(w), kx), dtype=maps.dtype)
        return tf.matmul(tf.matmul(by, maps), bx, transpose_b=True)
    x = maps[..., None]
    x = tf.pad(x, [[0, 0], [ry, ry], [rx, rx], [0, 0]], mode="SYMMETRIC")
    x = tf.nn.conv2d(x, tf.constant(ky.reshape(-1, 1, 1, 1), dtype=maps.dtype), strides=1, padding="VALID")
    x = tf.nn.conv2d(x, tf.constant(kx.reshape(1, -1, 1, 1), dtype=maps.dtype), strides=1, padding="VALID")
    return x[..., 0]


def _flat_quantile(maps: tf.Tensor, q: float) -> tf.Tensor:
    """Per-image q-quantile of an NxHxW map (nearest rank, fast: one sort per image)."""
    flat = tf.reshape(maps, [tf.shape(maps)[0], -1])
    if q >= 1.0:
        return tf.reduce_max(flat, axis=1)
    n = flat.shape[1]
    k = max(1, int(round((1.0 - q) * n)))
    return tf.reduce_min(tf.math.top_k(flat, k=k, sorted=False).values, axis=1)


def ssim_error_map(x: tf.Tensor, r: tf.Tensor, sigma: float) -> tf.Tensor:
    """1 - SSIM per pixel (Gaussian window), averaged over channels, in [0, 1] (halved)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    n, h, w, c = x.shape[0], x.shape[1], x.shape[2], x.shape[3]

    def blur_all(t: tf.Tensor) -> tf.Tensor:
        t = tf.reshape(tf.transpose(t, [0, 3, 1, 2]), [-1, h, w])
        return tf.transpose(tf.reshape(_blur(t, sigma), [-1, c, h, w]), [0, 2, 3, 1])

    mx, mr = blur_all(x), blur_all(r)
    vx = blur_all(x * x) - mx * mx
    vr = blur_all(r * r) - mr * mr
    cxr = blur_all(x * r) - mx * mr
    ssim = ((2 * mx * mr + c1) * (2 * cxr + c2)) / ((mx * mx + mr * mr + c1) * (vx + vr + c2))
    del n
    return tf.reduce_mean((1.0 - ssim) / 2.0, axis=-1)


@dataclass(frozen=True)
class ScoreFunction:
    """A named score with its parameters: error_map(x, r) -> NxHxW, reduce(map) -> N."""

    name: str
    description: str
    error_map: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
    reduce: Callable[[tf.Tensor], tf.Tensor]
    params: dict[str, Any] = field(default_factory=dict)


def _mse(**_: Any) -> ScoreFunction:
    return ScoreFunction("mse", "per-image mean squared reconstruction error (the seeds' score)",
                         _squared_error_map, lambda m: tf.reduce_mean(m, axis=[1, 2]))


def _mae(**_: Any) -> ScoreFunction:
    return ScoreFunction("mae", "per-image mean absolute reconstruction error",
                         _abs_error_map, lambda m: tf.reduce_mean(m, axis=[1, 2]))


def _smooth_max(sigma: float = 2.0, **_: Any) -> ScoreFunction:
    return ScoreFunction(
        "smooth_max", f"maximum of the Gaussian-smoothed (sigma={sigma} px) squared error map",
        lambda x, r: _blur(_squared_error_map(x, r), sigma), lambda m: tf.reduce_max(m, axis=[1, 2]),
        {"sigma": sigma})


def _smooth_quantile(sigma: float = 2.0, q: float = 0.99, **_: Any) -> ScoreFunction:
    return ScoreFunction(
        "smooth_quantile", f"{q} quantile of the Gaussian-smoothed (sigma={sigma} px) squared error map",
        lambda x, r: _blur(_squared_error_map(x, r), sigma), lambda m: _flat_quantile(m, q),
        {"sigma": sigma, "q": q})


def _residual_error_map(x: tf.Tensor, r: tf.Tensor, sigma: float) -> tf.Tensor:
    """Squared Gaussian-smoothed signed residual, averaged over channels.

    Smoothing the signed difference before squaring cancels the fine, zero-mean texture an autoencoder
    cannot reproduce, while a defect (a coherent local change of brightness) survives.
    """
    d = x - r
    h, w, c = d.shape[1], d.shape[2], d.shape[3]
    d = tf.reshape(tf.transpose(d, [0, 3, 1, 2]), [-1, h, w])
    d = tf.transpose(tf.reshape(_blur(d, sigma), [-1, c, h, w]), [0, 2, 3, 1])
    return tf.reduce_mean(tf.square(d), axis=-1)


def _residual_max(sigma: float = 2.0, **_: Any) -> ScoreFunction:
    return ScoreFunction(
        "residual_max", f"maximum of the squared Gaussian-smoothed (sigma={sigma} px) signed residual",
        lambda x, r: _residual_error_map(x, r, sigma), lambda m: tf.reduce_max(m, axis=[1, 2]),
        {"sigma": sigma})


def _ssim_max(sigma: float = 1.5, smooth: float = 2.0, **_: Any) -> ScoreFunction:
    return ScoreFunction(
        "ssim_max", f"maximum of the smoothed (sigma={smooth} px) 1-SSIM map (window sigma={sigma} px)",
        lambda x, r: _blur(ssim_error_map(x, r, sigma), smooth), lambda m: tf.reduce_max(m, axis=[1, 2]),
        {"sigma": sigma, "smooth": smooth})


_FACTORIES: dict[str, Callable[..., ScoreFunction]] = {
    "mse": _mse,
    "mae": _mae,
    "smooth_max": _smooth_max,
    "smooth_quantile": _smooth_quantile,
    "residual_max": _residual_max,
    "ssim_max": _ssim_max,
}
SCORE_NAMES: tuple[str, ...] = tuple(_FACTORIES)
# Scores that are their map's maximum: another normalised map can join them by a per-pixel maximum.
MAX_SCORES: tuple[str, ...] = ("smooth_max", "residual_max", "ssim_max")


def get_score(name: str, params: dict[str, Any] | None = None) -> ScoreFunction:
    """The score function called `name` with optional parameters; KeyError names the known scores."""
    if name not in _FACTORIES:
        raise KeyError(f"unknown score {name!r} (known: {', '.join(SCORE_NAMES)})")
    return _FACTORIES[name](**(params or {}))


def blur_maps(maps: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of NxHxW maps (reflect padding), for other modules' maps."""
    return _blur(maps, sigma)
