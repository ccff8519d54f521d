"""Turn a decoded image into the model's input; the same function serves training and scoring.

Colour order: the model sees colour images in BGR order, exactly as OpenCV decodes them
(``cv2.imread`` / ``cv2.VideoCapture``); nothing is ever swapped to RGB. Gray images have one channel.
"""

from __future__ import annotations

import cv2
import numpy as np

from monitor.model.tiling import working_size

PREPROCESSING = {
    "resize": "cv2.INTER_AREA",
    "scale": "uint8 / 255, uint16 / 65535 (or / input.uint16_white, clipped), float clipped to [0, 1]",
    "color_order": "BGR (OpenCV decode order)",
    "gray": "cv2.COLOR_BGR2GRAY",
}


# The white levels of cameras that store fewer bits in a 16-bit file (8, 10, 12, 14 bits: Mono10/12/14 in a
# 16-bit PNG or TIFF, their pixels never above 2^bits - 1). Read on 0..65535 such images are a sixteenth as
# bright as the same parts in 8 bits, and every fixed amount in the monitor (synthetic defects, the health
# check's sensor noise, the colour test, the evidence's grey levels) would be sixteen times too large for them.
UINT16_WHITE_LEVELS: tuple[int, ...] = (255, 1023, 4095, 16383)


def uint16_white(images: list[np.ndarray]) -> int | None:
    """The white level of the 16-bit images among `images`: the smallest of UINT16_WHITE_LEVELS that holds
    every pixel (a 12-bit camera: 4095), None when they use all 16 bits or there are none."""
    peaks = [int(im.max()) for im in images if im.dtype == np.uint16 and im.size]
    if not peaks:
        return None
    return next((level for level in UINT16_WHITE_LEVELS if max(peaks) <= level), None)


def to_full_range(image: np.ndarray, white: int) -> np.ndarray:
    """A 16-bit image of white level `white` stretched to 0..65535 (what `white` does in preprocessing)."""
    return np.rint(np.minimum(image, white) * (65535.0 / white)).astype(np.uint16)


def _to_unit_float(image: np.ndarray, white: int | None = None) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if image.dtype == np.uint16:
        if white is not None:  # fewer bits in a 16-bit file: read on their own scale; brighter reads as white
            return np.minimum(image.astype(np.float32) / np.float32(white), np.float32(1.0))
        return image.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"unsupported image dtype {image.dtype} (expected uint8, uint16 or float)")


def _convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image if channels == 1 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"unsupported image shape {image.shape} (expected HxW, HxWx1, HxWx3 or HxWx4)")
    if image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if channels == 1 else image


def to_model_input(image: np.ndarray, height: int, width: int, channels: int,
                   white: int | None = None) -> np.ndarray:
    """A decoded image (uint8/uint16; gray, BGR or BGRA) as float32 HxWxC in [0, 1] (INTER_AREA resize).

    `white`: the white level of 16-bit images (a bundle's `input.uint16_white`); None: 65535.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = np.asarray(image)
    if image.size == 0 or image.ndim < 2:
        raise ValueError(f"empty or malformed image of shape {image.shape}")
    x = _convert_channels(_to_unit_float(image, white), channels)
    if x.shape[0] != height or x.shape[1] != width:
        x = cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA)
    if x.ndim == 2:
        x = x[:, :, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def to_working_image(image: np.ndarray, scale: float, channels: int, white: int | None = None) -> np.ndarray:
    """A decoded image as float32 HxWxC in [0, 1] at working resolution: each side x `scale` (INTER_AREA).

    The same conversion as `to_model_input` (unit range, then channels, then resize), only to a size set
    by the scale instead of the model input: tiled bundles cut their tiles from this image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = np.asarray(image)
    if image.size == 0 or image.ndim < 2:
        raise ValueError(f"empty or malformed image of shape {image.shape}")
    x = _convert_channels(_to_unit_float(image, white), channels)
    h, w = working_size(x.shape[0], x.shape[1], scale)
    if (h, w) != x.shape[:2]:
        x = cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA)
    if x.ndim == 2:
        x = x[:, :, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def _ready_shape(image: np.ndarray, height: int, width: int, channels: int) -> bool:
    """True when `image` is uint8 at the model's size and channel layout: only the scale is left to do."""
    if image.dtype != np.uint8 or image.shape[:2] != (height, width):
        return False
    if channels == 1:
        return image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    return image.ndim == 3 and image.shape[2] == 3


def ready_batch(images: list[np.ndarray], height: int, width: int, channels: int) -> np.ndarray | None:
    """The images stacked as uint8 NxHxWxC when every one is uint8 at the model's size and layout (a line's
    images usually are), so that only the scale by 1/255 is left to do; None otherwise (or when empty)."""
    if not images or not all(_ready_shape(im, height, width, channels) for im in images):
        return None
    return np.stack(images).reshape(len(images), height, width, channels)


def to_model_batch(images: list[np.ndarray], height: int, width: int, channels: int,
                   white: int | None = None) -> np.ndarray:
    """Several decoded images as one float32 NxHxWxC batch.

    Images at the model's size and layout already are scaled in one vectorised step (the same arithmetic as
    `to_model_input`, so the same values), which saves a Python round per image.
    """
    if not images:
        return np.zeros((0, height, width, channels), np.float32)
    batch = ready_batch(images, height, width, channels)
    if batch is not None:
        return batch.astype(np.float32) / np.float32(255.0)
    return np.stack([to_model_input(im, height, width, channels, white) for im in images])
