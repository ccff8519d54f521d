"""The model bundle: a folder with the Keras model (``model.keras``) and a JSON sidecar (``bundle.json``).

The sidecar says how to feed the model (input size, channels, preprocessing), how to score (score name
and parameters), where the threshold starts (calibration scores from validation images, quantile,
margin), what it was trained on and with which library versions. The default threshold is always
``margin * numpy.quantile(calibration_scores, quantile)`` (linear interpolation): the same rule the
daemon's rolling threshold uses, warm-started from the same scores.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.model.scores import SCORE_NAMES, ScoreFunction, get_score

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
META_FILE = "bundle.json"
FORMAT = "anomaly-monitor-bundle"
FORMAT_VERSION = 1


class BundleError(Exception):
    """A bundle that cannot be used; the message (one line) says what is wrong."""


def default_threshold(calibration_scores: np.ndarray, quantile: float, margin: float = 1.0) -> float:
    """margin * the q-quantile (numpy linear interpolation) of the calibration scores."""
    return float(margin * np.quantile(np.asarray(calibration_scores, np.float64), quantile))


@dataclass
class Bundle:
    """A loaded bundle: the Keras model and its sidecar metadata."""

    path: Path
    model: Any  # keras.Model (kept untyped so this module imports without Keras)
    meta: dict

    @property
    def height(self) -> int:
        return int(self.meta["input"]["height"])

    @property
    def width(self) -> int:
        return int(self.meta["input"]["width"])

    @property
    def channels(self) -> int:
        return int(self.meta["input"]["channels"])

    @property
    def score_name(self) -> str:
        return str(self.meta.get("score", {}).get("name", "mse"))

    @property
    def score_params(self) -> dict:
        return dict(self.meta.get("score", {}).get("params", {}))

    def score_function(self) -> ScoreFunction:
        """The score this bundle was calibrated with."""
        return get_score(self.score_name, self.score_params)

    @property
    def calibration_scores(self) -> np.ndarray:
        return np.asarray(self.meta["calibration"]["scores"], dtype=np.float64)

    @property
    def threshold_quantile(self) -> float:
        return float(self.meta["threshold"]["quantile"])

    @property
    def threshold_margin(self) -> float:
        return float(self.meta["threshold"].get("margin", 1.0))

    @property
    def default_threshold(self) -> float:
        return default_threshold(self.calibration_scores, self.threshold_quantile, self.threshold_margin)

    def describe(self) -> str:
        """One line for logs: size, channels, score, threshold."""
        return (f"bundle={self.path} input={self.height}x{self.width}x{self.channels} "
                f"score={self.score_name} "
                f"quantile={self.threshold_quantile} margin={self.threshold_margin} "
                f"threshold={self.default_threshold:.6g}")


def _read_meta(path: Path) -> dict:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"{path}: not a model bundle: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta_path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") \
            from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: must hold a JSON object")
    return meta


def validate_meta(meta: dict, where: str) -> None:
    """Raise BundleError (naming `where` and the key) unless the sidecar has everything scoring needs."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise BundleError(f"{where}: {msg}")

    inp = meta.get("input")
    need(isinstance(inp, dict), "'input' is missing")
    for key in ("height", "width", "channels"):
        need(isinstance(inp.get(key), int) and inp[key] > 0, f"input.{key} must be a positive integer")
    need(inp["channels"] in (1, 3), f"input.channels must be 1 or 3, got {inp['channels']}")
    score = meta.get("score", {"name": "mse"})
    need(isinstance(score, dict) and isinstance(score.get("name", "mse"), str),
         "'score' must be {name, params}")
    name = score.get("name", "mse")
    need(name in SCORE_NAMES, f"unknown score name {name!r} (known: {', '.join(SCORE_NAMES)})")
    need(isinstance(score.get("params", {}), dict), "score.params must be an object")
    cal = meta.get("calibration")
    need(isinstance(cal, dict) and isinstance(cal.get("scores"), list) and len(cal["scores"]) > 0,
         "calibration.scores must be a non-empty list of numbers")
    try:
        values = np.asarray(cal["scores"], dtype=np.float64)
    except (TypeError, ValueError):
        raise BundleError(f"{where}: calibration.scores must be numbers") from None
    need(values.ndim == 1 and bool(np.all(np.isfinite(values))), "calibration.scores must be finite numbers")
    thr = meta.get("threshold")
    need(isinstance(thr, dict), "'threshold' is missing")
    q = thr.get("quantile")
    need(isinstance(q, int | float) and 0 < q < 1, f"threshold.quantile must be in (0, 1), got {q!r}")
    m = thr.get("margin", 1.0)
    need(isinstance(m, int | float) and m > 0, f"threshold.margin must be positive, got {m!r}")


