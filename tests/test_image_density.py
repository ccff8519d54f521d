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


@pytest.fixture(scope="module")
def speck_network(parts):
    """A defect network trained briefly on 32x32 crops of the parts (specks, lines, pasted patches, blurs)."""
    from monitor.training.discriminator import train_discriminator

    train, _, _ = parts
    crops = np.stack([im[y:y + 32, x:x + 32] for im in train for y, x in ((0, 0), (32, 48), (64, 16))])
    x = crops.astype(np.float32)[..., None] / 255
    return train_discriminator(lambda _: x, 1_500, np.random.default_rng(2), min_px=2)


def test_a_defect_network_joins_a_whole_image_density_on_the_whole_working_image(image_density_bundle, parts,
                                                                                  speck_network, tmp_path):
    from monitor.model.scorer import image_defect_maps

    bundle, _, gaussian, _ = image_density_bundle
    _, normal, anomalous = parts
    meta = dict(bundle.meta)
    meta["discriminator"] = {"file": "discriminator.keras", "offset": 0.5, "scale": 2.0}
    joined = load_bundle(save_bundle(tmp_path / "b", bundle.model, meta, density=gaussian,
                                     discriminator=speck_network).path)
    images = normal[:3] + anomalous[:3]
    density_maps = BatchScorer(bundle, 16).score(images).error_maps
    # the network sees each whole working image once, not tile by tile
    found = image_defect_maps(joined.discriminator, _works(images, joined), (0.5, 2.0))
    scored = BatchScorer(joined, 16).score(images)
    for got, d, f in zip(scored.error_maps, density_maps, found, strict=True):
        assert got.shape == f.shape == (SIZE, SIZE)
        np.testing.assert_allclose(got, np.maximum(d, f), atol=1e-4)
    np.testing.assert_allclose(scored.scores, [m.max() for m in scored.error_maps], atol=1e-6)
    assert joined.score_label.endswith("+discriminator")


def test_info_says_the_network_runs_on_the_whole_working_image(image_density_bundle, speck_network, tmp_path,
                                                                 capsys):
    from monitor.cli import main

    bundle, _, gaussian, _ = image_density_bundle
    meta = dict(bundle.meta)
    meta["discriminator"] = {"file": "discriminator.keras", "offset": 0.5, "scale": 2.0}
    save_bundle(tmp_path / "b", bundle.model, meta, density=gaussian, discriminator=speck_network)
    assert main(["info", str(tmp_path / "b")]) == 0
    assert "logits per 4x4 cell of the whole working image" in capsys.readouterr().out


def test_the_network_maps_each_whole_working_image_at_its_own_size(speck_network, parts):
    from monitor.model.scorer import image_defect_maps

    train, _, _ = parts
    works = [train[0][..., None].astype(np.float32) / 255, train[1][:64, :80, None].astype(np.float32) / 255,
             train[2][..., None].astype(np.float32) / 255]
    together = image_defect_maps(speck_network, works, (0.0, 1.0))
    assert [m.shape for m in together] == [(SIZE, SIZE), (64, 80), (SIZE, SIZE)]
    for work, m in zip(works, together, strict=True):  # sharing a call with images of its shape changes nothing
        np.testing.assert_allclose(image_defect_maps(speck_network, [work], (0.0, 1.0))[0], m, atol=1e-5)


def test_the_network_joins_a_whole_image_density_only_when_judged_on_whole_images(image_density_bundle, parts,
                                                                                  speck_network):
    from monitor.training.discriminator import HELD_OUT, judge

    bundle, _, _, _ = image_density_bundle
    _, normal, _ = parts
    section, record = judge(bundle, speck_network, normal, 4, np.random.default_rng(3), 40, 0.99, 0.005)
    assert record["whole_images"] and record["normal_inputs"] == len(normal)
    assert set(record["with"]["unseen"]["per_family"]) <= set(HELD_OUT)
    with_, without = record["with"]["unseen"]["auroc"], record["without"]["unseen"]["auroc"]
    assert record["used"] == (with_ >= without - 0.005) == (section is not None)
    if section is not None:  # the density's map is normalised already
        assert section["base_scale"] is None and section["scale"] > 0


def test_training_judges_a_network_for_a_whole_image_density_on_whole_held_out_images(image_density_bundle,
                                                                                      parts):
    from monitor.training.train import TrainOptions, _with_discriminator

    bundle, _, _, _ = image_density_bundle
    train, normal, _ = parts
    crops = np.stack([im[y:y + 32, x:x + 32] for im in train for y, x in ((0, 0), (40, 40))])
    tiles = crops.astype(np.float32)[..., None] / 255
    options = TrainOptions(scale=1.0, tile=(32, 32), epochs=10, quiet=True, report=False)
    joined, record = _with_discriminator(bundle, tiles, tiles[:20], options, normal, np.random.default_rng(4),
                                         None)
    assert record["whole_images"] and record["normal_inputs"] == len(normal)
    assert (joined.discriminator is not None) == record["used"]
    if record["used"]:  # calibrated again, on the whole held-out images, with the network
        assert joined.meta["calibration"]["scores"] != record["calibration_without"]
    else:
        assert joined is bundle


def test_the_network_takes_whole_images_in_calls_of_bounded_pixels(speck_network, parts, monkeypatch):
    from monitor.model import density, scorer

    calls = []

    def network(x, training):
        calls.append(tuple(x.shape))
        return speck_network(x, training=training)

    works = [im[..., None].astype(np.float32) / 255 for im in parts[0][:7]]
    monkeypatch.setattr(density, "IMAGE_CHUNK_PIXELS", 3 * SIZE * SIZE)  # a large image's budget, in small
    maps = scorer.image_defect_maps(network, works, (0.0, 1.0))
    assert [c[0] for c in calls] == [3, 3, 1]
    np.testing.assert_allclose(np.stack(maps), np.stack(scorer.image_defect_maps(speck_network, works, (0.0, 1.0),
                                                                                  batch=1)), atol=1e-5)
