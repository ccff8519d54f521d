"""Class 8 of issue 11: bundles with wrong types or absurd values are refused in one line, exit 2.

Each case edits a copy of the shipped models/default: a real bundle, no training needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.model.bundle import META_FILE, MODEL_FILE, BundleError, load_bundle

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "default"


@pytest.fixture()
def bundle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(SHIPPED, dst, ignore=shutil.ignore_patterns("report"))
    return dst


def _edit(path: Path, change: Callable[[dict], object]) -> None:
    meta = json.loads((path / META_FILE).read_text())
    change(meta)
    (path / META_FILE).write_text(json.dumps(meta))


def _scale_scores(meta: dict, factor: float) -> None:
    meta["calibration"]["scores"] = [s * factor for s in meta["calibration"]["scores"]]


@pytest.mark.parametrize(("change", "key"), [
    (lambda m: m["threshold"].update(margin=1e300), "threshold.margin"),
    (lambda m: m["threshold"].update(margin=101.0), "threshold.margin"),
    (lambda m: _scale_scores(m, 1e300), "threshold"),  # finite scores, an infinite threshold
    (lambda m: _scale_scores(m, 1e9), "threshold"),  # above any score of inputs in [0, 1]
    (lambda m: (_scale_scores(m, 1e8), m["threshold"].update(margin=50.0)), "threshold"),
    (lambda m: m["input"].update(height="64"), "input.height"),
    (lambda m: m["threshold"].update(quantile="0.99"), "threshold.quantile"),
    (lambda m: m["threshold"].update(margin=True), "threshold.margin"),
    (lambda m: m["calibration"].update(scores="0.1, 0.2"), "calibration.scores"),
    (lambda m: m["score"]["params"].update(sigma="2"), "score.params"),
    (lambda m: m["score"]["params"].update(sigma=1e300), "score.params"),
    (lambda m: m["score"]["params"].update(q=5), "score.params"),
    (lambda m: m.update(input=[64, 64, 1]), "input"),
    (lambda m: m.update(calibration=None), "calibration"),
    (lambda m: m.update(tiling={"scale": "half"}), "tiling.scale"),
    (lambda m: m.update(density={"mode": "shared", "residual_scale": -1, "density_scale": 1}),
     "density.residual_scale"),
    (lambda m: m["input"].update({"evil\nkey": 1}) or m.update({"bad\nkey": 1, "input": {"height": "x\ny"}}),
     "input"),
])
def test_a_sidecar_with_wrong_types_or_absurd_values_is_one_line(bundle_copy: Path, change, key: str) -> None:  # noqa: ANN001
    _edit(bundle_copy, change)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{bundle_copy / META_FILE}: {key}"), message


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2, 3]", "must hold a JSON object"),
    ('"bundle"', "must hold a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"format_version": ' + "1" * 5000 + "}", "not valid JSON"),
    ('{"input": ', "not valid JSON (line 1"),
])
def test_a_sidecar_that_is_not_an_object_is_one_line(bundle_copy: Path, text: str, message: str) -> None:
    (bundle_copy / META_FILE).write_text(text)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{bundle_copy / META_FILE}: ") and message in str(info.value)


def test_a_truncated_model_is_a_load_error_not_file_not_found(bundle_copy: Path) -> None:
    model = bundle_copy / MODEL_FILE
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    message = str(info.value)
    assert message.startswith(f"{model}: cannot load the Keras model: "), message
    assert "not found" not in message.lower() and "\n" not in message


def test_a_zip_that_is_no_keras_model_is_a_load_error(bundle_copy: Path) -> None:
    import zipfile

    model = bundle_copy / MODEL_FILE
    model.unlink()
    with zipfile.ZipFile(model, "w") as z:
        z.writestr("readme.txt", "not a model")
    with pytest.raises(BundleError, match="cannot load the Keras model: ") as info:
        load_bundle(bundle_copy)
    assert "\n" not in str(info.value) and "file not found" not in str(info.value).lower()


def test_the_shipped_bundle_passes_the_new_checks() -> None:
    from monitor.model.bundle import parse_meta

    sidecar = parse_meta(json.loads((SHIPPED / META_FILE).read_text()), SHIPPED / META_FILE)
    assert sidecar.threshold.margin <= 100


@pytest.mark.slow
def test_monitor_run_refuses_an_absurd_bundle_with_exit_2(bundle_copy: Path, tmp_path: Path,
                                                          subprocess_env: dict) -> None:
    _edit(bundle_copy, lambda m: m["threshold"].update(margin=1e300))
    config = tmp_path / "conf.yaml"
    config.write_text(f"model: {bundle_copy}\nsources: [{{name: a, folder: in}}]\nmetrics: {{enabled: false}}\n")
    res = subprocess.run([sys.executable, "-m", "monitor", "run", "--config", str(config)], capture_output=True,
                         text=True, cwd=tmp_path, env=subprocess_env, timeout=180)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    # The config key that names the bundle, then the bundle's file and key (checked before TensorFlow loads).
    assert len(errors) == 1 and errors[0].startswith(
        f"error: {config}: model: {bundle_copy / META_FILE}: threshold.margin: "), errors
