"""A fixed filter bank of local image statistics: features for the density score that need no training.

The autoencoder's residual and its own encoder features are only as good as the model, and on a fine
texture a small model learns little beyond a blur (measured on this project's texture protocols: residual and
encoder-feature scores near chance, where these statistics reach AUROC 0.77-0.87). Classical texture
inspection describes each pixel by the statistics of its neighbourhood at a few scales; a Gaussian of those
over normal images (monitor/model/density.py) then flags what normal parts never show.

Per plane and per scale sigma in SIGMAS: the local mean (brightness, a stain), the local standard deviation
(texture strength: a smudge wipes it, noise raises it) and the detail (the pixel minus its local mean: specks,
scratches, cracks). Colour images are described in an opponent space, luma and two chroma planes, so that a
change of colour that keeps the brightness moves the chroma features alone.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from monitor.model.scores import blur_maps

SIGMAS: tuple[float, ...] = (1.0, 2.0, 4.0)
STATISTICS: tuple[str, ...] = ("mean", "std", "detail")
# BGR weights: luma (Rec. 601, as cv2's gray), red-green, yellow-blue.
_OPPONENT_BGR = np.array([[0.114, 0.587, 0.299],
                          [0.0, -1.0, 1.0],
                          [-1.0, 0.5, 0.5]], np.float32)


def feature_count(channels: int) -> int:
    """Features per location for an input of `channels` (1 gray, 3 BGR)."""
    return (3 if channels == 3 else 1) * len(SIGMAS) * len(STATISTICS)


def usable_sigmas(height: int, width: int) -> tuple[float, ...]:
    """The scales a map of this size can take: reflect padding needs the kernel radius (3 sigma) inside it."""
    side = min(height, width)
    return tuple(s if 3 * s < side else max(0.5, (side - 1) / 3.0) for s in SIGMAS)


def opponent_planes(x: tf.Tensor) -> tf.Tensor:
    """N x H x W x P: the gray plane, or luma and two chroma planes of a BGR input."""
    if x.shape[-1] != 3:
        return x
    return tf.einsum("nhwc,pc->nhwp", x, tf.constant(_OPPONENT_BGR))


def filter_bank(x: tf.Tensor) -> tf.Tensor:
    """N x H x W x D local statistics of N x H x W x C inputs in [0, 1] (D = feature_count(C))."""
    planes = opponent_planes(tf.convert_to_tensor(x, tf.float32))
    h, w, p = planes.shape[1], planes.shape[2], planes.shape[3]
    flat = tf.reshape(tf.transpose(planes, [0, 3, 1, 2]), [-1, h, w])  # (N*P) x H x W
    features = []
    for sigma in usable_sigmas(h, w):
        mean = blur_maps(flat, sigma)
        # The variance from blurred squares can dip a hair below zero in float32; the sqrt must stay finite.
        std = tf.sqrt(tf.maximum(blur_maps(flat * flat, sigma) - mean * mean, 0.0) + 1e-12)
        features += [mean, std, flat - mean]
    stacked = tf.stack(features, axis=-1)  # (N*P) x H x W x (S*3)
    stacked = tf.reshape(stacked, [-1, p, h, w, len(features)])
    return tf.reshape(tf.transpose(stacked, [0, 2, 3, 1, 4]), [-1, h, w, p * len(features)])
