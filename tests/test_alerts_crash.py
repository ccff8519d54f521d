"""SIGKILL while alerts are pending: after a restart each one is delivered, exactly as recorded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from alert_servers import WebhookServer, alerts_config, free_port, wait_until

REPO = Path(__file__).resolve().parent.parent

# argv: config JSON, outbox dir, mode ("produce N RECORD_FILE" or "deliver").
_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from monitor.alerts.config import AlertsConfig
    from monitor.alerts.dispatcher import AlertDispatcher
    from monitor.records import Verdict
    config = AlertsConfig.model_validate_json(sys.argv[1])
    d = AlertDispatcher(config, Path(sys.argv[2]))
    d.start()
    if sys.argv[3] == "produce":
        recorded = []
        for i in range(int(sys.argv[4])):
            source = ("line1", "line2")[i % 2]
            v = Verdict(source, time.time(), time.time(), 0.5 + i / 1000, 0.1, True, Path(f"/in/{i}.png"))
            d.notify_verdict(v)
            recorded.append(v.to_json())
        Path(sys.argv[5]).write_text(json.dumps(recorded))
        print("queued", flush=True)
        time.sleep(120)  # the test kills us here, while the sink keeps failing
    else:
        while d.pending_count():
            time.sleep(0.02)
        d.stop()
        print("delivered", flush=True)
""")


def _run(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, *args], stdout=subprocess.PIPE, env=env, cwd=REPO)


def test_sigkill_with_alerts_pending_then_restart_delivers_each_exactly_once_as_recorded(
        tmp_path: Path, subprocess_env: dict) -> None:
    port = free_port()
    sink = {"type": "webhook", "name": "crash", "url": f"http://127.0.0.1:{port}/hook", "cooldown_s": 0,
            "digest_after": 0}
    config = alerts_config([sink]).model_dump_json()
    outbox, record = tmp_path / "outbox", tmp_path / "recorded.json"
    with WebhookServer(fail_first=10**9, port=port) as failing:
        proc = _run([config, str(outbox), "produce", "30", str(record)], subprocess_env)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"queued"
            assert wait_until(lambda: failing.attempts >= 3, timeout=10)  # retrying while it dies
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert failing.requests == []
    assert len(list((outbox / "crash").glob("*.json"))) == 30
    with WebhookServer(port=port) as server:
        proc = _run([config, str(outbox), "deliver"], subprocess_env)
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert out.strip() == b"delivered"
    got = server.received()
    recorded = json.loads(record.read_text())
    assert [p["anomalies"] for p in got] == [[v] for v in recorded]
    assert len({p["id"] for p in got}) == 30
    assert list((outbox / "crash").glob("*.json")) == []


@pytest.mark.slow
def test_daemon_killed_with_alerts_pending_sends_them_after_restart(
        tmp_path: Path, tiny_bundle: Path, subprocess_env: dict) -> None:
    from daemon_proc import DaemonProcess
    from imagegen import anomalous_image, write_images

    port = free_port()
    config = {
        "model": str(tiny_bundle),
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 50, "stable_s": 0.5}],
        "threshold": {"fixed": 0.02},
        "batching": {"max_batch": 8, "max_wait_ms": 20},
        "metrics": {"enabled": False},
        "alerts": {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "sinks": [
            {"type": "webhook", "name": "chat", "url": f"http://127.0.0.1:{port}/", "cooldown_s": 0,
             "digest_after": 0}]},
    }
    images = write_images(tmp_path / "samples", [anomalous_image(np.random.default_rng(i)) for i in range(4)],
                          prefix="bad")
    daemon = DaemonProcess(tmp_path / "d", config, subprocess_env)
    with WebhookServer(fail_first=10**9, port=port) as failing:
        daemon.start()
        try:
            for path in images:
                shutil.copy(path, daemon.workdir / "inbox")
            anomalies = wait_until_anomalies(daemon, 4)
            assert wait_until(lambda: failing.attempts >= 4, timeout=10)
        finally:
            daemon.terminate(signal.SIGKILL)
    assert failing.requests == []
    with WebhookServer(port=port) as server:
        daemon.start()
        try:
            assert wait_until(lambda: len(server.received()) >= 4, timeout=30)
        finally:
            daemon.terminate()
    got = [p for p in server.received() if p["kind"] == "anomaly"]
    assert [p["anomalies"][0] for p in got] == anomalies


def wait_until_anomalies(daemon, n: int) -> list[dict]:  # noqa: ANN001
    """The journal's anomaly lines once there are `n` of them."""
    assert wait_until(lambda: sum(bool(r.get("anomaly")) for r in daemon.verdicts()) >= n, timeout=60)
    return [r for r in daemon.verdicts() if r.get("anomaly")]
