"""The feature-density score: a Gaussian of the encoder's normal features sees faint colour stains that the
reconstruction residual misses, and it travels inside the bundle."""

import numpy as np
import pytest
import tensorflow as tf
from imagegen import colour_part, colour_stain

from monitor.model.density import FeatureGaussian, features_of
from monitor.model.preprocess import to_model_input
from monitor.model.scorer import BatchScorer
from monitor.training.quality import auroc

SIZE = 32


def _inputs(images: list[np.ndarray]) -> np.ndarray:
    return np.stack([to_model_input(i, SIZE, SIZE, 3) for i in images])


@pytest.fixture(scope="module")
def setting(colour_conv_model):
    bundle, train = colour_conv_model
    rng = np.random.default_rng(11)
    normal = _inputs([colour_part(rng) for _ in range(60)])
    stained = _inputs([colour_stain(colour_part(rng), rng) for _ in range(60)])
    return bundle, train, normal, stained


def _max_distance(gaussian: FeatureGaussian, bundle, x: np.ndarray) -> np.ndarray:
    return gaussian.distance_map(tf.constant(features_of(bundle.model, x))).numpy().max(axis=(1, 2))


def _auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    return auroc(np.r_[normal, anomalous], np.r_[np.zeros(len(normal)), np.ones(len(anomalous))])


def test_a_local_feature_gaussian_finds_faint_colour_stains_the_residual_misses(setting):
    bundle, train, normal, stained = setting
    scorer = BatchScorer(bundle, 32)
    residual = _auroc(scorer.score_inputs(normal).scores, scorer.score_inputs(stained).scores)
    gaussian = FeatureGaussian.fit(features_of(bundle.model, train), "local")
    density = _auroc(_max_distance(gaussian, bundle, normal), _max_distance(gaussian, bundle, stained))
    assert density >= 0.95
    assert density > residual + 0.1


def test_normal_images_stay_near_the_fitted_distribution(setting):
    bundle, train, normal, _ = setting
    gaussian = FeatureGaussian.fit(features_of(bundle.model, train), "shared")
    fitted = _max_distance(gaussian, bundle, train)
    held_out = _max_distance(gaussian, bundle, normal)
    assert np.median(held_out) < 1.5 * np.median(fitted)


def test_local_gaussians_keep_a_bounded_number_of_channels(setting):
    bundle, train, _, _ = setting
    features = features_of(bundle.model, train[:40])
    gaussian = FeatureGaussian.fit(features, "local")
    h, w, dims = features.shape[1:]
    assert dims > 32 and len(gaussian.channels) == 32
    assert gaussian.inv_cov.shape == (h * w, 32, 32)


def test_saved_parameters_load_back_identically(setting, tmp_path):
    bundle, train, normal, _ = setting
    gaussian = FeatureGaussian.fit(features_of(bundle.model, train[:40]), "shared")
    gaussian.save(tmp_path)
    again = FeatureGaussian.load(tmp_path)
    assert again.mode == "shared" and np.array_equal(again.channels, gaussian.channels)
    np.testing.assert_allclose(_max_distance(again, bundle, normal[:8]), _max_distance(gaussian, bundle, normal[:8]))


def test_parameters_that_do_not_fit_together_are_refused(tmp_path):
    np.savez(tmp_path / "density.npz", mode=np.array("shared"), channels=np.arange(4, dtype=np.int32),
             mean=np.zeros(5, np.float32), inv_cov=np.eye(4, dtype=np.float32), colour_sigma=np.array(2.0))
    with pytest.raises(ValueError, match="do not fit together"):
        FeatureGaussian.load(tmp_path)
