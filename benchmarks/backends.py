"""Scoring backends against TensorFlow's graph, measured interleaved in one run on this CPU.

For the shipped bundle and two other shapes (64x64 gray with the dense-latent `seed` autoencoder, 256x256
colour with the fully convolutional one; both untrained, which is fine for speed and equality), the Keras model
is converted to each backend and the SAME batch of real images (crops of scikit-image photos, preprocessed as
the scorer does) is run through each:

  tf-graph   tf.function with the scorer's fixed input signature (what the daemon runs; the baseline)
  tf-xla     the same with jit_compile=True
  litert     tf.lite converter -> ai-edge-litert Interpreter (XNNPACK, the default delegate for float models)
  onnxruntime  tf2onnx.convert.from_function -> onnxruntime CPUExecutionProvider
  openvino   ov.convert_model from the exported SavedModel, CPU plugin, f32 inference precision
  openvino-fused  the scorer's whole forward pass (model + score) converted to one OpenVINO model

Figures, per backend and batch size: `model` img/s (bare forward pass, numpy in, numpy out), `scoring` img/s
(the forward pass plus the bundle's score function: the scorer's fused graph for tf-graph, one fused jit graph
for tf-xla, the backend then the same TF score graph for the others), their ratios to tf-graph, and the max abs
difference of the reconstruction and of the final score against the scorer's own (BatchScorer.score_inputs).
Each timed sample is a few calls (about 0.25 s); the backends take turns, sample by sample, in a shuffled order
each round, so the machine's noise hits them alike; img/s is the median over the samples.

Threads (2 cores): every backend is given `--threads` (2) compute threads: TF intra-op 2 (inter-op left at its
default, as the daemon runs it), onnxruntime intra-op 2 / inter-op 1 (sequential), LiteRT num_threads 2,
OpenVINO INFERENCE_NUM_THREADS 2 with the LATENCY hint (one stream).

usage: python benchmarks/backends.py [--bundle models/default] [--batch 32] [--samples 9] [--json PATH]
                                     [--backends tf-graph,tf-xla,litert,onnxruntime,openvino] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.metadata
import io
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BACKENDS = ("tf-graph", "tf-xla", "litert", "onnxruntime", "openvino", "openvino-fused")
PACKAGES = ("tensorflow", "keras", "numpy", "protobuf", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert",
            "openvino")
SAMPLE_S = 0.25  # one timed sample lasts about this long


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# --- The cases: a bundle (real or built untrained) and real images at its input size -----------------------

def photo_crops(n: int, size: int, channels: int, seed: int) -> list[np.ndarray]:
    """Random square crops of scikit-image's photos (BGR uint8, or gray), resized to `size`."""
    from skimage import data

    photos = [data.brick(), data.camera(), data.grass(), data.gravel()] if channels == 1 else \
        [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.shape[:2]) // 3, min(photo.shape[:2]) + 1))
        y = int(rng.integers(0, photo.shape[0] - side + 1))
        x = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = np.ascontiguousarray(photo[y:y + side, x:x + side])
        if crop.ndim == 3:
            crop = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
        out.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
    return out


def untrained_bundle(name: str, architecture: str, size: int, channels: int, score: str, params: dict,
                     template: dict, folder: Path):
    """A Bundle over an untrained model built as `monitor train` would build it (sidecar from the template)."""
    from monitor.model.bundle import Bundle
    from monitor.training.architecture import build_model

    model = build_model(architecture, size, size, channels)
    meta = copy.deepcopy(template)
    meta["input"] = {**meta["input"], "height": size, "width": size, "channels": channels,
                     "color_order": "gray" if channels == 1 else "bgr"}
    meta["architecture"] = {"name": architecture, "untrained": True, "parameters": model.count_params()}
    meta["score"] = {"name": score, "params": params}
    meta.pop("density", None)
    meta.pop("tiling", None)
    path = folder / name
    path.mkdir(parents=True, exist_ok=True)
    return Bundle(path=path, model=model, meta=meta)


# --- Backends: each a factory (model, batch shape, workdir, threads) -> run(numpy batch) -> numpy batch --------

Runner = Callable[[np.ndarray], np.ndarray]


def _fixed_function(model, shape, jit: bool):
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)],
                       jit_compile=jit, reduce_retracing=False)


