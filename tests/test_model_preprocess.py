"""Preprocessing: any decoded image becomes float32 HxWxC in [0, 1], converted the same way everywhere."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from monitor.model.preprocess import to_model_batch, to_model_input


def test_uint8_gray_is_scaled_to_unit_range() -> None:
    img = np.array([[0, 255], [51, 102]], np.uint8)
    x = to_model_input(img, 2, 2, 1)
    assert x.dtype == np.float32 and x.shape == (2, 2, 1)
    np.testing.assert_allclose(x[:, :, 0], [[0.0, 1.0], [0.2, 0.4]], atol=1e-6)


def test_uint16_is_scaled_by_its_full_range() -> None:
    img = np.full((4, 4), 65535, np.uint16)
    img[0, 0] = 0
    x = to_model_input(img, 4, 4, 1)
    assert x.max() == pytest.approx(1.0) and x.min() == 0.0


def test_gray_with_a_channel_axis_equals_plain_gray() -> None:
    img = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(to_model_input(img, 8, 8, 1), to_model_input(img[:, :, None], 8, 8, 1))


def test_bgr_becomes_gray_with_opencv_weights() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 2] = 255  # pure red in BGR order
    x = to_model_input(img, 4, 4, 1)
    expected = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[0, 0] / 255.0
    assert x[0, 0, 0] == pytest.approx(expected, abs=1e-3)
    assert 0.25 < expected < 0.35  # red, not blue (0.11): the channel order is BGR


def test_gray_becomes_three_equal_channels() -> None:
    img = np.full((4, 4), 128, np.uint8)
    x = to_model_input(img, 4, 4, 3)
    assert x.shape == (4, 4, 3)
    np.testing.assert_allclose(x[..., 0], x[..., 2])


def test_bgra_drops_alpha_and_keeps_bgr_order() -> None:
    img = np.zeros((4, 4, 4), np.uint8)
    img[..., 0] = 255  # blue
    img[..., 3] = 7
    x = to_model_input(img, 4, 4, 3)
    np.testing.assert_allclose(x[0, 0], [1.0, 0.0, 0.0])


def test_resize_uses_area_averaging() -> None:
    img = np.zeros((4, 4), np.uint8)
    img[:2, :2] = 255
    x = to_model_input(img, 2, 2, 1)
    np.testing.assert_allclose(x[:, :, 0], [[1.0, 0.0], [0.0, 0.0]], atol=1e-6)
    stripes = np.tile(np.array([0, 255], np.uint8), (4, 2))  # 4x4 alternating columns
    assert to_model_input(stripes, 2, 2, 1)[0, 0, 0] == pytest.approx(0.5, abs=1e-3)


def test_batch_stacks_images_of_different_sizes() -> None:
    batch = to_model_batch([np.zeros((10, 20), np.uint8), np.zeros((64, 64, 3), np.uint8)], 16, 16, 1)
    assert batch.shape == (2, 16, 16, 1)


@pytest.mark.parametrize("bad", [np.zeros((0, 0), np.uint8), np.zeros((4, 4, 2), np.uint8),
                                 np.zeros((4, 4), np.int32)])
def test_malformed_images_raise_value_error(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        to_model_input(bad, 4, 4, 1)


@pytest.mark.parametrize(("shape", "channels"), [((16, 20), 1), ((16, 20, 1), 1), ((16, 20, 3), 3),
                                                 ((16, 20, 3), 1), ((16, 20), 3), ((8, 10, 3), 3)])
def test_a_batch_equals_its_images_converted_one_by_one(shape: tuple, channels: int) -> None:
    # The vectorised path (images already at the model's size and layout) must give the very same values.
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(7)]
    one_by_one = np.stack([to_model_input(im, 16, 20, channels) for im in images])
    np.testing.assert_array_equal(to_model_batch(images, 16, 20, channels), one_by_one)


def test_a_batch_mixing_ready_and_other_images_equals_them_one_by_one() -> None:
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (16, 20), dtype=np.uint8), rng.integers(0, 65536, (16, 20), dtype=np.uint16)]
    one_by_one = np.stack([to_model_input(im, 16, 20, 1) for im in images])
    np.testing.assert_array_equal(to_model_batch(images, 16, 20, 1), one_by_one)
