"""Preprocessing: any decoded image becomes float32 HxWxC in [0, 1], converted the same way everywhere."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from monitor.model.preprocess import to_full_range, to_model_batch, to_model_input, to_working_image, uint16_white


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


@pytest.mark.parametrize(("peak", "white"), [(200, 255), (1000, 1023), (4095, 4095), (4096, 16383),
                                             (16383, 16383), (16384, None), (65535, None)])
def test_the_white_level_of_16_bit_images_is_the_smallest_camera_depth_that_holds_them(peak: int,
                                                                                        white: int | None) -> None:
    images = [np.full((4, 4), 7, np.uint16), np.full((4, 4), peak, np.uint16), np.full((4, 4), 250, np.uint8)]
    assert uint16_white(images) == white


def test_8_bit_images_have_no_16_bit_white_level() -> None:
    assert uint16_white([np.full((4, 4), 255, np.uint8)]) is None


def test_a_12_bit_image_read_against_its_white_level_looks_as_its_8_bit_version() -> None:
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    # The same scene from a 12-bit camera (rounded to its levels: at most half of one, 1/8190, apart)
    twelve = np.rint(eight.astype(np.float64) * 4095 / 255).astype(np.uint16)
    for channels in (1, 3):
        np.testing.assert_allclose(to_model_input(twelve, 16, 16, channels, white=4095),
                                   to_model_input(eight, 16, 16, channels), atol=0.5 / 4095)
    np.testing.assert_allclose(to_model_batch([twelve], 20, 30, 3, white=4095),
                               to_model_batch([eight], 20, 30, 3), atol=0.5 / 4095)
    np.testing.assert_allclose(to_working_image(twelve, 0.5, 1, white=4095), to_working_image(eight, 0.5, 1),
                               atol=0.5 / 4095)


def test_a_pixel_above_the_white_level_reads_as_white_and_a_stretched_copy_reads_the_same() -> None:
    raw = np.array([[0, 1000, 4095, 5000]], np.uint16)
    x = to_model_input(raw, 1, 4, 1, white=4095)[0, :, 0]
    np.testing.assert_allclose(x, [0.0, 1000 / 4095, 1.0, 1.0], rtol=1e-6)
    stretched = to_model_input(to_full_range(raw, 4095), 1, 4, 1)[0, :, 0]  # what training sees
    np.testing.assert_allclose(stretched, x, atol=1 / 65535)
