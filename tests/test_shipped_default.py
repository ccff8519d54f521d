"""What `make run` starts: the shipped config and the shipped model score a file dropped into the inbox."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from daemon_proc import DaemonProcess, free_port

from monitor.config import load_config

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_the_makefile_runs_the_shipped_config():
    makefile = (REPO / "Makefile").read_text()
    assert "CONFIG ?= config.yaml" in makefile
    assert "monitor run --config $(CONFIG)" in makefile


def test_shipped_config_points_at_the_shipped_model_and_an_inbox():
    config = load_config(REPO / "config.yaml")
    assert config.model == REPO / "models" / "default"
    assert (config.model / "bundle.json").exists() and (config.model / "model.keras").exists()
    assert [s.folder for s in config.folder_sources] == [REPO / "inbox"]


def test_shipped_model_bundle_is_small():
    size = sum(p.stat().st_size for p in (REPO / "models" / "default").rglob("*") if p.is_file())
    assert size < 8 * 2**20


def test_shipped_config_and_model_score_a_dropped_image(tmp_path, subprocess_env):
    # The shipped config, run from a copy so the test writes nothing into the repository.
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["model"] = str(REPO / "models" / "default")
    config["metrics"]["port"] = free_port()
    daemon = DaemonProcess(tmp_path, config, subprocess_env)
    try:
        daemon.start()
        import skimage.data

        crop = skimage.data.brick()[300:364, 100:164]
        staged = tmp_path / "crop.png"
        cv2.imwrite(str(staged), crop)
        shutil.move(staged, tmp_path / "inbox" / "crop.png")
        (verdict,) = daemon.wait_for_verdicts(1, timeout=30)
        assert verdict["path"] == str(tmp_path / "inbox" / "crop.png")
        assert np.isfinite(verdict["score"]) and verdict["threshold"] > 0
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
