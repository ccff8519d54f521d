"""The defect network: trained on synthetic defects of some families, judged on families it never saw, saved in
the bundle and joined to the score inside the scorer's forward pass exactly as it was judged."""

import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from imagegen import normal_image

from monitor.cli import main
from monitor.model.bundle import BundleError, bundle_identity, load_bundle, save_bundle
from monitor.model.density import normaliser
from monitor.model.scorer import BatchScorer
from monitor.model.scores import get_score
from monitor.training.defects import FAMILIES, make_defect
from monitor.training.discriminator import (
    HELD_OUT,
    TRAINED_ON,
    build_discriminator,
    cell_targets,
    defect_pairs,
    discriminator_maps,
    train_discriminator,
    training_samples,
)

pytestmark = pytest.mark.slow


def test_a_cell_is_a_defect_when_any_of_its_pixels_changed():
    masks = np.zeros((1, 10, 9), bool)
    masks[0, 5, :] = True  # a 1-px line across the image, in the second row of cells
    cells = cell_targets(masks)
    assert cells.shape == (1, 3, 3, 1)  # ceil(10 / 4) x ceil(9 / 4)
    assert cells[0, :, :, 0].tolist() == [[0, 0, 0], [1, 1, 1], [0, 0, 0]]


def test_the_families_it_is_judged_on_are_never_trained_on():
    assert set(HELD_OUT) <= set(FAMILIES) and not set(HELD_OUT) & set(TRAINED_ON)
    assert set(HELD_OUT) | set(TRAINED_ON) == set(FAMILIES)


def test_training_pairs_leave_normal_inputs_untouched_and_mark_where_a_defect_was_made():
    rng = np.random.default_rng(0)
    x = np.stack([normal_image(rng, 32) for _ in range(40)]).astype(np.float32)[..., None] / 255
    pairs, targets = defect_pairs(x, np.random.default_rng(1), min_px=2)
    changed = np.abs(pairs - x).max(axis=(1, 2, 3)) > 0
    marked = targets.max(axis=(1, 2, 3)) > 0
    assert 10 < changed.sum() < 30  # about half get a defect
    assert np.array_equal(changed, marked)
    assert pairs.min() >= 0 and pairs.max() <= 1


def test_the_network_gives_one_logit_per_four_by_four_cell_of_any_input_size():
    network = build_discriminator(3)
    assert network(np.zeros((2, 64, 64, 3), np.float32)).shape == (2, 16, 16, 1)
    assert network(np.zeros((1, 40, 30, 3), np.float32)).shape == (1, 10, 8, 1)


def test_it_trains_on_as_many_inputs_as_the_autoencoder_within_a_bound_of_pixels():
    assert training_samples(64 * 64, 5_000) == 5_000
    assert training_samples(64 * 64, 10**7) == 32_000
    assert training_samples(128 * 128, 10**7) == 8_000  # four times the pixels: a quarter of the inputs


@pytest.fixture(scope="module")
def texture_network():
    """(a network trained on 32x32 inputs of the test texture, held-out inputs of it)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = np.stack([normal_image(rng, 32) for _ in range(64)]).astype(np.float32)[..., None] / 255
    network = train_discriminator(lambda _: x, 3_000, np.random.default_rng(1), min_px=2)
    test = np.stack([normal_image(rng, 32) for _ in range(30)]).astype(np.float32)[..., None] / 255
    return network, test


def test_a_trained_network_finds_specks_on_a_texture_it_learnt(texture_network):
    network, test = texture_network
    rng = np.random.default_rng(5)
    specks = np.stack([make_defect(im, rng, "speck", min_size_px=3).image for im in test])
    normal_max = discriminator_maps(network, test).max(axis=(1, 2))
    speck_max = discriminator_maps(network, specks).max(axis=(1, 2))
    # AUROC of the network's own score, specks vs the same images without them
    auroc = float((speck_max[:, None] > normal_max[None, :]).mean())
    assert auroc > 0.8, auroc


def test_a_trained_network_reads_held_out_normal_cells_of_a_faint_texture_as_normal():
    # Scored as the daemon scores (inference mode). On a texture of little contrast the first layers' variances
    # are tiny, and BatchNorm's moving statistics, which trail the weights, moved every logit: without the
    # statistics measured again after training, a fifth of these cells read "defect" (mean logit -1.2, not -3.5).
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    def faint(image: np.ndarray) -> np.ndarray:
        return 0.5 + 0.1 * (image.astype(np.float32) / 255 - 0.5)

    x = np.stack([faint(normal_image(rng, 32)) for _ in range(64)])[..., None]
    network = train_discriminator(lambda _: x, 3_000, np.random.default_rng(1), min_px=2)
    cells = discriminator_maps(network, np.stack([faint(normal_image(rng, 32)) for _ in range(30)])[..., None])
    assert (cells < 0).mean() > 0.95 and cells.mean() < -2.5, ((cells < 0).mean(), cells.mean())


@pytest.fixture(scope="module")
def joined_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle scored by residual_max joined with an (untrained) defect network, saved and loaded."""
    source = load_bundle(tiny_bundle)
    meta = json.loads(json.dumps(source.meta))
    meta["score"] = {"name": "residual_max", "params": {"sigma": 2.0}}
    meta["discriminator"] = {"file": "discriminator.keras", "offset": 0.1, "scale": 0.05, "base_offset": 0.001,
                             "base_scale": 0.002}
    keras.utils.set_random_seed(3)
    out = tmp_path_factory.mktemp("joined") / "b"
    save_bundle(out, source.model, meta, discriminator=build_discriminator(1))
    return out


