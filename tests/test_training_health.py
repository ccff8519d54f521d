"""Degenerate models are detected (BatchNorm gap, input ignored, validation far above training) and can be fixed."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from imagegen import normal_image

from monitor.images import list_images, read_image
from monitor.model.bundle import load_bundle
from monitor.model.preprocess import to_model_input
from monitor.training.architecture import build_model
from monitor.training.health import (
    BN_GAP_MAX,
    NOISE_RMS,
    batchnorm_recalibration,
    check_model,
    recalibrate_batchnorm,
)
from monitor.training.train import split_validation


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """128 training and 32 validation images of the tests' smooth 32x32 parts, as the model is fed."""
    rng = np.random.default_rng(1234)
    x = np.stack([normal_image(rng, 32) for _ in range(160)]).astype(np.float32)[..., None] / 255
    return x[32:], x[:32]


@pytest.fixture(scope="module")
def stale_weights(arrays) -> list[np.ndarray]:
    """Issue 10's broken case in small: the seeds' ConvAE, batch 32, 4 steps per epoch, 6 epochs."""
    train_x, _ = arrays
    keras.utils.set_random_seed(0)
    model = build_model("seed", 32, 32, 1, (16, 32), 8)
    model.compile(optimizer="adam", loss="mse")
    model.fit(train_x, train_x, batch_size=32, epochs=6, verbose=0)
    return model.get_weights()


@pytest.fixture()
def stale(stale_weights) -> keras.Model:
    """A fresh copy of the stale model (tests change its statistics)."""
    model = build_model("seed", 32, 32, 1, (16, 32), 8)
    model.set_weights(stale_weights)
    return model


@pytest.fixture()
def healthy(stale: keras.Model, arrays) -> keras.Model:
    recalibrate_batchnorm(stale, arrays[0])
    return stale


def _variables(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.variables]


def _bn_problems(problems: list[str]) -> list[str]:
    return [p for p in problems if "BatchNorm" in p]


def _mean_image_model(train_x: np.ndarray) -> keras.Model:
    """Mean image plus a faint copy of the input: it depends on the input, yet is no better than the mean."""
    mean = train_x.mean(axis=0)
    inputs = keras.Input(shape=train_x.shape[1:])
    outputs = keras.layers.Lambda(lambda x: 0.8 * keras.ops.convert_to_tensor(mean) + 0.2 * (1.0 - x))(inputs)
    return keras.Model(inputs, outputs)


def _fixed_image_model(image: np.ndarray) -> keras.Model:
    """`image` whatever comes in: the mean image of parts that look alike is the right reconstruction of each."""
    inputs = keras.Input(shape=image.shape)
    outputs = keras.layers.Lambda(lambda x: 0.0 * x + keras.ops.convert_to_tensor(image))(inputs)
    return keras.Model(inputs, outputs)


def _input_ignoring_model(train_x: np.ndarray) -> keras.Model:
    """A mid-gray image whatever comes in."""
    return _fixed_image_model(np.full(train_x.shape[1:], 0.5, np.float32))


def _one_part_with_noise(arrays, sigma_levels: float, n: int = 96) -> np.ndarray:
    """`n` shots of the first validation part, each with its own sensor noise of `sigma_levels` grey levels."""
    part = arrays[1][0]
    noise = np.random.default_rng(7).normal(0.0, sigma_levels / 255, (n, *part.shape))
    return np.clip(part + noise, 0.0, 1.0).astype(np.float32)


