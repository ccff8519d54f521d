"""Class 6 of issue 11: SIGHUP, SIGUSR1 and SIGUSR2 are handled, never fatal; SIGTERM still drains and stops."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_proc import DaemonProcess, wait_until
from imagegen import normal_image, write_images

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "default"  # a real bundle without training one: these tests are about signals
pytestmark = pytest.mark.slow


def _drop_image(inbox: Path, name: str) -> None:
    """An image renamed into the inbox, so the daemon sees it complete."""
    staging = inbox.parent / "staging"
    (path,) = write_images(staging, [normal_image(np.random.default_rng(7))], prefix=name)
    os.replace(path, inbox / path.name)


def test_hup_usr1_usr2_are_handled_and_the_daemon_keeps_scoring(tmp_path: Path, subprocess_env: dict) -> None:
    config = {
        "model": str(SHIPPED),
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20, "stable_s": 0.5}],
        "metrics": {"enabled": False},
        "logging": {"level": "INFO"},
    }
    (tmp_path / "inbox").mkdir()
    daemon = DaemonProcess(tmp_path, config, subprocess_env).start(timeout=180)
    try:
        for sig, line in ((signal.SIGHUP, "reload_done"), (signal.SIGUSR1, "signal_ignored signal=SIGUSR1"),
                          (signal.SIGUSR2, "signal_ignored signal=SIGUSR2")):
            daemon.proc.send_signal(sig)
            wait_until(lambda line=line: line in daemon.log() or daemon.proc.poll() is not None, 30)
            assert daemon.proc.poll() is None, f"{sig.name} ended the daemon:\n{daemon.log()}"
        log = daemon.log()
        assert "reload_requested signal=SIGHUP" in log
        assert "reload_failed" not in log

        time.sleep(0.5)  # the signals are behind us: what follows is scored by a daemon that survived them
        _drop_image(tmp_path / "inbox", "after_signals")
        verdicts = daemon.wait_for_verdicts(1, timeout=60)
        assert any("after_signals" in str(v.get("path")) for v in verdicts), verdicts
        assert daemon.proc.poll() is None

        assert daemon.terminate(signal.SIGTERM) == 0, daemon.log()
        events = [r["event"] for r in daemon.records() if "event" in r]
        assert events.count("daemon_start") == 1 and events[-1] == "daemon_stop", events
        assert "Traceback" not in daemon.log()
    finally:
        daemon.kill()
