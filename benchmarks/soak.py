"""Soak: the real daemon at a steady rate for a long time; fails when it grows.

A `monitor run` subprocess watches a folder that a writer process feeds at a steady rate (one defective part
in 20; the writer removes old files as a line's cleanup job would) and a camera: an ffmpeg HTTP MJPEG stream
(tests/streams.py), or a looped video file where ffmpeg is missing. Every `--sample-every` seconds it records
the daemon's RSS (VmRSS), open file descriptors (/proc/PID/fd), threads (/proc/PID/status) and the latency
percentiles of the verdicts made since the last sample (journal `time - frame_time`), scrapes /metrics (so
the metrics server is soaked too), and prints the sample as one line. At the end it prints a JSON summary.

The verdict compares the median of the last third of the samples with the median of the second third (the
first third is warm-up: TensorFlow's allocator, the threshold window and the evidence folder fill there).
It fails on: RSS growth above 10% and 20 MB; fd growth above 4; thread growth above 2; p99 latency above 2x
and 0.25 s higher; a folder backlog that grows; a daemon that dies, stops scoring or does not drain on
SIGTERM. Exit status 0 when it held, 1 when it grew, 2 on a usage error.

Run: .venv/bin/python benchmarks/soak.py [--seconds 3600] [--rate 5] [--camera-fps 2] [--sample-every 30]
         [--bundle DIR] [--workdir DIR] [--json OUT]
`make soak` runs it for SOAK_SECONDS (default 3600). tests/test_soak.py runs it for 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemon_proc import DaemonProcess, free_port  # noqa: E402
from imagegen import anomalous_image, normal_image, write_images  # noqa: E402
from streams import MjpegServer, have_ffmpeg, write_video  # noqa: E402

# Growth limits (last third's median against the second third's). Absolute floors keep a busy 2-core
# machine's noise from failing a short run: 2x of a 30 ms p99 is one scheduler hiccup, not a leak.
RSS_GROWTH_FRACTION = 0.10
RSS_GROWTH_FLOOR_MB = 20.0
FD_SLACK = 4
THREAD_SLACK = 2
P99_GROWTH_FACTOR = 2.0
P99_GROWTH_FLOOR_S = 0.25
MIN_SAMPLES = 6
POOL_SIZE = 40  # distinct images the writer cycles through
ANOMALY_EVERY = 20

# argv: pool folder, staging folder, inbox, progress file, rate (files/s), seconds, keep (files).
# Writes pool images at t0 + i/rate (no drift), each copied aside and renamed in, so the daemon sees whole
# files; appends each name to the progress file; removes the oldest files beyond `keep`.
_WRITER = textwrap.dedent("""
    import os, shutil, sys, time
    pool, staging, inbox, progress = sys.argv[1:5]
    rate, seconds, keep = float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
    sources = sorted(os.listdir(pool))
    t0, i, kept = time.monotonic(), 0, []
    with open(progress, "a") as out:
        while time.monotonic() - t0 < seconds:
            wait = t0 + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            src = sources[i % len(sources)]
            name = f"soak{i:07d}_{src}"
            shutil.copy(os.path.join(pool, src), os.path.join(staging, name))
            os.replace(os.path.join(staging, name), os.path.join(inbox, name))
            out.write(name + "\\n")
            out.flush()
            kept.append(name)
            if len(kept) > keep:
                try:
                    os.unlink(os.path.join(inbox, kept.pop(0)))
                except FileNotFoundError:
                    pass
            i += 1
