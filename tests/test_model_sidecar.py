"""The bundle sidecar schema: what scoring needs is checked, errors name the file and the key, one line."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.model.bundle import META_FILE, Bundle, BundleError, BundleMeta, load_bundle, parse_meta

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "default"


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _edit_meta(path: Path, change: Callable[[dict], object]) -> None:
    meta = json.loads((path / META_FILE).read_text())
    change(meta)
    (path / META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(("change", "key", "message"), [
    (lambda m: m["input"].update(channels=2), "input.channels", "must be 1 or 3, got 2"),
    (lambda m: m["input"].update(height=0), "input.height", "greater than 0"),
    (lambda m: m["input"].update(width=32.5), "input.width", "valid integer"),
    (lambda m: m["threshold"].update(quantile=1.5), "threshold.quantile", "less than 1"),
    (lambda m: m["threshold"].update(margin=0), "threshold.margin", "greater than 0"),
    (lambda m: m["calibration"].update(scores=[0.1, math.nan, 0.2]), r"calibration.scores\[1\]", "finite number"),
    (lambda m: m["calibration"].update(scores=[]), "calibration.scores", "at least 1 item"),
    (lambda m: m["calibration"].update(scores=[0.1, "x"]), r"calibration.scores\[1\]", "valid number"),
    (lambda m: m["score"].update(name="psychic"), "score.name", "unknown score name 'psychic' \\(known: mse,"),
    (lambda m: m["score"].update(params=[2.0]), "score.params", "mapping"),
    (lambda m: m["score"].update(sigma=2.0), "score.sigma", "unknown key"),
    (lambda m: m.pop("threshold"), "threshold", "Field required"),
    (lambda m: m.update(format_version=2), "format_version", "newer than this monitor reads"),
    (lambda m: m.update(model_file="../other.keras"), "model_file", "a file name inside the bundle folder"),
])
def test_a_bad_sidecar_is_refused_naming_the_file_and_the_key(bundle_copy: Path, change, key: str,  # noqa: ANN001
                                                              message: str) -> None:
    _edit_meta(bundle_copy, change)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    text = str(info.value)
    assert "\n" not in text
    prefix = f"{bundle_copy / META_FILE}: "
    assert text.startswith(prefix), text
    assert re.match(f"{key}: .*{message}", text[len(prefix):]), text


def test_every_problem_is_on_the_one_line(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: (m["input"].update(channels=2), m["threshold"].update(quantile=0)))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    text = str(info.value)
    assert "\n" not in text and "input.channels: " in text and "; threshold.quantile: " in text


def test_unknown_informational_keys_are_kept_not_refused(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: (m.update(provenance={"camera": "line 1"}),
                                       m["input"].update(lens="50mm"), m["calibration"].update(note="x")))
    bundle = load_bundle(bundle_copy)
    assert bundle.meta["provenance"] == {"camera": "line 1"} and bundle.height == 32


def test_a_sidecar_without_score_means_mse(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: m.pop("score"))
    bundle = load_bundle(bundle_copy)
    assert (bundle.score_name, bundle.score_params) == ("mse", {})


def test_a_bundle_built_in_memory_is_validated_too(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    meta = {**bundle.meta, "threshold": {"quantile": 1.5}}
    with pytest.raises(BundleError, match=r"bundle.json: threshold.quantile: "):
        Bundle(bundle.path, bundle.model, meta)


def test_the_shipped_model_loads_and_its_sidecar_says_what_scoring_needs() -> None:
    meta = parse_meta(json.loads((SHIPPED / META_FILE).read_text()), SHIPPED / META_FILE)
    assert isinstance(meta, BundleMeta)
    assert (meta.input.height, meta.input.width, meta.input.channels) == (64, 64, 1)
    assert meta.score.name == "smooth_quantile" and meta.threshold.quantile == 0.99
    bundle = load_bundle(SHIPPED)
    assert (bundle.height, bundle.width, bundle.channels, bundle.score_name) == (64, 64, 1, "smooth_quantile")
    assert bundle.default_threshold == pytest.approx(bundle.meta["threshold"]["value"], rel=1e-12)
    assert len(bundle.calibration_scores) == bundle.meta["calibration"]["count"]
