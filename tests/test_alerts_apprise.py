"""Apprise sink: a json:// Apprise URL delivers to a real local HTTP server."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from alert_servers import WebhookServer, alerts_config, anomaly, free_port, metric, wait_until

from monitor.alerts.dispatcher import AlertDispatcher


def _apprise(name: str, **kw: object) -> dict:
    return {"type": "apprise", "name": name, "cooldown_s": 0, "digest_after": 0, "timeout_s": 5, **kw}


def test_apprise_delivers_title_body_and_the_evidence_attachment(tmp_path: Path) -> None:
    evidence = tmp_path / "ev.png"
    cv2.imwrite(str(evidence), np.zeros((8, 8), np.uint8))
    with WebhookServer() as server:
        sink = _apprise("apprise", urls=[f"json://127.0.0.1:{server.port}/notify"])
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "outbox")
        d.start()
        d.notify_verdict(anomaly("line1", 3, evidence=evidence))
        assert wait_until(lambda: len(server.received()) == 1, timeout=10)
        d.stop()
    got = server.received()[0]
    assert server.requests[0]["path"] == "/notify"
    assert got["title"].startswith("Anomaly on line1: score 0.503")
    assert "source: line1" in got["message"]
    assert got["type"] == "warning"
    assert [a["filename"] for a in got["attachments"]] == ["ev.png"]


def test_apprise_url_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with WebhookServer() as server:
        monkeypatch.setenv("TEST_APPRISE_URL", f"json://127.0.0.1:{server.port}/")
        sink = _apprise("apprise-env", urls_env=["TEST_APPRISE_URL"])
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "o")
        d.start()
        d.notify_verdict(anomaly("line1", 1))
        assert wait_until(lambda: len(server.received()) == 1, timeout=10)
        d.stop()


def test_an_unreachable_apprise_target_keeps_the_alert_for_a_retry(tmp_path: Path) -> None:
    port = free_port()
    d = AlertDispatcher(alerts_config([_apprise("apprise-down", urls=[f"json://127.0.0.1:{port}/"])]),
                        tmp_path / "o")
    d.start()
    d.notify_verdict(anomaly("line1", 1))
    assert wait_until(lambda: metric("alerts_failed_total", "apprise-down") >= 1, timeout=10)
    with WebhookServer(port=port) as server:
        assert wait_until(lambda: len(server.received()) == 1, timeout=10)
        d.stop()
