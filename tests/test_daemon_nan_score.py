"""A model that scores NaN: no threshold flags NaN, so such a frame must never become a 'normal' verdict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
from daemon_proc import wait_until
from imagegen import normal_image, write_images
from inprocess import make_daemon

from monitor import metrics

LINE = [{"name": "line1", "folder": "inbox", "settle_ms": 20}]


def _nan_bundle(tiny_bundle: Path, folder: Path) -> Path:
    """The tiny bundle with its last bias set to NaN: a real model whose every output, so score, is NaN."""
    shutil.copytree(tiny_bundle, folder)
    model = keras.models.load_model(folder / "model.keras", compile=False)
    weights = model.get_weights()
    weights[-1] = np.full_like(weights[-1], np.nan)
    model.set_weights(weights)
    model.save(folder / "model.keras")
    return folder


def test_a_frame_scored_nan_is_quarantined_with_the_reason_and_gets_no_normal_verdict(tiny_bundle, tmp_path):
    daemon = make_daemon(tmp_path / "w", _nan_bundle(tiny_bundle, tmp_path / "nan"), LINE)
    errors = metrics.ERRORS.labels("score")
    before = errors._value.get()
    daemon.start()
    try:
        write_images(tmp_path / "w" / "inbox", [normal_image(np.random.default_rng(1))], prefix="part")
        reasons = wait_until(lambda: list((tmp_path / "w" / "var" / "quarantine" / "line1").glob("*.reason.txt")),
                             timeout=30)
        text = reasons[0].read_text()
        assert "reason: undecodable" in text and "the model gave a score of nan" in text
        assert errors._value.get() == before + 1
    finally:
        daemon.stop()
        daemon.shutdown()
    journal = tmp_path / "w" / "var" / "journal.jsonl"
    lines = journal.read_text().splitlines() if journal.exists() else []
    assert [json.loads(line) for line in lines if '"part' in line] == []  # no verdict: neither normal nor anomaly
