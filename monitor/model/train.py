"""Training: a folder of normal images in, a calibrated model bundle (and a training report) out."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from monitor.model.bundle import Bundle, default_threshold, library_versions, save_bundle
from monitor.model.preprocess import PREPROCESSING, to_model_input
from monitor.model.scores import SCORE_NAMES

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_VALIDATION_IMAGES = 5
MIN_TRAINING_IMAGES = 8
LOSSES: tuple[str, ...] = ("mse", "ssim", "mse+ssim")


# Settings for textures and surfaces (the shipped default model's; benchmarks/quality.py, texture protocol):
# fully convolutional AE, SSIM loss, 80 epochs, 0.99 quantile of the smoothed squared error map. Mirrored
# copies (flip) scored the same on the validation set and cost half as much time again, so they are off.
# Same as `monitor train --architecture conv --loss ssim --epochs 80 --score smooth_quantile`.
TEXTURE_SETTINGS: dict[str, Any] = {"architecture": "conv", "loss": "ssim", "epochs": 80,
                                    "score": "smooth_quantile", "score_params": {"sigma": 2.0, "q": 0.99}}
# Named bundles of settings for `monitor train --preset NAME` (or `preset:` in a training: section).
PRESETS: dict[str, dict[str, Any]] = {"texture": TEXTURE_SETTINGS}


class TrainingDataError(Exception):
    """Training data that cannot make a model; the message says what is wrong and where."""


@dataclass
class TrainOptions:
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
    learning_rate: float = 1e-3
    validation_split: float = 0.2
    patience: int = 10  # early stopping: epochs without a better validation loss
    lr_schedule: str = "plateau"  # "plateau" (halve when validation loss stalls), "cosine" or "constant"
    seed: int | None = None
    score: str = "mse"
    score_params: dict[str, Any] = field(default_factory=dict)
    # 0.99, not the seeds' 0.999: the top 1% of validation scores may be unlabelled defects that slipped
    # into the 'normal' folder; 0.999 of a few hundred images is their maximum, i.e. the worst of them.
    quantile: float = 0.99
    margin: float = 1.0
    max_unreadable_fraction: float = 0.1  # above this share of unreadable files training stops
    report: bool = True  # write report/ (loss curve, score histogram, reconstructions) into the bundle
    quiet: bool = False

    @property
    def model_filters(self) -> tuple[int, ...]:
        """The filters the model is built with: the option, else the architecture's default."""
        from monitor.model.architecture import DEFAULT_FILTERS

        if self.filters:
            return tuple(int(f) for f in self.filters)
        return DEFAULT_FILTERS.get(self.architecture, DEFAULT_FILTERS["seed"])

    def validate(self) -> None:
        """Raise ValueError naming the option that is out of range."""
        from monitor.model.architecture import ARCHITECTURES

        h, w = self.size
        filters = self.model_filters
        step = 2 ** len(filters)
        checks = [
            (self.architecture in ARCHITECTURES,
             f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}"),
            (h > 0 and w > 0 and h % step == 0 and w % step == 0,
             f"size {h}x{w} must be positive and divisible by {step} (2 ** number of filters)"),
            (self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}"),
            (len(filters) > 0 and all(f > 0 for f in filters), "filters must be positive numbers"),
            (self.latent > 0, "latent must be positive"),
            (self.code_channels > 0, "code_channels must be positive"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
            (self.epochs > 0, "epochs must be positive"),
            (self.batch_size > 0, "batch_size must be positive"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 < self.validation_split < 1, "validation_split must be between 0 and 1"),
            (self.patience > 0, "patience must be positive"),
            (self.lr_schedule in ("plateau", "cosine", "constant"),
             f"lr_schedule must be plateau, cosine or constant, got {self.lr_schedule!r}"),
            (self.score in SCORE_NAMES, f"score must be one of {', '.join(SCORE_NAMES)}, got {self.score!r}"),
            (0 < self.quantile < 1, "quantile must be between 0 and 1"),
            (self.margin > 0, "margin must be positive"),
            (0 <= self.max_unreadable_fraction < 1, "max_unreadable_fraction must be in [0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass
class TrainingData:
    """Decoded training images and a summary of where they came from."""

    images: list[np.ndarray]
    summary: dict[str, Any]


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive, sorted), by extension."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image(path: Path) -> np.ndarray | None:
    """Decode an image file as OpenCV does (BGR/BGRA/gray, 8 or 16 bit); None when it cannot."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
        if data.size == 0:
            return None
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error):
        return None
    return image if image is not None and image.size else None


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

    from monitor.model.architecture import build_model

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
    options_json = asdict(options)
    options_json.pop("quiet", None)
    options_json["filters"] = list(options.model_filters)  # resolved: None would hide the architecture's default
    meta: dict[str, Any] = {
        "format": "anomaly-monitor-bundle",
        "format_version": 1,
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
    bundle = Bundle(path=path or Path("."), model=model, meta=meta)
    cal = BatchScorer(bundle, max_batch=min(64, max(1, len(val_x)))).score_inputs(val_x).scores
    meta["score"]["params"] = dict(bundle.score_function().params)
    meta["calibration"]["scores"] = [float(s) for s in cal]
    meta["threshold"]["value"] = default_threshold(cal, options.quantile, options.margin)
    return bundle, history


def train_bundle(data_dir: Path, out_dir: Path, options: TrainOptions | None = None,
                 progress: ProgressFn | None = None) -> Bundle:
    """Train on a folder of normal images and save a calibrated bundle (with report/) in out_dir.

    Progress lines go to `progress` (the CLI prints them on stderr), else to the log unless quiet.
    """
    options = options or TrainOptions()
    options.validate()
    if progress is None and not options.quiet:
        def progress(line: str) -> None:
            log.info("training_progress %s", line)
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
        from monitor.model.report import write_training_report

        write_training_report(saved, history, x[val_idx])
    if progress:
        progress(f"saved {out_dir} threshold={saved.default_threshold:.6g} "
                 f"(best epoch {saved.meta['training']['best_epoch']})")
    log.info("training_done %s", saved.describe())
    return saved
