"""Image files: which extensions count, listing a folder, whether bytes hold a whole image, decoding.

Every reader of image files (the folder source, `monitor score`, training, evaluation) goes through here,
so a file the daemon would score is the same file training would read.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Formats whose bytes say where the image ends (see image_is_complete).
SELF_DELIMITED = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def is_image_name(path: Path, extensions: tuple[str, ...] | frozenset[str] = IMAGE_EXTENSIONS) -> bool:
    """True when the file name has one of `extensions` (lower-case, with the dot)."""
    return path.suffix.lower() in extensions


def is_self_delimited(path: Path) -> bool:
    """True for formats whose bytes carry their own end (PNG, JPEG, BMP)."""
    return path.suffix.lower() in SELF_DELIMITED


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive, sorted), by extension."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_name(p))


def image_is_complete(data: bytes) -> bool:
    """True when the bytes hold a whole image as far as the format's trailer tells."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data.endswith(_PNG_END)
    if data.startswith(b"\xff\xd8"):
        return data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"
    if data.startswith(b"BM") and len(data) >= 6:
        return len(data) >= int.from_bytes(data[2:6], "little")
    return True  # TIFF and others: only a successful decode tells


def decode_image(data: bytes) -> np.ndarray | None:
    """Decode bytes as OpenCV does (BGR/BGRA/gray, 8 or 16 bit); None when not an image.

    Raises cv2.error for images OpenCV refuses, e.g. above CV_IO_MAX_IMAGE_PIXELS.
    """
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)


def read_image(path: Path) -> np.ndarray | None:
    """Decode an image file as OpenCV does; None when it cannot be read or decoded."""
    try:
        with open(path, "rb") as f:
            image = decode_image(f.read())
    except (OSError, cv2.error):
        return None
    return image if image is not None and image.size else None
