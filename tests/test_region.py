"""Where on the part: the hottest region of the error map, as a box in the original image's pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import LARGE_SIZE
from imagegen import normal_image

from monitor.records import Region, Verdict
from monitor.region import hottest_box, locate, to_original

MAX_BATCH = 4


def _contains(outer: Region, x: float, y: float) -> bool:
    return outer.x <= x < outer.x + outer.w and outer.y <= y < outer.y + outer.h


def _within(inner: Region, outer: Region, margin_x: int, margin_y: int) -> bool:
    """`inner` lies inside `outer` grown by the margins on every side."""
    return (inner.x >= outer.x - margin_x and inner.y >= outer.y - margin_y
            and inner.x + inner.w <= outer.x + outer.w + margin_x and inner.y + inner.h <= outer.y + outer.h + margin_y)


# --- the box on the map -----------------------------------------------------------------------------------
def test_the_box_bounds_the_hot_blob_that_holds_the_maximum():
    m = np.full((40, 60), 0.01, np.float32)
    m[5:9, 10:20] = 0.6  # a warm blob, above half the peak, but not the peak
    m[25:31, 40:44] = 0.7
    m[27, 42] = 1.0  # the peak, inside the second blob
    assert hottest_box(m) == Region(40, 25, 4, 6)


def test_a_region_is_one_connected_blob_not_every_hot_pixel():
    m = np.zeros((20, 20), np.float32)
    m[2:4, 2:4] = 1.0
    m[15:17, 15:17] = 0.9  # as hot, but elsewhere: a second spot is not part of the box
    assert hottest_box(m) == Region(2, 2, 2, 2)


def test_a_flat_or_empty_map_has_no_region():
    assert hottest_box(np.zeros((8, 8), np.float32)) is None
    assert hottest_box(np.full((8, 8), np.nan, np.float32)) is None


def test_a_nan_pixel_is_never_the_hottest():
    m = np.zeros((10, 10), np.float32)
    m[0, 0] = np.nan
    m[6, 7] = 1.0
    assert hottest_box(m) == Region(7, 6, 1, 1)


# --- back to the original image ---------------------------------------------------------------------------
def test_a_map_box_scales_back_to_the_original_image_axis_by_axis():
    # A 32x32 model input of a 96x160 (h x w) image: 5 image pixels a map column, 3 a map row.
    assert to_original(Region(20, 10, 4, 2), (32, 32), (96, 160)) == Region(100, 30, 20, 6)


def test_a_box_scaled_back_grows_to_whole_pixels_and_stays_inside_the_image():
    # Working resolution 101x75 of a 201x149 image (tiling scale 0.5, rounded).
    box = to_original(Region(70, 95, 5, 6), (101, 75), (201, 149))
    assert box.x + box.w <= 149 and box.y + box.h <= 201
    assert box.x <= 70 * 149 / 75 and box.x + box.w >= 75 * 149 / 75 - 1


def test_an_roi_offset_puts_the_box_in_the_whole_camera_frame():
    assert to_original(Region(1, 2, 3, 4), (10, 10), (10, 10), offset=(100, 50)) == Region(101, 52, 3, 4)


def test_the_journal_line_has_the_region():
    verdict = Verdict(source="line1", frame_time=1.0, scored_at=2.0, score=0.5, threshold=0.1, anomaly=True,
                      region=Region(100, 30, 20, 6))
    assert verdict.to_json()["region"] == {"x": 100, "y": 30, "w": 20, "h": 6}
    assert "region" not in Verdict(source="line1", frame_time=1.0, scored_at=2.0, score=0.01, threshold=0.1,
                                   anomaly=False).to_json()


# --- real bundles: a synthetic defect at a known place ----------------------------------------------------
def _dark_square(image: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    out = image.copy()
    out[y:y + size, x:x + size] = 0 if image[y, x] > 128 else 255
    return out


def test_untiled_bundle_the_region_lies_around_the_defect_in_original_pixels(tiny_bundle: Path):
    from monitor.model.bundle import load_bundle
    from monitor.model.scorer import BatchScorer

    rng = np.random.default_rng(5)
    # 96 x 160 (h x w): the model sees it squashed to 32x32, 3 rows and 5 columns an input pixel.
    image = _dark_square(cv2.resize(normal_image(rng, 128), (160, 96), interpolation=cv2.INTER_AREA), 110, 40, 20)
    scored = BatchScorer(load_bundle(tiny_bundle), MAX_BATCH).score([image])
    _, region = locate(scored.error_maps[0], image.shape[:2])
    assert scored.error_maps[0].shape == (32, 32)
    assert _contains(region, 120, 50)  # the defect's centre
    # About the defect, within two model pixels (10 image columns, 6 rows) of its edges: not the whole part.
    assert _within(region, Region(110, 40, 20, 20), 10, 6)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_tiled_bundle_the_region_lies_around_the_defect_in_original_pixels(tiled_bundle: Path, scale: float):
    from monitor.model.bundle import Bundle, load_bundle
    from monitor.model.scorer import BatchScorer

    bundle = load_bundle(tiled_bundle)
    bundle = Bundle(bundle.path, bundle.model, {**bundle.meta, "tiling": {**bundle.meta["tiling"], "scale": scale}})
    rng = np.random.default_rng(31)
    size = 4 if scale == 1.0 else 8  # 4 px at working resolution either way
    image = _dark_square(normal_image(rng, LARGE_SIZE), 150, 101, size)
    scored = BatchScorer(bundle, MAX_BATCH).score([image])
    assert scored.error_maps[0].shape == (round(LARGE_SIZE * scale),) * 2  # the map is at working resolution
    _, region = locate(scored.error_maps[0], image.shape[:2])
    assert _contains(region, 150 + size / 2, 101 + size / 2)  # the defect's centre
    # Within two working pixels of the defect's edges, in original pixels (two per working pixel at 0.5).
    assert _within(region, Region(150, 101, size, size), round(2 / scale), round(2 / scale))
