"""`monitor train DIR` with no options: settings chosen from the data, candidates trained, the score chosen on
synthetic defects, a degenerate model refused; and a bundle with the combined score scores as it was chosen."""

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from imagegen import colour_part, colour_stain

from monitor.cli import main
from monitor.model.bundle import META_FILE, Bundle, load_bundle, save_bundle
from monitor.model.preprocess import to_model_input
from monitor.model.scorer import BatchScorer
from monitor.training.select import rank_scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, normal_dir):
    """`monitor train` with nothing but a short run: everything else is chosen. (bundle folder, progress lines)"""
    out = tmp_path_factory.mktemp("auto") / "bundle"
    progress = io.StringIO()
    with contextlib.redirect_stderr(progress):
        assert main(["train", str(normal_dir), "--out", str(out), "--epochs", "8", "--seed", "0"]) == 0
    return out, progress.getvalue().splitlines()


@pytest.fixture(scope="module")
def auto_bundle(auto_run):
    return auto_run[0]


def test_progress_says_what_is_being_chosen_before_the_candidates_are_scored(auto_run):
    lines = auto_run[1]
    start = next(i for i, line in enumerate(lines) if line.startswith("choosing the score: "))
    assert "held-out images and" in lines[start] and "synthetic defects" in lines[start]
    first_candidate = next(i for i, line in enumerate(lines) if line.startswith("candidate "))
    last_epoch = max(i for i, line in enumerate(lines) if line.startswith("epoch "))
    assert last_epoch < start < first_candidate  # said after training, before the scoring it announces


def test_settings_not_given_are_chosen_from_the_data_with_reasons(auto_bundle):
    training = load_bundle(auto_bundle).meta["training"]
    chosen = training["auto"]
    assert chosen["settings"]["channels"] == 1 and chosen["settings"]["size"] == [32, 32]
    assert "epochs" not in chosen["settings"]  # given: the flag wins
    assert set(chosen["settings"]) <= set(chosen["reasons"])
    assert training["options"]["batch_size"] == chosen["settings"]["batch_size"]


def test_both_architectures_are_tried_and_the_choice_is_recorded(auto_bundle):
    selection = load_bundle(auto_bundle).meta["training"]["selection"]
    tried = {t["architecture"] for t in selection["trials"]}
    assert tried == {"seed", "conv"}
    assert selection["trials"][0]["label"] == selection["chosen"]
    assert 0 <= selection["expected_detection_rate"] <= 1 and selection["synthetic_defects"] >= 120


def test_the_chosen_score_is_the_bundles_and_its_threshold_is_calibrated_with_it(auto_bundle):
    bundle = load_bundle(auto_bundle)
    best = bundle.meta["training"]["selection"]["trials"][0]
    assert bundle.score_name == best["score"]
    assert (bundle.sidecar.density is None) == (best["density"] is None)
    assert (auto_bundle / "density.npz").exists() == (best["density"] is not None)


def test_info_says_what_was_chosen_and_why(auto_bundle, capsys):
    assert main(["info", str(auto_bundle)]) == 0
    out = capsys.readouterr().out
    assert "chosen      batch_size:" in out and "selection   " in out and "expected detection rate" in out


def test_a_given_architecture_and_score_are_kept(normal_dir, tmp_path):
    out = tmp_path / "b"
    assert main(["train", str(normal_dir), "--out", str(out), "--epochs", "6", "--architecture", "seed",
                 "--score", "mae", "--quiet", "--no-report"]) == 0
    bundle = load_bundle(out)
    assert bundle.meta["architecture"]["name"] == "seed" and bundle.score_name == "mae"
    assert bundle.sidecar.density is None
    assert "selection" not in bundle.meta["training"]


def test_a_degenerate_model_is_refused_saying_why(normal_dir, tmp_path, capsys):
    out = tmp_path / "broken"
    code = main(["train", str(normal_dir), "--out", str(out), "--no-auto", "--size", "32", "--epochs", "2",
                 "--learning-rate", "50", "--quiet", "--no-report"])
    assert code == 2
    assert "degenerate" in capsys.readouterr().err
    assert not (out / META_FILE).exists()


def test_a_combined_bundle_scores_exactly_as_it_was_chosen_and_survives_saving(colour_conv_model, tmp_path):
    bundle, train = colour_conv_model
    rng = np.random.default_rng(4)
    normal = np.stack([to_model_input(colour_part(rng), 32, 32, 3) for _ in range(40)])
    stains = np.stack([to_model_input(colour_stain(colour_part(rng), rng), 32, 32, 3) for _ in range(40)])
    best = next(t for t in rank_scores(bundle.model, train, normal, stains, ["stain"] * 40, 0.99) if t.density)
    meta = json.loads(json.dumps(bundle.meta))
    meta["score"] = {"name": best.score, "params": best.params}
    meta["density"] = {"mode": best.density, "file": "density.npz", **best.scales}
    combined = Bundle(path=tmp_path, model=bundle.model, meta=meta, density=best.gaussian)
    scored = BatchScorer(combined, 16).score_inputs(stains)
    np.testing.assert_allclose(scored.scores, scored.error_maps.reshape(40, -1).max(axis=1), rtol=1e-6)
    save_bundle(tmp_path / "saved", bundle.model, meta, density=best.gaussian)
    again = BatchScorer(load_bundle(tmp_path / "saved"), 16).score_inputs(stains)
    np.testing.assert_allclose(again.scores, scored.scores, rtol=1e-5)


def test_a_sidecar_naming_a_density_that_is_missing_is_refused(auto_bundle, tmp_path):
    import shutil

    from monitor.model.bundle import BundleError

    copy = shutil.copytree(auto_bundle, tmp_path / "copy")
    meta = json.loads((copy / META_FILE).read_text())
    meta["density"] = {"mode": "shared", "file": "gone.npz", "residual_scale": 1.0, "density_scale": 1.0}
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="gone.npz: cannot load the density parameters"):
        load_bundle(copy)


def test_the_report_lists_every_candidate_and_the_choice(auto_bundle):
    text = (auto_bundle / "report" / "settings.txt").read_text()
    chosen = load_bundle(auto_bundle).meta["training"]["selection"]["chosen"]
    assert f"synthetic defects: {chosen}" in text
    assert text.count("AUROC") >= 10 and "chosen from the data:" in text


def test_strips_narrower_than_a_tile_train_both_candidates_on_their_own_tile(tmp_path):
    # A line-scan strip 24 px tall: the chosen tile is 24x64, which no candidate may replace by the 64x64 default.
    rng = np.random.default_rng(4)
    folder = tmp_path / "strips"
    folder.mkdir()
    for i in range(30):
        strip = 120 + 40 * np.sin(np.arange(200) / 6.0)[None, :] + rng.normal(0, 3, (24, 200))
        assert cv2.imwrite(str(folder / f"{i:02d}.png"), np.clip(strip, 0, 255).astype(np.uint8))
    out = tmp_path / "bundle"
    assert main(["train", str(folder), "--out", str(out), "--epochs", "2", "--seed", "0", "--quiet", "--no-report",
                 "--allow-degenerate"]) == 0
    bundle = load_bundle(out)
    assert (bundle.height, bundle.width) == (24, 64) and bundle.tiling is not None
    assert {t["architecture"] for t in bundle.meta["training"]["selection"]["trials"]} == {"seed", "conv"}
