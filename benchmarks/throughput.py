"""Pipeline throughput and latency against the bare batched model, measured in one run.

Prints: bare batched model img/s, scorer with preprocessing img/s, folder pipeline img/s (files renamed into
a watched folder until their verdicts are in the journal), the pipeline/bare ratio, single-file latency
on an idle line, and the rolling-threshold update cost at a window of 100,000.

usage: python benchmarks/throughput.py [--bundle models/default] [--images 2000] [--max-batch 32]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from monitor import metrics  # noqa: E402
from monitor.config import parse_config  # noqa: E402
from monitor.daemon import Daemon  # noqa: E402
from monitor.model.bundle import load_bundle  # noqa: E402
from monitor.model.scorer import BatchScorer  # noqa: E402
from monitor.threshold import Threshold  # noqa: E402


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def journal_verdicts(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "score" in rec:
            out.append(rec)
    return out


def scored() -> float:
    return sum(metrics.IMAGES_SCORED.labels("bench", o)._value.get() for o in ("normal", "anomaly"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(REPO / "models" / "default"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--latency-samples", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    bundle = load_bundle(args.bundle)
    h, w, c = bundle.height, bundle.width, bundle.channels
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 256, (h, w) if c == 1 else (h, w, 3), dtype=np.uint8) for _ in range(256)]
    scorer = BatchScorer(bundle, args.max_batch)
    inputs = np.stack([np.atleast_3d(x).astype(np.float32) / 255.0 for x in raw[: args.max_batch]])
    scorer.score_inputs(inputs)  # trace once

    n_batches = max(1, args.images // args.max_batch)
    start = time.perf_counter()
    for _ in range(n_batches):
        scorer.score_inputs(inputs)
    bare = rate(n_batches * args.max_batch, time.perf_counter() - start)

    start = time.perf_counter()
    for i in range(n_batches):
        scorer.score([raw[(i * args.max_batch + k) % len(raw)] for k in range(args.max_batch)])
    with_pre = rate(n_batches * args.max_batch, time.perf_counter() - start)

    # One model.predict per image: what the tutorials do, and what batching replaces.
    per_image_n = 40
    start = time.perf_counter()
    for i in range(per_image_n):
        bundle.model.predict(inputs[i % len(inputs)][None], verbose=0)
    predict_rate = rate(per_image_n, time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        staging = work / "staging"
        staging.mkdir()
        for i in range(args.images):
            cv2.imwrite(str(staging / f"img{i:06d}.png"), raw[i % len(raw)])
        config = parse_config({
            "model": str(Path(args.bundle).resolve()),
            "sources": [{"name": "bench", "folder": "inbox", "settle_ms": 20}],
            "batching": {"max_batch": args.max_batch, "max_wait_ms": 20, "queue_size": 256},
            "threshold": {"fixed": 1e9},  # no evidence writing: this measures the scoring path
            "metrics": {"enabled": False},
        }, work / "config.yaml")
        daemon = Daemon(config, bundle)
        daemon.start()
        inbox = work / "inbox"
        # The files arrive from another process, as from a line camera's PC.
        mover = ("import os, sys\nfor n in sorted(os.listdir(sys.argv[1])): "
                 "os.rename(os.path.join(sys.argv[1], n), os.path.join(sys.argv[2], n))")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", mover, str(staging), str(inbox)], check=True)
        # Poll the in-process counter, not the journal: re-reading a growing file would steal the GIL.
        while scored() < args.images:
            time.sleep(0.01)
        pipeline = rate(args.images, time.perf_counter() - start)

        latencies = []
        for i in range(args.latency_samples):
            before = scored()
            cv2.imwrite(str(inbox / f"single{i:03d}.png"), raw[i])
            while scored() <= before:
                time.sleep(0.002)
            rec = journal_verdicts(config.output.journal)[-1]
            latencies.append(rec["time"] - rec["frame_time"])
            time.sleep(0.1)
        daemon.stop()
        daemon.wait()

    threshold = Threshold(quantile=0.999, window=100_000, calibration=rng.random(100_000))
    scores = rng.random(20_000)
    start = time.perf_counter()
    for s in scores:
        threshold.judge(float(s))
    judge_us = (time.perf_counter() - start) / len(scores) * 1e6

    print(f"bundle {args.bundle}: input {h}x{w}x{c}, max_batch {args.max_batch}, {args.images} images")
    print(f"model.predict per image           {predict_rate:9.1f} img/s")
    print(f"bare batched model (compiled)     {bare:9.1f} img/s")
    print(f"scorer with preprocessing         {with_pre:9.1f} img/s")
    print(f"folder pipeline (files->journal)  {pipeline:9.1f} img/s")
    print(f"ratio pipeline / bare batched     {pipeline / bare:9.3f}")
    print(f"ratio batched / per-image predict {bare / predict_rate:9.1f}")
    print(f"single-file latency, idle line    median {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} files (arrival event -> verdict)")
    print(f"threshold judge at window 100,000 {judge_us:9.2f} us/score")


if __name__ == "__main__":
    main()
