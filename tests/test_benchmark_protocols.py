"""The quality benchmark's protocol builders (benchmarks/protocols.py), without any training: fast, small counts."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import protocols as P  # noqa: E402

SMALL = P.Counts(train=6, test_normal=4, test_per_kind=2, val_normal=3, val_per_kind=1)
SHAPES = {"digits": (28, 28), "gravel": (64, 64), "tissue": (64, 64, 3), "part256": (256, 256),
          "brick": (64, 64), "brick256": (256, 256)}


@pytest.fixture(scope="module")
def built() -> dict[str, P.Protocol]:
    return {name: P.build(name, counts=SMALL) for name in P.PROTOCOLS}


def _same(a: P.Split, b: P.Split) -> bool:
    return (np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels) and a.kinds == b.kinds
            and all((m is None and n is None) or np.array_equal(m, n) for m, n in zip(a.masks, b.masks, strict=True)))


def _digests(images: np.ndarray) -> set[bytes]:
    return {im.tobytes() for im in images}


@pytest.mark.parametrize("name", list(P.PROTOCOLS))
def test_deterministic_for_its_seed(name: str, built: dict[str, P.Protocol]) -> None:
    again = P.build(name, counts=SMALL)
    first = built[name]
    assert np.array_equal(first.train, again.train)
    assert _same(first.test, again.test)
    assert _same(first.validation, again.validation)


@pytest.mark.parametrize("name", ["gravel", "part256", "brick", "brick256"])
def test_other_seeds_give_other_images(name: str, built: dict[str, P.Protocol]) -> None:
    other = P.build(name, counts=SMALL, seed=P.SEED + 1, validation_seed=P.VALIDATION_SEED + 1)
    assert not np.array_equal(built[name].train, other.train)
    assert not np.array_equal(built[name].test.images, other.test.images)
    assert not np.array_equal(built[name].validation.images, other.validation.images)


@pytest.mark.parametrize("name", list(P.PROTOCOLS))
def test_validation_split_differs_from_test_split(name: str, built: dict[str, P.Protocol]) -> None:
    p = built[name]
    test, val = _digests(p.test.images), _digests(p.validation.images)
    assert not test & val, "an image is in both the test and the validation split"
    assert not test & _digests(p.train), "a test image is in the training set"


def test_photo_blocks_of_the_splits_are_disjoint_and_cover_the_photo() -> None:
    blocks = {s: set(P._blocks(s)) for s in ("train", "validation", "test")}
    assert not blocks["train"] & blocks["test"] and not blocks["train"] & blocks["validation"]
    assert not blocks["validation"] & blocks["test"]
    assert sum(len(b) for b in blocks.values()) == 16
    for split in ("validation", "test"):  # each split has blocks in the top and in the bottom half of the photo
        assert {r < 2 for r, _ in blocks[split]} == {True, False}


@pytest.mark.parametrize("name", list(P.PROTOCOLS))
def test_shapes_and_label_counts(name: str, built: dict[str, P.Protocol]) -> None:
    p = built[name]
    assert p.train.dtype == np.uint8 and p.train.shape[1:] == SHAPES[name]
    assert p.channels == (3 if name == "tissue" else 1)
    contamination = 0 if name != "digits" else int(round(0.01 * SMALL.train))
    assert len(p.train) == SMALL.train + contamination
    for split, normal, per_kind in ((p.test, SMALL.test_normal, SMALL.test_per_kind),
                                    (p.validation, SMALL.val_normal, SMALL.val_per_kind)):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == SHAPES[name]
        assert len(split) == len(split.images) == len(split.kinds) == len(split.masks)
        assert int((split.labels == 0).sum()) == normal
        assert int(split.labels.sum()) == per_kind * len(p.defect_kinds)
        kinds = np.array(split.kinds)
        assert np.array_equal(kinds == "normal", split.labels == 0)
        for kind in p.defect_kinds:
            assert int((kinds == kind).sum()) == per_kind
        for image, mask, label in zip(split.images, split.masks, split.labels, strict=True):
            if label == 0 or name == "digits":
                assert mask is None
            else:
                assert mask.shape == image.shape[:2] and mask.dtype == bool and mask.sum() > 0


def test_full_counts_are_as_documented() -> None:
    assert P.FULL["digits"] == P.Counts(300, 100, 50, 100, 50)
    for name in ("gravel", "tissue", "brick"):
        assert P.FULL[name] == P.Counts(300, 100, 20, 50, 10)
    assert P.FULL["part256"] == P.Counts(200, 100, 20, 50, 10)
    assert P.FULL["brick256"] == P.Counts(200, 100, 25, 50, 12)


def test_digits_training_holds_one_percent_unlabelled_threes() -> None:
    p = P.build("digits", counts=P.Counts(200, 4, 2, 4, 2))
    assert p.train_kinds.count("digit 3 (unlabelled)") == 2
    assert set(p.test.kinds) == {"normal", "digit 3", "digit 7"}


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ P.LUMA_BGR


@pytest.mark.parametrize("kind", P.COLOUR_ONLY)
def test_colour_only_defects_keep_the_luma_and_change_the_chroma(kind: str) -> None:
    rng = np.random.default_rng(7)
    crops = P.block_crops(P._photo("immunohistochemistry"), "test", 12, rng)
    dy, dc = [], []
    for crop in crops:
        out, mask = P.draw(kind, crop, rng)
        if not P.visible(crop, out, mask):
            continue  # the protocol draws again on another crop (a colour change on a colourless spot)
        dy.append(np.abs(_luma(out) - _luma(crop))[mask].mean())
        gray_in, gray_out = (cv2.cvtColor(x, cv2.COLOR_BGR2GRAY).astype(int) for x in (crop, out))
        assert np.abs(gray_out - gray_in).max() <= 2, "a gray model would see this change"
        chroma = np.abs((out.astype(np.float64) - _luma(out)[..., None]) - (crop - _luma(crop)[..., None]))
        dc.append(chroma.max(axis=2)[mask].mean())
    assert len(dy) >= 6
    assert max(dy) < 1.0, f"mean |dY| per defect up to {max(dy):.2f} levels"
    assert min(dc) > 8.0, f"mean chroma change per defect down to {min(dc):.1f} levels"


def test_tissue_protocol_uses_the_colour_only_kinds(built: dict[str, P.Protocol]) -> None:
    p = built["tissue"]
    assert set(P.COLOUR_ONLY) <= set(p.defect_kinds) and p.colour_only == P.COLOUR_ONLY
    for image, mask in zip(p.test.images, p.test.masks, strict=True):  # images keep colour where the defect is
        if mask is not None:
            assert image.ndim == 3


def _thickness(mask: np.ndarray) -> float:
    """Diameter of the largest disc inside the mask: how wide the defect is across its narrow direction."""
    return 2.0 * float(cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5).max())


@pytest.mark.parametrize(("name", "kinds"), [("part256", P.PART_DEFECTS), ("brick256", P.WALL_DEFECTS)])
def test_high_resolution_defects_are_a_few_pixels_wide(name: str, kinds: tuple[str, ...]) -> None:
    p = P.build(name, counts=P.Counts(train=1, test_normal=1, test_per_kind=6, val_normal=1, val_per_kind=1))
    kinds_of = np.array(p.test.kinds)
    for kind in kinds:
        for i in np.flatnonzero(kinds_of == kind):
            mask = p.test.masks[i]
            assert _thickness(mask) <= 8.0, f"{kind}: {_thickness(mask):.1f} px wide"
            ys, xs = np.nonzero(mask)
            extent = (int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1)
            if kind in ("pit", "particle", "chip"):
                assert max(extent) <= 10, f"{kind}: {extent}"
            else:  # lines: long one way, thin the other
                assert max(extent) >= 8 and _thickness(mask) <= 6.0, f"{kind}: {extent}"


def test_brick_wall_views_are_views_of_the_brick_photo_with_their_own_gain_and_noise() -> None:
    photo = P._photo("brick").astype(np.float32)
    rng = np.random.default_rng(3)
    views = [P.render_wall(rng).image.astype(np.float32) for _ in range(4)]
    for view in views:
        best = None
        for src in (photo, np.ascontiguousarray(photo[:, ::-1])):  # the photo, maybe mirrored
            match = cv2.matchTemplate(src, view, cv2.TM_CCOEFF_NORMED)
            _, score, _, (x, y) = cv2.minMaxLoc(match)
            if best is None or score > best[0]:
                best = (score, src[y:y + view.shape[0], x:x + view.shape[1]])
        score, crop = best
        assert score > 0.95
        gain = float((view * crop).sum() / (crop * crop).sum())  # least squares: view = gain * crop + noise
        noise = float((view - gain * crop).std())
        assert 0.94 <= gain <= 1.06 and 1.0 <= noise <= 3.5, (gain, noise)  # gain 0.95-1.05, noise sigma 2


def test_texture_defects_show() -> None:
    p = P.build("gravel", counts=P.Counts(train=1, test_normal=1, test_per_kind=3, val_normal=1, val_per_kind=1))
    for mask, kind in zip(p.test.masks, p.test.kinds, strict=True):
        if kind != "normal":
            assert 20 <= mask.sum() < 0.3 * mask.size, kind


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        P.build("nope")
    with pytest.raises(ValueError, match="unknown defect"):
        P.draw("nope", np.zeros((64, 64), np.uint8), np.random.default_rng(0))
