"""Training: a folder of normal images in, a calibrated model bundle (and a training report) out."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.files import FolderNotWritable, check_writable_folder
from monitor.images import UnreadableImage, list_images, load_image
from monitor.model.bundle import (
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    Bundle,
    BundleError,
    default_threshold,
    library_versions,
    save_bundle,
)
from monitor.model.preprocess import PREPROCESSING, to_full_range, to_model_input, to_working_image, uint16_white
from monitor.model.tiling import pad, random_positions, tile_grid
from monitor.training.health import batchnorm_recalibration, check_model, recalibrate_batchnorm
from monitor.training.options import LOSSES, TrainOptions

if TYPE_CHECKING:
    from monitor.training.feedback import Feedback, FeedbackImages

log = logging.getLogger(__name__)

MIN_VALIDATION_IMAGES = 5
MIN_TRAINING_IMAGES = 8


class TrainingDataError(Exception):
    """Training data that cannot make a model; the message says what is wrong and where."""


@dataclass
class TrainingData:
    """Decoded training images and a summary of where they came from."""

    images: list[np.ndarray]
    summary: dict[str, Any]


SHAPES_LISTED = 5  # a log line names this many of the most common sizes, then counts the rest


def describe_shapes(shapes: dict[str, int]) -> str:
    """`shapes=...` for a log line: the most common sizes with their counts, then how many more sizes there are.

    A folder of images cropped by hand may hold a different size per file: one line, not one entry per size.
    """
    common = sorted(shapes.items(), key=lambda kv: (-kv[1], kv[0]))
    listed = ",".join(f"{k}:{v}" for k, v in common[:SHAPES_LISTED])
    more = len(common) - SHAPES_LISTED
    return f"sizes={len(common)} shapes={listed}" + (f",+{more}_more" if more > 0 else "")


def load_training_images(data_dir: Path, max_unreadable_fraction: float = 0.1,
                         exclude: Container[Path] = ()) -> TrainingData:
    """Read every image under data_dir; unreadable files are skipped and listed, fatal above a share.

    Files `in exclude` (copies of defect-labelled images, monitor/training/feedback.py) are left out and
    listed in the summary: a defect in the "good" folder must not be learnt as normal.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TrainingDataError(f"{data_dir}: training data folder does not exist")
    paths = list_images(data_dir)
    # A bundle kept inside the data folder (`--out good/model`) holds report plots: never training data.
    for bundle_dir in sorted(m.parent for m in data_dir.rglob(META_FILE)):
        kept = [p for p in paths if bundle_dir not in p.parents]
        log.warning("training_bundle_folder_skipped folder=%s images=%d", bundle_dir, len(paths) - len(kept))
        paths = kept
    if not paths:
        raise TrainingDataError(f"{data_dir}: no image files (PNG, JPEG, BMP, TIFF, WebP, PGM/PPM) in the folder")
    excluded = [p for p in paths if p in exclude]
    for p in excluded:
        log.warning("training_file_labelled_defect path=%s note=excluded", p)
    paths = [p for p in paths if p not in excluded]
    images, skipped, shapes = [], [], {}
    why: dict[Path, str] = {}
    for p in paths:
        try:
            image = load_image(p)
        except UnreadableImage as exc:
            skipped.append(p)
            why[p] = str(exc)
            log.warning("training_file_unreadable path=%s reason=%s", p, exc)
            continue
        images.append(image)
        key = "x".join(str(s) for s in image.shape)
        shapes[key] = shapes.get(key, 0) + 1
    if skipped and len(skipped) > max_unreadable_fraction * len(paths):
        raise TrainingDataError(
            f"{data_dir}: {len(skipped)} of {len(paths)} image files are unreadable (more than "
            f"{max_unreadable_fraction:.0%}), e.g. " + "; ".join(f"{p.name}: {why[p]}" for p in skipped[:3]))
    if len(shapes) > 1:
        log.warning("training_mixed_sizes %s note=each_image_resized_to_the_model_input_or_tiled",
                    describe_shapes(shapes))
    listing = "\n".join(f"{p.relative_to(data_dir).as_posix()}\t{p.stat().st_size}" for p in paths)
    summary = {
        "folder": str(data_dir.resolve()),
        "files": len(paths),
        "images": len(images),
        "skipped": [str(p.relative_to(data_dir)) for p in skipped],
        **({"excluded_labelled_defects": [str(p.relative_to(data_dir)) for p in excluded]} if excluded else {}),
        "shapes": shapes,
        "file_list_sha256": hashlib.sha256(listing.encode()).hexdigest(),
    }
    return TrainingData(images=images, summary=summary)


def _set_seed(seed: int | None) -> None:
    import keras
    import tensorflow as tf

    if seed is None:
        return
    keras.utils.set_random_seed(seed)
    # Deterministic kernels: the same seed gives the same weights on the CPU, run after run.
    tf.config.experimental.enable_op_determinism()


