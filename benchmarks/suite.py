"""The benchmark suite (`make bench`): every throughput, latency, start-up and memory figure in one run.

Measured in ONE process run, on the same bundles and the same files, so ratios compare like with like on a
shared machine:

- three cases: 64x64 grey (the shipped `models/default`), 128x128 and 256x256 colour (bundles of the same `conv`
  architecture built untrained from monitor/training/architecture.py and saved to a temp folder: the cost of a
  forward pass does not depend on what the weights learned). For each, in 3 rounds on one in-process `Daemon`,
  measured warm (every batch bucket traced before the first file): the bare batched model (the daemon's own
  `BatchScorer.score_inputs` on a prepared full batch), the daemon on a backlog of PNG files renamed into its
  watched folder by another process (its first rename to the last verdict, counted by the metrics counter; a
  backlog is 5 s of the bare model's work), the bare model again; a round's ratio is daemon / the mean of the
  bare rates around it, the case's figures the medians over the rounds. Then the naive way (one `model.predict`
  per image);
- pipeline capacity: the same daemon path with the shipped bundle's model replaced by a Keras identity model
  (scoring costs ~nothing: the GPU case), files/s on 3 backlogs of 20,000 64x64 PNGs (the median), and that
  model's bare img/s;
- tiled: the shipped model with `tiling: {scale: 1}` (default stride, half a tile) on 128x128 grey PNGs
  (4x the tile area, 9 tiles each) through the daemon: tiles/s against the bare model at the tile size;
- latency: files renamed in at half the 64x64 daemon's peak rate; p50/p95/p99 of journal `time -
  frame_time` (file arrival event to verdict) against max_wait_ms + 2 batch times (batch = max_batch / bare
  img/s);
- start-up: `monitor run --config FILE` as a subprocess with NOTIFY_SOCKET on a datagram socket bound here:
  process start to READY=1, median of 3;
- RSS: a `monitor run` subprocess over `--rss-images` 64x64 files (fed in chunks, `after_scoring: delete`),
  VmRSS after warm-up (10% of the images, at least 2,000 or half) and at the end; relative growth.

The daemon runs use a fixed threshold of 1e9 (no evidence writing: the random-noise images would all be
anomalies for the shipped model) and the shipped batching (max_batch 32, max_wait_ms 20, settle_ms 20).

Prints a table (case, figure, value, target, met), then ONE JSON object as the last line of stdout
(also written to `--json PATH`). `--quick`: a ~1-minute smoke run with fewer images and shorter timings.

usage: python benchmarks/suite.py [--quick] [--json PATH] [--rss-images N] [--max-batch 32]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import journal_verdicts  # noqa: E402  (benchmarks/throughput.py)
from tiling import with_tiling  # noqa: E402  (benchmarks/tiling.py)

from monitor import metrics  # noqa: E402
from monitor.config import parse_config  # noqa: E402
from monitor.daemon import Daemon  # noqa: E402
from monitor.model.bundle import Bundle, load_bundle, save_bundle  # noqa: E402
from monitor.model.scorer import BatchScorer  # noqa: E402
from monitor.model.tiling import tile_grid, working_size  # noqa: E402

log = logging.getLogger("bench")
DEFAULT_BUNDLE = REPO / "models" / "default"
MAX_WAIT_MS = 20
SETTLE_MS = 20
DISTINCT_IMAGES = 64  # distinct random images per case; the files cycle through them

# argv: staging folder, inbox. Renames every staged file into the inbox (sorted), as a line PC would. Prints
# time.monotonic() just before its first rename: CLOCK_MONOTONIC is one clock for every process on Linux, so the
# round is timed from the first file in the folder, not from the launch of this interpreter (~18 ms, which the
# daemon cannot use: the files are not there yet).
_MOVER = ("import os, sys, time\nnames = sorted(os.listdir(sys.argv[1]))\nprint(time.monotonic(), flush=True)\n"
          "for n in names: os.rename(os.path.join(sys.argv[1], n), os.path.join(sys.argv[2], n))")

# argv: staging folder, inbox, rate (files/s). Renames the staged files in at t0 + i / rate (no drift).
_PACED_MOVER = """
import os, sys, time
staging, inbox, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
names = sorted(os.listdir(staging))
t0 = time.monotonic()
for i, n in enumerate(names):
    wait = t0 + i / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    os.rename(os.path.join(staging, n), os.path.join(inbox, n))
