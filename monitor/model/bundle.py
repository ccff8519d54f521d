"""The model bundle: a folder with the Keras model (``model.keras``) and a JSON sidecar (``bundle.json``).

The sidecar says how to feed the model (input size, channels, preprocessing), how to score (score name
and parameters), where the threshold starts (calibration scores from validation images, quantile,
margin), what it was trained on and with which library versions. The default threshold is always
``margin * numpy.quantile(calibration_scores, quantile)`` (linear interpolation): the same rule the
daemon's rolling threshold uses, warm-started from the same scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from monitor.model.scores import MAX_SCORES, SCORE_NAMES, ScoreFunction, get_score
from monitor.model.tiling import default_stride
from monitor.schema import StrictModel, error_message, key_path

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
META_FILE = "bundle.json"
FORMAT = "anomaly-monitor-bundle"
FORMAT_VERSION = 1

# Inputs are in [0, 1], so every score is bounded: a squared or absolute error by 1, 1-SSIM by 2, a
# density-combined score by its scale's ratio. A threshold above this is a broken sidecar under which
# nothing could ever be an anomaly; a margin above MAX_MARGIN is a typo, not a calibration.
MAX_THRESHOLD = 1e6
MAX_MARGIN = 100.0
# Score parameters are pixel widths and a quantile; bounds that a misplaced value (a 1e300, a string) fails.
MAX_SIGMA_PX = 100.0


class BundleError(Exception):
    """A bundle that cannot be used; the message (one line) says what is wrong."""


# --- The sidecar schema ------------------------------------------------------------------------------------
# Strict and value-checked on what scoring needs (input, score, calibration, threshold); lenient with the
# informational keys (color_order, source, method, the training record...), which a later version may extend.

PositiveInt = Annotated[int, Field(strict=True, gt=0)]
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _Section(BaseModel):
    """A sidecar section whose informational keys may grow: unknown keys are kept, not refused."""

    model_config = ConfigDict(extra="allow")


class InputMeta(_Section):
    """The model's input: size and channels (gray 1, BGR 3); dtype, range and color_order are informational."""

    height: PositiveInt
    width: PositiveInt
    channels: PositiveInt
    # 16-bit images are read on 0..uint16_white (a 12-bit camera's 4095), brighter pixels as white; absent: 65535.
    uint16_white: int | None = Field(default=None, strict=True, ge=255, le=65535)

    @field_validator("channels")
    @classmethod
    def _one_or_three(cls, value: int) -> int:
        if value not in (1, 3):
            raise ValueError(f"must be 1 or 3, got {value}")
        return value