def split_validation(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train and validation indices; raises TrainingDataError when too few for both."""
    n_val = int(round(n * fraction))
    if n_val < MIN_VALIDATION_IMAGES or n - n_val < MIN_TRAINING_IMAGES:
        need = max(MIN_VALIDATION_IMAGES + MIN_TRAINING_IMAGES,
                   math.ceil(MIN_VALIDATION_IMAGES / fraction), )
        raise TrainingDataError(
            f"too few images for a validation split: {n} images with validation_split={fraction} give "
            f"{n_val} for validation and {n - n_val} for training; need at least {need} images "
            f"({MIN_VALIDATION_IMAGES} for validation, {MIN_TRAINING_IMAGES} for training)")
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


ProgressFn = Callable[[str], None]


def _feedback_images(feedback: Feedback | None, n_train: int, data: TrainingData,
                     progress: ProgressFn | None) -> FeedbackImages | None:
    """The false alarms to add to `n_train` normal training images; recorded in the data summary."""
    if feedback is None:
        return None
    from monitor.training.feedback import false_alarm_images

    extra = false_alarm_images(feedback, n_train)
    data.summary["feedback"] = extra.to_json(feedback, data.summary.get("excluded_labelled_defects", []))
    log.info("training_feedback false_alarms=%d repeats=%d share=%.3f missing=%d defects_held_out=%d",
             len(extra.images), extra.repeats, extra.share, len(feedback.missing), len(feedback.defects))
    if progress:
        progress(f"feedback: {len(extra.images)} false alarms join the {n_train} normal training images, each "
                 f"{extra.repeats}x ({extra.share:.0%} of an epoch); {len(feedback.defects)} defect-labelled "
                 f"images kept out of training; {len(feedback.missing)} labelled verdicts without an image")
    return extra


class TileCrops:
    """Random tile crops of images at working resolution, drawn afresh for every epoch (tiled training).

    The working images are kept in float16: half of float32's memory, and its step near 1 (1/2048) is finer
    than a grey level (1/255); the crops of one epoch are float32. Memory is the working images plus one
    epoch of crops, whatever the number of epochs.
    """

    def __init__(self, images: list[np.ndarray], tile: tuple[int, int], per_image: int) -> None:
        self.tile = tile
        self.per_image = int(per_image)
        self.grids = [tile_grid(im.shape[0], im.shape[1], tile) for im in images]
        # Reflect-padded up to a tile where smaller: the scorer pads the same way.
        self.images = [pad(im, g).astype(np.float16) for im, g in zip(images, self.grids, strict=True)]
        self.channels = images[0].shape[2] if images else 1

    def __len__(self) -> int:
        return len(self.images) * self.per_image

    def add(self, images: list[np.ndarray], times: int) -> None:
        """Append each working image `times` times (oversampled feedback); the copies share one array."""
        for image in images:
            grid = tile_grid(image.shape[0], image.shape[1], self.tile)
            padded = pad(image, grid).astype(np.float16)
            self.grids += [grid] * times
            self.images += [padded] * times

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """per_image random crops of every image (image by image), float32 N x th x tw x C."""
        th, tw = self.tile
        out = np.empty((len(self), th, tw, self.channels), np.float32)
        row = 0
        for image, grid in zip(self.images, self.grids, strict=True):
            for y, x in random_positions(grid, self.per_image, rng):
                out[row] = image[y:y + th, x:x + tw]
                row += 1
        return out


def fixed_sample(train_x: np.ndarray | TileCrops, seed: int | None) -> np.ndarray:
    """The training inputs as one array: the arrays themselves, or one seeded draw of tile crops."""
    return train_x.draw(np.random.default_rng(seed)) if isinstance(train_x, TileCrops) else train_x


def working_images(images: list[np.ndarray], options: TrainOptions) -> list[np.ndarray]:
    """Decoded images at the working resolution of a tiled training run (float32 HxWxC in [0, 1])."""
    assert options.scale is not None
    return [to_working_image(im, options.scale, options.channels) for im in images]


def _progress_callback(epochs: int, report: ProgressFn):  # noqa: ANN202 - keras type only known late
    import keras

    class Progress(keras.callbacks.Callback):
        """One line per epoch: epoch, loss, validation loss, learning rate, time left."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.start = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            done = epoch + 1
            elapsed = time.monotonic() - self.start
            left = elapsed / done * (epochs - done)
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            report(f"epoch {done}/{epochs} loss={logs.get('loss', float('nan')):.5f} "
                   f"val_loss={logs.get('val_loss', float('nan')):.5f} lr={lr:.2e} "
                   f"elapsed={elapsed:.1f}s eta={left:.1f}s (at most; early stopping may end sooner)")

    return Progress()


def reconstruction_loss(name: str) -> Any:
    """The Keras training loss called `name`: 'mse', 'ssim' (mean 1 - SSIM) or 'mse+ssim'."""
    import tensorflow as tf

    from monitor.model.scores import ssim_error_map

    if name == "mse":
        return "mse"
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")

    # ssim_error_map is (1 - SSIM) / 2 with an 11x11 Gaussian window (sigma 1.5), as the ssim_max score.
    def ssim_loss(y_true: Any, y_pred: Any) -> Any:
        return 2.0 * tf.reduce_mean(ssim_error_map(y_true, y_pred, 1.5), axis=[1, 2])

    def mse_ssim_loss(y_true: Any, y_pred: Any) -> Any:
        # MSE of [0, 1] images is ~100x smaller than 1 - SSIM; SSIM sets the shape, MSE keeps the brightness.
        return tf.reduce_mean(tf.square(y_true - y_pred), axis=[1, 2, 3]) + 0.5 * ssim_loss(y_true, y_pred)

    return ssim_loss if name == "ssim" else mse_ssim_loss


def _flip_batches(x: np.ndarray | TileCrops, batch_size: int, seed: int | None, flip: bool = True,
                  per_epoch: int | None = None) -> Any:
    """Training batches reshuffled every epoch, a fresh random half of them mirrored left-right (`flip`).

    From TileCrops, every epoch also draws new random crops. `per_epoch`: a fresh random subset of that many
    inputs every epoch (None: all of them).
    """
    import keras

    n = len(x) if per_epoch is None else min(per_epoch, len(x))

    class FlipBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)  # one worker: repeatable with a seed
            self.rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def __len__(self) -> int:
            return math.ceil(n / batch_size)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * batch_size:(i + 1) * batch_size]
            batch = self.x[idx]
            mirror = self.flip[idx]
            batch[mirror] = batch[mirror, :, ::-1]  # x[idx] is a copy: the training array stays as it was
            return batch, batch

        def on_epoch_end(self) -> None:
            self.x = x.draw(self.rng) if isinstance(x, TileCrops) else x
            self.order = self.rng.permutation(len(x))[:n]
            self.flip = (self.rng.random(len(x)) < 0.5) & flip

    return FlipBatches()


