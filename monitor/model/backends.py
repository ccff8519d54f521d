"""Optional scoring backend: the scorer's fixed-shape forward pass run by OpenVINO instead of TensorFlow.

The model is trained in Keras and stays there; TensorFlow is the default. `compile_forward` takes the scorer's
own traced forward pass (``BatchScorer._forward``: model, error map, score reduction and, where the bundle has
one, the density combination, for one fixed padded batch shape) and converts that whole graph to OpenVINO at
load, so the scores come from the same graph, not from a second implementation of the score.

Why only OpenVINO (benchmarks/backends.py, 2-core CPU): at the daemon's batch of 32 it scored 1.42x TF's
img/s on the shipped 64x64 model and 1.33-1.36x on a 256x256 colour one, with scores within 3e-8 of TF's;
XLA, LiteRT (XNNPACK) and ONNX Runtime were not faster. It gives the most when the cores are its own: with the
2 cores oversubscribed by other processes it fell to 0.6x TF on the shipped model (TF's thread pool copes
better), so it is an option for a line PC that runs the daemon alone, never the default.

Needs the `bench` extra (``pip install -e .[bench]``) or ``pip install openvino``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import numpy as np

BACKENDS = ("tensorflow", "openvino")
# How `scorer.device` (and the model_info metric) names a backend that is not TensorFlow.
LABELS = {"tensorflow": "TensorFlow", "openvino": "OpenVINO"}

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


class BackendUnavailable(RuntimeError):
    """The backend's package is not installed (or cannot convert the graph); the message says which."""


@contextlib.contextmanager
def root_logger_kept() -> Iterator[None]:
    """The root logger's level, filters and handlers as they were, however the block ends.

    OpenVINO's `convert_model` sets the root logger to ERROR (and adds a filter) while it converts, and puts
    them back only when the conversion succeeds: a graph it could not take left the daemon logging errors alone,
    so even the warning that TensorFlow scores the bundle instead was lost.
    """
    root = logging.getLogger()
    level, filters, handlers = root.level, list(root.filters), list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.filters[:] = filters
        root.handlers[:] = handlers


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def compile_forward(forward, backend: str = "openvino", threads: int | None = None) -> Forward:
    """`forward` (a tf.function with one fixed input signature returning reconstructions, maps, scores) as a
    callable on a float32 numpy batch of exactly that shape, returning the three as numpy arrays.

    threads: compute threads (OpenVINO's INFERENCE_NUM_THREADS); None leaves OpenVINO's default (all cores).
    Inference precision is pinned to f32: on a CPU with bf16 or f16 units OpenVINO would otherwise use them,
    and the scores would no longer match TensorFlow's.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "tensorflow":
        import tensorflow as tf

        def run_tf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            r, maps, scores = forward(tf.constant(x))
            return r.numpy(), maps.numpy(), scores.numpy()

        return run_tf
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendUnavailable(f"backend openvino: the openvino package is not installed ({exc}); "
                                 "pip install openvino, or the bench extra") from None
    concrete = forward.get_concrete_function()
    try:
        with root_logger_kept():
            model = ov.convert_model(concrete)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = ov.Core().compile_model(model, "CPU", config)
    except Exception as exc:  # OpenVINO's converter raises its own types for an op it cannot take
        raise BackendUnavailable(f"backend openvino: cannot convert the scorer's graph: {_why(exc)}") from None
    request = compiled.create_infer_request()
    shape = tuple(concrete.inputs[0].shape)

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != shape:
            raise ValueError(f"the openvino forward pass takes batches of shape {shape}, got {x.shape}")
        out = request.infer({0: x})
        return out[0].copy(), out[1].copy(), out[2].copy()  # the request reuses its output buffers

    return run


def _why(exc: Exception) -> str:
    """One line out of OpenVINO's many-line conversion report: the ops it could not take, when it names them
    (its first line is only "Check 'false' failed at <source file>")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    ops = [line.removeprefix("-- ") for line in lines
           if line.startswith(("-- No conversion rule found for operations:", "-- Conversion is failed for:"))]
    return ("; ".join(ops) or (lines[0] if lines else type(exc).__name__))[:300]
