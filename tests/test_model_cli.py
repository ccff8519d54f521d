"""`monitor score`, `monitor info` and `monitor train` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from imagegen import anomalous_image, normal_image, write_images

from monitor.cli import main
from monitor.model.bundle import load_bundle
from monitor.model.scorer import BatchScorer


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(99)
    folder = tmp_path_factory.mktemp("mixed")
    write_images(folder / "good", [normal_image(rng, 32) for _ in range(3)], prefix="n")
    write_images(folder / "bad", [anomalous_image(rng, 32) for _ in range(3)], prefix="a")
    return folder


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_score_json_prints_one_object_per_image(tiny_bundle, mixed_dir, capsys) -> None:  # noqa: ANN001
    assert main(["score", str(tiny_bundle), str(mixed_dir), "--json"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert len(rows) == 6
    assert all(set(r) == {"path", "score", "threshold", "anomaly"} for r in rows)
    threshold = load_bundle(tiny_bundle).default_threshold
    assert all(r["threshold"] == threshold and r["anomaly"] == (r["score"] > threshold) for r in rows)
    assert all(r["anomaly"] for r in rows if "/bad/" in r["path"])


def test_score_json_matches_the_scorer(tiny_bundle, mixed_dir, capsys) -> None:  # noqa: ANN001
    import cv2

    files = sorted((mixed_dir / "good").glob("*.png"))
    assert main(["score", str(tiny_bundle), *map(str, files), "--json"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    expected = BatchScorer(load_bundle(tiny_bundle), 8).score(
        [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]).scores
    np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-5)
    assert [r["path"] for r in rows] == [str(f) for f in files]


def test_score_with_a_bad_bundle_exits_2_with_one_line(tmp_path, mixed_dir, capsys) -> None:  # noqa: ANN001
    assert main(["score", str(tmp_path / "missing"), str(mixed_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does not exist" in err and "\n" not in err


def test_score_reports_unreadable_files_and_scores_the_rest(tiny_bundle, mixed_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    good = next((mixed_dir / "good").glob("*.png"))
    assert main(["score", str(tiny_bundle), str(broken), str(good), "--json"]) == 2
    captured = capsys.readouterr()
    assert len(_json_lines(captured.out)) == 1
    assert "broken.png: not a readable image" in captured.err


def test_score_names_why_a_float_image_with_nan_pixels_is_not_scored(tiny_bundle, tmp_path, capsys) -> None:  # noqa: ANN001
    pixels = np.full((32, 32), 0.5, np.float32)
    pixels[4:8, 4:8] = np.nan  # a 3D sensor's missing points: the score would be NaN, which no threshold flags
    ok, buf = cv2.imencode(".tif", pixels)
    (tmp_path / "holes.tif").write_bytes(buf.tobytes())
    assert main(["score", str(tiny_bundle), str(tmp_path / "holes.tif"), "--json"]) == 2
    captured = capsys.readouterr()
    assert _json_lines(captured.out) == []
    assert "holes.tif: not a readable image (16 of 1024 float pixel values are NaN or infinite" in captured.err


def test_info_prints_input_score_and_threshold(tiny_bundle, capsys) -> None:  # noqa: ANN001
    assert main(["info", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "32x32x1" in out and "score       mse" in out and "threshold" in out and "tensorflow" in out


def test_score_runs_as_a_console_command(tiny_bundle, mixed_dir, subprocess_env) -> None:  # noqa: ANN001
    proc = subprocess.run([sys.executable, "-m", "monitor", "score", str(tiny_bundle), str(mixed_dir / "bad"),
                           "--json"], capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [r["anomaly"] for r in _json_lines(proc.stdout)] == [True, True, True]
    assert "oneDNN" not in proc.stderr and "I0000" not in proc.stderr  # TensorFlow's start-up noise is silenced
    assert "cuInit" not in proc.stderr  # nor its CUDA probe on a machine without a GPU
