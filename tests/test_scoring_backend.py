"""`scoring.backend`: TensorFlow by default; OpenVINO, where chosen, gives TensorFlow's scores (within 1e-5) for
plain and tiled bundles and in the daemon, and leaves a density bundle it cannot convert to TensorFlow; a
backend that is not installed is a config error naming the file and the key, from `monitor check-config` and
`monitor run` alike."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import LARGE_SIZE
from daemon_proc import wait_until
from imagegen import colour_part, colour_stain, normal_image, write_images

from monitor.config import ConfigError, ScoringConfig, check_inputs, load_config, parse_config
from monitor.model.backends import openvino_available, root_logger_kept
from monitor.model.bundle import Bundle, load_bundle
from monitor.model.preprocess import to_model_input
from monitor.model.scorer import BatchScorer
from monitor.modelset import load_models

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "default"
TOLERANCE = 1e-5
MISSING = "scoring.backend: openvino is not installed (pip install -e '.[bench]' or openvino)"

needs_openvino = pytest.mark.skipif(not openvino_available(),
                                    reason="openvino is not installed (optional: the bench extra); CI skips it")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def images(n: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [normal_image(rng, size) for _ in range(n)]
    out[0][size // 4:size // 4 + 4, size // 3:size // 3 + 4] = 255  # one with a defect: a high score too
    return out


def assert_same_scores(tf_scorer: BatchScorer, other: BatchScorer, batch: list[np.ndarray]) -> None:
    a, b = tf_scorer.score(batch), other.score(batch)
    assert np.max(np.abs(a.scores - b.scores)) < TOLERANCE
    for map_a, map_b in zip(a.error_maps, b.error_maps, strict=True):
        assert np.max(np.abs(map_a - map_b)) < TOLERANCE


# --- config --------------------------------------------------------------------------------------
def test_the_default_backend_is_tensorflow(tmp_path):
    config = load_config(write(tmp_path, "sources: [{name: a, folder: in}]\n"))
    assert config.scoring == ScoringConfig(backend="tensorflow", threads=None)


def test_the_shipped_config_lists_every_scoring_key_with_its_default():
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())["scoring"]
    assert set(shipped) == set(ScoringConfig.model_fields)
    assert load_config(REPO / "config.yaml").scoring == ScoringConfig()


def test_an_unknown_backend_names_the_file_and_the_key(tmp_path):
    path = write(tmp_path, "sources: [{name: a, folder: in}]\nscoring: {backend: tensorrt}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: scoring\.backend: "):
        load_config(path)


def test_threads_without_openvino_are_refused_not_ignored(tmp_path):
    path = write(tmp_path, "sources: [{name: a, folder: in}]\nscoring: {threads: 2}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: scoring\.threads: applies to backend openvino only"):
        load_config(path)


@needs_openvino
def test_check_inputs_accepts_openvino_where_it_is_installed(tmp_path):
    path = write(tmp_path, f"model: {SHIPPED}\nsources: [{{name: a, folder: in}}]\n"
                           "scoring: {backend: openvino, threads: 2}\n")
    check_inputs(load_config(path), path)


@pytest.fixture
def without_openvino(tmp_path, subprocess_env) -> dict[str, str]:
    """An environment where `import openvino` fails as it does where it is not installed: a package of that
    name first on the path whose import raises ImportError."""
    shadow = tmp_path / "no_openvino" / "openvino"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named \'openvino\'")\n')
    env = dict(subprocess_env)
    env["PYTHONPATH"] = str(shadow.parent) + ":" + env["PYTHONPATH"]
    return env


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_backend_that_is_not_installed_is_exit_2_and_one_line(tmp_path, without_openvino, command):
    path = write(tmp_path, f"model: {SHIPPED}\nsources: [{{name: a, folder: in}}]\n"
                           "metrics: {enabled: false}\nscoring: {backend: openvino}\n")
    argv = [command, str(path)] if command == "check-config" else [command, "--config", str(path)]
    res = subprocess.run([sys.executable, "-m", "monitor", *argv], capture_output=True, text=True, cwd=tmp_path,
                         env=without_openvino, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [f"error: {path}: {MISSING}"]


# --- the scorer ----------------------------------------------------------------------------------
@needs_openvino
def test_openvino_scores_the_shipped_model_as_tensorflow_does():
    bundle = load_bundle(SHIPPED)
    tf_scorer, ov_scorer = BatchScorer(bundle, 8), BatchScorer(bundle, 8, backend="openvino", threads=2)
    assert ov_scorer.device == "CPU (OpenVINO)"
    # 19 images: two full batches and a padded one.
    assert_same_scores(tf_scorer, ov_scorer, images(19, 64, seed=1))


@needs_openvino
def test_openvino_scores_a_tiled_bundle_as_tensorflow_does(tiled_bundle):
    bundle = load_bundle(tiled_bundle)
    tf_scorer, ov_scorer = BatchScorer(bundle, 8), BatchScorer(bundle, 8, backend="openvino")
    assert_same_scores(tf_scorer, ov_scorer, images(3, LARGE_SIZE, seed=2))


@pytest.fixture
def density_bundle(colour_conv_model, tmp_path) -> Bundle:
    """A bundle with a local density score, whose encoder features (ResizeArea) OpenVINO cannot convert."""
    from monitor.model.density import FeatureGaussian, features_of

    model_bundle, train = colour_conv_model
    meta = json.loads(json.dumps(model_bundle.meta))
    meta["density"] = {"mode": "local", "file": "density.npz", "residual_scale": 0.01, "density_scale": 10.0}
    gaussian = FeatureGaussian.fit(features_of(model_bundle.model, train), "local")
    return Bundle(path=tmp_path, model=model_bundle.model, meta=meta, density=gaussian)


@needs_openvino
def test_a_density_bundle_openvino_cannot_convert_is_scored_by_tensorflow_with_a_warning(density_bundle, caplog):
    bundle = density_bundle
    rng = np.random.default_rng(5)
    batch = [colour_part(rng) for _ in range(6)] + [colour_stain(colour_part(rng), rng) for _ in range(6)]
    inputs = np.stack([to_model_input(i, 32, 32, 3) for i in batch])
    with caplog.at_level("WARNING", logger="monitor.model.scorer"):
        scorer = BatchScorer(bundle, 8, backend="openvino")
    # The encoder features' ResizeArea has no OpenVINO conversion: TensorFlow runs the bundle, and says so.
    (line,) = [r.getMessage() for r in caplog.records if "scoring_backend_fallback" in r.getMessage()]
    assert "backend=openvino running=tensorflow" in line and "ResizeArea" in line
    assert (scorer.backend, scorer.device) == ("tensorflow", BatchScorer(bundle, 8).device)
    expected = BatchScorer(bundle, 8).score_inputs(inputs).scores
    np.testing.assert_array_equal(scorer.score_inputs(inputs).scores, expected)


@needs_openvino
def test_a_conversion_openvino_refuses_leaves_the_daemon_s_logging_as_it_was(density_bundle, caplog):
    # OpenVINO's converter sets the root logger to ERROR and restores it only when it succeeds: the fallback
    # warning, and every line after it, was lost.
    caplog.set_level("INFO")  # the root logger's level, as the daemon's `logging.level` sets it
    BatchScorer(density_bundle, 8, backend="openvino")
    assert logging.getLogger().level == logging.INFO
    assert any("scoring_backend_fallback" in r.getMessage() for r in caplog.records)


def test_the_root_logger_is_restored_however_the_block_ends():
    root = logging.getLogger()
    before = (root.level, list(root.filters), list(root.handlers))
    with pytest.raises(RuntimeError), root_logger_kept():
        root.setLevel(logging.ERROR)
        root.addFilter(logging.Filter("elsewhere"))
        root.addHandler(logging.NullHandler())
        raise RuntimeError("the conversion failed")
    assert (root.level, list(root.filters), list(root.handlers)) == before


@needs_openvino
def test_a_model_loaded_for_another_backend_is_loaded_again(tiny_bundle):
    paths = {"default": tiny_bundle}
    on_tf = load_models(paths, 4)
    assert on_tf["default"].scorer.backend == "tensorflow"
    assert load_models(paths, 4, running=on_tf)["default"] is on_tf["default"]
    on_ov = load_models(paths, 4, running=on_tf, backend="openvino")
    assert on_ov["default"].scorer.device == "CPU (OpenVINO)"


# --- the daemon ----------------------------------------------------------------------------------
def daemon_scores(tmp_path: Path, bundle_path: Path, files: list[Path], scoring: dict) -> dict[str, float]:
    """Scores by file name of an in-process daemon that scored `files` with the `scoring:` section given."""
    from monitor.daemon import Daemon

    config = parse_config({"model": str(bundle_path), "sources": [{"name": "a", "folder": "inbox"}],
                           "metrics": {"enabled": False}, "batching": {"max_batch": 8}, "scoring": scoring},
                          tmp_path / "config.yaml")
    daemon = Daemon(config, load_bundle(bundle_path))
    assert daemon.pipeline.models["default"].scorer.backend == scoring.get("backend", "tensorflow")
    daemon.start()
    try:
        for f in files:
            shutil.copy(f, tmp_path / "inbox" / f.name)
        journal = tmp_path / "var" / "journal.jsonl"

        def verdicts() -> list[dict]:
            lines = journal.read_text().splitlines() if journal.exists() else []
            return [r for r in map(json.loads, lines) if "score" in r]

        wait_until(lambda: len(verdicts()) == len(files), 60)
    finally:
        daemon.stop()
        daemon.wait()
    return {Path(v["path"]).name: v["score"] for v in verdicts()}


@needs_openvino
@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_the_daemon_on_openvino_gives_tensorflows_scores(tmp_path, tiny_bundle, which):
    bundle_path = tiny_bundle if which == "tiny" else SHIPPED
    files = write_images(tmp_path / "samples", images(11, 64, seed=3), prefix="img")
    on_tf = daemon_scores(tmp_path / "tf", bundle_path, files, {})
    on_ov = daemon_scores(tmp_path / "ov", bundle_path, files, {"backend": "openvino", "threads": 2})
    assert set(on_tf) == set(on_ov) == {f.name for f in files}
    assert max(abs(on_tf[n] - on_ov[n]) for n in on_tf) < TOLERANCE
