"""Training: bundle contents, the report, repeatability with a seed, and clear errors for bad data."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from imagegen import normal_image, write_images

from monitor.cli import main
from monitor.files import check_writable_folder
from monitor.model.bundle import META_FILE, load_bundle
from monitor.training.train import TrainingDataError, TrainOptions, describe_shapes, train_bundle

# The fixed defaults (auto off) and two epochs: these tests check what training does, not how well.
FAST = dict(size=(16, 16), channels=1, filters=(8, 16), latent=4, epochs=2, batch_size=16, seed=3, quiet=True,
            report=False, auto=False, allow_degenerate=True)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    folder = tmp_path_factory.mktemp("small")
    write_images(folder, [normal_image(rng, 16) for _ in range(30)])
    return folder


def test_bundle_records_everything_the_issue_lists(tiny_bundle: Path) -> None:
    meta = json.loads((tiny_bundle / META_FILE).read_text())
    assert meta["input"] == {"height": 32, "width": 32, "channels": 1, "color_order": "gray",
                             "dtype": "float32", "range": [0.0, 1.0]}
    assert meta["preprocessing"]["resize"] == "cv2.INTER_AREA"
    assert meta["score"]["name"] == "mse"
    assert meta["calibration"]["source"].startswith("validation")
    assert len(meta["calibration"]["scores"]) == meta["training"]["validation_images"] == 32
    assert set(meta["threshold"]) == {"quantile", "margin", "value", "method"}
    assert meta["data"]["images"] == 160 and len(meta["data"]["file_list_sha256"]) == 64
    assert {"tensorflow", "keras", "numpy", "opencv"} <= set(meta["versions"])
    assert meta["training"]["seconds"] > 0 and meta["training"]["finished_at"]
    assert meta["training"]["best_epoch"] >= 1 and len(meta["training"]["history"]["val_loss"]) >= 1


def test_calibration_scores_are_the_validation_images_not_the_training_ones(tiny_bundle: Path) -> None:
    meta = json.loads((tiny_bundle / META_FILE).read_text())
    assert meta["training"]["train_images"] + meta["training"]["validation_images"] == 160
    assert meta["training"]["validation_images"] == round(160 * meta["training"]["options"]["validation_split"])


def test_training_writes_the_report(tiny_bundle: Path) -> None:
    for name in ("loss_curve.png", "validation_scores.png", "reconstructions.png"):
        image = cv2.imread(str(tiny_bundle / "report" / name))
        assert image is not None and image.shape[0] > 100, name


def test_same_seed_gives_identical_weights_and_scores(small_dir: Path, tmp_path: Path) -> None:
    a = train_bundle(small_dir, tmp_path / "a", TrainOptions(**FAST))
    b = train_bundle(small_dir, tmp_path / "b", TrainOptions(**FAST))
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert a.meta["calibration"]["scores"] == b.meta["calibration"]["scores"]


def test_early_stopping_restores_the_best_epoch(small_dir: Path, tmp_path: Path) -> None:
    options = TrainOptions(**{**FAST, "epochs": 12, "patience": 2, "learning_rate": 0.05})
    bundle = train_bundle(small_dir, tmp_path / "es", options)
    hist = bundle.meta["training"]["history"]
    best = bundle.meta["training"]["best_epoch"]
    assert hist["val_loss"][best - 1] == min(hist["val_loss"])
    assert bundle.meta["training"]["epochs_run"] <= 12


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="no image files"):
        train_bundle(tmp_path, tmp_path / "out", TrainOptions(**FAST))


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="does not exist"):
        train_bundle(tmp_path / "nope", tmp_path / "out", TrainOptions(**FAST))


def test_too_few_images_for_a_validation_split_is_a_clear_error(tmp_path: Path) -> None:
    write_images(tmp_path / "few", [normal_image(np.random.default_rng(0), 16) for _ in range(6)])
    with pytest.raises(TrainingDataError, match="too few images for a validation split"):
        train_bundle(tmp_path / "few", tmp_path / "out", TrainOptions(**FAST))


def test_a_few_unreadable_files_are_skipped_and_listed(small_dir: Path, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    data = tmp_path / "data"
    data.mkdir()
    for p in small_dir.glob("*.png"):
        (data / p.name).write_bytes(p.read_bytes())
    (data / "broken.png").write_bytes(b"\x89PNG truncated")
    bundle = train_bundle(data, tmp_path / "out", TrainOptions(**FAST))
    assert bundle.meta["data"]["skipped"] == ["broken.png"]
    assert "training_file_unreadable" in caplog.text and "broken.png" in caplog.text


def test_many_unreadable_files_stop_training(small_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_images(data, [normal_image(np.random.default_rng(0), 16) for _ in range(20)])
    for i in range(5):
        (data / f"junk{i}.jpg").write_bytes(b"nope")
    with pytest.raises(TrainingDataError, match="5 of 25 image files are unreadable"):
        train_bundle(data, tmp_path / "out", TrainOptions(**FAST))


def test_mixed_sizes_are_resized_and_said_once(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    rng = np.random.default_rng(1)
    write_images(tmp_path / "mixed", [normal_image(rng, 16 if i % 2 else 24) for i in range(30)])
    bundle = train_bundle(tmp_path / "mixed", tmp_path / "out", TrainOptions(**FAST))
    assert bundle.meta["data"]["shapes"] == {"16x16": 15, "24x24": 15}
    assert caplog.text.count("training_mixed_sizes") == 1


def test_cli_train_takes_flags_over_the_config_training_section(small_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    cfg = tmp_path / "train.yaml"
    cfg.write_text("training:\n  size: 16x16\n  filters: [8, 16]\n  latent: 4\n  epochs: 5\n"
                   "  learning_rate: 2e-3\n  seed: 1\n")
    out = tmp_path / "cli_bundle"
    assert main(["train", str(small_dir), "--out", str(out), "--config", str(cfg), "--epochs", "1",
                 "--no-report", "--no-auto", "--allow-degenerate"]) == 0
    opts = load_bundle(out).meta["training"]["options"]
    assert opts["epochs"] == 1 and opts["learning_rate"] == 2e-3 and opts["latent"] == 4
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "val_loss=" in err and "eta=" in err


def test_cli_train_quiet_prints_no_progress(small_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    assert main(["train", str(small_dir), "--out", str(tmp_path / "q"), "--size", "16", "--filters", "8,16",
                 "--latent", "4", "--epochs", "1", "--quiet", "--no-report", "--no-auto",
                 "--allow-degenerate"]) == 0
    assert "epoch" not in capsys.readouterr().err


def test_cli_train_unknown_config_key_exits_2(small_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("training:\n  epochz: 3\n")
    assert main(["train", str(small_dir), "--out", str(tmp_path / "x"), "--config", str(cfg)]) == 2
    assert "training.epochz: unknown key" in capsys.readouterr().err


def test_cli_train_empty_folder_exits_2(tmp_path, capsys) -> None:  # noqa: ANN001
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "no image files" in capsys.readouterr().err


def test_cli_train_to_an_out_under_a_file_exits_2_before_any_training(small_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    blocker = tmp_path / "models"
    blocker.write_text("not a folder")
    assert main(["train", str(small_dir), "--out", str(blocker / "m"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"its {blocker} is a file" in err
    assert "epoch" not in err and "chose" not in err  # refused before the images were even read
    assert blocker.read_text() == "not a folder"


def test_hidden_files_and_folders_are_not_training_data(small_dir, tmp_path) -> None:  # noqa: ANN001
    data = tmp_path / "from_a_mac"
    shutil.copytree(small_dir, data)
    for image in sorted(data.iterdir()):  # what a copy from macOS leaves beside every file
        (data / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))
    (data / ".ipynb_checkpoints").mkdir()
    shutil.copy(next(small_dir.iterdir()), data / ".ipynb_checkpoints" / "copy-checkpoint.png")
    bundle = train_bundle(data, tmp_path / "m", TrainOptions(**FAST))
    assert bundle.meta["data"]["images"] == bundle.meta["data"]["files"] == 30
    assert bundle.meta["data"]["skipped"] == []


def test_images_of_pixels_that_cannot_be_scored_are_skipped_not_a_crash(small_dir, tmp_path) -> None:  # noqa: ANN001
    data = tmp_path / "with_counts"
    shutil.copytree(small_dir, data)
    ok, buf = cv2.imencode(".tif", np.arange(16 * 16, dtype=np.int32).reshape(16, 16) * 1000)
    assert ok
    (data / "counts.tif").write_bytes(buf.tobytes())  # 1 of 31 files: under the share of unreadable allowed
    bundle = train_bundle(data, tmp_path / "m", TrainOptions(**FAST))
    assert bundle.meta["data"]["skipped"] == ["counts.tif"] and bundle.meta["data"]["images"] == 30


def test_a_folder_of_float_images_on_another_scale_is_refused_with_the_reason(tmp_path) -> None:  # noqa: ANN001
    data = tmp_path / "float_levels"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):  # 0..255 grey levels saved as float: clipped to 0..1 they would all be white
        ok, buf = cv2.imencode(".tif", (normal_image(rng, 16)).astype(np.float32))
        (data / f"{i}.tif").write_bytes(buf.tobytes())
    with pytest.raises(TrainingDataError, match=r"12 of 12 image files are unreadable .*0\.tif: float pixels are "
                                                 r"read on a scale of 0\.\.1, these span"):
        train_bundle(data, tmp_path / "m", TrainOptions(**FAST))


def _colour_part(rng: np.random.Generator) -> np.ndarray:
    part = cv2.cvtColor(normal_image(rng, 16), cv2.COLOR_GRAY2BGR).astype(np.int16)
    part[..., 2] = np.clip(part[..., 2] + 60, 0, 255)  # a reddish part: its colour is what a stain changes
    return part.astype(np.uint8)


def test_a_12_bit_camera_s_colour_parts_train_in_colour_and_the_bundle_reads_raw_files_as_in_training(
        tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(8)
    data = tmp_path / "mono12"
    data.mkdir()
    for i in range(30):  # Mono12/RGB12 in 16-bit PNGs: no pixel above 4095, a sixteenth of the 16-bit scale
        twelve = (_colour_part(rng).astype(np.uint16) << 4) | rng.integers(0, 16, (16, 16, 3), dtype=np.uint16)
        cv2.imwrite(str(data / f"{i:02d}.png"), twelve)
    # Channels and size chosen from the data (the colour test is the one a sixteenth of the scale fooled).
    options = TrainOptions(**{k: v for k, v in FAST.items() if k not in ("size", "channels", "auto")},
                           score="mse")
    bundle = train_bundle(data, tmp_path / "m", options)
    assert bundle.channels == 3, "12-bit colour parts were taken for gray"
    assert bundle.meta["input"]["uint16_white"] == 4095
    loaded = load_bundle(tmp_path / "m")
    assert loaded.uint16_white == 4095
    from monitor.training.info import format_info

    assert "16-bit images read as 12-bit: 4095 is white" in format_info(loaded)
    # Calibration scored stretched copies in training; the daemon scores the raw files against the level.
    from monitor.images import read_image
    from monitor.model.scorer import BatchScorer

    raw = [read_image(p) for p in sorted(data.iterdir())]
    scores = BatchScorer(loaded).score(raw).scores
    calibration = np.asarray(loaded.meta["calibration"]["scores"])
    nearest = np.abs(calibration[:, None] - scores[None, :]).min(axis=1)
    assert np.all(nearest <= 1e-4 * np.abs(calibration) + 1e-7)


def test_8_bit_images_record_no_16_bit_white_level(tiny_bundle: Path) -> None:
    assert "uint16_white" not in load_bundle(tiny_bundle).meta["input"]


def test_a_bundle_kept_inside_the_data_folder_is_not_training_data(small_dir, tmp_path) -> None:  # noqa: ANN001
    data = tmp_path / "good"
    shutil.copytree(small_dir, data)
    first = train_bundle(data, data / "model", TrainOptions(**{**FAST, "report": True}))  # --out good/model
    assert list((data / "model" / "report").glob("*.png"))  # plots a second run would have read as parts
    second = train_bundle(data, tmp_path / "again", TrainOptions(**FAST))
    assert second.meta["data"]["images"] == first.meta["data"]["images"] == 30


def test_checking_the_out_folder_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "new" / "bundle"
    check_writable_folder(out)
    assert list(tmp_path.iterdir()) == []  # no folder made, no probe file left


def test_cli_train_bad_size_exits_2(small_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    assert main(["train", str(small_dir), "--out", str(tmp_path / "x"), "--size", "30x30", "--quiet"]) == 2
    assert "divisible by 4" in capsys.readouterr().err


CONV = {**FAST, "architecture": "conv", "filters": (8, 16), "code_channels": 2, "loss": "mse+ssim", "flip": True}


def test_conv_architecture_with_ssim_loss_and_flips_repeats_with_the_same_seed(small_dir: Path, tmp_path: Path) -> None:
    a = train_bundle(small_dir, tmp_path / "a", TrainOptions(**CONV))
    b = train_bundle(small_dir, tmp_path / "b", TrainOptions(**CONV))
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert a.meta["calibration"]["scores"] == b.meta["calibration"]["scores"]


def test_conv_bundle_records_its_architecture_and_loss(small_dir: Path, tmp_path: Path) -> None:
    meta = train_bundle(small_dir, tmp_path / "c", TrainOptions(**CONV)).meta
    arch = meta["architecture"]
    assert arch["name"] == "conv" and arch["filters"] == [8, 16] and arch["code_channels"] == 2
    assert arch["loss"] == "mse+ssim" and "latent" not in arch
    assert meta["training"]["options"]["architecture"] == "conv"


def test_architecture_default_filters_follow_the_architecture() -> None:
    assert TrainOptions().model_filters == (32, 64)
    assert TrainOptions(architecture="conv").model_filters == (32, 64, 128)
    assert TrainOptions(architecture="conv", filters=(8, 16)).model_filters == (8, 16)


@pytest.mark.parametrize(("option", "message"), [
    ({"architecture": "dense"}, "architecture must be one of seed, conv"),
    ({"loss": "l1"}, "loss must be one of mse, ssim, mse\\+ssim"),
    ({"code_channels": 0}, "code_channels must be positive"),
])
def test_bad_architecture_options_are_named(option: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainOptions(**{**FAST, **option}).validate()


def test_cli_train_takes_architecture_loss_and_code_channels(small_dir, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "conv_cli"
    assert main(["train", str(small_dir), "--out", str(out), "--size", "16", "--architecture", "conv",
                 "--filters", "8,16", "--code-channels", "3", "--loss", "ssim", "--flip", "--epochs", "1", "--quiet",
                 "--no-report", "--no-auto", "--allow-degenerate"]) == 0
    meta = load_bundle(out).meta
    arch = meta["architecture"]
    assert (arch["name"], arch["code_channels"], arch["loss"]) == ("conv", 3, "ssim")
    assert meta["training"]["options"]["flip"] is True


@pytest.mark.parametrize("architecture", ["seed", "conv"])
def test_training_prints_no_grappler_remapper_error(architecture: str, small_dir: Path, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture) -> None:
    # TensorFlow's remapper fails on the training step of Conv2D + BiasAdd + LeakyReLU and says so on fd 2 as
    # an error ("E0000 ... remapper failed: INVALID_ARGUMENT ..."): noise that reads like a fault.
    import tensorflow as tf

    train_bundle(small_dir, tmp_path / architecture, TrainOptions(**{**FAST, "architecture": architecture,
                                                                     "epochs": 1}))
    err = capfd.readouterr().err
    assert "remapper failed" not in err and "meta_optimizer" not in err
    assert "remapping" not in tf.config.optimizer.get_experimental_options()  # back to the default for scoring


def test_training_restores_an_explicit_remapper_setting(small_dir: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"remapping": False})
    try:
        train_bundle(small_dir, tmp_path / "m", TrainOptions(**{**FAST, "epochs": 1}))
        assert tf.config.optimizer.get_experimental_options().get("remapping") is False
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": None})


def test_flip_augmentation_mirrors_about_half_of_each_epoch_and_keeps_the_data() -> None:
    from monitor.training.train import _flip_batches

    x = np.random.default_rng(0).random((40, 4, 6, 1)).astype(np.float32)
    original = x.copy()
    batches = _flip_batches(x, 16, seed=1)
    seen = np.concatenate([batches[i][0] for i in range(len(batches))])
    mirrored = sum(any(np.array_equal(b, o[:, ::-1]) for o in original) for b in seen)
    assert len(seen) == 40 and 10 <= mirrored <= 30
    np.testing.assert_array_equal(x, original)


def test_a_subset_per_epoch_is_fresh_every_epoch_and_covers_the_data() -> None:
    from monitor.training.train import _flip_batches

    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1)
    batches = _flip_batches(x, 8, seed=1, flip=False, per_epoch=20)
    seen: list[set[float]] = []
    for _ in range(10):
        epoch = np.concatenate([batches[i][0] for i in range(len(batches))]).ravel()
        assert len(batches) == 3 and len(epoch) == 20 and len(set(epoch)) == 20
        seen.append(set(epoch))
        batches.on_epoch_end()
    assert seen[0] != seen[1]
    assert len(set().union(*seen)) > 80  # ten epochs of 20 reach most of the 100, not the same 20


@pytest.mark.parametrize(("per_epoch", "steps"), [(None, 4), (20, 3), (500, 4)])
def test_samples_per_epoch_sets_the_optimiser_steps_of_an_epoch(per_epoch: int | None, steps: int) -> None:
    from monitor.training.train import fit_autoencoder

    x = np.random.default_rng(0).random((40, 16, 16, 1)).astype(np.float32)
    options = TrainOptions(**{**FAST, "epochs": 2, "patience": 5, "batch_size": 8, "samples_per_epoch": per_epoch})
    model, history = fit_autoencoder(x[:32], x[32:], options)  # 32 images, batch 8
    assert len(history["loss"]) == 2
    assert int(model.optimizer.iterations.numpy()) == 2 * steps


def test_samples_per_epoch_must_be_positive_and_names_the_flag(small_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["train", str(small_dir), "--out", str(tmp_path / "x"), "--samples-per-epoch", "0"]) == 2
    assert "--samples-per-epoch: must be positive" in capsys.readouterr().err


def test_cli_texture_preset_sets_the_texture_settings_and_flags_override_it(tmp_path) -> None:  # noqa: ANN001
    from monitor.training.cli import register, training_options
    from monitor.training.options import TEXTURE_SETTINGS

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    options = training_options(parser.parse_args(["train", "d", "--out", "o", "--preset", "texture",
                                                   "--epochs", "3"]))
    assert (options.architecture, options.loss, options.score) == ("conv", "ssim", "smooth_quantile")
    assert options.score_params == TEXTURE_SETTINGS["score_params"] and options.epochs == 3
    cfg = tmp_path / "t.yaml"
    cfg.write_text("training:\n  preset: texture\n  code_channels: 4\n")
    options = training_options(parser.parse_args(["train", "d", "--out", "o", "--config", str(cfg)]))
    assert (options.architecture, options.code_channels, options.epochs) == ("conv", 4, 80)


def test_cli_unknown_preset_exits_2_and_names_the_known_ones(small_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    assert main(["train", str(small_dir), "--out", str(tmp_path / "x"), "--preset", "glass"]) == 2
    assert "unknown preset 'glass' (known: texture)" in capsys.readouterr().err


def test_a_folder_of_many_sizes_is_described_in_one_bounded_line() -> None:
    shapes = {f"{s}x{s}": 1 for s in range(100, 160)} | {"128x128": 7, "96x96": 3}
    text = describe_shapes(shapes)
    assert text.startswith("sizes=61 shapes=128x128:7,96x96:3,")
    assert text.endswith(",+56_more") and len(text) < 120