@contextmanager
def without_remapper() -> Iterator[None]:
    """Grappler's remapper off for the graphs traced inside, back to its setting after.

    On the training step of a Conv2D + BiasAdd + LeakyReLU model the remapper fails (a known TensorFlow bug:
    "remapper failed: INVALID_ARGUMENT: Mutation::Apply error: fanout ... LeakyReluGrad exist for missing node
    ... BiasAdd") and grappler keeps that graph unfused anyway, so turning the pass off costs the training step
    nothing and spares every `monitor train` an error line that reads like a fault. The scorer's forward pass,
    traced outside, keeps its fusions. The setting is the process's: one training at a time (as the CLI runs).
    """
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options().get("remapping")
    tf.config.optimizer.set_experimental_options({"remapping": False})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": before})  # None: back to unset, the default


def fit_autoencoder(train_x: np.ndarray | TileCrops, val_x: np.ndarray, options: TrainOptions,
                    progress: ProgressFn | None = None, recalibration_x: np.ndarray | None = None,
                    ) -> tuple[Any, dict[str, list[float]]]:
    """Train the ConvAE on preprocessed arrays (or tile crops drawn per epoch); the model and history.

    The model comes back with its best validation weights.
    """
    import keras

    from monitor.training.architecture import build_model

    options.validate()
    _set_seed(options.seed)
    h, w = options.model_size
    model = build_model(options.architecture, h, w, options.channels, options.model_filters, options.latent,
                        options.code_channels)
    per_epoch = options.samples_per_epoch
    if per_epoch is not None and per_epoch >= len(train_x):
        per_epoch = None  # the subset would be everything: the plain path, as before
    steps = max(1, math.ceil((per_epoch or len(train_x)) / options.batch_size))
    lr: Any = options.learning_rate
    if options.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(options.learning_rate, decay_steps=steps * options.epochs,
                                                    alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=reconstruction_loss(options.loss))
    callbacks: list[Any] = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=options.patience,
                                                          restore_best_weights=True)]
    if options.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(2, options.patience // 3), min_lr=1e-5))
    # Validation (so early stopping and the restored best weights) sees the BatchNorm statistics the model
    # will score with, not moving averages that trail the weights (monitor/training/health.py).
    bn_x = fixed_sample(train_x, options.seed) if recalibration_x is None else recalibration_x
    callbacks.append(batchnorm_recalibration(bn_x))
    if progress is not None:
        callbacks.append(_progress_callback(options.epochs, progress))
    with without_remapper():
        if options.flip or isinstance(train_x, TileCrops) or per_epoch is not None:
            batches = _flip_batches(train_x, options.batch_size, options.seed, options.flip, per_epoch)
            hist = model.fit(batches, validation_data=(val_x, val_x), epochs=options.epochs, callbacks=callbacks,
                             verbose=0)
        else:
            hist = model.fit(train_x, train_x, validation_data=(val_x, val_x), epochs=options.epochs,
                             batch_size=options.batch_size, shuffle=True, callbacks=callbacks, verbose=0)
    recalibrate_batchnorm(model, bn_x)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return model, history


def calibration_scores(bundle: Bundle, images: list[np.ndarray], max_batch: int = 32) -> np.ndarray:
    """Scores of whole decoded images through BatchScorer.score, the daemon's path (tiled or not)."""
    from monitor.model.scorer import BatchScorer

    scorer = BatchScorer(bundle, max_batch=max_batch)
    parts = [scorer.score(images[part]).scores for part in scorer.call_groups(images)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)


def train_arrays(train_x: np.ndarray | TileCrops, val_x: np.ndarray, options: TrainOptions,
                 progress: ProgressFn | None = None, data_summary: dict | None = None,
                 path: Path | None = None,
                 calibration_images: list[np.ndarray] | None = None) -> tuple[Bundle, dict[str, list[float]]]:
    """Train and calibrate on preprocessed arrays; an in-memory Bundle (not saved) and the history.

    With tiling, `train_x` is TileCrops, `val_x` fixed crops of the validation images (the validation
    loss), and `calibration_images` the whole decoded validation images: their scores through the tiled
    scorer (image score = worst tile) are the calibration scores, exactly as the daemon will score.
    """
    if options.tiling and calibration_images is None:
        raise ValueError("tiled training needs the whole validation images to calibrate on")
    started = time.monotonic()
    sample = fixed_sample(train_x, options.seed)  # one draw serves BatchNorm recalibration and the health check
    model, history = fit_autoencoder(train_x, val_x, options, progress, recalibration_x=sample)
    seconds = time.monotonic() - started
    health = check_model(model, sample, val_x, history, options.batch_size, options.architecture)
    log.info("%s architecture=%s loss=%s", health.describe(), options.architecture, options.loss)
    h, w = options.model_size
    n_train = len(train_x.images) if isinstance(train_x, TileCrops) else len(train_x)
    n_val = len(calibration_images) if options.tiling else len(val_x)
    calibration_source = "validation images (held out from training)"
    if options.tiling:
        calibration_source += ", whole, through the tiled scorer (image score = worst tile)"
    val_losses = history.get("val_loss", [])
    best_epoch = int(np.argmin(val_losses)) + 1 if val_losses else None
    options_json = options.model_dump(exclude={"quiet"})
    options_json["filters"] = list(options.model_filters)  # resolved: None would hide the architecture's default
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "input": {"height": h, "width": w, "channels": options.channels,
                  "color_order": "gray" if options.channels == 1 else "BGR", "dtype": "float32",
                  "range": [0.0, 1.0]},
        "preprocessing": PREPROCESSING,
        "architecture": {"name": options.architecture, "filters": list(options.model_filters),
                         **({"code_channels": options.code_channels} if options.architecture == "conv"
                            else {"latent": options.latent}),
                         "loss": options.loss, "parameters": int(model.count_params())},
        "score": {"name": options.score, "params": dict(options.score_params)},
        "calibration": {"scores": [0.0], "source": calibration_source, "count": int(n_val)},
        "threshold": {"quantile": options.quantile, "margin": options.margin,
                      "method": (f"margin {options.margin} x quantile {options.quantile} of the validation "
                                 "scores (numpy linear interpolation)")},
        "training": {"options": options_json, "epochs_run": len(history.get("loss", [])),
                     "best_epoch": best_epoch, "train_images": int(n_train),
                     "validation_images": int(n_val), "history": history,
                     "seconds": round(seconds, 3),
                     "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                     "health": health.to_json()},
        "data": data_summary or {"images": int(n_train + n_val)},
        "versions": library_versions(),
    }
    if options.tiling:
        meta["tiling"] = {"scale": options.scale, "stride": list(options.tile_stride)}
        meta["training"].update({"crops_per_image": options.crops, "train_crops_per_epoch": len(train_x),
                                 "validation_crops": int(len(val_x))})
    return calibrate(Bundle(path=path or Path("."), model=model, meta=meta), val_x, calibration_images), history


def calibrate(bundle: Bundle, val_x: np.ndarray, calibration_images: list[np.ndarray] | None) -> Bundle:
    """The bundle with calibration scores of the validation images under its own score, as the daemon scores.

    Tiled: the whole decoded validation images through the tiled scorer; else the preprocessed inputs.
    """
    from monitor.model.scorer import BatchScorer

    if bundle.tiling is not None:
        assert calibration_images is not None
        cal = calibration_scores(bundle, calibration_images)
    else:
        cal = BatchScorer(bundle, max_batch=min(64, max(1, len(val_x)))).score_inputs(val_x).scores
    meta = dict(bundle.meta)
    meta["score"] = {**meta["score"], "params": dict(bundle.score_function().params)}
    meta["calibration"] = {**meta["calibration"], "scores": [float(v) for v in cal]}
    threshold = meta["threshold"]
    meta["threshold"] = {**threshold, "value": default_threshold(cal, threshold["quantile"], threshold["margin"])}
    return Bundle(path=bundle.path, model=bundle.model, meta=meta, density=bundle.density,
                  discriminator=bundle.discriminator)


def _tiled_sets(images: list[np.ndarray], train_idx: np.ndarray, val_idx: np.ndarray, options: TrainOptions,
                rng: np.random.Generator, progress: ProgressFn | None, extra: FeedbackImages | None = None,
                ) -> tuple[TileCrops, np.ndarray, list[np.ndarray]]:
    """Training crops (drawn per epoch), fixed validation crops (a stable validation loss for early
    stopping) and the whole validation images (calibration), for a tiled run.

    `extra`: false alarms from feedback, added to the training crops only (repeated), never to validation.
    """
    train = TileCrops(working_images([images[i] for i in train_idx], options), options.tile, options.crops)
    if extra is not None and extra.images:
        train.add(working_images(extra.images, options), extra.repeats)
    val = TileCrops(working_images([images[i] for i in val_idx], options), options.tile, options.crops)
    val_x = val.draw(rng)
    sizes = sorted({(g.height, g.width) for g in train.grids})
    th, tw = options.tile
    log.info("training_tiled scale=%g tile=%dx%d stride=%dx%d crops_per_image=%d working_sizes=%s",
             options.scale, th, tw, *options.tile_stride, options.crops,
             ",".join(f"{h}x{w}" for h, w in sizes[:5]) + (",..." if len(sizes) > 5 else ""))
    if progress:
        progress(f"training on {len(train_idx)} images ({options.crops} random {th}x{tw} crops each per epoch at "
                 f"scale {options.scale:g}), validating on {len(val_idx)} ({len(val_x)} fixed crops; whole images "
                 f"for calibration), up to {options.epochs} epochs")
    return train, val_x, [images[i] for i in val_idx]


# Architectures (with their loss) tried when none is given: the seeds' dense latent for parts in a fixture,
# the fully convolutional one for textures and tiles; the held-out images with synthetic defects decide.
ARCHITECTURE_CANDIDATES: tuple[tuple[str, str], ...] = (("seed", "mse"), ("conv", "ssim"))
SELECTION_DEFECTS = 120  # synthetic defects the score is chosen on, at least (more with more validation images)


class DegenerateModelError(TrainingDataError):
    """Every trained model failed the health check (monitor/training/health.py); the message says what to do."""


def _candidates(options: TrainOptions, explicit: set[str]) -> list[TrainOptions]:
    """The option sets to train: one, or one per candidate architecture when auto and none was given."""
    if not options.auto or "architecture" in explicit:
        return [options]
    # Only the options set, as validate() does: a dumped default would read as an explicit one (a default `size`
    # then contradicts a tile other than 64x64, a strip narrower than 64 px, and is refused).
    base = options.model_dump(exclude_unset=True)
    return [TrainOptions.model_validate({**base, "architecture": arch, **({} if "loss" in explicit else
                                                                         {"loss": loss})})
            for arch, loss in ARCHITECTURE_CANDIDATES]


def _auto_options(options: TrainOptions, explicit: set[str], images: list[np.ndarray], n_models: int,
                  progress: ProgressFn | None) -> tuple[TrainOptions, dict | None]:
    """Options with every setting not given chosen from the data (auto.py); and the record of the choice."""
    if not options.auto:
        return options, None
    from monitor.training.auto import BUDGET_SAMPLES, choose_settings

    choice = choose_settings(images, validation_split=options.validation_split,
                             budget_samples=BUDGET_SAMPLES / n_models)
    chosen = choice.without(explicit)
    options = TrainOptions.model_validate({**options.model_dump(include=explicit), **chosen})
    log.info("%s", choice.describe())
    if progress:
        for key in chosen:
            progress(f"chose {key}={chosen[key]}: {choice.reasons.get(key, '')}")
    return options, choice.to_json(chosen)


def _select(results: list[tuple[TrainOptions, Bundle, dict]], train_x: np.ndarray | TileCrops, val_x: np.ndarray,
            options: TrainOptions, calibration: list[np.ndarray] | None, rng: np.random.Generator,
            progress: ProgressFn | None, fixed_score: bool) -> tuple[tuple[TrainOptions, Bundle, dict], dict]:
    """The best (architecture, score) on held-out normal inputs vs synthetic defects made from them.

    `fixed_score`: the score was given; only the architecture is chosen.
    """
    from monitor.training.defects import defect_set
    from monitor.training.select import best_first, rank_scores

    min_px = _min_defect_px(options)
    defects = defect_set(list(val_x), max(SELECTION_DEFECTS, len(val_x)), rng, min_size_px=min_px)
    defect_x = np.stack([d.image for d in defects])
    families = [d.family for d in defects]
    sample = train_x.draw(rng) if isinstance(train_x, TileCrops) else train_x  # other crops than training's
    if progress:  # minutes on large images: say what is being done before doing it
        kind = "crops" if isinstance(train_x, TileCrops) else "images"
        progress(f"choosing the score: each architecture's candidate scores on {len(val_x)} held-out {kind} and "
                 f"{len(defect_x)} synthetic defects made from them")
    trials = []
    for opts, bundle, _ in results:
        only = (opts.score, dict(opts.score_params)) if fixed_score else None
        for trial in rank_scores(bundle.model, sample, val_x, defect_x, families, options.quantile, only):
            trial.architecture = opts.architecture
            trials.append(trial)
    ranked = best_first(trials)
    best = ranked[0]
    chosen = next(r for r in results if r[0].architecture == best.architecture)
    opts, bundle, history = chosen
    meta = dict(bundle.meta)
    meta["score"] = {"name": best.score, "params": dict(best.params)}
    if best.density is not None:
        meta["density"] = best.density_meta()
    bundle = calibrate(Bundle(path=bundle.path, model=bundle.model, meta=meta, density=best.gaussian), val_x,
                       calibration)
    image_record = None
    if isinstance(train_x, TileCrops) and calibration is not None and not fixed_score:
        from monitor.training.image_level import COMPARE_IMAGES, choose_image_level

        if progress:
            progress(f"scoring {min(len(calibration), COMPARE_IMAGES)} whole held-out images and synthetic defects "
                     "on them at working resolution: whole-image density vs tiles")
        section, gaussian, image_record = choose_image_level(bundle, (best.score, best.params), train_x.images,
                                                             calibration, rng)
        if section is not None:
            meta = {**meta, "score": {"name": best.score, "params": dict(best.params)}, "density": section}
            bundle = calibrate(Bundle(path=bundle.path, model=bundle.model, meta=meta, density=gaussian), val_x,
                               calibration)
        if progress:
            progress(f"whole-image density vs tiles on {image_record['whole_normal_images']} held-out images and "
                     f"{image_record['whole_image_defects']} synthetic defects: tiles AUROC "
                     f"{image_record['tiles']:.4f}, "
                     + ", ".join(f"{k} {v:.4f}" for k, v in image_record["image_level"].items())
                     + f"; chose {image_record['chosen']}")
    record = {
        "chosen": f"{best.architecture}/{best.label}", "auroc": best.auroc, "average_precision":
        best.average_precision, "expected_detection_rate": best.detection_rate, "per_family": best.per_family,
        "normal_inputs": int(len(val_x)), "synthetic_defects": int(len(defect_x)), "min_defect_px": min_px,
        "rule": "best AUROC, normal vs synthetic defects; within 0.005 of it the higher detection rate at the "
                "bundle's quantile, then the simpler candidate",
        "trials": [{**t.to_json(), "label": f"{t.architecture}/{t.label}"} for t in ranked],
    }
    if image_record is not None:
        record["whole_image"] = image_record
    log.info("score_selected chosen=%s auroc=%.4f detection_rate=%.3f candidates=%d", record["chosen"], best.auroc,
             best.detection_rate, len(ranked))
    if progress:
        for t in ranked[:5]:
            progress(f"candidate {t.architecture}/{t.label}: AUROC {t.auroc:.4f}, detects {t.detection_rate:.0%} "
                     "of synthetic defects at the threshold")
        rates = ", ".join(f"{k} {v:.0%}" for k, v in best.per_family.items())
        progress(f"chose {record['chosen']}: expected detection rate {best.detection_rate:.0%} ({rates})")
    return (opts, bundle, history), record


def _min_defect_px(options: TrainOptions) -> int:
    """The smallest synthetic defect: 4 px of the original image, at working resolution."""
    return max(2, round(4 * (options.scale or 1.0)))


def _with_discriminator(bundle: Bundle, train_x: np.ndarray | TileCrops, val_x: np.ndarray, options: TrainOptions,
                        calibration: list[np.ndarray] | None, rng: np.random.Generator,
                        progress: ProgressFn | None) -> tuple[Bundle, dict | None]:
    """The bundle with a defect network joined to its score when it earns its place (discriminator.py), and
    the record of the decision; the bundle as it was, and why, when it cannot join."""
    from monitor.training import discriminator as network_
    from monitor.training.image_level import COMPARE_IMAGES, MIN_DEFECTS, at_most, whole_image_min_px
    from monitor.training.select import TIE

    sidecar = bundle.sidecar
    h, w = val_x.shape[1:3]
    min_px = _min_defect_px(options)
    whole = sidecar.whole_image_density
    if not whole and 2 * min_px > min(h, w):
        why = f"inputs of {h}x{w} are too small for synthetic defects"
        log.info("discriminator_skipped reason=%r", why)
        return bundle, {"used": False, "why": why}
    planned = options.epochs * (options.samples_per_epoch or len(train_x))
    samples = network_.training_samples(h * w, planned)
    if progress:
        progress(f"training a defect network on {samples} inputs, half with synthetic defects of "
                 f"{', '.join(network_.TRAINED_ON)}")
    start = time.monotonic()
    draw = train_x.draw if isinstance(train_x, TileCrops) else (lambda _: train_x)
    network = network_.train_discriminator(draw, samples, rng, min_px, progress)
    if whole:  # judged as the whole-image density was chosen: whole held-out images, through the tiled scorer
        assert calibration is not None
        normal = at_most(calibration, COMPARE_IMAGES, rng)
        judge_px, n_defects = whole_image_min_px(normal), max(MIN_DEFECTS, 2 * len(normal))
    else:
        normal, judge_px, n_defects = val_x, min_px, max(SELECTION_DEFECTS, len(val_x))
    section, record = network_.judge(bundle, network, normal, judge_px, rng, n_defects, options.quantile, TIE)
    # the threshold without it, so that the score with and without the network can be compared on labelled data
    record.update({"samples": samples, "seconds": round(time.monotonic() - start, 1),
                   "calibration_without": list(bundle.meta["calibration"]["scores"])})
    unseen = {k: record[k]["unseen"] for k in ("without", "with")}
    log.info("discriminator_judged used=%s unseen_auroc_without=%.4f unseen_auroc_with=%.4f "
             "unseen_detection_without=%.3f unseen_detection_with=%.3f seconds=%.1f", record["used"],
             unseen["without"]["auroc"], unseen["with"]["auroc"], unseen["without"]["detection_rate"],
             unseen["with"]["detection_rate"], record["seconds"])
    if progress:
        progress(f"defect network on synthetic defects it never saw ({', '.join(network_.HELD_OUT)}): AUROC "
                 f"{unseen['without']['auroc']:.4f} without, {unseen['with']['auroc']:.4f} with it; detects "
                 f"{unseen['without']['detection_rate']:.0%} without, {unseen['with']['detection_rate']:.0%} "
                 f"with it; {'joins the score' if record['used'] else 'left out'}")
    if section is None:
        return bundle, record
    meta = {**bundle.meta, "discriminator": section}
    return calibrate(Bundle(path=bundle.path, model=bundle.model, meta=meta, density=bundle.density,
                            discriminator=network), val_x, calibration), record


def _healthy(results: list[tuple[TrainOptions, Bundle, dict]]) -> list[tuple[TrainOptions, Bundle, dict]]:
    """The models that passed the health check; DegenerateModelError saying why when none did.

    With `allow_degenerate`, all of them (their problems are logged and kept in the sidecar).
    """
    healthy = [r for r in results if r[1].meta["training"]["health"]["ok"] or r[0].allow_degenerate]
    for opts, bundle, _ in results:
        if not bundle.meta["training"]["health"]["ok"]:
            log.warning("model_degenerate architecture=%s problems=%r", opts.architecture,
                        bundle.meta["training"]["health"]["problems"])
    if not healthy:
        lines = [f"{o.architecture}: {p}" for o, b, _ in results for p in b.meta["training"]["health"]["problems"]]
        raise DegenerateModelError("the trained model is degenerate and was not saved:\n" + "\n".join(lines))
    return healthy


def _with_false_alarms(train_x: np.ndarray, extra: FeedbackImages, options: TrainOptions) -> np.ndarray:
    """The normal training inputs followed by each false alarm's input `extra.repeats` times."""
    if not extra.images:
        return train_x
    h, w = options.size
    fa = np.stack([to_model_input(im, h, w, options.channels) for im in extra.images])
    return np.concatenate([train_x, np.repeat(fa, extra.repeats, axis=0)])


def _stretched(images: list[np.ndarray], white: int) -> list[np.ndarray]:
    """The 16-bit images among `images` stretched from 0..white to 0..65535; the others as they are."""
    return [to_full_range(im, white) if im.dtype == np.uint16 else im for im in images]


def _read_as_full_range(data: TrainingData, progress: ProgressFn | None) -> int | None:
    """Stretch 16-bit images that use fewer bits (a 12-bit camera's) to 0..65535 in place; their white level.

    Everything in training (the colour test, the synthetic defects, the health check, the calibration) then
    sees them as it sees 8-bit images of the same parts; the bundle records the level, and the scorer reads
    raw files against it, so the daemon's scores are those of calibration (to within a rounding of 1/65535).
    """
    white = uint16_white(data.images)
    if white is None:
        return None
    data.images = _stretched(data.images, white)
    bits = int(white).bit_length()
    data.summary["uint16_white"] = white
    log.info("training_uint16_white white=%d bits=%d", white, bits)
    if progress:
        progress(f"16-bit images use {bits} of 16 bits (no pixel above {white}): read as {bits}-bit, {white} is "
                 "white (a brighter pixel in production reads as white)")
    return white


def train_bundle(data_dir: Path, out_dir: Path, options: TrainOptions | None = None,
                 progress: ProgressFn | None = None, feedback: Feedback | None = None) -> Bundle:
    """Train on a folder of normal images and save a calibrated bundle (with report/) in out_dir.

    With `auto` (the default), every option not given is chosen from the data, and when no architecture or
    score is given, candidates are trained and chosen on held-out images with synthetic defects.
    Progress lines go to `progress` (the CLI prints them on stderr), else to the log unless quiet.

    `feedback` (monitor/training/feedback.py): its false alarms join the training split, oversampled; its
    defect-labelled images never do (nor copies of them in data_dir). Validation, calibration and the choice
    of settings are judged on held-out normal images alone; what is fitted on the training inputs (the
    weights, a density's Gaussian) sees the false alarms too, since they are normal parts, and
    `training.train_images` counts their copies.
    """
    options = options or TrainOptions()
    options.validate()
    try:  # an --out that cannot be written fails now, not after the training
        check_writable_folder(Path(out_dir))
    except FolderNotWritable as exc:
        raise BundleError(f"bundle folder {exc}") from exc
    explicit = set(options.model_fields_set)
    if progress is None and not options.quiet:
        def progress(line: str) -> None:
            log.info('training_progress message="%s"', line)
    elif options.quiet:
        progress = None
    exclude: Container[Path] = ()
    if feedback is not None:
        from monitor.training.feedback import Fingerprints

        exclude = Fingerprints(v.image for v in feedback.defects if v.image is not None)
    data = load_training_images(Path(data_dir), options.max_unreadable_fraction, exclude)
    white = _read_as_full_range(data, progress)
    options, auto_record = _auto_options(options, explicit, data.images, len(_candidates(options, explicit)),
                                         progress)
    rng = np.random.default_rng(options.seed)
    train_idx, val_idx = split_validation(len(data.images), options.validation_split, rng)
    extra = _feedback_images(feedback, len(train_idx), data, progress)
    if extra is not None and white is not None:
        extra.images = _stretched(extra.images, white)
    if options.tiling:
        train_x, val_x, calibration = _tiled_sets(data.images, train_idx, val_idx, options, rng, progress, extra)
    else:
        h, w = options.size
        x = np.stack([to_model_input(im, h, w, options.channels) for im in data.images])
        train_x, val_x, calibration = x[train_idx], x[val_idx], None
        if extra is not None:
            train_x = _with_false_alarms(train_x, extra, options)
        if progress:
            progress(f"training on {len(train_idx)} images, validating on {len(val_idx)}, input {h}x{w}x"
                     f"{options.channels}, up to {options.epochs} epochs")
    results = []
    for candidate in _candidates(options, explicit):
        if progress and len(results) == 0 and options.auto and "architecture" not in explicit:
            progress("training each candidate architecture: " + ", ".join(f"{a} ({loss} loss)" for a, loss in
                                                                          ARCHITECTURE_CANDIDATES))
        results.append((candidate, *train_arrays(train_x, val_x, candidate, progress, data.summary,
                                                 Path(out_dir), calibration)))
    results = _healthy(results)
    selection = None
    if options.auto and ("score" not in explicit or len(results) > 1):
        (options, bundle, history), selection = _select(results, train_x, val_x, options, calibration, rng,
                                                        progress, fixed_score="score" in explicit)
    else:
        options, bundle, history = results[0]
    if options.discriminator or (options.discriminator is None and selection is not None
                                 and "score" not in explicit):
        bundle, decision = _with_discriminator(bundle, train_x, val_x, options, calibration, rng, progress)
        if selection is not None:
            selection["discriminator"] = decision
        else:
            bundle.meta["training"]["discriminator"] = decision
    bundle.meta["training"].update({k: v for k, v in (("auto", auto_record), ("selection", selection)) if v})
    if white is not None:
        # Only now: training scored the stretched copies; the daemon stretches raw files by this level instead.
        bundle.meta["input"] = {**bundle.meta["input"], "uint16_white": white}
    try:
        saved = save_bundle(out_dir, bundle.model, bundle.meta, density=bundle.density,
                            discriminator=bundle.discriminator)
    except OSError as exc:  # the folder was checked at the start: a disk filled or a folder removed meanwhile
        raise BundleError(f"{out_dir}: the trained model could not be saved: {exc}") from exc
    if options.report:
        from monitor.training.report import write_training_report

        write_training_report(saved, history, val_x)
    if progress:
        progress(f"saved {out_dir} threshold={saved.default_threshold:.6g} "
                 f"(best epoch {saved.meta['training']['best_epoch']})")
    log.info("training_done %s", saved.describe())
    return saved
