"""Training: a folder of normal images in, a calibrated model bundle (and a training report) out."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitor.images import list_images, read_image
from monitor.model.bundle import (
    FORMAT,
    FORMAT_VERSION,
    Bundle,
    default_threshold,
    library_versions,
    save_bundle,
)
from monitor.model.preprocess import PREPROCESSING, to_model_input
from monitor.training.options import LOSSES, TrainOptions

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


def load_training_images(data_dir: Path, max_unreadable_fraction: float = 0.1) -> TrainingData:
    """Read every image under data_dir; unreadable files are skipped and listed, fatal above a share."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TrainingDataError(f"{data_dir}: training data folder does not exist")
    paths = list_images(data_dir)
    if not paths:
        raise TrainingDataError(f"{data_dir}: no image files (PNG, JPEG, BMP, TIFF) in the folder")
    images, skipped, shapes = [], [], {}
    for p in paths:
        image = read_image(p)
        if image is None:
            skipped.append(p)
            continue
        images.append(image)
        key = "x".join(str(s) for s in image.shape)
        shapes[key] = shapes.get(key, 0) + 1
    for p in skipped:
        log.warning("training_file_unreadable path=%s", p)
    if skipped and len(skipped) > max_unreadable_fraction * len(paths):
        raise TrainingDataError(
            f"{data_dir}: {len(skipped)} of {len(paths)} image files are unreadable (more than "
            f"{max_unreadable_fraction:.0%}), e.g. {', '.join(p.name for p in skipped[:3])}")
    if len(shapes) > 1:
        log.warning("training_mixed_sizes shapes=%s note=all_resized_to_model_input",
                    ",".join(f"{k}:{v}" for k, v in sorted(shapes.items())))
    listing = "\n".join(f"{p.relative_to(data_dir).as_posix()}\t{p.stat().st_size}" for p in paths)
    summary = {
        "folder": str(data_dir.resolve()),
        "files": len(paths),
        "images": len(images),
        "skipped": [str(p.relative_to(data_dir)) for p in skipped],
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


def _flip_batches(x: np.ndarray, batch_size: int, seed: int | None) -> Any:
    """Training batches reshuffled every epoch, a fresh random half of them mirrored left-right."""
    import keras

    class FlipBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)  # one worker: repeatable with a seed
            self.rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def __len__(self) -> int:
            return math.ceil(len(x) / batch_size)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * batch_size:(i + 1) * batch_size]
            batch = x[idx]
            flip = self.flip[idx]
            batch[flip] = batch[flip, :, ::-1]  # x[idx] is a copy: the training array stays as it was
            return batch, batch

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(x))
            self.flip = self.rng.random(len(x)) < 0.5

    return FlipBatches()


def fit_autoencoder(train_x: np.ndarray, val_x: np.ndarray, options: TrainOptions,
                    progress: ProgressFn | None = None) -> tuple[Any, dict[str, list[float]]]:
    """Train the ConvAE on preprocessed arrays; returns the model (best validation weights) and history."""
    import keras

    from monitor.training.architecture import build_model

    options.validate()
    _set_seed(options.seed)
    h, w = options.size
    model = build_model(options.architecture, h, w, options.channels, options.model_filters, options.latent,
                        options.code_channels)
    steps = max(1, math.ceil(len(train_x) / options.batch_size))
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
    if progress is not None:
        callbacks.append(_progress_callback(options.epochs, progress))
    if options.flip:
        hist = model.fit(_flip_batches(train_x, options.batch_size, options.seed), validation_data=(val_x, val_x),
                         epochs=options.epochs, callbacks=callbacks, verbose=0)
    else:
        hist = model.fit(train_x, train_x, validation_data=(val_x, val_x), epochs=options.epochs,
                         batch_size=options.batch_size, shuffle=True, callbacks=callbacks, verbose=0)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return model, history


def train_arrays(train_x: np.ndarray, val_x: np.ndarray, options: TrainOptions,
                 progress: ProgressFn | None = None, data_summary: dict | None = None,
                 path: Path | None = None) -> tuple[Bundle, dict[str, list[float]]]:
    """Train and calibrate on preprocessed arrays; an in-memory Bundle (not saved) and the history."""
    from monitor.model.scorer import BatchScorer

    started = time.monotonic()
    model, history = fit_autoencoder(train_x, val_x, options, progress)
    seconds = time.monotonic() - started
    h, w = options.size
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
        "calibration": {"scores": [0.0], "source": "validation images (held out from training)",
                        "count": int(len(val_x))},
        "threshold": {"quantile": options.quantile, "margin": options.margin,
                      "method": (f"margin {options.margin} x quantile {options.quantile} of the validation "
                                 "scores (numpy linear interpolation)")},
        "training": {"options": options_json, "epochs_run": len(history.get("loss", [])),
                     "best_epoch": best_epoch, "train_images": int(len(train_x)),
                     "validation_images": int(len(val_x)), "history": history,
                     "seconds": round(seconds, 3),
                     "finished_at": datetime.now(UTC).isoformat(timespec="seconds")},
        "data": data_summary or {"images": int(len(train_x) + len(val_x))},
        "versions": library_versions(),
    }
    uncalibrated = Bundle(path=path or Path("."), model=model, meta=meta)
    cal = BatchScorer(uncalibrated, max_batch=min(64, max(1, len(val_x)))).score_inputs(val_x).scores
    meta["score"]["params"] = dict(uncalibrated.score_function().params)
    meta["calibration"]["scores"] = [float(s) for s in cal]
    meta["threshold"]["value"] = default_threshold(cal, options.quantile, options.margin)
    return Bundle(path=uncalibrated.path, model=model, meta=meta), history


def train_bundle(data_dir: Path, out_dir: Path, options: TrainOptions | None = None,
                 progress: ProgressFn | None = None) -> Bundle:
    """Train on a folder of normal images and save a calibrated bundle (with report/) in out_dir.

    Progress lines go to `progress` (the CLI prints them on stderr), else to the log unless quiet.
    """
    options = options or TrainOptions()
    options.validate()
    if progress is None and not options.quiet:
        def progress(line: str) -> None:
            log.info('training_progress message="%s"', line)
    elif options.quiet:
        progress = None
    data = load_training_images(Path(data_dir), options.max_unreadable_fraction)
    h, w = options.size
    rng = np.random.default_rng(options.seed)
    train_idx, val_idx = split_validation(len(data.images), options.validation_split, rng)
    x = np.stack([to_model_input(im, h, w, options.channels) for im in data.images])
    if progress:
        progress(f"training on {len(train_idx)} images, validating on {len(val_idx)}, input {h}x{w}x"
                 f"{options.channels}, up to {options.epochs} epochs")
    bundle, history = train_arrays(x[train_idx], x[val_idx], options, progress, data.summary, Path(out_dir))
    saved = save_bundle(out_dir, bundle.model, bundle.meta)
    if options.report:
        from monitor.training.report import write_training_report

        write_training_report(saved, history, x[val_idx])
    if progress:
        progress(f"saved {out_dir} threshold={saved.default_threshold:.6g} "
                 f"(best epoch {saved.meta['training']['best_epoch']})")
    log.info("training_done %s", saved.describe())
    return saved
