"""The autoencoders a bundle may hold.

- ``seed``: the seeds' ConvAE (Conv2D stride 2 + LeakyReLU 0.2 + BatchNorm, dense latent, mirrored
  Conv2DTranspose decoder, sigmoid). Good for centred objects (a digit, a part in a fixture).
- ``conv``: the same blocks without the dense layers; the code is a small spatial map (``code_channels``
  per cell at 1/2**len(filters) of the input size). Every cell sees only its neighbourhood, so a texture
  shifted by a few pixels costs nothing, which the dense latent cannot learn from a few hundred crops.

Both are plain Keras functional models of standard layers: a bundle loads in safe mode whichever it holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from monitor.training.options import ARCHITECTURES, DEFAULT_FILTERS


def _check(height: int, width: int, channels: int, filters: tuple[int, ...]) -> int:
    if not filters or any(f <= 0 for f in filters):
        raise ValueError(f"filters must be a non-empty list of positive numbers, got {filters}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    step = 2 ** len(filters)
    if height <= 0 or width <= 0 or height % step or width % step:
        raise ValueError(f"image size {height}x{width} must be divisible by {step} "
                         f"(2 ** number of conv blocks, filters={list(filters)})")
    return step


def _block(x: keras.KerasTensor, layer: layers.Layer, i: int, prefix: str) -> keras.KerasTensor:
    x = layer(x)
    x = layers.LeakyReLU(negative_slope=0.2, name=f"{prefix}_act{i}")(x)
    return layers.BatchNormalization(axis=-1, name=f"{prefix}_bn{i}")(x)


def build_autoencoder(height: int, width: int, channels: int, filters: Sequence[int] = (32, 64),
                      latent: int = 16) -> keras.Model:
    """The seeds' ConvAE: stride-2 conv blocks, dense latent, mirrored Conv2DTranspose decoder, sigmoid."""
    filters = tuple(int(f) for f in filters)
    if latent <= 0:
        raise ValueError(f"latent must be positive, got {latent}")
    step = _check(height, width, channels, filters)
    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = inputs
    for i, f in enumerate(filters):
        x = _block(x, layers.Conv2D(f, 3, strides=2, padding="same", name=f"enc_conv{i}"), i, "enc")
    h, w = height // step, width // step
    x = layers.Flatten(name="flatten")(x)
    z = layers.Dense(latent, name="latent")(x)
    x = layers.Dense(h * w * filters[-1], name="dec_dense")(z)
    x = layers.Reshape((h, w, filters[-1]), name="dec_reshape")(x)
    for i, f in enumerate(reversed(filters)):
        x = _block(x, layers.Conv2DTranspose(f, 3, strides=2, padding="same", name=f"dec_conv{i}"), i, "dec")
    x = layers.Conv2DTranspose(channels, 3, padding="same", name="dec_out")(x)
    outputs = layers.Activation("sigmoid", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="conv_autoencoder")


def build_conv_autoencoder(height: int, width: int, channels: int, filters: Sequence[int] = (32, 64, 128),
                           code_channels: int = 8) -> keras.Model:
    """Fully convolutional AE: the seeds' blocks, a 1x1-conv spatial bottleneck instead of the dense latent."""
    filters = tuple(int(f) for f in filters)
    if code_channels <= 0:
        raise ValueError(f"code_channels must be positive, got {code_channels}")
    _check(height, width, channels, filters)
    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = inputs
    for i, f in enumerate(filters):
        x = _block(x, layers.Conv2D(f, 3, strides=2, padding="same", name=f"enc_conv{i}"), i, "enc")
    # Linear 1x1 bottleneck: a few numbers per cell is what keeps the model from copying its input.
    x = layers.Conv2D(code_channels, 1, padding="same", name="code")(x)
    for i, f in enumerate(reversed(filters)):
        x = _block(x, layers.Conv2DTranspose(f, 3, strides=2, padding="same", name=f"dec_conv{i}"), i, "dec")
    x = layers.Conv2DTranspose(channels, 3, padding="same", name="dec_out")(x)
    outputs = layers.Activation("sigmoid", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="fully_conv_autoencoder")


def build_model(architecture: str, height: int, width: int, channels: int, filters: Sequence[int] | None = None,
                latent: int = 16, code_channels: int = 8) -> keras.Model:
    """The autoencoder called `architecture` ('seed' or 'conv'); filters None means that architecture's default."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    filters = tuple(filters) if filters else DEFAULT_FILTERS[architecture]
    if architecture == "conv":
        return build_conv_autoencoder(height, width, channels, filters, code_channels)
    return build_autoencoder(height, width, channels, filters, latent)