def make_tf(model, shape, work: Path, threads: int, jit: bool = False) -> Runner:
    import tensorflow as tf

    f = _fixed_function(model, shape, jit)
    return lambda a: f(tf.constant(a)).numpy()


def make_litert(model, shape, work: Path, threads: int) -> Runner:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # Frozen first: converted with its variables (from_concrete_functions(..., model)), the flatbuffer reads
    # them with READ_VARIABLE ops that nothing initialises (NaN with XNNPACK, an error without it). A fixed
    # batch shape, as the scorer's: from_saved_model's dynamic batch is not taken by XNNPACK (3x slower).
    frozen = convert_variables_to_constants_v2(_fixed_function(model, shape, False).get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.optimizations = []  # float32 as trained: no quantisation
    with contextlib.redirect_stderr(io.StringIO()):
        flat = converter.convert()
    path = work / f"model_b{shape[0]}.tflite"
    path.write_bytes(flat)
    interpreter = Interpreter(model_path=str(path), num_threads=threads)  # XNNPACK applied by default
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def run(a: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp, a)
        interpreter.invoke()
        return interpreter.get_tensor(out).copy()

    return run


def onnx_file(model, shape, work: Path) -> Path:
    import tensorflow as tf
    import tf2onnx

    path = work / "model.onnx"
    if not path.exists():
        f = tf.function(lambda x: model(x, training=False))
        spec = [tf.TensorSpec((None, *shape[1:]), tf.float32, name="image")]
        with contextlib.redirect_stderr(io.StringIO()):
            tf2onnx.convert.from_function(f, input_signature=spec, opset=17, output_path=str(path))
    return path


def make_onnxruntime(model, shape, work: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_file(model, shape, work)), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda a: session.run(None, {name: a})[0]


def saved_model(model, work: Path) -> Path:
    path = work / "saved_model"
    if not path.exists():
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(str(path), format="tf_saved_model")
    return path


def make_openvino(model, shape, work: Path, threads: int) -> Runner:
    import openvino as ov

    core = ov.Core()
    ov_model = ov.convert_model(str(saved_model(model, work)))
    ov_model.reshape({ov_model.inputs[0]: ov.PartialShape(list(shape))})
    compiled = core.compile_model(ov_model, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",  # never bf16/f16 on a CPU that has them: scores must agree
    })
    request = compiled.create_infer_request()
    return lambda a: request.infer({0: a})[0].copy()


def openvino_fused(bundle, shape, threads: int):
    """The scorer's whole forward pass (model, error map, reduction) converted to one OpenVINO model."""
    import openvino as ov
    import tensorflow as tf

    model, score_fn = bundle.model, bundle.score_function()

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    def forward(x):
        r = model(x, training=False)
        maps = score_fn.error_map(x, r)
        return r, maps, score_fn.reduce(maps)

    compiled = ov.Core().compile_model(ov.convert_model(forward.get_concrete_function()), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(x: np.ndarray):
        out = request.infer({0: x})
        return out[0].copy(), out[1].copy(), out[2].astype(np.float64)

    return run


FACTORIES: dict[str, Callable[..., Runner]] = {
    "tf-graph": make_tf,
    "tf-xla": lambda m, s, w, t: make_tf(m, s, w, t, jit=True),
    "litert": make_litert,
    "onnxruntime": make_onnxruntime,
    "openvino": make_openvino,
    "openvino-fused": make_openvino,  # model column as openvino; scoring: the fused graph in OpenVINO
}


def score_graph(bundle, shape):
    """(x, r) -> (maps, scores): the bundle's score function as a fixed-shape TF graph."""
    import tensorflow as tf

    score_fn = bundle.score_function()
    spec = tf.TensorSpec(shape, tf.float32)

    @tf.function(input_signature=[spec, spec], reduce_retracing=False)
    def graph(x, r):
        maps = score_fn.error_map(x, r)
        return maps, score_fn.reduce(maps)

    def run(x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = graph(tf.constant(x), tf.constant(r))
        return maps.numpy(), scores.numpy().astype(np.float64)

    return run


def xla_scorer(bundle, shape):
    """The scorer's fused forward (model, error map, reduction) compiled with XLA."""
    import tensorflow as tf

    model, score_fn = bundle.model, bundle.score_function()

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], jit_compile=True, reduce_retracing=False)
    def forward(x):
        r = model(x, training=False)
        maps = score_fn.error_map(x, r)
        return r, maps, score_fn.reduce(maps)

    def run(x: np.ndarray):
        r, maps, scores = forward(tf.constant(x))
        return r.numpy(), maps.numpy(), scores.numpy().astype(np.float64)

    return run


