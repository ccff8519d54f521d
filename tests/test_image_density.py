"""A density of the whole working image (`on: image`) for tiled bundles: it knows where on the part a pixel
lies, so an edge that belongs there is normal and a speck on the plain surface beside it is not."""

import numpy as np
import pytest
import tensorflow as tf

from monitor.model.bundle import BundleError, load_bundle, save_bundle
from monitor.model.density import FeatureGaussian, image_density_maps, image_features, normaliser
from monitor.model.preprocess import to_working_image
from monitor.model.scorer import BatchScorer, combine_image_maps
from monitor.training.image_level import MIN_DEFECTS, choose_image_level
from monitor.training.quality import auroc

SIZE = 96  # parts: a few 32x32 tiles of the tiled fixture


def ring_part(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A plain surface with a sharp bright ring whose centre moves by a pixel or two from part to part."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = size / 2 + rng.normal(0, 1.0, 2)
    d = np.hypot(yy - cy, xx - cx)
    img = 110 + 60 * np.clip(1.5 - np.abs(d - size / 4), 0, 1) + rng.normal(0, 2.0, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def specked(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 3x3 dark speck in a corner region of plain surface."""
    out = image.copy()
    y, x = rng.integers(4, 16, 2)
    out[y:y + 3, x:x + 3] = 40
    return out


def _works(images, bundle):
    return [to_working_image(im, bundle.tiling.scale, bundle.channels) for im in images]


@pytest.fixture(scope="module")
def parts():
    rng = np.random.default_rng(0)
    train = [ring_part(rng) for _ in range(60)]
    normal = [ring_part(rng) for _ in range(20)]
    anomalous = [specked(ring_part(rng), rng) for _ in range(20)]
    return train, normal, anomalous


@pytest.fixture(scope="module")
def image_density_bundle(tiled_bundle, parts, tmp_path_factory):
    """The tiled fixture with a local whole-image density combined with its residual, saved and loaded."""
    train, normal, _ = parts
    source = load_bundle(tiled_bundle)
    size = (SIZE, SIZE)
    gaussian = FeatureGaussian.fit(image_features(_works(train, source), size), "local", source="filterbank")
    raw = gaussian.distance_map(tf.constant(image_features(_works(normal, source), size))).numpy()
    norm = normaliser(raw.max(axis=(1, 2)))
    meta = dict(source.meta)
    meta["density"] = {"mode": "local", "features": "filterbank", "on": "image", "image_size": [SIZE, SIZE],
                       "file": "density.npz", "residual_offset": 0.0, "residual_scale": 1.0,
                       "density_offset": norm[0], "density_scale": norm[1]}
    out = tmp_path_factory.mktemp("bundles") / "image_density"
    save_bundle(out, source.model, meta, density=gaussian)
    return load_bundle(out), source, gaussian, norm


def test_a_whole_image_density_sees_a_speck_beside_an_edge_that_moves(image_density_bundle, parts):
    bundle, _, _, _ = image_density_bundle
    _, normal, anomalous = parts
    scores = BatchScorer(bundle, 16).score(normal + anomalous).scores
    assert auroc(scores, np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]) > 0.95


def test_the_tiled_scorer_joins_the_stitched_residual_and_the_image_density(image_density_bundle, parts):
    bundle, source, gaussian, norm = image_density_bundle
    _, normal, anomalous = parts
    images = normal[:3] + anomalous[:3]
    residual = BatchScorer(source, 16).score(images)
    expected = combine_image_maps(residual.error_maps, image_density_maps(gaussian, _works(images, bundle),
                                                                          (SIZE, SIZE), norm), (0.0, 1.0))
    scored = BatchScorer(bundle, 16).score(images)
    for got, want in zip(scored.error_maps, expected, strict=True):
        assert got.shape == (SIZE, SIZE)
        assert np.allclose(got, want, atol=1e-4)
    assert np.allclose(scored.scores, [m.max() for m in expected], atol=1e-4)


def test_a_whole_image_density_needs_a_tiled_bundle(image_density_bundle, tiny_bundle, tmp_path):
    bundle, _, gaussian, _ = image_density_bundle
    untiled = load_bundle(tiny_bundle)
    meta = dict(untiled.meta)
    meta["density"] = bundle.meta["density"]
    with pytest.raises(BundleError, match="density.*tiled bundles only"):
        save_bundle(tmp_path / "b", untiled.model, meta, density=gaussian)


def test_a_whole_image_density_needs_filter_bank_features_and_a_size(image_density_bundle, tmp_path):
    bundle, _, gaussian, _ = image_density_bundle
    meta = dict(bundle.meta)
    meta["density"] = {k: v for k, v in bundle.meta["density"].items() if k != "image_size"}
    with pytest.raises(BundleError, match="image_size"):
        save_bundle(tmp_path / "b", bundle.model, meta, density=gaussian)


def test_choosing_compares_tiles_and_whole_image_candidates_on_whole_images(tiled_bundle, parts):
    train, normal, _ = parts
    bundle = load_bundle(tiled_bundle)
    works = _works(train, bundle)
    section, gaussian, record = choose_image_level(bundle, (bundle.score_name, bundle.score_params), works,
                                                   normal, np.random.default_rng(1))
    assert set(record["image_level"]) == {"image density(shared)", "image density(local)",
                                          f"image density(shared) + {bundle.score_name}",
                                          f"image density(local) + {bundle.score_name}"}
    assert record["whole_normal_images"] == len(normal) and record["whole_image_defects"] >= 2 * len(normal)
    best = max(record["image_level"].values())
    if record["chosen"] == "tiles":
        assert section is None and best <= record["tiles"] + 0.005
    else:
        assert best > record["tiles"] + 0.005 and section["on"] == "image" and gaussian is not None


def test_whole_image_features_do_not_depend_on_how_many_images_share_a_pass(parts, monkeypatch):
    from monitor.model import density

    works = [im.astype(np.float32)[..., None] / 255 for im in parts[0][:5]]
    default = image_features(works, (SIZE, SIZE))  # 5 images in one pass at 96x96
    monkeypatch.setattr(density, "IMAGE_CHUNK_PIXELS", 2 * SIZE * SIZE)  # a large image's budget, in small
    np.testing.assert_allclose(image_features(works, (SIZE, SIZE)), default, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(image_features(works, (SIZE, SIZE), batch=1), default, rtol=1e-5, atol=1e-6)


def test_the_whole_image_comparison_scores_at_most_its_share_of_held_out_images(tiled_bundle, parts, monkeypatch):
    from monitor.training import image_level

    monkeypatch.setattr(image_level, "COMPARE_IMAGES", 8)
    train, normal, _ = parts
    bundle = load_bundle(tiled_bundle)
    _, _, record = choose_image_level(bundle, (bundle.score_name, bundle.score_params), _works(train, bundle),
                                      normal, np.random.default_rng(1))
    assert len(normal) == 20 and record["whole_normal_images"] == 8
    assert record["whole_image_defects"] == image_level.MIN_DEFECTS


def test_the_whole_image_comparison_runs_on_strips_too_short_for_a_4_px_defect(tiled_bundle, parts):
    """A line camera's 4-px strips: the defects are made as large as the strips allow, not refused."""
    train, normal, _ = parts
    bundle = load_bundle(tiled_bundle)
    strips = [im[40:44] for im in train[:20]]
    _, _, record = choose_image_level(bundle, (bundle.score_name, bundle.score_params), _works(strips, bundle),
                                      [im[40:44] for im in normal], np.random.default_rng(1))
    assert record["whole_image_defects"] == MIN_DEFECTS and record["image_size"] == [4, SIZE]
