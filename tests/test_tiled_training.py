"""Tiled training: options and flags, crops, the sidecar's tiling section, calibration on whole images."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from imagegen import normal_image, write_images

from monitor.cli import main
from monitor.images import list_images, read_image
from monitor.model.bundle import META_FILE, BundleError, load_bundle
from monitor.model.scorer import BatchScorer
from monitor.training.cli import register, training_options
from monitor.training.options import OptionsError, TrainOptions
from monitor.training.train import TileCrops, split_validation


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser


def _options(parser: argparse.ArgumentParser, flags: list[str], yaml_path: Path | None = None) -> TrainOptions:
    argv = ["train", "data", "--out", "out", *flags] + (["--config", str(yaml_path)] if yaml_path else [])
    return training_options(parser.parse_args(argv))


def test_no_scale_means_no_tiling(parser) -> None:  # noqa: ANN001
    options = _options(parser, [])
    assert options.scale is None and not options.tiling and options.model_size == options.size == (64, 64)


def test_scale_and_tile_flags_make_the_tile_the_model_input(parser) -> None:  # noqa: ANN001
    options = _options(parser, ["--scale", "1", "--tile", "32x32"])
    assert options.tiling and options.scale == 1.0
    assert options.model_size == (32, 32) and options.tile_stride == (16, 16) and options.crops == 8


def test_tiling_options_are_read_from_the_training_section(parser, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "train.yaml").write_text("training:\n  scale: 0.5\n  tile: 64x32\n  stride: [32, 8]\n  crops: 4\n")
    options = _options(parser, [], tmp_path / "train.yaml")
    assert (options.scale, options.tile, options.tile_stride, options.crops) == (0.5, (64, 32), (32, 8), 4)


@pytest.mark.parametrize(("flags", "message"), [
    (["--scale", "1.5"], "--scale: must be in (0, 1]"),
    (["--scale", "1", "--tile", "32x32", "--stride", "40x16"],
     "--stride: 40x16 must be positive and at most the tile 32x32"),
    (["--scale", "1", "--size", "128x128"], "--size: 128x128 is the model input without tiling"),
    (["--scale", "1", "--tile", "30x30"], "--tile: 30x30 must be positive and divisible by 4"),
])
def test_bad_tiling_flags_are_named(parser, flags, message) -> None:  # noqa: ANN001
    with pytest.raises(OptionsError) as err:
        _options(parser, flags)
    assert message in str(err.value)


def test_crops_are_whole_tiles_drawn_afresh_each_time() -> None:
    rng = np.random.default_rng(0)
    images = [rng.random((40, 50, 1), dtype=np.float32), rng.random((20, 24, 1), dtype=np.float32)]
    crops = TileCrops(images, (32, 32), per_image=3)
    first, second = crops.draw(rng), crops.draw(rng)
    assert first.shape == (6, 32, 32, 1) and first.dtype == np.float32
    assert not np.array_equal(first, second)
    # A crop is a whole window of its image (float16 storage: within a fraction of a grey level).
    assert any(np.abs(images[0][y:y + 32, x:x + 32] - first[0]).max() < 1e-3 for y in range(9) for x in range(19))


def test_the_tiled_bundle_records_its_tiling_and_tile_input(tiled_bundle: Path) -> None:
    meta = json.loads((tiled_bundle / META_FILE).read_text())
    assert meta["tiling"] == {"scale": 1.0, "stride": [16, 16]}
    assert (meta["input"]["height"], meta["input"]["width"]) == (32, 32)
    assert meta["training"]["options"]["scale"] == 1.0 and meta["training"]["crops_per_image"] == 16
    assert meta["training"]["train_crops_per_epoch"] == 24 * 16 and meta["training"]["validation_crops"] == 6 * 16


def test_calibration_scores_are_the_whole_validation_images_scored_as_the_daemon_does(
        tiled_bundle: Path, large_normal_dir: Path) -> None:
    bundle = load_bundle(tiled_bundle)
    _, val_idx = split_validation(30, 0.2, np.random.default_rng(0))  # the run's seed and split
    paths = list_images(large_normal_dir)
    scores = BatchScorer(bundle, 32).score([read_image(paths[i]) for i in val_idx]).scores
    assert len(bundle.calibration_scores) == bundle.meta["training"]["validation_images"] == 6
    np.testing.assert_allclose(bundle.calibration_scores, scores, rtol=1e-5)


def test_info_shows_the_tiling(tiled_bundle, tiny_bundle, capsys) -> None:  # noqa: ANN001
    assert main(["info", str(tiled_bundle)]) == 0
    assert "32x32 tiles at stride 16x16" in capsys.readouterr().out
    assert main(["info", str(tiny_bundle)]) == 0
    assert "tiling      none" in capsys.readouterr().out


def test_monitor_train_with_scale_and_tile_writes_a_tiled_bundle(tmp_path, capsys) -> None:  # noqa: ANN001
    write_images(tmp_path / "data", [normal_image(np.random.default_rng(i), 48) for i in range(25)])
    code = main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "b"), "--scale", "1", "--tile", "16x16",
                 "--filters", "8,16", "--latent", "4", "--epochs", "2", "--crops", "2", "--seed", "1", "--quiet",
                 "--no-auto", "--allow-degenerate"])
    assert code == 0
    assert "tiles at scale 1, stride 8x8" in capsys.readouterr().out
    bundle = load_bundle(tmp_path / "b")
    assert bundle.tiling.scale == 1.0 and bundle.tile_stride == (8, 8) and (bundle.height, bundle.width) == (16, 16)
    assert (tmp_path / "b" / "report" / "reconstructions.png").is_file()


def _edited_copy(src: Path, dst: Path, tiling: dict) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / META_FILE).read_text())
    meta["tiling"] = tiling
    (dst / META_FILE).write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize(("tiling", "message"), [
    ({"scale": 1.0, "strid": [8, 8]}, "tiling.strid: unknown key"),
    ({"scale": 0}, "tiling.scale: Input should be greater than 0"),
    ({"scale": 1.0, "stride": [40, 8]}, "tiling: stride 40x8 is larger than the tile"),
])
def test_a_bad_tiling_section_is_refused_naming_the_key(tiny_bundle, tmp_path, tiling, message) -> None:  # noqa: ANN001
    with pytest.raises(BundleError, match="bundle.json: " + message):
        load_bundle(_edited_copy(tiny_bundle, tmp_path / "b", tiling))


def test_a_bundle_without_tiling_has_none(tiny_bundle: Path) -> None:
    assert load_bundle(tiny_bundle).tiling is None
