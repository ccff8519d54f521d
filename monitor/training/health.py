"""Is a freshly trained autoencoder degenerate? Measured checks, each problem saying what to do.

A model that fails here would score every image alike (or at random) and must never pass silently
(issue 10: 200 images at batch 32, BatchNorm statistics that never settled, reconstructions a flat blur,
AUROC 0.54, no warning). The checks, on a sample of the training and validation arrays (float32 NxHxWxC
in [0, 1], as the model is fed):

- **BatchNorm gap**: reconstruction error in inference mode (moving statistics) over the error in training
  mode (batch statistics) on the same training images. Settled statistics give about 1; the broken model of
  the issue measured 3. The training-mode pass is side-effect free (Keras 3 updates the moving statistics
  on any ``training=True`` call, so it runs through ``stateless_call`` and the new statistics are dropped).
- **Ignores the input**: the reconstructions of different images are nearly the same (their mean pairwise
  distance is a small share of the inputs'), or the reconstruction is no better than the mean training image.
- **Validation loss far above training loss** at the best epoch: the split is from one folder, so a large
  ratio means over-fitting or two kinds of images in the folder.
- **Not finite**: NaN or infinite losses or reconstructions (a diverged run).

Differences within sensor noise (NOISE_RMS) mean nothing: a model that close to its inputs passes the first
three checks, and data whose images are that close to their mean (parts alike but for noise) is spared the
ignored-input and mean-image checks, since there the mean image is the right reconstruction.

The remedy for the first (and usually the other two with it: stale statistics make the inference-mode
model output a blur near the mean image) is ``recalibrate_batchnorm``: the moving statistics set to the
population statistics under the final weights, and ``batchnorm_recalibration``, a callback that does it
before every validation so that early stopping picks the epoch the model is best as it will score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Thresholds from measurements on this CPU: the tests' 32x32 parts and 64x64 brick crops, seed and conv
# models, 3 to 60 epochs, batch 6 to 32, before and after recalibrate_batchnorm (figures: healthy / broken).
#
# Inference-mode error over training-mode error: 0.82-1.2 / 6-31 (the broken model: 3). Only counted
# when the extra error is also a material share (10%) of the mean image's error: on very easy data tiny
# errors jitter in ratio without changing any score.
BN_GAP_MAX = 2.0
BN_GAP_MIN_EXCESS = 0.10
# Mean pairwise distance of reconstructions over that of their inputs: 0.36-1.02 / 0.002-0.04 (a constant
# model: 0; the lowest working one a blurry seed model on brick texture, 0.36).
SPREAD_MIN = 0.15
# Reconstruction error over the error of the mean training image (the best answer that ignores the input):
# 0.03-0.70 / 0.95-1.15. At 90% of it or more the model has learnt next to nothing.
MEAN_IMAGE_RATIO_MAX = 0.9
# Validation loss over training loss at the best epoch: 0.86-1.15 (the shipped default model: 1.09) / 4-42 for
# the broken models measured, whose stale BatchNorm statistics the other checks catch first. But a model that
# over-fits a small folder of varied parts is not useless: 300 MNIST digits gave 4.8 (seed) and 3.0 (conv), and
# a model of the same digits under the fixed defaults ranks anomalies at AUROC 0.988. Only a gap far beyond that
# is refused (two kinds of images in one folder).
VAL_TRAIN_RATIO_MAX = 8.0
# Differences up to 4 grey levels of 255 (RMS, on the [0, 1] scale) are sensor noise: sensor noise is 1-3 levels.
# A model whose reconstructions are that close to held-out images reproduces them, whatever its ratios say; and
# where the held-out images are that close to the mean training image (a line of parts alike but for noise),
# the mean image is the right reconstruction and a model that ignores the input is no fault: every normal image
# then leaves the same residual and a defect shows above it. Without this, such a line was refused: 120 shots of
# one part with noise of 2 grey levels (the seed model 7.4 levels off, a blur of the part, spread 3% of the
# inputs'; yet 100% of the synthetic defects found), 60 identical copies (10^10 % of the mean image's error, a
# ratio over an error of nothing). The tests' broken models on parts that vary are 41-50 levels off.
NOISE_RMS = 4 / 255
SAMPLE = 64  # images per check, spread over the set: a second or two on the CPU


@dataclass
class Health:
    """The verdict on one model: ok, the problems (each with what to do) and the measured figures."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One log line: ``model_health ok=false bn_gap=3.1 ...``."""
        figs = " ".join(f"{k}={v:.4g}" for k, v in self.figures.items())
        return f"model_health ok={str(self.ok).lower()} problems={len(self.problems)} {figs}".rstrip()

    def to_json(self) -> dict[str, Any]:
        """For the bundle's sidecar (``training.health``): NaN becomes None, JSON has no NaN."""
        return {"ok": self.ok, "problems": list(self.problems),
                "figures": {k: (v if math.isfinite(v) else None) for k, v in self.figures.items()}}


