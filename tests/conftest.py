"""Shared fixtures: one tiny model trained once per test session."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from imagegen import normal_image, write_images  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_SIZE = 32


@pytest.fixture(scope="session")
def normal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 160 synthetic normal images, 32x32 grayscale."""
    rng = np.random.default_rng(1234)
    folder = tmp_path_factory.mktemp("normal")
    write_images(folder, [normal_image(rng, TINY_SIZE) for _ in range(160)], prefix="normal")
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, normal_dir: Path) -> Path:
    """A model bundle trained in seconds on `normal_dir`; shared by every test that scores."""
    from monitor.training.train import TrainOptions, train_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    train_bundle(normal_dir, out, TrainOptions(size=(TINY_SIZE, TINY_SIZE), channels=1, epochs=15,
                                               seed=0, quiet=True, auto=False))
    return out


@pytest.fixture(autouse=True)
def _root_log_level():
    """The root logger's level as each test found it: a daemon run in a test sets it from its config's
    `logging.level` (and a library may set it: OpenVINO's converter did), which a later test in the same process
    would otherwise inherit; at ERROR, `caplog` saw no warning."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


LARGE_SIZE = 256  # the tiled fixtures' images: a 4-px defect is lost when resized to 32x32, kept in tiles


@pytest.fixture(scope="session")
def large_normal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 synthetic normal images of 256x256, grayscale: the same kind as `normal_dir`, 8x the resolution."""
    rng = np.random.default_rng(4321)
    folder = tmp_path_factory.mktemp("large_normal")
    write_images(folder, [normal_image(rng, LARGE_SIZE) for _ in range(30)], prefix="normal")
    return folder


@pytest.fixture(scope="session")
def tiled_bundle(tmp_path_factory: pytest.TempPathFactory, large_normal_dir: Path) -> Path:
    """A tiled bundle (32x32 tiles at scale 1, stride 16) trained in about 15 s on `large_normal_dir`.

    Batch size 4: BatchNorm's moving statistics need several hundred steps to settle, and 24 training
    images x 16 crops give only 96 steps an epoch at that size.
    """
    from monitor.training.train import TrainOptions, train_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiled"
    train_bundle(large_normal_dir, out, TrainOptions(scale=1.0, tile=(TINY_SIZE, TINY_SIZE), filters=(16, 32),
                                                     crops=16, batch_size=4, epochs=12, seed=0, quiet=True,
                                                     report=False, auto=False))
    return out


@pytest.fixture(scope="session")
def colour_conv_model() -> tuple:
    """A fully convolutional model of 32x32 colour parts (in memory) and its training inputs.

    Such a model reconstructs smooth changes well: the case where the residual misses a faint colour stain.
    """
    from imagegen import colour_part

    from monitor.model.preprocess import to_model_input
    from monitor.training.train import TrainOptions, train_arrays

    rng = np.random.default_rng(0)
    x = np.stack([to_model_input(colour_part(rng), TINY_SIZE, TINY_SIZE, 3) for _ in range(200)])
    options = TrainOptions(size=(TINY_SIZE, TINY_SIZE), channels=3, architecture="conv", filters=(16, 32),
                           code_channels=4, epochs=8, batch_size=8, seed=0, quiet=True, report=False, auto=False)
    bundle, _ = train_arrays(x[:160], x[160:], options)
    return bundle, x[:160]


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for daemon subprocesses: the repo importable, quiet TensorFlow."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    return env