def load_bundle(path: str | Path) -> Bundle:
    """Load and check a bundle folder (Keras safe mode on); BundleError says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: model bundle folder does not exist")
    if not path.is_dir():
        raise BundleError(f"{path}: a model bundle is a folder, this is a file")
    meta = _read_meta(path)
    validate_meta(meta, str(path / META_FILE))
    model_path = path / meta.get("model_file", MODEL_FILE)
    if not model_path.is_file():
        raise BundleError(f"{path}: model file {model_path.name} is missing")
    import keras  # late: reading a sidecar must not pay for TensorFlow

    try:
        model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a corrupt or unsafe file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{model_path}: cannot load the Keras model: {first}") from None
    want = (meta["input"]["height"], meta["input"]["width"], meta["input"]["channels"])
    shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if shape != want:
        raise BundleError(f"{path}: model input shape {shape} does not match the sidecar's input "
                          f"{want[0]}x{want[1]}x{want[2]}")
    out_shape = tuple(model.output_shape[1:]) if not isinstance(model.output_shape, list) else None
    if out_shape != want:
        raise BundleError(f"{path}: model output shape {out_shape} is not a reconstruction of its "
                          f"input {want}")
    bundle = Bundle(path=path, model=model, meta=meta)
    log.info("bundle_loaded %s", bundle.describe())
    return bundle


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers."""
    import cv2
    import keras
    import tensorflow as tf

    import monitor

    return {"monitor": monitor.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _inference_copy(model: Any) -> Any:
    """The model without its optimizer state (a third of the file, useless for scoring)."""
    import keras

    if getattr(model, "optimizer", None) is None:
        return model
    copy = keras.Model.from_config(model.get_config())  # clone_model would carry the optimizer along
    copy.set_weights(model.get_weights())
    return copy


def save_bundle(path: str | Path, model: Any, meta: dict) -> Bundle:
    """Write model.keras and bundle.json into `path` (each to a temp file, then renamed into place)."""
    path = Path(path)
    meta = dict(meta)
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta["model_file"] = MODEL_FILE
    validate_meta(json.loads(json.dumps(meta, default=_json_default)), str(path / META_FILE))
    thr = meta["threshold"]
    thr["value"] = default_threshold(np.asarray(meta["calibration"]["scores"]), thr["quantile"],
                                     thr.get("margin", 1.0))
    meta.setdefault("versions", library_versions())
    path.mkdir(parents=True, exist_ok=True)
    # The model first, the sidecar last: a folder with a sidecar always has the matching model.
    tmp_dir = Path(tempfile.mkdtemp(prefix=".saving-", dir=path))
    try:
        tmp_model = tmp_dir / MODEL_FILE  # Keras insists on the .keras suffix
        _inference_copy(model).save(tmp_model)
        os.replace(tmp_model, path / MODEL_FILE)
        tmp_meta = tmp_dir / META_FILE
        tmp_meta.write_text(json.dumps(meta, indent=2, default=_json_default) + "\n", encoding="utf-8")
        os.replace(tmp_meta, path / META_FILE)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return Bundle(path=path, model=model, meta=json.loads(json.dumps(meta, default=_json_default)))
