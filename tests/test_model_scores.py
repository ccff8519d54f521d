"""Scores: the localized score finds a small defect that the image mean (mse) barely notices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagegen import normal_image

from monitor.model.bundle import Bundle, load_bundle
from monitor.model.scorer import BatchScorer
from monitor.model.scores import SCORE_NAMES, get_score


def _small_defect(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A 2x2 speck 60 grey levels off (0.4% of the pixels): a model that reconstructs well makes a full-contrast
    # 4x4 speck plain to the image mean too, so the speck is as small and faint as a real one can be.
    out = img.astype(np.int16)
    y, x = (int(v) for v in rng.integers(8, 24, 2))
    out[y:y + 2, x:x + 2] += -60 if img[y, x] > 128 else 60
    return np.clip(out, 0, 255).astype(np.uint8)


def _with_score(bundle: Bundle, name: str) -> Bundle:
    return Bundle(bundle.path, bundle.model, {**bundle.meta, "score": {"name": name, "params": {}}})


@pytest.fixture(scope="module")
def images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(77)
    normals = [normal_image(rng, 32) for _ in range(60)]
    defects = [_small_defect(normal_image(rng, 32), rng) for _ in range(20)]
    return normals, defects


def _separation(bundle: Bundle, name: str, images) -> float:  # noqa: ANN001
    """Share of defective images scoring above every normal image."""
    scorer = BatchScorer(_with_score(bundle, name), 32)
    normal = scorer.score(images[0]).scores
    defect = scorer.score(images[1]).scores
    return float(np.mean(defect > normal.max()))


def test_localized_score_catches_a_small_defect_that_mse_misses(tiny_bundle: Path, images) -> None:  # noqa: ANN001
    bundle = load_bundle(tiny_bundle)
    assert _separation(bundle, "mse", images) < 0.5
    assert _separation(bundle, "smooth_max", images) >= 0.9


@pytest.mark.parametrize("name", SCORE_NAMES)
def test_every_score_reduces_its_own_error_map(tiny_bundle: Path, images, name: str) -> None:  # noqa: ANN001
    out = BatchScorer(_with_score(load_bundle(tiny_bundle), name), 8).score(images[1][:4])
    assert out.error_maps.shape == (4, 32, 32)
    if name in ("smooth_max", "residual_max", "ssim_max"):
        np.testing.assert_allclose(out.scores, out.error_maps.max(axis=(1, 2)), rtol=1e-5)
    elif name in ("mse", "mae"):
        np.testing.assert_allclose(out.scores, out.error_maps.mean(axis=(1, 2)), rtol=1e-4)
    elif name == "smooth_quantile":
        k = max(1, round((1 - 0.99) * 32 * 32))  # nearest rank: the k-th largest pixel of the map
        expected = np.sort(out.error_maps.reshape(4, -1), axis=1)[:, -k]
        np.testing.assert_allclose(out.scores, expected, rtol=1e-6)
    else:
        pytest.fail(f"no reduction check for score {name}")


def test_unknown_score_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: mse"):
        get_score("nope")


def test_maps_shorter_than_the_blur_radius_are_blurred_not_refused() -> None:
    """An encoder's map of an 8-px-high tile (a line camera's strip) is 2 px high; sigma 2 reaches 6 px."""
    import tensorflow as tf

    from monitor.model.scores import blur_maps

    flat = blur_maps(tf.ones((1, 2, 16)), 2.0).numpy()
    np.testing.assert_allclose(flat, 1.0, rtol=1e-6)  # the cut kernel still sums to one
    spike = np.zeros((1, 2, 16), np.float32)
    spike[0, :, 8] = 1.0
    spread = blur_maps(tf.constant(spike), 2.0).numpy()[0, 0]
    assert spread[8] == spread.max() < 1.0 and spread[6] > 0 and spread[0] < 1e-3  # along the long side as before


def test_maps_longer_than_the_blur_radius_blur_as_before() -> None:
    import cv2
    import tensorflow as tf

    from monitor.model.scores import blur_maps

    x = np.random.default_rng(0).random((1, 24, 24)).astype(np.float32)
    expected = cv2.GaussianBlur(x[0], (13, 13), 2.0, borderType=cv2.BORDER_REFLECT)  # radius 6, edge repeated
    np.testing.assert_allclose(blur_maps(tf.constant(x), 2.0).numpy()[0], expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 2, 16), (1, 1, 1), (2, 24, 40), (1, 300, 200), (1, 64, 600)])
def test_small_and_large_maps_are_blurred_alike(shape: tuple[int, int, int]) -> None:
    """Maps up to h + w = 512 are blurred by matrix products, larger ones by convolutions: one blur either way."""
    import cv2
    import tensorflow as tf

    from monitor.model.scores import blur_maps

    x = np.random.default_rng(1).random(shape).astype(np.float32)
    got = blur_maps(tf.constant(x), 2.0).numpy()
    n, h, w = shape
    radius = 6  # 3 sigma
    for i in range(n):
        ky = cv2.getGaussianKernel(2 * radius + 1, 2.0)[6 - min(radius, h):6 + min(radius, h) + 1]
        kx = cv2.getGaussianKernel(2 * radius + 1, 2.0)[6 - min(radius, w):6 + min(radius, w) + 1]
        expected = cv2.sepFilter2D(x[i], -1, kx / kx.sum(), ky / ky.sum(), borderType=cv2.BORDER_REFLECT)
        np.testing.assert_allclose(got[i], expected, atol=2e-6)
