"""Synthetic defects: shape, dtype and mask guarantees on any image, and each family behaving like itself."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.training.defects import FAMILIES, Defect, defect_set, make_defect

PROPERTY = settings(max_examples=30, deadline=None)
RANGE = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}


def _image(seed: int, h: int, w: int, channels: int = 3, dtype: type = np.uint8, flat: float | None = None,
           squeeze: bool = False) -> np.ndarray:
    """A mid-tone texture (smoothed noise), or a constant image when `flat` is a level in [0, 1]."""
    if flat is None:
        x = cv2.GaussianBlur(np.random.default_rng(seed).random((h, w, channels)).astype(np.float32), (0, 0), 1.0)
        x = (0.2 + 0.6 * (x - x.min()) / (np.ptp(x) + 1e-6)).reshape(h, w, channels)
    else:
        x = np.full((h, w, channels), flat, np.float32)
    x = x * RANGE[dtype]
    x = (np.rint(x) if dtype is not np.float32 else x).astype(dtype)
    return x[..., 0] if squeeze else x


def _float(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float64) / RANGE[image.dtype.type]).reshape(*image.shape[:2], -1)


def _change(defect: Defect, image: np.ndarray) -> np.ndarray:
    """Per-pixel largest channel change, as a fraction of the range."""
    return np.abs(_float(defect.image) - _float(image)).max(axis=2)


def _extent(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1


@dataclass
class Case:
    image: np.ndarray
    family: str
    seed: int
    min_px: int

    def defect(self) -> Defect:
        return make_defect(self.image, np.random.default_rng(self.seed), self.family, min_size_px=self.min_px)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    h, w = draw(st.integers(16, 64)), draw(st.integers(16, 64))
    layout = draw(st.sampled_from(["HxW", "HxWx1", "HxWx3"]))
    flat = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    image = _image(draw(st.integers(0, 1000)), h, w, 3 if layout == "HxWx3" else 1,
                   draw(st.sampled_from([np.uint8, np.uint16, np.float32])), flat, squeeze=layout == "HxW")
    return Case(image, draw(st.sampled_from(FAMILIES)), draw(st.integers(0, 2**32 - 1)),
                draw(st.integers(1, min(h, w) // 4)))


@PROPERTY
@given(cases())
def test_the_defect_has_the_input_shape_and_dtype(case: Case) -> None:
    out = case.defect()
    assert out.image.shape == case.image.shape and out.image.dtype == case.image.dtype
    assert out.mask.shape == case.image.shape[:2] and out.mask.dtype == bool


@PROPERTY
@given(cases())
def test_the_input_array_is_never_modified(case: Case) -> None:
    before = case.image.copy()
    case.defect()
    assert np.array_equal(case.image, before)


@PROPERTY
@given(cases())
def test_pixels_outside_the_mask_are_exactly_unchanged(case: Case) -> None:
    out = case.defect()
    assert np.array_equal(out.image[~out.mask], case.image[~out.mask])


@PROPERTY
@given(cases())
def test_the_image_changes_visibly_inside_a_non_empty_mask(case: Case) -> None:
    out = case.defect()
    assert out.mask.any()
    assert _change(out, case.image)[out.mask].mean() >= 0.02


@PROPERTY
@given(cases())
def test_the_mask_spans_min_size_px_across_or_along_a_line(case: Case) -> None:
    out = case.defect()
    extent = _extent(out.mask)
    # a scratch is thin by nature: the minimum size bounds its length, not its width
    assert (max(extent) if out.family == "line" else min(extent)) >= case.min_px


@PROPERTY
@given(cases())
def test_the_mask_stays_under_half_the_image(case: Case) -> None:
    assert case.defect().mask.mean() < 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_the_mask_is_at_least_min_size_and_under_half_the_image_on_512_px(family: str) -> None:
    image = _image(0, 512, 512)
    for seed in range(3):
        out = make_defect(image, np.random.default_rng(seed), family)
        assert max(_extent(out.mask)) >= 4 and out.mask.mean() < 0.5


@PROPERTY
@given(cases())
def test_the_same_seed_gives_the_same_defect(case: Case) -> None:
    a, b = case.defect(), case.defect()
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.family == b.family


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_a_flat_image_gets_a_visible_defect_of_every_family(family: str, level: float) -> None:
    for channels in (1, 3):
        image = _image(0, 48, 48, channels, flat=level)
        out = make_defect(image, np.random.default_rng(1), family)
        assert _change(out, image)[out.mask].mean() >= 0.02


def test_blob_colour_moves_chroma_more_than_luma() -> None:
    image = _image(3, 64, 64)
    for seed in range(10):
        out = make_defect(image, np.random.default_rng(seed), "blob_colour")
        before, after = (cv2.cvtColor(im, cv2.COLOR_BGR2YCrCb).astype(float) for im in (image, out.image))
        diff = (after - before)[out.mask]
        assert out.family == "blob_colour"
        assert np.hypot(diff[:, 1], diff[:, 2]).mean() > 2 * np.abs(diff[:, 0]).mean()


def test_blob_colour_on_a_gray_image_is_a_brightness_blob() -> None:
    out = make_defect(_image(3, 64, 64, 1), np.random.default_rng(0), "blob_colour")
    assert out.family == "blob_brightness"


def test_a_brightness_blob_darkens_or_lightens_its_whole_region() -> None:
    image = _image(3, 64, 64, dtype=np.float32)
    for seed in range(10):
        out = make_defect(image, np.random.default_rng(seed), "blob_brightness")
        diff = (out.image - image)[out.mask]
        assert (diff >= 0).all() or (diff <= 0).all()


def test_a_line_is_thin() -> None:
    image = _image(4, 128, 128)
    for seed in range(20):
        out = make_defect(image, np.random.default_rng(seed), "line")
        assert out.mask.sum() / np.hypot(*_extent(out.mask)) < 4.0


def test_a_speck_is_small() -> None:
    image = _image(5, 128, 128)
    for seed in range(20):
        out = make_defect(image, np.random.default_rng(seed), "speck")
        assert out.mask.sum() <= 3 * 7 * 7 and max(_extent(out.mask)) <= 40


def test_noise_adds_detail_and_blur_removes_it() -> None:
    image = _image(6, 96, 96, 1, squeeze=True)

    def detail(im: np.ndarray, mask: np.ndarray) -> float:
        return float(np.abs(cv2.Laplacian(im.astype(np.float32), cv2.CV_32F))[mask].mean())

    for seed in range(10):
        noisy = make_defect(image, np.random.default_rng(seed), "noise")
        blurred = make_defect(image, np.random.default_rng(seed), "blur")
        assert detail(noisy.image, noisy.mask) > detail(image, noisy.mask)
        assert detail(blurred.image, blurred.mask) < detail(image, blurred.mask)


def test_blur_on_a_flat_image_falls_back_to_a_brightness_blob() -> None:
    out = make_defect(_image(0, 48, 48, flat=0.5), np.random.default_rng(0), "blur")
    assert out.family == "blob_brightness"


def test_cutpaste_takes_its_patch_from_the_donor_some_of_the_time() -> None:
    black, white = _image(0, 48, 48, flat=0.0), _image(0, 48, 48, flat=1.0)
    bright = [make_defect(black, np.random.default_rng(s), "cutpaste", donor=white).image.max() > 200
              for s in range(20)]
    assert any(bright) and not all(bright)


def test_a_donor_of_another_size_dtype_and_channel_count_is_accepted() -> None:
    image, donor = _image(0, 40, 40, 3), _image(1, 90, 70, 1, np.uint16, squeeze=True)
    for seed in range(6):
        out = make_defect(image, np.random.default_rng(seed), "cutpaste", donor=donor)
        assert out.image.shape == image.shape and out.mask.any()


def test_a_family_is_drawn_when_none_is_given() -> None:
    image = _image(0, 32, 32)
    drawn = {make_defect(image, np.random.default_rng(s)).family for s in range(60)}
    assert drawn == set(FAMILIES)


def test_an_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown defect family 'rust'"):
        make_defect(_image(0, 32, 32), np.random.default_rng(0), "rust")


def test_an_image_smaller_than_twice_min_size_px_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        make_defect(_image(0, 16, 16), np.random.default_rng(0), "speck", min_size_px=9)


def test_defect_set_balances_the_families() -> None:
    images = [_image(s, 32, 32) for s in range(5)]
    counts = Counter(d.family for d in defect_set(images, 40, np.random.default_rng(0)))
    assert set(counts) == set(FAMILIES) and max(counts.values()) - min(counts.values()) <= 1


def test_defect_set_is_deterministic_for_a_seed() -> None:
    images = [_image(s, 32, 32) for s in range(4)]
    a, b = (defect_set(images, 15, np.random.default_rng(7)) for _ in range(2))
    assert [d.family for d in a] == [d.family for d in b]
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) for x, y in zip(a, b, strict=True))


def test_defect_set_leaves_out_blob_colour_when_no_image_has_colour() -> None:
    images = [_image(s, 32, 32, 1, squeeze=True) for s in range(4)]
    counts = Counter(d.family for d in defect_set(images, 30, np.random.default_rng(0)))
    assert set(counts) == set(FAMILIES) - {"blob_colour"} and max(counts.values()) - min(counts.values()) <= 1
