"""The batched scorer: preprocessing, one compiled forward pass of a fixed padded shape, scores."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from monitor.model.bundle import Bundle
from monitor.model.preprocess import to_model_batch

log = logging.getLogger(__name__)


@dataclass
class ScoredBatch:
    """Scores of N images with what the evidence needs."""

    inputs: np.ndarray  # float32 NxHxWxC in [0, 1], the model's input
    reconstructions: np.ndarray  # float32 NxHxWxC in [0, 1]
    error_maps: np.ndarray  # float32 NxHxW, the per-pixel error the score reduces
    scores: np.ndarray  # float64 N

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def select_device() -> str:
    """'/GPU:0' with memory growth on when TensorFlow sees a GPU, '/CPU:0' otherwise."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "/CPU:0"
    for gpu in gpus:
        # RuntimeError: already initialised by an earlier scorer in this process; nothing to change.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return "/GPU:0"


class BatchScorer:
    """Scores lists of decoded images with the bundle's model and score, `max_batch` at a time."""

    def __init__(self, bundle: Bundle, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.bundle = bundle
        self.max_batch = int(max_batch)
        self.device = select_device()
        self.score_fn = bundle.score_function()
        shape = (self.max_batch, bundle.height, bundle.width, bundle.channels)
        model, score_fn = bundle.model, self.score_fn

        # A fixed input signature: every call (padded to max_batch) reuses the one traced graph.
        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], reduce_retracing=False)
        def forward(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            r = model(x, training=False)
            maps = score_fn.error_map(x, r)
            return r, maps, score_fn.reduce(maps)

        self._forward = forward
        log.info("scorer_ready device=%s max_batch=%d input=%dx%dx%d score=%s", self.device, self.max_batch,
                 bundle.height, bundle.width, bundle.channels, bundle.score_name)

    def score(self, images: list[np.ndarray]) -> ScoredBatch:
        """Preprocess and score raw decoded images (any size, gray/BGR/BGRA, uint8/uint16)."""
        b = self.bundle
        return self.score_inputs(to_model_batch(list(images), b.height, b.width, b.channels))

    def score_inputs(self, inputs: np.ndarray) -> ScoredBatch:
        """Score already preprocessed NxHxWxC float32 inputs, in chunks of max_batch (last one padded)."""
        b = self.bundle
        inputs = np.asarray(inputs, dtype=np.float32)
        n = inputs.shape[0]
        recons = np.empty_like(inputs)
        maps = np.empty((n, b.height, b.width), np.float32)
        scores = np.empty(n, np.float64)
        for start in range(0, n, self.max_batch):
            chunk = inputs[start:start + self.max_batch]
            k = chunk.shape[0]
            if k < self.max_batch:
                chunk = np.concatenate([chunk, np.zeros((self.max_batch - k, *chunk.shape[1:]), np.float32)])
            with tf.device(self.device):
                r, m, s = self._forward(tf.constant(chunk))
            recons[start:start + k] = r.numpy()[:k]
            maps[start:start + k] = m.numpy()[:k]
            scores[start:start + k] = s.numpy()[:k].astype(np.float64)
        return ScoredBatch(inputs=inputs, reconstructions=recons, error_maps=maps, scores=scores)
