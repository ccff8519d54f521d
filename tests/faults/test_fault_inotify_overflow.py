"""A burst larger than the kernel's inotify queue (fs.inotify.max_queued_events): the kernel drops the events,
the daemon must still score every file. The overflow is real: the daemon is frozen (SIGSTOP) while another
process renames more files into its folder than the queue holds, then thawed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_proc import DaemonProcess, free_port, wait_until
from reload_util import metric, rewrite_config, scrape

pytestmark = pytest.mark.slow

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")
IN_OPEN, IN_CLOSE_NOWRITE = 0x20, 0x10

# Renames every file of a staging folder into the inbox: the burst, from another process.
_MOVER = ("import os, sys\nfor n in sorted(os.listdir(sys.argv[1])): "
          "os.rename(os.path.join(sys.argv[1], n), os.path.join(sys.argv[2], n))")


def config(bundle: Path, port: int, level: str = "INFO") -> dict:
    return {
        "model": str(bundle),
        # Two lines, each with its own inotify queue: the burst goes to line1 alone.
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20},
                    {"name": "line2", "folder": "inbox2", "settle_ms": 20}],
        "batching": {"max_batch": 32, "max_wait_ms": 20, "queue_size": 256},
        "threshold": {"fixed": 1e9},  # no evidence: this is about files, not pictures
        "metrics": {"host": "127.0.0.1", "port": port},
        "logging": {"level": level, "summary_interval_s": 0},
    }


def counted(port: int, name: str, **labels: str) -> float:
    """A counter's value in a scrape of the daemon; 0 for a series never incremented (not exported yet)."""
    try:
        return metric(scrape(port), name, **labels)
    except KeyError:
        return 0.0


def verdict_count(journal: Path) -> int:
    """Verdict lines in the journal, counted without parsing 20,000 JSON lines at every poll."""
    if not journal.exists():
        return 0
    return journal.read_bytes().count(b'"score"')


def inotify_masks(pid: int) -> list[int]:
    """The event masks of the inotify watches held by process `pid`, read from /proc/PID/fdinfo."""
    masks = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("inotify wd:"):
                fields = dict(f.split(":", 1) for f in line.split()[1:])
                masks.append(int(fields["mask"], 16))
    return masks


@pytest.mark.skipif(not MAX_QUEUED.exists(), reason="needs Linux inotify")
def test_a_burst_beyond_the_inotify_queue_loses_no_file(tmp_path, tiny_bundle, subprocess_env):
    limit = int(MAX_QUEUED.read_text())
    if limit > 100_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}: a burst beyond it would take minutes here")
    n = limit + 1000
    staging = tmp_path / "staging"
    staging.mkdir()
    ok, data = cv2.imencode(".png", np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8))
    assert ok
    for i in range(n):
        (staging / f"b{i:06d}.png").write_bytes(data.tobytes())
    port = free_port()
    proc = DaemonProcess(tmp_path / "d", config(tiny_bundle, port), subprocess_env)
    proc.start()
    try:
        # A reload to `logging.level: ERROR` sets the root logger's level: the overflow must still be heard.
        rewrite_config(proc.config_path, config(tiny_bundle, port, level="ERROR"))
        proc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: counted(port, "anomaly_monitor_config_reloads_total", outcome="success") == 1,
                   timeout=60)
        os.kill(proc.proc.pid, signal.SIGSTOP)  # nobody reads the inotify queue now: it fills, then overflows
        try:
            subprocess.run([sys.executable, "-c", _MOVER, str(staging), str(proc.workdir / "inbox")],
                           check=True, timeout=120)
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        wait_until(lambda: verdict_count(proc.journal_path) >= n, timeout=240, interval=0.5)
        assert counted(port, "anomaly_monitor_folder_events_lost_total", source="line1") >= 1
        # line2's queue never overflowed: it is neither blamed nor rescanned.
        assert counted(port, "anomaly_monitor_folder_events_lost_total", source="line2") == 0
        assert proc.terminate() == 0
        paths = [v["path"] for v in proc.verdicts()]
        assert len(paths) == n and len(set(paths)) == n  # every file once: none lost, none twice
    finally:
        proc.kill()


def test_the_folder_watch_asks_the_kernel_for_no_events_of_its_own_reads(tmp_path, tiny_bundle, subprocess_env):
    proc = DaemonProcess(tmp_path, config(tiny_bundle, free_port()), subprocess_env)
    proc.start()
    try:
        masks = inotify_masks(proc.proc.pid)
        assert masks, "the daemon holds no inotify watch"
        # Every file the source reads would otherwise raise IN_OPEN and IN_CLOSE_NOWRITE: two thirds of the
        # events of a file renamed in, all thrown away, and a burst's overflow twice as soon.
        assert all(mask & (IN_OPEN | IN_CLOSE_NOWRITE) == 0 for mask in masks), [hex(m) for m in masks]
    finally:
        proc.kill()
