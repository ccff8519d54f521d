"""Tiling geometry (monitor/model/tiling.py): coverage, split/stitch, counts, padding; no TensorFlow."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.model.tiling import (
    TileCanvas,
    axis_starts,
    coverage,
    default_stride,
    random_positions,
    split,
    stitch,
    tile_count,
    tile_grid,
    working_size,
)


@st.composite
def axes(draw: st.DrawFn) -> tuple[int, int, int]:
    """(length, tile, stride) with 1 <= stride <= tile; lengths below, at and far above a tile."""
    tile = draw(st.integers(1, 40))
    stride = draw(st.integers(1, tile))
    length = draw(st.integers(1, 200))
    return length, tile, stride


@st.composite
def grids(draw: st.DrawFn) -> tuple[np.ndarray, object]:
    """An image (2-D or with channels) and its grid, the image often smaller than a tile on some axis."""
    th, tw = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    sh, sw = draw(st.integers(1, th)), draw(st.integers(1, tw))
    h, w = draw(st.integers(1, 50)), draw(st.integers(1, 50))
    channels = draw(st.sampled_from([None, 1, 3]))
    seed = draw(st.integers(0, 2**16))
    shape = (h, w) if channels is None else (h, w, channels)
    image = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return image, tile_grid(h, w, (th, tw), (sh, sw))


@given(axes())
def test_tiles_along_an_axis_cover_every_pixel(case: tuple[int, int, int]) -> None:
    length, tile, stride = case
    covered = np.zeros(max(length, tile), bool)
    for start in axis_starts(length, tile, stride):
        covered[start:start + tile] = True
    assert covered.all()


@given(axes())
def test_tiles_start_at_zero_end_at_the_edge_and_step_at_most_a_stride(case: tuple[int, int, int]) -> None:
    length, tile, stride = case
    starts = axis_starts(length, tile, stride)
    assert starts[0] == 0
    assert starts[-1] == max(0, length - tile)  # the last tile ends exactly at the image's end, never beyond
    steps = np.diff(starts)
    assert ((steps > 0) & (steps <= stride)).all()


@given(axes())
def test_tile_count_is_ceil_of_length_minus_tile_over_stride_plus_one(case: tuple[int, int, int]) -> None:
    length, tile, stride = case
    expected = 1 if length <= tile else math.ceil((length - tile) / stride) + 1
    assert len(axis_starts(length, tile, stride)) == tile_count(length, tile, stride) == expected


@given(grids())
def test_a_grid_has_rows_times_columns_tiles(case: tuple[np.ndarray, object]) -> None:
    image, grid = case
    th, tw = grid.tile
    sh, sw = grid.stride
    assert len(grid) == len(grid.positions) == tile_count(image.shape[0], th, sh) * tile_count(image.shape[1], tw, sw)


@given(grids())
def test_every_pixel_of_the_image_is_covered_by_a_tile(case: tuple[np.ndarray, object]) -> None:
    image, grid = case
    assert coverage(grid).min() >= 1


@settings(deadline=None)
@given(grids())
def test_split_then_mean_stitch_returns_the_image(case: tuple[np.ndarray, object]) -> None:
    image, grid = case
    tiles = split(image, grid)
    assert tiles.shape[1:3] == grid.tile
    # Exact but for float32 rounding, which grows with the number of tiles summed over a pixel.
    tolerance = 2.4e-7 * float(coverage(grid).max())
    np.testing.assert_allclose(stitch(tiles, grid, "mean"), image, rtol=tolerance, atol=tolerance)


@settings(deadline=None)
@given(grids())
def test_split_then_max_stitch_returns_a_single_channel_map(case: tuple[np.ndarray, object]) -> None:
    image, grid = case
    plane = image if image.ndim == 2 else image[..., 0]
    np.testing.assert_array_equal(stitch(split(plane, grid), grid, "max"), plane)


def test_an_image_smaller_than_a_tile_is_mirrored_up_to_one_tile() -> None:
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    grid = tile_grid(3, 4, (5, 6))
    (tile,) = split(image, grid)
    assert tile.shape == (5, 6)
    np.testing.assert_array_equal(tile[:3, :4], image)
    np.testing.assert_array_equal(tile[3:5, :4], image[::-1][:2])  # mirrored at the bottom edge
    np.testing.assert_array_equal(tile[:3, 4:6], image[:, ::-1][:, :2])  # and at the right edge


def test_a_defect_on_a_tile_border_keeps_its_full_error_in_the_stitched_map() -> None:
    grid = tile_grid(8, 12, (8, 8), (4, 4))  # tiles at x = 0 and 4: columns 4..7 are seen by both
    canvas = TileCanvas(grid)
    first = np.zeros((8, 8), np.float32)
    first[3, 6] = 1.0  # the first tile sees the defect at column 6 ...
    canvas.add(0, error_map=first)
    canvas.add(1, error_map=np.zeros((8, 8), np.float32))  # ... the second reconstructs it: error 0 there
    assert canvas.maximum()[3, 6] == 1.0  # a mean would have halved it


def test_the_image_score_is_the_worst_tile_score() -> None:
    canvas = TileCanvas(tile_grid(8, 16, (8, 8), (8, 8)))
    canvas.add(0, score=0.2)
    canvas.add(1, score=0.7)
    assert canvas.score() == 0.7


def test_default_stride_is_half_a_tile() -> None:
    assert default_stride((64, 32)) == (32, 16)
    assert default_stride((1, 1)) == (1, 1)


def test_a_stride_larger_than_the_tile_is_refused() -> None:
    with pytest.raises(ValueError, match="larger than the tile"):
        tile_grid(100, 100, (8, 8), (9, 8))


@pytest.mark.parametrize(("size", "scale", "expected"), [((1944, 2592), 1.0, (1944, 2592)),
                                                          ((256, 256), 0.5, (128, 128)),
                                                          ((101, 75), 0.5, (50, 38)),
                                                          ((3, 3), 0.1, (1, 1))])
def test_working_size_is_the_image_size_times_scale_rounded(size, scale, expected) -> None:  # noqa: ANN001
    assert working_size(*size, scale) == expected


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5])
def test_a_scale_outside_zero_to_one_is_refused(scale: float) -> None:
    with pytest.raises(ValueError, match="scale"):
        working_size(100, 100, scale)


@given(grids(), st.integers(0, 2**16))
def test_random_crops_lie_inside_the_padded_image(case: tuple[np.ndarray, object], seed: int) -> None:
    _, grid = case
    corners = random_positions(grid, 20, np.random.default_rng(seed))
    ph, pw = grid.padded
    assert (corners[:, 0] >= 0).all() and (corners[:, 0] + grid.tile[0] <= ph).all()
    assert (corners[:, 1] >= 0).all() and (corners[:, 1] + grid.tile[1] <= pw).all()