"""


@dataclass
class Settings:
    max_batch: int
    rounds: int
    bare_s: float
    naive_s: float
    round_s: float  # a daemon round's backlog, in seconds of the bare model's work
    capacity_files: int
    tiled_images: int
    latency_s: float
    startup_runs: int
    rss_images: int


# --- the machine -------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import keras
    import tensorflow as tf

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu": cpu, "cores": affinity, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "loadavg_at_start": list(os.getloadavg()),
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "opencv": cv2.__version__},
    }


# --- bundles -----------------------------------------------------------------------------------------------

def untrained_bundle(base: Bundle, out: Path, height: int, width: int, channels: int) -> Bundle:
    """A bundle of the shipped bundle's architecture at another input size, untrained, saved and loaded back."""
    from monitor.training.architecture import build_model

    arch = base.meta.get("architecture", {})
    model = build_model(arch.get("name", "conv"), height, width, channels, arch.get("filters"),
                        code_channels=arch.get("code_channels", 8))
    meta = {k: v for k, v in base.meta.items() if k not in ("training", "data", "versions", "model_file")}
    meta["input"] = {**base.meta["input"], "height": height, "width": width, "channels": channels,
                     "color_order": "bgr" if channels == 3 else "gray"}
    meta["architecture"] = {**arch, "parameters": int(model.count_params()), "weights": "untrained (benchmark)"}
    save_bundle(out, model, meta)
    return load_bundle(out)


def identity_bundle(base: Bundle) -> Bundle:
    """The shipped bundle (same folder, sidecar, score) with a model that returns its input: scoring ~free."""
    import keras

    inp = keras.Input(shape=(base.height, base.width, base.channels))
    return Bundle(base.path, keras.Model(inp, keras.layers.Identity()(inp)), base.meta)


# --- measuring ---------------------------------------------------------------------------------------------

def bare_rate(scorer: BatchScorer, seconds: float) -> float:
    """Inputs per second through full compiled batches (score_inputs on a prepared batch)."""
    b = scorer.bundle
    x = np.random.default_rng(0).random((scorer.max_batch, b.height, b.width, b.channels), dtype=np.float32)
    scorer.score_inputs(x)  # traced already; one more call settles the allocator
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3 * len(x):
        scorer.score_inputs(x)
        n += len(x)
    return n / (time.perf_counter() - start)


def naive_rate(bundle: Bundle, seconds: float) -> float:
    """One `model.predict` per image: what the tutorials do."""
    x = np.random.default_rng(0).random((1, bundle.height, bundle.width, bundle.channels), dtype=np.float32)
    bundle.model.predict(x, verbose=0)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 5:
        bundle.model.predict(x, verbose=0)
        n += 1
    return n / (time.perf_counter() - start)


