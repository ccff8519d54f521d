"""Training options: one schema for the defaults, a preset, a config file's `training:` section and the flags.

The layers are merged as plain mappings (later wins: defaults < preset < config file < flags) and validated
once by `TrainOptions`; an error names where the bad value came from (``train.yaml: training.epochs: ...``
or ``--epochs: ...``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from monitor.model.scores import SCORE_NAMES
from monitor.model.tiling import default_stride
from monitor.schema import StrictModel, error_message, key_path

ARCHITECTURES: tuple[str, ...] = ("seed", "conv")
DEFAULT_FILTERS: dict[str, tuple[int, ...]] = {"seed": (32, 64), "conv": (32, 64, 128)}
LOSSES: tuple[str, ...] = ("mse", "ssim", "mse+ssim")
LR_SCHEDULES: tuple[str, ...] = ("plateau", "cosine", "constant")

# Settings for textures and surfaces (the shipped default model's; benchmarks/quality.py, texture protocol):
# fully convolutional AE, SSIM loss, 80 epochs, 0.99 quantile of the smoothed squared error map. Mirrored
# copies (flip) scored the same on the validation set and cost half as much time again, so they are off.
# Same as `monitor train --architecture conv --loss ssim --epochs 80 --score smooth_quantile`.
TEXTURE_SETTINGS: dict[str, Any] = {"architecture": "conv", "loss": "ssim", "epochs": 80,
                                    "score": "smooth_quantile", "score_params": {"sigma": 2.0, "q": 0.99}}
# Named bundles of settings for `monitor train --preset NAME` (or `preset:` in a training: section).
PRESETS: dict[str, dict[str, Any]] = {"texture": TEXTURE_SETTINGS}


class OptionsError(ValueError):
    """Training options that cannot be used; one line per problem, each naming the file and key or the flag."""


class _KeyError(ValueError):
    """A check across options, reported at `key` (pydantic puts model-level errors at no key)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def parse_size(value: Any) -> Any:
    """64, "64", "64x64" or [64, 64] -> (64, 64); anything else is left to the schema to refuse."""
    if isinstance(value, str):
        try:
            parts = [int(p) for p in value.lower().replace("*", "x").split("x")]
        except ValueError:
            raise ValueError(f"size must be HxW or N, e.g. 64x64, got {value!r}") from None
        return tuple(parts * 2 if len(parts) == 1 else parts)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return tuple(value) if isinstance(value, list) else value