def _spread(x: np.ndarray) -> np.ndarray:
    return np.linspace(0, len(x) - 1, min(len(x), SAMPLE)).astype(int)


def _predict(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    import keras

    return np.concatenate([keras.ops.convert_to_numpy(model(x[i:i + batch_size], training=False))
                           for i in range(0, len(x), batch_size)])


def _predict_training_mode(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Reconstructions with batch statistics, leaving the model's variables (moving statistics) untouched."""
    import keras

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    out = []
    for i in range(0, len(x), batch_size):
        # stateless_call returns the updated moving statistics instead of assigning them; they are dropped.
        y, _ = model.stateless_call(trainable, non_trainable, x[i:i + batch_size], training=True)
        out.append(keras.ops.convert_to_numpy(y))
    return np.concatenate(out)


def _batchnorm_layers(model: Any) -> list[Any]:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _probes(model: Any) -> list[tuple[Any, Any]]:
    """(BatchNorm layer, a model from the input to that layer's input) for every BatchNorm, in order."""
    import keras

    return [(bn, keras.Model(model.input, bn.input)) for bn in _batchnorm_layers(model)]


def recalibrate_batchnorm(model: Any, x: np.ndarray, sample: int = 256, batch_size: int = 64,
                          probes: list[tuple[Any, Any]] | None = None) -> int:
    """Set every BatchNorm's moving statistics to the population statistics of its inputs on `x` (Precise BN).

    The moving averages (momentum 0.99) trail the weights by about a hundred steps; a run of a few hundred
    steps ends with statistics of weights long gone, and inference-mode reconstructions degrade towards the
    mean image (measured: inference error 17x the training-mode error on the tests' tiny model, 8x on a brick
    texture conv model; 0.9x after this). Layers are done in order, each measured behind the already
    recalibrated ones, as at inference. `probes` (from _probes of this model) saves rebuilding them; they run
    eagerly: a traced function per layer costs more than it saves on a few hundred images. Returns the count.
    """
    import keras

    probes = _probes(model) if probes is None else probes
    xs = np.asarray(x, np.float32)[np.linspace(0, len(x) - 1, min(len(x), sample)).astype(int)]
    for bn, probe in probes:
        total = total_sq = 0.0
        count = 0
        for i in range(0, len(xs), batch_size):
            a = keras.ops.convert_to_numpy(probe(xs[i:i + batch_size], training=False)).astype(np.float64)
            a = np.moveaxis(a, bn.axis, -1).reshape(-1, a.shape[bn.axis])
            total = total + a.sum(0)
            total_sq = total_sq + (a * a).sum(0)
            count += len(a)
        mean = total / count
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(np.maximum(total_sq / count - mean * mean, 0.0).astype(np.float32))
    return len(probes)


def batchnorm_recalibration(train_x: np.ndarray, sample: int = 64) -> Any:
    """A Keras callback for fit that recalibrates BatchNorm (recalibrate_batchnorm) before every validation.

    Then the validation loss, early stopping and the restored best weights judge the model as it will score,
    not its stale moving statistics. 64 images (thousands of values per channel even at the deepest layer)
    cost about half a second per epoch for a 64x64 model on this CPU; recalibrate once more, on more images,
    after fit.
    """
    import keras

    class BatchNormRecalibration(keras.callbacks.Callback):
        probes: list[tuple[Any, Any]] | None = None

        def on_test_begin(self, logs: dict | None = None) -> None:
            if self.probes is None:
                self.probes = _probes(self.model)
            recalibrate_batchnorm(self.model, train_x, sample, probes=self.probes)

    return BatchNormRecalibration()


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64))))


def _mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean RMS distance between all pairs of images (the sample is small: 64 x 64 pairs)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    sq = np.sum(flat * flat, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0) / flat.shape[1]
    n = len(x)
    return float(np.sqrt(d2)[~np.eye(n, dtype=bool)].mean()) if n > 1 else float("nan")