# --- Measuring ---------------------------------------------------------------------------------------------

def interleaved(fns: dict[str, Callable[[], object]], samples: int, seed: int) -> dict[str, list[float]]:
    """Seconds per call: each fn timed `samples` times, the fns taking turns in a shuffled order each round."""
    reps = {}
    for name, fn in fns.items():  # warm-up, and how many calls make one sample of about SAMPLE_S
        fn()
        start = time.perf_counter()
        fn()
        one = time.perf_counter() - start
        reps[name] = max(1, int(SAMPLE_S / max(one, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(seed)
    for _ in range(samples):
        rng.shuffle(order)
        for name in order:
            fn, n = fns[name], reps[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
    return times


def run_case(label: str, bundle, images: list[np.ndarray], backends: list[str], batches: list[int],
             threads: int, samples: int, seed: int) -> dict:
    from monitor.model.preprocess import to_model_batch
    from monitor.model.scorer import BatchScorer

    h, w, c = bundle.height, bundle.width, bundle.channels
    x_all = to_model_batch(images, h, w, c)
    result = {"case": label, "input": [h, w, c], "score": bundle.score_label,
              "architecture": bundle.meta.get("architecture", {}).get("name"),
              "parameters": int(bundle.model.count_params()), "batches": {}, "failed": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for batch in batches:
            x = np.ascontiguousarray(x_all[:batch])
            shape = (batch, h, w, c)
            scorer = BatchScorer(bundle, batch)  # the product path: scores are compared with this
            ref = scorer.score_inputs(x)
            scores_of = score_graph(bundle, shape)
            model_fns, scoring_fns, diffs = {}, {}, {}
            for name in backends:
                if name in result["failed"]:
                    continue
                try:
                    run = FACTORIES[name](bundle.model, shape, work, threads)
                    r = run(x)
                    if name == "tf-graph":
                        scoring = lambda x=x, scorer=scorer: scorer.score_inputs(x)  # noqa: E731
                        s = ref.scores
                    elif name == "tf-xla":
                        fused = xla_scorer(bundle, shape)
                        scoring = lambda x=x, fused=fused: fused(x)  # noqa: E731
                        s = fused(x)[2]
                    elif name == "openvino-fused":
                        fused = openvino_fused(bundle, shape, threads)
                        scoring = lambda x=x, fused=fused: fused(x)  # noqa: E731
                        r, _, s = fused(x)
                    else:
                        scoring = lambda x=x, run=run, g=scores_of: g(x, run(x))  # noqa: E731
                        s = scores_of(x, r)[1]
                except Exception as exc:  # a converter or runtime that cannot take this model: reported
                    result["failed"][name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}" \
                        if str(exc).strip() else type(exc).__name__
                    logging.debug("%s failed:\n%s", name, traceback.format_exc())
                    continue
                model_fns[name] = lambda x=x, run=run: run(x)
                scoring_fns[name] = scoring
                diffs[name] = {"reconstruction_max_abs_diff": float(np.max(np.abs(r - ref.reconstructions))),
                               "score_max_abs_diff": float(np.max(np.abs(s - ref.scores)))}
            fns = {f"{n}|model": f for n, f in model_fns.items()} | {f"{n}|scoring": f for n, f in scoring_fns.items()}
            times = interleaved(fns, samples, seed + batch)
            rows = {}
            base_model = statistics.median(times["tf-graph|model"]) if "tf-graph|model" in times else None
            base_scoring = statistics.median(times["tf-graph|scoring"]) if "tf-graph|scoring" in times else None
            for name in model_fns:
                tm, ts = statistics.median(times[f"{name}|model"]), statistics.median(times[f"{name}|scoring"])
                rows[name] = {
                    "model_img_s": batch / tm, "scoring_img_s": batch / ts,
                    "model_ms_per_batch": tm * 1000, "scoring_ms_per_batch": ts * 1000,
                    "model_ratio_to_tf_graph": base_model / tm if base_model else None,
                    "scoring_ratio_to_tf_graph": base_scoring / ts if base_scoring else None,
                    "scoring_ms_spread": [min(times[f"{name}|scoring"]) * 1000, max(times[f"{name}|scoring"]) * 1000],
                    **diffs[name],
                }
            result["batches"][str(batch)] = rows
            print_rows(label, bundle, batch, rows, result["failed"])
    return result


def print_rows(label: str, bundle, batch: int, rows: dict, failed: dict) -> None:
    print(f"\n{label}: input {bundle.height}x{bundle.width}x{bundle.channels}, score {bundle.score_label}, "
          f"batch {batch}")
    print(f"  {'backend':<14} {'model img/s':>12} {'x tf':>6} {'scoring img/s':>14} {'x tf':>6} "
          f"{'ms/batch':>9} {'recon diff':>11} {'score diff':>11}")
    for name, row in rows.items():
        print(f"  {name:<14} {row['model_img_s']:12.1f} {row['model_ratio_to_tf_graph']:6.2f} "
              f"{row['scoring_img_s']:14.1f} {row['scoring_ratio_to_tf_graph']:6.2f} "
              f"{row['scoring_ms_per_batch']:9.2f} {row['reconstruction_max_abs_diff']:11.2e} "
              f"{row['score_max_abs_diff']:11.2e}")
    for name, why in failed.items():
        print(f"  {name:<14} FAILED: {why}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(REPO / "models" / "default"))
    parser.add_argument("--batch", type=int, default=32, help="the daemon's max_batch (it pads every batch to it)")
    parser.add_argument("--samples", type=int, default=9, help="timed samples per backend (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--cases", default="shipped,gray64,colour256")
    parser.add_argument("--quick", action="store_true", help="3 samples: a smoke run, not figures")
    parser.add_argument("--json", type=Path, help="also write the results as one JSON object here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("absl", "tf2onnx", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    samples = 3 if args.quick else args.samples
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    if "tf-graph" not in backends:
        backends.insert(0, "tf-graph")

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    from monitor.model.bundle import load_bundle

    shipped = load_bundle(args.bundle)
    batches = sorted({args.batch, 1})
    started = datetime.datetime.now(datetime.UTC)
    info = {"date": started.isoformat(timespec="seconds"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform_cpu()}",
            "threads": {"tf": f"intra-op {tf.config.threading.get_intra_op_parallelism_threads()}, inter-op default",
                        "onnxruntime": f"intra-op {args.threads}, inter-op 1, sequential",
                        "litert": f"num_threads {args.threads}, XNNPACK (default delegate)",
                        "openvino": f"INFERENCE_NUM_THREADS {args.threads}, LATENCY hint, f32"},
            "versions": versions(), "samples": samples, "batches": batches}
    print(f"{info['date']}  {info['machine']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print("threads: " + "; ".join(f"{k}: {v}" for k, v in info["threads"].items()))

    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        wanted = args.cases.split(",")
        if "shipped" in wanted:
            cases.append((f"shipped ({Path(args.bundle).name})", shipped,
                          photo_crops(args.batch, shipped.width, shipped.channels, seed=1)))
        if "gray64" in wanted:
            b = untrained_bundle("gray64", "seed", 64, 1, "mse", {}, shipped.meta, Path(tmp))
            cases.append(("64x64 gray, seed AE (monitor train's default), untrained", b,
                          photo_crops(args.batch, 64, 1, seed=2)))
        if "colour256" in wanted:
            b = untrained_bundle("colour256", "conv", 256, 3, "smooth_quantile", {"sigma": 2.0, "q": 0.99},
                                 shipped.meta, Path(tmp))
            cases.append(("256x256 colour, conv AE (texture preset), untrained", b,
                          photo_crops(args.batch, 256, 3, seed=3)))
        results = [run_case(label, b, imgs, backends, batches, args.threads, samples, seed=i)
                   for i, (label, b, imgs) in enumerate(cases)]
    info["cases"] = results
    info["seconds"] = round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1)
    if args.json:
        args.json.write_text(json.dumps(info, indent=2) + "\n")
    print()
    print(json.dumps(info))


def platform_cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


if __name__ == "__main__":
    main()
