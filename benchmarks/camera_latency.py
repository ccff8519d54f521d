"""Camera latency: how old is a camera frame when its verdict comes out?

An ffmpeg HTTP MJPEG stream shows its own frame number in each frame (brightness), so the benchmark
can tell both the time from capture to verdict and how far the scored frame lags behind the live
stream (a stale, buffered frame lags; the newest frame does not). The camera source feeds the real
FrameQueue and BatchScorer; a naive reader (`cap.read()` then sleep 1/fps) runs as a baseline.

Run: .venv/bin/python benchmarks/camera_latency.py [--seconds 10] [--rate 25] [--fps 5]
         [--size 320x240] [--score-delay 0.0] [--bundle models/default]
Without a bundle at --bundle a tiny one is trained first (about 10 s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from streams import MjpegServer  # noqa: E402

from monitor.batching import FrameQueue  # noqa: E402
from monitor.config import CameraSourceConfig  # noqa: E402
from monitor.records import Frame  # noqa: E402
from monitor.sources.camera import CameraSource  # noqa: E402


def tiny_bundle(workdir: Path) -> Path:
    """Train a 32x32 bundle on synthetic normal parts (the test suite's recipe)."""
    from imagegen import normal_image, write_images

    from monitor.training.train import TrainOptions, train_bundle

    rng = np.random.default_rng(0)
    data = workdir / "normal"
    write_images(data, [normal_image(rng, 32) for _ in range(160)], prefix="n")
    out = workdir / "bundle"
    train_bundle(data, out, TrainOptions(size=(32, 32), channels=1, epochs=5, seed=0, quiet=True, auto=False,
                                         allow_degenerate=True))
    return out


class NaiveSource:
    """The baseline: `cap.read()` once per sampling period. Buffered frames pile up behind it."""

    def __init__(self, url: str, fps: float, queue: FrameQueue) -> None:
        self.url, self.period, self.queue = url, 1.0 / fps, queue
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="naive-reader", daemon=True)
        self.frames_read = 0

    def _run(self) -> None:
        cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG)
        while not self.stop_event.is_set():
            ok, image = cap.read()
            if ok:
                self.queue.put_latest(Frame("naive", image, time.time()))
                self.frames_read += 1
            self.stop_event.wait(self.period)
        cap.release()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


def unwrap(counters: list[int], modulo: int = 128) -> list[int]:
    """Frame numbers from the stream's wrapping counter (frames arrive in order)."""
    out, base, last = [], 0, None
    for c in counters:
        if last is not None and c < last:
            base += modulo
        out.append(base + c)
        last = c
    return out


def run(kind: str, args: argparse.Namespace, scorer) -> dict[str, float]:
    width, height = (int(v) for v in args.size.split("x"))
    server = MjpegServer(size=(width, height), rate=args.rate, pattern="counter").start()
    drops: list[str] = []
    queue = FrameQueue(256, on_camera_drop=drops.append)
    if kind == "camera_source":
        config = CameraSourceConfig(name="bench", camera=server.url, fps=args.fps, read_timeout_s=2.0)
        source = CameraSource(config, queue, lambda event: None)
    else:
        source = NaiveSource(server.url, args.fps, queue)
    rows: list[tuple[float, float, int]] = []  # (frame_time, verdict_time, counter)
    source.start()
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            frames = queue.collect(8, 0.02, poll_s=0.1)
            if not frames:
                continue
            scorer.score([f.image for f in frames])
            if args.score_delay:
                time.sleep(args.score_delay)
            done = time.time()
            for f in frames:
                rows.append((f.frame_time, done, int(round(float(f.image[..., 0].mean()) / 2)) % 128))
    finally:
        source.stop()
        source.join(5)
        server.stop()
    times = np.array([r[0] for r in rows])
    ages = np.array([r[1] - r[0] for r in rows])
    produced = np.array(unwrap([r[2] for r in rows]), dtype=np.float64) / args.rate
    # The stream's clock runs at wall speed; the freshest frame defines zero lag.
    offset = times - produced
    lag = offset - offset.min()
    return {
        "scored": len(rows), "read": source.frames_read, "dropped": len(drops),
        "age_p50_ms": 1000 * float(np.median(ages)), "age_p95_ms": 1000 * float(np.percentile(ages, 95)),
        "age_max_ms": 1000 * float(ages.max()),
        "lag_p50_ms": 1000 * float(np.median(lag)), "lag_max_ms": 1000 * float(lag.max()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=25, help="stream frames per second")
    parser.add_argument("--fps", type=float, default=5.0, help="frames sampled per second")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--score-delay", type=float, default=0.0, help="extra seconds per batch (slow scorer)")
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    args = parser.parse_args()

    from monitor.model.bundle import load_bundle
    from monitor.model.scorer import BatchScorer

    with tempfile.TemporaryDirectory() as tmp:
        bundle_path = args.bundle if args.bundle.is_dir() else tiny_bundle(Path(tmp))
        bundle = load_bundle(bundle_path)
        scorer = BatchScorer(bundle, 8)
        scorer.score([np.zeros((bundle.height, bundle.width), np.uint8)])  # trace once
        print(f"stream {args.size} at {args.rate} fps, sampled at {args.fps} fps for {args.seconds} s, "
              f"score delay {args.score_delay} s/batch, bundle {bundle_path.name} "
              f"{bundle.height}x{bundle.width}x{bundle.channels}")
        print(f"{'reader':<14} {'read':>5} {'scored':>6} {'dropped':>7} {'age p50':>8} {'age p95':>8} "
              f"{'age max':>8} {'lag p50':>8} {'lag max':>8}   (ms)")
        for kind in ("camera_source", "naive_read"):
            r = run(kind, args, scorer)
            print(f"{kind:<14} {r['read']:>5} {r['scored']:>6} {r['dropped']:>7} {r['age_p50_ms']:>8.1f} "
                  f"{r['age_p95_ms']:>8.1f} {r['age_max_ms']:>8.1f} {r['lag_p50_ms']:>8.1f} {r['lag_max_ms']:>8.1f}")
    print("age: capture to verdict; lag: how far the scored frame is behind the live stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())
