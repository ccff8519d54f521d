"""Shared fixtures: one tiny model trained once per test session."""

from __future__ import annotations

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
                                               seed=0, quiet=True))
    return out


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for daemon subprocesses: the repo importable, quiet TensorFlow."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    return env