def test_stale_batchnorm_statistics_are_flagged_and_recalibration_fixes_them(stale: keras.Model, arrays) -> None:
    train_x, val_x = arrays
    before = check_model(stale, train_x, val_x)
    assert before.figures["bn_gap"] > BN_GAP_MAX and _bn_problems(before.problems)
    assert "--batch-size" in _bn_problems(before.problems)[0]
    assert "model_health ok=false" in before.describe()

    assert recalibrate_batchnorm(stale, train_x) == 4  # enc_bn0, enc_bn1, dec_bn0, dec_bn1
    after = check_model(stale, train_x, val_x)
    assert after.ok, after.problems
    assert after.figures["bn_gap"] < 1.5
    assert after.figures["val_error"] < 0.5 * before.figures["val_error"]
    assert after.figures["spread_ratio"] > 0.5 and after.figures["mean_image_ratio"] < 0.5


def test_the_shared_tiny_bundle_passes_once_recalibrated(tiny_bundle: Path, normal_dir: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    x = np.stack([to_model_input(read_image(p), 32, 32, 1) for p in list_images(normal_dir)])
    opts = bundle.meta["training"]["options"]
    train_idx, val_idx = split_validation(len(x), opts["validation_split"], np.random.default_rng(opts["seed"]))
    recalibrate_batchnorm(bundle.model, x[train_idx])  # a no-op in effect where training already did it
    health = check_model(bundle.model, x[train_idx], x[val_idx])
    assert health.ok, health.problems


def test_the_check_leaves_the_model_untouched(stale: keras.Model, arrays) -> None:
    before = _variables(stale)
    check_model(stale, *arrays, {"loss": [0.1], "val_loss": [0.1]}, batch_size=8)
    for a, b in zip(before, _variables(stale), strict=True):
        np.testing.assert_array_equal(a, b)  # training-mode passes must not move BatchNorm statistics


def test_wrong_moving_statistics_are_flagged_by_the_inference_vs_training_check(healthy: keras.Model,
                                                                                arrays) -> None:
    assert check_model(healthy, *arrays).ok
    for layer in healthy.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(layer.moving_mean.numpy() + 3.0)
            layer.moving_variance.assign(layer.moving_variance.numpy() * 50.0)
    health = check_model(healthy, *arrays)
    assert not health.ok and _bn_problems(health.problems)
    assert health.figures["bn_gap"] > 5


def test_a_model_that_ignores_its_input_is_flagged(arrays) -> None:
    train_x, val_x = arrays
    health = check_model(_input_ignoring_model(train_x), train_x, val_x)
    assert not health.ok
    assert health.figures["spread_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert any("ignore the input" in p for p in health.problems)
    assert not _bn_problems(health.problems)  # no BatchNorm, no gap: each problem has its own check


def test_a_mean_image_model_is_flagged_as_learning_nothing(arrays) -> None:
    train_x, val_x = arrays
    health = check_model(_mean_image_model(train_x), train_x, val_x)
    assert health.figures["mean_image_ratio"] >= 0.9
    assert any("no better than the mean training image" in p for p in health.problems)


@pytest.mark.parametrize(("architecture", "advised"), [("seed", True), (None, True), ("conv", False)])
def test_the_advice_names_the_conv_architecture_only_to_a_model_that_is_not_one(arrays, architecture: str | None,
                                                                                  advised: bool) -> None:
    train_x, val_x = arrays
    health = check_model(_input_ignoring_model(train_x), train_x, val_x, architecture=architecture)
    assert health.problems
    assert any("--architecture conv" in p for p in health.problems) == advised, health.problems


@pytest.mark.parametrize(("architecture", "advised"), [("seed", True), ("conv", False)])
def test_a_model_that_learnt_nothing_is_advised_by_its_architecture(arrays, architecture: str,
                                                                     advised: bool) -> None:
    train_x, val_x = arrays
    health = check_model(_mean_image_model(train_x), train_x, val_x, architecture=architecture)
    (problem,) = [p for p in health.problems if "no better than the mean training image" in p]
    assert ("--architecture conv" in problem) == advised
    assert problem.endswith("--architecture conv" if advised else "--batch-size, or both")


@pytest.mark.parametrize(("val_factor", "flagged"), [(10.0, True), (1.1, False), (0.9, False)])
def test_validation_loss_far_above_training_loss_is_flagged(healthy: keras.Model, arrays, val_factor: float,
                                                            flagged: bool) -> None:
    loss = [0.05, 0.01, 0.004, 0.003]
    history = {"loss": loss, "val_loss": [v * val_factor for v in loss[:-1]] + [0.01 * val_factor]}
    health = check_model(healthy, *arrays, history)
    assert health.figures["best_epoch"] == 3
    assert health.figures["val_train_ratio"] == pytest.approx(val_factor)
    assert any("validation loss is" in p for p in health.problems) is flagged
    assert health.ok is not flagged


def test_nan_losses_and_outputs_are_flagged(arrays) -> None:
    train_x, val_x = arrays
    inputs = keras.Input(shape=train_x.shape[1:])
    outputs = keras.layers.Lambda(lambda x: x * float("nan"))(inputs)
    health = check_model(keras.Model(inputs, outputs), train_x, val_x)
    assert not health.ok and "NaN" in health.problems[0]
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    health = check_model(identity, train_x, val_x, {"loss": [0.1, float("nan")], "val_loss": [float("nan")] * 2})
    assert not health.ok and any("NaN" in p for p in health.problems)
    assert health.to_json()["figures"]["val_train_ratio"] is None  # JSON has no NaN


def test_the_callback_recalibrates_before_every_validation() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((48, 16, 16, 1)).astype(np.float32)
    inputs = keras.Input(shape=(16, 16, 1))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(h))
    model.compile(optimizer="adam", loss="mse")
    model.fit(x[:40], x[:40], validation_data=(x[40:], x[40:]), epochs=2, batch_size=8, verbose=0,
              callbacks=[batchnorm_recalibration(x[:40])])
    # The last validation came after the last training step: the statistics are exactly the recalibrated ones.
    after_fit = _variables(model)
    recalibrate_batchnorm(model, x[:40])
    for a, b in zip(after_fit, _variables(model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_parts_alike_but_for_sensor_noise_pass_with_their_mean_image_as_the_reconstruction(arrays) -> None:
    x = _one_part_with_noise(arrays, sigma_levels=2.0)
    health = check_model(_fixed_image_model(x.mean(axis=0)), x[:64], x[64:])
    assert health.ok, health.problems
    assert health.figures["spread_ratio"] < 0.15 and health.figures["mean_image_ratio"] > 0.9  # the ratios alone
    assert health.figures["reconstruction_rms"] < NOISE_RMS  # would refuse it: the error says why not


def test_a_blurred_part_as_the_reconstruction_of_parts_alike_but_for_noise_passes(arrays) -> None:
    """The seed model on such a line: a blur of the part, 6 levels off, yet every normal image's residual alike."""
    x = _one_part_with_noise(arrays, sigma_levels=2.0)
    blurred = keras.ops.convert_to_numpy(keras.ops.average_pool(x.mean(axis=0)[None], 7, 1, "same"))[0]
    health = check_model(_fixed_image_model(blurred), x[:64], x[64:])
    assert health.ok, health.problems
    assert health.figures["reconstruction_rms"] > NOISE_RMS > health.figures["mean_image_rms"]


def test_identical_images_reconstructed_within_a_grey_level_pass(arrays) -> None:
    x = np.repeat(arrays[1][:1], 48, axis=0)
    health = check_model(_fixed_image_model(x[0] + 1 / 255), x[:32], x[32:])
    assert health.ok, health.problems
    assert health.figures["mean_image_ratio"] > 1e6  # error over an error of zero: meaningless, not a refusal


def test_a_fixed_image_model_of_parts_that_vary_is_still_flagged(arrays) -> None:
    train_x, val_x = arrays
    health = check_model(_fixed_image_model(train_x.mean(axis=0)), train_x, val_x)
    assert not health.ok and any("ignore the input" in p for p in health.problems)
    assert health.figures["reconstruction_rms"] > 4 * NOISE_RMS
