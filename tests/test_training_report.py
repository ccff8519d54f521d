"""The training report says what was actually used: the loss on the loss curve, the score on the histogram."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from monitor.model.bundle import META_FILE
from monitor.training.report import (
    loss_curve_figure,
    loss_label,
    plot_loss_curve,
    score_histogram_figure,
    score_label,
    settings_summary,
)

HISTORY = {"loss": [0.3, 0.2, 0.15], "val_loss": [0.35, 0.22, 0.2]}


@pytest.mark.parametrize(("loss", "expected"), [("mse", "MSE (mean squared error) loss"), ("ssim", "1 - SSIM loss"),
                                                ("mse+ssim", "MSE + 0.5 x (1 - SSIM) loss"),
                                                (None, "MSE (mean squared error) loss")])
def test_the_loss_curve_label_comes_from_the_loss(loss: str | None, expected: str) -> None:
    fig = loss_curve_figure(HISTORY, best_epoch=3, loss=loss)
    try:
        assert fig.axes[0].get_ylabel() == expected == loss_label(loss)
    finally:
        plt.close(fig)


def test_an_ssim_model_is_not_labelled_mse(tmp_path: Path) -> None:
    fig = loss_curve_figure(HISTORY, loss="ssim")
    assert "MSE" not in fig.axes[0].get_ylabel()
    plt.close(fig)
    assert plot_loss_curve(HISTORY, tmp_path / "loss.png", 2, loss="ssim").stat().st_size > 1000


def test_the_histogram_names_the_score_and_its_parameters() -> None:
    fig = score_histogram_figure(0.5, np.linspace(0, 1, 30), score_name="smooth_quantile",
                                 score_params={"sigma": 2.0, "q": 0.99})
    try:
        assert fig.axes[0].get_xlabel() == "score: smooth_quantile (sigma=2, q=0.99)"
    finally:
        plt.close(fig)
    assert score_label("mse") == "score: mse"
    label = score_label("smooth_max", {"sigma": 2.0, "scales": {"density": 3.1}})
    assert label == "score: smooth_max (sigma=2, scales=...)"  # fitted tables stay in the sidecar


def test_the_shipped_report_and_settings_say_what_was_used(tiny_bundle: Path) -> None:
    meta = json.loads((tiny_bundle / META_FILE).read_text())
    text = settings_summary(meta)
    assert (tiny_bundle / "report" / "settings.txt").read_text() == text
    assert "input        32x32x1" in text and "MSE (mean squared error) loss" in text and "score: mse" in text
    assert "batch_size = 32" in text
    meta["training"]["auto"] = {"reasons": {"channels": "images are gray"}}
    meta["training"]["health"] = {"ok": False, "problems": ["inference-mode error is 3x"]}
    text = settings_summary(meta)
    assert "chosen from the data:\n  channels: images are gray" in text
    assert "model health: PROBLEMS\n  - inference-mode error is 3x" in text
