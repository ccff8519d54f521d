"""A pause survives a reload that replaces the paused source (not a restart), and the daemon's own HTTP server
answers health, status and the API on the metrics port."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from imagegen import encode, normal_image

from monitor.config import load_config
from monitor.daemon import Daemon

pytestmark = pytest.mark.timeout(120)


def _write_config(path: Path, bundle: Path, settle_ms: int, paused: bool = False) -> None:
    path.write_text(yaml.safe_dump({
        "model": str(bundle),
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": settle_ms, "paused": paused}],
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "logging": {"summary_interval_s": 0},
    }))


def _verdicts(daemon: Daemon) -> list[str]:
    path = daemon.config.output.journal
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Path(r["path"]).name for r in records if "score" in r]


def _wait(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def running(tmp_path, tiny_bundle):
    config_path = tmp_path / "config.yaml"
    _write_config(config_path, tiny_bundle, 20)
    daemon = Daemon(load_config(config_path), config_path=config_path)
    daemon.start()
    waiter = threading.Thread(target=daemon.wait, name="daemon-wait")
    waiter.start()
    yield daemon, config_path, tiny_bundle
    daemon.stop()
    waiter.join(30)


def test_the_daemon_serves_health_status_and_metrics_on_its_own_port(running):
    daemon, _, _ = running
    url = f"http://127.0.0.1:{daemon.metrics_port}"
    assert _wait(lambda: requests.get(f"{url}/-/ready", timeout=5).status_code == 200)
    assert requests.get(f"{url}/-/healthy", timeout=5).status_code == 200
    status = requests.get(f"{url}/api/status", timeout=5).json()
    assert [s["name"] for s in status["sources"]] == ["line1"]
    assert "anomaly_monitor_images_scored_total" in requests.get(f"{url}/metrics", timeout=5).text


def test_a_pause_survives_a_reload_that_replaces_the_source(running):
    daemon, config_path, bundle = running
    url = f"http://127.0.0.1:{daemon.metrics_port}"
    assert _wait(lambda: requests.get(f"{url}/-/ready", timeout=5).status_code == 200)
    assert requests.post(f"{url}/api/sources/line1/pause", timeout=5).status_code == 200
    before = daemon.sources.sources["line1"]
    _write_config(config_path, bundle, 30)  # a changed setting: the source is replaced
    result = daemon.reload()
    assert result.ok, result.message
    after = daemon.sources.sources["line1"]
    assert after is not before and after.paused
    inbox = daemon.config.sources[0].folder
    (inbox / "held.png").write_bytes(encode(normal_image(np.random.default_rng(1), 32)))
    time.sleep(1.5)
    assert "held.png" not in _verdicts(daemon)
    assert requests.post(f"{url}/api/sources/line1/resume", timeout=5).status_code == 200
    assert _wait(lambda: _verdicts(daemon).count("held.png") == 1)


def test_a_reload_that_changes_the_configs_paused_setting_follows_the_config(tmp_path, tiny_bundle):
    config_path = tmp_path / "config.yaml"
    _write_config(config_path, tiny_bundle, 20, paused=True)
    daemon = Daemon(load_config(config_path), config_path=config_path)
    daemon.start()
    waiter = threading.Thread(target=daemon.wait, name="daemon-wait")
    waiter.start()
    try:
        assert daemon.sources.sources["line1"].paused
        _write_config(config_path, tiny_bundle, 20, paused=False)
        result = daemon.reload()
        assert result.ok, result.message
        assert not daemon.sources.sources["line1"].paused
        inbox = daemon.config.sources[0].folder
        (inbox / "now.png").write_bytes(encode(normal_image(np.random.default_rng(2), 32)))
        assert _wait(lambda: _verdicts(daemon).count("now.png") == 1)
    finally:
        daemon.stop()
        waiter.join(30)