class ScoreMeta(StrictModel):
    """The score the threshold was calibrated with: exactly a name and its parameters."""

    name: str = "mse"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _sane_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The score functions take these as plain floats: a string or a 1e300 would fail (or blur the whole
        # image away) at the first image, long after start-up said the bundle was fine.
        for key in ("sigma", "smooth", "q"):
            if key not in value:
                continue
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
                raise ValueError(f"{key} must be a finite number, got {number!r}")
            high = 1.0 if key == "q" else MAX_SIGMA_PX
            if not 0 < number <= high:
                raise ValueError(f"{key} must be greater than 0 and at most {high:g}, got {number!r}")
        return value

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in SCORE_NAMES:
            raise ValueError(f"unknown score name {value!r} (known: {', '.join(SCORE_NAMES)})")
        return value


class CalibrationMeta(_Section):
    """Scores of held-out normal images; the threshold starts from them."""

    scores: list[FiniteNumber] = Field(min_length=1)


class ThresholdMeta(_Section):
    """threshold = margin x quantile(calibration scores); value and method are written for people."""

    quantile: float = Field(strict=True, gt=0, lt=1)
    margin: float = Field(default=1.0, strict=True, gt=0, le=MAX_MARGIN, allow_inf_nan=False)
    value: float | None = None
    method: str | None = None


class TilingMeta(StrictModel):
    """Score in overlapping tiles of the model input's size at working resolution (image size x scale).

    Strict: a misspelt key here would silently change how every image is scored.
    """

    scale: float = Field(strict=True, gt=0, le=1, allow_inf_nan=False)
    stride: tuple[PositiveInt, PositiveInt] | None = None  # (rows, columns); None: half a tile


class DensityMeta(StrictModel):
    """A second score (monitor/model/density.py): a Gaussian of normal features, alone or with the residual.

    Each map is normalised by its own (offset, scale) on normal images, (map - offset) / scale, which is 1 at
    the median of its normal maxima; the combined map is the per-pixel maximum of the normalised residual and
    density maps (the density map alone when `residual_scale` is null) and the image score its maximum. The
    parameters live in `file` beside the model. Sidecars written before offsets and feature sources existed
    read as offsets 0 (each map over its median normal maximum) and the encoder's features.
    """

    mode: Literal["shared", "local"]
    features: Literal["encoder", "filterbank"] = "encoder"
    # input: of each model input (a tile when tiled), inside the forward pass; image: of the whole working
    # image resized to `image_size` (tiled bundles, filter-bank features), after the tiles are stitched.
    on: Literal["input", "image"] = "input"
    image_size: tuple[PositiveInt, PositiveInt] | None = None
    file: str = "density.npz"
    residual_scale: float | None = Field(strict=True, gt=0, allow_inf_nan=False)
    residual_offset: float = Field(default=0.0, strict=True, allow_inf_nan=False)
    density_scale: float = Field(strict=True, gt=0, allow_inf_nan=False)
    density_offset: float = Field(default=0.0, strict=True, allow_inf_nan=False)

    @field_validator("file")
    @classmethod
    def _file_name(cls, value: str) -> str:
        return _plain_file_name(value)

    @model_validator(mode="after")
    def _image_level(self) -> DensityMeta:
        if self.on == "image" and (self.features != "filterbank" or self.image_size is None):
            raise ValueError("on: image needs features: filterbank and an image_size")
        return self

    @property
    def residual_norm(self) -> tuple[float, float] | None:
        """(offset, scale) of the residual map, or None when the density map is the score alone."""
        return None if self.residual_scale is None else (self.residual_offset, self.residual_scale)

    @property
    def density_norm(self) -> tuple[float, float]:
        return self.density_offset, self.density_scale


class DiscriminatorMeta(StrictModel):
    """A defect network (monitor/training/discriminator.py) joined to the score.

    Its logits, one per 4x4 cell of the model input, are resized to the score's map and normalised by their
    own (offset, scale) on normal images. The image score is the larger of that map's maximum and the score
    without the network, normalised by (base_offset, base_scale) unless it already is (a density score). When
    that score is a map's maximum, the shown map is the per-pixel maximum of the two normalised maps, and its
    maximum is the image score; for a mean-type score (mse) the score's map is normalised for showing by its
    own (map_offset, map_scale). With a whole-image density (`on: image`) the network runs on the whole working
    image and joins the stitched, combined map.
    """

    file: str = "discriminator.keras"
    offset: float = Field(strict=True, allow_inf_nan=False)
    scale: float = Field(strict=True, gt=0, allow_inf_nan=False)
    base_offset: float = Field(default=0.0, strict=True, allow_inf_nan=False)
    base_scale: float | None = Field(default=None, strict=True, gt=0, allow_inf_nan=False)
    map_offset: float = Field(default=0.0, strict=True, allow_inf_nan=False)
    map_scale: float | None = Field(default=None, strict=True, gt=0, allow_inf_nan=False)

    @field_validator("file")
    @classmethod
    def _file_name(cls, value: str) -> str:
        return _plain_file_name(value)

    @property
    def norm(self) -> tuple[float, float]:
        return self.offset, self.scale

    @property
    def base_norm(self) -> tuple[float, float] | None:
        """(offset, scale) of the score without the network; None when it is normalised already."""
        return None if self.base_scale is None else (self.base_offset, self.base_scale)

    @property
    def map_norm(self) -> tuple[float, float] | None:
        """(offset, scale) that shows a mean-type score's map beside the network's; None for a max-type score."""
        return None if self.map_scale is None else (self.map_offset, self.map_scale)


def _plain_file_name(value: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\\" in value:
        raise ValueError(f"must be a file name inside the bundle folder, got {value!r}")
    return value


class BundleMeta(_Section):
    """The sidecar (bundle.json) as the daemon reads it."""

    format: Literal["anomaly-monitor-bundle"] = FORMAT
    format_version: int = Field(default=FORMAT_VERSION, strict=True, ge=1)
    model_file: str = MODEL_FILE
    input: InputMeta
    score: ScoreMeta = Field(default_factory=ScoreMeta)
    calibration: CalibrationMeta
    threshold: ThresholdMeta
    tiling: TilingMeta | None = None  # absent: the whole image is resized to the model input
    density: DensityMeta | None = None  # absent: the residual score alone
    discriminator: DiscriminatorMeta | None = None  # absent: no defect network in the score
    # Informational: shown by `monitor info`, never needed to score.
    preprocessing: dict[str, Any] | None = None
    architecture: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None

    @field_validator("format_version")
    @classmethod
    def _readable_version(cls, value: int) -> int:
        if value > FORMAT_VERSION:
            raise ValueError(f"version {value} is newer than this monitor reads ({FORMAT_VERSION})")
        return value

    @field_validator("tiling")
    @classmethod
    def _stride_within_a_tile(cls, value: TilingMeta | None, info: ValidationInfo) -> TilingMeta | None:
        model_input = info.data.get("input")
        if value is None or value.stride is None or model_input is None:
            return value
        sh, sw = value.stride
        if sh > model_input.height or sw > model_input.width:
            raise ValueError(f"stride {sh}x{sw} is larger than the tile (the model input "
                             f"{model_input.height}x{model_input.width}): pixels between tiles would never "
                             "be scored")
        return value

    @field_validator("density")
    @classmethod
    def _image_density_is_tiled(cls, value: DensityMeta | None, info: ValidationInfo) -> DensityMeta | None:
        if value is not None and value.on == "image" and info.data.get("tiling") is None:
            raise ValueError("on: image is a density of the whole working image, for tiled bundles only")
        return value

    @model_validator(mode="after")
    def _discriminator_joins_a_map(self) -> BundleMeta:
        if self.discriminator is None:
            return self
        if self.density is None and self.discriminator.base_scale is None:
            raise ValueError("discriminator: base_scale is needed to normalise a residual score")
        if self.density is None and self.score.name not in MAX_SCORES and self.discriminator.map_scale is None:
            raise ValueError(f"discriminator: map_scale is needed to show the map of {self.score.name!r}, which is "
                             "not a map's maximum, beside the network's")
        return self

    @field_validator("model_file")
    @classmethod
    def _model_file_name(cls, value: str) -> str:
        return _plain_file_name(value)

    @property
    def whole_image_density(self) -> bool:
        """The score's density (and any defect network with it) joins after the tiles are stitched."""
        return self.density is not None and self.density.on == "image"


def parse_meta(meta: Any, where: str | Path) -> BundleMeta:
    """The validated sidecar; BundleError (one line: ``WHERE: key.path: message``) when it cannot be used."""
    try:
        sidecar = BundleMeta.model_validate(meta)
    except ValidationError as exc:
        problems = [f"{key_path(err['loc']) or '(top level)'}: {error_message(err)}" for err in exc.errors()]
        raise BundleError(f"{where}: " + _one_line("; ".join(problems))) from None
    except RecursionError:
        raise BundleError(f"{where}: nested too deeply") from None
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308-sized scores overflow: refused just below
        value = default_threshold(np.asarray(sidecar.calibration.scores), sidecar.threshold.quantile,
                                  sidecar.threshold.margin)
    if not math.isfinite(value) or value > MAX_THRESHOLD:
        raise BundleError(f"{where}: threshold: margin x quantile {sidecar.threshold.quantile} of "
                          f"calibration.scores is {value:.6g}, above any score a model of inputs in [0, 1] gives "
                          f"(at most {MAX_THRESHOLD:g}): nothing could ever be an anomaly")
    return sidecar


def _one_line(text: str) -> str:
    """`text` with control characters escaped: a key from the file must not split the error line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def default_threshold(calibration_scores: np.ndarray, quantile: float, margin: float = 1.0) -> float:
    """margin * the q-quantile (numpy linear interpolation) of the calibration scores."""
    return float(margin * np.quantile(np.asarray(calibration_scores, np.float64), quantile))


@dataclass
class Bundle:
    """A loaded bundle: the Keras model, its sidecar as read (`meta`) and as validated (`sidecar`).

    The validated sidecar is what scoring reads; `meta` is kept whole for `monitor info --json` and the
    training record. Constructing a Bundle validates `meta` (BundleError when it cannot be used); a change
    to `meta` afterwards needs a new Bundle.
    """

    path: Path
    model: Any  # keras.Model (kept untyped so this module imports without Keras)
    meta: dict
    sidecar: BundleMeta = field(default=None, repr=False)  # type: ignore[assignment]  # None: from meta
    density: Any = field(default=None, repr=False)  # FeatureGaussian when the sidecar has `density`
    discriminator: Any = field(default=None, repr=False)  # keras.Model when the sidecar has `discriminator`

    def __post_init__(self) -> None:
        if self.sidecar is None:
            self.sidecar = parse_meta(self.meta, Path(self.path) / META_FILE)
        if (self.sidecar.density is None) != (self.density is None):
            raise BundleError(f"{Path(self.path) / META_FILE}: density: the sidecar and the density parameters "
                              "must come together")
        if (self.sidecar.discriminator is None) != (self.discriminator is None):
            raise BundleError(f"{Path(self.path) / META_FILE}: discriminator: the sidecar and the network must "
                              "come together")

    @property
    def height(self) -> int:
        return self.sidecar.input.height

    @property
    def width(self) -> int:
        return self.sidecar.input.width

    @property
    def channels(self) -> int:
        return self.sidecar.input.channels

    @property
    def uint16_white(self) -> int | None:
        """The white level 16-bit images are read against (None: 65535)."""
        return self.sidecar.input.uint16_white

    @property
    def tiling(self) -> TilingMeta | None:
        """The tiling section, or None: the whole image is resized to the model input."""
        return self.sidecar.tiling

    @property
    def tile_stride(self) -> tuple[int, int]:
        """The tiles' stride (rows, columns): the sidecar's, else half a tile."""
        tiling = self.sidecar.tiling
        if tiling is not None and tiling.stride is not None:
            return tiling.stride
        return default_stride((self.height, self.width))

    @property
    def score_name(self) -> str:
        return self.sidecar.score.name

    @property
    def score_params(self) -> dict:
        return dict(self.sidecar.score.params)

    def score_function(self) -> ScoreFunction:
        """The score this bundle was calibrated with."""
        return get_score(self.score_name, self.score_params)

    @property
    def calibration_scores(self) -> np.ndarray:
        return np.asarray(self.sidecar.calibration.scores, dtype=np.float64)

    @property
    def threshold_quantile(self) -> float:
        return self.sidecar.threshold.quantile

    @property
    def threshold_margin(self) -> float:
        return self.sidecar.threshold.margin

    @property
    def default_threshold(self) -> float:
        return default_threshold(self.calibration_scores, self.threshold_quantile, self.threshold_margin)

    @property
    def score_label(self) -> str:
        """What the image score is: the residual score, the density, or both (e.g. `ssim_max+density:local`)."""
        density = self.sidecar.density
        network = "+discriminator" if self.sidecar.discriminator is not None else ""
        if density is None:
            return self.score_name + network
        name = f"density:{density.mode}" if density.features == "encoder" else f"density:{density.features}/" \
            f"{density.mode}"
        return (name if density.residual_scale is None else f"{self.score_name}+{name}") + network

    def describe(self) -> str:
        """One line for logs: size, channels, tiling, score, threshold."""
        tiling = ""
        if self.tiling is not None:
            sh, sw = self.tile_stride
            tiling = f"tiling=scale:{self.tiling.scale:g},stride:{sh}x{sw} "
        return (f"bundle={self.path} input={self.height}x{self.width}x{self.channels} {tiling}"
                f"score={self.score_label} "
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
    except RecursionError:  # the json module recurses once per nesting level
        raise BundleError(f"{meta_path}: not valid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer with more digits than Python converts
        raise BundleError(f"{meta_path}: not valid JSON: {_one_line(str(exc))}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: must hold a JSON object")
    return meta


def _read_checked(path: Path) -> tuple[dict, BundleMeta]:
    """The sidecar as read and as validated, after checking the folder and the model file are there."""
    if not path.exists():
        raise BundleError(f"{path}: model bundle folder does not exist")
    if not path.is_dir():
        raise BundleError(f"{path}: a model bundle is a folder, this is a file")
    meta = _read_meta(path)
    sidecar = parse_meta(meta, path / META_FILE)  # before Keras: a bad sidecar fails fast
    model_path = path / sidecar.model_file
    if not model_path.is_file():
        raise BundleError(f"{path}: model file {model_path.name} is missing")
    if model_path.suffix == ".keras" and not zipfile.is_zipfile(model_path):
        # Keras says "File not found" for a file that is there but is no zip archive (truncated, corrupt).
        raise BundleError(f"{model_path}: cannot load the Keras model: not a .keras zip archive "
                          "(truncated or corrupt)")
    if sidecar.density is not None and not (path / sidecar.density.file).is_file():
        raise BundleError(f"{path / sidecar.density.file}: cannot load the density parameters: the file is missing")
    if sidecar.discriminator is not None and not (path / sidecar.discriminator.file).is_file():
        raise BundleError(f"{path / sidecar.discriminator.file}: cannot load the defect network: the file is "
                          "missing")
    return meta, sidecar


def read_sidecar(path: str | Path) -> BundleMeta:
    """The validated sidecar of a bundle whose files are all there, without loading TensorFlow
    (`check-config`); BundleError says what is wrong."""
    return _read_checked(Path(path))[1]


IDENTITY_CHARS = 12


def bundle_identity(path: str | Path) -> str:
    """A short identity of a bundle's content: sha256 over its sidecar, model and density files.

    Two folders with the same files have the same identity; retraining into the same folder changes it.
    Verdicts record it, and a source's saved threshold window is kept only while it is unchanged.
    """
    path = Path(path)
    sidecar = parse_meta(_read_meta(path), path / META_FILE)
    names = [META_FILE, sidecar.model_file] + ([sidecar.density.file] if sidecar.density is not None else []) \
        + ([sidecar.discriminator.file] if sidecar.discriminator is not None else [])
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        try:
            with open(path / name, "rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise BundleError(f"{path / name}: cannot read: {exc}") from None
        digest.update(b"\0")
    return digest.hexdigest()[:IDENTITY_CHARS]


def load_bundle(path: str | Path) -> Bundle:
    """Load and check a bundle folder (Keras safe mode on); BundleError says what is wrong."""
    path = Path(path)
    meta, sidecar = _read_checked(path)
    model_path = path / sidecar.model_file
    model = _load_keras(model_path, "the Keras model")
    want = (sidecar.input.height, sidecar.input.width, sidecar.input.channels)
    shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if shape != want:
        raise BundleError(f"{path}: model input shape {shape} does not match the sidecar's input "
                          f"{want[0]}x{want[1]}x{want[2]}")
    out_shape = tuple(model.output_shape[1:]) if not isinstance(model.output_shape, list) else None
    if out_shape != want:
        raise BundleError(f"{path}: model output shape {out_shape} is not a reconstruction of its "
                          f"input {want}")
    network = None
    if sidecar.discriminator is not None:
        network = _load_keras(path / sidecar.discriminator.file, "the defect network")
        if network.input_shape[-1] != sidecar.input.channels or network.output_shape[-1] != 1:
            raise BundleError(f"{path / sidecar.discriminator.file}: the defect network takes "
                              f"{network.input_shape[-1]} channels and gives {network.output_shape[-1]} maps; "
                              f"the sidecar's input has {sidecar.input.channels} channels and one map is needed")
    bundle = Bundle(path=path, model=model, meta=meta, sidecar=sidecar, density=_load_density(path, sidecar),
                    discriminator=network)
    log.info("bundle_loaded %s", bundle.describe())
    return bundle


def _load_keras(file: Path, what: str) -> Any:
    """A Keras model file loaded in safe mode; BundleError naming the file when it cannot be."""
    import keras  # late: reading a sidecar must not pay for TensorFlow

    if file.suffix == ".keras" and not zipfile.is_zipfile(file):
        # Keras says "File not found" for a file that is there but is no zip archive (truncated, corrupt).
        raise BundleError(f"{file}: cannot load {what}: not a .keras zip archive (truncated or corrupt)")
    try:
        return keras.saving.load_model(file, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a corrupt or unsafe file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if first.startswith("File not found") and file.is_file():
            first = f"the file is there but unreadable as a Keras model ({first})"
        raise BundleError(f"{file}: cannot load {what}: {_one_line(first)}") from None


def _load_density(path: Path, sidecar: BundleMeta) -> Any:
    if sidecar.density is None:
        return None
    from monitor.model.density import FeatureGaussian

    file = path / sidecar.density.file
    try:
        gaussian = FeatureGaussian.load(path, sidecar.density.file)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # BadZipFile: a truncated .npz
        raise BundleError(f"{file}: cannot load the density parameters: {_one_line(str(exc))}") from None
    if gaussian.mode != sidecar.density.mode:
        raise BundleError(f"{file}: holds mode {gaussian.mode!r}, the sidecar says {sidecar.density.mode!r}")
    if gaussian.features != sidecar.density.features:
        raise BundleError(f"{file}: holds {gaussian.features} features, the sidecar says "
                          f"{sidecar.density.features}")
    return gaussian


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


def save_bundle(path: str | Path, model: Any, meta: dict, density: Any = None, discriminator: Any = None) -> Bundle:
    """Write model.keras (and the density parameters, the defect network) then bundle.json into `path`, each
    renamed into place."""
    path = Path(path)
    meta = dict(meta)
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta["model_file"] = MODEL_FILE
    sidecar = parse_meta(json.loads(json.dumps(meta, default=_json_default)), path / META_FILE)
    value = default_threshold(np.asarray(sidecar.calibration.scores), sidecar.threshold.quantile,
                              sidecar.threshold.margin)
    meta["threshold"] = {**meta["threshold"], "value": value}
    meta.setdefault("versions", library_versions())
    path.mkdir(parents=True, exist_ok=True)
    # The model first, the sidecar last: a folder with a sidecar always has the matching model.
    tmp_dir = Path(tempfile.mkdtemp(prefix=".saving-", dir=path))
    try:
        tmp_model = tmp_dir / MODEL_FILE  # Keras insists on the .keras suffix
        _inference_copy(model).save(tmp_model)
        os.replace(tmp_model, path / MODEL_FILE)
        if density is not None:
            name = sidecar.density.file if sidecar.density is not None else "density.npz"
            os.replace(density.save(tmp_dir, name), path / name)
        if discriminator is not None:
            name = sidecar.discriminator.file if sidecar.discriminator is not None else "discriminator.keras"
            _inference_copy(discriminator).save(tmp_dir / "discriminator.keras")
            os.replace(tmp_dir / "discriminator.keras", path / name)
        tmp_meta = tmp_dir / META_FILE
        tmp_meta.write_text(json.dumps(meta, indent=2, default=_json_default) + "\n", encoding="utf-8")
        os.replace(tmp_meta, path / META_FILE)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return Bundle(path=path, model=model, meta=json.loads(json.dumps(meta, default=_json_default)), density=density,
                  discriminator=discriminator)
