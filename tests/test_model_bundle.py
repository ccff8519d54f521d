"""The model bundle: round trip, the threshold rule, and errors that say what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from imagegen import anomalous_image, normal_image

from monitor.model.bundle import META_FILE, MODEL_FILE, BundleError, load_bundle, save_bundle
from monitor.model.scorer import BatchScorer
from monitor.training.architecture import build_autoencoder


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _edit_meta(path: Path, change) -> None:  # noqa: ANN001
    meta = json.loads((path / META_FILE).read_text())
    change(meta)
    (path / META_FILE).write_text(json.dumps(meta))


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [normal_image(rng, 32) for _ in range(4)] + [anomalous_image(rng, 32) for _ in range(4)]


def test_saved_and_reloaded_bundle_gives_the_same_scores(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    again = save_bundle(tmp_path / "again", bundle.model, bundle.meta)
    reloaded = load_bundle(again.path)
    a = BatchScorer(bundle, 8).score(_images(3)).scores
    b = BatchScorer(reloaded, 8).score(_images(3)).scores
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert reloaded.default_threshold == bundle.default_threshold


def test_default_threshold_is_margin_times_linear_quantile_of_calibration(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    expected = bundle.threshold_margin * np.quantile(bundle.calibration_scores, bundle.threshold_quantile)
    assert bundle.default_threshold == pytest.approx(expected, rel=1e-12)
    assert bundle.meta["threshold"]["value"] == pytest.approx(expected, rel=1e-12)


def test_tiny_bundle_separates_anomalies_from_normal_parts(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    scores = BatchScorer(bundle, 8).score(_images(11)).scores
    assert scores[4:].min() > bundle.default_threshold
    assert (scores[:4] < bundle.default_threshold).sum() >= 3


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_missing_sidecar_is_reported(bundle_copy: Path) -> None:
    (bundle_copy / META_FILE).unlink()
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(bundle_copy)


def test_missing_model_file_is_reported(bundle_copy: Path) -> None:
    (bundle_copy / MODEL_FILE).unlink()
    with pytest.raises(BundleError, match="model.keras is missing"):
        load_bundle(bundle_copy)


def test_sidecar_that_is_not_json_is_reported(bundle_copy: Path) -> None:
    (bundle_copy / META_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_corrupt_model_file_is_reported(bundle_copy: Path) -> None:
    (bundle_copy / MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(BundleError, match="cannot load the Keras model"):
        load_bundle(bundle_copy)


def test_model_input_not_matching_the_sidecar_is_refused(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: m["input"].update(height=64, width=64))
    with pytest.raises(BundleError, match=r"input shape \(32, 32, 1\) does not match .* 64x64x1"):
        load_bundle(bundle_copy)


def test_model_of_other_channels_is_refused(tmp_path: Path, tiny_bundle: Path) -> None:
    meta = load_bundle(tiny_bundle).meta
    save_bundle(tmp_path / "rgb", build_autoencoder(32, 32, 3), meta)
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(tmp_path / "rgb")


def test_unknown_score_name_is_refused(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: m["score"].update(name="psychic"))
    with pytest.raises(BundleError, match="unknown score name 'psychic'"):
        load_bundle(bundle_copy)


def test_empty_calibration_is_refused(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: m["calibration"].update(scores=[]))
    with pytest.raises(BundleError, match="calibration.scores"):
        load_bundle(bundle_copy)


def test_error_messages_are_one_line(bundle_copy: Path) -> None:
    (bundle_copy / MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    assert "\n" not in str(info.value)


def test_architecture_refuses_sizes_not_divisible_by_the_strides() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        build_autoencoder(30, 32, 1, filters=(32, 64))


def test_conv_architecture_round_trips_through_a_bundle_and_the_batch_scorer(tiny_bundle: Path,
                                                                             tmp_path: Path) -> None:
    from monitor.training.architecture import build_conv_autoencoder

    model = build_conv_autoencoder(32, 32, 1, filters=(8, 16), code_channels=4)
    meta = json.loads((tiny_bundle / META_FILE).read_text())
    meta["architecture"] = {"name": "conv", "filters": [8, 16], "code_channels": 4}
    meta["score"] = {"name": "smooth_quantile", "params": {"sigma": 2.0, "q": 0.99}}
    saved = save_bundle(tmp_path / "conv", model, meta)
    reloaded = load_bundle(saved.path)
    assert reloaded.model.name == "fully_conv_autoencoder"
    a = BatchScorer(saved, 8).score(_images(5))
    b = BatchScorer(reloaded, 8).score(_images(5))
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    np.testing.assert_allclose(a.error_maps, b.error_maps, rtol=1e-6)


def test_conv_architecture_has_a_spatial_code_and_no_dense_layer() -> None:
    from monitor.training.architecture import build_conv_autoencoder

    model = build_conv_autoencoder(64, 64, 1, filters=(32, 64, 128), code_channels=8)
    assert tuple(model.get_layer("code").output.shape[1:]) == (8, 8, 8)
    assert not any(type(layer).__name__ == "Dense" for layer in model.layers)
    assert tuple(model.output_shape[1:]) == (64, 64, 1)