def random_images(shape: tuple[int, ...], seed: int) -> list[bytes]:
    """PNG bytes of DISTINCT_IMAGES random uint8 images (random noise: PNG's worst case to decode)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(DISTINCT_IMAGES):
        ok, data = cv2.imencode(".png", rng.integers(0, 256, shape, dtype=np.uint8))
        assert ok
        out.append(data.tobytes())
    return out


def stage(folder: Path, pngs: list[bytes], n: int, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{prefix}{i:07d}.png").write_bytes(pngs[i % len(pngs)])


def scored(source: str) -> float:
    return sum(metrics.IMAGES_SCORED.labels(source, o)._value.get() for o in ("normal", "anomaly"))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else float("nan")


class InProcessDaemon:
    """`Daemon` in this process on one folder source called `source`, its config and outputs in `work`."""

    def __init__(self, work: Path, bundle: Bundle, source: str, max_batch: int) -> None:
        self.work, self.source = work, source
        work.mkdir(parents=True, exist_ok=True)
        self.inbox = work / "inbox"
        self.config = parse_config({
            "model": str(Path(bundle.path).resolve()),
            "sources": [{"name": source, "folder": "inbox", "settle_ms": SETTLE_MS}],
            "batching": {"max_batch": max_batch, "max_wait_ms": MAX_WAIT_MS, "queue_size": 256},
            "threshold": {"fixed": 1e9},  # no evidence writing: this measures the scoring path
            "metrics": {"enabled": False},
            "logging": {"level": "WARNING", "summary_interval_s": 0},
        }, work / "config.yaml")
        self.daemon = Daemon(self.config, bundle)
        if self.daemon.pipeline.models["default"].bundle is not bundle:  # it loaded the folder's model instead
            raise RuntimeError(f"the daemon did not take the given bundle of {bundle.path}")

    def __enter__(self) -> InProcessDaemon:
        self.daemon.start()
        # Measured warm, as a line runs for months: READY=1 comes before the smaller batch buckets are traced
        # (beside the line, about a second); files in that second wait behind the traces. Start-up has its own case.
        deadline = time.monotonic() + 60
        while any(m.scorer.warming for m in self.daemon.pipeline.models.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.daemon.wait()

    def backlog(self, staging: Path, n: int, stall_s: float = 60.0) -> dict:
        """Rename `n` staged files in from another process; time from its first rename to the n-th verdict."""
        base = scored(self.source)
        launched = time.monotonic()
        mover = subprocess.Popen([sys.executable, "-c", _MOVER, str(staging), str(self.inbox)],
                                 stdout=subprocess.PIPE, text=True)
        start = float(mover.stdout.readline())
        first = moved = None
        last_count, last_change = base, time.monotonic()
        while True:
            count = scored(self.source)
            now = time.monotonic()
            if moved is None and mover.poll() is not None:
                moved = now - start
            if first is None and count > base:
                first = (now - start, count - base)
            if count - base >= n:
                break
            if count != last_count:
                last_count, last_change = count, now
            elif now - last_change > stall_s:
                log.warning("backlog stalled source=%s scored=%d of %d", self.source, count - base, n)
                break
            time.sleep(0.01)
        elapsed = time.monotonic() - start
        if mover.wait() != 0:
            raise RuntimeError(f"the mover failed with exit code {mover.returncode}")
        done = int(scored(self.source) - base)
        out = {"files": n, "scored": done, "seconds": elapsed, "mover_seconds": moved if moved is not None else elapsed,
               "mover_launch_seconds": start - launched, "img_per_s": done / elapsed}
        if first is not None and elapsed > first[0] and done > first[1]:
            out["steady_img_per_s"] = (done - first[1]) / (elapsed - first[0])  # after the first batch
        return out


def daemon_case(name: str, bundle: Bundle, pngs: list[bytes], work: Path, s: Settings) -> dict:
    """bare, daemon on a backlog, bare again, in `s.rounds` rounds on one daemon (its own scorer); then naive.

    A round's backlog is `s.round_s` seconds of the bare model's work (at least 4 full batches), so that the
    backlog's fixed costs (the first batch waits for its files to be read and decoded; the last is partial) weigh
    the same on a fast model or machine as on a slow one. Each round's ratio is daemon / the mean of the bare rates
    right before and after it; the case's figures are the medians over the rounds (a neighbour's load shifts both
    sides of a round's ratio alike)."""
    source = f"bench_{name}"
    rounds = []
    with InProcessDaemon(work / f"daemon_{name}", bundle, source, s.max_batch) as d:
        scorer = d.daemon.pipeline.models["default"].scorer  # the daemon's own scorer: same traced graph
        after = bare_rate(scorer, s.bare_s)
        for r in range(s.rounds):
            files = max(4 * s.max_batch, int(after * s.round_s))
            staging = work / f"staging_{name}_{r}"
            stage(staging, pngs, files, f"{name}_{r}_")
            os.sync()  # the staged files' write-back done before the round, not during it
            before = bare_rate(scorer, s.bare_s)
            run = d.backlog(staging, files)
            after = bare_rate(scorer, s.bare_s)
            bare = (before + after) / 2
            rounds.append({**run, "bare_before": before, "bare_after": after, "bare_img_per_s": bare,
                           "daemon_over_bare": run["img_per_s"] / bare})
    shutil.rmtree(work / f"daemon_{name}", ignore_errors=True)
    result: dict = {"input": f"{bundle.height}x{bundle.width}x{bundle.channels}",
                    "files": sum(r["files"] for r in rounds), "rounds": rounds}
    result["naive_img_per_s"] = naive_rate(bundle, s.naive_s)
    result["bare_img_per_s"] = statistics.median(r["bare_img_per_s"] for r in rounds)
    result["daemon_img_per_s"] = statistics.median(r["img_per_s"] for r in rounds)
    result["daemon_over_bare"] = statistics.median(r["daemon_over_bare"] for r in rounds)
    result["daemon_over_bare_each"] = [r["daemon_over_bare"] for r in rounds]
    # The same rounds from their first verdict on: without the backlog's fill time (the first files' settle,
    # read and decode before the model has a batch), which a short round pays in full.
    steady = [r["steady_img_per_s"] / r["bare_img_per_s"] for r in rounds if "steady_img_per_s" in r]
    result["steady_over_bare"] = statistics.median(steady) if steady else float("nan")
    result["bare_over_naive"] = result["bare_img_per_s"] / result["naive_img_per_s"]
    return result


