"""The optional OpenVINO scoring backend gives TensorFlow's scores (within 1e-5) on real images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.model.backends import BackendUnavailable, compile_forward, openvino_available
from monitor.model.bundle import load_bundle
from monitor.model.preprocess import to_model_batch
from monitor.model.scorer import BatchScorer

REPO = Path(__file__).resolve().parent.parent
needs_openvino = pytest.mark.skipif(not openvino_available(),
                                    reason="openvino is not installed (optional: the bench extra); CI skips it")


def real_images(n: int, seed: int = 3) -> list[np.ndarray]:
    """Crops of scikit-image photos (brick, camera), at assorted sizes: the scorer resizes them."""
    from skimage import data

    photos = [data.brick(), data.camera()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        photo = photos[i % 2]
        side = int(rng.integers(48, 200))
        y, x = (int(rng.integers(0, s - side)) for s in photo.shape[:2])
        out.append(np.ascontiguousarray(photo[y:y + side, x:x + side]))
    return out


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(REPO / "models" / "default")


def test_unknown_backend_is_refused(bundle):
    with pytest.raises(ValueError, match="backend must be one of"):
        compile_forward(BatchScorer(bundle, 4)._forward, "tensorrt")


def test_tensorflow_backend_is_the_scorers_forward(bundle):
    scorer = BatchScorer(bundle, 4)
    images = real_images(4)
    r, maps, scores = compile_forward(scorer._forward, "tensorflow")(
        to_model_batch(images, bundle.height, bundle.width, bundle.channels))
    np.testing.assert_array_equal(scores.astype(np.float64), scorer.score(images).scores)


@needs_openvino
def test_openvino_scores_match_tensorflow(bundle):
    scorer = BatchScorer(bundle, 8)
    images = real_images(8)
    cv2.line(images[0], (5, 5), (images[0].shape[1] - 5, images[0].shape[0] // 2), 255, 3)  # a scratch
    ref = scorer.score(images)
    try:
        forward = compile_forward(scorer._forward, "openvino", threads=2)
    except BackendUnavailable as exc:
        pytest.fail(str(exc))
    r, maps, scores = forward(to_model_batch(images, bundle.height, bundle.width, bundle.channels))
    assert np.max(np.abs(scores.astype(np.float64) - ref.scores)) < 1e-5
    assert np.max(np.abs(r - ref.reconstructions)) < 1e-5
    assert np.max(np.abs(maps - ref.error_maps)) < 1e-5
    with pytest.raises(ValueError, match="batches of shape"):
        forward(np.zeros((3, bundle.height, bundle.width, bundle.channels), np.float32))
