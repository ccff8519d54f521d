"""The batched scorer: preprocessing, one compiled forward pass of a fixed padded shape, scores.

A bundle without tiling resizes each image to the model input. A tiled bundle (`tiling` in its sidecar) cuts
each image, at working resolution, into overlapping tiles of the model input's size; the tiles of all the
images of a call are fed through the same fixed-shape batches (so the graph is still traced once and a
batch is full even when one image has few tiles), and each image's results are stitched back (monitor/model/
tiling.py): its score is the worst tile's, its error map the maximum over overlapping tiles.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from monitor.model.backends import LABELS, BackendUnavailable, compile_forward, openvino_available
from monitor.model.bundle import Bundle, BundleError
from monitor.model.density import image_density_maps, images_per_pass, resized_map
from monitor.model.preprocess import ready_batch, to_model_batch, to_working_image
from monitor.model.tiling import TileCanvas, pad, tile_grid, working_size

log = logging.getLogger(__name__)


class _OwnTracesFilter(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning about this module's forward passes.

    Each scorer traces one function per batch bucket on purpose, and training calibrates every candidate model
    through a scorer of its own: TensorFlow counts those as retraces of one function and warns, which tells a
    user nothing. Its warning about any other function still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "BatchScorer._traced_forward" in message)


_tf_logger = logging.getLogger("tensorflow")
if not any(isinstance(f, _OwnTracesFilter) for f in _tf_logger.filters):
    _tf_logger.addFilter(_OwnTracesFilter())

# Working-resolution pixels one tiled `score` call may stitch: the call returns each image's input,
# reconstruction and error map at that size (12 bytes a pixel in gray, 28 in colour), so 16 M pixels hold
# about 200-450 MB: three 5 MP images, or 32 images of 512x512.
TILED_PIXELS_PER_CALL = 16_000_000


# From this many values a batch of uint8 images is scaled by TensorFlow, below it by numpy. Measured on 32-image
# batches: numpy scales 64x64 colour (393 k values) in 126 us, where a TensorFlow call costs 200-300 us however
# small; from 2 MB of float32 numpy takes fresh pages from the kernel for each batch (128x128 gray: 1.8 ms against
# 0.33; 256x256 colour: 5.7 ms against 1.7).
TF_SCALED_VALUES = 2**19

# uint8 -> float32 in [0, 1], as `to_model_input` divides. The divisor is an argument, not a constant: with a
# constant, TensorFlow's graph optimiser turns the division into a multiplication by 1/255, which differs from
# numpy's division in the last bit for some values, and the scores would depend on which path an image took.
# (Each scorer makes its divisor tensor: one made at import would set up TensorFlow's devices before
# `select_device` could turn on a GPU's memory growth.)
@tf.function(input_signature=[tf.TensorSpec(None, tf.uint8), tf.TensorSpec([], tf.float32)], autograph=False)
def _unit(x: tf.Tensor, white: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, tf.float32) / white


@dataclass
class ScoredBatch:
    """Scores of N images with what the evidence needs; `x[i]` is image i's array in either layout.

    Without tiling the arrays are stacked at the model input size (NxHxWxC, NxHxW). With tiling they are
    lists with one array per image at its working resolution, since images of a batch may differ in size.
    """

    inputs: np.ndarray | list[np.ndarray]  # float32 HxWxC in [0, 1], what the model saw
    reconstructions: np.ndarray | list[np.ndarray]  # float32 HxWxC in [0, 1] (tiles averaged where they overlap)
    error_maps: np.ndarray | list[np.ndarray]  # float32 HxW, the per-pixel error (tiles: their maximum)
    scores: np.ndarray  # float64 N (tiles: the worst tile's score)
    tiles: np.ndarray | None = None  # int N: tiles scored per image (1 without tiling)

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


def combine_image_maps(residual_maps: list[np.ndarray], density_maps: list[np.ndarray],
                       residual_norm: tuple[float, float] | None) -> list[np.ndarray]:
    """Stitched residual maps joined with normalised whole-image density maps: the per-pixel maximum, or the
    density alone when `residual_norm` is None (as density.combine_maps does inside the forward pass)."""
    if residual_norm is None:
        return list(density_maps)
    offset, scale = residual_norm
    return [np.maximum((r - offset) / scale, d).astype(np.float32)
            for r, d in zip(residual_maps, density_maps, strict=True)]


def image_defect_maps(network: Any, works: list[np.ndarray], norm: tuple[float, float],
                      batch: int | None = None) -> list[np.ndarray]:
    """Each working image's defect-network map, normalised by `norm`, at that image's own size.

    The network is fully convolutional, so it runs on the whole working image, as a whole-image density does:
    images of one shape share a call (a line's camera gives one shape), as many as IMAGE_CHUNK_PIXELS allows by
    default (at most 16), since its first layer holds 16 floats per working pixel.
    """
    maps: list[np.ndarray | None] = [None] * len(works)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, work in enumerate(works):
        by_shape.setdefault(work.shape, []).append(i)
    for shape, members in by_shape.items():
        per_call = batch or images_per_pass(shape[0], shape[1])
        for start in range(0, len(members), per_call):
            part = members[start:start + per_call]
            cells = network(tf.constant(np.stack([works[i] for i in part])), training=False)[..., 0]
            for i, m in zip(part, resized_map(cells, shape[:2], norm).numpy(), strict=True):
                maps[i] = m.astype(np.float32)
    return maps  # type: ignore[return-value]


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes the forward pass is traced for: 1, 4, 16, ... (x4) below max_batch, and max_batch.

    A chunk is padded to the smallest that holds it, so padding at most quadruples a chunk's cost, and a
    daemon traces at most log4(max_batch) + 2 graphs over its life.
    """
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 4
    return (*sizes, max_batch)


_TIE = 0.02  # plan_calls: call plans whose measured times differ by less than this fraction are alike


def plan_calls(k: int, seconds: Mapping[int, float]) -> list[int]:
    """The bucket sizes to run `k` inputs in, largest first (the last call padded), cheapest by `seconds`, each
    bucket's measured time per call.

    Where a call costs about the same whatever its size (a small model, a GPU: per-call overhead), that is one
    call padded to the smallest bucket that holds all `k`; where the cost grows with the size (a large model on
    a CPU), several exact calls: 20 inputs as 16 + 4 rather than 32 with 12 of them padding. Ties go to fewer calls.
    """
    sizes = sorted(seconds, reverse=True)
    best = [0.0] + [math.inf] * k  # best[i]: the cheapest time for i inputs
    calls = [0] * (k + 1)
    choice = [0] * (k + 1)
    for i in range(1, k + 1):
        for size in sizes:
            rest = max(0, i - size)
            cost, count = seconds[size] + best[rest], 1 + calls[rest]
            # Within 2 % is a tie (timings are noisy): fewer calls then.
            if cost < best[i] * (1 - _TIE) or (cost <= best[i] * (1 + _TIE) and count < calls[i]):
                best[i], calls[i], choice[i] = cost, count, size
    plan, left = [], k
    while left > 0:
        plan.append(choice[left])
        left = max(0, left - choice[left])
    return sorted(plan, reverse=True)


class BatchScorer:
    """Scores lists of decoded images with the bundle's model and score, `max_batch` at a time.

    backend: what should run the traced forward pass (`scoring.backend`): TensorFlow, or that same graph
    converted to OpenVINO here, at construction, so the first batch does not wait for the conversion.
    threads: OpenVINO's compute threads (None: its default). A graph OpenVINO cannot convert (a density
    bundle's encoder features use ResizeArea and MirrorPad) is scored by TensorFlow, with a warning: the
    backend is a speed setting, the scores are the same either way. BundleError when the backend's package
    is not installed (check_inputs says so first, naming the config key).
    """

    def __init__(self, bundle: Bundle, max_batch: int = 32, backend: str = "tensorflow",
                 threads: int | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.bundle = bundle
        self.max_batch = int(max_batch)
        self.requested = (backend, threads)  # the setting, which a reload compares: not what runs
        self.backend = backend  # what runs: `backend`, or tensorflow when it could not take this graph
        self.threads = threads
        self.device = select_device()
        self.score_fn = bundle.score_function()
        forward = self._traced_forward(self.max_batch)
        self._forward = forward
        # Smaller fixed shapes, traced on first use (`_forward_for`): a batch of 3 on a quiet line pays for 4
        # images, not for max_batch (measured on the shipped model: 2.5 ms for 1 image, 37 ms padded to 32).
        self.buckets = batch_buckets(self.max_batch)
        self._forwards: dict[int, Any] = {self.max_batch: forward}
        self._unit = _unit.get_concrete_function()  # traced once per process, for any shape
        self._white8 = tf.constant(255.0, tf.float32)
        # Each bucket's time per call, a moving average of its real calls (the first, which traces and allocates,
        # left out). Once every bucket has one, a chunk runs as `plan_calls` says; until then, padded.
        self.bucket_seconds: dict[int, float] = {}
        self._timed: set[int] = set()  # buckets past their first call
        self._concretes: dict[int, Any] = {}  # bucket -> its traced forward pass's concrete function
        # True while another thread traces the smaller buckets (warm_buckets): a chunk then pads to a bucket
        # already traced rather than waiting for its own trace.
        self.warming = False
        # The forward pass as another backend runs it (numpy in, numpy out); None: TensorFlow runs `forward`.
        self._run = None
        if backend != "tensorflow":
            try:
                self._run = compile_forward(forward, backend, threads)
                self.device = f"CPU ({LABELS[backend]})"  # OpenVINO's CPU plugin, whatever TensorFlow sees
            except BackendUnavailable as exc:
                if backend == "openvino" and not openvino_available():
                    # A BundleError: `monitor run` exits 2 with this one line, a reload keeps the running models.
                    raise BundleError(f"{bundle.path}: scoring.backend: {exc}") from None
                log.warning("scoring_backend_fallback bundle=%s backend=%s running=tensorflow reason=%r",
                            bundle.path, backend, str(exc))
                self.backend, self.threads = "tensorflow", None
        tiling = "none"
        if bundle.tiling is not None:
            tiling = "scale:{:g},stride:{}x{}".format(bundle.tiling.scale, *bundle.tile_stride)
        log.info("scorer_ready device=%s backend=%s threads=%s max_batch=%d input=%dx%dx%d score=%s tiling=%s",
                 self.device.replace(" ", ""), self.backend, self.threads if self.threads is not None else "default",
                 self.max_batch, bundle.height, bundle.width, bundle.channels, bundle.score_label, tiling)

    @staticmethod
    def _combined_map(bundle: Bundle):  # noqa: ANN205 - a TensorFlow closure
        """(x, residual map) -> (the combined map, image scores), when the bundle has a density or a defect
        network; else None."""
        meta, network = bundle.sidecar.density, bundle.sidecar.discriminator
        if bundle.sidecar.whole_image_density:  # it, and its network, join after stitching (_score_tiled)
            return None
        if meta is None and network is None:
            return None
        from monitor.model.density import combine_maps, feature_function, join_map, resized_map

        gaussian = bundle.density
        features = None if meta is None else feature_function(bundle.model, gaussian.features, gaussian.colour_sigma)
        defects, score_fn = bundle.discriminator, bundle.score_function()
        # a mean-type score (no density) is joined by its image score; its map is only shown beside the network's
        mean_type = meta is None and network is not None and network.map_norm is not None

        def combine(x: tf.Tensor, residual: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            maps = residual
            if features is not None:
                maps = combine_maps(residual, gaussian.distance_map(features(x)), meta.residual_norm,
                                    meta.density_norm)
            if network is None:
                return maps, tf.reduce_max(maps, axis=[1, 2])
            cells = defects(x, training=False)[..., 0]
            if not mean_type:
                maps = join_map(maps, cells, network.base_norm, network.norm)
                return maps, tf.reduce_max(maps, axis=[1, 2])
            shown = join_map(maps, cells, network.map_norm, network.norm)
            base = (score_fn.reduce(maps) - network.base_offset) / network.base_scale
            found = tf.reduce_max(resized_map(cells, (maps.shape[1], maps.shape[2]), network.norm), axis=[1, 2])
            return shown, tf.maximum(base, found)

        return combine

    def _traced_forward(self, size: int):  # noqa: ANN202 - a tf.function
        """The forward pass (model, error map, score) traced for batches of exactly `size` inputs."""
        b = self.bundle
        shape = (size, b.height, b.width, b.channels)
        model, score_fn = b.model, self.score_fn
        combine = self._combined_map(b)

        # A fixed input signature: each bucket's graph is traced once and reused. No autograph: the function
        # has no tensor-dependent Python control flow, and autograph's source rewriting was most of a trace's
        # time (start-up, and each bucket's first batch).
        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], reduce_retracing=False, autograph=False)
        def forward(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            r = model(x, training=False)
            maps = score_fn.error_map(x, r)
            if combine is not None:
                maps, scores = combine(x, maps)
                return r, maps, scores
            return r, maps, score_fn.reduce(maps)

        return forward

    def _forward_for(self, k: int) -> tuple[int, Any]:
        """(bucket, its traced forward pass) for a chunk of `k` inputs: the smallest bucket that holds it.

        The pass is the traced function's concrete function: called directly, it skips the tf.function's argument
        binding and signature checks (60 of the 130 µs a call of the identity model costs the calling thread).
        """
        size = next(b for b in self.buckets if b >= k)
        forward = self._forwards.get(size)
        if forward is None and self.warming:
            size = next(b for b in self.buckets if b >= k and b in self._forwards)  # max_batch always is
            forward = self._forwards[size]
        elif forward is None:
            start = time.perf_counter()
            forward = self._forwards[size] = self._traced_forward(size)
            log.info("scorer_bucket_traced size=%d max_batch=%d", size, self.max_batch)
            log.debug("scorer_bucket_trace_seconds size=%d seconds=%.3f", size, time.perf_counter() - start)
        concrete = self._concretes.get(size)
        if concrete is None:
            concrete = self._concretes[size] = forward.get_concrete_function()
        return size, concrete

    def calls(self, n: int) -> list[int]:
        """How many inputs each forward call of a score_inputs of `n` takes: full max_batch calls, then the rest
        as `plan_calls` says once every bucket's time is known (padded to one bucket before that)."""
        full, rest = divmod(n, self.max_batch)
        if not rest:
            return [self.max_batch] * full
        known = self._run is None and not self.warming and set(self.buckets) <= set(self.bucket_seconds)
        planned = plan_calls(rest, self.bucket_seconds)[:-1] if known else []
        # Only the last planned call may be padded: it takes what is left.
        return [self.max_batch] * full + planned + [rest - sum(planned)]

    def _record_time(self, size: int, seconds: float) -> None:
        """One call of bucket `size` took `seconds`; its first call (a trace, allocations) is not counted."""
        if size not in self._timed:
            self._timed.add(size)
            return
        old = self.bucket_seconds.get(size)
        self.bucket_seconds[size] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def warm_buckets(self, sizes: Sequence[int], stop: threading.Event | None = None) -> None:
        """Trace and run the forward pass of each batch bucket in `sizes` once (TensorFlow only).

        A bucket joins the ones `_forward_for` picks only after its first run, so a scorer thread never waits
        for a trace made here: meanwhile it pads to a bucket already warm. `stop` ends the loop between buckets.
        """
        b = self.bundle
        for size in sizes:
            if stop is not None and stop.is_set():
                return
            if size in self._forwards or self._run is not None:
                continue
            forward = self._traced_forward(size)
            zeros = tf.constant(np.zeros((size, b.height, b.width, b.channels), np.float32))
            with tf.device(self.device):  # as score_inputs calls it: the first real batch finds it ready
                forward(zeros)
                start = time.perf_counter()  # a second run, timed: what a call of this size costs here
                forward(zeros)
                self._timed.add(size)
                self._record_time(size, time.perf_counter() - start)
            self._forwards[size] = forward
            log.info("scorer_bucket_traced size=%d max_batch=%d", size, self.max_batch)

    def call_groups(self, images: Sequence[np.ndarray]) -> list[slice]:
        """Consecutive runs of `images`, each to pass to one `score` call, so a call's memory stays bounded.

        Untiled: runs of max_batch. Tiled: as many images as fit TILED_PIXELS_PER_CALL working pixels (at
        least one, at most max_batch): large images a few at a time, small ones many, their tiles sharing
        batches either way.
        """
        if self.bundle.tiling is None:
            return [slice(i, i + self.max_batch) for i in range(0, len(images), self.max_batch)]
        th, tw = self.bundle.height, self.bundle.width
        groups, start, pixels = [], 0, 0
        for i, image in enumerate(images):
            shape = np.shape(image)  # a malformed image counts as one tile here; `score` says what is wrong
            h, w = working_size(shape[0], shape[1], self.bundle.tiling.scale) if len(shape) >= 2 else (th, tw)
            size = max(h, th) * max(w, tw)
            if i > start and (pixels + size > TILED_PIXELS_PER_CALL or i - start >= self.max_batch):
                groups.append(slice(start, i))
                start, pixels = i, 0
            pixels += size
        if start < len(images):
            groups.append(slice(start, len(images)))
        return groups

    def score(self, images: list[np.ndarray]) -> ScoredBatch:
        """Preprocess and score raw decoded images (any size, gray/BGR/BGRA, uint8/uint16).

        The one path every caller takes (daemon, `monitor score`, `monitor evaluate`, calibration at
        training), so their scores agree.
        """
        b = self.bundle
        if b.tiling is not None:
            return self._score_tiled(list(images))
        images = list(images)
        if self._run is None and len(images) * b.height * b.width * b.channels >= TF_SCALED_VALUES:
            ready = ready_batch(images, b.height, b.width, b.channels)
            if ready is not None:  # a large batch of a line's usual images: scaled by TensorFlow (_chunks)
                return self._chunks(ready)
        return self.score_inputs(to_model_batch(images, b.height, b.width, b.channels, b.uint16_white))

    def _score_tiled(self, images: list[np.ndarray]) -> ScoredBatch:
        """Tiles of every image through shared fixed-shape batches, then stitched back per image."""
        b = self.bundle
        assert b.tiling is not None
        th, tw = b.height, b.width
        works = [to_working_image(im, b.tiling.scale, b.channels, b.uint16_white) for im in images]
        grids = [tile_grid(w.shape[0], w.shape[1], (th, tw), b.tile_stride) for w in works]
        canvases = [TileCanvas(g, b.channels) for g in grids]
        batch = np.empty((self.max_batch, th, tw, b.channels), np.float32)
        owners: list[tuple[int, int]] = []  # (image, tile) of each row of `batch`

        def flush() -> None:
            out = self.score_inputs(batch[:len(owners)])
            for row, (i, k) in enumerate(owners):
                canvases[i].add(k, out.reconstructions[row], out.error_maps[row], float(out.scores[row]))
            owners.clear()

        # Rows are copied one tile at a time: a 5 MP image has thousands of tiles, and stacking them all at
        # once would hold every tile of every image in memory; this holds one batch.
        for i, (work, grid) in enumerate(zip(works, grids, strict=True)):
            padded = pad(work, grid)
            for k, (y, x) in enumerate(grid.positions):
                batch[len(owners)] = padded[y:y + th, x:x + tw]
                owners.append((i, k))
                if len(owners) == self.max_batch:
                    flush()
        if owners:
            flush()
        # The stitched input would be the working image itself (tiles are exact copies of it): kept as is.
        maps = [c.maximum() for c in canvases]
        scores = np.array([c.score() for c in canvases], np.float64)
        density = b.sidecar.density
        if b.sidecar.whole_image_density:
            maps = combine_image_maps(maps, image_density_maps(b.density, works, density.image_size,
                                                               density.density_norm), density.residual_norm)
            if b.sidecar.discriminator is not None:  # on the whole working image, like the density it joins
                found = image_defect_maps(b.discriminator, works, b.sidecar.discriminator.norm)
                maps = [np.maximum(m, d) for m, d in zip(maps, found, strict=True)]
            scores = np.array([float(m.max()) for m in maps], np.float64)
        return ScoredBatch(inputs=works, reconstructions=[c.mean() for c in canvases], error_maps=maps,
                           scores=scores, tiles=np.array([len(g) for g in grids], np.int64))

    def score_inputs(self, inputs: np.ndarray) -> ScoredBatch:
        """Score already preprocessed NxHxWxC float32 inputs, in chunks of max_batch (each padded to its bucket).

        Each input is one model input; for a tiled bundle, one tile (no tiling is applied here).
        """
        return self._chunks(np.asarray(inputs, dtype=np.float32))

    def _chunks(self, batch: np.ndarray) -> ScoredBatch:
        """Score a float32 batch of model inputs, or a uint8 one of images at the model's size and layout, in
        chunks of max_batch, each padded to its bucket.

        A uint8 chunk is scaled to [0, 1] by TensorFlow (`_unit`) rather than by numpy before the call: numpy's
        scaling into a fresh 25 MB array held the scorer's thread 2.4-2.8 ms per 256x256 colour batch of 32
        (about 1 % of the forward pass) while the model's threads waited. The values are the same bits
        (`to_model_input`'s division).
        The results are numpy views of TensorFlow's output buffers (read-only), not copies.
        """
        n = batch.shape[0]
        scaled = batch.dtype == np.uint8
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        seen: list[np.ndarray] = []  # a uint8 batch's inputs as the model saw them, chunk by chunk
        start = 0
        for call in self.calls(n):
            chunk = batch[start:start + call]
            k = chunk.shape[0]
            # Another backend was converted for max_batch alone; TensorFlow pads to the chunk's bucket.
            size, forward = (self.max_batch, None) if self._run is not None else self._forward_for(k)
            if k < size:
                chunk = np.concatenate([chunk, np.zeros((size - k, *chunk.shape[1:]), chunk.dtype)])
            began = time.perf_counter()
            if self._run is not None:
                r, m, s = self._run(chunk)  # numpy already, from OpenVINO's own CPU threads
            else:
                x = tf.constant(chunk)
                if scaled:
                    with tf.device("/CPU:0"):  # what a GPU is sent is the float batch, as from numpy
                        x = self._unit(x, self._white8)
                    seen.append(np.asarray(x)[:k])
                with tf.device(self.device):
                    r, m, s = (np.asarray(t) for t in forward(x))
                self._record_time(size, time.perf_counter() - began)
            parts.append((r[:k], m[:k], s[:k]))  # views: the padding's results go with their arrays
            start += k
        inputs = batch
        if scaled:  # never empty: `ready_batch` gives None for no images
            inputs = seen[0] if len(seen) == 1 else np.concatenate(seen)
        if not parts:
            b = self.bundle
            recons, maps = np.empty(inputs.shape, np.float32), np.empty((0, b.height, b.width), np.float32)
            scores = np.empty(0, np.float64)
        elif len(parts) == 1:  # one call, the usual case: no copy of its maps
            recons, maps, scores = parts[0]
        else:
            recons, maps, scores = (np.concatenate(column) for column in zip(*parts, strict=True))
        return ScoredBatch(inputs=inputs, reconstructions=recons, error_maps=maps, scores=scores.astype(np.float64),
                           tiles=np.ones(n, np.int64))