def capacity_case(base: Bundle, work: Path, s: Settings) -> dict:
    """The daemon with a model that costs ~nothing: files/s over `s.rounds` backlogs of `s.capacity_files`
    64x64 PNGs (the median), and the identity model's bare img/s around them."""
    bundle = identity_bundle(base)
    pngs = random_images((base.height, base.width), seed=11)
    rounds = []
    with InProcessDaemon(work / "daemon_capacity", bundle, "bench_capacity", s.max_batch) as d:
        scorer = d.daemon.pipeline.models["default"].scorer
        bare = [bare_rate(scorer, s.bare_s / 2)]
        for r in range(s.rounds):
            staging = work / f"staging_capacity_{r}"
            stage(staging, pngs, s.capacity_files, f"cap{r}_")
            os.sync()
            rounds.append(d.backlog(staging, s.capacity_files))
        bare.append(bare_rate(scorer, s.bare_s / 2))
    shutil.rmtree(work / "daemon_capacity", ignore_errors=True)
    each = [r["img_per_s"] for r in rounds]
    return {"input": f"{base.height}x{base.width}x{base.channels}", "model": "keras identity (score fn only)",
            "files": s.capacity_files * s.rounds, "rounds": rounds, "files_per_s": statistics.median(each),
            "files_per_s_each": each, "bare_identity_img_per_s": statistics.mean(bare),
            "bare_identity_before_after": bare}