""")


@dataclass
class Sample:
    """One look at the daemon."""

    t: float  # seconds since the daemon was ready
    rss_mb: float
    fds: int
    threads: int
    verdicts: int  # made since the last sample
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    backlog: int  # files written but not yet scored
    metrics_ok: bool


@dataclass
class SoakResult:
    """The samples, the medians compared, and why it failed (empty when it held)."""

    seconds: float
    rate: float
    camera: str
    samples: list[Sample] = field(default_factory=list)
    compared: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    totals: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> dict:
        """The JSON summary: settings, totals, compared medians, verdict (samples are printed as they come)."""
        return {"ok": self.ok, "seconds": self.seconds, "rate": self.rate, "camera": self.camera,
                "samples": len(self.samples), "totals": self.totals, "compared": self.compared,
                "failures": self.failures}


def subprocess_env() -> dict[str, str]:
    """The daemon's environment: this checkout importable, TensorFlow quiet (as tests/conftest.py does)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def proc_status(pid: int) -> tuple[float, int, int]:
    """(RSS in MB, open fds, threads) of a live process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    rss_kb = int(fields["VmRSS"].split()[0])
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


class JournalTail:
    """New journal lines since the last read (by byte offset; a rotation starts the new file from 0)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        if self.path.stat().st_size < self.offset:  # rotated: journal.jsonl is a fresh file
            self.offset, self._partial = 0, b""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # a line being written now: read it whole next time
        return [json.loads(line) for line in lines if line.strip()]


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _median(values: list[float]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def judge(samples: list[Sample]) -> tuple[dict, list[str]]:
    """Compare the last third's medians with the second third's; returns (the medians, the failures)."""
    if len(samples) < MIN_SAMPLES:
        return {}, [f"only {len(samples)} samples (need {MIN_SAMPLES}): run longer or sample more often"]
    n = len(samples)
    middle, last = samples[n // 3: 2 * n // 3], samples[2 * n // 3:]
    compared: dict = {}
    failures: list[str] = []
    for name in ("rss_mb", "fds", "threads", "p99_s", "backlog"):
        before, after = _median([getattr(s, name) for s in middle]), _median([getattr(s, name) for s in last])
        compared[name] = {"middle_third": before, "last_third": after}
    rss, fds, threads = compared["rss_mb"], compared["fds"], compared["threads"]
    if rss["last_third"] - rss["middle_third"] > max(RSS_GROWTH_FRACTION * rss["middle_third"], RSS_GROWTH_FLOOR_MB):
        failures.append(f"RSS grew from {rss['middle_third']:.1f} MB to {rss['last_third']:.1f} MB")
    if fds["last_third"] - fds["middle_third"] > FD_SLACK:
        failures.append(f"open fds grew from {fds['middle_third']} to {fds['last_third']}")
    if threads["last_third"] - threads["middle_third"] > THREAD_SLACK:
        failures.append(f"threads grew from {threads['middle_third']} to {threads['last_third']}")
    p99 = compared["p99_s"]
    if p99["middle_third"] is None or p99["last_third"] is None:
        failures.append("no verdicts in the second or last third: the daemon stopped scoring")
    elif (p99["last_third"] > P99_GROWTH_FACTOR * p99["middle_third"]
          and p99["last_third"] - p99["middle_third"] > P99_GROWTH_FLOOR_S):
        failures.append(f"p99 latency grew from {p99['middle_third']:.3f} s to {p99['last_third']:.3f} s")
    backlog = compared["backlog"]
    # A steady rate the daemon keeps up with leaves a backlog of a few files (those settling); one that
    # grows over the run means the daemon falls behind and would fill the disk in time.
    if backlog["last_third"] - backlog["middle_third"] > 20:
        failures.append(f"folder backlog grew from {backlog['middle_third']} to {backlog['last_third']} files")
    if not all(s.metrics_ok for s in last):
        failures.append("/metrics did not answer in the last third")
    return compared, failures


def _print_sample(s: Sample) -> None:
    def ms(v: float | None) -> str:
        return f"{v * 1000:8.1f}" if v is not None else "       -"

    print(f"{s.t:8.0f} {s.rss_mb:9.1f} {s.fds:5d} {s.threads:7d} {s.verdicts:8d} {ms(s.p50_s)} {ms(s.p95_s)} "
          f"{ms(s.p99_s)} {s.backlog:7d} {'ok' if s.metrics_ok else 'FAIL':>7}", flush=True)


def _scrape(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.status == 200 and b"anomaly_monitor_images_scored_total" in resp.read()
    except OSError:
        return False


def _pool(folder: Path, seed: int = 0) -> None:
    """POOL_SIZE distinct 64x64 parts, one in ANOMALY_EVERY of them defective (over the writer's cycle)."""
    rng = np.random.default_rng(seed)
    images = [anomalous_image(rng, 64) if i % ANOMALY_EVERY == ANOMALY_EVERY - 1 else normal_image(rng, 64)
              for i in range(POOL_SIZE)]
    write_images(folder, images, prefix="part")


def train_tiny_bundle(out: Path) -> Path:
    """The test suite's tiny model (tests/conftest.py), trained in a subprocess so this process stays small.

    The shipped default model was trained on other parts and calls every synthetic part an anomaly; this
    one gives the realistic mix (about one folder verdict in 20 anomalous), so evidence and alerts stay
    occasional as on a line.
    """
    script = textwrap.dedent(f"""
        import numpy as np
        from pathlib import Path
        from imagegen import normal_image, write_images
        from monitor.training.train import TrainOptions, train_bundle
        rng = np.random.default_rng(1234)
        data = Path({str(out.parent / "normal")!r})
        write_images(data, [normal_image(rng, 32) for _ in range(160)], prefix="normal")
        train_bundle(data, Path({str(out)!r}), TrainOptions(size=(32, 32), channels=1, epochs=15, seed=0,
                                                            quiet=True, auto=False))
    """)
    env = subprocess_env()
    env["PYTHONPATH"] = str(ROOT / "tests") + os.pathsep + env["PYTHONPATH"]
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600)
    return out


def run_soak(bundle: Path, workdir: Path, seconds: float, rate: float = 5.0, camera_fps: float = 2.0,
             sample_every: float = 30.0, env: dict[str, str] | None = None, quiet: bool = False) -> SoakResult:
    """Run the daemon for `seconds` under a folder feed of `rate` files/s and a camera; sample and judge."""
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("pool", "staging", "d/inbox"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    _pool(workdir / "pool")
    server: MjpegServer | None = None
    if have_ffmpeg():
        server = MjpegServer(size=(64, 48), rate=10).start()
        camera, kind = server.url, "ffmpeg http mjpeg"
    else:  # a looped file still exercises the camera reader, its reopen at the end and the frame queue
        rng = np.random.default_rng(1)
        camera = str(write_video(workdir / "loop.avi", [normal_image(rng, 64) for _ in range(50)], fps=10))
        kind = "looped video file"
    metrics_port = free_port()
    config = {
        "model": str(Path(bundle).resolve()),
        "sources": [
            {"name": "line1", "folder": "inbox", "settle_ms": 20, "stable_s": 0.5},
            {"name": "cam1", "camera": camera, "fps": camera_fps, "loop": server is None, "read_timeout_s": 2.0,
             "backoff_initial_s": 0.2, "backoff_max_s": 2.0},
        ],
        "batching": {"max_batch": 16, "max_wait_ms": 20},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "logging": {"level": "INFO"},
    }
    result = SoakResult(seconds=seconds, rate=rate, camera=kind)
    daemon = DaemonProcess(workdir / "d", config, env or subprocess_env())
    progress = workdir / "written.txt"
    writer: subprocess.Popen | None = None
    try:
        daemon.start(timeout=300)
        ready = time.monotonic()
        # Keep a minute of files (at least 200): the daemon scores within a second, so nothing is removed
        # unscored, and the folder stays bounded over an hour as it would on a line.
        keep = max(200, int(rate * 60))
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(workdir / "pool"), str(workdir / "staging"),
                                   str(daemon.workdir / "inbox"), str(progress), str(rate), str(seconds),
                                   str(keep)])
        tail = JournalTail(daemon.journal_path)
        scored: set[str] = set()
        counts = {"folder_verdicts": 0, "camera_verdicts": 0, "anomalies": 0}
        if not quiet:
            print(f"soak: {seconds:.0f} s, {rate} files/s, camera {kind} at {camera_fps} fps, "
                  f"sample every {sample_every:.0f} s, workdir {workdir}", flush=True)
            print(f"{'t_s':>8} {'rss_mb':>9} {'fds':>5} {'threads':>7} {'verdicts':>8} {'p50_ms':>8} "
                  f"{'p95_ms':>8} {'p99_ms':>8} {'backlog':>7} {'metrics':>7}", flush=True)
        next_sample = ready + sample_every
        while True:
            time.sleep(max(0.0, next_sample - time.monotonic()))
            next_sample += sample_every
            if daemon.proc.poll() is not None:
                result.failures.append(f"the daemon exited with {daemon.proc.returncode}")
                break
            rss, fds, threads = proc_status(daemon.proc.pid)
            latencies = []
            for r in tail.read():
                if "score" not in r:
                    continue
                latencies.append(r["time"] - r["frame_time"])
                counts["anomalies"] += bool(r["anomaly"])
                if r["path"] is None:
                    counts["camera_verdicts"] += 1
                else:
                    counts["folder_verdicts"] += 1
                    scored.add(Path(r["path"]).name)
            written = progress.read_bytes().count(b"\n") if progress.exists() else 0
            sample = Sample(t=time.monotonic() - ready, rss_mb=rss, fds=fds, threads=threads,
                            verdicts=len(latencies), p50_s=percentile(latencies, 50), p95_s=percentile(latencies, 95),
                            p99_s=percentile(latencies, 99), backlog=max(0, written - len(scored)),
                            metrics_ok=_scrape(metrics_port))
            result.samples.append(sample)
            if not quiet:
                _print_sample(sample)
            if writer.poll() is not None:
                break
        if writer.wait(30) != 0:
            result.failures.append(f"the writer exited with {writer.returncode}")
        if daemon.proc.poll() is None:
            start = time.monotonic()
            code = daemon.terminate(signal.SIGTERM, timeout=60)
            result.totals["stop_s"] = round(time.monotonic() - start, 2)
            if code != 0:
                result.failures.append(f"SIGTERM: exit {code}, not 0")
        written = progress.read_text().split() if progress.exists() else []
        scored |= {Path(r["path"]).name for r in tail.read() if "score" in r and r["path"] is not None}
        result.totals.update(counts, files_written=len(written), files_scored=len(scored),
                             files_unscored=len(set(written) - scored))
        if "Traceback" in daemon.log():
            result.failures.append("a traceback in the daemon's log")
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait(10)
        daemon.kill()
        if server is not None:
            server.stop()
    compared, failures = judge(result.samples)
    result.compared = compared
    result.failures = failures + result.failures
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 3600)))
    parser.add_argument("--rate", type=float, default=5.0, help="folder files per second")
    parser.add_argument("--camera-fps", type=float, default=2.0)
    parser.add_argument("--sample-every", type=float, default=None,
                        help="seconds between samples (default: seconds / 120, from 5 to 30)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="default: a 32x32 bundle trained first on the writer's kind of parts (about 20 s)")
    parser.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary and samples here")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0 or (args.bundle and not (args.bundle / "bundle.json").exists()):
        print(f"soak: need --seconds > 0, --rate > 0 and a bundle at {args.bundle}", file=sys.stderr)
        return 2
    every = args.sample_every or min(30.0, max(5.0, args.seconds / 120))
    tmp = None if args.workdir else tempfile.mkdtemp(prefix="soak-")
    workdir = args.workdir or Path(tmp)
    try:
        bundle = args.bundle or train_tiny_bundle(workdir / "bundle")
        result = run_soak(bundle, workdir, args.seconds, args.rate, args.camera_fps, every)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = result.summary()
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**summary, "series": [asdict(s) for s in result.samples]}, indent=2))
    print("soak: " + ("held" if result.ok else "FAILED: " + "; ".join(result.failures)),
          file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
