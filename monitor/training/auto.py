"""Settings that suit the training images, chosen by looking at them (``monitor train DIR`` with no options).

Pure numpy/OpenCV: no TensorFlow, no training. Each choice comes with the reason a person reads in the log,
in ``monitor info`` and in the report. Explicit options (flags, preset, config file) always win over these.

Policy:

- **channels**: 3 when the images carry colour, else 1. Colour is the mean absolute chroma
  ``(|B-G| + |G-R|)`` of a smoothed, shrunken copy, on a scale of 0..2 (full scale 1 per difference); the
  images are colour when the median image is above ``COLOUR_THRESHOLD`` (0.02, about 5 of 255 levels).
  That is above JPEG's chroma error on a gray image and sensor colour noise after smoothing, and below any
  visible tint. A uniform tint (sepia, a warm light, a coloured part) counts as colour: a stain that only
  changes the hue of a tinted part is visible in colour only, and three channels cost little.
- **working resolution**: as fine as a budget of ``WORKING_PIXELS`` (512x512) working pixels per image allows,
  native when the image fits it (a 1-3 px scratch is lost at half scale), and never coarser than the floor
  that keeps a defect of ``defect_px`` pixels ``MIN_DEFECT_PX`` (2) pixels wide: ``scale = max(min(1, 2 /
  defect_px), min(1, sqrt(WORKING_PIXELS / (h * w))))`` (native up to 512x512, 0.5 from about 1 MP;
  never enlarged). Images whose longest
  side is at most ``WHOLE_MAX`` (128) are modelled whole at full resolution (no scaling, no tiling;
  ``size`` is the image size rounded up to a multiple of 8): a 128x128 model is cheap and a whole part keeps
  its layout. Larger images are tiled: ``scale`` as above, ``tile`` 64x64 (the model input), ``crops`` random
  tiles per training image per epoch = the working image's area in tiles (fewer when over the budget).
- **batch_size**: at least ``MIN_STEPS`` (20) optimiser steps per epoch, so BatchNorm's moving statistics
  settle (issue 10: 5 steps per epoch left them wrong and the model broken; 20 fixed it):
  ``clamp(n_train // 20, 4, 32)``, where n_train counts training crops per epoch when tiled. (Steps per epoch
  are not the whole story: the moving averages trail the weights by about 100 steps, whatever the batch;
  ``monitor.training.health.recalibrate_batchnorm`` sets them right after training.)
- **epochs / patience**: a fixed budget of training samples (``BUDGET_SAMPLES`` 64x64-sized crops, about four
  minutes on the 2-core CPU, half of the ten-minute target: the rest is for choosing the architecture and
  score and for calibration): ``epochs = clamp(budget / n_train, 20, 100)``, patience ``clamp(epochs // 6,
  5, 15)``. A folder too large for even 20 epochs within the budget (more than about 1,250 64x64 images)
  trains each epoch on a fresh random subset of ``budget / 20`` inputs (``samples_per_epoch``): the cost is
  the budget's whatever the folder's size, and every image is still drawn over the run.

Settings are TrainOptions field names; ``Choice.without(explicit)`` drops what explicit options decide.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

COLOUR_THRESHOLD = 0.02  # mean |B-G| + |G-R| (full scale 1 each); JPEG/sensor noise after smoothing is < 0.01
COLOUR_SAMPLE = 32  # images measured for colour: enough for a median, cheap on 5 MP images
COLOUR_SIDE = 256  # images are shrunk (INTER_AREA, averaging away pixel noise) to this longest side first
MIN_DEFECT_PX = 2.0  # a defect narrower than 2 px at working resolution is lost between pixels and blur
# Working pixels per image kept at native resolution or as close to it as they allow: 512x512 is 225 tiles at
# half-tile stride, 0.25 s per image scored on the 2-core CPU (benchmarks/training_cost.py, part512). On the
# 256-px protocols native resolution beat the 2-px floor (scale 0.5): test-split AUROC part 0.88 -> 0.90, brick
# wall 0.55 -> 0.87 (benchmarks/quality.py; README, Detection quality).
WORKING_PIXELS = 512 * 512
WHOLE_MAX = 128  # images up to this longest side are modelled whole, at full resolution
TILE = 64  # tile side at working resolution: the seeds' input size, 550 img/s scored on this CPU
MIN_SIDE = 16  # smallest model side: the default conv architecture halves it 3 times
MIN_STEPS = 20  # optimiser steps per epoch that let BatchNorm statistics settle (issue 10)
MIN_BATCH, MAX_BATCH = 4, 32  # BatchNorm over 4 images x H x W pixels is still a stable estimate
# Training cost in 64x64-sized samples: about 180 samples/s at batch 32 (90/s at batch 8) on this 2-core CPU
# for either architecture, so 40,000 is 4 to 7 minutes before early stopping; measured, not guessed.
BUDGET_SAMPLES = 40_000
MIN_EPOCHS, MAX_EPOCHS = 20, 100  # 20: the seeds'; beyond 100 early stopping has always ended the run
MIN_PATIENCE, MAX_PATIENCE = 5, 15


@dataclass(frozen=True)
class Choice:
    """Settings chosen from the data (TrainOptions field names), why, and what was measured."""

    settings: dict[str, Any]
    reasons: dict[str, str]
    figures: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One log line: ``auto_settings channels=3 scale=0.5 tile=64x64 crops=4 batch_size=32 ...``."""
        return "auto_settings " + " ".join(f"{k}={_fmt(v)}" for k, v in self.settings.items())

    def without(self, explicit: Iterable[str]) -> dict[str, Any]:
        """The settings that the explicitly given options (any layer above the defaults) leave to the data.

        The resolution is one decision: an explicit ``size`` (whole images) drops the chosen tiling
        (``scale``, ``tile``, ``crops``); an explicit ``scale`` or ``tile`` drops the chosen whole-image ``size``
        but keeps the chosen other half of the tiling.
        """
        explicit = set(explicit)
        dropped = set(explicit)
        if "size" in explicit:
            dropped |= {"scale", "tile", "crops"}
        if explicit & {"scale", "tile"}:
            dropped.add("size")
        return {k: v for k, v in self.settings.items() if k not in dropped}


    def to_json(self, applied: Iterable[str] | None = None) -> dict[str, Any]:
        """For the bundle's sidecar (``training.auto``): the settings applied (all by default), their reasons,
        the ones explicit options overrode, and the measured figures."""
        keys = list(self.settings) if applied is None else [k for k in self.settings if k in set(applied)]
        return {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in self.settings.items()
                             if k in keys},
                "reasons": {k: self.reasons[k] for k in keys if k in self.reasons},
                "overridden": [k for k in self.settings if k not in keys],
                "figures": dict(self.figures)}


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def _unit(image: np.ndarray) -> np.ndarray:
    """Float32 in [0, 1] whatever the integer depth."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def chroma(image: np.ndarray) -> float:
    """Mean |B-G| + |G-R| of a shrunken, lightly smoothed copy (0 for gray); alpha is ignored."""
    if image.ndim == 2 or image.shape[2] < 3:
        return 0.0
    x = np.ascontiguousarray(image[..., :3])
    h, w = x.shape[:2]
    shrink = COLOUR_SIDE / max(h, w)
    if shrink < 1:  # before converting to float: a 5 MP frame shrinks in milliseconds as uint8
        x = cv2.resize(x, (max(1, round(w * shrink)), max(1, round(h * shrink))), interpolation=cv2.INTER_AREA)
    x = _unit(x)
    # A 3x3 mean divides independent per-pixel colour noise by 3; colour regions wider than a pixel survive.
    x = cv2.blur(x, (3, 3))
    b, g, r = x[..., 0], x[..., 1], x[..., 2]
    return float(np.mean(np.abs(b - g) + np.abs(g - r)))


def _sample(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k)})


def _ceil8(v: float) -> int:
    return max(MIN_SIDE, int(math.ceil(v / 8.0)) * 8)


def _floor8(v: float) -> int:
    return max(8, int(v // 8) * 8)


def _choose_channels(images: Sequence[np.ndarray]) -> tuple[int, str, float]:
    values = [chroma(images[i]) for i in _sample(len(images), COLOUR_SAMPLE)]
    measured = float(np.median(values))
    stored = "gray" if all(images[i].ndim == 2 or images[i].shape[2] == 1 for i in _sample(len(images), 8)) \
        else "colour-encoded"
    if measured > COLOUR_THRESHOLD:
        return 3, (f"images are colour: median chroma |B-G|+|G-R| = {measured:.3f} > {COLOUR_THRESHOLD} "
                   f"over {len(values)} images; a colour-only defect is visible in colour only"), measured
    return 1, (f"images are gray ({stored} files, median chroma {measured:.3f} <= {COLOUR_THRESHOLD}, "
               "the level of JPEG and sensor colour noise): one channel"), measured


def choose_settings(images: Sequence[np.ndarray], defect_px: int = 4, validation_split: float = 0.2,
                    budget_samples: float = BUDGET_SAMPLES) -> Choice:
    """Settings that suit these decoded training images (gray HxW, BGR, BGRA; uint8/uint16), with reasons.

    `budget_samples`: the training budget of one model (less when several architectures are tried).
    """
    if not images:
        raise ValueError("no images to choose settings from")
    if defect_px <= 0:
        raise ValueError(f"defect_px must be positive, got {defect_px}")
    settings: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    figures: dict[str, float] = {}

    channels, reasons["channels"], figures["chroma"] = _choose_channels(images)
    settings["channels"] = channels

    # Mixed sizes: plan for the typical (median) image; every image is resized or tiled to the same input.
    h = int(np.median([im.shape[0] for im in images]))
    w = int(np.median([im.shape[1] for im in images]))
    figures.update(image_height=float(h), image_width=float(w))
    n_train = max(1, len(images) - int(round(len(images) * validation_split)))
    if max(h, w) <= WHOLE_MAX:
        size = (_ceil8(h), _ceil8(w))
        settings.update(size=size, scale=None)
        reasons["size"] = (f"{h}x{w} images (longest side <= {WHOLE_MAX}) are modelled whole at full resolution, "
                           f"input {size[0]}x{size[1]} (rounded up to a multiple of 8): a {defect_px}-px defect "
                           "keeps its size and the part keeps its layout")
        reasons["scale"] = f"no scaling or tiling: {h}x{w} images fit one model input"
        per_image, unit = 1, size[0] * size[1] / (TILE * TILE)
        budget = budget_samples / unit
        what = "training images"
    else:
        floor = min(1.0, MIN_DEFECT_PX / defect_px)
        fit = min(1.0, math.sqrt(WORKING_PIXELS / (h * w)))  # the finest scale the working budget allows
        scale = max(floor, fit)
        if fit >= 1.0:
            why = (f"native: {h}x{w} is within the working budget of {WORKING_PIXELS:,} pixels per image, and a "
                   "defect of 1-3 px is lost when shrunk")
        elif fit > floor:
            why = (f"the finest within the working budget of {WORKING_PIXELS:,} pixels per image, and finer than "
                   f"the {floor:.3g} that keeps a {defect_px}-px defect {MIN_DEFECT_PX:g} px wide")
        elif floor >= 1.0:
            why = f"native: a {defect_px}-px defect must keep its {defect_px} px, so the image is never shrunk"
        else:
            why = (f"the smallest that keeps a {defect_px}-px defect at least {MIN_DEFECT_PX:g} px wide "
                   f"({h}x{w} is beyond the working budget of {WORKING_PIXELS:,} pixels), never enlarged")
        if min(h, w) * scale < TILE and scale < 1.0:
            # A narrow strip: keep more resolution across it so that one tile fits (cheap: the strip is small).
            scale = min(1.0, TILE / min(h, w))
            why += f"; raised so that a {TILE}-px tile fits across the {min(h, w)}-px side"
        wh, ww = h * scale, w * scale
        tile = (min(TILE, _floor8(wh)), min(TILE, _floor8(ww)))
        tiles = math.ceil(wh / tile[0]) * math.ceil(ww / tile[1])
        unit = tile[0] * tile[1] / (TILE * TILE)
        budget = budget_samples / unit
        # An epoch covers each working image about once (its area in tiles), fewer where even the minimum
        # number of epochs would exceed the budget: the crops are drawn afresh every epoch, so all of the
        # image is still seen over the run.
        per_image = int(max(1, min(tiles, budget // (MIN_EPOCHS * n_train))))
        # Rounded up, never down: the rounded scale must still keep the defect 2 px wide.
        settings.update(scale=math.ceil(scale * 10_000) / 10_000, tile=tile, crops=per_image)
        reasons["scale"] = f"scale {scale:.3g} ({why}): {h}x{w} images become {round(wh)}x{round(ww)}"
        reasons["tile"] = (f"{h}x{w} images are larger than {WHOLE_MAX} px: scored in overlapping {tile[0]}x{tile[1]} "
                           f"tiles (the model input) at working resolution, not shrunk until small defects vanish")
        reasons["crops"] = (f"{per_image} random crops per training image per epoch: the working image is "
                            f"{tiles} tiles" + ("" if per_image == tiles else
                                                ", fewer per epoch to stay within the training budget"))
        what = "training crops"
    n_samples = n_train * per_image
    figures.update(train_samples=float(n_samples), crops_per_image=float(per_image))
    over_budget = n_samples * MIN_EPOCHS > budget
    if over_budget:
        # More data than even the minimum of epochs allows: each epoch trains on a fresh random subset, so the
        # cost stays the budget's and every input is still drawn over the run (a large folder, not a cost).
        per_epoch = int(max(MIN_STEPS * MIN_BATCH, budget // MIN_EPOCHS))
        if per_epoch < n_samples:
            settings["samples_per_epoch"] = per_epoch
            reasons["samples_per_epoch"] = (
                f"{per_epoch} of the {n_samples} {what} per epoch, a fresh random subset each epoch: "
                f"{MIN_EPOCHS} epochs over all of them would be {n_samples * MIN_EPOCHS / budget:.1f}x the "
                f"training budget of {budget_samples:.0f} {TILE}x{TILE}-sized samples")
            n_samples = per_epoch
    figures["samples_per_epoch"] = float(n_samples)

    # Epochs from a fixed budget of samples (64x64-equivalent), within MIN_EPOCHS..MAX_EPOCHS.
    epochs = int(min(MAX_EPOCHS, max(MIN_EPOCHS, budget // n_samples)))
    patience = int(min(MAX_PATIENCE, max(MIN_PATIENCE, epochs // 6)))
    batch = int(min(MAX_BATCH, max(MIN_BATCH, n_samples // MIN_STEPS)))
    steps = math.ceil(n_samples / batch)
    settings.update(batch_size=batch, epochs=epochs, patience=patience)
    reasons["batch_size"] = (f"{n_samples} {what} per epoch / batch {batch} = {steps} steps per epoch; at least "
                             f"{MIN_STEPS} let BatchNorm statistics settle (5 steps left a model broken)")
    reasons["epochs"] = (f"up to {epochs} epochs: a budget of {budget_samples:.0f} {TILE}x{TILE}-sized samples "
                         f"(about 4-7 min on 2 CPU cores) over {n_samples} {what} per epoch, within "
                         f"{MIN_EPOCHS}..{MAX_EPOCHS}; early stopping usually ends sooner")
    if over_budget:
        reasons["epochs"] += f" (more data than the budget: the minimum, {MIN_EPOCHS})"
    reasons["patience"] = (f"stop after {patience} epochs without a better validation loss "
                           f"(epochs // 6 within {MIN_PATIENCE}..{MAX_PATIENCE})")
    figures.update(steps_per_epoch=float(steps))
    return Choice(settings=settings, reasons=reasons, figures=figures)
