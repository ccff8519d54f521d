"""The filter-bank features: local statistics at three scales that need no training, and the density score
built on them, alone in a bundle, scored exactly as the selection measured it."""

import numpy as np
import pytest
import tensorflow as tf
from imagegen import colour_part, colour_stain, normal_image

from monitor.model.bundle import BundleError, load_bundle, save_bundle
from monitor.model.density import FeatureGaussian, combine_maps, features_of, normaliser
from monitor.model.filterbank import SIGMAS, STATISTICS, feature_count, filter_bank, usable_sigmas
from monitor.model.preprocess import to_model_input
from monitor.model.scorer import BatchScorer
from monitor.training.quality import auroc

SIZE = 32


def _gray(images):
    return np.stack([to_model_input(i, SIZE, SIZE, 1) for i in images])


def _colour(images):
    return np.stack([to_model_input(i, SIZE, SIZE, 3) for i in images])


def test_gray_and_colour_inputs_get_their_feature_counts():
    assert feature_count(1) == len(SIGMAS) * len(STATISTICS)
    assert filter_bank(np.zeros((2, SIZE, SIZE, 1), np.float32)).shape == (2, SIZE, SIZE, feature_count(1))
    assert filter_bank(np.zeros((2, SIZE, SIZE, 3), np.float32)).shape == (2, SIZE, SIZE, feature_count(3))


def test_a_flat_image_has_no_texture_and_no_detail_even_at_its_border():
    f = filter_bank(np.full((1, SIZE, SIZE, 1), 0.4, np.float32)).numpy()[0]
    mean, std, detail = f[..., 0::3], f[..., 1::3], f[..., 2::3]
    assert np.allclose(mean, 0.4, atol=1e-5)
    assert np.abs(std).max() < 1e-3 and np.abs(detail).max() < 1e-5


def test_a_colour_change_that_keeps_the_brightness_moves_only_the_chroma_features():
    rng = np.random.default_rng(0)
    part = colour_part(rng)
    stained = colour_stain(part, rng, amplitude=20.0)
    a, b = (filter_bank(_colour([im])).numpy()[0] for im in (part, stained))
    per_plane = len(SIGMAS) * len(STATISTICS)
    luma_change = np.abs(a[..., :per_plane] - b[..., :per_plane]).max()
    chroma_change = np.abs(a[..., per_plane:] - b[..., per_plane:]).max()
    assert chroma_change > 5 * luma_change


def test_scales_too_large_for_a_small_map_are_shrunk_to_fit():
    assert usable_sigmas(64, 64) == SIGMAS
    assert all(3 * s < 8 for s in usable_sigmas(8, 8))
    assert filter_bank(np.zeros((1, 8, 8, 1), np.float32)).shape == (1, 8, 8, feature_count(1))


def test_a_filter_bank_density_finds_small_specks_on_a_part(tiny_bundle):
    rng = np.random.default_rng(3)
    train = _gray([normal_image(rng, SIZE) for _ in range(80)])
    normal = _gray([normal_image(rng, SIZE) for _ in range(40)])
    specked = []
    for _ in range(40):
        im = normal_image(rng, SIZE).copy()
        y, x = rng.integers(4, SIZE - 6, 2)
        im[y:y + 2, x:x + 2] = np.clip(im[y:y + 2, x:x + 2].astype(int) + 60, 0, 255)
        specked.append(im)
    model = load_bundle(tiny_bundle).model
    gaussian = FeatureGaussian.fit(features_of(model, train, features="filterbank"), "shared", source="filterbank")

    def score(x):
        return gaussian.distance_map(tf.constant(features_of(model, x, features="filterbank"))).numpy().max((1, 2))

    s_n, s_a = score(normal), score(_gray(specked))
    assert auroc(np.r_[s_n, s_a], np.r_[np.zeros(40), np.ones(40)]) > 0.95


@pytest.fixture(scope="module")
def density_alone_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with a filter-bank density as its whole score, saved and loaded again."""
    rng = np.random.default_rng(4)
    source = load_bundle(tiny_bundle)
    train = _gray([normal_image(rng, SIZE) for _ in range(60)])
    normal = _gray([normal_image(rng, SIZE) for _ in range(30)])
    gaussian = FeatureGaussian.fit(features_of(source.model, train, features="filterbank"), "local",
                                   source="filterbank")
    maxima = gaussian.distance_map(tf.constant(features_of(source.model, normal, features="filterbank")))
    offset, scale = normaliser(maxima.numpy().max(axis=(1, 2)))
    meta = dict(source.meta)
    meta["density"] = {"mode": "local", "features": "filterbank", "file": "density.npz", "residual_scale": None,
                       "density_offset": offset, "density_scale": scale}
    out = tmp_path_factory.mktemp("bundles") / "density_alone"
    save_bundle(out, source.model, meta, density=gaussian)
    return load_bundle(out), gaussian, (offset, scale), normal


def test_a_bundle_scored_by_the_density_alone_scores_what_the_selection_measured(density_alone_bundle):
    bundle, gaussian, norm, normal = density_alone_bundle
    expected = combine_maps(tf.zeros((len(normal), SIZE, SIZE)),
                            gaussian.distance_map(tf.constant(features_of(bundle.model, normal,
                                                                          features="filterbank"))),
                            None, norm).numpy().max(axis=(1, 2))
    scored = BatchScorer(bundle, 16).score_inputs(normal)
    assert np.allclose(scored.scores, expected, rtol=1e-4, atol=1e-4)
    assert np.median(scored.scores) == pytest.approx(1.0, abs=0.05)  # same normals: the median maximum is 1
    assert bundle.score_label == "density:filterbank/local"


def test_density_parameters_of_another_feature_source_are_refused(density_alone_bundle, tmp_path):
    bundle, gaussian, _, _ = density_alone_bundle
    meta = dict(bundle.meta)
    meta["density"] = {**meta["density"], "features": "encoder"}
    save_bundle(tmp_path / "b", bundle.model, meta, density=gaussian)
    with pytest.raises(BundleError, match="filterbank features, the sidecar says encoder"):
        load_bundle(tmp_path / "b")
