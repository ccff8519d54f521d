"""Choosing a score on held-out normal images and synthetic defects."""

import numpy as np
import pytest
from imagegen import colour_part, colour_stain, normal_image

from monitor.model.bundle import load_bundle
from monitor.model.density import FEATURE_SOURCES, normaliser
from monitor.model.preprocess import to_model_input
from monitor.training.defects import defect_set
from monitor.training.select import (
    COMBINABLE,
    DENSITY_MODES,
    NEEDS_DENSITY,
    RESIDUAL_SCORES,
    Trial,
    best_first,
    rank_scores,
)


def _x(images):
    return np.stack([to_model_input(i, 32, 32, 1) for i in images])


@pytest.fixture(scope="module")
def trials(tiny_bundle):
    rng = np.random.default_rng(5)
    train = [normal_image(rng, 32) for _ in range(120)]
    held_out = [normal_image(rng, 32) for _ in range(100)]
    defects = defect_set(held_out[50:], 60, rng)
    return rank_scores(load_bundle(tiny_bundle).model, _x(train), _x(held_out[:50]),
                       _x([d.image for d in defects]), [d.family for d in defects], 0.99)


def test_every_candidate_is_measured(trials):
    labels = {t.label for t in trials}
    assert {name for name, _ in RESIDUAL_SCORES if name not in NEEDS_DENSITY} <= labels
    assert {f"{name}+density({mode})" for name in COMBINABLE for mode in DENSITY_MODES} <= labels


def test_ssim_is_never_a_candidate_without_a_density(trials):
    assert all(t.density for t in trials if t.score in NEEDS_DENSITY)
    assert any(t.score == "ssim_max" and t.density for t in trials)


def test_a_given_ssim_score_is_still_measured(tiny_bundle):
    rng = np.random.default_rng(2)
    x = _x([normal_image(rng, 32) for _ in range(40)])
    defects = defect_set(list(x[20:]), 20, rng)
    ranked = rank_scores(load_bundle(tiny_bundle).model, x[:20], x[20:], np.stack([d.image for d in defects]),
                         [d.family for d in defects], 0.99, only=("ssim_max", {}))
    assert [(t.score, t.density) for t in ranked] == [("ssim_max", None)]


def test_the_best_candidate_comes_first(trials):
    assert trials[0].auroc >= max(t.auroc for t in trials) - 0.005


def test_the_density_is_chosen_where_only_it_sees_the_defects(colour_conv_model):
    bundle, train = colour_conv_model
    rng = np.random.default_rng(8)
    normal = np.stack([to_model_input(colour_part(rng), 32, 32, 3) for _ in range(50)])
    stains = np.stack([to_model_input(colour_stain(colour_part(rng), rng), 32, 32, 3) for _ in range(50)])
    ranked = rank_scores(bundle.model, train, normal, stains, ["colour_stain"] * 50, 0.99)
    best_residual = max(t.auroc for t in ranked if t.density is None)
    assert ranked[0].density is not None
    assert ranked[0].auroc > best_residual
    assert ranked[0].gaussian is not None and ranked[0].scales["density_scale"] > 0


def test_a_given_score_is_measured_alone(tiny_bundle):
    rng = np.random.default_rng(2)
    x = _x([normal_image(rng, 32) for _ in range(40)])
    defects = defect_set(list(x[20:]), 20, rng)
    ranked = rank_scores(load_bundle(tiny_bundle).model, x[:20], x[20:], np.stack([d.image for d in defects]),
                         [d.family for d in defects], 0.99, only=("mae", {}))
    assert [(t.score, t.density) for t in ranked] == [("mae", None)]


def test_detection_rates_are_reported_per_defect_family(trials):
    assert set(trials[0].per_family) >= {"cutpaste", "noise", "line", "speck"}
    assert all(0.0 <= v <= 1.0 for v in trials[0].per_family.values())


def test_combined_candidates_carry_the_scales_they_were_measured_with(trials):
    combined = [t for t in trials if t.density and t.residual]
    assert combined
    assert all(t.scales["residual_scale"] > 0 and t.scales["density_scale"] > 0 for t in combined)


def test_a_density_alone_is_a_candidate_of_every_feature_source_and_mode(trials):
    alone = {(t.features, t.density) for t in trials if t.density and not t.residual}
    assert alone == {(source, mode) for source in FEATURE_SOURCES for mode in DENSITY_MODES}
    assert all(t.density_meta()["residual_scale"] is None for t in trials if t.density and not t.residual)


def test_normalised_maps_put_the_median_normal_maximum_at_one(trials):
    # (max - offset) / scale of the normal images: median 1, 90th percentile 2, for every map kind
    for t in (t for t in trials if t.density):
        assert t.scales["density_scale"] > 0
        assert np.isfinite(t.scales["density_offset"])


def _trial(name, auroc, rate):
    return Trial(name, {}, None, auroc, auroc, rate)


def test_within_a_tie_the_higher_detection_rate_wins():
    ranked = best_first([_trial("a", 0.990, 0.5), _trial("b", 0.993, 0.4), _trial("c", 0.989, 0.9)])
    assert [t.score for t in ranked] == ["c", "a", "b"]


def test_outside_a_tie_the_higher_auroc_wins():
    ranked = best_first([_trial("a", 0.95, 0.99), _trial("b", 0.99, 0.1)])
    assert [t.score for t in ranked] == ["b", "a"]


def test_a_full_tie_keeps_the_simpler_earlier_candidate():
    ranked = best_first([_trial("simple", 0.99, 0.5), _trial("combined", 0.99, 0.5)])
    assert ranked[0].score == "simple"


def test_normaliser_maps_the_median_to_one_and_the_90th_percentile_to_two():
    maxima = np.random.default_rng(0).gamma(2.0, 0.01, 200)
    offset, scale = normaliser(maxima)
    z = (maxima - offset) / scale
    assert np.median(z) == pytest.approx(1.0)
    assert np.quantile(z, 0.9) == pytest.approx(2.0)


def test_normaliser_of_a_map_that_never_varies_is_finite():
    offset, scale = normaliser(np.full(50, 0.25))
    assert scale > 0 and np.isfinite((0.3 - offset) / scale)