def tiled_case(base: Bundle, work: Path, s: Settings) -> dict:
    bundle = with_tiling(base, None, 1.0)
    shape = (2 * base.height, 2 * base.width)  # 4x the tile area
    grid = tile_grid(*working_size(*shape, 1.0), (base.height, base.width), bundle.tile_stride)
    pngs = random_images(shape, seed=12)
    staging = work / "staging_tiled"
    stage(staging, pngs, s.tiled_images, "tile")
    with InProcessDaemon(work / "daemon_tiled", bundle, "bench_tiled", s.max_batch) as d:
        scorer = d.daemon.pipeline.models["default"].scorer
        before = bare_rate(scorer, s.bare_s)
        run = d.backlog(staging, s.tiled_images)
        after = bare_rate(scorer, s.bare_s)
    shutil.rmtree(work / "daemon_tiled", ignore_errors=True)
    bare = (before + after) / 2
    tiles_per_s = run["img_per_s"] * len(grid)
    return {"image": f"{shape[0]}x{shape[1]}", "tile": f"{base.height}x{base.width}",
            "stride": list(bundle.tile_stride), "tiles_per_image": len(grid), "files": s.tiled_images,
            "daemon": run, "images_per_s": run["img_per_s"], "tiles_per_s": tiles_per_s,
            "bare_img_per_s": bare, "bare_before_after": [before, after], "tiles_over_bare": tiles_per_s / bare}


def latency_case(bundle: Bundle, pngs: list[bytes], peak: float, bare: float, work: Path, s: Settings) -> dict:
    rate = peak / 2
    n = max(20, int(rate * s.latency_s))
    staging = work / "staging_latency"
    stage(staging, pngs, n, "lat")
    with InProcessDaemon(work / "daemon_latency", bundle, "bench_latency", s.max_batch) as d:
        base = scored(d.source)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", _PACED_MOVER, str(staging), str(d.inbox), str(rate)], check=True)
        feed_s = time.perf_counter() - start
        deadline = time.perf_counter() + 60
        while scored(d.source) - base < n and time.perf_counter() < deadline:
            time.sleep(0.01)
        journal = d.config.output.journal
    records = [r for r in journal_verdicts(journal) if r.get("source") == "bench_latency"]
    lat = [(r["time"] - r["frame_time"]) * 1000 for r in records]
    # Did the daemon keep up? Verdicts per second over the feed, and the last verdict's lag behind the feed's end.
    span = (max(r["time"] for r in records) - min(r["frame_time"] for r in records)) if records else float("nan")
    shutil.rmtree(work / "daemon_latency", ignore_errors=True)
    batch_ms = s.max_batch / bare * 1000
    bound = MAX_WAIT_MS + 2 * batch_ms
    return {"rate_files_per_s": rate, "peak_daemon_img_per_s": peak, "files": n, "verdicts": len(lat),
            "feed_seconds": feed_s, "verdicts_per_s": len(lat) / span if records else float("nan"),
            "last_verdict_after_feed_s": span - feed_s, "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else float("nan"),
            "batch_ms": batch_ms, "bound_ms": bound, "settle_ms": SETTLE_MS, "max_wait_ms": MAX_WAIT_MS}


