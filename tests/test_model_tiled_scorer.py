"""Tiled scoring: a small defect on a large image is found in tiles; score = worst tile; stitched maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import LARGE_SIZE
from imagegen import normal_image

from monitor.model.bundle import Bundle, load_bundle
from monitor.model.preprocess import to_working_image
from monitor.model.scorer import BatchScorer
from monitor.model.tiling import split, tile_grid

MAX_BATCH = 8


def _with_defect(image: np.ndarray, y: int, x: int, size: int = 4) -> np.ndarray:
    out = image.copy()
    out[y:y + size, x:x + size] = 0 if image[y, x] > 128 else 255
    return out


def _with_tiling(bundle: Bundle, **tiling: object) -> Bundle:
    return Bundle(bundle.path, bundle.model, {**bundle.meta, "tiling": {**bundle.meta["tiling"], **tiling}})


@pytest.fixture(scope="module")
def tiled(tiled_bundle: Path) -> Bundle:
    return load_bundle(tiled_bundle)


@pytest.fixture(scope="module")
def scorer(tiled: Bundle) -> BatchScorer:
    return BatchScorer(tiled, max_batch=MAX_BATCH)


@pytest.fixture(scope="module")
def large() -> list[np.ndarray]:
    """Three normal 256x256 images of the training kind, and one with a 4x4 px defect."""
    rng = np.random.default_rng(31)
    images = [normal_image(rng, LARGE_SIZE) for _ in range(4)]
    images[3] = _with_defect(images[3], 101, 150)
    return images


def test_a_4px_defect_on_a_256px_image_is_found_in_tiles_and_lost_when_resized(tiled, tiny_bundle, large) -> None:  # noqa: ANN001
    # The untiled model is the same kind (the same generator at 32x32): the whole image is resized to it.
    untiled = load_bundle(tiny_bundle)
    with_tiles = BatchScorer(tiled, MAX_BATCH).score(large).scores / tiled.default_threshold
    resized = BatchScorer(untiled, MAX_BATCH).score(large).scores / untiled.default_threshold
    assert with_tiles[3] > 2.0  # detected, well above the bundle's own threshold
    assert resized[3] < 1.0  # missed: 16 px of 65,536 averaged into a quarter of one 32x32 pixel
    assert resized[3] < with_tiles[3] / 3


def test_the_image_score_is_the_worst_of_its_tile_scores(tiled, scorer, large) -> None:  # noqa: ANN001
    work = to_working_image(large[3], tiled.tiling.scale, tiled.channels)
    tiles = split(work, tile_grid(*work.shape[:2], (tiled.height, tiled.width), tiled.tile_stride))
    per_tile = scorer.score_inputs(tiles).scores
    assert scorer.score([large[3]]).scores[0] == pytest.approx(per_tile.max(), rel=1e-6)
    assert per_tile.max() > 3 * np.median(per_tile)  # one tile holds the defect: the max is not the typical


def test_the_stitched_maps_have_the_whole_image_size_at_working_resolution(tiled, large) -> None:  # noqa: ANN001
    half = BatchScorer(_with_tiling(tiled, scale=0.5), MAX_BATCH)
    odd = large[0][:201, :149]
    out = half.score([odd, large[1]])
    assert out.error_maps[0].shape == (100, 74) and out.error_maps[1].shape == (128, 128)
    assert out.inputs[0].shape == out.reconstructions[0].shape == (100, 74, 1)
    assert out.tiles.tolist() == [len(tile_grid(100, 74, (32, 32), (16, 16))), 49]


def test_the_error_map_shows_the_defect_where_it_is(scorer, large) -> None:  # noqa: ANN001
    error_map = scorer.score([large[3]]).error_maps[0]
    y, x = np.unravel_index(np.argmax(error_map), error_map.shape)
    assert 95 <= y <= 110 and 144 <= x <= 159


def test_tiles_of_several_images_share_batches(tiled, large) -> None:  # noqa: ANN001
    scorer = BatchScorer(tiled, max_batch=MAX_BATCH)
    small = [im[:48, :48] for im in large[:3]]  # 4 tiles each at 32x32 stride 16: 12 tiles, 2 batches of 8
    calls = []
    score_inputs = scorer.score_inputs
    scorer.score_inputs = lambda x: calls.append(len(x)) or score_inputs(x)
    out = scorer.score(small)
    assert out.tiles.tolist() == [4, 4, 4]
    assert calls == [8, 4]  # one image per batch would take 3 calls of 4


def test_a_score_does_not_depend_on_the_images_batched_with_it(scorer, large) -> None:  # noqa: ANN001
    alone = [scorer.score([im]).scores[0] for im in large]
    together = scorer.score(large).scores
    np.testing.assert_allclose(together, alone, rtol=1e-6)


def test_an_image_smaller_than_a_tile_is_scored_at_its_own_size(scorer, large) -> None:  # noqa: ANN001
    out = scorer.score([large[0][:20, :25]])
    assert out.tiles.tolist() == [1]
    assert out.error_maps[0].shape == (20, 25) and np.isfinite(out.scores[0])


def test_colour_images_are_converted_to_the_model_channels_before_tiling(scorer, large) -> None:  # noqa: ANN001
    import cv2

    gray, bgr = large[0], cv2.cvtColor(large[0], cv2.COLOR_GRAY2BGR)
    np.testing.assert_allclose(scorer.score([bgr]).scores, scorer.score([gray]).scores, rtol=1e-6)


def test_the_tiled_forward_pass_is_traced_once(tiled, large) -> None:  # noqa: ANN001
    scorer = BatchScorer(tiled, max_batch=MAX_BATCH)
    scorer.score(large[:1])
    scorer.score([large[1][:100, :60], *large[2:]])
    assert all(f.experimental_get_tracing_count() == 1 for f in scorer._forwards.values())


def test_a_bundle_without_tiling_scores_one_model_input_per_image(tiny_bundle) -> None:  # noqa: ANN001
    scorer = BatchScorer(load_bundle(tiny_bundle), max_batch=4)
    out = scorer.score([normal_image(np.random.default_rng(0), LARGE_SIZE)])
    assert isinstance(out.error_maps, np.ndarray) and out.error_maps.shape == (1, 32, 32)
    assert out.tiles.tolist() == [1]


def test_large_images_are_scored_a_few_per_call_small_ones_many(scorer) -> None:  # noqa: ANN001
    huge = [np.broadcast_to(np.uint8(0), (3000, 4000))] * 3  # 12 M working pixels each: one per call
    small = [np.broadcast_to(np.uint8(0), (256, 256))] * 20  # up to max_batch (8) per call
    assert scorer.call_groups(huge) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert scorer.call_groups(small) == [slice(0, 8), slice(8, 16), slice(16, 20)]


def test_an_untiled_bundle_is_called_in_runs_of_max_batch(tiny_bundle) -> None:  # noqa: ANN001
    scorer = BatchScorer(load_bundle(tiny_bundle), max_batch=4)
    images = [np.broadcast_to(np.uint8(0), (3000, 4000))] * 6
    assert scorer.call_groups(images) == [slice(0, 4), slice(4, 8)]
