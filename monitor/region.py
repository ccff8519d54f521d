"""Where on the part: the hottest region of an error map, as a box in the original image's pixels.

The error map is the one the evidence shows as its heat map. It is at the model's input size for an untiled
bundle (the image was resized, each axis on its own, to that size) and at working resolution for a tiled
one (each side times the tiling scale, rounded). Either way the map covers the whole scored image, so a box
on the map goes back to the image by the ratio of the two sizes, axis by axis.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from monitor.records import Region

# A pixel belongs to the hot region when its error is at least this fraction of the way from the map's
# minimum to its maximum. One half keeps a defect's core and its rim, and leaves texture noise (a few per cent
# of the peak on a well-trained model) outside.
HOT_FRACTION = 0.5


def hottest_box(error_map: np.ndarray, fraction: float = HOT_FRACTION) -> Region | None:
    """The bounding box, in map pixels, of the connected hot region that holds the map's maximum.

    None for a flat map (nothing is hotter than anything else) or one without a finite value.
    """
    m = np.asarray(error_map, dtype=np.float32)
    if m.ndim == 3:
        m = m.max(axis=2)
    if m.ndim != 2 or m.size == 0:
        return None
    finite = np.isfinite(m)
    if not finite.any():
        return None
    low = float(m[finite].min())
    m = np.where(finite, m, low)  # a NaN or inf pixel (a broken tile) must not become the peak
    high = float(m.max())
    if not high > low:
        return None
    mask = (m >= low + fraction * (high - low)).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    peak = np.unravel_index(int(np.argmax(m)), m.shape)
    x, y, w, h = (int(v) for v in stats[labels[peak], :4])
    return Region(x, y, w, h)


def to_original(box: Region, map_shape: tuple[int, int], image_shape: tuple[int, int],
                offset: tuple[int, int] = (0, 0)) -> Region:
    """A box on a map of `map_shape` (h, w) as a box on the image of `image_shape` (h, w) it covers.

    The box grows outward to whole image pixels, so it always contains what the map saw. `offset` (x, y)
    is added last: a camera's ROI crop sits at the ROI's corner of the whole frame.
    """
    mh, mw = map_shape
    ih, iw = image_shape
    sx, sy = iw / mw, ih / mh
    x0 = max(0, math.floor(box.x * sx))
    y0 = max(0, math.floor(box.y * sy))
    x1 = min(iw, math.ceil((box.x + box.w) * sx))
    y1 = min(ih, math.ceil((box.y + box.h) * sy))
    return Region(x0 + offset[0], y0 + offset[1], max(1, x1 - x0), max(1, y1 - y0))


def locate(error_map: np.ndarray, image_shape: tuple[int, int],
           offset: tuple[int, int] = (0, 0)) -> tuple[Region, Region] | None:
    """(box on the map, box on the original image) of the hottest region, or None for a flat map."""
    box = hottest_box(error_map)
    if box is None:
        return None
    shape = np.asarray(error_map).shape[:2]
    return box, to_original(box, (int(shape[0]), int(shape[1])), image_shape, offset)