def parse_filters(value: Any) -> Any:
    """"32,64", [32, 64] or 32 -> (32, 64) / (32,); empty means the architecture's default."""
    if isinstance(value, str):
        try:
            value = tuple(int(p) for p in value.replace(" ", "").split(",") if p)
        except ValueError:
            raise ValueError(f"filters must be numbers separated by commas, got {value!r}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    return (tuple(value) or None) if isinstance(value, list | tuple) else value


# The options that take one of a few names, and those names.
_CHOICES: dict[str, tuple[str, ...]] = {"architecture": ARCHITECTURES, "loss": LOSSES, "lr_schedule": LR_SCHEDULES,
                                        "score": SCORE_NAMES}


def _one_of(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


class TrainOptions(StrictModel):
    """Everything that shapes a training run (CLI flags and the config's `training:` section)."""

    size: tuple[int, int] = (64, 64)  # height, width
    channels: int = 1
    architecture: str = "seed"  # "seed" (dense latent, the seeds') or "conv" (spatial code, for textures)
    filters: tuple[int, ...] | None = None  # None: the architecture's default, (32, 64) or (32, 64, 128)
    latent: int = 16  # seed: size of the dense latent code
    code_channels: int = 8  # conv: channels of the spatial code
    loss: str = "mse"  # "mse" (the seeds'), "ssim" (1 - SSIM, Bergmann et al. 2018) or "mse+ssim"
    flip: bool = False  # augment: each epoch mirrors a random half of the images left-right (textures)
    epochs: int = 60  # the seeds' 20 leave the model under-trained; early stopping ends sooner
    batch_size: int = 32
    learning_rate: float = Field(default=1e-3, allow_inf_nan=False)
    validation_split: float = 0.2
    patience: int = 10  # early stopping: epochs without a better validation loss
    lr_schedule: str = "plateau"  # "plateau" (halve when validation loss stalls), "cosine" or "constant"
    seed: int | None = None
    score: str = "mse"
    score_params: dict[str, Any] = Field(default_factory=dict)
    # 0.99, not the seeds' 0.999: the top 1% of validation scores may be unlabelled defects that slipped
    # into the 'normal' folder; 0.999 of a few hundred images is their maximum, i.e. the worst of them.
    quantile: float = 0.99
    margin: float = Field(default=1.0, allow_inf_nan=False)
    max_unreadable_fraction: float = 0.1  # above this share of unreadable files training stops
    report: bool = True  # write report/ (loss curve, score histogram, reconstructions) into the bundle
    # Settings chosen from the data for every option not given (monitor/training/auto.py), and the
    # architecture and score chosen on held-out images with synthetic defects (select.py). False: the
    # fixed defaults above, as before.
    auto: bool = True
    # Save a model that fails the health check (monitor/training/health.py) instead of refusing it; the
    # problems are still logged and recorded in the bundle. For quick experiments, never for a line.
    allow_degenerate: bool = False
    # A defect network trained on synthetic defects, joined to the chosen score when it detects defects of
    # families it never saw at least as well (monitor/training/discriminator.py). None: tried whenever the
    # score was chosen from the data; True: tried with any score, a given one too; False: never.
    discriminator: bool | None = None
    quiet: bool = False
    # Tiling (monitor/model/tiling.py): with `scale` set, images are resized by it to the working resolution
    # and scored in overlapping tiles of `tile` (the model input), image score = worst tile; the model
    # learns from random tile crops. None: no tiling, each image is resized whole to `size`.
    scale: float | None = None
    tile: tuple[int, int] = (64, 64)  # height, width: the model input when tiling
    stride: tuple[int, int] | None = None  # between tiles when scoring; None: half a tile
    crops: int = 8  # random tile crops per training image per epoch (fixed crops per validation image)
    # Training inputs (images, or tile crops when tiling) per epoch, a fresh random subset every epoch; None: all.
    # Keeps a large folder within the training budget without dropping any of it (auto.py sets it then).
    samples_per_epoch: int | None = None

    @field_validator("size", "tile", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        return parse_size(value)

    @field_validator("stride", mode="before")
    @classmethod
    def _parse_stride(cls, value: Any) -> Any:
        return None if value is None else parse_size(value)

    @field_validator("scale")
    @classmethod
    def _scale(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"scale must be in (0, 1] (1: native resolution), got {value}")
        return value

    @field_validator("filters", mode="before")
    @classmethod
    def _parse_filters(cls, value: Any) -> Any:
        return parse_filters(value)

    @field_validator("architecture", "loss", "lr_schedule", "score")
    @classmethod
    def _one_of_choices(cls, value: str, info: ValidationInfo) -> str:
        return _one_of(info.field_name, value, _CHOICES[info.field_name])

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: int) -> int:
        if value not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {value}")
        return value

    @field_validator("filters")
    @classmethod
    def _filters_positive(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and min(value) <= 0:
            raise ValueError("filters must be positive numbers")
        return value

    @field_validator("samples_per_epoch")
    @classmethod
    def _samples_positive(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("samples_per_epoch must be positive")
        return value

    @field_validator("latent", "code_channels", "epochs", "crops", "batch_size", "patience", "learning_rate", "margin")
    @classmethod
    def _positive(cls, value: float, info: ValidationInfo) -> float:
        if value <= 0:
            raise ValueError(f"{info.field_name} must be positive")
        return value

    @field_validator("validation_split", "quantile")
    @classmethod
    def _open_unit(cls, value: float, info: ValidationInfo) -> float:
        if not 0 < value < 1:
            raise ValueError(f"{info.field_name} must be between 0 and 1")
        return value

    @field_validator("max_unreadable_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError("max_unreadable_fraction must be in [0, 1)")
        return value

    @model_validator(mode="after")
    def _size_fits_the_strides(self) -> TrainOptions:
        h, w = self.model_size
        key = "tile" if self.tiling else "size"
        step = 2 ** len(self.model_filters)
        if not (h > 0 and w > 0 and h % step == 0 and w % step == 0):
            raise _KeyError(key, f"{key} {h}x{w} must be positive and divisible by {step} "
                                 "(2 ** number of filters)")
        return self

    @model_validator(mode="after")
    def _tiling_fits(self) -> TrainOptions:
        if self.stride is not None:
            sh, sw = self.stride
            th, tw = self.tile
            if not (0 < sh <= th and 0 < sw <= tw):
                raise _KeyError("stride", f"stride {sh}x{sw} must be positive and at most the tile {th}x{tw} "
                                          "(else pixels between tiles are never scored)")
        # `size` is the model input only without tiling: a different one given with `scale` is a mistake.
        if self.tiling and "size" in self.model_fields_set and self.size != self.tile:
            raise _KeyError("size", f"size {self.size[0]}x{self.size[1]} is the model input without tiling; "
                                    f"with scale set the model input is tile ({self.tile[0]}x{self.tile[1]})")
        return self

    @property
    def tiling(self) -> bool:
        """True when images are scored in tiles at working resolution (`scale` is set)."""
        return self.scale is not None

    @property
    def model_size(self) -> tuple[int, int]:
        """The model input (height, width): `tile` when tiling, else `size`."""
        return self.tile if self.tiling else self.size

    @property
    def tile_stride(self) -> tuple[int, int]:
        """The stride between tiles: the option, else half a tile."""
        return self.stride if self.stride is not None else default_stride(self.tile)

    @property
    def model_filters(self) -> tuple[int, ...]:
        """The filters the model is built with: the option, else the architecture's default."""
        if self.filters:
            return tuple(int(f) for f in self.filters)
        return DEFAULT_FILTERS.get(self.architecture, DEFAULT_FILTERS["seed"])

    def validate(self) -> None:  # type: ignore[override]  # BaseModel.validate is pydantic v1's, deprecated
        """Check the options again (after a change); ValueError names the option that is out of range."""
        type(self).model_validate(self.model_dump(exclude_unset=True))


Label = Callable[[str], str]  # option name -> where its value came from: "train.yaml: training.epochs", "--epochs"


def _error_line(err: Any, origin: Mapping[str, Label]) -> str:
    loc = err["loc"] or (getattr(err.get("ctx", {}).get("error"), "key", ""),)
    name = str(loc[0])
    where = origin.get(name, lambda key: key)(name) + key_path(loc[1:])
    message = error_message(err)
    return f"{where}: {message.removeprefix(name + ' ')}"  # "epochs: epochs must be ..." says it twice


def merge_options(layers: Sequence[tuple[Mapping[str, Any], Label]]) -> TrainOptions:
    """TrainOptions from layers of option values (later layers win), validated once.

    Each layer comes with a function that names where its values came from; OptionsError lists every
    problem on its own line, each naming the source of the value: ``train.yaml: training.epochs: ...``.
    """
    values: dict[str, Any] = {}
    origin: dict[str, Label] = {}
    for layer, label in layers:
        for name, value in layer.items():
            values[name] = value
            origin[name] = label
    try:
        return TrainOptions.model_validate(values)
    except ValidationError as exc:
        raise OptionsError("\n".join(_error_line(err, origin) for err in exc.errors())) from None


def preset_settings(name: str, where: str) -> dict[str, Any]:
    """A copy of the preset called `name`; OptionsError (naming `where`) when there is none."""
    if name not in PRESETS:
        raise OptionsError(f"{where}: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return {k: dict(v) if isinstance(v, dict) else v for k, v in PRESETS[name].items()}