def test_a_saved_network_is_loaded_and_named_in_the_score(joined_bundle):
    bundle = load_bundle(joined_bundle)
    assert (joined_bundle / "discriminator.keras").is_file()
    assert bundle.discriminator is not None and bundle.score_label == "residual_max+discriminator"


def test_the_scorer_joins_the_normalised_maps_as_the_sidecar_says(joined_bundle):
    bundle = load_bundle(joined_bundle)
    rng = np.random.default_rng(5)
    x = np.stack([normal_image(rng, 32) for _ in range(6)]).astype(np.float32)[..., None] / 255
    got = BatchScorer(bundle, max_batch=8).score_inputs(x)
    residual = get_score("residual_max", {"sigma": 2.0}).error_map(tf.constant(x), bundle.model(x)).numpy()
    cells = bundle.discriminator(x, training=False).numpy()
    up = tf.image.resize(cells, (32, 32), method="bilinear").numpy()[..., 0]
    want = np.maximum((residual - 0.001) / 0.002, (up - 0.1) / 0.05)
    np.testing.assert_allclose(np.stack(got.error_maps), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.scores, want.max(axis=(1, 2)), rtol=1e-4, atol=1e-4)


def test_the_network_file_is_part_of_the_bundles_identity(joined_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(joined_bundle, copy)
    before = bundle_identity(copy)
    keras.utils.set_random_seed(4)
    build_discriminator(1).save(copy / "discriminator.keras")
    assert bundle_identity(copy) != before


def test_a_missing_network_file_is_named(joined_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(joined_bundle, copy)
    (copy / "discriminator.keras").unlink()
    with pytest.raises(BundleError, match=r"discriminator\.keras: cannot load the defect network: the file is "
                                          "missing"):
        load_bundle(copy)


def test_a_corrupt_network_file_is_named(joined_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(joined_bundle, copy)
    (copy / "discriminator.keras").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"discriminator\.keras: cannot load the defect network: not a \.keras"):
        load_bundle(copy)


def test_a_mean_score_is_joined_by_its_image_score_and_its_map_shown_beside_the_networks(joined_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(joined_bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["score"] = {"name": "mse", "params": {}}
    meta["discriminator"].update(map_offset=0.002, map_scale=0.004)
    (copy / "bundle.json").write_text(json.dumps(meta))
    bundle = load_bundle(copy)
    x = np.stack([normal_image(np.random.default_rng(6), 32) for _ in range(4)]).astype(np.float32)[..., None] / 255
    got = BatchScorer(bundle, max_batch=4).score_inputs(x)
    squared = np.square(x - bundle.model(x).numpy()).mean(axis=-1)
    up = tf.image.resize(bundle.discriminator(x, training=False).numpy(), (32, 32), method="bilinear").numpy()[..., 0]
    network = (up - 0.1) / 0.05
    np.testing.assert_allclose(got.scores, np.maximum((squared.mean(axis=(1, 2)) - 0.001) / 0.002,
                                                      network.max(axis=(1, 2))), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.stack(got.error_maps), np.maximum((squared - 0.002) / 0.004, network),
                               rtol=1e-4, atol=1e-4)


def test_a_mean_score_without_the_scale_of_its_map_is_refused_naming_the_key(joined_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(joined_bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["score"] = {"name": "mse", "params": {}}
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"bundle\.json: .*discriminator: map_scale is needed to show the map of "
                                          "'mse'"):
        load_bundle(copy)


def test_info_describes_the_joined_network(joined_bundle, capsys):
    assert main(["info", str(joined_bundle)]) == 0
    assert "joined by a defect network (discriminator.keras" in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, normal_dir):
    out = tmp_path_factory.mktemp("auto") / "bundle"
    assert main(["train", str(normal_dir), "--out", str(out), "--epochs", "6", "--seed", "0", "--quiet",
                 "--no-report"]) == 0
    return load_bundle(out)


def test_training_with_no_options_records_the_network_judged_on_families_it_never_saw(trained):
    decision = trained.meta["training"]["selection"]["discriminator"]
    assert decision["judged_on"] == list(HELD_OUT) and decision["trained_on"] == list(TRAINED_ON)
    without, with_ = decision["without"]["unseen"]["auroc"], decision["with"]["unseen"]["auroc"]
    assert decision["used"] == (with_ >= without - 0.005)
    assert set(decision["with"]["unseen"]["per_family"]) <= set(HELD_OUT)
    assert len(decision["calibration_without"]) == trained.meta["training"]["validation_images"]


def test_the_bundle_holds_the_network_exactly_when_it_joined(trained):
    used = trained.meta["training"]["selection"]["discriminator"]["used"]
    assert (trained.path / "discriminator.keras").is_file() == used
    assert (trained.discriminator is not None) == used
    assert trained.score_label.endswith("+discriminator") == used


def test_a_joined_bundle_is_calibrated_with_the_network(trained):
    if trained.discriminator is None:
        pytest.skip("the network was left out on this data")
    x = np.stack([normal_image(np.random.default_rng(9), 32)]).astype(np.float32)[..., None] / 255
    with_it = BatchScorer(trained, max_batch=1).score_inputs(x).scores
    maxima = np.asarray(trained.meta["calibration"]["scores"])
    assert normaliser(maxima)[1] > 0 and np.isfinite(with_it).all()
    assert trained.meta["calibration"]["scores"] != trained.meta["training"]["selection"]["discriminator"][
        "calibration_without"]


def test_no_discriminator_trains_none(normal_dir, tmp_path):
    out = tmp_path / "b"
    assert main(["train", str(normal_dir), "--out", str(out), "--epochs", "4", "--seed", "0", "--quiet",
                 "--no-report", "--no-discriminator"]) == 0
    bundle = load_bundle(out)
    assert "discriminator" not in bundle.meta["training"]["selection"]
    assert bundle.discriminator is None and not (out / "discriminator.keras").exists()


def test_a_given_score_is_joined_only_when_asked(normal_dir, tmp_path):
    plain, asked = tmp_path / "plain", tmp_path / "asked"
    for out, extra in ((plain, []), (asked, ["--discriminator"])):
        assert main(["train", str(normal_dir), "--out", str(out), "--epochs", "4", "--seed", "0", "--quiet",
                     "--no-report", "--architecture", "seed", "--score", "mse", *extra]) == 0
    assert "discriminator" not in load_bundle(plain).meta["training"]
    decision = load_bundle(asked).meta["training"]["discriminator"]
    assert decision["judged_on"] == list(HELD_OUT) and isinstance(decision["used"], bool)
    assert (asked / "discriminator.keras").is_file() == decision["used"]


def test_a_tiled_bundle_joins_the_network_in_every_tile_and_scores_its_worst(tiled_bundle, tmp_path):
    from monitor.model.preprocess import to_working_image
    from monitor.model.tiling import split, tile_grid

    source = load_bundle(tiled_bundle)
    meta = json.loads(json.dumps(source.meta))
    meta["score"] = {"name": "residual_max", "params": {"sigma": 2.0}}
    meta["discriminator"] = {"offset": 0.1, "scale": 0.05, "base_offset": 0.001, "base_scale": 0.002}
    keras.utils.set_random_seed(3)
    bundle = save_bundle(tmp_path / "b", source.model, meta, discriminator=build_discriminator(1))
    scorer = BatchScorer(load_bundle(bundle.path), max_batch=8)
    image = normal_image(np.random.default_rng(2), 256)
    work = to_working_image(image, bundle.tiling.scale, bundle.channels)
    tiles = split(work, tile_grid(*work.shape[:2], (bundle.height, bundle.width), bundle.tile_stride))
    per_tile = scorer.score_inputs(tiles).scores
    assert scorer.score([image]).scores[0] == pytest.approx(per_tile.max(), rel=1e-5)
    assert scorer.score([image]).error_maps[0].shape == work.shape[:2]


def test_the_report_says_the_network_joined_and_by_which_rule(joined_bundle):
    from monitor.training.report import settings_summary

    meta = json.loads((joined_bundle / "bundle.json").read_text())
    meta["training"]["discriminator"] = {"used": True, "rule": "joins when ..."}
    text = settings_summary(meta)
    assert "defect net   a network trained on synthetic defects joined to the score" in text
    assert "defect network: joined: joins when ..." in text
