"""Training options: defaults < preset < config file < flags, validated once, errors that name the key or flag."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.training.cli import register, training_options
from monitor.training.options import OptionsError, TrainOptions


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser


def _options(parser: argparse.ArgumentParser, tmp_path: Path, flags: list[str],
             yaml_text: str | None = None) -> TrainOptions:
    argv = ["train", "data", "--out", "out", *flags]
    if yaml_text is not None:
        (tmp_path / "train.yaml").write_text(yaml_text)
        argv += ["--config", str(tmp_path / "train.yaml")]
    return training_options(parser.parse_args(argv))


def test_defaults_are_the_documented_ones(parser, tmp_path) -> None:  # noqa: ANN001
    options = _options(parser, tmp_path, [])
    assert options == TrainOptions()
    assert (options.size, options.architecture, options.epochs, options.learning_rate, options.quantile) == \
        ((64, 64), "seed", 60, 1e-3, 0.99)
    assert options.report and not options.quiet and options.filters is None


def test_yaml_1e_minus_3_without_a_dot_is_a_number(parser, tmp_path) -> None:  # noqa: ANN001
    # YAML 1.1 reads 1e-3 (no dot) as the string "1e-3"; the schema reads it as the number.
    options = _options(parser, tmp_path, [], "training:\n  learning_rate: 1e-3\n  margin: 2e0\n")
    assert options.learning_rate == 0.001 and options.margin == 2.0


@pytest.mark.parametrize(("value", "size"), [("64x32", (64, 32)), ("32", (32, 32)), ("[16, 32]", (16, 32))])
def test_size_reads_hxw_a_number_or_a_list(parser, tmp_path, value, size) -> None:  # noqa: ANN001
    assert _options(parser, tmp_path, [], f"training:\n  size: {value}\n").size == size


def test_filters_read_a_comma_list_or_a_list(parser, tmp_path) -> None:  # noqa: ANN001
    assert _options(parser, tmp_path, [], "training:\n  filters: 8,16\n").filters == (8, 16)
    assert _options(parser, tmp_path, [], "training:\n  filters: [8, 16, 32]\n").filters == (8, 16, 32)
    assert _options(parser, tmp_path, ["--filters", "4, 8"]).filters == (4, 8)


def test_dashed_keys_in_the_file_are_read_and_flags_win(parser, tmp_path) -> None:  # noqa: ANN001
    options = _options(parser, tmp_path, ["--batch-size", "8"],
                       "training:\n  batch-size: 16\n  lr_schedule: cosine\n  report: false\n")
    assert (options.batch_size, options.lr_schedule, options.report) == (8, "cosine", False)


@pytest.mark.parametrize(("yaml_text", "line"), [
    ("training:\n  learning_rate: 0\n", "train.yaml: training.learning_rate: must be positive"),
    ("training:\n  learning_rate: fast\n", "train.yaml: training.learning_rate: Input should be a valid number"),
    ("training:\n  epochz: 3\n", "train.yaml: training.epochz: unknown key"),
    ("training:\n  batch-size: -1\n", "train.yaml: training.batch-size: must be positive"),
    ("training:\n  quantile: 1.5\n", "train.yaml: training.quantile: must be between 0 and 1"),
    ("training:\n  loss: l1\n", "train.yaml: training.loss: must be one of mse, ssim, mse+ssim, got 'l1'"),
    ("training:\n  size: 30x30\n", "train.yaml: training.size: 30x30 must be positive and divisible by 4"),
    ("training:\n  filters: [8, 0]\n", "train.yaml: training.filters: must be positive numbers"),
    ("training:\n  preset: glass\n", "train.yaml: training.preset: unknown preset 'glass' (known: texture)"),
    ("epochs: 0\n", "train.yaml: epochs: must be positive"),
])
def test_config_file_errors_name_the_file_and_the_key(parser, tmp_path, yaml_text, line) -> None:  # noqa: ANN001
    with pytest.raises(OptionsError) as info:
        _options(parser, tmp_path, [], yaml_text)
    assert line in str(info.value).replace(f"{tmp_path}/", "")


@pytest.mark.parametrize(("flags", "line"), [
    (["--epochs", "0"], "--epochs: must be positive"),
    (["--epochs", "many"], "--epochs: Input should be a valid integer"),
    (["--learning-rate", "inf"], "--learning-rate: Input should be a finite number"),
    (["--size", "big"], "--size: must be HxW or N, e.g. 64x64, got 'big'"),
    (["--channels", "2"], "--channels: must be 1 or 3, got 2"),
    (["--preset", "texture", "--size", "36"], "--size: 36x36 must be positive and divisible by 8"),
])
def test_flag_errors_name_the_flag(parser, tmp_path, flags, line) -> None:  # noqa: ANN001
    with pytest.raises(OptionsError, match=re.escape(line)):
        _options(parser, tmp_path, flags)


def test_a_flag_that_overrides_a_bad_file_value_is_used(parser, tmp_path) -> None:  # noqa: ANN001
    assert _options(parser, tmp_path, ["--epochs", "3"], "training:\n  epochs: 0\n").epochs == 3


def test_every_bad_option_is_listed_and_the_cli_exits_2(tmp_path, capsys) -> None:  # noqa: ANN001
    cfg = tmp_path / "train.yaml"
    cfg.write_text("training:\n  epochz: 3\n  quantile: 2\n")
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "x"), "--config", str(cfg),
                 "--latent", "-1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert sorted(err) == sorted([f"error: {cfg}: training.epochz: unknown key",
                                  f"error: {cfg}: training.quantile: must be between 0 and 1",
                                  "error: --latent: must be positive"])
