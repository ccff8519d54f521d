"""Synthetic inspection images for tests: smooth 'normal' parts and clearly defective ones."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def normal_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A smooth part: a soft diagonal gradient with random phase and brightness, slight noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi)
    base = 0.5 + 0.25 * np.sin(2 * np.pi * (x + y) * 0.75 + phase)
    base = base * rng.uniform(0.8, 1.0) + rng.normal(0, 0.01, base.shape)
    return np.clip(base * 255, 0, 255).astype(np.uint8)


def anomalous_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A defective part: a normal part with a dark blob and a bright scratch across it."""
    img = normal_image(rng, size).copy()
    c = int(rng.integers(size // 4, 3 * size // 4))
    cv2.circle(img, (c, size - c), max(3, size // 6), 0, -1)
    cv2.line(img, (0, int(rng.integers(0, size))), (size - 1, int(rng.integers(0, size))), 255, max(1, size // 16))
    return img


def write_images(folder: Path, images: list[np.ndarray], prefix: str = "img", ext: str = ".png") -> list[Path]:
    """Write images as files; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{prefix}{i:04d}{ext}"
        if not cv2.imwrite(str(path), img):
            raise OSError(f"could not write {path}")
        paths.append(path)
    return paths


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def colour_part(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A warm-coloured smooth part (BGR): the normal gradient, tinted."""
    gray = normal_image(rng, size).astype(np.float32)
    return np.clip(gray[..., None] * np.array([1.0, 0.9, 0.75], np.float32), 0, 255).astype(np.uint8)


def colour_stain(image: np.ndarray, rng: np.random.Generator, amplitude: float = 8.0) -> np.ndarray:
    """A faint smooth greenish stain that keeps the brightness: nothing an autoencoder fails to reconstruct."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
    sigma = rng.uniform(size / 8, size / 5)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma * sigma))[..., None]
    shift = np.array([-1.0, 1.0, -1.0], np.float32) * amplitude
    return np.clip(image.astype(np.float32) + blob * shift, 0, 255).astype(np.uint8)