def _history_figures(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    loss, val = list(history.get("loss", [])), list(history.get("val_loss", []))
    if not loss or not val:
        return {}
    finite = [i for i, v in enumerate(val) if math.isfinite(v)]
    if not finite:
        return {"best_val_loss": float("nan"), "val_train_ratio": float("nan")}
    best = min(finite, key=lambda i: val[i])
    train = loss[best] if best < len(loss) else loss[-1]
    ratio = val[best] / train if train > 0 else float("inf")
    return {"best_epoch": float(best + 1), "best_val_loss": float(val[best]), "best_train_loss": float(train),
            "val_train_ratio": float(ratio)}


def _reconstruction_problems(figures: Mapping[str, float], bn_excess: float, conv: bool, varies: bool,
                             ) -> list[str]:
    """The BatchNorm gap check; where the images vary beyond noise, the ignored input and mean-image checks."""
    problems = []
    if figures["bn_gap"] > BN_GAP_MAX and bn_excess > BN_GAP_MIN_EXCESS * figures["mean_image_error"]:
        problems.append(
            f"inference-mode error is {figures['bn_gap']:.1f}x the training-mode error on the same images: "
            "BatchNorm statistics did not settle (too few steps per epoch); train with a smaller --batch-size "
            "(at least 20 steps per epoch) or more epochs")
    spread = figures["spread_ratio"]
    # Where the images do not vary beyond noise, the mean image is the right answer: ignoring the input, or
    # doing no better than the mean, is no fault there.
    if varies and math.isfinite(spread) and spread < SPREAD_MIN:
        problems.append(
            f"reconstructions ignore the input: different images give nearly the same reconstruction (their "
            f"spread is {spread:.0%} of the inputs'); every image would score alike. Train with a smaller "
            + ("--batch-size, more epochs, or --architecture conv" if conv else "--batch-size or more epochs"))
    elif varies and figures["mean_image_ratio"] >= MEAN_IMAGE_RATIO_MAX:
        problems.append(
            f"reconstructions are no better than the mean training image (error {figures['mean_image_ratio']:.0%} "
            "of it on validation images): the model learnt next to nothing. Train longer (--epochs), with a "
            + ("smaller --batch-size, or with --architecture conv" if conv else "smaller --batch-size, or both"))
    return problems


def check_model(model: Any, train_x: np.ndarray, val_x: np.ndarray,
                history: Mapping[str, Sequence[float]] | None = None, batch_size: int = 32,
                architecture: str | None = None) -> Health:
    """Measure a trained autoencoder for the degenerate states above (side-effect free).

    `train_x`, `val_x`: model-input arrays (with tiling: arrays of crops); `history`: Keras' fit history
    (loss, val_loss), optional; `batch_size`: the training batch size (training-mode statistics depend on it);
    `architecture`: the model's, so that the advice never names the one that just failed.
    """
    # The spatial code is the cure for a dense latent that collapses; a conv model that failed needs the others.
    conv = architecture != "conv"
    problems: list[str] = []
    figures: dict[str, float] = {}
    batch_size = max(2, int(batch_size))  # batch statistics of one image are meaningless
    train = np.asarray(train_x, np.float32)[_spread(train_x)]
    val = np.asarray(val_x if len(val_x) else train_x, np.float32)
    val = val[_spread(val)]
    mean_image = np.mean(np.asarray(train_x, np.float32), axis=0, keepdims=True)

    rec_train_inf = _predict(model, train, batch_size)
    rec_train_fit = _predict_training_mode(model, train, batch_size)
    rec_val = _predict(model, val, batch_size)
    if not all(np.isfinite(r).all() for r in (rec_train_inf, rec_train_fit, rec_val)):
        problems.append("the model outputs NaN or infinite values: training diverged; train again with a "
                        "lower learning rate (--learning-rate 1e-4)")
        return Health(ok=False, problems=problems, figures=figures)

    err_inf, err_fit = _mse(train, rec_train_inf), _mse(train, rec_train_fit)
    mean_err = _mse(val, np.broadcast_to(mean_image, val.shape))
    err_val = _mse(val, rec_val)
    figures.update(train_error_inference=err_inf, train_error_training_mode=err_fit,
                   bn_gap=err_inf / max(err_fit, 1e-12), val_error=err_val, mean_image_error=mean_err,
                   mean_image_ratio=err_val / max(mean_err, 1e-12))
    in_spread, out_spread = _mean_pairwise_distance(val), _mean_pairwise_distance(rec_val)
    spread = out_spread / in_spread if in_spread > 0 else float("nan")
    figures["spread_ratio"] = spread
    reconstructs = max(err_inf, err_val) <= NOISE_RMS ** 2
    varies = mean_err > NOISE_RMS ** 2
    figures["reconstruction_rms"] = math.sqrt(max(err_inf, err_val))
    figures["mean_image_rms"] = math.sqrt(mean_err)
    if not reconstructs:  # within sensor noise of the inputs, none of these checks can mean anything
        problems += _reconstruction_problems(figures, err_inf - err_fit, conv, varies)

    hist = _history_figures(history or {})
    figures.update(hist)
    ratio = hist.get("val_train_ratio")
    if ratio is not None and not math.isfinite(ratio):
        problems.append("the training or validation loss is NaN or infinite: training diverged; train again with "
                        "a lower learning rate (--learning-rate 1e-4)")
    elif ratio is not None and ratio > VAL_TRAIN_RATIO_MAX:
        problems.append(
            f"validation loss is {ratio:.1f}x the training loss at the best epoch: the model over-fits, or the "
            "validation images differ from the training ones (two kinds of parts or lighting in one folder?); "
            + ("add images, check the folder holds one kind of part, or use --architecture conv" if conv
               else "add images, or check the folder holds one kind of part"))
    return Health(ok=not problems, problems=problems, figures=figures)