# --- subprocess daemons ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def monitor_command(config: Path) -> list[str]:
    exe = Path(sys.executable).with_name("monitor")
    prefix = [str(exe)] if exe.exists() else [sys.executable, "-m", "monitor"]
    return [*prefix, "run", "--config", str(config)]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def write_config(work: Path, bundle: Path, extra_source: dict | None = None, metrics_on: bool = True) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "model": str(Path(bundle).resolve()),
        "sources": [{"name": "line1", "folder": "inbox", **(extra_source or {})}],
        "metrics": {"enabled": metrics_on, "port": free_port()} if metrics_on else {"enabled": False},
        "logging": {"level": "WARNING", "summary_interval_s": 0},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def startup_case(bundle: Path, work: Path, runs: int) -> dict:
    """`monitor run` from process start to READY=1 on NOTIFY_SOCKET (the shipped config's shape, metrics on)."""
    times = []
    for i in range(runs):
        d = work / f"startup{i}"
        config = write_config(d, bundle)
        sock_path = d / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.settimeout(0.5)
        log_file = open(d / "daemon.log", "w")  # noqa: SIM115 - closed below
        start = time.monotonic()
        proc = subprocess.Popen(monitor_command(config), cwd=d, env=subprocess_env(NOTIFY_SOCKET=str(sock_path)),
                                stdout=log_file, stderr=subprocess.STDOUT)
        ready = None
        try:
            while ready is None and time.monotonic() - start < 60 and proc.poll() is None:
                try:
                    msg = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                if msg.startswith("READY=1") or "\nREADY=1" in msg:
                    ready = time.monotonic() - start
        finally:
            stop_process(proc)
            log_file.close()
            sock.close()
        if ready is None:
            raise RuntimeError(f"no READY=1 from monitor run: {(d / 'daemon.log').read_text()[-2000:]}")
        times.append(ready)
    # For reference: what importing TensorFlow and Keras alone costs a fresh interpreter on this machine.
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import tensorflow, keras"], env=subprocess_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"runs": runs, "seconds": times, "median_s": statistics.median(times),
            "import_tensorflow_keras_s": time.monotonic() - start}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class JournalCounter:
    """Counts verdict lines of a journal by reading only what was appended since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.count, self.tail = path, 0, 0, b""

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.count
        self.offset += len(data)
        data = self.tail + data
        lines = data.split(b"\n")
        self.tail = lines.pop()
        self.count += sum(1 for line in lines if b'"score"' in line)
        return self.count


def rss_case(bundle: Path, work: Path, images: int) -> dict:
    """A `monitor run` subprocess over `images` 64x64 files fed in chunks; VmRSS after warm-up and at the end."""
    b = load_bundle(bundle)
    pngs = random_images((b.height, b.width), seed=13)
    d = work / "rss"
    config = write_config(d, bundle, {"after_scoring": "delete", "settle_ms": SETTLE_MS}, metrics_on=False)
    cfg = yaml.safe_load(config.read_text())
    cfg["threshold"] = {"fixed": 1e9}
    config.write_text(yaml.safe_dump(cfg))
    pool, staging, inbox = d / "pool", d / "staging", d / "inbox"
    stage(pool, pngs, len(pngs), "pool")
    staging.mkdir()
    inbox.mkdir()
    pool_files = sorted(pool.iterdir())
    counter = JournalCounter(d / "var" / "journal.jsonl")
    log_file = open(d / "daemon.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(monitor_command(config), cwd=d, env=subprocess_env(), stdout=log_file,
                            stderr=subprocess.STDOUT)
    warm_at = max(images // 10, min(2000, images // 2))
    chunk, backlog = 500, 1500
    samples: list[tuple[int, float, int]] = []  # (scored, seconds, rss kB)
    fed, warm, start = 0, None, time.monotonic()
    last_sample, last_progress, last_count = 0.0, time.monotonic(), 0
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}: {(d / 'daemon.log').read_text()[-2000:]}")
            done = counter()
            if done != last_count:
                last_count, last_progress = done, time.monotonic()
            elif time.monotonic() - last_progress > 60:
                raise RuntimeError(f"RSS run stalled at {done} of {images}")
            while fed < images and fed - done < backlog:
                for k in range(min(chunk, images - fed)):
                    name = f"rss{fed + k:07d}.png"
                    os.link(pool_files[(fed + k) % len(pool_files)], staging / name)
                    os.rename(staging / name, inbox / name)
                fed += min(chunk, images - fed)
            now = time.monotonic()
            if now - last_sample >= 1.0:
                samples.append((done, now - start, rss_kb(proc.pid)))
                last_sample = now
            if warm is None and done >= warm_at:
                warm = (done, now - start, rss_kb(proc.pid))
            if done >= images:
                break
            time.sleep(0.05)
        time.sleep(1.0)  # the last batch's buffers released, the sorter done
        end = (counter(), time.monotonic() - start, rss_kb(proc.pid))
    finally:
        rc = stop_process(proc)
        log_file.close()
    assert warm is not None
    after_warm = [kb for n, _, kb in samples if n >= warm[0]] + [end[2]]
    shutil.rmtree(d, ignore_errors=True)
    return {"images": images, "warm_up_images": warm[0], "rss_warm_mb": warm[2] / 1024, "rss_end_mb": end[2] / 1024,
            "rss_max_after_warm_mb": max(after_warm) / 1024, "growth": end[2] / warm[2] - 1,
            "seconds": end[1], "img_per_s": (end[0] - warm[0]) / max(1e-9, end[1] - warm[1]), "exit_code": rc,
            "samples": [{"scored": n, "s": round(t, 1), "rss_mb": round(kb / 1024, 1)} for n, t, kb in samples]}


# --- output ------------------------------------------------------------------------------------------------

def targets(r: dict) -> list[dict]:
    rows = []

    def add(case: str, figure: str, value: float, unit: str, target: str, met: bool | None) -> None:
        rows.append({"case": case, "figure": figure, "value": value, "unit": unit, "target": target, "met": met})

    for name, c in r["cases"].items():
        add(name, "naive (predict per image)", c["naive_img_per_s"], "img/s", "", None)
        add(name, "bare batched model (median of rounds)", c["bare_img_per_s"], "img/s", "", None)
        add(name, "daemon, backlog of PNGs (median)", c["daemon_img_per_s"], "img/s", "", None)
        target = {"64x64 grey": 0.8, "256x256 colour": 0.95}.get(name)
        each = "/".join(f"{x:.2f}" for x in c["daemon_over_bare_each"])
        add(name, f"daemon / bare (median; rounds {each})", c["daemon_over_bare"], "x",
            f">= {target}" if target else "", c["daemon_over_bare"] >= target if target else None)
        add(name, "daemon after its first verdict / bare (median)", c["steady_over_bare"], "x", "", None)
    cap = r["capacity"]
    add("capacity 64x64", "bare identity model", cap["bare_identity_img_per_s"], "img/s", "", None)
    each = "/".join(f"{x / 1000:.1f}k" for x in cap["files_per_s_each"])
    add("capacity 64x64", f"daemon, identity model (median; {each})", cap["files_per_s"], "files/s", ">= 10000",
        cap["files_per_s"] >= 10000)
    t = r["tiled"]
    case = f"tiled {t['image']}/{t['tile']}"
    add(case, "bare model at tile size", t["bare_img_per_s"], "img/s", "", None)
    add(case, f"daemon tiles/s ({t['tiles_per_image']} tiles/img)", t["tiles_per_s"], "tiles/s", "", None)
    add(case, "tiles/s / bare", t["tiles_over_bare"], "x", ">= 0.9", t["tiles_over_bare"] >= 0.9)
    lat = r["latency"]
    case = f"latency @ {lat['rate_files_per_s']:.0f}/s"
    add(case, "p50", lat["p50_ms"], "ms", "", None)
    add(case, "p95", lat["p95_ms"], "ms", "", None)
    add(case, "verdicts/s during the feed", lat["verdicts_per_s"], "img/s", "", None)
    add(case, "p99", lat["p99_ms"], "ms", f"<= {lat['bound_ms']:.0f} (wait+2 batches)",
        lat["p99_ms"] <= lat["bound_ms"])
    st = r["startup"]
    add("start-up", "python -c 'import tensorflow, keras'", st["import_tensorflow_keras_s"], "s", "", None)
    add("start-up", f"start -> READY=1 (median of {st['runs']})", st["median_s"], "s", "< 5", st["median_s"] < 5)
    rss = r["rss"]
    add(f"RSS {rss['images']} img", f"growth {rss['rss_warm_mb']:.0f} -> {rss['rss_end_mb']:.0f} MB",
        rss["growth"] * 100, "%", "within 5%", abs(rss["growth"]) <= 0.05)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'case':<22} {'figure':<46} {'value':>9} {'unit':<8} {'target':<26} met",
             "-" * 118]
    for row in rows:
        v = row["value"]
        value = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        lines.append(f"{row['case']:<22} {row['figure']:<46} {value:>9} {row['unit']:<8} {row['target']:<26} {met}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke run (fewer images, shorter timings)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON object here")
    parser.add_argument("--rss-images", type=int, default=None, help="images for the RSS run (default 20,000; "
                        "--quick 2,000; 100,000 for the full check)")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="the 64x64 grey case's bundle")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    q = args.quick
    s = Settings(max_batch=args.max_batch, rounds=2 if q else 3, bare_s=1.0 if q else 2.0, naive_s=0.5 if q else 2.0,
                 round_s=1.5 if q else 5.0,
                 capacity_files=3000 if q else 20000, tiled_images=100 if q else 300,
                 latency_s=4 if q else 15, startup_runs=1 if q else 3,
                 rss_images=args.rss_images or (2000 if q else 20000))
    t0 = time.monotonic()
    result: dict = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "machine": machine(), "mode": "quick" if q else "full", "command": " ".join(sys.argv),
                    "settings": {"max_batch": s.max_batch, "rounds": s.rounds, "max_wait_ms": MAX_WAIT_MS,
                                 "settle_ms": SETTLE_MS, "bare_seconds": s.bare_s, "round_seconds": s.round_s,
                                 "capacity_files": s.capacity_files,
                                 "tiled_images": s.tiled_images, "latency_seconds": s.latency_s,
                                 "startup_runs": s.startup_runs, "rss_images": s.rss_images,
                                 "files": "random-noise PNGs, renamed into the watched folder by another process",
                                 "threshold": "fixed 1e9 (no evidence writing)"}}
    tmp = Path(tempfile.mkdtemp(prefix="bench-")) if args.workdir is None else args.workdir
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        base = load_bundle(args.bundle)
        bundles = {"64x64 grey": base,
                   "128x128 colour": untrained_bundle(base, tmp / "bundle128", 128, 128, 3),
                   "256x256 colour": untrained_bundle(base, tmp / "bundle256", 256, 256, 3)}
        cases, pngs = {}, {}
        for i, (name, b) in enumerate(bundles.items()):
            shape = (b.height, b.width) if b.channels == 1 else (b.height, b.width, 3)
            pngs[name] = random_images(shape, seed=i)
            print(f"[{time.monotonic() - t0:6.1f}s] case {name}", file=sys.stderr, flush=True)
            cases[name] = daemon_case(name.split()[0], b, pngs[name], tmp, s)
        result["cases"] = cases
        print(f"[{time.monotonic() - t0:6.1f}s] pipeline capacity", file=sys.stderr, flush=True)
        result["capacity"] = capacity_case(base, tmp, s)
        print(f"[{time.monotonic() - t0:6.1f}s] tiled", file=sys.stderr, flush=True)
        result["tiled"] = tiled_case(base, tmp, s)
        print(f"[{time.monotonic() - t0:6.1f}s] latency", file=sys.stderr, flush=True)
        grey = cases["64x64 grey"]
        result["latency"] = latency_case(base, pngs["64x64 grey"], grey["daemon_img_per_s"], grey["bare_img_per_s"],
                                         tmp, s)
        print(f"[{time.monotonic() - t0:6.1f}s] start-up", file=sys.stderr, flush=True)
        result["startup"] = startup_case(args.bundle, tmp, s.startup_runs)
        print(f"[{time.monotonic() - t0:6.1f}s] RSS over {s.rss_images} images", file=sys.stderr, flush=True)
        result["rss"] = rss_case(args.bundle, tmp, s.rss_images)
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = time.monotonic() - t0
    result["loadavg_at_end"] = list(os.getloadavg())
    result["targets"] = targets(result)
    m = result["machine"]
    print(f"{result['date']}  {m['cpu']}, {m['cores']} cores, {m['platform']}")
    print("  ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"  ({result['mode']} run, "
          f"{result['seconds']:.0f} s, load {m['loadavg_at_start'][0]:.1f} -> {result['loadavg_at_end'][0]:.1f})")
    print(table(result["targets"]))
    met = [r for r in result["targets"] if r["met"] is not None]
    print(f"targets met: {sum(r['met'] for r in met)} of {len(met)}")
    text = json.dumps(result, default=float)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
