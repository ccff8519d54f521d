"""The seeds' convolutional autoencoder (Conv2D stride 2 + LeakyReLU 0.2 + BatchNorm, dense latent)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers


def build_autoencoder(height: int, width: int, channels: int, filters: Sequence[int] = (32, 64),
                      latent: int = 16) -> keras.Model:
    """The ConvAE: stride-2 conv blocks, dense latent, mirrored Conv2DTranspose decoder, sigmoid output."""
    filters = tuple(int(f) for f in filters)
    if not filters or any(f <= 0 for f in filters):
        raise ValueError(f"filters must be a non-empty list of positive numbers, got {filters}")
    if latent <= 0:
        raise ValueError(f"latent must be positive, got {latent}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    step = 2 ** len(filters)
    if height <= 0 or width <= 0 or height % step or width % step:
        raise ValueError(f"image size {height}x{width} must be divisible by {step} "
                         f"(2 ** number of conv blocks, filters={list(filters)})")
    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, strides=2, padding="same", name=f"enc_conv{i}")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"enc_act{i}")(x)
        x = layers.BatchNormalization(axis=-1, name=f"enc_bn{i}")(x)
    h, w = height // step, width // step
    x = layers.Flatten(name="flatten")(x)
    z = layers.Dense(latent, name="latent")(x)
    x = layers.Dense(h * w * filters[-1], name="dec_dense")(z)
    x = layers.Reshape((h, w, filters[-1]), name="dec_reshape")(x)
    for i, f in enumerate(reversed(filters)):
        x = layers.Conv2DTranspose(f, 3, strides=2, padding="same", name=f"dec_conv{i}")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"dec_act{i}")(x)
        x = layers.BatchNormalization(axis=-1, name=f"dec_bn{i}")(x)
    x = layers.Conv2DTranspose(channels, 3, padding="same", name="dec_out")(x)
    outputs = layers.Activation("sigmoid", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="conv_autoencoder")
